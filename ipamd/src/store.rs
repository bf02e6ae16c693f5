//! The engine's view of durable storage. The engine is written against this
//! trait so its logic is unit-tested with an in-memory fake; production uses
//! the etcd adapter.

use std::future::Future;
use std::net::Ipv4Addr;
use std::time::Instant;

use rackline_model::{Identity, Lease};
use rackline_store::{
    BlockGuard, Change, CreateLease, IdentityView, StickyWrite, Store, StoreError, StoredBlock,
    StoredIdentity, StoredLease, StoredNetwork,
};
use tracing::warn;

/// The etcd key layout, owned by the store crate; the engine needs it only to
/// name a block the way its deletion event will.
pub use rackline_store::Keys;

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
        let r = self
            .leases()
            .create_lease_guarded(lease, network_revision, block)
            .await;
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
        let r = self.leases().delete_lease(network, ip, mod_revision).await;
        self.observe("delete_lease", t);
        r
    }

    async fn get_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
    ) -> Result<Option<StoredLease>, StoreError> {
        let t = Instant::now();
        let r = self.leases().get_lease(network, ip).await;
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
        let r = self.leases().replace_lease(lease, mod_revision).await;
        self.observe("replace_lease", t);
        r
    }

    async fn get_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredIdentity>, StoreError> {
        self.leases().get_identity(network, namespace, name).await
    }

    async fn identity_view(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<IdentityView>, StoreError> {
        let t = Instant::now();
        let r = self.leases().identity_view(network, namespace, name).await;
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
            Some(s) => Some(self.leases().grant_ttl(s).await?),
            None => None,
        };
        let mut extra = Vec::new();
        if let Some(rev) = network_revision {
            extra.push(self.leases().network_compare(&lease.network, rev));
        }
        if let Some(b) = block {
            extra.push(b.compare());
        }
        let t = Instant::now();
        let r = self
            .leases()
            .write_sticky(lease, lease_rev, identity, identity_rev, ttl_lease, extra)
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
        self.leases()
            .delete_sticky(
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
        self.leases()
            .delete_identity(
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
        let r = self
            .leases()
            .replace_lease_for(lease, mod_revision, ttl_secs)
            .await;
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
        let r = self
            .leases()
            .mark_lease_reclaimed(lease, mod_revision, reason)
            .await;
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

/// One watch event, decoded: the engine sees records, never etcd keys or
/// raw JSON. Records that do not decode are logged and dropped here.
#[derive(Debug, Clone)]
pub enum StoreEvent {
    /// A network's definition was written.
    Network {
        name: String,
        spec: rackline_model::NetworkSpec,
        create_revision: i64,
    },
    /// A block of `network` was written; `key` is its etcd key (the
    /// block's guard).
    Block {
        network: String,
        block: StoredBlock,
        key: String,
    },
    /// A node's record was written (`Some`, its addresses) or deleted.
    Node {
        name: String,
        addresses: Option<Vec<Ipv4Addr>>,
    },
    /// A drain marker was created (`up`) or removed.
    Drain {
        target: rackline_model::DrainTarget,
        up: bool,
    },
    /// A rack binding was written or removed (`key` for the log).
    RackBinding { key: String, removed: bool },
    /// A lease of `network` was written.
    Lease { network: String, lease: StoredLease },
    /// A network, block or lease was deleted.
    Deleted(Deleted),
}

/// What a deletion removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    Network(String),
    Block {
        network: String,
        first: Ipv4Addr,
    },
    Lease {
        network: String,
        ip: Ipv4Addr,
        mod_revision: i64,
    },
}

/// Decodes one watch change of the prefix `keys` describes; None for keys
/// the engine does not follow and for undecodable records (logged).
pub fn decode_change(keys: &rackline_store::Keys, change: Change) -> Option<StoreEvent> {
    match change {
        Change::Put {
            key,
            value,
            create_revision,
            mod_revision,
        } => decode_put(keys, key, &value, create_revision, mod_revision),
        Change::Delete { key, mod_revision } => decode_delete(keys, key, mod_revision),
    }
}

fn decode_put(
    keys: &rackline_store::Keys,
    key: String,
    value: &[u8],
    create_revision: i64,
    mod_revision: i64,
) -> Option<StoreEvent> {
    if let Some(name) = keys.network_name_of(&key) {
        return Some(StoreEvent::Network {
            name: name.to_string(),
            spec: record(&key, value, "network")?,
            create_revision,
        });
    }
    if let Some((network, _first)) = keys.parse_block(&key) {
        let block: rackline_model::Block = record(&key, value, "block")?;
        return Some(StoreEvent::Block {
            network: network.to_string(),
            block: StoredBlock {
                block,
                mod_revision,
            },
            key,
        });
    }
    if let Some(name) = keys.node_name_of(&key) {
        let node: rackline_model::Node = record(&key, value, "node")?;
        return Some(StoreEvent::Node {
            name: name.to_string(),
            addresses: Some(node.addresses),
        });
    }
    if let Some(target) = keys.parse_drain(&key) {
        return Some(StoreEvent::Drain { target, up: true });
    }
    if keys.parse_racknet(&key).is_some() {
        return Some(StoreEvent::RackBinding {
            key,
            removed: false,
        });
    }
    if let Some((network, _ip)) = keys.parse_lease(&key) {
        return Some(StoreEvent::Lease {
            network: network.to_string(),
            lease: StoredLease {
                lease: record(&key, value, "lease")?,
                mod_revision,
            },
        });
    }
    None
}

/// One record's JSON, or None (logged) when it does not decode.
fn record<T: serde::de::DeserializeOwned>(key: &str, value: &[u8], what: &str) -> Option<T> {
    match serde_json::from_slice(value) {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(%key, "ignoring undecodable {what} record: {e}");
            None
        }
    }
}

fn decode_delete(
    keys: &rackline_store::Keys,
    key: String,
    mod_revision: i64,
) -> Option<StoreEvent> {
    if let Some(name) = keys.network_name_of(&key) {
        return Some(StoreEvent::Deleted(Deleted::Network(name.to_string())));
    }
    if let Some((network, first)) = keys.parse_block(&key) {
        return Some(StoreEvent::Deleted(Deleted::Block {
            network: network.to_string(),
            first,
        }));
    }
    if let Some(name) = keys.node_name_of(&key) {
        return Some(StoreEvent::Node {
            name: name.to_string(),
            addresses: None,
        });
    }
    if let Some(target) = keys.parse_drain(&key) {
        return Some(StoreEvent::Drain { target, up: false });
    }
    if keys.parse_racknet(&key).is_some() {
        return Some(StoreEvent::RackBinding { key, removed: true });
    }
    if let Some((network, ip)) = keys.parse_lease(&key) {
        return Some(StoreEvent::Deleted(Deleted::Lease {
            network: network.to_string(),
            ip,
            mod_revision,
        }));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_store::Keys;

    fn put(key: String, value: &[u8]) -> Change {
        Change::Put {
            key,
            value: value.to_vec(),
            create_revision: 3,
            mod_revision: 7,
        }
    }

    #[test]
    fn watch_changes_decode_to_typed_events() {
        let keys = Keys::new("/rackline");
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        let lease = Lease::standby("net-a", ip, "node-1", 5);
        let ev = decode_change(
            &keys,
            put(
                keys.lease("net-a", ip),
                &serde_json::to_vec(&lease).unwrap(),
            ),
        );
        match ev {
            Some(StoreEvent::Lease { network, lease: sl }) => {
                assert_eq!(network, "net-a");
                assert_eq!(sl.mod_revision, 7);
                assert_eq!(sl.lease, lease);
            }
            other => panic!("expected a lease event, got {other:?}"),
        }
        let del = decode_change(
            &keys,
            Change::Delete {
                key: keys.lease("net-a", ip),
                mod_revision: 8,
            },
        );
        assert!(matches!(
            del,
            Some(StoreEvent::Deleted(Deleted::Lease { ref network, ip: i, mod_revision: 8 }))
                if network == "net-a" && i == ip
        ));
        let gone = decode_change(
            &keys,
            Change::Delete {
                key: keys.network("net-a"),
                mod_revision: 9,
            },
        );
        assert!(matches!(gone, Some(StoreEvent::Deleted(Deleted::Network(ref n))) if n == "net-a"));
        let bound = decode_change(&keys, put(keys.racknet("net-a", "r1"), b"{}"));
        assert!(matches!(
            bound,
            Some(StoreEvent::RackBinding { removed: false, .. })
        ));
    }

    #[test]
    fn undecodable_records_and_foreign_keys_are_dropped() {
        let keys = Keys::new("/rackline");
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        assert!(decode_change(&keys, put(keys.lease("net-a", ip), b"not json")).is_none());
        assert!(decode_change(&keys, put(keys.network("net-a"), b"{")).is_none());
        assert!(decode_change(&keys, put("/elsewhere/x".into(), b"{}")).is_none());
        let node = decode_change(
            &keys,
            Change::Delete {
                key: keys.node("node-1"),
                mod_revision: 2,
            },
        );
        assert!(matches!(
            node,
            Some(StoreEvent::Node { ref name, addresses: None }) if name == "node-1"
        ));
    }
}
