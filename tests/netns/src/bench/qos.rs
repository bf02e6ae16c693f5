//! Per-pod QoS accuracy: iperf3 through a shaped pod at several rates, egress and ingress,
//! and the unshaped macvlan pod ↔ pod throughput against node ↔ node measured in the same
//! run (does the QoS datapath cost unshaped pods anything?).
//!
//! iperf3 reports TCP payload; tbf counts whole Ethernet frames. With MTU 1500 and TCP
//! timestamps a full frame of 1514 bytes carries 1448 bytes of payload, so a perfect shaper
//! yields at most 95.6 % of its rate as goodput. The report shows both ratios.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::json;

use super::check_interrupted;
use super::iperf::iperf3;
use super::stats::median;
use crate::{result_ipv4, Cmd, Lab};

#[derive(Clone, Debug)]
pub struct QosConfig {
    /// iperf3 `-t` (measured seconds, after `omit`).
    pub seconds: u32,
    /// iperf3 `-O`: seconds of slow start (and full bucket) not counted.
    pub omit: u32,
    pub repeats: usize,
    /// Shaped rates in Mbit/s.
    pub rates: Vec<u64>,
}

pub fn run(cfg: &QosConfig) -> Result<String> {
    super::on_spanning_lab(1, 2, |lab| measure(lab, cfg))
}

/// The goodput a perfect frame-counting shaper lets through: payload / frame bytes.
fn goodput_ceiling(mtu: u64) -> f64 {
    // IPv4 20 + TCP 20 + timestamps 12 = 52 bytes of headers; Ethernet header 14.
    (mtu - 52) as f64 / (mtu + 14) as f64
}

fn mbps_list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn measure(lab: &Lab, cfg: &QosConfig) -> Result<String> {
    super::wait_for_blocks(lab, Duration::from_secs(30))?;
    let (n1, n2) = (lab.rack_node(1, 1), lab.rack_node(1, 2));
    let log = lab.dir().join("logs").join("iperf3-server.log");
    let a = lab.add_pod(n1.index(), "plain-a")?;
    let b = lab.add_pod(n2.index(), "plain-b")?;
    result_ipv4(&lab.cni_add(&a)?)?;
    let b_ip = result_ipv4(&lab.cni_add(&b)?)?.addr;
    ensure!(lab.ping(&a, b_ip)?, "pods cannot reach each other");
    ensure!(lab.ping(n1, n2.address())?, "nodes cannot reach each other");
    let mtu = lab
        .link(&a, "eth0")?
        .and_then(|l| l["mtu"].as_u64())
        .context("pod eth0 MTU")?;
    let ceiling = goodput_ceiling(mtu);

    // Unshaped: pods vs nodes, alternating which goes first.
    let (mut base, mut pods) = (Vec::new(), Vec::new());
    for rep in 0..cfg.repeats {
        for is_pod in if rep % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        } {
            check_interrupted()?;
            eprintln!(
                "qos: unshaped {} run {}…",
                if is_pod { "pods" } else { "nodes" },
                rep + 1
            );
            if is_pod {
                pods.push(iperf3(&a.netns, &b.netns, b_ip, cfg.seconds, cfg.omit, &log)?.gbps);
            } else {
                let to = n2.address();
                base.push(iperf3(n1.netns(), n2.netns(), to, cfg.seconds, cfg.omit, &log)?.gbps);
            }
        }
    }

    // Shaped: a fresh pod on n1 per rate, limited both ways through runtimeConfig.
    let mut rows = Vec::new();
    for &rate in &cfg.rates {
        let pod = lab.add_pod(n1.index(), &format!("shaped-{rate}m"))?;
        let bw =
            json!({"bandwidth": {"ingressRate": rate * 1_000_000, "egressRate": rate * 1_000_000}});
        let out = lab.cni(Cmd::Add, &pod).set("runtimeConfig", bw).run()?;
        let ip = result_ipv4(out.result()?)?.addr;
        let (mut eg, mut ing) = (Vec::new(), Vec::new());
        for rep in 0..cfg.repeats {
            check_interrupted()?;
            eprintln!("qos: {rate} Mbit/s run {}…", rep + 1);
            eg.push(iperf3(&pod.netns, &b.netns, b_ip, cfg.seconds, cfg.omit, &log)?.mbps());
            ing.push(iperf3(&b.netns, &pod.netns, ip, cfg.seconds, cfg.omit, &log)?.mbps());
        }
        lab.cni_del(&pod)?;
        rows.push((rate, "egress", eg));
        rows.push((rate, "ingress", ing));
    }
    lab.cni_del(&a)?;
    lab.cni_del(&b)?;

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Lab: Spanning, 1 rack × 2 nodes, MTU {mtu}. One TCP stream, `iperf3 -t {} -O {} -J`, \
         receiver-side rate, {} runs per row. Shaped pod on {} (limits through \
         `runtimeConfig.bandwidth`, both directions), peer pod on {} (unshaped). Egress = shaped \
         pod sends (tbf on its macvlan); ingress = it receives (ingress u32 → mirred → ifb → \
         tbf). Goodput ceiling for this MTU: {:.4} of the rate (payload/frame).\n",
        cfg.seconds,
        cfg.omit,
        cfg.repeats,
        n1.name(),
        n2.name(),
        ceiling
    );
    let _ = writeln!(
        md,
        "| limit | direction | runs, Mbit/s | median | median / limit | median / (limit × ceiling) | goal ±5 % of limit |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|");
    for (rate, dir, v) in &rows {
        let m = median(v).unwrap_or(f64::NAN);
        let q = m / *rate as f64;
        let qc = q / ceiling;
        let verdict = if (q - 1.0).abs() <= 0.05 {
            format!("met ({:+.1} %)", (q - 1.0) * 100.0)
        } else {
            format!("NOT met ({:+.1} %)", (q - 1.0) * 100.0)
        };
        let _ = writeln!(
            md,
            "| {rate} Mbit/s | {dir} | {} | {m:.2} | {q:.3} | {qc:.3} | {verdict} |",
            mbps_list(v)
        );
    }
    let (mb, mp) = (median(&base), median(&pods));
    let ratio = match (mb, mp) {
        (Some(b), Some(p)) => {
            let q = p / b;
            format!(
                "{q:.3} — goal ≥ 0.95 {}",
                if q >= 0.95 { "met" } else { "NOT met" }
            )
        }
        _ => "not measured".into(),
    };
    let _ = writeln!(
        md,
        "\nUnshaped, same run: node → node {} Gbit/s (median {:.2}); macvlan pod → pod {} Gbit/s \
         (median {:.2}); pods / nodes = {ratio}.",
        mbps_list(&base),
        mb.unwrap_or(f64::NAN),
        mbps_list(&pods),
        mp.unwrap_or(f64::NAN),
    );
    Ok(md)
}

#[cfg(test)]
mod tests {
    #[test]
    fn ceiling_for_1500() {
        assert!((super::goodput_ceiling(1500) - 1448.0 / 1514.0).abs() < 1e-12);
    }
}
