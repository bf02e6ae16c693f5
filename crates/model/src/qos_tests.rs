use super::*;

const M: u64 = 1_000_000;

fn bw(ir: Option<u64>, ib: Option<u64>, er: Option<u64>, eb: Option<u64>) -> Bandwidth {
    Bandwidth {
        ingress_rate: ir,
        ingress_burst: ib,
        egress_rate: er,
        egress_burst: eb,
    }
}

/// Both directions at `rate` Mbit/s, no burst.
fn both(rate: u64) -> Bandwidth {
    bw(Some(rate * M), None, Some(rate * M), None)
}

fn r(rate: u64, burst: Option<u64>, level: Level, clamped: bool) -> Option<Resolved> {
    Some(Resolved {
        limit: Limit {
            rate: rate * M,
            burst: Some(burst.unwrap_or_else(|| default_burst(rate * M))),
        },
        level,
        clamped,
    })
}

#[test]
fn resolution_table_every_level_and_clamp() {
    use Level::*;
    let d = both(100);
    let class = both(80);
    let policy = both(50);
    let pod = both(20);
    let max = both(60);
    let ingress_only_pod = bw(Some(10 * M), Some(200_000), None, None);
    let big_burst_pod = bw(Some(10 * M), Some(8 * M), None, None);
    let max_with_burst = bw(Some(60 * M), Some(4 * M), None, None);
    let huge = both(500);
    type Case<'a> = (
        &'a str,
        Layers<'a>,
        Option<(Option<Resolved>, Option<Resolved>)>,
    );
    let cases: Vec<Case> = vec![
        ("nothing anywhere", Layers::default(), None),
        (
            "network default alone",
            Layers {
                network_default: Some(&d),
                ..Default::default()
            },
            Some((
                r(100, None, NetworkDefault, false),
                r(100, None, NetworkDefault, false),
            )),
        ),
        (
            "node class beats default",
            Layers {
                network_default: Some(&d),
                node_class: Some(&class),
                ..Default::default()
            },
            Some((r(80, None, NodeClass, false), r(80, None, NodeClass, false))),
        ),
        (
            "policy beats class",
            Layers {
                network_default: Some(&d),
                node_class: Some(&class),
                policy: Some(&policy),
                ..Default::default()
            },
            Some((r(50, None, Policy, false), r(50, None, Policy, false))),
        ),
        (
            "pod beats policy",
            Layers {
                network_default: Some(&d),
                node_class: Some(&class),
                policy: Some(&policy),
                pod: Some(&pod),
                ..Default::default()
            },
            Some((r(20, None, Pod, false), r(20, None, Pod, false))),
        ),
        (
            "per direction: pod sets ingress only, egress falls to the class",
            Layers {
                node_class: Some(&class),
                pod: Some(&ingress_only_pod),
                ..Default::default()
            },
            Some((
                r(10, Some(200_000), Pod, false),
                r(80, None, NodeClass, false),
            )),
        ),
        (
            "max clamps the default",
            Layers {
                network_default: Some(&d),
                max: Some(&max),
                ..Default::default()
            },
            Some((
                r(60, None, NetworkDefault, true),
                r(60, None, NetworkDefault, true),
            )),
        ),
        (
            "max clamps a pod asking for more",
            Layers {
                pod: Some(&huge),
                max: Some(&max),
                ..Default::default()
            },
            Some((r(60, None, Pod, true), r(60, None, Pod, true))),
        ),
        (
            "max leaves a lower pod request alone",
            Layers {
                pod: Some(&pod),
                max: Some(&max),
                ..Default::default()
            },
            Some((r(20, None, Pod, false), r(20, None, Pod, false))),
        ),
        (
            "max alone caps every pod",
            Layers {
                max: Some(&max),
                ..Default::default()
            },
            Some((r(60, None, Max, false), r(60, None, Max, false))),
        ),
        (
            "max burst caps an explicit burst (a clamp) but rate is lower",
            Layers {
                pod: Some(&big_burst_pod),
                max: Some(&max_with_burst),
                ..Default::default()
            },
            Some((r(10, Some(4 * M), Pod, true), None)),
        ),
        (
            "max burst caps the derived burst of a clamped rate",
            Layers {
                policy: Some(&huge),
                max: Some(&max_with_burst),
                ..Default::default()
            },
            Some((
                r(60, Some(default_burst(60 * M).min(4 * M)), Policy, true),
                r(500, None, Policy, false),
            )),
        ),
    ];
    for (name, layers, want) in cases {
        let got = resolve(&layers).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = got.map(|e| (e.ingress, e.egress));
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn rate_and_burst_travel_together() {
    // The class sets rate+burst; the policy sets only a rate: the class's
    // burst must NOT leak under the policy's rate.
    let class = bw(Some(80 * M), Some(4 * M), None, None);
    let policy = bw(Some(50 * M), None, None, None);
    let e = resolve(&Layers {
        node_class: Some(&class),
        policy: Some(&policy),
        ..Default::default()
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        e.ingress.unwrap().limit,
        Limit {
            rate: 50 * M,
            burst: Some(default_burst(50 * M))
        }
    );
    assert_eq!(e.egress, None);
    assert_eq!(
        e.bandwidth(),
        bw(Some(50 * M), Some(default_burst(50 * M)), None, None)
    );
}

#[test]
fn invalid_inputs_fail_at_every_level() {
    let bad = [
        bw(Some(0), None, None, None),
        bw(Some(999), None, None, None),
        bw(None, Some(100_000), None, None),
        bw(None, None, Some(2 * MAX_RATE), None),
        bw(None, None, Some(M), Some(8)),
        bw(None, None, Some(M), Some(MAX_BURST + 1)),
    ];
    for b in &bad {
        assert!(b.validate("x").is_err(), "{b:?}");
        for layers in [
            Layers {
                network_default: Some(b),
                ..Default::default()
            },
            Layers {
                node_class: Some(b),
                ..Default::default()
            },
            Layers {
                policy: Some(b),
                ..Default::default()
            },
            Layers {
                pod: Some(b),
                max: Some(&both(1)),
                ..Default::default()
            },
            Layers {
                max: Some(b),
                ..Default::default()
            },
        ] {
            assert!(resolve(&layers).is_err(), "{b:?} {layers:?}");
        }
    }
}

#[test]
fn quantities() {
    for (s, v) in [
        ("10M", 10_000_000),
        ("1G", 1_000_000_000),
        ("1.5G", 1_500_000_000),
        ("100k", 100_000),
        ("100K", 100_000),
        ("512Ki", 524_288),
        ("1Mi", 1_048_576),
        ("12345", 12_345),
        ("2T", 2_000_000_000_000),
    ] {
        assert_eq!(parse_quantity(s).unwrap(), v, "{s}");
    }
    for s in [
        "",
        "M",
        "10X",
        "-1",
        "1.5",
        "1..5M",
        ".5M",
        "5.M",
        "1e6",
        "99999999999999999999",
    ] {
        assert!(parse_quantity(s).is_err(), "{s:?}");
    }
    assert_eq!(format_quantity(10_000_000), "10M");
    assert_eq!(format_quantity(1_500_000), "1500k");
    assert_eq!(format_quantity(12_345), "12345");
}

#[test]
fn cli_spec_parsing() {
    let b = Bandwidth::parse_spec("ingress=100M,egress=50M,egress-burst=1M").unwrap();
    assert_eq!(b, bw(Some(100 * M), None, Some(50 * M), Some(M)));
    assert_eq!(b.to_string(), "ingress=100M,egress=50M,egress-burst=1M");
    assert_eq!(Bandwidth::parse_spec(&b.to_string()).unwrap(), b);
    for bad in [
        "",
        "ingress",
        "ingress=0",
        "ingress=10M,ingress=20M",
        "speed=1M",
        "ingress-burst=1M",
        "egress=1G,egress-burst=1",
    ] {
        assert!(Bandwidth::parse_spec(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn spec_serde_is_optional_and_strict() {
    let empty = QosSpec::default();
    assert!(empty.is_empty());
    let s: QosSpec = serde_json::from_str(
        r#"{"default":{"ingressRate":100000000},"max":{"egressRate":1000000000},"nodeClasses":{"small":{"egressRate":50000000}}}"#,
    )
    .unwrap();
    s.validate().unwrap();
    assert_eq!(s.node_classes["small"].egress_rate, Some(50 * M));
    assert!(serde_json::from_str::<QosSpec>(r#"{"defualt":{}}"#).is_err());
    let mut bad = s.clone();
    bad.node_classes.insert("Bad_Class".into(), both(1));
    assert!(bad.validate().is_err());
}

fn policy(name: &str, ns: &str, pattern: Option<&str>, rate: u64) -> QosPolicy {
    QosPolicy {
        network: "prod".into(),
        namespace: ns.into(),
        name: name.into(),
        pod_pattern: pattern.map(str::to_string),
        bandwidth: both(rate),
    }
}

#[test]
fn policy_selection_prefers_applications_then_names() {
    let ps = [
        policy("zz-ns", "shop", None, 10),
        policy("aa-ns", "shop", None, 20),
        policy("web", "shop", Some("web-.*"), 30),
        policy("web2", "shop", Some("web-[0-9]+"), 40),
        policy("other", "bank", None, 50),
    ];
    for p in &ps {
        p.validate().unwrap();
    }
    let pick = |ns: &str, pod: &str| select_policy(&ps, ns, pod).map(|p| p.name.as_str());
    assert_eq!(pick("shop", "web-1"), Some("web"));
    assert_eq!(pick("shop", "db-0"), Some("aa-ns"));
    // Anchored: "web-.*" does not match "myweb-1".
    assert_eq!(pick("shop", "myweb-1"), Some("aa-ns"));
    assert_eq!(pick("bank", "web-1"), Some("other"));
    assert_eq!(pick("none", "x"), None);
    assert!(policy("p", "ns", Some("(unclosed"), 1).validate().is_err());
    assert!(policy("p", "NS", None, 1).validate().is_err());
    let mut empty = policy("p", "ns", None, 1);
    empty.bandwidth = Bandwidth::default();
    assert!(empty.validate().is_err());
}

#[test]
fn effective_displays_levels() {
    let e = resolve(&Layers {
        pod: Some(&bw(Some(10 * M), None, None, None)),
        max: Some(&bw(Some(5 * M), None, Some(200 * M), None)),
        ..Default::default()
    })
    .unwrap()
    .unwrap();
    let s = e.to_string();
    assert!(s.starts_with("ingress 5Mbit/s burst "), "{s}");
    assert!(s.contains("from pod (clamped by max)"), "{s}");
    assert!(s.contains("egress 200Mbit/s burst 2Mbit from max"), "{s}");
}
