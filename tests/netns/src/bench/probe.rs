//! What the duplicate-address probe costs an ADD: the same plugin, node and lab, two
//! networks that differ only in `probe` (off vs the defaults, 3 × 100 ms), samples interleaved.
//!
//! Each sample starts from a fresh, empty pod namespace; only the ADD is timed (the DEL and the
//! namespace removal after it are not).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::json;

use super::exec::{run_timed, Timed};
use super::stats::Summary;
use super::{check_interrupted, ms, rackline_invocation};
use crate::{Cmd, Lab};

const TIMEOUT: Duration = Duration::from_secs(30);
/// Default probe budget: 3 probes × 100 ms (crates/model/src/probe.rs).
const BUDGET_MS: f64 = 300.0;

#[derive(Clone, Debug)]
pub struct ProbeBenchConfig {
    /// Measured ADDs per series.
    pub runs: usize,
    /// Dropped warm-up ADDs per series.
    pub warmup: usize,
}

/// (network, racklinectl flags) of the two series; /24s next to `prod` on the same segment.
const SERIES: [(&str, &str, &[&str]); 2] = [
    ("probe off", "bench-off", &[]),
    ("probe on (3 × 100 ms)", "bench-on", &["--probe"]),
];

fn sample(lab: &Lab, network: &str) -> Result<Duration> {
    let pod = lab.add_pod(1, "probe-bench")?;
    let extra = [("network", json!(network))];
    let add = run_timed(&rackline_invocation(lab, Cmd::Add, &pod, &extra)?, TIMEOUT);
    let prev = add.as_ref().ok().and_then(Timed::json);
    let mut del_extra = extra.to_vec();
    if let Some(p) = prev {
        del_extra.push(("prevResult", p));
    }
    let del = run_timed(
        &rackline_invocation(lab, Cmd::Del, &pod, &del_extra)?,
        TIMEOUT,
    );
    lab.delete_pod_netns(&pod)?;
    let add = add?;
    anyhow::ensure!(add.success(), "ADD failed: {}", add.stdout.trim());
    let del = del?;
    anyhow::ensure!(del.success(), "DEL failed: {}", del.stdout.trim());
    Ok(add.elapsed)
}

pub fn run(cfg: &ProbeBenchConfig) -> Result<String> {
    // One node, no standby reserve: nothing else allocates while the samples run.
    let lab = Lab::builder()
        .nodes(1)
        .standby(0)
        .log_level("info")
        .build()?;
    for (i, (_, net, flags)) in SERIES.iter().enumerate() {
        let c = 6 + i;
        let subnet = format!("10.10.{c}.0/24");
        let gateway = format!("10.10.{c}.1");
        let exclude = format!("10.10.{c}.2-10.10.{c}.63");
        let mut args = vec![
            "network",
            "create",
            net,
            "--subnet",
            &subnet,
            "--gateway",
            &gateway,
            "--master",
            crate::UPLINK,
            "--exclude",
            &exclude,
        ];
        args.extend_from_slice(flags);
        lab.racklinectl(&args)
            .with_context(|| format!("creating network {net}"))?;
    }
    let mut samples: [Vec<Duration>; 2] = Default::default();
    let mut failures: Vec<String> = Vec::new();
    let total = cfg.warmup + cfg.runs;
    for i in 0..total {
        check_interrupted()?;
        if i % 20 == 0 {
            eprintln!("probe: sample {i}/{total}…");
        }
        // Alternate which series goes first, so slow drifts of the machine hit both alike.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for j in order {
            match sample(&lab, SERIES[j].1) {
                Ok(d) if i >= cfg.warmup => samples[j].push(d),
                Ok(_) => {}
                Err(e) => failures.push(format!("{}: {e:#}", SERIES[j].0)),
            }
        }
    }
    let leases = lab.leases()?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Lab: one rack, one node (`n1`), ipamd `--standby 0`; two networks on the rack's L2 \
         segment that differ only in the probe. The release `rackline` plugin from the node's \
         namespace, timed from fork to exit, each ADD into a fresh empty pod namespace (DEL and \
         namespace removal untimed). n = {} per series after {} dropped warm-up samples, series \
         interleaved.\n",
        cfg.runs, cfg.warmup
    );
    let _ = writeln!(
        md,
        "| series | n | median (ms) | p99 (ms) | min / max (ms) |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    let sums: Vec<Option<Summary>> = samples.iter().map(|s| Summary::of(s)).collect();
    for ((name, _, _), s) in SERIES.iter().zip(&sums) {
        match s {
            Some(s) => {
                let _ = writeln!(
                    md,
                    "| {name} | {} | {} | {} | {} / {} |",
                    s.n,
                    ms(s.median),
                    ms(s.p99),
                    ms(s.min),
                    ms(s.max)
                );
            }
            None => {
                let _ = writeln!(md, "| {name} | 0 | no samples | | |");
            }
        }
    }
    if let (Some(off), Some(on)) = (sums[0], sums[1]) {
        let cost = on.median - off.median;
        let _ = writeln!(
            md,
            "\nProbe cost (median on − median off): {} ms for a budget of {} ms (count × \
             interval); {}.",
            ms(cost),
            ms(BUDGET_MS),
            if cost <= BUDGET_MS + 50.0 {
                "within budget + 50 ms"
            } else {
                "OVER budget + 50 ms"
            }
        );
    }
    if !failures.is_empty() {
        let _ = writeln!(md, "\nFailures ({}); first:", failures.len());
        for f in failures.iter().take(5) {
            let line: String = f.chars().take(300).collect();
            let _ = writeln!(md, "- `{}`", line.replace('`', "'"));
        }
    }
    let _ = writeln!(md, "\nPod leases left after all samples: {}.", leases.len());
    Ok(md)
}
