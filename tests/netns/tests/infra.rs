//! Infrastructure addresses never reach a pod, end to end: a rack bound with its own subnet
//! and no `--range` (the whole /24, where the rack's TOR and nodes live), with operator-declared
//! exclusions, filled to the last address from one node. Before this rule the 10th and 11th pod
//! of such a node got the nodes' own uplink addresses and node-to-node traffic broke.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rackline_lab::{rack_gateway, result_ipv4, Cmd, Lab, LabNetworkMode, Pod};

/// Rack 2's declared infrastructure: management addresses, and (to keep the fill short) the
/// whole upper part of the subnet.
const MGMT: &str = "10.11.0.2-10.11.0.9";
const UPPER: &str = "10.11.0.100/30";
const REST: &str = "10.11.0.104-10.11.0.254";

fn ip(s: &str) -> Ipv4Addr {
    s.parse().expect("address")
}

/// One ADD: the pod's address, or the plugin's CNI error code.
fn add_one(lab: &Lab, pod: &Pod) -> std::result::Result<Ipv4Addr, u64> {
    let out = lab.cni(Cmd::Add, pod).run().expect("running the plugin");
    match out.error_code() {
        None => Ok(result_ipv4(out.result().expect("result"))
            .expect("ipv4")
            .addr),
        Some(c) => Err(c),
    }
}

/// Waits until every node of rack `r` holds a block (ipamd registered and took one).
fn wait_for_blocks(lab: &Lab, r: usize) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let blocks = lab.racklinectl(&["block", "list"])?;
        let owners: BTreeSet<String> = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["node"].as_str().map(str::to_owned))
            .collect();
        if lab.rack_nodes(r).iter().all(|n| owners.contains(n.name())) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "rack {r}'s nodes hold no block: {blocks}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_whole_subnet_rack_never_gives_a_pod_a_node_address_a_gateway_or_an_exclusion() -> Result<()> {
    let builder = Lab::builder()
        .racks(2)
        .nodes_per_rack(2)
        .network_mode(LabNetworkMode::Spanning)
        // Capacity is counted exactly: no reserve held back.
        .standby(0)
        .rack_bind_args(
            2,
            &["--exclude", MGMT, "--exclude", UPPER, "--exclude", REST],
        );
    builder
        .run(|lab| {
            wait_for_blocks(lab, 2)?;
            // The binding as operators see it: whole subnet, the exclusions listed.
            let shown = lab.racklinectl(&["rack", "show", "rack2"])?;
            let b = &shown["networks"][0];
            ensure!(
                b["ranges"] == serde_json::json!([])
                    && b["exclude"] == serde_json::json!([MGMT, "10.11.0.100-10.11.0.103", REST]),
                "rack show: {shown}"
            );
            let list = lab.racklinectl_raw(&["rack", "list"])?.check()?.stdout;
            ensure!(
                list.contains("whole subnet") && list.contains(MGMT),
                "rack list shows no binding with its exclusions:\n{list}"
            );

            let nodes = lab.rack_nodes(2).to_vec();
            let infra: BTreeSet<Ipv4Addr> = nodes
                .iter()
                .map(|n| n.address())
                .chain([rack_gateway(2)])
                .collect();
            ensure!(
                infra.contains(&ip("10.11.0.11")) && infra.contains(&ip("10.11.0.12")),
                "{infra:?}"
            );
            // Rack 2 may give .10-.99 minus its two nodes: 88 addresses. Fill them all from
            // r2n1, a few ADDs at a time: its own blocks first, then borrowing r2n2's.
            let expected: BTreeSet<Ipv4Addr> = (10u8..=99)
                .map(|d| Ipv4Addr::new(10, 11, 0, d))
                .filter(|a| !infra.contains(a))
                .collect();
            ensure!(expected.len() == 88);
            let mut got: Vec<Ipv4Addr> = Vec::new();
            'fill: for batch in 0.. {
                let chunk: Vec<Pod> = (0..6)
                    .map(|i| lab.add_pod(nodes[0].index(), &format!("f{batch}-{i}")))
                    .collect::<Result<_>>()?;
                let results: Vec<_> = std::thread::scope(|s| {
                    let hs: Vec<_> = chunk
                        .iter()
                        .map(|p| s.spawn(move || add_one(lab, p)))
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().expect("ADD thread"))
                        .collect()
                });
                let mut failed = Vec::new();
                for (p, r) in chunk.into_iter().zip(results) {
                    match r {
                        Ok(a) => got.push(a),
                        Err(c) => failed.push((p.name, c)),
                    }
                }
                if !failed.is_empty() {
                    // Only once every address is out, and only 101 (no free address).
                    ensure!(
                        got.len() >= expected.len() && failed.iter().all(|(_, c)| *c == 101),
                        "ADDs failed {failed:?} after {} addresses: {got:?}",
                        got.len()
                    );
                    break 'fill;
                }
                ensure!(batch < 40, "rack 2 never filled: {} addresses", got.len());
            }
            let distinct: BTreeSet<Ipv4Addr> = got.iter().copied().collect();
            ensure!(distinct.len() == got.len(), "an address was given twice");
            let bad: Vec<&Ipv4Addr> = distinct.difference(&expected).collect();
            ensure!(
                bad.is_empty(),
                "pods got infrastructure or excluded addresses: {bad:?}"
            );
            ensure!(
                distinct == expected,
                "the rack was not filled exactly: missing {:?}",
                expected.difference(&distinct).collect::<Vec<_>>()
            );
            // The rack is full: one more is a clear "no free address".
            let extra = lab.add_pod(nodes[1].index(), "extra")?;
            lab.cni(Cmd::Add, &extra).run()?.expect_error(101)?;

            // Asked for by name, infrastructure is refused with the reason.
            for (asked, why) in [
                (
                    nodes[1].address(),
                    format!("is the address of node \"{}\"", nodes[1].name()),
                ),
                (ip("10.11.0.5"), "excluded".to_owned()),
                (
                    rack_gateway(2),
                    "is the gateway of rack \"rack2\"".to_owned(),
                ),
            ] {
                let pod = lab.add_pod(nodes[0].index(), &format!("want-{asked}"))?;
                let out = lab
                    .cni(Cmd::Add, &pod)
                    .args(&format!("{};IP={asked}", pod.cni_args()))
                    .run()?;
                let e = out.expect_error(107)?;
                let text = format!(
                    "{} {}",
                    e["msg"].as_str().unwrap_or_default(),
                    e["details"].as_str().unwrap_or_default()
                );
                ensure!(text.contains(&why), "{asked}: {e}");
            }

            // Node to node traffic in the rack is intact.
            ensure!(
                lab.ping(&nodes[0], nodes[1].address())?,
                "{} cannot reach {}",
                nodes[0].name(),
                nodes[1].address()
            );
            lab.check_invariants().map(drop)
        })
        .context("whole-subnet rack")
}
