//! Racks, bindings and nodes end to end: real etcd, the real
//! rackline-netmaster binary, driven by the real racklinectl. Every refused
//! request must leave the etcd revision where it was.

mod common;
mod rack_helpers;

use common::{create_args, ctl, put_lease, runtime, store, Etcd, Netmaster};
use rack_helpers::{bind, js, revision, setup_prod};
use serde_json::json;

#[test]
fn racks_bindings_and_nodes_in_table_and_json() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    ctl(s, &create_args("prod", "10.10.0.0/16", "10.10.0.1")).ok();

    let out = ctl(s, &["rack", "create", "r1", "--description", "row 3, left"]);
    assert_eq!(
        out.stdout, "Name:        r1\nDescription: row 3, left\nNodes:       -\nNetworks:    -\n",
        "{out:?}"
    );
    assert_eq!(
        js(s, &["rack", "create", "r2"]),
        json!({"name": "r2", "description": ""})
    );
    let list = ctl(s, &["rack", "list"]);
    assert_eq!(
        list.stdout,
        "RACK   DESCRIPTION\nr1     row 3, left\nr2     -\n"
    );

    let b = js(
        s,
        &bind("r1", "prod", "10.10.0.0/16", "10.10.0.1", &["10.10.1.0/24"]),
    );
    assert_eq!(
        b,
        json!({"rack": "r1", "network": "prod", "subnet": "10.10.0.0/16",
               "gateway": "10.10.0.1", "ranges": ["10.10.1.0-10.10.1.255"], "exclude": []})
    );
    // A rack with its own subnet and gateway, whole subnet.
    let out = ctl(s, &bind("r2", "prod", "10.30.0.0/24", "10.30.0.1", &[]));
    assert!(
        out.stdout.contains("Ranges:      whole subnet\n"),
        "{out:?}"
    );
    ctl(
        s,
        &[
            "node",
            "register",
            "n1",
            "--rack",
            "r1",
            "--address",
            "10.0.0.11",
        ],
    )
    .ok();
    let n = js(s, &["node", "register", "n2", "--rack", "r1"]);
    assert_eq!(
        (n["name"].as_str(), n["rack"].as_str()),
        (Some("n2"), Some("r1"))
    );
    assert!(n["registeredUnixMs"].as_i64().unwrap_or(0) > 0, "{n}");

    let shown = js(s, &["rack", "show", "r1"]);
    assert_eq!(
        shown,
        json!({"rack": {"name": "r1", "description": "row 3, left"},
               "networks": [b], "nodes": ["n1", "n2"]})
    );
    let out = ctl(s, &["rack", "show", "r1"]);
    assert!(out.stdout.contains("Nodes:       n1, n2\n"), "{out:?}");
    assert!(
        out.stdout
            .contains("  prod      r1     10.10.0.0/16   10.10.0.1   10.10.1.0-10.10.1.255   -\n"),
        "{out:?}"
    );

    let nodes = js(s, &["node", "list", "--rack", "r1"]);
    assert_eq!(nodes.as_array().map(Vec::len), Some(2));
    assert_eq!(nodes[0]["node"]["addresses"], json!(["10.0.0.11"]));
    assert_eq!(
        (nodes[0]["blocks"].clone(), nodes[0]["leases"].clone()),
        (json!([]), json!(0))
    );
    let table = ctl(s, &["node", "list"]);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(
        lines[0].starts_with(
            "NODE   RACK   STATE   LIVE   ADDRESSES   BLOCKS   IN-BLOCKS   LEASES   REGISTERED"
        ),
        "{lines:?}"
    );
    assert!(
        lines[1]
            .starts_with("n1     r1     ready   no     10.0.0.11   0        0           0        "),
        "{lines:?}"
    );
    assert_eq!(js(s, &["node", "list", "--rack", "r2"]), json!([]));
    let out = ctl(s, &["node", "show", "n1"]);
    assert!(
        out.stdout.starts_with("Name:        n1\nRack:        r1\n"),
        "{out:?}"
    );

    // Re-registering in the same rack refreshes the record.
    let again = js(
        s,
        &[
            "node",
            "register",
            "n1",
            "--rack",
            "r1",
            "--address",
            "10.0.0.12",
        ],
    );
    assert_eq!(again["addresses"], json!(["10.0.0.12"]));
    // A node without blocks or leases may move.
    let moved = js(s, &["node", "register", "n2", "--rack", "r2"]);
    assert_eq!(moved["rack"], "r2");

    ctl(s, &["rack", "unbind", "r2", "prod"]).ok();
    assert_eq!(js(s, &["rack", "show", "r2"])["networks"], json!([]));
    // r2 still has n2: the rack stays until its nodes move away.
    ctl(s, &["rack", "delete", "r2"])
        .refused("rack \"r2\" is in use: 1 node(s) (n2) and 0 block(s)");
    ctl(s, &["node", "register", "n2", "--rack", "r1"]).ok();
    assert_eq!(js(s, &["rack", "delete", "r2"]), json!({}));
    assert_eq!(
        js(s, &["rack", "list"]),
        json!([{"name": "r1", "description": "row 3, left"}])
    );
    ctl(s, &["rack", "show", "r2"]).refused("rack \"r2\" not found");
}

#[test]
fn invalid_requests_are_refused_and_write_nothing() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let store = store(&etcd, &rt);
    setup_prod(s);
    ctl(s, &create_args("dev", "10.20.0.0/24", "10.20.0.1")).ok();
    ctl(s, &["rack", "create", "r3"]).ok();
    ctl(s, &["node", "register", "n4", "--rack", "r3"]).ok();
    // n1 owns a block; n2 holds a lease in r1's ranges outside any block.
    let blk = js(s, &["block", "acquire", "prod", "--node", "n1"]);
    assert_eq!(
        (blk["first"].as_str(), blk["size"].as_u64()),
        (Some("10.10.1.3"), Some(13))
    );
    put_lease(
        &rt,
        &store,
        "prod",
        "10.10.1.90",
        "n2",
        ("default", "web-0"),
    );

    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["rack", "create", "Bad_Name"],
            "invalid rack name \"Bad_Name\"",
        ),
        (vec!["rack", "create", "r1"], "rack \"r1\" already exists"),
        (
            bind(
                "r3",
                "prod",
                "10.10.0.0/16",
                "10.10.0.1",
                &["10.10.1.96-10.10.1.120"],
            ),
            "its ranges overlap those of rack \"r1\"",
        ),
        (
            bind("r3", "prod", "10.40.0.0/24", "10.41.0.1", &[]),
            "gateway 10.41.0.1 is outside subnet 10.40.0.0/24",
        ),
        (
            bind("r3", "prod", "10.10.0.0/16", "10.10.0.1", &["10.11.0.0/24"]),
            "range 10.11.0.0-10.11.0.255 is outside subnet 10.10.0.0/16",
        ),
        (
            bind("r3", "prod", "10.10.8.0/24", "10.10.8.1", &[]),
            "must either be the network's subnet 10.10.0.0/16 or not overlap it",
        ),
        (
            bind("r3", "prod", "10.20.0.0/25", "10.20.0.1", &[]),
            "subnet 10.20.0.0/25 overlaps subnet 10.20.0.0/24 of network \"dev\"",
        ),
        (
            bind("ghost", "prod", "10.40.0.0/24", "10.40.0.1", &[]),
            "rack \"ghost\" not found",
        ),
        (
            bind("r3", "ghost", "10.40.0.0/24", "10.40.0.1", &[]),
            "network \"ghost\" not found",
        ),
        (
            bind("r3", "prod", "10.40.0.5/24", "10.40.0.1", &[]),
            "did you mean 10.40.0.0/24?",
        ),
        // A replacement may not strand n1's block 10.10.1.3-15.
        (
            bind(
                "r1",
                "prod",
                "10.10.0.0/16",
                "10.10.0.1",
                &["10.10.1.16-10.10.1.100"],
            ),
            "block 10.10.1.3 (node \"n1\") of rack \"r1\" would fall outside the new ranges",
        ),
        (
            vec!["rack", "delete", "r1"],
            "rack \"r1\" is in use: 2 node(s) (n1, n2) and 1 block(s)",
        ),
        (vec!["rack", "delete", "ghost"], "rack \"ghost\" not found"),
        (
            vec!["rack", "unbind", "r1", "prod"],
            "rack \"r1\" on network \"prod\" still has 1 pod lease(s) (default/web-0); \
             delete those pods first",
        ),
        (
            vec!["rack", "unbind", "r3", "prod"],
            "rack \"r3\" is not bound to network \"prod\"",
        ),
        (
            vec!["node", "register", "n1", "--rack", "r2"],
            "node \"n1\" is registered in rack \"r1\" and still owns 1 block(s) and 0 lease(s)",
        ),
        (
            vec!["node", "register", "n2", "--rack", "r2"],
            "still owns 0 block(s) and 1 lease(s)",
        ),
        (
            vec!["node", "register", "n9", "--rack", "ghost"],
            "rack \"ghost\" not found",
        ),
        (
            vec!["node", "register", "N9", "--rack", "r1"],
            "invalid node name \"N9\"",
        ),
        (
            vec![
                "node",
                "register",
                "n9",
                "--rack",
                "r1",
                "--address",
                "10.0.0.1/24",
            ],
            "invalid node address \"10.0.0.1/24\"",
        ),
        (
            vec!["node", "show", "ghost"],
            "node \"ghost\" is not registered",
        ),
        (
            vec!["block", "acquire", "prod", "--node", "ghost"],
            "node \"ghost\" is not registered",
        ),
        (
            vec!["block", "acquire", "prod", "--node", "n4"],
            "rack \"r3\" is not bound to network \"prod\"",
        ),
        (
            vec!["block", "acquire", "ghost", "--node", "n1"],
            "network \"ghost\" not found",
        ),
        (
            vec!["block", "release", "prod", "10.10.1.3", "--node", "n2"],
            "block 10.10.1.3 of network \"prod\" belongs to node \"n1\", not \"n2\"",
        ),
        (
            vec!["block", "list", "--rack", "a/b"],
            "invalid rack name \"a/b\"",
        ),
        (
            vec!["pool", "--network", "ghost"],
            "network \"ghost\" not found",
        ),
        // Network subnets may not overlap other networks' rack subnets.
        (
            create_args("edge", "10.30.0.0/24", "10.30.0.1"),
            "overlaps subnet 10.30.0.0/24 of network \"prod (rack r2)\"",
        ),
    ];
    // r2 gets its own subnet so the last case has something to hit.
    ctl(s, &bind("r2", "prod", "10.30.0.0/24", "10.30.0.1", &[])).ok();
    for (args, msg) in cases {
        let before = revision(&rt, &store);
        ctl(s, &args).refused(msg);
        assert_eq!(revision(&rt, &store), before, "{args:?} must write nothing");
    }
}

/// A rack with its own subnet and no range, its infrastructure declared with `--exclude`: the
/// binding shows it, blocks are carved around it and around every gateway, and neither an
/// exclusion nor a registered node's address can be pinned to a pod.
#[test]
fn binding_exclusions_are_stored_shown_and_honoured() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let mut a = create_args("prod", "10.10.0.0/24", "10.10.0.1");
    a.extend(["--block-size", "16"]);
    ctl(s, &a).ok();
    ctl(s, &["rack", "create", "r2"]).ok();
    let mut b = bind("r2", "prod", "10.11.0.0/24", "10.11.0.1", &[]);
    b.extend([
        "--exclude",
        "10.11.0.2-10.11.0.9",
        "--exclude",
        "10.11.0.16/30",
    ]);
    let bound = js(s, &b);
    assert_eq!(
        bound,
        json!({"rack": "r2", "network": "prod", "subnet": "10.11.0.0/24",
               "gateway": "10.11.0.1", "ranges": [],
               "exclude": ["10.11.0.2-10.11.0.9", "10.11.0.16-10.11.0.19"]})
    );
    assert_eq!(js(s, &["rack", "show", "r2"])["networks"][0], bound);
    let out = ctl(s, &["rack", "show", "r2"]);
    assert!(
        out.stdout.contains(
            "  prod      r2     10.11.0.0/24   10.11.0.1   whole subnet   10.11.0.2-10.11.0.9,10.11.0.16-10.11.0.19\n"
        ),
        "{out:?}"
    );
    let list = ctl(s, &["rack", "list"]);
    assert!(
        list.stdout
            .starts_with("RACK   DESCRIPTION\nr2     -\n\nNETWORK   RACK   SUBNET"),
        "{list:?}"
    );
    assert!(
        list.stdout
            .contains("10.11.0.2-10.11.0.9,10.11.0.16-10.11.0.19"),
        "{list:?}"
    );
    // An exclusion outside the rack's subnet is refused, like the network's.
    let mut bad = bind("r2", "prod", "10.11.0.0/24", "10.11.0.1", &[]);
    bad.extend(["--exclude", "10.12.0.5"]);
    ctl(s, &bad).refused("excluded range 10.12.0.5 is outside subnet 10.11.0.0/24");

    // Blocks skip the exclusions and the gateway: .0-.15 minus .0/.1/.2-.9, then .20-.31.
    ctl(
        s,
        &[
            "node",
            "register",
            "r2n1",
            "--rack",
            "r2",
            "--address",
            "10.11.0.11",
        ],
    )
    .ok();
    let b1 = js(s, &["block", "acquire", "prod", "--node", "r2n1"]);
    assert_eq!(
        (b1["first"].as_str(), b1["size"].as_u64()),
        (Some("10.11.0.10"), Some(6))
    );
    let b2 = js(s, &["block", "acquire", "prod", "--node", "r2n1"]);
    assert_eq!(
        (b2["first"].as_str(), b2["size"].as_u64()),
        (Some("10.11.0.20"), Some(12))
    );
    // A new exclusion inside an existing block is refused until the block is released.
    let mut cut = bind("r2", "prod", "10.11.0.0/24", "10.11.0.1", &[]);
    cut.extend([
        "--exclude",
        "10.11.0.2-10.11.0.9",
        "--exclude",
        "10.11.0.16/30",
    ]);
    cut.extend(["--exclude", "10.11.0.25"]);
    ctl(s, &cut).refused("block 10.11.0.20 (node \"r2n1\") of rack \"r2\" would fall outside");

    // Neither an excluded address nor a node's own can be pinned to a pod.
    for (ip, why) in [
        ("10.11.0.5", "is inside no rack's ranges"),
        ("10.11.0.11", "10.11.0.11 is the address of node \"r2n1\""),
        ("10.11.0.1", "10.11.0.1 is the gateway of rack \"r2\""),
    ] {
        ctl(s, &["reservation", "pin", "prod", "default", "db-0", ip]).refused(why);
    }
    ctl(
        s,
        &[
            "reservation",
            "pin",
            "prod",
            "default",
            "db-0",
            "10.11.0.12",
        ],
    )
    .ok();
}
