//! The IP event stream and the webhook sink end to end, with the real plugin, ipamd,
//! netmaster and etcd: a scripted scenario arrives in order and resumes after a netmaster
//! kill -9 without a gap, a compaction gap is an error naming the revision, and the webhook
//! receiver gets every event at least once across a leader failover (and is told about a gap).
//!
//! Needs root and `cargo build --workspace --bins` first (the lab fails loudly otherwise).

mod observe_common;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use observe_common::{add_on, count, del_on, ipamd, netmaster, poll};
use rackline_lab::{result_ipv4, Cidr4, Cmd, Lab, CTRL_ADDR};
use serde_json::{json, Value};

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

            // A gap: the receiver is down (p5's event stays undelivered, the stored cursor
            // before it), etcd compacts past it, the leader dies. The next leader cannot
            // replay from its cursor and tells the receiver instead of skipping silently.
            // (The compaction comes first: the leader's own watch is live and unaffected.)
            hook.answer(503);
            let p5 = lab.add_pod(1, "p5")?;
            lab.cni_add(&p5)?;
            poll(Duration::from_secs(10), "p5's batch refused", || {
                Ok((hook.posts().last().is_some_and(|p| p.status == 503)).then_some(()))
            })?;
            // One more write, so the compaction lies past anything the sink could have
            // recorded as delivered.
            lab.etcdctl(&["put", "/rackline-gap-test", "1"])?.check()?;
            let compact = lab.etcd_revision()?;
            lab.etcdctl(&["compact", &compact.to_string()])?.check()?;
            lab.start_netmaster_replica(leader)?;
            lab.kill_netmaster(new)?;
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
