//! What a pod's attachments are and who may remove them, end to end with the real binaries:
//! ownership marks (and pods set up before marks), several attachments in one pod (Multus:
//! `eth0` + `net1`, same network or two), the release spool when ipamd is away, ipamd restarts
//! during ADDs, and the node's own addresses never reaching a pod.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rackline_lab::{result_ipv4, Cmd, Lab, Pod, SERVICE_CIDR, UPLINK};
use serde_json::{json, Value};

fn ip(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>, args: &[&str]) -> Result<()> {
    let mut argv = vec!["ip"];
    argv.extend_from_slice(args);
    lab.exec_in(ns, &argv)?.check().map(drop)
}

fn link_alias(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>, name: &str) -> Result<Value> {
    Ok(lab.link(ns, name)?.context(name.to_owned())?["ifalias"].clone())
}

/// The node end of an attachment's veth: `rl` + the low 48 bits of FNV-1a-64 over
/// `containerId \0 ifname \0` (docs/architecture.md, "Deterministic names").
fn node_veth_name(container_id: &str, ifname: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in [container_id, ifname] {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("rl{:012x}", h & 0xffff_ffff_ffff)
}

/// Strict reverse-path filtering (`rp_filter=1`) in a namespace the lab made: replies from an
/// attachment's address must come back through that attachment.
fn strict_rp_filter(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>) -> Result<()> {
    lab.exec_in(
        ns,
        &[
            "sh",
            "-c",
            "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 1 > $f; done",
        ],
    )?
    .check()
    .map(drop)
}

/// `ip rule` entries that look up a table other than local, main and default.
fn source_rules(lab: &Lab, pod: &Pod) -> Result<Vec<Value>> {
    let mut rules = lab.ip_json(pod, &["-4", "rule", "show"])?;
    rules.retain(|r| !matches!(r["table"].as_str(), Some("local" | "main" | "default")));
    Ok(rules)
}

fn add_if(lab: &Lab, pod: &Pod, ifname: &str, network: Option<&str>) -> Result<Value> {
    let mut call = lab.cni(Cmd::Add, pod).ifname(ifname);
    if let Some(n) = network {
        call = call.set("network", json!(n));
    }
    call.run()?.result().cloned()
}

fn del_if(lab: &Lab, pod: &Pod, ifname: &str, network: Option<&str>) -> Result<()> {
    let mut call = lab.cni(Cmd::Del, pod).ifname(ifname);
    if let Some(n) = network {
        call = call.set("network", json!(n));
    }
    call.run()?.ok().map(drop)
}

#[test]
fn links_carry_the_owner_mark_and_the_result_one_container_interface() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let pod = lab.add_pod(1, "marked")?;
        let result = lab.cni_add(&pod)?;
        let mark = format!("rackline:{}:eth0", pod.container_id);
        for name in ["eth0", "rl-eth0"] {
            ensure!(
                link_alias(lab, &pod, name)? == mark.as_str(),
                "{name} not marked"
            );
        }
        let hv = node_veth_name(&pod.container_id, "eth0");
        ensure!(
            link_alias(lab, lab.node(1), &hv)? == mark.as_str(),
            "{hv} not marked"
        );
        // Exactly one container-side interface (the macvlan), the node veth as a host one.
        let ifaces = result["interfaces"].as_array().context("interfaces")?;
        let in_pod: Vec<&Value> = ifaces
            .iter()
            .filter(|i| i.get("sandbox").is_some())
            .collect();
        ensure!(in_pod.len() == 1 && in_pod[0]["name"] == "eth0", "{result}");
        ensure!(result["ips"][0]["interface"] == 0, "{result}");
        ensure!(
            ifaces.len() == 2 && ifaces[1]["name"] == hv.as_str(),
            "{result}"
        );
        // DEL with runtimeConfig junk still removes everything.
        lab.cni(Cmd::Del, &pod)
            .set("runtimeConfig", json!({"bandwidth": "fast"}))
            .prev_result(&result)
            .run()?
            .ok()?;
        ensure!(lab.link_names(&pod)? == ["lo"]);
        ensure!(lab.link(lab.node(1), &hv)?.is_none());
        ensure!(lab.leases_of(&pod.container_id)?.is_empty());
        Ok(())
    })
}

/// A pod set up before ownership marks existed (no alias; node veth in group 0) is checked and
/// removed by the unmarked rule; another container's DEL in its namespace leaves it alone.
#[test]
fn pods_without_marks_stay_checkable_and_removable() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let pod = lab.add_pod(1, "legacy")?;
        let result = lab.cni_add(&pod)?;
        let hv = node_veth_name(&pod.container_id, "eth0");
        for name in ["eth0", "rl-eth0"] {
            ip(lab, &pod, &["link", "set", name, "alias", ""])?;
        }
        ip(lab, lab.node(1), &["link", "set", &hv, "alias", ""])?;
        ip(lab, lab.node(1), &["link", "set", &hv, "group", "default"])?;
        ensure!(
            link_alias(lab, &pod, "eth0")?.is_null(),
            "alias not cleared"
        );
        lab.cni(Cmd::Check, &pod).prev_result(&result).run()?.ok()?;

        // Another container's DEL in this namespace: nothing of the legacy pod goes.
        let before = lab.settled_ns_state(&pod)?;
        let node_before = lab.settled_ns_state(lab.node(1))?;
        lab.cni(Cmd::Del, &pod)
            .container_id("othercontainer1")
            .run()?
            .ok()?;
        let after = lab.ns_state(&pod)?;
        ensure!(
            after == before,
            "another container's DEL changed the pod:\n{}",
            before.diff(&after)
        );
        let node_after = lab.ns_state(lab.node(1))?;
        ensure!(
            node_after == node_before,
            "another container's DEL changed the node:\n{}",
            node_before.diff(&node_after)
        );
        ensure!(lab.leases_of(&pod.container_id)?.len() == 1);

        lab.cni(Cmd::Del, &pod).prev_result(&result).run()?.ok()?;
        ensure!(
            lab.link_names(&pod)? == ["lo"],
            "{:?}",
            lab.link_names(&pod)?
        );
        ensure!(lab.link(lab.node(1), &hv)?.is_none());
        ensure!(lab.leases_of(&pod.container_id)?.is_empty());
        Ok(())
    })
}

/// Container B's ADD into container A's namespace fails (A's eth0 is there), and B's DEL that
/// follows removes nothing of A's: A keeps its links, routes, node route and lease.
#[test]
fn a_second_container_in_the_namespace_never_removes_the_first() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let a = lab.add_pod(1, "a")?;
        let result = lab.cni_add(&a)?;
        let addr = result_ipv4(&result)?.addr;
        let mut b = a.clone();
        b.container_id = "bbbbbbbbbbbbbbbb".into();
        b.name = "b".into();
        let before = lab.settled_ns_state(&a)?;
        lab.cni(Cmd::Add, &b).run()?.expect_error(100)?;
        lab.cni(Cmd::Del, &b).run()?.ok()?;
        lab.cni(Cmd::Del, &b).netns("").run()?.ok()?;
        ensure!(lab.ns_state(&a)? == before, "A's namespace changed");
        ensure!(lab.ping(lab.node(1), addr)?, "the node lost its route to A");
        ensure!(lab.leases_of(&a.container_id)?.len() == 1);
        ensure!(lab.leases_of(&b.container_id)?.is_empty());
        lab.cni(Cmd::Check, &a).prev_result(&result).run()?.ok()?;
        Ok(())
    })
}

/// Multus: `eth0` and `net1` of one pod on the same network, each reachable from the node and
/// from the other rack (strict reverse-path filtering on the node and the TOR), each removable
/// on its own.
#[test]
fn two_attachments_on_one_network() -> Result<()> {
    Lab::builder().racks(2).nodes_per_rack(1).run(|lab| {
        let node = lab.rack_node(1, 1);
        strict_rp_filter(lab, node)?;
        strict_rp_filter(lab, lab.rack(1).tor())?;
        let pod = lab.add_pod(node.index(), "multi")?;
        let far = lab.add_pod(lab.rack_node(2, 1).index(), "far")?;
        lab.cni_add(&far)?;
        let eth0 = result_ipv4(&add_if(lab, &pod, "eth0", None)?)?.addr;
        let net1 = result_ipv4(&add_if(lab, &pod, "net1", None)?)?.addr;
        ensure!(eth0 != net1);
        // The second attachment has its source rule, the first none.
        let rules = source_rules(lab, &pod)?;
        ensure!(
            rules.len() == 1 && rules[0]["src"] == net1.to_string().as_str(),
            "{rules:?}"
        );
        for a in [eth0, net1] {
            ensure!(lab.ping(node, a)?, "node cannot reach {a}");
            ensure!(lab.ping(&far, a)?, "the other rack cannot reach {a}");
        }
        // CHECK of each.
        for ifname in ["eth0", "net1"] {
            let addr = if ifname == "eth0" { eth0 } else { net1 };
            let prev = json!({"cniVersion": "1.1.0", "interfaces": [{"name": ifname, "sandbox": pod.netns_path()}],
                "ips": [{"address": format!("{addr}/24"), "interface": 0}]});
            lab.cni(Cmd::Check, &pod).ifname(ifname).prev_result(&prev).run()?.ok()?;
        }
        del_if(lab, &pod, "eth0", None)?;
        ensure!(lab.link(&pod, "net1")?.is_some() && lab.link(&pod, "eth0")?.is_none());
        ensure!(source_rules(lab, &pod)?.len() == 1, "net1's rule went with eth0");
        ensure!(lab.ping(node, net1)?, "node lost net1 after eth0's DEL");
        ensure!(lab.ping(&far, net1)?, "the other rack lost net1 after eth0's DEL");
        // eth0 again (takes the free metric 0 back), then net1 goes.
        let eth0 = result_ipv4(&add_if(lab, &pod, "eth0", None)?)?.addr;
        del_if(lab, &pod, "net1", None)?;
        ensure!(lab.ping(node, eth0)? && lab.ping(&far, eth0)?, "eth0 lost after net1's DEL");
        del_if(lab, &pod, "eth0", None)?;
        ensure!(lab.link_names(&pod)? == ["lo"]);
        ensure!(source_rules(lab, &pod)?.is_empty(), "{:?}", source_rules(lab, &pod)?);
        ensure!(lab.leases_of(&pod.container_id)?.is_empty());
        lab.check_invariants().map(drop)
    })
}

/// Multus with two networks: `eth0` on the rack's network, `net1` on a second network with its
/// own subnet and gateway on the same TOR; strict reverse-path filtering on the node, the TOR
/// and the spine.
#[test]
fn two_attachments_on_two_networks() -> Result<()> {
    Lab::builder().racks(2).nodes_per_rack(1).run(|lab| {
        strict_rp_filter(lab, lab.rack_node(1, 1))?;
        strict_rp_filter(lab, lab.rack(1).tor())?;
        strict_rp_filter(lab, lab.spine().context("spine")?)?;
        // A second subnet on rack 1's TOR, routed by the spine.
        ip(
            lab,
            lab.rack(1).tor(),
            &["addr", "add", "10.20.0.1/24", "dev", "br0"],
        )?;
        let spine = lab.spine().context("spine")?;
        ip(
            lab,
            spine,
            &[
                "route",
                "add",
                "10.20.0.0/24",
                "via",
                "10.255.1.1",
                "dev",
                "tor1",
            ],
        )?;
        lab.racklinectl(&[
            "network",
            "create",
            "second",
            "--subnet",
            "10.20.0.0/24",
            "--gateway",
            "10.20.0.1",
            "--master",
            UPLINK,
            "--exclude",
            "10.20.0.2-10.20.0.63",
            "--host-route",
            SERVICE_CIDR,
        ])?;
        let node = lab.rack_node(1, 1);
        let pod = lab.add_pod(node.index(), "multi")?;
        let far = lab.add_pod(lab.rack_node(2, 1).index(), "far")?;
        lab.cni_add(&far)?;
        let eth0 = result_ipv4(&add_if(lab, &pod, "eth0", None)?)?.addr;
        let net1 = result_ipv4(&add_if(lab, &pod, "net1", Some("second"))?)?.addr;
        ensure!(net1.octets()[..2] == [10, 20], "{net1}");
        for a in [eth0, net1] {
            ensure!(lab.ping(node, a)?, "node cannot reach {a}");
            ensure!(lab.ping(&far, a)?, "the other rack cannot reach {a}");
        }
        del_if(lab, &pod, "eth0", None)?;
        ensure!(lab.ping(node, net1)?, "node lost net1 after eth0's DEL");
        ensure!(
            lab.ping(&far, net1)?,
            "the other rack lost net1 after eth0's DEL"
        );
        del_if(lab, &pod, "net1", Some("second"))?;
        ensure!(lab.link_names(&pod)? == ["lo"]);
        ensure!(source_rules(lab, &pod)?.is_empty());
        ensure!(lab.leases_of(&pod.container_id)?.is_empty());
        Ok(())
    })
}

fn spool_dir(lab: &Lab, k: usize) -> Result<PathBuf> {
    let ino = std::fs::metadata(lab.node(k).netns().path())?.ino();
    Ok(lab
        .node_runtime_dir(k)
        .join("release")
        .join(ino.to_string()))
}

fn spool_records(lab: &Lab, k: usize) -> Result<Vec<PathBuf>> {
    let dir = spool_dir(lab, k)?;
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    Ok(rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect())
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let t = Instant::now();
    while !f()? {
        ensure!(t.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// DEL while ipamd is away: the links go at once, DEL exits 0, the release waits in the spool
/// and ipamd performs it when it is back — only that lease; an ADD of the same attachment
/// cancels a spooled release (podman's `network reload` re-adds under the same id).
#[test]
fn del_without_ipamd_spools_the_release() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let gone = lab.add_pod(1, "gone")?;
        let stays = lab.add_pod(1, "stays")?;
        let readded = lab.add_pod(1, "readded")?;
        for p in [&gone, &stays, &readded] {
            lab.cni_add(p)?;
        }
        let readded_addr = lab.leases_of(&readded.container_id)?[0]["address"].clone();
        lab.stop_ipamd(1)?;
        let t = Instant::now();
        lab.cni_del(&gone)?;
        lab.cni_del(&readded)?;
        ensure!(
            t.elapsed() < Duration::from_secs(8),
            "DEL took {:?}",
            t.elapsed()
        );
        ensure!(lab.link_names(&gone)? == ["lo"], "links not removed");
        ensure!(
            spool_records(lab, 1)?.len() == 2,
            "{:?}",
            spool_records(lab, 1)?
        );
        ensure!(
            lab.leases_of(&gone.container_id)?.len() == 1,
            "released without ipamd?"
        );

        lab.start_ipamd(1)?;
        // The re-ADD (same container id) comes before ipamd drains: it removes its record.
        let again = lab.cni_add(&readded)?;
        wait_for("the spooled release", Duration::from_secs(20), || {
            Ok(lab.leases_of(&gone.container_id)?.is_empty())
        })?;
        wait_for("the spool to empty", Duration::from_secs(20), || {
            Ok(spool_records(lab, 1)?.is_empty())
        })?;
        std::thread::sleep(Duration::from_secs(6)); // one more drain pass
        ensure!(
            lab.leases_of(&stays.container_id)?.len() == 1,
            "another pod's lease went"
        );
        let l = lab.leases_of(&readded.container_id)?;
        ensure!(l.len() == 1, "the re-added pod lost its lease: {l:?}");
        ensure!(
            format!("{}/24", l[0]["address"].as_str().unwrap_or_default())
                == result_ipv4(&again)?.to_string(),
            "{l:?} vs {again}"
        );
        let _ = readded_addr;
        lab.check_invariants().map(drop)
    })
}

/// ipamd restarts (SIGKILL, stale socket left behind, then a new ipamd) while ADDs run: the
/// plugin waits for the socket to come back within `timeoutMs` and no ADD is lost.
#[test]
fn adds_survive_an_ipamd_restart() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let pods: Vec<Pod> = (0..12)
            .map(|i| lab.add_pod(1, &format!("r{i}")))
            .collect::<Result<_>>()?;
        let outage: std::sync::Mutex<Option<(Instant, Instant)>> = Default::default();
        let results = std::thread::scope(|s| -> Result<Vec<(Instant, Instant)>> {
            let adds = s.spawn(|| -> Result<Vec<(Instant, Instant)>> {
                let mut spans = Vec::new();
                for p in &pods {
                    let t = Instant::now();
                    lab.cni_add(p)
                        .with_context(|| format!("ADD of {}", p.name))?;
                    spans.push((t, Instant::now()));
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok(spans)
            });
            std::thread::sleep(Duration::from_millis(150));
            let down = Instant::now();
            lab.kill_ipamd(1)?;
            std::thread::sleep(Duration::from_millis(400));
            lab.start_ipamd(1)?;
            *outage.lock().unwrap() = Some((down, Instant::now()));
            adds.join().expect("ADD thread panicked")
        })?;
        let (down, up) = outage.lock().unwrap().context("no outage")?;
        ensure!(
            results
                .iter()
                .any(|(start, end)| *start < up && *end > down),
            "no ADD overlapped the restart; spans {results:?}, outage {down:?}..{up:?}"
        );
        for p in &pods {
            ensure!(
                lab.leases_of(&p.container_id)?.len() == 1,
                "{} has no lease",
                p.name
            );
            ensure!(lab.link(p, "eth0")?.is_some(), "{} has no eth0", p.name);
        }
        lab.check_invariants().map(drop)
    })
}

/// An address that is on the node's uplink but excluded nowhere: the plugin refuses it,
/// reports it (quarantined with the uplink's MAC) and the pod gets another address.
#[test]
fn a_node_address_never_reaches_a_pod() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let squat = Ipv4Addr::new(10, 10, 0, 64);
        ip(
            lab,
            lab.node(1),
            &["addr", "add", &format!("{squat}/24"), "dev", UPLINK],
        )?;
        let mac = lab.link(lab.node(1), UPLINK)?.context("uplink")?["address"].clone();
        let mut seen = Vec::new();
        for i in 0..3 {
            let pod = lab.add_pod(1, &format!("p{i}"))?;
            let addr = result_ipv4(&lab.cni_add(&pod)?)?.addr;
            ensure!(addr != squat, "the node's own address reached pod {i}");
            let inside = lab.ipv4_addrs(&pod)?;
            ensure!(inside.iter().all(|(_, c)| c.addr != squat), "{inside:?}");
            seen.push(addr);
        }
        let records = lab.lease_records()?;
        let q = records
            .iter()
            .find(|l| l["address"] == squat.to_string().as_str())
            .with_context(|| {
                format!("{squat} was never offered: {records:?} (pods got {seen:?})")
            })?;
        ensure!(q["state"] == "conflict", "{q}");
        ensure!(q["conflict"]["mac"] == mac, "{q} vs uplink MAC {mac}");
        // The node keeps its address.
        ensure!(lab
            .ipv4_addrs(lab.node(1))?
            .iter()
            .any(|(i, c)| i == UPLINK && c.addr == squat));
        Ok(())
    })
}

/// DEL releases the lease while the kernel deletes the links: the pod's address is removed
/// first (cheap), then the release runs alongside the link deletion (an RCU grace period per
/// batch). Read from the plugin's own step line: the release never starts before the address
/// is gone (whether it also starts before the links are gone depends on scheduling, so it is
/// not asserted; the latency bench shows it). Afterwards nothing is left: links, node veth,
/// lease.
#[test]
fn del_releases_the_lease_while_the_links_go() -> Result<()> {
    Lab::builder().nodes(1).run(|lab| {
        let pod = lab.add_pod(1, "overlap")?;
        let result = lab.cni_add(&pod)?;
        let file = lab.dir().join("del-steps.line");
        lab.cni(Cmd::Del, &pod)
            .prev_result(&result)
            .env("RACKLINE_BENCH_STEPS", file.display().to_string())
            .run()?
            .ok()?;
        let line = std::fs::read_to_string(&file)?;
        let step = |name: &str| -> Result<(u64, u64)> {
            let f = line
                .split_whitespace()
                .find_map(|f| f.strip_prefix(&format!("{name}=")))
                .with_context(|| format!("no {name} in {line}"))?;
            let (s, d) = f.split_once('+').context("step without +")?;
            let (s, d): (u64, u64) = (s.parse()?, d.parse()?);
            Ok((s, s + d))
        };
        let (_, addrs_gone) = step("addrs_delete")?;
        let (release_start, _) = step("ipamd_connect")?;
        let (links_start, _) = step("links_delete")?;
        ensure!(
            addrs_gone <= release_start && addrs_gone <= links_start,
            "the release or the link deletion began before the address was gone: {line}"
        );
        ensure!(lab.link_names(&pod)? == ["lo"]);
        let hv = node_veth_name(&pod.container_id, "eth0");
        ensure!(lab.link(lab.node(1), &hv)?.is_none());
        ensure!(lab.leases_of(&pod.container_id)?.is_empty());
        Ok(())
    })
}
