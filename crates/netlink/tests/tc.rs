//! Root-only: tbf, ingress qdisc, ifb and the u32+mirred redirect built
//! through the API inside a namespace the test owns, checked against our
//! own dump parser AND iproute2's `tc` as an independent reader.

mod common;

use common::{link, run, TestNs};
use rackline_netlink::{QdiscSlot, Tbf};
use serde_json::Value;

fn tc_json(t: &TestNs, args: &[&str]) -> Value {
    let mut full = vec!["-j", "-n", &t.name];
    full.extend(args);
    let out = run("tc", &full);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("tc {full:?}: {e}: {out}"))
}

#[test]
fn shaper_ifb_and_redirect_roundtrip() {
    let t = TestNs::new();
    let mut nl = t.netlink();
    nl.create_veth("rl-a", "rl-b", None, None).unwrap();
    let a = link(&mut nl, "rl-a");
    nl.set_up(a.index).unwrap();
    nl.create_ifb("rlifb-a", Some(1500)).unwrap();
    let ifb = link(&mut nl, "rlifb-a");
    assert_eq!(ifb.kind.as_deref(), Some("ifb"));
    nl.set_up(ifb.index).unwrap();

    // 10 Mbit/s, 12.5 kB bucket, 25 ms queue.
    let tbf = Tbf {
        rate: 1_250_000,
        burst: 12_500,
        limit: 43_750,
    };
    nl.add_tbf(a.index, &tbf).unwrap();
    let err = nl.add_tbf(a.index, &tbf).unwrap_err();
    assert!(err.is_exists(), "second root tbf: {err}");
    nl.add_tbf(ifb.index, &tbf).unwrap();
    nl.add_ingress_qdisc(a.index).unwrap();
    nl.add_ingress_redirect(a.index, ifb.index).unwrap();

    let qs = nl.qdiscs(a.index).unwrap();
    let root = qs.iter().find(|q| q.kind == "tbf").expect("tbf dumped");
    assert_eq!(root.tbf, Some(tbf), "{qs:?}");
    assert!(qs.iter().any(|q| q.kind == "ingress"), "{qs:?}");
    let filters = nl.ingress_filters(a.index).unwrap();
    assert!(
        filters
            .iter()
            .any(|f| f.kind == "u32" && f.matches_all && f.redirect_to == Some(ifb.index)),
        "{filters:?}"
    );

    // iproute2 reads the same thing.
    let tcq = tc_json(&t, &["qdisc", "show", "dev", "rl-a"]);
    let tbf_json = tcq
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["kind"] == "tbf")
        .unwrap_or_else(|| panic!("{tcq}"));
    assert_eq!(tbf_json["options"]["rate"], 1_250_000, "{tbf_json}");
    assert_eq!(tbf_json["options"]["burst"], 12_500, "{tbf_json}");
    // iproute2 shows the limit as latency: (limit - burst) / rate = 25 ms.
    assert_eq!(tbf_json["options"]["lat"], 25_000, "{tbf_json}");
    let tcf = tc_json(&t, &["filter", "show", "dev", "rl-a", "ingress"]);
    let text = tcf.to_string();
    assert!(
        text.contains("mirred") && text.contains("rlifb-a"),
        "{text}"
    );

    // Removing: the ingress qdisc takes its filter with it.
    nl.delete_qdisc(a.index, QdiscSlot::Ingress).unwrap();
    nl.delete_qdisc(a.index, QdiscSlot::Root).unwrap();
    let qs = nl.qdiscs(a.index).unwrap();
    assert!(
        !qs.iter().any(|q| q.kind == "tbf" || q.kind == "ingress"),
        "{qs:?}"
    );
    assert!(nl.ingress_filters(a.index).unwrap().is_empty());
    let again = nl.delete_qdisc(a.index, QdiscSlot::Ingress).unwrap_err();
    assert!(again.errno().is_some(), "{again}");
}
