//! The start-up window of the NetworkPolicy provider (needs root): until
//! its caches are synced it answers allow-all for every pod. A restarted
//! ipamd must not re-program an existing protected pod's table from that
//! answer (the pod would be open), and Allocate must not hand out a filter
//! built from it.

use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rackline_ipamd::filter::{Filters, NetpolSource, NetpolView};
use rackline_ipamd::reprogram::{self, AttachmentRecord, Attachments};
use rackline_model::filter::{Chain, Layer, Peer, PodFilter, Rule, Verdict};
use rackline_model::PodRef;
use rackline_netlink::netns::Netns;
use rackline_nft::PodTable;
use tokio::sync::watch;

const OWN: Ipv4Addr = Ipv4Addr::new(10, 31, 0, 5);

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("rl-fs-{tag}-{}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(st.success());
        Ns(name)
    }
    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A provider that behaves like the Kubernetes one: allow-all until
/// synced, then the pod's policy (ingress only from set `np-web`).
struct Starting {
    synced: AtomicBool,
    members: std::sync::Mutex<Vec<Ipv4Addr>>,
}

impl Starting {
    fn view(&self) -> NetpolView {
        let mut v = NetpolView::allow_all();
        v.layer.ingress = Chain {
            rules: vec![Rule {
                verdict: Verdict::Allow,
                peers: vec![Peer::Set("np-web".into())],
                ports: vec![],
            }],
            default: Verdict::Deny,
        };
        v.sets
            .insert("np-web".into(), self.members.lock().unwrap().clone());
        v
    }
}

impl NetpolSource for Starting {
    fn for_pod(&self, _: &PodRef, _: Ipv4Addr) -> NetpolView {
        if !self.synced.load(Ordering::SeqCst) {
            return NetpolView::allow_all();
        }
        self.view()
    }
    fn synced(&self) -> bool {
        self.synced.load(Ordering::SeqCst)
    }
}

fn protected(view: NetpolView) -> PodFilter {
    PodFilter {
        acl: Layer::allow_all(),
        netpol: view.layer,
        always_allow: Vec::new(),
        sets: view.sets,
    }
}

fn table_matches(ns: &std::path::Path, f: &PodFilter) -> bool {
    let ns = Netns::open(ns).unwrap();
    let mut t = PodTable::open(&ns, "eth0", OWN).unwrap();
    t.verify(f).unwrap().is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_ipamd_keeps_protected_tables_until_networkpolicy_is_synced() {
    let ns = Ns::new("restart");
    let src = Arc::new(Starting {
        synced: AtomicBool::new(false),
        members: std::sync::Mutex::new(vec!["10.31.0.7".parse().unwrap()]),
    });
    // Before the restart: the pod's table carries its NetworkPolicy layer.
    let before = protected(src.view());
    {
        let n = Netns::open(&ns.path()).unwrap();
        PodTable::open(&n, "eth0", OWN)
            .unwrap()
            .program(&before)
            .unwrap();
    }
    assert!(table_matches(&ns.path(), &before));

    // The restarted ipamd: provider installed, caches not yet listed.
    let filters = Filters::new(Vec::new());
    filters.set_netpol_source(src.clone());
    assert!(!filters.netpol_synced());
    let started = Instant::now();
    assert!(
        !filters.wait_netpol_synced(Duration::from_millis(300)).await,
        "Allocate must see the provider as not synced"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    let dir = tempfile::tempdir().unwrap();
    let attachments = Attachments::new(dir.path());
    attachments.record(&AttachmentRecord {
        network: "prod".into(),
        container_id: "c1".into(),
        ifname: "eth0".into(),
        netns: ns.path(),
        pod: PodRef {
            namespace: "shop".into(),
            name: "web-0".into(),
            uid: String::new(),
        },
        address: OWN,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(reprogram::run(
        filters.clone(),
        attachments.clone(),
        None,
        |_| async { true },
        stop_rx,
    ));
    filters.changed();
    // Past the first round, the new-attachment settle (2 s) and a retry
    // tick: the old code removed the table here (allow-all = no table).
    tokio::time::sleep(Duration::from_millis(2600)).await;
    assert!(
        table_matches(&ns.path(), &before),
        "the protected pod's table was rewritten before NetworkPolicy synced"
    );

    // Synced, with a changed peer set: the re-programmer resumes.
    src.members
        .lock()
        .unwrap()
        .push("10.31.0.8".parse().unwrap());
    src.synced.store(true, Ordering::SeqCst);
    assert!(filters.wait_netpol_synced(Duration::from_millis(10)).await);
    filters.changed();
    let after = protected(src.view());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !table_matches(&ns.path(), &after) {
        assert!(
            Instant::now() < deadline,
            "the table did not follow the policy after the sync"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let _ = task.await;
}

/// Allocate while NetworkPolicy is enforced but not yet synced: it waits
/// for the sync (bounded), and without it refuses (UNAVAILABLE, the plugin's
/// CNI code 11) instead of handing out an allow-all filter — the old code
/// answered at once with no filter at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_waits_for_networkpolicy_and_fails_closed_without_it() {
    use rackline_ipamd::engine::Engine;
    use rackline_ipamd::service::{IpamService, NETPOL_SYNC_WAIT};
    use rackline_proto::ipam::v1 as pb;
    use rackline_proto::ipam::v1::ipam_server::Ipam;

    let etcd = rackline_testkit::Etcd::start();
    etcd.ctl(&[
        "put",
        "/rackline/v1/networks/prod",
        r#"{"name":"prod","subnet":"10.31.0.0/24","gateway":"10.31.0.1","master":"uplink0"}"#,
    ]);
    let store =
        rackline_store::Store::connect(&[etcd.endpoint()], "/rackline", Duration::from_secs(2))
            .await
            .unwrap();
    let engine = Arc::new(Engine::new(
        "node-a".into(),
        store.keys().clone(),
        store.clone(),
        Duration::ZERO,
    ));
    engine.apply_snapshot(store.snapshot().await.unwrap());
    engine.outage().note_reachable();
    let src = Arc::new(Starting {
        synced: AtomicBool::new(false),
        members: std::sync::Mutex::new(vec!["10.31.0.7".parse().unwrap()]),
    });
    let filters = Filters::new(Vec::new());
    filters.set_netpol_source(src.clone());
    let svc = IpamService::new(engine).with_filters(filters);
    let req = |cid: &str| {
        tonic::Request::new(pb::AllocateRequest {
            network: "prod".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod: Some(pb::PodRef {
                namespace: "shop".into(),
                name: cid.into(),
                uid: String::new(),
            }),
            ..Default::default()
        })
    };

    let started = Instant::now();
    let e = svc.allocate(req("c1")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
    assert!(e.message().contains("NetworkPolicy"), "{}", e.message());
    assert!(started.elapsed() >= NETPOL_SYNC_WAIT);
    assert!(started.elapsed() < NETPOL_SYNC_WAIT + Duration::from_secs(2));

    // The sync lands while an Allocate waits: it gets the pod's policy.
    let s = src.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.synced.store(true, Ordering::SeqCst);
    });
    let r = svc.allocate(req("c2")).await.unwrap().into_inner();
    let f: PodFilter = serde_json::from_slice(&r.filter).expect("a filter");
    assert_eq!(f.netpol.ingress.default, Verdict::Deny);
}
