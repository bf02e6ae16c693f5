//! Conflict alarms as Kubernetes Events, against a loopback HTTP server
//! standing in for the API server (none runs here): the real kube-rs client
//! posts, the server records each request and answers 201 with the object
//! as an API server does, or a recorded 403 Status.

use std::sync::{Arc, Mutex};

use rackline_ipamd::alarms::{Alarms, REASON};
use rackline_ipamd::engine::ConflictReport;
use rackline_ipamd::metrics::IpamMetrics;
use rackline_model::{Lease, LeaseState, PodRef};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

struct Recorded {
    addr: std::net::SocketAddr,
    /// (method, path, body) of every request.
    seen: Arc<Mutex<Vec<(String, String, Value)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one HTTP/1.1 request (headers, then Content-Length bytes).
async fn read_request(sock: &mut tokio::net::TcpStream) -> Option<(String, String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut first = head.lines().next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    Some((method, path, buf[head_end..head_end + len].to_vec()))
}

async fn serve(status: u16) -> Recorded {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            while let Some((method, path, body)) = read_request(&mut sock).await {
                let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                log.lock().unwrap().push((method, path, json));
                let (reason, reply) = if status == 201 {
                    ("Created", String::from_utf8_lossy(&body).to_string())
                } else {
                    (
                        "Forbidden",
                        include_str!("fixtures/events-forbidden.json").to_string(),
                    )
                };
                let resp = format!(
                    "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
                    reply.len()
                );
                if sock.write_all(resp.as_bytes()).await.is_err() {
                    break;
                }
            }
        }
    });
    Recorded { addr, seen, task }
}

fn client(addr: std::net::SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

fn report(quarantined: bool) -> ConflictReport {
    ConflictReport {
        lease: Lease {
            network: "prod".into(),
            address: "10.10.0.70".parse().unwrap(),
            node: "worker-a1".into(),
            container_id: "3f1c".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: "6a3d7c1e-0000-4000-8000-000000000001".into(),
            },
            created_unix_ms: 1,
            state: LeaseState::Active,
            sticky: !quarantined,
            new_identity: false,
            settings: None,
            expires_unix_ms: None,
            conflict: None,
        },
        mac: "02:00:00:00:00:09".into(),
        quarantined,
        quarantine_secs: if quarantined { 600 } else { 0 },
    }
}

#[tokio::test]
async fn a_conflict_posts_a_warning_on_the_pod_and_on_the_node() {
    let srv = serve(201).await;
    let alarms = Alarms::new(client(srv.addr), "worker-a1".into(), IpamMetrics::new(None));
    alarms.post(&report(true)).await.unwrap();
    let seen = srv.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (m, path, pod_ev) = &seen[0];
    assert_eq!(
        (m.as_str(), path.as_str()),
        ("POST", "/api/v1/namespaces/shop/events?")
    );
    assert_eq!(pod_ev["involvedObject"]["kind"], "Pod");
    assert_eq!(pod_ev["involvedObject"]["name"], "web-0");
    assert_eq!(pod_ev["involvedObject"]["namespace"], "shop");
    assert_eq!(
        pod_ev["involvedObject"]["uid"],
        "6a3d7c1e-0000-4000-8000-000000000001"
    );
    assert_eq!(pod_ev["reason"], REASON);
    assert_eq!(pod_ev["type"], "Warning");
    assert_eq!(pod_ev["source"]["component"], "rackline-ipamd");
    assert_eq!(pod_ev["source"]["host"], "worker-a1");
    let msg = pod_ev["message"].as_str().unwrap();
    assert!(
        msg.contains("10.10.0.70")
            && msg.contains("02:00:00:00:00:09")
            && msg.contains("quarantined for 600 s"),
        "{msg}"
    );
    assert!(pod_ev["lastTimestamp"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert!(pod_ev["metadata"]["name"]
        .as_str()
        .unwrap()
        .starts_with("web-0."));
    let (_, path, node_ev) = &seen[1];
    assert_eq!(path, "/api/v1/namespaces/default/events?");
    assert_eq!(node_ev["involvedObject"]["kind"], "Node");
    assert_eq!(node_ev["involvedObject"]["name"], "worker-a1");
    // kubectl describe node finds kubelet-style node events by name as uid.
    assert_eq!(node_ev["involvedObject"]["uid"], "worker-a1");
    assert_eq!(node_ev["message"], pod_ev["message"]);
}

#[tokio::test]
async fn a_sticky_conflict_says_the_pod_keeps_its_address() {
    let srv = serve(201).await;
    let alarms = Alarms::new(client(srv.addr), "worker-a1".into(), IpamMetrics::new(None));
    alarms.post(&report(false)).await.unwrap();
    let seen = srv.seen.lock().unwrap().clone();
    let msg = seen[0].2["message"].as_str().unwrap().to_string();
    assert!(msg.contains("sticky pod shop/web-0 keeps it"), "{msg}");
}

#[tokio::test]
async fn a_refused_post_is_an_error_the_caller_never_sees() {
    let srv = serve(403).await;
    let metrics = IpamMetrics::new(None);
    let alarms = Alarms::new(client(srv.addr), "worker-a1".into(), metrics.clone());
    let err = alarms.post(&report(true)).await.unwrap_err();
    assert!(err.to_string().contains("forbidden"), "{err}");
    // The background path swallows it: nothing reaches the caller.
    alarms.conflict(&report(true));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while srv.seen.lock().unwrap().len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the background post never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
