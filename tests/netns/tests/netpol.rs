//! Kubernetes NetworkPolicy end to end on one lab node: ipamd runs with
//! `--kubeconfig` pointing at a recorded API (a loopback server inside the
//! node's namespace that answers the LISTs of NetworkPolicies, Pods and
//! Namespaces and streams WATCH events the test sends). The pods are real
//! (ADD through the plugin); the test announces them to the API with the
//! addresses ipamd gave them, then a NetworkPolicy event must change which
//! pod can open a TCP connection to the server pod, within a second.

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rackline_lab::{result_ipv4, Lab, Pod};
use serde_json::{json, Value};

/// The recorded API's port inside the node's namespace (a fresh namespace:
/// nothing else listens there).
const API_PORT: u16 = 16443;

const NETPOLS: &str = "/apis/networking.k8s.io/v1/networkpolicies";
const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";

/// The recorded API: LIST answers from `lists`, WATCH streams get every
/// event sent after they connected.
#[derive(Default)]
struct Api {
    lists: Mutex<Vec<(&'static str, Vec<Value>)>>,
    watchers: Mutex<Vec<(String, mpsc::Sender<String>)>>,
    stop: AtomicBool,
}

impl Api {
    fn event(&self, path: &str, kind: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind, "object": object}));
        self.watchers
            .lock()
            .unwrap()
            .retain(|(p, tx)| p != path || tx.send(line.clone()).is_ok());
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        listener.set_nonblocking(true).unwrap();
        let api = self.clone();
        std::thread::spawn(move || {
            while !api.stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((sock, _)) => {
                        let api = api.clone();
                        std::thread::spawn(move || api.answer(sock));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
    }

    fn answer(&self, mut sock: TcpStream) {
        sock.set_nonblocking(false).unwrap();
        let mut line = String::new();
        let mut r = BufReader::new(sock.try_clone().unwrap());
        if r.read_line(&mut line).is_err() {
            return;
        }
        // Skip the headers.
        let mut h = String::new();
        while r.read_line(&mut h).is_ok_and(|n| n > 2) {
            h.clear();
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let path = target.split('?').next().unwrap_or("").to_string();
        let list = self
            .lists
            .lock()
            .unwrap()
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, items)| items.clone());
        let Some(items) = list else {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}"#;
            let _ = write!(sock, "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            return;
        };
        if target.contains("watch=true") {
            let _ = write!(
                sock,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
            );
            let (tx, rx) = mpsc::channel();
            self.watchers.lock().unwrap().push((path, tx));
            while let Ok(ev) = rx.recv_timeout(Duration::from_secs(60)) {
                if sock.write_all(ev.as_bytes()).is_err() || self.stop.load(Ordering::Relaxed) {
                    return;
                }
            }
            return;
        }
        let kind = match path.as_str() {
            NETPOLS => "NetworkPolicyList",
            PODS => "PodList",
            _ => "NamespaceList",
        };
        let body = json!({"kind": kind, "apiVersion": if path == NETPOLS { "networking.k8s.io/v1" } else { "v1" },
            "metadata": {"resourceVersion": "1000"}, "items": items})
        .to_string();
        let _ = write!(sock, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    }
}

/// Runs `f` on a fresh thread inside namespace `path`.
fn run_in<T: Send + 'static>(path: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

fn netns_path(ns: &impl AsRef<rackline_lab::Netns>) -> PathBuf {
    ns.as_ref().path()
}

fn connects(client: &Pod, to: Ipv4Addr) -> bool {
    run_in(netns_path(client), move || {
        TcpStream::connect_timeout(&SocketAddr::from((to, 80)), Duration::from_millis(150)).is_ok()
    })
}

/// Polls until `client` → `to` connects as `want`; how long it took.
fn until(client: &Pod, to: Ipv4Addr, want: bool, what: &str) -> Result<Duration> {
    let started = Instant::now();
    while connects(client, to) != want {
        ensure!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: {} → {to} still {} after 10 s",
            client.name,
            if want { "refused" } else { "accepted" }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(started.elapsed())
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "uid": format!("uid-ns-{name}"), "resourceVersion": "900",
                     "labels": {"kubernetes.io/metadata.name": name, "ns": name}}})
}

fn pod_object(pod: &Pod, ip: Ipv4Addr, rv: u32) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                     "resourceVersion": rv.to_string(), "labels": {"pod": pod.name}},
        "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "rackline.local/app:1",
                 "ports": [{"name": "http", "containerPort": 80, "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]}})
}

fn metric(lab: &Lab, name: &str) -> Option<f64> {
    let body = lab.ipamd_http(1, "/metrics").ok()?.body;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_networkpolicy_from_the_api_server_filters_tcp_between_real_pods() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: http://127.0.0.1:{API_PORT}\nusers:\n- name: lab\n  user: {{}}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\ncurrent-context: lab\n"
        ),
    )?;
    let kc = kubeconfig.to_str().unwrap().to_string();
    Lab::builder()
        .nodes(1)
        .ipamd_args(&[
            "--kubeconfig",
            &kc,
            "--pod-annotations",
            "false",
            "--reconcile-source",
            "cri",
        ])
        .run(|lab| {
            // The API, inside the node's namespace where ipamd dials it.
            let api = Arc::new(Api::default());
            *api.lists.lock().unwrap() = vec![
                (NETPOLS, vec![]),
                (PODS, vec![]),
                (NAMESPACES, vec![namespace("x"), namespace("y")]),
            ];
            lab.exec_in(lab.node(1), &["ip", "link", "set", "lo", "up"])?
                .check()?;
            let listener = run_in(netns_path(lab.node(1)), || {
                TcpListener::bind(("127.0.0.1", API_PORT))
            })
            .context("binding the recorded API in the node's namespace")?;
            api.serve(listener);

            // Three real pods: x/server, x/other, y/client.
            let mut pods = Vec::new();
            for (ns, name) in [("x", "server"), ("x", "other"), ("y", "client")] {
                let mut p = lab.add_pod(1, name)?;
                p.namespace = ns.into();
                let out = lab.cni_add(&p)?;
                let ip = result_ipv4(&out)?.addr;
                pods.push((p, ip));
            }
            // ipamd's watches are up (they retried until the API listened).
            let started = Instant::now();
            while metric(lab, "rackline_ipamd_netpol_recomputations_total").unwrap_or(0.0) < 1.0 {
                ensure!(
                    started.elapsed() < Duration::from_secs(30),
                    "ipamd never synced its NetworkPolicy caches"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            for (i, (p, ip)) in pods.iter().enumerate() {
                api.event(PODS, "ADDED", pod_object(p, *ip, 1001 + i as u32));
            }
            let (server, server_ip) = (&pods[0].0, pods[0].1);
            let (other, client) = (&pods[1].0, &pods[2].0);
            let listener = run_in(netns_path(server), move || {
                TcpListener::bind((server_ip, 80))
            })?;
            std::thread::spawn(move || {
                for s in listener.incoming() {
                    drop(s);
                }
            });
            ensure!(connects(other, server_ip) && connects(client, server_ip));
            let started = Instant::now();
            while metric(lab, "rackline_ipamd_netpol_local_pods") != Some(3.0) {
                ensure!(started.elapsed() < Duration::from_secs(10), "pods not seen");
                std::thread::sleep(Duration::from_millis(50));
            }

            // x/server accepts only namespace y.
            let policy = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": "from-y", "namespace": "x", "uid": "uid-np-from-y", "resourceVersion": "1100"},
                "spec": {"podSelector": {"matchLabels": {"pod": "server"}},
                         "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                      "ports": [{"port": "http"}]}],
                         "policyTypes": ["Ingress"]}});
            api.event(NETPOLS, "ADDED", policy.clone());
            let took = until(other, server_ip, false, "policy added")?;
            ensure!(took < Duration::from_secs(1), "enforced after {took:?}");
            ensure!(connects(client, server_ip), "y/client is allowed");
            // The node itself (kubelet probes) still reaches the pod.
            let node_ok = run_in(netns_path(lab.node(1)), move || {
                TcpStream::connect_timeout(&SocketAddr::from((server_ip, 80)), Duration::from_millis(300)).is_ok()
            });
            ensure!(node_ok, "the node's own address must pass");
            eprintln!("policy enforced {took:?} after the event");

            // Deleted: open again within a second.
            let mut gone = policy;
            gone["metadata"]["resourceVersion"] = json!("1101");
            api.event(NETPOLS, "DELETED", gone);
            let took = until(other, server_ip, true, "policy deleted")?;
            ensure!(took < Duration::from_secs(1), "lifted after {took:?}");
            eprintln!("policy lifted {took:?} after the event");
            api.stop.store(true, Ordering::Relaxed);
            for (p, _) in &pods {
                lab.cni_del(p)?;
            }
            Ok(())
        })
}
