//! The allocation engine: transport-free (no tonic, no etcd types beyond the
//! store trait's results).
//!
//! Allocation is one etcd round trip: pick a free address from the local
//! cache, then a create-if-absent transaction on that address's own key.
//! There is no global lock and no shared hot key; concurrent ADDs on this
//! node serialise only per attachment.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::store::Keys;
use rackline_model::{network::validate_ifname, Lease, NetworkSpec, PodRef};
use rackline_store::{Change, Snapshot, StoreError};
use tokio::sync::{watch, OwnedMutexGuard};

use crate::netstate::AttachmentKey;

mod allocator;
mod conflict;
mod mirror;
mod mode;
mod observe;
mod outage;
mod persist;
mod requested;
mod sticky;
use crate::store::LeaseStore;
pub use conflict::{ConflictArgs, Quarantine};
pub use mirror::Mirror;
pub use mode::{Mode, Outage, ProbePolicy};
pub use observe::{ConflictReport, Observer};
pub use persist::{reserve_path, Persisted};

/// How many taken-by-someone-else candidates an allocation skips before it
/// gives up (only reachable when other nodes allocate from the same range
/// faster than our watch catches up).
const MAX_ATTEMPTS: u32 = 64;

/// How often the reserve is re-evaluated (see `Engine::maintain_standby`).
pub const RESERVE_INTERVAL: Duration = Duration::from_millis(200);
/// An ADD that finds its rack full while other nodes still hold reserves
/// waits at most this long for them to be given back.
const MAX_RESERVE_WAIT: Duration = Duration::from_millis(1500);
const RESERVE_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    #[error("unknown network {0:?}: create it with `racklinectl network create`")]
    UnknownNetwork(String),
    #[error("network {network:?} has no free address ({allocated} of {capacity} in use)")]
    Exhausted {
        network: String,
        allocated: u64,
        capacity: u64,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    #[error("ipamd has not loaded its state from etcd yet")]
    NotReady,
    #[error("gave up after {0} candidate addresses were taken concurrently; try again")]
    Contended(u32),
    #[error("{0}")]
    NotInRack(String),
    /// A sticky identity is live on another node.
    #[error("{0}")]
    IdentityLive(String),
    /// A sticky identity's address belongs to another rack (policy strict).
    #[error("{0}")]
    WrongRack(String),
    /// None of the requested addresses can be given to this attachment
    /// (outside the node's rack, excluded, in use, reserved for another
    /// pod); the message says why for each.
    #[error("{0}")]
    RequestedAddress(String),
    #[error("store: {0}")]
    Store(StoreError),
}

impl From<StoreError> for IpamError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => IpamError::Unavailable(m),
            other => IpamError::Store(other),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct AllocateArgs {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub pod: PodRef,
    /// Addresses the runtime or the pod asked for: give one of them (the
    /// first that can be had, in order) or fail; never another.
    pub requested: Vec<Ipv4Addr>,
    /// The pod's own say on stickiness (annotation): Some(true) makes it
    /// sticky whatever the network's policy, Some(false) opts it out of the
    /// policy (an existing reservation or pin still applies).
    pub sticky: Option<bool>,
    /// Addresses named by the pod's annotation: used when `requested` is
    /// empty, restricted to those inside this node's subnet of the network
    /// (a pod on several networks lists one address per network).
    pub annotated: Vec<Ipv4Addr>,
}

#[derive(Debug, Clone)]
pub struct Allocated {
    pub lease: Lease,
    /// The network definition, with `subnet` and `gateway` already those of
    /// this node's rack on a rack-bound network.
    pub network: NetworkSpec,
    /// The attachment already held this lease before the call.
    pub existing: bool,
}

#[derive(Debug, Clone)]
pub struct StatusInfo {
    pub capacity: u64,
    pub allocated: u64,
    pub available: u64,
    pub etcd_connected: bool,
    pub can_allocate: bool,
    pub reason: String,
}

type LockKey = (String, String, String);

/// The engine is a thin composition of owning parts, each with one
/// responsibility:
/// - [`Mirror`] (engine/mirror.rs): the read-only view of etcd the sync
///   loop fills (networks, unbound networks, node addresses, drains, QoS
///   class, synced/resync signals);
/// - [`Outage`] (engine/mode.rs): the online/suspect/offline mode, the
///   journal, the standby reserve's settings and the persisted reserve's
///   state; its store-facing operations are [`Reserve`]'s
///   (engine/outage.rs, engine/persist.rs);
/// - the allocator's own state (attachment locks, GC grace, block demand),
///   operated by [`Allocator`] (engine/allocator.rs, engine/requested.rs),
///   [`Sticky`] (engine/sticky.rs) and [`Conflicts`] (engine/conflict.rs).
///
/// The operations are borrowed views over [`Parts`]: each names what it
/// works on (`self.mirror`, `self.outage`, `self.store`) and reaches the
/// others' operations through `self.allocator()`, `self.sticky()`,
/// `self.reserve()`.
pub struct Engine<S> {
    parts: Parts<S>,
}

/// What the engine is made of (see [`Engine`]).
pub(crate) struct Parts<S> {
    node: String,
    /// This node's rack; None = rack-less (only flat networks allocate).
    rack: Option<String>,
    keys: Keys,
    store: S,
    /// Metrics and alarms for reclaims and conflicts (none in unit tests).
    observer: Option<Arc<Observer>>,
    mirror: Mirror,
    outage: Outage,
    attach_locks: Mutex<HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>>,
    gc_grace: Duration,
    /// Signalled when an allocation drew on a rack-bound network, so the
    /// block manager tops up without waiting for its next round.
    block_demand: tokio::sync::Notify,
}

/// Declares an operations type: a copyable borrow of the engine's parts.
macro_rules! view {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        pub(crate) struct $name<'e, S>(&'e Parts<S>);

        impl<S> Clone for $name<'_, S> {
            fn clone(&self) -> Self {
                *self
            }
        }
        impl<S> Copy for $name<'_, S> {}

        impl<S> std::ops::Deref for $name<'_, S> {
            type Target = Parts<S>;
            fn deref(&self) -> &Parts<S> {
                self.0
            }
        }
    };
}

view!(
    /// Allocate, release, check, GC, reclaim, requested addresses.
    Allocator
);
view!(
    /// Sticky identities: claims, reservations, retiring leases.
    Sticky
);
view!(
    /// The standby reserve, the journal and its replay, the persisted
    /// reserve and the etcd prober: the store-facing half of [`Outage`].
    Reserve
);
view!(
    /// Address conflicts found by the plugin's probe.
    Conflicts
);

impl<S> Parts<S> {
    pub(crate) fn allocator(&self) -> Allocator<'_, S> {
        Allocator(self)
    }

    pub(crate) fn sticky(&self) -> Sticky<'_, S> {
        Sticky(self)
    }

    pub(crate) fn reserve(&self) -> Reserve<'_, S> {
        Reserve(self)
    }

    /// Replaces the mirror with a consistent snapshot; decisions made
    /// offline and not yet replayed stay in force.
    fn apply_snapshot(&self, snap: Snapshot) {
        self.outage
            .from_persisted
            .store(false, std::sync::atomic::Ordering::Relaxed);
        self.mirror.apply_snapshot(snap, |fresh| {
            if let Some(j) = &self.outage.journal {
                for e in j.entries() {
                    Mirror::overlay(fresh, &e);
                }
            }
        });
    }

    fn is_mine(&self, l: &Lease, key: &AttachmentKey) -> bool {
        l.node == self.node && l.container_id == key.0 && l.ifname == key.1
    }
}

/// Holds one attachment's lock; removes the map entry when nobody else
/// waits for it, so the map only holds attachments being worked on.
struct AttachGuard<'a> {
    map: &'a Mutex<HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>>,
    key: LockKey,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for AttachGuard<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        // Ours (inside the guard) + the map's = 2: no waiter left.
        if m.get(&self.key).is_some_and(|a| Arc::strong_count(a) == 2) {
            m.remove(&self.key);
        }
        self.guard.take();
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn validate_attachment(container_id: &str, ifname: &str) -> Result<(), IpamError> {
    if container_id.is_empty() || container_id.len() > 256 {
        return Err(IpamError::InvalidRequest(
            "container id must be 1-256 characters".into(),
        ));
    }
    if container_id.chars().any(|c| c.is_control() || c == '/') {
        return Err(IpamError::InvalidRequest(format!(
            "container id {container_id:?} contains '/' or control characters"
        )));
    }
    validate_ifname(ifname).map_err(|e| IpamError::InvalidRequest(e.to_string()))
}

/// Construction and configuration.
impl<S: LeaseStore> Engine<S> {
    pub fn new(node: String, keys: Keys, store: S, gc_grace: Duration) -> Self {
        Self::with_rack(node, None, keys, store, gc_grace)
    }

    pub fn with_rack(
        node: String,
        rack: Option<String>,
        keys: Keys,
        store: S,
        gc_grace: Duration,
    ) -> Self {
        Self {
            parts: Parts {
                mirror: Mirror::new(node.clone(), rack.clone(), keys.clone()),
                outage: Outage::new(),
                node,
                rack,
                keys,
                store,
                observer: None,
                attach_locks: Mutex::new(HashMap::new()),
                gc_grace,
                block_demand: tokio::sync::Notify::new(),
            },
        }
    }

    /// The node's QoS class (ipamd `--node-class`).
    pub fn with_node_class(mut self, class: Option<String>) -> Self {
        self.parts.mirror.node_class = class;
        self
    }

    /// Enables offline operation: up to `standby` reserve records per
    /// network, decisions journalled in `journal` while etcd is away.
    pub fn with_outage_journal(
        mut self,
        journal: Arc<crate::journal::Journal>,
        standby: usize,
    ) -> Self {
        self.parts.outage.journal = Some(journal);
        self.parts.outage.standby_target = standby;
        self
    }

    /// How old (since etcd last confirmed it) the persisted reserve may be
    /// for an offline start.
    pub fn with_offline_start_max_age(mut self, max_age: Duration) -> Self {
        self.parts.outage.offline_start_max_age = max_age;
        self
    }

    /// How the etcd prober decides between online and offline.
    pub fn with_probe_policy(mut self, probe: ProbePolicy) -> Self {
        self.parts.outage.probe = probe;
        self
    }

    /// Reports reclaims and conflicts to `observer`.
    pub fn with_observer(mut self, observer: Arc<Observer>) -> Self {
        self.parts.observer = Some(observer);
        self
    }

    /// The view of etcd the sync loop keeps.
    pub fn mirror(&self) -> &Mirror {
        &self.parts.mirror
    }

    /// The etcd mode and the offline machinery's state.
    pub fn outage(&self) -> &Outage {
        &self.parts.outage
    }

    pub fn block_demand(&self) -> &tokio::sync::Notify {
        &self.parts.block_demand
    }

    pub fn rack(&self) -> Option<&str> {
        self.parts.rack.as_deref()
    }

    pub fn node(&self) -> &str {
        &self.parts.node
    }

    /// Replaces the cache with a consistent snapshot; decisions made
    /// offline and not yet replayed stay in force.
    pub fn apply_snapshot(&self, snap: Snapshot) {
        self.parts.apply_snapshot(snap)
    }

    /// Applies one watch event, decoded by the storage adapter.
    pub fn apply_change(&self, change: Change) {
        if let Some(event) = crate::store::decode_change(&self.parts.keys, change) {
            self.parts.mirror.apply_event(event);
        }
    }
}

/// The requests (CNI ADD / DEL / CHECK / GC / STATUS and the reconciler's
/// reclaim) and the offline machinery, each handed to its part.
impl<S: LeaseStore> Engine<S> {
    pub async fn allocate(&self, a: AllocateArgs) -> Result<Allocated, IpamError> {
        self.allocator().allocate(a).await
    }

    /// Releases every lease this node holds for the attachment. Idempotent:
    /// an unknown network or attachment releases nothing and succeeds.
    pub async fn release(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.allocator()
            .release_if(network, container_id, ifname, false, || true)
            .await
    }

    /// The rest of the requests — CHECK, GC, the reconciler's reclaim, a
    /// release that rolls back a failed ADD or that only runs if still
    /// wanted — are the allocator's own, called on it directly rather than
    /// forwarded one by one.
    pub(crate) fn allocator(&self) -> Allocator<'_, S> {
        self.parts.allocator()
    }

    pub async fn status(&self, network: &str) -> Result<StatusInfo, IpamError> {
        self.allocator().status(network).await
    }

    /// See [`Conflicts::report_conflict`].
    pub async fn report_conflict(&self, c: ConflictArgs) -> Result<Quarantine, IpamError> {
        Conflicts(&self.parts).report_conflict(c).await
    }

    /// The reserve, journal, persisted reserve and prober.
    pub(crate) fn reserve(&self) -> Reserve<'_, S> {
        self.parts.reserve()
    }

    /// See [`Reserve::run_prober`].
    pub async fn run_prober(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        self.reserve().run_prober(shutdown).await
    }
}
