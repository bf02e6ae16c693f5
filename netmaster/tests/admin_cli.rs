//! End to end: real etcd, the real rackline-netmaster binary, driven by the
//! real racklinectl binary. Loopback only.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{
    create_args, ctl, ctl_spawn, network_names, put_lease, runtime, store, Etcd, Netmaster,
};
use serde_json::json;

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object().expect("object").keys().cloned().collect()
}

#[test]
fn network_lifecycle_in_table_and_json() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();

    let mut args = create_args("prod", "10.10.0.0/24", "10.10.0.1");
    args.extend([
        "--exclude",
        "10.10.0.2-10.10.0.63",
        "--exclude",
        "10.10.0.240/28",
        "--exclude",
        "10.10.0.100",
        "--mtu",
        "9000",
        "--vlan",
        "120",
        "--route",
        "192.168.0.0/16@10.10.0.254",
        "--route",
        "172.16.0.0/12",
        "--host-route",
        "10.96.0.0/12",
        "-o",
        "json",
    ]);
    let created = ctl(s, &args).json();
    // The record's etcd revision, for `network update --expect-revision`.
    assert!(
        created["revision"].as_i64().is_some_and(|r| r > 0),
        "{created}"
    );
    let mut fields = created.clone();
    fields.as_object_mut().expect("object").remove("revision");
    assert_eq!(
        fields,
        json!({
            "name": "prod", "subnet": "10.10.0.0/24", "gateway": "10.10.0.1",
            "master": "uplink0", "mtu": 9000, "vlan": 120,
            "exclude": ["10.10.0.2-10.10.0.63", "10.10.0.240-10.10.0.255", "10.10.0.100"],
            "routes": [
                {"dst": "192.168.0.0/16", "gw": "10.10.0.254"},
                {"dst": "172.16.0.0/12", "gw": ""}
            ],
            "hostRoutes": ["10.96.0.0/12"],
            // 254 hosts - gateway - 62 - 15 (.255 is broadcast) - 1
            "capacity": 175, "allocated": 0, "qos": {},
            // No duplicate-address probe unless asked for.
            "probe": null
        })
    );

    // Table create output is the detail view.
    let out = ctl(s, &create_args("dev", "10.20.0.0/24", "10.20.0.1"));
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("Name:          dev\n"), "{out:?}");
    assert!(out.stdout.contains("VLAN:          -\n"), "{out:?}");

    let list = ctl(s, &["network", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(
        list.stdout,
        "\
NETWORK   SUBNET         GATEWAY     MASTER    VLAN   MTU    USED/CAPACITY
dev       10.20.0.0/24   10.20.0.1   uplink0   -      auto   0/253
prod      10.10.0.0/24   10.10.0.1   uplink0   120    9000   0/175
"
    );

    let listed = ctl(s, &["network", "list", "-o", "json"]).json();
    let arr = listed.as_array().expect("list is a JSON array");
    assert_eq!(arr.len(), 2);
    assert_eq!(arr[1], created);
    for n in arr {
        assert_eq!(
            keys(n),
            [
                "name",
                "subnet",
                "gateway",
                "master",
                "mtu",
                "vlan",
                "exclude",
                "routes",
                "hostRoutes",
                "capacity",
                "allocated",
                "qos",
                "probe",
                "revision",
            ]
            .map(String::from)
            .into(),
        );
    }

    let shown = ctl(s, &["-o", "json", "network", "show", "prod"]).json();
    assert_eq!(shown, created);
    let shown = ctl(s, &["network", "show", "prod"]);
    assert!(
        shown
            .stdout
            .contains("Routes:        192.168.0.0/16 via 10.10.0.254, 172.16.0.0/12 via gateway\n"),
        "{shown:?}"
    );

    // --probe-* flags imply --probe; unset fields take the defaults.
    let mut pr = create_args("pr", "10.30.0.0/24", "10.30.0.1");
    pr.extend(["--probe-count", "2", "-o", "json"]);
    let pr = ctl(s, &pr).json();
    assert_eq!(
        pr["probe"],
        json!({"count": 2, "intervalMs": 100, "quarantineSecs": 600})
    );
    let shown = ctl(s, &["network", "show", "pr"]);
    assert!(
        shown
            .stdout
            .contains("Probe:         2 x 100 ms, quarantine 600 s\n"),
        "{shown:?}"
    );
    let mut zero = create_args("pz", "10.31.0.0/24", "10.31.0.1");
    zero.extend(["--probe-count", "0"]);
    assert_eq!(
        ctl(s, &zero).code,
        2,
        "0 is refused, not taken as the default"
    );
    ctl(s, &["network", "delete", "pr"]).ok();

    let del = ctl(s, &["network", "delete", "dev"]);
    assert_eq!(
        (del.code, del.stdout.as_str()),
        (0, "network dev deleted\n"),
        "{del:?}"
    );
    let del = ctl(s, &["network", "delete", "prod", "-o", "json"]).json();
    assert_eq!(del, json!({"leasesDeleted": 0}));
    assert_eq!(ctl(s, &["network", "list", "-o", "json"]).json(), json!([]));
    ctl(s, &["network", "show", "prod"]).refused("network \"prod\" not found");
}

#[test]
fn invalid_requests_are_refused_and_write_nothing() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    ctl(s, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    let before = ctl(s, &["network", "list", "-o", "json"]).json();

    let with = |extra: &[&'static str]| {
        let mut a = create_args("other", "10.30.0.0/24", "10.30.0.1");
        a.extend_from_slice(extra);
        a
    };
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            create_args("other", "10.10.0.128/25", "10.10.0.129"),
            "subnet 10.10.0.128/25 of network \"other\" overlaps subnet 10.10.0.0/24 of network \"prod\"",
        ),
        (
            create_args("other", "10.0.0.0/8", "10.0.0.1"),
            "overlaps subnet 10.10.0.0/24 of network \"prod\"",
        ),
        (
            create_args("other", "10.30.0.0/24", "10.31.0.1"),
            "gateway 10.31.0.1 is outside subnet 10.30.0.0/24",
        ),
        (create_args("other", "10.30.0.0/33", "10.30.0.1"), "invalid subnet \"10.30.0.0/33\""),
        (create_args("other", "10.30.0.0", "10.30.0.1"), "missing prefix length"),
        (create_args("other", "10.30.0.5/24", "10.30.0.1"), "did you mean 10.30.0.0/24?"),
        (create_args("other", "10.30.0.0/24", "gw"), "invalid gateway \"gw\""),
        (with(&["--vlan", "4095"]), "VLAN id 4095 is outside 1-4094"),
        // 65537 would be VLAN 1 if narrowed to u16 before the check.
        (with(&["--vlan", "65537"]), "VLAN id 65537 is outside 1-4094"),
        (with(&["--mtu", "40"]), "MTU 40 is outside 68-65535"),
        (with(&["--exclude", "10.31.0.0/24"]), "outside subnet 10.30.0.0/24"),
        (with(&["--exclude", "nope"]), "invalid address range \"nope\""),
        (with(&["--route", "192.168.0.1/16"]), "host bits set"),
        (with(&["--route", "192.168.0.0/16@10.99.0.1"]), "next hop 10.99.0.1 is not on subnet"),
        (with(&["--host-route", "10.96.0.0/99"]), "invalid CIDR \"10.96.0.0/99\""),
        (
            create_args("prod", "10.40.0.0/24", "10.40.0.1"),
            "network \"prod\" already exists",
        ),
        (create_args("Bad_Name", "10.40.0.0/24", "10.40.0.1"), "invalid network name \"Bad_Name\""),
    ];
    for (args, msg) in cases {
        ctl(s, &args).refused(msg);
        assert_eq!(
            ctl(s, &["network", "list", "-o", "json"]).json(),
            before,
            "{args:?} must write nothing"
        );
    }
    ctl(s, &["network", "delete", "ghost"]).refused("network \"ghost\" not found");
    ctl(s, &["network", "show", "ghost"]).refused("network \"ghost\" not found");
    assert_eq!(ctl(s, &["network", "list", "-o", "json"]).json(), before);
}

#[test]
fn delete_with_leases_needs_force() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let store = store(&etcd, &rt);

    ctl(s, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    ctl(s, &create_args("dev", "10.20.0.0/24", "10.20.0.1")).ok();
    put_lease(
        &rt,
        &store,
        "prod",
        "10.10.0.70",
        "n1",
        ("default", "web-0"),
    );
    put_lease(
        &rt,
        &store,
        "prod",
        "10.10.0.71",
        "n2",
        ("default", "web-1"),
    );
    put_lease(&rt, &store, "dev", "10.20.0.9", "n1", ("dev", "api-0"));

    let shown = ctl(s, &["network", "show", "prod", "-o", "json"]).json();
    assert_eq!(shown["allocated"], 2);
    assert_eq!(shown["capacity"], 253);

    ctl(s, &["network", "delete", "prod"])
        .refused("network \"prod\" still has 2 pod lease(s) (default/web-0, default/web-1); delete those pods first");
    assert_eq!(network_names(s), ["dev", "prod"]);
    let leases = ctl(s, &["lease", "list", "-o", "json"]).json();
    assert_eq!(leases.as_array().map(Vec::len), Some(3), "{leases}");

    let del = ctl(s, &["network", "delete", "prod", "--force", "-o", "json"]).json();
    assert_eq!(del, json!({"leasesDeleted": 2}));
    assert_eq!(network_names(s), ["dev"]);
    let leases = ctl(s, &["lease", "list", "-o", "json"]).json();
    let addrs: Vec<&str> = leases
        .as_array()
        .expect("array")
        .iter()
        .map(|l| l["address"].as_str().expect("address"))
        .collect();
    assert_eq!(addrs, ["10.20.0.9"], "only dev's lease is left");

    let del = ctl(s, &["network", "delete", "dev", "--force"]);
    assert_eq!(
        del.stdout, "network dev deleted with 1 lease(s)\n",
        "{del:?}"
    );
}

#[test]
fn lease_list_filters_and_shapes() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rt = runtime();
    let store = store(&etcd, &rt);

    ctl(s, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    ctl(s, &create_args("dev", "10.20.0.0/24", "10.20.0.1")).ok();
    // Written out of order: the listing sorts by network, then numerically.
    let web0 = put_lease(
        &rt,
        &store,
        "prod",
        "10.10.0.10",
        "n1",
        ("default", "web-0"),
    );
    put_lease(&rt, &store, "prod", "10.10.0.9", "n2", ("default", "web-1"));
    put_lease(
        &rt,
        &store,
        "prod",
        "10.10.0.64",
        "n1",
        ("kube-system", "web-0"),
    );
    put_lease(&rt, &store, "dev", "10.20.0.5", "n2", ("default", "web-0"));

    let addrs = |args: &[&str]| -> Vec<String> {
        let mut a = vec!["lease", "list", "-o", "json"];
        a.extend_from_slice(args);
        ctl(s, &a)
            .json()
            .as_array()
            .expect("lease list is a JSON array")
            .iter()
            .map(|l| l["address"].as_str().expect("address").to_string())
            .collect()
    };
    assert_eq!(
        addrs(&[]),
        ["10.20.0.5", "10.10.0.9", "10.10.0.10", "10.10.0.64"]
    );
    assert_eq!(
        addrs(&["--network", "prod"]),
        ["10.10.0.9", "10.10.0.10", "10.10.0.64"]
    );
    assert_eq!(addrs(&["--node", "n1"]), ["10.10.0.10", "10.10.0.64"]);
    assert_eq!(
        addrs(&["--pod", "web-0"]),
        ["10.20.0.5", "10.10.0.10", "10.10.0.64"]
    );
    assert_eq!(
        addrs(&["--pod", "default/web-0"]),
        ["10.20.0.5", "10.10.0.10"]
    );
    assert_eq!(
        addrs(&["--pod", "default/web-0", "--network", "prod"]),
        ["10.10.0.10"]
    );
    assert_eq!(addrs(&["--address", "10.10.0.64"]), ["10.10.0.64"]);
    assert_eq!(
        addrs(&["--address", "10.10.0.64", "--node", "n2"]),
        Vec::<String>::new()
    );
    assert_eq!(addrs(&["--network", "nosuch"]), Vec::<String>::new());

    let one = ctl(
        s,
        &["lease", "list", "--address", "10.10.0.10", "-o", "json"],
    )
    .json();
    assert_eq!(
        one,
        json!([{
            "network": "prod", "address": "10.10.0.10", "node": "n1",
            "containerId": web0.container_id, "ifname": "eth0",
            "pod": {"namespace": "default", "name": "web-0", "uid": "uid-web-0"},
            "createdUnixMs": 1_700_000_000_000_i64, "state": "active", "sticky": false, "expiresUnixMs": 0,
            "conflict": null
        }])
    );

    let table = ctl(s, &["lease", "list", "--network", "prod", "--node", "n1"]);
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{table:?}");
    assert!(
        lines[0].starts_with("ADDRESS      NETWORK   NODE   POD"),
        "{lines:?}"
    );
    assert!(
        lines[0].ends_with("CONTAINER      IFNAME   AGE"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(
            "10.10.0.10   prod      n1     default/web-0       c0ffee101001   eth0     "
        ),
        "{lines:?}"
    );
    assert!(
        lines[2].starts_with("10.10.0.64   prod      n1     kube-system/web-0   "),
        "{lines:?}"
    );

    let nets = ctl(s, &["network", "list", "-o", "json"]).json();
    assert_eq!(nets[0]["name"], "dev");
    assert_eq!(nets[0]["allocated"], 1);
    assert_eq!(nets[1]["allocated"], 3);

    ctl(s, &["lease", "list", "--pod", "default/"]).refused("invalid pod filter \"default/\"");
    ctl(s, &["lease", "list", "--address", "10.10.0.0/24"])
        .refused("invalid address filter \"10.10.0.0/24\"");
    ctl(s, &["lease", "list", "--network", "a/b"]).refused("invalid network name \"a/b\"");
}

#[test]
fn racing_overlapping_creates_let_exactly_one_win() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();
    let rounds = 10;
    for round in 0..rounds {
        // Three mutually overlapping networks, started together.
        let contenders = [
            (
                format!("a{round}"),
                format!("10.{round}.0.0/16"),
                format!("10.{round}.0.1"),
            ),
            (
                format!("b{round}"),
                format!("10.{round}.128.0/24"),
                format!("10.{round}.128.1"),
            ),
            (
                format!("c{round}"),
                format!("10.{round}.128.0/20"),
                format!("10.{round}.128.2"),
            ),
        ];
        let running: Vec<_> = contenders
            .iter()
            .map(|(n, sub, gw)| ctl_spawn(s, &create_args(n, sub, gw)))
            .collect();
        let outs: Vec<_> = running.into_iter().map(|r| r.wait()).collect();
        let winners = outs.iter().filter(|o| o.code == 0).count();
        assert_eq!(
            winners, 1,
            "round {round}: exactly one create must win: {outs:#?}"
        );
        for loser in outs.iter().filter(|o| o.code != 0) {
            loser.refused("overlaps subnet");
        }
    }
    assert_eq!(network_names(s).len(), rounds);
}

#[test]
fn exit_codes_for_usage_unreachable_and_etcd_down() {
    // Usage errors need no server.
    let out = ctl(
        "http://127.0.0.1:1",
        &["network", "create", "x", "--subnet", "10.0.0.0/24"],
    );
    assert_eq!(out.code, 2, "{out:?}");
    let out = ctl("http://127.0.0.1:1", &["network", "list", "-o", "yaml"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = ctl("not a url", &["network", "list"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("invalid server address"), "{out:?}");

    // Nothing listens on a port we just released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("ephemeral port")
        .port();
    let out = ctl(&format!("http://127.0.0.1:{port}"), &["network", "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot reach netmaster"), "{out:?}");

    // netmaster up, etcd gone: "try later", not "you did something wrong".
    let mut etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    ctl(&nm.url, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    etcd.kill();
    let out = ctl(&nm.url, &["network", "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("etcd unavailable"), "{out:?}");
    let out = ctl(&nm.url, &create_args("dev", "10.20.0.0/24", "10.20.0.1"));
    assert_eq!(out.code, 3, "{out:?}");
}

#[test]
fn netmaster_rejects_bad_flags_and_stops_on_sigterm() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rackline-netmaster"))
        .args(["--etcd-endpoints", "http://127.0.0.1:1"])
        .env_remove("RACKLINE_LISTEN")
        .output()
        .expect("run rackline-netmaster");
    assert_eq!(
        out.status.code(),
        Some(2),
        "missing --listen is a usage error"
    );

    let etcd = Etcd::start();
    let mut nm = Netmaster::start(&etcd);
    ctl(&nm.url, &create_args("prod", "10.10.0.0/24", "10.10.0.1")).ok();
    let status = nm.terminate(Duration::from_secs(15));
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}\n{}",
        nm.stderr()
    );
    let log = nm.stderr();
    assert!(
        log.contains("signal=\"SIGTERM\"") || log.contains("signal=SIGTERM"),
        "{log}"
    );
    assert!(log.contains("netmaster stopped"), "{log}");
}

#[test]
fn qos_levels_and_policies_round_trip() {
    let etcd = Etcd::start();
    let nm = Netmaster::start(&etcd);
    let s = nm.url.as_str();

    let mut args = create_args("prod", "10.10.0.0/24", "10.10.0.1");
    args.extend([
        "--qos-default",
        "egress=300M",
        "--qos-max",
        "ingress=1G,egress=1G,egress-burst=8M",
        "--qos-class",
        "small:ingress=150M",
        "-o",
        "json",
    ]);
    let created = ctl(s, &args).json();
    assert_eq!(
        created["qos"],
        json!({
            "default": {"egressRate": 300_000_000},
            "max": {"ingressRate": 1_000_000_000u64, "egressRate": 1_000_000_000u64, "egressBurst": 8_000_000},
            "nodeClasses": {"small": {"ingressRate": 150_000_000}}
        })
    );
    let show = ctl(s, &["network", "show", "prod"]);
    assert!(
        show.stdout
            .contains("QoS:           default egress=300M; max ingress=1G,egress=1G,egress-burst=8M; class small ingress=150M\n"),
        "{show:?}"
    );

    let set = |extra: &[&str]| {
        let mut a = vec!["qos", "set", "prod", "shop", "web", "-o", "json"];
        a.extend(extra);
        ctl(s, &a)
    };
    let p = set(&["--bandwidth", "egress=20M", "--pods", "web-.*"]).json();
    assert_eq!(p["egressRate"], 20_000_000);
    assert_eq!(p["podPattern"], "web-.*");
    assert!(p["ingressRate"].is_null());
    // Replacing keeps one policy.
    set(&["--bandwidth", "ingress=30M"]).ok();
    let list = ctl(s, &["qos", "list", "-o", "json"]).json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["ingressRate"], 30_000_000);
    assert_eq!(list[0]["podPattern"], "");

    // Refused values: unknown network (exit 1), bad syntax (exit 2), bad value (exit 1).
    ctl(
        s,
        &[
            "qos",
            "set",
            "nosuch",
            "shop",
            "web",
            "--bandwidth",
            "egress=1M",
        ],
    )
    .refused("not found");
    let bad = ctl(
        s,
        &[
            "qos",
            "set",
            "prod",
            "shop",
            "w",
            "--bandwidth",
            "egress=fast",
        ],
    );
    assert_eq!(bad.code, 2, "{bad:?}");
    let bad = ctl(
        s,
        &[
            "qos",
            "set",
            "prod",
            "shop",
            "w",
            "--bandwidth",
            "egress=1M",
            "--pods",
            "(x",
        ],
    );
    assert_eq!(bad.code, 1, "{bad:?}");
    let mut bad_net = create_args("dev", "10.20.0.0/24", "10.20.0.1");
    bad_net.extend(["--qos-class", "Big_Class:egress=1M"]);
    assert_eq!(ctl(s, &bad_net).code, 1);

    let del = ctl(s, &["qos", "delete", "prod", "shop", "web", "-o", "json"]).json();
    assert_eq!(del, json!({"deleted": true}));
    let del = ctl(s, &["qos", "delete", "prod", "shop", "web", "-o", "json"]).json();
    assert_eq!(del, json!({"deleted": false}));
    // In text, a delete says whether the policy existed; both are success.
    let delete_says = |kind: &str, line: &str| {
        let del = ctl(s, &[kind, "delete", "prod", "shop", "web"]);
        del.ok();
        assert_eq!(del.stdout, line);
    };
    set(&["--bandwidth", "egress=5M"]).ok();
    delete_says("qos", "QoS policy prod/shop/web deleted\n");
    delete_says("qos", "QoS policy prod/shop/web did not exist\n");
    // ACLs answer the same way.
    ctl(
        s,
        &[
            "acl",
            "create",
            "prod",
            "shop",
            "web",
            "--pods",
            "web-.*",
            "--ingress",
            "allow tcp:80 10.0.0.0/8",
        ],
    )
    .ok();
    delete_says("acl", "ACL prod/shop/web deleted\n");
    delete_says("acl", "ACL prod/shop/web did not exist\n");
    let del = ctl(s, &["acl", "delete", "prod", "shop", "web", "-o", "json"]).json();
    assert_eq!(del, json!({"deleted": false}));
    assert_eq!(ctl(s, &["qos", "list", "-o", "json"]).json(), json!([]));

    // A network's policies go with it: a re-created network starts clean.
    set(&["--bandwidth", "egress=5M"]).ok();
    ctl(s, &["network", "delete", "prod"]).ok();
    assert_eq!(ctl(s, &["qos", "list", "-o", "json"]).json(), json!([]));
}
