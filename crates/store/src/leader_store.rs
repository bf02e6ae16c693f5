//! The leader's write handle. Every write that only the netmaster leader may
//! make (racks, bindings, nodes, blocks, networks, drains, QoS, ACLs,
//! reservations, the webhook cursor) is a method of [`LeaderStore`] or of
//! one of its facets ([`crate::PolicyWrites`]: QoS and ACLs,
//! [`crate::Retirement`]: retiring a node), never of [`Store`]: a
//! writer cannot reach one without a handle, and the handle adds its
//! leadership fence to every transaction itself, so no writer can forget it.
//!
//! A handle is obtained in one of two explicit ways: from an election's
//! fence ([`LeaderStore::fenced`]), or, where there is no election to lose,
//! as [`LeaderStore::single_writer`] (a lone netmaster, tests, bootstrap
//! tools) — the only unfenced writes, and their call sites say so.

use std::net::Ipv4Addr;

use etcd_client::{Compare, PutOptions, Txn, TxnOp};
use rackline_model::{Identity, Lease};

use crate::events::WebhookCursor;
use crate::{Fence, Result, StickyWrite, Store, StoreError};

/// A store plus the leadership fence its writes carry. Reads go through to
/// the [`Store`] it wraps (it dereferences to it).
#[derive(Clone)]
pub struct LeaderStore {
    store: Store,
    /// None only for [`LeaderStore::single_writer`].
    fence: Option<Fence>,
}

impl std::fmt::Debug for LeaderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderStore")
            .field("fence", &self.fence)
            .finish_non_exhaustive()
    }
}

impl std::ops::Deref for LeaderStore {
    type Target = Store;
    fn deref(&self) -> &Store {
        &self.store
    }
}

impl LeaderStore {
    /// The handle of the leader that won at `fence`: each of its writes
    /// fails with [`StoreError::Fenced`] once that leadership is over.
    pub fn fenced(store: Store, fence: Fence) -> Self {
        Self {
            store,
            fence: Some(fence),
        }
    }

    /// A handle whose writes carry no fence: ONLY for a writer that has no
    /// election to lose — a lone netmaster run without replicas, tests, and
    /// bootstrap tools that run before any daemon. Replicas must use
    /// [`LeaderStore::fenced`].
    pub fn single_writer(store: Store) -> Self {
        Self { store, fence: None }
    }

    /// The fence this handle's writes carry (None for a single writer).
    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// The store the handle writes to, for reads.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// `when` plus this handle's fence compare.
    pub(crate) fn guard(&self, mut when: Vec<Compare>) -> Vec<Compare> {
        if let Some(f) = &self.fence {
            when.push(f.compare());
        }
        when
    }

    /// After a fenced transaction failed: `Fenced` if the fence no longer
    /// holds (the writer was deposed), so the caller stops instead of
    /// retrying a write that can never succeed. No-op for a single writer.
    pub async fn check_fence(&self) -> Result<()> {
        let Some(f) = &self.fence else { return Ok(()) };
        let key = f.key.clone();
        let mut c = self.store.client();
        let resp = self
            .store
            .deadline(async move { c.get(key, None).await })
            .await?;
        let now = resp.kvs().first().map_or(0, |kv| kv.create_revision());
        if now == f.create_revision {
            Ok(())
        } else {
            Err(self.deposed())
        }
    }

    fn deposed(&self) -> StoreError {
        let f = self.fence.as_ref();
        StoreError::Fenced {
            key: f.map(|f| f.key.clone()).unwrap_or_default(),
            create_revision: f.map_or(0, |f| f.create_revision),
        }
    }

    /// [`LeaseOps::write_sticky`](crate::LeaseOps::write_sticky) (a reservation pin) carrying the fence.
    pub async fn write_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity: &Identity,
        identity_rev: i64,
        ttl_lease: Option<i64>,
    ) -> Result<StickyWrite> {
        self.store
            .leases()
            .write_sticky(
                lease,
                lease_rev,
                identity,
                identity_rev,
                ttl_lease,
                self.guard(Vec::new()),
            )
            .await
    }

    /// [`LeaseOps::delete_sticky`](crate::LeaseOps::delete_sticky) (a reservation release) carrying the fence.
    pub async fn delete_sticky(
        &self,
        network: &str,
        ip: Ipv4Addr,
        lease_rev: i64,
        namespace: &str,
        name: &str,
        identity_rev: i64,
    ) -> Result<bool> {
        self.store
            .delete_sticky_guarded(
                network,
                ip,
                lease_rev,
                namespace,
                name,
                identity_rev,
                self.guard(Vec::new()),
            )
            .await
    }

    /// [`LeaseOps::delete_identity`](crate::LeaseOps::delete_identity) carrying the fence.
    pub async fn delete_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
        identity_rev: i64,
    ) -> Result<bool> {
        self.store
            .delete_identity_guarded(
                network,
                namespace,
                name,
                identity_rev,
                self.guard(Vec::new()),
            )
            .await
    }

    /// Stores the webhook cursor, fenced by the leadership that delivered
    /// the events before it: a deposed leader cannot move it.
    pub async fn put_webhook_cursor(&self, cursor: &WebhookCursor) -> Result<()> {
        let key = self.store.keys.webhook_cursor();
        let value = serde_json::to_vec(cursor).expect("cursor serialises");
        let txn = Txn::new()
            .when(self.guard(Vec::new()))
            .and_then(vec![TxnOp::put(key, value, None::<PutOptions>)]);
        if self.store.commit(txn).await?.succeeded() {
            Ok(())
        } else {
            Err(self.deposed())
        }
    }
}
