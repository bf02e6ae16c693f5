//! The plugin's per-step breakdown: each Rackline sample of the `steps` series runs with
//! `RACKLINE_BENCH_STEPS=<file>`, so the plugin appends one line of step spans (its module
//! `steps`); combined with the bench's fork and exit instants (same clock) this gives process
//! start, every step, and the exit, per sample. Printed as medians per step.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

use super::exec::Timed;
use super::stats::median;

/// The variable the plugin reads (`rackline_cni::steps::ENV`).
pub const ENV: &str = "RACKLINE_BENCH_STEPS";

/// One invocation's steps, as offsets from the fork (ms): (name, start, duration).
#[derive(Debug, Clone, Default)]
pub struct Breakdown {
    pub steps: Vec<(String, f64, f64)>,
    pub total_ms: f64,
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// Parses the plugin's line (`CMD pid main=<ns> end=<ns> name=<start>+<dur> ...`) against the
/// bench's own fork/exit instants.
pub fn parse(line: &str, t: &Timed) -> Result<Breakdown> {
    let mut it = line.split_whitespace();
    let _cmd = it.next().context("empty step line")?;
    let _pid = it.next().context("no pid")?;
    let mut main = None;
    let mut end = None;
    let mut steps = Vec::new();
    for f in it {
        let (name, v) = f.split_once('=').context("field without =")?;
        match name {
            "main" => main = Some(v.parse::<u64>()?),
            "end" => end = Some(v.parse::<u64>()?),
            _ => {
                let (s, d) = v.split_once('+').context("step without +")?;
                let (s, d): (u64, u64) = (s.parse()?, d.parse()?);
                steps.push((name.to_owned(), s, d));
            }
        }
    }
    let (main, end) = (main.context("no main=")?, end.context("no end=")?);
    let t0 = t.started_ns;
    let off = |x: u64| ms(x.saturating_sub(t0));
    let mut out = vec![("process start (fork → main)".to_owned(), 0.0, off(main))];
    for (name, s, d) in steps {
        out.push((name, off(s), ms(d)));
    }
    out.push((
        "exit (end → exit seen)".to_owned(),
        off(end),
        ms(t.exited_ns.saturating_sub(end)),
    ));
    Ok(Breakdown {
        steps: out,
        total_ms: ms(t.exited_ns.saturating_sub(t0)),
    })
}

/// Reads the single line a sample's plugin wrote to `path` (then removes the file).
pub fn read(path: &Path, t: &Timed) -> Result<Breakdown> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("the plugin wrote no step line to {}", path.display()))?;
    let _ = std::fs::remove_file(path);
    let line = text.lines().next().context("empty step file")?;
    parse(line, t)
}

/// Median per step over `samples` (steps in their order of first appearance; a step nested in
/// another of the same sample is shown as `outer / inner` and left out of the sum).
pub fn table(verb: &str, samples: &[Breakdown]) -> String {
    let mut order: Vec<String> = Vec::new();
    let mut durs: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut starts: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut nested: BTreeMap<String, bool> = BTreeMap::new();
    let mut totals = Vec::new();
    let mut accounted = Vec::new();
    for b in samples {
        totals.push(b.total_ms);
        let mut sum = 0.0;
        for (i, (name, s, d)) in b.steps.iter().enumerate() {
            let parent = b.steps.iter().enumerate().find(|(j, (_, ps, pd))| {
                *j != i && *ps <= *s && s + d <= ps + pd && (*ps < *s || s + d < ps + pd)
            });
            let key = match parent {
                Some((_, (p, _, _))) => format!("{p} / {name}"),
                None => {
                    sum += d;
                    name.clone()
                }
            };
            nested.insert(key.clone(), parent.is_some());
            if !order.contains(&key) {
                order.push(key.clone());
            }
            durs.entry(key.clone()).or_default().push(*d);
            starts.entry(key).or_default().push(*s);
        }
        accounted.push(sum);
    }
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| {verb} step | median (ms) | median start (ms after fork) | samples |"
    );
    let _ = writeln!(md, "|---|---|---|---|");
    // Ordered by median start.
    order.sort_by(|a, b| {
        let ma = median(&starts[a]).unwrap_or(0.0);
        let mb = median(&starts[b]).unwrap_or(0.0);
        ma.total_cmp(&mb)
    });
    for k in &order {
        let d = median(&durs[k]).unwrap_or(0.0);
        let s = median(&starts[k]).unwrap_or(0.0);
        let label = if nested[k] {
            format!("↳ {k}")
        } else {
            k.clone()
        };
        let _ = writeln!(md, "| {label} | {d:.3} | {s:.3} | {} |", durs[k].len());
    }
    let gaps: Vec<f64> = totals
        .iter()
        .zip(&accounted)
        .map(|(t, a)| (t - a).max(0.0))
        .collect();
    let _ = writeln!(
        md,
        "| (between steps: glue, unspanned work) | {:.3} | | {} |",
        median(&gaps).unwrap_or(0.0),
        gaps.len()
    );
    let _ = writeln!(
        md,
        "| **total (fork → exit)** | **{:.3}** | | {} |",
        median(&totals).unwrap_or(0.0),
        totals.len()
    );
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_becomes_offsets_from_the_fork() {
        let t = Timed {
            elapsed: std::time::Duration::from_millis(10),
            code: 0,
            stdout: String::new(),
            stderr: String::new(),
            started_ns: 1_000_000_000,
            exited_ns: 1_010_000_000,
        };
        let b = parse(
            "ADD 7 main=1002000000 end=1009000000 parse=1002500000+500000 a=1003000000+4000000 b=1004000000+1000000",
            &t,
        )
        .unwrap();
        assert_eq!(b.steps[0].2, 2.0);
        assert_eq!(b.steps.last().unwrap().2, 1.0);
        let md = table("ADD", &[b]);
        assert!(md.contains("| ↳ a / b | 1.000 |"), "{md}");
        // 10 ms total; top level: 2 + 0.5 + 4 + 1 = 7.5 → 2.5 between steps.
        assert!(md.contains("| 2.500 |"), "{md}");
    }
}
