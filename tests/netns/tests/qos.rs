//! Per-pod QoS end to end: the real plugin, ipamd (with `--node-class`), netmaster and
//! racklinectl in a two-node rack; shaping read back with `tc -j` inside the pod namespaces
//! (an independent reader) and measured with iperf3 between pods on the two nodes.
//!
//! The network is created with a default (egress 300M), a maximum (400M both ways) and a
//! node class `small` (ingress 150M) that node 1 belongs to, so every level shows up:
//!
//! | pod              | node | ingress                 | egress              |
//! |------------------|------|-------------------------|---------------------|
//! | peer             | n2   | 400M (max caps)         | 300M (default)      |
//! | plain            | n1   | 150M (class)            | 300M (default)      |
//! | web-1 (policy)   | n1   | 150M (class)            | 120M (policy)       |
//! | greedy (pod)     | n2   | 1G asked → 400M (clamp) | 20M (pod)           |
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use anyhow::{ensure, Context, Result};
use rackline_lab::bench::iperf::iperf3;
use rackline_lab::{result_ipv4, Cmd, Lab, Pod};
use serde_json::{json, Value};

const M: u64 = 1_000_000;

/// (ingress, egress) tbf rates in bits/s; None = not shaped.
type Shaping = (Option<u64>, Option<u64>);

fn lab() -> rackline_lab::LabBuilder {
    Lab::builder()
        .nodes(2)
        .node_class(1, "small")
        .network_args(&[
            "--qos-default",
            "egress=300M",
            "--qos-max",
            "ingress=400M,egress=400M",
            "--qos-class",
            "small:ingress=150M",
        ])
}

/// `runtimeConfig.bandwidth` as containerd sends it (PascalCase, burst u32::MAX = unset, 0 for
/// a direction without annotation).
fn runtime_bw(ingress: u64, egress: u64) -> Value {
    json!({"bandwidth": {
        "IngressRate": ingress, "IngressBurst": if ingress == 0 { 0 } else { u32::MAX as u64 },
        "EgressRate": egress, "EgressBurst": if egress == 0 { 0 } else { u32::MAX as u64 },
    }})
}

fn add(lab: &Lab, pod: &Pod, rc: Option<Value>) -> Result<Value> {
    let mut call = lab.cni(Cmd::Add, pod);
    if let Some(rc) = rc {
        call = call.set("runtimeConfig", rc);
    }
    call.run()?.result().cloned()
}

/// The tbf rate (bits/s) of `dev` in the pod, or None when it has no tbf.
fn tbf_rate(lab: &Lab, pod: &Pod, dev: &str) -> Result<Option<u64>> {
    let out = lab.exec_in(pod, &["tc", "-j", "qdisc", "show", "dev", dev])?;
    if !out.success() {
        // No such device (e.g. no ifb): no shaper.
        return Ok(None);
    }
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .find(|q| q["kind"] == "tbf")
        .and_then(|q| q["options"]["rate"].as_u64())
        .map(|bytes| bytes * 8))
}

/// (ingress, egress) shaping of a pod as the kernel has it.
fn shaping(lab: &Lab, pod: &Pod) -> Result<Shaping> {
    Ok((
        tbf_rate(lab, pod, "rlifb-eth0")?,
        tbf_rate(lab, pod, "eth0")?,
    ))
}

/// ipamd learns policies through an etcd watch: ADD pods named `name` until one is shaped as
/// `want` (each mismatch is deleted again), for up to 15 s.
fn add_once_policy_seen(lab: &Lab, node: usize, name: &str, want: Shaping) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let pod = lab.add_pod(node, name)?;
        add(lab, &pod, None)?;
        let got = shaping(lab, &pod)?;
        lab.cni_del(&pod)?;
        if got == want {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{name}: (ingress, egress) {got:?}, want {want:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

fn only_lo(lab: &Lab, pod: &Pod) -> Result<()> {
    let links = lab.link_names(pod)?;
    ensure!(links == ["lo"], "pod {} has links {links:?}", pod.name);
    Ok(())
}

#[test]
fn every_level_is_applied_checked_and_removed() -> Result<()> {
    lab().run(|lab| {
        lab.racklinectl(&[
            "qos",
            "set",
            &lab.network_of_node(1),
            "default",
            "web",
            "--bandwidth",
            "egress=120M",
            "--pods",
            "web-.*",
        ])?;
        let listed = lab.racklinectl(&["qos", "list"])?;
        ensure!(
            listed[0]["egressRate"] == 120 * M && listed[0]["podPattern"] == "web-.*",
            "{listed}"
        );
        // ipamd learns the policy through its watch.
        add_once_policy_seen(lab, 1, "web-0", (Some(150 * M), Some(120 * M)))?;

        let cases: [(&str, usize, Option<Value>, Shaping); 4] = [
            ("peer", 2, None, (Some(400 * M), Some(300 * M))),
            ("plain", 1, None, (Some(150 * M), Some(300 * M))),
            ("web-1", 1, None, (Some(150 * M), Some(120 * M))),
            (
                "greedy",
                2,
                Some(runtime_bw(1000 * M, 20 * M)),
                (Some(400 * M), Some(20 * M)),
            ),
        ];
        for (name, node, rc, want) in cases {
            let pod = lab.add_pod(node, name)?;
            let result = add(lab, &pod, rc.clone())?;
            let got = shaping(lab, &pod)?;
            ensure!(
                got == want,
                "{name}: (ingress, egress) {got:?}, want {want:?}"
            );

            // CHECK passes while intact, fails once the egress tbf is removed by hand.
            let check = |rc: Option<Value>| {
                let mut c = lab.cni(Cmd::Check, &pod).prev_result(&result);
                if let Some(rc) = rc {
                    c = c.set("runtimeConfig", rc);
                }
                c.run()
            };
            check(rc.clone())?.ok().context("CHECK of an intact pod")?;
            let del = lab.exec_in(&pod, &["tc", "qdisc", "del", "dev", "eth0", "root"])?;
            ensure!(del.success(), "{del:?}");
            check(rc.clone())?
                .expect_error(103)
                .with_context(|| format!("{name}: CHECK after removing the egress tbf"))?;

            lab.cni_del(&pod)?;
            only_lo(lab, &pod).context("DEL leaves no macvlan, veth or ifb")?;
            ensure!(lab.leases_of(&pod.container_id)?.is_empty());
        }

        // Deleting the policy: web pods fall back to the network default.
        lab.racklinectl(&["qos", "delete", &lab.network_of_node(1), "default", "web"])?;
        add_once_policy_seen(lab, 1, "web-2", (Some(150 * M), Some(300 * M)))?;
        ensure!(lab
            .racklinectl(&["qos", "list"])?
            .as_array()
            .is_some_and(Vec::is_empty));
        Ok(())
    })
}

#[test]
fn invalid_bandwidth_is_code_7_and_creates_nothing() -> Result<()> {
    lab().run(|lab| {
        for bad in [
            json!({"bandwidth": {"ingressBurst": 1000000}}),
            json!({"bandwidth": {"IngressRate": 0, "IngressBurst": 1000000}}),
            json!({"bandwidth": {"egressRate": 10}}),
            json!({"bandwidth": {"egressRate": 10000000, "egressBurst": 8}}),
            json!({"bandwidth": {"ingressRate": -5}}),
        ] {
            let pod = lab.add_pod(1, "bad")?;
            let out = lab
                .cni(Cmd::Add, &pod)
                .set("runtimeConfig", bad.clone())
                .run()?;
            out.expect_error(7)
                .with_context(|| format!("{bad}: expected code 7"))?;
            only_lo(lab, &pod)?;
            ensure!(
                lab.leases_of(&pod.container_id)?.is_empty(),
                "{bad}: a lease was taken"
            );
            let q = lab.exec_in(&pod, &["tc", "-j", "qdisc", "show"])?;
            ensure!(!q.stdout.contains("tbf"), "{bad}: {}", q.stdout);
        }
        Ok(())
    })
}

/// Measured iperf3 rate within ±10 % of the shaped rate, egress and ingress, at 10, 50 and
/// 200 Mbit/s, between a shaped pod on n1 and an (above-rate) peer on n2.
#[test]
fn iperf3_rates_match_the_limits() -> Result<()> {
    lab().run(|lab| {
        let peer = lab.add_pod(2, "peer")?;
        let peer_ip = result_ipv4(&add(lab, &peer, None)?)?.addr;
        let log = lab.dir().join("logs").join("iperf3-server.log");
        let mut report = Vec::new();
        let mut failures = Vec::new();
        for mbit in [10u64, 50, 200] {
            let pod = lab.add_pod(1, &format!("shaped-{mbit}"))?;
            let ip = result_ipv4(&add(lab, &pod, Some(runtime_bw(mbit * M, mbit * M)))?)?.addr;
            ensure!(lab.ping(&pod, peer_ip)?, "shaped pod cannot reach the peer");
            let egress = iperf3(&pod.netns, &peer.netns, peer_ip, 3, 1, &log)?;
            let ingress = iperf3(&peer.netns, &pod.netns, ip, 3, 1, &log)?;
            for (dir, r) in [("egress", egress), ("ingress", ingress)] {
                let ratio = r.mbps() / mbit as f64;
                report.push(format!(
                    "{mbit}M {dir}: {:.2} Mbit/s ({ratio:.3})",
                    r.mbps()
                ));
                if !(0.9..=1.1).contains(&ratio) {
                    failures.push(format!("{mbit}M {dir}: measured {:.2} Mbit/s", r.mbps()));
                }
            }
            lab.cni_del(&pod)?;
        }
        eprintln!("qos iperf3: {}", report.join("; "));
        ensure!(
            failures.is_empty(),
            "outside ±10 %: {failures:?} (all: {report:?})"
        );
        lab.cni_del(&peer)?;
        Ok(())
    })
}

/// A shaping step the kernel refuses (the ifb name is taken by a stranger the plugin must not
/// touch) fails ADD with code 100 and rolls everything back: no macvlan, no veth on either
/// side, no lease, the node unchanged; the stranger is left alone.
#[test]
fn failed_shaping_rolls_back_everything() -> Result<()> {
    lab().run(|lab| {
        let pod = lab.add_pod(1, "blocked")?;
        let made = lab.exec_in(
            &pod,
            &[
                "ip",
                "link",
                "add",
                "rlifb-eth0",
                "type",
                "veth",
                "peer",
                "name",
                "rlx",
            ],
        )?;
        ensure!(made.success(), "{made:?}");
        let before = lab.snapshot(lab.node(1))?;
        let out = lab
            .cni(Cmd::Add, &pod)
            .set("runtimeConfig", runtime_bw(10 * M, 10 * M))
            .run()?;
        out.expect_error(100)
            .context("ADD with the ifb name taken")?;
        let links = lab.link_names(&pod)?;
        ensure!(
            links == ["lo", "rlifb-eth0", "rlx"],
            "pod links after rollback: {links:?}"
        );
        ensure!(lab.leases_of(&pod.container_id)?.is_empty(), "lease kept");
        let after = lab.snapshot(lab.node(1))?;
        ensure!(after == before, "node changed:\n{}", before.diff(&after));
        // The runtime's DEL after a failed ADD succeeds and still spares the stranger.
        lab.cni_del(&pod)?;
        ensure!(lab.link_names(&pod)? == ["lo", "rlifb-eth0", "rlx"]);
        Ok(())
    })
}
