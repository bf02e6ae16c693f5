//! Engine tests for etcd outages: the standby reserve, the journal, replay.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Keys;
use rackline_model::Lease;
use rackline_store::Snapshot;

use super::racks::{block, ip_u32, racked_engine, racknet};
use super::*;
use crate::engine::{Engine, IpamError, Mode, ProbePolicy};

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
    .with_outage_journal(journal, standby)
    .with_probe_policy(fast_probe());
    e.apply_snapshot(Snapshot {
        networks: store.networks.lock().unwrap().values().cloned().collect(),
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

/// The prober's policy, scaled down so tests take milliseconds.
pub(super) fn fast_probe() -> ProbePolicy {
    ProbePolicy {
        interval: Duration::from_millis(20),
        timeout: Duration::from_millis(200),
        offline_after_failures: 3,
        offline_after: Duration::from_secs(2),
        suspect_wait: Duration::from_secs(2),
    }
}

fn spawn_prober(e: &Arc<Engine<Arc<FakeStore>>>) -> tokio::sync::watch::Sender<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(e.clone().run_prober(rx));
    tx
}

/// What a watch would deliver: every lease in the store, as put events.
fn feed_leases(engine: &Engine<Arc<FakeStore>>, store: &FakeStore) {
    for l in store.leases.lock().unwrap().values() {
        engine.apply_change(rackline_store::Change::Put {
            key: Keys::new("/rackline").lease("prod", l.lease.address),
            value: serde_json::to_vec(&l.lease).unwrap(),
            create_revision: l.mod_revision,
            mod_revision: l.mod_revision,
        });
    }
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
    e.reserve().maintain_standby().await;
    assert_eq!(
        standby_records(&store),
        0,
        "no reserve on a network this node never used"
    );
    let online = e.allocate(args("on")).await.unwrap();
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 4);
    assert!(!store
        .live()
        .iter()
        .any(|l| l.is_standby() && l.address == online.lease.address));

    // etcd goes away.
    store.down.store(true, Ordering::SeqCst);
    e.outage().set_offline("test: etcd is down");
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
    assert!(e.outage().has_journal_entries());

    // etcd is back: replay makes etcd match what was acknowledged.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(e.reserve().replay_journal().await.unwrap(), 6);
    assert!(!e.outage().has_journal_entries());
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
    e.reserve().maintain_standby().await;
    store.down.store(true, Ordering::SeqCst);
    e.outage().set_offline("test: etcd is down");
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
    e2.reserve().replay_journal().await.unwrap();
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
    n1.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 2);
    let n2 = outage_engine("n2", &store, dir.path(), 2);
    for i in 0..7 {
        n2.allocate(args(&format!("c{i}"))).await.unwrap();
    }
    // Fewer than 4 x target free: n1 gives its reserve back (after its
    // cache sees the new leases, as its watch would deliver them).
    feed_leases(&n1, &store);
    n1.reserve().maintain_standby().await;
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

/// A drain marker put or removed, as the watch delivers it.
fn drain_change(e: &Engine<Arc<FakeStore>>, target: &rackline_model::DrainTarget, up: bool) {
    let key = Keys::new("/rackline").drain(target);
    e.apply_change(if up {
        rackline_store::Change::Put {
            key,
            value: b"{}".to_vec(),
            create_revision: 1,
            mod_revision: 1,
        }
    } else {
        rackline_store::Change::Delete {
            key,
            mod_revision: 2,
        }
    });
}

#[tokio::test]
async fn a_drain_marker_makes_the_node_give_its_whole_reserve_back() {
    use rackline_model::DrainTarget;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 4);
    e.allocate(args("pod")).await.unwrap();
    e.release("prod", "pod", "eth0").await.unwrap();
    e.reserve().maintain_standby().await;
    assert_eq!(
        standby_records(&store),
        4,
        "the idle node keeps its reserve"
    );

    // Another node's drain, or another rack's binding: nothing changes.
    drain_change(&e, &DrainTarget::Node("n2".into()), true);
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 4);

    drain_change(&e, &DrainTarget::Network("prod".into()), true);
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 0, "the network is being deleted");
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 0, "and no reserve is made again");

    // The delete was refused and the marker lifted: the reserve comes back.
    drain_change(&e, &DrainTarget::Network("prod".into()), false);
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 4);

    // Draining this node has the same effect, on every network.
    drain_change(&e, &DrainTarget::Node("n1".into()), true);
    assert!(e.mirror().node_drained());
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 0);

    // While etcd is unreachable nothing is given back: the node may be
    // handing those records out from its journal.
    drain_change(&e, &DrainTarget::Node("n1".into()), false);
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 4);
    e.outage().set_offline("test");
    drain_change(&e, &DrainTarget::Network("prod".into()), true);
    e.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 4);
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
    e.reserve().maintain_standby().await;
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

#[tokio::test]
async fn a_full_network_waits_for_other_nodes_reserves_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    // 13 usable addresses.
    store.add_network(spec("10.0.0.0/28", "10.0.0.1"));
    let n1 = outage_engine("n1", &store, dir.path(), 2);
    n1.allocate(args("n1-pod")).await.unwrap();
    n1.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 2);
    let n2 = outage_engine("n2", &store, dir.path(), 0);
    for i in 0..10 {
        n2.allocate(args(&format!("c{i}"))).await.unwrap();
    }
    // Full: 1 + 2 reserved + 10. n1 gives its reserve back a moment later
    // (its reserve task), and n2 learns of it through its watch.
    let giver = {
        let (n1, n2, store) = (n1.clone(), n2.clone(), store.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            feed_leases(&n1, &store);
            let before: Vec<Ipv4Addr> = store
                .live()
                .into_iter()
                .filter(|l| l.is_standby())
                .map(|l| l.address)
                .collect();
            n1.reserve().maintain_standby().await;
            for ip in before {
                n2.apply_change(rackline_store::Change::Delete {
                    key: Keys::new("/rackline").lease("prod", ip),
                    mod_revision: i64::MAX,
                });
            }
        })
    };
    let t0 = std::time::Instant::now();
    let got = n2.allocate(args("c10")).await.unwrap();
    assert!(t0.elapsed() >= Duration::from_millis(100), "it had to wait");
    giver.await.unwrap();
    assert!(!store
        .live()
        .iter()
        .any(|l| l.is_standby() && l.address == got.lease.address));
    assert_no_duplicates(&store);
}

// ---- online / suspect / offline ----

fn standby_addresses(store: &FakeStore) -> Vec<Ipv4Addr> {
    store
        .live()
        .iter()
        .filter(|l| l.is_standby())
        .map(|l| l.address)
        .collect()
}

#[tokio::test]
async fn one_failed_call_does_not_spend_the_reserve_while_etcd_answers_the_prober() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 4);
    e.allocate(args("warm")).await.unwrap();
    e.reserve().maintain_standby().await;
    let reserve = standby_addresses(&store);
    assert_eq!(reserve.len(), 4);
    let _stop = spawn_prober(&e);

    // One slow request: etcd applied the create but the answer was lost.
    store.lose_next_create_answer.store(true, Ordering::SeqCst);
    let got = e.allocate(args("c1")).await.unwrap();

    assert_eq!(
        e.outage().mode(),
        Mode::Online,
        "the prober found etcd healthy"
    );
    assert!(store.probes.load(Ordering::SeqCst) >= 1);
    assert!(
        !reserve.contains(&got.lease.address),
        "a healthy node spent a standby address on one failed call"
    );
    assert_eq!(standby_addresses(&store), reserve, "the reserve is intact");
    assert!(
        !e.outage().has_journal_entries(),
        "nothing was decided offline"
    );
    // The create that etcd applied is the pod's lease (adopted, not leaked).
    let c1: Vec<Lease> = store
        .live()
        .into_iter()
        .filter(|l| l.container_id == "c1")
        .collect();
    assert_eq!(c1.len(), 1, "{c1:?}");
    assert_eq!(c1[0].address, got.lease.address);
    assert!(e.status("prod").await.unwrap().can_allocate);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn a_release_that_fails_once_on_a_healthy_node_is_not_journalled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 4);
    e.allocate(args("c1")).await.unwrap();
    let _stop = spawn_prober(&e);
    // A failed call elsewhere left ipamd suspect; etcd is fine.
    e.outage().note_unreachable("a slow request");
    assert_eq!(e.outage().mode(), Mode::Suspect);
    e.release("prod", "c1", "eth0").await.unwrap();
    assert_eq!(e.outage().mode(), Mode::Online);
    assert!(!e.outage().has_journal_entries());
    assert!(!store.live().iter().any(|l| l.container_id == "c1"));
}

#[tokio::test]
async fn the_prober_turns_a_real_outage_offline_and_back_online() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 4);
    e.allocate(args("warm")).await.unwrap();
    e.reserve().maintain_standby().await;
    let reserve = standby_addresses(&store);
    let _stop = spawn_prober(&e);
    let mut modes = e.outage().mode_changes();

    store.down.store(true, Ordering::SeqCst);
    let got = e.allocate(args("c1")).await.unwrap();
    assert_eq!(
        e.outage().mode(),
        Mode::Offline,
        "{}",
        e.outage().mode_detail()
    );
    assert!(
        reserve.contains(&got.lease.address),
        "offline, the address comes from the reserve"
    );
    assert!(e.outage().has_journal_entries());
    assert!(store.probes.load(Ordering::SeqCst) >= 3);
    assert_eq!(
        crate::metrics::NodeView::mode(&*e),
        "offline",
        "the metric follows"
    );
    // Offline, further ADDs do not wait for a verdict.
    let t0 = std::time::Instant::now();
    e.allocate(args("c2")).await.unwrap();
    assert!(t0.elapsed() < Duration::from_millis(500));

    store.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(
        Duration::from_secs(2),
        modes.wait_for(|m| *m == Mode::Online),
    )
    .await
    .expect("one good probe brings ipamd back online")
    .unwrap();
    assert_eq!(e.reserve().replay_journal().await.unwrap(), 2);
    let c1 = store
        .live()
        .into_iter()
        .find(|l| l.container_id == "c1")
        .unwrap();
    assert_eq!(c1.address, got.lease.address);
    assert_no_duplicates(&store);
}

// ---- restart while etcd is unreachable: the persisted reserve ----

fn bare_engine(
    node: &str,
    store: &Arc<FakeStore>,
    dir: &std::path::Path,
    standby: usize,
) -> Arc<Engine<Arc<FakeStore>>> {
    let journal = Arc::new(crate::journal::Journal::open(dir, node).unwrap());
    Arc::new(
        Engine::new(
            node.into(),
            Keys::new("/rackline"),
            store.clone(),
            Duration::ZERO,
        )
        .with_outage_journal(journal, standby)
        .with_probe_policy(fast_probe()),
    )
}

fn persisted(dir: &std::path::Path, node: &str) -> crate::engine::Persisted {
    let bytes = std::fs::read(crate::engine::reserve_path(dir, node)).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn an_ipamd_restarted_while_etcd_is_down_serves_from_its_persisted_reserve() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 3);
    let warm = e.allocate(args("warm")).await.unwrap();
    e.reserve().maintain_standby().await;
    e.reserve().save_reserve().await;
    let reserve = standby_addresses(&store);
    assert_eq!(reserve.len(), 3);
    drop(e);

    // etcd goes away, then ipamd restarts: no snapshot to load.
    store.down.store(true, Ordering::SeqCst);
    let e2 = bare_engine("n1", &store, dir.path(), 3);
    let _stop = spawn_prober(&e2);
    assert!(
        e2.reserve().start_from_persisted(),
        "the persisted reserve is loaded"
    );
    assert!(e2.outage().from_persisted());
    let mut got = Vec::new();
    for i in 0..3 {
        let a = e2.allocate(args(&format!("c{i}"))).await.unwrap();
        assert!(reserve.contains(&a.lease.address), "{a:?}");
        got.push(a.lease.address);
    }
    got.sort();
    got.dedup();
    assert_eq!(got.len(), 3, "three distinct reserve addresses");
    let err = e2.allocate(args("c3")).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err}");
    // The pod started before the restart is known: a repeated ADD is
    // answered with its address, not a second one.
    let again = e2.allocate(args("warm")).await.unwrap();
    assert!(again.existing);
    assert_eq!(again.lease.address, warm.lease.address);
    e2.release("prod", "c2", "eth0").await.unwrap();

    // etcd is back: the journal goes in first (as the sync loop does), then
    // a snapshot replaces the persisted cache.
    store.down.store(false, Ordering::SeqCst);
    assert_eq!(e2.reserve().replay_journal().await.unwrap(), 4);
    e2.apply_snapshot(Snapshot {
        networks: store.networks.lock().unwrap().values().cloned().collect(),
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    assert!(!e2.outage().from_persisted());
    let active: BTreeMap<String, Ipv4Addr> = store
        .live()
        .iter()
        .filter(|l| !l.is_standby())
        .map(|l| (l.container_id.clone(), l.address))
        .collect();
    assert_eq!(active.len(), 3, "warm, c0, c1: {active:?}");
    assert!(!active.contains_key("c2"));
    assert_eq!(standby_records(&store), 0);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn the_persisted_reserve_never_lists_an_address_given_back_or_consumed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    // 13 usable addresses.
    store.add_network(spec("10.0.0.0/28", "10.0.0.1"));
    let n1 = outage_engine("n1", &store, dir.path(), 2);
    n1.allocate(args("n1-pod")).await.unwrap();
    n1.reserve().maintain_standby().await;
    n1.reserve().save_reserve().await;
    assert_eq!(persisted(dir.path(), "n1").networks[0].standby.len(), 2);
    // Another node fills the network: n1 gives its reserve back, and the
    // file says so before the records go.
    let n2 = outage_engine("n2", &store, dir.path(), 0);
    for i in 0..7 {
        n2.allocate(args(&format!("c{i}"))).await.unwrap();
    }
    feed_leases(&n1, &store);
    n1.reserve().maintain_standby().await;
    assert_eq!(standby_records(&store), 0);
    assert!(persisted(dir.path(), "n1").networks[0].standby.is_empty());
    // So a restart during an outage has nothing to hand out twice.
    drop(n1);
    store.down.store(true, Ordering::SeqCst);
    let again = bare_engine("n1", &store, dir.path(), 2);
    again.outage().set_offline("test: etcd is down");
    assert!(again.reserve().start_from_persisted());
    let err = again.allocate(args("x")).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err}");
}

#[tokio::test]
async fn a_persisted_reserve_older_than_the_limit_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 2);
    e.allocate(args("warm")).await.unwrap();
    e.reserve().maintain_standby().await;
    e.reserve().save_reserve().await;
    drop(e);
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.down.store(true, Ordering::SeqCst);
    let journal = Arc::new(crate::journal::Journal::open(dir.path(), "n1").unwrap());
    let old = Engine::new(
        "n1".into(),
        Keys::new("/rackline"),
        store.clone(),
        Duration::ZERO,
    )
    .with_outage_journal(journal, 2)
    .with_offline_start_max_age(Duration::from_millis(10));
    assert!(!old.reserve().start_from_persisted());
    assert!(!old.mirror().synced());
}

#[test]
fn a_lease_observed_in_a_state_a_snapshot_replaced_reaches_the_new_state() {
    use crate::netstate::NetState;
    use rackline_store::StoredLease;
    let spec = spec("10.0.0.0/24", "10.0.0.1");
    let mk = |cid: &str, ip: &str, rev: i64| StoredLease {
        lease: rackline_testkit::fixtures::lease("prod", ip.parse().unwrap())
            .container(cid)
            .created(1)
            .build(),
        mod_revision: rev,
    };
    let old = NetState::new(spec.clone(), 1);
    // Observed before the hand-over, newer than the snapshot (revision 10).
    old.observe(mk("before", "10.0.0.5", 11), "n1");
    let fresh = Arc::new(NetState::new(spec, 1));
    old.leases().hand_over(&fresh, 10, "n1");
    // An allocation that started on the old state finishes after the swap.
    old.observe(mk("after", "10.0.0.6", 12), "n1");
    for cid in ["before", "after"] {
        assert!(
            fresh
                .leases()
                .existing(&(cid.into(), "eth0".into()))
                .is_some(),
            "{cid} is unknown to the new state: its release would leak it"
        );
    }
}

/// `network update` leaves standby records inside new exclusions to their
/// node: the engine gives them back itself (revision-compared deletes, out of
/// its persisted reserve first) and refills its reserve outside them.
#[tokio::test]
async fn standby_records_a_network_update_excludes_are_given_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let s = spec("10.0.0.0/24", "10.0.0.1");
    store.add_network(s.clone());
    let e = outage_engine("n1", &store, dir.path(), 3);
    e.allocate(args("warm")).await.unwrap();
    e.reserve().maintain_standby().await;
    let reserve = standby_addresses(&store);
    assert_eq!(reserve.len(), 3);
    let gone = reserve[0];

    let mut updated = s.clone();
    updated.exclude = vec![format!("{gone}-{gone}").parse().unwrap()];
    let create_revision = store.networks.lock().unwrap()["prod"].create_revision;
    e.apply_change(rackline_store::Change::Put {
        key: Keys::new("/rackline").network("prod"),
        value: serde_json::to_vec(&updated).unwrap(),
        create_revision,
        mod_revision: create_revision + 100,
    });
    e.reserve().maintain_standby().await;
    let now = standby_addresses(&store);
    assert!(!now.contains(&gone), "{gone} still in the reserve: {now:?}");
    // The next pass refills.
    e.reserve().maintain_standby().await;
    let now = standby_addresses(&store);
    assert!(!now.contains(&gone), "{now:?}");
    assert_eq!(now.len(), 3, "refilled outside the exclusion: {now:?}");
    e.reserve().save_reserve().await;
    let saved: Vec<Ipv4Addr> = persisted(dir.path(), "n1")
        .networks
        .iter()
        .flat_map(|n| n.standby.iter().map(|(ip, _)| *ip))
        .collect();
    assert!(!saved.contains(&gone), "{saved:?}");
}

/// A create whose answer was lost lands in etcd, then ipamd restarts while
/// etcd is out of reach (the note of the uncertain create goes with the old
/// process): the runtime's retry is answered from the persisted reserve.
/// Once etcd is back and the journal replayed, the attachment must not keep
/// the address nobody was told about as a second lease.
#[tokio::test]
async fn a_lost_create_before_a_restart_without_etcd_leaves_no_second_lease() {
    use crate::store::LeaseStore as _;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    let net = store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = outage_engine("n1", &store, dir.path(), 3);
    e.allocate(args("warm")).await.unwrap();
    e.reserve().maintain_standby().await;
    e.reserve().save_reserve().await;
    let reserve = standby_addresses(&store);
    // The lost create: in etcd, never seen by this ipamd.
    let lost: Ipv4Addr = "10.0.0.200".parse().unwrap();
    let first = Lease {
        pod: args("c9").pod,
        ..rackline_testkit::fixtures::lease("prod", lost)
            .container("c9")
            .created(1)
            .build()
    };
    assert!(matches!(
        store
            .create_lease(&first, net.create_revision, None)
            .await
            .unwrap(),
        rackline_store::CreateLease::Created { .. }
    ));
    drop(e);

    store.down.store(true, Ordering::SeqCst);
    let e2 = bare_engine("n1", &store, dir.path(), 3);
    let _stop = spawn_prober(&e2);
    assert!(e2.reserve().start_from_persisted());
    let retried = e2.allocate(args("c9")).await.unwrap();
    assert!(reserve.contains(&retried.lease.address), "{retried:?}");

    store.down.store(false, Ordering::SeqCst);
    e2.reserve().replay_journal().await.unwrap();
    e2.apply_snapshot(Snapshot {
        networks: store.networks.lock().unwrap().values().cloned().collect(),
        leases: store.leases.lock().unwrap().values().cloned().collect(),
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    assert_eq!(e2.reserve().settle_replayed().await, vec![lost]);
    let held: Vec<Ipv4Addr> = store
        .live()
        .iter()
        .filter(|l| l.container_id == "c9")
        .map(|l| l.address)
        .collect();
    assert_eq!(held, vec![retried.lease.address]);
    // Nothing left to check: a second snapshot drops nothing.
    assert!(e2.reserve().settle_replayed().await.is_empty());
}
