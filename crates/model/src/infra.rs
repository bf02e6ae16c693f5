//! Infrastructure addresses: what no pod may ever be given, whatever the
//! ranges of its network or rack say.
//!
//! A pod holding a node's own uplink address makes that node route the
//! other node's address into the pod's veth: node-to-node traffic breaks,
//! and nothing at the IPAM level says why. The same goes for a gateway.
//! Ranges cannot be trusted to leave these out: a rack bound with its own
//! subnet and no `--range` is the whole subnet, and nodes register (with
//! their addresses) long after the binding and its blocks exist. So the
//! rule is applied where an address is picked, from the current records.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use crate::{IntervalSet, NetworkSpec, Node, RackNet};

/// Infrastructure addresses of one network, each with what it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Infra {
    what: BTreeMap<Ipv4Addr, String>,
}

impl Infra {
    /// The network's gateway and every rack binding's gateway. A rack's own
    /// gateway is already outside its ranges; another rack's, on a shared
    /// subnet, may not be.
    pub fn gateways<'a>(
        net: &NetworkSpec,
        bindings: impl IntoIterator<Item = &'a RackNet>,
    ) -> Self {
        let mut me = Self::default();
        me.what.insert(
            net.gateway,
            format!("the gateway of network {:?}", net.name),
        );
        for b in bindings {
            if b.network == net.name {
                me.what
                    .entry(b.gateway)
                    .or_insert_with(|| format!("the gateway of rack {:?}", b.rack));
            }
        }
        me
    }

    /// Adds `node`'s own addresses.
    pub fn add_node(&mut self, node: &str, addresses: &[Ipv4Addr]) {
        for a in addresses {
            self.what
                .entry(*a)
                .or_insert_with(|| format!("the address of node {node:?}"));
        }
    }

    /// Adds every registered node's addresses.
    pub fn add_nodes<'a>(&mut self, nodes: impl IntoIterator<Item = &'a Node>) {
        for n in nodes {
            self.add_node(&n.name, &n.addresses);
        }
    }

    /// Why `ip` may not be given to a pod ("10.0.0.11 is the address of node
    /// \"n1\""), None when it is no infrastructure address.
    pub fn refusal(&self, ip: Ipv4Addr) -> Option<String> {
        self.what.get(&ip).map(|w| format!("{ip} is {w}"))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.what.contains_key(&ip)
    }

    /// The addresses as a set (for [`crate::Pool::withhold`]).
    pub fn set(&self) -> IntervalSet {
        let mut s = IntervalSet::new();
        for a in self.what.keys() {
            s.insert(u32::from(*a));
        }
        s
    }

    pub fn len(&self) -> usize {
        self.what.len()
    }

    pub fn is_empty(&self) -> bool {
        self.what.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net() -> NetworkSpec {
        NetworkSpec::new(
            "prod",
            "10.10.0.0/24".parse().unwrap(),
            "10.10.0.1".parse().unwrap(),
            "uplink0",
        )
    }

    #[test]
    fn names_gateways_and_node_addresses() {
        let b = RackNet {
            rack: "r2".into(),
            network: "prod".into(),
            subnet: "10.11.0.0/24".parse().unwrap(),
            gateway: "10.11.0.1".parse().unwrap(),
            ranges: vec![],
            exclude: vec![],
        };
        let other_net = RackNet {
            network: "dev".into(),
            gateway: "10.12.0.1".parse().unwrap(),
            ..b.clone()
        };
        let mut i = Infra::gateways(&net(), [&b, &other_net]);
        i.add_nodes([&Node {
            name: "r2n1".into(),
            rack: "r2".into(),
            addresses: vec!["10.11.0.11".parse().unwrap()],
            registered_unix_ms: 0,
        }]);
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(
            i.refusal(ip("10.11.0.11")).as_deref(),
            Some("10.11.0.11 is the address of node \"r2n1\"")
        );
        assert_eq!(
            i.refusal(ip("10.11.0.1")).as_deref(),
            Some("10.11.0.1 is the gateway of rack \"r2\"")
        );
        assert!(i.contains(ip("10.10.0.1")));
        // Another network's binding is not this network's business.
        assert!(!i.contains(ip("10.12.0.1")));
        assert_eq!(i.refusal(ip("10.11.0.12")), None);
        assert_eq!(i.set().len(), 3);
    }
}
