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
use rackline_lab::{Cmd, Lab, Pod};
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
