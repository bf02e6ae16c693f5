//! Two racks behind a routed spine, with today's binaries (one Rackline network per rack,
//! `LabNetworkMode::PerRack`): addressing, routing between racks, pods of both racks talking
//! over the underlay, concurrent ADD/DEL from every node, and the etcd invariant checker, which
//! runs at the end of every test here.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use anyhow::{ensure, Context, Result};
use rackline_lab::{
    in_rack_pool, rack_gateway, result_ipv4, Cidr4, Cmd, Lab, LabBuilder, NetSnapshot, Pod,
    SPINE_CTRL_ADDR, SPINE_GATEWAY,
};
use serde_json::Value;

fn two_racks() -> LabBuilder {
    Lab::builder().racks(2).nodes_per_rack(2)
}

/// Runs `f` on a lab, then the invariant checker.
fn with_lab(builder: LabBuilder, f: impl FnOnce(&Lab) -> Result<()>) -> Result<()> {
    builder.run(|lab| {
        f(lab)?;
        let report = lab.check_invariants()?;
        eprintln!("invariants: {report}");
        Ok(())
    })
}

fn root_ip_forward() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")?
        .trim()
        .to_owned())
}

fn ip_forward_in(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>) -> Result<String> {
    let out = lab
        .exec_in(ns, &["cat", "/proc/sys/net/ipv4/ip_forward"])?
        .check()?;
    Ok(out.stdout.trim().to_owned())
}

fn has_addr(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>, ifname: &str, cidr: &str) -> bool {
    lab.ipv4_addrs(ns)
        .is_ok_and(|a| a.iter().any(|(i, c)| i == ifname && c.to_string() == cidr))
}

fn default_via(lab: &Lab, ns: &impl AsRef<rackline_lab::Netns>) -> Result<Value> {
    Ok(lab.route_to(ns, "default")?.unwrap_or(Value::Null)["gateway"].clone())
}

/// ADD with the defaults; checks the address against the pod's rack and namespace.
fn add(lab: &Lab, pod: &Pod) -> Result<(Value, Cidr4)> {
    let node = lab.node(pod.node);
    let r = node.rack();
    let result = lab.cni_add(pod)?;
    let addr = result_ipv4(&result)?;
    ensure!(
        in_rack_pool(r, addr.addr) && addr.prefix == 24,
        "{}: {addr} is outside rack {r}'s pool",
        pod.name
    );
    ensure!(
        result["ips"][0]["gateway"] == rack_gateway(r).to_string().as_str(),
        "{}: gateway of rack {r} expected: {result}",
        pod.name
    );
    Ok((result, addr))
}

fn pod_addrs(lab: &Lab, pod: &Pod) -> Result<Vec<(String, Cidr4)>> {
    let mut addrs = lab.ipv4_addrs(pod)?;
    addrs.retain(|(ifname, _)| ifname != "lo");
    Ok(addrs)
}

#[test]
fn two_racks_are_routed_through_the_spine() -> Result<()> {
    let root_forward = root_ip_forward()?;
    with_lab(two_racks().rackline(false), |lab| {
        let id = lab.id();
        let names: BTreeSet<String> = lab.netns_names().into_iter().collect();
        let roles = [
            "spine", "ctrl", "tor1", "tor2", "r1n1", "r1n2", "r2n1", "r2n2",
        ];
        let want: BTreeSet<String> = roles.iter().map(|role| format!("{id}-{role}")).collect();
        ensure!(names == want, "namespaces {names:?}, expected {want:?}");
        let spine = lab.spine().context("a two-rack lab has a spine")?;
        ensure!(lab.ctrl_addr() == SPINE_CTRL_ADDR);
        ensure!(
            lab.etcd_url() == "https://10.254.0.2:2379",
            "{}",
            lab.etcd_url()
        );

        // Addressing plan.
        ensure!(has_addr(lab, spine, "br0", "10.254.0.1/24"), "spine br0");
        ensure!(has_addr(lab, spine, "tor2", "10.255.2.0/31"), "spine tor2");
        ensure!(has_addr(lab, lab.ctrl(), "eth0", "10.254.0.2/24"), "ctrl");
        ensure!(default_via(lab, lab.ctrl())? == SPINE_GATEWAY.to_string().as_str());
        for r in [1, 2] {
            let rack = lab.rack(r);
            ensure!(rack.name() == format!("rack{r}"));
            let gw = format!("10.{}.0.1/24", 9 + r);
            ensure!(has_addr(lab, rack.tor(), "br0", &gw), "tor{r} br0");
            let link = format!("10.255.{r}.1/31");
            ensure!(has_addr(lab, rack.tor(), "spine", &link), "tor{r} link");
            ensure!(default_via(lab, rack.tor())? == format!("10.255.{r}.0").as_str());
            let to_rack = lab
                .route_to(spine, &format!("10.{}.0.0/24", 9 + r))?
                .context("spine lacks a rack route")?;
            ensure!(
                to_rack["gateway"] == format!("10.255.{r}.1").as_str(),
                "{to_rack}"
            );
            for k in [1, 2] {
                let node = lab.rack_node(r, k);
                ensure!(node.name() == format!("r{r}n{k}") && node.rack() == r);
                let addr = format!("10.{}.0.{}/24", 9 + r, 10 + k);
                ensure!(has_addr(lab, node, "uplink0", &addr), "{}", node.name());
                ensure!(default_via(lab, node)? == rack.gateway().to_string().as_str());
            }
        }
        ensure!(
            lab.route_to(spine, "default")?.is_none(),
            "the spine must not route anywhere but the lab"
        );

        // Routing only where we switched it on; the root namespace is untouched.
        ensure!(ip_forward_in(lab, spine)? == "1", "spine does not forward");
        for rack in lab.racks() {
            ensure!(
                ip_forward_in(lab, rack.tor())? == "1",
                "tor does not forward"
            );
        }
        ensure!(
            root_ip_forward()? == root_forward,
            "the root namespace's ip_forward changed"
        );

        // Across racks, to the other rack's gateway, to ctrl and its etcd.
        let (r1n1, r1n2) = (lab.rack_node(1, 1), lab.rack_node(1, 2));
        let (r2n1, r2n2) = (lab.rack_node(2, 1), lab.rack_node(2, 2));
        ensure!(lab.ping(r1n1, r2n1.address())?, "r1n1 → r2n1");
        ensure!(lab.ping(r2n2, r1n2.address())?, "r2n2 → r1n2");
        ensure!(lab.ping(r1n1, rack_gateway(2))?, "r1n1 → rack 2 gateway");
        ensure!(lab.ping(r2n1, rack_gateway(1))?, "r2n1 → rack 1 gateway");
        ensure!(lab.ping(r2n1, SPINE_CTRL_ADDR)?, "r2n1 → ctrl");
        ensure!(lab.ping(lab.ctrl(), r2n2.address())?, "ctrl → r2n2");
        for node in [r1n2, r2n2] {
            let mut cmd = vec!["etcdctl".to_string()];
            cmd.extend(lab.etcdctl_args());
            cmd.extend(["endpoint".to_string(), "health".to_string()]);
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            let out = lab.exec_in(node, &cmd)?;
            ensure!(out.success(), "{} cannot reach etcd: {out:?}", node.name());
        }
        // Nothing routes outside the lab: no rack 3, no world.
        ensure!(
            !lab.ping_once(r1n1, Ipv4Addr::new(10, 12, 0, 1))?,
            "reached rack 3"
        );
        ensure!(
            !lab.ping_once(r2n1, Ipv4Addr::new(192, 0, 2, 1))?,
            "reached the world"
        );
        Ok(())
    })?;
    ensure!(
        root_ip_forward()? == root_forward,
        "the root namespace's ip_forward changed"
    );
    Ok(())
}

#[test]
fn one_rack_lab_keeps_the_flat_layout() -> Result<()> {
    with_lab(Lab::builder().rackline(false), |lab| {
        ensure!(lab.spine().is_none() && lab.racks().len() == 1);
        ensure!(lab.tor().name() == format!("{}-tor", lab.id()));
        ensure!(lab.node(2).name() == "n2" && lab.rack_node(1, 2).index() == 2);
        ensure!(lab.etcd_url() == rackline_lab::ETCD_URL);
        ensure!(lab.network_of_node(1) == "prod");
        ensure!(
            ip_forward_in(lab, lab.tor())? == root_ip_forward()?,
            "a one-rack TOR is a plain bridge: ip_forward left as inherited"
        );
        Ok(())
    })
}

#[test]
fn pods_in_two_racks_talk_over_the_underlay() -> Result<()> {
    with_lab(two_racks(), |lab| {
        let networks: Vec<String> = lab.networks().into_iter().map(|n| n.name).collect();
        ensure!(networks == ["rack1", "rack2"], "{networks:?}");
        // One pod per node: a1 (r1n1), a2 (r1n2), b1 (r2n1), b2 (r2n2).
        let mut pods = Vec::new();
        for node in lab.nodes() {
            let pod = lab.add_pod(node.index(), &format!("web-{}", node.name()))?;
            let (_, addr) = add(lab, &pod)?;
            ensure!(
                pod_addrs(lab, &pod)? == [("eth0".to_owned(), addr)],
                "{}",
                pod.name
            );
            let default = lab.route_to(&pod, "default")?.context("pod: no default")?;
            ensure!(default["gateway"] == node.gateway().to_string().as_str());
            let leases = lab.leases_of(&pod.container_id)?;
            ensure!(leases.len() == 1, "{leases:?}");
            ensure!(
                leases[0]["network"] == lab.network_of_node(node.index()).as_str()
                    && leases[0]["node"] == node.name()
                    && leases[0]["address"] == addr.addr.to_string().as_str(),
                "{}",
                leases[0]
            );
            pods.push((pod, addr.addr));
        }
        let [(a1, a1_ip), (a2, a2_ip), (b1, b1_ip), (b2, b2_ip)] = &pods[..] else {
            unreachable!("2 racks × 2 nodes")
        };
        ensure!(a1_ip.octets()[1] == 10 && b1_ip.octets()[1] == 11);

        // Pod ↔ pod across racks, both directions.
        for (from, to, what) in [
            (a1, b1_ip, "r1n1 pod → r2n1 pod"),
            (b1, a1_ip, "r2n1 pod → r1n1 pod"),
            (a2, b2_ip, "r1n2 pod → r2n2 pod"),
            (b2, a2_ip, "r2n2 pod → r1n2 pod"),
            (a1, a2_ip, "r1n1 pod → r1n2 pod (same rack)"),
        ] {
            ensure!(lab.ping(from, *to)?, "{what} failed");
        }
        // Pod → the other rack's gateway and node.
        ensure!(
            lab.ping(a1, rack_gateway(2))?,
            "rack 1 pod → rack 2 gateway"
        );
        ensure!(
            lab.ping(b2, rack_gateway(1))?,
            "rack 2 pod → rack 1 gateway"
        );
        let r2n1 = lab.rack_node(2, 1).address();
        ensure!(lab.ping(a2, r2n1)?, "rack 1 pod → r2n1");
        // Node ↔ own pod (over the node↔pod veth).
        for (pod, ip) in &pods {
            let node = lab.node(pod.node);
            ensure!(lab.ping(node, *ip)?, "{} → its pod", node.name());
            ensure!(lab.ping(pod, node.address())?, "pod → {}", node.name());
        }
        let report = lab.check_invariants()?;
        ensure!(report.leases == 4 && report.networks == 2, "{report}");
        Ok(())
    })
}

#[test]
fn concurrent_adds_from_all_racks_are_distinct_and_del_leaves_nothing() -> Result<()> {
    const PODS_PER_NODE: usize = 10;
    with_lab(two_racks(), |lab| {
        let before: Vec<NetSnapshot> = lab
            .nodes()
            .iter()
            .map(|n| lab.snapshot(n))
            .collect::<Result<_>>()?;
        let pods: Vec<Pod> = lab
            .nodes()
            .iter()
            .flat_map(|n| (1..=PODS_PER_NODE).map(move |j| (n, j)))
            .map(|(n, j)| lab.add_pod(n.index(), &format!("c-{}-{j}", n.name())))
            .collect::<Result<_>>()?;
        let total = pods.len();
        ensure!(total == 2 * 2 * PODS_PER_NODE);

        let results: Vec<(Value, Cidr4)> = std::thread::scope(|s| {
            let handles: Vec<_> = pods.iter().map(|p| s.spawn(move || add(lab, p))).collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ADD thread panicked"))
                .collect::<Result<_>>()
        })?;
        let distinct: BTreeSet<Ipv4Addr> = results.iter().map(|(_, a)| a.addr).collect();
        ensure!(distinct.len() == total, "duplicate addresses: {results:?}");
        for r in [1, 2] {
            let in_rack = distinct.iter().filter(|a| in_rack_pool(r, **a)).count();
            ensure!(in_rack == 2 * PODS_PER_NODE, "rack {r} got {in_rack} pods");
        }

        // etcd agrees: one lease per pod, on its rack's network and node.
        let leases: BTreeMap<Ipv4Addr, Value> = lab
            .leases()?
            .into_iter()
            .filter_map(|l| Some((l["address"].as_str()?.parse().ok()?, l)))
            .collect();
        ensure!(
            leases.keys().copied().collect::<BTreeSet<_>>() == distinct,
            "leases {:?} vs results {distinct:?}",
            leases.keys()
        );
        for (pod, (_, addr)) in pods.iter().zip(&results) {
            let lease = &leases[&addr.addr];
            ensure!(
                lease["containerId"] == pod.container_id.as_str()
                    && lease["node"] == lab.node(pod.node).name()
                    && lease["network"] == lab.network_of_node(pod.node).as_str(),
                "{}: {lease}",
                pod.name
            );
            ensure!(
                pod_addrs(lab, pod)? == [("eth0".to_owned(), *addr)],
                "{}",
                pod.name
            );
        }
        let report = lab.check_invariants()?;
        ensure!(report.leases == total, "{report}");
        // One cross-rack path under load.
        let last = total - 1;
        ensure!(lab.ping(&pods[0], results[last].1.addr)?, "rack 1 → rack 2");
        ensure!(lab.ping(&pods[last], results[0].1.addr)?, "rack 2 → rack 1");

        std::thread::scope(|s| {
            let handles: Vec<_> = pods
                .iter()
                .zip(&results)
                .map(|(p, (result, _))| {
                    s.spawn(move || lab.cni(Cmd::Del, p).prev_result(result).run()?.ok())
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("DEL thread panicked").map(drop))
                .collect::<Result<Vec<()>>>()
        })?;
        ensure!(lab.leases()?.is_empty(), "leases left: {:?}", lab.leases()?);
        for (node, before) in lab.nodes().iter().zip(&before) {
            let after = lab.snapshot(node)?;
            ensure!(
                &after == before,
                "{} changed:\n{}",
                node.name(),
                before.diff(&after)
            );
        }
        for pod in &pods {
            ensure!(lab.link_names(pod)? == ["lo"], "{} kept links", pod.name);
            ensure!(lab.routes(pod)?.is_empty(), "{} kept routes", pod.name);
        }
        let report = lab.check_invariants()?;
        ensure!(report.leases == 0, "{report}");
        Ok(())
    })
}

/// The checker reads the lab's real etcd (etcdctl JSON, base64) and flags a broken state.
#[test]
fn invariant_checker_reads_the_real_etcd() -> Result<()> {
    two_racks().rackline(false).run(|lab| {
        let put = |key: &str, value: &str| -> Result<()> {
            lab.etcdctl(&["put", &format!("/rackline/v1/{key}"), value])?
                .check()
                .map(drop)
        };
        put(
            "networks/rack2",
            r#"{"name":"rack2","subnet":"10.11.0.0/24","gateway":"10.11.0.1","master":"uplink0","exclude":["10.11.0.2-10.11.0.63"]}"#,
        )?;
        let lease = |ip: &str| {
            format!(
                r#"{{"network":"rack2","address":"{ip}","node":"r2n1","containerId":"c1","ifname":"eth0"}}"#
            )
        };
        put("leases/rack2/010.011.000.064", &lease("10.11.0.64"))?;
        let report = lab.check_invariants()?;
        ensure!(report.networks == 1 && report.leases == 1, "{report}");

        // Same attachment again, and an excluded address.
        put("leases/rack2/010.011.000.010", &lease("10.11.0.10"))?;
        let report = lab.invariants()?;
        ensure!(report.violations.len() == 2, "{report}");
        ensure!(report.violations.iter().any(|v| v.contains("two leases")));
        ensure!(report.violations.iter().any(|v| v.contains("outside network rack2")));
        ensure!(lab.check_invariants().is_err());

        lab.etcdctl(&["del", "/rackline/v1/leases/rack2/010.011.000.010"])?
            .check()?;
        lab.check_invariants()?;
        Ok(())
    })
}
