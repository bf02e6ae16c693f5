//! Unshaped TCP throughput (iperf3) between Rackline pods, against the node underlay they ride
//! on, in the same lab and the same run: two nodes of one rack (one bridge), and two racks
//! (TOR → spine → TOR, routed).
//!
//! The pod path is pod macvlan → node uplink veth → TOR bridge (→ routers) → uplink → macvlan;
//! the baseline is node uplink veth → the same bridges and routers → uplink veth.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Result};

use super::check_interrupted;
use super::iperf::{iperf3, Rate};
use super::stats::median;
use crate::{result_ipv4, Lab};

#[derive(Clone, Debug)]
pub struct ThroughputConfig {
    /// iperf3 `-t`.
    pub seconds: u32,
    /// Measurements per path and kind (baseline / pods), alternating.
    pub repeats: usize,
}

struct PathResult {
    label: &'static str,
    from: String,
    to: String,
    baseline: Vec<Result<Rate, String>>,
    pods: Vec<Result<Rate, String>>,
}

pub fn run(cfg: &ThroughputConfig) -> Result<String> {
    super::on_spanning_lab(2, 2, |lab| measure(lab, cfg))
}

fn measure(lab: &Lab, cfg: &ThroughputConfig) -> Result<String> {
    super::wait_for_blocks(lab, Duration::from_secs(30))?;
    let (n11, n12, n21) = (
        lab.rack_node(1, 1),
        lab.rack_node(1, 2),
        lab.rack_node(2, 1),
    );
    let mut pods = Vec::new();
    for node in [n11, n12, n21] {
        let pod = lab.add_pod(node.index(), &format!("iperf-{}", node.name()))?;
        let addr = result_ipv4(&lab.cni_add(&pod)?)?.addr;
        pods.push((pod, addr));
    }
    // Warm the neighbour tables (and prove reachability) before timing anything.
    let pairs = [
        (n11.netns(), n12.address()),
        (n11.netns(), n21.address()),
        (&pods[0].0.netns, pods[1].1),
        (&pods[0].0.netns, pods[2].1),
    ];
    for (from, to) in pairs {
        ensure!(lab.ping(from, to)?, "{} cannot reach {to}", from.name());
    }
    let log = lab.dir().join("logs").join("iperf3-server.log");
    let mut results = vec![
        PathResult {
            label: "same rack (r1n1 → r1n2, one TOR bridge)",
            from: format!("{} / pod on {}", n11.address(), n11.name()),
            to: format!("{} / pod on {}", n12.address(), n12.name()),
            baseline: Vec::new(),
            pods: Vec::new(),
        },
        PathResult {
            label: "across racks (r1n1 → r2n1, TOR → spine → TOR)",
            from: format!("{} / pod on {}", n11.address(), n11.name()),
            to: format!("{} / pod on {}", n21.address(), n21.name()),
            baseline: Vec::new(),
            pods: Vec::new(),
        },
    ];
    let ends = [
        (
            (n11.netns(), n12.netns(), n12.address()),
            (&pods[0].0.netns, &pods[1].0.netns, pods[1].1),
        ),
        (
            (n11.netns(), n21.netns(), n21.address()),
            (&pods[0].0.netns, &pods[2].0.netns, pods[2].1),
        ),
    ];
    for rep in 0..cfg.repeats {
        for (res, (base, pod)) in results.iter_mut().zip(ends) {
            let kinds = if rep % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for is_pod in kinds {
                check_interrupted()?;
                let (from, to, addr) = if is_pod { pod } else { base };
                eprintln!(
                    "throughput: {} {} run {}…",
                    res.label,
                    if is_pod { "pods" } else { "baseline" },
                    rep + 1
                );
                let r = iperf3(from, to, addr, cfg.seconds, 0, &log).map_err(|e| format!("{e:#}"));
                if is_pod {
                    res.pods.push(r);
                } else {
                    res.baseline.push(r);
                }
            }
        }
    }
    for (pod, _) in &pods {
        lab.cni_del(pod)?;
    }

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Lab: Spanning, 2 racks × 2 nodes. `iperf3 -c <addr> -t {} -J` (one TCP stream, \
         unshaped) from the sender's namespace to `iperf3 -s -1 -B <addr>` in the receiver's; \
         receiver-side rate. Pods: Rackline pods (macvlan bridge mode on the node uplink); \
         baseline: the same two nodes' uplink addresses, measured in the same run, \
         {} times each, alternating which goes first. Sender and receiver share the machine's \
         CPUs.\n",
        cfg.seconds, cfg.repeats
    );
    let _ = writeln!(
        md,
        "| path | baseline node → node, Gbit/s per run (retransmits) | pod → pod, Gbit/s per run (retransmits) | median baseline | median pods | pods / baseline | goal ≥ 0.95 |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for r in &results {
        let show = |v: &[Result<Rate, String>]| {
            v.iter()
                .map(|x| match x {
                    Ok(r) => format!("{:.2} ({})", r.gbps, r.retransmits),
                    Err(e) => format!("FAILED: {}", e.lines().next().unwrap_or("")),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let ok = |v: &[Result<Rate, String>]| -> Vec<f64> {
            v.iter()
                .filter_map(|x| x.as_ref().ok().map(|r| r.gbps))
                .collect()
        };
        let (mb, mp) = (median(&ok(&r.baseline)), median(&ok(&r.pods)));
        let (ratio, verdict) = match (mb, mp) {
            (Some(b), Some(p)) => {
                let q = p / b;
                (
                    format!("{q:.3}"),
                    if q >= 0.95 {
                        format!("met ({q:.3})")
                    } else {
                        format!("NOT met ({q:.3}, {:.3} short)", 0.95 - q)
                    },
                )
            }
            _ => ("-".into(), "not measured".into()),
        };
        let f = |x: Option<f64>| x.map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            md,
            "| {} ({} → {}) | {} | {} | {} | {} | {ratio} | {verdict} |",
            r.label,
            r.from,
            r.to,
            show(&r.baseline),
            show(&r.pods),
            f(mb),
            f(mp),
        );
    }
    Ok(md)
}
