//! Requested addresses against the in-memory store (real etcd, concurrency
//! across daemons: tests/real_etcd.rs).

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::{LeaseState, StickyPolicy};

use super::racks::{block, racked_engine, racknet};
use super::*;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn want(cid: &str, ips: &[&str]) -> AllocateArgs {
    AllocateArgs {
        requested: ips.iter().map(|s| ip(s)).collect(),
        ..args(cid)
    }
}

fn refused(r: Result<Allocated, IpamError>) -> String {
    match r {
        Err(IpamError::RequestedAddress(m)) => m,
        other => panic!("expected a requested-address refusal, got {other:?}"),
    }
}

use crate::engine::Allocated;

#[tokio::test]
async fn gives_the_requested_address_and_is_idempotent_per_attachment() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e.allocate(want("c1", &["10.0.0.77"])).await.unwrap();
    assert_eq!(a.lease.address, ip("10.0.0.77"));
    assert!(!a.existing);
    // The runtime's retry: the same lease, marked existing.
    let again = e.allocate(want("c1", &["10.0.0.77"])).await.unwrap();
    assert_eq!(again.lease.address, ip("10.0.0.77"));
    assert!(again.existing);
    // The same attachment asking for something else is refused, and keeps
    // what it has.
    let m = refused(e.allocate(want("c1", &["10.0.0.78"])).await);
    assert!(m.contains("already holds 10.0.0.77"), "{m}");
    assert_eq!(store.live().len(), 1);
    // The first usable address of a list wins.
    let b = e
        .allocate(want("c2", &["10.0.0.77", "10.0.0.1", "10.0.0.90"]))
        .await
        .unwrap();
    assert_eq!(b.lease.address, ip("10.0.0.90"));
    // Ordinary allocations never take a requested-then-released address
    // while it is held, and get it back after release.
    assert_eq!(
        e.release("prod", "c1", "eth0").await.unwrap(),
        vec![ip("10.0.0.77")]
    );
    let c = e.allocate(want("c3", &["10.0.0.77"])).await.unwrap();
    assert_eq!(c.lease.address, ip("10.0.0.77"));
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn refuses_with_the_reason_for_every_address() {
    let store = Arc::new(FakeStore::default());
    store.add_network(NetworkSpec {
        exclude: vec!["10.0.0.2-10.0.0.9".parse().unwrap()],
        ..spec("10.0.0.0/24", "10.0.0.1")
    });
    store
        .node_addrs
        .lock()
        .unwrap()
        .push((ip("10.0.0.11"), "n1".into()));
    let e = engine("n1", &store, Duration::ZERO);
    e.allocate(want("other", &["10.0.0.50"])).await.unwrap();
    for (asked, needle) in [
        ("10.0.0.1", "gateway"),
        ("10.0.0.5", "excluded"),
        ("10.0.0.0", "network or broadcast"),
        ("10.0.0.255", "network or broadcast"),
        ("10.9.0.5", "outside the network's subnet 10.0.0.0/24"),
        ("10.0.0.11", "address of node \"n1\""),
        ("10.0.0.50", "in use by pod default/other (container other"),
    ] {
        let m = refused(e.allocate(want("c1", &[asked])).await);
        assert!(m.contains(needle), "{asked}: {m}");
        assert!(m.contains("default/c1"), "{m}");
    }
    // Several at once: every reason is named.
    let m = refused(e.allocate(want("c1", &["10.0.0.1", "10.0.0.50"])).await);
    assert!(m.contains("gateway") && m.contains("in use"), "{m}");
    // Nothing was written by any refusal.
    assert_eq!(store.live().len(), 1);
    assert!(e
        .allocator()
        .check("prod", "c1", "eth0")
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn etcd_down_is_try_again_later_not_an_offline_address() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    match e.allocate(want("c1", &["10.0.0.70"])).await {
        Err(IpamError::Unavailable(m)) => assert!(m.contains("etcd"), "{m}"),
        other => panic!("{other:?}"),
    }
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let a = e.allocate(want("c1", &["10.0.0.70"])).await.unwrap();
    assert_eq!(a.lease.address, ip("10.0.0.70"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pods_asking_for_one_address_at_once_exactly_one_gets_it() {
    for round in 0..20 {
        let store = Arc::new(FakeStore::default());
        store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
        // Two nodes (caches that lag each other) and one node twice.
        let n1 = engine("n1", &store, Duration::ZERO);
        let n2 = engine("n2", &store, Duration::ZERO);
        let mut tasks = Vec::new();
        for (e, cid) in [(&n1, "a"), (&n2, "b"), (&n1, "c")] {
            let e = e.clone();
            tasks.push(tokio::spawn(async move {
                e.allocate(want(cid, &["10.0.0.99"])).await
            }));
        }
        let mut won = 0;
        for t in tasks {
            match t.await.unwrap() {
                Ok(a) => {
                    assert_eq!(a.lease.address, ip("10.0.0.99"));
                    won += 1;
                }
                Err(IpamError::RequestedAddress(m)) => {
                    assert!(m.contains("10.0.0.99"), "round {round}: {m}")
                }
                Err(e) => panic!("round {round}: {e:?}"),
            }
        }
        assert_eq!(won, 1, "round {round}");
        assert_eq!(store.live().len(), 1, "round {round}");
    }
}

#[tokio::test]
async fn rack_bound_inside_the_rack_only_and_fenced_on_the_block() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.10.0.0/16", "10.10.0.1"));
    let nets = [
        racknet("r1", "10.10.1.0-10.10.1.255"),
        racknet("r2", "10.10.2.0-10.10.2.255"),
    ];
    let mine = block(&store, "r1", "10.10.1.0", 16, "n1");
    let theirs = block(&store, "r1", "10.10.1.16", 16, "n2");
    let e = racked_engine("n1", "r1", &store, &nets, &[mine, theirs]);
    // Own block, another node's block of the rack (borrowed), unassigned
    // rack space: all fine.
    for want_ip in ["10.10.1.5", "10.10.1.20", "10.10.1.200"] {
        let a = e.allocate(want(want_ip, &[want_ip])).await.unwrap();
        assert_eq!(a.lease.address, ip(want_ip));
        assert_eq!(a.network.gateway, ip("10.10.0.1"));
    }
    // Another rack's range.
    let m = refused(e.allocate(want("x", &["10.10.2.5"])).await);
    assert!(m.contains("not in this node's rack's ranges"), "{m}");
    // A block that changed under the write (e.g. handed back and given to
    // another node): the write is fenced, retried, and the address is
    // still given only once.
    let key = Keys::new("/rackline").block("prod", ip("10.10.1.16"));
    *store.blocks.lock().unwrap().get_mut(&key).unwrap() += 100;
    let a = e.allocate(want("y", &["10.10.1.21"])).await.unwrap();
    assert_eq!(a.lease.address, ip("10.10.1.21"));
    assert_no_duplicates(&store);
}

#[tokio::test]
async fn sticky_pods_get_their_reservation_or_a_requested_fresh_one() {
    let store = Arc::new(FakeStore::default());
    store.add_network(NetworkSpec {
        sticky: Some(StickyPolicy {
            hold_secs: 600,
            ..Default::default()
        }),
        ..spec("10.0.0.0/24", "10.0.0.1")
    });
    let e = engine("n1", &store, Duration::ZERO);
    // A fresh sticky pod asking for an address: the identity takes it.
    let a = e.allocate(want("db-0", &["10.0.0.40"])).await.unwrap();
    assert!(a.lease.sticky);
    assert_eq!(a.lease.address, ip("10.0.0.40"));
    e.release("prod", "db-0", "eth0").await.unwrap();
    // Reserved for db-0: another pod asking for it is refused.
    let m = refused(
        e.allocate(AllocateArgs {
            pod: PodRef {
                namespace: "default".into(),
                name: "web".into(),
                uid: String::new(),
            },
            ..want("web", &["10.0.0.40"])
        })
        .await,
    );
    assert!(
        m.contains("reserved for the sticky pod default/db-0"),
        "{m}"
    );
    // db-0 again asking for its own address: re-activated.
    let b = e
        .allocate(AllocateArgs {
            container_id: "db-0b".into(),
            ..want("db-0", &["10.0.0.40"])
        })
        .await
        .unwrap();
    assert_eq!(b.lease.address, ip("10.0.0.40"));
    e.release("prod", "db-0b", "eth0").await.unwrap();
    // db-0 asking for another address is refused (its reservation stays).
    let m = refused(
        e.allocate(AllocateArgs {
            container_id: "db-0c".into(),
            ..want("db-0", &["10.0.0.41"])
        })
        .await,
    );
    assert!(m.contains("its address is 10.0.0.40"), "{m}");
    let held = store.leases.lock().unwrap()[&("prod".to_string(), ip("10.0.0.40"))]
        .lease
        .clone();
    assert_eq!(held.state, LeaseState::Reserved);
}

#[tokio::test]
async fn annotation_opt_in_makes_a_pod_sticky_and_opt_out_overrides_the_policy() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e
        .allocate(AllocateArgs {
            sticky: Some(true),
            ..args("db-0")
        })
        .await
        .unwrap();
    assert!(a.lease.sticky);
    let ident = store.identities.lock().unwrap()[&(
        "prod".to_string(),
        "default".to_string(),
        "db-0".to_string(),
    )]
        .identity
        .clone();
    assert!(ident.opt_in);
    // No sticky policy on the network: an opted-in pod's address is held
    // with the default hold after DEL.
    e.release("prod", "db-0", "eth0").await.unwrap();
    let r = store.leases.lock().unwrap()[&("prod".to_string(), a.lease.address)]
        .lease
        .clone();
    assert_eq!(r.state, LeaseState::Reserved);

    let store = Arc::new(FakeStore::default());
    store.add_network(NetworkSpec {
        sticky: Some(StickyPolicy::default()),
        ..spec("10.0.0.0/24", "10.0.0.1")
    });
    let e = engine("n1", &store, Duration::ZERO);
    let a = e
        .allocate(AllocateArgs {
            sticky: Some(false),
            ..args("web-0")
        })
        .await
        .unwrap();
    assert!(!a.lease.sticky);
    assert!(store.identities.lock().unwrap().is_empty());
}

#[tokio::test]
async fn annotated_addresses_are_those_inside_this_networks_subnet() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e
        .allocate(AllocateArgs {
            annotated: vec![ip("192.168.5.5"), ip("10.0.0.33")],
            ..args("c1")
        })
        .await
        .unwrap();
    assert_eq!(a.lease.address, ip("10.0.0.33"));
    let m = refused(
        e.allocate(AllocateArgs {
            annotated: vec![ip("192.168.5.5")],
            ..args("c2")
        })
        .await,
    );
    assert!(m.contains("none of which is inside 10.0.0.0/24"), "{m}");
    // The runtime's own request wins over the annotation.
    let b = e
        .allocate(AllocateArgs {
            annotated: vec![ip("10.0.0.34")],
            ..want("c3", &["10.0.0.35"])
        })
        .await
        .unwrap();
    assert_eq!(b.lease.address, ip("10.0.0.35"));
}
