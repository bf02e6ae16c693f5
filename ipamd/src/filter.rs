//! The packet filter of each local attachment: what ipamd hands the plugin
//! at Allocate and re-programs in place when its inputs change.
//!
//! A [`PodFilter`] is assembled from three inputs:
//! - the Rackline ACLs of the pod's network and that network's default,
//!   kept in memory by a snapshot + watch of `acl/` ([`run_acl_watch`]);
//! - the Kubernetes NetworkPolicy layer and peer sets of the pod, from a
//!   [`NetpolSource`] (allow-all until a provider is installed);
//! - this node's own addresses (always allowed: kubelet probes).
//!
//! # Plugging in a NetworkPolicy provider
//!
//! Implement [`NetpolSource`] (cheap, synchronous reads from the provider's
//! own cache: it is called on Allocate and for every local attachment on
//! each re-programming round), install it once with
//! [`Filters::set_netpol_source`], and call [`Filters::changed`] after every
//! change of its cache (policies, pods, namespaces). Each call bumps a
//! generation; the re-programmer (see `crate::reprogram`) wakes up, assembles
//! the filter of every local attachment again and re-programs those whose
//! filter differs from what it last programmed. Set names are the
//! provider's: they only have to be unique within one pod's filter and at
//! most [`MAX_SET_NAME`] bytes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rackline_model::acl::{self, Acl, AclDefault};
use rackline_model::filter::{Layer, PodFilter};
use rackline_model::PodRef;
use rackline_store::{AclRecord, Change, Store};
use tokio::sync::{mpsc, watch};
use tracing::warn;

/// Longest peer-set name a provider may use (nftables allows more; this
/// keeps `nft list table` readable).
pub const MAX_SET_NAME: usize = 64;

/// The NetworkPolicy view of one local pod attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetpolView {
    /// The layer: allow-all when no NetworkPolicy selects the pod.
    pub layer: Layer,
    /// Members of every set the layer names in a `Peer::Set`.
    pub sets: BTreeMap<String, Vec<Ipv4Addr>>,
}

impl NetpolView {
    pub fn allow_all() -> Self {
        NetpolView {
            layer: Layer::allow_all(),
            sets: BTreeMap::new(),
        }
    }
}

/// Where the NetworkPolicy layer of a pod comes from. `ip` is the
/// attachment's address (a pod may have several attachments).
pub trait NetpolSource: Send + Sync + 'static {
    fn for_pod(&self, pod: &PodRef, ip: Ipv4Addr) -> NetpolView;
    /// Whether the provider's caches are complete. Until then `for_pod`
    /// answers allow-all for every pod, which is not the pod's policy: the
    /// re-programmer leaves existing tables alone and Allocate waits (see
    /// [`Filters::wait_netpol_synced`]).
    fn synced(&self) -> bool {
        true
    }
}

/// No NetworkPolicy: outside a cluster, or until a provider is installed.
#[derive(Debug, Default)]
pub struct AllowAll;

impl NetpolSource for AllowAll {
    fn for_pod(&self, _: &PodRef, _: Ipv4Addr) -> NetpolView {
        NetpolView::allow_all()
    }
}

/// ACLs, defaults, the NetworkPolicy source and the node's addresses.
pub struct Filters {
    acls: RwLock<BTreeMap<String, Acl>>,
    defaults: RwLock<BTreeMap<String, AclDefault>>,
    netpol: RwLock<Arc<dyn NetpolSource>>,
    node_addresses: RwLock<Vec<Ipv4Addr>>,
    generation: watch::Sender<u64>,
}

impl std::fmt::Debug for Filters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filters")
            .field("acls", &self.acls.read().map(|a| a.len()).unwrap_or(0))
            .finish_non_exhaustive()
    }
}

impl Filters {
    pub fn new(node_addresses: Vec<Ipv4Addr>) -> Arc<Self> {
        Arc::new(Filters {
            acls: RwLock::default(),
            defaults: RwLock::default(),
            netpol: RwLock::new(Arc::new(AllowAll)),
            node_addresses: RwLock::new(node_addresses),
            generation: watch::channel(0).0,
        })
    }

    /// Installs the NetworkPolicy provider (replacing the allow-all one)
    /// and re-programs every attachment.
    pub fn set_netpol_source(&self, source: Arc<dyn NetpolSource>) {
        *self.netpol.write().expect("netpol lock") = source;
        self.changed();
    }

    /// Whether the NetworkPolicy layer can be trusted: no provider
    /// (allow-all by configuration) or a provider whose caches are synced.
    pub fn netpol_synced(&self) -> bool {
        self.netpol.read().expect("netpol lock").synced()
    }

    /// Waits up to `limit` for [`Filters::netpol_synced`]; `false` if the
    /// provider is still not synced then. Polls: the sync happens once per
    /// ipamd start, and the wait only ever covers that window.
    pub async fn wait_netpol_synced(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if self.netpol_synced() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Something a filter depends on changed: re-assemble and re-program.
    pub fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Wakes up on every [`Filters::changed`].
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    pub fn node_addresses(&self) -> Vec<Ipv4Addr> {
        self.node_addresses
            .read()
            .expect("node addresses lock")
            .clone()
    }

    pub fn set_node_addresses(&self, addrs: Vec<Ipv4Addr>) {
        *self.node_addresses.write().expect("node addresses lock") = addrs;
        self.changed();
    }

    /// The filter of attachment `ip` of `pod` on `network`.
    pub fn pod_filter(&self, network: &str, pod: &PodRef, ip: Ipv4Addr) -> PodFilter {
        let default = self
            .defaults
            .read()
            .expect("acl defaults lock")
            .get(network)
            .copied()
            .unwrap_or_default();
        let acl_layer = acl::compile(
            network,
            self.acls.read().expect("acls lock").values(),
            default,
            &pod.namespace,
            &pod.name,
        );
        let source = self.netpol.read().expect("netpol lock").clone();
        let np = source.for_pod(pod, ip);
        let mut f = PodFilter {
            acl: acl_layer,
            netpol: np.layer,
            always_allow: Vec::new(),
            sets: np.sets,
        };
        if f.is_allow_all() {
            // Nothing to enforce: no table at all (today's behaviour).
            return PodFilter::allow_all();
        }
        f.always_allow = self
            .node_addresses
            .read()
            .expect("node addresses lock")
            .iter()
            .copied()
            .filter(|a| *a != ip)
            .collect();
        f
    }

    fn replace_all(&self, records: Vec<(String, AclRecord)>) {
        let (mut acls, mut defaults) = (BTreeMap::new(), BTreeMap::new());
        for (key, rec) in records {
            match rec {
                AclRecord::Acl(a) => {
                    acls.insert(key, a);
                }
                AclRecord::Default { network, default } => {
                    defaults.insert(network, default);
                }
            }
        }
        *self.acls.write().expect("acls lock") = acls;
        *self.defaults.write().expect("acl defaults lock") = defaults;
        self.changed();
    }

    fn apply(&self, store: &Store, change: Change) {
        match change {
            Change::Put { key, value, .. } => match store.decode_acl(&key, &value) {
                Some(Ok(AclRecord::Acl(a))) => {
                    self.acls.write().expect("acls lock").insert(key, a);
                }
                Some(Ok(AclRecord::Default { network, default })) => {
                    self.defaults
                        .write()
                        .expect("acl defaults lock")
                        .insert(network, default);
                }
                Some(Err(e)) => {
                    warn!(%key, "ignoring an undecodable ACL record: {e}");
                    self.acls.write().expect("acls lock").remove(&key);
                }
                None => return,
            },
            Change::Delete { key, .. } => {
                let network = key
                    .strip_prefix(&store.keys().all_acl_prefix())
                    .and_then(|rest| rest.strip_suffix(&format!("/{}", acl::DEFAULT_KEY)));
                match network {
                    Some(n) => {
                        self.defaults.write().expect("acl defaults lock").remove(n);
                    }
                    None => {
                        self.acls.write().expect("acls lock").remove(&key);
                    }
                }
            }
        }
        self.changed();
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&self, a: Acl, default: Option<AclDefault>) {
        if let Some(d) = default {
            self.defaults.write().unwrap().insert(a.network.clone(), d);
        }
        self.acls.write().unwrap().insert(a.id(), a);
    }
}

/// Snapshot + watch of `acl/`, re-listing after any watch failure (the
/// same shape as the QoS policy watch).
pub async fn run_acl_watch(
    filters: Arc<Filters>,
    store: Store,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match store.list_acls(None).await {
            Ok((list, rev)) => {
                backoff = Duration::from_millis(100);
                filters.replace_all(list);
                let (tx, mut rx) = mpsc::channel::<Change>(256);
                let watch = store.watch_prefix(store.keys().all_acl_prefix(), rev + 1, tx);
                tokio::pin!(watch);
                let result = loop {
                    tokio::select! {
                        r = &mut watch => break Some(r),
                        Some(change) = rx.recv() => filters.apply(&store, change),
                        _ = shutdown.changed() => break None,
                    }
                };
                while let Ok(change) = rx.try_recv() {
                    filters.apply(&store, change);
                }
                match result {
                    None => return,
                    Some(r) => warn!("ACL watch ended, re-listing: {r:?}"),
                }
            }
            Err(e) => warn!("cannot load ACLs (retrying in {backoff:?}): {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_model::filter::{Chain, Direction, Packet, Peer, Proto, Rule, Verdict};

    struct OneSet;
    impl NetpolSource for OneSet {
        fn for_pod(&self, pod: &PodRef, _: Ipv4Addr) -> NetpolView {
            if pod.namespace != "shop" {
                return NetpolView::allow_all();
            }
            let mut v = NetpolView::allow_all();
            v.layer.ingress = Chain {
                rules: vec![Rule {
                    verdict: Verdict::Allow,
                    peers: vec![Peer::Set("np-web".into())],
                    ports: vec![],
                }],
                default: Verdict::Deny,
            };
            v.sets
                .insert("np-web".into(), vec!["10.0.0.7".parse().unwrap()]);
            v
        }
    }

    fn pod(ns: &str, name: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    #[test]
    fn assembles_acl_netpol_and_node_addresses_and_notifies_on_provider_change() {
        let f = Filters::new(vec!["192.168.0.1".parse().unwrap()]);
        let ip: Ipv4Addr = "10.0.0.5".parse().unwrap();
        // Nothing configured: allow-all, no node addresses, no table.
        assert_eq!(
            f.pod_filter("prod", &pod("shop", "web-0"), ip),
            PodFilter::allow_all()
        );

        let rx = f.subscribe();
        f.set_netpol_source(Arc::new(OneSet));
        assert!(rx.has_changed().unwrap());
        f.insert_for_test(
            Acl {
                network: "prod".into(),
                namespace: "shop".into(),
                name: "no-dns".into(),
                pod_pattern: None,
                order: 0,
                ingress: vec![],
                egress: vec!["deny udp:53".parse().unwrap()],
            },
            None,
        );
        let pf = f.pod_filter("prod", &pod("shop", "web-0"), ip);
        assert_eq!(
            pf.always_allow,
            vec!["192.168.0.1".parse::<Ipv4Addr>().unwrap()]
        );
        let d = |direction, remote: &str, proto, dport| {
            pf.decide(&Packet {
                direction,
                remote: remote.parse().unwrap(),
                proto,
                dport,
            })
        };
        assert_eq!(
            d(Direction::Ingress, "10.0.0.7", Proto::Tcp, Some(80)),
            Verdict::Allow
        );
        assert_eq!(
            d(Direction::Ingress, "10.0.0.8", Proto::Tcp, Some(80)),
            Verdict::Deny
        );
        assert_eq!(
            d(Direction::Ingress, "192.168.0.1", Proto::Tcp, Some(80)),
            Verdict::Allow
        );
        assert_eq!(
            d(Direction::Egress, "8.8.8.8", Proto::Udp, Some(53)),
            Verdict::Deny
        );
        assert_eq!(
            d(Direction::Egress, "8.8.8.8", Proto::Tcp, Some(53)),
            Verdict::Allow
        );
        // Another network: the ACL does not apply, the provider does not
        // select the pod's namespace → nothing.
        assert!(f.pod_filter("test", &pod("bank", "x"), ip).is_allow_all());
    }
}
