//! The rack-scale headline: a storm of concurrent ADDs over two racks of a Spanning lab at 1:1
//! capacity (each rack's range holds exactly the pods scheduled on it), repeated on fresh labs,
//! with the invariant checker after every run.
//!
//! The lab's rack ranges start at `.64` of a /24 and end at `.254` at most (191 addresses), so
//! one lab cannot hold 500 pods per rack; 1000 ADDs are made of `runs` × (racks × nodes × pods)
//! on fresh labs (default 5 × 2 × 5 × 20).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};

use super::exec::{run_timed, Invocation};
use super::stats::Summary;
use super::{check_interrupted, leftover_netns, ms, rackline_invocation, wait_for_blocks};
use crate::{result_ipv4, Cmd, Lab, LabNetworkMode, Pod};

/// Rack range `.64`–`.254`: the most a lab rack can hold.
pub const MAX_RACK_RANGE: usize = 191;
/// Per-ADD deadline of the harness (the plugin's own is 5 s: this only catches hangs).
const ADD_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
pub struct AddsConfig {
    /// Fresh labs per standby setting.
    pub runs: usize,
    pub racks: usize,
    pub nodes_per_rack: usize,
    pub pods_per_node: usize,
    /// Concurrent plugin executions (a bounded pool of threads).
    pub workers: usize,
    pub block_size: u32,
    /// ipamd `--standby` values to measure, one series each.
    pub standby: Vec<usize>,
}

impl AddsConfig {
    pub fn pods_per_rack(&self) -> usize {
        self.nodes_per_rack * self.pods_per_node
    }
    pub fn pods_per_run(&self) -> usize {
        self.racks * self.pods_per_rack()
    }
}

#[derive(Clone, Debug)]
enum Outcome {
    Ok(Ipv4Addr),
    /// Failure class (`CNI code 11`, …) and the message.
    Failed(String, String),
}

#[derive(Clone, Debug)]
struct Sample {
    node: usize,
    elapsed: Duration,
    finished: Instant,
    outcome: Outcome,
}

/// One fresh lab, one storm.
struct RunResult {
    setup: Duration,
    wall: Duration,
    samples: Vec<Sample>,
    /// Problems found by the checks (invariants, duplicates, ranges, lease count).
    problems: Vec<String>,
    invariants: String,
    leases: usize,
    standby_records: usize,
    /// The storm's failed ADDs retried once each, sequentially, after the storm.
    retries: Vec<Sample>,
    leftover: Vec<String>,
}

impl RunResult {
    fn ok(&self) -> usize {
        self.samples
            .iter()
            .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
            .count()
    }
}

fn failures_by_class<'a>(samples: impl Iterator<Item = &'a Sample>) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for s in samples {
        if let Outcome::Failed(class, _) = &s.outcome {
            *by.entry(class.clone()).or_default() += 1;
        }
    }
    by
}

fn show_failures(by: &BTreeMap<String, usize>) -> String {
    if by.is_empty() {
        return "0".into();
    }
    let total: usize = by.values().sum();
    let parts: Vec<String> = by.iter().map(|(c, n)| format!("{n}× {c}")).collect();
    format!("{total} ({})", parts.join(", "))
}

/// Creates the pods (untimed), node-interleaved: pod 0 of every node, then pod 1, … so that the
/// pool hands work to all nodes at once.
fn create_pods(lab: &Lab, cfg: &AddsConfig) -> Result<Vec<Pod>> {
    let specs: Vec<(usize, String)> = (0..cfg.pods_per_node)
        .flat_map(|k| {
            lab.nodes()
                .iter()
                .map(move |n| (n.index(), format!("storm-{}-{k}", n.name())))
        })
        .collect();
    let threads = 8.min(specs.len()).max(1);
    let chunk = specs.len().div_ceil(threads);
    let made: Vec<Result<Vec<Pod>>> = thread::scope(|s| {
        let handles: Vec<_> = specs
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(node, name)| lab.add_pod(*node, name))
                        .collect::<Result<Vec<Pod>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("pod creation thread"))
            .collect()
    });
    let mut pods = Vec::with_capacity(specs.len());
    for part in made {
        pods.extend(part?);
    }
    Ok(pods)
}

/// All ADDs through a pool of `workers` threads; wall time from the release of the pool to the
/// exit of the last plugin.
fn storm(lab: &Lab, pods: &[Pod], workers: usize) -> Result<(Duration, Vec<Sample>)> {
    let invs: Vec<Invocation> = pods
        .iter()
        .map(|p| rackline_invocation(lab, Cmd::Add, p, &[]))
        .collect::<Result<_>>()?;
    let workers = workers.clamp(1, invs.len().max(1));
    let next = AtomicUsize::new(0);
    let barrier = Barrier::new(workers + 1);
    let (t0, parts) = thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                let (invs, next, barrier) = (&invs, &next, &barrier);
                s.spawn(move || {
                    barrier.wait();
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(inv) = invs.get(i) else { break };
                        mine.push((i, add_one(inv, pods[i].node)));
                    }
                    mine
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let parts: Vec<Vec<(usize, Sample)>> = handles
            .into_iter()
            .map(|h| h.join().expect("ADD worker"))
            .collect();
        (t0, parts)
    });
    let mut samples: Vec<(usize, Sample)> = parts.into_iter().flatten().collect();
    samples.sort_by_key(|(i, _)| *i);
    let samples: Vec<Sample> = samples.into_iter().map(|(_, s)| s).collect();
    let end = samples.iter().map(|s| s.finished).max().unwrap_or(t0);
    Ok((end.saturating_duration_since(t0), samples))
}

fn add_one(inv: &Invocation, node: usize) -> Sample {
    let started = Instant::now();
    match run_timed(inv, ADD_TIMEOUT) {
        Ok(t) => {
            let outcome = match (t.success(), t.json()) {
                (true, Some(res)) => match result_ipv4(&res) {
                    Ok(a) => Outcome::Ok(a.addr),
                    Err(e) => {
                        Outcome::Failed("exit 0 without an IPv4 result".into(), e.to_string())
                    }
                },
                (true, None) => {
                    Outcome::Failed("exit 0 without a JSON result".into(), t.stdout.clone())
                }
                (false, doc) => Outcome::Failed(
                    t.failure_class(),
                    doc.and_then(|d| d["msg"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| t.stderr.lines().last().unwrap_or("").to_owned()),
                ),
            };
            Sample {
                node,
                elapsed: t.elapsed,
                finished: Instant::now(),
                outcome,
            }
        }
        Err(e) => Sample {
            node,
            elapsed: started.elapsed(),
            finished: Instant::now(),
            outcome: Outcome::Failed("harness error".into(), format!("{e:#}")),
        },
    }
}

fn run_once(cfg: &AddsConfig, standby: usize) -> Result<RunResult> {
    let t_setup = Instant::now();
    let range_len = u8::try_from(cfg.pods_per_rack()).context("rack range length")?;
    let lab = Lab::builder()
        .racks(cfg.racks)
        .nodes_per_rack(cfg.nodes_per_rack)
        .network_mode(LabNetworkMode::Spanning)
        .rack_range_len(range_len)
        .block_size(cfg.block_size)
        .standby(standby)
        .log_level("info")
        .build()?;
    let id = lab.id().to_owned();
    let result = (|| -> Result<RunResult> {
        wait_for_blocks(&lab, Duration::from_secs(30))?;
        let pods = create_pods(&lab, cfg)?;
        check_interrupted()?;
        let setup = t_setup.elapsed();
        let (wall, samples) = storm(&lab, &pods, cfg.workers)?;
        // What etcd holds right after the storm, before anything else happens.
        let records = lab.lease_records()?;
        let standby_records = records.iter().filter(|l| l["state"] == "standby").count();
        let leases = lab.leases()?.len();
        // The failed ADDs once more, one at a time, as kubelet retries a failed sandbox: tells a
        // full rack from a transient refusal. Not part of the storm's numbers.
        let mut retries = Vec::new();
        for (pod, s) in pods.iter().zip(&samples) {
            if matches!(s.outcome, Outcome::Failed(..)) {
                retries.push(add_one(
                    &rackline_invocation(&lab, Cmd::Add, pod, &[])?,
                    pod.node,
                ));
            }
        }

        let mut problems = Vec::new();
        let invariants = match lab.invariants() {
            Ok(rep) => {
                if !rep.ok() {
                    problems.push(format!("invariants: {rep}"));
                }
                if rep.ok() {
                    "ok".to_owned()
                } else {
                    format!("{} violations", rep.violations.len())
                }
            }
            Err(e) => {
                problems.push(format!("invariant checker could not read etcd: {e:#}"));
                "not checked".to_owned()
            }
        };
        let mut seen: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
        for s in samples.iter().chain(&retries) {
            if let Outcome::Ok(a) = s.outcome {
                *seen.entry(a).or_default() += 1;
                let rack = lab.node(s.node).rack();
                let (first, last) = lab.spanning_range(rack);
                if !(first..=last).contains(&a) {
                    problems.push(format!(
                        "{} (rack {rack}) got {a}, outside {first}-{last}",
                        lab.node(s.node).name()
                    ));
                }
            }
        }
        let dupes: Vec<String> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(a, n)| format!("{a}×{n}"))
            .collect();
        if !dupes.is_empty() {
            problems.push(format!("addresses handed out twice: {}", dupes.join(" ")));
        }
        let ok = |v: &[Sample]| {
            v.iter()
                .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
                .count()
        };
        if leases != ok(&samples) {
            problems.push(format!(
                "{leases} pod leases in etcd after the storm for {} successful ADDs",
                ok(&samples)
            ));
        }
        let leases_now = lab.leases()?.len();
        if leases_now != ok(&samples) + ok(&retries) {
            problems.push(format!(
                "{leases_now} pod leases in etcd after the retries for {} successful ADDs",
                ok(&samples) + ok(&retries)
            ));
        }
        Ok(RunResult {
            setup,
            wall,
            samples,
            problems,
            invariants,
            leases,
            standby_records,
            retries,
            leftover: Vec::new(),
        })
    })();
    drop(lab);
    let mut result = result?;
    result.leftover = leftover_netns(&id);
    Ok(result)
}

/// Runs every series and returns the Markdown section (without the conditions header).
pub fn run(cfg: &AddsConfig) -> Result<String> {
    ensure!(
        cfg.pods_per_rack() <= MAX_RACK_RANGE,
        "{} pods per rack at 1:1 capacity need a rack range of {} addresses; a lab rack holds at \
         most {MAX_RACK_RANGE} (.64-.254 of its /24)",
        cfg.pods_per_rack(),
        cfg.pods_per_rack()
    );
    let mut md = String::new();
    let _ = writeln!(
        md,
        "Topology: Spanning lab (one network `prod` over {racks} racks behind a routed spine), \
         {npr} nodes per rack, each running its own ipamd; block size {bs}. Each rack's range \
         holds exactly {ppr} addresses (`.64`-`.{last}`) for exactly {ppr} pods ({ppn} per node): \
         1:1 capacity. One run = {per} ADDs issued at once through a pool of {w} threads (each \
         ADD is one execution of the release `rackline` plugin from its node's namespace, timed \
         fork to exit); runs = {runs} fresh labs per standby setting, i.e. {total} ADDs per \
         setting. Not timed: lab build, waiting until every node owns a block, creating the pod \
         namespaces. After each run: the etcd invariant checker, distinct addresses, every \
         address inside its node's rack range, pod leases in etcd = successful ADDs. Right after \
         the storm the pod leases and standby records are counted (free = the {cap} addresses \
         of both racks minus both); then every failed ADD is retried once, sequentially, as \
         kubelet would retry the sandbox (not part of the storm's time or failure count), to \
         tell a full rack from a transient refusal.",
        racks = cfg.racks,
        npr = cfg.nodes_per_rack,
        bs = cfg.block_size,
        ppr = cfg.pods_per_rack(),
        last = 63 + cfg.pods_per_rack(),
        ppn = cfg.pods_per_node,
        per = cfg.pods_per_run(),
        w = cfg.workers,
        runs = cfg.runs,
        total = cfg.runs * cfg.pods_per_run(),
        cap = cfg.pods_per_run(),
    );
    let mut summary_rows = Vec::new();
    for &standby in &cfg.standby {
        let mut runs: Vec<std::result::Result<RunResult, String>> = Vec::new();
        for r in 1..=cfg.runs {
            check_interrupted()?;
            eprintln!("adds: standby {standby}, run {r}/{}…", cfg.runs);
            let res = run_once(cfg, standby).map_err(|e| format!("{e:#}"));
            match &res {
                Ok(rr) => eprintln!(
                    "adds: standby {standby}, run {r}: {:.2} s, {} ok of {}, {}",
                    rr.wall.as_secs_f64(),
                    rr.ok(),
                    rr.samples.len(),
                    show_failures(&failures_by_class(rr.samples.iter()))
                ),
                Err(e) => eprintln!("adds: standby {standby}, run {r} FAILED: {e}"),
            }
            runs.push(res);
        }
        let (section, row) = series_markdown(cfg, standby, &runs);
        md.push_str(&section);
        summary_rows.push(row);
    }
    let _ = writeln!(
        md,
        "\n#### Summary against the goal (< 20 s for the ADDs, 0 failures)\n"
    );
    let _ = writeln!(
        md,
        "| standby | ADDs | total wall (sum of runs) | failures | ADD p50 / p99 (ms) | goal |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for row in summary_rows {
        let _ = writeln!(md, "{row}");
    }
    Ok(md)
}

fn series_markdown(
    cfg: &AddsConfig,
    standby: usize,
    runs: &[std::result::Result<RunResult, String>],
) -> (String, String) {
    let mut md = String::new();
    let _ = writeln!(md, "\n#### ipamd `--standby {standby}`\n");
    let _ = writeln!(
        md,
        "| run | wall (s) | ADDs ok | failed (by CNI code) | ADD p50 (ms) | ADD p99 (ms) | max (ms) | pod leases / standby records / free after the storm | failed ADDs retried once afterwards | invariants | other checks | namespaces left |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all: Vec<&Sample> = Vec::new();
    let mut total_wall = Duration::ZERO;
    let mut broken_runs = 0;
    let mut problems_total = 0;
    let mut messages: BTreeMap<String, String> = BTreeMap::new();
    let mut failed_nodes: BTreeMap<usize, usize> = BTreeMap::new();
    let mut setups: Vec<f64> = Vec::new();
    let capacity = cfg.pods_per_run();
    for (i, run) in runs.iter().enumerate() {
        match run {
            Ok(r) => {
                let s = Summary::of(&r.samples.iter().map(|s| s.elapsed).collect::<Vec<_>>());
                let (p50, p99, max) = s.map_or(("-".into(), "-".into(), "-".into()), |s| {
                    (ms(s.median), ms(s.p99), ms(s.max))
                });
                problems_total += r.problems.len();
                let _ = writeln!(
                    md,
                    "| {} | {:.2} | {} / {} | {} | {p50} | {p99} | {max} | {} / {} / {} | {} | {} | {} | {} |",
                    i + 1,
                    r.wall.as_secs_f64(),
                    r.ok(),
                    r.samples.len(),
                    show_failures(&failures_by_class(r.samples.iter())),
                    r.leases,
                    r.standby_records,
                    capacity.saturating_sub(r.leases + r.standby_records),
                    if r.retries.is_empty() {
                        "-".to_owned()
                    } else {
                        let good = r.retries.len()
                            - failures_by_class(r.retries.iter()).values().sum::<usize>();
                        format!("{good} of {} succeeded", r.retries.len())
                    },
                    r.invariants,
                    if r.problems.is_empty() {
                        "ok".to_owned()
                    } else {
                        r.problems.join("; ").replace('|', "/")
                    },
                    if r.leftover.is_empty() {
                        "none".to_owned()
                    } else {
                        r.leftover.join(" ")
                    },
                );
                total_wall += r.wall;
                for s in &r.samples {
                    all.push(s);
                    if let Outcome::Failed(class, msg) = &s.outcome {
                        messages.entry(class.clone()).or_insert_with(|| msg.clone());
                        *failed_nodes.entry(s.node).or_default() += 1;
                    }
                }
                setups.push(r.setup.as_secs_f64());
            }
            Err(e) => {
                broken_runs += 1;
                let first = e.lines().next().unwrap_or("").replace('|', "/");
                let _ = writeln!(
                    md,
                    "| {} | run failed: {first} | | | | | | | | | | |",
                    i + 1
                );
            }
        }
    }
    let by = failures_by_class(all.iter().copied());
    let summary = Summary::of(&all.iter().map(|s| s.elapsed).collect::<Vec<_>>());
    let ok = all
        .iter()
        .filter(|s| matches!(s.outcome, Outcome::Ok(_)))
        .count();
    let (p50, p99) = summary.map_or(("-".into(), "-".into()), |s| (ms(s.median), ms(s.p99)));
    let _ = writeln!(
        md,
        "| **all** | **{:.2}** (sum) | {ok} / {} | {} | {p50} | {p99} | {} | | | | | |",
        total_wall.as_secs_f64(),
        all.len(),
        show_failures(&by),
        summary.map_or("-".into(), |s| ms(s.max)),
    );
    let rate = ok as f64 / total_wall.as_secs_f64().max(1e-9);
    let _ = writeln!(
        md,
        "\n{ok} successful ADDs in {:.2} s of storm wall time: {rate:.0} ADDs/s.",
        total_wall.as_secs_f64()
    );
    if let (Some(lo), Some(hi)) = (
        setups.iter().copied().reduce(f64::min),
        setups.iter().copied().reduce(f64::max),
    ) {
        let _ = writeln!(
            md,
            "Untimed setup per run (lab build, every node's first block, {} pod namespaces): \
             {lo:.1}-{hi:.1} s.",
            cfg.pods_per_run()
        );
    }
    if !messages.is_empty() {
        let _ = writeln!(md, "\nFirst message per failure class:");
        for (class, msg) in &messages {
            let msg: String = msg.chars().take(300).collect();
            let _ = writeln!(md, "- {class}: `{}`", msg.replace('`', "'"));
        }
        let _ = writeln!(
            md,
            "- failures by node index (1..{} rack 1, then rack 2): {failed_nodes:?}",
            cfg.nodes_per_rack
        );
    }
    let expected = cfg.runs * cfg.pods_per_run();
    let failures: usize = by.values().sum();
    let met = broken_runs == 0
        && all.len() == expected
        && failures == 0
        && problems_total == 0
        && total_wall < Duration::from_secs(20);
    let mut why = Vec::new();
    if total_wall >= Duration::from_secs(20) {
        why.push(format!(
            "{:.2} s is {:.2} s over",
            total_wall.as_secs_f64(),
            total_wall.as_secs_f64() - 20.0
        ));
    }
    if failures > 0 {
        why.push(format!("{failures} failed ADDs"));
    }
    if broken_runs > 0 {
        why.push(format!("{broken_runs} runs did not complete"));
    }
    if problems_total > 0 {
        why.push(format!("{problems_total} check failures"));
    }
    let verdict = if met {
        format!(
            "met ({:.2} s, {:.1}× under 20 s)",
            total_wall.as_secs_f64(),
            20.0 / total_wall.as_secs_f64()
        )
    } else {
        format!("NOT met: {}", why.join(", "))
    };
    let row = format!(
        "| {standby} | {ok} of {} ok ({expected} planned) | {:.2} s | {} | {p50} / {p99} | {verdict} |",
        all.len(),
        total_wall.as_secs_f64(),
        show_failures(&by),
    );
    (md, row)
}
