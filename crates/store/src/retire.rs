//! Retiring what a node holds: `racklinectl node delete` and the netmaster
//! leader's reclaim of a node that has been dead past its grace period.
//!
//! Per record, by state: a standby record is deleted; a pod's non-sticky
//! lease is marked reclaimed (so the IP event stream says why) and deleted;
//! a sticky one is marked and becomes its identity's reservation, held as
//! the network's sticky policy says (a pod re-created elsewhere in the rack
//! gets its address back); reservations and quarantine records stay (they
//! expire on their own and belong to no running pod). Then the node's
//! blocks go, even with reservations or other nodes' borrowed leases
//! inside: those keys stay, so nobody can be given those addresses twice.
//!
//! Every write is its own transaction comparing the record's revision, the
//! writer's leadership fence and — unless forced — "the node's liveness
//! record is absent": an ipamd that comes back mid-way stops the retire at
//! its next write instead of losing records under its feet. A record that
//! changed meanwhile makes the whole pass run again from a fresh read.

use std::collections::HashMap;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rackline_model::event::{marked_lease_json, reclaim};
use rackline_model::sticky::DEFAULT_HOLD_SECS;
use rackline_model::{Block, DrainTarget, Lease, LeaseState, NetworkSpec, Node};
use tracing::{debug, info};

use crate::reads::{get, get_prefix, now_unix_ms, ATTEMPTS};
use crate::{
    decode_json, decode_network, Object, Result, Retirement, StickyWrite, Store, StoreError,
    StoredIdentity,
};

/// How long a retired node's sticky lease stays reserved for its pod: the
/// network's policy, the default for a pod that opted in, else 0 (freed).
fn hold_secs(view: &NodeView, l: &Lease, ident: &StoredIdentity) -> u64 {
    match view
        .networks
        .get(&l.network)
        .and_then(|n| n.sticky.as_ref())
    {
        Some(p) => p.hold_secs,
        None if ident.identity.opt_in => DEFAULT_HOLD_SECS,
        None => 0,
    }
}

/// Why a node's records are retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetireMode {
    /// `racklinectl node delete`: the node record goes too. Refused while
    /// the node is live or pods hold leases on it, unless `force`.
    Delete { force: bool },
    /// The node's liveness record has been absent past the grace period:
    /// its records are retired, its node record stays (it may come back).
    Reclaim,
}

impl RetireMode {
    fn reason(self) -> &'static str {
        match self {
            RetireMode::Delete { .. } => reclaim::NODE_DELETE,
            RetireMode::Reclaim => reclaim::DEAD_NODE,
        }
    }

    /// Writes compare "the node is not live".
    fn needs_dead(self) -> bool {
        !matches!(self, RetireMode::Delete { force: true })
    }
}

/// What a retire did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetireReport {
    /// Pod leases freed (non-sticky).
    pub leases_freed: u64,
    /// Sticky leases turned into reservations.
    pub reserved: u64,
    pub standby_freed: u64,
    pub blocks_returned: u64,
    pub node_deleted: bool,
}

impl RetireReport {
    pub fn is_empty(&self) -> bool {
        *self == RetireReport::default()
    }
}

/// What became of a pod's lease on the sticky path.
enum StickyRetire {
    /// Not a sticky lease (or no identity names it): delete it plainly.
    NotSticky,
    Reserved,
    /// Hold time 0: lease and identity deleted.
    Freed,
    /// A record changed meanwhile.
    Changed,
}

/// One pass's view of the node.
struct NodeView {
    node: Option<(Node, i64)>,
    live: bool,
    leases: Vec<(Lease, i64)>,
    blocks: Vec<(Block, i64)>,
    networks: HashMap<String, NetworkSpec>,
}

impl Store {
    async fn view_node(&self, node: &str) -> Result<NodeView> {
        let (r, _) = self
            .read_at_once(vec![
                get(self.keys.node(node)),
                get(self.keys.liveness(node)),
                get_prefix(self.keys.all_leases_prefix()),
                get_prefix(self.keys.all_blocks_prefix()),
                get_prefix(self.keys.networks_prefix()),
            ])
            .await?;
        let node_rec = match r[0].kvs().first() {
            Some(kv) => Some((decode_json::<Node>(kv)?, kv.mod_revision())),
            None => None,
        };
        let mut leases = Vec::new();
        for kv in r[2].kvs() {
            // An undecodable record is left alone (it names no node we
            // could check).
            if let Ok(l) = decode_json::<Lease>(kv) {
                if l.node == node {
                    leases.push((l, kv.mod_revision()));
                }
            }
        }
        let mut blocks = Vec::new();
        for kv in r[3].kvs() {
            let b: Block = decode_json(kv)?;
            if b.node == node {
                blocks.push((b, kv.mod_revision()));
            }
        }
        let networks = r[4]
            .kvs()
            .iter()
            .map(decode_network)
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .map(|n| (n.spec.name.clone(), n.spec))
            .collect();
        Ok(NodeView {
            node: node_rec,
            live: !r[1].kvs().is_empty(),
            leases,
            blocks,
            networks,
        })
    }
}

impl Retirement<'_> {
    /// Retires `node`'s records as `mode` says (see the module doc).
    pub async fn retire_node(&self, node: &str, mode: RetireMode) -> Result<RetireReport> {
        rackline_model::rack::validate_node_name(node)?;
        let mut report = RetireReport::default();
        for _ in 0..ATTEMPTS {
            let view = self.view_node(node).await?;
            // Reservations and quarantine records name their last node but
            // are not held by it: a node with only those is gone already.
            let holds = view.blocks.len()
                + view
                    .leases
                    .iter()
                    .filter(|(l, _)| matches!(l.state, LeaseState::Active | LeaseState::Standby))
                    .count();
            if view.node.is_none() && holds == 0 {
                return match mode {
                    RetireMode::Delete { .. } if !report.node_deleted => {
                        Err(StoreError::Missing(Object::Node(node.to_string())))
                    }
                    _ => Ok(report),
                };
            }
            if view.live && mode.needs_dead() {
                return match mode {
                    RetireMode::Reclaim => Ok(report),
                    RetireMode::Delete { .. } => Err(StoreError::Refused(format!(
                        "node {node:?} is live: its ipamd holds the node's liveness record; \
                         stop that ipamd first (after `racklinectl node drain {node}` and \
                         moving its pods), or delete with --force"
                    ))),
                };
            }
            let pods: Vec<&Lease> = view
                .leases
                .iter()
                .map(|(l, _)| l)
                .filter(|l| l.state == LeaseState::Active)
                .collect();
            if mode == (RetireMode::Delete { force: false }) && !pods.is_empty() {
                let census = crate::LeaseCensus::of(pods.iter().copied());
                return Err(StoreError::Refused(format!(
                    "node {node:?} still holds {}; or delete with --force (non-sticky leases \
                     are freed, sticky ones become reservations)",
                    census.blocking(false).unwrap_or_default()
                )));
            }
            if self.retire_pass(node, mode, &view, &mut report).await? {
                if let RetireMode::Delete { .. } = mode {
                    if !self.delete_node_record(node, mode, &view).await? {
                        continue;
                    }
                    report.node_deleted = view.node.is_some();
                }
                info!(%node, ?mode, ?report, "node retired");
                return Ok(report);
            }
            self.check_fence().await?;
            debug!(%node, "a record changed during the retire; looking again");
        }
        Err(StoreError::Contended(ATTEMPTS))
    }

    /// The compares every retire write carries.
    fn retire_guard(&self, node: &str, mode: RetireMode) -> Vec<Compare> {
        let mut when = Vec::new();
        if mode.needs_dead() {
            when.push(Compare::create_revision(
                self.keys.liveness(node),
                CompareOp::Equal,
                0,
            ));
        }
        self.guard(when)
    }

    /// One pass over the node's records; false when one changed meanwhile.
    async fn retire_pass(
        &self,
        node: &str,
        mode: RetireMode,
        view: &NodeView,
        report: &mut RetireReport,
    ) -> Result<bool> {
        for (l, rev) in &view.leases {
            let done = match l.state {
                LeaseState::Reserved | LeaseState::Conflict => continue,
                LeaseState::Standby => {
                    let ok = self.retire_delete(node, mode, l, *rev).await?;
                    report.standby_freed += u64::from(ok);
                    ok
                }
                LeaseState::Active => {
                    let Some(marked) = self.retire_mark(node, mode, l, *rev).await? else {
                        return Ok(false);
                    };
                    match self.retire_sticky(node, mode, view, l, marked).await? {
                        StickyRetire::Reserved => {
                            report.reserved += 1;
                            true
                        }
                        StickyRetire::Freed => {
                            report.leases_freed += 1;
                            true
                        }
                        StickyRetire::Changed => false,
                        StickyRetire::NotSticky => {
                            let ok = self.retire_delete(node, mode, l, marked).await?;
                            report.leases_freed += u64::from(ok);
                            ok
                        }
                    }
                }
            };
            if !done {
                return Ok(false);
            }
        }
        for (b, rev) in &view.blocks {
            let key = self.keys.block(&b.network, b.first);
            let mut when = self.retire_guard(node, mode);
            when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
            let txn = Txn::new().when(when).and_then([TxnOp::delete(key, None)]);
            if !self.commit(txn).await?.succeeded() {
                return Ok(false);
            }
            report.blocks_returned += 1;
        }
        Ok(true)
    }

    async fn retire_delete(
        &self,
        node: &str,
        mode: RetireMode,
        l: &Lease,
        rev: i64,
    ) -> Result<bool> {
        let key = self.keys.lease(&l.network, l.address);
        let mut when = self.retire_guard(node, mode);
        when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        let txn = Txn::new().when(when).and_then([TxnOp::delete(key, None)]);
        Ok(self.commit(txn).await?.succeeded())
    }

    /// Marks a pod's lease as reclaimed; its new revision.
    async fn retire_mark(
        &self,
        node: &str,
        mode: RetireMode,
        l: &Lease,
        rev: i64,
    ) -> Result<Option<i64>> {
        let key = self.keys.lease(&l.network, l.address);
        let mut when = self.retire_guard(node, mode);
        when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, rev));
        let value = marked_lease_json(l, mode.reason(), now_unix_ms());
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key, value, None)]);
        let resp = self.commit(txn).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// A sticky lease whose identity names it becomes a reservation (or
    /// goes with its identity when the hold is 0). Kept whole: the hold,
    /// the TTL granted for it and that TTL's revocation when the write lost
    /// a race belong to one revision-compared step of the retire pass.
    async fn retire_sticky(
        &self,
        node: &str,
        mode: RetireMode,
        view: &NodeView,
        l: &Lease,
        rev: i64,
    ) -> Result<StickyRetire> {
        if !l.sticky {
            return Ok(StickyRetire::NotSticky);
        }
        let Some(ident) = self
            .leases()
            .get_identity(&l.network, &l.pod.namespace, &l.pod.name)
            .await?
            .filter(|i| i.identity.address == l.address)
        else {
            return Ok(StickyRetire::NotSticky);
        };
        let hold = if ident.identity.pinned {
            None
        } else {
            let secs = hold_secs(view, l, &ident);
            if secs == 0 {
                return self.free_sticky(node, mode, l, rev, &ident).await;
            }
            Some(secs)
        };
        let now = now_unix_ms();
        let reserved = Lease {
            new_identity: false,
            conflict: None,
            container_id: String::new(),
            ifname: String::new(),
            state: LeaseState::Reserved,
            expires_unix_ms: hold.map(|s| now + (s as i64) * 1000),
            created_unix_ms: now,
            ..l.clone()
        };
        let ttl = match hold {
            Some(s) => Some(self.leases().grant_ttl(s).await?),
            None => None,
        };
        // The retire guard already carries the fence: the store's own
        // write_sticky, not the handle's (which would add it twice).
        let written = self
            .store()
            .leases()
            .write_sticky(
                &reserved,
                rev,
                &ident.identity,
                ident.mod_revision,
                ttl,
                self.retire_guard(node, mode),
            )
            .await?;
        match written {
            StickyWrite::Done { .. } => {
                info!(network = %l.network, ip = %l.address, pod = %l.pod.display(), %node, hold_secs = ?hold, "sticky address of a retired node reserved for its pod");
                Ok(StickyRetire::Reserved)
            }
            StickyWrite::Changed => {
                if let Some(id) = ttl {
                    let _ = self.etcd_leases().revoke(id).await;
                }
                // A record changed: the pass runs again.
                Ok(StickyRetire::Changed)
            }
        }
    }

    /// A sticky lease without a hold goes with its identity, both
    /// revision-compared under the retire guard.
    async fn free_sticky(
        &self,
        node: &str,
        mode: RetireMode,
        l: &Lease,
        rev: i64,
        ident: &StoredIdentity,
    ) -> Result<StickyRetire> {
        let mut when = self.retire_guard(node, mode);
        let lkey = self.keys.lease(&l.network, l.address);
        let ikey = self
            .keys
            .identity(&l.network, &l.pod.namespace, &l.pod.name);
        when.push(Compare::mod_revision(lkey.clone(), CompareOp::Equal, rev));
        when.push(Compare::mod_revision(
            ikey.clone(),
            CompareOp::Equal,
            ident.mod_revision,
        ));
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::delete(lkey, None), TxnOp::delete(ikey, None)]);
        Ok(if self.commit(txn).await?.succeeded() {
            StickyRetire::Freed
        } else {
            StickyRetire::Changed
        })
    }

    /// Removes the node record and its drain marker, if nothing changed
    /// since `view`.
    async fn delete_node_record(
        &self,
        node: &str,
        mode: RetireMode,
        view: &NodeView,
    ) -> Result<bool> {
        let Some((_, rev)) = &view.node else {
            return Ok(true);
        };
        let key = self.keys.node(node);
        let mut when = self.retire_guard(node, mode);
        when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, *rev));
        let txn = Txn::new().when(when).and_then([
            TxnOp::delete(key, None),
            TxnOp::delete(self.keys.drain(&DrainTarget::Node(node.to_string())), None),
        ]);
        Ok(self.commit(txn).await?.succeeded())
    }
}
