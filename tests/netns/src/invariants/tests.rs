//! The checker judged on hand-made snapshots: every invariant must be caught when broken, and
//! nothing reported when it holds.

use super::records::Runs;
use super::*;
use serde_json::json;
use std::net::Ipv4Addr;

fn rec(key: &str, value: Value) -> Record {
    (format!("{ETCD_ROOT}{key}"), value.to_string().into_bytes())
}

fn padded(addr: &str) -> String {
    let a: Ipv4Addr = addr.parse().unwrap();
    let [w, x, y, z] = a.octets();
    format!("{w:03}.{x:03}.{y:03}.{z:03}")
}

fn network(name: &str, subnet: &str, gw: &str, exclude: &[&str]) -> Record {
    rec(
        &format!("networks/{name}"),
        json!({"name": name, "subnet": subnet, "gateway": gw, "master": "uplink0",
               "exclude": exclude, "hostRoutes": ["10.96.0.0/12"], "blockSize": 16}),
    )
}

fn lease(net: &str, addr: &str, node: &str, cid: &str) -> Record {
    lease_at(net, addr, net, addr, node, cid)
}

/// A lease whose key says (`key_net`, `key_addr`) and whose record says (`net`, `addr`).
fn lease_at(key_net: &str, key_addr: &str, net: &str, addr: &str, node: &str, cid: &str) -> Record {
    rec(
        &format!("leases/{key_net}/{}", padded(key_addr)),
        json!({"network": net, "address": addr, "node": node, "containerId": cid,
               "ifname": "eth0", "pod": {"namespace": "default", "name": "p", "uid": "u"},
               "createdUnixMs": 1}),
    )
}

fn racknet(net: &str, rack: &str, subnet: &str, gw: &str, ranges: &[&str]) -> Record {
    rec(
        &format!("racknets/{net}/{rack}"),
        json!({"rack": rack, "network": net, "subnet": subnet, "gateway": gw, "ranges": ranges}),
    )
}

fn node(name: &str, rack: &str) -> Record {
    rec(
        &format!("nodes/{name}"),
        json!({"name": name, "rack": rack, "addresses": [], "registeredUnixMs": 1}),
    )
}

fn block(net: &str, rack: &str, first: &str, size: u32, owner: &str) -> Record {
    rec(
        &format!("blocks/{net}/{}", padded(first)),
        json!({"network": net, "rack": rack, "first": first, "size": size, "node": owner,
               "createdUnixMs": 1}),
    )
}

/// Asserts exactly `expected.len()` violations, each matching one expected fragment in order.
fn assert_violations(records: &[Record], expected: &[&str]) {
    let rep = check_records(records);
    assert_eq!(
        rep.violations.len(),
        expected.len(),
        "expected {expected:?}, got:\n{rep}"
    );
    for (v, want) in rep.violations.iter().zip(expected) {
        assert!(v.contains(want), "{v:?} should mention {want:?}\n{rep}");
    }
}

fn network_per_rack() -> Vec<Record> {
    vec![
        network(
            "rack1",
            "10.10.0.0/24",
            "10.10.0.1",
            &["10.10.0.2-10.10.0.63"],
        ),
        network(
            "rack2",
            "10.11.0.0/24",
            "10.11.0.1",
            &["10.11.0.2-10.11.0.63"],
        ),
        lease("rack1", "10.10.0.64", "r1n1", "c1"),
        lease("rack1", "10.10.0.254", "r1n2", "c2"),
        lease("rack2", "10.11.0.64", "r2n1", "c3"),
        rec("networks-guard", json!(3)),
        rec("netmaster/leader", json!({"id": "a"})),
        ("/elsewhere/x".into(), b"not json".to_vec()),
    ]
}

#[test]
fn base64_and_etcdctl_json() {
    for (enc, dec) in [
        ("", ""),
        ("Zg==", "f"),
        ("Zm8=", "fo"),
        ("Zm9v", "foo"),
        ("L3JhY2tsaW5lL3YxLw==", "/rackline/v1/"),
    ] {
        assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
    }
    assert!(base64_decode("a*b=").is_err());
    let out = r#"{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,
        "revision":7,"raft_term":2},"kvs":[{"key":"L3JhY2tsaW5lL3YxLw==","create_revision":2,
        "mod_revision":2,"version":1,"value":"Zm9v"}],"count":1}"#;
    let (rev, records) = parse_etcdctl_json(out).unwrap();
    assert_eq!(rev, 7);
    assert_eq!(records, vec![("/rackline/v1/".into(), b"foo".to_vec())]);
    let (_, none) = parse_etcdctl_json(r#"{"header":{"revision":1}}"#).unwrap();
    assert!(none.is_empty());
}

#[test]
fn a_sane_network_per_rack_state_passes() {
    let rep = check_records(&network_per_rack());
    assert!(rep.ok(), "{rep}");
    assert_eq!((rep.networks, rep.leases, rep.racknets), (2, 3, 0));
}

#[test]
fn network_per_rack_violations_are_caught() {
    let cases: Vec<(Record, &str)> = vec![
        (
            lease("rack1", "10.10.0.1", "r1n1", "g"),
            "outside network rack1",
        ),
        (
            lease("rack1", "10.10.0.40", "r1n1", "x"),
            "outside network rack1",
        ),
        (
            lease("rack1", "10.10.0.255", "r1n1", "b"),
            "outside network rack1",
        ),
        (
            lease("rack1", "10.11.0.70", "r1n1", "o"),
            "outside network rack1",
        ),
        (
            lease("nope", "10.10.0.70", "r1n1", "n"),
            "unknown network nope",
        ),
        // Same attachment twice.
        (
            lease("rack1", "10.10.0.70", "r1n1", "c1"),
            "holds two leases",
        ),
        (
            rec("leases/rack1/010.010.000.071", json!("garbage")),
            "not a valid lease",
        ),
        (
            ("/rackline/v1/leases/rack1/x".into(), b"{".to_vec()),
            "not JSON",
        ),
    ];
    for (bad, want) in cases {
        let mut records = network_per_rack();
        records.push(bad);
        assert_violations(&records, &[want]);
    }
    // A key whose record claims another address: mismatch + the address owned twice.
    let mut records = network_per_rack();
    records.push(lease_at(
        "rack1",
        "10.10.0.99",
        "rack1",
        "10.10.0.64",
        "r1n2",
        "c9",
    ));
    assert_violations(&records, &["record is for 10.10.0.64", "owned twice"]);
    // Same container on another node is another attachment; standby records have none.
    let mut records = network_per_rack();
    records.push(lease("rack1", "10.10.0.80", "r1n2", "c1"));
    let mut standby = lease("rack1", "10.10.0.81", "r1n1", "");
    standby.1 = json!({"network": "rack1", "address": "10.10.0.81", "node": "r1n1",
                       "containerId": "", "ifname": "", "state": "standby"})
    .to_string()
    .into_bytes();
    records.push(standby.clone());
    let mut standby2 = standby;
    standby2.0 = format!("{ETCD_ROOT}leases/rack1/{}", padded("10.10.0.82"));
    standby2.1 = String::from_utf8(standby2.1)
        .unwrap()
        .replace("10.10.0.81", "10.10.0.82")
        .into_bytes();
    records.push(standby2);
    assert_violations(&records, &[]);
    let rep = check_records(&records);
    assert_eq!((rep.leases, rep.standby), (4, 2), "{rep}");
    // A conflict record keeps its address but holds no attachment: the pod whose
    // probe found it may hold another address at the same time.
    let mut conflict = lease("rack1", "10.10.0.83", "r1n1", "");
    conflict.1 = json!({"network": "rack1", "address": "10.10.0.83", "node": "r1n1",
                       "containerId": "", "ifname": "", "state": "conflict",
                       "conflict": {"mac": "02:00:00:00:00:09", "containerId": "c1",
                                    "ifname": "eth0"}})
    .to_string()
    .into_bytes();
    records.push(conflict);
    assert_violations(&records, &[]);
    let rep = check_records(&records);
    assert_eq!((rep.leases, rep.standby, rep.conflicts), (4, 2, 1), "{rep}");
}

/// One network spanning two racks, each with its own subnet (docs/CONTRACTS.md).
fn one_network_spanning_racks() -> Vec<Record> {
    vec![
        network(
            "prod",
            "10.10.0.0/24",
            "10.10.0.1",
            &["10.10.0.2-10.10.0.63"],
        ),
        racknet("prod", "rack1", "10.10.0.0/24", "10.10.0.1", &[]),
        racknet(
            "prod",
            "rack2",
            "10.11.0.0/24",
            "10.11.0.1",
            &["10.11.0.64-10.11.0.254"],
        ),
        rec("racks/rack1", json!({"name": "rack1"})),
        node("r1n1", "rack1"),
        node("r1n2", "rack1"),
        node("r2n1", "rack2"),
        block("prod", "rack1", "10.10.0.64", 16, "r1n1"),
        block("prod", "rack1", "10.10.0.80", 16, "r1n2"),
        block("prod", "rack2", "10.11.0.64", 16, "r2n1"),
        // A partial block at the end of rack 2's range (.240-.254: 15 addresses).
        block("prod", "rack2", "10.11.0.240", 15, "r2n1"),
        lease("prod", "10.10.0.64", "r1n1", "c1"),
        // Borrowed from r1n2's block: same rack, allowed.
        lease("prod", "10.10.0.81", "r1n1", "c2"),
        lease("prod", "10.11.0.254", "r2n1", "c3"),
    ]
}

#[test]
fn a_sane_spanning_state_passes() {
    let rep = check_records(&one_network_spanning_racks());
    assert!(rep.ok(), "{rep}");
    assert_eq!(
        (rep.racknets, rep.nodes, rep.blocks, rep.leases),
        (2, 3, 4, 3)
    );
    // The CONTRACTS.md spelling of a binding key is read too.
    let mut records = one_network_spanning_racks();
    records[2].0 = format!("{ETCD_ROOT}racks/rack2/networks/prod");
    let rep = check_records(&records);
    assert!(rep.ok() && rep.racknets == 2, "{rep}");
}

#[test]
fn a_borrow_from_unassigned_rack_space_is_allowed() {
    // ipamd borrows outside every block when its blocks are full and no block can be had.
    let mut records = one_network_spanning_racks();
    records.push(lease("prod", "10.10.0.100", "r1n1", "y"));
    let rep = check_records(&records);
    assert!(rep.ok(), "{rep}");
}

#[test]
fn spanning_violations_are_caught() {
    let cases: Vec<(Record, &[&str])> = vec![
        // A rack-1 node holding a rack-2 address (inside an r2n1 block).
        (
            lease("prod", "10.11.0.65", "r1n1", "x"),
            &["outside the ranges", "lies in a block of rack rack2"],
        ),
        (
            lease("prod", "10.10.0.70", "ghost", "z"),
            &["not registered"],
        ),
        (
            block("prod", "rack1", "10.10.0.72", 8, "r1n1"),
            &["overlap"],
        ),
        (
            block("prod", "rack1", "10.10.0.32", 16, "r1n1"),
            &["not inside one range of rack rack1"],
        ),
        (
            block("prod", "rack2", "10.11.0.96", 16, "r1n1"),
            &["belongs to rack rack1"],
        ),
        (
            block("prod", "rack1", "10.10.0.120", 16, "r1n1"),
            &["crosses a 16-address block boundary"],
        ),
        (
            block("prod", "rack3", "10.10.0.160", 16, "r1n1"),
            &["rack rack3 has no binding", "belongs to rack rack1"],
        ),
        (
            block("prod", "rack1", "10.10.0.176", 16, "nobody"),
            &["not a registered node"],
        ),
        (
            racknet(
                "prod",
                "rack3",
                "10.10.0.0/24",
                "10.10.0.1",
                &["10.10.0.200-10.10.0.210"],
            ),
            &["ranges of racks rack1 and rack3 overlap"],
        ),
    ];
    for (bad, want) in cases {
        let mut records = one_network_spanning_racks();
        records.push(bad);
        assert_violations(&records, want);
    }
}

/// Rack 2 bound to its whole subnet with exclusions; nodes with their uplink addresses.
fn infra() -> Vec<Record> {
    vec![
        network(
            "prod",
            "10.10.0.0/24",
            "10.10.0.1",
            &["10.10.0.2-10.10.0.63"],
        ),
        rec(
            "racknets/prod/rack2",
            json!({"rack": "rack2", "network": "prod", "subnet": "10.11.0.0/24",
                   "gateway": "10.11.0.1", "exclude": ["10.11.0.2-10.11.0.9"]}),
        ),
        rec(
            "nodes/r2n1",
            json!({"name": "r2n1", "rack": "rack2", "addresses": ["10.11.0.11"]}),
        ),
        rec(
            "nodes/r2n2",
            json!({"name": "r2n2", "rack": "rack2", "addresses": ["10.11.0.12"]}),
        ),
        lease("prod", "10.11.0.10", "r2n1", "c1"),
    ]
}

#[test]
fn infrastructure_addresses_held_by_a_lease_are_caught() {
    let rep = check_records(&infra());
    assert!(rep.ok(), "{rep}");
    let cases: Vec<(Record, &[&str])> = vec![
        (
            lease("prod", "10.11.0.12", "r2n1", "x"),
            &["10.11.0.12 is the address of node r2n2"],
        ),
        (
            lease("prod", "10.11.0.5", "r2n1", "x"),
            &[
                "outside network prod's allocatable ranges",
                "outside the ranges",
            ],
        ),
        (
            lease("prod", "10.11.0.1", "r2n1", "x"),
            &[
                "outside network prod's allocatable ranges",
                "outside the ranges",
            ],
        ),
    ];
    for (bad, want) in cases {
        let mut records = infra();
        records.push(bad);
        assert_violations(&records, want);
    }
}

#[test]
fn another_racks_gateway_inside_a_racks_ranges_is_caught() {
    // Two racks share the network's subnet; rack b's TOR sits inside rack a's range.
    let records = vec![
        network("prod", "10.10.0.0/16", "10.10.0.1", &[]),
        racknet("prod", "a", "10.10.0.0/16", "10.10.1.1", &["10.10.1.0/27"]),
        racknet("prod", "b", "10.10.0.0/16", "10.10.1.30", &["10.10.2.0/27"]),
        node("n1", "a"),
        lease("prod", "10.10.1.30", "n1", "x"),
    ];
    assert_violations(&records, &["10.10.1.30 is rack b's gateway"]);
}

#[test]
fn runs_arithmetic() {
    let mut r = Runs::default();
    r.insert(10, 20);
    r.insert(21, 25);
    r.insert(40, 50);
    assert_eq!(r.0, vec![(10, 25), (40, 50)]);
    r.remove(15, 15);
    assert_eq!(r.0, vec![(10, 14), (16, 25), (40, 50)]);
    assert!(r.covers(16, 25) && !r.covers(14, 16) && !r.contains(15));
    let mut o = Runs::default();
    o.insert(45, 60);
    assert_eq!(r.first_common(&o), Some(45));
    o.remove(0, 50);
    assert_eq!(r.first_common(&o), None);
}

fn sticky_lease(addr: &str, node: &str, cid: &str, pod: &str, state: &str) -> Record {
    rec(
        &format!("leases/prod/{}", padded(addr)),
        json!({"network": "prod", "address": addr, "node": node, "containerId": cid,
               "ifname": if cid.is_empty() { "" } else { "eth0" },
               "pod": {"namespace": "db", "name": pod, "uid": ""},
               "createdUnixMs": 1, "state": state, "sticky": true}),
    )
}

fn identity(pod: &str, addr: &str) -> Record {
    rec(
        &format!("identities/prod/db/{pod}"),
        json!({"network": "prod", "namespace": "db", "name": pod, "address": addr,
               "createdUnixMs": 1}),
    )
}

#[test]
fn identities_and_their_leases_must_agree() {
    let net = network("prod", "10.10.0.0/24", "10.10.0.1", &[]);
    let good = vec![
        net.clone(),
        sticky_lease("10.10.0.70", "n1", "c1", "pg-0", "active"),
        identity("pg-0", "10.10.0.70"),
        // A pinned reservation no node has used yet.
        sticky_lease("10.10.0.71", "", "", "pg-1", "reserved"),
        identity("pg-1", "10.10.0.71"),
    ];
    let rep = check_records(&good);
    assert!(rep.ok(), "{rep}");
    assert_eq!(rep.identities, 2);

    // The identity names an address whose record does not name it back.
    let mut bad = good.clone();
    bad.push(identity("pg-2", "10.10.0.70"));
    let rep = check_records(&bad);
    assert!(rep.violations.iter().any(|v| v.contains("pg-2")), "{rep}");

    // A sticky lease without its identity, and an identity without a lease.
    let bad = vec![
        net.clone(),
        sticky_lease("10.10.0.70", "n1", "c1", "pg-0", "active"),
        identity("pg-9", "10.10.0.99"),
    ];
    let rep = check_records(&bad);
    assert_eq!(rep.violations.len(), 2, "{rep}");
}

#[test]
fn a_reservation_may_name_a_node_deleted_for_good() {
    // `node delete` turns a sticky pod's lease into its reservation, naming the node it
    // last ran on; that node's record is gone. Its address still has to be allocatable.
    let mut records = one_network_spanning_racks();
    records.push(sticky_lease("10.10.0.66", "r1n9", "", "pg-0", "reserved"));
    records.push(identity("pg-0", "10.10.0.66"));
    let rep = check_records(&records);
    assert!(rep.ok(), "{rep}");
    // An active lease of an unregistered node still is a violation.
    let mut records = one_network_spanning_racks();
    records.push(sticky_lease("10.10.0.66", "r1n9", "c9", "pg-0", "active"));
    records.push(identity("pg-0", "10.10.0.66"));
    let rep = check_records(&records);
    assert!(
        rep.violations.iter().any(|v| v.contains("not registered")),
        "{rep}"
    );
}
