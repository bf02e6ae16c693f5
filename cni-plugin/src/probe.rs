//! Duplicate-address probe and announcement, and what ADD does when the
//! probe (or the node-address check) finds the address in use.
//!
//! Order inside the pod netns: probe → configure → up → announce.
//! * probe: the macvlan is up but carries no address (RFC 5227 probes have
//!   sender IP 0.0.0.0, so no peer learns anything from them); `count`
//!   probes `interval` apart, listening the whole `count × interval` for
//!   any host claiming the address. Off (no frame, no delay) unless the
//!   network enables it.
//! * announce: after the address is configured and the link is up, two
//!   gratuitous ARP requests, so peers (the TOR included) that cached the
//!   address with another MAC switch at once (Spiderpool #4650). This
//!   replaces `arp_notify`, which needed its own netns thread per ADD and
//!   does not fire when the link came up before its address (the probe).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use crate::arp::{Arp, ArpSocket, BROADCAST};
use crate::error::CniError;

/// How many addresses one ADD tries before it gives up: each conflict
/// costs a probe budget (≤ 300 ms by default) and an ipamd round trip.
pub const MAX_ATTEMPTS: usize = 3;

/// A network's probe settings as the plugin uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeParams {
    pub count: u32,
    pub interval: Duration,
}

/// Brings the macvlan up and returns the MAC it carries: the stable MAC,
/// or the alternate one when the stable MAC is busy on the parent. That
/// happens when two incarnations of one sticky pod overlap on a node (the
/// new sandbox is set up before the old one's DEL): macvlan refuses to open
/// a second device with a MAC already used on the same lower device
/// (`macvlan_open` → `macvlan_addr_busy` → EADDRINUSE). The newer one keeps
/// the alternate MAC until it is re-created.
pub fn bring_up(
    pod: &mut dyn crate::links::LinkOps,
    index: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
) -> Result<[u8; 6], CniError> {
    let busy =
        |e: &rackline_netlink::NetlinkError| e.errno() == Some(nix::errno::Errno::EADDRINUSE);
    let up_err = |e| CniError::datapath_by("bringing the pod interface up", e);
    match pod.set_up(index) {
        Ok(()) => Ok(mac),
        Err(e) if busy(&e) => {
            let alt = rackline_model::mac::alternate_for(ip);
            warn!(%ip, stable = %rackline_model::mac::format(mac), alternate = %rackline_model::mac::format(alt), "stable MAC in use by another macvlan on this parent (an older incarnation of this pod?); using the alternate MAC");
            pod.set_mac(index, alt)
                .map_err(|e| CniError::datapath_by("setting the alternate MAC", e))?;
            pod.set_up(index).map_err(up_err)?;
            Ok(alt)
        }
        Err(e) => Err(up_err(e)),
    }
}

fn io_err(what: &str, e: std::io::Error) -> CniError {
    CniError::datapath_by(what, e)
}

/// Probes for `ip` on `ifindex` (up, no address). Returns the MAC of the
/// host that claims it, if any.
pub fn probe(
    sock: &ArpSocket,
    ifindex: u32,
    mac: [u8; 6],
    ip: Ipv4Addr,
    p: &ProbeParams,
) -> Result<Option<[u8; 6]>, CniError> {
    sock.bind(ifindex)
        .map_err(|e| io_err("binding the ARP socket", e))?;
    let start = Instant::now();
    let frame = Arp::probe(mac, ip);
    for i in 0..p.count {
        sock.send(ifindex, BROADCAST, &frame)
            .map_err(|e| io_err("sending an ARP probe", e))?;
        let until = start + p.interval * (i + 1);
        if let Some(other) = sock
            .watch_until(until, ip, mac)
            .map_err(|e| io_err("reading ARP", e))?
        {
            debug!(%ip, probes = i + 1, "probe found the address in use");
            return Ok(Some(other));
        }
    }
    debug!(%ip, elapsed = ?start.elapsed(), "probe found the address free");
    Ok(None)
}

/// Announces `ip` at `mac`. Best effort: a peer that misses it keeps a stale
/// entry only until its own ARP ageing, so a failure is logged, not fatal.
pub fn announce(sock: &ArpSocket, ifindex: u32, mac: [u8; 6], ip: Ipv4Addr) {
    let frame = Arp::announcement(mac, ip);
    for _ in 0..2 {
        if let Err(e) = sock.send(ifindex, BROADCAST, &frame) {
            warn!(%ip, "gratuitous ARP not sent: {e}");
            return;
        }
    }
}

/// One address that turned out to be in use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub address: Ipv4Addr,
    pub mac: [u8; 6],
    /// The node interface carrying it, when it is one of this node's own
    /// addresses (no probe can see those: a macvlan never hears its parent).
    pub node_link: Option<String>,
}

impl Conflict {
    fn holder(&self) -> String {
        match &self.node_link {
            Some(l) => format!(
                "this node's {l} ({})",
                rackline_model::mac::format(self.mac)
            ),
            None => rackline_model::mac::format(self.mac),
        }
    }
}

fn list(conflicts: &[Conflict]) -> String {
    conflicts
        .iter()
        .map(|c| format!("{} (in use by {})", c.address, c.holder()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A sticky pod's address is its identity: it never takes another one.
pub fn sticky_error(c: &Conflict, network: &str, pod: &str) -> CniError {
    CniError::StickyAddressInUse {
        address: c.address,
        holder: match &c.node_link {
            Some(_) => c.holder(),
            None => format!("MAC {}", c.holder()),
        },
        network: network.to_owned(),
        pod: pod.to_owned(),
    }
}

/// Every address offered was in use.
/// `then`: the Allocate error that ended the attempts, if any.
pub fn exhausted_error(conflicts: &[Conflict], network: &str, then: Option<CniError>) -> CniError {
    CniError::ConflictsExhausted {
        attempts: conflicts.len(),
        network: network.to_owned(),
        list: list(conflicts),
        then: then.map(Box::new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;
    use rackline_proto::ipam::v1 as pb;

    #[test]
    fn params_follow_ipamd_and_are_clamped() {
        assert_eq!(crate::ipam::probe_params(None), None);
        let p = crate::ipam::probe_params(Some(&pb::ProbeConfig {
            count: 3,
            interval_ms: 100,
            quarantine_secs: 600,
        }))
        .unwrap();
        assert_eq!((p.count, p.interval), (3, Duration::from_millis(100)));
        let p = crate::ipam::probe_params(Some(&pb::ProbeConfig {
            count: 1000,
            interval_ms: 0,
            quarantine_secs: 0,
        }))
        .unwrap();
        assert_eq!((p.count, p.interval), (10, Duration::from_millis(10)));
    }

    #[test]
    fn errors_name_the_addresses_and_macs() {
        let c = Conflict {
            address: Ipv4Addr::new(10, 10, 0, 70),
            mac: [2, 0, 0, 0, 0, 9],
            node_link: None,
        };
        let e = sticky_error(&c, "prod", "default/db-0");
        assert_eq!(e.code(), code::ADDRESS_CONFLICT);
        assert!(e.details().contains("address 10.10.0.70 is in use by MAC 02:00:00:00:00:09 on network prod; the sticky pod default/db-0 cannot start until it is freed"), "{e}");
        let d = Conflict {
            address: Ipv4Addr::new(10, 10, 0, 71),
            mac: [2, 0, 0, 0, 0, 10],
            node_link: None,
        };
        let n = Conflict {
            address: Ipv4Addr::new(10, 10, 0, 72),
            mac: [2, 0, 0, 0, 0, 11],
            node_link: Some("uplink0".into()),
        };
        let e = exhausted_error(&[c, d, n.clone()], "prod", None);
        assert!(e.details().contains("10.10.0.70 (in use by 02:00:00:00:00:09), 10.10.0.71 (in use by 02:00:00:00:00:0a), 10.10.0.72 (in use by this node's uplink0 (02:00:00:00:00:0b))"), "{e}");
        let e = sticky_error(&n, "prod", "default/db-0");
        assert!(
            e.details().contains(
                "address 10.10.0.72 is in use by this node's uplink0 (02:00:00:00:00:0b)"
            ),
            "{e}"
        );
    }
}
