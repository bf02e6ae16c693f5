//! Engine tests on rack-bound networks: own blocks, borrowing, guards.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Keys;
use rackline_store::Snapshot;

use super::*;
use crate::engine::{Engine, IpamError};

// ---- rack-bound networks ----

use rackline_model::{Block, RackNet};
use rackline_store::StoredBlock;

pub(super) fn racknet(rack: &str, range: &str) -> RackNet {
    RackNet {
        rack: rack.into(),
        network: "prod".into(),
        subnet: "10.10.0.0/16".parse().unwrap(),
        gateway: "10.10.0.1".parse().unwrap(),
        ranges: vec![range.parse().unwrap()],
        exclude: vec![],
    }
}

pub(super) fn block(
    store: &FakeStore,
    rack: &str,
    first: &str,
    size: u32,
    node: &str,
) -> StoredBlock {
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

pub(super) fn racked_engine(
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
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.outage().note_reachable();
    Arc::new(e)
}

pub(super) fn ip_u32(s: &str) -> u32 {
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
    let net = n1.mirror().networks().pop().unwrap();
    assert!(net.blocks().usage().own_blocks.is_empty());
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
        exclude: vec![],
    }];
    let blocks = [block(&store, "b", "10.11.0.16", 16, "n3")];
    let n3 = racked_engine("n3", "b", &store, &rn, &blocks);
    let a = n3.allocate(args("c1")).await.unwrap();
    assert_eq!(a.network.subnet.to_string(), "10.11.0.0/24");
    assert_eq!(a.network.gateway.to_string(), "10.11.0.1");
    assert!(a.network.subnet.contains(a.lease.address));
    assert!((ip_u32("10.11.0.16")..=ip_u32("10.11.0.31")).contains(&u32::from(a.lease.address)));
}
