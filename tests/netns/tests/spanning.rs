//! Issue 3 end to end: ONE network spanning two racks (a rack binding per rack, with the rack's
//! subnet and TOR gateway), rack-aware ipamds (`--rack`, `--netmaster`) taking blocks from
//! netmaster, borrowing inside their rack when it is full, and serving from their standby
//! reserve while etcd is down. The invariant checker (no address twice, every lease inside its
//! node's rack ranges, blocks consistent with leases) runs after every scenario.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rackline_lab::{rack_gateway, result_ipv4, Cmd, Lab, LabBuilder, LabNetworkMode, Pod};
use serde_json::Value;

fn spanning() -> LabBuilder {
    Lab::builder()
        .racks(2)
        .nodes_per_rack(2)
        .network_mode(LabNetworkMode::Spanning)
}

fn with_lab(builder: LabBuilder, f: impl FnOnce(&Lab) -> Result<()>) -> Result<()> {
    builder.run(|lab| {
        f(lab)?;
        let report = lab.check_invariants()?;
        eprintln!("invariants: {report}");
        Ok(())
    })
}

fn in_range(lab: &Lab, r: usize, a: Ipv4Addr) -> bool {
    let (first, last) = lab.spanning_range(r);
    (first..=last).contains(&a)
}

/// Runs ADD for every pod concurrently; returns each pod's address or error code.
fn add_all(lab: &Lab, pods: &[Pod]) -> Vec<std::result::Result<Ipv4Addr, u64>> {
    std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .map(|p| {
                s.spawn(move || {
                    let out = lab.cni(Cmd::Add, p).run().expect("running the plugin");
                    match out.error_code() {
                        None => Ok(result_ipv4(out.result().expect("result"))
                            .expect("ipv4")
                            .addr),
                        Some(c) => Err(c),
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("ADD thread"))
            .collect()
    })
}

/// Waits until every node of the lab has registered and holds a block.
fn wait_for_blocks(lab: &Lab) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let blocks = lab.racklinectl(&["block", "list"])?;
        let owners: BTreeSet<String> = blocks
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["node"].as_str().map(str::to_owned))
            .collect();
        if lab.nodes().iter().all(|n| owners.contains(n.name())) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "nodes without blocks after 15 s: {blocks}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn one_network_spans_two_racks_and_pods_talk_across() -> Result<()> {
    with_lab(spanning(), |lab| {
        wait_for_blocks(lab)?;
        let mut pods = Vec::new();
        for n in lab.nodes() {
            pods.push(lab.add_pod(n.index(), &format!("web-{}", n.name()))?);
        }
        let mut addrs = Vec::new();
        for p in &pods {
            let res = lab.cni_add(p)?;
            let a = result_ipv4(&res)?;
            let r = lab.node(p.node).rack();
            ensure!(
                in_range(lab, r, a.addr),
                "{} of rack {r} got {}",
                p.name,
                a.addr
            );
            // The pod's gateway is its own rack's TOR.
            let gw = res["ips"][0]["gateway"].as_str().unwrap_or_default();
            ensure!(
                gw == rack_gateway(r).to_string(),
                "{}: gateway {gw}",
                p.name
            );
            addrs.push(a.addr);
        }
        // Every pod reaches every other pod (across the spine), and its gateway.
        for (i, p) in pods.iter().enumerate() {
            for (j, a) in addrs.iter().enumerate() {
                if i != j {
                    ensure!(lab.ping(p, *a)?, "{} cannot reach {a}", p.name);
                }
            }
            ensure!(lab.ping(p, rack_gateway(lab.node(p.node).rack()))?);
        }
        // The admin view agrees: blocks per node in its rack, a pool row per rack.
        let pool = lab.racklinectl(&["pool"])?;
        let rows = pool.as_array().context("pool rows")?;
        ensure!(rows.len() == 2, "one row per rack: {pool}");
        for p in &pods {
            lab.cni_del(p)?;
        }
        Ok(())
    })
}

#[test]
fn capacity_equals_demand_every_rack_address_is_allocatable_by_borrowing() -> Result<()> {
    // Each rack owns exactly 32 addresses (two blocks of 16). The reserve is off here:
    // with capacity exactly equal to demand there is nothing to hold back.
    let b = spanning().rack_range_len(32).block_size(16).standby(0);
    with_lab(b, |lab| {
        wait_for_blocks(lab)?;
        for r in [1, 2] {
            let nodes = lab.rack_nodes(r).to_vec();
            // Uneven demand: the first node needs more than one block's worth, so
            // it must borrow from its neighbour's block once the rack has no free block.
            let mut pods = Vec::new();
            for (i, n) in nodes.iter().enumerate() {
                let count = if i == 0 { 22 } else { 10 };
                for j in 0..count {
                    pods.push(lab.add_pod(n.index(), &format!("r{r}-{i}-{j}"))?);
                }
            }
            let got = add_all(lab, &pods);
            let ok: Vec<Ipv4Addr> = got
                .iter()
                .filter_map(|g| g.as_ref().ok().copied())
                .collect();
            let failed: Vec<u64> = got
                .iter()
                .filter_map(|g| g.as_ref().err().copied())
                .collect();
            ensure!(
                failed.is_empty(),
                "rack {r}: {} ADDs failed with {failed:?}",
                failed.len()
            );
            let distinct: BTreeSet<Ipv4Addr> = ok.iter().copied().collect();
            ensure!(
                distinct.len() == 32,
                "rack {r}: {} distinct of 32",
                distinct.len()
            );
            ensure!(
                ok.iter().all(|a| in_range(lab, r, *a)),
                "rack {r} got an address outside its range"
            );
            // One more pod in the full rack: a clear "no free address".
            let extra = lab.add_pod(nodes[1].index(), &format!("r{r}-extra"))?;
            lab.cni(Cmd::Add, &extra).run()?.expect_error(101)?;
        }
        let leases = lab.leases()?;
        ensure!(leases.len() == 64, "{} leases", leases.len());
        Ok(())
    })
}

#[test]
fn etcd_down_mid_storm_adds_come_from_the_reserve_and_are_replayed() -> Result<()> {
    with_lab(spanning().standby(4), |lab| {
        wait_for_blocks(lab)?;
        let node = lab.rack_node(1, 1).index();
        // Use the network on this node so it keeps a reserve, then let it fill.
        let warm = lab.add_pod(node, "warm")?;
        lab.cni_add(&warm)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let standby = lab
                .lease_records()?
                .iter()
                .filter(|l| l["state"] == "standby" && l["node"] == lab.node(node).name())
                .count();
            if standby >= 4 {
                break;
            }
            ensure!(Instant::now() < deadline, "no standby reserve after 10 s");
            std::thread::sleep(Duration::from_millis(100));
        }
        lab.stop_etcd()?;
        let pods: Vec<Pod> = (0..6)
            .map(|i| lab.add_pod(node, &format!("outage-{i}")))
            .collect::<Result<_>>()?;
        let t0 = Instant::now();
        let got = add_all(lab, &pods);
        ensure!(
            t0.elapsed() < Duration::from_secs(30),
            "ADD hung while etcd was down"
        );
        let ok: Vec<(usize, Ipv4Addr)> = got
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.as_ref().ok().map(|a| (i, *a)))
            .collect();
        ensure!(
            ok.len() == 4,
            "the 4-address reserve should serve exactly 4 ADDs: {got:?}"
        );
        for g in got.iter().filter_map(|g| g.as_ref().err()) {
            ensure!(
                *g == 11,
                "beyond the reserve, ADD must say 'try again later': {got:?}"
            );
        }
        // The offline pods really work.
        let (first, addr) = ok[0];
        ensure!(lab.ping(&pods[first], rack_gateway(1))?);
        ensure!(lab.ping(&warm, addr)?);
        // One DEL while etcd is still away.
        let (gone, _) = ok[1];
        lab.cni_del(&pods[gone])?;
        lab.start_etcd()?;
        // The journal is replayed: etcd holds exactly what was acknowledged.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let leases = lab.leases()?;
            let holds = |cid: &str| leases.iter().any(|l| l["containerId"] == cid);
            let all_in = ok
                .iter()
                .filter(|(i, _)| *i != gone)
                .all(|(i, _)| holds(&pods[*i].container_id));
            if all_in && !holds(&pods[gone].container_id) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "journal not replayed after 20 s: {leases:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        for l in lab.leases()? {
            if let Some((i, a)) = ok
                .iter()
                .find(|(i, _)| l["containerId"] == pods[*i].container_id.as_str())
            {
                ensure!(
                    l["address"] == a.to_string(),
                    "pod {i}: etcd has {} but the pod has {a}",
                    l["address"]
                );
            }
        }
        Ok(())
    })
}

#[test]
fn ipamd_kill9_and_restart_keeps_every_lease() -> Result<()> {
    with_lab(spanning(), |lab| {
        wait_for_blocks(lab)?;
        let node = lab.rack_node(2, 2).index();
        let pods: Vec<Pod> = (0..10)
            .map(|i| lab.add_pod(node, &format!("k9-{i}")))
            .collect::<Result<_>>()?;
        let first = add_all(lab, &pods[..5]);
        lab.kill_ipamd(node)?;
        lab.start_ipamd(node)?;
        let second = add_all(lab, &pods[5..]);
        let again = add_all(lab, &pods[..5]);
        let a: Vec<Ipv4Addr> = first
            .iter()
            .chain(&second)
            .map(|g| *g.as_ref().expect("ADD"))
            .collect();
        let b: Vec<Ipv4Addr> = again
            .iter()
            .map(|g| *g.as_ref().expect("repeated ADD"))
            .collect();
        ensure!(
            a[..5] == b[..],
            "repeated ADDs after the restart changed addresses: {a:?} vs {b:?}"
        );
        let distinct: BTreeSet<Ipv4Addr> = a.iter().copied().collect();
        ensure!(distinct.len() == 10);
        ensure!(a.iter().all(|x| in_range(lab, 2, *x)));
        let leases: Vec<Value> = lab.leases()?;
        ensure!(leases.len() == 10, "{leases:?}");
        Ok(())
    })
}
