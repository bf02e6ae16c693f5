//! The engine's view of durable storage. The engine is written against this
//! trait so its logic is unit-tested with an in-memory fake; production uses
//! the etcd adapter.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Instant;

use rackline_model::{Identity, Lease};
use rackline_store::{
    BlockGuard, CreateLease, IdentityView, StickyWrite, Store, StoreError, StoredIdentity,
    StoredLease, StoredNetwork,
};

pub trait LeaseStore: Send + Sync + 'static {
    fn create_lease(
        &self,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> impl Future<Output = Result<CreateLease, StoreError>> + Send;
    fn delete_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
        mod_revision: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn get_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<Option<StoredLease>, StoreError>> + Send;
    /// Overwrites the record last seen at `mod_revision`; None if it changed.
    fn replace_lease(
        &self,
        lease: &Lease,
        mod_revision: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    fn get_network(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<StoredNetwork>, StoreError>> + Send;

    // ---- sticky identities (see rackline_store::identities) ----

    fn get_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<StoredIdentity>, StoreError>> + Send;
    fn identity_view(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> impl Future<Output = Result<Option<IdentityView>, StoreError>> + Send;
    /// Writes a lease and its identity together (revisions 0 = must not
    /// exist). `ttl_secs` makes it a reservation etcd deletes at expiry;
    /// `network_revision` and `block` guard a fresh address like
    /// `create_lease`.
    #[allow(clippy::too_many_arguments)]
    fn write_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity: &Identity,
        identity_rev: i64,
        ttl_secs: Option<u64>,
        network_revision: Option<i64>,
        block: Option<&BlockGuard>,
    ) -> impl Future<Output = Result<StickyWrite, StoreError>> + Send;
    fn delete_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity_rev: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    fn delete_identity(
        &self,
        identity: &Identity,
        identity_rev: i64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// A cheap read that succeeds only when etcd can serve requests (the
    /// prober's question; see engine/mode.rs).
    fn probe(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Every registered node's addresses, with the node's name: a
    /// requested address must not be one of them.
    fn node_addresses(
        &self,
    ) -> impl Future<Output = Result<Vec<(Ipv4Addr, String)>, StoreError>> + Send;
    /// `replace_lease`, but the new record is deleted by etcd itself after
    /// `ttl_secs` (a conflict quarantine).
    fn replace_lease_expiring(
        &self,
        lease: &Lease,
        mod_revision: i64,
        ttl_secs: u64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;

    /// Rewrites the record last seen at `mod_revision` with the reclaim
    /// marker (`rackline_model::event`); the new revision, or None if it
    /// changed. A store without an event stream need not mark: the default
    /// leaves the record as it is.
    fn mark_reclaimed(
        &self,
        _lease: &Lease,
        mod_revision: i64,
        _reason: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send {
        std::future::ready(Ok(Some(mod_revision)))
    }
}

impl LeaseStore for Store {
    async fn create_lease(
        &self,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> Result<CreateLease, StoreError> {
        let t = Instant::now();
        let r = Store::create_lease_guarded(self, lease, network_revision, block).await;
        self.observe("create_lease", t);
        r
    }

    async fn delete_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
        mod_revision: i64,
    ) -> Result<bool, StoreError> {
        let t = Instant::now();
        let r = Store::delete_lease(self, network, ip, mod_revision).await;
        self.observe("delete_lease", t);
        r
    }

    async fn get_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
    ) -> Result<Option<StoredLease>, StoreError> {
        let t = Instant::now();
        let r = Store::get_lease(self, network, ip).await;
        self.observe("get_lease", t);
        r
    }

    async fn get_network(&self, name: &str) -> Result<Option<StoredNetwork>, StoreError> {
        Store::get_network(self, name).await
    }

    async fn replace_lease(
        &self,
        lease: &Lease,
        mod_revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        let t = Instant::now();
        let r = Store::replace_lease(self, lease, mod_revision).await;
        self.observe("replace_lease", t);
        r
    }

    async fn get_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredIdentity>, StoreError> {
        Store::get_identity(self, network, namespace, name).await
    }

    async fn identity_view(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<IdentityView>, StoreError> {
        let t = Instant::now();
        let r = Store::identity_view(self, network, namespace, name).await;
        self.observe("identity_view", t);
        r
    }

    async fn write_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity: &Identity,
        identity_rev: i64,
        ttl_secs: Option<u64>,
        network_revision: Option<i64>,
        block: Option<&BlockGuard>,
    ) -> Result<StickyWrite, StoreError> {
        let ttl_lease = match ttl_secs {
            Some(s) => Some(self.grant_ttl(s).await?),
            None => None,
        };
        let mut extra = Vec::new();
        if let Some(rev) = network_revision {
            extra.push(self.network_compare(&lease.network, rev));
        }
        if let Some(b) = block {
            extra.push(b.compare());
        }
        let t = Instant::now();
        let r = Store::write_sticky(
            self,
            lease,
            lease_rev,
            identity,
            identity_rev,
            ttl_lease,
            extra,
        )
        .await;
        self.observe("write_sticky", t);
        r
    }

    async fn delete_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity_rev: i64,
    ) -> Result<bool, StoreError> {
        Store::delete_sticky(
            self,
            &lease.network,
            lease.address,
            lease_rev,
            &lease.pod.namespace,
            &lease.pod.name,
            identity_rev,
        )
        .await
    }

    async fn delete_identity(
        &self,
        identity: &Identity,
        identity_rev: i64,
    ) -> Result<bool, StoreError> {
        Store::delete_identity(
            self,
            &identity.network,
            &identity.namespace,
            &identity.name,
            identity_rev,
        )
        .await
    }

    async fn replace_lease_expiring(
        &self,
        lease: &Lease,
        mod_revision: i64,
        ttl_secs: u64,
    ) -> Result<Option<i64>, StoreError> {
        let t = Instant::now();
        let r = Store::replace_lease_for(self, lease, mod_revision, ttl_secs).await;
        self.observe("replace_lease", t);
        r
    }

    async fn mark_reclaimed(
        &self,
        lease: &Lease,
        mod_revision: i64,
        reason: &str,
    ) -> Result<Option<i64>, StoreError> {
        let t = Instant::now();
        let r = Store::mark_lease_reclaimed(self, lease, mod_revision, reason).await;
        self.observe("mark_reclaimed", t);
        r
    }

    async fn node_addresses(&self) -> Result<Vec<(Ipv4Addr, String)>, StoreError> {
        Store::node_addresses(self).await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        let t = Instant::now();
        let r = self.quorum_read().await;
        self.observe("probe", t);
        r
    }
}
