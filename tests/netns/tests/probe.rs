//! End to end: stable MACs, the duplicate-address probe and the gratuitous ARP, with
//! the real plugin, ipamd, netmaster and etcd. Squatters and neighbours are plain namespaces on
//! the rack's TOR bridge; ARP is captured with the lab's own packet socket (not the plugin's).
//!
//! Each test creates its own small networks next to `prod` (other /24s on the same L2
//! segment) so the address a pod gets is known in advance: ipamd hands out the lowest free
//! address of a fresh network first, and the lab runs with no standby reserve.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use rackline_lab::{format_mac, result_ipv4, Cidr4, Cmd, Lab, Pod, HOST_IF};
use serde_json::{json, Value};

fn lab() -> rackline_lab::LabBuilder {
    // No standby reserve: it would take addresses of the tiny networks in the background.
    Lab::builder().nodes(2).standby(0)
}

fn ip(c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 10, c, d)
}

/// The stable MAC formula, written out independently of the plugin: 0a:58 + the address.
fn stable_mac(a: Ipv4Addr) -> String {
    let o = a.octets();
    format_mac([0x0a, 0x58, o[0], o[1], o[2], o[3]])
}

/// Network `name` on 10.10.`c`.0/24 whose only allocatable addresses are .`first`-.`last`.
fn create_network(lab: &Lab, name: &str, c: u8, first: u8, last: u8, probe: &[&str]) -> Result<()> {
    let subnet = format!("10.10.{c}.0/24");
    let gateway = ip(c, 1).to_string();
    let below = format!("{}-{}", ip(c, 2), ip(c, first - 1));
    let above = format!("{}-{}", ip(c, last + 1), ip(c, 254));
    let mut args = vec![
        "network",
        "create",
        name,
        "--subnet",
        &subnet,
        "--gateway",
        &gateway,
        "--master",
        "uplink0",
        "--exclude",
        &below,
        "--exclude",
        &above,
    ];
    args.extend_from_slice(probe);
    lab.racklinectl(&args)
        .with_context(|| format!("creating network {name}"))?;
    Ok(())
}

fn add_on(lab: &Lab, pod: &Pod, network: &str) -> Result<rackline_lab::CniOutput> {
    lab.cni(Cmd::Add, pod).set("network", json!(network)).run()
}

fn records_of(lab: &Lab, network: &str) -> Result<Vec<Value>> {
    let mut all = lab.lease_records()?;
    all.retain(|l| l["network"] == network);
    Ok(all)
}

fn conflict_at(records: &[Value], a: Ipv4Addr) -> Option<&Value> {
    records
        .iter()
        .find(|l| l["address"] == a.to_string() && l["state"] == "conflict")
}

/// Only `lo` left in the pod: what a failed ADD must leave behind.
fn assert_only_lo(lab: &Lab, pod: &Pod) -> Result<()> {
    let links = lab.link_names(pod)?;
    ensure!(
        links == ["lo"],
        "pod {} still has links {links:?}",
        pod.name
    );
    Ok(())
}

#[test]
fn rogue_squatter_is_detected_quarantined_and_freed_by_etcd() -> Result<()> {
    lab().run(|lab| {
        // "sq": .10-.12 with a 3 s quarantine; "full": .20-.22. The rogue holds .10 and .11 of
        // the first and every address of the second.
        let probe = [
            "--probe",
            "--probe-interval-ms",
            "50",
            "--probe-quarantine-secs",
            "3",
        ];
        create_network(lab, "sq", 1, 10, 12, &probe)?;
        create_network(lab, "full", 2, 20, 22, &probe)?;
        let squatted = [ip(1, 10), ip(1, 11), ip(2, 20), ip(2, 21), ip(2, 22)];
        let addrs: Vec<Cidr4> = squatted
            .iter()
            .map(|a| Cidr4 {
                addr: *a,
                prefix: 24,
            })
            .collect();
        let rogue = lab.add_host("rogue", &addrs)?;
        let rogue_mac = lab.mac_of(&rogue, HOST_IF)?;

        // The pod is offered .10 and .11 (both answered for), then gets .12.
        let pod = lab.add_pod(1, "web")?;
        let out = add_on(lab, &pod, "sq")?;
        let got = result_ipv4(out.result()?)?;
        ensure!(
            got.addr == ip(1, 12),
            "expected 10.10.1.12, got {got}\n{out}"
        );
        ensure!(
            lab.mac_of(&pod, "eth0")? == stable_mac(got.addr),
            "pod MAC is not the stable MAC of {got}"
        );
        let records = records_of(lab, "sq")?;
        for a in [ip(1, 10), ip(1, 11)] {
            let c = conflict_at(&records, a)
                .with_context(|| format!("no conflict record for {a}: {records:#?}"))?;
            ensure!(c["conflict"]["mac"] == rogue_mac, "wrong MAC in {c}");
            ensure!(
                c["conflict"]["containerId"] == pod.container_id.as_str(),
                "{c}"
            );
            ensure!(
                c["containerId"] == "",
                "a conflict record holds no attachment: {c}"
            );
            ensure!(c["pod"]["name"] == "web" && c["node"] == "n1", "{c}");
        }
        let held: Vec<&Value> = records
            .iter()
            .filter(|l| l["containerId"] == pod.container_id.as_str())
            .collect();
        ensure!(
            held.len() == 1 && held[0]["address"] == "10.10.1.12",
            "the pod should hold exactly .12: {held:?}"
        );
        let rep = lab.check_invariants()?;
        ensure!(rep.conflicts == 2, "{rep}");

        // Every address squatted: a clear error naming them, nothing left behind.
        let victim = lab.add_pod(2, "victim")?;
        let out = add_on(lab, &victim, "full")?;
        let doc = out.expect_error(110)?;
        let details = doc["details"].as_str().unwrap_or_default();
        for a in [ip(2, 20), ip(2, 21), ip(2, 22)] {
            ensure!(details.contains(&a.to_string()), "{a} not named: {details}");
        }
        ensure!(details.contains(&rogue_mac), "MAC not named: {details}");
        assert_only_lo(lab, &victim)?;
        ensure!(
            lab.leases_of(&victim.container_id)?.is_empty(),
            "victim kept a lease"
        );
        // The runtime's DEL after a failed ADD succeeds.
        lab.cni(Cmd::Del, &victim)
            .set("network", json!("full"))
            .run()?
            .ok()?;

        // etcd deletes the quarantine records after 3 s (plus its lease-expiry granularity).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left: Vec<Value> = lab
                .lease_records()?
                .into_iter()
                .filter(|l| l["state"] == "conflict")
                .collect();
            if left.is_empty() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "quarantine never expired: {left:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // ipamd learns of the deletion through its watch, a moment after etcd.
        std::thread::sleep(Duration::from_millis(500));
        // Once freed, and with the squatter gone, the address can be leased again.
        lab.ip_in(&rogue, &["addr", "del", "10.10.1.10/24", "dev", HOST_IF])?;
        let again = lab.add_pod(1, "again")?;
        let out = add_on(lab, &again, "sq")?;
        let got = result_ipv4(out.result()?)?;
        ensure!(
            got.addr == ip(1, 10),
            "expected the freed 10.10.1.10, got {got}"
        );

        lab.cni(Cmd::Del, &pod)
            .set("network", json!("sq"))
            .run()?
            .ok()?;
        lab.cni(Cmd::Del, &again)
            .set("network", json!("sq"))
            .run()?
            .ok()?;
        let rep = lab.check_invariants()?;
        ensure!(rep.ok() && rep.conflicts == 0, "{rep}");
        Ok(())
    })
}

#[test]
fn probe_costs_about_its_budget_and_sends_count_probes() -> Result<()> {
    lab().run(|lab| {
        create_network(lab, "pr", 3, 10, 20, &["--probe"])?;
        let nbr = lab.add_host(
            "nbr",
            &[Cidr4 {
                addr: ip(3, 250),
                prefix: 24,
            }],
        )?;
        let pod = lab.add_pod(1, "web")?;
        let cap = lab.capture_arp(&nbr)?;
        let t0 = Instant::now();
        let out = add_on(lab, &pod, "pr")?;
        let took = t0.elapsed();
        std::thread::sleep(Duration::from_millis(200));
        let frames = cap.stop()?;
        let got = result_ipv4(out.result()?)?;
        ensure!(got.addr == ip(3, 10), "{got}");
        // 3 × 100 ms is waited in full when nobody answers; the rest is the ADD itself. The
        // upper bound is loose (loaded machine); rackline-bench measures it precisely.
        ensure!(
            took >= Duration::from_millis(300),
            "ADD took {took:?}: probe cut short?"
        );
        ensure!(
            took <= Duration::from_secs(3),
            "ADD took {took:?} with a 300 ms probe"
        );
        let probes = frames.iter().filter(|f| f.is_probe_for(got.addr)).count();
        ensure!(probes == 3, "{probes} probes seen, want 3: {frames:?}");
        ensure!(
            frames
                .iter()
                .filter(|f| f.is_probe_for(got.addr))
                .all(|f| format_mac(f.sender_mac) == stable_mac(got.addr)),
            "probes not from the stable MAC: {frames:?}"
        );
        // Probes come before the announcement (probe → configure → up → announce).
        let first_announce = frames.iter().position(|f| f.is_announcement_of(got.addr));
        let last_probe = frames.iter().rposition(|f| f.is_probe_for(got.addr));
        ensure!(
            matches!((last_probe, first_announce), (Some(p), Some(a)) if p < a),
            "order wrong or announcement missing: {frames:?}"
        );
        lab.cni(Cmd::Del, &pod)
            .set("network", json!("pr"))
            .run()?
            .ok()?;
        lab.check_invariants().map(drop)
    })
}

#[test]
fn stable_mac_and_gratuitous_arp_update_a_stale_neighbour() -> Result<()> {
    lab().run(|lab| {
        // Two pods on the default network (probe off): MACs follow the formula, CHECK agrees.
        for (node, name) in [(1, "a"), (2, "b")] {
            let pod = lab.add_pod(node, name)?;
            let r = lab.cni_add(&pod)?;
            let got = result_ipv4(&r)?;
            let want = stable_mac(got.addr);
            ensure!(lab.mac_of(&pod, "eth0")? == want, "{name}: kernel MAC");
            ensure!(
                r["interfaces"][0]["mac"] == want.as_str(),
                "{name}: result MAC: {r}"
            );
            lab.cni(Cmd::Check, &pod).prev_result(&r).run()?.ok()?;
        }

        // A one-address network: the pod will get exactly 10.10.4.10. A neighbour caches that
        // address with a wrong MAC; the ADD's announcement must fix it without the neighbour
        // sending anything.
        create_network(lab, "one", 4, 10, 10, &[])?;
        let target = ip(4, 10);
        let nbr = lab.add_host(
            "nbr",
            &[Cidr4 {
                addr: ip(4, 250),
                prefix: 24,
            }],
        )?;
        lab.ip_in(
            &nbr,
            &[
                "neigh",
                "replace",
                &target.to_string(),
                "lladdr",
                "02:de:ad:be:ef:01",
                "dev",
                HOST_IF,
                "nud",
                "stale",
            ],
        )?;
        let neigh = |lab: &Lab| -> Result<String> {
            let n = lab.ip_json(
                &nbr,
                &["neigh", "show", &target.to_string(), "dev", HOST_IF],
            )?;
            Ok(n.first()
                .and_then(|e| e["lladdr"].as_str())
                .unwrap_or_default()
                .to_owned())
        };
        ensure!(neigh(lab)? == "02:de:ad:be:ef:01", "stale entry not set up");
        let pod = lab.add_pod(1, "moved")?;
        let out = add_on(lab, &pod, "one")?;
        ensure!(result_ipv4(out.result()?)?.addr == target, "{out}");
        let deadline = Instant::now() + Duration::from_secs(5);
        let want = stable_mac(target);
        loop {
            let have = neigh(lab)?;
            if have == want {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "neighbour still has {have}, want {want}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        lab.cni(Cmd::Del, &pod)
            .set("network", json!("one"))
            .run()?
            .ok()?;
        lab.check_invariants().map(drop)
    })
}

#[test]
fn probe_off_sends_no_probe_only_the_announcement() -> Result<()> {
    lab().run(|lab| {
        create_network(lab, "off", 5, 10, 20, &[])?;
        let nbr = lab.add_host(
            "nbr",
            &[Cidr4 {
                addr: ip(5, 250),
                prefix: 24,
            }],
        )?;
        let pod = lab.add_pod(1, "web")?;
        let cap = lab.capture_arp(&nbr)?;
        let out = add_on(lab, &pod, "off")?;
        std::thread::sleep(Duration::from_millis(200));
        let frames = cap.stop()?;
        let got = result_ipv4(out.result()?)?;
        let probes: Vec<_> = frames
            .iter()
            .filter(|f| f.sender_ip.is_unspecified())
            .collect();
        ensure!(
            probes.is_empty(),
            "probe frames with the probe off: {probes:?}"
        );
        // The capture works: the announcement of the same ADD was seen.
        ensure!(
            frames.iter().any(|f| f.is_announcement_of(got.addr)
                && format_mac(f.sender_mac) == stable_mac(got.addr)),
            "no announcement of {got} captured: {frames:?}"
        );
        lab.cni(Cmd::Del, &pod)
            .set("network", json!("off"))
            .run()?
            .ok()?;
        lab.check_invariants().map(drop)
    })
}

#[test]
fn overlapping_incarnations_of_a_sticky_pod_use_the_alternate_mac() -> Result<()> {
    lab().run(|lab| {
        // The kernel refuses two macvlans with one MAC on one parent (EADDRINUSE when the
        // second comes up). A sticky pod re-created on the same node before its old sandbox's
        // DEL has exactly that: same address, so same stable MAC.
        create_network(lab, "st", 8, 10, 20, &["--sticky"])?;
        let old = lab.add_pod(1, "db-0")?;
        let first = add_on(lab, &old, "st")?;
        let a = result_ipv4(first.result()?)?.addr;
        ensure!(
            lab.mac_of(&old, "eth0")? == stable_mac(a),
            "old: stable MAC"
        );
        let new = lab.add_pod(1, "db-0")?;
        let second = add_on(lab, &new, "st")?;
        let r = second.result()?;
        ensure!(
            result_ipv4(r)?.addr == a,
            "the sticky pod kept its address\n{second}"
        );
        let o = a.octets();
        let alternate = format_mac([0x0a, 0x59, o[0], o[1], o[2], o[3]]);
        ensure!(lab.mac_of(&new, "eth0")? == alternate, "new: alternate MAC");
        ensure!(
            r["interfaces"][0]["mac"] == alternate.as_str(),
            "result MAC: {r}"
        );
        lab.cni(Cmd::Check, &new)
            .set("network", json!("st"))
            .prev_result(r)
            .run()?
            .ok()?;
        lab.cni(Cmd::Del, &old)
            .set("network", json!("st"))
            .run()?
            .ok()?;
        lab.cni(Cmd::Del, &new)
            .set("network", json!("st"))
            .run()?
            .ok()?;
        lab.check_invariants().map(drop)
    })
}
