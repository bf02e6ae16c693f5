//! Helpers shared by the rack and block end-to-end tests.

#![allow(dead_code)] // each test file uses a different part

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rackline_store::Store;
use serde_json::Value;

use crate::common::{create_args, ctl};

/// racklinectl with `-o json`, which must succeed.
pub fn js(s: &str, args: &[&str]) -> Value {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    ctl(s, &a).json()
}

/// The current etcd revision: any write, even one that wrote "nothing
/// visible", moves it.
pub fn revision(rt: &tokio::runtime::Runtime, store: &Store) -> i64 {
    rt.block_on(store.list_networks()).expect("read revision").1
}

pub fn bind<'a>(
    rack: &'a str,
    net: &'a str,
    subnet: &'a str,
    gw: &'a str,
    ranges: &[&'a str],
) -> Vec<&'a str> {
    let mut a = vec![
        "rack",
        "bind",
        rack,
        net,
        "--subnet",
        subnet,
        "--gateway",
        gw,
    ];
    for r in ranges {
        a.extend(["--range", *r]);
    }
    a
}

/// prod: 10.10.0.0/16, 10.10.1.50-52 excluded; r1 gets 10.10.1.3-100 and
/// 10.10.2.8/29 (103 addresses), r2 gets 10.10.3.0/24 (256); nodes n1, n2
/// in r1 and n3 in r2.
pub fn setup_prod(s: &str) {
    let mut a = create_args("prod", "10.10.0.0/16", "10.10.0.1");
    a.extend(["--exclude", "10.10.1.50-10.10.1.52", "--block-size", "16"]);
    ctl(s, &a).ok();
    for r in ["r1", "r2"] {
        ctl(s, &["rack", "create", r]).ok();
    }
    let r1 = &["10.10.1.3-10.10.1.100", "10.10.2.8/29"];
    ctl(s, &bind("r1", "prod", "10.10.0.0/16", "10.10.0.1", r1)).ok();
    ctl(
        s,
        &bind("r2", "prod", "10.10.0.0/16", "10.10.0.1", &["10.10.3.0/24"]),
    )
    .ok();
    for (n, r) in [("n1", "r1"), ("n2", "r1"), ("n3", "r2")] {
        ctl(s, &["node", "register", n, "--rack", r]).ok();
    }
}

pub fn ip(v: &Value) -> u32 {
    u32::from(
        v.as_str()
            .expect("address")
            .parse::<Ipv4Addr>()
            .expect("IPv4"),
    )
}

/// `(first, last)` of every block in a `block list -o json`, sorted.
pub fn spans(blocks: &Value) -> Vec<(u32, u32)> {
    let mut v: Vec<(u32, u32)> = blocks
        .as_array()
        .expect("array")
        .iter()
        .map(|b| {
            let first = ip(&b["first"]);
            let size = u32::try_from(b["size"].as_u64().expect("size")).expect("u32");
            (first, first + size - 1)
        })
        .collect();
    v.sort();
    v
}

pub fn addrs(runs: &[(&str, &str)]) -> BTreeSet<u32> {
    let mut set = BTreeSet::new();
    for (a, b) in runs {
        let (a, b): (Ipv4Addr, Ipv4Addr) = (a.parse().unwrap(), b.parse().unwrap());
        set.extend(u32::from(a)..=u32::from(b));
    }
    set
}

/// Blocks never overlap, never straddle a block-size window, and together
/// cover exactly `want`.
pub fn assert_tiles(spans: &[(u32, u32)], block_size: u32, want: &BTreeSet<u32>) {
    let mut covered = BTreeSet::new();
    for w in spans.windows(2) {
        assert!(w[0].1 < w[1].0, "blocks overlap: {w:?}");
    }
    for &(a, b) in spans {
        assert_eq!(
            a / block_size,
            b / block_size,
            "block {a}-{b} straddles a window"
        );
        for x in a..=b {
            assert!(
                want.contains(&x),
                "{} is outside the rack's ranges",
                Ipv4Addr::from(x)
            );
            covered.insert(x);
        }
    }
    assert_eq!(
        &covered, want,
        "blocks must cover every allocatable address"
    );
}
