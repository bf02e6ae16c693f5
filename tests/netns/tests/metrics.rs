//! Metrics and health end to end, with the real plugin, ipamd, netmaster and etcd: counters
//! move by exactly the operations performed, both `/metrics` parse as strict OpenMetrics text
//! and every exported or dashboard-queried metric is documented, and `/readyz` (and CNI STATUS)
//! follow etcd.
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

mod observe_common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use observe_common::{add_on, count, del_on, ipamd, netmaster, poll};
use rackline_lab::{Cmd, Lab, LabNetworkMode};
use rackline_telemetry::exposition::{self, Exposition};
use serde_json::Value;

#[test]
fn counters_move_by_exactly_the_operations_performed() -> Result<()> {
    Lab::builder()
        .racks(2)
        .nodes_per_rack(1)
        .network_mode(LabNetworkMode::Spanning)
        .run(|lab| {
            // Both endpoints answer and parse before anything happens.
            // Ready once its first etcd snapshot is loaded, which may trail the socket.
            for k in [1, 2] {
                ensure!(lab.ipamd_http(k, "/healthz")?.status == 200);
                poll(Duration::from_secs(20), "ipamd /readyz", || {
                    Ok((lab.ipamd_http(k, "/readyz")?.status == 200).then_some(()))
                })?;
            }
            ensure!(lab.netmaster_http(1, "/healthz")?.status == 200);
            poll(Duration::from_secs(20), "netmaster /readyz", || {
                Ok((lab.netmaster_http(1, "/readyz")?.status == 200).then_some(()))
            })?;
            let a0 = ipamd(lab, 1)?;
            let b0 = ipamd(lab, 2)?;
            let m0 = netmaster(lab, 1)?;
            let ok = |e: &Exposition, net: &str| {
                count(
                    e,
                    "rackline_ipamd_allocations_total",
                    &[("network", net), ("outcome", "ok")],
                )
            };

            // 3 ADDs on r1n1, 1 on r2n1, then one DEL and its repeat.
            let mut pods = Vec::new();
            for (node, name) in [(1, "a"), (1, "b"), (1, "c"), (2, "d")] {
                let pod = lab.add_pod(node, name)?;
                lab.cni_add(&pod)?;
                pods.push(pod);
            }
            lab.cni_del(&pods[0])?;
            lab.cni_del(&pods[0])?;

            let a1 = ipamd(lab, 1)?;
            let b1 = ipamd(lab, 2)?;
            ensure!(
                ok(&a1, "prod") - ok(&a0, "prod") == 3.0,
                "r1n1 allocations: {} before, {} after",
                ok(&a0, "prod"),
                ok(&a1, "prod")
            );
            ensure!(
                ok(&b1, "prod") - ok(&b0, "prod") == 1.0,
                "r2n1 allocations: {} before, {} after",
                ok(&b0, "prod"),
                ok(&b1, "prod")
            );
            ensure!(
                a1.value(
                    "rackline_ipamd_allocations_total",
                    &[("network", "prod"), ("rack", "rack1"), ("outcome", "ok")]
                )
                .is_some(),
                "the rack is a label"
            );
            let rel = |e: &Exposition, o: &str| {
                count(
                    e,
                    "rackline_ipamd_releases_total",
                    &[("network", "prod"), ("outcome", o)],
                )
            };
            ensure!(
                rel(&a1, "ok") - rel(&a0, "ok") == 1.0,
                "one DEL freed an address"
            );
            ensure!(
                rel(&a1, "none") - rel(&a0, "none") == 1.0,
                "the repeat freed nothing"
            );
            let lat = |e: &Exposition| {
                count(
                    e,
                    "rackline_ipamd_allocate_duration_seconds_count",
                    &[("result", "ok")],
                )
            };
            ensure!(lat(&a1) - lat(&a0) == 3.0, "one latency sample per ADD");
            ensure!(
                count(
                    &a1,
                    "rackline_ipamd_etcd_request_duration_seconds_count",
                    &[("op", "create_lease")]
                ) >= 3.0,
                "every lease create is timed"
            );
            ensure!(
                a1.value("rackline_ipamd_leases_held", &[("network", "prod")]) == Some(2.0),
                "r1n1 holds b and c"
            );
            ensure!(a1.value("rackline_ipamd_blocks_owned", &[("network", "prod")]) >= Some(1.0));
            ensure!(a1.value("rackline_ipamd_mode", &[("mode", "online")]) == Some(1.0));
            ensure!(a1.value("rackline_ipamd_ready", &[]) == Some(1.0));

            // One exhausted pool → exactly one "exhausted". A flat /29 next to prod: 5
            // addresses (.2-.6), all of which r1n1 can hand out (its reserve included).
            lab.racklinectl(&[
                "network",
                "create",
                "tiny",
                "--subnet",
                "10.70.0.0/29",
                "--gateway",
                "10.70.0.1",
                "--master",
                "uplink0",
            ])?;
            let mut tiny = Vec::new();
            let exhausted = loop {
                ensure!(tiny.len() <= 5, "a /29 gave more than 5 addresses");
                let pod = lab.add_pod(1, &format!("t{}", tiny.len()))?;
                let out = add_on(lab, &pod, "tiny")?;
                if out.success() {
                    tiny.push(pod);
                    continue;
                }
                break out;
            };
            exhausted.expect_error(101)?;
            ensure!(tiny.len() == 5, "{} addresses from a /29", tiny.len());
            let a2 = ipamd(lab, 1)?;
            ensure!(ok(&a2, "tiny") == 5.0, "5 tiny allocations");
            ensure!(
                count(
                    &a2,
                    "rackline_ipamd_allocations_total",
                    &[("network", "tiny"), ("outcome", "exhausted")]
                ) == 1.0,
                "exactly one exhausted"
            );

            // The plugin's own ADD/DEL times: every invocation on r1n1 so far but the last is
            // reported (each report rides on the next call).
            let runs_on_r1n1 = 3 + 2 + tiny.len() + 1;
            let reported = count(&a2, "rackline_plugin_command_duration_seconds_count", &[]);
            ensure!(
                reported == (runs_on_r1n1 - 1) as f64,
                "plugin reports: {reported}, expected {}",
                runs_on_r1n1 - 1
            );
            ensure!(
                count(
                    &a2,
                    "rackline_plugin_command_duration_seconds_count",
                    &[("command", "ADD"), ("result", "error")]
                ) == 0.0,
                "the failed ADD is the last run: not reported yet"
            );

            // netmaster: pool utilisation per rack, block grants, admin requests.
            for _ in 0..2 {
                lab.racklinectl(&["network", "show", "prod"])?;
            }
            let m1 = poll(Duration::from_secs(10), "pool gauges catch up", || {
                let m = netmaster(lab, 1)?;
                let used = |r| {
                    m.value(
                        "rackline_pool_addresses",
                        &[("network", "prod"), ("rack", r), ("state", "used")],
                    )
                };
                Ok((used("rack1") == Some(2.0) && used("rack2") == Some(1.0)).then_some(m))
            })?;
            ensure!(
                m1.value(
                    "rackline_pool_capacity_addresses",
                    &[("network", "prod"), ("rack", "rack1")]
                ) == Some(191.0)
            );
            let cap = m1.value(
                "rackline_pool_capacity_addresses",
                &[("network", "tiny"), ("rack", "")],
            );
            ensure!(cap == Some(5.0), "tiny capacity {cap:?}");
            ensure!(
                m1.value(
                    "rackline_pool_addresses",
                    &[("network", "tiny"), ("state", "free")]
                ) == Some(0.0)
            );
            let states: f64 = ["used", "reserved", "standby", "quarantined", "free"]
                .iter()
                .map(|s| {
                    count(
                        &m1,
                        "rackline_pool_addresses",
                        &[("network", "prod"), ("rack", "rack1"), ("state", s)],
                    )
                })
                .sum();
            ensure!(
                states == 191.0,
                "the states of a row add up to its capacity: {states}"
            );
            let blocks = lab.racklinectl(&["block", "list", "--rack", "rack1"])?;
            let n_blocks = blocks.as_array().map_or(0, Vec::len) as f64;
            ensure!(
                count(
                    &m1,
                    "rackline_netmaster_block_grants_total",
                    &[("network", "prod"), ("rack", "rack1")]
                ) == n_blocks,
                "one grant per block of rack1 ({n_blocks})"
            );
            let show = |e: &Exposition| {
                count(
                    e,
                    "rackline_netmaster_admin_requests_total",
                    &[("method", "GetNetwork"), ("code", "OK")],
                )
            };
            ensure!(show(&m1) - show(&m0) == 2.0, "two network shows");
            ensure!(
                count(
                    &m1,
                    "rackline_netmaster_mutations_total",
                    &[("method", "CreateNetwork")]
                ) >= 2.0,
                "prod and tiny were created"
            );
            ensure!(m1.value("rackline_netmaster_leader", &[]) == Some(1.0));
            ensure!(m1.value("rackline_netmaster_leader_term", &[]) > Some(0.0));
            check_documented(&[&a2, &m1])?;
            for p in &tiny {
                del_on(lab, p, "tiny")?;
            }
            for p in &pods[1..] {
                lab.cni_del(p)?;
            }
            lab.check_invariants().map(drop)
        })
}

/// The sample names a family shows up as in the docs' metric tables (counters as `_total`).
fn documented_name(f: &exposition::Family) -> String {
    if f.kind == "counter" {
        format!("{}_total", f.name)
    } else {
        f.name.clone()
    }
}

/// Every metric the daemons export is in the operations.md reference table, and every metric
/// the Grafana dashboard queries is documented.
fn check_documented(scrapes: &[&Exposition]) -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let docs = std::fs::read_to_string(root.join("docs/operations.md"))?;
    let exported: std::collections::BTreeSet<String> = scrapes
        .iter()
        .flat_map(|e| e.families.iter().map(documented_name))
        .collect();
    for name in &exported {
        ensure!(
            docs.contains(&format!("| `{name}` |")),
            "{name} is not in the metric reference of docs/operations.md"
        );
    }
    let table: std::collections::BTreeSet<String> = docs
        .lines()
        .filter_map(|l| l.strip_prefix("| `rackline_"))
        .filter_map(|l| l.split_once('`').map(|(n, _)| format!("rackline_{n}")))
        .collect();
    // (Families without a series yet, e.g. no conflict so far, are not exported at all: the
    // other direction is not checked here.)
    ensure!(table.len() >= exported.len(), "{table:?}");
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/rackline.json"))?;
    let doc: Value = serde_json::from_str(&dashboard).context("the dashboard is not JSON")?;
    let mut queried = 0;
    for panel in doc["panels"].as_array().context("no panels")? {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap_or_default();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if !word.starts_with("rackline_") {
                    continue;
                }
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| word.strip_suffix(s))
                    .unwrap_or(word);
                ensure!(
                    table.contains(base),
                    "the dashboard's panel {:?} queries {word}, which is not documented",
                    panel["title"]
                );
                queried += 1;
            }
        }
    }
    ensure!(queried > 20, "the dashboard queries only {queried} metrics");
    Ok(())
}

#[test]
fn readyz_and_status_follow_etcd() -> Result<()> {
    // No standby reserve: without etcd, nothing can be allocated.
    Lab::builder().nodes(1).standby(0).run(|lab| {
        let r = lab.ipamd_http(1, "/readyz")?;
        ensure!(r.status == 200, "ipamd not ready once started: {}", r.body);
        poll(Duration::from_secs(20), "netmaster ready", || {
            Ok((lab.netmaster_http(1, "/readyz")?.status == 200).then_some(()))
        })?;
        lab.cni_node(1, Cmd::Status).run()?.ok()?;

        lab.stop_etcd()?;
        let r = poll(
            Duration::from_secs(20),
            "ipamd /readyz flips to 503",
            || {
                let r = lab.ipamd_http(1, "/readyz")?;
                Ok((r.status == 503).then_some(r))
            },
        )?;
        ensure!(r.body.contains("etcd is unreachable"), "{}", r.body);
        // STATUS agrees, with the same reason.
        let out = lab.cni_node(1, Cmd::Status).run()?;
        let doc = out.expect_error(50)?;
        ensure!(
            doc["details"]
                .as_str()
                .unwrap_or_default()
                .contains("etcd is unreachable"),
            "{doc}"
        );
        let n = poll(
            Duration::from_secs(20),
            "netmaster /readyz flips to 503",
            || {
                let r = lab.netmaster_http(1, "/readyz")?;
                Ok((r.status == 503).then_some(r))
            },
        )?;
        ensure!(n.body.contains("etcd is unreachable"), "{}", n.body);
        // Alive all the same, and the metrics still answer.
        ensure!(lab.ipamd_http(1, "/healthz")?.status == 200);
        ensure!(lab.netmaster_http(1, "/healthz")?.status == 200);
        let m = ipamd(lab, 1)?;
        ensure!(m.value("rackline_ipamd_mode", &[("mode", "offline")]) == Some(1.0));
        ensure!(m.value("rackline_ipamd_ready", &[]) == Some(0.0));

        lab.start_etcd()?;
        poll(Duration::from_secs(30), "ipamd ready again", || {
            Ok((lab.ipamd_http(1, "/readyz")?.status == 200).then_some(()))
        })?;
        poll(Duration::from_secs(30), "netmaster ready again", || {
            Ok((lab.netmaster_http(1, "/readyz")?.status == 200).then_some(()))
        })?;
        lab.cni_node(1, Cmd::Status).run()?.ok()?;
        Ok(())
    })
}
