//! The etcd side of netmaster leader election: the leader key (netmaster
//! only; the etcd lease it hangs on is etcd_leases.rs, the fence check
//! [`crate::LeaderStore`]). The election state machine itself lives in
//! netmaster (`leader.rs`); this module only knows keys and transactions.
//!
//! The leader key is created only if absent (`create_revision == 0`) and is
//! attached to the candidate's etcd lease, so it disappears when the lease
//! expires or is revoked. Its create revision is the leader's fence: it can
//! never come back to the same value once the key is deleted (revisions only
//! grow), so "create_revision(leader) == R" holds exactly as long as the
//! leader that won at R still holds the key.

use etcd_client::{
    Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchStream,
};

use crate::facets::LeaderKeyStore;
use crate::{Change, Result, StoreError};

/// The leader key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    /// The record (JSON); decoded by the caller.
    pub value: Vec<u8>,
    /// The fence of whoever holds it.
    pub create_revision: i64,
    pub mod_revision: i64,
    /// The etcd lease it is attached to.
    pub lease: i64,
}

/// The outcome of one campaign transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// This candidate holds the key now; `create_revision` is its fence.
    Won { create_revision: i64 },
    /// Someone holds it (None if it vanished between compare and read,
    /// which the caller treats as "try again").
    Lost {
        current: Option<LeaderKey>,
        /// The revision the answer was taken at: a watch from
        /// `revision + 1` misses no later change.
        revision: i64,
    },
}

/// A watch on the single leader key.
pub struct LeaderWatch {
    stream: WatchStream,
}

impl LeaderWatch {
    /// The next change of the leader key. An error means the watch is
    /// broken (the caller re-reads the key and watches again).
    pub async fn next(&mut self) -> Result<Vec<Change>> {
        loop {
            let Some(resp) = self.stream.message().await? else {
                return Err(StoreError::Unavailable("watch stream ended".into()));
            };
            if resp.canceled() {
                return Err(StoreError::Unavailable(format!(
                    "watch cancelled: {}",
                    resp.cancel_reason()
                )));
            }
            let changes: Vec<Change> = resp.events().iter().filter_map(change_of).collect();
            if !changes.is_empty() {
                return Ok(changes);
            }
        }
    }
}

impl LeaderKeyStore<'_> {
    /// One election attempt: create the leader key with `record` on `lease`
    /// unless somebody holds it; otherwise read who does.
    pub async fn campaign(&self, record: Vec<u8>, lease: i64) -> Result<Campaign> {
        let key = self.keys.leader();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.clone(),
                record,
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key, None)]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        if resp.succeeded() {
            // The put is the transaction's only write, so the key was
            // created at the revision the transaction produced.
            return Ok(Campaign::Won {
                create_revision: revision,
            });
        }
        let current = match resp.op_responses().first() {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().map(leader_key),
            _ => None,
        };
        Ok(Campaign::Lost { current, revision })
    }

    /// Who holds the leader key now, and the revision of the read.
    pub async fn get_leader(&self) -> Result<(Option<LeaderKey>, i64)> {
        let key = self.keys.leader();
        let mut c = self.client();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok((resp.kvs().first().map(leader_key), revision))
    }

    /// Watches the leader key from `start_revision`.
    pub async fn watch_leader(&self, start_revision: i64) -> Result<LeaderWatch> {
        let key = self.keys.leader();
        let mut c = self.client();
        let opts = WatchOptions::new().with_start_revision(start_revision);
        let stream = self
            .deadline(async move { c.watch(key, Some(opts)).await })
            .await?;
        Ok(LeaderWatch { stream })
    }
}

fn change_of(ev: &etcd_client::Event) -> Option<Change> {
    let kv = ev.kv()?;
    let key = String::from_utf8_lossy(kv.key()).into_owned();
    Some(match ev.event_type() {
        EventType::Put => Change::Put {
            key,
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        },
        EventType::Delete => Change::Delete {
            key,
            mod_revision: kv.mod_revision(),
        },
    })
}

fn leader_key(kv: &etcd_client::KeyValue) -> LeaderKey {
    LeaderKey {
        value: kv.value().to_vec(),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        lease: kv.lease(),
    }
}
