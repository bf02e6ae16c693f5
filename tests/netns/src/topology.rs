//! The racks of docs/CONTRACTS.md ("Lab topology"): addresses, names, and the `ip` recipes that
//! wire the namespaces together.
//!
//! One rack (`Lab::builder()`, the flat lab):
//! ```text
//!   tor: br0 10.10.0.1/24 ── ctrl ──── ctrl: eth0 10.10.0.2/24   (etcd :2379/:2380, netmaster :7650)
//!                         ├─ n1   ──── n1:   uplink0 10.10.0.11/24, default via 10.10.0.1
//!                         └─ n2   ──── n2:   uplink0 10.10.0.12/24, default via 10.10.0.1
//! ```
//! Several racks (`.racks(2)`): a routed spine between per-rack TORs, the control plane on the
//! spine side (rack r is 1-based; its /24 is 10.<9+r>.0.0/24):
//! ```text
//!   spine: br0 10.254.0.1/24 ── ctrl ── ctrl: eth0 10.254.0.2/24, default via 10.254.0.1
//!          tor1 10.255.1.0/31 ───────── tor1: spine 10.255.1.1/31, default via 10.255.1.0
//!          tor2 10.255.2.0/31 ───────── tor2: spine 10.255.2.1/31, default via 10.255.2.0
//!          routes 10.<9+r>.0.0/24 via 10.255.r.1
//!   tor<r>: br0 10.<9+r>.0.1/24 ── r<r>n<k> ── r<r>n<k>: uplink0 10.<9+r>.0.<10+k>/24,
//!                                                        default via 10.<9+r>.0.1
//! ```
//! `ip_forward=1` is set only inside the spine and TOR namespaces of a multi-rack lab. Every
//! `ip` command runs inside one of the lab's namespaces (veth peers are created straight into
//! their final namespace with `peer name X netns Y`), so the root namespace never sees a link,
//! address, route or sysctl of ours.

use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};

use crate::cni::Cidr4;
use crate::host::Tools;
use crate::netns::{Netns, IP_TIMEOUT};
use crate::process::run;

/// Rack 1's subnet.
pub const SUBNET: &str = "10.10.0.0/24";
/// Prefix length of every rack address.
pub const PREFIX_LEN: u8 = 24;
/// Rack 1's gateway, on `br0` in `tor`.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
/// `ctrl`'s address in the one-rack lab: etcd and netmaster listen here.
pub const CTRL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 2);
/// First and last address of rack 1's pool (everything below is excluded).
pub const POOL_FIRST: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 64);
pub const POOL_LAST: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 254);
/// The range network `prod` excludes (infrastructure addresses).
pub const EXCLUDE: &str = "10.10.0.2-10.10.0.63";
/// etcd client URL of the one-rack lab with TLS (the default; [`crate::Lab::etcd_url`] for
/// any lab).
pub const ETCD_URL: &str = "https://10.10.0.2:2379";
/// netmaster URL of the one-rack lab with TLS ([`crate::Lab::netmaster_url`] for any lab).
pub const NETMASTER_URL: &str = "https://10.10.0.2:7650";
/// The Rackline network of the one-rack lab.
pub const NETWORK: &str = "prod";
/// Each node's uplink: the macvlan parent.
pub const UPLINK: &str = "uplink0";
/// `ctrl`'s interface into its bridge.
pub const CTRL_IF: &str = "eth0";
/// Bridge in every TOR (and in the spine).
pub const BRIDGE: &str = "br0";
/// The Kubernetes service CIDR every lab network routes via the node (`--host-route`).
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// Most nodes one rack holds: node addresses .11.. must stay below the pool (.10 + k ≤ .63).
pub const MAX_NODES: usize = 53;
/// Most racks a lab holds: rack subnets 10.<9+r>.0.0/24 must stay below 10.254 (the spine's
/// control subnet) and 10.255 (the TOR↔spine links).
pub const MAX_RACKS: usize = 244;
/// The spine's address on its control bridge (ctrl's default gateway) in a multi-rack lab.
pub const SPINE_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
/// `ctrl`'s address in a multi-rack lab (spine side): etcd and netmaster listen here.
pub const SPINE_CTRL_ADDR: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
/// TOR ↔ spine links are /31s (RFC 3021): spine side 10.255.r.0, TOR side 10.255.r.1.
pub const SPINE_LINK_PREFIX_LEN: u8 = 31;
/// In a TOR: the veth towards the spine. In the spine, the peer is named `tor<r>`.
pub const TOR_UPLINK: &str = "spine";
/// etcd client and peer ports, netmaster port, on `ctrl`.
pub const ETCD_CLIENT_PORT: u16 = 2379;
pub const ETCD_PEER_PORT: u16 = 2380;
pub const NETMASTER_PORT: u16 = 7650;

fn check_rack(r: usize) {
    assert!(
        (1..=MAX_RACKS).contains(&r),
        "rack {r} out of 1..={MAX_RACKS}"
    );
}

/// Second octet of rack `r`'s addresses (rack 1 = 10.10.0.0/24, rack 2 = 10.11.0.0/24).
fn rack_octet(r: usize) -> u8 {
    check_rack(r);
    9 + r as u8
}

/// Rack `r`'s (1-based) subnet, `10.<9+r>.0.0/24`.
pub fn rack_subnet(r: usize) -> Cidr4 {
    Cidr4 {
        addr: Ipv4Addr::new(10, rack_octet(r), 0, 0),
        prefix: PREFIX_LEN,
    }
}

/// Rack `r`'s gateway (its TOR's address on `br0`), `10.<9+r>.0.1`.
pub fn rack_gateway(r: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, rack_octet(r), 0, 1)
}

/// Node `k` (1-based) of rack `r`: `10.<9+r>.0.<10+k>`.
pub fn rack_node_address(r: usize, k: usize) -> Ipv4Addr {
    assert!(
        (1..=MAX_NODES).contains(&k),
        "node index {k} out of 1..={MAX_NODES}"
    );
    Ipv4Addr::new(10, rack_octet(r), 0, 10 + k as u8)
}

/// First and last allocatable address of rack `r`'s pool (`.64`–`.254`).
pub fn rack_pool(r: usize) -> (Ipv4Addr, Ipv4Addr) {
    let o = rack_octet(r);
    (Ipv4Addr::new(10, o, 0, 64), Ipv4Addr::new(10, o, 0, 254))
}

/// The infrastructure range every rack network excludes (`.2`–`.63`: ctrl, nodes).
pub fn rack_exclude(r: usize) -> String {
    let o = rack_octet(r);
    format!("10.{o}.0.2-10.{o}.0.63")
}

/// Whether `addr` lies in rack `r`'s allocatable pool.
pub fn in_rack_pool(r: usize, addr: Ipv4Addr) -> bool {
    let (first, last) = rack_pool(r);
    (first..=last).contains(&addr)
}

/// The rack whose subnet holds `addr`, if any.
pub fn rack_of_address(addr: Ipv4Addr) -> Option<usize> {
    let [a, b, _, _] = addr.octets();
    let r = usize::from(b).checked_sub(9)?;
    (a == 10 && (1..=MAX_RACKS).contains(&r)).then_some(r)
}

/// `(spine side, TOR side)` of rack `r`'s /31 link: `10.255.r.0` / `10.255.r.1`.
pub fn spine_link(r: usize) -> (Ipv4Addr, Ipv4Addr) {
    check_rack(r);
    let r = r as u8;
    (Ipv4Addr::new(10, 255, r, 0), Ipv4Addr::new(10, 255, r, 1))
}

/// Node `k`'s (1-based) address in rack 1: n1 = .11, n2 = .12, …
pub fn node_address(k: usize) -> Ipv4Addr {
    rack_node_address(1, k)
}

/// Whether `addr` lies in rack 1's allocatable pool (network `prod` of the one-rack lab).
pub fn in_pool(addr: Ipv4Addr) -> bool {
    in_rack_pool(1, addr)
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

/// A switch (`tor`, or the spine's control side): lo, bridge `br0` carrying `addr`/`prefix`.
/// STP stays off (the default), so ports forward as soon as they are up.
pub(crate) fn wire_switch(tools: &Tools, ns: &Netns, addr: Ipv4Addr, prefix: u8) -> Result<()> {
    ip_batch(
        tools,
        ns,
        &[
            "link set lo up".into(),
            format!("link add {BRIDGE} type bridge"),
            format!("addr add {addr}/{prefix} dev {BRIDGE}"),
            format!("link set {BRIDGE} up"),
        ],
    )
}

/// A host on a switch: a veth from `switch`'s bridge (port `port`) to `peer_ns` (named
/// `peer_if`), addressed `addr`/24; `default_gw`: also a default route via that address.
pub(crate) fn wire_port(
    tools: &Tools,
    switch: &Netns,
    port: &str,
    peer_ns: &Netns,
    peer_if: &str,
    addr: Ipv4Addr,
    default_gw: Option<Ipv4Addr>,
) -> Result<()> {
    ensure!(
        port.len() <= 15 && peer_if.len() <= 15,
        "interface name too long (IFNAMSIZ)"
    );
    ip_batch(
        tools,
        switch,
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
    if let Some(gw) = default_gw {
        lines.push(format!("route add default via {gw} dev {peer_if}"));
    }
    ip_batch(tools, peer_ns, &lines)
}

/// Rack `r`'s TOR ↔ spine link: veth `tor<r>` (spine) ↔ `spine` (TOR) on a /31; the spine
/// routes the rack subnet to the TOR, the TOR sends everything else to the spine.
pub(crate) fn wire_spine_link(tools: &Tools, spine: &Netns, tor: &Netns, r: usize) -> Result<()> {
    let (spine_side, tor_side) = spine_link(r);
    let spine_if = format!("tor{r}");
    ip_batch(
        tools,
        spine,
        &[
            format!(
                "link add {spine_if} type veth peer name {TOR_UPLINK} netns {}",
                tor.name()
            ),
            format!("addr add {spine_side}/{SPINE_LINK_PREFIX_LEN} dev {spine_if}"),
            format!("link set {spine_if} up"),
        ],
    )?;
    ip_batch(
        tools,
        tor,
        &[
            format!("addr add {tor_side}/{SPINE_LINK_PREFIX_LEN} dev {TOR_UPLINK}"),
            format!("link set {TOR_UPLINK} up"),
            format!("route add default via {spine_side} dev {TOR_UPLINK}"),
        ],
    )?;
    ip_batch(
        tools,
        spine,
        &[format!(
            "route add {} via {tor_side} dev {spine_if}",
            rack_subnet(r)
        )],
    )
}

const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

/// Turns routing on inside `ns` (a spine or TOR namespace the lab created) and reads it back.
/// Net sysctls resolve against the netns of the process that opens them, so a shell forked into
/// `ns` changes `ns` only: the root namespace's `ip_forward` is never written.
pub(crate) fn enable_forwarding(ns: &Netns) -> Result<()> {
    let mut cmd = std::process::Command::new("sh");
    cmd.env_clear()
        .env("PATH", crate::process::CHILD_PATH)
        .args(["-c", &format!("echo 1 > {IP_FORWARD} && cat {IP_FORWARD}")]);
    let out = run(cmd, Some(ns), b"", IP_TIMEOUT)?.check()?;
    ensure!(
        out.stdout.trim() == "1",
        "ip_forward in netns {} reads {:?} after enabling it",
        ns.name(),
        out.stdout.trim()
    );
    Ok(())
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

    #[test]
    fn rack_addressing_plan() {
        assert_eq!(rack_subnet(1).to_string(), SUBNET);
        assert_eq!(rack_subnet(2).to_string(), "10.11.0.0/24");
        assert_eq!(rack_gateway(1), GATEWAY);
        assert_eq!(rack_gateway(2), Ipv4Addr::new(10, 11, 0, 1));
        assert_eq!(rack_node_address(2, 1), Ipv4Addr::new(10, 11, 0, 11));
        assert_eq!(rack_pool(1), (POOL_FIRST, POOL_LAST));
        assert_eq!(rack_exclude(1), EXCLUDE);
        assert_eq!(rack_exclude(2), "10.11.0.2-10.11.0.63");
        assert!(in_rack_pool(2, Ipv4Addr::new(10, 11, 0, 64)));
        assert!(!in_rack_pool(2, Ipv4Addr::new(10, 10, 0, 64)));
        assert_eq!(rack_of_address(Ipv4Addr::new(10, 11, 0, 70)), Some(2));
        assert_eq!(rack_of_address(Ipv4Addr::new(10, 9, 0, 70)), None);
        assert_eq!(rack_of_address(SPINE_CTRL_ADDR), None);
        assert_eq!(
            spine_link(2),
            (Ipv4Addr::new(10, 255, 2, 0), Ipv4Addr::new(10, 255, 2, 1))
        );
        // The last rack stays clear of the spine's subnets.
        assert_eq!(rack_gateway(MAX_RACKS), Ipv4Addr::new(10, 253, 0, 1));
    }
}
