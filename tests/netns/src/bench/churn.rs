//! Sustained churn on one node: `callers` concurrent workers, each looping ADD then DEL (with
//! prevResult) of a fresh attachment in its own pod namespace, for a fixed time; Rackline and
//! the reference macvlan + host-local in alternating phases of the same run, same node, same
//! executor as `latency`.
//!
//! Each worker's pod namespace is created before the phase and reused: after a DEL it is
//! empty again, so the loop times only the two plugin executions (a runtime's namespace
//! creation is not the plugin's work). Each cycle uses a new container id.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::exec::{run_timed, Timed};
use super::latency::{check, inv, plugins, Plugin};
use super::stats::Summary;
use super::{check_interrupted, ms};
use crate::{Cmd, Lab};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ChurnConfig {
    /// Length of one phase (one plugin).
    pub seconds: f64,
    /// Concurrent callers.
    pub callers: usize,
    /// Phases per plugin (alternating Rackline, reference, …).
    pub rounds: usize,
    pub racks: usize,
    pub nodes_per_rack: usize,
}

#[derive(Default)]
struct Phase {
    cycles: usize,
    wall: Duration,
    add: Vec<Duration>,
    del: Vec<Duration>,
    failures: Vec<String>,
}

pub fn run(cfg: &ChurnConfig) -> Result<String> {
    super::on_spanning_lab(cfg.racks, cfg.nodes_per_rack, |lab| measure(lab, cfg))
}

/// One ADD + DEL cycle of a fresh container id in `pod`'s namespace.
fn cycle(lab: &Lab, p: &Plugin, pod: &crate::Pod) -> Result<(Duration, Duration)> {
    let add = check(
        run_timed(&inv(lab, p, Cmd::Add, pod, None), TIMEOUT)?,
        &format!("{} ADD", p.name),
    );
    // DEL even after a failed ADD (as a runtime does), so the next cycle starts clean.
    let prev = add.as_ref().ok().and_then(Timed::json);
    let del = check(
        run_timed(&inv(lab, p, Cmd::Del, pod, prev.as_ref()), TIMEOUT)?,
        &format!("{} DEL", p.name),
    );
    Ok((add?.elapsed, del?.elapsed))
}

fn phase(lab: &Lab, p: &Plugin, k: usize, cfg: &ChurnConfig) -> Result<Phase> {
    let mut pods = Vec::new();
    for w in 0..cfg.callers {
        pods.push(lab.add_pod(k, &format!("churn-{}-{w}", p.name))?);
    }
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    let results: Vec<Phase> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(w, pod)| {
                let stop = &stop;
                s.spawn(move || {
                    let mut ph = Phase::default();
                    let mut pod = pod.clone();
                    let base = pod.container_id[..48].to_owned();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && check_interrupted().is_ok() {
                        n += 1;
                        pod.container_id = format!("{base}{w:04x}{n:012x}");
                        match cycle(lab, p, &pod) {
                            Ok((a, d)) => {
                                ph.cycles += 1;
                                ph.add.push(a);
                                ph.del.push(d);
                            }
                            Err(e) => ph.failures.push(format!("{e:#}")),
                        }
                    }
                    ph
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(cfg.seconds));
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let wall = t0.elapsed();
    for pod in &pods {
        lab.delete_pod_netns(pod)?;
    }
    let mut total = Phase {
        wall,
        ..Default::default()
    };
    for r in results {
        total.cycles += r.cycles;
        total.add.extend(r.add);
        total.del.extend(r.del);
        total.failures.extend(r.failures);
    }
    Ok(total)
}

fn measure(lab: &Lab, cfg: &ChurnConfig) -> Result<String> {
    super::wait_for_blocks(lab, Duration::from_secs(30))?;
    let node = lab.rack_node(1, 1);
    let k = node.index();
    let data_dir = lab.dir().join("host-local-churn");
    let (rackline, reference) = plugins(lab, k, &data_dir)?;
    let links_before = lab.link_names(node)?;
    let mut phases: [Vec<Phase>; 2] = Default::default();
    for round in 0..cfg.rounds {
        // Alternate which plugin goes first in each round.
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for j in order {
            check_interrupted()?;
            let p = if j == 0 { &rackline } else { &reference };
            eprintln!("churn: round {}/{}, {}…", round + 1, cfg.rounds, p.name);
            phases[j].push(phase(lab, p, k, cfg).with_context(|| format!("{} phase", p.name))?);
        }
    }
    let links_after = lab.link_names(node)?;
    let leases = lab.leases()?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Lab: Spanning, {} racks × {} nodes; node `{}`. {} concurrent callers, each looping ADD \
         then DEL (prevResult) of a new container id in its own pod namespace (created before \
         the phase, empty again after each DEL); {} phases of {} s per plugin, alternating. \
         Plugins, netconfs and executor as in `latency`.\n",
        cfg.racks,
        cfg.nodes_per_rack,
        node.name(),
        cfg.callers,
        cfg.rounds,
        cfg.seconds
    );
    let _ = writeln!(
        md,
        "| plugin | cycles/s per phase | cycles/s (all phases) | ADD median / p99 under load (ms) | DEL median / p99 under load (ms) | failed cycles |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    let mut rates = [0.0f64; 2];
    for (j, name) in ["Rackline", "reference"].iter().enumerate() {
        let per: Vec<String> = phases[j]
            .iter()
            .map(|p| format!("{:.1}", p.cycles as f64 / p.wall.as_secs_f64()))
            .collect();
        let cycles: usize = phases[j].iter().map(|p| p.cycles).sum();
        let wall: f64 = phases[j].iter().map(|p| p.wall.as_secs_f64()).sum();
        rates[j] = cycles as f64 / wall;
        let all = |f: fn(&Phase) -> &Vec<Duration>| {
            let v: Vec<Duration> = phases[j].iter().flat_map(|p| f(p).clone()).collect();
            Summary::of(&v).map_or("no samples".into(), |s| {
                format!("{} / {}", ms(s.median), ms(s.p99))
            })
        };
        let failed: usize = phases[j].iter().map(|p| p.failures.len()).sum();
        let _ = writeln!(
            md,
            "| {name} | {} | {:.1} | {} | {} | {failed} |",
            per.join(", "),
            rates[j],
            all(|p| &p.add),
            all(|p| &p.del),
        );
    }
    if rates[1] > 0.0 {
        let _ = writeln!(
            md,
            "\nRackline sustains {:.2}× the reference's cycles/s.",
            rates[0] / rates[1]
        );
    }
    let failures: Vec<&String> = phases
        .iter()
        .flatten()
        .flat_map(|p| p.failures.iter())
        .collect();
    if !failures.is_empty() {
        let _ = writeln!(md, "\nFailures ({}); first:", failures.len());
        for f in failures.iter().take(5) {
            let line: String = f.chars().take(300).collect();
            let _ = writeln!(md, "- `{}`", line.replace('`', "'"));
        }
    }
    let _ = writeln!(
        md,
        "\nLeak check: node links {}; Rackline pod leases left: {}.",
        if links_before == links_after {
            "unchanged"
        } else {
            "CHANGED"
        },
        leases.len()
    );
    Ok(md)
}
