//! Builds a pod's attachment:
//!
//! * a macvlan (bridge mode) on the node uplink (or its VLAN sub-interface),
//!   born directly inside the pod netns, carrying the leased address and the
//!   default route via the rack gateway;
//! * a veth pair node<->pod, because a macvlan child can never talk to its
//!   own parent (kernel design; Kubernetes #41736): the node gets a /32 to
//!   the pod, the pod gets /32s to the node's addresses and the configured
//!   host routes (e.g. the service CIDR) via the node.
//!
//! Every link is born in the attachment's device group and then marked with
//! its owner (`owner.rs`); every undo step re-checks that mark. One netlink
//! socket per namespace; the pod's is opened by a short-lived thread inside
//! the pod netns, so this thread never changes namespace. DEL is in
//! `teardown.rs`, CHECK in `verify.rs`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnetwork::Ipv4Network;
use rackline_netlink::{
    run_in_netns, LinkInfo, MacvlanMode, Netlink, NetlinkError, Netns, RuleSpec,
};
use tracing::warn;

use crate::arp::ArpSocket;
use crate::env::Attachment;
use crate::error::CniError;
use crate::links::{LinkOps, TcOps};
use crate::names;
use crate::owner::{Owner, Role};
use crate::podside::{ArpOps, PacketFilter, PodSysctls, Sysctls};
use crate::probe::{self, ProbeParams};
use crate::result::{format_mac, CniResult, Interface, IpConfig, Route};
use crate::routes::{default_dst, node_route, pod_routes};
use crate::vlan::{self, VlanOptions};

/// Everything ADD needs, resolved and validated before anything is touched.
#[derive(Debug, Clone)]
pub struct AddPlan {
    pub attachment: Attachment,
    pub netns_path: PathBuf,
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
    /// The packet filter programmed into the pod before its link comes up;
    /// None = no filtering (no table).
    pub filter: Option<rackline_model::filter::PodFilter>,
}

impl AddPlan {
    pub fn ifname(&self) -> &str {
        self.attachment.ifname.as_str()
    }

    pub fn container_id(&self) -> &str {
        self.attachment.container_id.as_str()
    }

    pub fn netns_display(&self) -> String {
        self.netns_path.display().to_string()
    }
}

/// What ADD ended with when nothing failed.
#[derive(Debug)]
pub enum Added {
    Configured(CniResult),
    /// The address is in use — found by the probe, or it is one of this
    /// node's own addresses (everything was rolled back).
    Conflict(probe::Conflict),
}

const ARP_NOTIFY: &str = "net/ipv4/conf/default/arp_notify";

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
/// NETDEV_UP). The previous value is returned so a failed ADD restores it:
/// the pod netns is left exactly as it was found.
type PodSockets = (
    Netlink,
    Option<ArpSocket>,
    Option<String>,
    Option<rackline_nft::PodTable>,
);

fn open_pod_sockets(pod_ns: &Netns, plan: &AddPlan) -> Result<PodSockets, CniError> {
    let probing = plan.probe.is_some();
    let (nl, arp, table) = run_in_netns(pod_ns, || {
        let nl = Netlink::new();
        // The filter's nf_tables socket on the same thread: no second
        // namespace entry on the ADD path.
        let table = plan
            .filter
            .as_ref()
            .map(|_| rackline_nft::PodTable::current(plan.ifname(), plan.address.ip()));
        let arp = if probing {
            ArpSocket::open().map(|a| (Some(a), None))
        } else {
            let path = Path::new("/proc/sys").join(ARP_NOTIFY);
            std::fs::read_to_string(&path).and_then(|old| {
                let old = old.trim().to_owned();
                if old != "1" {
                    std::fs::write(&path, b"1")?;
                }
                Ok((None, Some(old)))
            })
        };
        (nl, arp, table)
    })
    .map_err(|e| dp("entering the pod netns", e))?;
    let nl = nl.map_err(|e| dp("opening netlink in the pod netns", e))?;
    let table = table
        .transpose()
        .map_err(|e| CniError::datapath(format!("opening nf_tables in the pod netns: {e}")))?;
    let (arp, old) = arp.map_err(|e| {
        CniError::datapath_by(
            "preparing the announcement (ARP socket or arp_notify) in the pod netns",
            e,
        )
    })?;
    Ok((nl, arp, old, table))
}

/// What ADD did, undone in reverse order when a later step fails.
#[derive(Debug)]
pub(crate) enum Undo {
    NodeLink(u32),
    PodLink(u32, Role),
    /// A link created under this name whose index is not read back yet: a
    /// failed read-back must not leak it.
    NodeLinkNamed(String),
    PodLinkNamed(String, Role),
    Vlan(vlan::Attached),
    /// A source rule in the pod (routes in its table go with the links).
    PodRule(RuleSpec),
}

/// Opens `CNI_NETNS` for ADD and CHECK: it must exist (code 3), be a network
/// namespace found without a blocking open (code 4), and not be the
/// namespace the plugin itself runs in — the node's (code 4): "configuring a
/// pod" there would put the macvlan, addresses and a default route on the
/// node.
pub fn open_pod_netns(path: &Path) -> Result<Netns, CniError> {
    let ns = Netns::open(path).map_err(|cause| {
        let path = path.to_owned();
        if cause.is_not_found() {
            CniError::NetnsNotFound { path, cause }
        } else {
            CniError::NetnsUnusable { path, cause }
        }
    })?;
    if is_own(&ns, path)? {
        return Err(own_netns_error(path));
    }
    Ok(ns)
}

pub(crate) fn own_netns_error(path: &Path) -> CniError {
    CniError::OwnNetns {
        path: path.to_owned(),
    }
}

pub(crate) fn is_own(ns: &Netns, path: &Path) -> Result<bool, CniError> {
    ns.is_current().map_err(|cause| CniError::NetnsIdentity {
        path: path.to_owned(),
        cause,
    })
}

pub(crate) fn dp(what: &str, e: NetlinkError) -> CniError {
    CniError::datapath_by(what, e)
}

/// The node's own IPv4 addresses (global scope), those on the master first,
/// so the first one is the natural next hop for host routes.
fn node_addresses(host: &mut dyn LinkOps, master_index: u32) -> Result<Vec<Ipv4Addr>, CniError> {
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

/// The allocated address is one of this node's own (any interface, any
/// scope): giving it to a pod would break the node. A probe cannot see it
/// (a macvlan never hears its parent), so it is checked here, before
/// anything is created, and treated like a probe conflict: reported to
/// ipamd with the node link's MAC (quarantined) and another address taken.
pub(crate) fn node_address_conflict(
    host: &mut dyn LinkOps,
    ip: Ipv4Addr,
) -> Result<Option<probe::Conflict>, CniError> {
    let addrs = host
        .addrs(None)
        .map_err(|e| dp("listing node addresses", e))?;
    let Some(a) = addrs.iter().find(|a| a.addr.ip() == ip) else {
        return Ok(None);
    };
    let link = host
        .link_by_index(a.index)
        .map_err(|e| dp("looking up the node link", e))?;
    Ok(Some(probe::Conflict {
        address: ip,
        mac: link.as_ref().and_then(|l| l.mac).unwrap_or([0; 6]),
        node_link: Some(link.map_or_else(|| format!("ifindex {}", a.index), |l| l.name)),
    }))
}

pub fn add(plan: &AddPlan, pod_ns: &Netns) -> Result<Added, CniError> {
    let mut host = {
        let _s = crate::step!("netlink_open");
        Netlink::new().map_err(|e| dp("opening netlink", e))?
    };
    let conflict = {
        let _s = crate::step!("node_addr_check");
        node_address_conflict(&mut host, plan.address.ip())?
    };
    if let Some(c) = conflict {
        return Ok(Added::Conflict(c));
    }
    let (mut pod, arp, arp_notify, mut table) = {
        let _s = crate::step!("pod_sockets");
        open_pod_sockets(pod_ns, plan)?
    };
    let mut sysctls = PodSysctls(pod_ns);
    let pod = PodSide {
        nl: &mut pod,
        ns: Some(pod_ns),
        sysctls: &mut sysctls,
        arp: arp.as_ref().map(|a| a as &dyn ArpOps),
        filter: table.as_mut().map(|t| t as &mut dyn PacketFilter),
        arp_notify,
    };
    attach(&mut host, pod, plan)
}

/// The pod's handles for one ADD, all opened before anything is changed.
pub(crate) struct PodSide<'a> {
    /// The pod's netlink socket.
    pub nl: &'a mut dyn TcOps,
    /// Where the pod's links are born (always `Some` outside tests).
    pub ns: Option<&'a Netns>,
    pub sysctls: &'a mut dyn Sysctls,
    /// The ARP socket when the network probes.
    pub arp: Option<&'a dyn ArpOps>,
    /// The attachment's packet filter table when its policy filters.
    pub filter: Option<&'a mut dyn PacketFilter>,
    /// `default.arp_notify` as found, when ADD changed it (restored on
    /// failure: the pod netns is left exactly as it was found).
    pub arp_notify: Option<String>,
}

/// ADD's steps over opened handles: the packet filter, then [`build`];
/// unless the attachment ends configured, everything is undone newest first
/// ([`roll_back`]), then the filter table and `arp_notify`.
pub(crate) fn attach(
    host: &mut dyn LinkOps,
    mut pod: PodSide<'_>,
    plan: &AddPlan,
) -> Result<Added, CniError> {
    // The filter goes in before any link of this attachment exists, so the
    // pod never has a moment on the network without it.
    if let (Some(t), Some(f)) = (pod.filter.as_deref_mut(), plan.filter.as_ref()) {
        let _s = crate::step!("pod_filter");
        if let Err(e) = t.program(f) {
            let e = CniError::datapath(format!(
                "programming the pod packet filter (nftables table inet {}): {e}",
                t.table()
            ));
            restore_arp_notify(pod.sysctls, pod.arp_notify);
            return Err(e);
        }
    }
    let owner = Owner::new(&plan.attachment);
    let mut undo = Vec::new();
    let r = build(host, &mut pod, plan, &owner, &mut undo);
    if matches!(r, Ok(Added::Configured(_))) {
        return r;
    }
    roll_back(undo, host, pod.nl, &owner, |host, a| {
        vlan::rollback(
            host,
            &plan.vlan_opts,
            &a,
            plan.container_id(),
            plan.ifname(),
        );
    });
    if let Some(t) = pod.filter {
        if let Err(e) = t.remove() {
            warn!(
                table = t.table(),
                "rollback: removing the pod packet filter: {e}"
            );
        }
    }
    restore_arp_notify(pod.sysctls, pod.arp_notify);
    r
}

/// Undoes what a failed ADD did, newest first; every link is re-checked
/// before its deletion (`delete_own`). A failing undo step is logged and
/// the rest still run. `vlan` undoes a VLAN attachment (its registry lives
/// outside netlink).
pub(crate) fn roll_back(
    undo: Vec<Undo>,
    host: &mut dyn LinkOps,
    pod: &mut dyn LinkOps,
    owner: &Owner,
    mut vlan: impl FnMut(&mut dyn LinkOps, vlan::Attached),
) {
    for step in undo.into_iter().rev() {
        let done = match step {
            Undo::NodeLink(i) => delete_own(host, i, Role::NodeVeth, owner),
            Undo::PodLink(i, role) => delete_own(pod, i, role, owner),
            Undo::NodeLinkNamed(name) => delete_own_named(host, &name, Role::NodeVeth, owner),
            Undo::PodLinkNamed(name, role) => delete_own_named(pod, &name, role, owner),
            Undo::PodRule(r) => match pod.del_rule(&r) {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(()),
            },
            Undo::Vlan(a) => {
                vlan(host, a);
                Ok(())
            }
        };
        if let Err(re) = done {
            warn!("rollback step failed: {re}");
        }
    }
}

fn restore_arp_notify(sysctls: &mut dyn Sysctls, old: Option<String>) {
    if let Some(old) = old.filter(|o| o != "1") {
        let what = format!("restoring {ARP_NOTIFY}={old} in the pod");
        if let Err(e) = sysctls.write(&what, &[(ARP_NOTIFY, &old)]) {
            warn!("rollback: {e}");
        }
    }
}

/// [`delete_own`] of the link now under `name`, if any.
fn delete_own_named(
    nl: &mut dyn LinkOps,
    name: &str,
    role: Role,
    owner: &Owner,
) -> Result<(), NetlinkError> {
    match nl.link_by_name(name)? {
        Some(l) => delete_own(nl, l.index, role, owner),
        None => Ok(()),
    }
}

/// Rollback of one link this ADD created: deleted by index only while it
/// still is what was created (kind, group, and no mark or ours).
fn delete_own(
    nl: &mut dyn LinkOps,
    index: u32,
    role: Role,
    owner: &Owner,
) -> Result<(), NetlinkError> {
    let Some(l) = nl.link_by_index(index)? else {
        return Ok(());
    };
    let same = l.kind.as_deref() == Some(role.kind())
        && l.group == owner.group
        && l.alias.as_deref().is_none_or(|a| a == owner.mark);
    if !same {
        warn!(index, name = %l.name, "rollback: the link is no longer the one this ADD created; leaving it");
        return Ok(());
    }
    match nl.delete_link(index) {
        Err(e) if !e.is_not_found() => Err(e),
        _ => Ok(()),
    }
}

/// A pod may carry several macvlans on one L2 segment (Multus: `eth0` and
/// `net1`). By default Linux answers an ARP request for any of its addresses
/// on any interface and picks any of them as the source of its own requests
/// ("ARP flux"), so the TOR could learn `net1`'s address at `eth0`'s MAC and
/// lose `net1` when `eth0` is removed. On the macvlan only (the pod veth must
/// keep answering for the pod address, which lives on the macvlan):
/// `arp_ignore=1` answers only for addresses of the receiving interface,
/// `arp_announce=2` sources requests from the interface's own address. These
/// sysctls live and die with the interface: a rolled-back ADD leaves nothing.
fn answer_arp_only_for_own_address(
    sysctls: &mut dyn Sysctls,
    ifname: &str,
) -> Result<(), CniError> {
    let ignore = format!("net/ipv4/conf/{ifname}/arp_ignore");
    let announce = format!("net/ipv4/conf/{ifname}/arp_announce");
    sysctls.write(
        &format!("setting arp_ignore/arp_announce on {ifname}"),
        &[(&ignore, "1"), (&announce, "2")],
    )
}

/// Creates a link's mark; the link was born in the group already.
fn mark(nl: &mut dyn LinkOps, l: &LinkInfo, owner: &Owner) -> Result<(), CniError> {
    nl.set_alias(l.index, &owner.mark)
        .map_err(|e| dp(&format!("marking {}", l.name), e))
}

/// ADD's steps in order: the parent link, the attachment's links, the pod
/// side, the node side. Every step that creates something pushes its undo.
fn build(
    host: &mut dyn LinkOps,
    pod: &mut PodSide<'_>,
    plan: &AddPlan,
    owner: &Owner,
    undo: &mut Vec<Undo>,
) -> Result<Added, CniError> {
    let (master, parent) = {
        let _s = crate::step!("master_lookup");
        parent_link(host, plan, undo)?
    };
    let mtu = (plan.mtu != 0).then_some(plan.mtu);
    let node_addrs = {
        let _s = crate::step!("node_addrs");
        node_addresses(host, master.index)?
    };
    let Created { mv, hv, pv } =
        create_links(host, pod.nl, pod.ns, plan, parent, mtu, owner, undo)?;
    let step = crate::step!("arp_sysctls");
    answer_arp_only_for_own_address(pod.sysctls, plan.ifname())?;
    drop(step);
    let mac = match configure_pod(pod.nl, pod.arp, plan, owner, &mv, &pv, &node_addrs, undo)? {
        Ok(mac) => mac,
        Err(conflict) => return Ok(Added::Conflict(conflict)),
    };
    configure_node(host, plan, &hv, &node_addrs)?;
    Ok(Added::Configured(configured_result(plan, &mv, mac, &hv)))
}

/// The master interface, and the link the macvlan goes on: the master, or
/// its VLAN sub-interface (attached, with its undo).
fn parent_link(
    host: &mut dyn LinkOps,
    plan: &AddPlan,
    undo: &mut Vec<Undo>,
) -> Result<(LinkInfo, u32), CniError> {
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
                plan.container_id(),
                plan.ifname(),
            )?;
            let index = a.index;
            undo.push(Undo::Vlan(a));
            index
        }
    };
    Ok((master, parent))
}

/// The pod side: probe → configure → up → announce (see probe.rs), then
/// routes and shaping. The macvlan's MAC, or the conflict the probe found.
#[allow(clippy::too_many_arguments)]
fn configure_pod(
    pod: &mut dyn TcOps,
    arp: Option<&dyn ArpOps>,
    plan: &AddPlan,
    owner: &Owner,
    mv: &LinkInfo,
    pv: &LinkInfo,
    node_addrs: &[Ipv4Addr],
    undo: &mut Vec<Undo>,
) -> Result<Result<[u8; 6], probe::Conflict>, CniError> {
    let pod_ip = plan.address.ip();
    let mut mac = None;
    if let (Some(p), Some(arp)) = (&plan.probe, arp) {
        // Up without an address: RFC 5227 probes carry sender IP 0.0.0.0.
        let m = probe::bring_up(pod, mv.index, plan.mac, pod_ip)?;
        mac = Some(m);
        if let Some(other) = arp.probe(mv.index, m, pod_ip, p)? {
            return Ok(Err(probe::Conflict {
                address: pod_ip,
                mac: other,
                node_link: None,
            }));
        }
    }
    let step = crate::step!("pod_addr");
    pod.add_addr(mv.index, plan.address)
        .map_err(|e| dp(&format!("adding {} to {}", plan.address, plan.ifname()), e))?;
    drop(step);
    let step = crate::step!("pod_links_up");
    let mac = match mac {
        Some(m) => m,
        None => probe::bring_up(pod, mv.index, plan.mac, pod_ip)?,
    };
    pod.set_up(pv.index)
        .map_err(|e| dp("bringing the pod veth up", e))?;
    drop(step);
    // With a probe the link came up before its address, so arp_notify
    // would have announced nothing: announce explicitly.
    if let Some(arp) = arp {
        arp.announce(mv.index, mac, pod_ip);
    }
    let step = crate::step!("pod_routes");
    if let Some(rule) = pod_routes(pod, plan, owner, mv, pv, node_addrs)? {
        undo.push(Undo::PodRule(rule));
    }
    drop(step);
    if let Some(eff) = &plan.qos {
        let _s = crate::step!("qos");
        crate::qos::apply(pod, mv, owner, eff, undo)?;
    }
    Ok(Ok(mac))
}

/// The node side: the veth up and a /32 to the pod.
fn configure_node(
    host: &mut dyn LinkOps,
    plan: &AddPlan,
    hv: &LinkInfo,
    node_addrs: &[Ipv4Addr],
) -> Result<(), CniError> {
    let step = crate::step!("node_veth_up");
    host.set_up(hv.index)
        .map_err(|e| dp("bringing the node veth up", e))?;
    drop(step);
    let _s = crate::step!("node_route");
    node_route(host, plan.address.ip(), hv, node_addrs.first().copied())
}

/// The CNI result of a configured attachment (a fresh ADD, or a repeated
/// one answered from what is there).
pub(crate) fn configured_result(
    plan: &AddPlan,
    mv: &LinkInfo,
    mac: [u8; 6],
    hv: &LinkInfo,
) -> CniResult {
    let mut routes = vec![Route {
        dst: default_dst(),
        gw: Some(plan.gateway),
    }];
    routes.extend(plan.routes.iter().map(|(d, g)| Route {
        dst: *d,
        gw: Some(*g),
    }));
    CniResult {
        interfaces: result_interfaces(plan, mv, mac, hv),
        ips: vec![IpConfig {
            address: plan.address,
            gateway: Some(plan.gateway),
            interface: Some(0),
        }],
        routes,
    }
}

/// The attachment's links, created and marked (macvlan in the pod, veth
/// node<->pod), with their undo steps.
pub(crate) struct Created {
    pub mv: LinkInfo,
    pub hv: LinkInfo,
    pub pv: LinkInfo,
}

/// Creates and marks the attachment's links; each created link's undo is
/// pushed as soon as it exists. `pod_ns`: where the pod-side links are
/// born (always `Some` outside tests). The ARP sysctls of the macvlan are
/// set by the caller once this returns (before any link is up).
#[allow(clippy::too_many_arguments)]
pub(crate) fn create_links(
    host: &mut dyn LinkOps,
    pod: &mut dyn LinkOps,
    pod_ns: Option<&Netns>,
    plan: &AddPlan,
    parent: u32,
    mtu: Option<u32>,
    owner: &Owner,
    undo: &mut Vec<Undo>,
) -> Result<Created, CniError> {
    let stale_step = crate::step!("stale_veth_check");

    // A node veth left by a crashed earlier ADD of this very attachment
    // would block the new one: removed, but only when it provably is this
    // attachment's (a stranger under that name fails the ADD instead).
    let host_veth = owner.name(Role::NodeVeth);
    if let Some(stale) = host
        .link_by_name(&host_veth)
        .map_err(|e| dp("looking up veth", e))?
    {
        if owner.owns(&stale, Role::NodeVeth, false).is_none() {
            return Err(CniError::datapath(format!(
                "a link named {host_veth} exists on the node and is not this attachment's (kind {:?}, alias {:?}); remove or rename it",
                stale.kind, stale.alias
            )));
        }
        warn!(name = %host_veth, "removing stale veth from an earlier attempt");
        host.delete_link(stale.index)
            .or_else(|e| if e.is_not_found() { Ok(()) } else { Err(e) })
            .map_err(|e| dp("removing stale veth", e))?;
    }

    drop(stale_step);
    // 1. macvlan, born in the pod netns and in the attachment's group.
    let step = crate::step!("macvlan_create");
    let mv = create_macvlan(host, pod, pod_ns, plan, parent, mtu, owner, undo)?;
    drop(step);
    let step = crate::step!("macvlan_mark");
    mark(pod, &mv, owner)?;
    drop(step);

    // 2. node<->pod veth, both ends in the group.
    let step = crate::step!("veth_create");
    let pod_veth = owner.name(Role::PodVeth);
    host.create_veth_in_group(&host_veth, &pod_veth, pod_ns, mtu, owner.group)
        .map_err(|e| dp(&format!("creating veth {host_veth}/{pod_veth}"), e))?;
    undo.push(Undo::NodeLinkNamed(host_veth.clone()));
    let hv = lookup(host, &host_veth)?;
    // By index from now on: the name may be reused by a stranger later.
    undo.pop();
    undo.push(Undo::NodeLink(hv.index));
    drop(step);
    let step = crate::step!("veth_mark");
    mark(host, &hv, owner)?;
    let pv = lookup(pod, &pod_veth)?;
    mark(pod, &pv, owner)?;
    drop(step);

    Ok(Created { mv, hv, pv })
}

/// The result's interfaces: the pod's macvlan, the one container-side
/// interface (runtimes that re-add from a stored result — podman's
/// `network reload` — take the first container interface they find, so a
/// helper link listed there would be re-added under the wrong name), and the
/// node end of the veth as a host interface (no `sandbox`), as the
/// reference plugins list their host-side veth.
pub(crate) fn result_interfaces(
    plan: &AddPlan,
    mv: &LinkInfo,
    mac: [u8; 6],
    hv: &LinkInfo,
) -> Vec<Interface> {
    vec![
        Interface {
            name: plan.ifname().to_owned(),
            mac: format_mac(mac),
            mtu: Some(mv.mtu),
            sandbox: Some(plan.netns_display()),
        },
        Interface {
            name: hv.name.clone(),
            mac: hv.mac.map(format_mac).unwrap_or_default(),
            mtu: Some(hv.mtu),
            sandbox: None,
        },
    ]
}

pub(crate) fn lookup(nl: &mut dyn LinkOps, name: &str) -> Result<LinkInfo, CniError> {
    nl.link_by_name(name)
        .map_err(|e| dp(&format!("looking up {name}"), e))?
        .ok_or_else(|| CniError::datapath(format!("{name} vanished right after creation")))
}

/// Creates the pod's macvlan; its undo step is pushed the moment it
/// exists.
#[allow(clippy::too_many_arguments)]
fn create_macvlan(
    host: &mut dyn LinkOps,
    pod: &mut dyn LinkOps,
    pod_ns: Option<&Netns>,
    plan: &AddPlan,
    parent: u32,
    mtu: Option<u32>,
    owner: &Owner,
    undo: &mut Vec<Undo>,
) -> Result<LinkInfo, CniError> {
    let mode = MacvlanMode::Bridge;
    let ifname = plan.ifname();
    let role = Role::PodInterface;
    // Read back by name, then undone by index.
    let mut created = |pod: &mut dyn LinkOps, name: &str| {
        undo.push(Undo::PodLinkNamed(name.to_owned(), role));
        let l = lookup(pod, name)?;
        undo.pop();
        undo.push(Undo::PodLink(l.index, role));
        Ok::<_, CniError>(l)
    };
    match host.create_macvlan_in_group(ifname, parent, mode, mtu, plan.mac, pod_ns, owner.group) {
        Ok(()) => return created(pod, ifname),
        Err(e) if e.is_exists() => {}
        Err(e) => return Err(dp(&format!("creating macvlan {ifname}"), e)),
    }
    // The name is taken in the node netns (the kernel checks it there even
    // for a link born elsewhere) or in the pod: create under a temporary name
    // and rename inside the pod, where only a real clash fails. On failure
    // the rollback deletes the temporary link (its undo step is pushed).
    let tmp = names::temporary();
    host.create_macvlan_in_group(&tmp, parent, mode, mtu, plan.mac, pod_ns, owner.group)
        .map_err(|e| dp(&format!("creating macvlan {tmp}"), e))?;
    let l = created(pod, &tmp)?;
    if let Err(e) = pod.rename(l.index, ifname) {
        return Err(if e.is_exists() {
            CniError::datapath(format!(
                "an interface named {ifname} already exists in the pod netns"
            ))
        } else {
            dp(&format!("renaming {tmp} to {ifname}"), e)
        });
    }
    lookup(pod, ifname)
}
