//! The lifecycle around the happy path, with real etcd, netmaster, ipamds and the plugin: a
//! network whose pods are gone is unbound and deleted without --force (the ipamds give their
//! standby reserve and blocks back), one ipamd per node name, and a node that dies for good
//! reclaimed by netmaster after its grace (its sticky pod's address held for the pod, which
//! gets it back on another node of the rack).
//!
//! Needs root and `cargo build --workspace --bins` first.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rackline_lab::{result_ipv4, Cmd, Lab, LabBuilder, LabNetworkMode, Pod};
use serde_json::Value;

const NET: &str = "prod";

fn spanning() -> LabBuilder {
    Lab::builder()
        .racks(2)
        .nodes_per_rack(2)
        .network_mode(LabNetworkMode::Spanning)
}

fn add_ok(lab: &Lab, pod: &Pod) -> Result<Ipv4Addr> {
    Ok(result_ipv4(&lab.cni_add(pod)?)?.addr)
}

/// The runtime's teardown of a pod: DEL, then the sandbox netns goes.
fn remove(lab: &Lab, pod: &Pod) -> Result<()> {
    lab.cni_del(pod)?;
    lab.delete_pod_netns(pod)
}

fn array(v: Value) -> Result<Vec<Value>> {
    match v {
        Value::Array(a) => Ok(a),
        other => bail!("not a JSON array: {other}"),
    }
}

fn standby_of(lab: &Lab, nodes: &[&str]) -> Result<usize> {
    Ok(lab
        .lease_records()?
        .iter()
        .filter(|l| l["state"] == "standby" && nodes.contains(&l["node"].as_str().unwrap_or("")))
        .count())
}

fn blocks_of_rack(lab: &Lab, rack: &str) -> Result<usize> {
    Ok(array(lab.racklinectl(&["block", "list", "--rack", rack])?)?.len())
}

/// Polls `f` every 200 ms until it holds, for at most `limit`.
fn eventually(limit: Duration, what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if f()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("not within {limit:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every pod gone: `rack unbind` and `network delete` succeed without --force, once the
/// ipamds have given back their standby records and blocks (which they keep while idle).
#[test]
fn a_drained_network_is_unbound_and_deleted_without_force() -> Result<()> {
    spanning().run(|lab| {
        let rack1: Vec<String> = lab
            .rack_nodes(1)
            .iter()
            .map(|n| n.name().to_owned())
            .collect();
        let rack1: Vec<&str> = rack1.iter().map(String::as_str).collect();
        let mut pods = Vec::new();
        for node in lab.nodes() {
            for i in 0..3 {
                let pod = lab.add_pod(node.index(), &format!("web-{}-{i}", node.name()))?;
                add_ok(lab, &pod)?;
                pods.push(pod);
            }
        }
        // A pod still there: refused at once, naming it.
        let last = pods.pop().context("pods")?;
        for pod in &pods {
            remove(lab, pod)?;
        }
        eventually(
            Duration::from_secs(10),
            "every node keeps a reserve",
            || Ok(standby_of(lab, &rack1)? > 0 && blocks_of_rack(lab, "rack1")? > 0),
        )?;
        let out = lab.racklinectl_raw(&["network", "delete", NET])?;
        ensure!(!out.success(), "deleted with a pod left: {out:?}");
        ensure!(
            out.stderr.contains("1 pod lease(s) (default/web-r2n2-2)"),
            "{}",
            out.stderr
        );
        remove(lab, &last)?;
        // Idle for a while: the reserve stays (it is what serves pods through an outage).
        std::thread::sleep(Duration::from_secs(2));
        ensure!(
            standby_of(lab, &rack1)? > 0,
            "the idle reserve went by itself"
        );

        let t = Instant::now();
        lab.racklinectl_raw(&["rack", "unbind", "rack1", NET])?
            .check()
            .context("rack unbind after the drain")?;
        eprintln!("rack1 unbound in {:?}", t.elapsed());
        ensure!(blocks_of_rack(lab, "rack1")? == 0, "rack1 kept blocks");
        ensure!(standby_of(lab, &rack1)? == 0, "rack1 kept standby records");
        ensure!(
            standby_of(lab, &["r2n1", "r2n2"])? > 0,
            "rack2's reserve is not concerned by rack1's unbind"
        );

        let t = Instant::now();
        lab.racklinectl_raw(&["network", "delete", NET])?
            .check()
            .context("network delete after the drain")?;
        eprintln!("network deleted in {:?}", t.elapsed());
        ensure!(array(lab.racklinectl(&["network", "list"])?)?.is_empty());
        ensure!(lab.lease_records()?.is_empty(), "records left");
        ensure!(array(lab.racklinectl(&["block", "list"])?)?.is_empty());
        Ok(())
    })
}

/// Two ipamds with one node name would take each other's addresses for their own: the
/// second one (another host, its own state directory) refuses to start, and the first keeps
/// serving. A restart of the first on its own state directory is not held up.
#[test]
fn a_second_ipamd_with_the_same_node_name_is_refused() -> Result<()> {
    Lab::builder()
        .ipamd_args(&["--liveness-ttl-secs", "2"])
        .run(|lab| {
            let t = Instant::now();
            let (status, log) = lab.run_ipamd_as(1, 2, Duration::from_secs(20))?;
            let status = status.context("the second ipamd kept running")?;
            ensure!(!status.success(), "exit {status}: {log}");
            ensure!(
                log.contains("another ipamd already serves node \"n1\""),
                "{log}"
            );
            eprintln!("refused after {:?}", t.elapsed());
            let pod = lab.add_pod(1, "web-0")?;
            let added = lab.cni_add(&pod)?;

            // A crash, then a restart on the same state directory: the record left behind
            // is its own predecessor's, replaced at once.
            lab.kill_ipamd(1)?;
            let t = Instant::now();
            lab.start_ipamd(1)?;
            ensure!(
                t.elapsed() < Duration::from_secs(2),
                "restart waited {:?} for its own old record",
                t.elapsed()
            );
            let again = lab.cni(Cmd::Check, &pod).prev_result(&added).run()?;
            ensure!(again.error_code().is_none(), "{again:?}");
            Ok(())
        })
}

/// A node dies for good (its ipamd killed, its pods gone with it): after the grace netmaster
/// frees its non-sticky leases, turns its sticky pod's lease into a reservation and returns
/// its blocks; the sticky pod, started on the other node of the rack, gets its address back.
#[test]
fn a_dead_node_is_reclaimed_and_its_sticky_pod_moves() -> Result<()> {
    spanning()
        .network_args(&["--sticky-pod", "db-\\d+"])
        .netmaster_args(&["--dead-node-grace", "3"])
        .ipamd_args(&["--liveness-ttl-secs", "2"])
        .run(|lab| {
            let (r1n1, r1n2) = (lab.rack_node(1, 1).index(), lab.rack_node(1, 2).index());
            let db = lab.add_pod(r1n1, "db-0")?;
            let db_addr = add_ok(lab, &db)?;
            let web = lab.add_pod(r1n1, "web-0")?;
            let web_addr = add_ok(lab, &web)?;
            let node_row = |name: &str| -> Result<Value> {
                array(lab.racklinectl(&["node", "list"])?)?
                    .into_iter()
                    .find(|n| n["node"]["name"] == name)
                    .with_context(|| format!("node {name} not listed"))
            };
            ensure!(node_row("r1n1")?["live"] == true, "{}", node_row("r1n1")?);

            lab.kill_ipamd(r1n1)?;
            lab.delete_pod_netns(&db)?;
            lab.delete_pod_netns(&web)?;
            // While the node may still come back, its sticky pod cannot start elsewhere.
            let moved = lab.add_pod(r1n2, "db-0")?;
            let early = lab.cni(Cmd::Add, &moved).run()?;
            ensure!(early.error_code() == Some(105), "{early:?}");
            lab.cni_del(&moved)?;

            let t = Instant::now();
            eventually(Duration::from_secs(30), "r1n1 reclaimed", || {
                let row = node_row("r1n1")?;
                Ok(row["live"] == false && row["blocks"].as_array().is_some_and(Vec::is_empty))
            })?;
            eprintln!("reclaimed {:?} after the kill", t.elapsed());
            let records = lab.lease_records()?;
            let at = |a: Ipv4Addr| records.iter().find(|l| l["address"] == a.to_string());
            let db_rec = at(db_addr).context("the sticky address was freed")?;
            ensure!(db_rec["state"] == "reserved", "{db_rec}");
            ensure!(at(web_addr).is_none(), "web-0's lease kept: {records:?}");
            ensure!(
                !records
                    .iter()
                    .any(|l| l["node"] == "r1n1" && l["state"] == "standby"),
                "r1n1's reserve kept"
            );

            let again = add_ok(lab, &moved)?;
            ensure!(again == db_addr, "db-0 got {again}, had {db_addr}");
            let report = lab.check_invariants()?;
            eprintln!("invariants: {report}");
            Ok(())
        })
}
