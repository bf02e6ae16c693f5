//! The chaos soak (`rackline-bench soak`): a three-member etcd cluster, two netmaster replicas
//! and six ipamds in two racks, continuous ADD/DEL churn of sticky and non-sticky pods through
//! the real plugin, and one injected fault at a time at random intervals: kill -9 of an ipamd,
//! of the netmaster leader, of an etcd member or of the etcd leader, a network partition of an
//! etcd member or of a node, an ipamd restarted while etcd is out of its reach, a node removed
//! for good (`racklinectl node delete`) and replaced by a fresh one of the same name.
//!
//! The harness plays the container runtime: every ipamd runs its leak reconciler against a CRI
//! `ListPodSandbox` the harness serves from its own table of live sandboxes. A pod's sandbox is
//! listed from before its ADD until its DEL succeeded (or was given up); an Allocate made
//! straight on ipamd's socket is listed under its container id until its Release succeeded or
//! was given up, so an Allocate whose answer was lost is reclaimed once the harness lets go.
//!
//! Checked continuously: no address is held by two live pods (every successful ADD is compared
//! with every live pod's address at once) and etcd's invariants (read every few seconds when
//! etcd answers). At the end, after healing, deleting every pod and letting the reconcilers
//! run: etcd's invariants again, leases and Rackline links left behind (must be 0), attachments
//! holding two leases (must be 0) and sticky pods that came back with another address (must
//! be 0).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use rackline_proto::cri::v1::runtime_service_server::{RuntimeService, RuntimeServiceServer};
use rackline_proto::cri::v1::{ListPodSandboxRequest, ListPodSandboxResponse, PodSandbox};
use rackline_proto::ipam::v1 as pb;
use rackline_proto::ipam::v1::ipam_client::IpamClient;

use crate::cni::result_ipv4;
use crate::networks::LabNetworkMode;
use crate::{Cmd, Lab, Pod};

/// What one soak run does.
#[derive(Clone, Debug)]
pub struct SoakOptions {
    /// Churn and faults run this long; healing and the final checks come after.
    pub duration: Duration,
    /// Seed of every random choice (pods, faults, timings): a run can be replayed.
    pub seed: u64,
    /// Nodes per rack (two racks).
    pub nodes_per_rack: usize,
    /// Pods a churn worker keeps around on its node (it adds below, deletes above).
    pub pods_per_node: usize,
    /// Sticky pod identities per rack (`s-<rack>-<j>`), re-created on any node of the rack.
    pub sticky_per_rack: usize,
    /// Seconds between the end of one fault and the next (uniform in the range).
    pub fault_gap_secs: (u64, u64),
    /// Concurrent Allocate/Release loops per node straight on ipamd's socket (the plugin's
    /// calls without the netlink work): the volume of a long run. 0 = plugin churn only.
    pub ipam_workers_per_node: usize,
    /// ipamd's `--reconcile-grace-secs` (passes run every second): how long after the harness
    /// let go of a sandbox its leftovers are reclaimed.
    pub reconcile_grace_secs: u64,
}

impl Default for SoakOptions {
    fn default() -> Self {
        SoakOptions {
            duration: Duration::from_secs(120),
            seed: 1,
            nodes_per_rack: 3,
            pods_per_node: 6,
            sticky_per_rack: 6,
            fault_gap_secs: (2, 5),
            ipam_workers_per_node: 2,
            reconcile_grace_secs: 5,
        }
    }
}

/// The kinds of fault the soak injects, in the order of the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillIpamd,
    KillNetmasterLeader,
    KillEtcdMember,
    KillEtcdLeader,
    PartitionEtcdMember,
    PartitionNode,
    IpamdRestartWithoutEtcd,
    RemoveNode,
}

impl Fault {
    pub const ALL: [Fault; 8] = [
        Fault::KillIpamd,
        Fault::KillNetmasterLeader,
        Fault::KillEtcdMember,
        Fault::KillEtcdLeader,
        Fault::PartitionEtcdMember,
        Fault::PartitionNode,
        Fault::IpamdRestartWithoutEtcd,
        Fault::RemoveNode,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Fault::KillIpamd => "kill -9 of an ipamd (restarted 1-3 s later)",
            Fault::KillNetmasterLeader => "kill -9 of the netmaster leader (restarted)",
            Fault::KillEtcdMember => "kill -9 of an etcd follower (restarted 2-5 s later)",
            Fault::KillEtcdLeader => "kill -9 of the etcd leader (restarted 2-5 s later)",
            Fault::PartitionEtcdMember => "an etcd member cut off (link down 3-6 s)",
            Fault::PartitionNode => "a node cut off (uplink down 2-5 s)",
            Fault::IpamdRestartWithoutEtcd => {
                "ipamd kill -9 and restart while its node is cut off, then healed"
            }
            Fault::RemoveNode => {
                "a node removed for good (ipamd kill -9, pods and links gone, `node delete`), \
                 replaced by a fresh node of the same name"
            }
        }
    }
}

/// What a soak run measured.
#[derive(Clone, Debug, Default)]
pub struct SoakReport {
    pub duration: Duration,
    pub seed: u64,
    /// Successful ADDs (each one an allocation).
    pub allocations: u64,
    /// Successful Allocates made straight on ipamd's socket.
    pub ipam_allocations: u64,
    /// Failed socket Allocates by gRPC code.
    pub ipam_failed: BTreeMap<String, u64>,
    /// Successful DELs of pods that had been added.
    pub releases: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<Fault, u64>,
    /// Faults whose injection or healing itself failed (with the reason).
    pub fault_errors: Vec<String>,
    /// Failed ADDs by CNI error code (0 = no CNI error document: timeout or crash).
    pub failed_adds: BTreeMap<u64, u64>,
    /// DELs that failed and were retried (kubelet retries DEL until it succeeds).
    pub retried_dels: u64,
    /// An address handed to a pod while another live pod held it.
    pub duplicates: Vec<String>,
    /// Invariant checks run during the churn, and those skipped (etcd not answering).
    pub checks: u64,
    pub checks_skipped: u64,
    /// Invariant violations seen (during the run or at the end), but for the next kind.
    pub violations: Vec<String>,
    /// Attachments holding two leases at the end, after reconciliation (one address too many
    /// for a pod: a leak, not a duplicate).
    pub double_leases: Vec<String>,
    /// Attachments seen holding two leases during the run (while the harness still counted
    /// the attachment live, so no reconciler could reclaim either).
    pub double_leases_seen: Vec<String>,
    /// After healing, deleting every pod and reconciling: lease records left.
    pub leaked_leases: usize,
    /// The leaked lease records themselves.
    pub leaked_detail: Vec<String>,
    /// Rackline links (`rl…`) left in node namespaces.
    pub leaked_links: Vec<String>,
    /// Sticky pods re-created with an address other than their first.
    pub sticky_lost: Vec<String>,
    /// Sticky re-creations that got their address back.
    pub sticky_kept: u64,
}

impl SoakReport {
    /// Whether every must-be-zero figure is zero.
    pub fn clean(&self) -> bool {
        self.safe() && self.leaked_leases == 0 && self.double_leases.is_empty()
    }

    /// The safety figures: no address held by two live pods, no other invariant broken, no
    /// link left behind, no sticky address lost. (Leaked leases and attachments with two
    /// leases waste addresses until a reconciler or an operator frees them; they are counted
    /// by [`SoakReport::clean`].)
    pub fn safe(&self) -> bool {
        self.duplicates.is_empty()
            && self.violations.is_empty()
            && self.leaked_links.is_empty()
            && self.sticky_lost.is_empty()
    }

    fn add_violations(&mut self, found: Vec<String>, at_end: bool) {
        for v in found {
            let list = if v.contains("holds two leases") {
                if at_end {
                    &mut self.double_leases
                } else {
                    &mut self.double_leases_seen
                }
            } else {
                &mut self.violations
            };
            if !list.contains(&v) {
                list.push(v);
            }
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "### Chaos soak: {} s, seed {}\n",
            self.duration.as_secs(),
            self.seed
        );
        let _ = writeln!(s, "| figure | value |\n|---|---|");
        let _ = writeln!(
            s,
            "| allocations | {} ({} plugin ADDs, {} on ipamd's socket) |",
            self.allocations + self.ipam_allocations,
            self.allocations,
            self.ipam_allocations
        );
        let _ = writeln!(s, "| releases (successful DELs) | {} |", self.releases);
        let faults: u64 = self.faults.values().sum();
        let _ = writeln!(s, "| faults injected | {faults} |");
        for (f, n) in &self.faults {
            let _ = writeln!(s, "| - {} | {n} |", f.describe());
        }
        let failed: u64 = self.failed_adds.values().sum();
        let by_code = breakdown(
            self.failed_adds
                .iter()
                .map(|(c, n)| (format!("code {c}"), *n)),
        );
        let _ = writeln!(s, "| failed ADDs | {failed} ({by_code}) |");
        let ipam_failed = breakdown(self.ipam_failed.iter().map(|(c, n)| (c.clone(), *n)));
        let _ = writeln!(s, "| failed socket Allocates | {ipam_failed} |");
        let _ = writeln!(s, "| DELs retried | {} |", self.retried_dels);
        let _ = writeln!(s, "| duplicates | {} |", self.duplicates.len());
        let _ = writeln!(
            s,
            "| invariant checks (skipped while etcd was away) | {} ({}) |",
            self.checks, self.checks_skipped
        );
        let _ = writeln!(s, "| invariant violations | {} |", self.violations.len());
        let _ = writeln!(
            s,
            "| attachments holding two leases after reconciliation (seen during the run) | {} ({}) |",
            self.double_leases.len(),
            self.double_leases_seen.len()
        );
        let _ = writeln!(
            s,
            "| leases leaked after reconciliation | {} |",
            self.leaked_leases
        );
        let _ = writeln!(s, "| links leaked | {} |", self.leaked_links.len());
        let _ = writeln!(
            s,
            "| sticky addresses lost (kept) | {} ({}) |",
            self.sticky_lost.len(),
            self.sticky_kept
        );
        for (what, list) in [
            ("duplicate", &self.duplicates),
            ("violation", &self.violations),
            ("two leases", &self.double_leases),
            ("two leases during the run", &self.double_leases_seen),
            ("leaked link", &self.leaked_links),
            ("leaked lease", &self.leaked_detail),
            ("sticky lost", &self.sticky_lost),
            ("fault error", &self.fault_errors),
        ] {
            for l in list.iter().take(20) {
                let _ = writeln!(s, "\n- {what}: {l}");
            }
        }
        s
    }
}

/// "what: n, what: n" or "none": a count-by-kind cell of the report.
fn breakdown(counts: impl Iterator<Item = (String, u64)>) -> String {
    let parts: Vec<String> = counts.map(|(what, n)| format!("{what}: {n}")).collect();
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

/// xorshift64*: the soak's only randomness, seeded, so a run can be replayed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A sticky identity's first address and the node it runs on now (None: not running).
type StickyState = (Option<Ipv4Addr>, Option<usize>);

/// State shared by the churn workers, the fault injector and the checker.
struct Shared {
    /// Address → container id of the pod holding it, and whether that pod is being torn down
    /// (its DEL/Release is under way: ipamd may free the address before the call returns, so
    /// another pod getting it then is no duplicate).
    live: Mutex<HashMap<Ipv4Addr, (String, bool)>>,
    /// Sticky identity → (first address, node it lives on now or None).
    sticky: Mutex<BTreeMap<String, StickyState>>,
    report: Mutex<SoakReport>,
    allocations: AtomicU64,
    ipam_allocations: AtomicU64,
    releases: AtomicU64,
    stop: AtomicBool,
    /// The sandbox ids the harness's runtime lists (the reconcilers' source of truth).
    sandboxes: Sandboxes,
    /// Per node: read-held by every pod or socket operation on the node, write-held while the
    /// node is removed for good (no operation of the harness straddles a removal).
    gates: BTreeMap<usize, tokio::sync::RwLock<()>>,
    /// Per node: its live plugin pods and their addresses.
    pods: BTreeMap<usize, Mutex<Vec<(Pod, Ipv4Addr)>>>,
}

impl Shared {
    fn new(nodes: &[usize]) -> Self {
        Shared {
            live: Mutex::default(),
            sticky: Mutex::default(),
            report: Mutex::default(),
            allocations: AtomicU64::default(),
            ipam_allocations: AtomicU64::default(),
            releases: AtomicU64::default(),
            stop: AtomicBool::default(),
            sandboxes: Sandboxes::default(),
            gates: nodes
                .iter()
                .map(|&k| (k, tokio::sync::RwLock::new(())))
                .collect(),
            pods: nodes.iter().map(|&k| (k, Mutex::default())).collect(),
        }
    }
}

/// The live pod sandboxes as the harness's container runtime knows them, served to every
/// ipamd's reconciler as CRI `ListPodSandbox` (ids only: the CRI source judges a lease by its
/// container id).
#[derive(Clone, Default)]
struct Sandboxes(Arc<Mutex<HashSet<String>>>);

impl Sandboxes {
    fn up(&self, id: &str) {
        self.0.lock().unwrap().insert(id.to_string());
    }
    fn down(&self, id: &str) {
        self.0.lock().unwrap().remove(id);
    }
}

#[tonic::async_trait]
impl RuntimeService for Sandboxes {
    async fn list_pod_sandbox(
        &self,
        _: tonic::Request<ListPodSandboxRequest>,
    ) -> Result<tonic::Response<ListPodSandboxResponse>, tonic::Status> {
        let items = self
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|id| PodSandbox {
                id: id.clone(),
                created_at: 1,
                ..Default::default()
            })
            .collect();
        Ok(tonic::Response::new(ListPodSandboxResponse { items }))
    }
}

/// Serves `sandboxes` on the unix socket `path` from a thread of its own until the process
/// exits (the server is a few idle tasks once the lab is gone).
fn serve_cri(sandboxes: Sandboxes, path: &Path) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime of the CRI server")?;
    let listener = rt
        .block_on(async { tokio::net::UnixListener::bind(path) })
        .with_context(|| format!("binding {}", path.display()))?;
    thread::spawn(move || {
        rt.block_on(
            tonic::transport::Server::builder()
                .add_service(RuntimeServiceServer::new(sandboxes))
                .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
        )
    });
    Ok(())
}

/// One soak run; the lab is torn down before this returns.
pub fn run(opts: &SoakOptions) -> Result<SoakReport> {
    // The runtime's socket exists before the ipamds start: their reconcilers list it from
    // their first pass.
    let cri_dir = tempfile::Builder::new()
        .prefix("rackline-soak-cri-")
        .tempdir()
        .context("a directory for the soak's CRI socket")?;
    let cri_socket = cri_dir.path().join("cri.sock");
    let sandboxes = Sandboxes::default();
    serve_cri(sandboxes.clone(), &cri_socket)?;
    let grace = opts.reconcile_grace_secs.to_string();
    let socket_arg = cri_socket.display().to_string();
    let lab = Lab::builder()
        .racks(2)
        .nodes_per_rack(opts.nodes_per_rack)
        .netmasters(2)
        .etcd_members(3)
        .network_mode(LabNetworkMode::Spanning)
        .network_args(&["--sticky-pod", r"s-\d+-\d+", "--sticky-hold-secs", "3600"])
        .ipamd_args(&[
            "--reconcile-interval-secs",
            "1",
            "--reconcile-grace-secs",
            &grace,
            "--cri-socket",
            &socket_arg,
        ])
        .log_level("info")
        .build()?;
    let nodes: Vec<usize> = lab.nodes().iter().map(|n| n.index()).collect();
    let mut shared = Shared::new(&nodes);
    shared.sandboxes = sandboxes;
    {
        let mut st = shared.sticky.lock().unwrap();
        for r in 1..=2 {
            for j in 0..opts.sticky_per_rack {
                st.insert(format!("s-{r}-{j}"), (None, None));
            }
        }
    }
    let deadline = Instant::now() + opts.duration;
    thread::scope(|s| {
        let mut workers = Vec::new();
        for (w, &k) in nodes.iter().enumerate() {
            let (lab, shared) = (&lab, &shared);
            let seed = opts.seed.wrapping_add(1000 + w as u64);
            workers.push(s.spawn(move || churn(lab, shared, opts, k, seed, deadline)));
        }
        let faults = {
            let (lab, shared) = (&lab, &shared);
            s.spawn(move || inject(lab, shared, opts, deadline))
        };
        let ipam = {
            let (lab, shared) = (&lab, &shared);
            s.spawn(move || ipam_churn(lab, shared, opts, deadline))
        };
        let checker = {
            let (lab, shared) = (&lab, &shared);
            s.spawn(move || check_loop(lab, shared))
        };
        for w in workers {
            let _ = w.join();
        }
        let _ = faults.join();
        if let Ok(Err(e)) = ipam.join() {
            shared
                .report
                .lock()
                .unwrap()
                .fault_errors
                .push(format!("socket churn: {e:#}"));
        }
        shared.stop.store(true, Ordering::SeqCst);
        let _ = checker.join();
    });
    finish(&lab, &shared, opts)?;
    let mut report = shared.report.into_inner().unwrap_or_default();
    report.duration = opts.duration;
    report.seed = opts.seed;
    report.allocations = shared.allocations.load(Ordering::SeqCst);
    report.ipam_allocations = shared.ipam_allocations.load(Ordering::SeqCst);
    report.releases = shared.releases.load(Ordering::SeqCst);
    Ok(report)
}

/// One node's churn until `deadline`: keeps about `pods_per_node` pods, adding and deleting
/// at random, a fifth of the adds being sticky identities of the node's rack. The pods still
/// alive stay in `shared.pods` (deleted by [`finish`]).
fn churn(lab: &Lab, shared: &Shared, opts: &SoakOptions, k: usize, seed: u64, deadline: Instant) {
    let mut rng = Rng::new(seed);
    let rack = lab.node(k).rack();
    let mut seq = 0u64;
    while Instant::now() < deadline {
        // The node cannot be removed under an operation (see `remove_node`).
        let _gate = shared.gates[&k].blocking_read();
        let n = shared.pods[&k].lock().unwrap().len();
        let grow = n < opts.pods_per_node / 2 || (n < opts.pods_per_node * 3 / 2 && rng.chance(50));
        if grow {
            seq += 1;
            let sticky = rng
                .chance(20)
                .then(|| claim_sticky(shared, rack, k, &mut rng));
            let name = match &sticky {
                Some(Some(n)) => n.clone(),
                _ => format!("p-{}-{seq}", lab.node(k).name()),
            };
            let Ok(pod) = lab.add_pod(k, &name) else {
                if let Some(Some(n)) = &sticky {
                    release_sticky(shared, n);
                }
                continue;
            };
            // The runtime lists the sandbox from before its ADD.
            shared.sandboxes.up(&pod.container_id);
            match add(lab, shared, &pod) {
                Some(ip) => {
                    if let Some(Some(n)) = &sticky {
                        sticky_back(shared, n, ip);
                    }
                    shared.pods[&k].lock().unwrap().push((pod, ip));
                }
                None => {
                    // The runtime's clean-up of a failed ADD: DEL, then the sandbox goes.
                    del_until_ok(lab, shared, &pod, None);
                    if let Some(Some(n)) = &sticky {
                        release_sticky(shared, n);
                    }
                    let _ = lab.delete_pod_netns(&pod);
                    shared.sandboxes.down(&pod.container_id);
                }
            }
        } else if n > 0 {
            let (pod, ip) = {
                let mut pods = shared.pods[&k].lock().unwrap();
                let i = rng.below(pods.len() as u64) as usize;
                pods.swap_remove(i)
            };
            del_until_ok(lab, shared, &pod, Some(ip));
            if shared.sticky.lock().unwrap().contains_key(&pod.name) {
                release_sticky(shared, &pod.name);
            }
            let _ = lab.delete_pod_netns(&pod);
            shared.sandboxes.down(&pod.container_id);
        }
    }
}

/// A sticky identity of `rack` not running anywhere, now marked as running on node `k`.
fn claim_sticky(shared: &Shared, rack: usize, k: usize, rng: &mut Rng) -> Option<String> {
    let mut st = shared.sticky.lock().unwrap();
    let prefix = format!("s-{rack}-");
    let free: Vec<String> = st
        .iter()
        .filter(|(n, (_, on))| n.starts_with(&prefix) && on.is_none())
        .map(|(n, _)| n.clone())
        .collect();
    if free.is_empty() {
        return None;
    }
    let name = free[rng.below(free.len() as u64) as usize].clone();
    st.get_mut(&name)?.1 = Some(k);
    Some(name)
}

fn release_sticky(shared: &Shared, name: &str) {
    if let Some(e) = shared.sticky.lock().unwrap().get_mut(name) {
        e.1 = None;
    }
}

/// Records a sticky pod's address: its first, or compared with its first.
fn sticky_back(shared: &Shared, name: &str, ip: Ipv4Addr) {
    let mut st = shared.sticky.lock().unwrap();
    let Some(e) = st.get_mut(name) else { return };
    match e.0 {
        None => e.0 = Some(ip),
        Some(first) if first == ip => shared.report.lock().unwrap().sticky_kept += 1,
        Some(first) => shared
            .report
            .lock()
            .unwrap()
            .sticky_lost
            .push(format!("{name}: first {first}, now {ip}")),
    }
}

/// One ADD; on success the address is checked against every live pod's and recorded.
fn add(lab: &Lab, shared: &Shared, pod: &Pod) -> Option<Ipv4Addr> {
    let out = lab.cni(Cmd::Add, pod).run();
    let (code, ip) = match &out {
        Ok(o) if o.success() => match o.result().ok().and_then(|r| result_ipv4(r).ok()) {
            Some(c) => (None, Some(c.addr)),
            None => (Some(0), None),
        },
        Ok(o) => (Some(o.error_code().unwrap_or(0)), None),
        Err(_) => (Some(0), None),
    };
    if let Some(code) = code {
        *shared
            .report
            .lock()
            .unwrap()
            .failed_adds
            .entry(code)
            .or_default() += 1;
        return None;
    }
    let ip = ip?;
    shared.allocations.fetch_add(1, Ordering::SeqCst);
    let mut live = shared.live.lock().unwrap();
    if let Some((other, false)) = live.get(&ip) {
        if other != &pod.container_id {
            shared.report.lock().unwrap().duplicates.push(format!(
                "{ip} given to {} ({}) while {other} holds it",
                pod.name, pod.container_id
            ));
        }
    }
    live.insert(ip, (pod.container_id.clone(), false));
    Some(ip)
}

/// DEL until it succeeds (kubelet's behaviour), at most a minute; the address, if any, is
/// freed in the live map only then.
fn del_until_ok(lab: &Lab, shared: &Shared, pod: &Pod, ip: Option<Ipv4Addr>) {
    if let Some(ip) = ip {
        tearing_down(shared, ip, &pod.container_id);
    }
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let ok = lab.cni(Cmd::Del, pod).run().is_ok_and(|o| o.success());
        if ok {
            if let Some(ip) = ip {
                forget(shared, ip, &pod.container_id);
                shared.releases.fetch_add(1, Ordering::SeqCst);
            }
            return;
        }
        shared.report.lock().unwrap().retried_dels += 1;
        if Instant::now() > until {
            shared
                .report
                .lock()
                .unwrap()
                .fault_errors
                .push(format!("DEL of {} never succeeded", pod.name));
            return;
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// Marks `holder`'s address as being released (before its DEL or Release is sent).
fn tearing_down(shared: &Shared, ip: Ipv4Addr, holder: &str) {
    if let Some(e) = shared.live.lock().unwrap().get_mut(&ip) {
        if e.0 == holder {
            e.1 = true;
        }
    }
}

/// Drops `holder`'s address from the live map once its DEL or Release succeeded.
fn forget(shared: &Shared, ip: Ipv4Addr, holder: &str) {
    let mut live = shared.live.lock().unwrap();
    if live.get(&ip).is_some_and(|e| e.0 == holder) {
        live.remove(&ip);
    }
}

/// Injects one fault at a time until `deadline`, cycling through every kind in a shuffled
/// order so a short run still sees each.
fn inject(lab: &Lab, shared: &Shared, opts: &SoakOptions, deadline: Instant) {
    let mut rng = Rng::new(opts.seed);
    let mut order: Vec<Fault> = Vec::new();
    loop {
        let gap = rng.between(opts.fault_gap_secs.0, opts.fault_gap_secs.1);
        thread::sleep(Duration::from_secs(gap));
        if Instant::now() >= deadline {
            return;
        }
        if order.is_empty() {
            order = Fault::ALL.to_vec();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        let Some(fault) = order.pop() else { continue };
        let outcome = one_fault(lab, shared, fault, &mut rng);
        let mut r = shared.report.lock().unwrap();
        *r.faults.entry(fault).or_default() += 1;
        if let Err(e) = outcome {
            r.fault_errors.push(format!("{fault:?}: {e:#}"));
        }
    }
}

fn sleep_between(rng: &mut Rng, lo_ms: u64, hi_ms: u64) {
    thread::sleep(Duration::from_millis(rng.between(lo_ms, hi_ms)));
}

/// Injects `fault` and heals it before returning.
fn one_fault(lab: &Lab, shared: &Shared, fault: Fault, rng: &mut Rng) -> Result<()> {
    let nodes = lab.nodes().len() as u64;
    let k = 1 + rng.below(nodes) as usize;
    match fault {
        Fault::KillIpamd => {
            lab.kill_ipamd(k)?;
            sleep_between(rng, 1000, 3000);
            lab.start_ipamd(k)
        }
        Fault::KillNetmasterLeader => {
            let i = retry(|| lab.netmaster_leader())?;
            lab.kill_netmaster(i)?;
            sleep_between(rng, 500, 2000);
            lab.start_netmaster_replica(i)
        }
        Fault::KillEtcdMember | Fault::KillEtcdLeader => {
            let leader = retry(|| lab.etcd_leader_member())?;
            let m = if fault == Fault::KillEtcdLeader {
                leader
            } else {
                let others: Vec<usize> = (1..=lab.etcd_member_count())
                    .filter(|m| *m != leader)
                    .collect();
                others[rng.below(others.len() as u64) as usize]
            };
            lab.kill_etcd_member(m)?;
            sleep_between(rng, 2000, 5000);
            lab.start_etcd_member(m)?;
            wait_etcd(lab)
        }
        Fault::PartitionEtcdMember => {
            // Members 2.. only: member 1 shares `ctrl` with the netmasters.
            let m = 2 + rng.below(lab.etcd_member_count() as u64 - 1) as usize;
            lab.partition_etcd_member(m, true)?;
            sleep_between(rng, 3000, 6000);
            lab.partition_etcd_member(m, false)?;
            wait_etcd(lab)
        }
        Fault::PartitionNode => {
            partition_node(lab, k, true)?;
            sleep_between(rng, 2000, 5000);
            partition_node(lab, k, false)
        }
        Fault::IpamdRestartWithoutEtcd => {
            partition_node(lab, k, true)?;
            let r = (|| {
                lab.kill_ipamd(k)?;
                lab.start_ipamd_unready(k)?;
                sleep_between(rng, 1000, 3000);
                Ok(())
            })();
            partition_node(lab, k, false)?;
            r
        }
        Fault::RemoveNode => remove_node(lab, shared, k),
    }
}

/// Node `k` dies for good and an operator removes it: its ipamd is killed, its pods and every
/// Rackline link in its namespace vanish (no DEL is ever sent for them), and once its liveness
/// record has expired `racklinectl node delete --force` (its pods are gone) frees its
/// non-sticky leases, turns its sticky pods' leases into reservations and returns its blocks.
/// Checked: nothing active, standby or blocked is left on the node. Then a fresh machine with
/// an empty state directory joins under the same name, so the lab keeps its ipamds.
fn remove_node(lab: &Lab, shared: &Shared, k: usize) -> Result<()> {
    let _gate = shared.gates[&k].blocking_write();
    let node = lab.node(k);
    let name = node.name().to_string();
    lab.kill_ipamd(k)?;
    let pods = std::mem::take(&mut *shared.pods[&k].lock().unwrap());
    for (pod, ip) in &pods {
        // Freed (non-sticky) or reserved for its identity from the delete on.
        tearing_down(shared, *ip, &pod.container_id);
        let _ = lab.delete_pod_netns(pod);
    }
    let removed = (|| {
        // Deleting a pod's namespace takes its veth pair along, maybe after the listing.
        for l in lab.link_names(node.netns())? {
            if l.starts_with("rl") {
                let _ = lab.ip_in(node.netns(), &["link", "del", &l]);
            }
        }
        let left: Vec<String> = lab
            .link_names(node.netns())?
            .into_iter()
            .filter(|l| l.starts_with("rl"))
            .collect();
        anyhow::ensure!(left.is_empty(), "links left on {name}: {left:?}");
        let until = Instant::now() + Duration::from_secs(40);
        loop {
            let live = lab
                .racklinectl(&["node", "show", &name])
                .map(|v| v["live"].as_bool() != Some(false));
            if let Ok(false) = live {
                break;
            }
            anyhow::ensure!(
                Instant::now() < until,
                "{name}'s liveness record still there 40 s after its ipamd was killed"
            );
            thread::sleep(Duration::from_millis(500));
        }
        let deleted = retry(|| lab.racklinectl(&["node", "delete", "--force", &name]))?;
        let left: Vec<String> = lab
            .lease_records()?
            .into_iter()
            .filter(|l| l["node"] == name.as_str())
            .filter(|l| l["state"] == "active" || l["state"] == "standby")
            .map(|l| format!("{} {}", l["address"], l["state"]))
            .collect();
        anyhow::ensure!(
            left.is_empty(),
            "node delete of {name} ({deleted}) left records: {left:?}"
        );
        let blocks = lab.racklinectl(&["block", "list", "--node", &name])?;
        anyhow::ensure!(
            blocks.as_array().is_none_or(|b| b.is_empty()),
            "node delete of {name} ({deleted}) left blocks: {blocks}"
        );
        Ok(())
    })();
    for (pod, ip) in &pods {
        forget(shared, *ip, &pod.container_id);
        if shared.sticky.lock().unwrap().contains_key(&pod.name) {
            release_sticky(shared, &pod.name);
        }
        shared.sandboxes.down(&pod.container_id);
    }
    // The replacement machine: same name, nothing left of the old one's state directory
    // (when the removal failed half-way, the old state is still the node's: keep it).
    if removed.is_ok() {
        let dir = node
            .ipamd_socket()
            .parent()
            .context("ipamd socket without a directory")?;
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            };
        }
    }
    lab.start_ipamd(k)?;
    removed
}

/// `f` until it succeeds, for up to 15 s (a leader is being elected after the previous fault).
fn retry<T>(mut f: impl FnMut() -> Result<T>) -> Result<T> {
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > until => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// Cuts node `k`'s uplink (`down`) or restores it with its default route.
fn partition_node(lab: &Lab, k: usize, down: bool) -> Result<()> {
    let node = lab.node(k);
    let ns = node.netns();
    if down {
        lab.ip_in(ns, &["link", "set", crate::topology::UPLINK, "down"])
    } else {
        lab.ip_in(ns, &["link", "set", crate::topology::UPLINK, "up"])?;
        let gw = node.gateway().to_string();
        lab.ip_in(
            ns,
            &[
                "route",
                "replace",
                "default",
                "via",
                &gw,
                "dev",
                crate::topology::UPLINK,
            ],
        )
    }
}

/// Waits until every etcd member answers again (a fault is healed only then).
fn wait_etcd(lab: &Lab) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        if lab.etcd_healthy().unwrap_or(false) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(200));
    }
    anyhow::bail!("etcd not healthy 30 s after the fault was healed")
}

/// Reads etcd's invariants every 3 s until the run stops.
fn check_loop(lab: &Lab, shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        let rep = lab.invariants();
        let mut r = shared.report.lock().unwrap();
        match rep {
            Ok(rep) => {
                r.checks += 1;
                r.add_violations(rep.violations, false);
            }
            Err(_) => r.checks_skipped += 1,
        }
        drop(r);
        for _ in 0..30 {
            if shared.stop.load(Ordering::SeqCst) {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Heals what may still be broken, deletes every remaining pod, lets the reconcilers reclaim
/// what the harness let go of (bounded), then takes the final figures: invariants, leases and
/// links left, into the shared report.
fn finish(lab: &Lab, shared: &Shared, opts: &SoakOptions) -> Result<()> {
    for m in 1..=lab.etcd_member_count() {
        if !lab.running_etcd_members().contains(&m) {
            lab.start_etcd_member(m)?;
        }
        if m > 1 {
            lab.partition_etcd_member(m, false)?;
        }
    }
    wait_etcd(lab)?;
    for n in lab.nodes() {
        partition_node(lab, n.index(), false)?;
        if lab.ipamd_pid(n.index()).is_none() {
            lab.start_ipamd(n.index())?;
        }
    }
    for i in 1..=lab.netmaster_count() {
        if !lab.running_netmasters().contains(&i) {
            lab.start_netmaster_replica(i)?;
        }
    }
    for pods in shared.pods.values() {
        let pods = std::mem::take(&mut *pods.lock().unwrap());
        for (pod, ip) in pods {
            del_until_ok(lab, shared, &pod, Some(ip));
            let _ = lab.delete_pod_netns(&pod);
            shared.sandboxes.down(&pod.container_id);
        }
    }
    // Offline work (journal replays, spooled releases) settles once etcd is back, and every
    // reconciler needs two passes over a sandbox gone for the grace: wait for both, bounded.
    let until = Instant::now() + Duration::from_secs(60 + 4 * opts.reconcile_grace_secs);
    let (report, links) = loop {
        let rep = lab.invariants().context("reading etcd after the soak")?;
        let mut links = Vec::new();
        for n in lab.nodes() {
            for l in lab.link_names(n.netns())? {
                if l.starts_with("rl") {
                    links.push(format!("{}: {l}", n.name()));
                }
            }
        }
        if (rep.leases == 0 && links.is_empty()) || Instant::now() > until {
            break (rep, links);
        }
        thread::sleep(Duration::from_secs(1));
    };
    let mut r = shared.report.lock().unwrap();
    r.add_violations(report.violations, true);
    r.leaked_leases = report.leases;
    r.leaked_links = links;
    if report.leases > 0 {
        // Name what was left: the lease records that still hold an attachment.
        let (_, records) = lab.etcd_records()?;
        for (key, raw) in records {
            let v: serde_json::Value = serde_json::from_slice(&raw).unwrap_or_default();
            if key.contains("/leases/") && v.get("containerId").is_some_and(|c| c != "") {
                r.leaked_detail.push(format!("{key}: {v}"));
            }
        }
    }
    Ok(())
}

/// Allocate/Release loops on every node's ipamd socket until `deadline`, on one tokio runtime
/// of their own (this thread); every address is checked against every live holder like the
/// plugin's. Each loop releases what it holds before returning.
fn ipam_churn(lab: &Lab, shared: &Shared, opts: &SoakOptions, deadline: Instant) -> Result<()> {
    if opts.ipam_workers_per_node == 0 {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime of the socket churn")?;
    rt.block_on(async {
        let mut tasks = Vec::new();
        for n in lab.nodes() {
            for w in 0..opts.ipam_workers_per_node {
                let socket = n.ipamd_socket().to_owned();
                let prefix = format!("i-{}-{w}", n.name());
                tasks.push(ipam_loop(shared, n.index(), socket, prefix, deadline));
            }
        }
        futures_join_all(tasks).await;
    });
    Ok(())
}

/// Polls every future together until all are done (they borrow `shared`, so they cannot be
/// spawned; `futures::join_all` would be one more dependency for these few lines).
async fn futures_join_all<F: std::future::Future<Output = ()>>(fs: Vec<F>) {
    let mut pinned: Vec<std::pin::Pin<Box<F>>> = fs.into_iter().map(Box::pin).collect();
    std::future::poll_fn(|cx| {
        pinned.retain_mut(|f| f.as_mut().poll(cx).is_pending());
        if pinned.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
}

async fn ipam_client(socket: std::path::PathBuf) -> Option<IpamClient<tonic::transport::Channel>> {
    let ch = tonic::transport::Endpoint::from_static("http://ipamd.invalid")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .ok()?;
    Some(IpamClient::new(ch))
}

async fn ipam_loop(
    shared: &Shared,
    k: usize,
    socket: std::path::PathBuf,
    prefix: String,
    deadline: Instant,
) {
    let mut seq = 0u64;
    let mut client = None;
    while Instant::now() < deadline {
        // One Allocate and its Release are never split by a removal of the node.
        let _gate = shared.gates[&k].read().await;
        if client.is_none() {
            client = ipam_client(socket.clone()).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let Some(c) = client.as_mut() else { continue };
        seq += 1;
        let cid = format!("{prefix}-{seq}");
        // Listed until the harness is done with it: whatever a lost answer left behind is
        // the reconciler's once it goes.
        shared.sandboxes.up(&cid);
        let req = pb::AllocateRequest {
            network: crate::topology::NETWORK.into(),
            container_id: cid.clone(),
            ifname: "eth0".into(),
            pod: Some(pb::PodRef {
                namespace: "soak".into(),
                name: cid.clone(),
                uid: format!("uid-{cid}"),
            }),
            ..Default::default()
        };
        let ip = match c.allocate(req).await {
            Ok(r) => r
                .into_inner()
                .lease
                .and_then(|l| l.address.split('/').next()?.parse::<Ipv4Addr>().ok()),
            Err(s) => {
                *shared
                    .report
                    .lock()
                    .unwrap()
                    .ipam_failed
                    .entry(format!("{:?}", s.code()))
                    .or_default() += 1;
                if s.code() == tonic::Code::Unavailable || s.code() == tonic::Code::Unknown {
                    client = None;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                None
            }
        };
        if let Some(ip) = ip {
            shared.ipam_allocations.fetch_add(1, Ordering::SeqCst);
            let mut live = shared.live.lock().unwrap();
            if let Some((other, false)) = live.get(&ip) {
                if other != &cid {
                    shared
                        .report
                        .lock()
                        .unwrap()
                        .duplicates
                        .push(format!("{ip} given to {cid} while {other} holds it"));
                }
            }
            live.insert(ip, (cid.clone(), false));
        }
        if let Some(ip) = ip {
            tearing_down(shared, ip, &cid);
        }
        // Release (also after a failed Allocate: it may have leased before failing), until
        // ipamd says it is done, like the plugin's DEL.
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            if client.is_none() {
                client = ipam_client(socket.clone()).await;
            }
            let done = match client.as_mut() {
                Some(c) => c
                    .release(pb::ReleaseRequest {
                        network: crate::topology::NETWORK.into(),
                        container_id: cid.clone(),
                        ifname: "eth0".into(),
                        ..Default::default()
                    })
                    .await
                    .is_ok(),
                None => false,
            };
            if done {
                if let Some(ip) = ip {
                    forget(shared, ip, &cid);
                }
                break;
            }
            client = None;
            if Instant::now() > until {
                shared
                    .report
                    .lock()
                    .unwrap()
                    .fault_errors
                    .push(format!("Release of {cid} never succeeded"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        shared.sandboxes.down(&cid);
    }
}
