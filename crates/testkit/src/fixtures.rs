//! Model values the tests build over and over: a network with every optional
//! setting at its default, and a lease with the fields a test cares about.
//! Only tests use these; product code builds its own values.

use std::net::Ipv4Addr;

use rackline_model::{Lease, LeaseState, NetworkSpec, PodRef};

/// The uplink every fixture network hangs off.
pub const MASTER: &str = "uplink0";

/// Network `name` on `subnet` with gateway `gateway` (both parsed, panicking
/// on a typo in the test), master [`MASTER`], everything else at its
/// default (`NetworkSpec::new`). Override fields with struct update syntax:
/// `NetworkSpec { mtu: 9000, ..network("prod", "10.0.0.0/24", "10.0.0.1") }`.
pub fn network(name: &str, subnet: &str, gateway: &str) -> NetworkSpec {
    NetworkSpec::new(
        name,
        subnet
            .parse()
            .unwrap_or_else(|e| panic!("fixture subnet {subnet}: {e}")),
        gateway
            .parse()
            .unwrap_or_else(|e| panic!("fixture gateway {gateway}: {e}")),
        MASTER,
    )
}

/// An active lease of `address` on `network`: node "n1", interface "eth0",
/// no container, no pod, created at 0. Set the rest with the builder.
pub fn lease(network: &str, address: Ipv4Addr) -> LeaseBuilder {
    LeaseBuilder(Lease {
        network: network.to_string(),
        address,
        node: "n1".into(),
        container_id: String::new(),
        ifname: "eth0".into(),
        pod: PodRef::default(),
        created_unix_ms: 0,
        state: LeaseState::Active,
        sticky: false,
        new_identity: false,
        expires_unix_ms: None,
        conflict: None,
        settings: None,
    })
}

/// Builds a [`Lease`]; see [`lease`].
#[derive(Debug, Clone)]
pub struct LeaseBuilder(Lease);

impl LeaseBuilder {
    pub fn node(mut self, node: &str) -> Self {
        self.0.node = node.into();
        self
    }

    pub fn container(mut self, container_id: &str) -> Self {
        self.0.container_id = container_id.into();
        self
    }

    pub fn ifname(mut self, ifname: &str) -> Self {
        self.0.ifname = ifname.into();
        self
    }

    /// Pod `namespace/name`, no uid.
    pub fn pod(mut self, namespace: &str, name: &str) -> Self {
        self.0.pod = PodRef {
            namespace: namespace.into(),
            name: name.into(),
            uid: String::new(),
        };
        self
    }

    pub fn created(mut self, unix_ms: i64) -> Self {
        self.0.created_unix_ms = unix_ms;
        self
    }

    pub fn state(mut self, state: LeaseState) -> Self {
        self.0.state = state;
        self
    }

    pub fn sticky(mut self) -> Self {
        self.0.sticky = true;
        self
    }

    pub fn build(self) -> Lease {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_fixture_is_the_default_network() {
        let n = network("prod", "10.0.0.0/24", "10.0.0.1");
        assert_eq!(
            n,
            NetworkSpec::new(
                "prod",
                "10.0.0.0/24".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
                "uplink0"
            )
        );
        assert_eq!(n.block_size, 16);
        n.validate().expect("a valid network");
    }

    #[test]
    fn the_lease_builder_sets_what_it_is_told_and_nothing_else() {
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let l = lease("prod", ip)
            .node("n2")
            .container("c1")
            .pod("default", "web-0")
            .created(7)
            .state(LeaseState::Reserved)
            .sticky()
            .build();
        assert_eq!(
            (l.network.as_str(), l.address, l.node.as_str()),
            ("prod", ip, "n2")
        );
        assert_eq!((l.container_id.as_str(), l.ifname.as_str()), ("c1", "eth0"));
        assert_eq!(
            (l.pod.namespace.as_str(), l.pod.name.as_str()),
            ("default", "web-0")
        );
        assert_eq!(
            (l.created_unix_ms, l.state, l.sticky),
            (7, LeaseState::Reserved, true)
        );
        assert!(!l.new_identity && l.expires_unix_ms.is_none());
        assert!(l.conflict.is_none() && l.settings.is_none());
    }
}
