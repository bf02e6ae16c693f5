//! The sticky-pod figure: re-creating sticky pods across the nodes of two racks, every address
//! preserved. A lab rack range holds at most 191 addresses, so 1000 re-creations are made of
//! `runs` fresh labs × (racks × nodes × pods) (default 5 × 2 × 5 × 20), like [`super::adds`].
//!
//! Per run: create every pod (concurrently, untimed), DEL them all (concurrently, untimed; the
//! leases become reservations), then re-create each pod under the same name on ANOTHER node of
//! its rack, concurrently: that storm is the measured wall time. Checked: every pod got its old
//! address back, no failure, the invariant checker is clean.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};

use super::exec::run_timed;
use super::stats::Summary;
use super::{check_interrupted, leftover_netns, ms, rackline_invocation, wait_for_blocks};
use crate::{result_ipv4, Cmd, Lab, LabNetworkMode, Pod};

const CALL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct StickyConfig {
    pub runs: usize,
    pub racks: usize,
    pub nodes_per_rack: usize,
    pub pods_per_node: usize,
    pub workers: usize,
}

/// One plugin call's outcome: the ADD's address (None for DEL), or why it failed.
type CallResult = Result<Option<Ipv4Addr>, String>;

/// Runs `verb` for every pod through `workers` threads; the wall time and, per pod, the
/// address (ADD) or an error.
fn storm(
    lab: &Lab,
    verb: Cmd,
    pods: &[Pod],
    workers: usize,
) -> Result<(Duration, Vec<Duration>, Vec<CallResult>)> {
    let invs = pods
        .iter()
        .map(|p| rackline_invocation(lab, verb, p, &[]))
        .collect::<Result<Vec<_>>>()?;
    let next = AtomicUsize::new(0);
    let t0 = Instant::now();
    let parts: Vec<Vec<(usize, Duration, CallResult)>> = thread::scope(|s| {
        let handles: Vec<_> = (0..workers.clamp(1, invs.len().max(1)))
            .map(|_| {
                let (invs, next) = (&invs, &next);
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(inv) = invs.get(i) else { break };
                        let started = Instant::now();
                        let r = match run_timed(inv, CALL_TIMEOUT) {
                            Ok(t) if t.success() => match t.json() {
                                Some(doc) => result_ipv4(&doc)
                                    .map(|c| Some(c.addr))
                                    .map_err(|e| e.to_string()),
                                None => Ok(None),
                            },
                            Ok(t) => Err(format!("{}: {}", t.failure_class(), t.stdout)),
                            Err(e) => Err(e.to_string()),
                        };
                        mine.push((i, started.elapsed(), r));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("storm worker"))
            .collect()
    });
    let wall = t0.elapsed();
    let mut all: Vec<_> = parts.into_iter().flatten().collect();
    all.sort_by_key(|(i, _, _)| *i);
    let lat = all.iter().map(|(_, d, _)| *d).collect();
    Ok((wall, lat, all.into_iter().map(|(_, _, r)| r).collect()))
}

struct RunResult {
    pods: usize,
    wall: Duration,
    latencies: Vec<Duration>,
    preserved: usize,
    failures: Vec<String>,
    invariants: String,
    leftover: Vec<String>,
}

fn one_run(cfg: &StickyConfig) -> Result<RunResult> {
    let lab = Lab::builder()
        .racks(cfg.racks)
        .nodes_per_rack(cfg.nodes_per_rack)
        .network_mode(LabNetworkMode::Spanning)
        .network_args(&["--sticky"])
        .log_level("info")
        .build()?;
    let id = lab.id().to_owned();
    let res = (|| -> Result<RunResult> {
        wait_for_blocks(&lab, Duration::from_secs(30))?;
        let mut pods = Vec::new();
        for r in 1..=cfg.racks {
            for k in 1..=cfg.nodes_per_rack {
                for p in 0..cfg.pods_per_node {
                    let node = lab.rack_node(r, k).index();
                    pods.push(lab.add_pod(node, &format!("sts-r{r}-{k}-{p}"))?);
                }
            }
        }
        let (_, _, first) = storm(&lab, Cmd::Add, &pods, cfg.workers)?;
        let mut before = BTreeMap::new();
        for (pod, r) in pods.iter().zip(first) {
            match r {
                Ok(Some(a)) => {
                    before.insert(pod.name.clone(), a);
                }
                other => bail!("initial ADD of {} failed: {other:?}", pod.name),
            }
        }
        let (_, _, dels) = storm(&lab, Cmd::Del, &pods, cfg.workers)?;
        ensure!(dels.iter().all(Result::is_ok), "a DEL failed: {dels:?}");
        for p in &pods {
            lab.delete_pod_netns(p)?;
        }
        check_interrupted()?;
        // The same names on the next node of the same rack.
        let mut again = Vec::new();
        for p in &pods {
            let n = lab.node(p.node);
            let (r, k) = (n.rack(), n.position());
            let other = lab.rack_node(r, k % cfg.nodes_per_rack + 1).index();
            again.push(lab.add_pod(other, &p.name)?);
        }
        let (wall, latencies, second) = storm(&lab, Cmd::Add, &again, cfg.workers)?;
        let mut preserved = 0;
        let mut failures = Vec::new();
        for (pod, r) in again.iter().zip(second) {
            match r {
                Ok(Some(a)) if a == before[&pod.name] => preserved += 1,
                Ok(a) => failures.push(format!(
                    "{}: got {a:?}, had {}",
                    pod.name, before[&pod.name]
                )),
                Err(e) => failures.push(format!("{}: {e}", pod.name)),
            }
        }
        let report = lab.check_invariants()?;
        if !report.ok() {
            failures.push(format!("invariants: {report}"));
        }
        Ok(RunResult {
            pods: again.len(),
            wall,
            latencies,
            preserved,
            failures,
            invariants: report.to_string(),
            leftover: Vec::new(),
        })
    })();
    drop(lab);
    let mut res = res?;
    res.leftover = leftover_netns(&id);
    Ok(res)
}

pub fn run(cfg: &StickyConfig) -> Result<String> {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Sticky re-creation: {} run(s) × {} racks × {} nodes × {} pods, {} concurrent plugin \
         executions; each pod re-created on another node of its rack.\n",
        cfg.runs, cfg.racks, cfg.nodes_per_rack, cfg.pods_per_node, cfg.workers
    );
    let _ = writeln!(
        md,
        "| run | pods | re-create wall | ADD median (ms) | ADD p99 (ms) | preserved | failures |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    let (mut pods, mut wall, mut preserved, mut failed) = (0, Duration::ZERO, 0, 0);
    let mut all_lat = Vec::new();
    for run in 1..=cfg.runs {
        check_interrupted()?;
        let r = one_run(cfg)?;
        let s = Summary::of(&r.latencies);
        let _ = writeln!(
            md,
            "| {run} | {} | {:.2} s | {} | {} | {}/{} | {} |",
            r.pods,
            r.wall.as_secs_f64(),
            s.as_ref().map(|s| ms(s.median)).unwrap_or_default(),
            s.as_ref().map(|s| ms(s.p99)).unwrap_or_default(),
            r.preserved,
            r.pods,
            r.failures.len()
        );
        for f in r.failures.iter().take(5) {
            let _ = writeln!(md, "|  | failure: {f} |||||");
        }
        if !r.leftover.is_empty() {
            let _ = writeln!(md, "|  | namespaces left: {} |||||", r.leftover.join(" "));
        }
        eprintln!("run {run}: {}", r.invariants);
        pods += r.pods;
        wall += r.wall;
        preserved += r.preserved;
        failed += r.failures.len();
        all_lat.extend(r.latencies);
    }
    let s = Summary::of(&all_lat);
    let _ = writeln!(
        md,
        "\n**Total: {pods} sticky pods re-created in {:.2} s of storm wall time (sum of runs), \
         {preserved}/{pods} addresses preserved, {failed} failures; ADD median {} ms / p99 {} ms.** \
         Goal: < 20 s with every address preserved: {}.",
        wall.as_secs_f64(),
        s.as_ref().map(|s| ms(s.median)).unwrap_or_default(),
        s.as_ref().map(|s| ms(s.p99)).unwrap_or_default(),
        if wall < Duration::from_secs(20) && preserved == pods && failed == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
    Ok(md)
}
