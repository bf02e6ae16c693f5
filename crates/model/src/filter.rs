//! The compiled packet filter of one pod attachment: what is programmed into
//! the Rackline-owned nftables table inside the pod's network namespace.
//!
//! Two sources compile into it, independently: Rackline ACLs (ordered
//! allow/deny rules per network with an explicit default) and Kubernetes
//! NetworkPolicy (allow-lists that isolate a pod per direction once any
//! policy selects it). A packet passes only if both layers let it through;
//! keeping them as two layers (two chains) keeps each one's semantics exact
//! instead of merging first-match rules with allow-list unions.
//!
//! This module is pure data and evaluation (no netlink, no nft): the
//! renderer in the plugin/ipamd turns it into nftables objects, and
//! [`PodFilter::decide`] is the reference semantics the renderer is tested
//! against.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

/// What a rule does with the packets it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Deny,
}

/// Transport protocol a port match applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Sctp,
    /// ICMP: no ports.
    Icmp,
}

impl Proto {
    pub fn as_str(&self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
        }
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            "icmp" => Ok(Proto::Icmp),
            other => Err(format!("protocol {other:?}: use tcp, udp, sctp or icmp")),
        }
    }
}

/// One protocol with an optional inclusive port range (None = every port of
/// that protocol). ICMP never carries ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortMatch {
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<(u16, u16)>,
}

impl PortMatch {
    pub fn matches(&self, proto: Proto, port: Option<u16>) -> bool {
        if self.proto != proto {
            return false;
        }
        match (self.ports, port) {
            (None, _) => true,
            (Some((lo, hi)), Some(p)) => lo <= p && p <= hi,
            (Some(_), None) => false,
        }
    }
}

/// The remote end of a packet (source for ingress, destination for egress).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Peer {
    /// An address block, minus exceptions (NetworkPolicy ipBlock.except).
    Cidr {
        net: Ipv4Network,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        except: Vec<Ipv4Network>,
    },
    /// A named set of pod addresses (the pods a podSelector/namespaceSelector
    /// selects), programmed as an nftables set so membership changes are
    /// incremental element updates, not a table rewrite.
    Set(String),
}

/// One rule: matches when the remote end is in any of `peers` (empty = any
/// address) and the packet matches any of `ports` (empty = any protocol and
/// port).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Rule {
    pub verdict: Verdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortMatch>,
}

/// One direction of one layer. Rules are evaluated in order, first match
/// wins; no match → `default`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Chain {
    pub rules: Vec<Rule>,
    pub default: Verdict,
}

impl Chain {
    /// A chain that lets everything through (no policy in this direction).
    pub fn allow_all() -> Self {
        Chain {
            rules: Vec::new(),
            default: Verdict::Allow,
        }
    }

    pub fn is_allow_all(&self) -> bool {
        self.default == Verdict::Allow && self.rules.iter().all(|r| r.verdict == Verdict::Allow)
    }
}

/// A layer: ingress (traffic to the pod) and egress (traffic from the pod).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Layer {
    pub ingress: Chain,
    pub egress: Chain,
}

impl Layer {
    pub fn allow_all() -> Self {
        Layer {
            ingress: Chain::allow_all(),
            egress: Chain::allow_all(),
        }
    }
}

/// Everything programmed for one attachment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodFilter {
    /// Rackline ACLs of the pod's network.
    pub acl: Layer,
    /// Kubernetes NetworkPolicy (allow-all when none selects the pod, or
    /// outside a cluster).
    pub netpol: Layer,
    /// Addresses always allowed both ways ahead of both layers: the node's
    /// own addresses, so kubelet probes keep working.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub always_allow: Vec<Ipv4Addr>,
    /// Members of each named peer set.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub sets: std::collections::BTreeMap<String, Vec<Ipv4Addr>>,
}

/// Direction of a packet relative to the pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

/// A packet as the reference semantics sees it: the remote address, its
/// protocol and the pod-side port for ingress / remote port for egress
/// (i.e. always the destination port).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub direction: Direction,
    pub remote: Ipv4Addr,
    pub proto: Proto,
    pub dport: Option<u16>,
}

impl PodFilter {
    /// No filtering at all: today's behaviour and the default.
    pub fn allow_all() -> Self {
        PodFilter {
            acl: Layer::allow_all(),
            netpol: Layer::allow_all(),
            always_allow: Vec::new(),
            sets: Default::default(),
        }
    }

    /// Whether the pod needs a table at all.
    pub fn is_allow_all(&self) -> bool {
        self.acl.ingress.is_allow_all()
            && self.acl.egress.is_allow_all()
            && self.netpol.ingress.is_allow_all()
            && self.netpol.egress.is_allow_all()
    }

    /// Reference semantics for the first packet of a connection (replies of
    /// an allowed connection always pass, by connection tracking).
    pub fn decide(&self, p: &Packet) -> Verdict {
        if self.always_allow.contains(&p.remote) {
            return Verdict::Allow;
        }
        let (acl, np) = match p.direction {
            Direction::Ingress => (&self.acl.ingress, &self.netpol.ingress),
            Direction::Egress => (&self.acl.egress, &self.netpol.egress),
        };
        if self.eval(acl, p) == Verdict::Deny {
            return Verdict::Deny;
        }
        self.eval(np, p)
    }

    fn eval(&self, chain: &Chain, p: &Packet) -> Verdict {
        for r in &chain.rules {
            let peer_ok =
                r.peers.is_empty() || r.peers.iter().any(|peer| self.peer_has(peer, p.remote));
            let port_ok = r.ports.is_empty() || r.ports.iter().any(|m| m.matches(p.proto, p.dport));
            if peer_ok && port_ok {
                return r.verdict;
            }
        }
        chain.default
    }

    fn peer_has(&self, peer: &Peer, a: Ipv4Addr) -> bool {
        match peer {
            Peer::Cidr { net, except } => net.contains(a) && !except.iter().any(|e| e.contains(a)),
            Peer::Set(name) => self.sets.get(name).is_some_and(|m| m.contains(&a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(direction: Direction, remote: &str, proto: Proto, dport: Option<u16>) -> Packet {
        Packet {
            direction,
            remote: remote.parse().unwrap(),
            proto,
            dport,
        }
    }

    #[test]
    fn both_layers_must_allow_and_acl_is_first_match() {
        let mut f = PodFilter::allow_all();
        f.acl.ingress = Chain {
            rules: vec![
                Rule {
                    verdict: Verdict::Deny,
                    peers: vec![Peer::Cidr {
                        net: "10.1.0.5/32".parse().unwrap(),
                        except: vec![],
                    }],
                    ports: vec![],
                },
                Rule {
                    verdict: Verdict::Allow,
                    peers: vec![Peer::Cidr {
                        net: "10.1.0.0/16".parse().unwrap(),
                        except: vec![],
                    }],
                    ports: vec![PortMatch {
                        proto: Proto::Tcp,
                        ports: Some((80, 90)),
                    }],
                },
            ],
            default: Verdict::Deny,
        };
        f.netpol.ingress = Chain {
            rules: vec![Rule {
                verdict: Verdict::Allow,
                peers: vec![Peer::Set("web".into())],
                ports: vec![],
            }],
            default: Verdict::Deny,
        };
        f.sets
            .insert("web".into(), vec!["10.1.0.7".parse().unwrap()]);
        f.always_allow.push("10.9.0.1".parse().unwrap());

        use Direction::*;
        assert_eq!(
            f.decide(&pkt(Ingress, "10.1.0.7", Proto::Tcp, Some(80))),
            Verdict::Allow
        );
        // ACL allows, NetworkPolicy does not select the peer.
        assert_eq!(
            f.decide(&pkt(Ingress, "10.1.0.8", Proto::Tcp, Some(80))),
            Verdict::Deny
        );
        // ACL's explicit deny wins over its later allow.
        f.sets
            .insert("web".into(), vec!["10.1.0.5".parse().unwrap()]);
        assert_eq!(
            f.decide(&pkt(Ingress, "10.1.0.5", Proto::Tcp, Some(80))),
            Verdict::Deny
        );
        // Port outside the range → ACL default deny.
        assert_eq!(
            f.decide(&pkt(Ingress, "10.1.0.7", Proto::Tcp, Some(91))),
            Verdict::Deny
        );
        // The node's address passes regardless.
        assert_eq!(
            f.decide(&pkt(Ingress, "10.9.0.1", Proto::Udp, Some(1))),
            Verdict::Allow
        );
        // Egress untouched.
        assert_eq!(
            f.decide(&pkt(Egress, "8.8.8.8", Proto::Udp, Some(53))),
            Verdict::Allow
        );
        assert!(!f.is_allow_all());
        assert!(PodFilter::allow_all().is_allow_all());
    }
}
