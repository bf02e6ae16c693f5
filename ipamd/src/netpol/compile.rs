//! The pure NetworkPolicy compiler: from the cluster's NetworkPolicies, Pods
//! and Namespaces to the `netpol` layer of one pod and the members of the
//! peer address sets it names. No I/O; the watcher feeds it its caches.
//!
//! Semantics are the Kubernetes ones (networking.k8s.io/v1):
//! - a pod is isolated for a direction only when some policy in its
//!   namespace selects it and lists that direction in `policyTypes`
//!   (defaulted as the API server does: Ingress always, Egress when the
//!   policy has egress rules);
//! - what an isolated direction allows is the union of every rule of every
//!   policy selecting the pod: the chain is `Allow` rules then `Deny`;
//! - a direction no policy isolates allows everything.
//!
//! Peer pods become named sets (`Peer::Set`). A set's name depends only on
//! the selector that defines it (policy namespace, podSelector,
//! namespaceSelector, and for egress named ports the port), never on its
//! members, so a peer pod appearing or leaving changes set elements and not
//! the rules.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnetwork::Ipv4Network;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use rackline_model::filter::{Chain, Layer, Peer, PortMatch, Proto, Rule, Verdict};

use super::selector;

/// The label every namespace carries with its own name (set by the API
/// server since Kubernetes 1.21); added here when a recorded object lacks it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Prefix of every set name this compiler makes.
pub const SET_PREFIX: &str = "np-";

/// What the compiler produces for one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compiled {
    pub layer: Layer,
    /// Members of every set `layer` names (sorted, deduplicated).
    pub sets: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl Compiled {
    pub fn allow_all() -> Self {
        Compiled {
            layer: Layer::allow_all(),
            sets: BTreeMap::new(),
        }
    }
}

/// One consistent view of the cluster, indexed once and compiled against
/// for every local pod.
pub struct World {
    policies: Vec<Arc<NetworkPolicy>>,
    pods: Vec<PeerPod>,
    namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Members of each peer definition already evaluated: every local pod
    /// of one pass compiles against the same world, and most share
    /// selectors.
    memo: RefCell<HashMap<String, Vec<Ipv4Addr>>>,
}

/// A pod as a possible peer: only pods with a pod-network IPv4 address can
/// be one (hostNetwork pods share the node's address, finished pods may
/// have handed theirs on).
struct PeerPod {
    ips: Vec<Ipv4Addr>,
    pod: Arc<Pod>,
}

impl PeerPod {
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or_default()
    }

    fn labels(&self) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.pod.metadata.labels.as_ref().unwrap_or(&NONE)
    }
}

impl World {
    pub fn new(
        policies: Vec<Arc<NetworkPolicy>>,
        pods: Vec<Arc<Pod>>,
        namespaces: Vec<Arc<Namespace>>,
    ) -> Self {
        let namespaces = namespaces
            .iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let mut labels = n.metadata.labels.clone().unwrap_or_default();
                labels
                    .entry(NAMESPACE_NAME_LABEL.to_string())
                    .or_insert_with(|| name.clone());
                Some((name, labels))
            })
            .collect();
        let pods = pods
            .into_iter()
            .filter_map(|pod| {
                let ips = peer_ips(&pod);
                if ips.is_empty() || pod.metadata.namespace.is_none() {
                    return None;
                }
                Some(PeerPod { ips, pod })
            })
            .collect();
        World {
            policies,
            pods,
            namespaces,
            memo: RefCell::default(),
        }
    }

    /// The `netpol` layer of `target` and the sets it names.
    pub fn compile(&self, target: &Pod) -> Compiled {
        let Some(ns) = target.metadata.namespace.as_deref() else {
            return Compiled::allow_all();
        };
        let empty = BTreeMap::new();
        let labels = target.metadata.labels.as_ref().unwrap_or(&empty);
        let mut out = Builder::default();
        let mut ingress: Option<Vec<Rule>> = None;
        let mut egress: Option<Vec<Rule>> = None;
        for np in &self.policies {
            if np.metadata.namespace.as_deref() != Some(ns) {
                continue;
            }
            let Some(spec) = &np.spec else { continue };
            // An absent podSelector selects every pod, like an empty one.
            if !spec
                .pod_selector
                .as_ref()
                .is_none_or(|sel| selector::matches(sel, labels))
            {
                continue;
            }
            let (isolates_in, isolates_out) = policy_types(np);
            if isolates_in {
                let rules = ingress.get_or_insert_with(Vec::new);
                for r in spec.ingress.iter().flatten() {
                    self.ingress_rule(
                        ns,
                        target,
                        r.from.as_deref(),
                        r.ports.as_deref(),
                        &mut out,
                        rules,
                    );
                }
            }
            if isolates_out {
                let rules = egress.get_or_insert_with(Vec::new);
                for r in spec.egress.iter().flatten() {
                    self.egress_rule(ns, r.to.as_deref(), r.ports.as_deref(), &mut out, rules);
                }
            }
        }
        Compiled {
            layer: Layer {
                ingress: chain(ingress),
                egress: chain(egress),
            },
            sets: out.sets,
        }
    }

    fn ingress_rule(
        &self,
        ns: &str,
        target: &Pod,
        from: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        out: &mut Builder,
        rules: &mut Vec<Rule>,
    ) {
        let Some(peers) = self.peers(ns, from, out) else {
            return;
        };
        // Named ports resolve on the pod the traffic goes to: the target.
        let mut matches = Vec::new();
        let ports = ports.unwrap_or_default();
        for p in ports {
            match port_spec(p) {
                PortSpec::Numeric(m) => matches.push(m),
                PortSpec::Named(proto, name) => {
                    matches.extend(named_port(target, proto, &name).map(|n| PortMatch {
                        proto,
                        ports: Some((n, n)),
                    }))
                }
                PortSpec::Invalid => {}
            }
        }
        if !ports.is_empty() && matches.is_empty() {
            // Every listed port is unresolvable: the rule allows nothing
            // (an empty list would mean every port).
            return;
        }
        rules.push(Rule {
            verdict: Verdict::Allow,
            peers,
            ports: matches,
        });
    }

    fn egress_rule(
        &self,
        ns: &str,
        to: Option<&[NetworkPolicyPeer]>,
        ports: Option<&[NetworkPolicyPort]>,
        out: &mut Builder,
        rules: &mut Vec<Rule>,
    ) {
        let ports = ports.unwrap_or_default();
        let mut numeric = Vec::new();
        let mut named = Vec::new();
        for p in ports {
            match port_spec(p) {
                PortSpec::Numeric(m) => numeric.push(m),
                PortSpec::Named(proto, name) => named.push((proto, name)),
                PortSpec::Invalid => {}
            }
        }
        if ports.is_empty() || !numeric.is_empty() {
            if let Some(peers) = self.peers(ns, to, out) {
                rules.push(Rule {
                    verdict: Verdict::Allow,
                    peers,
                    ports: numeric,
                });
            }
        }
        if !named.is_empty() {
            self.named_port_rules(ns, to, &named, out, rules);
        }
    }

    /// The rules of an egress rule's named ports.
    fn named_port_rules(
        &self,
        ns: &str,
        to: Option<&[NetworkPolicyPeer]>,
        named: &[(Proto, String)],
        out: &mut Builder,
        rules: &mut Vec<Rule>,
    ) {
        // A named port resolves on the destination pod, which may number it
        // differently from its neighbours: one set per (peer, port name,
        // number). Only pods have named ports, so ipBlock peers never match
        // one; an empty `to` means every pod in every namespace.
        let all_pods = [NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            namespace_selector: Some(LabelSelector::default()),
            ip_block: None,
        }];
        let to = match to {
            Some(t) if !t.is_empty() => t,
            _ => &all_pods[..],
        };
        for peer in to {
            if peer.ip_block.is_some() {
                continue;
            }
            let key = self.peer_key(ns, peer);
            for (proto, name) in named {
                let mut by_number: BTreeMap<u16, Vec<Ipv4Addr>> = BTreeMap::new();
                for p in self.select(ns, peer) {
                    if let Some(n) = named_port(&p.pod, *proto, name) {
                        by_number.entry(n).or_default().extend(&p.ips);
                    }
                }
                for (n, members) in by_number {
                    let set = out.set(format!("{key}|port={}/{name}={n}", proto.as_str()), members);
                    rules.push(Rule {
                        verdict: Verdict::Allow,
                        peers: vec![Peer::Set(set)],
                        ports: vec![PortMatch {
                            proto: *proto,
                            ports: Some((n, n)),
                        }],
                    });
                }
            }
        }
    }

    /// The compiled peers of a `from`/`to` list: empty when the list is
    /// (every peer), None when it names peers none of which can be
    /// expressed (then the rule must allow nothing, not everything).
    fn peers(
        &self,
        ns: &str,
        list: Option<&[NetworkPolicyPeer]>,
        out: &mut Builder,
    ) -> Option<Vec<Peer>> {
        let list = list.unwrap_or_default();
        let mut peers = Vec::new();
        for peer in list {
            if let Some(b) = &peer.ip_block {
                // IPv6 blocks: Rackline pods are IPv4-only, nothing to allow.
                let Ok(net) = b.cidr.parse::<Ipv4Network>() else {
                    continue;
                };
                let except = b
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| e.parse::<Ipv4Network>().ok())
                    .collect();
                peers.push(Peer::Cidr {
                    net: Ipv4Network::new(net.network(), net.prefix()).unwrap_or(net),
                    except,
                });
                continue;
            }
            let key = self.peer_key(ns, peer);
            let members = self
                .memo
                .borrow_mut()
                .entry(key.clone())
                .or_insert_with(|| {
                    self.select(ns, peer)
                        .flat_map(|p| p.ips.iter().copied())
                        .collect()
                })
                .clone();
            let set = out.set(key, members);
            peers.push(Peer::Set(set));
        }
        if !list.is_empty() && peers.is_empty() {
            return None;
        }
        peers.sort_by_key(|p| format!("{p:?}"));
        peers.dedup();
        Some(peers)
    }

    /// What defines a pod peer's membership, as text: the namespace scope
    /// and the pod selector.
    fn peer_key(&self, ns: &str, peer: &NetworkPolicyPeer) -> String {
        let scope = match &peer.namespace_selector {
            None => format!("ns={ns}"),
            Some(s) => format!("nssel={}", selector::canonical(s)),
        };
        let pods = match &peer.pod_selector {
            None => String::new(),
            Some(s) => selector::canonical(s),
        };
        format!("{scope}|pods={pods}")
    }

    /// The pods a podSelector/namespaceSelector peer selects: a
    /// podSelector alone looks in the policy's namespace, a
    /// namespaceSelector alone takes every pod of the namespaces it
    /// selects, both together take the matching pods of those namespaces.
    fn select<'a>(
        &'a self,
        ns: &'a str,
        peer: &'a NetworkPolicyPeer,
    ) -> impl Iterator<Item = &'a PeerPod> + 'a {
        self.pods.iter().filter(move |p| {
            let ns_ok = match &peer.namespace_selector {
                None => p.namespace() == ns,
                Some(sel) => self
                    .namespaces
                    .get(p.namespace())
                    .is_some_and(|labels| selector::matches(sel, labels)),
            };
            ns_ok
                && peer
                    .pod_selector
                    .as_ref()
                    .is_none_or(|sel| selector::matches(sel, p.labels()))
        })
    }
}

/// Which directions a policy isolates, with the API server's defaulting
/// when `policyTypes` is absent.
pub fn policy_types(np: &NetworkPolicy) -> (bool, bool) {
    let Some(spec) = &np.spec else {
        return (false, false);
    };
    match spec.policy_types.as_deref() {
        Some(types) if !types.is_empty() => (
            types.iter().any(|t| t == "Ingress"),
            types.iter().any(|t| t == "Egress"),
        ),
        _ => (true, spec.egress.as_ref().is_some_and(|e| !e.is_empty())),
    }
}

/// The IPv4 addresses a pod can be reached at on the pod network: none for
/// hostNetwork pods and for pods that finished.
pub fn peer_ips(pod: &Pod) -> Vec<Ipv4Addr> {
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return Vec::new();
    }
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return Vec::new();
    }
    let mut ips: Vec<Ipv4Addr> = status
        .pod_ips
        .iter()
        .flatten()
        .map(|i| i.ip.as_str())
        .chain(status.pod_ip.as_deref())
        .filter_map(|s| s.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}

enum PortSpec {
    Numeric(PortMatch),
    Named(Proto, String),
    Invalid,
}

fn port_spec(p: &NetworkPolicyPort) -> PortSpec {
    let proto = match p.protocol.as_deref().unwrap_or("TCP") {
        "TCP" => Proto::Tcp,
        "UDP" => Proto::Udp,
        "SCTP" => Proto::Sctp,
        _ => return PortSpec::Invalid,
    };
    match &p.port {
        None => PortSpec::Numeric(PortMatch { proto, ports: None }),
        Some(IntOrString::Int(n)) => {
            let Ok(lo) = u16::try_from(*n) else {
                return PortSpec::Invalid;
            };
            let hi = match p.end_port {
                Some(e) => match u16::try_from(e) {
                    Ok(hi) if hi >= lo => hi,
                    _ => return PortSpec::Invalid,
                },
                None => lo,
            };
            PortSpec::Numeric(PortMatch {
                proto,
                ports: Some((lo, hi)),
            })
        }
        Some(IntOrString::String(name)) => PortSpec::Named(proto, name.clone()),
    }
}

/// The number of container port `name` with protocol `proto` on `pod`.
fn named_port(pod: &Pod, proto: Proto, name: &str) -> Option<u16> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|cp| {
            cp.name.as_deref() == Some(name)
                && cp.protocol.as_deref().unwrap_or("TCP") == proto_name(proto)
        })
        .and_then(|cp| u16::try_from(cp.container_port).ok())
}

fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "TCP",
        Proto::Udp => "UDP",
        Proto::Sctp => "SCTP",
        Proto::Icmp => "ICMP",
    }
}

fn dedup(rules: &mut Vec<Rule>) {
    let mut seen = BTreeSet::new();
    rules.retain(|r| seen.insert(format!("{r:?}")));
}

/// Collects sets while compiling: name → members.
#[derive(Default)]
struct Builder {
    sets: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl Builder {
    fn set(&mut self, key: String, mut members: Vec<Ipv4Addr>) -> String {
        members.sort();
        members.dedup();
        let name = set_name(&key);
        self.sets.insert(name.clone(), members);
        name
    }
}

/// A stable, short set name for a peer definition: FNV-1a 64 of its
/// canonical text (nftables set names are bounded, selectors are not; the
/// name must not change between ipamd versions or restarts, which rules
/// out the std hasher).
pub fn set_name(key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{SET_PREFIX}{h:016x}")
}

/// A direction's chain: allow-all when no policy isolates it, else its
/// rules (deduplicated) before a default deny.
fn chain(rules: Option<Vec<Rule>>) -> Chain {
    match rules {
        None => Chain::allow_all(),
        Some(mut rules) => {
            dedup(&mut rules);
            Chain {
                rules,
                default: Verdict::Deny,
            }
        }
    }
}
