//! Node lifecycle end to end with real etcd, the real rackline-netmaster and
//! racklinectl: node drain and delete, dead-node reclaim after the grace,
//! and the drain a network delete waits for. ipamd's side (its liveness
//! record, its standby records) is written here through the store, as
//! ipamd writes it.

mod common;
mod rack_helpers;

use std::time::{Duration, Instant};

use common::{create_args, ctl, put_lease, runtime, store, Etcd, Netmaster};
use rack_helpers::{bind, js};
use rackline_model::{DrainTarget, Identity, Lease, LeaseState, Liveness};
use rackline_store::{CreateLease, NodeLock, StickyWrite, Store};
use serde_json::Value;

/// prod (10.10.0.0/16, pods named db-N sticky for 10 min), rack r1 bound on
/// 10.10.1.3-10.10.1.100 with nodes n1 and n2, each with one block.
fn setup(s: &str) {
    let mut a = create_args("prod", "10.10.0.0/16", "10.10.0.1");
    a.extend([
        "--block-size",
        "16",
        "--sticky-pod",
        "db-\\d+",
        "--sticky-hold-secs",
        "600",
    ]);
    ctl(s, &a).ok();
    ctl(s, &["rack", "create", "r1"]).ok();
    ctl(
        s,
        &bind(
            "r1",
            "prod",
            "10.10.0.0/16",
            "10.10.0.1",
            &["10.10.1.3-10.10.1.100"],
        ),
    )
    .ok();
    for n in ["n1", "n2"] {
        ctl(s, &["node", "register", n, "--rack", "r1"]).ok();
        ctl(s, &["block", "acquire", "prod", "--node", n]).ok();
    }
}

fn standby(rt: &tokio::runtime::Runtime, st: &Store, addr: &str, node: &str) {
    let net = rt.block_on(st.get_network("prod")).unwrap().unwrap();
    let l = Lease::standby("prod", addr.parse().unwrap(), node, 1);
    let r = rt
        .block_on(st.leases().create_lease(&l, net.create_revision))
        .unwrap();
    assert!(matches!(r, CreateLease::Created { .. }), "{r:?}");
}

/// A running sticky pod's lease and identity, as ipamd writes them.
fn sticky(rt: &tokio::runtime::Runtime, st: &Store, addr: &str, node: &str, pod: &str) {
    let mut l = put_lease(rt, st, "prod", addr, node, ("default", pod));
    let cur = rt
        .block_on(st.leases().get_lease("prod", l.address))
        .unwrap()
        .unwrap();
    l.sticky = true;
    let id = Identity {
        network: "prod".into(),
        namespace: "default".into(),
        name: pod.into(),
        address: l.address,
        pinned: false,
        rack: Some("r1".into()),
        created_unix_ms: 1,
        opt_in: false,
    };
    let w = rt
        .block_on(
            st.leases()
                .write_sticky(&l, cur.mod_revision, &id, 0, None, vec![]),
        )
        .unwrap();
    assert!(matches!(w, StickyWrite::Done { .. }), "{w:?}");
}

/// Holds `node`'s liveness record as its ipamd would; returns the etcd lease.
fn hold_liveness(rt: &tokio::runtime::Runtime, st: &Store, node: &str) -> i64 {
    let g = rt.block_on(st.etcd_leases().grant(60)).unwrap();
    let rec = Liveness {
        instance: format!("test-{node}"),
        host: "test".into(),
        pid: 1,
        since_unix_ms: 1,
        ttl_secs: 60,
    };
    let r = rt
        .block_on(st.liveness().try_lock_node(node, &rec, g.id))
        .unwrap();
    assert!(matches!(r, NodeLock::Acquired { .. }), "{r:?}");
    g.id
}

fn node_row(s: &str, name: &str) -> Option<Value> {
    js(s, &["node", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node"]["name"] == name)
        .cloned()
}

fn lease_at(s: &str, addr: &str) -> Option<Value> {
    js(s, &["lease", "list"])
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["address"] == addr)
        .cloned()
}

fn blocks_of(s: &str, node: &str) -> usize {
    js(s, &["block", "list", "--node", node])
        .as_array()
        .unwrap()
        .len()
}

#[test]
fn node_delete_refuses_a_live_or_busy_node_then_retires_what_it_holds() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let st = store(&etcd, &rt);
    setup(s);
    // n1 (block 10.10.1.3-15): a pod, a sticky pod, a standby record.
    put_lease(&rt, &st, "prod", "10.10.1.4", "n1", ("default", "web-0"));
    sticky(&rt, &st, "10.10.1.5", "n1", "db-0");
    standby(&rt, &st, "10.10.1.6", "n1");
    let lease = hold_liveness(&rt, &st, "n1");

    let row = node_row(s, "n1").unwrap();
    assert_eq!(
        (row["live"].as_bool(), row["state"].as_str()),
        (Some(true), Some("ready"))
    );
    ctl(s, &["node", "delete", "n1"]).refused("node \"n1\" is live");

    // Drained: no new block, and `node list` says so.
    let d = js(s, &["node", "drain", "n1"]);
    assert_eq!(d["state"], "draining");
    ctl(s, &["block", "acquire", "prod", "--node", "n1"])
        .refused("node \"n1\" is being drained: no new block for node \"n1\"");
    assert_eq!(node_row(s, "n1").unwrap()["state"], "draining");
    let table = ctl(s, &["node", "list"]).stdout;
    assert!(
        table.contains("STATE") && table.contains("draining"),
        "{table}"
    );

    // Its ipamd stops: not live any more, but pods still hold addresses.
    rt.block_on(st.etcd_leases().revoke(lease)).unwrap();
    assert_eq!(node_row(s, "n1").unwrap()["live"], false);
    ctl(s, &["node", "delete", "n1"])
        .refused("node \"n1\" still holds 2 pod lease(s) (default/web-0, default/db-0)");

    let r = js(s, &["node", "delete", "n1", "--force"]);
    assert_eq!(
        r,
        serde_json::json!({"leasesFreed": 1, "reserved": 1, "standbyFreed": 1, "blocksReturned": 1})
    );
    assert!(lease_at(s, "10.10.1.4").is_none());
    assert!(lease_at(s, "10.10.1.6").is_none());
    let held = lease_at(s, "10.10.1.5").expect("the sticky address is kept");
    assert_eq!(held["state"], "reserved", "{held}");
    assert!(held["expiresUnixMs"].as_i64().unwrap_or(0) > 0, "{held}");
    assert!(node_row(s, "n1").is_none());
    assert_eq!(blocks_of(s, "n1"), 0);
    ctl(s, &["node", "delete", "n1"]).refused("node \"n1\" is not registered");
    // The drain marker went with the node: a node registering under the
    // name again starts ready.
    assert!(rt.block_on(st.admin_reads().drains()).unwrap().is_empty());

    // A node with only its reserve: no --force needed.
    standby(&rt, &st, "10.10.1.20", "n2");
    let r = js(s, &["node", "delete", "n2"]);
    assert_eq!(r["standbyFreed"], 1);
    assert_eq!(r["blocksReturned"], 1);
    assert!(js(s, &["node", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn a_dead_node_is_reclaimed_after_its_grace_and_a_live_one_is_not() {
    let etcd = Etcd::start();
    let nm = Netmaster::start_with(&etcd, &["--dead-node-grace", "2"]);
    let s = nm.url.as_str();
    let rt = runtime();
    let st = store(&etcd, &rt);
    setup(s);
    put_lease(&rt, &st, "prod", "10.10.1.4", "n1", ("default", "web-0"));
    sticky(&rt, &st, "10.10.1.5", "n1", "db-0");
    standby(&rt, &st, "10.10.1.6", "n1");
    // n2 is live: its pod and block stay.
    let _n2 = hold_liveness(&rt, &st, "n2");
    put_lease(&rt, &st, "prod", "10.10.1.20", "n2", ("default", "web-1"));
    let t = Instant::now();
    assert_eq!(blocks_of(s, "n1"), 1, "reclaimed before the grace");

    while blocks_of(s, "n1") > 0 {
        assert!(t.elapsed() < Duration::from_secs(20), "n1 never reclaimed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(lease_at(s, "10.10.1.4").is_none(), "web-0 kept");
    assert!(lease_at(s, "10.10.1.6").is_none(), "standby kept");
    let held = lease_at(s, "10.10.1.5").expect("db-0's address kept");
    assert_eq!(held["state"], "reserved", "{held}");
    // The node record stays: the node may come back.
    let row = node_row(s, "n1").unwrap();
    assert_eq!(
        (row["live"].as_bool(), row["leases"].as_u64()),
        (Some(false), Some(1))
    );
    assert_eq!(blocks_of(s, "n2"), 1);
    assert_eq!(lease_at(s, "10.10.1.20").unwrap()["state"], "active");
    let res = rt
        .block_on(st.leases().identity_view("prod", "default", "db-0"))
        .unwrap()
        .unwrap();
    assert_eq!(res.lease.unwrap().lease.state, LeaseState::Reserved);

    // The IP event stream says why.
    let out = ctl(s, &["events", "-o", "json"]).stdout;
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by = |addr: &str, kind: &str| {
        events
            .iter()
            .any(|e| e["address"] == addr && e["kind"] == kind && e["reason"] == "dead-node")
    };
    assert!(by("10.10.1.4", "reclaimed"), "{out}");
    assert!(by("10.10.1.5", "reserved"), "{out}");
    assert!(
        nm.stderr().contains("dead node reclaimed"),
        "{}",
        nm.stderr()
    );
}

#[test]
fn a_network_delete_waits_for_the_reserve_to_be_given_back() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let st = store(&etcd, &rt);
    setup(s);
    standby(&rt, &st, "10.10.1.6", "n1");
    standby(&rt, &st, "10.10.1.7", "n1");

    // Nobody live to give it back: refused at once, naming the node, and
    // the marker does not stay behind.
    let t = Instant::now();
    ctl(s, &["network", "delete", "prod"]).refused(
        "network \"prod\" still has 2 standby record(s) of node(s) n1 (2), not given back",
    );
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    ctl(s, &["network", "delete", "prod"]).refused("no ipamd is live on n1");
    assert!(rt.block_on(st.admin_reads().drains()).unwrap().is_empty());

    // A live n1 that returns its records once it sees the marker, as
    // ipamd does.
    let _lease = hold_liveness(&rt, &st, "n1");
    let endpoint = etcd.endpoint();
    let ipamd = std::thread::spawn(move || {
        let rt = runtime();
        let st2 = rt
            .block_on(Store::connect(
                &[endpoint],
                common::PREFIX,
                Duration::from_secs(2),
            ))
            .unwrap();
        let marker = DrainTarget::Network("prod".into());
        let deadline = Instant::now() + Duration::from_secs(10);
        while !rt
            .block_on(st2.admin_reads().drains())
            .unwrap()
            .contains(&marker)
        {
            assert!(Instant::now() < deadline, "no drain marker");
            std::thread::sleep(Duration::from_millis(100));
        }
        let (leases, _) = rt.block_on(st2.list_leases(Some("prod"))).unwrap();
        for l in leases {
            assert!(rt
                .block_on(
                    st2.leases()
                        .delete_lease("prod", l.lease.address, l.mod_revision)
                )
                .unwrap());
        }
    });
    ctl(s, &["network", "delete", "prod", "--wait", "10"]).ok();
    ipamd.join().unwrap();
    assert!(js(s, &["network", "list"]).as_array().unwrap().is_empty());
    assert!(rt.block_on(st.admin_reads().drains()).unwrap().is_empty());
}
