//! Control-plane benchmarks without the datapath: real `rackline-ipamd` processes in the root
//! namespace (allocation only: no pod namespaces, no links), one real etcd on loopback (fsync
//! on), every allocation a durable etcd write answered through ipamd's gRPC socket.
//!
//! - [`run_ipam`] (`rackline-bench ipam`): durable allocations/s through one ipamd's socket and
//!   across four ipamds in four racks, each group-commit setting a series of its own in the same
//!   run (`--group-commit 1` is one transaction per lease: the reference).
//! - [`run_ctlplane`] (`rackline-bench ctlplane`): 100 ipamds in 4 racks place 10 000 pods at
//!   1:1 capacity; then, with the store filled to 100 000 leases, an ipamd restart (time to
//!   `/readyz`, RSS) and `racklinectl pool`, `node list`, `lease list --node` through a real
//!   netmaster.
//!
//! Blocks and node records are written the way netmaster would have written them, so the
//! allocation path is the only thing timed. Every answer is checked against etcd: an address
//! given to two callers, or an answer etcd does not hold, counts as a duplicate.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use etcd_client::{GetOptions, Txn, TxnOp};
use hyper_util::rt::TokioIo;
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_client::IpamClient;
use rackline_testkit::{free_port, Etcd, Proc};
use tonic::transport::{Channel, Endpoint, Uri};

use super::check_interrupted;
use crate::bin_dir;

const NETWORK: &str = "bench";
const PREFIX: &str = "/rackline/v1";
/// First address of rack `r` (1-based): 10.16.0.0/12, 10.32.0.0/12, …
fn rack_base(r: usize) -> u32 {
    u32::from(Ipv4Addr::new(10, 0, 0, 0)) + ((r as u32 * 16) << 16)
}

fn padded(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{:03}.{:03}.{:03}.{:03}", o[0], o[1], o[2], o[3])
}

/// One ipamd of the bench: its node, rack and files.
struct Node {
    name: String,
    rack: String,
    dir: PathBuf,
    metrics: u16,
    proc: Option<Proc>,
}

impl Node {
    fn socket(&self) -> PathBuf {
        self.dir.join("ipamd.sock")
    }
}

/// etcd plus ipamd processes (and, for the admin views, one netmaster).
struct Cluster {
    etcd: Etcd,
    dir: tempfile::TempDir,
    bins: PathBuf,
    nodes: Vec<Node>,
    netmaster: Option<(Proc, u16)>,
    rt: tokio::runtime::Runtime,
}

impl Cluster {
    fn new() -> Result<Self> {
        let bins = bin_dir()?;
        for b in ["rackline-ipamd", "rackline-netmaster", "racklinectl"] {
            ensure!(
                bins.join(b).exists(),
                "{} missing: cargo build --release --workspace --bins first",
                bins.join(b).display()
            );
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        Ok(Self {
            etcd: Etcd::start(),
            dir: tempfile::Builder::new()
                .prefix("rackline-bench-ctlplane-")
                .tempdir()?,
            bins,
            nodes: Vec::new(),
            netmaster: None,
            rt,
        })
    }

    fn etcd_client(&self) -> Result<etcd_client::Client> {
        let ep = self.etcd.endpoint();
        Ok(self.rt.block_on(etcd_client::Client::connect(
            [ep],
            Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(30))),
        ))?)
    }

    /// Writes `ops` in transactions of at most 100 (etcd's limit is 128 per transaction).
    fn put_all(&self, ops: Vec<(String, String)>) -> Result<()> {
        let mut c = self.etcd_client()?;
        self.rt.block_on(async {
            for chunk in ops.chunks(100) {
                let txn = Txn::new().and_then(
                    chunk
                        .iter()
                        .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                        .collect::<Vec<_>>(),
                );
                c.txn(txn).await?;
            }
            Ok::<_, etcd_client::Error>(())
        })?;
        Ok(())
    }

    /// The rack-bound network `bench` over `racks` racks of a /12 each.
    fn seed_network(&self, racks: usize) -> Result<()> {
        let mut ops = vec![(
            format!("{PREFIX}/networks/{NETWORK}"),
            format!(
                r#"{{"name":"{NETWORK}","subnet":"10.0.0.0/8","gateway":"10.0.0.1","master":"uplink0"}}"#
            ),
        )];
        for r in 1..=racks {
            let base = Ipv4Addr::from(rack_base(r));
            let gw = Ipv4Addr::from(rack_base(r) + 1);
            ops.push((
                format!("{PREFIX}/racknets/{NETWORK}/r{r}"),
                format!(
                    r#"{{"rack":"r{r}","network":"{NETWORK}","subnet":"{base}/12","gateway":"{gw}"}}"#
                ),
            ));
        }
        self.put_all(ops)
    }

    /// Node records and `blocks` blocks of `size` addresses for each named node of rack `r`,
    /// from `*next` on (the rack's next free offset, advanced).
    fn seed_nodes(
        &self,
        nodes: &[(String, usize)],
        blocks: usize,
        size: u32,
        next: &mut BTreeMap<usize, u32>,
    ) -> Result<Vec<(String, Ipv4Addr, u32)>> {
        let mut ops = Vec::new();
        let mut out = Vec::new();
        for (name, r) in nodes {
            ops.push((
                format!("{PREFIX}/nodes/{name}"),
                format!(r#"{{"name":"{name}","rack":"r{r}","registeredUnixMs":1}}"#),
            ));
            for _ in 0..blocks {
                // Skip the rack's first /24 (its gateway).
                let off = next.entry(*r).or_insert(256);
                let first = Ipv4Addr::from(rack_base(*r) + *off);
                *off += size;
                ops.push((
                    format!("{PREFIX}/blocks/{NETWORK}/{}", padded(first)),
                    format!(
                        r#"{{"network":"{NETWORK}","rack":"r{r}","first":"{first}","size":{size},"node":"{name}","createdUnixMs":1}}"#
                    ),
                ));
                out.push((name.clone(), first, size));
            }
        }
        self.put_all(ops)?;
        Ok(out)
    }

    fn add_node(&mut self, name: &str, rack: usize) -> Result<usize> {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir)?;
        self.nodes.push(Node {
            name: name.into(),
            rack: format!("r{rack}"),
            dir,
            metrics: free_port(),
            proc: None,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Spawns node `i`'s ipamd; does not wait.
    fn spawn_ipamd(&mut self, i: usize, extra: &[String]) {
        let n = &mut self.nodes[i];
        let mut cmd = Command::new(self.bins.join("rackline-ipamd"));
        cmd.args(["--node-name", &n.name, "--rack", &n.rack])
            .args(["--etcd-endpoints", &self.etcd.endpoint()])
            .arg("--socket")
            .arg(n.dir.join("ipamd.sock"))
            .arg("--state-dir")
            .arg(&n.dir)
            .arg("--runtime-dir")
            .arg(n.dir.join("run"))
            .args(["--standby", "0", "--log-level", "warn"])
            .args(["--metrics-listen", &format!("127.0.0.1:{}", n.metrics)])
            .args(extra);
        let log = n.dir.join("ipamd.log");
        n.proc = Some(Proc::spawn(&n.name, cmd, log));
    }

    /// Waits until node `i`'s `/readyz` answers 200.
    fn wait_ready(&mut self, i: usize, limit: Duration) -> Result<()> {
        let t0 = Instant::now();
        loop {
            if http_status(self.nodes[i].metrics, "/readyz") == Some(200) {
                return Ok(());
            }
            let n = &mut self.nodes[i];
            let p = n.proc.as_mut().context("not started")?;
            if !p.is_running() || t0.elapsed() > limit {
                bail!(
                    "ipamd {} not ready after {:?}:\n{}",
                    n.name,
                    t0.elapsed(),
                    tail(&p.log_text(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn stop_ipamd(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].proc.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].proc.as_ref().and_then(Proc::pid)
    }

    fn start_netmaster(&mut self) -> Result<String> {
        let port = free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut cmd = Command::new(self.bins.join("rackline-netmaster"));
        cmd.args(["--etcd-endpoints", &self.etcd.endpoint()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--id", "nm1", "--log-level", "warn"])
            // The filler nodes never run an ipamd: never reclaim them mid-run.
            .args(["--dead-node-grace", "0"]);
        let p = Proc::spawn("netmaster", cmd, self.dir.path().join("netmaster.log"));
        self.netmaster = Some((p, port));
        let t0 = Instant::now();
        loop {
            let out = self.racklinectl(&url, &["network", "list"])?;
            if out.0 {
                return Ok(url);
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("netmaster did not serve: {}", out.1);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// (success, first line of stderr, stdout bytes).
    fn racklinectl(&self, url: &str, args: &[&str]) -> Result<(bool, String, usize)> {
        let out = Command::new(self.bins.join("racklinectl"))
            .args(["--server", url])
            .args(args)
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned(),
            out.stdout.len(),
        ))
    }

    /// Every lease in etcd: address → container id.
    fn stored_leases(&self) -> Result<HashMap<Ipv4Addr, String>> {
        let mut c = self.etcd_client()?;
        let prefix = format!("{PREFIX}/leases/");
        let mut out = HashMap::new();
        let mut start = prefix.clone().into_bytes();
        let mut end = prefix.into_bytes();
        *end.last_mut().unwrap() += 1;
        loop {
            let resp = self.rt.block_on(c.get(
                start.clone(),
                Some(GetOptions::new().with_range(end.clone()).with_limit(5000)),
            ))?;
            for kv in resp.kvs() {
                let v: serde_json::Value = serde_json::from_slice(kv.value())?;
                let ip: Ipv4Addr = v["address"].as_str().context("address")?.parse()?;
                out.insert(ip, v["containerId"].as_str().unwrap_or("").to_owned());
            }
            match resp.kvs().last() {
                Some(kv) if resp.more() => {
                    start = kv.key().to_vec();
                    start.push(0);
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill9();
            }
        }
        if let Some((mut p, _)) = self.netmaster.take() {
            p.kill9();
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(n)..].join("\n")
}

/// Status code of `GET path` on 127.0.0.1:port (HTTP/1.0), None if no answer.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    std::str::from_utf8(&buf[..n])
        .ok()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// (VmRSS, VmHWM) in MiB.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |k: &str| -> Option<f64> {
        s.lines()
            .find_map(|l| l.strip_prefix(k))?
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    };
    Some((kb("VmRSS:")? / 1024.0, kb("VmHWM:")? / 1024.0))
}

async fn connect(socket: &Path) -> Result<IpamClient<Channel>> {
    let p = socket.to_path_buf();
    let ch = Endpoint::from_static("http://ipamd.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(p).await?))
            }
        }))
        .await?;
    Ok(IpamClient::new(ch))
}

fn request(cid: String) -> pb::AllocateRequest {
    pb::AllocateRequest {
        network: NETWORK.into(),
        container_id: cid,
        ifname: "eth0".into(),
        ..Default::default()
    }
}

/// What a storm of allocations gave.
#[derive(Default)]
struct Storm {
    elapsed: Duration,
    ok: usize,
    failed: BTreeMap<String, usize>,
    /// (container id, address) of each success.
    granted: Vec<(String, Ipv4Addr)>,
}

impl Storm {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }
    fn failures(&self) -> usize {
        self.failed.values().sum()
    }
    fn failed_text(&self) -> String {
        if self.failed.is_empty() {
            return "0".into();
        }
        self.failed
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `pods` allocations, pod `p` on socket `p % sockets.len()`, by `callers` concurrent callers
/// over `max(1, callers / sockets)` connections per socket; timed from the first request to the
/// last answer.
fn storm(
    rt: &tokio::runtime::Runtime,
    sockets: &[PathBuf],
    tag: &str,
    pods: usize,
    callers: usize,
) -> Result<Storm> {
    rt.block_on(async {
        let per = (callers / sockets.len()).max(1);
        let mut chans = Vec::new();
        for sock in sockets {
            let mut v = Vec::new();
            for _ in 0..per {
                v.push(connect(sock).await?);
            }
            chans.push(v);
        }
        let chans = Arc::new(chans);
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..callers {
            let (next, chans, tag) = (next.clone(), chans.clone(), tag.to_owned());
            tasks.push(tokio::spawn(async move {
                let mut out = Storm::default();
                loop {
                    let p = next.fetch_add(1, Ordering::Relaxed);
                    if p >= pods {
                        break;
                    }
                    let mut client = chans[p % chans.len()][c % per].clone();
                    let cid = format!("{tag}-{p}");
                    match client.allocate(request(cid.clone())).await {
                        Ok(r) => {
                            let ip = r
                                .into_inner()
                                .lease
                                .and_then(|l| l.address.split('/').next()?.parse().ok());
                            match ip {
                                Some(ip) => {
                                    out.ok += 1;
                                    out.granted.push((cid, ip));
                                }
                                None => *out.failed.entry("no address".into()).or_default() += 1,
                            }
                        }
                        Err(st) => *out.failed.entry(format!("{:?}", st.code())).or_default() += 1,
                    }
                }
                out
            }));
        }
        let mut all = Storm::default();
        for t in tasks {
            let s = t.await?;
            all.ok += s.ok;
            for (k, v) in s.failed {
                *all.failed.entry(k).or_default() += v;
            }
            all.granted.extend(s.granted);
        }
        all.elapsed = t0.elapsed();
        Ok(all)
    })
}

/// Addresses answered to two callers, plus answers etcd does not hold for that caller.
fn duplicates(granted: &[(String, Ipv4Addr)], stored: &HashMap<Ipv4Addr, String>) -> usize {
    let mut by_ip: HashMap<Ipv4Addr, usize> = HashMap::new();
    let mut dups = 0;
    for (cid, ip) in granted {
        let n = by_ip.entry(*ip).or_default();
        *n += 1;
        if *n > 1 || stored.get(ip) != Some(cid) {
            dups += 1;
        }
    }
    dups
}

// ---- rackline-bench ipam ----

#[derive(Clone, Debug)]
pub struct IpamConfig {
    /// Allocations per ipamd per series.
    pub allocations: usize,
    /// Concurrent callers per ipamd.
    pub callers: usize,
    /// Rounds; each round runs every series once, interleaved.
    pub repeats: usize,
    /// `--group-commit` values, one series each (1 = one transaction per lease).
    pub group_commit: Vec<usize>,
    /// ipamd counts, one scenario each (each ipamd in a rack of its own).
    pub ipamds: Vec<usize>,
}

/// One series on a fresh etcd: `n` ipamds in `n` racks, `--group-commit g`.
fn ipam_series(cfg: &IpamConfig, n: usize, g: usize) -> Result<(Storm, usize)> {
    let mut cl = Cluster::new()?;
    cl.seed_network(n)?;
    let mut next = BTreeMap::new();
    let names: Vec<(String, usize)> = (1..=n).map(|r| (format!("t{r}"), r)).collect();
    let blocks = cfg.allocations.div_ceil(256) + 1;
    cl.seed_nodes(&names, blocks, 256, &mut next)?;
    let extra = vec!["--group-commit".to_string(), g.to_string()];
    for (name, r) in &names {
        let i = cl.add_node(name, *r)?;
        cl.spawn_ipamd(i, &extra);
    }
    for i in 0..n {
        cl.wait_ready(i, Duration::from_secs(30))?;
    }
    let sockets: Vec<PathBuf> = cl.nodes.iter().map(Node::socket).collect();
    let s = storm(
        &cl.rt,
        &sockets,
        &format!("g{g}"),
        cfg.allocations * n,
        cfg.callers * n,
    )?;
    let dups = duplicates(&s.granted, &cl.stored_leases()?);
    Ok((s, dups))
}

pub fn run_ipam(cfg: &IpamConfig) -> Result<String> {
    ensure!(!cfg.group_commit.is_empty() && !cfg.ipamds.is_empty());
    // (ipamds, group commit) -> (rates, failures, duplicates)
    let mut results: BTreeMap<(usize, usize), (Vec<f64>, usize, usize)> = BTreeMap::new();
    for round in 0..cfg.repeats {
        for &n in &cfg.ipamds {
            for &g in &cfg.group_commit {
                check_interrupted()?;
                let (s, dups) = ipam_series(cfg, n, g)?;
                eprintln!(
                    "round {round}: {n} ipamd(s), --group-commit {g}: {:.0}/s, failed {}, duplicates {dups}",
                    s.rate(),
                    s.failed_text()
                );
                let e = results.entry((n, g)).or_default();
                e.0.push(s.rate());
                e.1 += s.failures();
                e.2 += dups;
            }
        }
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Real `rackline-ipamd` processes (allocation only, no datapath), each alone in its rack of \
         a rack-bound network with its blocks pre-assigned (256 addresses each), one etcd on \
         loopback with fsync; {} allocations and {} concurrent callers per ipamd per series, \
         through ipamd's gRPC socket. Every series on a fresh etcd; the series of a round run \
         back to back, {} round(s). `--group-commit 1` is one etcd transaction per lease (the \
         reference); duplicates = an address answered to two callers or not held in etcd for \
         the caller it was answered to.\n",
        cfg.allocations, cfg.callers, cfg.repeats
    );
    let _ = writeln!(
        md,
        "| ipamds | --group-commit | allocations/s per round | median | failed | duplicates |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for ((n, g), (rates, failed, dups)) in &results {
        let list: Vec<String> = rates.iter().map(|r| format!("{r:.0}")).collect();
        let _ = writeln!(
            md,
            "| {n} | {g} | {} | {:.0} | {failed} | {dups} |",
            list.join(", "),
            super::stats::median(rates).unwrap_or(0.0)
        );
    }
    let total_dups: usize = results.values().map(|r| r.2).sum();
    ensure!(total_dups == 0, "{total_dups} duplicate(s):\n{md}");
    Ok(md)
}

// ---- rackline-bench ctlplane ----

#[derive(Clone, Debug)]
pub struct CtlPlaneConfig {
    pub nodes: usize,
    pub racks: usize,
    /// Pods per node = addresses per node (1:1 capacity).
    pub pods_per_node: usize,
    /// Concurrent callers over all ipamds.
    pub callers: usize,
    /// Leases in etcd for the restart and the admin views (the placed pods plus filler nodes'
    /// leases written directly).
    pub leases: usize,
    pub restarts: usize,
    /// Runs of each racklinectl view.
    pub cli_runs: usize,
}

pub fn run_ctlplane(cfg: &CtlPlaneConfig) -> Result<String> {
    ensure!(cfg.nodes >= cfg.racks && cfg.racks > 0 && cfg.pods_per_node > 0);
    let mut cl = Cluster::new()?;
    cl.seed_network(cfg.racks)?;
    let mut next = BTreeMap::new();
    let names: Vec<(String, usize)> = (0..cfg.nodes)
        .map(|k| (format!("n{k:03}"), k % cfg.racks + 1))
        .collect();
    let size = u32::try_from(cfg.pods_per_node)?;
    cl.seed_nodes(&names, 1, size, &mut next)?;
    for (name, r) in &names {
        let i = cl.add_node(name, *r)?;
        cl.spawn_ipamd(i, &[]);
    }
    for i in 0..cfg.nodes {
        cl.wait_ready(i, Duration::from_secs(120))?;
    }
    check_interrupted()?;
    let sockets: Vec<PathBuf> = cl.nodes.iter().map(Node::socket).collect();
    let pods = cfg.nodes * cfg.pods_per_node;
    let s = storm(&cl.rt, &sockets, "pod", pods, cfg.callers)?;
    let stored = cl.stored_leases()?;
    let dups = duplicates(&s.granted, &stored);
    eprintln!(
        "placement: {pods} pods in {:.2} s, failed {}, duplicates {dups}",
        s.elapsed.as_secs_f64(),
        s.failed_text()
    );

    // Fill the store: filler nodes with one full block each (pods_per_node leases).
    let filler = cfg
        .leases
        .saturating_sub(stored.len())
        .div_ceil(cfg.pods_per_node);
    let fnames: Vec<(String, usize)> = (0..filler)
        .map(|k| (format!("f{k:04}"), k % cfg.racks + 1))
        .collect();
    for chunk in fnames.chunks(100) {
        let blocks = cl.seed_nodes(chunk, 1, size, &mut next)?;
        let mut ops = Vec::new();
        for (node, first, size) in blocks {
            for k in 0..size {
                let ip = Ipv4Addr::from(u32::from(first) + k);
                ops.push((
                    format!("{PREFIX}/leases/{NETWORK}/{}", padded(ip)),
                    format!(
                        r#"{{"network":"{NETWORK}","address":"{ip}","node":"{node}","containerId":"filler-{ip}","ifname":"eth0","pod":{{"namespace":"bench","name":"filler-{ip}"}},"createdUnixMs":1}}"#
                    ),
                ));
            }
        }
        cl.put_all(ops)?;
    }
    let total = cl.stored_leases()?.len();
    check_interrupted()?;

    // Restart: one ipamd at a time, time from spawn to /readyz 200, then its RSS.
    let mut restarts = Vec::new();
    for k in 0..cfg.restarts {
        let i = (k * 37) % cfg.nodes;
        cl.stop_ipamd(i);
        let t0 = Instant::now();
        cl.spawn_ipamd(i, &[]);
        cl.wait_ready(i, Duration::from_secs(120))?;
        let ready = t0.elapsed();
        let rss = cl.pid(i).and_then(rss_mib);
        // Settled: its watch and reserve loops ran once more.
        std::thread::sleep(Duration::from_secs(2));
        let settled = cl.pid(i).and_then(rss_mib);
        restarts.push((cl.nodes[i].name.clone(), ready, rss, settled));
    }

    // Admin views through a real netmaster.
    let url = cl.start_netmaster()?;
    let node = cl.nodes[0].name.clone();
    let views: [(&str, Vec<&str>); 3] = [
        ("racklinectl pool", vec!["pool"]),
        ("racklinectl node list", vec!["node", "list"]),
        (
            "racklinectl lease list --node",
            vec!["lease", "list", "--node", &node],
        ),
    ];
    let mut cli = Vec::new();
    for (label, args) in &views {
        let mut times = Vec::new();
        let mut outcome = String::from("ok");
        for _ in 0..cfg.cli_runs {
            check_interrupted()?;
            let t0 = Instant::now();
            let (ok, err, bytes) = cl.racklinectl(&url, args)?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            if !ok {
                outcome = format!("failed: {err}");
            } else if outcome == "ok" {
                outcome = format!("ok ({bytes} bytes of output)");
            }
        }
        cli.push((label.to_string(), times, outcome));
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "{} real `rackline-ipamd` processes (allocation only, no datapath) in {} racks of one \
         rack-bound network, each node one pre-assigned block of {} addresses (1:1 capacity), \
         `--standby 0`, one etcd on loopback with fsync; {} pods placed round-robin over the \
         nodes by {} concurrent callers through the ipamds' sockets. Then the store is filled to \
         {} leases with filler nodes (a full block each, written directly) for the restart and \
         the admin views (one netmaster).\n",
        cfg.nodes, cfg.racks, cfg.pods_per_node, pods, cfg.callers, total
    );
    let _ = writeln!(md, "| measurement | result |\n|---|---|");
    let _ = writeln!(
        md,
        "| place {pods} pods | {:.2} s ({:.0} pods/s), {} placed, failures {}, duplicates {dups} (checked against etcd) |",
        s.elapsed.as_secs_f64(),
        s.rate(),
        s.ok,
        s.failed_text()
    );
    for (name, ready, rss, settled) in &restarts {
        let f = |r: &Option<(f64, f64)>| {
            r.map_or("?".into(), |(rss, hwm)| {
                format!("RSS {rss:.1} MiB (peak {hwm:.1})")
            })
        };
        let _ = writeln!(
            md,
            "| restart ipamd {name} against {total} leases | ready (/readyz 200) after {:.0} ms; at ready {}; 2 s later {} |",
            ready.as_secs_f64() * 1000.0,
            f(rss),
            f(settled)
        );
    }
    for (label, times, outcome) in &cli {
        let list: Vec<String> = times.iter().map(|t| format!("{t:.0}")).collect();
        let _ = writeln!(
            md,
            "| `{label}` against {total} leases | {} ms (runs: {}); {outcome} |",
            format_args!("{:.0}", super::stats::median(times).unwrap_or(0.0)),
            list.join(", ")
        );
    }
    ensure!(dups == 0, "{dups} duplicate(s):\n{md}");
    Ok(md)
}
