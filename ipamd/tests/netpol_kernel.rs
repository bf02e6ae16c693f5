//! NetworkPolicy end to end in real network namespaces (needs root): the
//! recorded API (see `netpol_api`) serves the policies; ipamd's provider
//! compiles them, the pod filter assembler (`Filters`) adds the node's
//! address, and the pod's nftables table is programmed over netlink in the
//! "server" pod's namespace on every change, as the re-programmer does.
//! TCP connects from two client pods then show what the kernel lets
//! through, and how fast a policy change reaches the running pod.
//!
//! Topology: pod x/a (10.30.1.1, listening on TCP 80) has one veth to
//! pod y/b (10.30.2.2) and one to pod x/b (10.30.1.2).

mod netpol_api;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use netpol_api::{client, policy, serve, world, NAMESPACES, NETPOLS, PODS};
use rackline_ipamd::filter::Filters;
use rackline_ipamd::netpol::{FiltersSink, Netpol};
use rackline_model::PodRef;
use rackline_netlink::netns::Netns;
use rackline_nft::PodTable;
use serde_json::json;
use tokio::sync::watch;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 1);
const FROM_Y: Ipv4Addr = Ipv4Addr::new(10, 30, 2, 2);
const FROM_X: Ipv4Addr = Ipv4Addr::new(10, 30, 1, 2);

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Self {
        let name = format!("rl-np-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]);
        Ns(name)
    }
    fn path(&self) -> std::path::PathBuf {
        format!("/run/netns/{}", self.0).into()
    }
    fn ip(&self, args: &str) {
        let mut a = vec!["-n", self.0.as_str()];
        a.extend(args.split_whitespace());
        ip(&a);
    }
}

/// Runs `f` on a fresh thread inside namespace `path` (never on a runtime
/// thread).
fn run_in<T: Send + 'static>(path: PathBuf, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Links `server` (10.30.1.1 on every link) to a client at `addr`.
fn wire(server: &Ns, client: &Ns, n: u32, addr: Ipv4Addr) {
    let (s, c) = (format!("s{n}"), format!("c{n}"));
    server.ip(&format!(
        "link add {s} type veth peer name {c} netns {}",
        client.0
    ));
    server.ip(&format!("addr add {SERVER}/32 dev {s}"));
    server.ip(&format!("link set {s} up"));
    server.ip(&format!("route add {addr}/32 dev {s} src {SERVER}"));
    client.ip(&format!("addr add {addr}/32 dev {c}"));
    client.ip(&format!("link set {c} up"));
    client.ip(&format!("route add {SERVER}/32 dev {c} src {addr}"));
}

fn connects(client: PathBuf) -> bool {
    run_in(client, || {
        TcpStream::connect_timeout(&SocketAddr::from((SERVER, 80)), Duration::from_millis(150))
            .is_ok()
    })
}

/// Polls until `client`'s connects give `want`; returns how long it took.
/// Blocking: call it through `spawn_blocking`.
fn until(client: PathBuf, want: bool, what: &str) -> Duration {
    let started = Instant::now();
    while connects(client.clone()) != want {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: still {} after 10 s",
            !want
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networkpolicy_from_the_api_blocks_and_allows_tcp_between_pod_namespaces() {
    // A privileged test that cannot run fails, so a non-root run never counts as a pass.
    assert!(
        nix::unistd::geteuid().is_root(),
        "needs root: it builds network namespaces and programs nf_tables in them"
    );
    let (xa, yb, xb) = (Ns::new("xa"), Ns::new("yb"), Ns::new("xb"));
    wire(&xa, &yb, 1, FROM_Y);
    wire(&xa, &xb, 2, FROM_X);
    xa.ip("link set lo up");
    // The pod's server: accepts and closes, on its own thread in x/a.
    let listener = run_in(xa.path(), || TcpListener::bind((SERVER, 80)).unwrap());
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    assert!(
        connects(yb.path()) && connects(xb.path()),
        "open before any policy"
    );

    // x/a accepts only namespace y (ns=y).
    let (pods, namespaces) = world();
    let srv = serve(HashMap::from([
        (
            NETPOLS,
            (
                "NetworkPolicyList",
                vec![policy("allow from a namespace by label")],
            ),
        ),
        (PODS, ("PodList", pods)),
        (NAMESPACES, ("NamespaceList", namespaces)),
    ]))
    .await;
    let filters = Filters::new(vec![Ipv4Addr::new(10, 20, 0, 11)]);
    let (_stop, shutdown) = watch::channel(false);
    let (np, tasks) = Netpol::start(
        client(srv.addr),
        "node-a",
        Arc::new(FiltersSink(filters.clone())),
        shutdown,
    );
    filters.set_netpol_source(np.clone());

    // The re-programmer's part for the one attachment: on every change,
    // assemble x/a's filter and program (or remove) its table, on a
    // dedicated thread that never enters the namespace itself.
    let pod = PodRef {
        namespace: "x".into(),
        name: "a".into(),
        uid: "uid-x-a".into(),
    };
    let mut generation = filters.subscribe();
    let table_ns = xa.path();
    let programmer = tokio::spawn(async move {
        loop {
            let f = filters.pod_filter("vlan100", &pod, SERVER);
            let path = table_ns.clone();
            tokio::task::spawn_blocking(move || {
                std::thread::spawn(move || {
                    let ns = Netns::open(&path).unwrap();
                    let mut t = PodTable::open(&ns, "eth0", SERVER).unwrap();
                    if f.is_allow_all() {
                        t.remove().unwrap();
                    } else {
                        t.program(&f).unwrap();
                    }
                })
                .join()
                .unwrap()
            })
            .await
            .unwrap();
            if generation.changed().await.is_err() {
                return;
            }
        }
    });

    let wait = |client: PathBuf, want: bool, what: &'static str| {
        tokio::task::spawn_blocking(move || until(client, want, what))
    };
    let took = wait(xb.path(), false, "x/b is not in namespace y")
        .await
        .unwrap();
    assert!(connects(yb.path()), "y/b is allowed");
    eprintln!("listed policy enforced after {took:?}");

    // The policy is deleted: x/a is open again, within a second.
    let mut p = policy("allow from a namespace by label");
    p["metadata"]["resourceVersion"] = json!("1300");
    srv.event(NETPOLS, "DELETED", p);
    let took = wait(xb.path(), true, "policy deleted").await.unwrap();
    assert!(took < Duration::from_secs(1), "open after {took:?}");

    // A deny-all arrives: both clients are refused, within a second.
    let deny = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": "x", "uid": "uid-np-deny", "resourceVersion": "1301"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}});
    srv.event(NETPOLS, "ADDED", deny);
    let took = wait(yb.path(), false, "deny-all").await.unwrap();
    assert!(took < Duration::from_secs(1), "denied after {took:?}");
    assert!(!connects(xb.path()));
    eprintln!("policy changes reached the running pod in {took:?}");

    programmer.abort();
    for t in tasks {
        t.abort();
    }
}
