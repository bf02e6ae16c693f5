//! The routes of an attachment: the pod's (to the node, host routes, the
//! default and network routes — with a metric, and for additional
//! attachments their own table and source rule) and the node's /32 to the
//! pod.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rackline_netlink::{LinkInfo, RouteScope, RouteSpec, RuleSpec};
use tracing::{debug, warn};

use crate::datapath::{dp, AddPlan};
use crate::error::CniError;
use crate::links::LinkOps;
use crate::owner::{self, Owner};

/// Priority of the source rules of a pod's additional attachments: before
/// the main table's rule (32766), after the local table's (0).
pub const RULE_PRIORITY: u32 = 1000;

pub(crate) fn default_dst() -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid")
}

/// The pod's routes: /32s to the node's addresses and the host routes over
/// the pod veth, the default route and the network's routes over the
/// macvlan.
///
/// A pod may hold several attachments (Multus: `eth0` and `net1`, same
/// network or not), each wanting a default route and routes to the node.
/// Routes to one destination may coexist with different metrics, so this
/// attachment takes the lowest metric none of its destinations uses yet: the
/// first attachment gets 0 (the table is exactly as for a single
/// attachment), the next 1, ... The kernel removes an attachment's routes
/// with its links, and the next metric takes over: each attachment is
/// removable on its own.
///
/// Traffic that leaves with an attachment's own address (replies) must
/// leave through that attachment, or a node or TOR with strict reverse-path
/// filtering drops it. So an attachment that does not get metric 0 also
/// puts its routes into its own table (the device group's number) and adds
/// `from <its address> lookup <table>`; that rule is returned for the undo.
pub(crate) fn pod_routes(
    pod: &mut dyn LinkOps,
    plan: &AddPlan,
    owner: &Owner,
    mv: &LinkInfo,
    pv: &LinkInfo,
    node_addrs: &[Ipv4Addr],
) -> Result<Option<RuleSpec>, CniError> {
    let pod_ip = plan.address.ip();
    let specs = route_specs(plan, mv, pv, node_addrs)?;
    let existing = pod.routes().map_err(|e| dp("listing pod routes", e))?;
    let metric = (0u32..)
        .find(|m| {
            !existing
                .iter()
                .any(|r| r.metric == *m && specs.iter().any(|(s, _)| s.dst == r.dst))
        })
        .unwrap_or(0);
    if metric > 0 {
        debug!(
            metric,
            "the pod has another attachment's routes; using the next metric"
        );
    }
    for (r, what) in &specs {
        let mut r = *r;
        r.metric = (metric > 0).then_some(metric);
        pod.add_route(&r)
            .map_err(|e| dp(&format!("adding {what} {}", r.dst), e))?;
    }
    if metric == 0 {
        return Ok(None);
    }
    for (r, what) in &specs {
        let mut r = *r;
        r.table = Some(owner.group);
        pod.add_route(&r).map_err(|e| {
            dp(
                &format!("adding {what} {} to table {:#x}", r.dst, owner.group),
                e,
            )
        })?;
    }
    let rule = RuleSpec {
        src: host_net(pod_ip),
        table: owner.group,
        priority: RULE_PRIORITY,
    };
    match pod.add_rule(&rule) {
        // Exactly this rule, left by an earlier attempt of this attachment.
        Err(e) if e.is_exists() => Ok(None),
        Err(e) => Err(dp("adding the source rule", e)),
        Ok(()) => Ok(Some(rule)),
    }
}

/// Every route of the attachment, each with what it is for the error
/// messages: to the node's addresses over the veth, the host routes via the
/// node, the default route and the network's routes via the macvlan.
fn route_specs(
    plan: &AddPlan,
    mv: &LinkInfo,
    pv: &LinkInfo,
    node_addrs: &[Ipv4Addr],
) -> Result<Vec<(RouteSpec, &'static str)>, CniError> {
    let pod_ip = plan.address.ip();
    let mut specs: Vec<(RouteSpec, &'static str)> = Vec::new();
    for a in node_addrs {
        let mut r = RouteSpec::on_link(host_net(*a), pv.index);
        r.src = Some(pod_ip);
        specs.push((r, "route to the node"));
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
                metric: None,
                table: None,
            };
            specs.push((r, "host route"));
        }
    } else if !plan.host_routes.is_empty() {
        return Err(CniError::datapath(
            "host routes are configured but the node has no IPv4 address to route them through",
        ));
    }
    specs.push((
        RouteSpec::via(default_dst(), plan.gateway, mv.index),
        "default route",
    ));
    for (dst, gw) in &plan.routes {
        specs.push((RouteSpec::via(*dst, *gw, mv.index), "network route"));
    }
    Ok(specs)
}

/// The node's /32 to the pod over its veth. A route for this address that
/// already exists is replaced only when it points at a Rackline node veth (a
/// stale pod whose lease is gone: the lease says the address is this
/// attachment's now); a route over any other device (a node interface, an
/// operator's route) is never touched — the ADD fails naming it.
pub(crate) fn node_route(
    host: &mut dyn LinkOps,
    pod_ip: Ipv4Addr,
    hv: &LinkInfo,
    src: Option<Ipv4Addr>,
) -> Result<(), CniError> {
    let mut to_pod = RouteSpec::on_link(host_net(pod_ip), hv.index);
    to_pod.src = src;
    match host.add_route(&to_pod) {
        Ok(()) => return Ok(()),
        Err(e) if !e.is_exists() => return Err(dp("adding the node's route to the pod", e)),
        Err(_) => {}
    }
    let routes = host.routes().map_err(|e| dp("listing node routes", e))?;
    for r in routes.iter().filter(|r| r.dst == host_net(pod_ip)) {
        let dev = match r.oif {
            Some(i) => host
                .link_by_index(i)
                .map_err(|e| dp("looking up a route's device", e))?,
            None => None,
        };
        match dev {
            Some(d) if owner::is_rackline_node_veth(&d) && d.index != hv.index => {
                warn!(address = %pod_ip, stale = %d.name, "replacing the node's route to a stale pod with this address");
                let mut old = RouteSpec::on_link(host_net(pod_ip), d.index);
                old.metric = (r.metric > 0).then_some(r.metric);
                match host.del_route(&old) {
                    Err(e) if !e.is_not_found() => {
                        return Err(dp("removing the stale node route", e))
                    }
                    _ => {}
                }
            }
            other => {
                return Err(CniError::datapath(format!(
                    "the node already routes {pod_ip}/32 via {}, which is not a Rackline pod veth; remove that route or exclude {pod_ip} from the network",
                    other.map_or_else(|| "a route without a device".to_owned(), |d| d.name)
                )))
            }
        }
    }
    host.add_route(&to_pod)
        .map_err(|e| dp("adding the node's route to the pod", e))
}

pub(crate) fn host_net(ip: Ipv4Addr) -> Ipv4Network {
    Ipv4Network::new(ip, 32).expect("/32 is valid")
}
