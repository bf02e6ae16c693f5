//! The rack-label path against recorded API-server responses (no API server
//! runs here): a loopback HTTP server replays recorded Node objects and a
//! recorded 404 Status, and the real kube-rs client reads them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rackline_ipamd::kube::{rack_from_label, KubeError, DEFAULT_RACK_LABEL};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

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

async fn serve(responses: HashMap<&'static str, (u16, &'static str)>) -> Recorded {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 16 * 1024];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            log.lock().unwrap().push(path.clone());
            let (code, body) = responses
                .get(path.split('?').next().unwrap_or(""))
                .copied()
                .unwrap_or((404, include_str!("fixtures/node-not-found.json")));
            let reason = if code == 200 { "OK" } else { "Not Found" };
            let resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
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

#[tokio::test]
async fn reads_the_rack_label_from_the_node_object() {
    let srv = serve(HashMap::from([
        (
            "/api/v1/nodes/worker-a1",
            (200, include_str!("fixtures/node-labelled.json")),
        ),
        (
            "/api/v1/nodes/worker-x9",
            (200, include_str!("fixtures/node-unlabelled.json")),
        ),
    ]))
    .await;
    let rack = rack_from_label(client(srv.addr), "worker-a1", DEFAULT_RACK_LABEL)
        .await
        .unwrap();
    assert_eq!(rack.as_deref(), Some("rack-a"));
    // A configurable label.
    let zone = rack_from_label(client(srv.addr), "worker-a1", "topology.kubernetes.io/zone")
        .await
        .unwrap();
    assert_eq!(zone.as_deref(), Some("dc1-hall2"));
    // No label: None, not an error.
    let none = rack_from_label(client(srv.addr), "worker-x9", DEFAULT_RACK_LABEL)
        .await
        .unwrap();
    assert_eq!(none, None);
    assert!(srv
        .seen
        .lock()
        .unwrap()
        .iter()
        .all(|p| p.starts_with("/api/v1/nodes/")));
}

#[tokio::test]
async fn a_missing_node_is_a_clear_error() {
    let srv = serve(HashMap::new()).await;
    let err = rack_from_label(client(srv.addr), "ghost", DEFAULT_RACK_LABEL)
        .await
        .unwrap_err();
    assert!(matches!(err, KubeError::Api { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains("ghost"), "{msg}");
}
