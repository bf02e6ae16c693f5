//! Engine tests against an in-memory store that behaves like the etcd
//! transactions (create-if-absent per key, delete-if-revision) and can lose
//! answers. Two engines over one store model two nodes whose caches lag.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackline_model::{Keys, Lease, NetworkSpec, PodRef};
use rackline_store::{BlockGuard, CreateLease, Snapshot, StoreError, StoredLease, StoredNetwork};

use crate::engine::{AllocateArgs, Engine, IpamError};
use crate::store::LeaseStore;

#[derive(Default)]
struct FakeStore {
    rev: AtomicI64,
    leases: Mutex<HashMap<(String, Ipv4Addr), StoredLease>>,
    networks: Mutex<HashMap<String, StoredNetwork>>,
    /// Block key -> mod revision.
    blocks: Mutex<HashMap<String, i64>>,
    /// Apply the next create, then answer "unavailable" (a lost response).
    lose_next_create_answer: AtomicBool,
    /// Refuse everything, as if etcd were down.
    down: AtomicBool,
}

impl FakeStore {
    fn add_network(&self, spec: NetworkSpec) -> StoredNetwork {
        let n = StoredNetwork {
            spec: spec.clone(),
            create_revision: self.rev.fetch_add(1, Ordering::SeqCst) + 1,
        };
        self.networks
            .lock()
            .unwrap()
            .insert(spec.name.clone(), n.clone());
        n
    }

    fn live(&self) -> Vec<Lease> {
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
            return Ok(CreateLease::Taken(Some(o.lease.clone())));
        }
        let rev = self.rev.fetch_add(1, Ordering::SeqCst) + 1;
        m.insert(
            k,
            StoredLease {
                lease: lease.clone(),
                mod_revision: rev,
            },
        );
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
                let rev = self.rev.fetch_add(1, Ordering::SeqCst) + 1;
                m.insert(
                    k,
                    StoredLease {
                        lease: lease.clone(),
                        mod_revision: rev,
                    },
                );
                Ok(Some(rev))
            }
            _ => Ok(None),
        }
    }
}

fn spec(subnet: &str, gw: &str) -> NetworkSpec {
    NetworkSpec {
        name: "prod".into(),
        subnet: subnet.parse().unwrap(),
        gateway: gw.parse().unwrap(),
        master: "uplink0".into(),
        mtu: 0,
        vlan: None,
        exclude: vec![],
        routes: vec![],
        host_routes: vec![],
        block_size: 16,
    }
}

fn engine(node: &str, store: &Arc<FakeStore>, grace: Duration) -> Arc<Engine<Arc<FakeStore>>> {
    let e = Engine::new(node.into(), Keys::new("/rackline"), store.clone(), grace);
    let nets: Vec<StoredNetwork> = store.networks.lock().unwrap().values().cloned().collect();
    e.apply_snapshot(Snapshot {
        networks: nets,
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.set_etcd_ok(true);
    Arc::new(e)
}

fn args(cid: &str) -> AllocateArgs {
    AllocateArgs {
        network: "prod".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        pod: PodRef {
            namespace: "default".into(),
            name: cid.into(),
            uid: String::new(),
        },
    }
}

/// The invariant: no address has two records, no attachment two addresses.
fn assert_no_duplicates(store: &FakeStore) {
    let live = store.live();
    let mut by_attachment: HashMap<(String, String, String), usize> = HashMap::new();
    for l in &live {
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
    let (released, prefix) = e.gc("prod", &valid).await.unwrap();
    assert_eq!(prefix, 24);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].address, gone.lease.address);
    assert_eq!(store.live().len(), 1);
    // With a grace period a just-made lease survives a GC that does not list it.
    let patient = engine("n1", &store, Duration::from_secs(3600));
    patient.allocate(args("young")).await.unwrap();
    assert!(patient.gc("prod", &valid).await.unwrap().0.is_empty());
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

// ---- rack-bound networks ----

use rackline_model::{Block, RackNet};
use rackline_store::StoredBlock;

fn racknet(rack: &str, range: &str) -> RackNet {
    RackNet {
        rack: rack.into(),
        network: "prod".into(),
        subnet: "10.10.0.0/16".parse().unwrap(),
        gateway: "10.10.0.1".parse().unwrap(),
        ranges: vec![range.parse().unwrap()],
    }
}

fn block(store: &FakeStore, rack: &str, first: &str, size: u32, node: &str) -> StoredBlock {
    let rev = store.rev.fetch_add(1, Ordering::SeqCst) + 1;
    let b = Block {
        network: "prod".into(),
        rack: rack.into(),
        first: first.parse().unwrap(),
        size,
        node: node.into(),
        created_unix_ms: 0,
    };
    let key = Keys::new("/rackline").block("prod", b.first);
    store.blocks.lock().unwrap().insert(key, rev);
    StoredBlock {
        block: b,
        mod_revision: rev,
    }
}

fn racked_engine(
    node: &str,
    rack: &str,
    store: &Arc<FakeStore>,
    racknets: &[RackNet],
    blocks: &[StoredBlock],
) -> Arc<Engine<Arc<FakeStore>>> {
    let e = Engine::with_rack(
        node.into(),
        Some(rack.into()),
        Keys::new("/rackline"),
        store.clone(),
        Duration::ZERO,
    );
    e.apply_snapshot(Snapshot {
        networks: store.networks.lock().unwrap().values().cloned().collect(),
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: racknets.to_vec(),
        blocks: blocks.to_vec(),
        nodes: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.set_etcd_ok(true);
    Arc::new(e)
}

fn ip_u32(s: &str) -> u32 {
    u32::from(s.parse::<Ipv4Addr>().unwrap())
}

#[tokio::test]
async fn own_blocks_first_then_borrow_inside_the_rack_only() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/16", "10.10.0.1"));
    let rn = [
        racknet("a", "10.10.1.0-10.10.1.31"),
        racknet("b", "10.10.2.0/24"),
    ];
    let blocks = [
        block(&store, "a", "10.10.1.0", 16, "n1"),
        block(&store, "a", "10.10.1.16", 16, "n2"),
        block(&store, "b", "10.10.2.0", 16, "n9"),
    ];
    let n1 = racked_engine("n1", "a", &store, &rn, &blocks);
    let mut got = Vec::new();
    for i in 0..20 {
        got.push(u32::from(
            n1.allocate(args(&format!("c{i}")))
                .await
                .unwrap()
                .lease
                .address,
        ));
    }
    // 16 from its own block, then 4 borrowed from n2's block in rack a.
    assert!(got[..16]
        .iter()
        .all(|x| (ip_u32("10.10.1.0")..=ip_u32("10.10.1.15")).contains(x)));
    assert!(got[16..]
        .iter()
        .all(|x| (ip_u32("10.10.1.16")..=ip_u32("10.10.1.31")).contains(x)));
    // n2 gets the rest of rack a, never rack b's range.
    let n2 = racked_engine("n2", "a", &store, &rn, &blocks);
    let mut more = 0;
    while let Ok(a) = n2.allocate(args(&format!("d{more}"))).await {
        let x = u32::from(a.lease.address);
        assert!(
            (ip_u32("10.10.1.0")..=ip_u32("10.10.1.31")).contains(&x),
            "{x} outside rack a"
        );
        more += 1;
    }
    // 1:1 capacity: every address of the rack was handed out exactly once.
    assert_eq!(got.len() + more, 32);
    let all: BTreeSet<Ipv4Addr> = store.live().iter().map(|l| l.address).collect();
    assert_eq!(all.len(), 32);
    assert_no_duplicates(&store);
    let err = n1.allocate(args("late")).await.unwrap_err();
    assert!(matches!(err, IpamError::Exhausted { .. }), "{err}");
}

#[tokio::test]
async fn a_stale_block_guard_moves_on_instead_of_writing() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/16", "10.10.0.1"));
    let rn = [racknet("a", "10.10.1.0-10.10.1.31")];
    let b1 = block(&store, "a", "10.10.1.0", 16, "n1");
    let n1 = racked_engine("n1", "a", &store, &rn, std::slice::from_ref(&b1));
    // The block is reassigned behind n1's back (its revision moves).
    let key = Keys::new("/rackline").block("prod", b1.block.first);
    store.blocks.lock().unwrap().insert(key, 9_999);
    let a = n1.allocate(args("c1")).await.unwrap();
    // The guarded write failed; the node stopped treating the block as its
    // own and took the address as a plain create-if-absent (a borrow).
    assert_eq!(store.live().len(), 1);
    assert_eq!(store.live()[0].address, a.lease.address);
    let net = n1.networks().pop().unwrap();
    assert!(net.block_usage().own_blocks.is_empty());
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn a_node_whose_rack_has_no_share_gets_a_clear_error() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/16", "10.10.0.1"));
    let rn = [racknet("a", "10.10.1.0/27")];
    let n = racked_engine("n5", "c", &store, &rn, &[]);
    let err = n.allocate(args("c1")).await.unwrap_err();
    assert!(matches!(err, IpamError::NotInRack(_)), "{err}");
    assert!(err.to_string().contains("rack bind c prod"), "{err}");
    assert!(store.live().is_empty());
}

// ---- etcd outage: standby reserve + journal ----

fn outage_engine(
    node: &str,
    store: &Arc<FakeStore>,
    dir: &std::path::Path,
    standby: usize,
) -> Arc<Engine<Arc<FakeStore>>> {
    let journal = Arc::new(crate::journal::Journal::open(dir, node).unwrap());
    let e = Engine::new(
        node.into(),
        Keys::new("/rackline"),
        store.clone(),
        Duration::ZERO,
    )
    .with_outage_journal(journal, standby);
    e.apply_snapshot(Snapshot {
        networks: store.networks.lock().unwrap().values().cloned().collect(),
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.set_etcd_ok(true);
    Arc::new(e)
}

fn standby_records(store: &FakeStore) -> usize {
    store.live().iter().filter(|l| l.is_standby()).count()
}

#[tokio::test]
async fn while_etcd_is_away_standby_addresses_are_used_and_journalled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 4);
    e.maintain_standby().await;
    assert_eq!(
        standby_records(&store),
        0,
        "no reserve on a network this node never used"
    );
    let online = e.allocate(args("on")).await.unwrap();
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 4);
    assert!(!store
        .live()
        .iter()
        .any(|l| l.is_standby() && l.address == online.lease.address));

    // etcd goes away.
    store.down.store(true, Ordering::SeqCst);
    e.set_etcd_ok(false);
    let mut offline = Vec::new();
    for i in 0..4 {
        offline.push(
            e.allocate(args(&format!("off{i}")))
                .await
                .unwrap()
                .lease
                .address,
        );
    }
    let err = e.allocate(args("off9")).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err}");
    // Idempotent offline too.
    assert_eq!(
        e.allocate(args("off0")).await.unwrap().lease.address,
        offline[0]
    );
    // A release while away, and an online lease released while away.
    e.release("prod", "off1", "eth0").await.unwrap();
    e.release("prod", "on", "eth0").await.unwrap();
    assert!(e.has_journal_entries());

    // etcd is back: replay makes etcd match what was acknowledged.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(e.replay_journal().await.unwrap(), 6);
    assert!(!e.has_journal_entries());
    let live = store.live();
    let active: BTreeMap<String, Ipv4Addr> = live
        .iter()
        .filter(|l| !l.is_standby())
        .map(|l| (l.container_id.clone(), l.address))
        .collect();
    assert_eq!(active.len(), 3, "{active:?}");
    for (i, ip) in offline.iter().enumerate() {
        if i == 1 {
            assert!(!active.contains_key("off1"));
        } else {
            assert_eq!(active[&format!("off{i}")], *ip);
        }
    }
    assert!(!active.contains_key("on"));
    assert_eq!(standby_records(&store), 0);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn a_restart_before_the_replay_keeps_offline_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 2);
    e.allocate(args("first")).await.unwrap();
    e.maintain_standby().await;
    store.down.store(true, Ordering::SeqCst);
    e.set_etcd_ok(false);
    let ip = e.allocate(args("c1")).await.unwrap().lease.address;
    drop(e);
    // ipamd restarts once etcd answers again; etcd still shows a standby
    // record for `ip`, the journal says it belongs to c1.
    store.down.store(false, Ordering::SeqCst);
    let e2 = outage_engine("n1", &store, dir.path(), 2);
    let again = e2.allocate(args("c1")).await.unwrap();
    assert!(
        again.existing,
        "the restarted ipamd must know c1's offline lease"
    );
    assert_eq!(again.lease.address, ip);
    e2.replay_journal().await.unwrap();
    let l = store.live().into_iter().find(|l| l.address == ip).unwrap();
    assert_eq!(l.container_id, "c1");
    assert!(!l.is_standby());
}

#[tokio::test]
async fn the_reserve_is_given_back_when_the_pool_runs_short() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    // 13 usable addresses.
    store.add_network(spec("10.0.0.0/28", "10.0.0.1"));
    let n1 = outage_engine("n1", &store, dir.path(), 2);
    n1.allocate(args("n1-pod")).await.unwrap();
    n1.maintain_standby().await;
    assert_eq!(standby_records(&store), 2);
    let n2 = outage_engine("n2", &store, dir.path(), 2);
    for i in 0..7 {
        n2.allocate(args(&format!("c{i}"))).await.unwrap();
    }
    // Fewer than 4 x target free: n1 gives its reserve back (after its
    // cache sees the new leases, as its watch would deliver them).
    for l in store.leases.lock().unwrap().values() {
        n1.apply_change(rackline_store::Change::Put {
            key: Keys::new("/rackline").lease("prod", l.lease.address),
            value: serde_json::to_vec(&l.lease).unwrap(),
            create_revision: l.mod_revision,
            mod_revision: l.mod_revision,
        });
    }
    n1.maintain_standby().await;
    assert_eq!(standby_records(&store), 0);
    // Every address remains allocatable by some node (n2 re-reads, as its
    // watch would tell it about the deleted reserve records).
    let n2 = outage_engine("n2", &store, dir.path(), 2);
    let mut n = 8; // 7 on n2 + 1 on n1
    while n2.allocate(args(&format!("c{n}"))).await.is_ok() {
        n += 1;
    }
    assert_eq!(n, 13);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn pods_get_their_own_racks_subnet_and_gateway() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/24", "10.10.0.1"));
    let rn = [RackNet {
        rack: "b".into(),
        network: "prod".into(),
        subnet: "10.11.0.0/24".parse().unwrap(),
        gateway: "10.11.0.1".parse().unwrap(),
        ranges: vec![],
    }];
    let blocks = [block(&store, "b", "10.11.0.16", 16, "n3")];
    let n3 = racked_engine("n3", "b", &store, &rn, &blocks);
    let a = n3.allocate(args("c1")).await.unwrap();
    assert_eq!(a.network.subnet.to_string(), "10.11.0.0/24");
    assert_eq!(a.network.gateway.to_string(), "10.11.0.1");
    assert!(a.network.subnet.contains(a.lease.address));
    assert!((ip_u32("10.11.0.16")..=ip_u32("10.11.0.31")).contains(&u32::from(a.lease.address)));
}

#[tokio::test]
async fn a_rack_bound_node_keeps_its_reserve_inside_its_own_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/16", "10.10.0.1"));
    let rn = [racknet("a", "10.10.1.0-10.10.1.255")];
    let blocks = [block(&store, "a", "10.10.1.0", 16, "n1")];
    let e = racked_engine("n1", "a", &store, &rn, &blocks);
    let journal = Arc::new(crate::journal::Journal::open(dir.path(), "n1").unwrap());
    let e = Arc::new(
        Arc::try_unwrap(e)
            .ok()
            .expect("sole owner")
            .with_outage_journal(journal, 4),
    );
    e.allocate(args("c1")).await.unwrap();
    e.maintain_standby().await;
    let reserve: Vec<Lease> = store
        .live()
        .into_iter()
        .filter(|l| l.is_standby())
        .collect();
    assert_eq!(reserve.len(), 4, "{reserve:?}");
    assert!(reserve
        .iter()
        .all(|l| (ip_u32("10.10.1.0")..=ip_u32("10.10.1.15")).contains(&u32::from(l.address))));
}
