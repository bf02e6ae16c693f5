//! `racklinectl network update` end to end with the real plugin, ipamd, netmaster and etcd:
//! a pod added before the update keeps what it got at ADD and is reported as differing —
//! by netmaster's answer, by CNI CHECK (naming each setting) and by ipamd's
//! `rackline_ipamd_pods_out_of_spec` gauge — while the next pod gets the new bandwidth
//! default and host route, read back from the kernel inside its namespace.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

mod observe_common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use observe_common::{ipamd, poll};
use rackline_lab::{result_ipv4, Cmd, Lab, LabNetworkMode, Pod};
use serde_json::Value;

const M: u64 = 1_000_000;
const NEW_HOST_ROUTE: &str = "10.250.0.0/16";

/// The egress tbf rate (bits/s) on the pod's eth0, None when unshaped.
fn egress_rate(lab: &Lab, pod: &Pod) -> Result<Option<u64>> {
    let out = lab.exec_in(pod, &["tc", "-j", "qdisc", "show", "dev", "eth0"])?;
    ensure!(out.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .find(|q| q["kind"] == "tbf")
        .and_then(|q| q["options"]["rate"].as_u64())
        .map(|bytes| bytes * 8))
}

/// Whether the pod has a route to `dst` (read with `ip -j route`).
fn has_route(lab: &Lab, pod: &Pod, dst: &str) -> Result<bool> {
    let out = lab.exec_in(pod, &["ip", "-j", "-4", "route", "show"])?;
    ensure!(out.success(), "{out:?}");
    let v: Value = serde_json::from_str(&out.stdout).with_context(|| out.stdout.clone())?;
    Ok(v.as_array().into_iter().flatten().any(|r| r["dst"] == dst))
}

fn out_of_spec(lab: &Lab, net: &str) -> Result<f64> {
    Ok(ipamd(lab, 1)?
        .value("rackline_ipamd_pods_out_of_spec", &[("network", net)])
        .unwrap_or(-1.0))
}

#[test]
fn the_next_pod_gets_the_update_and_check_names_what_the_old_one_lacks() -> Result<()> {
    Lab::builder()
        .nodes(1)
        .network_args(&["--qos-default", "egress=300M"])
        .run(|lab| {
            let net = lab.network_of_node(1);
            let old = lab.add_pod(1, "old")?;
            let old_result = lab.cni_add(&old)?;
            ensure!(egress_rate(lab, &old)? == Some(300 * M));
            ensure!(!has_route(lab, &old, NEW_HOST_ROUTE)?);
            let check_old = || lab.cni(Cmd::Check, &old).prev_result(&old_result).run();
            check_old()?.ok().context("CHECK before the update")?;
            ensure!(out_of_spec(lab, &net)? == 0.0);

            let r = lab.racklinectl(&[
                "network",
                "update",
                &net,
                "--qos-default",
                "egress=100M",
                "--host-route",
                NEW_HOST_ROUTE,
            ])?;
            ensure!(r["changes"].as_array().map(Vec::len) == Some(2), "{r}");
            // netmaster names the running pod that now differs, and how.
            let differing = r["differing"].as_array().context("differing")?;
            ensure!(differing.len() == 1, "{r}");
            ensure!(differing[0]["lease"]["pod"]["name"] == "old", "{r}");
            let why = differing[0]["differences"].to_string();
            ensure!(
                why.contains("QoS default: the pod has egress=300M, the network now has egress=100M")
                    && why.contains("host routes:"),
                "{why}"
            );

            // ipamd learns the new definition through its watch: CHECK of the old pod then
            // fails, naming each setting that differs.
            let doc = poll(Duration::from_secs(15), "CHECK reports the update", || {
                let out = check_old()?;
                Ok((out.error_code() == Some(103)).then(|| out.expect_error(103).cloned()))
            })??;
            let details = doc["details"].as_str().unwrap_or_default();
            ensure!(
                details.contains("QoS default: the pod has egress=300M, the network now has egress=100M")
                    && details.contains(&format!("host routes: the pod has 10.96.0.0/12, the network now has 10.96.0.0/12, {NEW_HOST_ROUTE}")),
                "{doc}"
            );
            ensure!(
                doc["msg"].as_str().unwrap_or_default().contains("no longer has"),
                "{doc}"
            );
            ensure!(out_of_spec(lab, &net)? == 1.0);

            // The next pod gets the new settings, and CHECK passes for it.
            let new = lab.add_pod(1, "new")?;
            let new_result = lab.cni_add(&new)?;
            ensure!(egress_rate(lab, &new)? == Some(100 * M));
            ensure!(has_route(lab, &new, NEW_HOST_ROUTE)?);
            lab.cni(Cmd::Check, &new)
                .prev_result(&new_result)
                .run()?
                .ok()
                .context("CHECK of a pod added after the update")?;
            ensure!(out_of_spec(lab, &net)? == 1.0, "only the old pod differs");
            // The old pod kept what it had: nothing was changed under it.
            ensure!(egress_rate(lab, &old)? == Some(300 * M));

            lab.cni_del(&old)?;
            ensure!(out_of_spec(lab, &net)? == 0.0);
            lab.cni_del(&new)?;
            lab.check_invariants().map(drop)
        })
}

/// A rack-bound network: ipamd reloads the rack's pool when the definition changes, keeps
/// allocating from its blocks, and an exclusion over a running pod's address is refused
/// naming it.
#[test]
fn a_rack_bound_network_is_updated_in_place() -> Result<()> {
    Lab::builder()
        .racks(2)
        .nodes_per_rack(1)
        .network_mode(LabNetworkMode::Spanning)
        .run(|lab| {
            let net = lab.network_of_node(1);
            let a = lab.add_pod(1, "a")?;
            let a_result = lab.cni_add(&a)?;
            let a_ip = result_ipv4(&a_result)?.addr;

            let refused =
                lab.racklinectl_raw(&["network", "update", &net, "--exclude", &a_ip.to_string()])?;
            ensure!(refused.code == 1, "{refused:?}");
            ensure!(
                refused.stderr.contains(&format!("{a_ip} (pod ")),
                "the refusal names the pod's address: {refused:?}"
            );

            let r =
                lab.racklinectl(&["network", "update", &net, "--host-route", "10.251.0.0/16"])?;
            ensure!(r["differing"].as_array().map(Vec::len) == Some(1), "{r}");
            let check_a = || lab.cni(Cmd::Check, &a).prev_result(&a_result).run();
            let doc = poll(Duration::from_secs(15), "CHECK reports the update", || {
                let out = check_a()?;
                Ok((out.error_code() == Some(103)).then(|| out.expect_error(103).cloned()))
            })??;
            ensure!(
                doc["details"]
                    .as_str()
                    .is_some_and(|d| d.contains("host routes:") && d.contains("10.251.0.0/16")),
                "{doc}"
            );

            // The next pod on the rack gets the new route and an address of its rack.
            let b = lab.add_pod(1, "b")?;
            let b_result = lab.cni_add(&b)?;
            let b_ip = result_ipv4(&b_result)?.addr;
            ensure!(
                lab.networks().iter().any(|n| n.in_pool_of_rack(1, b_ip)),
                "{b_ip} is not rack 1's"
            );
            ensure!(has_route(lab, &b, "10.251.0.0/16")?);
            lab.cni(Cmd::Check, &b)
                .prev_result(&b_result)
                .run()?
                .ok()
                .context("CHECK of the pod added after the update")?;
            ensure!(out_of_spec(lab, &net)? == 1.0);

            lab.cni_del(&a)?;
            lab.cni_del(&b)?;
            ensure!(out_of_spec(lab, &net)? == 0.0);
            lab.check_invariants().map(drop)
        })
}

/// This node's standby records (the outage reserve) on `net`.
fn standby_of(lab: &Lab, net: &str) -> Result<Vec<String>> {
    let node = lab.node(1).name().to_string();
    Ok(lab
        .lease_records()?
        .into_iter()
        .filter(|l| l["state"] == "standby" && l["node"] == node.as_str() && l["network"] == net)
        .filter_map(|l| l["address"].as_str().map(str::to_owned))
        .collect())
}

/// A new exclusion over a node's standby record goes through that node's ipamd, as a drain
/// does: the ipamd's reserve (and the reserve it persisted for a restart without etcd) counts
/// on the record, so netmaster never deletes it under the ipamd. With the ipamd down the
/// update is refused naming the node, `--force` or not, and the record stays; with it up the
/// update is written, the ipamd gives the record back and refills its reserve outside the
/// exclusion.
#[test]
fn a_new_exclusion_over_a_standby_record_is_given_back_by_its_ipamd() -> Result<()> {
    Lab::builder()
        .nodes(1)
        .ipamd_args(&["--liveness-ttl-secs", "2"])
        .run(|lab| {
            let net = lab.network_of_node(1);
            let name = lab.node(1).name().to_string();
            // A pod makes the network in use here: the ipamd builds its reserve.
            let pod = lab.add_pod(1, "p")?;
            lab.cni_add(&pod)?;
            let reserve = poll(Duration::from_secs(20), "the standby reserve", || {
                let s = standby_of(lab, &net)?;
                Ok((s.len() == 4).then_some(s))
            })?;
            let ip = reserve[0].clone();

            lab.kill_ipamd(1)?;
            // Its liveness record expires with its etcd lease (TTL 2 s).
            let liveness = format!("/liveness/{name}");
            poll(Duration::from_secs(20), "the node no longer live", || {
                let (_, records) = lab.etcd_records()?;
                Ok((!records.iter().any(|(k, _)| k.ends_with(&liveness))).then_some(()))
            })?;
            let refused = lab.racklinectl_raw(&[
                "network", "update", &net, "--exclude", &ip, "--force",
            ])?;
            ensure!(refused.code == 1, "{refused:?}");
            ensure!(
                refused.stderr.contains(&format!(
                    "standby record(s) of node(s) {name}, whose ipamd is not live: {ip} (node {name})"
                )),
                "{refused:?}"
            );
            ensure!(standby_of(lab, &net)?.contains(&ip), "the record stays");

            lab.start_ipamd(1)?;
            let r = lab.racklinectl(&["network", "update", &net, "--exclude", &ip])?;
            ensure!(r["standbyReturned"] == serde_json::json!([ip]), "{r}");
            ensure!(r["standbyPending"] == serde_json::json!([]), "{r}");
            let refilled = poll(Duration::from_secs(20), "the reserve refilled", || {
                let s = standby_of(lab, &net)?;
                Ok((s.len() == 4).then_some(s))
            })?;
            ensure!(!refilled.contains(&ip), "{refilled:?}");
            ensure!(
                lab.logs(200)
                    .contains("giving back standby records the network now excludes"),
                "the ipamd gave the record back"
            );
            lab.cni_del(&pod)?;
            lab.check_invariants().map(drop)
        })
}
