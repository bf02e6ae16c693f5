use super::*;
use crate::filter::{Direction, Packet, PodFilter};

fn acl(name: &str, order: u32, pattern: Option<&str>, ingress: &[&str], egress: &[&str]) -> Acl {
    Acl {
        network: "prod".into(),
        namespace: "shop".into(),
        name: name.into(),
        pod_pattern: pattern.map(Into::into),
        order,
        ingress: ingress.iter().map(|r| r.parse().unwrap()).collect(),
        egress: egress.iter().map(|r| r.parse().unwrap()).collect(),
    }
}

#[test]
fn rule_syntax_round_trips_and_bad_input_is_refused_with_the_reason() {
    for s in [
        "allow",
        "deny icmp",
        "allow tcp:80,8000-8080 10.0.0.0/8,192.168.1.7/32",
        "deny udp 0.0.0.0/0",
    ] {
        let r: AclRule = s.parse().unwrap();
        assert_eq!(r.to_string(), s);
    }
    // A bare address is a /32.
    let r: AclRule = "allow 10.0.0.1".parse().unwrap();
    assert_eq!(r.cidrs, vec!["10.0.0.1/32".parse().unwrap()]);
    for (s, why) in [
        ("permit tcp", "start with allow or deny"),
        ("allow tcp:0", "ports are 1-65535"),
        ("allow tcp:90-80", "low end first"),
        ("allow tcp:70000", "is not 1-65535"),
        ("allow icmp:8", "icmp has no ports"),
        ("allow gre", "use tcp, udp, sctp or icmp"),
        (
            "allow 10.0.0.1/24",
            "host bits set; did you mean 10.0.0.0/24",
        ),
        ("allow 10.0.0.300", "CIDR"),
        ("allow tcp udp", "one protocol per rule"),
    ] {
        let e = s.parse::<AclRule>().unwrap_err().to_string();
        assert!(e.contains(why), "{s}: {e}");
    }
}

#[test]
fn acl_validation_names_the_acl_and_the_problem() {
    let mut a = acl("web", 0, Some("web-.*"), &["allow tcp:80"], &[]);
    a.validate().unwrap();
    a.ingress.clear();
    assert!(a.validate().unwrap_err().to_string().contains("no rules"));
    let mut a = acl("Web", 0, None, &["allow"], &[]);
    assert!(a
        .validate()
        .unwrap_err()
        .to_string()
        .contains("prod/shop/Web"));
    a.name = "web".into();
    a.pod_pattern = Some("web-(".into());
    assert!(a
        .validate()
        .unwrap_err()
        .to_string()
        .contains("pod pattern"));
    // Rules arriving as JSON (the admin API) are validated too.
    let json = r#"{"network":"prod","namespace":"shop","name":"x","ingress":[{"action":"allow","protocol":"icmp","ports":[[1,2]]}]}"#;
    let a: Acl = serde_json::from_str(json).unwrap();
    assert!(a
        .validate()
        .unwrap_err()
        .to_string()
        .contains("icmp has no ports"));
}

/// (pod, direction, remote, protocol, destination port, expected verdict)
type Row = (
    &'static str,
    Direction,
    &'static str,
    Proto,
    Option<u16>,
    Verdict,
);

/// The compiled layer, evaluated by the reference semantics, gives the
/// verdict each row expects.
#[test]
fn compiled_acls_decide_as_written_first_match_in_order_then_default() {
    let acls = [
        // Evaluated second (order 20) although its name sorts first.
        acl(
            "a-wide",
            20,
            None,
            &["allow tcp:1-1024 10.0.0.0/8"],
            &["deny udp:53"],
        ),
        // Evaluated first: only for web pods.
        acl(
            "web",
            10,
            Some("web-.*"),
            &["deny 10.0.5.0/24", "allow tcp:8080 10.0.5.7"],
            &[],
        ),
        // Another namespace and another network: never selected.
        Acl {
            namespace: "bank".into(),
            ..acl("b", 0, None, &["allow"], &[])
        },
        Acl {
            network: "test".into(),
            ..acl("c", 0, None, &["deny"], &[])
        },
    ];
    let deny_in = AclDefault {
        ingress: Verdict::Deny,
        egress: Verdict::Allow,
    };
    use Direction::*;
    use Verdict::*;
    let rows: &[Row] = &[
        ("web-0", Ingress, "10.1.2.3", Proto::Tcp, Some(80), Allow),
        ("web-0", Ingress, "10.1.2.3", Proto::Tcp, Some(2000), Deny),
        ("web-0", Ingress, "10.1.2.3", Proto::Udp, Some(80), Deny),
        ("web-0", Ingress, "10.0.5.9", Proto::Tcp, Some(80), Deny),
        // First match: the /24 deny comes before the /32 allow.
        ("web-0", Ingress, "10.0.5.7", Proto::Tcp, Some(8080), Deny),
        ("db-0", Ingress, "10.0.5.9", Proto::Tcp, Some(80), Allow),
        ("db-0", Ingress, "192.168.0.1", Proto::Icmp, None, Deny),
        ("db-0", Egress, "8.8.8.8", Proto::Udp, Some(53), Deny),
        ("db-0", Egress, "8.8.8.8", Proto::Tcp, Some(53), Allow),
        ("db-0", Egress, "8.8.8.8", Proto::Icmp, None, Allow),
    ];
    for &(pod, direction, remote, proto, dport, want) in rows {
        let mut f = PodFilter::allow_all();
        f.acl = compile("prod", &acls, deny_in, "shop", pod);
        let got = f.decide(&Packet {
            direction,
            remote: remote.parse().unwrap(),
            proto,
            dport,
        });
        assert_eq!(
            got, want,
            "{pod} {direction:?} {remote} {proto:?} {dport:?}"
        );
    }
    // No ACL and the default default: nothing to program.
    let mut f = PodFilter::allow_all();
    f.acl = compile("prod", &acls, AclDefault::default(), "other", "x");
    assert!(f.is_allow_all());
}
