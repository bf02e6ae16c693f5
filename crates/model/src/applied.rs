//! The network settings a pod got when it was added, recorded on its lease,
//! so that after `racklinectl network update` ipamd (metrics, CNI CHECK) and
//! netmaster (the update's report) can say which running pods still run
//! with the old ones, and how they differ.
//!
//! Only the network-level settings that end up in the pod's datapath are
//! recorded: MTU, pod routes, host routes and the network's QoS levels.
//! Sticky policy, probe and block size decide what happens at the next ADD
//! and never make a running pod differ. The namespace policies and the pod's
//! own bandwidth annotation are separate objects: CHECK compares the pod's
//! shaping with them directly.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::qos::{Bandwidth, QosSpec};
use crate::{Lease, NetworkSpec, RouteSpec};

/// What a pod's ADD applied from its network's definition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// 0 = the master's MTU.
    #[serde(default)]
    pub mtu: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_routes: Vec<Ipv4Network>,
    #[serde(default, skip_serializing_if = "QosSpec::is_empty")]
    pub qos: QosSpec,
}

/// Which node classes a comparison looks at: a pod's shaping depends only
/// on its own node's class (ipamd knows it), while netmaster, which does
/// not know the classes of nodes, compares them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeClass<'a> {
    /// The node has no class: class levels never apply to its pods.
    Unclassed,
    /// The node's class.
    Named(&'a str),
    /// Not known here: any class level that changed counts.
    Any,
}

impl PodSettings {
    /// The settings a pod added now gets from `spec`.
    pub fn of(spec: &NetworkSpec) -> Self {
        Self {
            mtu: spec.mtu,
            routes: spec.routes.clone(),
            host_routes: spec.host_routes.clone(),
            qos: spec.qos.clone(),
        }
    }

    /// How these settings differ from those `now` gives, one line per
    /// setting, naming it: e.g. `host routes: the pod has 10.96.0.0/12,
    /// the network now has 10.96.0.0/12, 10.200.0.0/16`. Empty = the same.
    pub fn differences(&self, now: &NetworkSpec, class: NodeClass<'_>) -> Vec<String> {
        let mut out = Vec::new();
        if self.mtu != now.mtu {
            out.push(format!(
                "MTU: the pod has {}, the network now has {}",
                mtu(self.mtu),
                mtu(now.mtu)
            ));
        }
        if !same_set(&self.routes, &now.routes) {
            out.push(format!(
                "routes: the pod has {}, the network now has {}",
                routes(&self.routes),
                routes(&now.routes)
            ));
        }
        if !same_set(&self.host_routes, &now.host_routes) {
            out.push(format!(
                "host routes: the pod has {}, the network now has {}",
                list(&self.host_routes),
                list(&now.host_routes)
            ));
        }
        let (was, is) = (&self.qos, &now.qos);
        if was.default != is.default {
            out.push(format!(
                "QoS default: the pod has {}, the network now has {}",
                bw(was.default.as_ref()),
                bw(is.default.as_ref())
            ));
        }
        if was.max != is.max {
            out.push(format!(
                "QoS max: the pod has {}, the network now has {}",
                bw(was.max.as_ref()),
                bw(is.max.as_ref())
            ));
        }
        let classes = classes_to_compare(was, is, class);
        for c in classes {
            let (a, b) = (was.node_classes.get(c), is.node_classes.get(c));
            if a != b {
                out.push(format!(
                    "QoS class {c:?}: the pod has {}, the network now has {}",
                    bw(a),
                    bw(b)
                ));
            }
        }
        out
    }
}

/// The node classes whose QoS both specs must agree on for a node of `class`.
fn classes_to_compare<'a>(
    was: &'a QosSpec,
    is: &'a QosSpec,
    class: NodeClass<'_>,
) -> Vec<&'a String> {
    match class {
        NodeClass::Unclassed => Vec::new(),
        NodeClass::Named(c) => was
            .node_classes
            .keys()
            .chain(is.node_classes.keys())
            .filter(|k| k.as_str() == c)
            .take(1)
            .collect(),
        NodeClass::Any => {
            let mut all: Vec<&String> = was
                .node_classes
                .keys()
                .chain(is.node_classes.keys())
                .collect();
            all.sort();
            all.dedup();
            all
        }
    }
}

/// Why an active lease's pod does not run as `now` would set it up: its
/// address is excluded now, or its recorded settings differ. A lease
/// without recorded settings (written before they were recorded, or an
/// address taken while etcd was away) is compared by address only; CHECK
/// still compares its datapath with the network.
pub fn out_of_spec(lease: &Lease, now: &NetworkSpec, class: NodeClass<'_>) -> Vec<String> {
    if !lease.state.is_active() || lease.network != now.name {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(why) = excluded(lease.address, now) {
        out.push(why);
    }
    if let Some(s) = &lease.settings {
        out.extend(s.differences(now, class));
    }
    out
}

/// "address A is excluded by the network now" when `now` never hands out A.
pub fn excluded(ip: Ipv4Addr, now: &NetworkSpec) -> Option<String> {
    if ip == now.gateway {
        return Some(format!("address {ip} is the network's gateway"));
    }
    now.exclude
        .iter()
        .find(|r| u32::from(r.first) <= u32::from(ip) && u32::from(ip) <= u32::from(r.last))
        .map(|r| format!("address {ip} is excluded by the network now ({r})"))
}

fn same_set<T: PartialEq>(a: &[T], b: &[T]) -> bool {
    a.len() == b.len() && a.iter().all(|x| b.contains(x))
}

fn mtu(m: u32) -> String {
    if m == 0 {
        "the master's".into()
    } else {
        m.to_string()
    }
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.iter().map(T::to_string).collect::<Vec<_>>().join(", ")
    }
}

fn routes(v: &[RouteSpec]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    v.iter()
        .map(|r| match r.gw {
            Some(gw) => format!("{} via {gw}", r.dst),
            None => format!("{} via the gateway", r.dst),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn bw(b: Option<&Bandwidth>) -> String {
    b.map_or_else(|| "none".into(), Bandwidth::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        serde_json::from_str(
            r#"{"name":"prod","subnet":"10.0.0.0/24","gateway":"10.0.0.1","master":"eth1",
                "mtu":1500,"exclude":["10.0.0.200-10.0.0.210"],"hostRoutes":["10.96.0.0/12"],
                "qos":{"default":{"egressRate":100000000},"nodeClasses":{"small":{"ingressRate":5000000}}}}"#,
        )
        .unwrap()
    }

    fn lease(ip: &str, settings: Option<PodSettings>) -> Lease {
        let mut l: Lease = serde_json::from_str(&format!(
            r#"{{"network":"prod","address":"{ip}","node":"n1","containerId":"c","ifname":"eth0"}}"#
        ))
        .unwrap();
        l.settings = settings.map(Box::new);
        l
    }

    #[test]
    fn the_same_settings_in_another_order_do_not_differ() {
        let mut s = spec();
        s.host_routes.push("10.200.0.0/16".parse().unwrap());
        let applied = PodSettings::of(&s);
        s.host_routes.reverse();
        assert!(applied.differences(&s, NodeClass::Any).is_empty());
    }

    #[test]
    fn each_changed_setting_is_named() {
        let applied = PodSettings::of(&spec());
        let mut now = spec();
        now.mtu = 9000;
        now.host_routes.push("10.200.0.0/16".parse().unwrap());
        now.qos.default = Some(Bandwidth::parse_spec("egress=50M").unwrap());
        now.qos
            .node_classes
            .insert("small".into(), Bandwidth::parse_spec("ingress=1M").unwrap());
        let d = applied.differences(&now, NodeClass::Any);
        assert_eq!(d.len(), 4, "{d:?}");
        assert_eq!(d[0], "MTU: the pod has 1500, the network now has 9000");
        assert_eq!(
            d[1],
            "host routes: the pod has 10.96.0.0/12, the network now has 10.96.0.0/12, 10.200.0.0/16"
        );
        assert_eq!(
            d[2],
            "QoS default: the pod has egress=100M, the network now has egress=50M"
        );
        assert!(d[3].starts_with("QoS class \"small\""), "{d:?}");
        // A node of another class, or of none, is not affected by the class.
        assert_eq!(applied.differences(&now, NodeClass::Named("big")).len(), 3);
        assert_eq!(applied.differences(&now, NodeClass::Unclassed).len(), 3);
        assert_eq!(
            applied.differences(&now, NodeClass::Named("small")).len(),
            4
        );
    }

    #[test]
    fn an_excluded_address_differs_even_without_recorded_settings() {
        let now = spec();
        assert!(out_of_spec(&lease("10.0.0.5", None), &now, NodeClass::Any).is_empty());
        let d = out_of_spec(&lease("10.0.0.205", None), &now, NodeClass::Any);
        assert_eq!(
            d,
            vec!["address 10.0.0.205 is excluded by the network now (10.0.0.200-10.0.0.210)"]
        );
        let old = PodSettings {
            mtu: 0,
            ..PodSettings::of(&now)
        };
        let d = out_of_spec(&lease("10.0.0.5", Some(old)), &now, NodeClass::Any);
        assert_eq!(
            d,
            vec!["MTU: the pod has the master's, the network now has 1500"]
        );
        let mut standby = lease("10.0.0.205", None);
        standby.state = crate::LeaseState::Standby;
        assert!(out_of_spec(&standby, &now, NodeClass::Any).is_empty());
    }

    #[test]
    fn leases_without_settings_keep_their_stored_form() {
        let l = lease("10.0.0.5", None);
        assert!(!serde_json::to_string(&l).unwrap().contains("settings"));
        let l = lease("10.0.0.5", Some(PodSettings::of(&spec())));
        let j = serde_json::to_string(&l).unwrap();
        assert!(j.contains(r#""settings":{"mtu":1500"#), "{j}");
        assert_eq!(serde_json::from_str::<Lease>(&j).unwrap(), l);
    }
}
