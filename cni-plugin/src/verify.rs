//! CHECK's half of the datapath (and the answer to a repeated ADD): is the
//! attachment still what ADD built, with every link provably its own?

use rackline_netlink::{LinkInfo, Netlink};

use crate::datapath::{configured_result, dp, lookup, open_pod_netns, AddPlan};
use crate::error::CniError;
use crate::links::LinkOps;
use crate::owner::{Owner, Role};
use crate::result::{format_mac, CniResult};
use crate::routes::host_net;

fn fail(d: String) -> CniError {
    CniError::CheckFailed(d)
}

/// The result of an ADD that already happened (a repeated ADD of a healthy
/// attachment): verified with `check`, then read back from the kernel.
pub fn describe(plan: &AddPlan) -> Result<CniResult, CniError> {
    check(plan, None)?;
    let ns = open_pod_netns(&plan.netns_path)?;
    let mut pod = Netlink::in_netns(&ns).map_err(|e| dp("opening netlink in the pod netns", e))?;
    let mut host = Netlink::new().map_err(|e| dp("opening netlink", e))?;
    let mv = lookup(&mut pod, plan.ifname())?;
    let owner = Owner::new(&plan.attachment);
    let hv = lookup(&mut host, &owner.name(Role::NodeVeth))?;
    Ok(configured_result(
        plan,
        &mv,
        mv.mac.unwrap_or(plan.mac),
        &hv,
    ))
}

fn must_own(owner: &Owner, l: &LinkInfo, role: Role, proven: bool) -> Result<(), CniError> {
    if owner.owns(l, role, proven).is_some() {
        return Ok(());
    }
    Err(fail(format!(
        "{} is not this attachment's {} (kind {:?}, group {:#x}, alias {:?}; expected alias {:?} in group {:#x})",
        l.name,
        role.kind(),
        l.kind,
        l.group,
        l.alias,
        owner.mark,
        owner.group
    )))
}

/// The network's settings as they are defined now (they change with
/// `racklinectl network update`; a pod added before keeps the old ones):
/// MTU, the network's routes over the macvlan and the host routes over the
/// pod veth, each named when it differs.
fn network_settings(
    plan: &AddPlan,
    routes: &[rackline_netlink::RouteInfo],
    mv: &LinkInfo,
    pv: &LinkInfo,
) -> Result<(), CniError> {
    if plan.mtu != 0 && mv.mtu != plan.mtu {
        return Err(fail(format!(
            "MTU: {} has {}, the network's is {}",
            mv.name, mv.mtu, plan.mtu
        )));
    }
    for (dst, gw) in &plan.routes {
        if !routes
            .iter()
            .any(|r| r.dst == *dst && r.gateway == Some(*gw) && r.oif == Some(mv.index))
        {
            return Err(fail(format!(
                "routes: the network's route to {dst} via {gw} is missing on {}",
                mv.name
            )));
        }
    }
    if let Some(r) = routes.iter().find(|r| {
        r.oif == Some(mv.index)
            && r.dst.prefix() != 0
            && r.gateway.is_some()
            && !plan.routes.iter().any(|(d, _)| *d == r.dst)
    }) {
        return Err(fail(format!(
            "routes: {} routes {} via {}, which is not one of the network's routes",
            mv.name,
            r.dst,
            r.gateway.map(|g| g.to_string()).unwrap_or_default()
        )));
    }
    for c in &plan.host_routes {
        if !routes
            .iter()
            .any(|r| r.dst == *c && r.oif == Some(pv.index))
        {
            return Err(fail(format!(
                "host routes: the network's host route {c} via the node ({}) is missing",
                pv.name
            )));
        }
    }
    // Routes over the pod veth with a next hop are host routes (the /32s to
    // the node's addresses are on-link).
    if let Some(r) = routes.iter().find(|r| {
        r.oif == Some(pv.index) && r.gateway.is_some() && !plan.host_routes.contains(&r.dst)
    }) {
        return Err(fail(format!(
            "host routes: the pod routes {} via the node, which is not one of the network's host routes",
            r.dst
        )));
    }
    Ok(())
}

/// Verifies the attachment is still what ADD built.
/// `prev_mac`: the MAC prevResult reports for the interface (lowercase),
/// accepted besides the stable and alternate MACs.
pub fn check(plan: &AddPlan, prev_mac: Option<&str>) -> Result<(), CniError> {
    let owner = Owner::new(&plan.attachment);
    let ns = open_pod_netns(&plan.netns_path)?;
    let mut pod = Netlink::in_netns(&ns).map_err(|e| dp("opening netlink in the pod netns", e))?;
    let mut host = Netlink::new().map_err(|e| dp("opening netlink", e))?;
    let (mv, hv) = check_links(plan, prev_mac, &mut pod, &mut host)?;
    if let Some(vid) = plan.vlan {
        crate::vlan::check(&mut host, &plan.master, vid).map_err(fail)?;
    }
    check_node_route(plan, &mut host, &hv)?;
    crate::qos::check(&mut pod, &mv, &owner, plan.qos.as_ref())
}

/// The attachment's links, the pod's address, routes and source rule, as
/// ADD left them; the pod's macvlan and the node veth when they are.
pub(crate) fn check_links(
    plan: &AddPlan,
    prev_mac: Option<&str>,
    pod: &mut dyn LinkOps,
    host: &mut dyn LinkOps,
) -> Result<(LinkInfo, LinkInfo), CniError> {
    let owner = Owner::new(&plan.attachment);
    let (mv, pv, hv) = owned_links(plan, &owner, pod, host)?;
    check_macvlan(plan, prev_mac, &mv)?;
    let ifname = plan.ifname();
    let addrs = pod
        .addrs(Some(mv.index))
        .map_err(|e| dp("listing pod addresses", e))?;
    if !addrs.iter().any(|a| a.addr == plan.address) {
        return Err(fail(format!("{ifname} does not carry {}", plan.address)));
    }
    let routes = pod.routes().map_err(|e| dp("listing pod routes", e))?;
    if !routes
        .iter()
        .any(|r| r.dst.prefix() == 0 && r.gateway == Some(plan.gateway) && r.oif == Some(mv.index))
    {
        return Err(fail(format!(
            "default route via {} on {ifname} is missing",
            plan.gateway
        )));
    }
    if !pv.up {
        return Err(fail(format!("{} is down", pv.name)));
    }
    network_settings(plan, &routes, &mv, &pv)?;
    check_source_rule(plan, &owner, &routes, &mv, pod)?;
    Ok((mv, hv))
}

/// The pod's macvlan, the pod veth and the node veth: present, and each
/// provably the attachment's.
fn owned_links(
    plan: &AddPlan,
    owner: &Owner,
    pod: &mut dyn LinkOps,
    host: &mut dyn LinkOps,
) -> Result<(LinkInfo, LinkInfo, LinkInfo), CniError> {
    let ifname = plan.ifname();
    let mv = pod
        .link_by_name(ifname)
        .map_err(|e| dp("looking up pod interface", e))?
        .ok_or_else(|| fail(format!("{ifname} is missing from the pod")))?;
    if mv.kind.as_deref() != Some("macvlan") {
        return Err(fail(format!("{ifname} is a {:?}, not a macvlan", mv.kind)));
    }
    let pv_name = owner.name(Role::PodVeth);
    let pv = pod
        .link_by_name(&pv_name)
        .map_err(|e| dp("looking up pod veth", e))?
        .ok_or_else(|| fail(format!("pod side of the node veth ({pv_name}) is missing")))?;
    let hv_name = owner.name(Role::NodeVeth);
    let hv = host
        .link_by_name(&hv_name)
        .map_err(|e| dp("looking up node veth", e))?
        .ok_or_else(|| fail(format!("node side of the veth ({hv_name}) is missing")))?;
    let proven = owner.pod_veth_pair(&pv, Some(&hv));
    must_own(owner, &mv, Role::PodInterface, proven)?;
    must_own(owner, &pv, Role::PodVeth, proven)?;
    must_own(owner, &hv, Role::NodeVeth, false)?;
    Ok((mv, pv, hv))
}

/// The macvlan is up with the address's stable MAC, its alternate, or the
/// MAC prevResult reported.
fn check_macvlan(plan: &AddPlan, prev_mac: Option<&str>, mv: &LinkInfo) -> Result<(), CniError> {
    let ifname = plan.ifname();
    if !mv.up {
        return Err(fail(format!("{ifname} is down")));
    }
    let alternate = rackline_model::mac::alternate_for(plan.address.ip());
    let reported = mv.mac.map(format_mac);
    if mv.mac != Some(plan.mac)
        && mv.mac != Some(alternate)
        && (prev_mac.is_none() || reported.as_deref() != prev_mac)
    {
        return Err(fail(format!(
            "{ifname} has MAC {}, not the address's stable MAC {}",
            mv.mac.map(format_mac).unwrap_or_default(),
            format_mac(plan.mac)
        )));
    }
    Ok(())
}

/// An additional attachment (its default route has a metric above 0)
/// also has its source rule.
fn check_source_rule(
    plan: &AddPlan,
    owner: &Owner,
    routes: &[rackline_netlink::RouteInfo],
    mv: &LinkInfo,
    pod: &mut dyn LinkOps,
) -> Result<(), CniError> {
    let additional = routes
        .iter()
        .any(|r| r.dst.prefix() == 0 && r.oif == Some(mv.index) && r.metric > 0);
    if !additional {
        return Ok(());
    }
    let want = rackline_netlink::RuleSpec {
        src: host_net(plan.address.ip()),
        table: owner.group,
        priority: crate::routes::RULE_PRIORITY,
    };
    let rules = pod.rules().map_err(|e| dp("listing pod rules", e))?;
    if !rules.iter().any(|r| r.is(&want)) {
        return Err(fail(format!(
            "the source rule from {} to table {:#x} is missing",
            plan.address.ip(),
            owner.group
        )));
    }
    Ok(())
}

/// The node's /32 to the pod over the node veth.
pub(crate) fn check_node_route(
    plan: &AddPlan,
    host: &mut dyn LinkOps,
    hv: &LinkInfo,
) -> Result<(), CniError> {
    let host_routes = host.routes().map_err(|e| dp("listing node routes", e))?;
    if !host_routes
        .iter()
        .any(|r| r.dst == host_net(plan.address.ip()) && r.oif == Some(hv.index))
    {
        return Err(fail(format!(
            "the node's route to {} via {} is missing",
            plan.address.ip(),
            hv.name
        )));
    }
    Ok(())
}
