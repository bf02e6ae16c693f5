//! The pod namespace as ADD's steps see it beyond netlink: its sysctls, its
//! packet filter table and its ARP socket (duplicate-address probe and
//! announcement). Each is a small trait implemented by the kernel's handle
//! and, in unit tests, by a fake that logs into the shared world of
//! `links::fake`, so one log orders every step and its undo.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use rackline_model::filter::PodFilter;
use rackline_netlink::{run_in_netns, Netns};
use rackline_nft::{NftError, PodTable};

use crate::arp::ArpSocket;
use crate::datapath::dp;
use crate::error::CniError;
use crate::probe::{self, ProbeParams};

/// The pod netns' sysctls.
pub trait Sysctls {
    /// Writes each `(key under /proc/sys, value)` in the pod netns, all in
    /// one entry into the namespace; `what` names them in the error.
    fn write(&mut self, what: &str, settings: &[(&str, &str)]) -> Result<(), CniError>;
}

/// The real pod sysctls: one short-lived thread inside the pod netns per
/// [`Sysctls::write`] (this thread never changes namespace).
pub struct PodSysctls<'a>(pub &'a Netns);

impl Sysctls for PodSysctls<'_> {
    fn write(&mut self, what: &str, settings: &[(&str, &str)]) -> Result<(), CniError> {
        let r = run_in_netns(self.0, || -> std::io::Result<()> {
            for (key, value) in settings {
                // No O_CREAT/O_TRUNC: a missing key must be ENOENT, and proc
                // sysctls take the value in a single write.
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(Path::new("/proc/sys").join(key))?
                    .write_all(value.as_bytes())?;
            }
            Ok(())
        })
        .map_err(|e| dp("entering the pod netns", e))?;
        r.map_err(|e| CniError::datapath_by(what, e))
    }
}

/// The attachment's packet filter table in the pod (`rackline_nft`).
pub trait PacketFilter {
    fn table(&self) -> &str;
    /// Creates or atomically replaces the table with `f`.
    fn program(&mut self, f: &PodFilter) -> Result<(), NftError>;
    /// Removes the table; `false` when there was none.
    fn remove(&mut self) -> Result<bool, NftError>;
}

impl PacketFilter for PodTable {
    fn table(&self) -> &str {
        PodTable::table(self)
    }
    fn program(&mut self, f: &PodFilter) -> Result<(), NftError> {
        PodTable::program(self, f).map(drop)
    }
    fn remove(&mut self) -> Result<bool, NftError> {
        PodTable::remove(self)
    }
}

/// ARP on the pod's macvlan (`probe.rs`).
pub trait ArpOps {
    /// Probes for `ip` on `ifindex` (up, no address): the MAC of the host
    /// that claims it, if any.
    fn probe(
        &self,
        ifindex: u32,
        mac: [u8; 6],
        ip: Ipv4Addr,
        p: &ProbeParams,
    ) -> Result<Option<[u8; 6]>, CniError>;
    /// Announces `ip` at `mac` (best effort).
    fn announce(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr);
}

impl ArpOps for ArpSocket {
    fn probe(
        &self,
        ifindex: u32,
        mac: [u8; 6],
        ip: Ipv4Addr,
        p: &ProbeParams,
    ) -> Result<Option<[u8; 6]>, CniError> {
        probe::probe(self, ifindex, mac, ip, p)
    }
    fn announce(&self, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) {
        probe::announce(self, ifindex, mac, ip)
    }
}

#[cfg(test)]
pub mod fake {
    //! Fakes of the pod-side handles, logging into a `links::fake` world
    //! (`"pod sysctl <key>=<value>"`, `"pod nft ..."`, `"pod arp ..."`) and
    //! failing at its `fail_at` like the netlink calls.

    use std::cell::RefCell;
    use std::rc::Rc;

    use nix::errno::Errno;

    use super::*;
    use crate::links::fake::World;

    fn call(world: &Rc<RefCell<World>>, what: String) -> bool {
        let mut w = world.borrow_mut();
        w.calls.push(what);
        w.fail_at == Some(w.calls.len())
    }

    /// The pod's sysctls, kept in the world's `sysctls`.
    pub struct FakeSysctls(pub Rc<RefCell<World>>);

    impl Sysctls for FakeSysctls {
        fn write(&mut self, what: &str, settings: &[(&str, &str)]) -> Result<(), CniError> {
            let text: Vec<String> = settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
            if call(&self.0, format!("pod sysctl {}", text.join(" "))) {
                return Err(CniError::datapath_by(
                    what,
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
            let mut w = self.0.borrow_mut();
            for (k, v) in settings {
                w.sysctls.insert((*k).to_owned(), (*v).to_owned());
            }
            Ok(())
        }
    }

    /// The pod's filter table: present or not.
    pub struct FakeFilter {
        pub world: Rc<RefCell<World>>,
        pub table: String,
    }

    fn refused(what: &'static str) -> NftError {
        NftError::Kernel {
            what,
            errno: Errno::EPERM,
        }
    }

    impl PacketFilter for FakeFilter {
        fn table(&self) -> &str {
            &self.table
        }
        fn program(&mut self, _f: &PodFilter) -> Result<(), NftError> {
            if call(&self.world, format!("pod nft program {}", self.table)) {
                return Err(refused("the pod filter table"));
            }
            self.world.borrow_mut().filter = true;
            Ok(())
        }
        fn remove(&mut self) -> Result<bool, NftError> {
            if call(&self.world, format!("pod nft remove {}", self.table)) {
                return Err(refused("deleting the pod filter table"));
            }
            Ok(std::mem::take(&mut self.world.borrow_mut().filter))
        }
    }

    /// ARP: `claimed` is the MAC of a host answering the probe, if any.
    pub struct FakeArp {
        pub world: Rc<RefCell<World>>,
        pub claimed: Option<[u8; 6]>,
    }

    impl ArpOps for FakeArp {
        fn probe(
            &self,
            ifindex: u32,
            _mac: [u8; 6],
            ip: Ipv4Addr,
            _p: &ProbeParams,
        ) -> Result<Option<[u8; 6]>, CniError> {
            if call(&self.world, format!("pod arp probe {ip} on {ifindex}")) {
                return Err(CniError::datapath_by(
                    "sending an ARP probe",
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ));
            }
            Ok(self.claimed)
        }
        fn announce(&self, ifindex: u32, _mac: [u8; 6], ip: Ipv4Addr) {
            call(&self.world, format!("pod arp announce {ip} on {ifindex}"));
        }
    }
}
