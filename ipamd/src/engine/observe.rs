//! What the engine tells the outside about itself: readiness (for
//! `/readyz` and CNI STATUS alike), the state the metrics read at scrape
//! time, and the [`Observer`] it reports reclaims and conflicts to
//! (counters and Kubernetes Events).

use std::sync::Arc;

use rackline_model::{Lease, LeaseState};
use rackline_store::StoredLease;
use rackline_telemetry::Readiness;

use super::{Allocator, Engine, IpamError, Mirror, Outage, Parts};
use crate::metrics::{IpamMetrics, NodeView};
use crate::netstate::NetState;
use crate::netstate::NodeGauges;
use crate::store::LeaseStore;

/// Where the engine reports reclaims and address conflicts.
pub struct Observer {
    pub metrics: Arc<IpamMetrics>,
    /// Kubernetes Events on the pod and the Node (in a cluster only).
    pub alarms: Option<Arc<crate::alarms::Alarms>>,
}

/// An address conflict as reported to the observer.
#[derive(Debug, Clone)]
pub struct ConflictReport {
    /// The pod's lease the probe found in use (before any change).
    pub lease: Lease,
    /// The MAC that answered for the address.
    pub mac: String,
    /// The address left the pool (false: a sticky pod kept it).
    pub quarantined: bool,
    pub quarantine_secs: u64,
}

impl<S> Parts<S> {
    /// Counts `n` leases of `network` reclaimed for `reason` (GC counts its
    /// own; the leak reconciler calls this with `reclaim::RECONCILE`).
    pub(super) fn observed_reclaims(&self, network: &str, reason: &str, n: usize) {
        if let Some(o) = &self.observer {
            o.metrics.reclaimed(network, reason, n as u64);
        }
    }

    pub(super) fn observed_conflict(&self, report: ConflictReport) {
        let Some(o) = &self.observer else { return };
        let outcome = if report.quarantined {
            "quarantined"
        } else {
            "sticky"
        };
        o.metrics.conflict(&report.lease.network, outcome);
        if let Some(a) = &o.alarms {
            a.conflict(&report);
        }
    }
}

impl<S: LeaseStore> Allocator<'_, S> {
    /// Marks the active lease at `ip` (last seen at `rev`) as reclaimed for
    /// `reason` before it is freed; returns the revision to free it at. A
    /// record that changed meanwhile is left alone (the free that follows
    /// fails its compare and re-reads, as always).
    pub(super) async fn mark_reclaimed(
        &self,
        net: &NetState,
        ip: std::net::Ipv4Addr,
        rev: i64,
        reason: &str,
    ) -> Result<i64, IpamError> {
        let Some(sl) = net
            .leases()
            .at(ip)
            .filter(|s| s.mod_revision == rev && s.lease.state.is_active())
        else {
            return Ok(rev);
        };
        match self.store.mark_reclaimed(&sl.lease, rev, reason).await {
            Ok(Some(new)) => {
                net.observe(
                    StoredLease {
                        lease: sl.lease,
                        mod_revision: new,
                    },
                    &self.node,
                );
                Ok(new)
            }
            Ok(None) => Ok(rev),
            Err(e) => {
                self.outage.note_store_error(&e);
                Err(e.into())
            }
        }
    }
}

/// Whether this node can serve ADDs now, the socket aside: its state is
/// loaded from etcd and etcd answers, or etcd is away but a standby
/// reserve remains. CNI STATUS refuses whenever this does.
pub(super) fn readiness(mirror: &Mirror, outage: &Outage) -> Readiness {
    if !mirror.synced() {
        return Readiness::NotReady("ipamd has not loaded its state from etcd yet".into());
    }
    // Suspect counts as ready: one failed call says little, and the
    // prober settles it within seconds.
    if outage.mode() != super::Mode::Offline {
        return Readiness::Ready;
    }
    let reserve: usize = if outage.journaling() {
        mirror.networks().iter().map(|n| n.standby().count()).sum()
    } else {
        0
    };
    if reserve > 0 {
        Readiness::Ready
    } else {
        Readiness::NotReady(format!(
            "{}; no standby address is left",
            outage.mode_detail()
        ))
    }
}

impl<S: LeaseStore> Engine<S> {
    /// See [`readiness`].
    pub fn readiness(&self) -> Readiness {
        readiness(self.mirror(), self.outage())
    }
}

impl<S: LeaseStore> NodeView for Engine<S> {
    fn gauges(&self) -> Vec<(String, NodeGauges)> {
        self.mirror().gauges()
    }

    fn mode(&self) -> &'static str {
        // One of crate::metrics::MODES.
        self.outage().mode().as_str()
    }

    fn journal_depth(&self) -> u64 {
        self.outage().journal_depth()
    }

    fn ready(&self) -> bool {
        self.readiness() == Readiness::Ready
    }
}

/// A sticky pod's lease recording the conflict its probe found (the
/// address is kept: the pod fails to start instead). None when the same
/// MAC is recorded already (a retried ADD is no new conflict).
pub(super) fn with_conflict(
    lease: &Lease,
    mac: &str,
    container_id: &str,
    ifname: &str,
    now_ms: i64,
) -> Option<Lease> {
    if lease.state != LeaseState::Active || lease.conflict.as_ref().is_some_and(|c| c.mac == mac) {
        return None;
    }
    let mut l = lease.clone();
    l.conflict = Some(Box::new(rackline_model::ConflictInfo {
        mac: mac.to_string(),
        container_id: container_id.to_string(),
        ifname: ifname.to_string(),
        detected_unix_ms: now_ms,
        quarantine_secs: 0,
    }));
    Some(l)
}
