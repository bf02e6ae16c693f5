//! Observability end to end, with the real plugin, ipamd, netmaster and etcd: metrics count
//! exactly the operations performed and parse as strict OpenMetrics text, `/readyz` follows
//! etcd, the IP event stream delivers a scripted scenario in order and resumes after a
//! netmaster kill -9 without a gap, a compaction gap is an error naming the revision, and the
//! webhook receiver gets every event at least once across a leader failover (and is told
//! about a gap).
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rackline_lab::{result_ipv4, Cidr4, Cmd, Lab, LabNetworkMode, Pod, CTRL_ADDR};
use rackline_telemetry::exposition::{self, Exposition};
use serde_json::{json, Value};

fn parse(text: &str, who: &str) -> Result<Exposition> {
    let e = exposition::parse(text).map_err(|e| anyhow::anyhow!("{who} /metrics: {e}\n{text}"))?;
    e.check_conventions()
        .map_err(|e| anyhow::anyhow!("{who} /metrics: {e}"))?;
    Ok(e)
}

fn ipamd(lab: &Lab, k: usize) -> Result<Exposition> {
    parse(&lab.ipamd_metrics(k)?, &format!("ipamd {k}"))
}

fn netmaster(lab: &Lab, i: usize) -> Result<Exposition> {
    parse(&lab.netmaster_metrics(i)?, &format!("netmaster {i}"))
}

/// A counter's value (0 when the series does not exist yet).
fn count(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.sum(name, labels)
}

fn add_on(lab: &Lab, pod: &Pod, network: &str) -> Result<rackline_lab::CniOutput> {
    lab.cni(Cmd::Add, pod).set("network", json!(network)).run()
}

fn del_on(lab: &Lab, pod: &Pod, network: &str) -> Result<()> {
    lab.cni(Cmd::Del, pod)
        .set("network", json!(network))
        .run()?
        .ok()
        .map(drop)
}

fn poll<T>(within: Duration, what: &str, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn counters_move_by_exactly_the_operations_performed() -> Result<()> {
    Lab::builder()
        .racks(2)
        .nodes_per_rack(1)
        .network_mode(LabNetworkMode::Spanning)
        .run(|lab| {
            // Both endpoints answer and parse before anything happens.
            for k in [1, 2] {
                ensure!(lab.ipamd_http(k, "/healthz")?.status == 200);
                ensure!(lab.ipamd_http(k, "/readyz")?.status == 200);
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
            ensure!(ok(&a1, "prod") - ok(&a0, "prod") == 3.0, "r1n1 allocations");
            ensure!(ok(&b1, "prod") - ok(&b0, "prod") == 1.0, "r2n1 allocations");
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
        ensure!(lab.ipamd_http(1, "/readyz")?.status == 200);
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

/// (kind, pod name, address) of an event.
fn key(e: &Value) -> (String, String, String) {
    (
        e["kind"].as_str().unwrap_or_default().to_owned(),
        e["pod"]["name"].as_str().unwrap_or_default().to_owned(),
        e["address"].as_str().unwrap_or_default().to_owned(),
    )
}

fn cursor(e: &Value) -> (i64, i64) {
    (
        e["revision"].as_i64().unwrap_or(0),
        e["index"].as_i64().unwrap_or(0),
    )
}

/// Network `name` on 10.10.`c`.0/24 allocating only .`first`-.`last` (next to prod on the
/// rack's L2 segment).
fn small_network(lab: &Lab, name: &str, c: u8, first: u8, last: u8, extra: &[&str]) -> Result<()> {
    let subnet = format!("10.10.{c}.0/24");
    let gateway = format!("10.10.{c}.1");
    let below = format!("10.10.{c}.2-10.10.{c}.{}", first - 1);
    let above = format!("10.10.{c}.{}-10.10.{c}.254", last + 1);
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
    args.extend_from_slice(extra);
    lab.racklinectl(&args).map(drop)
}

/// Runs a racklinectl write, retrying while a failover leaves no leader (exit 3).
fn write_retrying(lab: &Lab, args: &[&str]) -> Result<Value> {
    poll(
        Duration::from_secs(20),
        &format!("racklinectl {args:?}"),
        || {
            let mut full = vec!["-o", "json"];
            full.extend_from_slice(args);
            let out = lab.racklinectl_raw(&full)?;
            if out.success() {
                return Ok(Some(serde_json::from_str(&out.stdout)?));
            }
            ensure!(out.code == 3, "racklinectl {args:?}: {}", out.stderr);
            Ok(None)
        },
    )
}

#[test]
fn the_event_stream_tells_a_scripted_scenario_in_order_and_resumes_after_kill9() -> Result<()> {
    Lab::builder()
        .nodes(1)
        .standby(0)
        .netmasters(2)
        .ipamd_gc_grace_secs(0)
        .run(|lab| {
            small_network(
                lab,
                "st",
                5,
                10,
                14,
                &["--sticky", "--sticky-hold-secs", "600"],
            )?;
            small_network(
                lab,
                "pr",
                6,
                10,
                12,
                &["--probe", "--probe-count", "1", "--probe-interval-ms", "50"],
            )?;
            // A host already using 10.10.6.10: the probe of the first pod on "pr" finds it.
            lab.add_host(
                "squatter",
                &[Cidr4 {
                    addr: Ipv4Addr::new(10, 10, 6, 10),
                    prefix: 24,
                }],
            )?;
            let r0 = lab.etcd_revision()?;
            let leader = lab
                .wait_netmaster_leader(Duration::from_secs(10), None)?
                .replica;
            let other = 3 - leader;
            let follower = lab.follow_events(&lab.netmaster_replica_url(leader), r0 + 1)?;

            let a = lab.add_pod(1, "a")?;
            let b = lab.add_pod(1, "b")?;
            let addr_a = result_ipv4(&lab.cni_add(&a)?)?.addr.to_string();
            let addr_b = result_ipv4(&lab.cni_add(&b)?)?.addr.to_string();
            lab.cni_del(&a)?;
            lab.cni_node(1, Cmd::Gc)
                .set("cni.dev/valid-attachments", json!([]))
                .run()?
                .ok()?;
            let seen = follower.wait_for(Duration::from_secs(20), |ev| ev.len() >= 4)?;

            // The stream's netmaster dies; the follower's stream breaks, telling where to
            // resume.
            lab.kill_netmaster(leader)?;
            lab.wait_netmaster_leader(Duration::from_secs(15), Some(leader))?;

            let c = lab.add_pod(1, "c")?;
            let addr_c = result_ipv4(&add_on(lab, &c, "st")?.result()?.clone())?
                .addr
                .to_string();
            del_on(lab, &c, "st")?;
            write_retrying(
                lab,
                &["reservation", "pin", "st", "default", "d", "10.10.5.14"],
            )?;
            write_retrying(lab, &["reservation", "release", "st", "default", "c"])?;
            let e = lab.add_pod(1, "e")?;
            let out = add_on(lab, &e, "pr")?;
            let addr_e = result_ipv4(out.result()?)?.addr.to_string();
            ensure!(
                addr_e == "10.10.6.11",
                "the squatted .10 was skipped: got {addr_e}"
            );
            let m = ipamd(lab, 1)?;
            ensure!(
                m.value(
                    "rackline_ipamd_address_conflicts_total",
                    &[("network", "pr"), ("outcome", "quarantined")]
                ) == Some(1.0),
                "the conflict is counted"
            );
            ensure!(
                count(
                    &m,
                    "rackline_ipamd_reclaims_total",
                    &[("network", "prod"), ("reason", "gc")]
                ) == 1.0,
                "the GC reclaim is counted"
            );

            // Resume from the last revision the follower printed, on the surviving replica.
            let mut dead = follower;
            let status = poll(Duration::from_secs(10), "the follower notices", || {
                dead.exited()
            })?;
            ensure!(
                status.code() == Some(3),
                "a broken stream is 'unreachable' (exit 3), not {status}:\n{}",
                dead.output()
            );
            ensure!(
                dead.output().contains("resume with --since"),
                "the error says where to resume:\n{}",
                dead.output()
            );
            let last = seen
                .last()
                .map(cursor)
                .context("no event before the kill")?;
            let since = (last.0 + 1).to_string();
            let url = lab.netmaster_replica_url(other);
            let out = lab
                .racklinectl_replica(other, &["-o", "json", "events", "--since", &since])?
                .check()?;
            let resumed: Vec<Value> = out
                .stdout
                .lines()
                .map(serde_json::from_str)
                .collect::<Result<_, _>>()
                .with_context(|| format!("NDJSON from {url}: {}", out.stdout))?;
            let mut got: Vec<Value> = dead.events();
            got.extend(resumed);

            let want = [
                ("allocated", "a", addr_a.as_str()),
                ("allocated", "b", addr_b.as_str()),
                ("released", "a", addr_a.as_str()),
                ("reclaimed", "b", addr_b.as_str()),
                ("allocated", "c", addr_c.as_str()),
                ("reserved", "c", addr_c.as_str()),
                ("pinned", "d", "10.10.5.14"),
                ("unreserved", "c", addr_c.as_str()),
                ("allocated", "e", "10.10.6.10"),
                ("conflict", "e", "10.10.6.10"),
                ("allocated", "e", "10.10.6.11"),
            ];
            let got_keys: Vec<(String, String, String)> = got.iter().map(key).collect();
            let want_keys: Vec<(String, String, String)> = want
                .iter()
                .map(|(k, p, a)| (k.to_string(), p.to_string(), a.to_string()))
                .collect();
            ensure!(
                got_keys == want_keys,
                "events out of order, missing or repeated:\n got {got_keys:#?}\nwant {want_keys:#?}"
            );
            // Cursors strictly increase: nothing delivered twice, nothing skipped.
            ensure!(got.windows(2).all(|w| cursor(&w[0]) < cursor(&w[1])));
            ensure!(got[3]["reason"] == "gc", "{}", got[3]);
            ensure!(
                got[9]["conflictMac"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
                    && got[9]["quarantined"] == true,
                "{}",
                got[9]
            );
            ensure!(
                got[0]["mac"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("0a:58:")),
                "{}",
                got[0]
            );
            ensure!(
                got[0]["node"] == "n1" && got[0]["pod"]["uid"] == a.uid.as_str(),
                "{}",
                got[0]
            );
            ensure!(
                got[0]["containerId"] == a.container_id.as_str(),
                "{}",
                got[0]
            );
            ensure!(got[4]["sticky"] == true, "{}", got[4]);

            // The same history, read whole from the survivor, is identical.
            let all = lab
                .racklinectl_replica(
                    other,
                    &["-o", "json", "events", "--since", &(r0 + 1).to_string()],
                )?
                .check()?;
            let all: Vec<(String, String, String)> = all
                .stdout
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).map(|v| key(&v)))
                .collect::<Result<_, _>>()?;
            ensure!(all == want_keys, "a one-shot read differs: {all:#?}");

            // A compacted cursor is an error naming the oldest revision left.
            let now = lab.etcd_revision()?;
            lab.etcdctl(&["compact", &now.to_string()])?.check()?;
            let out = lab.racklinectl_replica(other, &["events", "--since", &since])?;
            ensure!(out.code == 1, "exit {}: {}", out.code, out.stderr);
            ensure!(
                out.stderr.contains("compacted") && out.stderr.contains(&now.to_string()),
                "{}",
                out.stderr
            );
            lab.cni(Cmd::Del, &e)
                .set("network", json!("pr"))
                .run()?
                .ok()?;
            lab.cni_del(&b)?;
            Ok(())
        })
}

/// The webhook's URL in `ctrl` (fixed port: the flag is set before the lab exists).
const HOOK_PORT: u16 = 18080;

#[test]
fn the_webhook_gets_every_event_at_least_once_across_a_leader_failover() -> Result<()> {
    let url = format!("http://{CTRL_ADDR}:{HOOK_PORT}/rackline");
    Lab::builder()
        .nodes(1)
        .standby(0)
        .netmasters(2)
        .netmaster_args(&[
            "--webhook-url",
            &url,
            "--webhook-backoff-ms",
            "100",
            "--webhook-backoff-max-ms",
            "400",
            "--webhook-batch-max",
            "2",
        ])
        .run(|lab| {
            let hook = lab.webhook_receiver_on(HOOK_PORT)?;
            let leader = lab
                .wait_netmaster_leader(Duration::from_secs(10), None)?
                .replica;
            // The sink has recorded where it starts before the first pod.
            poll(Duration::from_secs(20), "the webhook cursor", || {
                let m = netmaster(lab, leader)?;
                Ok(
                    (m.value("rackline_netmaster_webhook_cursor_revision", &[]) > Some(0.0))
                        .then_some(()),
                )
            })?;
            let r0 = lab.etcd_revision()?;

            // A receiver that fails at first: the sink retries until it takes the batch.
            hook.answer(503);
            let mut pods = Vec::new();
            for name in ["p1", "p2", "p3"] {
                let p = lab.add_pod(1, name)?;
                lab.cni_add(&p)?;
                pods.push(p);
            }
            poll(Duration::from_secs(10), "a refused POST", || {
                Ok(hook.posts().iter().any(|p| p.status == 503).then_some(()))
            })?;
            hook.answer(200);
            hook.wait_for(Duration::from_secs(20), |ev| ev.len() >= 3)?;

            // Kill the leader mid-stream; events keep happening during the failover.
            lab.kill_netmaster(leader)?;
            lab.cni_del(&pods[0])?;
            let p4 = lab.add_pod(1, "p4")?;
            lab.cni_add(&p4)?;
            let new = lab
                .wait_netmaster_leader(Duration::from_secs(15), Some(leader))?
                .replica;
            lab.cni_del(&pods[1])?;

            // Every event since r0, as the survivor's stream tells it, reaches the receiver at
            // least once.
            let out = lab
                .racklinectl_replica(
                    new,
                    &["-o", "json", "events", "--since", &(r0 + 1).to_string()],
                )?
                .check()?;
            let expected: Vec<(i64, i64)> = out
                .stdout
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).map(|v| cursor(&v)))
                .collect::<Result<_, _>>()?;
            ensure!(
                expected.len() == 6,
                "3 ADDs, a DEL, an ADD, a DEL: {}",
                out.stdout
            );
            let got = hook.wait_for(Duration::from_secs(30), |ev| {
                expected.iter().all(|c| ev.iter().any(|e| cursor(e) == *c))
            })?;
            // At least once, in order per delivery: the receiver's first sight of each event
            // comes in cursor order.
            let mut firsts: Vec<(i64, i64)> = Vec::new();
            for e in &got {
                let c = cursor(e);
                if expected.contains(&c) && !firsts.contains(&c) {
                    firsts.push(c);
                }
            }
            ensure!(
                firsts == expected,
                "first deliveries out of order: {firsts:?} vs {expected:?}"
            );
            let m = netmaster(lab, new)?;
            ensure!(
                count(
                    &m,
                    "rackline_netmaster_webhook_posts_total",
                    &[("outcome", "ok")]
                ) >= 1.0
            );

            // A gap: the receiver is down, the leader dies, etcd compacts past the stored
            // cursor. The next leader tells the receiver instead of skipping silently.
            hook.answer(503);
            let p5 = lab.add_pod(1, "p5")?;
            lab.cni_add(&p5)?;
            std::thread::sleep(Duration::from_millis(300));
            lab.start_netmaster_replica(leader)?;
            lab.kill_netmaster(new)?;
            // One more write, so the compaction lies past anything the sink could have
            // recorded as delivered.
            lab.etcdctl(&["put", "/rackline-gap-test", "1"])?.check()?;
            let compact = lab.etcd_revision()?;
            lab.etcdctl(&["compact", &compact.to_string()])?.check()?;
            lab.wait_netmaster_leader(Duration::from_secs(15), Some(new))?;
            hook.answer(200);
            let gap = poll(Duration::from_secs(30), "a gap notice", || {
                Ok(hook
                    .posts()
                    .into_iter()
                    .find(|p| p.status == 200 && p.body.get("gap").is_some()))
            })?;
            ensure!(
                gap.body["gap"]["compactRevision"].as_i64() >= Some(compact),
                "{}",
                gap.body
            );
            let m = netmaster(lab, leader)?;
            ensure!(m.value("rackline_netmaster_webhook_gaps_total", &[]) == Some(1.0));
            for p in [&pods[2], &p4, &p5] {
                lab.cni_del(p)?;
            }
            Ok(())
        })
}
