//! Pod annotations against recorded API-server responses (no API server
//! runs here): a loopback HTTP server replays a recorded PodList of the
//! node's pods, a WATCH stream with one ADDED event, single Pod reads and a
//! recorded 404 Status; the real kube-rs reflector and client read them.
//! Then the same cache feeds ipamd's gRPC service over a real etcd.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rackline_ipamd::engine::Engine;
use rackline_ipamd::pods::{PodCache, PodOptions, PodsError};
use rackline_ipamd::service::IpamService;
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_server::Ipam;
use rackline_testkit::Etcd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

struct Recorded {
    addr: std::net::SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const LIST: &str = include_str!("fixtures/pods-on-node.json");
const EVENTS: &str = include_str!("fixtures/pod-watch-events.jsonl");

/// Serves `/api/v1/pods` (LIST, or WATCH when `watch=true`: the recorded
/// events, then the stream stays open like a quiet API server) and single
/// pods from `pods`; anything else is the recorded 404.
async fn serve(pods: HashMap<&'static str, &'static str>) -> Recorded {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        let mut open = Vec::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(target.clone());
            let path = target.split('?').next().unwrap_or("");
            let head = |code: u16, reason: &str, len: Option<usize>| {
                format!(
                    "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{}Connection: close\r\n\r\n",
                    len.map(|l| format!("Content-Length: {l}\r\n")).unwrap_or_default()
                )
            };
            if path == "/api/v1/pods" && target.contains("watch=true") {
                let _ = sock.write_all(head(200, "OK", None).as_bytes()).await;
                let _ = sock.write_all(EVENTS.as_bytes()).await;
                let _ = sock.flush().await;
                // Keep the stream open: a re-watch loop would only add noise.
                open.push(sock);
                continue;
            }
            let (code, body) = if path == "/api/v1/pods" {
                assert!(
                    target.contains("fieldSelector=spec.nodeName%3Dnode-a"),
                    "the watch must select this node's pods only: {target}"
                );
                (200, LIST)
            } else {
                pods.get(path)
                    .map(|b| (200, *b))
                    .unwrap_or((404, include_str!("fixtures/pod-not-found.json")))
            };
            let reason = if code == 200 { "OK" } else { "Not Found" };
            let resp = format!("{}{body}", head(code, reason, Some(body.len())));
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        }
    });
    Recorded { addr, seen, task }
}

fn client(addr: std::net::SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn reads_of(srv: &Recorded, path: &str) -> usize {
    srv.seen
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.split('?').next() == Some(path))
        .count()
}

/// Waits until the reflector has applied the LIST and the WATCH event.
async fn wait_cached(cache: &PodCache) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // new-1 only arrives through the watch, after the list.
        if let Ok(o) = cache.options("shop", "new-1", "uid-new-1").await {
            if !o.addresses.is_empty() {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pod watch never filled the cache"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn ips(s: &[&str]) -> Vec<std::net::Ipv4Addr> {
    s.iter().map(|a| a.parse().unwrap()).collect()
}

#[tokio::test]
async fn the_cached_watch_serves_annotations_and_reads_what_it_lacks() {
    let srv = serve(HashMap::from([
        (
            "/api/v1/namespaces/shop/pods/late",
            include_str!("fixtures/pod-late.json"),
        ),
        (
            "/api/v1/namespaces/shop/pods/web-0",
            include_str!("fixtures/pod-web-0-new-incarnation.json"),
        ),
    ]))
    .await;
    let (_stop, shutdown) = watch::channel(false);
    let (cache, task) = PodCache::start(client(srv.addr), "node-a", shutdown);
    wait_cached(&cache).await;
    let new1_reads = reads_of(&srv, "/api/v1/namespaces/shop/pods/new-1");

    // From the cache (the LIST): no read of the pod itself.
    let o = cache.options("shop", "web-0", "uid-web-0").await.unwrap();
    assert_eq!(o.addresses, ips(&["10.30.0.70"]));
    assert_eq!(o.sticky, Some(true));
    let b = o.bandwidth.unwrap();
    assert_eq!(
        (b.ingress_rate, b.egress_rate, b.egress_burst),
        (Some(10_000_000), Some(20_000_000), Some(1_000_000))
    );
    assert_eq!(reads_of(&srv, "/api/v1/namespaces/shop/pods/web-0"), 0);
    assert_eq!(
        cache.options("shop", "plain", "").await.unwrap(),
        PodOptions::default()
    );
    // From the WATCH event.
    let o = cache.options("shop", "new-1", "uid-new-1").await.unwrap();
    assert_eq!(o.addresses, ips(&["10.30.0.71"]));
    assert_eq!(
        reads_of(&srv, "/api/v1/namespaces/shop/pods/new-1"),
        new1_reads
    );
    // Not cached yet (the watch lags): read directly.
    let o = cache.options("shop", "late", "uid-late").await.unwrap();
    assert_eq!(o.bandwidth.unwrap().egress_rate, Some(5_000_000));
    assert_eq!(reads_of(&srv, "/api/v1/namespaces/shop/pods/late"), 1);
    // The cached web-0 is another incarnation than the one asked for: the
    // direct read finds yet another UID, so the asking pod is gone.
    assert_eq!(
        cache
            .options("shop", "web-0", "uid-web-0-third")
            .await
            .unwrap(),
        PodOptions::default()
    );
    // ...but the read one is used when its UID matches.
    let o = cache
        .options("shop", "web-0", "uid-web-0-second")
        .await
        .unwrap();
    assert_eq!(o.addresses, ips(&["10.30.0.99"]));
    // A pod the API server does not know: no annotations.
    assert_eq!(
        cache.options("shop", "gone", "").await.unwrap(),
        PodOptions::default()
    );
    // A bad value fails, naming the pod and the annotation.
    let e = cache.options("shop", "bad", "").await.unwrap_err();
    assert!(matches!(e, PodsError::Annotation { .. }), "{e}");
    assert!(e.to_string().contains("shop/bad") && e.to_string().contains("rackline.io/sticky"));
    task.abort();
}

#[tokio::test]
async fn an_unreachable_api_server_is_try_again_later_for_uncached_pods() {
    // A port nobody listens on.
    let port = rackline_testkit::free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (_stop, shutdown) = watch::channel(false);
    let (cache, task) = PodCache::start(client(addr), "node-a", shutdown);
    let e = cache.options("shop", "web-0", "u").await.unwrap_err();
    assert!(matches!(e, PodsError::Unavailable { .. }), "{e}");
    assert!(e.to_string().contains("shop/web-0"), "{e}");
    task.abort();
}

/// The annotations through ipamd's gRPC service with a real etcd: the
/// annotated address is leased, the pod is sticky by annotation (identity
/// record with optIn), and the bandwidth travels in the reply's policy
/// level; a pod whose annotation names an address of another subnet gets
/// the typed refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotations_drive_allocation_through_the_service() {
    let etcd = Etcd::start();
    etcd.ctl(&[
        "put",
        "/rackline/v1/networks/prod",
        r#"{"name":"prod","subnet":"10.30.0.0/24","gateway":"10.30.0.1","master":"uplink0"}"#,
    ]);
    let srv = serve(HashMap::new()).await;
    let (_stop, shutdown) = watch::channel(false);
    let (cache, task) = PodCache::start(client(srv.addr), "node-a", shutdown.clone());
    wait_cached(&cache).await;

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
    let svc = IpamService::new(engine).with_pods(cache);
    let req = |ns: &str, name: &str, uid: &str, cid: &str| {
        tonic::Request::new(pb::AllocateRequest {
            network: "prod".into(),
            container_id: cid.into(),
            ifname: "eth0".into(),
            pod: Some(pb::PodRef {
                namespace: ns.into(),
                name: name.into(),
                uid: uid.into(),
            }),
            requested_addresses: vec![],
            ..Default::default()
        })
    };
    let r = svc
        .allocate(req("shop", "web-0", "uid-web-0", "c-web"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.lease.unwrap().address, "10.30.0.70/24");
    assert!(r.sticky);
    let q = r.network.unwrap().qos_policy.unwrap();
    assert_eq!(
        (q.ingress_rate, q.egress_rate, q.egress_burst),
        (10_000_000, 20_000_000, 1_000_000)
    );
    let ident = etcd.ctl(&[
        "get",
        "--print-value-only",
        "/rackline/v1/identities/prod/shop/web-0",
    ]);
    assert!(ident.contains("\"optIn\":true"), "{ident}");
    // CHECK reports the same policy level (so CHECK of a shaped pod passes).
    let c = svc
        .check(tonic::Request::new(pb::CheckRequest {
            network: "prod".into(),
            container_id: "c-web".into(),
            ifname: "eth0".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        c.network.unwrap().qos_policy.unwrap().ingress_rate,
        10_000_000
    );
    // A pod without annotations: any address, not sticky, no policy level.
    let r = svc
        .allocate(req("shop", "plain", "uid-plain", "c-plain"))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.sticky);
    assert!(r.network.unwrap().qos_policy.is_none());
    // new-1 asks for 10.30.0.71 (from the watch).
    let r = svc
        .allocate(req("shop", "new-1", "uid-new-1", "c-new"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.lease.unwrap().address, "10.30.0.71/24");
    // A bad annotation: invalid config (code 7 at the plugin).
    let s = svc
        .allocate(req("shop", "bad", "uid-bad", "c-bad"))
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    // podman-style pod reference (no namespace): annotations are not read.
    let before = srv.seen.lock().unwrap().len();
    svc.allocate(req("", "ctr", "", "c-podman")).await.unwrap();
    assert_eq!(srv.seen.lock().unwrap().len(), before);
    task.abort();
}
