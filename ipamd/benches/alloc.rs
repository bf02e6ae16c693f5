//! Durable allocation throughput and latency through rackline-ipamd's real
//! gRPC socket against a real etcd (loopback). Writes a Markdown report to
//! target/bench/ipamd-alloc.md and prints it.
//!
//!     cargo bench -p rackline-ipamd --bench alloc
//!
//! Scenarios: allocations/s through one ipamd and across four (one shared
//! flat /16, 64 concurrent callers); single-caller latency on a /24 versus a
//! /8 (the free-space search must not grow with pool size).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_client::IpamClient;
use rackline_testkit::{Etcd, Proc};
use tonic::transport::{Channel, Endpoint, Uri};

struct Ipamd {
    _proc: Proc,
    socket: PathBuf,
}

fn start_ipamd(node: &str, etcd: &Etcd, dir: &Path) -> Ipamd {
    start_ipamd_in(node, None, etcd, dir)
}

fn start_ipamd_in(node: &str, rack: Option<&str>, etcd: &Etcd, dir: &Path) -> Ipamd {
    let socket = dir.join(node).join("ipamd.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rackline-ipamd"));
    cmd.args(["--node-name", node, "--etcd-endpoints", &etcd.endpoint()])
        .arg("--socket")
        .arg(&socket)
        .args(["--standby", "0", "--log-level", "warn"]);
    if let Some(r) = rack {
        cmd.args(["--rack", r]);
    }
    let proc = Proc::spawn(node, cmd, dir.join(format!("{node}.log")));
    let t0 = Instant::now();
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "{node} did not start: {}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ipamd {
        _proc: proc,
        socket,
    }
}

async fn connect(socket: &Path) -> IpamClient<Channel> {
    let p = socket.to_path_buf();
    let ch = Endpoint::from_static("http://ipamd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await
        .expect("connect");
    IpamClient::new(ch)
}

fn req(network: &str, cid: String) -> pb::AllocateRequest {
    pb::AllocateRequest {
        network: network.into(),
        container_id: cid,
        ifname: "eth0".into(),
        pod: None,
        requested_addresses: Vec::new(),
        ..Default::default()
    }
}

/// A rack-bound network over 10.40.0.0/16 whose blocks (256 addresses each)
/// are pre-assigned round-robin to `nodes`, as netmaster would have done.
fn put_racked_network(etcd: &Etcd, nodes: &[&str], blocks_per_node: u32) {
    put_network(etcd, "racked", "10.40.0.0/16", "10.40.0.1");
    etcd.ctl(&[
        "put",
        "/rackline/v1/racknets/racked/ra",
        r#"{"rack":"ra","network":"racked","subnet":"10.40.0.0/16","gateway":"10.40.0.1"}"#,
    ]);
    let mut third = 1u32;
    for _ in 0..blocks_per_node {
        for n in nodes {
            let first = format!("10.40.{third}.0");
            let padded = format!("010.040.{third:03}.000");
            let v = format!(
                r#"{{"network":"racked","rack":"ra","first":"{first}","size":256,"node":"{n}"}}"#
            );
            etcd.ctl(&["put", &format!("/rackline/v1/blocks/racked/{padded}"), &v]);
            third += 1;
        }
    }
}

fn put_network(etcd: &Etcd, name: &str, subnet: &str, gw: &str) {
    let v =
        format!(r#"{{"name":"{name}","subnet":"{subnet}","gateway":"{gw}","master":"uplink0"}}"#);
    etcd.ctl(&["put", &format!("/rackline/v1/networks/{name}"), &v]);
}

/// `total` allocations spread over `callers` concurrent callers and the
/// given ipamds; returns (allocations/s, failures).
async fn throughput(
    ipamds: &[Ipamd],
    network: &str,
    tag: &str,
    total: usize,
    callers: usize,
) -> (f64, usize) {
    let mut clients = Vec::new();
    for i in 0..callers {
        clients.push(connect(&ipamds[i % ipamds.len()].socket).await);
    }
    let per = total / callers;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (i, mut c) in clients.into_iter().enumerate() {
        let network = network.to_string();
        let tag = tag.to_string();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for k in 0..per {
                if c.allocate(req(&network, format!("{tag}-{i}-{k}")))
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    ((per * callers - failed) as f64 / secs, failed)
}

async fn latency(ipamd: &Ipamd, network: &str, n: usize) -> (f64, f64) {
    let mut c = connect(&ipamd.socket).await;
    let mut v = Vec::with_capacity(n);
    for k in 0..n {
        let t = Instant::now();
        c.allocate(req(network, format!("lat-{network}-{k}")))
            .await
            .expect("allocate");
        v.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[n / 2], v[n * 99 / 100])
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let etcd = Etcd::start();
    let dir = tempfile::tempdir().unwrap();
    put_network(&etcd, "flat16", "10.20.0.0/16", "10.20.0.1");
    put_network(&etcd, "small24", "10.30.0.0/24", "10.30.0.1");
    put_network(&etcd, "huge8", "10.0.0.0/8", "10.0.0.1");
    let ipamds: Vec<Ipamd> = (1..=4)
        .map(|i| start_ipamd(&format!("b{i}"), &etcd, dir.path()))
        .collect();
    let rack_nodes = ["k1", "k2", "k3", "k4"];
    put_racked_network(&etcd, &rack_nodes, 13);
    let racked: Vec<Ipamd> = rack_nodes
        .iter()
        .map(|n| start_ipamd_in(n, Some("ra"), &etcd, dir.path()))
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let mut report = String::from("# ipamd allocation benchmark\n\n");
    report.push_str(&format!(
        "Machine: {} cores; etcd {} on loopback (fsync on); every allocation is a durable etcd transaction.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        String::from_utf8_lossy(&Command::new("/usr/bin/etcd").arg("--version").output().map(|o| o.stdout).unwrap_or_default())
            .lines()
            .next()
            .unwrap_or("")
    ));
    rt.block_on(async {
        let (one, f1) = throughput(&ipamds[..1], "flat16", "one", 6400, 64).await;
        let (four, f4) = throughput(&ipamds, "flat16", "four", 12800, 64).await;
        let (blocks4, fb) = throughput(&racked, "racked", "blk", 12800, 64).await;
        let (l24, p24) = latency(&ipamds[0], "small24", 200).await;
        let (l8, p8) = latency(&ipamds[0], "huge8", 200).await;
        report.push_str("| scenario | result |\n|---|---|\n");
        report.push_str(&format!("| 1 ipamd, 64 concurrent callers, 6400 allocations | {one:.0} allocations/s ({f1} failed) |\n"));
        report.push_str(&format!("| 4 ipamds, one shared /16, 64 callers, 12800 allocations | {four:.0} allocations/s ({f4} failed) |\n"));
        report.push_str(&format!("| 4 ipamds, rack-bound network, each in its own blocks, 64 callers, 12800 allocations | {blocks4:.0} allocations/s ({fb} failed) |\n"));
        report.push_str(&format!("| single caller, /24 | median {l24:.2} ms, p99 {p24:.2} ms |\n"));
        report.push_str(&format!("| single caller, /8 | median {l8:.2} ms, p99 {p8:.2} ms ({:.2}x the /24) |\n", l8 / l24));
    });
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../bench");
    let _ = std::fs::create_dir_all(&out);
    let path = out.join("ipamd-alloc.md");
    std::fs::write(&path, &report).expect("writing report");
    println!("{report}\nreport: {}", path.display());
}
