//! Engine tests for etcd outages: the standby reserve, the journal, replay.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::{Keys, Lease};
use rackline_store::Snapshot;

use super::racks::{block, ip_u32, racked_engine, racknet};
use super::*;
use crate::engine::{Engine, IpamError};

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
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.set_etcd_ok(true);
    Arc::new(e)
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
    feed_leases(&n1, &store);
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
    e.maintain_standby().await;
    assert_eq!(
        standby_records(&store),
        4,
        "the idle node keeps its reserve"
    );

    // Another node's drain, or another rack's binding: nothing changes.
    drain_change(&e, &DrainTarget::Node("n2".into()), true);
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 4);

    drain_change(&e, &DrainTarget::Network("prod".into()), true);
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 0, "the network is being deleted");
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 0, "and no reserve is made again");

    // The delete was refused and the marker lifted: the reserve comes back.
    drain_change(&e, &DrainTarget::Network("prod".into()), false);
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 4);

    // Draining this node has the same effect, on every network.
    drain_change(&e, &DrainTarget::Node("n1".into()), true);
    assert!(e.node_drained());
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 0);

    // While etcd is unreachable nothing is given back: the node may be
    // handing those records out from its journal.
    drain_change(&e, &DrainTarget::Node("n1".into()), false);
    e.maintain_standby().await;
    assert_eq!(standby_records(&store), 4);
    e.set_etcd_ok(false);
    drain_change(&e, &DrainTarget::Network("prod".into()), true);
    e.maintain_standby().await;
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

#[tokio::test]
async fn a_full_network_waits_for_other_nodes_reserves_instead_of_failing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FakeStore::default());
    // 13 usable addresses.
    store.add_network(spec("10.0.0.0/28", "10.0.0.1"));
    let n1 = outage_engine("n1", &store, dir.path(), 2);
    n1.allocate(args("n1-pod")).await.unwrap();
    n1.maintain_standby().await;
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
            n1.maintain_standby().await;
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
