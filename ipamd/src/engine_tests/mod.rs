//! Engine tests against an in-memory store that behaves like the etcd
//! transactions (create-if-absent per key, delete-if-revision) and can lose
//! answers. Two engines over one store model two nodes whose caches lag.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::store::Keys;
use rackline_model::{Identity, Lease, NetworkSpec, PodRef};
use rackline_store::{
    BlockGuard, CreateLease, IdentityView, Snapshot, StickyWrite, StoreError, StoredIdentity,
    StoredLease, StoredNetwork,
};

use crate::engine::{AllocateArgs, Engine, IpamError};
use crate::store::LeaseStore;

#[derive(Default)]
pub(super) struct FakeStore {
    pub(super) rev: AtomicI64,
    pub(super) leases: Mutex<LeaseMap>,
    pub(super) networks: Mutex<HashMap<String, StoredNetwork>>,
    /// Block key -> mod revision.
    pub(super) blocks: Mutex<HashMap<String, i64>>,
    /// Apply the next create, then answer "unavailable" (a lost response).
    pub(super) lose_next_create_answer: AtomicBool,
    /// Refuse everything, as if etcd were down.
    pub(super) down: AtomicBool,
    /// How many times the prober asked.
    pub(super) probes: std::sync::atomic::AtomicU64,
    /// (network, namespace, name) -> identity. TTLs are not modelled: the
    /// lab tests expiry against real etcd.
    pub(super) identities: Mutex<HashMap<(String, String, String), StoredIdentity>>,
    /// TTLs given to records by `replace_lease_expiring`.
    pub(super) ttls: Mutex<HashMap<(String, Ipv4Addr), u64>>,
    /// Registered nodes' addresses (`node_addresses`).
    pub(super) node_addrs: Mutex<Vec<(Ipv4Addr, String)>>,
}

/// Lease records by (network, address).
type LeaseMap = HashMap<(String, Ipv4Addr), StoredLease>;

impl FakeStore {
    /// Writes `lease` at `k` in `m` (the locked lease map) at the next
    /// revision, and returns that revision.
    fn put(&self, m: &mut LeaseMap, k: (String, Ipv4Addr), lease: &Lease) -> i64 {
        let rev = self.rev.fetch_add(1, Ordering::SeqCst) + 1;
        m.insert(
            k,
            StoredLease {
                lease: lease.clone(),
                mod_revision: rev,
            },
        );
        rev
    }

    pub(super) fn add_network(&self, spec: NetworkSpec) -> StoredNetwork {
        let rev = self.rev.fetch_add(1, Ordering::SeqCst) + 1;
        let n = StoredNetwork {
            spec: spec.clone(),
            create_revision: rev,
            mod_revision: rev,
        };
        self.networks
            .lock()
            .unwrap()
            .insert(spec.name.clone(), n.clone());
        n
    }

    pub(super) fn live(&self) -> Vec<Lease> {
        self.leases
            .lock()
            .unwrap()
            .values()
            .map(|l| l.lease.clone())
            .collect()
    }

    fn check_down(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("fake etcd is down".into()))
        } else {
            Ok(())
        }
    }
}

impl LeaseStore for Arc<FakeStore> {
    async fn create_lease(
        &self,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> Result<CreateLease, StoreError> {
        self.check_down()?;
        tokio::task::yield_now().await;
        let nets = self.networks.lock().unwrap();
        if nets.get(&lease.network).map(|n| n.create_revision) != Some(network_revision) {
            return Ok(CreateLease::NetworkGone);
        }
        let mut m = self.leases.lock().unwrap();
        let k = (lease.network.clone(), lease.address);
        if let Some(b) = block {
            if !m.contains_key(&k)
                && self.blocks.lock().unwrap().get(&b.key) != Some(&b.mod_revision)
            {
                return Ok(CreateLease::BlockChanged);
            }
        }
        if let Some(o) = m.get(&k) {
            return Ok(CreateLease::Taken(Some(Box::new(o.lease.clone()))));
        }
        let rev = self.put(&mut m, k, lease);
        if self.lose_next_create_answer.swap(false, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("answer lost".into()));
        }
        Ok(CreateLease::Created { mod_revision: rev })
    }

    async fn delete_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
        mod_revision: i64,
    ) -> Result<bool, StoreError> {
        self.check_down()?;
        let mut m = self.leases.lock().unwrap();
        let k = (network.to_string(), ip);
        match m.get(&k) {
            Some(l) if l.mod_revision == mod_revision => {
                m.remove(&k);
                self.rev.fetch_add(1, Ordering::SeqCst);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn get_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
    ) -> Result<Option<StoredLease>, StoreError> {
        self.check_down()?;
        Ok(self
            .leases
            .lock()
            .unwrap()
            .get(&(network.to_string(), ip))
            .cloned())
    }

    async fn get_network(&self, name: &str) -> Result<Option<StoredNetwork>, StoreError> {
        self.check_down()?;
        Ok(self.networks.lock().unwrap().get(name).cloned())
    }

    async fn replace_lease_expiring(
        &self,
        lease: &Lease,
        mod_revision: i64,
        ttl_secs: u64,
    ) -> Result<Option<i64>, StoreError> {
        // No clock here: the TTL is recorded and tests expire it by hand.
        let r = self.replace_lease(lease, mod_revision).await?;
        if r.is_some() {
            self.ttls
                .lock()
                .unwrap()
                .insert((lease.network.clone(), lease.address), ttl_secs);
        }
        Ok(r)
    }

    async fn node_addresses(&self) -> Result<Vec<(Ipv4Addr, String)>, StoreError> {
        self.check_down()?;
        Ok(self.node_addrs.lock().unwrap().clone())
    }

    async fn probe(&self) -> Result<(), StoreError> {
        self.probes.fetch_add(1, Ordering::SeqCst);
        self.check_down()
    }

    async fn replace_lease(
        &self,
        lease: &Lease,
        mod_revision: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.check_down()?;
        let mut m = self.leases.lock().unwrap();
        let k = (lease.network.clone(), lease.address);
        match m.get(&k) {
            Some(l) if l.mod_revision == mod_revision => {
                let rev = self.put(&mut m, k, lease);
                Ok(Some(rev))
            }
            _ => Ok(None),
        }
    }

    async fn get_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredIdentity>, StoreError> {
        self.check_down()?;
        let k = (network.to_string(), namespace.to_string(), name.to_string());
        Ok(self.identities.lock().unwrap().get(&k).cloned())
    }

    async fn identity_view(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<IdentityView>, StoreError> {
        let Some(identity) = self.get_identity(network, namespace, name).await? else {
            return Ok(None);
        };
        let lease = self.get_lease(network, identity.identity.address).await?;
        Ok(Some(IdentityView { identity, lease }))
    }

    async fn write_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity: &Identity,
        identity_rev: i64,
        _ttl_secs: Option<u64>,
        network_revision: Option<i64>,
        block: Option<&BlockGuard>,
    ) -> Result<StickyWrite, StoreError> {
        self.check_down()?;
        tokio::task::yield_now().await;
        if let Some(r) = network_revision {
            let nets = self.networks.lock().unwrap();
            if nets.get(&lease.network).map(|n| n.create_revision) != Some(r) {
                return Ok(StickyWrite::Changed);
            }
        }
        if let Some(b) = block {
            if self.blocks.lock().unwrap().get(&b.key) != Some(&b.mod_revision) {
                return Ok(StickyWrite::Changed);
            }
        }
        let mut m = self.leases.lock().unwrap();
        let mut ids = self.identities.lock().unwrap();
        let lk = (lease.network.clone(), lease.address);
        let ik = (
            identity.network.clone(),
            identity.namespace.clone(),
            identity.name.clone(),
        );
        let lease_ok = m.get(&lk).map(|l| l.mod_revision).unwrap_or(0) == lease_rev;
        let ident_ok = ids.get(&ik).map(|i| i.mod_revision).unwrap_or(0) == identity_rev;
        if !(lease_ok && ident_ok) {
            return Ok(StickyWrite::Changed);
        }
        let rev = self.put(&mut m, lk, lease);
        ids.insert(
            ik,
            StoredIdentity {
                identity: identity.clone(),
                mod_revision: rev,
            },
        );
        Ok(StickyWrite::Done { mod_revision: rev })
    }

    async fn delete_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity_rev: i64,
    ) -> Result<bool, StoreError> {
        self.check_down()?;
        let mut m = self.leases.lock().unwrap();
        let mut ids = self.identities.lock().unwrap();
        let lk = (lease.network.clone(), lease.address);
        let ik = (
            lease.network.clone(),
            lease.pod.namespace.clone(),
            lease.pod.name.clone(),
        );
        if m.get(&lk).map(|l| l.mod_revision) != Some(lease_rev)
            || ids.get(&ik).map(|i| i.mod_revision) != Some(identity_rev)
        {
            return Ok(false);
        }
        m.remove(&lk);
        ids.remove(&ik);
        self.rev.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }

    async fn delete_identity(
        &self,
        identity: &Identity,
        identity_rev: i64,
    ) -> Result<bool, StoreError> {
        self.check_down()?;
        let mut ids = self.identities.lock().unwrap();
        let ik = (
            identity.network.clone(),
            identity.namespace.clone(),
            identity.name.clone(),
        );
        if ids.get(&ik).map(|i| i.mod_revision) != Some(identity_rev) {
            return Ok(false);
        }
        ids.remove(&ik);
        self.rev.fetch_add(1, Ordering::SeqCst);
        Ok(true)
    }
}

/// Network "prod": every engine test's network.
pub(super) fn spec(subnet: &str, gw: &str) -> NetworkSpec {
    rackline_testkit::fixtures::network("prod", subnet, gw)
}

pub(super) fn engine(
    node: &str,
    store: &Arc<FakeStore>,
    grace: Duration,
) -> Arc<Engine<Arc<FakeStore>>> {
    let e = Engine::new(node.into(), Keys::new("/rackline"), store.clone(), grace);
    let nets: Vec<StoredNetwork> = store.networks.lock().unwrap().values().cloned().collect();
    e.apply_snapshot(Snapshot {
        networks: nets,
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.outage().note_reachable();
    Arc::new(e)
}

pub(super) fn args(cid: &str) -> AllocateArgs {
    AllocateArgs {
        network: "prod".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: PodRef {
            namespace: "default".into(),
            name: cid.into(),
            uid: String::new(),
        },
        ..Default::default()
    }
}

/// The invariant: no address has two records, no attachment two addresses.
pub(super) fn assert_no_duplicates(store: &FakeStore) {
    let live = store.live();
    let mut by_attachment: HashMap<(String, String, String), usize> = HashMap::new();
    // Standby records belong to no attachment.
    for l in live.iter().filter(|l| !l.is_standby()) {
        *by_attachment
            .entry((l.node.clone(), l.container_id.clone(), l.ifname.clone()))
            .or_default() += 1;
    }
    for (k, n) in by_attachment {
        assert_eq!(n, 1, "attachment {k:?} holds {n} leases");
    }
}

#[tokio::test]
async fn allocation_is_idempotent_per_attachment() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e.allocate(args("c1")).await.unwrap();
    assert!(!a.existing);
    let b = e.allocate(args("c1")).await.unwrap();
    assert!(b.existing);
    assert_eq!(a.lease.address, b.lease.address);
    let c = e.allocate(args("c2")).await.unwrap();
    assert_ne!(a.lease.address, c.lease.address);
    assert_eq!(store.live().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_allocating_concurrently_never_share_an_address() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    // Neither engine ever sees the other's leases (no watch): every
    // collision must be caught by the store's create-if-absent.
    let n1 = engine("n1", &store, Duration::ZERO);
    let n2 = engine("n2", &store, Duration::ZERO);
    let mut tasks = Vec::new();
    for i in 0..120 {
        let e = if i % 2 == 0 { n1.clone() } else { n2.clone() };
        tasks.push(tokio::spawn(async move {
            e.allocate(args(&format!("c{i}"))).await
        }));
    }
    let mut got = BTreeSet::new();
    for t in tasks {
        let a = t.await.unwrap().unwrap();
        assert!(
            got.insert(a.lease.address),
            "{} handed out twice",
            a.lease.address
        );
    }
    assert_eq!(got.len(), 120);
    assert_eq!(store.live().len(), 120);
    assert_no_duplicates(&store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_repeats_of_one_attachment_get_one_address() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            e.allocate(args("same")).await.unwrap()
        }));
    }
    let mut addrs = BTreeSet::new();
    for t in tasks {
        addrs.insert(t.await.unwrap().lease.address);
    }
    assert_eq!(addrs.len(), 1);
    assert_eq!(store.live().len(), 1);
}

#[tokio::test]
async fn a_lost_create_answer_is_adopted_by_the_retry_not_duplicated() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    store.lose_next_create_answer.store(true, Ordering::SeqCst);
    let err = e.allocate(args("c1")).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err}");
    assert_eq!(store.live().len(), 1, "the write did happen");
    let again = e.allocate(args("c1")).await.unwrap();
    assert_eq!(
        store.live().len(),
        1,
        "the retry must adopt, not allocate twice"
    );
    assert_eq!(again.lease.address, store.live()[0].address);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn a_lost_create_answer_is_released_by_del() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    store.lose_next_create_answer.store(true, Ordering::SeqCst);
    e.allocate(args("c1")).await.unwrap_err();
    let freed = e.release("prod", "c1", "eth0").await.unwrap();
    assert_eq!(freed.len(), 1);
    assert!(
        store.live().is_empty(),
        "DEL after a failed ADD must not leak"
    );
}

#[tokio::test]
async fn release_is_idempotent_and_never_frees_someone_elses_address() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e.allocate(args("c1")).await.unwrap();
    assert_eq!(
        e.release("prod", "c1", "eth0").await.unwrap(),
        vec![a.lease.address]
    );
    assert!(e.release("prod", "c1", "eth0").await.unwrap().is_empty());
    assert!(e.release("prod", "never", "eth0").await.unwrap().is_empty());
    assert!(e
        .release("no-such-net", "c1", "eth0")
        .await
        .unwrap()
        .is_empty());
    // Another node's lease is untouched by a release on this node.
    let n2 = engine("n2", &store, Duration::ZERO);
    let b = n2.allocate(args("c1")).await.unwrap();
    assert!(e.release("prod", "c1", "eth0").await.unwrap().is_empty());
    assert_eq!(store.live()[0].address, b.lease.address);
}

#[tokio::test]
async fn exhaustion_is_a_clear_error_and_every_address_is_usable() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/29", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    for i in 0..5 {
        e.allocate(args(&format!("c{i}"))).await.unwrap();
    }
    let err = e.allocate(args("c9")).await.unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
    assert!(err.to_string().contains("5 of 5"), "{err}");
    let st = e.status("prod").await.unwrap();
    assert!(!st.can_allocate);
    e.release("prod", "c3", "eth0").await.unwrap();
    e.allocate(args("c9")).await.unwrap();
}

#[tokio::test]
async fn gc_releases_only_stale_attachments_older_than_the_grace() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    e.allocate(args("keep")).await.unwrap();
    let gone = e.allocate(args("gone")).await.unwrap();
    let valid: HashSet<(String, String)> = [("keep".to_string(), "eth0".to_string())].into();
    let (released, prefix) = e.allocator().gc("prod", &valid).await.unwrap();
    assert_eq!(prefix, 24);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].address, gone.lease.address);
    assert_eq!(store.live().len(), 1);
    // With a grace period a just-made lease survives a GC that does not list it.
    let patient = engine("n1", &store, Duration::from_secs(3600));
    patient.allocate(args("young")).await.unwrap();
    assert!(patient
        .allocator()
        .gc("prod", &valid)
        .await
        .unwrap()
        .0
        .is_empty());
    assert_eq!(store.live().len(), 2);
}

#[tokio::test]
async fn etcd_down_means_try_again_later_and_nothing_written() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    store.down.store(true, Ordering::SeqCst);
    let err = e.allocate(args("c1")).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err}");
    // One failed call only makes ipamd suspect; once the prober gives up
    // (offline) and there is no reserve, STATUS says so.
    assert_eq!(e.outage().mode(), crate::engine::Mode::Suspect);
    e.outage().set_offline("test: the prober gave up");
    assert!(!e.status("prod").await.unwrap().can_allocate);
    store.down.store(false, Ordering::SeqCst);
    e.allocate(args("c1")).await.unwrap();
    assert_eq!(store.live().len(), 1);
}

#[tokio::test]
async fn a_recreated_network_refuses_leases_for_the_old_incarnation() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let err = e.allocate(args("c1")).await.unwrap_err();
    assert!(matches!(err, IpamError::UnknownNetwork(_)), "{err}");
    assert!(store.live().is_empty());
}

mod conflict;
mod infra;
mod network_update;
mod observe;
mod outage;
mod racks;
mod requested;
mod spool;
mod sticky;

/// A re-list whose snapshot was read before an Allocate committed must not make the engine
/// forget that lease: the Release that follows at once has to find and free it (otherwise it
/// answers "nothing held" and the lease leaks; the chaos soak found this during an etcd leader
/// change).
#[tokio::test]
async fn a_snapshot_older_than_a_lease_does_not_hide_it_from_release() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    // The re-list reads etcd here...
    let stale = Snapshot {
        networks: store.networks.lock().unwrap().values().cloned().collect(),
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    };
    // ...an Allocate commits...
    let a = e.allocate(args("c1")).await.unwrap();
    // ...and the older snapshot is applied afterwards.
    e.apply_snapshot(stale);
    assert_eq!(
        e.release("prod", "c1", "eth0").await.unwrap(),
        vec![a.lease.address],
        "the lease written after the snapshot was forgotten"
    );
    assert!(store.live().is_empty(), "the lease is still in etcd");
}
