//! `rackline-bench`: Rackline's end-to-end benchmarks on the netns lab (docs/benchmarks.md).
//! Each subcommand builds its own labs, prints a Markdown section and appends it to `--report`.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/rackline-bench adds         # 1000 concurrent ADDs at 1:1 capacity
//! target/release/rackline-bench latency      # ADD/DEL vs macvlan + host-local, floor, steps
//! target/release/rackline-bench churn        # ADD+DEL cycles/s, 16 callers, vs the reference
//! target/release/rackline-bench throughput   # iperf3 pod ↔ pod vs node ↔ node
//! target/release/rackline-bench qos          # shaping accuracy; unshaped pods vs nodes
//! target/release/rackline-bench probe        # ADD with the ARP probe on vs off
//! target/release/rackline-bench ipam         # allocations/s, group commit on vs off
//! target/release/rackline-bench ctlplane     # 100 ipamds, 10 000 pods, 100 000 leases
//! ```
//! Run it from target/release so that the lab uses the release binaries next to it (or set
//! RACKLINE_BIN_DIR). Needs root; SIGINT/SIGTERM tear the current lab down before exiting.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::Result;
use clap::{Args as ClapArgs, Parser, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use rackline_lab::bench::adds::AddsConfig;
use rackline_lab::bench::latency::LatencyConfig;
use rackline_lab::bench::probe::ProbeBenchConfig;
use rackline_lab::bench::qos::QosConfig;
use rackline_lab::bench::throughput::ThroughputConfig;
use rackline_lab::bench::{self, append_report, Conditions, QuietMonitor, INTERRUPTED};

#[derive(Parser)]
#[command(about = "Rackline benchmarks on the netns lab; Markdown sections appended to --report")]
struct Cli {
    /// The Markdown file each section is appended to.
    #[arg(long, global = true, default_value = "target/bench/report.md")]
    report: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Concurrent ADDs over 2 racks at 1:1 capacity (target: 1000 ADDs < 20 s, 0 failures).
    Adds(AddsArgs),
    /// ADD/DEL latency of rackline vs the reference macvlan + host-local and the iproute2
    /// floor, same node, with the plugin's per-step breakdown.
    Latency(LatencyArgs),
    /// Sustained ADD+DEL cycles per second on one node, concurrent callers, Rackline vs the
    /// reference in alternating phases.
    Churn(ChurnArgs),
    /// iperf3 throughput pod → pod (same rack, across racks) vs node → node.
    Throughput(ThroughputArgs),
    /// Re-creating sticky pods on other nodes of their rack (target: 1000 < 20 s, every
    /// address preserved).
    Sticky(StickyArgs),
    /// Per-pod QoS: measured vs configured rate, egress and ingress; unshaped pods vs nodes.
    Qos(QosArgs),
    /// ADD latency with the duplicate-address probe on (3 × 100 ms) vs off.
    Probe(ProbeArgs),
    /// Chaos soak: 3-member etcd, 2 netmasters, 2 racks of ipamds, ADD/DEL churn of sticky and
    /// non-sticky pods under injected faults; fails unless duplicates, invariant violations,
    /// leaks and lost sticky addresses are all 0.
    Soak(SoakArgs),
    /// Durable allocations/s through ipamd's socket (no datapath): one ipamd and four in four
    /// racks, each --group-commit setting a series in the same run (target: ≥ 10 000/s through
    /// one, ≥ 20 000/s across four).
    Ipam(IpamArgs),
    /// 100 ipamds in 4 racks (no datapath): 10 000 pods at 1:1 capacity (target < 10 s, 0
    /// failures, 0 duplicates); an ipamd restart against 100 000 leases (ready < 2 s, RSS < 100
    /// MB); racklinectl pool, node list, lease list --node against them (< 1 s each).
    Ctlplane(CtlplaneArgs),
}

#[derive(ClapArgs)]
struct IpamArgs {
    /// Allocations per ipamd per series.
    #[arg(long, default_value_t = 20000)]
    allocations: usize,
    /// Concurrent callers per ipamd.
    #[arg(long, default_value_t = 64)]
    callers: usize,
    /// Rounds of all series, interleaved.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// ipamd --group-commit values, one series each (1 = a transaction per lease).
    #[arg(long, value_delimiter = ',', default_value = "1,32")]
    group_commit: Vec<usize>,
    /// Numbers of ipamds (each in a rack of its own), one scenario each.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    ipamds: Vec<usize>,
}

#[derive(ClapArgs)]
struct CtlplaneArgs {
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    #[arg(long, default_value_t = 4)]
    racks: usize,
    /// Pods per node, also each node's addresses (1:1 capacity).
    #[arg(long, default_value_t = 100)]
    pods_per_node: usize,
    /// Concurrent callers over all ipamds.
    #[arg(long, default_value_t = 256)]
    callers: usize,
    /// Leases in etcd for the restart and the admin views.
    #[arg(long, default_value_t = 100000)]
    leases: usize,
    #[arg(long, default_value_t = 3)]
    restarts: usize,
    /// Runs of each racklinectl view.
    #[arg(long, default_value_t = 3)]
    cli_runs: usize,
}

#[derive(ClapArgs)]
struct SoakArgs {
    /// Seconds of churn under faults.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Seed of every random choice (replayable runs).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 3)]
    nodes_per_rack: usize,
    /// Pods each node's churn worker keeps around.
    #[arg(long, default_value_t = 6)]
    pods_per_node: usize,
    /// Sticky identities per rack.
    #[arg(long, default_value_t = 6)]
    sticky_per_rack: usize,
    /// Seconds between faults, "MIN,MAX".
    #[arg(long, value_delimiter = ',', default_value = "2,5")]
    fault_gap: Vec<u64>,
    /// Allocate/Release loops per node straight on ipamd's socket (volume).
    #[arg(long, default_value_t = 8)]
    ipam_workers_per_node: usize,
    /// The ipamds' --reconcile-grace-secs: how long after the harness let go of a sandbox its
    /// leftovers are reclaimed (the reconcilers pass every second).
    #[arg(long, default_value_t = 5)]
    reconcile_grace_secs: u64,
}

#[derive(ClapArgs)]
struct ProbeArgs {
    /// Measured ADDs per series.
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Dropped warm-up ADDs per series.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
}

#[derive(ClapArgs)]
struct StickyArgs {
    /// Fresh labs.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 2)]
    racks: usize,
    #[arg(long, default_value_t = 5)]
    nodes_per_rack: usize,
    #[arg(long, default_value_t = 20)]
    pods_per_node: usize,
    /// Concurrent plugin executions.
    #[arg(long, default_value_t = 64)]
    workers: usize,
}

#[derive(ClapArgs)]
struct QosArgs {
    /// iperf3 measured seconds per run (after --omit).
    #[arg(long, default_value_t = 5)]
    seconds: u32,
    /// iperf3 -O: leading seconds not counted.
    #[arg(long, default_value_t = 1)]
    omit: u32,
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Shaped rates, Mbit/s.
    #[arg(long, value_delimiter = ',', default_value = "10,50,200,1000")]
    rates: Vec<u64>,
}

#[derive(ClapArgs)]
struct AddsArgs {
    /// Fresh labs per standby setting.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    #[arg(long, default_value_t = 2)]
    racks: usize,
    #[arg(long, default_value_t = 5)]
    nodes_per_rack: usize,
    /// Pods per node; each rack's range is sized to exactly nodes × pods (1:1 capacity).
    #[arg(long, default_value_t = 20)]
    pods_per_node: usize,
    /// Concurrent plugin executions.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    #[arg(long, default_value_t = 16)]
    block_size: u32,
    /// ipamd --standby values, one series each (4 is ipamd's default).
    #[arg(long, value_delimiter = ',', default_value = "4,0")]
    standby: Vec<usize>,
}

#[derive(ClapArgs)]
struct LatencyArgs {
    /// Measured samples per plugin and verb.
    #[arg(long, default_value_t = 100)]
    runs: usize,
    /// Dropped warm-up samples per plugin and verb.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    #[arg(long, default_value_t = 2)]
    racks: usize,
    #[arg(long, default_value_t = 2)]
    nodes_per_rack: usize,
}

#[derive(ClapArgs)]
struct ChurnArgs {
    /// Seconds per phase.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// Concurrent callers.
    #[arg(long, default_value_t = 16)]
    callers: usize,
    /// Phases per plugin, alternating.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(long, default_value_t = 2)]
    racks: usize,
    #[arg(long, default_value_t = 2)]
    nodes_per_rack: usize,
}

#[derive(ClapArgs)]
struct ThroughputArgs {
    /// iperf3 duration per measurement.
    #[arg(long, default_value_t = 10)]
    seconds: u32,
    /// Measurements per path and kind.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rackline-bench: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Blocks SIGINT/SIGTERM in every thread and waits for them on one, so that an interrupt ends
/// in the labs' orderly teardown (children get a cleared mask between fork and exec).
fn catch_signals() -> Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\nrackline-bench: {sig}, finishing the current step and tearing down…");
        }
    });
    Ok(())
}

fn run(cli: &Cli) -> Result<()> {
    rackline_lab::check_root()?;
    catch_signals()?;
    let conditions = Conditions::gather();
    let monitor = QuietMonitor::start();
    let (title, body) = match &cli.command {
        Command::Adds(a) => (
            "adds: concurrent ADDs at 1:1 capacity",
            bench::adds::run(&AddsConfig {
                runs: a.runs,
                racks: a.racks,
                nodes_per_rack: a.nodes_per_rack,
                pods_per_node: a.pods_per_node,
                workers: a.workers,
                block_size: a.block_size,
                standby: a.standby.clone(),
            })?,
        ),
        Command::Latency(a) => (
            "latency: ADD/DEL of Rackline vs macvlan + host-local",
            bench::latency::run(&LatencyConfig {
                runs: a.runs,
                warmup: a.warmup,
                racks: a.racks,
                nodes_per_rack: a.nodes_per_rack,
            })?,
        ),
        Command::Churn(a) => (
            "churn: ADD+DEL cycles per second on one node, Rackline vs macvlan + host-local",
            bench::churn::run(&bench::churn::ChurnConfig {
                seconds: a.seconds,
                callers: a.callers,
                rounds: a.rounds,
                racks: a.racks,
                nodes_per_rack: a.nodes_per_rack,
            })?,
        ),
        Command::Probe(a) => (
            "probe: ADD with the duplicate-address probe on vs off",
            bench::probe::run(&ProbeBenchConfig {
                runs: a.runs,
                warmup: a.warmup,
            })?,
        ),
        Command::Sticky(a) => (
            "sticky: re-creating sticky pods on other nodes of their rack",
            bench::sticky::run(&bench::sticky::StickyConfig {
                runs: a.runs,
                racks: a.racks,
                nodes_per_rack: a.nodes_per_rack,
                pods_per_node: a.pods_per_node,
                workers: a.workers,
            })?,
        ),
        Command::Throughput(a) => (
            "throughput: pod → pod vs node → node (iperf3)",
            bench::throughput::run(&ThroughputConfig {
                seconds: a.seconds,
                repeats: a.repeats,
            })?,
        ),
        Command::Qos(a) => (
            "qos: per-pod shaping accuracy; unshaped pods vs nodes (iperf3)",
            bench::qos::run(&QosConfig {
                seconds: a.seconds,
                omit: a.omit,
                repeats: a.repeats,
                rates: a.rates.clone(),
            })?,
        ),
        Command::Ipam(a) => (
            "ipam: durable allocations/s through ipamd's socket, group commit on vs off",
            bench::ctlplane::run_ipam(&bench::ctlplane::IpamConfig {
                allocations: a.allocations,
                callers: a.callers,
                repeats: a.repeats,
                group_commit: a.group_commit.clone(),
                ipamds: a.ipamds.clone(),
            })?,
        ),
        Command::Ctlplane(a) => (
            "ctlplane: 100 ipamds, 10 000 pods, restart and admin views against 100 000 leases",
            bench::ctlplane::run_ctlplane(&bench::ctlplane::CtlPlaneConfig {
                nodes: a.nodes,
                racks: a.racks,
                pods_per_node: a.pods_per_node,
                callers: a.callers,
                leases: a.leases,
                restarts: a.restarts,
                cli_runs: a.cli_runs,
            })?,
        ),
        Command::Soak(a) => {
            let report = bench::soak::run(&bench::soak::SoakOptions {
                duration: std::time::Duration::from_secs(a.seconds),
                seed: a.seed,
                nodes_per_rack: a.nodes_per_rack,
                pods_per_node: a.pods_per_node,
                sticky_per_rack: a.sticky_per_rack,
                fault_gap_secs: (
                    a.fault_gap.first().copied().unwrap_or(2),
                    a.fault_gap.get(1).copied().unwrap_or(5),
                ),
                ipam_workers_per_node: a.ipam_workers_per_node,
                reconcile_grace_secs: a.reconcile_grace_secs,
            })?;
            if !report.clean() {
                eprintln!("{}", report.markdown());
                anyhow::bail!(
                    "the soak found duplicates, violations, leaks or lost sticky addresses"
                );
            }
            ("soak: churn under injected faults", report.markdown())
        }
    };
    let noise = monitor.finish();
    let section = format!(
        "### {title}\n\n{}{}- command: `rackline-bench {}`\n\n{body}",
        conditions.markdown(),
        noise.markdown(),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    println!("{section}");
    append_report(&cli.report, &section)?;
    eprintln!("appended to {}", cli.report.display());
    Ok(())
}
