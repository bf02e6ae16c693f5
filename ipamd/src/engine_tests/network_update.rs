//! A network updated in place (`racklinectl network update`): what the
//! engine records on leases, how it takes the new definition, and which
//! pods it then counts as out of spec.

use std::sync::Arc;
use std::time::Duration;

use crate::store::Keys;
use rackline_model::{NetworkSpec, PodSettings};
use rackline_store::Change;

use super::racks::{block, racked_engine, racknet};
use super::*;
use crate::engine::Engine;
use crate::metrics::NodeView;

/// What the watch delivers for an update: the record at the same create
/// revision, with the new definition.
fn deliver_update(e: &Engine<Arc<FakeStore>>, store: &FakeStore, spec: &NetworkSpec) {
    let create_revision = store.networks.lock().unwrap()["prod"].create_revision;
    e.apply_change(Change::Put {
        key: Keys::new("/rackline").network("prod"),
        value: serde_json::to_vec(spec).unwrap(),
        create_revision,
        mod_revision: create_revision + 100,
    });
}

fn out_of_spec(e: &Engine<Arc<FakeStore>>) -> u64 {
    e.gauges()
        .into_iter()
        .find(|(n, _)| n == "prod")
        .map(|(_, g)| g.out_of_spec)
        .unwrap_or(0)
}

#[tokio::test]
async fn leases_record_their_settings_and_older_pods_count_as_out_of_spec() {
    let store = Arc::new(FakeStore::default());
    let mut s = spec("10.0.0.0/24", "10.0.0.1");
    s.mtu = 1500;
    s.host_routes = vec!["10.96.0.0/12".parse().unwrap()];
    store.add_network(s.clone());
    let e = engine("n1", &store, Duration::ZERO);
    let old = e.allocate(args("old")).await.unwrap();
    let stored = store
        .live()
        .into_iter()
        .find(|l| l.address == old.lease.address)
        .unwrap();
    assert_eq!(stored.settings.as_deref(), Some(&PodSettings::of(&s)));
    assert_eq!(out_of_spec(&e), 0);

    let mut updated = s.clone();
    updated.mtu = 9000;
    updated.exclude = vec!["10.0.0.200-10.0.0.210".parse().unwrap()];
    deliver_update(&e, &store, &updated);
    // The old pod differs; the new one gets the new settings.
    assert_eq!(out_of_spec(&e), 1);
    let new = e.allocate(args("new")).await.unwrap();
    assert_eq!(new.network.mtu, 9000);
    assert_eq!(
        new.lease.settings.as_ref().map(|p| p.mtu),
        Some(9000),
        "{new:?}"
    );
    assert_eq!(out_of_spec(&e), 1);
    // The rebuilt pool honours the new exclusion.
    for i in 0..250 {
        match e.allocate(args(&format!("p{i}"))).await {
            Ok(a) => assert!(
                !(200..=210).contains(&a.lease.address.octets()[3]),
                "{}",
                a.lease.address
            ),
            Err(IpamError::Exhausted { .. }) => break,
            Err(err) => panic!("{err}"),
        }
    }
    e.release("prod", "old", "eth0").await.unwrap();
    assert_eq!(out_of_spec(&e), 0);
}

#[tokio::test]
async fn a_rack_bound_network_reloads_from_a_snapshot_when_its_definition_changes() {
    let store = Arc::new(FakeStore::default());
    let s = spec("10.10.0.0/16", "10.10.0.1");
    store.add_network(s.clone());
    let rn = [racknet("a", "10.10.1.0-10.10.1.31")];
    let blocks = [block(&store, "a", "10.10.1.0", 16, "n1")];
    let e = racked_engine("n1", "a", &store, &rn, &blocks);
    let mut resync = e.mirror().resync_requests();
    resync.borrow_and_update();
    // The same definition again (a watch replay) changes nothing.
    deliver_update(&e, &store, &s);
    assert!(!resync.has_changed().unwrap());
    let mut updated = s.clone();
    updated.host_routes = vec!["10.96.0.0/12".parse().unwrap()];
    deliver_update(&e, &store, &updated);
    // Patching the rack's pool in place would lose its blocks and ranges:
    // the engine asks for a consistent snapshot instead.
    assert!(resync.has_changed().unwrap());
    let a = e.allocate(args("c1")).await.unwrap();
    assert!(a.network.subnet == s.subnet && (0..16).contains(&a.lease.address.octets()[3]));
}
