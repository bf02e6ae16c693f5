//! Builds, checks and removes a pod's attachment:
//!
//! * a macvlan (bridge mode) on the node uplink (or its VLAN sub-interface),
//!   born directly inside the pod netns, carrying the leased address and the
//!   default route via the rack gateway;
//! * a veth pair node<->pod, because a macvlan child can never talk to its
//!   own parent (kernel design; Kubernetes #41736): the node gets a /32 to
//!   the pod, the pod gets /32s to the node's addresses and the configured
//!   host routes (e.g. the service CIDR) via the node.
//!
//! One netlink socket per namespace; the pod's is opened by a short-lived
//! thread inside the pod netns, so this thread never changes namespace.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rackline_netlink::{
    run_in_netns, LinkInfo, MacvlanMode, Netlink, NetlinkError, Netns, RouteScope, RouteSpec,
};
use tracing::warn;

use crate::arp::ArpSocket;
use crate::error::{code, CniError};
use crate::names;
use crate::probe::{self, ProbeParams};
use crate::result::{format_mac, CniResult, Interface, IpConfig, Route};
use crate::vlan::{self, VlanOptions};

/// Everything ADD needs, resolved and validated before anything is touched.
#[derive(Debug, Clone)]
pub struct AddPlan {
    pub container_id: String,
    pub ifname: String,
    pub netns_path: String,
    pub address: Ipv4Network,
    pub gateway: Ipv4Addr,
    pub master: String,
    /// 0 = inherit from the parent.
    pub mtu: u32,
    pub vlan: Option<u16>,
    /// Where VLAN devices' users are recorded and the cleanup policy.
    pub vlan_opts: VlanOptions,
    /// Extra routes through the macvlan: (dst, next hop).
    pub routes: Vec<(Ipv4Network, Ipv4Addr)>,
    /// CIDRs the pod reaches through its node.
    pub host_routes: Vec<Ipv4Network>,
    /// Per-pod shaping (all QoS levels resolved); `None` = unshaped.
    pub qos: Option<rackline_model::qos::Effective>,
    /// The macvlan's MAC: derived from the address (`model::mac`).
    pub mac: [u8; 6],
    /// Duplicate-address probe; None = off.
    pub probe: Option<ProbeParams>,
}

/// What ADD ended with when nothing failed.
#[derive(Debug)]
pub enum Added {
    Configured(CniResult),
    /// The probe found the address in use (everything was rolled back).
    Conflict(probe::Conflict),
}

/// The pod's netlink socket and, when the network probes, its ARP socket,
/// opened by ONE short-lived thread inside the pod netns (a socket keeps the
/// namespace it was born in), so the rest of ADD runs on this thread without
/// setns.
///
/// Without a probe no packet socket is opened: closing one costs an RCU
/// grace period (`packet_release` → `synchronize_net`, measured 13-16 ms
/// here), which would double the ADD. The announcement is then the
/// kernel's: the same thread sets the pod netns' `default.arp_notify`, so the
/// macvlan created afterwards inherits it and sends a gratuitous ARP when it
/// comes up with its address already configured (`inetdev_event`,
/// NETDEV_UP). The pod netns is the plugin's to configure; nothing outside it
/// changes.
fn open_pod_sockets(
    pod_ns: &Netns,
    probing: bool,
) -> Result<(Netlink, Option<ArpSocket>), CniError> {
    let (nl, arp) = run_in_netns(pod_ns, || {
        let nl = Netlink::new();
        let arp = if probing {
            ArpSocket::open().map(Some)
        } else {
            std::fs::write("/proc/sys/net/ipv4/conf/default/arp_notify", b"1").map(|()| None)
        };
        (nl, arp)
    })
    .map_err(|e| dp("entering the pod netns", e))?;
    let nl = nl.map_err(|e| dp("opening netlink in the pod netns", e))?;
    let arp = arp.map_err(|e| {
        CniError::datapath(format!(
            "preparing the announcement (ARP socket or arp_notify) in the pod netns: {e}"
        ))
    })?;
    Ok((nl, arp))
}

/// What ADD did, undone in reverse order when a later step fails.
enum Undo {
    HostLink(u32),
    PodLink(u32),
    Vlan(vlan::Attached),
}

pub fn open_pod_netns(path: &str) -> Result<Netns, CniError> {
    Netns::open(std::path::Path::new(path)).map_err(|e| {
        if e.is_not_found() {
            CniError::new(
                code::CONTAINER_UNKNOWN,
                "the pod network namespace does not exist",
                format!("{path}: {e}"),
            )
        } else {
            CniError::new(
                code::INVALID_ENV,
                "cannot open the pod network namespace",
                format!("CNI_NETNS={path}: {e}"),
            )
        }
    })
}

fn dp(what: &str, e: NetlinkError) -> CniError {
    CniError::datapath(format!("{what}: {e}"))
}

/// The node's own IPv4 addresses (global scope), those on the master first,
/// so the first one is the natural next hop for host routes.
fn node_addresses(host: &mut Netlink, master_index: u32) -> Result<Vec<Ipv4Addr>, CniError> {
    let mut addrs = host
        .addrs(None)
        .map_err(|e| dp("listing node addresses", e))?;
    addrs.retain(|a| a.scope == 0 && !a.addr.ip().is_loopback());
    addrs.sort_by_key(|a| (a.index != master_index, a.index));
    let mut out: Vec<Ipv4Addr> = Vec::new();
    for a in addrs {
        if !out.contains(&a.addr.ip()) {
            out.push(a.addr.ip());
        }
    }
    Ok(out)
}

pub fn add(plan: &AddPlan, pod_ns: &Netns) -> Result<Added, CniError> {
    let mut host = Netlink::new().map_err(|e| dp("opening netlink", e))?;
    let (mut pod, arp) = open_pod_sockets(pod_ns, plan.probe.is_some())?;
    let mut undo = Vec::new();
    match build(&mut host, &mut pod, arp.as_ref(), pod_ns, plan, &mut undo) {
        Ok(r @ Added::Configured(_)) => Ok(r),
        r => {
            for step in undo.into_iter().rev() {
                let done = match step {
                    Undo::HostLink(i) => host.delete_link(i),
                    Undo::PodLink(i) => pod.delete_link(i),
                    Undo::Vlan(a) => {
                        vlan::rollback(
                            &mut host,
                            &plan.vlan_opts,
                            &a,
                            &plan.container_id,
                            &plan.ifname,
                        );
                        Ok(())
                    }
                };
                if let Err(re) = done {
                    if !re.is_not_found() {
                        warn!("rollback step failed: {re}");
                    }
                }
            }
            r
        }
    }
}

fn build(
    host: &mut Netlink,
    pod: &mut Netlink,
    arp: Option<&ArpSocket>,
    pod_ns: &Netns,
    plan: &AddPlan,
    undo: &mut Vec<Undo>,
) -> Result<Added, CniError> {
    let master = host
        .link_by_name(&plan.master)
        .map_err(|e| dp("looking up the master interface", e))?
        .ok_or_else(|| {
            CniError::datapath(format!(
                "master interface {:?} does not exist on this node; fix the network's master or set \"master\" in the CNI config",
                plan.master
            ))
        })?;
    let parent = match plan.vlan {
        None => master.index,
        Some(vid) => {
            let a = vlan::attach(
                host,
                &plan.vlan_opts,
                &master,
                vid,
                &plan.container_id,
                &plan.ifname,
            )?;
            let index = a.index;
            undo.push(Undo::Vlan(a));
            index
        }
    };
    let mtu = (plan.mtu != 0).then_some(plan.mtu);
    let node_addrs = node_addresses(host, master.index)?;

    // A veth left by a crashed earlier ADD of this very attachment would
    // block the new one; its name is derived from the attachment, so it is
    // ours to remove.
    let host_veth = names::host_veth(&plan.container_id, &plan.ifname);
    if let Some(stale) = host
        .link_by_name(&host_veth)
        .map_err(|e| dp("looking up veth", e))?
    {
        warn!(name = %host_veth, "removing stale veth from an earlier attempt");
        host.delete_link(stale.index)
            .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
            .map_err(|e| dp("removing stale veth", e))?;
    }

    // 1. macvlan, born in the pod netns.
    let mv = create_macvlan(host, pod, pod_ns, plan, parent, mtu)?;
    undo.push(Undo::PodLink(mv.index));

    // 2. node<->pod veth.
    let pod_veth = names::pod_veth(&plan.ifname);
    host.create_veth(&host_veth, &pod_veth, Some(pod_ns), mtu)
        .map_err(|e| dp(&format!("creating veth {host_veth}/{pod_veth}"), e))?;
    let hv = lookup(host, &host_veth)?;
    undo.push(Undo::HostLink(hv.index));
    let pv = lookup(pod, &pod_veth)?;
    let group = names::link_group(&plan.ifname);
    pod.set_group(mv.index, group)
        .map_err(|e| dp("tagging the pod interface", e))?;
    pod.set_group(pv.index, group)
        .map_err(|e| dp("tagging the pod veth", e))?;

    // 3. pod side: probe → configure → up → announce (issue 4; see probe.rs).
    let pod_ip = plan.address.ip();
    let mut mac = None;
    if let (Some(p), Some(arp)) = (&plan.probe, arp) {
        // Up without an address: RFC 5227 probes carry sender IP 0.0.0.0.
        let m = probe::bring_up(pod, mv.index, plan.mac, pod_ip)?;
        mac = Some(m);
        if let Some(other) = probe::probe(arp, mv.index, m, pod_ip, p)? {
            return Ok(Added::Conflict(probe::Conflict {
                address: pod_ip,
                mac: other,
            }));
        }
    }
    pod.add_addr(mv.index, plan.address)
        .map_err(|e| dp(&format!("adding {} to {}", plan.address, plan.ifname), e))?;
    let mac = match mac {
        Some(m) => m,
        None => probe::bring_up(pod, mv.index, plan.mac, pod_ip)?,
    };
    pod.set_up(pv.index)
        .map_err(|e| dp("bringing the pod veth up", e))?;
    // With a probe the link came up before its address, so arp_notify
    // would have announced nothing: announce explicitly.
    if let Some(arp) = arp {
        probe::announce(arp, mv.index, mac, pod_ip);
    }
    for a in &node_addrs {
        let mut r = RouteSpec::on_link(host_net(*a), pv.index);
        r.src = Some(pod_ip);
        add_route(pod, &r, "route to the node")?;
    }
    if let Some(node_ip) = node_addrs.first() {
        for c in &plan.host_routes {
            // A node address listed as a host route is already routed.
            if node_addrs.iter().any(|a| host_net(*a) == *c) {
                continue;
            }
            let r = RouteSpec {
                dst: *c,
                gateway: Some(*node_ip),
                oif: pv.index,
                onlink: true,
                scope: RouteScope::Universe,
                src: Some(pod_ip),
            };
            add_route(pod, &r, "host route")?;
        }
    } else if !plan.host_routes.is_empty() {
        return Err(CniError::datapath(
            "host routes are configured but the node has no IPv4 address to route them through",
        ));
    }
    let default = RouteSpec::via(
        Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"),
        plan.gateway,
        mv.index,
    );
    add_route(pod, &default, "default route")?;
    for (dst, gw) in &plan.routes {
        add_route(pod, &RouteSpec::via(*dst, *gw, mv.index), "network route")?;
    }
    if let Some(eff) = &plan.qos {
        crate::qos::apply(pod, &mv, group, eff)?;
    }

    // 4. node side: veth up and a /32 to the pod.
    host.set_up(hv.index)
        .map_err(|e| dp("bringing the node veth up", e))?;
    let mut to_pod = RouteSpec::on_link(host_net(pod_ip), hv.index);
    to_pod.src = node_addrs.first().copied();
    if let Err(e) = host.add_route(&to_pod) {
        if !e.is_exists() {
            return Err(dp("adding the node's route to the pod", e));
        }
        // A route for this address survived a pod whose veth is gone; the
        // lease says the address is ours now, so replace it.
        let _ = host.del_route(&RouteSpec::on_link(host_net(pod_ip), 0));
        host.add_route(&to_pod)
            .map_err(|e| dp("adding the node's route to the pod", e))?;
    }

    let mut routes = vec![Route {
        dst: default.dst,
        gw: Some(plan.gateway),
    }];
    routes.extend(plan.routes.iter().map(|(d, g)| Route {
        dst: *d,
        gw: Some(*g),
    }));
    Ok(Added::Configured(CniResult {
        interfaces: vec![
            Interface {
                name: plan.ifname.clone(),
                mac: format_mac(mac),
                mtu: Some(mv.mtu),
                sandbox: Some(plan.netns_path.clone()),
            },
            Interface {
                name: host_veth,
                mac: hv.mac.map(format_mac).unwrap_or_default(),
                mtu: Some(hv.mtu),
                sandbox: None,
            },
            Interface {
                name: pod_veth,
                mac: pv.mac.map(format_mac).unwrap_or_default(),
                mtu: Some(pv.mtu),
                sandbox: Some(plan.netns_path.clone()),
            },
        ],
        ips: vec![IpConfig {
            address: plan.address,
            gateway: Some(plan.gateway),
            interface: 0,
        }],
        routes,
    }))
}

fn host_net(ip: Ipv4Addr) -> Ipv4Network {
    Ipv4Network::new(ip, 32).expect("/32 is valid")
}

fn lookup(nl: &mut Netlink, name: &str) -> Result<LinkInfo, CniError> {
    nl.link_by_name(name)
        .map_err(|e| dp(&format!("looking up {name}"), e))?
        .ok_or_else(|| CniError::datapath(format!("{name} vanished right after creation")))
}

fn add_route(nl: &mut Netlink, r: &RouteSpec, what: &str) -> Result<(), CniError> {
    nl.add_route(r)
        .map_err(|e| dp(&format!("adding {what} {}", r.dst), e))
}

fn create_macvlan(
    host: &mut Netlink,
    pod: &mut Netlink,
    pod_ns: &Netns,
    plan: &AddPlan,
    parent: u32,
    mtu: Option<u32>,
) -> Result<LinkInfo, CniError> {
    let mode = MacvlanMode::Bridge;
    match host.create_macvlan_with_mac(&plan.ifname, parent, mode, mtu, plan.mac, Some(pod_ns)) {
        Ok(()) => return lookup(pod, &plan.ifname),
        Err(e) if e.is_exists() => {}
        Err(e) => return Err(dp(&format!("creating macvlan {}", plan.ifname), e)),
    }
    // The name is taken in the node netns (the kernel checks it there even
    // for a link born elsewhere) or in the pod: create under a temporary name
    // and rename inside the pod, where only a real clash fails.
    let tmp = names::temporary();
    host.create_macvlan_with_mac(&tmp, parent, mode, mtu, plan.mac, Some(pod_ns))
        .map_err(|e| dp(&format!("creating macvlan {tmp}"), e))?;
    let l = lookup(pod, &tmp)?;
    if let Err(e) = pod.rename(l.index, &plan.ifname) {
        let _ = pod.delete_link(l.index);
        return Err(if e.is_exists() {
            CniError::datapath(format!(
                "an interface named {} already exists in the pod netns",
                plan.ifname
            ))
        } else {
            dp(&format!("renaming {tmp} to {}", plan.ifname), e)
        });
    }
    lookup(pod, &plan.ifname)
}

/// Removes what ADD created. Idempotent: missing netns, missing links and
/// an empty CNI_NETNS all succeed.
///
/// Link deletion waits for an RCU grace period (~20 ms) per kernel batch, so
/// the pod's links are deleted as one device group: macvlan, pod veth and
/// (through veth_dellink) the node end, in a single batch.
pub fn del(container_id: &str, ifname: &str, netns_path: &str) -> Result<(), CniError> {
    if !netns_path.is_empty() {
        match Netns::open(std::path::Path::new(netns_path)) {
            Ok(ns) => del_in_pod(&ns, ifname)?,
            Err(e) if e.is_not_found() => {}
            Err(e) => {
                return Err(CniError::new(
                    code::IO_FAILURE,
                    "cannot open the pod network namespace",
                    format!("{netns_path}: {e}"),
                ))
            }
        }
    }
    // The node end is normally gone with its peer; it remains when the pod
    // netns is unknown (containerd's second DEL) or a partial ADD left it.
    let mut host = Netlink::new().map_err(|e| dp("opening netlink", e))?;
    let host_veth = names::host_veth(container_id, ifname);
    if let Some(l) = host
        .link_by_name(&host_veth)
        .map_err(|e| dp("looking up veth", e))?
    {
        ignore_missing(host.delete_link(l.index)).map_err(|e| dp("deleting veth", e))?;
    }
    Ok(())
}

fn del_in_pod(ns: &Netns, ifname: &str) -> Result<(), CniError> {
    let mut pod = Netlink::in_netns(ns).map_err(|e| dp("opening netlink in the pod netns", e))?;
    let group = names::link_group(ifname);
    let pv = names::pod_veth(ifname);
    let ifb = names::ifb(ifname);
    let links = pod.links().map_err(|e| dp("listing pod links", e))?;
    let tagged: Vec<&LinkInfo> = links.iter().filter(|l| l.group == group).collect();
    // Only when the group holds nothing but our own links: never delete a
    // stranger that happens to share the number.
    if !tagged.is_empty()
        && tagged
            .iter()
            .all(|l| l.name == ifname || l.name == pv || l.name == ifb)
    {
        match pod.delete_group(group) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => warn!("group delete failed, deleting links one by one: {e}"),
        }
    }
    for l in &links {
        if l.name == ifname {
            if l.kind.as_deref() == Some("macvlan") {
                ignore_missing(pod.delete_link(l.index))
                    .map_err(|e| dp("deleting pod interface", e))?;
            } else {
                warn!(ifname, kind = ?l.kind, "pod interface is not a macvlan; leaving it alone");
            }
        } else if l.name == pv {
            ignore_missing(pod.delete_link(l.index)).map_err(|e| dp("deleting pod veth", e))?;
        } else if l.name == ifb && l.kind.as_deref() == Some("ifb") {
            ignore_missing(pod.delete_link(l.index)).map_err(|e| dp("deleting QoS ifb", e))?;
        }
    }
    Ok(())
}

fn ignore_missing(r: Result<(), NetlinkError>) -> Result<(), NetlinkError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => other,
    }
}

/// The result of an ADD that already happened (a repeated ADD of a healthy
/// attachment): verified with `check`, then read back from the kernel.
pub fn describe(plan: &AddPlan) -> Result<CniResult, CniError> {
    check(plan, None)?;
    let ns = open_pod_netns(&plan.netns_path)?;
    let mut pod = Netlink::in_netns(&ns).map_err(|e| dp("opening netlink in the pod netns", e))?;
    let mut host = Netlink::new().map_err(|e| dp("opening netlink", e))?;
    let mv = lookup(&mut pod, &plan.ifname)?;
    let pv = lookup(&mut pod, &names::pod_veth(&plan.ifname))?;
    let hv = lookup(
        &mut host,
        &names::host_veth(&plan.container_id, &plan.ifname),
    )?;
    let iface = |l: &LinkInfo, sandbox: Option<String>| Interface {
        name: l.name.clone(),
        mac: l.mac.map(format_mac).unwrap_or_default(),
        mtu: Some(l.mtu),
        sandbox,
    };
    let mut routes = vec![Route {
        dst: Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0"),
        gw: Some(plan.gateway),
    }];
    routes.extend(plan.routes.iter().map(|(d, g)| Route {
        dst: *d,
        gw: Some(*g),
    }));
    Ok(CniResult {
        interfaces: vec![
            iface(&mv, Some(plan.netns_path.clone())),
            iface(&hv, None),
            iface(&pv, Some(plan.netns_path.clone())),
        ],
        ips: vec![IpConfig {
            address: plan.address,
            gateway: Some(plan.gateway),
            interface: 0,
        }],
        routes,
    })
}

/// Verifies the attachment is still what ADD built.
/// `prev_mac`: the MAC prevResult reports for the interface (lowercase),
/// accepted besides the stable and alternate MACs.
pub fn check(plan: &AddPlan, prev_mac: Option<&str>) -> Result<(), CniError> {
    let fail = |d: String| CniError::new(code::CHECK_FAILED, "the pod network is not as set up", d);
    let ns = open_pod_netns(&plan.netns_path)?;
    let mut pod = Netlink::in_netns(&ns).map_err(|e| dp("opening netlink in the pod netns", e))?;
    let mv = pod
        .link_by_name(&plan.ifname)
        .map_err(|e| dp("looking up pod interface", e))?
        .ok_or_else(|| fail(format!("{} is missing from the pod", plan.ifname)))?;
    if mv.kind.as_deref() != Some("macvlan") {
        return Err(fail(format!(
            "{} is a {:?}, not a macvlan",
            plan.ifname, mv.kind
        )));
    }
    if !mv.up {
        return Err(fail(format!("{} is down", plan.ifname)));
    }
    let alternate = rackline_model::mac::alternate_for(plan.address.ip());
    let reported = mv.mac.map(format_mac);
    if mv.mac != Some(plan.mac)
        && mv.mac != Some(alternate)
        && (prev_mac.is_none() || reported.as_deref() != prev_mac)
    {
        return Err(fail(format!(
            "{} has MAC {}, not the address's stable MAC {}",
            plan.ifname,
            mv.mac.map(format_mac).unwrap_or_default(),
            format_mac(plan.mac)
        )));
    }
    let addrs = pod
        .addrs(Some(mv.index))
        .map_err(|e| dp("listing pod addresses", e))?;
    if !addrs.iter().any(|a| a.addr == plan.address) {
        return Err(fail(format!(
            "{} does not carry {}",
            plan.ifname, plan.address
        )));
    }
    let routes = pod.routes().map_err(|e| dp("listing pod routes", e))?;
    if !routes
        .iter()
        .any(|r| r.dst.prefix() == 0 && r.gateway == Some(plan.gateway) && r.oif == Some(mv.index))
    {
        return Err(fail(format!(
            "default route via {} on {} is missing",
            plan.gateway, plan.ifname
        )));
    }
    let pv_name = names::pod_veth(&plan.ifname);
    let pv = pod
        .link_by_name(&pv_name)
        .map_err(|e| dp("looking up pod veth", e))?
        .ok_or_else(|| fail(format!("pod side of the node veth ({pv_name}) is missing")))?;
    if !pv.up {
        return Err(fail(format!("{pv_name} is down")));
    }
    let mut host = Netlink::new().map_err(|e| dp("opening netlink", e))?;
    if let Some(vid) = plan.vlan {
        vlan::check(&mut host, &plan.master, vid).map_err(fail)?;
    }
    let hv_name = names::host_veth(&plan.container_id, &plan.ifname);
    let hv = host
        .link_by_name(&hv_name)
        .map_err(|e| dp("looking up node veth", e))?
        .ok_or_else(|| fail(format!("node side of the veth ({hv_name}) is missing")))?;
    let host_routes = host.routes().map_err(|e| dp("listing node routes", e))?;
    if !host_routes
        .iter()
        .any(|r| r.dst == host_net(plan.address.ip()) && r.oif == Some(hv.index))
    {
        return Err(fail(format!(
            "the node's route to {} via {hv_name} is missing",
            plan.address.ip()
        )));
    }
    crate::qos::check(&mut pod, &mv, plan.qos.as_ref())
}
