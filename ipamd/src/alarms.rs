//! Conflict alarms as Kubernetes Events: when a pod's ARP probe finds its
//! address in use by another host, ipamd posts a Warning Event on the Pod
//! (its namespace) and one on the Node (namespace `default`, with the node
//! name as uid, as kubelet does, so `kubectl describe node` shows it).
//!
//! Only in a cluster (in-cluster config). Posting never blocks or fails the
//! CNI call: each post runs on a task of its own, bounded by a deadline,
//! and its outcome is logged and counted (`rackline_ipamd_kube_events_total`).
//! ipamd's service account needs `create` on `events` (core API).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::engine::ConflictReport;
use crate::metrics::IpamMetrics;

/// The Event `reason` of an address conflict.
pub const REASON: &str = "AddressConflict";
/// Namespace of Node events (where kubelet puts its own).
const NODE_EVENT_NAMESPACE: &str = "default";
/// Deadline of one post.
const POST_DEADLINE: Duration = Duration::from_secs(5);

pub struct Alarms {
    client: Client,
    node: String,
    metrics: Arc<IpamMetrics>,
    /// Posts in flight (owned: aborted when ipamd stops).
    tasks: Mutex<JoinSet<()>>,
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// The text both events carry.
pub fn message(r: &ConflictReport) -> String {
    let l = &r.lease;
    let pod = l.pod.display();
    if r.quarantined {
        format!(
            "address {} of network {} is in use by another host (MAC {}); it is quarantined for {} s and pod {} gets another address",
            l.address, l.network, r.mac, r.quarantine_secs, pod
        )
    } else {
        format!(
            "address {} of network {} is in use by another host (MAC {}); the sticky pod {} keeps it and cannot start until it is freed",
            l.address, l.network, r.mac, pod
        )
    }
}

impl Alarms {
    pub fn new(client: Client, node: String, metrics: Arc<IpamMetrics>) -> Arc<Self> {
        Arc::new(Self {
            client,
            node,
            metrics,
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    fn event(&self, r: &ConflictReport, namespace: &str, object: ObjectReference) -> Event {
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let base = object.name.clone().unwrap_or_default();
        Event {
            metadata: ObjectMeta {
                // client-go's naming: object name + "." + nanoseconds in hex.
                name: Some(format!("{base}.{:x}", now_nanos())),
                namespace: Some(namespace.to_string()),
                ..Default::default()
            },
            involved_object: object,
            reason: Some(REASON.into()),
            message: Some(message(r)),
            type_: Some("Warning".into()),
            source: Some(EventSource {
                component: Some("rackline-ipamd".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("rackline.io/ipamd".into()),
            reporting_instance: Some(self.node.clone()),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            ..Default::default()
        }
    }

    /// The Pod's and the Node's event for `r` (the Pod's only when the
    /// runtime named the pod).
    pub fn events(&self, r: &ConflictReport) -> Vec<(String, Event)> {
        let mut out = Vec::new();
        let p = &r.lease.pod;
        if !p.name.is_empty() && !p.namespace.is_empty() {
            let obj = ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(p.name.clone()),
                namespace: Some(p.namespace.clone()),
                uid: (!p.uid.is_empty()).then(|| p.uid.clone()),
                ..Default::default()
            };
            out.push((p.namespace.clone(), self.event(r, &p.namespace, obj)));
        }
        let node = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(self.node.clone()),
            uid: Some(self.node.clone()),
            ..Default::default()
        };
        out.push((
            NODE_EVENT_NAMESPACE.to_string(),
            self.event(r, NODE_EVENT_NAMESPACE, node),
        ));
        out
    }

    /// Posts the events of `r` now (tests call this; ipamd uses
    /// [`Alarms::conflict`]).
    pub async fn post(&self, r: &ConflictReport) -> Result<(), kube::Error> {
        for (ns, ev) in self.events(r) {
            let api: Api<Event> = Api::namespaced(self.client.clone(), &ns);
            api.create(&PostParams::default(), &ev).await?;
        }
        Ok(())
    }

    /// Posts the events of `r` in the background.
    pub fn conflict(self: &Arc<Self>, r: &ConflictReport) {
        let me = self.clone();
        let r = r.clone();
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            let ok = match tokio::time::timeout(POST_DEADLINE, me.post(&r)).await {
                Ok(Ok(())) => {
                    debug!(address = %r.lease.address, "conflict events posted");
                    true
                }
                Ok(Err(e)) => {
                    warn!(address = %r.lease.address, "cannot post the conflict events: {e}");
                    false
                }
                Err(_) => {
                    warn!(address = %r.lease.address, "posting the conflict events timed out");
                    false
                }
            };
            me.metrics.kube_event(ok);
        });
    }
}

impl Drop for Alarms {
    fn drop(&mut self) {
        self.tasks
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .abort_all();
    }
}
