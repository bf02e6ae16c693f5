//! Smoke runs of the bench subcommands at tiny sizes, so they keep working. Control plane
//! (`rackline-bench ipam` and `rackline-bench ctlplane` run them at full size): real ipamds, a
//! real etcd and netmaster, every answer checked against etcd. Plugin timing (`latency` with its
//! floor and per-step breakdown, `churn`, `adds`, `sticky`, `probe`): every series produced
//! samples without failures. Data path (`throughput`, `qos`): iperf3 measured every row. No
//! timing is asserted. `soak` has its own short run (tests/soak.rs).
//!
//! Needs `cargo build --workspace --bins` first (the bench runs the binaries of this profile).

use anyhow::{ensure, Result};
use rackline_lab::bench::adds::{self, AddsConfig};
use rackline_lab::bench::churn::{self, ChurnConfig};
use rackline_lab::bench::ctlplane::{run_ctlplane, run_ipam, CtlPlaneConfig, IpamConfig};
use rackline_lab::bench::latency::{self, LatencyConfig};
use rackline_lab::bench::probe::{self, ProbeBenchConfig};
use rackline_lab::bench::qos::{self, QosConfig};
use rackline_lab::bench::sticky::{self, StickyConfig};
use rackline_lab::bench::throughput::{self, ThroughputConfig};

#[test]
fn ipam_bench_runs_both_group_commit_settings_without_duplicates() -> Result<()> {
    let md = run_ipam(&IpamConfig {
        allocations: 200,
        callers: 8,
        repeats: 1,
        group_commit: vec![1, 32],
        ipamds: vec![1, 2],
    })?;
    eprintln!("{md}");
    for row in ["| 1 | 1 |", "| 1 | 32 |", "| 2 | 1 |", "| 2 | 32 |"] {
        ensure!(md.contains(row), "no series {row}");
    }
    // Every series: no failure, no duplicate (run_ipam itself fails on duplicates).
    ensure!(
        md.lines()
            .filter(|l| l.starts_with("| 1 |") || l.starts_with("| 2 |"))
            .all(|l| l.ends_with("| 0 | 0 |")),
        "failures in:\n{md}"
    );
    Ok(())
}

#[test]
fn ctlplane_bench_places_restarts_and_lists_at_tiny_size() -> Result<()> {
    let md = run_ctlplane(&CtlPlaneConfig {
        nodes: 4,
        racks: 2,
        pods_per_node: 10,
        callers: 8,
        leases: 200,
        restarts: 1,
        cli_runs: 1,
    })?;
    eprintln!("{md}");
    ensure!(
        md.contains("40 placed, failures 0, duplicates 0"),
        "placement:\n{md}"
    );
    ensure!(md.contains("ready (/readyz 200) after"), "restart:\n{md}");
    for view in ["pool`", "node list`", "lease list --node`"] {
        let row = md
            .lines()
            .find(|l| l.contains(view))
            .unwrap_or_default()
            .to_owned();
        ensure!(row.contains("; ok ("), "{view}: {row}");
    }
    Ok(())
}

#[test]
fn latency_bench_prints_every_series() -> Result<()> {
    let md = latency::run(&LatencyConfig {
        runs: 2,
        warmup: 0,
        racks: 1,
        nodes_per_rack: 1,
    })?;
    for needle in [
        "| ADD |",
        "| DEL |",
        "Floor (`ip -batch`",
        "Rackline ADD / floor:",
        "| ADD step |",
        "| ipamd_allocate |",
        "| macvlan_create |",
        "| veth_create |",
        "| process start (fork → main) |",
        "| DEL step |",
        "| ↳ teardown / links_delete |",
        // Overlapped with the link removal, so the breakdown nests it under whichever step
        // was open when it started: either row form counts.
        "ipamd_release |",
        "node links unchanged",
        "Rackline pod leases left: 0",
    ] {
        ensure!(md.contains(needle), "no {needle:?} in:\n{md}");
    }
    ensure!(!md.contains("Failures ("), "failures in:\n{md}");
    Ok(())
}

#[test]
fn churn_bench_runs_both_plugins() -> Result<()> {
    let md = churn::run(&ChurnConfig {
        seconds: 1.0,
        callers: 2,
        rounds: 1,
        racks: 1,
        nodes_per_rack: 1,
    })?;
    for needle in ["| Rackline |", "| reference |", "node links unchanged"] {
        ensure!(md.contains(needle), "no {needle:?} in:\n{md}");
    }
    ensure!(!md.contains("Failures ("), "failures in:\n{md}");
    Ok(())
}

#[test]
fn adds_bench_places_every_pod_at_capacity() -> Result<()> {
    let cfg = AddsConfig {
        runs: 1,
        racks: 2,
        nodes_per_rack: 2,
        pods_per_node: 4,
        workers: 4,
        block_size: 4,
        standby: vec![0],
    };
    let md = adds::run(&cfg)?;
    eprintln!("{md}");
    let want = format!("{} successful ADDs in", cfg.pods_per_run());
    ensure!(md.contains(&want), "not every ADD succeeded:\n{md}");
    ensure!(!md.contains("run failed"), "a run failed:\n{md}");
    Ok(())
}

#[test]
fn sticky_bench_preserves_every_address() -> Result<()> {
    let md = sticky::run(&StickyConfig {
        runs: 1,
        racks: 2,
        nodes_per_rack: 2,
        pods_per_node: 2,
        workers: 4,
    })?;
    eprintln!("{md}");
    ensure!(
        md.contains("8/8 addresses preserved, 0 failures"),
        "re-creation:\n{md}"
    );
    Ok(())
}

#[test]
fn probe_bench_measures_both_series() -> Result<()> {
    let md = probe::run(&ProbeBenchConfig { runs: 2, warmup: 0 })?;
    eprintln!("{md}");
    for needle in [
        "| probe off | 2 |",
        "| probe on (3 × 100 ms) | 2 |",
        "Probe cost",
    ] {
        ensure!(md.contains(needle), "no {needle:?} in:\n{md}");
    }
    ensure!(!md.contains("Failures ("), "failures in:\n{md}");
    ensure!(
        md.contains("Pod leases left after all samples: 0."),
        "leases left:\n{md}"
    );
    Ok(())
}

#[test]
fn throughput_bench_measures_both_paths() -> Result<()> {
    let md = throughput::run(&ThroughputConfig {
        seconds: 1,
        repeats: 1,
    })?;
    eprintln!("{md}");
    ensure!(
        !md.contains("FAILED") && !md.contains("not measured"),
        "an iperf3 run failed:\n{md}"
    );
    ensure!(
        md.lines().filter(|l| l.contains(" / pod on ")).count() >= 2,
        "paths missing:\n{md}"
    );
    Ok(())
}

#[test]
fn qos_bench_measures_both_directions() -> Result<()> {
    let md = qos::run(&QosConfig {
        seconds: 1,
        omit: 0,
        repeats: 1,
        rates: vec![50],
    })?;
    eprintln!("{md}");
    for needle in ["| 50 Mbit/s | egress |", "| 50 Mbit/s | ingress |"] {
        let row = md.lines().find(|l| l.starts_with(needle));
        ensure!(
            row.is_some_and(|r| !r.contains("NaN")),
            "no measured {needle:?} in:\n{md}"
        );
    }
    Ok(())
}
