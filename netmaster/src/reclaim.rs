//! Dead-node reclaim: the leader retires what a node holds once its ipamd's
//! liveness record has been absent for `--dead-node-grace` — non-sticky
//! pod leases freed, sticky ones turned into reservations (so the pod gets
//! its address back wherever the sticky policy lets it restart), standby
//! records freed, blocks returned; the node record stays (the node may
//! come back, and `node list` shows it not live).
//!
//! The clock is this leader's: a node is "absent since" the first look of
//! the current term that found it holding records without a liveness
//! record, so a new leader starts every clock again (a reclaim can come
//! late, never early). Every write is fenced by the leadership and compares
//! "the liveness record is absent" (`rackline_store::RetireMode::Reclaim`),
//! so an ipamd that comes back before the end stops the reclaim. Each
//! reclaimed lease carries `reclaimedBy: dead-node`, which the IP event
//! stream reports; one `audit` log line per reclaimed node.
//!
//! What the grace trades: an ipamd cut off from etcd keeps serving its
//! pods (and its standby reserve) offline; once reclaimed, those pods'
//! addresses are free for others. The grace must be longer than any
//! partition the cluster should ride out.

use std::collections::HashMap;
use std::time::Duration;

use rackline_store::{RetireMode, Store};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::admin::WriteFence;
use crate::leader::ElectionStatus;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReclaimConfig {
    /// Zero: never reclaim.
    pub grace: Duration,
    /// How often the leader looks.
    pub every: Duration,
}

impl ReclaimConfig {
    /// Looks four times per grace period, between once a second and twice
    /// a minute.
    pub fn for_grace(grace: Duration) -> Self {
        Self {
            grace,
            every: (grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(30)),
        }
    }
}

/// Runs until `stop`; acts only while this replica leads. One loop:
/// the absence clock of every node belongs to one leadership term and is
/// reset whenever the term changes, so the term check, the clock and the
/// reclaim share their state in one place.
pub async fn run(
    store: Store,
    status: ElectionStatus,
    cfg: ReclaimConfig,
    mut stop: watch::Receiver<bool>,
) {
    if cfg.grace.is_zero() {
        info!("dead-node reclaim is off (--dead-node-grace 0)");
        return;
    }
    let mut absent_since: HashMap<String, Instant> = HashMap::new();
    let mut term = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(cfg.every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let Ok(permit) = status.permit() else {
            absent_since.clear();
            term = None;
            continue;
        };
        let this_term = permit.fence().map(|f| f.create_revision);
        if term != Some(this_term) {
            // A new term: this leader has not watched anybody die yet.
            absent_since.clear();
            term = Some(this_term);
        }
        let (holding, live) = match store.admin_reads().node_holdings().await {
            Ok(x) => x,
            Err(e) => {
                debug!("dead-node reclaim: cannot read the nodes: {e}");
                continue;
            }
        };
        let now = Instant::now();
        absent_since.retain(|n, _| holding.contains(n) && !live.contains(n));
        for node in holding.iter().filter(|n| !live.contains(*n)) {
            let since = *absent_since.entry(node.clone()).or_insert_with(|| {
                info!(%node, grace = ?cfg.grace, "node holds addresses but its ipamd is not live; reclaiming after the grace period");
                now
            });
            if now.duration_since(since) < cfg.grace {
                continue;
            }
            let Ok(w) = status.writer(&store) else { break };
            match w.retirement().retire_node(node, RetireMode::Reclaim).await {
                Ok(r) if r.is_empty() => {}
                Ok(r) => {
                    warn!(
                        target: "audit",
                        identity = "netmaster-leader",
                        method = "ReclaimDeadNode",
                        node = %node,
                        dead_for = ?now.duration_since(since),
                        leases_freed = r.leases_freed,
                        reserved = r.reserved,
                        standby_freed = r.standby_freed,
                        blocks_returned = r.blocks_returned,
                        outcome = "ok",
                        "dead node reclaimed"
                    );
                    absent_since.remove(node);
                }
                Err(e) => warn!(%node, "dead-node reclaim failed (retrying): {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_often_enough_for_its_grace() {
        let c = ReclaimConfig::for_grace(Duration::from_secs(600));
        assert_eq!(c.every, Duration::from_secs(30));
        let c = ReclaimConfig::for_grace(Duration::from_secs(2));
        assert_eq!(c.every, Duration::from_secs(1));
        let c = ReclaimConfig::for_grace(Duration::from_secs(20));
        assert_eq!(c.every, Duration::from_secs(5));
    }
}
