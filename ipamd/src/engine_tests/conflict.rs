//! ReportConflict: the quarantine record replaces the lease, the
//! attachment's next allocation gets another address, GC and release leave
//! the record alone, and etcd's expiry gives the address back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use crate::store::Keys;
use rackline_model::{LeaseState, ProbeSpec};

use super::*;
use crate::engine::ConflictArgs;

fn conflict(cid: &str, ip: Ipv4Addr) -> ConflictArgs {
    ConflictArgs {
        network: "prod".into(),
        container_id: cid.into(),
        ifname: "eth0".into(),
        address: ip,
        mac: "02:AA:BB:CC:DD:EE".into(),
    }
}

#[tokio::test]
async fn conflict_quarantines_the_address_and_the_retry_gets_another() {
    let store = Arc::new(FakeStore::default());
    let mut s = spec("10.0.0.0/24", "10.0.0.1");
    s.probe = Some(ProbeSpec {
        quarantine_secs: 42,
        ..Default::default()
    });
    store.add_network(s);
    let e = engine("n1", &store, Duration::ZERO);
    let first = e.allocate(args("c1")).await.unwrap().lease.address;

    let q = e.report_conflict(conflict("c1", first)).await.unwrap();
    assert!(q.quarantined);
    assert_eq!(q.quarantine_secs, 42);
    let rec = store
        .live()
        .into_iter()
        .find(|l| l.address == first)
        .expect("the record stays");
    assert_eq!(rec.state, LeaseState::Conflict);
    assert_eq!(rec.attachment(), ("", ""), "no attachment holds it");
    assert_eq!((rec.node.as_str(), rec.pod.name.as_str()), ("n1", "c1"));
    let info = rec.conflict.unwrap();
    assert_eq!(info.mac, "02:aa:bb:cc:dd:ee");
    assert_eq!(
        (info.container_id.as_str(), info.quarantine_secs),
        ("c1", 42)
    );
    assert_eq!(
        store.ttls.lock().unwrap().get(&("prod".to_string(), first)),
        Some(&42),
        "the record lives under an etcd TTL"
    );

    let again = e.allocate(args("c1")).await.unwrap();
    assert!(!again.existing, "a fresh lease, not the quarantined one");
    assert_ne!(again.lease.address, first);
    assert_no_duplicates_ignoring_conflicts(&store);

    // GC and release concern attachments: the record has none.
    let (gced, _) = e.allocator().gc("prod", &HashSet::new()).await.unwrap();
    assert_eq!(
        gced.iter().map(|l| l.address).collect::<Vec<_>>(),
        vec![again.lease.address]
    );
    assert!(store
        .live()
        .iter()
        .any(|l| l.address == first && l.is_conflict()));

    // etcd expires the record: the watch's delete frees the address.
    let rev = {
        let mut m = store.leases.lock().unwrap();
        m.remove(&("prod".to_string(), first)).unwrap().mod_revision
    };
    e.apply_change(rackline_store::Change::Delete {
        key: Keys::new("/rackline").lease("prod", first),
        mod_revision: rev + 1,
    });
    let mut seen = Vec::new();
    for i in 0..300 {
        let a = e.allocate(args(&format!("d{i}"))).await.unwrap();
        seen.push(a.lease.address);
        if a.lease.address == first {
            break;
        }
    }
    assert_eq!(seen.last(), Some(&first), "the address came back: {seen:?}");
}

#[tokio::test]
async fn conflict_for_an_address_not_held_changes_nothing() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e.allocate(args("c1")).await.unwrap().lease.address;
    let b = e.allocate(args("c2")).await.unwrap().lease.address;
    // c2 reports c1's address; an unknown attachment reports too.
    for (cid, ip) in [("c2", a), ("nobody", b)] {
        let q = e.report_conflict(conflict(cid, ip)).await.unwrap();
        assert!(!q.quarantined);
        assert_eq!(q.quarantine_secs, 600, "the default quarantine");
    }
    assert!(store.live().iter().all(|l| !l.is_conflict()));
    assert!(store.ttls.lock().unwrap().is_empty());
    // Repeated reports for an already quarantined address are no-ops too.
    assert!(
        e.report_conflict(conflict("c1", a))
            .await
            .unwrap()
            .quarantined
    );
    assert!(
        !e.report_conflict(conflict("c1", a))
            .await
            .unwrap()
            .quarantined
    );
}

#[tokio::test]
async fn malformed_reports_are_refused() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let e = engine("n1", &store, Duration::ZERO);
    let a = e.allocate(args("c1")).await.unwrap().lease.address;
    let mut bad = conflict("c1", a);
    bad.mac = "nope".into();
    assert!(matches!(
        e.report_conflict(bad).await,
        Err(IpamError::InvalidRequest(_))
    ));
    let mut bad = conflict("c1", a);
    bad.network = "nonexistent".into();
    assert!(matches!(
        e.report_conflict(bad).await,
        Err(IpamError::UnknownNetwork(_))
    ));
    store.down.store(true, Ordering::SeqCst);
    assert!(matches!(
        e.report_conflict(conflict("c1", a)).await,
        Err(IpamError::Unavailable(_))
    ));
}

fn assert_no_duplicates_ignoring_conflicts(store: &FakeStore) {
    let live: Vec<_> = store
        .live()
        .into_iter()
        .filter(|l| !l.is_conflict())
        .collect();
    let mut seen = HashSet::new();
    for l in &live {
        assert!(
            seen.insert((l.node.clone(), l.container_id.clone(), l.ifname.clone())),
            "{l:?}"
        );
    }
}

#[tokio::test]
async fn a_sticky_pods_address_is_never_quarantined() {
    let store = Arc::new(FakeStore::default());
    store.add_network(NetworkSpec {
        sticky: Some(rackline_model::StickyPolicy::default()),
        ..spec("10.0.0.0/24", "10.0.0.1")
    });
    let e = engine("n1", &store, Duration::ZERO);
    let got = e.allocate(args("c1")).await.unwrap();
    assert!(got.lease.sticky, "the policy makes every pod sticky");
    let q = e
        .report_conflict(conflict("c1", got.lease.address))
        .await
        .unwrap();
    assert!(!q.quarantined);
    assert!(store.live().iter().all(|l| !l.is_conflict()));
    let again = e.allocate(args("c1")).await.unwrap();
    assert!(again.existing && again.lease.address == got.lease.address);
}
