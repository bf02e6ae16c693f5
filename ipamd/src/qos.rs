//! QoS levels ipamd answers for: the node's class (`--node-class`) and the
//! namespace/application policies netmaster stores under `qos/`, kept in
//! memory by a snapshot + watch of that prefix (independent of the lease
//! cache's sync, so a policy change never disturbs allocation).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rackline_model::qos::{select_policy, Bandwidth, QosPolicy};
use rackline_model::{NetworkSpec, PodRef};
use rackline_proto::ipam::v1 as pb;
use rackline_store::{Change, Store};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// The Node label read for the QoS class when `--node-class` is not given.
pub const DEFAULT_NODE_CLASS_LABEL: &str = "rackline.io/node-class";

/// The node's class from its Node label (one read at start-up, like the
/// rack). Any failure means "no class": pods then get the other levels,
/// which is safer than refusing to start.
pub async fn node_class_from_cluster(node: &str, label: &str) -> Option<String> {
    let client = match crate::kube::in_cluster_client() {
        Ok(c) => c,
        Err(e) => {
            warn!("cannot read the node class label: {e}");
            return None;
        }
    };
    match crate::kube::rack_from_label(client, node, label).await {
        Ok(class) => {
            tracing::info!(%node, %label, ?class, "node class from the Node label");
            class
        }
        Err(e) => {
            warn!("reading the node class label: {e}");
            None
        }
    }
}

pub fn bandwidth_to_pb(b: &Bandwidth) -> pb::Bandwidth {
    pb::Bandwidth {
        ingress_rate: b.ingress_rate.unwrap_or(0),
        ingress_burst: b.ingress_burst.unwrap_or(0),
        egress_rate: b.egress_rate.unwrap_or(0),
        egress_burst: b.egress_burst.unwrap_or(0),
    }
}

/// The node's class and every network's policies, keyed by etcd key.
#[derive(Debug, Default)]
pub struct QosState {
    node_class: Option<String>,
    policies: RwLock<BTreeMap<String, QosPolicy>>,
}

impl QosState {
    pub fn new(node_class: Option<String>) -> Arc<Self> {
        Arc::new(Self {
            node_class,
            policies: RwLock::default(),
        })
    }

    pub fn node_class(&self) -> Option<&str> {
        self.node_class.as_deref()
    }

    /// Adds the node-class and policy levels for `pod` to `net`. A class
    /// the network does not define means "no class level" (logged once per
    /// call at debug: most networks define none).
    pub fn fill(&self, net: &mut pb::NetworkConfig, spec: &NetworkSpec, pod: &PodRef) {
        if let Some(class) = &self.node_class {
            match spec.qos.node_classes.get(class) {
                Some(b) => net.qos_node_class = Some(bandwidth_to_pb(b)),
                None => {
                    debug!(network = %spec.name, class, "network defines no QoS for this node class")
                }
            }
        }
        let policies = self.policies.read().expect("qos policies lock");
        let of_network = policies.values().filter(|p| p.network == spec.name);
        if let Some(p) = select_policy(of_network, &pod.namespace, &pod.name) {
            net.qos_policy = Some(bandwidth_to_pb(&p.bandwidth));
        }
    }

    fn replace_all(&self, all: BTreeMap<String, QosPolicy>) {
        *self.policies.write().expect("qos policies lock") = all;
    }

    fn apply(&self, change: Change) {
        let mut p = self.policies.write().expect("qos policies lock");
        match change {
            Change::Put { key, value, .. } => match serde_json::from_slice::<QosPolicy>(&value) {
                Ok(policy) => {
                    p.insert(key, policy);
                }
                Err(e) => {
                    warn!(%key, "ignoring an undecodable QoS policy: {e}");
                    p.remove(&key);
                }
            },
            Change::Delete { key, .. } => {
                p.remove(&key);
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn insert_for_test(&self, key: &str, p: QosPolicy) {
        self.policies
            .write()
            .expect("qos policies lock")
            .insert(key.into(), p);
    }
}

/// Snapshot + watch of `qos/`, re-listing after any watch failure.
pub async fn run(state: Arc<QosState>, store: Store, mut shutdown: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if *shutdown.borrow() {
            return;
        }
        match store.list_qos_policies(None).await {
            Ok((list, rev)) => {
                backoff = Duration::from_millis(100);
                state.replace_all(list.into_iter().collect());
                let (tx, mut rx) = mpsc::channel::<Change>(256);
                let watch = store.watch_prefix(store.keys().all_qos_prefix(), rev + 1, tx);
                tokio::pin!(watch);
                let result = loop {
                    tokio::select! {
                        r = &mut watch => break Some(r),
                        Some(change) = rx.recv() => state.apply(change),
                        _ = shutdown.changed() => break None,
                    }
                };
                while let Ok(change) = rx.try_recv() {
                    state.apply(change);
                }
                match result {
                    None => return,
                    Some(r) => warn!("QoS policy watch ended, re-listing: {r:?}"),
                }
            }
            Err(e) => warn!("cannot load QoS policies (retrying in {backoff:?}): {e}"),
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

    fn spec() -> NetworkSpec {
        let mut s: NetworkSpec = serde_json::from_str(
            r#"{"name":"prod","subnet":"10.0.0.0/24","gateway":"10.0.0.1","master":"eth0"}"#,
        )
        .unwrap();
        s.qos.node_classes.insert(
            "small".into(),
            Bandwidth {
                egress_rate: Some(50_000_000),
                ..Default::default()
            },
        );
        s
    }

    fn pod(ns: &str, name: &str) -> PodRef {
        PodRef {
            namespace: ns.into(),
            name: name.into(),
            uid: String::new(),
        }
    }

    #[test]
    fn fills_class_and_the_matching_policy_of_this_network_only() {
        let st = QosState::new(Some("small".into()));
        let b = |r| Bandwidth {
            ingress_rate: Some(r),
            ..Default::default()
        };
        for (key, net, ns, rate) in [
            ("k1", "prod", "shop", 10_000_000),
            ("k2", "other", "shop", 20_000_000),
        ] {
            st.insert_for_test(
                key,
                QosPolicy {
                    network: net.into(),
                    namespace: ns.into(),
                    name: "p".into(),
                    pod_pattern: None,
                    bandwidth: b(rate),
                },
            );
        }
        let mut net = pb::NetworkConfig::default();
        st.fill(&mut net, &spec(), &pod("shop", "web-0"));
        assert_eq!(net.qos_node_class.unwrap().egress_rate, 50_000_000);
        assert_eq!(net.qos_policy.unwrap().ingress_rate, 10_000_000);

        let mut net = pb::NetworkConfig::default();
        st.fill(&mut net, &spec(), &pod("bank", "x"));
        assert!(net.qos_policy.is_none());

        let unclassed = QosState::new(Some("huge".into()));
        let mut net = pb::NetworkConfig::default();
        unclassed.fill(&mut net, &spec(), &pod("shop", "x"));
        assert!(net.qos_node_class.is_none());
    }
}
