//! The engine's view of durable storage. The engine is written against this
//! trait so its logic is unit-tested with an in-memory fake; production uses
//! the etcd adapter.

use std::future::Future;
use std::net::Ipv4Addr;

use rackline_model::Lease;
use rackline_store::{BlockGuard, CreateLease, Store, StoreError, StoredLease, StoredNetwork};

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
}

impl LeaseStore for Store {
    async fn create_lease(
        &self,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> Result<CreateLease, StoreError> {
        Store::create_lease_guarded(self, lease, network_revision, block).await
    }

    async fn delete_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
        mod_revision: i64,
    ) -> Result<bool, StoreError> {
        Store::delete_lease(self, network, ip, mod_revision).await
    }

    async fn get_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
    ) -> Result<Option<StoredLease>, StoreError> {
        Store::get_lease(self, network, ip).await
    }

    async fn get_network(&self, name: &str) -> Result<Option<StoredNetwork>, StoreError> {
        Store::get_network(self, name).await
    }

    async fn replace_lease(
        &self,
        lease: &Lease,
        mod_revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        Store::replace_lease(self, lease, mod_revision).await
    }
}
