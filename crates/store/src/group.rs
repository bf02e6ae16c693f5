//! Group commit of lease creations: concurrent `create_lease_guarded` calls
//! of one process travel to etcd in one transaction, so etcd pays one
//! request, one raft entry and one fsync for several leases.
//!
//! Each creation stays individually guarded: the outer transaction has no
//! condition of its own and holds one nested transaction per lease (etcd ≥
//! 3.3), each with exactly the compares it has when sent alone (the lease
//! key absent, the network incarnation, the block revision). etcd evaluates
//! every nested transaction on its own inside the one atomic apply, so one
//! taken address or changed block fails only its own lease, and a lease is
//! written only when its own guards hold — the same rule as a lone write,
//! hence never an address for two holders. Nothing is written besides the
//! leases themselves: no counter or other key every allocation touches.
//!
//! Batching is adaptive: at most `in_flight` transactions are outstanding;
//! whatever arrives meanwhile joins the next one (up to `max_batch`). A lone
//! request is sent at once, so an idle daemon pays no extra latency. A batch
//! etcd refuses as a whole (too large, a rule of etcd's) is retried lease by
//! lease; when etcd does not answer, every lease of it is reported
//! `Unavailable`, exactly as a lone write that got no answer (it may have
//! been applied; the caller resolves it as it already does).

use std::collections::HashSet;
use std::sync::Arc;

use etcd_client::{Txn, TxnOp, TxnOpResponse};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::leases::LeaseCreate;
use crate::{CreateLease, Result, Store, StoreError};

/// etcd refuses a transaction of more than `--max-txn-ops` (128 by default)
/// operations, counting a nested transaction's own operations against its
/// parent's remainder: 64 leases of at most 3 operations each stay below.
pub const MAX_BATCH_LIMIT: usize = 64;

struct Pending {
    create: LeaseCreate,
    reply: oneshot::Sender<Result<CreateLease>>,
}

/// The submitting side, shared by every clone of a [`Store`].
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<Pending>,
}

impl GroupCommit {
    /// Starts the committer task (needs a tokio runtime). `store` must not
    /// itself have group commit on.
    pub(crate) fn start(store: Store, max_batch: usize, in_flight: usize) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(
            store,
            rx,
            max_batch.clamp(1, MAX_BATCH_LIMIT),
            in_flight.max(1),
        ));
        Arc::new(Self { tx })
    }

    pub(crate) async fn submit(&self, create: LeaseCreate) -> Result<CreateLease> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Pending { create, reply }).is_err() {
            return Err(StoreError::Unavailable("group commit stopped".into()));
        }
        answer
            .await
            .unwrap_or_else(|_| Err(StoreError::Unavailable("group commit stopped".into())))
    }
}

async fn run(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<Pending>,
    max_batch: usize,
    in_flight: usize,
) {
    let slots = Arc::new(Semaphore::new(in_flight));
    // A second creation of a key already in the batch waits for the next
    // one (etcd refuses two writes of one key in a transaction).
    let mut carry: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        let mut keys = HashSet::from([first.create.key.clone()]);
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(p) if keys.insert(p.create.key.clone()) => batch.push(p),
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        let store = store.clone();
        tokio::spawn(async move {
            commit(&store, batch).await;
            drop(slot);
        });
    }
}

async fn commit(store: &Store, batch: Vec<Pending>) {
    if batch.len() == 1 {
        for p in batch {
            let r = store.leases().create_one(&p.create).await;
            let _ = p.reply.send(r);
        }
        return;
    }
    match store.create_many(&batch).await {
        Ok(outcomes) => {
            for (p, o) in batch.into_iter().zip(outcomes) {
                let _ = p.reply.send(Ok(o));
            }
        }
        Err(StoreError::Unavailable(m)) => {
            for p in batch {
                let _ = p.reply.send(Err(StoreError::Unavailable(m.clone())));
            }
        }
        Err(e) => {
            // Refused as a whole, so nothing of it was applied: each lease
            // alone, under the same guards.
            tracing::debug!(
                leases = batch.len(),
                "group commit refused ({e}); one by one"
            );
            for p in batch {
                let r = store.leases().create_one(&p.create).await;
                let _ = p.reply.send(r);
            }
        }
    }
}

impl Store {
    /// Lease creations issued concurrently through this store (and its
    /// clones) share etcd transactions: up to `max_batch` leases per
    /// transaction (at most [`MAX_BATCH_LIMIT`]), at most `in_flight`
    /// transactions outstanding. `max_batch` 1 leaves every lease in a
    /// transaction of its own. Needs a tokio runtime.
    pub fn with_group_commit(mut self, max_batch: usize, in_flight: usize) -> Self {
        if max_batch > 1 {
            let mut inner = self.clone();
            inner.group = None;
            self.group = Some(GroupCommit::start(inner, max_batch, in_flight));
        }
        self
    }

    /// One transaction of nested, individually guarded creations; one
    /// outcome per creation, in order.
    async fn create_many(&self, batch: &[Pending]) -> Result<Vec<CreateLease>> {
        let ops: Vec<TxnOp> = batch.iter().map(|p| TxnOp::txn(p.create.txn())).collect();
        let txn = Txn::new().and_then(ops);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let answers = resp.op_responses();
        if answers.len() != batch.len() {
            return Err(StoreError::Unavailable(format!(
                "group commit: {} answers for {} leases",
                answers.len(),
                batch.len()
            )));
        }
        batch
            .iter()
            .zip(answers)
            .map(|(p, a)| match a {
                TxnOpResponse::Txn(t) => {
                    let ops = if t.succeeded() {
                        Vec::new()
                    } else {
                        t.op_responses()
                    };
                    Ok(p.create.outcome(t.succeeded(), &ops, rev))
                }
                // Cannot be read: "may have been applied", which the caller
                // resolves by reading the key.
                _ => Err(StoreError::Unavailable(
                    "group commit: an answer that is not a transaction".into(),
                )),
            })
            .collect()
    }
}
