//! netmaster's observability wiring: its flags (flattened into
//! [`crate::daemon::NetmasterArgs`]), the pool index, the metrics and
//! health listener, the heartbeat that bookmarks the event stream, and the
//! webhook sink. Every task started here is owned by [`Observability`] and
//! stopped by [`Observability::shutdown`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rackline_model::LeaseEvent;
use rackline_proto::admin::v1 as pb;
use rackline_store::{EventsError, Store, StoreError};
use rackline_telemetry::Readiness;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::events::{Batch, EventSource, HEARTBEAT_EVERY};
use crate::index::{self, PoolIndex};
use crate::leader::{ElectionStatus, Role};
use crate::metrics::{self, NetmasterMetrics};
use crate::webhook::{self, Sink, WebhookConfig};

/// How often readiness checks that etcd answers.
const ETCD_PROBE_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub struct ObservabilityArgs {
    /// Serve /metrics, /healthz and /readyz over HTTP on ADDR:PORT
    /// (conventional port 9642; off when not given).
    #[arg(long, env = "RACKLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// POST the IP event stream to this URL (http:// or https://) while this
    /// replica leads; off when not given.
    #[arg(long, env = "RACKLINE_WEBHOOK_URL", value_parser = parse_webhook_url)]
    pub webhook_url: Option<String>,
    /// Deadline of one webhook POST.
    #[arg(long, env = "RACKLINE_WEBHOOK_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub webhook_timeout_ms: u64,
    /// Most events per POST (a single etcd revision with more is sent whole).
    #[arg(long, env = "RACKLINE_WEBHOOK_BATCH_MAX", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub webhook_batch_max: u64,
    /// First delay before retrying a failed POST; doubles per failure.
    #[arg(long, env = "RACKLINE_WEBHOOK_BACKOFF_MS", default_value_t = 500,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub webhook_backoff_ms: u64,
    /// Longest delay between retries.
    #[arg(long, env = "RACKLINE_WEBHOOK_BACKOFF_MAX_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub webhook_backoff_max_ms: u64,
    /// CA certificates (PEM) that sign an https receiver's certificate
    /// [default: the system's roots].
    #[arg(long, env = "RACKLINE_WEBHOOK_CA_FILE")]
    pub webhook_ca_file: Option<PathBuf>,
}

fn parse_webhook_url(s: &str) -> Result<String, String> {
    webhook::parse_url(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum ObservabilityError {
    #[error(transparent)]
    Listen(#[from] rackline_telemetry::TelemetryError),
    #[error(transparent)]
    Webhook(#[from] webhook::WebhookError),
}

/// The WatchEvents reply stream.
pub type EventStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<pb::WatchEventsReply, tonic::Status>> + Send>,
>;

/// What the gRPC adapter needs: the event source, the counters and the
/// index (cheap clones).
#[derive(Clone)]
pub struct Handles {
    pub events: EventSource,
    pub metrics: Arc<NetmasterMetrics>,
    pub index: Arc<PoolIndex>,
    /// Turns true at shutdown: open streams end (with "shutting down") so
    /// they do not hold the gRPC drain.
    pub stop: watch::Receiver<bool>,
}

/// The metadata key of a compaction error carrying the oldest revision
/// still available.
pub const COMPACT_REVISION_METADATA: &str = "rackline-compact-revision";

/// The gRPC status of a failed event stream.
pub fn events_status(e: &EventsError) -> tonic::Status {
    match e {
        EventsError::Compacted {
            compact_revision, ..
        } => {
            let mut s = tonic::Status::out_of_range(e.to_string());
            if let Ok(v) = compact_revision.to_string().parse() {
                s.metadata_mut().insert(COMPACT_REVISION_METADATA, v);
            }
            s
        }
        EventsError::Store(se) => {
            crate::server::status_of(&crate::admin::AdminError::from(clone_store_error(se)))
        }
    }
}

/// StoreError is not Clone; the status only needs its class and text.
fn clone_store_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        other => StoreError::Refused(other.to_string()),
    }
}

pub fn event_to_proto(e: &LeaseEvent) -> pb::LeaseEvent {
    pb::LeaseEvent {
        revision: e.revision,
        index: e.index,
        kind: e.kind.as_str().to_string(),
        time_unix_ms: e.time_unix_ms,
        network: e.network.clone(),
        rack: e.rack.clone(),
        node: e.node.clone(),
        address: e.address.to_string(),
        mac: e.mac.clone(),
        pod: Some(pb::PodRef {
            namespace: e.pod.namespace.clone(),
            name: e.pod.name.clone(),
            uid: e.pod.uid.clone(),
        }),
        container_id: e.container_id.clone(),
        ifname: e.ifname.clone(),
        sticky: e.sticky,
        reason: e.reason.clone(),
        conflict_mac: e.conflict_mac.clone(),
        quarantined: e.quarantined,
        expires_unix_ms: e.expires_unix_ms,
    }
}

impl Handles {
    /// The reply stream of one WatchEvents call (counted while open).
    pub fn watch_events(&self, from: i64, follow: bool) -> EventStream {
        let mut rx = self.events.subscribe(from, follow);
        let guard = self.metrics.stream_opened();
        let mut stop = self.stop.clone();
        let (tx, out) = tokio::sync::mpsc::channel(16);
        // Ends with the client (the next send fails; a heartbeat comes at least every
        // HEARTBEAT_EVERY while a leader runs), with the stream, or at shutdown.
        tokio::spawn(async move {
            let _open = guard;
            loop {
                let item = tokio::select! {
                    item = rx.recv() => Some(item),
                    _ = stop.wait_for(|s| *s) => None,
                };
                let Some(item) = item else {
                    let _ = tx
                        .send(Err(tonic::Status::unavailable(
                            "this netmaster is shutting down",
                        )))
                        .await;
                    return;
                };
                let Some(item) = item else { return };
                let reply = match item {
                    Ok(Batch::Events { revision, events }) => Ok(pb::WatchEventsReply {
                        events: events.iter().map(event_to_proto).collect(),
                        revision,
                    }),
                    Ok(Batch::Progress(revision)) => Ok(pb::WatchEventsReply {
                        events: Vec::new(),
                        revision,
                    }),
                    Err(e) => Err(events_status(&e)),
                };
                let last = reply.is_err();
                if tx.send(reply).await.is_err() || last {
                    return;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))
    }
}

/// The running parts; [`Observability::shutdown`] stops them.
pub struct Observability {
    pub events: EventSource,
    pub metrics: Arc<NetmasterMetrics>,
    pub index: Arc<PoolIndex>,
    /// Where /metrics is served, when it is.
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Observability {
    pub fn handles(&self) -> Handles {
        Handles {
            events: self.events.clone(),
            metrics: self.metrics.clone(),
            index: self.index.clone(),
            stop: self.stop.subscribe(),
        }
    }

    /// Starts everything `args` asks for; the pool index and the heartbeat
    /// always run (the event stream and metrics need them).
    pub async fn start(
        args: &ObservabilityArgs,
        store: Store,
        status: ElectionStatus,
        id: String,
    ) -> Result<Self, ObservabilityError> {
        let (stop, stop_rx) = watch::channel(false);
        let metrics = NetmasterMetrics::new();
        let index = PoolIndex::new(store.keys().clone());
        let events = EventSource::new(store.clone(), index.clone(), id.clone());
        let mut tasks = vec![tokio::spawn(index::run(
            index.clone(),
            store.clone(),
            stop_rx.clone(),
        ))];
        tasks.push(tokio::spawn(heartbeat(
            events.clone(),
            status.clone(),
            stop_rx.clone(),
        )));
        let mut metrics_addr = None;
        if let Some(addr) = args.metrics_listen {
            let etcd_ok = Arc::new(AtomicBool::new(false));
            tasks.push(tokio::spawn(probe_etcd(
                store.clone(),
                etcd_ok.clone(),
                stop_rx.clone(),
            )));
            let registry = Arc::new(metrics::registry(&metrics, index.clone(), status.clone()));
            let ready_status = status.clone();
            let health = move || readiness(etcd_ok.load(Ordering::Relaxed), &ready_status);
            let (bound, task) =
                rackline_telemetry::spawn(addr, registry, Arc::new(health), stop_rx.clone())
                    .await?;
            info!(metrics = %bound, "serving /metrics, /healthz and /readyz");
            metrics_addr = Some(bound);
            tasks.push(task);
        }
        if let Some(cfg) = webhook_config(args)? {
            let sink = Sink::new(cfg, events.clone(), status.clone(), metrics.clone(), id)?;
            tasks.push(tokio::spawn(sink.run(stop_rx.clone())));
        }
        Ok(Self {
            events,
            metrics,
            index,
            metrics_addr,
            stop,
            tasks,
        })
    }

    /// Stops every task (bounded: they are aborted after `within`).
    pub async fn shutdown(self, within: Duration) {
        self.stop.send_replace(true);
        for mut t in self.tasks {
            if tokio::time::timeout(within, &mut t).await.is_err() {
                t.abort();
            }
        }
    }
}

/// netmaster is ready when etcd answers and a leader is known (this
/// replica or another): then it can serve reads and route writes.
fn readiness(etcd_ok: bool, status: &ElectionStatus) -> Readiness {
    use crate::admin::WriteFence;
    if !etcd_ok {
        return Readiness::NotReady("etcd is unreachable".into());
    }
    match status.leader() {
        Ok(_) => Readiness::Ready,
        Err(_) => Readiness::NotReady("no netmaster leader is known".into()),
    }
}

/// Keeps `ok` telling whether etcd answers a status request.
async fn probe_etcd(store: Store, ok: Arc<AtomicBool>, mut stop: watch::Receiver<bool>) {
    loop {
        let up = store.ping().await.is_ok();
        if ok.swap(up, Ordering::Relaxed) != up {
            debug!(up, "etcd reachability for /readyz changed");
        }
        tokio::select! {
            _ = tokio::time::sleep(ETCD_PROBE_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// The leader writes the heartbeat every [`HEARTBEAT_EVERY`] (see
/// `crate::events`).
async fn heartbeat(events: EventSource, status: ElectionStatus, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(HEARTBEAT_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if matches!(status.role(), Role::Leader { .. }) {
            if let Err(e) = events.heartbeat().await {
                warn!("cannot write the event stream heartbeat: {e}");
            }
        }
    }
}

/// The webhook sink's settings, when `--webhook-url` is set.
fn webhook_config(args: &ObservabilityArgs) -> Result<Option<WebhookConfig>, ObservabilityError> {
    let Some(url) = &args.webhook_url else {
        return Ok(None);
    };
    Ok(Some(WebhookConfig {
        url: webhook::parse_url(url)?,
        timeout: Duration::from_millis(args.webhook_timeout_ms),
        batch_max: usize::try_from(args.webhook_batch_max).unwrap_or(usize::MAX),
        backoff: Duration::from_millis(args.webhook_backoff_ms),
        backoff_max: Duration::from_millis(
            args.webhook_backoff_max_ms.max(args.webhook_backoff_ms),
        ),
        ca_file: args.webhook_ca_file.clone(),
    }))
}
