//! Writes that belong to the leader, end to end on a real etcd and real
//! `rackline-netmaster` replicas: reservation pin/release are refused by a
//! follower like every other admin write, and AcquireBlock asked twice for
//! the same need (a lost reply) hands out one block, not two.

mod common;
mod rack_helpers;

use std::time::{Duration, Instant};

use common::{create_args, ctl, runtime, store, Etcd, Netmaster};
use rack_helpers::{bind, js};
use rackline_proto::admin::v1 as pb;
use tokio::runtime::Runtime;
use tonic::Code;

type Raw = pb::admin_client::AdminClient<tonic::transport::Channel>;

fn raw(rt: &Runtime, url: &str) -> Raw {
    rt.block_on(Raw::connect(url.to_string()))
        .expect("connect to the replica")
}

/// Index of the replica that leads, once exactly one does.
fn leader(rt: &Runtime, nms: &[Netmaster]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let leading: Vec<usize> = (0..nms.len())
            .filter(|&i| {
                rt.block_on(raw(rt, &nms[i].url).leader(pb::LeaderRequest {}))
                    .is_ok_and(|r| r.get_ref().is_self)
            })
            .collect();
        if leading.len() == 1 {
            return leading[0];
        }
        assert!(Instant::now() < deadline, "no single leader: {leading:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The etcd revision: any write moves it.
fn revision(rt: &Runtime, st: &rackline_store::Store) -> i64 {
    rt.block_on(st.list_networks()).expect("read revision").1
}

#[test]
fn a_follower_refuses_reservation_pin_and_release() {
    let etcd = Etcd::start();
    let rt = runtime();
    let nms: Vec<Netmaster> = ["nm-a", "nm-b"]
        .iter()
        .map(|id| Netmaster::start_with(&etcd, &["--id", id, "--lease-ttl-secs", "3"]))
        .collect();
    let st = store(&etcd, &rt);
    let li = leader(&rt, &nms);
    let fi = 1 - li;
    let lead = nms[li].url.as_str();
    ctl(lead, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    // A reservation to release, made through the leader.
    ctl(
        lead,
        &[
            "reservation",
            "pin",
            "prod",
            "default",
            "db-0",
            "10.10.0.40",
        ],
    )
    .ok();
    let before = revision(&rt, &st);
    // Wait for the follower to have learnt who leads (its hint names it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut f = raw(&rt, &nms[fi].url);
    let err = loop {
        let err = rt
            .block_on(f.pin_reservation(pb::PinReservationRequest {
                network: "prod".into(),
                namespace: "default".into(),
                name: "web-0".into(),
                address: "10.10.0.50".into(),
            }))
            .expect_err("a follower must refuse a pin");
        if err.message().contains(nms[li].addr()) || Instant::now() > deadline {
            break err;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message()
            .contains(&format!("not the leader; leader is {}", nms[li].addr())),
        "{err:?}"
    );
    let err = rt
        .block_on(f.release_reservation(pb::ReleaseReservationRequest {
            network: "prod".into(),
            namespace: "default".into(),
            name: "db-0".into(),
            force: false,
        }))
        .expect_err("a follower must refuse a release");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(revision(&rt, &st), before, "a follower wrote to etcd");

    // racklinectl given the follower first follows the hint to the leader.
    let list = format!("{},{}", nms[fi].url, lead);
    ctl(
        &list,
        &["reservation", "release", "prod", "default", "db-0"],
    )
    .ok();
    let left = js(lead, &["reservation", "list"]);
    assert_eq!(left, serde_json::json!([]), "{left}");
}

#[test]
fn acquire_block_asked_again_returns_the_block_it_already_gave() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let st = store(&etcd, &rt);
    let mut a = create_args("prod", "10.10.0.0/24", "10.10.0.1");
    a.extend(["--block-size", "16"]);
    ctl(s, &a).ok();
    ctl(s, &["rack", "create", "r1"]).ok();
    ctl(s, &bind("r1", "prod", "10.10.0.0/24", "10.10.0.1", &[])).ok();
    for n in ["n1", "n2"] {
        ctl(s, &["node", "register", n, "--rack", "r1"]).ok();
    }
    let mut c = raw(&rt, s);
    let mut acquire = |node: &str, known: &[&str]| {
        rt.block_on(c.acquire_block(pb::AcquireBlockRequest {
            network: "prod".into(),
            node: node.into(),
            known: Some(pb::KnownBlocks {
                first: known.iter().map(|k| k.to_string()).collect(),
            }),
        }))
        .expect("acquire")
        .into_inner()
    };
    let first = acquire("n1", &[]);
    assert_eq!(first.first, "10.10.0.2");
    // The reply was lost: ipamd asks again knowing no block yet. It gets the
    // same block, and nothing is written.
    let rev = revision(&rt, &st);
    let again = acquire("n1", &[]);
    assert_eq!(
        (again.first.as_str(), again.size),
        ("10.10.0.2", first.size)
    );
    assert_eq!(revision(&rt, &st), rev);
    // Another node's request is its own.
    let other = acquire("n2", &[]);
    assert_eq!(other.first, "10.10.0.16");
    // Once the node knows its block, it gets a new one when it asks.
    let second = acquire("n1", &["10.10.0.2"]);
    assert_eq!(second.first, "10.10.0.32");
    let third = acquire("n1", &["10.10.0.32"]);
    assert_eq!(
        third.first, "10.10.0.2",
        "the lowest unseen block comes back"
    );
    let blocks = js(s, &["block", "list", "--node", "n1"]);
    assert_eq!(blocks.as_array().map(Vec::len), Some(2), "{blocks}");
    // Without the field (racklinectl, an older ipamd): a new block each time.
    let out = js(s, &["block", "acquire", "prod", "--node", "n1"]);
    assert_eq!(out["first"], "10.10.0.48");
    assert_eq!(
        js(s, &["block", "list", "--node", "n1"])
            .as_array()
            .map(Vec::len),
        Some(3)
    );
}
