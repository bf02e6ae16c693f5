//! VLAN sub-interfaces as macvlan parents.
//!
//! A network with a VLAN id puts its pods' macvlans on `<master>.<vid>`
//! ([`names::vlan_device`]; a deterministic short form when that is longer
//! than 15 bytes) in the node netns. ADD creates it (parent up first), or
//! reuses it only after checking that it really is 802.1Q VLAN `vid` on that
//! master; anything else under that name is a clear error and nothing is
//! touched.
//!
//! Who uses a VLAN device cannot be asked from the kernel: the pods'
//! macvlans live in other namespaces, and neither rtnetlink nor sysfs lists
//! upper devices across namespaces (`netdev_adjacent_sysfs_add()` links only
//! same-netns neighbours). Deleting a lower device silently destroys every
//! macvlan on it, so "nobody uses it" must be known for sure. The plugin
//! therefore keeps a small registry on tmpfs (it vanishes on reboot exactly
//! like the devices):
//!
//! ```text
//! <runtimeDir>/vlan/<node netns inode>/<device>/lock     flock(2), never removed
//!                                               /created  ifindex, if rackline created it
//!                                               /users/<attachment hash>  "<container id> <ifname>"
//! ```
//!
//! ADD takes the device's lock, finds/creates/verifies the device and
//! records its attachment as a user before releasing the lock; DEL (and a
//! failed ADD's rollback) takes the lock, removes the attachment and, when no
//! user is left, deletes the device if the cleanup policy allows it. A
//! registered user is what protects a device from a concurrent DEL, so the
//! lock need not be held while the macvlan is created (concurrent ADDs of
//! the same VLAN only serialise for the lookup, ~1 ms). Lock files are never
//! deleted: unlinking a lock file that another process has open and is
//! about to flock() would let two processes "hold" it at once.
//!
//! Every file here is opened without blocking (a FIFO planted in the
//! registry is refused, not waited on) and the lock is waited for at most
//! the netconf's `timeoutMs`.

use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::fcntl::Flock;
use rackline_netlink::{LinkInfo, Netlink, NetlinkError};
use tracing::{debug, info, warn};

use crate::error::CniError;
use crate::fsutil;
use crate::links::LinkOps;
use crate::names;

/// `ETH_P_8021Q`: the only VLAN protocol Rackline creates or reuses.
const ETH_P_8021Q: u16 = 0x8100;

// The options are configuration: they live with the netconf, which knows
// nothing of the datapath.
pub use crate::conf::{VlanCleanup, VlanOptions};

/// A VLAN device ADD put a user on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub index: u32,
    pub name: String,
    /// This ADD created it (its rollback deletes it when unused, whatever
    /// the policy).
    pub created: bool,
}

fn dp(what: &str, e: NetlinkError) -> CniError {
    CniError::datapath_by(what, e)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> CniError {
    CniError::datapath_by(format!("{what} {}", path.display()), e)
}

/// The registry key of an attachment: the name-safe hash DEL recomputes.
pub fn user_key(container_id: &str, ifname: &str) -> String {
    names::host_veth(container_id, ifname)
}

/// Checks that `l` (found under the VLAN device's name) is 802.1Q VLAN `vid`
/// on `master`; the error names what was found instead.
pub fn verify(l: &LinkInfo, master: &LinkInfo, vid: u16) -> Result<(), String> {
    let proto_ok = l.vlan_protocol.is_none_or(|p| p == ETH_P_8021Q);
    if l.kind.as_deref() == Some("vlan")
        && l.parent_index == Some(master.index)
        && l.vlan_id == Some(vid)
        && proto_ok
    {
        return Ok(());
    }
    let kind = l.kind.as_deref().unwrap_or("a device without rtnl kind");
    let mut found = format!("kind {kind}");
    if l.kind.as_deref() == Some("vlan") {
        found.push_str(&format!(
            ", VLAN id {}, parent ifindex {}, protocol {}",
            l.vlan_id.map_or("?".into(), |v| v.to_string()),
            l.parent_index.map_or("?".into(), |v| v.to_string()),
            l.vlan_protocol.map_or("?".into(), |p| format!("{p:#06x}")),
        ));
    }
    Err(format!(
        "{} (ifindex {}) exists but is not 802.1Q VLAN {vid} on {} (ifindex {}): found {found}; \
         remove or rename it, or change the network's master or VLAN",
        l.name, l.index, master.name, master.index
    ))
}

/// The registry directory of the calling thread's network namespace.
fn netns_dir(runtime_dir: &Path) -> Result<PathBuf, CniError> {
    // The node netns identity: two simulated nodes on one host (the lab, the
    // VM test) and a node's real root netns never share entries.
    let ino = fsutil::node_netns_ino().map_err(|e| {
        io_err(
            "reading the node netns identity from",
            Path::new("/proc/thread-self/ns/net"),
            e,
        )
    })?;
    Ok(runtime_dir.join("vlan").join(ino.to_string()))
}

/// One device's registry entry, locked for as long as this lives.
struct DeviceLock {
    dir: PathBuf,
    _lock: Flock<File>,
}

impl DeviceLock {
    fn acquire(ns_dir: &Path, device: &str, wait: Duration) -> Result<Self, CniError> {
        let dir = ns_dir.join(device);
        fsutil::ensure_dir(&dir.join("users"))
            .map_err(|e| io_err("creating the VLAN registry", &dir, e))?;
        let path = dir.join("lock");
        let file = fsutil::open_regular(
            &path,
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600),
            false,
        )
        .map_err(|e| io_err("opening", &path, e))?;
        let lock =
            fsutil::lock_bounded(file, &path, wait).map_err(|e| io_err("locking", &path, e))?;
        Ok(Self { dir, _lock: lock })
    }

    fn user_path(&self, key: &str) -> PathBuf {
        self.dir.join("users").join(key)
    }

    fn add_user(&self, key: &str, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.user_path(key);
        fsutil::write_plain(&path, format!("{container_id} {ifname}\n").as_bytes())
            .map_err(|e| io_err("recording the VLAN user", &path, e))
    }

    fn remove_user(&self, key: &str) -> Result<(), CniError> {
        let path = self.user_path(key);
        fsutil::remove_if_present(&path).map_err(|e| io_err("removing the VLAN user", &path, e))
    }

    fn has_user(&self, key: &str) -> bool {
        fs::symlink_metadata(self.user_path(key)).is_ok()
    }

    fn users(&self) -> Result<usize, CniError> {
        let dir = self.dir.join("users");
        Ok(fs::read_dir(&dir)
            .map_err(|e| io_err("listing", &dir, e))?
            .count())
    }

    /// The ifindex rackline created this device with, if it did.
    fn created_index(&self) -> Option<u32> {
        fsutil::read_small(&self.dir.join("created"), 64)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn set_created(&self, index: Option<u32>) -> Result<(), CniError> {
        let path = self.dir.join("created");
        let r = match index {
            Some(i) => fsutil::write_plain(&path, format!("{i}\n").as_bytes()),
            None => fsutil::remove_if_present(&path),
        };
        r.map_err(|e| io_err("recording VLAN device ownership in", &path, e))
    }
}

/// ADD: the VLAN device for `vid` on `master`, created or verified, with
/// this attachment registered as its user. Nothing is changed when a wrong
/// device holds the name.
pub fn attach(
    host: &mut dyn LinkOps,
    opts: &VlanOptions,
    master: &LinkInfo,
    vid: u16,
    container_id: &str,
    ifname: &str,
) -> Result<Attached, CniError> {
    let name = names::vlan_device(&master.name, vid);
    let lock = DeviceLock::acquire(&netns_dir(&opts.runtime_dir)?, &name, opts.lock_wait)?;
    let found = find_or_create(host, master, &name, vid)?;
    verify(&found.link, master, vid).map_err(CniError::datapath)?;
    let user = (user_key(container_id, ifname), container_id, ifname);
    if let Err(e) = adopt(host, &lock, master, &found, &name, user) {
        if found.created {
            let _ = host.delete_link(found.link.index);
            let _ = lock.set_created(None);
        }
        return Err(e);
    }
    Ok(Attached {
        index: found.link.index,
        name,
        created: found.created,
    })
}

/// The device under the VLAN name, as found or as just created.
struct Found {
    link: LinkInfo,
    /// This ADD created it.
    created: bool,
    /// The master is up (it is brought up before a device is created).
    master_up: bool,
}

/// Under the device's lock: the link under `name`, or a new VLAN device
/// read back (deleted again when it cannot be).
fn find_or_create(
    host: &mut dyn LinkOps,
    master: &LinkInfo,
    name: &str,
    vid: u16,
) -> Result<Found, CniError> {
    let lookup = |host: &mut dyn LinkOps| {
        host.link_by_name(name)
            .map_err(|e| dp("looking up the VLAN device", e))
    };
    if let Some(link) = lookup(host)? {
        return Ok(Found {
            link,
            created: false,
            master_up: master.up,
        });
    }
    let created = create(host, master, name, vid)?;
    let read = lookup(host).and_then(|l| {
        l.ok_or_else(|| {
            CniError::datapath(format!("VLAN device {name} vanished right after creation"))
        })
    });
    match read {
        Ok(link) => Ok(Found {
            link,
            created,
            master_up: true,
        }),
        Err(e) => {
            if created {
                delete_unread(host, master, name, vid);
            }
            Err(e)
        }
    }
}

/// Under the device's lock: marks and records a device this ADD created
/// (or forgets a recorded one that was replaced), brings the master and
/// the device up, and registers `user` (key, container id, ifname).
fn adopt(
    host: &mut dyn LinkOps,
    lock: &DeviceLock,
    master: &LinkInfo,
    found: &Found,
    name: &str,
    (key, container_id, ifname): (String, &str, &str),
) -> Result<(), CniError> {
    let dev = &found.link;
    if found.created {
        // The device is shared by every attachment on it: its mark names
        // the device, not an attachment (`names::vlan_mark`).
        host.set_alias(dev.index, &names::vlan_mark(name))
            .map_err(|e| dp(&format!("marking {name}"), e))?;
        lock.set_created(Some(dev.index))?;
    } else if lock.created_index().is_some_and(|i| i != dev.index) {
        // Someone deleted ours and made their own: not ours to remove.
        lock.set_created(None)?;
    }
    if !found.master_up {
        host.set_up(master.index)
            .map_err(|e| dp(&format!("bringing up {}", master.name), e))?;
    }
    if !dev.up {
        host.set_up(dev.index)
            .map_err(|e| dp(&format!("bringing up {name}"), e))?;
    }
    lock.add_user(&key, container_id, ifname)
}

/// A failed ADD whose VLAN device, just created, could not be read back:
/// deleted when the name now shows the device made (the lock is still
/// held, so nobody else has put a user on it). Best effort: a read-back
/// failure is the error ADD reports.
fn delete_unread(host: &mut dyn LinkOps, master: &LinkInfo, name: &str, vid: u16) {
    match host.link_by_name(name) {
        Ok(Some(l)) if verify(&l, master, vid).is_ok() => {
            if let Err(e) = host.delete_link(l.index) {
                warn!(device = %name, "VLAN rollback: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => warn!(device = %name, "VLAN rollback: looking it up: {e}"),
    }
}

/// Creates the VLAN device, bringing its parent up first (802.1Q on a down
/// parent carries nothing); false when it appeared meanwhile, made by
/// someone not using our lock (another runtime dir, an operator): it is
/// verified like any other. On failure the parent is left as it was.
fn create(
    host: &mut dyn LinkOps,
    master: &LinkInfo,
    name: &str,
    vid: u16,
) -> Result<bool, CniError> {
    if !master.up {
        host.set_up(master.index)
            .map_err(|e| dp(&format!("bringing up {}", master.name), e))?;
    }
    match host.create_vlan(name, master.index, vid, None) {
        Ok(()) => {
            info!(%name, vid, master = %master.name, "created VLAN device");
            Ok(true)
        }
        Err(e) if e.is_exists() => {
            debug!(%name, "VLAN device appeared concurrently");
            Ok(false)
        }
        Err(e) => {
            if !master.up {
                let _ = host.set_down(master.index);
            }
            // rtnl_newlink() answers EOPNOTSUPP for an unknown link kind.
            let hint = if e.errno() == Some(nix::errno::Errno::EOPNOTSUPP) {
                " (this kernel has no 802.1Q support: load the 8021q module)"
            } else {
                ""
            };
            Err(dp(&format!("creating VLAN device {name}{hint}"), e))
        }
    }
}

/// CHECK: the VLAN device the pod's macvlan hangs off is still 802.1Q `vid`
/// on `master`, and up (a pod whose parent went away or down is cut off).
pub fn check(host: &mut dyn LinkOps, master: &str, vid: u16) -> Result<(), String> {
    let m = host
        .link_by_name(master)
        .map_err(|e| format!("looking up {master}: {e}"))?
        .ok_or_else(|| format!("master {master} is missing"))?;
    let name = names::vlan_device(master, vid);
    let l = host
        .link_by_name(&name)
        .map_err(|e| format!("looking up {name}: {e}"))?
        .ok_or_else(|| format!("VLAN device {name} is missing"))?;
    verify(&l, &m, vid)?;
    if !l.up || !m.up {
        return Err(format!("{name} or its parent {master} is down"));
    }
    Ok(())
}

/// A failed ADD: forget this attachment and delete the device when this
/// ADD created it (or the policy is `remove`) and nothing else uses it.
pub fn rollback(
    host: &mut dyn LinkOps,
    opts: &VlanOptions,
    attached: &Attached,
    container_id: &str,
    ifname: &str,
) {
    let r = netns_dir(&opts.runtime_dir).and_then(|ns| {
        let lock = DeviceLock::acquire(&ns, &attached.name, opts.lock_wait)?;
        lock.remove_user(&user_key(container_id, ifname))?;
        let may_delete = attached.created || opts.cleanup == VlanCleanup::Remove;
        if may_delete {
            delete_if_unused(host, &lock, &attached.name)?;
        }
        Ok(())
    });
    if let Err(e) = r {
        warn!(device = %attached.name, "VLAN rollback: {e}");
    }
}

/// DEL: drop this attachment from every VLAN device it used in this node
/// netns; with `remove`, delete those rackline created that nobody uses now.
/// Idempotent, and needs neither the pod netns nor ipamd: the registry says
/// which devices the attachment used.
pub fn detach(opts: &VlanOptions, container_id: &str, ifname: &str) -> Result<(), CniError> {
    detach_with(opts, container_id, ifname, Netlink::new)
}

/// [`detach`] with the node's netlink socket from `open`, called at most
/// once and only when a device may have to be deleted.
pub(crate) fn detach_with<N: LinkOps>(
    opts: &VlanOptions,
    container_id: &str,
    ifname: &str,
    mut open: impl FnMut() -> Result<N, NetlinkError>,
) -> Result<(), CniError> {
    let ns = netns_dir(&opts.runtime_dir)?;
    let entries = match fs::read_dir(&ns) {
        Ok(e) => e,
        // No VLAN was ever attached in this netns: nothing to do (and no
        // netlink socket opened).
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("listing", &ns, e)),
    };
    let key = user_key(container_id, ifname);
    let mut host: Option<N> = None;
    for entry in entries {
        let entry = entry.map_err(|e| io_err("listing", &ns, e))?;
        let device = entry.file_name().to_string_lossy().into_owned();
        if fs::symlink_metadata(entry.path().join("users").join(&key)).is_err() {
            continue;
        }
        let lock = DeviceLock::acquire(&ns, &device, opts.lock_wait)?;
        if !lock.has_user(&key) {
            continue; // a concurrent DEL of the same attachment did it
        }
        lock.remove_user(&key)?;
        debug!(%device, "attachment left the VLAN device");
        if opts.cleanup == VlanCleanup::Remove {
            if host.is_none() {
                host = Some(open().map_err(|e| dp("opening netlink", e))?);
            }
            let nl = host.as_mut().expect("just set");
            delete_if_unused(nl, &lock, &device)?;
        }
    }
    Ok(())
}

/// Under the device's lock: deletes `device` if rackline created it (same
/// ifindex as recorded) and no attachment nor node-netns link uses it.
fn delete_if_unused(
    host: &mut dyn LinkOps,
    lock: &DeviceLock,
    device: &str,
) -> Result<(), CniError> {
    if lock.users()? > 0 {
        return Ok(());
    }
    let Some(created) = lock.created_index() else {
        debug!(%device, "VLAN device not created by rackline; keeping it");
        return Ok(());
    };
    let Some(l) = host
        .link_by_name(device)
        .map_err(|e| dp("looking up the VLAN device", e))?
    else {
        return lock.set_created(None);
    };
    // Rackline's mark, or none (devices created before marks): any other
    // alias means someone has taken the device over.
    let foreign = l
        .alias
        .as_deref()
        .is_some_and(|a| a != names::vlan_mark(device));
    if l.index != created || l.kind.as_deref() != Some("vlan") || foreign {
        warn!(%device, index = l.index, "VLAN device was replaced or re-marked by someone else; keeping it");
        return lock.set_created(None);
    }
    // Links in the node netns stacked on it (an operator's macvlan, a node
    // address shim, a QinQ device) are users the registry does not know.
    let links = host.links().map_err(|e| dp("listing node links", e))?;
    if let Some(upper) = links.iter().find(|u| {
        u.parent_index == Some(l.index)
            && matches!(
                u.kind.as_deref(),
                Some("macvlan" | "macvtap" | "ipvlan" | "vlan")
            )
    }) {
        debug!(%device, upper = %upper.name, "VLAN device still has a node-local upper; keeping it");
        return Ok(());
    }
    match host.delete_link(l.index) {
        Err(e) if !e.is_not_found() => return Err(dp(&format!("deleting {device}"), e)),
        _ => {}
    }
    info!(%device, "deleted unused VLAN device");
    lock.set_created(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(name: &str, index: u32, kind: Option<&str>) -> LinkInfo {
        LinkInfo {
            index,
            name: name.into(),
            kind: kind.map(str::to_string),
            mtu: 1500,
            mac: None,
            up: true,
            parent_index: None,
            vlan_id: None,
            vlan_protocol: None,
            macvlan_mode: None,
            group: 0,
            alias: None,
        }
    }

    fn vlan(name: &str, parent: u32, vid: u16, proto: u16) -> LinkInfo {
        LinkInfo {
            parent_index: Some(parent),
            vlan_id: Some(vid),
            vlan_protocol: Some(proto),
            ..link(name, 9, Some("vlan"))
        }
    }

    use nix::fcntl::FlockArg;

    const WAIT: Duration = Duration::from_secs(5);

    #[test]
    fn verify_accepts_only_the_right_vlan() {
        let master = link("uplink", 2, Some("veth"));
        verify(&vlan("uplink.100", 2, 100, 0x8100), &master, 100).unwrap();
        let cases = [
            (link("uplink.100", 9, Some("macvlan")), "found kind macvlan"),
            (
                link("uplink.100", 9, None),
                "found kind a device without rtnl kind",
            ),
            (vlan("uplink.100", 3, 100, 0x8100), "parent ifindex 3"),
            (vlan("uplink.100", 2, 200, 0x8100), "VLAN id 200"),
            (vlan("uplink.100", 2, 100, 0x88a8), "protocol 0x88a8"),
        ];
        for (l, want) in cases {
            let e = verify(&l, &master, 100).unwrap_err();
            assert!(e.contains(want), "{e}");
            assert!(
                e.starts_with("uplink.100 (ifindex 9) exists but is not 802.1Q VLAN 100 on uplink (ifindex 2)"),
                "{e}"
            );
        }
    }

    #[test]
    fn cleanup_policy_parses_and_defaults_to_keep() {
        assert_eq!(VlanCleanup::default(), VlanCleanup::Keep);
        let r: VlanCleanup = serde_json::from_str("\"remove\"").unwrap();
        assert_eq!(r, VlanCleanup::Remove);
        assert!(serde_json::from_str::<VlanCleanup>("\"delete\"").is_err());
    }

    #[test]
    fn registry_counts_users_and_ownership() {
        let dir = tempfile::tempdir().unwrap();
        let ns = netns_dir(dir.path()).unwrap();
        assert!(ns.starts_with(dir.path().join("vlan")));
        let lock = DeviceLock::acquire(&ns, "uplink.100", WAIT).unwrap();
        assert_eq!(lock.users().unwrap(), 0);
        lock.add_user(&user_key("c1", "eth0"), "c1", "eth0")
            .unwrap();
        lock.add_user(&user_key("c2", "eth0"), "c2", "eth0")
            .unwrap();
        // Idempotent (a repeated ADD).
        lock.add_user(&user_key("c2", "eth0"), "c2", "eth0")
            .unwrap();
        assert_eq!(lock.users().unwrap(), 2);
        assert!(lock.has_user(&user_key("c1", "eth0")));
        lock.remove_user(&user_key("c1", "eth0")).unwrap();
        lock.remove_user(&user_key("c1", "eth0")).unwrap();
        assert_eq!(lock.users().unwrap(), 1);
        assert_eq!(lock.created_index(), None);
        lock.set_created(Some(42)).unwrap();
        assert_eq!(lock.created_index(), Some(42));
        lock.set_created(None).unwrap();
        lock.set_created(None).unwrap();
        assert_eq!(lock.created_index(), None);
        let text = fs::read_to_string(ns.join("uplink.100/users").join(user_key("c2", "eth0")));
        assert_eq!(text.unwrap(), "c2 eth0\n");
    }

    #[test]
    fn device_lock_is_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let ns = netns_dir(dir.path()).unwrap();
        let held = DeviceLock::acquire(&ns, "uplink.200", WAIT).unwrap();
        let try_lock = || {
            let f = File::open(ns.join("uplink.200/lock")).unwrap();
            Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok()
        };
        // flock(2) locks belong to the open file description, so a second
        // open in this same process contends like another process would.
        assert!(!try_lock());
        drop(held);
        assert!(try_lock());
        // Another device is independent.
        let _other = DeviceLock::acquire(&ns, "uplink.300", WAIT).unwrap();
        assert!(try_lock());
    }

    #[test]
    fn a_lock_held_elsewhere_is_waited_for_at_most_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let ns = netns_dir(dir.path()).unwrap();
        let _held = DeviceLock::acquire(&ns, "uplink.400", WAIT).unwrap();
        let t = std::time::Instant::now();
        let e = DeviceLock::acquire(&ns, "uplink.400", Duration::from_millis(150))
            .err()
            .expect("the lock is held");
        assert!(e.details().contains("still locked"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_fifo_in_the_registry_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let ns = netns_dir(dir.path()).unwrap();
        fs::create_dir_all(ns.join("uplink.500/users")).unwrap();
        nix::unistd::mkfifo(
            &ns.join("uplink.500/lock"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .unwrap();
        let e = DeviceLock::acquire(&ns, "uplink.500", WAIT)
            .err()
            .expect("a FIFO is no lock file");
        assert!(e.details().contains("a FIFO"), "{e}");
    }

    #[test]
    fn detach_without_registry_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let opts = VlanOptions {
            runtime_dir: dir.path().to_owned(),
            cleanup: VlanCleanup::Remove,
            lock_wait: WAIT,
        };
        detach(&opts, "c1", "eth0").unwrap();
        assert!(!dir.path().join("vlan").exists());
    }
}
