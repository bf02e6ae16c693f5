//! The NetworkPolicy compiler against recorded Kubernetes objects: a world
//! of three namespaces (x, y, z) with pods a, b, c each serving TCP, UDP and
//! SCTP on 80 and 81 under named ports (the layout of the upstream
//! NetworkPolicy e2e suite), plus a hostNetwork, a pending and a finished
//! pod. Each case adds its policies, compiles the target pod and asks
//! `PodFilter::decide` — the reference semantics of the programmed table —
//! about packets from/to peers.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use rackline_ipamd::netpol::{Compiled, World};
use rackline_model::filter::{Direction, Packet, Peer, PodFilter, Proto, Verdict};
use serde::Deserialize;

const WORLD: &str = include_str!("fixtures/netpol/world.json");
const CASES: &str = include_str!("fixtures/netpol/cases.json");

#[derive(Deserialize)]
struct Case {
    name: String,
    policies: Vec<NetworkPolicy>,
    checks: Vec<String>,
}

fn world_objects() -> (Vec<Arc<Pod>>, Vec<Arc<Namespace>>) {
    let list: serde_json::Value = serde_json::from_str(WORLD).unwrap();
    let (mut pods, mut nss) = (Vec::new(), Vec::new());
    for item in list["items"].as_array().unwrap() {
        match item["kind"].as_str().unwrap() {
            "Pod" => pods.push(Arc::new(serde_json::from_value(item.clone()).unwrap())),
            "Namespace" => nss.push(Arc::new(serde_json::from_value(item.clone()).unwrap())),
            k => panic!("unexpected kind {k}"),
        }
    }
    (pods, nss)
}

fn find<'a>(pods: &'a [Arc<Pod>], key: &str) -> &'a Pod {
    let (ns, name) = key.split_once('/').unwrap();
    pods.iter()
        .find(|p| {
            p.metadata.namespace.as_deref() == Some(ns) && p.metadata.name.as_deref() == Some(name)
        })
        .unwrap_or_else(|| panic!("no pod {key} in the world"))
}

fn filter_of(c: Compiled) -> PodFilter {
    let mut f = PodFilter::allow_all();
    f.netpol = c.layer;
    f.sets = c.sets;
    f
}

/// `"x/a <- y/b tcp 80 allow"`: ingress to x/a from pod y/b (or an
/// address); `->` is egress.
fn check(world: &World, pods: &[Arc<Pod>], line: &str) -> Result<(), String> {
    let w: Vec<&str> = line.split_whitespace().collect();
    let [target, arrow, remote, proto, port, want] = w[..] else {
        panic!("bad check {line:?}");
    };
    let direction = match arrow {
        "<-" => Direction::Ingress,
        "->" => Direction::Egress,
        _ => panic!("bad arrow in {line:?}"),
    };
    let remote = if remote.contains('/') {
        find(pods, remote)
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_ref()
            .unwrap()
            .parse()
            .unwrap()
    } else {
        remote.parse().unwrap()
    };
    let want = match want {
        "allow" => Verdict::Allow,
        "deny" => Verdict::Deny,
        _ => panic!("bad verdict in {line:?}"),
    };
    let f = filter_of(world.compile(find(pods, target)));
    let got = f.decide(&Packet {
        direction,
        remote,
        proto: proto.parse::<Proto>().unwrap(),
        dport: Some(port.parse().unwrap()),
    });
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "{line}: got {got:?}\n  filter: {}",
            serde_json::to_string(&f).unwrap()
        ))
    }
}

#[test]
fn upstream_networkpolicy_scenarios_against_recorded_objects() {
    let cases: Vec<Case> = serde_json::from_str(CASES).unwrap();
    assert!(cases.len() >= 25);
    let (pods, nss) = world_objects();
    let mut failures = Vec::new();
    for c in &cases {
        let world = World::new(
            c.policies.iter().cloned().map(Arc::new).collect(),
            pods.clone(),
            nss.clone(),
        );
        for line in &c.checks {
            if let Err(e) = check(&world, &pods, line) {
                failures.push(format!("[{}] {e}", c.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn case_policies(name: &str) -> Vec<Arc<NetworkPolicy>> {
    let cases: Vec<Case> = serde_json::from_str(CASES).unwrap();
    let c = cases.into_iter().find(|c| c.name == name).unwrap();
    c.policies.into_iter().map(Arc::new).collect()
}

#[test]
fn a_peer_pod_appearing_changes_set_elements_not_rules() {
    let (mut pods, nss) = world_objects();
    let policies = case_policies("podSelector OR namespaceSelector as two peers");
    let before = World::new(policies.clone(), pods.clone(), nss.clone());
    let target = find(&pods, "x/a").clone();
    let was = before.compile(&target);

    // A new pod labelled pod=b in x starts and gets an address.
    let mut newcomer = find(&pods, "x/b").clone();
    newcomer.metadata.name = Some("b-2".into());
    let st = newcomer.status.as_mut().unwrap();
    st.pod_ip = Some("10.30.1.22".into());
    st.pod_ips = Some(vec![k8s_openapi::api::core::v1::PodIP {
        ip: "10.30.1.22".into(),
    }]);
    pods.push(Arc::new(newcomer));
    let after = World::new(policies, pods.clone(), nss);
    let now = after.compile(&target);

    assert_eq!(was.layer, now.layer, "the rules stay as they were");
    assert_ne!(was.sets, now.sets);
    assert_eq!(
        was.sets.keys().collect::<Vec<_>>(),
        now.sets.keys().collect::<Vec<_>>()
    );
    let grown: Vec<_> = now
        .sets
        .iter()
        .filter(|(k, v)| was.sets[*k] != **v)
        .collect();
    assert_eq!(
        grown.len(),
        1,
        "only the podSelector set changed: {grown:?}"
    );
    assert!(grown[0].1.contains(&"10.30.1.22".parse().unwrap()));
    let f = filter_of(now);
    assert_eq!(
        f.decide(&Packet {
            direction: Direction::Ingress,
            remote: "10.30.1.22".parse().unwrap(),
            proto: Proto::Tcp,
            dport: Some(80),
        }),
        Verdict::Allow
    );
}

#[test]
fn the_same_selector_in_two_policies_shares_one_named_set() {
    let (pods, nss) = world_objects();
    let mut policies = case_policies("allow from the same namespace");
    let mut twin = (*policies[0]).clone();
    twin.metadata.name = Some("same-ns-twin".into());
    policies.push(Arc::new(twin));
    let c = World::new(policies, pods.clone(), nss).compile(find(&pods, "x/a"));
    assert_eq!(c.sets.len(), 1, "{:?}", c.sets);
    let name = c.sets.keys().next().unwrap();
    assert!(name.starts_with("np-") && name.len() <= 32, "{name}");
    assert_eq!(c.layer.ingress.rules.len(), 1, "identical rules are merged");
    assert_eq!(
        c.layer.ingress.rules[0].peers,
        vec![Peer::Set(name.clone())]
    );
    // Members: every pod of x with an address (a, b, c), sorted.
    let want: Vec<std::net::Ipv4Addr> = ["10.30.1.1", "10.30.1.2", "10.30.1.3"]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
    assert_eq!(c.sets[name], want);
}

/// Cost of one recompute pass on a large cluster: 10 000 pods in 20
/// namespaces, 30 policies in the local pods' namespace, 100 local pods;
/// one peer set holds 1 000 pods. Printed for the benchmark record, bounded
/// loosely so a quadratic regression fails.
#[test]
fn a_pass_over_a_large_cluster_stays_cheap() {
    use k8s_openapi::api::core::v1::{Namespace, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use std::collections::BTreeMap;
    use std::time::Instant;

    let label = |pairs: &[(&str, String)]| -> Option<BTreeMap<String, String>> {
        Some(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    };
    let nss: Vec<Arc<Namespace>> = (0..20)
        .map(|n| {
            Arc::new(Namespace {
                metadata: ObjectMeta {
                    name: Some(format!("ns{n}")),
                    labels: label(&[("team", format!("t{}", n % 4))]),
                    ..Default::default()
                },
                ..Default::default()
            })
        })
        .collect();
    let pods: Vec<Arc<Pod>> = (0..10_000u32)
        .map(|i| {
            let ip = std::net::Ipv4Addr::from(0x0a40_0000 + i).to_string();
            Arc::new(Pod {
                metadata: ObjectMeta {
                    name: Some(format!("p{i}")),
                    namespace: Some(format!("ns{}", i % 20)),
                    labels: label(&[
                        ("app", format!("a{}", i % 50)),
                        ("tier", format!("t{}", i % 10)),
                    ]),
                    ..Default::default()
                },
                spec: Some(PodSpec {
                    node_name: Some(if i % 100 == 0 { "node-a" } else { "other" }.into()),
                    ..Default::default()
                }),
                status: Some(PodStatus {
                    phase: Some("Running".into()),
                    pod_ip: Some(ip.clone()),
                    pod_ips: Some(vec![PodIP { ip }]),
                    ..Default::default()
                }),
            })
        })
        .collect();
    let policies: Vec<Arc<NetworkPolicy>> = (0..30)
        .map(|k| {
            let np: NetworkPolicy = serde_json::from_value(serde_json::json!({
                "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": format!("np{k}"), "namespace": "ns0"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": format!("a{}", k % 50)}},
                    "ingress": [{"from": [
                        {"podSelector": {"matchLabels": {"tier": format!("t{}", k % 10)}}},
                        {"namespaceSelector": {"matchLabels": {"team": format!("t{}", k % 4)}},
                         "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["t1", "t2"]}]}},
                        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.64.0.0/16"]}}
                    ], "ports": [{"port": 8000 + k}]}],
                    "egress": [{"to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"tier": "t3"}}}]}],
                    "policyTypes": ["Ingress", "Egress"]
                }
            }))
            .unwrap();
            Arc::new(np)
        })
        .collect();
    let started = Instant::now();
    let world = World::new(policies, pods.clone(), nss);
    let local: Vec<_> = pods
        .iter()
        .filter(|p| p.spec.as_ref().unwrap().node_name.as_deref() == Some("node-a"))
        .collect();
    assert_eq!(local.len(), 100);
    let mut isolated = 0;
    let mut biggest = 0;
    for p in &local {
        let c = world.compile(p);
        isolated += usize::from(!c.layer.ingress.is_allow_all());
        biggest = biggest.max(c.sets.values().map(Vec::len).max().unwrap_or(0));
    }
    let took = started.elapsed();
    eprintln!("pass: 10000 pods, 30 policies, 100 local pods, largest set {biggest}: {took:?}");
    assert!(isolated > 0);
    assert_eq!(biggest, 1000, "tier=t3 across every namespace");
    assert!(took < std::time::Duration::from_secs(5), "{took:?}");
}
