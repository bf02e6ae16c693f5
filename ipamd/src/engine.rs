//! The allocation engine: transport-free (no tonic, no etcd types beyond the
//! store trait's results).
//!
//! Allocation is one etcd round trip: pick a free address from the local
//! cache, then a create-if-absent transaction on that address's own key.
//! There is no global lock and no shared hot key; concurrent ADDs on this
//! node serialise only per attachment.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rackline_model::{network::validate_ifname, Keys, Lease, NetworkSpec, PodRef};
use rackline_store::{CreateLease, StoreError, StoredLease};
use tokio::sync::{watch, OwnedMutexGuard};
use tracing::{debug, info};

use crate::netstate::{AttachmentKey, NetState};

mod cache;
mod conflict;
mod drain;
mod mode;
mod observe;
mod outage;
mod persist;
mod requested;
mod sticky;
use crate::store::LeaseStore;
pub use conflict::{ConflictArgs, Quarantine};
pub use mode::{Mode, ProbePolicy};
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

pub struct Engine<S> {
    node: String,
    /// This node's rack; None = rack-less (only flat networks allocate).
    rack: Option<String>,
    keys: Keys,
    store: S,
    nets: RwLock<HashMap<String, Arc<NetState>>>,
    attach_locks: Mutex<HashMap<LockKey, Arc<tokio::sync::Mutex<()>>>>,
    gc_grace: Duration,
    /// Online / suspect / offline (see engine/mode.rs).
    mode_tx: watch::Sender<Mode>,
    mode_info: Mutex<mode::ModeInfo>,
    probe: ProbePolicy,
    synced_tx: watch::Sender<bool>,
    /// Bumped when a change needs a fresh snapshot (rack bindings changed).
    resync_tx: watch::Sender<u64>,
    /// Signalled when an allocation drew on a rack-bound network, so the
    /// block manager tops up without waiting for its next round.
    block_demand: tokio::sync::Notify,
    /// The outage journal and the reserve size (0 = no offline operation).
    journal: Option<Arc<crate::journal::Journal>>,
    standby_target: usize,
    /// Serialises saves of the persisted reserve (engine/persist.rs).
    reserve_save: tokio::sync::Mutex<persist::SaveState>,
    /// The cache came from the persisted reserve, not from etcd.
    from_persisted: std::sync::atomic::AtomicBool,
    /// A persisted reserve older than this is not used for an offline
    /// start (its records may have been reclaimed meanwhile).
    offline_start_max_age: Duration,
    /// Networks that are rack-bound but have no binding for this node's
    /// rack (or this node has no rack): name -> why.
    unbound: RwLock<HashMap<String, String>>,
    /// Metrics and alarms for reclaims and conflicts (none in unit tests).
    observer: Option<Arc<Observer>>,
    /// Every registered node's own addresses, by node name (from the
    /// snapshot and the watch of `nodes/`): withheld from every network.
    node_addresses: RwLock<BTreeMap<String, Vec<Ipv4Addr>>>,
    /// Drain markers in force (every node's; see engine/drain.rs).
    drains: RwLock<HashSet<rackline_model::DrainTarget>>,
    /// The node's QoS class: which class level of a network applies to its
    /// pods (`rackline_ipamd_pods_out_of_spec`).
    node_class: Option<String>,
    /// Offline leases the last journal replay recorded in etcd (network,
    /// attachment, address), checked against the next snapshot for a
    /// second lease of the same attachment (see `settle_replayed`).
    replayed: Mutex<Vec<(String, AttachmentKey, Ipv4Addr)>>,
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
        let (synced_tx, _) = watch::channel(false);
        let (resync_tx, _) = watch::channel(0u64);
        Self {
            node,
            rack,
            resync_tx,
            keys,
            store,
            nets: RwLock::new(HashMap::new()),
            attach_locks: Mutex::new(HashMap::new()),
            gc_grace,
            // Until etcd has answered once: the prober decides.
            mode_tx: watch::channel(Mode::Suspect).0,
            mode_info: Mutex::new(mode::ModeInfo::new()),
            probe: ProbePolicy::default(),
            synced_tx,
            unbound: RwLock::new(HashMap::new()),
            block_demand: tokio::sync::Notify::new(),
            journal: None,
            standby_target: 0,
            reserve_save: tokio::sync::Mutex::new(persist::SaveState::default()),
            from_persisted: std::sync::atomic::AtomicBool::new(false),
            offline_start_max_age: Duration::from_secs(3600),
            observer: None,
            node_addresses: RwLock::new(BTreeMap::new()),
            drains: RwLock::new(HashSet::new()),
            node_class: None,
            replayed: Mutex::new(Vec::new()),
        }
    }

    /// The node's QoS class (ipamd `--node-class`).
    pub fn with_node_class(mut self, class: Option<String>) -> Self {
        self.node_class = class;
        self
    }

    pub(crate) fn node_class(&self) -> rackline_model::applied::NodeClass<'_> {
        match &self.node_class {
            Some(c) => rackline_model::applied::NodeClass::Named(c),
            None => rackline_model::applied::NodeClass::Unclassed,
        }
    }

    /// Enables offline operation: up to `standby` reserve records per
    /// network, decisions journalled in `journal` while etcd is away.
    pub fn with_outage_journal(
        mut self,
        journal: Arc<crate::journal::Journal>,
        standby: usize,
    ) -> Self {
        self.journal = Some(journal);
        self.standby_target = standby;
        self
    }

    /// How old (since etcd last confirmed it) the persisted reserve may be
    /// for an offline start.
    pub fn with_offline_start_max_age(mut self, max_age: Duration) -> Self {
        self.offline_start_max_age = max_age;
        self
    }

    /// How the etcd prober decides between online and offline.
    pub fn with_probe_policy(mut self, probe: ProbePolicy) -> Self {
        self.probe = probe;
        self
    }

    pub fn block_demand(&self) -> &tokio::sync::Notify {
        &self.block_demand
    }

    pub fn rack(&self) -> Option<&str> {
        self.rack.as_deref()
    }

    /// Changes when the sync loop should take a fresh snapshot.
    pub fn resync_requests(&self) -> watch::Receiver<u64> {
        self.resync_tx.subscribe()
    }

    /// All networks this node serves (for the block manager).
    pub fn networks(&self) -> Vec<Arc<NetState>> {
        self.nets_read().values().cloned().collect()
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn nets_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<NetState>>> {
        self.nets.read().unwrap_or_else(|p| p.into_inner())
    }

    fn nets_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<NetState>>> {
        self.nets.write().unwrap_or_else(|p| p.into_inner())
    }

    // ---- state from etcd ----

    /// Waits (bounded) for the first snapshot, so requests arriving right
    /// after start-up do not fail needlessly.
    async fn wait_synced(&self, limit: Duration) -> Result<(), IpamError> {
        let mut rx = self.synced_tx.subscribe();
        let ready = tokio::time::timeout(limit, async { rx.wait_for(|s| *s).await.is_ok() }).await;
        match ready {
            Ok(true) => Ok(()),
            _ => Err(IpamError::NotReady),
        }
    }

    async fn network(&self, name: &str) -> Result<Arc<NetState>, IpamError> {
        self.wait_synced(Duration::from_secs(2)).await?;
        if let Some(st) = self.nets_read().get(name) {
            return Ok(st.clone());
        }
        if let Some(why) = self
            .unbound
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Err(IpamError::NotInRack(why.clone()));
        }
        // The watch may lag a network created a moment ago.
        match self.store.get_network(name).await? {
            Some(n) => {
                let mut nets = self.nets_write();
                let st = nets
                    .entry(name.to_string())
                    .or_insert_with(|| self.tracked(NetState::new(n.spec, n.create_revision)));
                Ok(st.clone())
            }
            None => Err(IpamError::UnknownNetwork(name.to_string())),
        }
    }

    async fn lock_attachment(&self, network: &str, key: &AttachmentKey) -> AttachGuard<'_> {
        let lk = (network.to_string(), key.0.clone(), key.1.clone());
        let m = {
            let mut map = self.attach_locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(lk.clone()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        AttachGuard {
            map: &self.attach_locks,
            key: lk,
            guard: Some(guard),
        }
    }

    fn is_mine(&self, l: &Lease, key: &AttachmentKey) -> bool {
        l.node == self.node && l.container_id == key.0 && l.ifname == key.1
    }

    // ---- the API ----

    pub async fn allocate(&self, a: AllocateArgs) -> Result<Allocated, IpamError> {
        validate_attachment(&a.container_id, &a.ifname)?;
        let net = self.network(&a.network).await?;
        let mut a = a;
        if a.requested.is_empty() && !a.annotated.is_empty() {
            a.requested = requested::from_annotation(&net, &a)?;
        }
        let key: AttachmentKey = (a.container_id.clone(), a.ifname.clone());
        let _g = self.lock_attachment(&a.network, &key).await;

        if let Some(sl) = net.existing(&key) {
            debug!(ip = %sl.lease.address, "allocation already held");
            requested::check_held(&a, &sl.lease)?;
            return Ok(Allocated {
                lease: sl.lease,
                network: net.effective_spec(),
                existing: true,
            });
        }
        // Sticky pods claim their identity's address first; they never take
        // an offline address (see engine/sticky.rs).
        let mut identity = None;
        if self.maybe_sticky(&net, &a) {
            match self.claim_identity(&net, &a).await? {
                Some(sticky::Claim::Done(done)) => return Ok(*done),
                Some(sticky::Claim::Fresh(i)) => identity = Some(i),
                None => {}
            }
        }
        if !a.requested.is_empty() {
            // Requested addresses are claimed through etcd only: an offline
            // standby address would not be the one asked for.
            if let Some(done) = self.adopt_uncertain(&net, &key).await? {
                requested::check_held(&a, &done.lease)?;
                return Ok(done);
            }
            return self.allocate_requested(&net, &a, identity).await;
        }
        if identity.is_none() && self.journal.is_some() {
            // Suspect: wait for the prober's verdict rather than spend the
            // reserve on what may be one slow request.
            let mode = match self.mode() {
                Mode::Suspect => self.await_verdict().await,
                m => m,
            };
            if mode != Mode::Online || self.from_persisted() {
                return self.allocate_offline(&net, &a).await;
            }
        }
        if let Some(done) = self.adopt_uncertain(&net, &key).await? {
            return Ok(done);
        }

        let mut reserve_wait = Duration::ZERO;
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            attempts += 1;
            let Some(pick) = net.pick() else {
                // Last resort: this node's own reserve.
                if let Some(done) = self.allocate_from_standby(&net, &a).await? {
                    return Ok(done);
                }
                // Other nodes give their reserves back when the rack runs
                // short (every RESERVE_INTERVAL); with capacity equal to
                // demand, waiting for that beats failing the ADD.
                if net.foreign_standby() > 0 && reserve_wait < MAX_RESERVE_WAIT {
                    tokio::time::sleep(RESERVE_POLL).await;
                    reserve_wait += RESERVE_POLL;
                    attempts -= 1;
                    continue;
                }
                let (capacity, allocated, _) = net.usage();
                return Err(IpamError::Exhausted {
                    network: a.network.clone(),
                    allocated,
                    capacity,
                });
            };
            let ip = pick.ip;
            let lease = Lease {
                network: a.network.clone(),
                address: ip,
                node: self.node.clone(),
                container_id: a.container_id.clone(),
                ifname: a.ifname.clone(),
                pod: a.pod.clone(),
                created_unix_ms: now_ms(),
                state: rackline_model::LeaseState::Active,
                sticky: identity.is_some(),
                new_identity: identity.is_some(),
                expires_unix_ms: None,
                conflict: None,
                settings: net.pod_settings(),
            };
            let created = match &identity {
                None => {
                    self.store
                        .create_lease(&lease, net.create_revision, pick.guard.as_ref())
                        .await
                }
                Some(i) => match self
                    .create_sticky(&net, &lease, i, pick.guard.as_ref())
                    .await
                {
                    Ok(Some(c)) => Ok(c),
                    Ok(None) => {
                        // Someone created this identity meanwhile: claim
                        // it the regular way (it may be live elsewhere).
                        net.unpick(ip);
                        match self.claim_identity(&net, &a).await? {
                            Some(sticky::Claim::Done(done)) => return Ok(*done),
                            Some(sticky::Claim::Fresh(i)) => identity = Some(i),
                            None => identity = None,
                        }
                        continue;
                    }
                    Err(e) => Err(e),
                },
            };
            match created {
                Ok(CreateLease::Created { mod_revision }) => {
                    self.note_reachable();
                    net.observe(
                        StoredLease {
                            lease: lease.clone(),
                            mod_revision,
                        },
                        &self.node,
                    );
                    if pick.guard.is_some() || pick.borrowed {
                        self.block_demand.notify_one();
                    }
                    info!(network = %a.network, %ip, borrowed = pick.borrowed, container = %a.container_id, ifname = %a.ifname, pod = %a.pod.display(), "leased");
                    return Ok(Allocated {
                        lease,
                        network: net.effective_spec(),
                        existing: false,
                    });
                }
                Ok(CreateLease::Taken(owner)) => {
                    // Our cache lagged; the address stays marked taken and
                    // the watch fills in the owner's record.
                    debug!(%ip, owner = ?owner.as_ref().map(|o| &o.node), "candidate already leased; next");
                }
                Ok(CreateLease::BlockChanged) => {
                    // Our view of the block is stale; the watch brings the
                    // new one. Free the mark and try another address.
                    debug!(%ip, "block changed under the candidate; next");
                    net.unpick(ip);
                    net.drop_block_at(ip);
                }
                Ok(CreateLease::NetworkGone) => {
                    net.unpick(ip);
                    self.nets_write().retain(|_, st| !Arc::ptr_eq(st, &net));
                    return Err(IpamError::UnknownNetwork(a.network.clone()));
                }
                Err(StoreError::Unavailable(m)) => {
                    // The request may have been applied: remember it so the
                    // retry, the DEL or the journal replay resolves it
                    // instead of leaking it.
                    net.mark_uncertain(&key, ip);
                    self.note_unreachable(&m);
                    if self.journal.is_none() {
                        return Err(IpamError::Unavailable(m));
                    }
                    if self.await_verdict().await != Mode::Online || identity.is_some() {
                        return self.allocate_offline(&net, &a).await;
                    }
                    // etcd answers again, but the lost create may still be
                    // on its way (queued behind a slow request): ask for the
                    // SAME key again. Create-if-absent on one key succeeds
                    // once, so the attachment cannot end up with two
                    // addresses, whichever of the two requests lands.
                    match self
                        .store
                        .create_lease(&lease, net.create_revision, pick.guard.as_ref())
                        .await
                    {
                        Ok(CreateLease::Created { mod_revision }) => {
                            net.observe(
                                StoredLease {
                                    lease: lease.clone(),
                                    mod_revision,
                                },
                                &self.node,
                            );
                            info!(network = %a.network, %ip, container = %a.container_id, ifname = %a.ifname, pod = %a.pod.display(), "leased (after a retry)");
                            return Ok(Allocated {
                                lease,
                                network: net.effective_spec(),
                                existing: false,
                            });
                        }
                        // Ours (the first request landed) or another's:
                        // reading the key settles which.
                        Ok(CreateLease::Taken(_)) => {
                            if let Some(done) = self.adopt_uncertain(&net, &key).await? {
                                return Ok(done);
                            }
                            continue;
                        }
                        Ok(CreateLease::BlockChanged) | Ok(CreateLease::NetworkGone) => {
                            // The first request failed the same guard.
                            net.resolve_absent(&key, ip);
                            continue;
                        }
                        Err(e) => {
                            self.note_store_error(&e);
                            return self.allocate_offline(&net, &a).await;
                        }
                    }
                }
                Err(e) => {
                    net.unpick(ip);
                    return Err(e.into());
                }
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }

    /// An earlier attempt for this attachment may have been written even
    /// though we never heard back: adopt it rather than take a second one.
    async fn adopt_uncertain(
        &self,
        net: &NetState,
        key: &AttachmentKey,
    ) -> Result<Option<Allocated>, IpamError> {
        for ip in net.take_uncertain(key) {
            match self.store.get_lease(&net.spec.name, ip).await {
                Ok(Some(sl)) if self.is_mine(&sl.lease, key) => {
                    let lease = sl.lease.clone();
                    net.observe(sl, &self.node);
                    return Ok(Some(Allocated {
                        lease,
                        network: net.effective_spec(),
                        existing: false,
                    }));
                }
                Ok(Some(sl)) => net.observe(sl, &self.node),
                Ok(None) => net.resolve_absent(key, ip),
                Err(e) => {
                    net.mark_uncertain(key, ip);
                    self.note_store_error(&e);
                    return Err(e.into());
                }
            }
        }
        Ok(None)
    }

    fn note_store_error(&self, e: &StoreError) {
        if let StoreError::Unavailable(m) = e {
            self.note_unreachable(m);
        }
    }

    /// Releases every lease this node holds for the attachment. Idempotent:
    /// an unknown network or attachment releases nothing and succeeds.
    pub async fn release(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.release_with(network, container_id, ifname, false)
            .await
    }

    /// `release`; `rollback` = the plugin undoes its own failed ADD (a
    /// sticky identity that ADD created goes with the lease).
    pub async fn release_with(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        rollback: bool,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.release_if(network, container_id, ifname, rollback, || true)
            .await
    }

    /// `release_with`, but only if `still_wanted()` holds once the
    /// attachment's lock is taken: a release the plugin spooled is dropped
    /// when an ADD of the same attachment removed the record meanwhile (the
    /// ADD removes it before it allocates, so whichever comes second under
    /// the lock sees the other's effect).
    pub async fn release_if(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        rollback: bool,
        still_wanted: impl FnOnce() -> bool,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_attachment(container_id, ifname)?;
        let net = match self.network(network).await {
            Ok(n) => n,
            Err(IpamError::UnknownNetwork(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let key: AttachmentKey = (container_id.to_string(), ifname.to_string());
        let _g = self.lock_attachment(network, &key).await;
        if !still_wanted() {
            return Ok(Vec::new());
        }
        if self.journal.is_some() {
            let mode = match self.mode() {
                Mode::Suspect => self.await_verdict().await,
                m => m,
            };
            if mode != Mode::Online || self.from_persisted() {
                return self.release_offline(&net, &key).await;
            }
        }
        match self.release_locked(&net, &key, |_| true, rollback).await {
            Err(IpamError::Unavailable(m)) if self.journal.is_some() => {
                self.note_unreachable(&m);
                if self.await_verdict().await == Mode::Online {
                    return self.release_locked(&net, &key, |_| true, rollback).await;
                }
                self.release_offline(&net, &key).await
            }
            other => other,
        }
    }

    async fn release_locked(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        should_release: impl Fn(&StoredLease) -> bool,
        rollback: bool,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.release_locked_for(net, key, should_release, rollback, None)
            .await
    }

    /// `release_locked`; `reclaim` names why the pod is known to be gone
    /// (`rackline_model::event::reclaim`: GC, the reconciler). Each lease
    /// is then marked with the reason before it is freed, so the IP event
    /// stream reports a reclaim rather than a DEL (one more etcd write per
    /// reclaimed lease, off the ADD/DEL path).
    pub(crate) async fn release_locked_for(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        should_release: impl Fn(&StoredLease) -> bool,
        rollback: bool,
        reclaim: Option<&str>,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        let name = net.spec.name.clone();
        let mut released = Vec::new();
        for (ip, rev) in net.held(key) {
            let mut rev = match rev {
                Some(r) => r,
                None => match self.store.get_lease(&name, ip).await {
                    Ok(Some(sl)) if self.is_mine(&sl.lease, key) => sl.mod_revision,
                    Ok(Some(sl)) => {
                        net.disown(key, ip);
                        net.observe(sl, &self.node);
                        continue;
                    }
                    Ok(None) => {
                        net.resolve_absent(key, ip);
                        continue;
                    }
                    Err(e) => {
                        self.note_store_error(&e);
                        return Err(e.into());
                    }
                },
            };
            if let Some(sl) = net.lease_at(ip) {
                if !should_release(&sl) {
                    continue;
                }
            }
            let mut settled = false;
            for _ in 0..3 {
                if let Some(reason) = reclaim {
                    rev = self.mark_reclaimed(net, ip, rev, reason).await?;
                }
                match self.retire_at(net, ip, rev, rollback).await {
                    Ok(true) => {
                        net.disown(key, ip);
                        info!(network = %name, %ip, container = %key.0, ifname = %key.1, "released");
                        released.push(ip);
                        settled = true;
                        break;
                    }
                    Ok(false) => match self.store.get_lease(&name, ip).await {
                        Ok(Some(sl)) if self.is_mine(&sl.lease, key) => rev = sl.mod_revision,
                        Ok(Some(sl)) => {
                            net.disown(key, ip);
                            net.observe(sl, &self.node);
                            settled = true;
                            break;
                        }
                        Ok(None) => {
                            net.forget(ip, 0);
                            net.resolve_absent(key, ip);
                            settled = true;
                            break;
                        }
                        Err(e) => {
                            self.note_store_error(&e);
                            return Err(e.into());
                        }
                    },
                    Err(e) => {
                        self.note_store_error(&e);
                        return Err(e.into());
                    }
                }
            }
            if !settled {
                // The record kept changing under us: report it so DEL fails
                // (code 11) and is retried, instead of claiming a release.
                return Err(IpamError::Contended(3));
            }
        }
        Ok(released)
    }

    pub async fn check(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Allocated>, IpamError> {
        validate_attachment(container_id, ifname)?;
        let net = self.network(network).await?;
        let key: AttachmentKey = (container_id.to_string(), ifname.to_string());
        Ok(net.existing(&key).map(|sl| Allocated {
            lease: sl.lease,
            network: net.effective_spec(),
            existing: true,
        }))
    }

    /// CNI GC: releases this node's leases on `network` whose attachment is
    /// not in `valid`, except those younger than the grace period (their ADD
    /// may be in flight and missing from the runtime's list).
    /// Returns the released leases and the network's prefix length.
    pub async fn gc(
        &self,
        network: &str,
        valid: &HashSet<AttachmentKey>,
    ) -> Result<(Vec<Lease>, u8), IpamError> {
        let net = match self.network(network).await {
            Ok(n) => n,
            Err(IpamError::UnknownNetwork(_)) => return Ok((Vec::new(), 32)),
            Err(e) => return Err(e),
        };
        let mut stale: Vec<AttachmentKey> = net
            .leases_of_node(&self.node)
            .into_iter()
            .map(|sl| (sl.lease.container_id, sl.lease.ifname))
            .filter(|k| !valid.contains(k))
            .collect();
        stale.sort();
        stale.dedup();
        let mut out = Vec::new();
        for key in stale {
            let _g = self.lock_attachment(network, &key).await;
            // Re-checked under the attachment lock: an ADD that completed
            // meanwhile made a young lease, which the grace keeps.
            let cutoff = now_ms() - self.gc_grace.as_millis() as i64;
            let before: Vec<Lease> = net
                .held(&key)
                .into_iter()
                .filter_map(|(ip, _)| net.lease_at(ip))
                .map(|sl| sl.lease)
                .collect();
            let freed = self
                .release_locked_for(
                    &net,
                    &key,
                    |sl| sl.lease.created_unix_ms <= cutoff,
                    false,
                    Some(rackline_model::event::reclaim::GC),
                )
                .await?;
            out.extend(before.into_iter().filter(|l| freed.contains(&l.address)));
        }
        if !out.is_empty() {
            info!(network, released = out.len(), "gc released stale leases");
            self.observed_reclaims(network, rackline_model::event::reclaim::GC, out.len());
        }
        Ok((out, net.spec.subnet.prefix()))
    }

    /// The leak reconciler's release: frees the attachment's leases on
    /// `network` that were created at or before `cutoff_ms` (younger ones
    /// belong to an ADD that may still be in flight), exactly as CNI GC
    /// does — under the attachment's lock, a sticky lease kept for its pod
    /// like a DEL keeps it, each lease marked `reclaimedBy: reconcile` —
    /// and counts them. Never offline: a reclaim is not worth a journal
    /// entry, it waits for etcd.
    pub async fn reclaim(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        cutoff_ms: i64,
    ) -> Result<Vec<Lease>, IpamError> {
        validate_attachment(container_id, ifname)?;
        let net = match self.network(network).await {
            Ok(n) => n,
            Err(IpamError::UnknownNetwork(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !self.etcd_ok() || self.from_persisted() {
            return Err(IpamError::Unavailable(
                "etcd is unreachable or not loaded yet: reclaims wait for it".into(),
            ));
        }
        let key: AttachmentKey = (container_id.to_string(), ifname.to_string());
        let _g = self.lock_attachment(network, &key).await;
        let before: Vec<Lease> = net
            .held(&key)
            .into_iter()
            .filter_map(|(ip, _)| net.lease_at(ip))
            .map(|sl| sl.lease)
            .collect();
        let reason = rackline_model::event::reclaim::RECONCILE;
        let freed = self
            .release_locked_for(
                &net,
                &key,
                |sl| sl.lease.state.is_active() && sl.lease.created_unix_ms <= cutoff_ms,
                false,
                Some(reason),
            )
            .await?;
        let out: Vec<Lease> = before
            .into_iter()
            .filter(|l| freed.contains(&l.address))
            .collect();
        if !out.is_empty() {
            self.observed_reclaims(network, reason, out.len());
        }
        Ok(out)
    }

    pub async fn status(&self, network: &str) -> Result<StatusInfo, IpamError> {
        let net = self.network(network).await?;
        let (capacity, allocated, available) = net.usage();
        let etcd_connected = self.etcd_ok();
        // Never "can add pods" while /readyz says not ready.
        if let rackline_telemetry::Readiness::NotReady(reason) = self.readiness() {
            return Ok(StatusInfo {
                capacity,
                allocated,
                available,
                etcd_connected,
                can_allocate: false,
                reason,
            });
        }
        let reserve = if self.journal.is_some() {
            net.standby_count()
        } else {
            0
        };
        let mode = self.mode();
        let (can_allocate, reason) = if mode == Mode::Offline && reserve > 0 {
            (
                true,
                format!(
                    "{}; serving from {reserve} standby address(es)",
                    self.mode_detail()
                ),
            )
        } else if mode == Mode::Offline {
            (
                false,
                format!("{}; no standby address is left", self.mode_detail()),
            )
        } else if mode == Mode::Suspect {
            (true, self.mode_detail())
        } else if available == 0 {
            (
                false,
                format!("network {network:?} is exhausted ({allocated}/{capacity} in use)"),
            )
        } else {
            (true, String::new())
        };
        Ok(StatusInfo {
            capacity,
            allocated,
            available,
            etcd_connected,
            can_allocate,
            reason,
        })
    }
}
