//! The etcd key layout, in one place so every component agrees on it.
//!
//! ```text
//! <prefix>/v1/networks/<network>            NetworkSpec JSON
//! <prefix>/v1/networks-guard                bumped by every network create/delete
//! <prefix>/v1/leases/<network>/<ipv4>       Lease JSON (one key per address)
//! <prefix>/v1/racks/<rack>                   Rack JSON
//! <prefix>/v1/racknets/<network>/<rack>      RackNet JSON (a rack's share of a network)
//! <prefix>/v1/nodes/<node>                   Node JSON
//! <prefix>/v1/blocks/<network>/<first ipv4>  Block JSON
//! <prefix>/v1/identities/<network>/<ns>/<pod> Identity JSON (a sticky pod's address)
//! <prefix>/v1/netmaster/leader               the netmaster leader, on its etcd lease
//! <prefix>/v1/netmaster/webhook-cursor       the webhook sink's next revision (leader, fenced)
//! <prefix>/v1/heartbeat                      the event stream's clock tick (netmaster)
//! <prefix>/v1/qos/<network>/<namespace>/<name>  QosPolicy JSON
//! <prefix>/v1/acl/<network>/<namespace>/<name>  Acl JSON
//! <prefix>/v1/acl/<network>/.default        AclDefault JSON (absent = allow-all)
//! <prefix>/v1/drains/network/<network>      Drain JSON (network being deleted)
//! <prefix>/v1/drains/racknet/<network>/<rack> Drain JSON (binding being removed)
//! <prefix>/v1/drains/node/<node>            Drain JSON (node drained)
//! <prefix>/v1/liveness/<node>               Liveness JSON, on the ipamd's etcd lease
//! ```
//! Addresses in keys are zero-padded (`010.000.000.002`) so etcd's byte
//! order is numeric order: a block of addresses is one contiguous key range
//! (count, fence or watch it with a single range).
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
        format!("{}/leases/{network}/{}", self.root, padded(ip))
    }

    /// The key range `[start, end)` holding the leases of `first..=last`.
    pub fn lease_range(&self, network: &str, first: Ipv4Addr, last: Ipv4Addr) -> (String, String) {
        let start = self.lease(network, first);
        let mut end = self.lease(network, last);
        end.push('\0');
        (start, end)
    }

    /// The network name from a network key.
    pub fn network_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.root)?.strip_prefix("/networks/")
    }

    pub fn racks_prefix(&self) -> String {
        format!("{}/racks/", self.root)
    }

    pub fn rack(&self, name: &str) -> String {
        format!("{}/racks/{name}", self.root)
    }

    pub fn all_racknets_prefix(&self) -> String {
        format!("{}/racknets/", self.root)
    }

    pub fn racknets_prefix(&self, network: &str) -> String {
        format!("{}/racknets/{network}/", self.root)
    }

    pub fn racknet(&self, network: &str, rack: &str) -> String {
        format!("{}/racknets/{network}/{rack}", self.root)
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}/nodes/", self.root)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.root)
    }

    pub fn all_blocks_prefix(&self) -> String {
        format!("{}/blocks/", self.root)
    }

    pub fn blocks_prefix(&self, network: &str) -> String {
        format!("{}/blocks/{network}/", self.root)
    }

    pub fn block(&self, network: &str, first: Ipv4Addr) -> String {
        format!("{}/blocks/{network}/{}", self.root, padded(first))
    }

    pub fn identities_prefix(&self, network: &str) -> String {
        format!("{}/identities/{network}/", self.root)
    }

    pub fn all_identities_prefix(&self) -> String {
        format!("{}/identities/", self.root)
    }

    /// The identity key of pod `namespace/name` on `network`. Kubernetes
    /// names never contain '/', so the key parses back unambiguously.
    pub fn identity(&self, network: &str, namespace: &str, name: &str) -> String {
        format!("{}/identities/{network}/{namespace}/{name}", self.root)
    }

    pub fn all_qos_prefix(&self) -> String {
        format!("{}/qos/", self.root)
    }

    pub fn qos_prefix(&self, network: &str) -> String {
        format!("{}/qos/{network}/", self.root)
    }

    pub fn qos_policy(&self, network: &str, namespace: &str, name: &str) -> String {
        format!("{}/qos/{network}/{namespace}/{name}", self.root)
    }

    pub fn all_acl_prefix(&self) -> String {
        format!("{}/acl/", self.root)
    }

    pub fn acl_prefix(&self, network: &str) -> String {
        format!("{}/acl/{network}/", self.root)
    }

    pub fn acl(&self, network: &str, namespace: &str, name: &str) -> String {
        format!("{}/acl/{network}/{namespace}/{name}", self.root)
    }

    pub fn acl_default(&self, network: &str) -> String {
        format!(
            "{}/acl/{network}/{}",
            self.root,
            rackline_model::acl::DEFAULT_KEY
        )
    }

    pub fn leader(&self) -> String {
        format!("{}/netmaster/leader", self.root)
    }

    pub fn drains_prefix(&self) -> String {
        format!("{}/drains/", self.root)
    }

    /// The drain marker of `target`.
    pub fn drain(&self, target: &rackline_model::DrainTarget) -> String {
        use rackline_model::DrainTarget::*;
        match target {
            Network(n) => format!("{}/drains/network/{n}", self.root),
            RackNet { network, rack } => format!("{}/drains/racknet/{network}/{rack}", self.root),
            Node(n) => format!("{}/drains/node/{n}", self.root),
        }
    }

    /// The drain markers of every rack binding of `network`.
    pub fn racknet_drains_prefix(&self, network: &str) -> String {
        format!("{}/drains/racknet/{network}/", self.root)
    }

    /// What a drain marker key applies to.
    pub fn parse_drain(&self, key: &str) -> Option<rackline_model::DrainTarget> {
        use rackline_model::DrainTarget::*;
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/drains/")?;
        let (kind, rest) = rest.split_once('/')?;
        let one = |s: &str| (!s.is_empty() && !s.contains('/')).then(|| s.to_string());
        match kind {
            "network" => Some(Network(one(rest)?)),
            "node" => Some(Node(one(rest)?)),
            "racknet" => {
                let (network, rack) = rest.split_once('/')?;
                Some(RackNet {
                    network: one(network)?,
                    rack: one(rack)?,
                })
            }
            _ => None,
        }
    }

    pub fn liveness_prefix(&self) -> String {
        format!("{}/liveness/", self.root)
    }

    /// The liveness record (and lock) of `node`'s ipamd.
    pub fn liveness(&self, node: &str) -> String {
        format!("{}/liveness/{node}", self.root)
    }

    pub fn liveness_node_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.root)?.strip_prefix("/liveness/")
    }

    /// (network, first address) from a block key.
    pub fn parse_block<'a>(&self, key: &'a str) -> Option<(&'a str, Ipv4Addr)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/blocks/")?;
        let (net, ip) = rest.split_once('/')?;
        Some((net, parse_padded(ip)?))
    }

    /// (network, rack) from a rack binding key.
    pub fn parse_racknet<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/racknets/")?;
        rest.split_once('/')
    }

    pub fn rack_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.root)?.strip_prefix("/racks/")
    }

    pub fn node_name_of<'a>(&self, key: &'a str) -> Option<&'a str> {
        key.strip_prefix(&self.root)?.strip_prefix("/nodes/")
    }

    /// Where the netmaster leader keeps its webhook sink's cursor: the next
    /// etcd revision to deliver.
    pub fn webhook_cursor(&self) -> String {
        format!("{}/netmaster/webhook-cursor", self.root)
    }

    /// A key netmaster rewrites now and then so the IP event stream has a
    /// change to read even when no lease changes: its revision, delivered
    /// in order with the events, proves every event before it was
    /// delivered (a bookmark that costs one small write, and does not rely
    /// on etcd's progress notifications).
    pub fn heartbeat(&self) -> String {
        format!("{}/heartbeat", self.root)
    }

    /// The key range `[start, end)` the IP event stream watches: the
    /// heartbeat, every identity and every lease key. They are neighbours in
    /// byte order (nothing Rackline stores sorts between `heartbeat`,
    /// `identities/` and `leases/`), so one range watch sees them all in
    /// revision order; any other key that ever lands in the range is
    /// ignored by the reader.
    pub fn events_range(&self) -> (String, String) {
        (
            self.heartbeat(),
            // '0' is the byte after '/': the end of the `leases/` prefix.
            format!("{}/leases0", self.root),
        )
    }

    /// (network, namespace, pod) from an identity key.
    pub fn parse_identity<'a>(&self, key: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/identities/")?;
        let (net, rest) = rest.split_once('/')?;
        let (ns, pod) = rest.split_once('/')?;
        Some((net, ns, pod))
    }

    /// (network, address) from a lease key.
    pub fn parse_lease<'a>(&self, key: &'a str) -> Option<(&'a str, Ipv4Addr)> {
        let rest = key.strip_prefix(&self.root)?.strip_prefix("/leases/")?;
        let (net, ip) = rest.split_once('/')?;
        Some((net, parse_padded(ip)?))
    }
}

/// `10.0.0.2` -> `010.000.000.002`.
pub fn padded(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{a:03}.{b:03}.{c:03}.{d:03}")
}

/// Accepts the padded form (and, leniently, plain dotted quads).
pub fn parse_padded(s: &str) -> Option<Ipv4Addr> {
    let mut o = [0u8; 4];
    let mut parts = s.split('.');
    for x in &mut o {
        *x = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| Ipv4Addr::from(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let k = Keys::new("/rackline/");
        let ip: Ipv4Addr = "10.0.0.7".parse().unwrap();
        let key = k.lease("prod", ip);
        assert_eq!(key, "/rackline/v1/leases/prod/010.000.000.007");
        assert_eq!(k.parse_lease(&key), Some(("prod", ip)));
        assert!(key.starts_with(&k.leases_prefix("prod")));
        assert_eq!(k.network_name_of(&k.network("prod")), Some("prod"));
        assert_eq!(k.parse_lease("/other/v1/leases/prod/10.0.0.7"), None);
        assert_eq!(
            k.parse_lease("/rackline/v1/leases/prod/10.0.0.7"),
            Some(("prod", ip))
        );
        assert_eq!(parse_padded("010.000.000.256"), None);
        let b = k.block("prod", ip);
        assert_eq!(k.parse_block(&b), Some(("prod", ip)));
        assert_eq!(
            k.parse_racknet(&k.racknet("prod", "r1")),
            Some(("prod", "r1"))
        );
        assert_eq!(k.rack_name_of(&k.rack("r1")), Some("r1"));
        assert_eq!(k.node_name_of(&k.node("n1")), Some("n1"));
        assert_eq!(k.parse_lease(&b), None);
        let i = k.identity("prod", "shop", "web-0");
        assert_eq!(k.parse_identity(&i), Some(("prod", "shop", "web-0")));
        assert_eq!(k.parse_identity(&key), None);
        use rackline_model::DrainTarget;
        for t in [
            DrainTarget::Network("prod".into()),
            DrainTarget::Node("n1.example".into()),
            DrainTarget::RackNet {
                network: "prod".into(),
                rack: "r1".into(),
            },
        ] {
            assert_eq!(k.parse_drain(&k.drain(&t)), Some(t));
        }
        assert!(k
            .drain(&DrainTarget::RackNet {
                network: "prod".into(),
                rack: "r1".into()
            })
            .starts_with(&k.racknet_drains_prefix("prod")));
        assert_eq!(k.parse_drain(&k.network("prod")), None);
        assert_eq!(k.liveness_node_of(&k.liveness("n1")), Some("n1"));
    }

    #[test]
    fn the_event_range_holds_identities_and_leases_only() {
        let k = Keys::new("/rackline");
        let (start, end) = k.events_range();
        let inside = |key: &str| key >= start.as_str() && key < end.as_str();
        assert!(inside(&k.identity("prod", "ns", "p")));
        assert!(inside(&k.lease("prod", "10.0.0.1".parse().unwrap())));
        assert!(inside(&k.lease("zzz", "255.255.255.255".parse().unwrap())));
        assert!(inside(&k.heartbeat()));
        for other in [
            k.network("prod"),
            k.networks_guard(),
            k.rack("r1"),
            k.racknet("prod", "r1"),
            k.node("n1"),
            k.block("prod", "10.0.0.0".parse().unwrap()),
            k.leader(),
            k.webhook_cursor(),
            k.qos_policy("prod", "ns", "x"),
            k.drain(&rackline_model::DrainTarget::Network("prod".into())),
            k.drain(&rackline_model::DrainTarget::Node("n1".into())),
            k.liveness("n1"),
        ] {
            assert!(!inside(&other), "{other}");
        }
    }

    #[test]
    fn key_order_is_numeric_order() {
        let k = Keys::new("/r");
        let ips: Vec<Ipv4Addr> = [
            "10.0.0.2",
            "10.0.0.10",
            "10.0.1.0",
            "9.255.255.255",
            "10.0.0.100",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let mut by_key = ips.clone();
        by_key.sort_by_key(|ip| k.lease("n", *ip));
        let mut by_num = ips.clone();
        by_num.sort_by_key(|ip| u32::from(*ip));
        assert_eq!(by_key, by_num);
        let (start, end) = k.lease_range(
            "n",
            "10.0.0.0".parse().unwrap(),
            "10.0.0.15".parse().unwrap(),
        );
        for (ip, inside) in [
            ("10.0.0.0", true),
            ("10.0.0.15", true),
            ("10.0.0.16", false),
            ("10.0.0.150", false),
        ] {
            let key = k.lease("n", ip.parse().unwrap());
            assert_eq!(key >= start && key < end, inside, "{ip}");
        }
    }
}
