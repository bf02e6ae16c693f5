//! Keeps the NetworkPolicy layer of every pod on this node current: cached
//! kube-rs watches (reflectors) of NetworkPolicies, Pods and Namespaces —
//! listed once, then followed by WATCH, never re-listed per change — and a
//! recompute pass after each burst of events. Each pass compiles every
//! local pod against one snapshot of the three caches and hands the pods
//! whose result changed to the [`NetpolSink`] (the filter programmer).
//!
//! Peer pods appearing, leaving or changing address alter only the members
//! of named sets, so the programmer can update set elements in place; a
//! policy change alters rules.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Container, Namespace, Pod, PodSpec, PodStatus};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tracing::{debug, info, warn};

use super::compile::{Compiled, World};
use crate::filter::{Filters, NetpolSource, NetpolView};
use rackline_model::PodRef;
use std::net::Ipv4Addr;

/// How long a pass waits after the first event of a burst for the rest of
/// it (a rollout updates many pods at once). Well under the one-second
/// budget between a policy change and the running pod's table.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for PodKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What changed in one pod's compiled layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// First result for the pod, or its rules changed: rewrite its chains.
    Rules,
    /// Only the members of its peer sets changed: update set elements.
    Sets,
}

impl Change {
    pub fn between(old: Option<&Compiled>, new: &Compiled) -> Option<Change> {
        match old {
            None => Some(Change::Rules),
            Some(o) if o.layer != new.layer || o.sets.keys().ne(new.sets.keys()) => {
                Some(Change::Rules)
            }
            Some(o) if o.sets != new.sets => Some(Change::Sets),
            Some(_) => None,
        }
    }

    fn as_str(&self) -> &'static str {
        match self {
            Change::Rules => "rules",
            Change::Sets => "sets",
        }
    }
}

/// Receives the compiled NetworkPolicy layer of local pods as it changes.
/// Called from the recompute task; implementations hand the work on (the
/// namespace work belongs on its own thread) and return quickly.
pub trait NetpolSink: Send + Sync + 'static {
    fn changed(&self, pod: &PodKey, compiled: &Compiled, change: Change);
    /// The pod left the node or the cluster.
    fn removed(&self, pod: &PodKey);
    /// The caches were listed and the first pass is done: layers reported
    /// from now on are the pods' real policy.
    fn synced(&self) {}
}

/// Hands changes to the pod filter assembler: it reads every attachment's
/// layer back through [`NetpolSource`] and re-programs what differs.
pub struct FiltersSink(pub Arc<Filters>);

impl NetpolSink for FiltersSink {
    fn changed(&self, pod: &PodKey, compiled: &Compiled, change: Change) {
        debug!(%pod, ?change, sets = compiled.sets.len(), "NetworkPolicy layer changed");
        self.0.changed();
    }
    fn removed(&self, _: &PodKey) {
        self.0.changed();
    }
    fn synced(&self) {
        // The re-programmer held every table while unsynced: a round now.
        self.0.changed();
    }
}

impl NetpolSource for Netpol {
    /// The pod's layer; allow-all while the caches are not yet listed
    /// (right after ipamd starts) and for pods the API does not know.
    fn for_pod(&self, pod: &PodRef, _ip: Ipv4Addr) -> NetpolView {
        self.current(&pod.namespace, &pod.name)
            .map(|c| NetpolView {
                layer: c.layer,
                sets: c.sets,
            })
            .unwrap_or_else(NetpolView::allow_all)
    }
    fn synced(&self) -> bool {
        Netpol::synced(self)
    }
}

/// A sink that only logs.
pub struct LogSink;

impl NetpolSink for LogSink {
    fn changed(&self, pod: &PodKey, compiled: &Compiled, change: Change) {
        debug!(%pod, ?change, sets = compiled.sets.len(), "NetworkPolicy layer changed");
    }
    fn removed(&self, pod: &PodKey) {
        debug!(%pod, "NetworkPolicy layer dropped");
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChangeLabels {
    change: String,
}

/// `rackline_ipamd_netpol_*` metrics (docs/operations.md).
pub struct NetpolMetrics {
    passes: Counter,
    pass_seconds: Histogram,
    updates: Family<ChangeLabels, Counter>,
    local_pods: Gauge,
    isolated_pods: Gauge,
    events: Counter,
}

impl Default for NetpolMetrics {
    fn default() -> Self {
        NetpolMetrics {
            passes: Counter::default(),
            pass_seconds: Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            ]),
            updates: Family::default(),
            local_pods: Gauge::default(),
            isolated_pods: Gauge::default(),
            events: Counter::default(),
        }
    }
}

impl NetpolMetrics {
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "rackline_ipamd_netpol_recomputations",
            "NetworkPolicy recompute passes (every local pod compiled once)",
            self.passes.clone(),
        );
        r.register(
            "rackline_ipamd_netpol_recompute_seconds",
            "Duration of one NetworkPolicy recompute pass",
            self.pass_seconds.clone(),
        );
        r.register(
            "rackline_ipamd_netpol_updates",
            "Local pods whose NetworkPolicy layer changed, by change (rules, sets, removed)",
            self.updates.clone(),
        );
        r.register(
            "rackline_ipamd_netpol_local_pods",
            "Local pods the NetworkPolicy layer is computed for",
            self.local_pods.clone(),
        );
        r.register(
            "rackline_ipamd_netpol_isolated_pods",
            "Local pods isolated by NetworkPolicy in at least one direction",
            self.isolated_pods.clone(),
        );
        r.register(
            "rackline_ipamd_netpol_watch_events",
            "Events received from the NetworkPolicy, Pod and Namespace watches",
            self.events.clone(),
        );
    }

    pub fn passes(&self) -> u64 {
        self.passes.get()
    }

    pub fn updates(&self, change: &str) -> u64 {
        self.updates
            .get_or_create(&ChangeLabels {
                change: change.into(),
            })
            .get()
    }
}

#[derive(Default)]
struct State {
    synced: bool,
    by_pod: BTreeMap<PodKey, Compiled>,
}

/// The NetworkPolicy provider: caches, the current layer of each local
/// pod, and a generation that moves on every pass that changed something.
pub struct Netpol {
    node: String,
    policies: Store<NetworkPolicy>,
    pods: Store<Pod>,
    namespaces: Store<Namespace>,
    state: Mutex<State>,
    generation: watch::Sender<u64>,
    pub metrics: NetpolMetrics,
}

impl Netpol {
    /// Starts the three watches and the recompute task; every returned task
    /// runs until `shutdown` (its owner aborts it on exit).
    pub fn start(
        client: Client,
        node: &str,
        sink: Arc<dyn NetpolSink>,
        shutdown: watch::Receiver<bool>,
    ) -> (Arc<Self>, Vec<JoinHandle<()>>) {
        let notify = Arc::new(Notify::new());
        let (policies, w_np) = reflector::store::<NetworkPolicy>();
        let (pods, w_pod) = reflector::store::<Pod>();
        let (namespaces, w_ns) = reflector::store::<Namespace>();
        let this = Arc::new(Netpol {
            node: node.to_string(),
            policies,
            pods,
            namespaces,
            state: Mutex::default(),
            generation: watch::channel(0).0,
            metrics: NetpolMetrics::default(),
        });
        let mut tasks = vec![
            follow(
                "NetworkPolicy",
                Api::<NetworkPolicy>::all(client.clone()),
                w_np,
                |np: &mut NetworkPolicy| np.managed_fields_mut().clear(),
                this.clone(),
                notify.clone(),
                shutdown.clone(),
            ),
            follow(
                "Pod",
                Api::<Pod>::all(client.clone()),
                w_pod,
                slim_pod,
                this.clone(),
                notify.clone(),
                shutdown.clone(),
            ),
            follow(
                "Namespace",
                Api::<Namespace>::all(client),
                w_ns,
                |ns: &mut Namespace| {
                    ns.managed_fields_mut().clear();
                    ns.annotations_mut().clear();
                },
                this.clone(),
                notify.clone(),
                shutdown.clone(),
            ),
        ];
        tasks.push(tokio::spawn(
            this.clone().recompute_loop(sink, notify, shutdown),
        ));
        (this, tasks)
    }

    /// Whether the three caches have been listed (before that nothing is
    /// compiled: a partial view would allow or deny the wrong peers).
    pub fn synced(&self) -> bool {
        self.state.lock().unwrap().synced
    }

    /// The current layer of pod `namespace/name`: the last pass's result,
    /// or compiled now when the pod reached the cache after it. None until
    /// the caches are synced or while the pod is unknown.
    pub fn current(&self, namespace: &str, name: &str) -> Option<Compiled> {
        let key = PodKey {
            namespace: namespace.into(),
            name: name.into(),
        };
        {
            let st = self.state.lock().unwrap();
            if !st.synced {
                return None;
            }
            if let Some(c) = st.by_pod.get(&key) {
                return Some(c.clone());
            }
        }
        let pod = self
            .pods
            .get(&reflector::ObjectRef::new(name).within(namespace))?;
        Some(self.world().compile(&pod))
    }

    /// Moves on after every pass that changed a local pod's layer.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn world(&self) -> World {
        World::new(
            self.policies.state(),
            self.pods.state(),
            self.namespaces.state(),
        )
    }

    async fn recompute_loop(
        self: Arc<Self>,
        sink: Arc<dyn NetpolSink>,
        notify: Arc<Notify>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let ready = async {
            tokio::join!(
                self.policies.wait_until_ready(),
                self.pods.wait_until_ready(),
                self.namespaces.wait_until_ready()
            )
        };
        tokio::select! {
            _ = ready => {}
            _ = shutdown.changed() => return,
        }
        info!(node = %self.node, "NetworkPolicy caches synced");
        self.pass(sink.as_ref());
        sink.synced();
        loop {
            tokio::select! {
                _ = notify.notified() => {}
                _ = shutdown.changed() => return,
            }
            tokio::time::sleep(DEBOUNCE).await;
            self.pass(sink.as_ref());
        }
    }

    /// One pass: compile every local pod, report what changed.
    pub fn pass(&self, sink: &dyn NetpolSink) {
        let started = Instant::now();
        let world = self.world();
        let mut next = BTreeMap::new();
        for pod in self.pods.state() {
            if pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) != Some(&self.node)
                || pod.spec.as_ref().and_then(|s| s.host_network) == Some(true)
            {
                continue;
            }
            let key = PodKey {
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
            };
            next.insert(key, world.compile(&pod));
        }
        let mut reports = Vec::new();
        let isolated = next
            .values()
            .filter(|c| !c.layer.ingress.is_allow_all() || !c.layer.egress.is_allow_all())
            .count();
        self.metrics.local_pods.set(next.len() as i64);
        self.metrics.isolated_pods.set(isolated as i64);
        {
            let mut st = self.state.lock().unwrap();
            for (key, c) in &next {
                if let Some(change) = Change::between(st.by_pod.get(key), c) {
                    reports.push((key.clone(), Some((c.clone(), change))));
                }
            }
            for key in st.by_pod.keys().filter(|k| !next.contains_key(*k)) {
                reports.push((key.clone(), None));
            }
            st.by_pod = next;
            st.synced = true;
        }
        // Reported after the new state is in place: a sink that reads the
        // layers back (the filter re-programmer) sees this pass's results.
        for (key, report) in &reports {
            match report {
                Some((c, change)) => {
                    sink.changed(key, c, *change);
                    self.count(change.as_str());
                }
                None => {
                    sink.removed(key);
                    self.count("removed");
                }
            }
        }
        self.metrics.passes.inc();
        self.metrics
            .pass_seconds
            .observe(started.elapsed().as_secs_f64());
        if !reports.is_empty() {
            self.generation.send_modify(|g| *g += 1);
        }
    }

    fn count(&self, change: &str) {
        self.metrics
            .updates
            .get_or_create(&ChangeLabels {
                change: change.into(),
            })
            .inc();
    }
}

/// Follows one kind into its reflector store and wakes the recompute task
/// on every event.
fn follow<K>(
    kind: &'static str,
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    slim: fn(&mut K),
    np: Arc<Netpol>,
    notify: Arc<Notify>,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone + Send + Sync,
{
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .modify(slim)
            .reflect(writer);
        tokio::pin!(stream);
        let mut failing = false;
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(_)) => {
                        if failing {
                            info!(kind, "NetworkPolicy watch recovered");
                            failing = false;
                        }
                        np.metrics.events.inc();
                        notify.notify_one();
                    }
                    Some(Err(e)) => {
                        if !failing {
                            warn!(kind, "NetworkPolicy watch failing (layers stay as last computed): {e}");
                        }
                        failing = true;
                    }
                    None => return,
                },
                _ = shutdown.changed() => return,
            }
        }
    })
}

/// Keeps only what the compiler reads of a pod (labels, node, hostNetwork,
/// container ports, phase, addresses): every pod of the cluster is cached.
fn slim_pod(p: &mut Pod) {
    p.managed_fields_mut().clear();
    p.annotations_mut().clear();
    p.metadata.owner_references = None;
    let slim_containers = |cs: &[Container]| -> Vec<Container> {
        cs.iter()
            .map(|c| Container {
                name: c.name.clone(),
                ports: c.ports.clone(),
                ..Default::default()
            })
            .collect()
    };
    if let Some(s) = p.spec.take() {
        p.spec = Some(PodSpec {
            node_name: s.node_name,
            host_network: s.host_network,
            containers: slim_containers(&s.containers),
            init_containers: s.init_containers.as_deref().map(slim_containers),
            ..Default::default()
        });
    }
    if let Some(s) = p.status.take() {
        p.status = Some(PodStatus {
            phase: s.phase,
            pod_ip: s.pod_ip,
            pod_ips: s.pod_ips,
            ..Default::default()
        });
    }
}
