//! `network update`: apply a patch to a network in place.
//!
//! Read the record, its leases and blocks at one revision; apply the patch
//! (pure, `rackline_model::network_update`); refuse what would break running
//! pods; write with the leader's fence, compared on the record's mod
//! revision. A record changed in between is the operator's conflict
//! (`Changed`: nothing written, run again); a lease or block written in
//! between only makes us look again.
//!
//! Standby records inside new exclusions are never deleted here: the node
//! holding one counts on it (its reserve, the reserve it persisted for a
//! restart without etcd, its outage journal), so like a drain the update
//! leaves them to their ipamd, which gives back what the network now
//! excludes as soon as it sees the new definition. The update is refused
//! while such a node has no live ipamd, and waits a bounded time for the
//! records to go.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use rackline_model::applied::{excluded, out_of_spec, NodeClass};
use rackline_model::network_update::changes;
use rackline_model::NetworkSpec;
use rackline_model::{Lease, LeaseState, NetworkPatch, Refusal};
use rackline_store::{StoredLease, UpdateGuards, UpdateOutcome};
use tracing::{info, warn};

use super::drain::DEFAULT_DRAIN_WAIT;
use super::{AdminError, NetworkView, Networks, Result};

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
    /// Standby records inside new exclusions their nodes gave back.
    pub standby_returned: Vec<Ipv4Addr>,
    /// Those still held when the wait ended: their ipamds never hand them
    /// out and give them back on their own.
    pub standby_pending: Vec<Ipv4Addr>,
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

/// The refusal a change of a field in use earns: the parent interface or
/// VLAN while pods run on the network, the block size while blocks exist.
fn in_use_refusal(
    old: &NetworkSpec,
    new: &NetworkSpec,
    pods: usize,
    blocks: usize,
) -> Option<Refusal> {
    if new.master != old.master && pods > 0 {
        return Some(Refusal::InUse {
            field: "master",
            from: old.master.clone(),
            to: new.master.clone(),
            pods,
        });
    }
    if new.vlan != old.vlan && pods > 0 {
        let v = |v: Option<u16>| v.map_or_else(|| "untagged".into(), |v| v.to_string());
        return Some(Refusal::InUse {
            field: "vlan",
            from: v(old.vlan),
            to: v(new.vlan),
            pods,
        });
    }
    if new.block_size != old.block_size && blocks > 0 {
        return Some(Refusal::Blocks {
            from: old.block_size,
            to: new.block_size,
            blocks,
        });
    }
    None
}

/// The records inside the exclusions `new` adds to `old`: holders of
/// active or reserved addresses (described for the refusal), and the
/// (address, node) of the standby records their nodes must give back.
fn newly_excluded(
    leases: &[StoredLease],
    old: &NetworkSpec,
    new: &NetworkSpec,
) -> (Vec<String>, Vec<(Ipv4Addr, String)>) {
    // Addresses the new definition excludes and the old did not.
    let newly = |ip: Ipv4Addr| excluded(ip, new).is_some() && excluded(ip, old).is_none();
    let mut covered = Vec::new();
    // (address, node) of standby records the new exclusions cover.
    let mut returning: Vec<(Ipv4Addr, String)> = Vec::new();
    for sl in leases.iter().filter(|sl| newly(sl.lease.address)) {
        match sl.lease.state {
            LeaseState::Active | LeaseState::Reserved => covered.push(holder(&sl.lease)),
            // A node's outage reserve: not a pod; its node gives it
            // back and refills its reserve from what is allowed.
            LeaseState::Standby => returning.push((sl.lease.address, sl.lease.node.clone())),
            // A quarantine record keeps its address out anyway.
            LeaseState::Conflict => {}
        }
    }
    (covered, returning)
}

impl Networks<'_> {
    // Stays long: one read-refuse-write round per attempt, every refusal and
    // the report resting on the same read; the checks are helpers.
    pub async fn update_network(&self, u: NetworkUpdate) -> Result<UpdateReport> {
        // A dry run writes nothing: any replica answers it.
        let writer = if u.dry_run {
            None
        } else {
            Some(self.svc.writer()?)
        };
        let mut first_seen = u.expect_revision;
        for _ in 0..ATTEMPTS {
            let Some(st) = self.svc.store.admin_reads().network_state(&u.name).await? else {
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
            if let Some(r) = in_use_refusal(old, &new, pods, st.blocks) {
                return refuse(r);
            }
            let (covered, returning) = newly_excluded(&st.leases, old, &new);
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
            let report =
                |revision: i64, returned: Vec<Ipv4Addr>, pending: Vec<Ipv4Addr>| UpdateReport {
                    view: NetworkView::new(
                        new.clone(),
                        (st.leases.len() - returned.len()) as u64,
                        revision,
                    ),
                    changes: changed.clone(),
                    differing: differing.clone(),
                    standby_returned: returned,
                    standby_pending: pending,
                    dry_run: u.dry_run,
                };
            let Some(w) = &writer else {
                // A dry run (the only case without a writer).
                let pending = returning.iter().map(|(ip, _)| *ip).collect();
                return Ok(report(seen, Vec::new(), pending));
            };
            if changed.is_empty() {
                // Every value given is the current one: nothing to write.
                return Ok(report(seen, Vec::new(), Vec::new()));
            }
            if let Some(r) = self.standby_offline(&returning).await? {
                return refuse(r);
            }
            let guards = UpdateGuards {
                leases: new.reserved() != old.reserved(),
                blocks: new.block_size != old.block_size,
            };
            match w.update_network(&new, &st, guards).await? {
                UpdateOutcome::Written { revision } => {
                    info!(
                        network = %u.name,
                        revision,
                        changes = %changed.join("; "),
                        differing = differing.len(),
                        standby_to_return = returning.len(),
                        forced = u.force && !covered.is_empty(),
                        "network updated"
                    );
                    let (returned, pending) = self
                        .await_standby_returned(&u.name, &returning, DEFAULT_DRAIN_WAIT)
                        .await;
                    if !pending.is_empty() {
                        warn!(
                            network = %u.name,
                            pending = pending.len(),
                            "standby records inside the new exclusions not given back yet; their ipamds give them back on their own"
                        );
                    }
                    return Ok(report(revision, returned, pending));
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

    /// The refusal when a node holding standby records the update would
    /// have it give back has no live ipamd to do so.
    async fn standby_offline(&self, returning: &[(Ipv4Addr, String)]) -> Result<Option<Refusal>> {
        if !returning.is_empty() {
            let live = self.svc.store.admin_reads().live_nodes().await?;
            let dead: BTreeSet<&str> = returning
                .iter()
                .map(|(_, n)| n.as_str())
                .filter(|n| !live.contains_key(*n))
                .collect();
            if !dead.is_empty() {
                let held: Vec<String> = returning
                    .iter()
                    .filter(|(_, n)| dead.contains(n.as_str()))
                    .map(|(ip, n)| format!("{ip} (node {n})"))
                    .collect();
                let names: Vec<&str> = dead.into_iter().collect();
                return Ok(Some(Refusal::StandbyOffline {
                    addresses: held,
                    nodes: names.join(", "),
                }));
            }
        }
        Ok(None)
    }

    /// Waits (up to `wait`) until the ipamds gave back the standby records
    /// `returning` names: a record of that address and node still in
    /// standby is not back yet. Returns (given back, still held); a read
    /// that fails ends the wait with the rest counted as held.
    async fn await_standby_returned(
        &self,
        network: &str,
        returning: &[(Ipv4Addr, String)],
        wait: Duration,
    ) -> (Vec<Ipv4Addr>, Vec<Ipv4Addr>) {
        let started = tokio::time::Instant::now();
        let mut held: Vec<Ipv4Addr> = returning.iter().map(|(ip, _)| *ip).collect();
        loop {
            if held.is_empty() {
                break;
            }
            match self.svc.store.admin_reads().network_state(network).await {
                Ok(Some(st)) => held.retain(|ip| {
                    st.leases.iter().any(|sl| {
                        sl.lease.address == *ip
                            && sl.lease.state == LeaseState::Standby
                            && returning
                                .iter()
                                .any(|(a, n)| a == ip && *n == sl.lease.node)
                    })
                }),
                Ok(None) => held.clear(),
                Err(e) => {
                    warn!(%network, "reading the standby records being given back: {e}");
                    break;
                }
            }
            if held.is_empty() || started.elapsed() >= wait {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let returned = returning
            .iter()
            .map(|(ip, _)| *ip)
            .filter(|ip| !held.contains(ip))
            .collect();
        (returned, held)
    }
}
