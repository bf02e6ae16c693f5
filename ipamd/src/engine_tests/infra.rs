//! Infrastructure addresses (registered nodes' own, gateways, a binding's
//! exclusions) are never handed to a pod, on every kind of network.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::{Node, RackNet};
use rackline_store::Change;

use super::racks::{block, racked_engine};
use super::*;
use crate::engine::{Engine, IpamError};

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn node_record(name: &str, rack: &str, addrs: &[&str]) -> Node {
    Node {
        name: name.into(),
        rack: rack.into(),
        addresses: addrs.iter().map(|a| ip(a)).collect(),
        registered_unix_ms: 0,
    }
}

/// A node (re-)registers: the watch event ipamd sees.
fn node_put(e: &Engine<Arc<FakeStore>>, n: &Node) {
    e.apply_change(Change::Put {
        key: crate::store::Keys::new("/rackline").node(&n.name),
        value: serde_json::to_vec(n).unwrap(),
        create_revision: 1,
        mod_revision: 1,
    });
}

/// Allocates until the network says it is full; every address handed out.
async fn fill(e: &Engine<Arc<FakeStore>>, tag: &str) -> Vec<Ipv4Addr> {
    let mut got = Vec::new();
    loop {
        match e.allocate(args(&format!("{tag}{}", got.len()))).await {
            Ok(a) => got.push(a.lease.address),
            Err(IpamError::Exhausted { .. }) => return got,
            Err(other) => panic!("allocation {} failed: {other}", got.len()),
        }
    }
}

/// Rack b bound with its own /24 and no range (the whole subnet), as an
/// operator reading "none = the whole subnet" would.
fn whole_subnet_binding() -> RackNet {
    RackNet {
        rack: "b".into(),
        network: "prod".into(),
        subnet: "10.11.0.0/24".parse().unwrap(),
        gateway: "10.11.0.1".parse().unwrap(),
        ranges: vec![],
        exclude: vec![],
    }
}

#[tokio::test]
async fn a_whole_subnet_rack_never_hands_out_its_nodes_addresses() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/24", "10.10.0.1"));
    let rn = [whole_subnet_binding()];
    // The block holding the nodes' uplink addresses was carved before
    // anything registered (blocks never know about nodes).
    let blocks = [block(&store, "b", "10.11.0.2", 14, "n3")];
    let n3 = racked_engine("n3", "b", &store, &rn, &blocks);
    node_put(&n3, &node_record("n3", "b", &["10.11.0.11"]));
    node_put(&n3, &node_record("n4", "b", &["10.11.0.12"]));
    let got = fill(&n3, "c").await;
    let uniq: BTreeSet<Ipv4Addr> = got.iter().copied().collect();
    assert_eq!(uniq.len(), got.len(), "an address was handed out twice");
    for bad in [
        "10.11.0.1",
        "10.11.0.11",
        "10.11.0.12",
        "10.11.0.0",
        "10.11.0.255",
    ] {
        assert!(!uniq.contains(&ip(bad)), "{bad} was given to a pod");
    }
    // Everything else of the /24 was: 256 - network, broadcast, gateway,
    // two nodes.
    assert_eq!(got.len(), 256 - 5);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn a_node_registering_after_its_block_was_assigned_is_skipped_and_freed_on_removal() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/24", "10.10.0.1"));
    let rn = [whole_subnet_binding()];
    // One block only: the test must not borrow.
    let blocks = [block(&store, "b", "10.11.0.2", 14, "n3")];
    let n3 = racked_engine("n3", "b", &store, &rn, &blocks);
    let net = n3.mirror().networks().pop().unwrap();
    assert_eq!(net.own_available(), 14);
    node_put(&n3, &node_record("n5", "b", &["10.11.0.5"]));
    assert_eq!(net.own_available(), 13);
    let mut got = Vec::new();
    for i in 0..13 {
        got.push(
            n3.allocate(args(&format!("c{i}")))
                .await
                .unwrap()
                .lease
                .address,
        );
    }
    assert!(!got.contains(&ip("10.11.0.5")), "{got:?}");
    assert!(got
        .iter()
        .all(|a| (ip("10.11.0.2")..=ip("10.11.0.15")).contains(a)));
    assert_eq!(net.own_available(), 0);
    // The node moves to another address: the old one is a pod address again.
    node_put(&n3, &node_record("n5", "b", &["10.11.0.200"]));
    assert_eq!(net.own_available(), 1);
    let a = n3.allocate(args("late")).await.unwrap();
    assert_eq!(a.lease.address, ip("10.11.0.5"));
    // Held addresses stayed taken through both changes.
    assert_eq!(net.own_available(), 0);
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn a_flat_network_skips_node_addresses_too() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/28", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    node_put(&e, &node_record("n1", "r1", &["10.0.0.2", "10.0.0.14"]));
    let got = fill(&e, "c").await;
    assert_eq!(got.len(), 14 - 1 - 2);
    assert!(!got.contains(&ip("10.0.0.2")) && !got.contains(&ip("10.0.0.14")));
    // Exhausted reports the capacity without the node addresses.
    match e.allocate(args("late")).await.unwrap_err() {
        IpamError::Exhausted { capacity, .. } => assert_eq!(capacity, 11),
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn binding_exclusions_and_other_racks_gateways_are_never_handed_out() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/16", "10.10.0.1"));
    // Two racks share the network's subnet; rack b's TOR sits inside rack
    // a's range, and rack a excludes its switch management addresses.
    let a = RackNet {
        rack: "a".into(),
        network: "prod".into(),
        subnet: "10.10.0.0/16".parse().unwrap(),
        gateway: "10.10.1.1".parse().unwrap(),
        ranges: vec!["10.10.1.0/27".parse().unwrap()],
        exclude: vec!["10.10.1.2-10.10.1.5".parse().unwrap()],
    };
    let b = RackNet {
        rack: "b".into(),
        gateway: "10.10.1.30".parse().unwrap(),
        ranges: vec!["10.10.2.0/27".parse().unwrap()],
        exclude: vec![],
        ..a.clone()
    };
    let n1 = racked_engine("n1", "a", &store, &[a, b], &[]);
    let got = fill(&n1, "c").await;
    for bad in ["10.10.1.1", "10.10.1.2", "10.10.1.5", "10.10.1.30"] {
        assert!(!got.contains(&ip(bad)), "{bad} was given to a pod");
    }
    // .0-.31 minus .1 (own TOR), .2-.5 (excluded), .30 (rack b's TOR).
    assert_eq!(got.len(), 32 - 6);
    // Asked for by name, each says why.
    for (asked, needle) in [
        ("10.10.1.30", "10.10.1.30 is the gateway of rack \"b\""),
        ("10.10.1.3", "excluded"),
        ("10.10.1.1", "gateway"),
    ] {
        let mut r = args(&format!("want-{asked}"));
        r.requested = vec![ip(asked)];
        let e = n1.allocate(r).await.unwrap_err().to_string();
        assert!(e.contains(needle), "{asked}: {e}");
    }
}

#[tokio::test]
async fn a_requested_node_address_is_refused_through_the_same_rule() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/24", "10.10.0.1"));
    let rn = [whole_subnet_binding()];
    let blocks = [block(&store, "b", "10.11.0.2", 14, "n3")];
    let n3 = racked_engine("n3", "b", &store, &rn, &blocks);
    // Registered a moment ago: etcd has it, the watch has not delivered it.
    store
        .node_addrs
        .lock()
        .unwrap()
        .push((ip("10.11.0.9"), "n4".into()));
    let mut r = args("c1");
    r.requested = vec![ip("10.11.0.9")];
    let e = n3.allocate(r).await.unwrap_err().to_string();
    assert!(e.contains("10.11.0.9 is the address of node \"n4\""), "{e}");
    // From then on the cache knows it: an ordinary pick skips it as well.
    let got = fill(&n3, "d").await;
    assert!(!got.contains(&ip("10.11.0.9")));
}
