//! NetworkPolicy watching against recorded API-server responses (no API
//! server runs here, see `netpol_api`). The real kube-rs reflectors follow
//! them; the provider recomputes node-a's pods and tells its sink what
//! changed.

mod netpol_api;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netpol_api::{client, policy, serve, world, NAMESPACES, NETPOLS, PODS};

use rackline_ipamd::filter::Filters;
use rackline_ipamd::netpol::{Change, Compiled, FiltersSink, Netpol, NetpolSink, PodKey};
use rackline_model::filter::{Direction, Packet, PodFilter, Proto, Verdict};
use rackline_model::PodRef;
use serde_json::json;
use tokio::sync::watch;

/// One report: the pod, its change (None = removed) and its layer.
type Report = (PodKey, Option<Change>, Option<Compiled>);

/// Records what the provider reports.
#[derive(Default)]
struct Recording {
    seen: Mutex<Vec<Report>>,
}

impl NetpolSink for Recording {
    fn changed(&self, pod: &PodKey, compiled: &Compiled, change: Change) {
        self.seen
            .lock()
            .unwrap()
            .push((pod.clone(), Some(change), Some(compiled.clone())));
    }
    fn removed(&self, pod: &PodKey) {
        self.seen.lock().unwrap().push((pod.clone(), None, None));
    }
}

fn key(s: &str) -> PodKey {
    let (ns, name) = s.split_once('/').unwrap();
    PodKey {
        namespace: ns.into(),
        name: name.into(),
    }
}

fn ingress(c: &Compiled, from: &str, port: u16) -> Verdict {
    let mut f = PodFilter::allow_all();
    f.netpol = c.layer.clone();
    f.sets = c.sets.clone();
    f.decide(&Packet {
        direction: Direction::Ingress,
        remote: from.parse().unwrap(),
        proto: Proto::Tcp,
        dport: Some(port),
    })
}

/// Waits until the sink saw `want` for `pod` after position `from`, and
/// returns that report and how long it took.
async fn wait_for(
    rec: &Recording,
    from: usize,
    pod: &str,
    want: Option<Change>,
) -> (Option<Compiled>, Duration) {
    let started = Instant::now();
    let pod = key(pod);
    loop {
        if let Some((_, _, c)) = rec.seen.lock().unwrap()[from..]
            .iter()
            .find(|(k, ch, _)| *k == pod && *ch == want)
        {
            return (c.clone(), started.elapsed());
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no {want:?} for {pod} in {:?}",
            rec.seen.lock().unwrap()[from..]
                .iter()
                .map(|(k, c, _)| format!("{k} {c:?}"))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn watch_events_change_a_local_pods_filter() {
    let (pods, namespaces) = world();
    let srv = serve(HashMap::from([
        (NETPOLS, ("NetworkPolicyList", vec![])),
        (PODS, ("PodList", pods.clone())),
        (NAMESPACES, ("NamespaceList", namespaces)),
    ]))
    .await;
    let rec = Arc::new(Recording::default());
    let (_stop, shutdown) = watch::channel(false);
    let (np, tasks) = Netpol::start(client(srv.addr), "node-a", rec.clone(), shutdown);

    // Synced: node-a's pods (a and c of each namespace, not the hostNetwork
    // one) are reported once, allow-all; node-b's are not.
    let (first, _) = wait_for(&rec, 0, "x/a", Some(Change::Rules)).await;
    assert_eq!(first.unwrap(), Compiled::allow_all());
    let local: std::collections::BTreeSet<String> = rec
        .seen
        .lock()
        .unwrap()
        .iter()
        .map(|(k, _, _)| k.to_string())
        .collect();
    assert!(
        local.contains("z/c") && local.contains("z/pending-a"),
        "{local:?}"
    );
    assert!(
        !local.contains("x/b") && !local.contains("z/host-a"),
        "{local:?}"
    );
    assert!(np.synced());
    assert_eq!(np.current("x", "a"), Some(Compiled::allow_all()));

    // A policy arrives: x/a accepts only namespace y.
    let mark = rec.seen.lock().unwrap().len();
    srv.event(NETPOLS, "ADDED", policy("allow from a namespace by label"));
    let (c, took) = wait_for(&rec, mark, "x/a", Some(Change::Rules)).await;
    let c = c.unwrap();
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(ingress(&c, "10.30.2.3", 80), Verdict::Allow);
    assert_eq!(ingress(&c, "10.30.1.2", 80), Verdict::Deny);
    assert_eq!(ingress(&c, "10.30.2.44", 80), Verdict::Deny);
    assert_eq!(np.current("x", "a").unwrap(), c);
    // Through the filter assembler's hook: the pod's whole filter has the
    // NetworkPolicy layer, and the node's address still passes.
    let filters = Filters::new(vec!["10.20.0.11".parse().unwrap()]);
    let mut generation = filters.subscribe();
    filters.set_netpol_source(np.clone());
    assert!(generation.has_changed().unwrap());
    generation.mark_unchanged();
    let xa = PodRef {
        namespace: "x".into(),
        name: "a".into(),
        uid: "uid-x-a".into(),
    };
    let f = filters.pod_filter("vlan100", &xa, "10.30.1.1".parse().unwrap());
    assert_eq!(f.netpol, c.layer);
    assert_eq!(
        f.always_allow,
        vec!["10.20.0.11".parse::<std::net::Ipv4Addr>().unwrap()]
    );
    let probe = Packet {
        direction: Direction::Ingress,
        remote: "10.20.0.11".parse().unwrap(),
        proto: Proto::Tcp,
        dport: Some(8080),
    };
    assert_eq!(f.decide(&probe), Verdict::Allow);
    let unknown = PodRef {
        namespace: "x".into(),
        name: "not-in-the-api".into(),
        uid: String::new(),
    };
    assert!(filters
        .pod_filter("vlan100", &unknown, "10.30.1.99".parse().unwrap())
        .is_allow_all());

    // x/c is not selected by it: nothing reported for it.
    assert!(!rec.seen.lock().unwrap()[mark..]
        .iter()
        .any(|(k, _, _)| *k == key("x/c")));

    // A peer pod starts in y: set elements only.
    let mark = rec.seen.lock().unwrap().len();
    let mut newcomer = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "b" && p["metadata"]["namespace"] == "y")
        .unwrap()
        .clone();
    newcomer["metadata"]["name"] = json!("d");
    newcomer["metadata"]["uid"] = json!("uid-y-d");
    newcomer["metadata"]["resourceVersion"] = json!("1101");
    newcomer["status"]["podIP"] = json!("10.30.2.44");
    newcomer["status"]["podIPs"] = json!([{"ip": "10.30.2.44"}]);
    srv.event(PODS, "ADDED", newcomer.clone());
    let (after, _) = wait_for(&rec, mark, "x/a", Some(Change::Sets)).await;
    let after = after.unwrap();
    assert_eq!(after.layer, c.layer, "rules unchanged");
    assert_eq!(ingress(&after, "10.30.2.44", 80), Verdict::Allow);

    // It leaves again: set elements only, and it is denied once more.
    let mark = rec.seen.lock().unwrap().len();
    newcomer["metadata"]["resourceVersion"] = json!("1102");
    srv.event(PODS, "DELETED", newcomer);
    let (gone, _) = wait_for(&rec, mark, "x/a", Some(Change::Sets)).await;
    assert_eq!(ingress(&gone.unwrap(), "10.30.2.44", 80), Verdict::Deny);

    // Namespace z gets labelled ns=y: its pods become peers (sets only).
    let mark = rec.seen.lock().unwrap().len();
    srv.event(
        NAMESPACES,
        "MODIFIED",
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z", "uid": "uid-ns-z", "resourceVersion": "1103",
               "labels": {"kubernetes.io/metadata.name": "z", "ns": "y"}}}),
    );
    let (relabelled, _) = wait_for(&rec, mark, "x/a", Some(Change::Sets)).await;
    assert_eq!(
        ingress(&relabelled.unwrap(), "10.30.3.2", 80),
        Verdict::Allow
    );

    // A local pod's labels change so that the policy now selects it (the
    // upstream "should deny ingress access to updated pod" case): rules.
    let mark = rec.seen.lock().unwrap().len();
    let mut xc = pods
        .iter()
        .find(|p| p["metadata"]["name"] == "c" && p["metadata"]["namespace"] == "x")
        .unwrap()
        .clone();
    xc["metadata"]["labels"] = json!({"pod": "a"});
    xc["metadata"]["resourceVersion"] = json!("1104");
    srv.event(PODS, "MODIFIED", xc.clone());
    let (relabelled, _) = wait_for(&rec, mark, "x/c", Some(Change::Rules)).await;
    let relabelled = relabelled.unwrap();
    assert_eq!(ingress(&relabelled, "10.30.1.2", 80), Verdict::Deny);
    assert_eq!(ingress(&relabelled, "10.30.2.1", 80), Verdict::Allow);

    // The local pod itself goes: removed.
    let mark = rec.seen.lock().unwrap().len();
    xc["metadata"]["resourceVersion"] = json!("1105");
    srv.event(PODS, "DELETED", xc);
    wait_for(&rec, mark, "x/c", None).await;

    // The policy is deleted: x/a is open again.
    let mark = rec.seen.lock().unwrap().len();
    let mut p = policy("allow from a namespace by label");
    p["metadata"]["resourceVersion"] = json!("1106");
    srv.event(NETPOLS, "DELETED", p);
    let (open, took) = wait_for(&rec, mark, "x/a", Some(Change::Rules)).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
    assert_eq!(open.unwrap(), Compiled::allow_all());

    assert!(np.metrics.passes() >= 6, "passes {}", np.metrics.passes());
    assert!(np.metrics.updates("sets") >= 3);
    assert!(np.metrics.updates("removed") >= 1);
    for t in tasks {
        t.abort();
    }
}

#[tokio::test]
async fn the_filters_sink_wakes_the_reprogrammer_on_a_policy_change() {
    let (pods, namespaces) = world();
    let srv = serve(HashMap::from([
        (
            NETPOLS,
            (
                "NetworkPolicyList",
                vec![policy("deny-all ingress isolates ingress only")],
            ),
        ),
        (PODS, ("PodList", pods)),
        (NAMESPACES, ("NamespaceList", namespaces)),
    ]))
    .await;
    let filters = Filters::new(Vec::new());
    let (_stop, shutdown) = watch::channel(false);
    let (np, tasks) = Netpol::start(
        client(srv.addr),
        "node-a",
        Arc::new(FiltersSink(filters.clone())),
        shutdown,
    );
    let mut generation = filters.subscribe();
    filters.set_netpol_source(np.clone());
    let xa = PodRef {
        namespace: "x".into(),
        name: "a".into(),
        uid: "uid-x-a".into(),
    };
    let ip = "10.30.1.1".parse().unwrap();
    let from_xb = Packet {
        direction: Direction::Ingress,
        remote: "10.30.1.2".parse().unwrap(),
        proto: Proto::Tcp,
        dport: Some(80),
    };
    // Listed: deny-all ingress.
    tokio::time::timeout(Duration::from_secs(20), async {
        while filters.pod_filter("vlan100", &xa, ip).decide(&from_xb) != Verdict::Deny {
            generation.changed().await.unwrap();
        }
    })
    .await
    .expect("the listed deny-all policy reaches the filter");
    // The policy goes away: the assembler is woken and sees allow-all.
    generation.mark_unchanged();
    let mut p = policy("deny-all ingress isolates ingress only");
    p["metadata"]["resourceVersion"] = json!("1200");
    srv.event(NETPOLS, "DELETED", p);
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(1), generation.changed())
        .await
        .expect("woken within a second")
        .unwrap();
    assert!(
        filters.pod_filter("vlan100", &xa, ip).is_allow_all(),
        "after {:?}",
        started.elapsed()
    );
    for t in tasks {
        t.abort();
    }
}
