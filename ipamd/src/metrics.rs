//! ipamd's Prometheus metrics (docs/operations.md, "Metrics"). Counters and
//! histograms are kept as requests finish; everything that is state (leases
//! held, blocks, reserve, mode, journal) is read from the engine at scrape
//! time, so nothing is stored twice or can drift.
//!
//! Label values are bounded: `network` only ever names a network this node
//! knows (an unknown or invalid one is counted as `""`), `rack` is this
//! node's, `outcome`/`reason`/`command` come from fixed lists. No pod,
//! container or address is ever a label.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use rackline_proto::ipam::v1 as pb;

use crate::engine::IpamError;
use crate::netstate::NodeGauges;

/// Latency buckets (seconds) of calls served from a node: 0.5 ms to 5 s.
const FAST_BUCKETS: [f64; 13] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// The plugin's whole invocation (datapath included): 5 ms to 30 s.
const PLUGIN_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// A report longer than this is not a plugin run (a clock jump): dropped.
const MAX_PLUGIN_REPORT: Duration = Duration::from_secs(3600);
/// Reports taken from one request at most.
const MAX_PLUGIN_REPORTS: usize = 64;

/// The modes `rackline_ipamd_mode` reports, one series each.
pub const MODES: [&str; 3] = ["online", "suspect", "offline"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabels {
    network: String,
    rack: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EtcdLabels {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    network: String,
    rack: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    command: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PassLabels {
    source: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KubeLabels {
    outcome: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn fast() -> Histogram {
    Histogram::new(FAST_BUCKETS)
}

fn plugin() -> Histogram {
    Histogram::new(PLUGIN_BUCKETS)
}

/// The outcome label of a finished Allocate or Release.
pub fn outcome(e: Option<&IpamError>) -> &'static str {
    match e {
        None => "ok",
        Some(IpamError::Exhausted { .. }) => "exhausted",
        Some(IpamError::Contended(_)) => "conflict",
        Some(IpamError::IdentityLive(_) | IpamError::WrongRack(_)) => "sticky-refused",
        Some(IpamError::Unavailable(_) | IpamError::NotReady) => "etcd-unavailable",
        Some(IpamError::UnknownNetwork(_)) => "unknown-network",
        Some(IpamError::NotInRack(_)) => "not-in-rack",
        Some(IpamError::InvalidRequest(_)) => "invalid",
        // New error kinds land here until they get a name of their own.
        #[allow(unreachable_patterns)]
        Some(_) => "error",
    }
}

#[derive(Debug)]
pub struct IpamMetrics {
    rack: String,
    allocations: Family<OpLabels, Counter>,
    releases: Family<OpLabels, Counter>,
    allocate_duration: Histograms<ResultLabels>,
    etcd_duration: Histograms<EtcdLabels>,
    reclaims: Family<ReasonLabels, Counter>,
    conflicts: Family<OpLabels, Counter>,
    plugin_duration: Histograms<PluginLabels>,
    kube_events: Family<KubeLabels, Counter>,
    reconcile_passes: Family<PassLabels, Counter>,
    reconcile_links: Counter,
    filter_updates: Family<ResultLabels, Counter>,
    filter_drops: Family<DirectionLabels, prometheus_client::metrics::gauge::Gauge>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

impl IpamMetrics {
    /// One re-programming of a pod's filter table.
    pub fn filter_updated(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.filter_updates
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    /// The drop counters summed over this node's pod tables.
    pub fn filter_drops(&self, ingress: u64, egress: u64) {
        for (direction, v) in [("ingress", ingress), ("egress", egress)] {
            self.filter_drops
                .get_or_create(&DirectionLabels {
                    direction: direction.into(),
                })
                .set(v.min(i64::MAX as u64) as i64);
        }
    }

    /// `rack`: this node's rack ("" without one), a label of every series.
    pub fn new(rack: Option<&str>) -> Arc<Self> {
        Arc::new(Self {
            rack: rack.unwrap_or_default().to_string(),
            allocations: Family::default(),
            releases: Family::default(),
            allocate_duration: Family::new_with_constructor(fast),
            etcd_duration: Family::new_with_constructor(fast),
            reclaims: Family::default(),
            conflicts: Family::default(),
            plugin_duration: Family::new_with_constructor(plugin),
            kube_events: Family::default(),
            reconcile_passes: Family::default(),
            reconcile_links: Counter::default(),
            filter_updates: Family::default(),
            filter_drops: Family::default(),
        })
    }

    fn op(&self, network: &str, outcome: &str) -> OpLabels {
        OpLabels {
            network: network.to_string(),
            rack: self.rack.clone(),
            outcome: outcome.to_string(),
        }
    }

    /// One Allocate finished (`network`: "" unless this node knows it).
    pub fn allocated(&self, network: &str, started: Instant, err: Option<&IpamError>) {
        let outcome = outcome(err);
        self.allocations
            .get_or_create(&self.op(network, outcome))
            .inc();
        let result = if err.is_none() { "ok" } else { "error" };
        self.allocate_duration
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .observe(started.elapsed().as_secs_f64());
    }

    /// One Release finished; `freed` = it released something.
    pub fn released(&self, network: &str, freed: bool, err: Option<&IpamError>) {
        let outcome = match (err, freed) {
            (None, false) => "none",
            (e, _) => outcome(e),
        };
        self.releases
            .get_or_create(&self.op(network, outcome))
            .inc();
    }

    /// One pass of the leak reconciler over `source` (`kube`, `cri`):
    /// `ok`, or `unavailable` (the sandboxes could not be listed, or etcd
    /// was unreachable: nothing was reclaimed).
    pub fn reconcile_pass(&self, source: &str, result: &str) {
        self.reconcile_passes
            .get_or_create(&PassLabels {
                source: source.into(),
                result: result.into(),
            })
            .inc();
    }

    /// A leftover node veth the reconciler deleted.
    pub fn reconcile_link_deleted(&self) {
        self.reconcile_links.inc();
    }

    /// `n` leases reclaimed for `reason` (`gc`, `reconcile`).
    pub fn reclaimed(&self, network: &str, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        self.reclaims
            .get_or_create(&ReasonLabels {
                network: network.into(),
                rack: self.rack.clone(),
                reason: reason.into(),
            })
            .inc_by(n);
    }

    /// An address conflict was reported: `quarantined` or `sticky` (the
    /// sticky pod kept its address and fails to start).
    pub fn conflict(&self, network: &str, outcome: &str) {
        self.conflicts
            .get_or_create(&self.op(network, outcome))
            .inc();
    }

    /// A Kubernetes Event was posted (`ok`) or not (`error`).
    pub fn kube_event(&self, ok: bool) {
        self.kube_events
            .get_or_create(&KubeLabels {
                outcome: if ok { "ok" } else { "error" }.into(),
            })
            .inc();
    }

    /// The plugin's reports of its earlier invocations.
    pub fn plugin_reported(&self, timings: &[pb::PluginTiming]) {
        for t in timings.iter().take(MAX_PLUGIN_REPORTS) {
            let command = match t.command.as_str() {
                "ADD" => "ADD",
                "DEL" => "DEL",
                _ => continue,
            };
            let d = Duration::from_micros(t.duration_us);
            if d > MAX_PLUGIN_REPORT {
                continue;
            }
            self.plugin_duration
                .get_or_create(&PluginLabels {
                    command: command.into(),
                    result: if t.ok { "ok" } else { "error" }.into(),
                })
                .observe(d.as_secs_f64());
        }
    }

    /// The store observer feeding `rackline_ipamd_etcd_request_duration_seconds`.
    pub fn store_observer(self: &Arc<Self>) -> rackline_store::Observer {
        let me = self.clone();
        Arc::new(move |op: &'static str, d: Duration| {
            me.etcd_duration
                .get_or_create(&EtcdLabels { op: op.into() })
                .observe(d.as_secs_f64());
        })
    }
}

/// What the scrape reads from the engine (implemented by `Engine`).
pub trait NodeView: Send + Sync + 'static {
    /// Per network this node serves.
    fn gauges(&self) -> Vec<(String, NodeGauges)>;
    /// One of [`MODES`].
    fn mode(&self) -> &'static str;
    fn journal_depth(&self) -> u64;
    fn ready(&self) -> bool;
}

struct StateCollector {
    rack: String,
    view: Arc<dyn NodeView>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    // Stays long on purpose: a table of metric families (name, help,
    // value), one entry each; splitting it would scatter the exposition
    // names that dashboards and docs match against.
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use rackline_telemetry::encode_gauges;
        let gauges = self.view.gauges();
        let per_net = |f: fn(&NodeGauges) -> u64| {
            gauges
                .iter()
                .map(|(n, g)| {
                    (
                        vec![("network", n.clone()), ("rack", self.rack.clone())],
                        i64::try_from(f(g)).unwrap_or(i64::MAX),
                    )
                })
                .collect::<Vec<_>>()
        };
        // (name, help, the gauge's field)
        type PerNetwork = (&'static str, &'static str, fn(&NodeGauges) -> u64);
        let families: [PerNetwork; 7] = [
            (
                "rackline_ipamd_leases_held",
                "Active leases of this node's pods.",
                |g| g.held,
            ),
            (
                "rackline_ipamd_borrowed_addresses",
                "Of this node's active leases, those outside its own blocks (borrowed inside the rack).",
                |g| g.borrowed,
            ),
            (
                "rackline_ipamd_blocks_owned",
                "Address blocks this node owns.",
                |g| g.blocks,
            ),
            (
                "rackline_ipamd_standby_addresses",
                "This node's standby reserve: addresses it may hand out while etcd is unreachable.",
                |g| g.standby,
            ),
            (
                "rackline_ipamd_sticky_reservations",
                "Sticky pods' addresses held (reserved) whose pod last ran on this node.",
                |g| g.reserved,
            ),
            (
                "rackline_ipamd_quarantined_addresses",
                "Addresses quarantined after this node's pods found them in use by another host.",
                |g| g.quarantined,
            ),
            (
                "rackline_ipamd_pods_out_of_spec",
                "Of this node's pods, those that do not run as their network is defined now (after racklinectl network update): address now excluded, or MTU, routes, host routes or QoS levels other than at ADD.",
                |g| g.out_of_spec,
            ),
        ];
        for (name, help, f) in families {
            encode_gauges(&mut encoder, name, help, &per_net(f))?;
        }
        let mode = self.view.mode();
        let modes: Vec<_> = MODES
            .iter()
            .map(|m| (vec![("mode", m.to_string())], i64::from(*m == mode)))
            .collect();
        encode_gauges(
            &mut encoder,
            "rackline_ipamd_mode",
            "1 for the mode ipamd is in: online (etcd answers), suspect (an etcd call failed and the prober has not decided yet; the reserve is not used) or offline (the prober gave up on etcd: serving from the standby reserve, decisions journalled).",
            &modes,
        )?;
        encode_gauges(
            &mut encoder,
            "rackline_ipamd_journal_entries",
            "Offline decisions in the outage journal not yet replayed into etcd.",
            &[(
                vec![],
                i64::try_from(self.view.journal_depth()).unwrap_or(i64::MAX),
            )],
        )?;
        encode_gauges(
            &mut encoder,
            "rackline_ipamd_ready",
            "1 when /readyz answers 200 (the socket serves and etcd's state is loaded or a standby reserve remains), else 0.",
            &[(vec![], i64::from(self.view.ready()))],
        )
    }
}

/// Every ipamd metric, for `/metrics`.
///
/// Stays long on purpose: one registration per family, in exposition
/// order; a flat table is easier to check against the docs than pieces.
pub fn registry(m: &Arc<IpamMetrics>, view: Arc<dyn NodeView>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "rackline_ipamd_filter_updates",
        "Re-programmings of pod packet filter tables by ipamd (ACL, network default or NetworkPolicy change), by result: ok, failed.",
        m.filter_updates.clone(),
    );
    r.register(
        "rackline_ipamd_filter_dropped_packets",
        "Packets dropped by the packet filter tables of this node's pods, by direction (ingress, egress), summed over the tables as last read (a re-programmed table starts again from 0).",
        m.filter_drops.clone(),
    );
    r.register(
        "rackline_ipamd_allocations",
        "Allocate requests by network, rack and outcome (ok, exhausted, conflict, sticky-refused, etcd-unavailable, unknown-network, not-in-rack, invalid, error).",
        m.allocations.clone(),
    );
    r.register(
        "rackline_ipamd_releases",
        "Release requests by network, rack and outcome (ok: an address was freed; none: nothing was held; or an error outcome as for allocations).",
        m.releases.clone(),
    );
    r.register(
        "rackline_ipamd_allocate_duration_seconds",
        "Time ipamd took to answer Allocate, by result (ok, error).",
        m.allocate_duration.clone(),
    );
    r.register(
        "rackline_ipamd_etcd_request_duration_seconds",
        "Time of ipamd's etcd requests by operation (create_lease, delete_lease, replace_lease, write_sticky, snapshot, ...).",
        m.etcd_duration.clone(),
    );
    r.register(
        "rackline_ipamd_reclaims",
        "Leases freed because their pod is gone, by reason: gc (CNI GC), reconcile (the leak reconciler).",
        m.reclaims.clone(),
    );
    r.register(
        "rackline_ipamd_reconcile_passes",
        "Passes of the leak reconciler by sandbox source (kube, cri) and result: ok, or unavailable (the sandboxes or etcd could not be read; nothing was reclaimed).",
        m.reconcile_passes.clone(),
    );
    r.register(
        "rackline_ipamd_reconcile_links_deleted",
        "Leftover node veths (marked as Rackline's, of pods that are gone) the leak reconciler deleted.",
        m.reconcile_links.clone(),
    );
    r.register(
        "rackline_ipamd_address_conflicts",
        "Address conflicts reported by the plugin's ARP probe, by outcome: quarantined (the address left the pool) or sticky (a sticky pod kept it and cannot start).",
        m.conflicts.clone(),
    );
    r.register(
        "rackline_plugin_command_duration_seconds",
        "The CNI plugin's own wall time of ADD and DEL on this node, by command and result, as the plugin reports it with its next call.",
        m.plugin_duration.clone(),
    );
    r.register(
        "rackline_ipamd_kube_events",
        "Kubernetes Events posted for address conflicts, by outcome (ok, error).",
        m.kube_events.clone(),
    );
    r.register_collector(Box::new(StateCollector {
        rack: m.rack.clone(),
        view,
    }));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    struct View;
    impl NodeView for View {
        fn gauges(&self) -> Vec<(String, NodeGauges)> {
            vec![(
                "prod".into(),
                NodeGauges {
                    held: 3,
                    borrowed: 1,
                    standby: 4,
                    reserved: 2,
                    quarantined: 1,
                    blocks: 2,
                    out_of_spec: 1,
                },
            )]
        }
        fn mode(&self) -> &'static str {
            "offline"
        }
        fn journal_depth(&self) -> u64 {
            5
        }
        fn ready(&self) -> bool {
            true
        }
    }

    #[test]
    fn counters_histograms_and_state_parse_strictly() {
        let m = IpamMetrics::new(Some("r1"));
        let t = Instant::now();
        m.allocated("prod", t, None);
        m.allocated("prod", t, None);
        m.allocated(
            "prod",
            t,
            Some(&IpamError::Exhausted {
                network: "prod".into(),
                allocated: 1,
                capacity: 1,
            }),
        );
        m.released("prod", true, None);
        m.released("prod", false, None);
        m.reclaimed("prod", "gc", 2);
        m.conflict("prod", "quarantined");
        m.plugin_reported(&[
            pb::PluginTiming {
                command: "ADD".into(),
                duration_us: 12_000,
                ok: true,
            },
            pb::PluginTiming {
                command: "rm -rf".into(),
                duration_us: 1,
                ok: true,
            },
            pb::PluginTiming {
                command: "DEL".into(),
                duration_us: u64::MAX,
                ok: true,
            },
        ]);
        (m.store_observer())("create_lease", Duration::from_millis(3));
        let reg = registry(&m, Arc::new(View));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
        let e = rackline_telemetry::exposition::parse(&text).unwrap();
        e.check_conventions().unwrap();
        let v = |name: &str, l: &[(&str, &str)]| e.value(name, l);
        assert_eq!(
            v(
                "rackline_ipamd_allocations_total",
                &[("network", "prod"), ("rack", "r1"), ("outcome", "ok")]
            ),
            Some(2.0)
        );
        assert_eq!(
            v(
                "rackline_ipamd_allocations_total",
                &[("outcome", "exhausted")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("rackline_ipamd_releases_total", &[("outcome", "none")]),
            Some(1.0)
        );
        assert_eq!(
            v("rackline_ipamd_reclaims_total", &[("reason", "gc")]),
            Some(2.0)
        );
        assert_eq!(
            v(
                "rackline_ipamd_allocate_duration_seconds_count",
                &[("result", "ok")]
            ),
            Some(2.0)
        );
        // Only the well-formed ADD report counts.
        assert_eq!(
            e.sum("rackline_plugin_command_duration_seconds_count", &[]),
            1.0
        );
        assert_eq!(
            v(
                "rackline_ipamd_etcd_request_duration_seconds_count",
                &[("op", "create_lease")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("rackline_ipamd_leases_held", &[("network", "prod")]),
            Some(3.0)
        );
        assert_eq!(
            v("rackline_ipamd_pods_out_of_spec", &[("network", "prod")]),
            Some(1.0)
        );
        assert_eq!(v("rackline_ipamd_mode", &[("mode", "offline")]), Some(1.0));
        assert_eq!(v("rackline_ipamd_mode", &[("mode", "online")]), Some(0.0));
        assert_eq!(v("rackline_ipamd_journal_entries", &[]), Some(5.0));
    }
}
