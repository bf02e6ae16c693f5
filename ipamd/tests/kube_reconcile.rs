//! The leak reconciler's Kubernetes source against a recorded API server
//! (no API server runs here: a loopback HTTP server replays a recorded
//! metadata-only PodList of the node's pods, or a 403 while "down"), with a
//! real etcd behind ipamd's engine: leases of pods that are gone — deleted,
//! or re-created under the same name with another UID — are reclaimed after
//! the grace, a sticky one keeps its pod's address as after a DEL, and live
//! pods, a pod without identity and young leases are left alone. An API
//! server that cannot be listed reclaims nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rackline_ipamd::engine::{AllocateArgs, Engine};
use rackline_ipamd::metrics::IpamMetrics;
use rackline_ipamd::reconcile::{Reconciler, Settings, Source};
use rackline_model::lease::PodRef;
use rackline_testkit::Etcd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const LIST: &str = include_str!("fixtures/pod-metadata-on-node.json");

struct Recorded {
    addr: std::net::SocketAddr,
    down: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve() -> Recorded {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (d, log) = (down.clone(), seen.clone());
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            log.lock().unwrap().push(req.clone());
            let (code, body) = if d.load(Ordering::SeqCst) {
                // What a missing RBAC grant answers (kube-rs would retry a 503
                // until the pass's own timeout: the same outcome, slower).
                (
                    403,
                    r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"pods is forbidden: User \"system:serviceaccount:kube-system:rackline\" cannot list resource \"pods\"","reason":"Forbidden","code":403}"#,
                )
            } else {
                (200, LIST)
            };
            let resp = format!(
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    Recorded {
        addr,
        down,
        seen,
        task,
    }
}

fn client(addr: std::net::SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn pod(name: &str, uid: &str) -> PodRef {
    PodRef {
        namespace: if name.is_empty() { "" } else { "shop" }.into(),
        name: name.into(),
        uid: uid.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_reclaims_only_pods_that_are_gone() {
    let etcd = Etcd::start();
    etcd.ctl(&[
        "put",
        "/rackline/v1/networks/prod",
        r#"{"name":"prod","subnet":"10.30.0.0/24","gateway":"10.30.0.1","master":"uplink0"}"#,
    ]);
    let store =
        rackline_store::Store::connect(&[etcd.endpoint()], "/rackline", Duration::from_secs(2))
            .await
            .unwrap();
    let metrics = IpamMetrics::new(None);
    let engine = Arc::new(
        Engine::new(
            "node-a".into(),
            store.keys().clone(),
            store.clone(),
            Duration::ZERO,
        )
        .with_observer(Arc::new(rackline_ipamd::engine::Observer {
            metrics: metrics.clone(),
            alarms: None,
        })),
    );
    engine.apply_snapshot(store.snapshot().await.unwrap());
    engine.outage().note_reachable();
    let alloc = |cid: &str, p: PodRef, sticky: Option<bool>| {
        let engine = engine.clone();
        let cid = cid.to_string();
        async move {
            engine
                .allocate(AllocateArgs {
                    network: "prod".into(),
                    container_id: cid,
                    ifname: "eth0".into(),
                    pod: p,
                    requested: vec![],
                    sticky,
                    annotated: vec![],
                })
                .await
                .unwrap()
                .lease
        }
    };
    let live = alloc("c-live", pod("live", "uid-live"), None).await;
    let deleted = alloc("c-deleted", pod("deleted", "uid-deleted"), None).await;
    // The first incarnation of web-0, sticky; the API server has the second.
    let old_web = alloc("c-web-first", pod("web-0", "uid-web-0-first"), Some(true)).await;
    let anonymous = alloc("c-anon", pod("", ""), None).await;

    let srv = serve().await;
    let grace = Duration::from_millis(1500);
    let mut r = Reconciler::new(
        engine.clone(),
        Source::Kube {
            client: client(srv.addr),
            node: "node-a".into(),
        },
        Settings {
            interval: Duration::from_secs(1),
            grace,
        },
    )
    .with_metrics(metrics.clone());

    // API server down: nothing, however often.
    srv.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(grace).await;
    for _ in 0..3 {
        let o = r.pass().await;
        assert!(!o.listed && o.leases.is_empty());
        tokio::time::sleep(grace).await;
    }
    srv.down.store(false, Ordering::SeqCst);
    let req = srv.seen.lock().unwrap().last().cloned().unwrap();
    assert!(
        req.contains("fieldSelector=spec.nodeName%3Dnode-a")
            && req.contains("PartialObjectMetadataList"),
        "a metadata-only LIST of this node's pods: {req}"
    );

    // First pass that lists: absences start, nothing yet.
    let o = r.pass().await;
    assert!(o.listed && o.leases.is_empty(), "{o:?}");
    // A young lease of a pod the API server does not list (ADD in flight).
    let young = alloc("c-young", pod("young", "uid-young"), None).await;
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    let o = r.pass().await;
    let mut got: Vec<&str> = o.leases.iter().map(|l| l.container_id.as_str()).collect();
    got.sort();
    assert_eq!(got, ["c-deleted", "c-web-first"], "{o:?}");

    let held = |ip: std::net::Ipv4Addr| {
        etcd.ctl(&[
            "get",
            "--print-value-only",
            &format!("/rackline/v1/leases/prod/{}", padded(ip)),
        ])
    };
    assert!(held(live.address).contains("c-live"));
    assert!(held(anonymous.address).contains("c-anon"));
    assert!(held(young.address).contains("c-young"));
    assert!(held(deleted.address).trim().is_empty(), "freed");
    // The sticky lease became its pod's reservation, as after a DEL.
    let kept = held(old_web.address);
    assert!(kept.contains("\"state\":\"reserved\""), "{kept}");
    let view: Arc<dyn rackline_ipamd::metrics::NodeView> = engine.clone();
    let mut m = String::new();
    prometheus_client::encoding::text::encode(
        &mut m,
        &rackline_ipamd::metrics::registry(&metrics, view),
    )
    .unwrap();
    assert!(
        m.lines()
            .any(|l| l.starts_with("rackline_ipamd_reclaims_total{")
                && l.contains("reason=\"reconcile\"")
                && l.ends_with(" 2")),
        "{m}"
    );
}

fn padded(ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{:03}.{:03}.{:03}.{:03}", o[0], o[1], o[2], o[3])
}
