//! Deletes and unbinds that first let the ipamds give their reserve back,
//! and node drains.
//!
//! netmaster never deletes a standby record or a block an ipamd could be
//! allocating from: it puts up a drain marker, each ipamd concerned returns
//! its own standby records (revision-compared deletes) and empty blocks
//! (`ReleaseBlock`, which refuses a block with any lease key), and the
//! delete or unbind runs its usual guarded transaction once nothing but
//! what it removes itself is left. A marker outlives a refusal only when
//! the refusal cannot remove it (etcd unreachable); the next attempt
//! carries on from it.

use std::collections::BTreeSet;
use std::time::Duration;

use rackline_model::DrainTarget;
use rackline_store::{LeaderStore, NodeInfo, StoreError};
use tokio::time::Instant;
use tracing::{info, warn};

use super::{AdminError, AdminService, Result};

/// How long a delete or unbind waits for the reserve by default.
pub const DEFAULT_DRAIN_WAIT: Duration = Duration::from_secs(15);
/// At most (a client's request deadline is 30 s).
pub const MAX_DRAIN_WAIT: Duration = Duration::from_secs(25);
/// How often the census is re-read while waiting (ipamds act within about
/// half a second of seeing the marker).
const POLL: Duration = Duration::from_millis(250);

/// The wait a request asked for (0 = the default), bounded.
pub fn drain_wait(seconds: u32) -> Duration {
    if seconds == 0 {
        DEFAULT_DRAIN_WAIT
    } else {
        Duration::from_secs(u64::from(seconds)).min(MAX_DRAIN_WAIT)
    }
}

/// Where a drain-then-act loop stands after one look.
enum Step<T> {
    /// Done (or refused for a reason no drain fixes).
    Finished(Result<T>),
    /// Reserve records or blocks of these nodes are still out.
    Waiting {
        holders: BTreeSet<String>,
        left: String,
    },
}

impl AdminService {
    /// Those of `nodes` whose ipamd holds no liveness record.
    async fn not_live<'n>(&self, nodes: &'n BTreeSet<String>) -> Result<Vec<&'n String>> {
        let live = self.store.admin_reads().live_nodes().await?;
        Ok(nodes.iter().filter(|n| !live.contains_key(*n)).collect())
    }

    /// Runs `look` until it finishes, with `target`'s drain marker up while
    /// it waits for the reserve of some nodes; gives up after `wait`, or at
    /// once when none of those nodes' ipamds is live (nobody would return
    /// anything).
    async fn drain_then<T, F, Fut>(
        &self,
        w: &LeaderStore,
        target: DrainTarget,
        reason: &str,
        wait: Duration,
        force_hint: &str,
        mut look: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Step<T>>>,
    {
        let started = Instant::now();
        let mut marked = false;
        let outcome = loop {
            let (holders, left) = match look().await {
                Ok(Step::Finished(r)) => break r,
                Err(e) => break Err(e),
                Ok(Step::Waiting { holders, left }) => (holders, left),
            };
            if !marked {
                if let Err(e) = w.put_drain(&target, reason).await {
                    break Err(e.into());
                }
                info!(
                    "{} is being drained ({reason}): waiting for {left}",
                    target.describe()
                );
                marked = true;
            }
            let dead = match self.not_live(&holders).await {
                Ok(d) => d,
                Err(e) => break Err(e),
            };
            if let Some(e) = stuck(
                &target,
                &left,
                &dead,
                holders.len(),
                started.elapsed(),
                wait,
                force_hint,
            ) {
                break Err(e);
            }
            tokio::time::sleep(POLL).await;
        };
        if marked && outcome.is_err() {
            // The ipamds keep their reserve again; a retry puts it back up.
            if let Err(e) = w.delete_drain(&target).await {
                warn!(
                    "cannot remove the drain marker of {}: {e}",
                    target.describe()
                );
            }
        }
        outcome
    }
}

impl super::Networks<'_> {
    /// Deletes a network. Without `force`, first lets every ipamd give its
    /// standby records back (up to `wait`), then deletes only if no lease
    /// record but quarantines is left. Returns how many records went with it.
    pub async fn delete_network(&self, name: &str, force: bool, wait: Duration) -> Result<u64> {
        let w = self.svc.writer()?;
        let deleted = if force {
            w.delete_network(name, true).await?
        } else {
            let target = DrainTarget::Network(name.to_string());
            AdminService::drain_then(
                self.svc,
                &w,
                target,
                "delete",
                wait,
                "; or delete with --force",
                || {
                    let w = &w;
                    async move {
                        let (census, _) = self.svc.store.admin_reads().network_census(name).await?;
                        if census.blocking(false).is_none() && census.standby_total() > 0 {
                            let left = census.standby_phrase().unwrap_or_default();
                            return Ok(Step::Waiting {
                                holders: census.standby.keys().cloned().collect(),
                                left,
                            });
                        }
                        match w.delete_network(name, false).await {
                            // A record appeared since the census: look again.
                            Err(StoreError::InUse { .. })
                                if census.blocking(false).is_none()
                                    && census.standby_total() == 0 =>
                            {
                                Ok(Step::Waiting {
                                    holders: BTreeSet::new(),
                                    left: "lease records written meanwhile".into(),
                                })
                            }
                            r => Ok(Step::Finished(r.map_err(AdminError::from))),
                        }
                    }
                },
            )
            .await?
        };
        info!(network = %name, force, leases_deleted = deleted, "network deleted");
        Ok(deleted)
    }
}

impl super::Racks<'_> {
    /// Removes a rack's binding to a network, first letting the rack's
    /// ipamds give back their standby records and blocks on it (up to
    /// `wait`).
    pub async fn unbind_rack(&self, rack: &str, network: &str, wait: Duration) -> Result<()> {
        let w = self.svc.writer()?;
        let target = DrainTarget::RackNet {
            network: network.to_string(),
            rack: rack.to_string(),
        };
        AdminService::drain_then(self.svc, &w, target, "unbind", wait, "", || {
            let w = &w;
            async move {
                let c = self
                    .svc
                    .store
                    .admin_reads()
                    .binding_census(rack, network)
                    .await?;
                if c.drainable() && !c.is_empty() {
                    let mut holders: BTreeSet<String> = c.leases.standby.keys().cloned().collect();
                    holders.extend(c.blocks.keys().cloned());
                    let parts: Vec<String> = [c.leases.standby_phrase(), c.blocks_phrase()]
                        .into_iter()
                        .flatten()
                        .collect();
                    return Ok(Step::Waiting {
                        holders,
                        left: parts.join(" and "),
                    });
                }
                match w.unbind_rack(rack, network).await {
                    Err(StoreError::Refused(_)) if c.is_empty() => Ok(Step::Waiting {
                        holders: BTreeSet::new(),
                        left: "records written meanwhile".into(),
                    }),
                    r => Ok(Step::Finished(r.map_err(AdminError::from))),
                }
            }
        })
        .await?;
        info!(%rack, %network, "rack unbound");
        Ok(())
    }
}

impl super::Nodes<'_> {
    /// Marks `node` drained (or lifts the mark): it gets no new block, and
    /// its ipamd gives back its standby records and empty blocks.
    pub async fn drain_node(&self, node: &str, undo: bool) -> Result<NodeInfo> {
        let w = self.svc.writer()?;
        let target = DrainTarget::Node(node.to_string());
        if undo {
            let lifted = w.delete_drain(&target).await?;
            info!(%node, lifted, "node drain lifted");
        } else {
            let fresh = w.put_drain(&target, "drain").await?;
            info!(%node, fresh, "node drained");
        }
        self.get_node(node).await
    }
}

/// The refusal of a drain that cannot finish: every holder's ipamd is dead
/// (nobody would give anything back), or `wait` has passed. Names the dead
/// nodes and how to go on.
fn stuck(
    target: &DrainTarget,
    left: &str,
    dead: &[&String],
    holders: usize,
    elapsed: Duration,
    wait: Duration,
    force_hint: &str,
) -> Option<AdminError> {
    let hint = if dead.is_empty() {
        String::new()
    } else {
        let names: Vec<&str> = dead.iter().map(|s| s.as_str()).collect();
        format!(
            ": no ipamd is live on {} (start it, or remove a node gone for good \
             with `racklinectl node delete NODE`)",
            names.join(", ")
        )
    };
    let all_dead = holders > 0 && dead.len() == holders;
    if all_dead || elapsed >= wait {
        let within = if all_dead {
            String::new()
        } else {
            format!(" within {wait:?}")
        };
        return Some(AdminError::Refused(format!(
            "{} still has {left}, not given back{within}{hint}{force_hint}",
            target.describe(),
        )));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_are_bounded() {
        assert_eq!(drain_wait(0), DEFAULT_DRAIN_WAIT);
        assert_eq!(drain_wait(3), Duration::from_secs(3));
        assert_eq!(drain_wait(3600), MAX_DRAIN_WAIT);
    }
}
