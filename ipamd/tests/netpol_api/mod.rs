//! A recorded Kubernetes API for the NetworkPolicy tests: a loopback HTTP
//! server answers the LISTs of NetworkPolicies, Pods and Namespaces with
//! recorded objects (ipamd/tests/fixtures/netpol), then holds each WATCH
//! open and streams the events the test sends.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub const WORLD: &str = include_str!("../fixtures/netpol/world.json");
pub const CASES: &str = include_str!("../fixtures/netpol/cases.json");

pub const NETPOLS: &str = "/apis/networking.k8s.io/v1/networkpolicies";
pub const PODS: &str = "/api/v1/pods";
pub const NAMESPACES: &str = "/api/v1/namespaces";

type Streams = Arc<Mutex<HashMap<&'static str, mpsc::UnboundedReceiver<Value>>>>;

pub struct Recorded {
    pub addr: std::net::SocketAddr,
    send: HashMap<&'static str, mpsc::UnboundedSender<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Recorded {
    pub fn event(&self, path: &str, kind: &str, object: Value) {
        self.send[path]
            .send(json!({"type": kind, "object": object}))
            .unwrap();
    }
}

pub fn world() -> (Vec<Value>, Vec<Value>) {
    let list: Value = serde_json::from_str(WORLD).unwrap();
    let items = list["items"].as_array().unwrap();
    let of = |k: &str| items.iter().filter(|i| i["kind"] == k).cloned().collect();
    (of("Pod"), of("Namespace"))
}

pub fn policy(case: &str) -> Value {
    let cases: Value = serde_json::from_str(CASES).unwrap();
    let c = cases
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == case)
        .unwrap();
    c["policies"][0].clone()
}

/// Serves a LIST of `lists[path]` per path, and on `watch=true` the events
/// sent for that path, the stream kept open like a quiet API server.
pub async fn serve(lists: HashMap<&'static str, (&'static str, Vec<Value>)>) -> Recorded {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let streams: Streams = Arc::default();
    let mut send = HashMap::new();
    for path in lists.keys() {
        let (tx, rx) = mpsc::unbounded_channel();
        send.insert(*path, tx);
        streams.lock().unwrap().insert(*path, rx);
    }
    let lists = Arc::new(lists);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            let (lists, streams) = (lists.clone(), streams.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = sock.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let target = req.split_whitespace().nth(1).unwrap_or("").to_string();
                let path = target.split('?').next().unwrap_or("").to_string();
                let head = |len: Option<usize>| {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{}Connection: close\r\n\r\n",
                        len.map(|l| format!("Content-Length: {l}\r\n")).unwrap_or_default()
                    )
                };
                let Some((kind, items)) = lists.get(path.as_str()) else {
                    let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
                    let _ = sock
                        .write_all(format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                        .await;
                    return;
                };
                if target.contains("watch=true") {
                    let _ = sock.write_all(head(None).as_bytes()).await;
                    let rx = streams.lock().unwrap().remove(path.as_str());
                    let Some(mut rx) = rx else {
                        // A re-watch: stay quiet.
                        std::future::pending::<()>().await;
                        return;
                    };
                    while let Some(ev) = rx.recv().await {
                        let line = format!("{ev}\n");
                        if sock.write_all(line.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = sock.flush().await;
                    }
                    return;
                }
                let body = json!({
                    "kind": kind, "apiVersion": if path == NETPOLS { "networking.k8s.io/v1" } else { "v1" },
                    "metadata": {"resourceVersion": "1000"}, "items": items,
                })
                .to_string();
                let _ = sock
                    .write_all(format!("{}{body}", head(Some(body.len()))).as_bytes())
                    .await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Recorded { addr, send, task }
}

pub fn client(addr: std::net::SocketAddr) -> kube::Client {
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    kube::Client::try_from(config).unwrap()
}
