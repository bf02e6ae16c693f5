//! VLAN networks in the ordinary netns lab, on whatever kernel runs the tests. Where the kernel
//! lacks 8021q (this CI) a VLAN ADD must fail cleanly: code 100 naming the missing driver, the
//! node and pod exactly as before, no lease. Where it has 8021q the device is created, verified
//! and kept (default policy). The full VLAN scenario (tags, isolation, concurrency, cleanup
//! policies) is tests/vlan.rs, in a VM.

use anyhow::{ensure, Result};
use rackline_lab::{Cmd, Lab, UPLINK};
use serde_json::json;

#[test]
fn vlan_add_on_this_kernel_is_clean() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        lab.racklinectl(&[
            "network",
            "create",
            "tagged",
            "--subnet",
            "10.77.0.0/24",
            "--gateway",
            "10.77.0.1",
            "--master",
            UPLINK,
            "--vlan",
            "100",
        ])?;
        let runtime_dir = lab.dir().join("cni-run");
        let pod = lab.add_pod(1, "tag")?;
        let node_before = lab.snapshot(lab.node(1))?;
        let pod_before = lab.snapshot(&pod)?;
        let out = lab
            .cni(Cmd::Add, &pod)
            .set("network", json!("tagged"))
            .set("runtimeDir", json!(runtime_dir.display().to_string()))
            .run()?;
        let vlan_dev = format!("{UPLINK}.100");
        if out.success() {
            // A kernel with 8021q: the device exists, is VLAN 100 on the uplink, and stays.
            let dev = lab.link(lab.node(1), &vlan_dev)?;
            ensure!(
                dev.as_ref()
                    .is_some_and(|d| d["linkinfo"]["info_data"]["id"] == 100),
                "{vlan_dev} missing or wrong: {dev:?}"
            );
            lab.cni(Cmd::Del, &pod)
                .set("network", json!("tagged"))
                .set("runtimeDir", json!(runtime_dir.display().to_string()))
                .run()?
                .ok()?;
            ensure!(
                lab.link(lab.node(1), &vlan_dev)?.is_some(),
                "keep policy removed {vlan_dev}"
            );
        } else {
            let doc = out.expect_error(100)?;
            ensure!(
                doc.to_string().contains("load the 8021q module"),
                "the error should name the missing driver: {doc}"
            );
            let node_after = lab.snapshot(lab.node(1))?;
            ensure!(
                node_after == node_before,
                "node changed:\n{}",
                node_before.diff(&node_after)
            );
            let pod_after = lab.snapshot(&pod)?;
            ensure!(
                pod_after == pod_before,
                "pod changed:\n{}",
                pod_before.diff(&pod_after)
            );
        }
        ensure!(lab.leases()?.is_empty(), "lease left: {:?}", lab.leases()?);
        lab.check_invariants().map(drop)
    })
}
