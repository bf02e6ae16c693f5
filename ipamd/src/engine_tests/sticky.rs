//! Sticky identities against the in-memory store: the re-creation races
//! (the new incarnation's ADD before the old DEL, one identity on two nodes
//! at once) that do not need real etcd (TTL expiry is tested in the lab).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::{LeaseState, StickyPolicy};

use super::*;

fn sticky_spec(hold_secs: u64) -> NetworkSpec {
    NetworkSpec {
        sticky: Some(StickyPolicy {
            hold_secs,
            ..Default::default()
        }),
        ..spec("10.0.0.0/29", "10.0.0.1")
    }
}

/// Pod `default/<pod>` in container `cid`.
fn pod_args(pod: &str, cid: &str) -> AllocateArgs {
    AllocateArgs {
        pod: PodRef {
            namespace: "default".into(),
            name: pod.into(),
            uid: String::new(),
        },
        ..args(cid)
    }
}

fn record(store: &FakeStore, ip: std::net::Ipv4Addr) -> Lease {
    store
        .leases
        .lock()
        .unwrap()
        .get(&("prod".to_string(), ip))
        .expect("record exists")
        .lease
        .clone()
}

#[tokio::test]
async fn a_recreated_sticky_pod_gets_its_address_back_and_nobody_else_can_take_it() {
    let store = Arc::new(FakeStore::default());
    store.add_network(sticky_spec(600));
    let e = engine("n1", &store, Duration::ZERO);
    let first = e.allocate(pod_args("db-0", "c1")).await.unwrap();
    assert!(first.lease.sticky);
    let ip = first.lease.address;
    assert_eq!(e.release("prod", "c1", "eth0").await.unwrap(), vec![ip]);
    let r = record(&store, ip);
    assert_eq!(r.state, LeaseState::Reserved);
    assert!(r.expires_unix_ms.is_some());
    assert!(r.container_id.is_empty());
    // Every other pod gets another address while the reservation holds.
    let mut others = HashSet::new();
    for i in 0..4 {
        let o = e
            .allocate(pod_args(&format!("web-{i}"), &format!("w{i}")))
            .await
            .unwrap();
        assert_ne!(o.lease.address, ip);
        others.insert(o.lease.address);
    }
    let again = e.allocate(pod_args("db-0", "c2")).await.unwrap();
    assert_eq!(again.lease.address, ip);
    assert!(!again.existing);
    let r = record(&store, ip);
    assert_eq!(r.state, LeaseState::Active);
    assert_eq!(r.container_id, "c2");
    assert_eq!(r.expires_unix_ms, None);
}

#[tokio::test]
async fn the_old_incarnations_late_del_does_not_free_the_new_lease() {
    let store = Arc::new(FakeStore::default());
    store.add_network(sticky_spec(600));
    let e = engine("n1", &store, Duration::ZERO);
    let old = e.allocate(pod_args("db-0", "old")).await.unwrap();
    // The new incarnation's ADD arrives first...
    let new = e.allocate(pod_args("db-0", "new")).await.unwrap();
    assert_eq!(new.lease.address, old.lease.address);
    // ...then the old container's DEL: nothing of its own is left.
    assert!(e.release("prod", "old", "eth0").await.unwrap().is_empty());
    let r = record(&store, new.lease.address);
    assert_eq!(
        (r.state, r.container_id.as_str()),
        (LeaseState::Active, "new")
    );
    // A GC whose valid list lacks the old container frees nothing either.
    let valid: HashSet<_> = [("new".to_string(), "eth0".to_string())].into();
    let (freed, _) = e.allocator().gc("prod", &valid).await.unwrap();
    assert!(freed.is_empty(), "{freed:?}");
    assert_eq!(record(&store, new.lease.address).container_id, "new");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_identity_on_two_nodes_at_once_only_one_gets_it() {
    for round in 0..20 {
        let store = Arc::new(FakeStore::default());
        store.add_network(sticky_spec(600));
        let n1 = engine("n1", &store, Duration::ZERO);
        let n2 = engine("n2", &store, Duration::ZERO);
        let a = tokio::spawn({
            let n1 = n1.clone();
            async move { n1.allocate(pod_args("db-0", "a")).await }
        });
        let b = tokio::spawn({
            let n2 = n2.clone();
            async move { n2.allocate(pod_args("db-0", "b")).await }
        });
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let err = match (a, b) {
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => e,
            other => panic!("round {round}: {other:?}"),
        };
        assert!(
            matches!(err, IpamError::IdentityLive(_)),
            "round {round}: {err}"
        );
        assert!(err.to_string().contains("already holds"), "{err}");
        let live: Vec<_> = store.live().into_iter().filter(|l| l.sticky).collect();
        assert_eq!(live.len(), 1, "round {round}: {live:?}");
    }
}

#[tokio::test]
async fn hold_zero_frees_address_and_identity_at_del() {
    let store = Arc::new(FakeStore::default());
    store.add_network(sticky_spec(0));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e.allocate(pod_args("db-0", "c1")).await.unwrap();
    assert!(a.lease.sticky);
    e.release("prod", "c1", "eth0").await.unwrap();
    assert!(store.live().is_empty());
    assert!(store.identities.lock().unwrap().is_empty());
}

#[tokio::test]
async fn pods_outside_the_policy_are_not_sticky() {
    let store = Arc::new(FakeStore::default());
    let mut s = sticky_spec(600);
    s.sticky.as_mut().unwrap().pod_patterns = vec![r"db-\d+".into()];
    store.add_network(s);
    let e = engine("n1", &store, Duration::ZERO);
    let web = e.allocate(pod_args("web-x", "c1")).await.unwrap();
    assert!(!web.lease.sticky);
    e.release("prod", "c1", "eth0").await.unwrap();
    assert!(store.live().is_empty());
    assert!(store.identities.lock().unwrap().is_empty());
}

#[tokio::test]
async fn sticky_pods_fail_clearly_while_etcd_is_down() {
    let store = Arc::new(FakeStore::default());
    store.add_network(sticky_spec(600));
    let e = engine("n1", &store, Duration::ZERO);
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = e.allocate(pod_args("db-0", "c1")).await.unwrap_err();
    assert!(matches!(err, IpamError::Unavailable(_)), "{err}");
    assert!(err.to_string().contains("sticky"), "{err}");
}

#[tokio::test]
async fn rolling_back_a_failed_add_keeps_only_reservations_that_existed_before() {
    let store = Arc::new(FakeStore::default());
    store.add_network(sticky_spec(600));
    let e = engine("n1", &store, Duration::ZERO);
    // A brand-new sticky pod whose ADD fails: nothing is left behind.
    let a = e.allocate(pod_args("db-0", "c1")).await.unwrap();
    e.allocator()
        .release_if("prod", "c1", "eth0", true, || true)
        .await
        .unwrap();
    assert!(store.live().is_empty(), "{:?}", store.live());
    assert!(store.identities.lock().unwrap().is_empty());
    // A pod that ran before: its failed re-creation goes back to reserved.
    let a2 = e.allocate(pod_args("db-0", "c2")).await.unwrap();
    e.release("prod", "c2", "eth0").await.unwrap();
    let again = e.allocate(pod_args("db-0", "c3")).await.unwrap();
    assert_eq!(again.lease.address, a2.lease.address);
    e.allocator()
        .release_if("prod", "c3", "eth0", true, || true)
        .await
        .unwrap();
    assert_eq!(record(&store, a2.lease.address).state, LeaseState::Reserved);
    let _ = a;
}
