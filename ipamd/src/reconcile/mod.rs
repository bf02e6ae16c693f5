//! The leak reconciler: reclaims the leases and node veths of pods that are
//! gone when nothing else will. containerd sends no CNI GC, so a DEL that
//! was lost (a crash, a node reboot mid-teardown) leaks its lease forever on
//! such a node; and CNI GC frees leases but leaves links behind.
//!
//! Every `--reconcile-interval-secs` this node's active leases and its node
//! veths carrying a Rackline ownership mark are compared with the live pod
//! sandboxes (`source`: the Kubernetes API in a cluster, else the CRI
//! runtime). What `decide` finds gone for longer than the grace, in two
//! consecutive passes, and (for a lease) older than the grace is reclaimed:
//! the lease through the engine, as CNI GC releases it (sticky leases keep
//! their pod's address as a DEL keeps it; the record is marked
//! `reclaimedBy: reconcile`, so the IP event stream reports a reclaim), then
//! the node veth if it still carries the attachment's mark. A pass that
//! cannot list the sandboxes, or runs while etcd is unreachable, reclaims
//! nothing.

pub mod decide;
pub mod source;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rackline_netlink::owner::{is_host_veth_name, is_marked_node_veth, parse_mark};
use rackline_netlink::{LinkInfo, Netlink};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::engine::Engine;
use crate::metrics::IpamMetrics;
use crate::store::LeaseStore;
use decide::{LeaseView, LinkView, Plan, Tracker};
pub use source::{Source, SourceError};

/// The reconciler's settings (see `config::Args`).
#[derive(Debug, Clone)]
pub struct Settings {
    /// Time between passes; zero turns the reconciler off.
    pub interval: Duration,
    pub grace: Duration,
}

/// This node's active leases as the engine's cache has them.
pub fn leases_of<S: LeaseStore>(engine: &Engine<S>) -> Vec<LeaseView> {
    let mut out = Vec::new();
    for net in engine.mirror().networks() {
        for sl in net.leases().of_node(engine.node()) {
            let l = sl.lease;
            if !l.state.is_active() || l.container_id.is_empty() {
                continue;
            }
            out.push(LeaseView {
                network: net.spec.name.clone(),
                address: l.address,
                container_id: l.container_id,
                ifname: l.ifname,
                pod: l.pod,
                created_unix_ms: l.created_unix_ms,
            });
        }
    }
    out
}

/// The node veths among `links` that carry an attachment's mark (and the
/// name, kind and group that go with it). Unmarked veths — pods of versions
/// before marks — are never the reconciler's to delete.
pub fn marked_node_veths(links: &[LinkInfo]) -> Vec<LinkView> {
    links
        .iter()
        .filter(|l| is_host_veth_name(&l.name))
        .filter_map(|l| {
            let (id, ifname) = parse_mark(l.alias.as_deref()?)?;
            is_marked_node_veth(l, id, ifname).then(|| LinkView {
                name: l.name.clone(),
                container_id: id.to_string(),
                ifname: ifname.to_string(),
            })
        })
        .collect()
}

async fn node_links() -> Result<Vec<LinkInfo>, String> {
    tokio::task::spawn_blocking(|| Netlink::new().and_then(|mut nl| nl.links()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Deletes the node veth `link` if it still is that attachment's (re-read:
/// the name may have been reused since the pass listed it). Removing the
/// node end removes its pod end too.
async fn delete_node_veth(link: LinkView) -> Result<bool, String> {
    tokio::task::spawn_blocking(move || {
        let mut nl = Netlink::new().map_err(|e| e.to_string())?;
        match nl.link_by_name(&link.name).map_err(|e| e.to_string())? {
            Some(l) if is_marked_node_veth(&l, &link.container_id, &link.ifname) => {
                match nl.delete_link(l.index) {
                    Ok(()) => Ok(true),
                    Err(e) if e.is_not_found() => Ok(false),
                    Err(e) => Err(e.to_string()),
                }
            }
            _ => Ok(false),
        }
    })
    .await
    .map_err(|e| e.to_string())?
}

pub struct Reconciler<S: LeaseStore> {
    engine: Arc<Engine<S>>,
    source: Source,
    settings: Settings,
    metrics: Option<Arc<IpamMetrics>>,
    tracker: Tracker,
    started: Instant,
    /// The last pass could not list: log the next failure at debug only.
    failing: bool,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// False: the sandboxes or etcd could not be read; nothing reclaimed.
    pub listed: bool,
    pub leases: Vec<rackline_model::Lease>,
    pub links: Vec<String>,
}

impl<S: LeaseStore> Reconciler<S> {
    pub fn new(engine: Arc<Engine<S>>, source: Source, settings: Settings) -> Self {
        let tracker = Tracker::new(source.kind(), settings.grace);
        Self {
            engine,
            source,
            settings,
            metrics: None,
            tracker,
            started: Instant::now(),
            failing: false,
        }
    }

    pub fn with_metrics(mut self, metrics: Arc<IpamMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn unavailable(&mut self, why: &str) -> Outcome {
        self.tracker.unavailable();
        if let Some(m) = &self.metrics {
            m.reconcile_pass(self.source.kind().as_str(), "unavailable");
        }
        if !self.failing {
            warn!(source = %self.source.describe(), "leak reconciliation skipped, nothing reclaimed: {why}");
        } else {
            tracing::debug!("leak reconciliation skipped again: {why}");
        }
        self.failing = true;
        Outcome::default()
    }

    /// One pass: list, decide, reclaim.
    pub async fn pass(&mut self) -> Outcome {
        // A cache loaded from the persisted reserve lists only part of the
        // node's leases: a link whose lease it lacks would look leaked.
        if !self.engine.mirror().synced()
            || !self.engine.outage().etcd_ok()
            || self.engine.outage().from_persisted()
        {
            return self.unavailable("etcd is unreachable or its state is not loaded from it yet");
        }
        // Sandboxes first, leases second: an ADD that starts in between
        // holds a lease younger than the grace, which is never reclaimed.
        let sandboxes = match self.source.list().await {
            Ok(s) => s,
            Err(e) => return self.unavailable(&e.to_string()),
        };
        let links = match node_links().await {
            Ok(l) => marked_node_veths(&l),
            Err(e) => return self.unavailable(&format!("listing the node's links: {e}")),
        };
        let leases = leases_of(&self.engine);
        if self.failing {
            info!(source = %self.source.describe(), "leak reconciliation resumed");
            self.failing = false;
        }
        if let Some(m) = &self.metrics {
            m.reconcile_pass(self.source.kind().as_str(), "ok");
        }
        let wall = wall_ms();
        let plan = self
            .tracker
            .pass(&sandboxes, &leases, &links, self.started.elapsed(), wall);
        self.execute(plan, wall).await
    }

    async fn execute(&self, plan: Plan, wall: i64) -> Outcome {
        let mut out = Outcome {
            listed: true,
            ..Default::default()
        };
        let cutoff = wall.saturating_sub(self.settings.grace.as_millis() as i64);
        let mut failed: Vec<(String, String)> = Vec::new();
        for l in &plan.leases {
            match self
                .engine
                .allocator()
                .reclaim(&l.network, &l.container_id, &l.ifname, cutoff)
                .await
            {
                Ok(freed) => {
                    for lease in freed {
                        info!(
                            network = %lease.network,
                            ip = %lease.address,
                            container = %lease.container_id,
                            ifname = %lease.ifname,
                            pod = %lease.pod.display(),
                            sticky = lease.sticky,
                            source = self.source.kind().as_str(),
                            "reclaimed the lease of a pod that is gone"
                        );
                        out.leases.push(lease);
                    }
                }
                Err(e) => {
                    warn!(network = %l.network, ip = %l.address, container = %l.container_id, "reclaiming a leaked lease failed (next pass retries): {e}");
                    failed.push((l.container_id.clone(), l.ifname.clone()));
                }
            }
        }
        for k in plan.links {
            // The lease goes first: its link stays while the lease does, so
            // a retry finds both again.
            if failed.contains(&(k.container_id.clone(), k.ifname.clone())) {
                continue;
            }
            match delete_node_veth(k.clone()).await {
                Ok(true) => {
                    info!(link = %k.name, container = %k.container_id, ifname = %k.ifname, "deleted the node veth of a pod that is gone");
                    if let Some(m) = &self.metrics {
                        m.reconcile_link_deleted();
                    }
                    out.links.push(k.name);
                }
                Ok(false) => {}
                Err(e) => warn!(link = %k.name, "deleting a leftover node veth failed: {e}"),
            }
        }
        out
    }

    /// Runs passes every interval until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        info!(
            source = %self.source.describe(),
            interval = ?self.settings.interval,
            grace = ?self.settings.grace,
            "leak reconciler started"
        );
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.settings.interval) => {}
                _ = shutdown.changed() => return,
            }
            self.pass().await;
        }
    }
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}
