//! Benchmarks on the lab (`rackline-bench`): the rack-scale ADD storm ([`adds`]), ADD/DEL latency
//! against the reference macvlan + host-local ([`latency`]), pod throughput against the node
//! underlay ([`throughput`]). Each scenario builds its own labs, returns a Markdown section and
//! leaves no namespace behind. Method and results: docs/benchmarks.md.
//!
//! Plugins are executed like [`Lab::cni`] executes them (fork, `setns` into the node, `CNI_*`
//! environment, netconf on stdin) but timed precisely by [`exec::run_timed`].

pub mod adds;
pub mod churn;
pub mod ctlplane;
pub mod exec;
pub mod iperf;
pub mod latency;
pub mod probe;
pub mod qos;
pub mod soak;
pub mod stats;
pub mod steps;
pub mod sticky;
pub mod throughput;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use serde_json::Value;

use crate::{bin_dir, list_netns, Cmd, Lab, Pod};
use exec::Invocation;

/// Set by the signal thread of `rackline-bench`; scenarios stop at their next step.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Fails once SIGINT/SIGTERM arrived, so the lab in scope is dropped (torn down) in order.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// A pod verb for `program` (rackline or a reference plugin) with the environment the lab gives
/// the rackline plugin: `CNI_COMMAND`, `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME=eth0`,
/// `CNI_ARGS` (as containerd sends it), `CNI_PATH`; run from the pod's node namespace.
pub fn pod_invocation(
    lab: &Lab,
    program: &Path,
    cni_path: &str,
    command: Cmd,
    pod: &Pod,
    conf: &Value,
) -> Invocation {
    Invocation {
        program: program.to_owned(),
        args: Vec::new(),
        env: vec![
            ("CNI_COMMAND".into(), command.as_str().into()),
            ("CNI_CONTAINERID".into(), pod.container_id.clone()),
            ("CNI_NETNS".into(), pod.netns_path()),
            ("CNI_IFNAME".into(), "eth0".into()),
            ("CNI_ARGS".into(), pod.cni_args()),
            ("CNI_PATH".into(), cni_path.into()),
        ],
        stdin: serde_json::to_vec(conf).unwrap_or_default(),
        netns: lab.node(pod.node).netns().path(),
    }
}

/// The rackline plugin for `pod` with [`Lab::conf`] of its node (plus `extra` top-level keys,
/// e.g. `prevResult`).
pub fn rackline_invocation(
    lab: &Lab,
    command: Cmd,
    pod: &Pod,
    extra: &[(&str, Value)],
) -> Result<Invocation> {
    let bins = lab.bins()?;
    let mut conf = lab.conf(pod.node);
    for (k, v) in extra {
        conf[*k] = v.clone();
    }
    Ok(pod_invocation(
        lab,
        &bins.rackline,
        &bins.cni_path(),
        command,
        pod,
        &conf,
    ))
}

/// Waits until every node of `lab` owns at least one block (ipamd registers and acquires one at
/// start on a rack-bound network); returns how long that took.
pub fn wait_for_blocks(lab: &Lab, timeout: Duration) -> Result<Duration> {
    let t0 = Instant::now();
    loop {
        check_interrupted()?;
        let blocks = lab.racklinectl(&["block", "list"])?;
        let owners: BTreeSet<&str> = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["node"].as_str())
            .collect();
        if lab.nodes().iter().all(|n| owners.contains(n.name())) {
            return Ok(t0.elapsed());
        }
        ensure!(
            t0.elapsed() < timeout,
            "nodes without a block after {timeout:?}: {blocks}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Namespaces named after lab `id` that still exist (call after the lab was dropped).
/// Builds a Spanning lab of `racks` x `nodes_per_rack` (ipamd at info level), runs `measure`
/// on it, tears it down and appends whether any of its namespaces survived the teardown.
pub fn on_spanning_lab(
    racks: usize,
    nodes_per_rack: usize,
    measure: impl FnOnce(&Lab) -> Result<String>,
) -> Result<String> {
    let lab = Lab::builder()
        .racks(racks)
        .nodes_per_rack(nodes_per_rack)
        .network_mode(crate::LabNetworkMode::Spanning)
        .log_level("info")
        .build()?;
    let id = lab.id().to_owned();
    let out = measure(&lab);
    drop(lab);
    let mut md = out?;
    let left = leftover_netns(&id);
    let _ = writeln!(
        md,
        "\nNamespaces of this lab left after teardown: {}.",
        if left.is_empty() {
            "none".to_owned()
        } else {
            left.join(" ")
        }
    );
    Ok(md)
}

pub fn leftover_netns(id: &str) -> Vec<String> {
    let prefix = format!("{id}-");
    let mut left: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    left.sort();
    left
}

/// Appends `section` to the report file (creating its directory).
pub fn append_report(path: &Path, section: &str) -> Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(section.as_bytes())?;
    if !section.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    f.write_all(b"\n")?;
    Ok(())
}

/// stdout of a successful command, as is.
fn command_raw(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// stdout of a successful command, trimmed.
fn command_line(program: &str, args: &[&str]) -> Option<String> {
    command_raw(program, args).map(|s| s.trim().to_owned())
}

/// What must be recorded with every result (docs/benchmarks.md, "Conditions").
#[derive(Clone, Debug)]
pub struct Conditions {
    pub date_utc: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub commit: String,
    pub etcd: String,
    /// `/proc/loadavg` when the scenario started: a busy machine shows here.
    pub loadavg: String,
    pub bin_dir: PathBuf,
}

impl Conditions {
    pub fn gather() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown".into());
        let commit = match command_line("git", &["rev-parse", "--short=12", "HEAD"]) {
            Some(c) => {
                let dirty: Vec<String> =
                    command_raw("git", &["status", "--porcelain", "--untracked-files=no"])
                        .unwrap_or_default()
                        .lines()
                        .filter_map(|l| l.get(3..).map(str::to_owned))
                        .collect();
                if dirty.is_empty() {
                    c
                } else {
                    format!("{c} + uncommitted changes in {}", dirty.join(", "))
                }
            }
            None => "unknown (not run from the repository)".into(),
        };
        let etcd = command_line("/usr/bin/etcd", &["--version"])
            .and_then(|v| v.lines().next().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into());
        Self {
            date_utc: command_line("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"])
                .unwrap_or_else(|| "unknown".into()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            commit,
            etcd,
            loadavg: read("/proc/loadavg")
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            bin_dir: bin_dir().unwrap_or_default(),
        }
    }

    /// `name sha256:<12 hex> built <mtime>` for each measured binary: the commit says what the
    /// tree was, this says what actually ran.
    fn binaries(&self) -> String {
        ["rackline", "rackline-ipamd", "rackline-netmaster"]
            .iter()
            .map(|name| {
                let path = self.bin_dir.join(name);
                let sha = command_line("sha256sum", &[&path.to_string_lossy()])
                    .and_then(|o| o.get(..12).map(str::to_owned))
                    .unwrap_or_else(|| "?".into());
                let built = command_line(
                    "date",
                    &["-u", "-r", &path.to_string_lossy(), "+%Y-%m-%d %H:%M:%S"],
                )
                .unwrap_or_else(|| "?".into());
                format!("`{name}` sha256:{sha} built {built}")
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A bullet list for the top of a section.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "- date: {}", self.date_utc);
        let _ = writeln!(
            s,
            "- machine: {} CPUs ({}), kernel {}",
            self.cpus, self.cpu_model, self.kernel
        );
        let _ = writeln!(s, "- commit: {}", self.commit);
        let _ = writeln!(s, "- {}", self.etcd);
        let _ = writeln!(
            s,
            "- binaries: {} ({})",
            self.bin_dir.display(),
            self.binaries()
        );
        let _ = writeln!(s, "- load average at start (1/5/15 min): {}", self.loadavg);
        s
    }
}

/// Programs whose presence means the machine was not quiet (other people's builds).
const NOISY: &[&str] = &[
    "rustc",
    "cargo",
    "cc1",
    "cc1plus",
    "ld",
    "go",
    "clippy-driver",
];

/// Watches the machine once a second while a scenario runs: other builds, load average.
pub struct QuietMonitor {
    stop: std::sync::Arc<AtomicBool>,
    handle: std::thread::JoinHandle<Noise>,
}

/// What [`QuietMonitor`] saw.
#[derive(Clone, Debug, Default)]
pub struct Noise {
    pub samples: usize,
    /// Samples during which a compiler/build process (of anyone) was running.
    pub busy_samples: usize,
    /// Names seen in those samples.
    pub seen: BTreeSet<String>,
    pub max_load1: f64,
    /// Share of CPU time the hypervisor stole during the run (`/proc/stat`), in percent.
    pub steal_pct: Option<f64>,
}

/// `(total, steal)` jiffies of the aggregate `cpu` line of `/proc/stat`.
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total = v.iter().take(8).sum();
    Some((total, *v.get(7)?))
}

impl QuietMonitor {
    pub fn start() -> Self {
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut noise = Noise::default();
            let first = cpu_times();
            while !flag.load(Ordering::Relaxed) {
                noise.samples += 1;
                let names: BTreeSet<String> = std::fs::read_dir("/proc")
                    .into_iter()
                    .flatten()
                    .filter_map(|e| e.ok())
                    .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
                    .map(|c| c.trim().to_owned())
                    .filter(|c| NOISY.contains(&c.as_str()))
                    .collect();
                if !names.is_empty() {
                    noise.busy_samples += 1;
                    noise.seen.extend(names);
                }
                let load1 = std::fs::read_to_string("/proc/loadavg")
                    .ok()
                    .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
                    .unwrap_or(0.0);
                noise.max_load1 = noise.max_load1.max(load1);
                std::thread::sleep(Duration::from_secs(1));
            }
            if let (Some((t0, s0)), Some((t1, s1))) = (first, cpu_times()) {
                if t1 > t0 {
                    noise.steal_pct = Some(100.0 * (s1 - s0) as f64 / (t1 - t0) as f64);
                }
            }
            noise
        });
        Self { stop, handle }
    }

    pub fn finish(self) -> Noise {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap_or_default()
    }
}

impl Noise {
    /// One bullet for the conditions list.
    pub fn markdown(&self) -> String {
        let steal = self.steal_pct.map_or(String::new(), |p| {
            format!("- CPU time stolen by the hypervisor during the run: {p:.1} %\n")
        });
        steal + &self.quiet_markdown()
    }

    fn quiet_markdown(&self) -> String {
        if self.busy_samples == 0 {
            format!(
                "- quiet: no build process (rustc, cargo, cc, ld, go) seen in {} one-second \
                 samples during the run; highest 1-min load average {:.2} (includes the bench's own \
                 processes)\n",
                self.samples, self.max_load1
            )
        } else {
            format!(
                "- NOT QUIET: build processes ({}) ran during {} of {} one-second samples; \
                 highest 1-min load average {:.2}. Treat these numbers as pessimistic.\n",
                self.seen.iter().cloned().collect::<Vec<_>>().join(", "),
                self.busy_samples,
                self.samples,
                self.max_load1
            )
        }
    }
}

/// `12.34` ms formatting used by every table.
pub fn ms(v: f64) -> String {
    format!("{v:.2}")
}
