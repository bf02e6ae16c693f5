//! Facets of [`Store`]: groups of operations only one kind of caller makes,
//! kept off `Store` itself so the surface the node agent (ipamd) depends on
//! stays small, and so that each type has a single reader to explain it to.
//! A facet borrows the store; it is free to make (`store.admin_reads()`).
//!
//! - [`AdminReads`]: the control plane's views and the reads its decisions
//!   rest on (racks, nodes, blocks, utilisation, drains, censuses).
//! - [`ControlEvents`]: the change stream netmaster serves and forwards.
//! - [`LeaderKeyStore`]: the leader key netmaster replicas campaign for.
//! - [`LeaseOps`]: lease and sticky-identity records: reads and the node
//!   agent's unfenced, revision-compared writes.
//! - [`NodeLiveness`]: the node agent's liveness record, its node lock.
//! - [`EtcdLeases`]: granting, revoking and keeping alive etcd leases.
//!
//! Facets of [`crate::LeaderStore`], so that handle keeps the allocation
//! state (racks, nodes, blocks, networks, reservations) alone:
//! - [`PolicyWrites`]: QoS policies and ACLs (`leader.policies()`).
//! - [`Retirement`]: retiring a node's records (`leader.retirement()`).

use std::ops::Deref;

use crate::Store;

macro_rules! facet {
    ($(#[$doc:meta])* $name:ident, $make:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name<'a> {
            store: &'a Store,
        }

        impl Deref for $name<'_> {
            type Target = Store;
            fn deref(&self) -> &Store {
                self.store
            }
        }

        impl Store {
            $(#[$doc])*
            pub fn $make(&self) -> $name<'_> {
                $name { store: self }
            }
        }
    };
}

facet!(
    /// The control plane's reads: operator views and the censuses its
    /// writes are decided on.
    AdminReads,
    admin_reads
);
facet!(
    /// The change stream: heartbeats, the event watch, the webhook cursor.
    ControlEvents,
    events
);
facet!(
    /// The netmaster leader key: campaign, read, watch.
    LeaderKeyStore,
    leader_key
);
facet!(
    /// Lease and identity records: reads, and the node agent's writes, each
    /// comparing the revisions the caller saw and none carrying a
    /// leadership fence (the leader's fenced writes are on
    /// [`crate::LeaderStore`]).
    LeaseOps,
    leases
);
facet!(
    /// The node agent's liveness record: take, release, inspect the lock.
    NodeLiveness,
    liveness
);
facet!(
    /// etcd leases (TTLs): grant, revoke, keep alive. What records are
    /// attached to them is the caller's business (a node's liveness, the
    /// leader key, a reservation's hold).
    EtcdLeases,
    etcd_leases
);

macro_rules! leader_facet {
    ($(#[$doc:meta])* $name:ident, $make:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name<'a> {
            leader: &'a crate::LeaderStore,
        }

        impl Deref for $name<'_> {
            type Target = crate::LeaderStore;
            fn deref(&self) -> &crate::LeaderStore {
                self.leader
            }
        }

        impl crate::LeaderStore {
            $(#[$doc])*
            pub fn $make(&self) -> $name<'_> {
                $name { leader: self }
            }
        }
    };
}

leader_facet!(
    /// The leader's writes of the per-network pod policies, QoS policies
    /// and ACLs: admin-rate records written only while their network
    /// exists, fenced like every other leader write.
    PolicyWrites,
    policies
);
leader_facet!(
    /// Retiring what a node holds (`racklinectl node delete`, the reclaim
    /// of a node dead past its grace): the per-record passes behind
    /// `retire_node`, fenced like every other leader write.
    Retirement,
    retirement
);
