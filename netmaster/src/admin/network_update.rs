//! `network update`: apply a patch to a network in place.
//!
//! Read the record, its leases and blocks at one revision; apply the patch
//! (pure, `rackline_model::network_update`); refuse what would break running
//! pods; write with the leader's fence, compared on the record's mod
//! revision. A record changed in between is the operator's conflict
//! (`Changed`: nothing written, run again); a lease or block written in
//! between only makes us look again.

use std::net::Ipv4Addr;

use rackline_model::applied::{excluded, out_of_spec, NodeClass};
use rackline_model::network_update::changes;
use rackline_model::{Lease, LeaseState, NetworkPatch, Refusal};
use rackline_store::{StoredLease, UpdateGuards, UpdateOutcome};
use tracing::info;

use super::{AdminError, AdminService, NetworkView, Result};

/// How many times lease churn may make us re-read before giving up.
const ATTEMPTS: u32 = 16;

#[derive(Debug, Clone, Default)]
pub struct NetworkUpdate {
    pub name: String,
    pub patch: NetworkPatch,
    /// Apply even when new exclusions cover leased addresses.
    pub force: bool,
    /// Only if the record is still at this revision.
    pub expect_revision: Option<i64>,
    /// Check and report; write nothing.
    pub dry_run: bool,
}

#[derive(Debug, Clone)]
pub struct UpdateReport {
    pub view: NetworkView,
    /// One line per changed setting.
    pub changes: Vec<String>,
    /// Running pods that differ from the new definition, and how.
    pub differing: Vec<(Lease, Vec<String>)>,
    /// Standby records inside new exclusions, deleted with the update.
    pub standby_returned: Vec<Ipv4Addr>,
    pub dry_run: bool,
}

/// "10.0.0.5 (pod default/web-0 on node n1)".
fn holder(l: &Lease) -> String {
    match l.state {
        LeaseState::Reserved => format!(
            "{} (reserved for sticky pod {})",
            l.address,
            l.pod.display()
        ),
        _ if l.pod.name.is_empty() => format!(
            "{} (container {} on node {})",
            l.address, l.container_id, l.node
        ),
        _ => format!("{} (pod {} on node {})", l.address, l.pod.display(), l.node),
    }
}

impl AdminService {
    pub async fn update_network(&self, u: NetworkUpdate) -> Result<UpdateReport> {
        // A dry run writes nothing: any replica answers it.
        let permit = if u.dry_run {
            None
        } else {
            Some(self.permit()?)
        };
        let fence = permit.as_ref().and_then(|p| p.fence.as_ref());
        let mut first_seen = u.expect_revision;
        for _ in 0..ATTEMPTS {
            let Some(st) = self.store.network_state(&u.name).await? else {
                return Err(AdminError::NotFound(u.name.clone()));
            };
            let seen = st.network.mod_revision;
            if let Some(first) = first_seen.filter(|f| *f != seen) {
                return Err(AdminError::Changed {
                    name: u.name.clone(),
                    seen: first,
                    now: seen,
                });
            }
            first_seen = Some(seen);
            let old = &st.network.spec;
            let new = u.patch.apply(old)?;
            let pods = st
                .leases
                .iter()
                .filter(|sl| sl.lease.state.is_active())
                .count();
            let refuse = |r: Refusal| Err(AdminError::Refused(r.to_string()));
            if new.master != old.master && pods > 0 {
                return refuse(Refusal::InUse {
                    field: "master",
                    from: old.master.clone(),
                    to: new.master.clone(),
                    pods,
                });
            }
            if new.vlan != old.vlan && pods > 0 {
                let v = |v: Option<u16>| v.map_or_else(|| "untagged".into(), |v| v.to_string());
                return refuse(Refusal::InUse {
                    field: "vlan",
                    from: v(old.vlan),
                    to: v(new.vlan),
                    pods,
                });
            }
            if new.block_size != old.block_size && st.blocks > 0 {
                return refuse(Refusal::Blocks {
                    from: old.block_size,
                    to: new.block_size,
                    blocks: st.blocks,
                });
            }
            // Addresses the new definition excludes and the old did not.
            let newly = |ip: Ipv4Addr| excluded(ip, &new).is_some() && excluded(ip, old).is_none();
            let mut covered = Vec::new();
            let mut drop: Vec<StoredLease> = Vec::new();
            for sl in st.leases.iter().filter(|sl| newly(sl.lease.address)) {
                match sl.lease.state {
                    LeaseState::Active | LeaseState::Reserved => covered.push(holder(&sl.lease)),
                    // A node's outage reserve: not a pod; it goes back, and
                    // the node refills its reserve from what is allowed.
                    LeaseState::Standby => drop.push(sl.clone()),
                    // A quarantine record keeps its address out anyway.
                    LeaseState::Conflict => {}
                }
            }
            if !covered.is_empty() && !u.force {
                return refuse(Refusal::Leased { addresses: covered });
            }
            let differing: Vec<(Lease, Vec<String>)> = st
                .leases
                .iter()
                .map(|sl| {
                    (
                        sl.lease.clone(),
                        out_of_spec(&sl.lease, &new, NodeClass::Any),
                    )
                })
                .filter(|(_, d)| !d.is_empty())
                .collect();
            let changed = changes(old, &new);
            let report = |revision: i64, dropped: usize| UpdateReport {
                view: NetworkView::new(new.clone(), (st.leases.len() - dropped) as u64, revision),
                changes: changed.clone(),
                differing: differing.clone(),
                standby_returned: if dropped > 0 {
                    drop.iter().map(|sl| sl.lease.address).collect()
                } else {
                    Vec::new()
                },
                dry_run: u.dry_run,
            };
            if u.dry_run {
                return Ok(report(seen, 0));
            }
            if changed.is_empty() {
                // Every value given is the current one: nothing to write.
                return Ok(report(seen, 0));
            }
            let guards = UpdateGuards {
                leases: new.reserved() != old.reserved(),
                blocks: new.block_size != old.block_size,
            };
            match self
                .store
                .update_network(&new, &st, guards, &drop, fence)
                .await?
            {
                UpdateOutcome::Written { revision } => {
                    info!(
                        network = %u.name,
                        revision,
                        changes = %changed.join("; "),
                        differing = differing.len(),
                        standby_returned = drop.len(),
                        forced = u.force && !covered.is_empty(),
                        "network updated"
                    );
                    return Ok(report(revision, drop.len()));
                }
                UpdateOutcome::NetworkChanged { now } => {
                    return Err(AdminError::Changed {
                        name: u.name.clone(),
                        seen,
                        now,
                    })
                }
                UpdateOutcome::UsageChanged => continue,
            }
        }
        Err(AdminError::Contended(ATTEMPTS))
    }
}
