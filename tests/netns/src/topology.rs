//! The rack of docs/CONTRACTS.md ("Lab topology"): addresses, names, and the `ip` recipes that
//! wire the namespaces together.
//!
//! ```text
//!   tor: br0 10.10.0.1/24 ── ctrl ──── ctrl: eth0 10.10.0.2/24   (etcd :2379/:2380, netmaster :7650)
//!                         ├─ n1   ──── n1:   uplink0 10.10.0.11/24, default via 10.10.0.1
//!                         └─ n2   ──── n2:   uplink0 10.10.0.12/24, default via 10.10.0.1
//! ```
//! Every `ip` command runs inside one of the lab's namespaces (veth peers are created straight
//! into their final namespace with `peer name X netns Y`), so the root namespace never sees a
//! link, address or route of ours.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};

use crate::host::Tools;
use crate::netns::{Netns, IP_TIMEOUT};
use crate::process::run;

/// The rack subnet.
pub const SUBNET: &str = "10.10.0.0/24";
/// Prefix length of every rack address.
pub const PREFIX_LEN: u8 = 24;
/// The rack gateway, on `br0` in `tor`.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// `ctrl`'s address: etcd and netmaster listen here.
pub const CTRL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
/// First and last address of network `prod`'s pool (everything below is excluded).
pub const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 64);
pub const POOL_LAST: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 254);
/// The range `prod` excludes (infrastructure addresses).
pub const EXCLUDE: &str = "10.10.0.2-10.10.0.63";
/// etcd client URL, as every Rackline daemon is given it.
pub const ETCD_URL: &str = "http://10.10.0.2:2379";
/// etcd peer URL (single member).
pub const ETCD_PEER_URL: &str = "http://10.10.0.2:2380";
/// netmaster's listen address and the URL racklinectl is pointed at.
pub const NETMASTER_LISTEN: &str = "10.10.0.2:7650";
pub const NETMASTER_URL: &str = "http://10.10.0.2:7650";
/// The Rackline network every lab creates.
pub const NETWORK: &str = "prod";
/// Each node's uplink: the macvlan parent.
pub const UPLINK: &str = "uplink0";
/// `ctrl`'s interface into the bridge.
pub const CTRL_IF: &str = "eth0";
/// Bridge in `tor`.
pub const BRIDGE: &str = "br0";
/// The Kubernetes service CIDR `prod` routes via the node (`--host-route`).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Most nodes one rack holds: node addresses 10.10.0.11.. must stay below the pool
/// (10.10.0.10 + k ≤ 10.10.0.63).
pub const MAX_NODES: usize = 53;

/// Node `k`'s (1-based) address: n1 = .11, n2 = .12, … (`10.10.0.1K` for k < 10).
pub fn node_address(k: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_NODES).contains(&k),
        "node index {k} out of 1..={MAX_NODES}"
    );
    Ipv4Addr::new(10, 10, 0, 10 + k as u8)
}

/// Whether `addr` lies in `prod`'s allocatable pool.
pub fn in_pool(addr: Ipv4Addr) -> bool {
    (POOL_FIRST..=POOL_LAST).contains(&addr)
}

/// Runs `ip -batch -` inside `ns`: one process for a whole recipe, stopping at the first error.
pub(crate) fn ip_batch(tools: &Tools, ns: &Netns, lines: &[String]) -> Result<()> {
    let script = lines.join("\n") + "\n";
    run(
        tools.ip_cmd(["-batch", "-"]),
        Some(ns),
        script.as_bytes(),
        IP_TIMEOUT,
    )?
    .check()
    .with_context(|| format!("ip batch in netns {}:\n{script}", ns.name()))?;
    Ok(())
}

/// `tor`: lo, bridge `br0` with the gateway address. STP stays off (the default), so ports
/// forward as soon as they are up.
pub(crate) fn wire_tor(tools: &Tools, tor: &Netns) -> Result<()> {
    ip_batch(
        tools,
        tor,
        &[
            "link set lo up".into(),
            format!("link add {BRIDGE} type bridge"),
            format!("addr add {GATEWAY}/{PREFIX_LEN} dev {BRIDGE}"),
            format!("link set {BRIDGE} up"),
        ],
    )
}

/// A veth from `tor`'s bridge (port `port`) to `peer_ns` (named `peer_if`), addressed `addr`.
/// `default_gw`: also a default route via the rack gateway.
pub(crate) fn wire_port(
    tools: &Tools,
    tor: &Netns,
    port: &str,
    peer_ns: &Netns,
    peer_if: &str,
    addr: Ipv4Addr,
    default_gw: bool,
) -> Result<()> {
    ensure!(
        port.len() <= 15 && peer_if.len() <= 15,
        "interface name too long (IFNAMSIZ)"
    );
    ip_batch(
        tools,
        tor,
        &[
            format!(
                "link add {port} type veth peer name {peer_if} netns {}",
                peer_ns.name()
            ),
            format!("link set {port} master {BRIDGE}"),
            format!("link set {port} up"),
        ],
    )?;
    let mut lines = vec![
        "link set lo up".to_owned(),
        format!("addr add {addr}/{PREFIX_LEN} dev {peer_if}"),
        format!("link set {peer_if} up"),
    ];
    if default_gw {
        lines.push(format!("route add default via {GATEWAY} dev {peer_if}"));
    }
    ip_batch(tools, peer_ns, &lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_follow_the_contract() {
        assert_eq!(node_address(1), Ipv4Addr::new(10, 10, 0, 11));
        assert_eq!(node_address(2), Ipv4Addr::new(10, 10, 0, 12));
        assert_eq!(node_address(MAX_NODES), Ipv4Addr::new(10, 10, 0, 63));
        assert!(!in_pool(node_address(MAX_NODES)));
        assert!(in_pool(POOL_FIRST) && in_pool(POOL_LAST) && !in_pool(GATEWAY));
    }
}
