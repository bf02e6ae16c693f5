//! netmaster's Prometheus metrics (docs/operations.md, "Metrics"): counters
//! kept as things happen, and gauges read at scrape time from the election
//! and the [`PoolIndex`] (so a scrape never touches etcd).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tonic::codegen::http;

use crate::index::PoolIndex;
use crate::leader::{ElectionStatus, Role};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RowLabels {
    network: String,
    rack: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

/// The counters netmaster keeps; cheap to share (`Arc`).
#[derive(Default, Debug)]
pub struct NetmasterMetrics {
    admin_requests: Family<RequestLabels, Counter>,
    mutations: Family<MethodLabels, Counter>,
    block_grants: Family<RowLabels, Counter>,
    block_returns: Family<RowLabels, Counter>,
    event_streams: Gauge,
    webhook_posts: Family<OutcomeLabels, Counter>,
    webhook_events: Counter,
    webhook_gaps: Counter,
    webhook_cursor: Gauge,
}

/// Methods whose success changes stored state: what an audit trail records.
fn is_mutation(method: &str) -> bool {
    const VERBS: [&str; 11] = [
        "Create", "Delete", "Update", "Set", "Bind", "Unbind", "Register", "Acquire", "Release",
        "Pin", "Drain",
    ];
    VERBS.iter().any(|v| method.starts_with(v))
}

/// The gRPC method name of an admin request path, or "other" (so a client
/// cannot mint label values: unknown methods end up as one series).
fn method_of(path: &str) -> &str {
    path.strip_prefix("/rackline.admin.v1.Admin/")
        .filter(|m| !m.is_empty() && m.len() <= 48 && m.bytes().all(|b| b.is_ascii_alphanumeric()))
        .unwrap_or("other")
}

/// gRPC status codes by number, as Prometheus label values.
fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Cancelled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("Unknown")
}

impl NetmasterMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// One admin request finished (or its stream started) with gRPC `code`.
    pub fn admin_request(&self, method: &str, code: i32) {
        // Unimplemented: a path no RPC serves; never a label of its own.
        let method = if code == 12 { "other" } else { method };
        self.admin_requests
            .get_or_create(&RequestLabels {
                method: method.to_string(),
                code: code_name(code).to_string(),
            })
            .inc();
        if code == 0 && is_mutation(method) {
            self.mutations
                .get_or_create(&MethodLabels {
                    method: method.to_string(),
                })
                .inc();
        }
    }

    pub fn block_granted(&self, network: &str, rack: &str) {
        self.block_grants
            .get_or_create(&RowLabels {
                network: network.into(),
                rack: rack.into(),
            })
            .inc();
    }

    pub fn block_returned(&self, network: &str, rack: &str) {
        self.block_returns
            .get_or_create(&RowLabels {
                network: network.into(),
                rack: rack.into(),
            })
            .inc();
    }

    /// A WatchEvents stream opened (the guard closes it when dropped).
    pub fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.event_streams.inc();
        StreamGuard(self.clone())
    }

    /// One webhook POST: `outcome` is `ok`, `http-error`, `timeout` or
    /// `connect-error`; `events` delivered when ok.
    pub fn webhook_post(&self, outcome: &str, events: u64) {
        self.webhook_posts
            .get_or_create(&OutcomeLabels {
                outcome: outcome.into(),
            })
            .inc();
        if outcome == "ok" {
            self.webhook_events.inc_by(events);
        }
    }

    pub fn webhook_gap(&self) {
        self.webhook_gaps.inc();
    }

    pub fn webhook_cursor(&self, next_revision: i64) {
        self.webhook_cursor.set(next_revision);
    }
}

/// Counts an open event stream while it lives.
pub struct StreamGuard(Arc<NetmasterMetrics>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.event_streams.dec();
    }
}

/// Gauges read at scrape time.
struct StateCollector {
    index: Arc<PoolIndex>,
    status: ElectionStatus,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    // Stays long: the method set is dictated by `Collector`; the body emits
    // one metric family after another from a single state read.
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use rackline_telemetry::encode_gauges;
        let (leader, term) = match self.status.role() {
            Role::Leader { fence, .. } => (1, fence.create_revision),
            Role::Follower {
                create_revision, ..
            } => (0, create_revision),
            _ => (0, 0),
        };
        encode_gauges(
            &mut encoder,
            "rackline_netmaster_leader",
            "1 while this replica is the leader (the only one that writes), else 0.",
            &[(vec![], leader)],
        )?;
        encode_gauges(
            &mut encoder,
            "rackline_netmaster_leader_term",
            "The current leadership term as this replica knows it: the etcd create revision of the leader key (its write fence); 0 when no leader is known.",
            &[(vec![], term)],
        )?;
        encode_gauges(
            &mut encoder,
            "rackline_netmaster_index_synced",
            "1 while netmaster's pool index follows etcd (the pool gauges are current), else 0.",
            &[(vec![], i64::from(self.index.synced()))],
        )?;
        if !self.index.synced() {
            // Stale numbers are worse than none: the pool gauges vanish
            // until the index has re-read etcd.
            return Ok(());
        }
        let usage = self.index.usage();
        let row = |u: &crate::index::RowUsage| {
            vec![("network", u.network.clone()), ("rack", u.rack.clone())]
        };
        let to_i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        let capacity: Vec<_> = usage.iter().map(|u| (row(u), to_i(u.capacity))).collect();
        encode_gauges(
            &mut encoder,
            "rackline_pool_capacity_addresses",
            "Addresses a network x rack may ever hand out (its ranges minus network, broadcast, gateway and exclusions).",
            &capacity,
        )?;
        let mut by_state = Vec::new();
        for u in &usage {
            for (state, v) in [
                ("used", u.leases.active),
                ("reserved", u.leases.reserved),
                ("standby", u.leases.standby),
                ("quarantined", u.leases.conflict),
                ("free", u.free()),
            ] {
                let mut l = row(u);
                l.push(("state", state.to_string()));
                by_state.push((l, to_i(v)));
            }
        }
        encode_gauges(
            &mut encoder,
            "rackline_pool_addresses",
            "Addresses of a network x rack by state: used (a pod's lease), reserved (held for a sticky pod), standby (a node's outage reserve), quarantined (found in use by another host), free.",
            &by_state,
        )?;
        let blocks: Vec<_> = usage.iter().map(|u| (row(u), to_i(u.blocks))).collect();
        encode_gauges(
            &mut encoder,
            "rackline_pool_blocks",
            "Address blocks the nodes of a rack hold on a network.",
            &blocks,
        )?;
        let in_blocks: Vec<_> = usage
            .iter()
            .map(|u| (row(u), to_i(u.block_addresses)))
            .collect();
        encode_gauges(
            &mut encoder,
            "rackline_pool_block_addresses",
            "Addresses inside the blocks the nodes of a rack hold on a network.",
            &in_blocks,
        )
    }
}

/// Every netmaster metric, for `/metrics`.
pub fn registry(
    metrics: &Arc<NetmasterMetrics>,
    index: Arc<PoolIndex>,
    status: ElectionStatus,
) -> Registry {
    let mut r = Registry::default();
    let m = metrics.as_ref();
    r.register(
        "rackline_netmaster_admin_requests",
        "Admin API requests by method and gRPC status code (a stream counts when it starts).",
        m.admin_requests.clone(),
    );
    r.register(
        "rackline_netmaster_mutations",
        "Successful admin requests that changed stored state (create, delete, bind, pin, release, ...), by method: what an audit trail records.",
        m.mutations.clone(),
    );
    r.register(
        "rackline_netmaster_block_grants",
        "Address blocks handed to nodes (AcquireBlock), by network and rack.",
        m.block_grants.clone(),
    );
    r.register(
        "rackline_netmaster_block_returns",
        "Address blocks returned by nodes (ReleaseBlock), by network and rack.",
        m.block_returns.clone(),
    );
    r.register(
        "rackline_netmaster_event_streams",
        "WatchEvents streams open on this replica.",
        m.event_streams.clone(),
    );
    r.register(
        "rackline_netmaster_webhook_posts",
        "Webhook POSTs by outcome: ok, http-error, timeout, connect-error.",
        m.webhook_posts.clone(),
    );
    r.register(
        "rackline_netmaster_webhook_events",
        "Events the webhook receiver acknowledged (a retried batch counts again).",
        m.webhook_events.clone(),
    );
    r.register(
        "rackline_netmaster_webhook_gaps",
        "Times the webhook sink found its cursor compacted away by etcd (events lost to the receiver; it was told).",
        m.webhook_gaps.clone(),
    );
    r.register(
        "rackline_netmaster_webhook_cursor_revision",
        "The next etcd revision the webhook sink delivers (on the leader; 0 elsewhere).",
        m.webhook_cursor.clone(),
    );
    r.register_collector(Box::new(StateCollector { index, status }));
    r
}

/// A tower layer counting every admin request by method and gRPC status.
#[derive(Clone)]
pub struct AdminMetricsLayer(pub Arc<NetmasterMetrics>);

impl<S> tower::Layer<S> for AdminMetricsLayer {
    type Service = AdminMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        AdminMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AdminMetricsService<S> {
    inner: S,
    metrics: Arc<NetmasterMetrics>,
}

impl<S, B, RB> tower::Service<http::Request<B>> for AdminMetricsService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = method_of(req.uri().path()).to_string();
        // The service that was polled ready serves this call; a fresh
        // clone takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = inner.call(req).await;
            if let Ok(resp) = &res {
                // An error answer carries its status in the headers
                // ("trailers-only"); a success's comes in the trailers,
                // after the body: absent here means OK.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                metrics.admin_request(&method, code);
            }
            res
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(
            method_of("/rackline.admin.v1.Admin/CreateNetwork"),
            "CreateNetwork"
        );
        assert_eq!(method_of("/rackline.admin.v1.Admin/"), "other");
        assert_eq!(method_of("/rackline.admin.v1.Admin/a/b"), "other");
        assert_eq!(method_of("/other.Service/X"), "other");
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(14), "Unavailable");
        assert_eq!(code_name(99), "Unknown");
        assert!(is_mutation("PinReservation") && is_mutation("DeleteNetwork"));
        assert!(!is_mutation("ListLeases") && !is_mutation("WatchEvents"));
        let m = NetmasterMetrics::new();
        m.admin_request("Nonsense", 12);
        m.admin_request("CreateNetwork", 0);
        m.admin_request("CreateNetwork", 3);
        let mut text = String::new();
        let reg = registry(
            &m,
            PoolIndex::new(rackline_store::Keys::new("/r")),
            ElectionStatus::fixed("a", "h:1", Role::Campaigning),
        );
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let e = rackline_telemetry::exposition::parse(&text).unwrap();
        e.check_conventions().unwrap();
        assert_eq!(
            e.value(
                "rackline_netmaster_admin_requests_total",
                &[("method", "other"), ("code", "Unimplemented")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.value(
                "rackline_netmaster_mutations_total",
                &[("method", "CreateNetwork")]
            ),
            Some(1.0)
        );
        assert_eq!(e.value("rackline_netmaster_leader", &[]), Some(0.0));
        // Not synced: no pool gauges at all.
        assert!(e.family("rackline_pool_addresses").is_none());
    }
}
