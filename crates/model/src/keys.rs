//! The etcd key layout, in one place so every component agrees on it.
//!
//! ```text
//! <prefix>/v1/networks/<network>            NetworkSpec JSON
//! <prefix>/v1/networks-guard                bumped by every network create/delete
//! <prefix>/v1/leases/<network>/<ipv4>       Lease JSON (one key per address)
//! ```
//! One key per address makes "never two owners" a create-if-absent
//! transaction on that key, with no shared hot key on the allocation path.

use std::net::Ipv4Addr;

#[derive(Debug, Clone)]
pub struct Keys {
    root: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        Self {
            root: format!("{p}/v1"),
        }
    }

    /// Everything Rackline stores (for one consistent snapshot + watch).
    pub fn root_prefix(&self) -> String {
        format!("{}/", self.root)
    }

    pub fn networks_prefix(&self) -> String {
        format!("{}/networks/", self.root)
    }

    pub fn network(&self, name: &str) -> String {
        format!("{}/networks/{name}", self.root)
    }

    /// Serialises network creation/deletion so two concurrent creates cannot
    /// both pass the overlap check (admin-rate only, never on the lease path).
    pub fn networks_guard(&self) -> String {
        format!("{}/networks-guard", self.root)
    }

    pub fn all_leases_prefix(&self) -> String {
        format!("{}/leases/", self.root)
    }

    pub fn leases_prefix(&self, network: &str) -> String {
        format!("{}/leases/{network}/", self.root)
    }

    pub fn lease(&self, network: &str, ip: Ipv4Addr) -> String {
        format!("{}/leases/{network}/{ip}", self.root)
    }

    /// The network name from a network key.
    pub fn network_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.root)?.strip_prefix("/networks/")
    }

    /// (network, address) from a lease key.
    pub fn parse_lease<'a>(&self, key: &'a str) -> Option<(&'a str, Ipv4Addr)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/leases/")?;
        let (net, ip) = rest.split_once('/')?;
        Some((net, ip.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/rackline/");
        let ip: Ipv4Addr = "10.0.0.7".parse().unwrap();
        let key = k.lease("prod", ip);
        assert_eq!(key, "/rackline/v1/leases/prod/10.0.0.7");
        assert_eq!(k.parse_lease(&key), Some(("prod", ip)));
        assert!(key.starts_with(&k.leases_prefix("prod")));
        assert_eq!(k.network_name_of(&k.network("prod")), Some("prod"));
        assert_eq!(k.parse_lease("/other/v1/leases/prod/10.0.0.7"), None);
    }
}
