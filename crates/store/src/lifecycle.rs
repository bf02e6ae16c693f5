//! Drain markers (`drains/…`) and node liveness records (`liveness/<node>`).
//!
//! A drain marker is written by netmaster (fenced) and read by the ipamds
//! through their watch; it decides nothing by itself. The deletes that
//! follow a drain keep their own guarded transactions, so a marker that is
//! missed, late or left behind costs a refusal, never a wrong delete.
//!
//! A liveness record is created only if absent and lives on its ipamd's
//! etcd lease: it is the node's exclusive lock as well as the sign that the
//! node's ipamd runs and reaches etcd.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use rackline_model::{Block, Drain, DrainTarget, LeaseState, Liveness};

use crate::facets::{AdminReads, NodeLiveness};
use crate::reads::{get, get_prefix, now_unix_ms};
use crate::{decode_json, LeaderStore, Object, Result, Store, StoreError};

/// Who holds a node's liveness record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessHolder {
    pub record: Liveness,
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The etcd lease the record is attached to.
    pub lease: i64,
}

/// The outcome of one attempt at a node's lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLock {
    /// Ours now; the create revision identifies this tenure.
    Acquired { create_revision: i64 },
    /// Somebody's record is there (None: it vanished meanwhile, try again).
    Held(Option<LivenessHolder>),
}

impl Store {
    /// The key that must exist for `target`'s marker to make sense.
    fn drain_subject(&self, target: &DrainTarget) -> (String, StoreError) {
        match target {
            DrainTarget::Network(n) => (self.keys.network(n), StoreError::NotFound(n.clone())),
            DrainTarget::RackNet { network, rack } => (
                self.keys.racknet(network, rack),
                StoreError::Missing(Object::Binding {
                    rack: rack.clone(),
                    network: network.clone(),
                }),
            ),
            DrainTarget::Node(n) => (
                self.keys.node(n),
                StoreError::Missing(Object::Node(n.clone())),
            ),
        }
    }
}

impl NodeLiveness<'_> {
    /// One attempt at `node`'s lock: creates its liveness record on etcd
    /// lease `lease` unless a record exists, whose holder is then returned.
    pub async fn try_lock_node(
        &self,
        node: &str,
        record: &Liveness,
        lease: i64,
    ) -> Result<NodeLock> {
        let key = self.keys.liveness(node);
        let value = serde_json::to_vec(record).expect("Liveness serialises");
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                value,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([get(key)]);
        let resp = self.commit(txn).await?;
        if resp.succeeded() {
            let create_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(NodeLock::Acquired { create_revision });
        }
        let holder = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map(holder_of).transpose()?,
            _ => None,
        };
        Ok(NodeLock::Held(holder))
    }

    /// Removes a liveness record left by a holder known to be dead (the
    /// same installation, whose local lock this process now holds), only if
    /// it is still the record seen; its etcd lease is revoked too. The
    /// caller then takes the lock the regular way.
    pub async fn remove_dead_holder(&self, node: &str, seen: &LivenessHolder) -> Result<bool> {
        let key = self.keys.liveness(node);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                seen.mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let removed = self.commit(txn).await?.succeeded();
        if removed {
            let _ = self.etcd_leases().revoke(seen.lease).await;
        }
        Ok(removed)
    }

    /// Gives the lock up at once (graceful stop): deletes the record if it
    /// is still this tenure's.
    pub async fn unlock_node(&self, node: &str, create_revision: i64) -> Result<()> {
        let key = self.keys.liveness(node);
        let txn = Txn::new()
            .when([Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                create_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        self.commit(txn).await.map(|_| ())
    }

    /// The holder of `node`'s liveness record, if any.
    pub async fn holder(&self, node: &str) -> Result<Option<LivenessHolder>> {
        let key = self.keys.liveness(node);
        let mut c = self.client();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        resp.kvs().first().map(holder_of).transpose()
    }
}

impl AdminReads<'_> {
    /// Every drain marker.
    pub async fn drains(&self) -> Result<Vec<DrainTarget>> {
        let prefix = self.keys.drains_prefix();
        let mut c = self.client();
        let resp = self
            .deadline(async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                )
                .await
            })
            .await?;
        let mut out: Vec<DrainTarget> = resp
            .kvs()
            .iter()
            .filter_map(|kv| self.keys.parse_drain(&String::from_utf8_lossy(kv.key())))
            .collect();
        out.sort();
        Ok(out)
    }

    /// From one read: the nodes that hold something a reclaim would retire
    /// (pod leases, standby records, blocks) and the nodes that are live.
    pub async fn node_holdings(&self) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let (r, _) = self
            .read_at_once(vec![
                get_prefix(self.keys.all_leases_prefix()),
                get_prefix(self.keys.all_blocks_prefix()),
                TxnOp::get(
                    self.keys.liveness_prefix(),
                    Some(GetOptions::new().with_prefix().with_keys_only()),
                ),
            ])
            .await?;
        let mut holding = BTreeSet::new();
        for l in crate::nodes::decode_leases_lenient(r[0].kvs()) {
            if matches!(l.state, LeaseState::Active | LeaseState::Standby) {
                holding.insert(l.node);
            }
        }
        for kv in r[1].kvs() {
            if let Ok(b) = decode_json::<Block>(kv) {
                holding.insert(b.node);
            }
        }
        let live = r[2]
            .kvs()
            .iter()
            .filter_map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                self.keys.liveness_node_of(&k).map(str::to_string)
            })
            .collect();
        Ok((holding, live))
    }

    /// Every node whose ipamd holds its liveness record now.
    pub async fn live_nodes(&self) -> Result<BTreeMap<String, LivenessHolder>> {
        let prefix = self.keys.liveness_prefix();
        let mut c = self.client();
        let resp = self
            .deadline(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        let mut out = BTreeMap::new();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            let Some(node) = self.keys.liveness_node_of(&key) else {
                continue;
            };
            // An undecodable record still proves the node live.
            let holder = holder_of(kv).unwrap_or_else(|_| LivenessHolder {
                record: Liveness::default(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                lease: kv.lease(),
            });
            out.insert(node.to_string(), holder);
        }
        Ok(out)
    }
}

fn holder_of(kv: &etcd_client::KeyValue) -> Result<LivenessHolder> {
    Ok(LivenessHolder {
        record: decode_json(kv)?,
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    })
}

impl LeaderStore {
    /// Writes `target`'s drain marker while what it names exists; an
    /// existing marker is kept as it is. Returns whether it was created now.
    pub async fn put_drain(&self, target: &DrainTarget, reason: &str) -> Result<bool> {
        let key = self.keys.drain(target);
        let (subject, missing) = self.drain_subject(target);
        let value = serde_json::to_vec(&Drain {
            reason: reason.to_string(),
            since_unix_ms: now_unix_ms(),
        })
        .expect("Drain serialises");
        let txn = Txn::new()
            .when(self.guard(vec![
                Compare::version(subject.clone(), CompareOp::Greater, 0),
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            ]))
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([get(subject), get(key)]);
        let resp = self.commit(txn).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        self.check_fence().await?;
        let found = |i: usize| match resp.op_responses().get(i) {
            Some(TxnOpResponse::Get(g)) => !g.kvs().is_empty(),
            _ => false,
        };
        if !found(0) {
            return Err(missing);
        }
        Ok(false)
    }

    /// Removes `target`'s drain marker; false when there was none.
    pub async fn delete_drain(&self, target: &DrainTarget) -> Result<bool> {
        let key = self.keys.drain(target);
        let txn = Txn::new()
            .when(self.guard(vec![]))
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.commit(txn).await?;
        if !resp.succeeded() {
            self.check_fence().await?;
            return Err(StoreError::Contended(1));
        }
        Ok(resp.op_responses().into_iter().any(|r| match r {
            TxnOpResponse::Delete(d) => d.deleted() > 0,
            _ => false,
        }))
    }
}
