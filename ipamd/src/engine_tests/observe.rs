//! What the engine reports about itself: readiness (shared by /readyz and
//! CNI STATUS), reclaim and conflict counts, and the conflict a sticky
//! pod's lease records.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use rackline_telemetry::Readiness;

use super::*;
use crate::engine::{ConflictArgs, Observer};
use crate::metrics::{IpamMetrics, NodeView};

fn observed(store: &Arc<FakeStore>) -> (Arc<Engine<Arc<FakeStore>>>, Arc<IpamMetrics>) {
    let metrics = IpamMetrics::new(Some("r1"));
    let e = Engine::new(
        "n1".into(),
        Keys::new("/rackline"),
        store.clone(),
        Duration::ZERO,
    )
    .with_observer(Arc::new(Observer {
        metrics: metrics.clone(),
        alarms: None,
    }));
    let nets: Vec<StoredNetwork> = store.networks.lock().unwrap().values().cloned().collect();
    e.apply_snapshot(Snapshot {
        networks: nets,
        leases: vec![],
        racknets: vec![],
        blocks: vec![],
        nodes: vec![],
        drains: vec![],
        revision: store.rev.load(Ordering::SeqCst),
        skipped: 0,
    });
    e.outage().note_reachable();
    (Arc::new(e), metrics)
}

fn scrape(
    m: &Arc<IpamMetrics>,
    e: &Arc<Engine<Arc<FakeStore>>>,
) -> rackline_telemetry::exposition::Exposition {
    let view: Arc<dyn NodeView> = e.clone();
    let reg = crate::metrics::registry(m, view);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &reg).unwrap();
    rackline_telemetry::exposition::parse(&text).unwrap()
}

#[tokio::test]
async fn status_refuses_whenever_readiness_does() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let fresh = Engine::new("n1".into(), Keys::new("/r"), store.clone(), Duration::ZERO);
    assert!(matches!(fresh.readiness(), Readiness::NotReady(r) if r.contains("not loaded")));
    let e = engine("n1", &store, Duration::ZERO);
    assert_eq!(e.readiness(), Readiness::Ready);
    assert!(e.status("prod").await.unwrap().can_allocate);
    // etcd gone, no journal (so no reserve): not ready, and STATUS says so
    // with the same reason.
    e.outage().set_offline("test: etcd is down");
    let Readiness::NotReady(why) = e.readiness() else {
        panic!("ready without etcd and without a reserve");
    };
    let s = e.status("prod").await.unwrap();
    assert!(!s.can_allocate);
    assert_eq!(s.reason, why);
    assert!(!e.ready());
    assert_eq!(crate::metrics::NodeView::mode(&*e), "offline");
}

#[tokio::test]
async fn gc_reclaims_are_counted_and_gauges_follow_the_cache() {
    let store = Arc::new(FakeStore::default());
    store.add_network(spec("10.0.0.0/24", "10.0.0.1"));
    let (e, m) = observed(&store);
    for c in ["c1", "c2", "c3"] {
        e.allocate(args(c)).await.unwrap();
    }
    let x = scrape(&m, &e);
    assert_eq!(
        x.value("rackline_ipamd_leases_held", &[("network", "prod")]),
        Some(3.0)
    );
    let valid: HashSet<(String, String)> = [("c2".to_string(), "eth0".to_string())].into();
    let (freed, _) = e.allocator().gc("prod", &valid).await.unwrap();
    assert_eq!(freed.len(), 2);
    let x = scrape(&m, &e);
    assert_eq!(
        x.value(
            "rackline_ipamd_reclaims_total",
            &[("network", "prod"), ("reason", "gc")]
        ),
        Some(2.0)
    );
    assert_eq!(
        x.value("rackline_ipamd_leases_held", &[("network", "prod")]),
        Some(1.0)
    );
    assert_eq!(
        x.value("rackline_ipamd_mode", &[("mode", "online")]),
        Some(1.0)
    );
}

#[tokio::test]
async fn a_sticky_conflict_is_recorded_once_per_mac_and_cleared_at_del() {
    let store = Arc::new(FakeStore::default());
    store.add_network(NetworkSpec {
        sticky: Some(rackline_model::StickyPolicy::default()),
        ..spec("10.0.0.0/24", "10.0.0.1")
    });
    let (e, m) = observed(&store);
    let got = e.allocate(args("c1")).await.unwrap();
    let report = |mac: &str| ConflictArgs {
        network: "prod".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
        address: got.lease.address,
        mac: mac.into(),
    };
    for _ in 0..3 {
        let q = e
            .report_conflict(report("02:00:00:00:00:09"))
            .await
            .unwrap();
        assert!(!q.quarantined);
    }
    let rec = store
        .live()
        .into_iter()
        .find(|l| l.address == got.lease.address)
        .unwrap();
    assert!(rec.state.is_active(), "a sticky pod keeps its address");
    let info = rec.conflict.expect("the conflict is on the lease");
    assert_eq!(
        (info.mac.as_str(), info.container_id.as_str()),
        ("02:00:00:00:00:09", "c1")
    );
    let x = scrape(&m, &e);
    assert_eq!(
        x.value(
            "rackline_ipamd_address_conflicts_total",
            &[("outcome", "sticky")]
        ),
        Some(1.0),
        "retries of the same conflict count once"
    );
    e.report_conflict(report("02:00:00:00:00:0a"))
        .await
        .unwrap();
    assert_eq!(
        scrape(&m, &e).value(
            "rackline_ipamd_address_conflicts_total",
            &[("outcome", "sticky")]
        ),
        Some(2.0)
    );
    // The pod's DEL reserves the address; the conflict ends with the pod.
    e.release("prod", "c1", "eth0").await.unwrap();
    let rec = store
        .live()
        .into_iter()
        .find(|l| l.address == got.lease.address)
        .unwrap();
    assert!(rec.is_reserved() && rec.conflict.is_none(), "{rec:?}");
}
