//! Sticky pod addresses in the two-rack lab with real etcd, netmaster, ipamds and the
//! plugin binary. Every scenario ends with the etcd invariant check (no address owned twice,
//! identities and leases agree).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rackline_lab::{result_ipv4, Cmd, Lab, LabBuilder, LabNetworkMode, Pod};
use serde_json::{json, Value};

const NET: &str = "prod";

fn lab(policy: &[&str]) -> LabBuilder {
    Lab::builder()
        .racks(2)
        .nodes_per_rack(2)
        .network_mode(LabNetworkMode::Spanning)
        .network_args(policy)
}

fn with_lab(builder: LabBuilder, f: impl FnOnce(&Lab) -> Result<()>) -> Result<()> {
    builder.run(|lab| {
        f(lab)?;
        checked(lab)
    })
}

fn checked(lab: &Lab) -> Result<()> {
    let report = lab.check_invariants()?;
    eprintln!("invariants: {report}");
    ensure!(report.ok(), "invariants broken: {report}");
    Ok(())
}

/// Global node index of rack `r`'s node `k` (both 1-based).
fn node(lab: &Lab, r: usize, k: usize) -> usize {
    lab.rack_node(r, k).index()
}

/// One ADD: the pod's address, or (code, message).
fn add(lab: &Lab, pod: &Pod) -> Result<std::result::Result<Ipv4Addr, (u64, String)>> {
    let out = lab.cni(Cmd::Add, pod).run()?;
    Ok(match out.error_code() {
        None => Ok(result_ipv4(out.result()?)?.addr),
        Some(c) => Err((c, out.stdout.clone())),
    })
}

fn add_ok(lab: &Lab, pod: &Pod) -> Result<Ipv4Addr> {
    match add(lab, pod)? {
        Ok(a) => Ok(a),
        Err((c, msg)) => bail!("ADD of {} failed with code {c}: {msg}", pod.name),
    }
}

/// The runtime's teardown of a pod: DEL, then the sandbox netns goes.
fn remove(lab: &Lab, pod: &Pod) -> Result<()> {
    lab.cni_del(pod)?;
    lab.delete_pod_netns(pod)
}

fn reservations(lab: &Lab) -> Result<BTreeMap<String, Value>> {
    let v = lab.racklinectl(&["reservation", "list", "--network", NET])?;
    Ok(v.as_array()
        .context("reservation list is an array")?
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_string(),
                r.clone(),
            )
        })
        .collect())
}

fn in_rack(lab: &Lab, r: usize, a: Ipv4Addr) -> bool {
    let (first, last) = lab.spanning_range(r);
    (first..=last).contains(&a)
}

/// 100 sticky pods deleted and re-created: 40 on the same node, 40 on the other node of the
/// same rack, 20 in the other rack (policy strict: a clear error naming the rack, and the
/// reservation survives to come back home).
#[test]
fn sticky_pods_keep_their_addresses_across_nodes_and_strict_racks() -> Result<()> {
    with_lab(lab(&["--sticky"]), |lab| {
        let (r1n1, r1n2, r2n1) = (node(lab, 1, 1), node(lab, 1, 2), node(lab, 2, 1));
        let mut first: BTreeMap<String, Ipv4Addr> = BTreeMap::new();
        let mut pods = Vec::new();
        for i in 0..100 {
            let home = if (40..80).contains(&i) { r1n2 } else { r1n1 };
            let pod = lab.add_pod(home, &format!("db-{i}"))?;
            let a = add_ok(lab, &pod)?;
            ensure!(in_rack(lab, 1, a), "{} got {a} outside rack 1", pod.name);
            ensure!(
                first.insert(pod.name.clone(), a).is_none(),
                "duplicate pod name"
            );
            pods.push(pod);
        }
        let distinct: BTreeSet<_> = first.values().collect();
        ensure!(distinct.len() == 100, "addresses not distinct: {first:?}");
        for pod in &pods {
            remove(lab, pod)?;
        }
        let res = reservations(lab)?;
        ensure!(res.len() == 100, "{} reservations", res.len());
        for (name, r) in &res {
            ensure!(r["state"] == "reserved", "{name}: {r}");
            ensure!(r["expiresUnixMs"].as_i64().unwrap_or(0) > 0, "{name}: {r}");
        }
        checked(lab)?;
        // While reserved, nobody else gets those addresses.
        let stranger = lab.add_pod(r1n1, "stranger")?;
        let s = add_ok(lab, &stranger)?;
        ensure!(!distinct.contains(&s), "a stranger got reserved {s}");

        let mut same = 0;
        let mut strict_errors = 0;
        for i in 0..100 {
            let name = format!("db-{i}");
            let target = match i {
                0..40 => r1n1,  // same node
                40..80 => r1n1, // the other node of rack 1 (they lived on r1n2)
                _ => r2n1,      // another rack: strict
            };
            let pod = lab.add_pod(target, &name)?;
            match add(lab, &pod)? {
                Ok(a) => {
                    ensure!(a == first[&name], "{name}: {a} != {}", first[&name]);
                    same += 1;
                }
                Err((code, msg)) => {
                    ensure!(i >= 80, "{name} failed: {code} {msg}");
                    ensure!(code == 106, "{name}: code {code}: {msg}");
                    ensure!(
                        msg.contains("rack1") || msg.contains("\\\"rack1\\\""),
                        "{name}: the error must name the rack: {msg}"
                    );
                    strict_errors += 1;
                    // The runtime calls DEL after a failed ADD: it must not touch the
                    // reservation; the pod then comes back in its own rack.
                    remove(lab, &pod)?;
                    let home = lab.add_pod(r1n2, &name)?;
                    let a = add_ok(lab, &home)?;
                    ensure!(
                        a == first[&name],
                        "{name} back home: {a} != {}",
                        first[&name]
                    );
                    same += 1;
                }
            }
        }
        ensure!(
            same == 100 && strict_errors == 20,
            "same {same}, strict {strict_errors}"
        );
        eprintln!("100/100 sticky pods got their address back; 20 strict cross-rack refusals");
        Ok(())
    })
}

/// Policy reallocate: a sticky pod started in another rack gets an address there and its old
/// reservation is dropped. Hold-time expiry frees reserved addresses (etcd deletes them).
#[test]
fn reallocate_policy_and_hold_expiry() -> Result<()> {
    with_lab(
        lab(&[
            "--sticky-cross-rack",
            "reallocate",
            "--sticky-hold-secs",
            "3",
        ]),
        |lab| {
            let (r1n1, r2n1) = (node(lab, 1, 1), node(lab, 2, 1));
            let mut old = BTreeMap::new();
            for i in 0..10 {
                let pod = lab.add_pod(r1n1, &format!("web-{i}"))?;
                old.insert(pod.name.clone(), add_ok(lab, &pod)?);
                remove(lab, &pod)?;
            }
            for i in 0..10 {
                let name = format!("web-{i}");
                let pod = lab.add_pod(r2n1, &name)?;
                let a = add_ok(lab, &pod)?;
                ensure!(in_rack(lab, 2, a), "{name} got {a}, not in rack 2");
                let res = reservations(lab)?;
                ensure!(
                    res[&name]["address"] == a.to_string(),
                    "{name}: identity still names {}",
                    res[&name]["address"]
                );
                let leases = lab.leases()?;
                ensure!(
                    !leases
                        .iter()
                        .any(|l| l["address"] == old[&name].to_string()),
                    "{name}'s old address {} is still held",
                    old[&name]
                );
                remove(lab, &pod)?;
            }
            checked(lab)?;
            // Every reservation expires within the hold time plus etcd's lease granularity.
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let left = reservations(lab)?.len();
                let leases = lab.leases()?;
                let reserved = leases.iter().filter(|l| l["state"] == "reserved").count();
                if left == 0 && reserved == 0 {
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "{left} reservations / {reserved} reserved leases still there after 20 s"
                );
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok(())
        },
    )
}

/// The sticky re-creation races: the new incarnation's ADD before the old DEL; GC running during
/// re-creation; one identity started on two nodes at once; reservation expiry racing ADDs.
#[test]
fn sticky_races_never_free_or_duplicate_a_live_address() -> Result<()> {
    with_lab(
        lab(&["--sticky", "--sticky-hold-secs", "2"]).ipamd_gc_grace_secs(30),
        |lab| {
            let (r1n1, r1n2) = (node(lab, 1, 1), node(lab, 1, 2));
            // 1. New incarnation first, then the old DEL.
            let old = lab.add_pod(r1n1, "db-0")?;
            let a = add_ok(lab, &old)?;
            let new = lab.add_pod(r1n1, "db-0")?;
            let new_result = lab.cni_add(&new)?;
            ensure!(
                result_ipv4(&new_result)?.addr == a,
                "new incarnation got another address"
            );
            // GC with a valid list taken before the new ADD (neither container): the young
            // lease survives (grace), and the old container has nothing left to free.
            let gc = lab
                .cni_node(r1n1, Cmd::Gc)
                .set("cni.dev/valid-attachments", json!([]));
            gc.run()?.ok()?;
            remove(lab, &old)?;
            let held = lab.leases_of(&new.container_id)?;
            ensure!(
                held.len() == 1 && held[0]["address"] == a.to_string(),
                "the old DEL or GC freed the new incarnation's address: {held:?}"
            );
            lab.cni(Cmd::Check, &new)
                .prev_result(&new_result)
                .run()?
                .ok()?;
            checked(lab)?;

            // 2. One identity on two nodes at once: exactly one wins, the other gets 105.
            for round in 0..5 {
                let name = format!("dup-{round}");
                let p1 = lab.add_pod(r1n1, &name)?;
                let p2 = lab.add_pod(r1n2, &name)?;
                let (x, y) = std::thread::scope(|s| {
                    let h1 = s.spawn(|| add(lab, &p1));
                    let h2 = s.spawn(|| add(lab, &p2));
                    (h1.join().expect("thread"), h2.join().expect("thread"))
                });
                let (x, y) = (x?, y?);
                let wins = [&x, &y].iter().filter(|r| r.is_ok()).count();
                ensure!(wins == 1, "round {round}: {x:?} / {y:?}");
                for r in [&x, &y] {
                    if let Err((code, msg)) = r {
                        ensure!(*code == 105, "round {round}: code {code}: {msg}");
                        ensure!(msg.contains("already holds"), "round {round}: {msg}");
                    }
                }
                remove(lab, &p1)?;
                remove(lab, &p2)?;
            }
            checked(lab)?;

            // 3. Reservation expiry (2 s) racing the pod's next ADD, at varying offsets:
            // whatever wins, no address is ever held twice and the pod has exactly one.
            let mut kept = 0;
            for i in 0..8u64 {
                let name = format!("race-{i}");
                let p = lab.add_pod(r1n2, &name)?;
                let a = add_ok(lab, &p)?;
                remove(lab, &p)?;
                std::thread::sleep(Duration::from_millis(1500 + i * 150));
                let q = lab.add_pod(r1n2, &name)?;
                let b = add_ok(lab, &q)?;
                if a == b {
                    kept += 1;
                }
                ensure!(
                    lab.leases_of(&q.container_id)?.len() == 1,
                    "{name}: not exactly one lease"
                );
                checked(lab)?;
                remove(lab, &q)?;
            }
            eprintln!("expiry race: {kept}/8 re-activated before expiry");
            Ok(())
        },
    )
}

/// Operators pin an address ahead of time, list reservations and release one; pins are
/// validated (inside a rack's ranges, not excluded, not someone else's).
#[test]
fn operators_pin_list_and_release_reservations() -> Result<()> {
    with_lab(lab(&[]), |lab| {
        let r2n2 = node(lab, 2, 2);
        let (first, last) = lab.spanning_range(2);
        let want = Ipv4Addr::from(u32::from(first) + 7);
        lab.racklinectl(&["reservation", "pin", NET, "db", "pg-0", &want.to_string()])?;
        // Invalid pins: outside every rack range, an excluded address, someone else's.
        let bad = |args: &[&str]| -> Result<String> {
            let out = lab.racklinectl_raw(args)?;
            ensure!(!out.success(), "{args:?} was accepted");
            Ok(out.stderr)
        };
        let e = bad(&["reservation", "pin", NET, "db", "x", "10.10.0.5"])?;
        ensure!(e.contains("inside no rack"), "{e}");
        let e = bad(&["reservation", "pin", NET, "db", "y", &want.to_string()])?;
        ensure!(e.contains("in use") && e.contains("db/pg-0"), "{e}");
        let _ = last;
        // The pinned pod gets its address though the network has no sticky policy.
        let mut p = lab.add_pod(r2n2, "pg-0")?;
        p.namespace = "db".into();
        let a = add_ok(lab, &p)?;
        ensure!(a == want, "pinned pod got {a}, wanted {want}");
        let e = bad(&["reservation", "release", NET, "db", "pg-0"])?;
        ensure!(e.contains("running") && e.contains("--force"), "{e}");
        // A running pod keeps its address: pinning its identity elsewhere is refused.
        let moved = Ipv4Addr::from(u32::from(want) + 1);
        let e = bad(&["reservation", "pin", NET, "db", "pg-0", &moved.to_string()])?;
        ensure!(
            e.contains("is running with") && e.contains(&want.to_string()),
            "{e}"
        );
        remove(lab, &p)?;
        let res = reservations(lab)?;
        ensure!(
            res["pg-0"]["state"] == "reserved" && res["pg-0"]["pinned"] == true,
            "{res:?}"
        );
        // Once the pod is gone the reservation moves: the old address is freed with it.
        lab.racklinectl(&["reservation", "pin", NET, "db", "pg-0", &moved.to_string()])?;
        let res = reservations(lab)?;
        ensure!(
            res["pg-0"]["address"] == moved.to_string() && res["pg-0"]["state"] == "reserved",
            "{res:?}"
        );
        ensure!(
            !lab.leases()?
                .iter()
                .any(|l| l["address"] == want.to_string()),
            "the old reserved address is still leased after the move"
        );
        let want = moved;
        let table = lab
            .racklinectl_raw(&["reservation", "list"])?
            .check()?
            .stdout;
        ensure!(
            table.contains("db/pg-0") && table.contains("never"),
            "{table}"
        );
        // A non-sticky pod is not sticky: its DEL frees the address.
        let w = lab.add_pod(r2n2, "web")?;
        add_ok(lab, &w)?;
        remove(lab, &w)?;
        ensure!(
            lab.leases_of(&w.container_id)?.is_empty(),
            "non-sticky lease kept"
        );
        lab.racklinectl(&["reservation", "release", NET, "db", "pg-0"])?;
        ensure!(
            reservations(lab)?.is_empty(),
            "release left the reservation"
        );
        ensure!(
            !lab.leases()?
                .iter()
                .any(|l| l["address"] == want.to_string()),
            "released address still leased"
        );
        Ok(())
    })
}
