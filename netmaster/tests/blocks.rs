//! Blocks and the pool view end to end: real etcd, the real
//! rackline-netmaster binary, driven by the real racklinectl (and, for the
//! concurrency test, by the client library from 8 tasks).

mod common;
mod rack_helpers;

use std::net::Ipv4Addr;

use common::{create_args, ctl, put_lease, runtime, store, Etcd, Netmaster};
use rack_helpers::{addrs, assert_tiles, bind, js, revision, setup_prod, spans};
use serde_json::{json, Value};

#[test]
fn blocks_fill_a_rack_exactly_once() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    setup_prod(s);

    let mut got = Vec::new();
    for i in 0.. {
        let node = if i % 2 == 0 { "n1" } else { "n2" };
        let out = ctl(
            s,
            &["block", "acquire", "prod", "--node", node, "-o", "json"],
        );
        if out.code != 0 {
            out.refused("rack \"r1\" has no free block left on network \"prod\"");
            break;
        }
        let b = out.json();
        assert_eq!(
            (b["rack"].as_str(), b["node"].as_str()),
            (Some("r1"), Some(node))
        );
        got.push(b);
        assert!(i < 50, "never exhausted");
    }
    let want = addrs(&[
        ("10.10.1.3", "10.10.1.49"),
        ("10.10.1.53", "10.10.1.100"),
        ("10.10.2.8", "10.10.2.15"),
    ]);
    let listed = js(s, &["block", "list", "--rack", "r1"]);
    assert_eq!(spans(&listed), spans(&Value::Array(got.clone())));
    assert_tiles(&spans(&listed), 16, &want);
    // The exclusion splits one window into two blocks; range edges give
    // short ones.
    let sizes: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [13, 16, 16, 2, 11, 16, 16, 5, 8]);
    // Nothing of r2's range was touched, and r2 still gets its own.
    assert_eq!(js(s, &["block", "list", "--rack", "r2"]), json!([]));
    let b = js(s, &["block", "acquire", "prod", "--node", "n3"]);
    assert_eq!(
        (b["first"].as_str(), b["size"].as_u64()),
        (Some("10.10.3.0"), Some(16))
    );

    let pool = js(s, &["pool", "--network", "prod"]);
    assert_eq!(
        pool,
        json!([
            {"network": "prod", "rack": "r1", "capacity": 103, "blocks": 9,
             "inBlocks": 103, "leased": 0, "free": 103},
            {"network": "prod", "rack": "r2", "capacity": 256, "blocks": 1,
             "inBlocks": 16, "leased": 0, "free": 256}
        ])
    );
    // A returned block is handed out again.
    ctl(
        s,
        &["block", "release", "prod", "10.10.1.48", "--node", "n2"],
    )
    .ok();
    let again = js(s, &["block", "acquire", "prod", "--node", "n1"]);
    assert_eq!(
        (again["first"].as_str(), again["size"].as_u64()),
        (Some("10.10.1.48"), Some(2))
    );
}

#[test]
fn concurrent_acquisitions_never_overlap() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let mut a = create_args("big", "10.50.0.0/16", "10.50.0.1");
    a.extend(["--block-size", "4"]);
    ctl(s, &a).ok();
    ctl(s, &["rack", "create", "r1"]).ok();
    ctl(
        s,
        &bind("r1", "big", "10.50.0.0/16", "10.50.0.1", &["10.50.0.0/25"]),
    )
    .ok();
    let nodes: Vec<String> = (1..=8).map(|i| format!("n{i}")).collect();
    for n in &nodes {
        ctl(s, &["node", "register", n, "--rack", "r1"]).ok();
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(8)
        .enable_all()
        .build()
        .expect("runtime");
    let per_task: Vec<Vec<(u32, u32)>> = rt.block_on(async {
        let mut tasks = Vec::new();
        for n in nodes.clone() {
            let url = nm.url.clone();
            tasks.push(tokio::spawn(async move {
                use rackline_admin_client::{AdminClient, ClientError, Timeouts};
                let mut c = AdminClient::connect(&url, Timeouts::default())
                    .await
                    .expect("connect");
                let mut mine = Vec::new();
                loop {
                    match c.blocks().acquire_block("big", &n).await {
                        Ok(b) => {
                            assert_eq!(b.node, n);
                            let first = u32::from(b.first.parse::<Ipv4Addr>().expect("first"));
                            mine.push((first, first + b.size - 1));
                        }
                        Err(ClientError::Rpc(st))
                            if st.code() == tonic::Code::ResourceExhausted =>
                        {
                            return mine;
                        }
                        Err(e) => panic!("{n}: {e}"),
                    }
                }
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("task"));
        }
        out
    });
    let mut all: Vec<(u32, u32)> = per_task.concat();
    all.sort();
    // 10.50.0.0 is the /16's network address and .1 the gateway.
    let want = addrs(&[("10.50.0.2", "10.50.0.127")]);
    assert_tiles(&all, 4, &want);
    assert_eq!(all.len(), 32);
    assert_eq!(spans(&js(s, &["block", "list", "--network", "big"])), all);
}

#[test]
fn release_needs_an_empty_block() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let store = store(&etcd, &rt);
    setup_prod(s);
    let b = js(s, &["block", "acquire", "prod", "--node", "n1"]);
    assert_eq!(b["first"], "10.10.1.3");
    put_lease(
        &rt,
        &store,
        "prod",
        "10.10.1.15",
        "n1",
        ("default", "web-0"),
    );
    let listed = js(s, &["block", "list", "--node", "n1"]);
    assert_eq!(listed[0]["leased"], 1);

    let before = revision(&rt, &store);
    ctl(s, &["block", "release", "prod", "10.10.1.3", "--node", "n1"]).refused(
        "block 10.10.1.3 of network \"prod\" still has 1 lease(s); only an empty block can be released",
    );
    assert_eq!(revision(&rt, &store), before);
    // The lease just past the block's end does not count.
    put_lease(
        &rt,
        &store,
        "prod",
        "10.10.1.16",
        "n2",
        ("default", "web-1"),
    );
    let lease = rt
        .block_on(
            store
                .leases()
                .get_lease("prod", "10.10.1.15".parse().unwrap()),
        )
        .expect("get lease")
        .expect("lease exists");
    assert!(rt
        .block_on(store.leases().delete_lease(
            "prod",
            "10.10.1.15".parse().unwrap(),
            lease.mod_revision
        ))
        .expect("delete lease"));
    let out = ctl(
        s,
        &["block", "release", "prod", "10.10.1.3", "--node", "n1"],
    );
    assert_eq!(
        out.stdout, "block 10.10.1.3 of network prod released\n",
        "{out:?}"
    );
    assert_eq!(
        js(
            s,
            &["block", "release", "prod", "10.10.1.3", "--node", "n1"]
        ),
        json!({"released": false})
    );
    assert_eq!(js(s, &["block", "list", "--node", "n1"]), json!([]));
}

#[test]
fn pool_numbers_are_exact() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let store = store(&etcd, &rt);
    setup_prod(s);
    ctl(s, &["rack", "create", "r3"]).ok();
    ctl(s, &bind("r3", "prod", "10.30.0.0/24", "10.30.0.1", &[])).ok();
    ctl(s, &create_args("dev", "10.20.0.0/24", "10.20.0.1")).ok();
    for a in ["10.20.0.5", "10.20.0.6", "10.20.0.7"] {
        put_lease(&rt, &store, "dev", a, "n9", ("dev", a));
    }
    for n in ["n1", "n1", "n3"] {
        ctl(s, &["block", "acquire", "prod", "--node", n]).ok();
    }
    for (a, n) in [
        ("10.10.1.5", "n1"),
        ("10.10.1.20", "n1"),
        ("10.10.1.90", "n2"), // in r1's ranges, outside any block
        ("10.10.3.1", "n3"),
        ("10.10.0.200", "n1"), // in no rack's ranges: counted nowhere
    ] {
        put_lease(&rt, &store, "prod", a, n, ("default", a));
    }
    let out = ctl(s, &["pool"]);
    assert_eq!(
        out.stdout,
        "\
NETWORK   RACK   CAPACITY   BLOCKS   IN-BLOCKS   LEASED   FREE   USED%
dev       -      253        0        0           3        250    1.2%
prod      r1     103        2        29          3        100    2.9%
prod      r2     256        1        16          1        255    0.4%
prod      r3     253        0        0           0        253    0.0%
",
        "{out:?}"
    );
    let rows = js(s, &["pool", "--network", "dev"]);
    assert_eq!(
        rows,
        json!([{"network": "dev", "rack": "", "capacity": 253, "blocks": 0,
                "inBlocks": 0, "leased": 3, "free": 250}])
    );

    // Block and node views agree with the pool.
    let blocks = js(s, &["block", "list", "--network", "prod"]);
    let leased: Vec<(String, u64)> = blocks
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["first"].as_str().unwrap().to_string(),
                b["leased"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        leased,
        [
            ("10.10.1.3".into(), 1),
            ("10.10.1.16".into(), 1),
            ("10.10.3.0".into(), 1)
        ]
    );
    let n1 = js(s, &["node", "show", "n1"]);
    assert_eq!(n1["leases"], 3);
    assert_eq!(n1["blocks"].as_array().map(Vec::len), Some(2));

    // lease list --rack: leases of the rack's nodes, wherever they are.
    let by_rack: Vec<String> = js(s, &["lease", "list", "--rack", "r1"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["address"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        by_rack,
        ["10.10.0.200", "10.10.1.5", "10.10.1.20", "10.10.1.90"]
    );
    assert_eq!(js(s, &["lease", "list", "--rack", "r3"]), json!([]));
    assert_eq!(js(s, &["lease", "list", "--rack", "ghost"]), json!([]));

    // Deleting the network takes its bindings and blocks along.
    ctl(s, &["network", "delete", "prod", "--force"]).ok();
    assert_eq!(js(s, &["block", "list"]), json!([]));
    assert_eq!(js(s, &["rack", "show", "r1"])["networks"], json!([]));
}
