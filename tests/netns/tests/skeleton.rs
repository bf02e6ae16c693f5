//! One rack end to end: the real `rackline` plugin, `rackline-ipamd`, `rackline-netmaster` and
//! `racklinectl` in a two-node rack. Every assertion reads real state: the plugin's JSON,
//! `ip -j` dumps of the namespaces, ping exit codes, `racklinectl -o json`.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use rackline_lab::{
    in_pool, node_address, result_interface_of, result_ipv4, Cidr4, Cmd, CniOutput, Lab, Pod,
    GATEWAY, SERVICE_CIDR,
};
use serde_json::{json, Value};

/// Runs a scenario on a fresh two-node lab, then checks etcd's invariants (no address owned
/// twice, one lease per attachment, every lease in its network's pool).
fn with_lab(f: impl FnOnce(&Lab) -> Result<()>) -> Result<()> {
    Lab::builder().nodes(2).run(|lab| {
        f(lab)?;
        lab.check_invariants().map(drop)
    })
}

/// ADD with the defaults; checks the 1.1.0 result against the pod's namespace.
fn add(lab: &Lab, pod: &Pod) -> Result<(Value, Cidr4)> {
    let result = lab.cni_add(pod)?;
    let addr = result_ipv4(&result)?;
    ensure!(
        in_pool(addr.addr) && addr.prefix == 24,
        "{addr} outside 10.10.0.64-254/24"
    );
    Ok((result, addr))
}

/// IPv4 addresses of a pod, loopback excluded.
fn pod_addrs(lab: &Lab, pod: &Pod) -> Result<Vec<(String, Cidr4)>> {
    let mut addrs = lab.ipv4_addrs(pod)?;
    addrs.retain(|(ifname, _)| ifname != "lo");
    Ok(addrs)
}

fn assert_only_lo(lab: &Lab, pod: &Pod) -> Result<()> {
    let links = lab.link_names(pod)?;
    ensure!(
        links == ["lo"],
        "pod {} still has links {links:?}",
        pod.name
    );
    ensure!(
        lab.routes(pod)?.is_empty(),
        "pod {} still has routes",
        pod.name
    );
    Ok(())
}

fn assert_no_lease(lab: &Lab, pod: &Pod) -> Result<()> {
    let leases = lab.leases_of(&pod.container_id)?;
    ensure!(
        leases.is_empty(),
        "lease of {} not released: {leases:?}",
        pod.name
    );
    Ok(())
}

fn assert_unchanged(lab: &Lab, k: usize, before: &rackline_lab::NetSnapshot) -> Result<()> {
    let after = lab.snapshot(lab.node(k))?;
    ensure!(&after == before, "n{k} changed:\n{}", before.diff(&after));
    Ok(())
}

/// Any CNI error: non-zero exit and `{"code": N, "msg": …}` on stdout.
fn error_code(out: &CniOutput) -> Result<u64> {
    ensure!(!out.success(), "expected a failure\n{out}");
    out.error_code()
        .with_context(|| format!("no CNI error document\n{out}"))
}

/// The pod-side veth: the one veth in the pod namespace.
fn pod_veth(lab: &Lab, pod: &Pod) -> Result<String> {
    let veths: Vec<String> = lab
        .links(pod)?
        .iter()
        .filter(|l| l["linkinfo"]["info_kind"] == "veth")
        .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        veths.len() == 1,
        "pod {} should have one veth: {veths:?}",
        pod.name
    );
    Ok(veths[0].clone())
}

#[test]
fn add_assigns_pool_addresses_that_match_the_pod() -> Result<()> {
    with_lab(|lab| {
        for k in [1, 2] {
            let pod = lab.add_pod(k, &format!("web-{k}"))?;
            let (result, addr) = add(lab, &pod)?;
            ensure!(result["cniVersion"] == "1.1.0", "{result}");
            let ip = &result["ips"][0];
            ensure!(
                ip.get("version").is_none(),
                "1.x results carry no ips[].version: {ip}"
            );
            ensure!(ip["gateway"] == "10.10.0.1", "{ip}");
            let iface = result_interface_of(&result, ip).context("ips[0].interface")?;
            ensure!(iface["name"] == "eth0", "{iface}");
            ensure!(iface["sandbox"] == pod.netns_path().as_str(), "{iface}");
            let routes = result["routes"].as_array().context("no routes")?;
            ensure!(
                routes
                    .iter()
                    .any(|r| r["dst"] == "0.0.0.0/0" && r["gw"] == "10.10.0.1"),
                "no default route in result: {routes:?}"
            );

            let eth0 = lab.link(&pod, "eth0")?.context("no eth0 in the pod")?;
            ensure!(eth0["linkinfo"]["info_kind"] == "macvlan", "{eth0}");
            ensure!(eth0["address"] == iface["mac"], "mac {eth0} vs {iface}");
            let addrs = pod_addrs(lab, &pod)?;
            ensure!(
                addrs == [("eth0".to_owned(), addr)],
                "pod addresses {addrs:?} vs {addr}"
            );

            let leases = lab.leases_of(&pod.container_id)?;
            ensure!(leases.len() == 1, "{leases:?}");
            let lease = &leases[0];
            ensure!(
                lease["address"] == addr.addr.to_string().as_str(),
                "{lease}"
            );
            ensure!(lease["network"] == "prod" && lease["node"] == format!("n{k}").as_str());
            ensure!(lease["ifname"] == "eth0", "{lease}");
            ensure!(lease["pod"]["name"] == pod.name.as_str(), "{lease}");
            ensure!(lease["pod"]["namespace"] == "default", "{lease}");
            ensure!(lease["pod"]["uid"] == pod.uid.as_str(), "{lease}");
        }
        Ok(())
    })
}

#[test]
fn pods_reach_each_other_the_gateway_and_their_node() -> Result<()> {
    with_lab(|lab| {
        let (a, b) = (lab.add_pod(1, "a")?, lab.add_pod(2, "b")?);
        let (_, addr_a) = add(lab, &a)?;
        let (_, addr_b) = add(lab, &b)?;
        ensure!(lab.ping(&a, addr_b.addr)?, "n1 pod cannot reach n2 pod");
        ensure!(lab.ping(&b, addr_a.addr)?, "n2 pod cannot reach n1 pod");
        ensure!(lab.ping(&a, GATEWAY)?, "pod cannot reach the gateway");
        // The node ↔ own pod path goes over the veth (macvlan children cannot talk to their
        // parent's host).
        ensure!(
            lab.ping(lab.node(1), addr_a.addr)?,
            "n1 cannot reach its pod"
        );
        ensure!(lab.ping(&a, node_address(1))?, "pod cannot reach its node");
        ensure!(
            lab.ping(lab.node(2), addr_b.addr)?,
            "n2 cannot reach its pod"
        );
        ensure!(
            lab.ping(&b, node_address(2))?,
            "pod cannot reach its node n2"
        );
        Ok(())
    })
}

#[test]
fn routes_in_pod_and_node() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "r")?;
        let (_, addr) = add(lab, &pod)?;
        let veth = pod_veth(lab, &pod)?;
        let default = lab
            .route_to(&pod, "default")?
            .context("pod: no default route")?;
        ensure!(
            default["gateway"] == "10.10.0.1" && default["dev"] == "eth0",
            "{default}"
        );
        let to_node = lab
            .route_to(&pod, "10.10.0.11")?
            .context("pod: no route to node")?;
        ensure!(to_node["dev"] == veth.as_str(), "{to_node}");
        let svc = lab
            .route_to(&pod, SERVICE_CIDR)?
            .context("pod: no service route")?;
        ensure!(svc["dev"] == veth.as_str(), "{svc}");

        let node = lab.node(1);
        let host = lab
            .route_to(node, &addr.addr.to_string())?
            .context("node: no /32")?;
        let host_dev = host["dev"].as_str().context("route without dev")?;
        let link = lab.link(node, host_dev)?.context("route dev missing")?;
        ensure!(
            link["linkinfo"]["info_kind"] == "veth" && host_dev != "uplink0",
            "{link}"
        );
        Ok(())
    })
}

#[test]
fn del_leaves_nothing() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "d")?;
        let before = lab.snapshot(lab.node(1))?;
        let (result, _) = add(lab, &pod)?;
        lab.cni(Cmd::Del, &pod).prev_result(&result).run()?.ok()?;
        assert_unchanged(lab, 1, &before)?;
        assert_only_lo(lab, &pod)?;
        assert_no_lease(lab, &pod)
    })
}

#[test]
fn del_twice_and_with_empty_netns_exit_zero() -> Result<()> {
    with_lab(|lab| {
        // StopPodSandbox then RemovePodSandbox (empty CNI_NETNS, no prevResult).
        let pod = lab.add_pod(1, "twice")?;
        let (result, _) = add(lab, &pod)?;
        lab.cni(Cmd::Del, &pod).prev_result(&result).run()?.ok()?;
        lab.cni(Cmd::Del, &pod).run()?.ok()?;
        lab.cni(Cmd::Del, &pod).netns("").run()?.ok()?;
        assert_no_lease(lab, &pod)?;

        // Only the empty-netns DEL: the address must still be released.
        let other = lab.add_pod(1, "empty")?;
        add(lab, &other)?;
        lab.cni(Cmd::Del, &other).netns("").run()?.ok()?;
        assert_no_lease(lab, &other)
    })
}

#[test]
fn del_of_unknown_container_exits_zero() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(2, "never-added")?;
        let before = lab.snapshot(lab.node(2))?;
        lab.cni_del(&pod)?;
        assert_unchanged(lab, 2, &before)?;
        assert_only_lo(lab, &pod)
    })
}

#[test]
fn del_after_pod_netns_is_gone_exits_zero() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "gone")?;
        let before = lab.snapshot(lab.node(1))?;
        let (result, _) = add(lab, &pod)?;
        lab.delete_pod_netns(&pod)?;
        lab.cni(Cmd::Del, &pod).prev_result(&result).run()?.ok()?;
        assert_unchanged(lab, 1, &before)?;
        assert_no_lease(lab, &pod)
    })
}

#[test]
fn add_is_idempotent() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "idem")?;
        let (_, first) = add(lab, &pod)?;
        let (_, second) = add(lab, &pod)?;
        ensure!(
            first == second,
            "repeated ADD moved the pod: {first} → {second}"
        );
        ensure!(
            lab.leases_of(&pod.container_id)?.len() == 1,
            "two leases for one pod"
        );
        let addrs = pod_addrs(lab, &pod)?;
        ensure!(addrs == [("eth0".to_owned(), first)], "{addrs:?}");
        Ok(())
    })
}

#[test]
fn results_follow_the_requested_cni_version() -> Result<()> {
    with_lab(|lab| {
        for (i, version) in ["0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
            let pod = lab.add_pod(1, &format!("v{i}"))?;
            let out = lab
                .cni(Cmd::Add, &pod)
                .set("cniVersion", json!(version))
                .run()?;
            let result = out.result()?;
            ensure!(result["cniVersion"] == version, "{result}");
            let ip = &result["ips"][0];
            ensure!(in_pool(result_ipv4(result)?.addr), "{result}");
            ensure!(result_interface_of(result, ip).is_some_and(|i| i["name"] == "eth0"));
            if version.starts_with("0.") {
                ensure!(ip["version"] == "4", "{version}: {ip}");
            } else {
                ensure!(ip.get("version").is_none(), "{version}: {ip}");
            }
            let del = lab.cni(Cmd::Del, &pod).set("cniVersion", json!(version));
            del.prev_result(result).run()?.ok()?;
            assert_no_lease(lab, &pod)?;
        }
        Ok(())
    })
}

#[test]
fn version_lists_supported_versions() -> Result<()> {
    with_lab(|lab| {
        let out = lab.cni_node(1, Cmd::Version).run()?;
        let supported = out.result()?["supportedVersions"].clone();
        for v in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            let listed = supported
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == v));
            ensure!(listed, "{v} missing from {supported}");
        }
        Ok(())
    })
}

#[test]
fn check_passes_after_add_and_fails_without_the_macvlan() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "chk")?;
        let (result, _) = add(lab, &pod)?;
        lab.cni(Cmd::Check, &pod).prev_result(&result).run()?.ok()?;
        lab.exec_in(&pod, &["ip", "link", "del", "eth0"])?.check()?;
        let out = lab.cni(Cmd::Check, &pod).prev_result(&result).run()?;
        error_code(&out)?;
        Ok(())
    })
}

#[test]
fn failed_add_rolls_back() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "rb")?;
        let before = lab.snapshot(lab.node(1))?;
        let out = lab
            .cni(Cmd::Add, &pod)
            .set("master", json!("nonexistent0"))
            .run()?;
        error_code(&out)?;
        assert_unchanged(lab, 1, &before)?;
        assert_only_lo(lab, &pod)?;
        assert_no_lease(lab, &pod)?;
        ensure!(lab.leases()?.is_empty(), "leases left: {:?}", lab.leases()?);
        Ok(())
    })
}

/// A failure late in ADD (after the lease, the macvlan and its address
/// exist): the pod-side veth name is already taken in the pod. Rollback
/// must remove the macvlan, leave the stranger alone and release the lease.
#[test]
fn late_failure_rolls_back_links_and_lease() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "late")?;
        let made = lab.exec_in(
            &pod,
            &[
                "ip",
                "link",
                "add",
                "rl-eth0",
                "type",
                "veth",
                "peer",
                "name",
                "stranger0",
            ],
        )?;
        ensure!(made.code == 0, "setting up the clash: {made:?}");
        let pod_before = lab.snapshot(&pod)?;
        let node_before = lab.snapshot(lab.node(1))?;
        let out = lab.cni(Cmd::Add, &pod).run()?;
        let code = error_code(&out)?;
        ensure!(
            code == 100,
            "expected the datapath error code 100, got {code}: {}",
            out.stdout
        );
        ensure!(
            out.stdout.contains("rl-eth0"),
            "the error should name the clash: {}",
            out.stdout
        );
        let pod_after = lab.snapshot(&pod)?;
        ensure!(
            pod_after == pod_before,
            "pod changed:\n{}",
            pod_before.diff(&pod_after)
        );
        assert_unchanged(lab, 1, &node_before)?;
        assert_no_lease(lab, &pod)?;
        Ok(())
    })
}

#[test]
fn add_without_ipamd_is_try_again_later() -> Result<()> {
    with_lab(|lab| {
        lab.kill_ipamd(1)?;
        let pod = lab.add_pod(1, "noipamd")?;
        let before = lab.snapshot(lab.node(1))?;
        lab.cni(Cmd::Add, &pod).run()?.expect_error(11)?;
        assert_unchanged(lab, 1, &before)?;
        assert_only_lo(lab, &pod)?;
        ensure!(lab.leases()?.is_empty(), "leases: {:?}", lab.leases()?);
        Ok(())
    })
}

#[test]
fn bad_environment_is_code_4() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "env")?;
        for var in ["CNI_COMMAND", "CNI_NETNS", "CNI_CONTAINERID", "CNI_IFNAME"] {
            let out = lab.cni(Cmd::Add, &pod).unset(var).run()?;
            out.expect_error(4)
                .with_context(|| format!("ADD without {var}"))?;
        }
        assert_only_lo(lab, &pod)?;
        assert_no_lease(lab, &pod)
    })
}

#[test]
fn garbage_stdin_is_code_6() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "garbage")?;
        let out = lab
            .cni(Cmd::Add, &pod)
            .stdin_raw("{\"cniVersion\": oops")
            .run()?;
        out.expect_error(6)?;
        assert_only_lo(lab, &pod)?;
        assert_no_lease(lab, &pod)
    })
}

#[test]
fn invalid_config_is_code_7() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(1, "invalid")?;
        let before = lab.snapshot(lab.node(1))?;
        let out = lab
            .cni(Cmd::Add, &pod)
            .set("hostRoutes", json!(["nope"]))
            .run()?;
        out.expect_error(7)?;
        assert_unchanged(lab, 1, &before)?;
        assert_only_lo(lab, &pod)?;
        assert_no_lease(lab, &pod)
    })
}

#[test]
fn unknown_top_level_keys_are_tolerated() -> Result<()> {
    with_lab(|lab| {
        let pod = lab.add_pod(2, "tolerant")?;
        let out = lab
            .cni(Cmd::Add, &pod)
            .set("someOtherPlugin", json!({"x": 1}))
            .set("runtimeConfig", json!({"portMappings": []}))
            .run()?;
        ensure!(in_pool(result_ipv4(out.result()?)?.addr));
        Ok(())
    })
}

#[test]
fn status_follows_ipamd() -> Result<()> {
    with_lab(|lab| {
        lab.cni_node(1, Cmd::Status).run()?.ok()?;
        lab.kill_ipamd(1)?;
        lab.cni_node(1, Cmd::Status).run()?.expect_error(50)?;
        lab.cni_node(2, Cmd::Status).run()?.ok()?;
        lab.start_ipamd(1)?;
        lab.cni_node(1, Cmd::Status).run()?.ok()?;
        Ok(())
    })
}

#[test]
fn gc_releases_attachments_not_listed() -> Result<()> {
    with_lab(|lab| {
        let (keep, drop) = (lab.add_pod(1, "keep")?, lab.add_pod(1, "drop")?);
        let other_node = lab.add_pod(2, "elsewhere")?;
        for pod in [&keep, &drop, &other_node] {
            add(lab, pod)?;
        }
        let valid = json!([{"containerID": keep.container_id, "ifname": "eth0"}]);
        let gc = lab
            .cni_node(1, Cmd::Gc)
            .set("cni.dev/valid-attachments", valid);
        gc.run()?.ok()?;
        ensure!(
            lab.leases_of(&keep.container_id)?.len() == 1,
            "GC released a valid lease"
        );
        assert_no_lease(lab, &drop)?;
        // GC on n1 only speaks for n1's attachments.
        ensure!(
            lab.leases_of(&other_node.container_id)?.len() == 1,
            "GC crossed nodes"
        );
        Ok(())
    })
}

#[test]
fn concurrent_adds_get_distinct_addresses() -> Result<()> {
    with_lab(|lab| {
        let pods: Vec<Pod> = (0..20)
            .map(|i| lab.add_pod(1 + i % 2, &format!("c{i}")))
            .collect::<Result<_>>()?;
        let addrs: Vec<Cidr4> = std::thread::scope(|s| {
            let handles: Vec<_> = pods.iter().map(|p| s.spawn(move || add(lab, p))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ADD thread panicked").map(|(_, a)| a))
                .collect::<Result<_>>()
        })?;
        let distinct: BTreeSet<Ipv4Addr> = addrs.iter().map(|a| a.addr).collect();
        ensure!(distinct.len() == 20, "duplicate addresses: {addrs:?}");
        let leased: BTreeSet<Ipv4Addr> = lab
            .leases()?
            .iter()
            .filter_map(|l| l["address"].as_str()?.parse().ok())
            .collect();
        ensure!(
            leased == distinct,
            "leases {leased:?} vs results {distinct:?}"
        );
        for (pod, addr) in pods.iter().zip(&addrs) {
            let in_ns = pod_addrs(lab, pod)?;
            ensure!(
                in_ns == [("eth0".to_owned(), *addr)],
                "{}: {in_ns:?}",
                pod.name
            );
        }
        Ok(())
    })
}
