//! One function per CNI verb, over typed input: validate, then act, then
//! roll back.

use std::net::Ipv4Addr;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::conf::{NetConf, SUPPORTED_VERSIONS};
use crate::datapath::{AddPlan, Added};
use crate::dataplane::Datapath;
use crate::env::{Attachment, DelEnv, PodEnv};
use crate::error::CniError;
use crate::ipam::{Allocation, IpamClient, Offer, Released};
use crate::probe::{self, Conflict};
use crate::spool;

/// How long DEL waits for a missing or refusing ipamd socket before it
/// spools the release instead (ADD waits its whole `timeoutMs`).
pub const DEL_CONNECT_WAIT: Duration = Duration::from_secs(1);

pub fn version(requested: &str) -> Value {
    json!({ "cniVersion": requested, "supportedVersions": SUPPORTED_VERSIONS })
}

/// Plans the attachment from ipamd's offer and the CNI config, rejecting
/// anything unusable before a single link is touched.
fn plan_from(env: &PodEnv, conf: &NetConf, offer: Offer) -> Result<AddPlan, CniError> {
    let bad = CniError::IpamUnusable;
    let mut host_routes = conf.host_routes.clone();
    for c in offer.host_routes {
        if !host_routes.contains(&c) {
            host_routes.push(c);
        }
    }
    let master = conf.master.clone().unwrap_or(offer.master);
    rackline_model::network::validate_ifname(&master).map_err(|e| bad(format!("master: {e}")))?;
    Ok(AddPlan {
        attachment: env.attachment.clone(),
        netns_path: env.netns.clone(),
        address: offer.address,
        gateway: offer.gateway,
        master,
        mtu: offer.mtu,
        vlan: offer.vlan,
        vlan_opts: conf.vlan.clone(),
        routes: offer.routes,
        host_routes,
        qos: crate::qos::effective(conf, &offer.qos)?,
        mac: rackline_model::mac::for_address(offer.address.ip()),
        probe: offer.probe,
        filter: offer.filter,
    })
}

pub fn add(env: &PodEnv, conf: &NetConf, dp: &mut dyn Datapath) -> Result<Value, CniError> {
    // Validate before allocating: a bad bandwidth request, a bad requested
    // address or a missing netns costs no lease and creates nothing.
    crate::qos::pod_request(conf)?;
    let requested = conf.requested(env.args.ip)?;
    {
        let _s = crate::step!("netns_open");
        dp.open_pod_netns(&env.netns)?;
    }
    let spool_step = crate::step!("spool_forget");
    // A release DEL spooled for this very attachment (podman's network
    // reload re-adds under the same container id) must not free the lease
    // this ADD is about to take.
    spool::forget(&conf.vlan.runtime_dir, &conf.network, &env.attachment)
        .map_err(CniError::SpoolClear)?;
    drop(spool_step);
    let mut ipam = {
        let _s = crate::step!("ipamd_connect");
        IpamClient::connect(&conf.ipamd_socket, conf.timeout, conf.timeout)?
    };
    // An address the probe finds in use, or one of this node's own, is
    // reported (ipamd quarantines it) and the next Allocate brings another
    // one, a bounded number of times.
    let mut conflicts: Vec<Conflict> = Vec::new();
    while conflicts.len() < probe::MAX_ATTEMPTS {
        let (sticky, outcome) = match add_once(env, conf, requested, &mut ipam, dp) {
            Ok(r) => r,
            // The quarantined addresses were the last free ones.
            Err(e @ CniError::Exhausted(_)) if !conflicts.is_empty() => {
                return Err(probe::exhausted_error(&conflicts, &conf.network, Some(e)));
            }
            Err(e) => return Err(e),
        };
        let c = match outcome {
            Added::Configured(r) => return Ok(r.to_json(&conf.cni_version)),
            Added::Conflict(c) => c,
        };
        let quarantined = report_conflict(env, conf, &mut ipam, &c, sticky)?;
        conflicts.push(c);
        if !quarantined {
            // ipamd would hand the same address back: stop here.
            break;
        }
    }
    Err(probe::exhausted_error(&conflicts, &conf.network, None))
}

/// Reports the address ADD found in use; whether ipamd quarantined it (a
/// next Allocate brings another one). A sticky pod's address is its
/// identity: reported all the same, and the ADD fails.
fn report_conflict(
    env: &PodEnv,
    conf: &NetConf,
    ipam: &mut IpamClient,
    c: &Conflict,
    sticky: bool,
) -> Result<bool, CniError> {
    let mac = rackline_model::mac::format(c.mac);
    let report = |ipam: &mut IpamClient| {
        ipam.report_conflict(&conf.network, &env.attachment, c.address, &mac)
    };
    if sticky {
        // The lease stays with the attachment; the runtime's DEL frees it.
        // Reported all the same (ipamd records it on the lease and raises
        // the alarm, never quarantines it); the ADD fails either way.
        if let Err(e) = report(ipam) {
            warn!("could not report the conflict to ipamd: {e}");
        }
        let pod = format!("{}/{}", env.args.pod.namespace, env.args.pod.name);
        return Err(probe::sticky_error(c, &conf.network, &pod));
    }
    match &c.node_link {
        Some(link) => {
            warn!(address = %c.address, %link, %mac, "ipamd offered one of this node's own addresses; reporting it and taking another")
        }
        None => {
            warn!(address = %c.address, %mac, "address in use by another host; reporting it and taking another")
        }
    }
    report(ipam)
}

/// One Allocate and one datapath attempt. On a datapath error the fresh
/// lease is released; on a conflict it is kept for ReportConflict. Also
/// says whether the lease is sticky.
fn add_once(
    env: &PodEnv,
    conf: &NetConf,
    requested: Option<Ipv4Addr>,
    ipam: &mut IpamClient,
    dp: &mut dyn Datapath,
) -> Result<(bool, Added), CniError> {
    let allocate_step = crate::step!("ipamd_allocate");
    let Allocation {
        existing,
        sticky,
        offer,
    } = ipam.allocate(
        &conf.network,
        &env.attachment,
        &env.args.pod,
        requested,
        &env.netns,
    )?;
    drop(allocate_step);
    let release = |ipam: &mut IpamClient| {
        if existing {
            return;
        }
        if let Err(e) = ipam.release(&conf.network, &env.attachment, true) {
            warn!("could not release the address after a failed ADD (the runtime's DEL will): {e}");
        }
    };
    let plan = match offer.and_then(|o| plan_from(env, conf, o)) {
        Ok(p) => p,
        Err(e) => {
            release(ipam);
            return Err(e);
        }
    };
    if existing {
        // A repeated ADD: answer from what is there if it is intact.
        if let Ok(r) = dp.describe(&plan) {
            info!(address = %plan.address, "ADD repeated; attachment intact");
            return Ok((sticky, Added::Configured(r)));
        }
    }
    match dp.add(&plan) {
        Ok(a) => {
            if let Added::Configured(_) = a {
                let qos = plan
                    .qos
                    .map_or_else(|| "unlimited".to_string(), |q| q.to_string());
                info!(address = %plan.address, %qos, "ADD done");
            }
            Ok((sticky, a))
        }
        Err(e) => {
            release(ipam);
            Err(e)
        }
    }
}

pub fn del(env: &DelEnv, conf: &NetConf, dp: &mut dyn Datapath) -> Result<(), CniError> {
    let att = match &env.attachment {
        Ok(a) => a,
        Err(why) => {
            // No ADD can have succeeded with this attachment: nothing of
            // ours exists under it.
            info!("DEL of an attachment no ADD accepts ({why}); nothing to remove");
            return Ok(());
        }
    };
    // Address first, lease next, links last: an address is never free
    // while a pod may still carry it. The release runs on a second thread
    // from the moment the pod's macvlan has lost its address, while this
    // thread waits for the kernel to delete the links (RCU grace periods);
    // if the addresses could not be removed first, it starts after the
    // links are gone.
    let span = tracing::Span::current();
    let (go, wait) = std::sync::mpsc::sync_channel::<()>(1);
    let (torn, released) = std::thread::scope(|s| {
        let releaser = s.spawn(move || {
            let _e = span.enter();
            // Nothing arrives when the teardown failed: no release then.
            wait.recv().ok()?;
            let connect_step = crate::step!("ipamd_connect");
            Some(
                IpamClient::connect(
                    &conf.ipamd_socket,
                    conf.timeout,
                    conf.timeout.min(DEL_CONNECT_WAIT),
                )
                .and_then(|mut c| {
                    drop(connect_step);
                    let _s = crate::step!("ipamd_release");
                    c.release(&conf.network, att, false)
                }),
            )
        });
        let torn = tear_down(env, conf, att, dp, &go);
        if torn.is_ok() {
            let _ = go.try_send(());
        }
        drop(go);
        let released = releaser.join().unwrap_or(Some(Err(CniError::ReleaseFailed(
            "the release thread panicked",
        ))));
        (torn, released)
    });
    // A failed teardown fails the DEL (the runtime retries it), whether
    // or not the address was already released.
    torn?;
    let released = released.unwrap_or(Err(CniError::ReleaseFailed("the release did not run")));
    settle_release(conf, att, released)
}

/// DEL's removal of the attachment: its links (`go` is signalled once the
/// pod no longer carries its address), then its use of a VLAN device.
fn tear_down(
    env: &DelEnv,
    conf: &NetConf,
    att: &Attachment,
    dp: &mut dyn Datapath,
    go: &std::sync::mpsc::SyncSender<()>,
) -> Result<(), CniError> {
    {
        let _s = crate::step!("teardown");
        dp.del(att, env.netns.as_deref(), &mut || {
            let _ = go.try_send(());
        })?;
    }
    let _s = crate::step!("vlan_detach");
    // After the pod's macvlan is gone: the VLAN device's users (vlan.rs).
    crate::vlan::detach(&conf.vlan, att.container_id.as_str(), att.ifname.as_str())
}

/// DEL's last word on the release, the links being gone: done, or spooled
/// for ipamd when it is away.
fn settle_release(
    conf: &NetConf,
    att: &Attachment,
    released: Result<Released, CniError>,
) -> Result<(), CniError> {
    match released {
        Ok(r) => {
            info!(released = r.released, address = %r.address, "DEL done");
            Ok(())
        }
        // ipamd is away (restarting, or stuck): the links are gone, so the
        // address is unused; hand the release to ipamd through the spool.
        Err(e) if e.is_try_again_later() => {
            match spool::write(&conf.vlan.runtime_dir, &conf.network, att) {
                Ok(path) => {
                    warn!(record = %path.display(), "{e}; links removed, release spooled for ipamd");
                    Ok(())
                }
                Err(cause) => Err(CniError::SpoolFailed {
                    release: Box::new(e),
                    dir: conf.vlan.runtime_dir.clone(),
                    cause,
                }),
            }
        }
        Err(e) => Err(e),
    }
}

pub fn check(env: &PodEnv, conf: &NetConf, dp: &mut dyn Datapath) -> Result<(), CniError> {
    if conf.cni_version.starts_with("0.3") {
        return Err(CniError::CheckNotDefined {
            version: conf.cni_version.clone(),
        });
    }
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::config("CHECK needs prevResult"))?;
    // The netns first: a bad CNI_NETNS is the caller's error, whatever
    // ipamd says.
    dp.open_pod_netns(&env.netns)?;
    let mut ipam = IpamClient::connect(&conf.ipamd_socket, conf.timeout, Duration::ZERO)?;
    let checked = ipam
        .check(&conf.network, &env.attachment)
        .map_err(|e| match e {
            // ipamd answers NotFound both for "no lease" and "no network";
            // either way the attachment is not as ADD left it.
            CniError::UnknownNetwork(d) => CniError::NoLease(d),
            e => e,
        })?;
    let plan = plan_from(env, conf, checked.offer)?;
    if !checked.out_of_spec.is_empty() {
        // Settings recorded at ADD that the network no longer has (`racklinectl
        // network update`): the pod works, but not as the network says.
        return Err(CniError::OutOfSpec(checked.out_of_spec));
    }
    if !prev.ips.iter().any(|ip| ip.address == plan.address) {
        return Err(CniError::CheckFailed(format!(
            "the lease is {} but prevResult has {:?}",
            plan.address,
            prev.ips
                .iter()
                .map(|i| i.address.to_string())
                .collect::<Vec<_>>()
        )));
    }
    // The MAC ADD reported for this interface: pods set up before stable
    // MACs existed keep their kernel-assigned one, and CHECK must not fail
    // them for it.
    let prev_mac = prev
        .interfaces
        .iter()
        .find(|i| i.name == env.attachment.ifname.as_str() && i.sandbox.is_some())
        .map(|i| i.mac.to_ascii_lowercase());
    dp.check(&plan, prev_mac.as_deref())
}

pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = conf.valid_attachments.as_ref().ok_or_else(|| {
        // Without the list every lease would look stale: refuse rather than
        // release the node's pods.
        CniError::config("GC needs cni.dev/valid-attachments")
    })?;
    let mut ipam = IpamClient::connect(&conf.ipamd_socket, conf.timeout, Duration::ZERO)?;
    let released = ipam.gc(&conf.network, valid)?;
    info!(released, "GC done");
    Ok(())
}

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = CniError::NotAvailable;
    let mut ipam = IpamClient::connect(&conf.ipamd_socket, conf.timeout, Duration::ZERO)
        .map_err(|e| unavailable(e.to_string()))?;
    ipam.status(&conf.network)
        .map_err(|e| unavailable(e.to_string()))?
        .map_err(unavailable)
}
