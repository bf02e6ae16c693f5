//! `rackline-bench`: Rackline's end-to-end benchmarks on the netns lab (docs/benchmarks.md).
//! Each subcommand builds its own labs, prints a Markdown section and appends it to `--report`.
//!
//! ```sh
//! cargo build --release --workspace --bins
//! target/release/rackline-bench adds         # 1000 concurrent ADDs at 1:1 capacity
//! target/release/rackline-bench latency      # ADD/DEL vs macvlan + host-local
//! target/release/rackline-bench throughput   # iperf3 pod ↔ pod vs node ↔ node
//! target/release/rackline-bench qos          # shaping accuracy; unshaped pods vs nodes
//! target/release/rackline-bench probe        # ADD with the ARP probe on vs off
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
    /// ADD/DEL latency of rackline vs the reference macvlan + host-local, same node.
    Latency(LatencyArgs),
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
