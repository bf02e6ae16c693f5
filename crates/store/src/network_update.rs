//! Updating a network in place: one consistent read of the record, its
//! leases and its blocks; one transaction that writes the new definition
//! only if the record is still the version read (mod revision) and, when
//! the caller validated against leases or blocks, none of those changed
//! either. The caller (netmaster) decides what a failed compare means: a
//! changed record is the operator's conflict to resolve, a lease written
//! meanwhile is only a reason to look again.

use etcd_client::{Compare, CompareOp, TxnOp, TxnOpResponse};
use rackline_model::NetworkSpec;

use crate::reads::{get, get_prefix, unchanged_prefix};
use crate::*;

/// A network and what runs on it, read at one revision.
#[derive(Debug, Clone)]
pub struct NetworkState {
    pub network: StoredNetwork,
    pub leases: Vec<StoredLease>,
    pub blocks: usize,
    /// The revision of the read.
    pub revision: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateOutcome {
    /// Written at this revision.
    Written { revision: i64 },
    /// The record was updated, deleted or re-created since it was read
    /// (`now`: its current mod revision, 0 when gone).
    NetworkChanged { now: i64 },
    /// A lease or block was written since the read: read and check again.
    UsageChanged,
}

/// What the write must compare besides the record's own revision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpdateGuards {
    /// No lease of the network written since the read (the update was
    /// validated against them: new exclusions).
    pub leases: bool,
    /// No block of the network written since the read (block size).
    pub blocks: bool,
}

impl AdminReads<'_> {
    /// The network `name` with its leases and block count, or None.
    pub async fn network_state(&self, name: &str) -> Result<Option<NetworkState>> {
        let (r, revision) = self
            .read_at_once(vec![
                get(self.keys.network(name)),
                get_prefix(self.keys.leases_prefix(name)),
                get_prefix(self.keys.blocks_prefix(name)),
            ])
            .await?;
        let Some(kv) = r[0].kvs().first() else {
            return Ok(None);
        };
        let network = decode_network(kv)?;
        let leases = r[1]
            .kvs()
            .iter()
            .map(|kv| {
                Ok(StoredLease {
                    lease: decode_lease(kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(NetworkState {
            network,
            leases,
            blocks: r[2].kvs().len(),
            revision,
        }))
    }
}

impl LeaderStore {
    /// Replaces the definition read in `seen` with `spec` (validated here
    /// again), fenced by the leader's fence. Lease records are never
    /// deleted with it: standby records the new definition excludes are
    /// their nodes' to give back (see netmaster's `network update`).
    pub async fn update_network(
        &self,
        spec: &NetworkSpec,
        seen: &NetworkState,
        guards: UpdateGuards,
    ) -> Result<UpdateOutcome> {
        spec.validate()?;
        let name = &seen.network.spec.name;
        if spec.name != *name || spec.subnet != seen.network.spec.subnet {
            return Err(StoreError::Refused(format!(
                "an update of network {name:?} may not rename it or change its subnet"
            )));
        }
        let key = self.keys.network(name);
        let mut when = vec![Compare::mod_revision(
            key.clone(),
            CompareOp::Equal,
            seen.network.mod_revision,
        )];
        if guards.leases {
            when.push(unchanged_prefix(
                &self.keys.leases_prefix(name),
                seen.revision,
            ));
        }
        if guards.blocks {
            when.push(unchanged_prefix(
                &self.keys.blocks_prefix(name),
                seen.revision,
            ));
        }
        let ops = vec![TxnOp::put(
            key.clone(),
            serde_json::to_vec(spec).expect("NetworkSpec serialises"),
            None,
        )];
        let txn = etcd_client::Txn::new()
            .when(self.guard(when))
            .and_then(ops)
            .or_else([TxnOp::get(key, None)]);
        let resp = self.commit(txn).await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            return Ok(UpdateOutcome::Written { revision });
        }
        self.check_fence().await?;
        let now = match resp.op_responses().into_iter().next() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map_or(0, |kv| kv.mod_revision()),
            _ => 0,
        };
        if now != seen.network.mod_revision {
            return Ok(UpdateOutcome::NetworkChanged { now });
        }
        Ok(UpdateOutcome::UsageChanged)
    }
}
