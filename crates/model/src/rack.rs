//! Racks and their bindings to networks.
//!
//! A rack's gateway is its top-of-rack switch, so a pod's address must come
//! from its own rack's ranges or it cannot reach its gateway. A network may
//! span many racks, each with its own subnet and gateway, or share one
//! subnet split into per-rack ranges.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::network::validate_name;
use crate::{AddrRange, IntervalSet, NetworkSpec, ValidationError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rack {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

impl Rack {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_name(&self.name).map_err(|_| ValidationError::RackName(self.name.clone()))
    }
}

/// A rack's share of a network: its subnet, its gateway (the TOR) and the
/// ranges pods of this rack are given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RackNet {
    pub rack: String,
    pub network: String,
    pub subnet: Ipv4Network,
    pub gateway: Ipv4Addr,
    /// Empty = the whole subnet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<AddrRange>,
    /// Infrastructure inside the rack's subnet pods never get (switch and
    /// server management addresses, VIPs). The network's own exclusions
    /// cannot name them when the rack has a subnet of its own: they must lie
    /// inside the network's subnet. Absent in records written before the
    /// field existed, hence the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<AddrRange>,
}

impl RackNet {
    /// Checks the binding on its own and against its network.
    pub fn validate(&self, net: &NetworkSpec) -> Result<(), ValidationError> {
        let bad = |why: String| ValidationError::RackNet {
            rack: self.rack.clone(),
            network: self.network.clone(),
            why,
        };
        validate_name(&self.rack).map_err(|_| ValidationError::RackName(self.rack.clone()))?;
        if self.network != net.name {
            return Err(bad(format!(
                "bound to {:?}, checked against {:?}",
                self.network, net.name
            )));
        }
        let s = self.subnet;
        if s.network() != s.ip() {
            return Err(bad(format!("subnet {s} has host bits set")));
        }
        if s.prefix() > 30 || s.prefix() < 8 {
            return Err(bad(format!(
                "subnet {s}: prefix length must be between /8 and /30"
            )));
        }
        if s != net.subnet && s.overlaps(net.subnet) {
            return Err(bad(format!(
                "subnet {s} must either be the network's subnet {} or not overlap it",
                net.subnet
            )));
        }
        if !s.contains(self.gateway) {
            return Err(bad(format!(
                "gateway {} is outside subnet {s}",
                self.gateway
            )));
        }
        if self.gateway == s.network() || self.gateway == s.broadcast() {
            return Err(bad(format!(
                "gateway {} is the subnet's network or broadcast address",
                self.gateway
            )));
        }
        for r in &self.ranges {
            if !s.contains(r.first) || !s.contains(r.last) {
                return Err(bad(format!("range {r} is outside subnet {s}")));
            }
        }
        for r in &self.exclude {
            if !s.contains(r.first) || !s.contains(r.last) {
                return Err(bad(format!("excluded range {r} is outside subnet {s}")));
            }
        }
        if self.allocatable(net).is_empty() {
            return Err(bad("no allocatable address left after exclusions".into()));
        }
        Ok(())
    }

    /// Fails when this binding's ranges overlap another rack's binding of the
    /// same network (a binding of the same rack is the one being replaced).
    pub fn check_overlap<'a>(
        &self,
        net: &NetworkSpec,
        others: impl IntoIterator<Item = &'a RackNet>,
    ) -> Result<(), ValidationError> {
        let mine = self.allocatable(net);
        for o in others {
            if o.rack == self.rack || o.network != self.network {
                continue;
            }
            let theirs = o.allocatable(net);
            for (s, e) in theirs.iter_runs() {
                if mine.count_in(s, e) > 0 {
                    return Err(ValidationError::RackNet {
                        rack: self.rack.clone(),
                        network: self.network.clone(),
                        why: format!("its ranges overlap those of rack {:?}", o.rack),
                    });
                }
            }
        }
        Ok(())
    }

    /// Every address pods of this rack may get: the ranges (or the subnet)
    /// minus network, broadcast, the rack's gateway, the network's gateway
    /// (when the rack shares the network's subnet), the network's exclusions
    /// and the binding's own. Registered node addresses are infrastructure
    /// too, but they change without the binding changing: see
    /// [`crate::infra::Infra`].
    pub fn allocatable(&self, net: &NetworkSpec) -> IntervalSet {
        let mut set = IntervalSet::new();
        let first = u32::from(self.subnet.network()) + 1;
        let last = u32::from(self.subnet.broadcast()) - 1;
        if self.ranges.is_empty() {
            set.insert_range(first, last);
        } else {
            for r in &self.ranges {
                set.insert_range(u32::from(r.first).max(first), u32::from(r.last).min(last));
            }
        }
        set.remove(u32::from(self.gateway));
        set.remove(u32::from(net.gateway));
        for r in net.exclude.iter().chain(&self.exclude) {
            set.remove_range(u32::from(r.first), u32::from(r.last));
        }
        set
    }
}

/// A node, registered by its ipamd. It belongs to exactly one rack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub name: String,
    pub rack: String,
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
    #[serde(default)]
    pub registered_unix_ms: i64,
}

impl Node {
    /// Node names are Kubernetes node names (DNS-1123 subdomains), so dots
    /// are allowed; '/' never is (it would change the etcd key's shape).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_node_name(&self.name)?;
        validate_name(&self.rack).map_err(|_| ValidationError::RackName(self.rack.clone()))
    }
}

pub fn validate_node_name(name: &str) -> Result<(), ValidationError> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| alnum(b) || b == b'-' || b == b'.')
        && name.bytes().next().is_some_and(alnum)
        && name.bytes().last().is_some_and(alnum);
    if ok {
        Ok(())
    } else {
        Err(ValidationError::NodeName(name.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkSpec {
        NetworkSpec {
            exclude: vec!["10.10.0.0/26".parse().unwrap()],
            ..NetworkSpec::new(
                "prod",
                "10.10.0.0/16".parse().unwrap(),
                "10.10.0.1".parse().unwrap(),
                "uplink0",
            )
        }
    }

    fn binding(rack: &str, subnet: &str, gw: &str, ranges: &[&str]) -> RackNet {
        RackNet {
            rack: rack.into(),
            network: "prod".into(),
            subnet: subnet.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            ranges: ranges.iter().map(|r| r.parse().unwrap()).collect(),
            exclude: vec![],
        }
    }

    #[test]
    fn shared_subnet_split_into_rack_ranges() {
        let n = net();
        let a = binding("a", "10.10.0.0/16", "10.10.0.1", &["10.10.1.0/24"]);
        let b = binding("b", "10.10.0.0/16", "10.10.0.1", &["10.10.2.0/24"]);
        a.validate(&n).unwrap();
        b.validate(&n).unwrap();
        a.check_overlap(&n, [&b]).unwrap();
        assert_eq!(a.allocatable(&n).len(), 256);
        let c = binding("c", "10.10.0.0/16", "10.10.0.1", &["10.10.1.128-10.10.3.0"]);
        let e = c.check_overlap(&n, [&a, &b]).unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
    }

    #[test]
    fn own_subnet_per_rack_and_its_errors() {
        let n = net();
        let a = binding("a", "10.20.0.0/24", "10.20.0.1", &[]);
        a.validate(&n).unwrap();
        // Whole subnet minus network, broadcast and gateway.
        assert_eq!(a.allocatable(&n).len(), 253);
        for (b, want) in [
            (
                binding("a", "10.20.0.0/24", "10.21.0.1", &[]),
                "outside subnet",
            ),
            (
                binding("a", "10.20.0.0/24", "10.20.0.255", &[]),
                "broadcast",
            ),
            (
                binding("a", "10.10.128.0/24", "10.10.128.1", &[]),
                "not overlap",
            ),
            (
                binding("a", "10.20.0.0/24", "10.20.0.1", &["10.20.1.0/28"]),
                "outside subnet",
            ),
            (
                binding("Bad", "10.20.0.0/24", "10.20.0.1", &[]),
                "rack name",
            ),
        ] {
            let e = b.validate(&n).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }

    #[test]
    fn node_names_follow_kubernetes() {
        let node = |name: &str, rack: &str| Node {
            name: name.into(),
            rack: rack.into(),
            addresses: vec![],
            registered_unix_ms: 0,
        };
        node("n1", "r1").validate().unwrap();
        node("worker-3.dc1.example.com", "r1").validate().unwrap();
        for bad in ["", "N1", "a/b", "-n1", "n1.", "n 1", &"x".repeat(254)] {
            let e = node(bad, "r1").validate().unwrap_err().to_string();
            assert!(e.contains("invalid node name"), "{bad:?}: {e}");
        }
        let e = node("n1", "R1").validate().unwrap_err().to_string();
        assert!(e.contains("invalid rack name"), "{e}");
    }

    #[test]
    fn network_exclusions_apply_inside_rack_ranges() {
        let n = net();
        let a = binding("a", "10.10.0.0/16", "10.10.0.1", &["10.10.0.0/25"]);
        // .0/26 excluded by the network, .1 is the gateway anyway.
        assert_eq!(a.allocatable(&n).len(), 64);
    }

    #[test]
    fn binding_exclusions_and_gateways_are_not_allocatable() {
        let n = net();
        // A rack with its own /24 and no range: the whole subnet minus its
        // gateway and what the binding excludes.
        let mut a = binding("a", "10.20.0.0/24", "10.20.0.1", &[]);
        a.exclude = vec![
            "10.20.0.2-10.20.0.9".parse().unwrap(),
            "10.20.0.200/29".parse().unwrap(),
        ];
        a.validate(&n).unwrap();
        let set = a.allocatable(&n);
        assert_eq!(set.len(), 253 - 8 - 8);
        for x in [
            "10.20.0.1",
            "10.20.0.2",
            "10.20.0.9",
            "10.20.0.200",
            "10.20.0.207",
        ] {
            let x: Ipv4Addr = x.parse().unwrap();
            assert!(!set.contains(u32::from(x)), "{x} must not be allocatable");
        }
        // An exclusion outside the rack's subnet is refused, as the
        // network's are.
        a.exclude = vec!["10.21.0.5".parse().unwrap()];
        let e = a.validate(&n).unwrap_err().to_string();
        assert!(
            e.contains("excluded range 10.21.0.5 is outside subnet"),
            "{e}"
        );
        // Sharing the network's subnet with a gateway of its own: the
        // network's gateway stays out too.
        let mut m = n.clone();
        m.exclude = vec![];
        let b = binding("b", "10.10.0.0/16", "10.10.9.1", &[]);
        let set = b.allocatable(&m);
        assert!(!set.contains(u32::from(m.gateway)));
        assert!(!set.contains(u32::from(b.gateway)));
        assert_eq!(set.len(), 65534 - 2);
    }

    #[test]
    fn a_binding_without_exclusions_reads_and_writes_the_old_json() {
        let old = r#"{"rack":"a","network":"prod","subnet":"10.20.0.0/24","gateway":"10.20.0.1"}"#;
        let b: RackNet = serde_json::from_str(old).unwrap();
        assert!(b.exclude.is_empty() && b.ranges.is_empty());
        assert_eq!(serde_json::to_string(&b).unwrap(), old);
        let mut c = b.clone();
        c.exclude = vec!["10.20.0.2-10.20.0.9".parse().unwrap()];
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["exclude"], serde_json::json!(["10.20.0.2-10.20.0.9"]));
        assert_eq!(serde_json::from_value::<RackNet>(v).unwrap(), c);
    }
}
