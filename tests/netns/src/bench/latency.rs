//! ADD and DEL latency of one plugin execution: Rackline against the reference macvlan +
//! host-local (Debian's containernetworking-plugins in /usr/lib/cni), same lab, same node, same
//! uplink, same executor (fork + setns from the node namespace, env + stdin), interleaved.
//!
//! Each sample starts from a fresh, empty pod namespace. Not timed: creating that namespace,
//! for DEL samples the ADD before it, and the DEL/namespace removal after an ADD sample.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::exec::{run_timed, Invocation, Timed};
use super::stats::Summary;
use super::{check_interrupted, ms, pod_invocation, steps};
use crate::{Cmd, Lab};
use std::collections::BTreeMap;

const TIMEOUT: Duration = Duration::from_secs(30);
/// The reference plugins' range: excluded from Rackline's network (`.2`–`.63`) and unused by
/// the lab (`.2` ctrl in a one-rack lab, `.11`+ nodes).
const REF_RANGE: (Ipv4Addr, Ipv4Addr) =
    (Ipv4Addr::new(10, 10, 0, 40), Ipv4Addr::new(10, 10, 0, 59));
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

#[derive(Clone, Debug)]
pub struct LatencyConfig {
    /// Measured samples per plugin and verb.
    pub runs: usize,
    /// Samples dropped at the start (per plugin and verb).
    pub warmup: usize,
    pub racks: usize,
    pub nodes_per_rack: usize,
}

/// One plugin under test: program, CNI_PATH and netconf.
pub(super) struct Plugin {
    pub(super) name: &'static str,
    pub(super) program: PathBuf,
    pub(super) cni_path: String,
    pub(super) conf: Value,
}

#[derive(Default)]
struct Series {
    samples: Vec<Duration>,
    failures: Vec<String>,
}

impl Series {
    fn push(&mut self, measured: bool, r: Result<Duration>) {
        match r {
            Ok(d) if measured => self.samples.push(d),
            Ok(_) => {}
            Err(e) => self.failures.push(format!("{e:#}")),
        }
    }
}

pub(super) fn check(t: Timed, what: &str) -> Result<Timed> {
    anyhow::ensure!(
        t.success(),
        "{what} failed: {} {}",
        t.failure_class(),
        t.stdout.trim()
    );
    Ok(t)
}

pub(super) fn inv(
    lab: &Lab,
    p: &Plugin,
    cmd: Cmd,
    pod: &crate::Pod,
    prev: Option<&Value>,
) -> Invocation {
    let mut conf = p.conf.clone();
    if let Some(prev) = prev {
        conf["prevResult"] = prev.clone();
    }
    pod_invocation(lab, &p.program, &p.cni_path, cmd, pod, &conf)
}

/// One timed ADD from a fresh pod namespace; then untimed DEL and namespace removal.
fn sample_add(lab: &Lab, p: &Plugin, node: usize) -> Result<Duration> {
    let pod = lab.add_pod(node, &format!("lat-{}", p.name))?;
    let add = run_timed(&inv(lab, p, Cmd::Add, &pod, None), TIMEOUT);
    let prev = add.as_ref().ok().and_then(Timed::json);
    let del = run_timed(&inv(lab, p, Cmd::Del, &pod, prev.as_ref()), TIMEOUT);
    lab.delete_pod_netns(&pod)?;
    let add = check(add?, &format!("{} ADD", p.name))?;
    check(del?, &format!("{} DEL after the timed ADD", p.name))?;
    Ok(add.elapsed)
}

/// One timed DEL (with prevResult, as on StopPodSandbox) after an untimed ADD.
fn sample_del(lab: &Lab, p: &Plugin, node: usize) -> Result<Duration> {
    let pod = lab.add_pod(node, &format!("lat-{}", p.name))?;
    let result = (|| {
        let add = check(
            run_timed(&inv(lab, p, Cmd::Add, &pod, None), TIMEOUT)?,
            &format!("{} ADD before the timed DEL", p.name),
        )?;
        let prev = add.json().context("ADD result is not JSON")?;
        let del = check(
            run_timed(&inv(lab, p, Cmd::Del, &pod, Some(&prev)), TIMEOUT)?,
            &format!("{} DEL", p.name),
        )?;
        Ok(del.elapsed)
    })();
    lab.delete_pod_netns(&pod)?;
    result
}

/// The netlink work of Rackline's ADD done by iproute2, for the `floor` series. iproute2 cannot
/// switch namespaces inside one batch (and a route cannot be added to another namespace), so
/// it takes one `ip -batch` process per namespace: in the node, the macvlan born in the pod
/// namespace, the veth pair (pod end born there), the node end marked and up, the node's /32 to
/// the pod; in the pod, the marks, the address, both links up, the route to the node and the
/// default route. Names, group and alias as Rackline uses them; not done: the `/proc` sysctls
/// (arp_notify, arp_ignore/arp_announce) and the lookups Rackline makes to validate.
const FLOOR_GROUP: u32 = 0x7f1f_1f00;
const FLOOR_ALIAS: &str = "rackline-floor";

fn floor_batches(lab: &Lab, node: usize, pod: &crate::Pod) -> (Vec<u8>, Vec<u8>) {
    let n = lab.node(node);
    let rack = lab.rack(n.rack());
    let net = rack.subnet();
    let o = REF_RANGE.1.octets();
    let addr = Ipv4Addr::new(o[0], o[1], o[2], o[3] + 1);
    let pod_ns = pod.netns.name();
    let g = FLOOR_GROUP;
    let a = format!(
        "link add eth0 link {up} address 02:00:0a:0a:00:3c group {g} netns {pod_ns} type macvlan mode bridge\n\
         link add rlfloor-h group {g} type veth peer name rlfloor-p group {g} netns {pod_ns}\n\
         link set rlfloor-h alias {FLOOR_ALIAS} up\n\
         route add {addr}/32 dev rlfloor-h src {node_ip}\n",
        up = crate::UPLINK,
        node_ip = n.address(),
    );
    let b = format!(
        "link set eth0 alias {FLOOR_ALIAS}\n\
         link set rlfloor-p alias {FLOOR_ALIAS}\n\
         addr add {addr}/{len} dev eth0\n\
         link set eth0 up\n\
         link set rlfloor-p up\n\
         route add {node_ip}/32 dev rlfloor-p src {addr}\n\
         route add default via {gw} dev eth0\n",
        len = net.prefix,
        node_ip = n.address(),
        gw = rack.gateway(),
    );
    (a.into_bytes(), b.into_bytes())
}

fn ip_batch(batch: Vec<u8>, netns: PathBuf) -> Invocation {
    Invocation {
        program: "ip".into(),
        args: vec!["-batch".into(), "-".into()],
        env: Vec::new(),
        stdin: batch,
        netns,
    }
}

/// One timed floor ADD (both `ip -batch` processes, back to back) from a fresh pod namespace,
/// and one timed floor DEL (`ip link delete group`, one process in the pod, as Rackline's DEL
/// deletes the attachment's group); then the namespace is removed.
fn sample_ip_floor(lab: &Lab, node: usize) -> (Result<Duration>, Result<Duration>) {
    let pod = match lab.add_pod(node, "lat-floor") {
        Ok(p) => p,
        Err(e) => return (Err(e), Err(anyhow::anyhow!("no pod namespace"))),
    };
    let (a, b) = floor_batches(lab, node, &pod);
    let add = (|| {
        let x = check(
            run_timed(&ip_batch(a, lab.node(node).netns().path()), TIMEOUT)?,
            "ip -batch (node side)",
        )
        .map_err(|e| e.context(check_stderr_hint()))?;
        let y = check(
            run_timed(&ip_batch(b, pod.netns.path()), TIMEOUT)?,
            "ip -batch (pod side)",
        )?;
        Ok(x.elapsed + y.elapsed)
    })();
    let del = (|| {
        let d = ip_batch(
            format!("link delete group {FLOOR_GROUP}\n").into_bytes(),
            pod.netns.path(),
        );
        Ok(check(run_timed(&d, TIMEOUT)?, "ip link delete group")?.elapsed)
    })();
    let _ = lab.delete_pod_netns(&pod);
    (add, del)
}

fn check_stderr_hint() -> &'static str {
    "the floor needs iproute2's `ip` in PATH"
}

/// One Rackline ADD and DEL with the plugin's step line on (see [`super::steps`]).
fn sample_steps(
    lab: &Lab,
    p: &Plugin,
    node: usize,
    file: &std::path::Path,
) -> Result<(steps::Breakdown, steps::Breakdown)> {
    let pod = lab.add_pod(node, "lat-steps")?;
    let with_steps = |mut i: Invocation| {
        i.env.push((steps::ENV.into(), file.display().to_string()));
        i
    };
    let r = (|| {
        let _ = std::fs::remove_file(file);
        let add = check(
            run_timed(&with_steps(inv(lab, p, Cmd::Add, &pod, None)), TIMEOUT)?,
            "rackline ADD (steps)",
        )?;
        let a = steps::read(file, &add)?;
        let prev = add.json().context("ADD result is not JSON")?;
        let del = check(
            run_timed(
                &with_steps(inv(lab, p, Cmd::Del, &pod, Some(&prev))),
                TIMEOUT,
            )?,
            "rackline DEL (steps)",
        )?;
        let d = steps::read(file, &del)?;
        Ok((a, d))
    })();
    lab.delete_pod_netns(&pod)?;
    r
}

/// `name{labels} value` lines of one histogram's `_sum` and `_count` from ipamd's /metrics.
fn histogram_totals(text: &str, family: &str) -> BTreeMap<String, (f64, f64)> {
    let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        let (kind, rest) = if let Some(r) = line.strip_prefix(&format!("{family}_sum")) {
            (0, r)
        } else if let Some(r) = line.strip_prefix(&format!("{family}_count")) {
            (1, r)
        } else {
            continue;
        };
        let Some((labels, v)) = rest.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = v.parse::<f64>() else { continue };
        let e = out.entry(labels.trim().to_owned()).or_default();
        if kind == 0 {
            e.0 = v;
        } else {
            e.1 = v;
        }
    }
    out
}

/// ipamd's own view over the run: mean Allocate service time and mean etcd request time per
/// operation (histogram sum / count, after − before; ipamd keeps no per-request samples).
fn ipamd_means(before: &str, after: &str) -> String {
    let mut md = String::new();
    for family in [
        "rackline_ipamd_allocate_duration_seconds",
        "rackline_ipamd_etcd_request_duration_seconds",
    ] {
        let (b, a) = (
            histogram_totals(before, family),
            histogram_totals(after, family),
        );
        for (labels, (sum, count)) in &a {
            let (sb, cb) = b.get(labels).copied().unwrap_or_default();
            let n = count - cb;
            if n < 1.0 {
                continue;
            }
            let _ = writeln!(
                md,
                "| `{family}{labels}` | {:.3} | {n} |",
                (sum - sb) / n * 1e3
            );
        }
    }
    if md.is_empty() {
        return "\nipamd's histograms could not be read (no metrics listener?).\n".into();
    }
    format!(
        "\nipamd's own view over the whole run (node `{{node}}`; mean = histogram sum / count, \
         after − before; every ADD/DEL of every series counts):\n\n| histogram | mean (ms) | \
         requests |\n|---|---|---|\n{md}"
    )
}

/// The process-start floor: fork + setns + exec + exit of `/bin/cat` reading the same netconf.
fn sample_floor(lab: &Lab, p: &Plugin, node: usize) -> Result<Duration> {
    let pod_ns = lab.node(node).netns().path();
    let i = Invocation {
        program: "/bin/cat".into(),
        args: Vec::new(),
        env: vec![("CNI_COMMAND".into(), "ADD".into())],
        stdin: serde_json::to_vec(&p.conf)?,
        netns: pod_ns,
    };
    Ok(check(run_timed(&i, TIMEOUT)?, "/bin/cat")?.elapsed)
}

/// Rackline (the lab's netconf of node `k`) and the reference macvlan + host-local on the same
/// uplink, host-local's state under `data_dir`.
pub(super) fn plugins(lab: &Lab, k: usize, data_dir: &std::path::Path) -> Result<(Plugin, Plugin)> {
    let bins = lab.bins()?;
    std::fs::create_dir_all(data_dir)?;
    let rack = lab.rack(lab.node(k).rack());
    let reference = Plugin {
        name: "reference",
        program: PathBuf::from(REFERENCE_DIR).join("macvlan"),
        cni_path: REFERENCE_DIR.into(),
        conf: json!({
            "cniVersion": "1.0.0",
            "name": "ref",
            "type": "macvlan",
            "master": crate::UPLINK,
            "mode": "bridge",
            "ipam": {
                "type": "host-local",
                "dataDir": data_dir.display().to_string(),
                "ranges": [[{
                    "subnet": rack.subnet().to_string(),
                    "rangeStart": REF_RANGE.0.to_string(),
                    "rangeEnd": REF_RANGE.1.to_string(),
                    "gateway": rack.gateway().to_string(),
                }]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }),
    };
    let rackline = Plugin {
        name: "rackline",
        program: bins.rackline.clone(),
        cni_path: bins.cni_path(),
        conf: lab.conf(k),
    };
    Ok((rackline, reference))
}

pub fn run(cfg: &LatencyConfig) -> Result<String> {
    super::on_spanning_lab(cfg.racks, cfg.nodes_per_rack, |lab| measure(lab, cfg))
}

fn measure(lab: &Lab, cfg: &LatencyConfig) -> Result<String> {
    super::wait_for_blocks(lab, Duration::from_secs(30))?;
    let node = lab.rack_node(1, 1);
    let k = node.index();
    let data_dir = lab.dir().join("host-local");
    std::fs::create_dir_all(&data_dir)?;
    let (rackline, reference) = plugins(lab, k, &data_dir)?;
    // The same plugin for a pod a 50-rule ACL selects (by its name, `lat-rackline-acl`):
    // 24 allow rules and a final deny per direction, so the pod gets a table.
    let acled = Plugin {
        name: "rackline-acl",
        program: rackline.program.clone(),
        cni_path: rackline.cni_path.clone(),
        conf: lab.conf(k),
    };
    setup_acl(lab, k)?;
    let links_before = lab.link_names(node)?;
    let metrics_before = lab.ipamd_metrics(k).unwrap_or_default();
    let steps_file = lab.dir().join("steps.line");

    let (mut r_add, mut r_del, mut f_add, mut f_del, mut floor) = Default::default();
    let (mut ip_add, mut ip_del): (Series, Series) = Default::default();
    let (mut s_add, mut s_del, mut s_fail) = (Vec::new(), Vec::new(), Vec::new());
    let (mut a_add, mut a_del) = (Series::default(), Series::default());
    let series: [(&Plugin, &mut Series, &mut Series); 3] = [
        (&rackline, &mut r_add, &mut r_del),
        (&reference, &mut f_add, &mut f_del),
        (&acled, &mut a_add, &mut a_del),
    ];
    let mut series = series;
    let total = cfg.warmup + cfg.runs;
    for i in 0..total {
        check_interrupted()?;
        if i % 20 == 0 {
            eprintln!("latency: sample {i}/{total}…");
        }
        let measured = i >= cfg.warmup;
        // Rotate which plugin goes first, so slow drifts of the machine hit all alike.
        let order: [usize; 3] = [i % 3, (i + 1) % 3, (i + 2) % 3];
        for j in order {
            let (p, add, del) = &mut series[j];
            add.push(measured, sample_add(lab, p, k));
            del.push(measured, sample_del(lab, p, k));
        }
        Series::push(&mut floor, measured, sample_floor(lab, &rackline, k));
        let (a, d) = sample_ip_floor(lab, k);
        ip_add.push(measured, a);
        ip_del.push(measured, d);
        match sample_steps(lab, &rackline, k, &steps_file) {
            Ok((a, d)) if measured => {
                s_add.push(a);
                s_del.push(d);
            }
            Ok(_) => {}
            Err(e) => s_fail.push(format!("{e:#}")),
        }
    }
    let metrics_after = lab.ipamd_metrics(k).unwrap_or_default();

    // Nothing may leak: the node's links, Rackline's leases, host-local's reservations.
    let links_after = lab.link_names(node)?;
    let leases = lab.leases()?;
    let mut hl_files: Vec<String> = std::fs::read_dir(data_dir.join("ref"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    hl_files.sort();

    let mut md = String::new();
    let _ = writeln!(
        md,
        "Lab: Spanning, {} racks × {} nodes; every sample runs on node `{}` (uplink `{}`, rack 1). \
         Rackline: the release `rackline` plugin, its netconf from the lab (CNI 1.1.0, network \
         `prod`, ipamd socket of the node, logLevel info), ipamd `--standby 4` (the default). \
         Reference: `/usr/lib/cni/macvlan` (containernetworking-plugins {}) mode bridge on the \
         same uplink with `host-local` (dataDir in the lab's temp dir, range {}-{}), CNI 1.0.0 \
         conf, `CNI_PATH=/usr/lib/cni`. Both run with the same environment as the lab gives \
         rackline, from the node's namespace, timed from fork to exit; every sample starts from a \
         fresh empty pod namespace; DEL is sent with prevResult. n = {} per plugin and verb after \
         {} dropped warm-up samples, plugins interleaved (alternating which goes first). Every \
         iteration then runs the `floor` (iproute2 `ip -batch` doing Rackline's netlink work, \
         one process per namespace; DEL: `ip link delete group` in the pod) and one Rackline \
         ADD + DEL with its step line on (the breakdown; not part of the Rackline series).\n",
        cfg.racks,
        cfg.nodes_per_rack,
        node.name(),
        crate::UPLINK,
        reference_version(),
        REF_RANGE.0,
        REF_RANGE.1,
        cfg.runs,
        cfg.warmup,
    );
    let s = |x: &Series| Summary::of(&x.samples);
    let _ = writeln!(
        md,
        "| verb | Rackline median / p99 (ms) | reference median / p99 (ms) | Rackline min / max | reference min / max | failures (Rackline / reference) | budget | verdict |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|");
    let rows = [("ADD", &r_add, &f_add), ("DEL", &r_del, &f_del)];
    for (verb, r, f) in rows {
        let (rs, fs) = (s(r), s(f));
        let cell = |x: Option<Summary>, a: fn(&Summary) -> (f64, f64)| {
            x.map_or("no samples".into(), |x| {
                let (p, q) = a(&x);
                format!("{} / {}", ms(p), ms(q))
            })
        };
        let goal = if verb == "ADD" { 0.33 } else { 0.8 };
        let (budget, verdict) = match (rs, fs) {
            (Some(r), Some(f)) => (
                format!("median ≤ {goal}× the reference"),
                verdict(r.median / f.median, goal, "the reference"),
            ),
            _ => ("-".into(), "not measured".into()),
        };
        let _ = writeln!(
            md,
            "| {verb} | {} | {} | {} | {} | {} / {} | {budget} | {verdict} |",
            cell(rs, |x| (x.median, x.p99)),
            cell(fs, |x| (x.median, x.p99)),
            cell(rs, |x| (x.min, x.max)),
            cell(fs, |x| (x.min, x.max)),
            r.failures.len(),
            f.failures.len(),
        );
    }
    if let (Some(ia), Some(id)) = (s(&ip_add), s(&ip_del)) {
        let _ = writeln!(
            md,
            "\nFloor (`ip -batch`, same netlink work, same executor): ADD median {} ms (p99 {}), \
             DEL median {} ms (p99 {}).",
            ms(ia.median),
            ms(ia.p99),
            ms(id.median),
            ms(id.p99)
        );
        if let Some(r) = s(&r_add) {
            let one_proc = s(&floor).map(|c| ia.median - c.median);
            let _ = writeln!(
                md,
                "Rackline ADD / floor: {:.2}× (goal ≤ 1.5×: {}){}.",
                r.median / ia.median,
                verdict(r.median / ia.median, 1.5, "the floor"),
                one_proc.map_or(String::new(), |o| format!(
                    "; against the floor less one process start (what one process doing both \
                     namespaces would take, {} ms): {:.2}×",
                    ms(o),
                    r.median / o
                ))
            );
        }
        if let Some(r) = s(&r_del) {
            let _ = writeln!(
                md,
                "Rackline DEL / floor DEL: {:.2}× ({} vs {} ms).",
                r.median / id.median,
                ms(r.median),
                ms(id.median)
            );
        }
    }
    if let Some(fl) = s(&floor) {
        let _ = writeln!(
            md,
            "Process start (fork + setns + exec + exit of `/bin/cat` reading the same netconf, \
             same executor): median {} ms, p99 {} ms.",
            ms(fl.median),
            ms(fl.p99)
        );
    }
    if let (Some(r), Some(a)) = (s(&r_add), s(&a_add)) {
        let added = a.median - r.median;
        let _ = writeln!(
            md,
            "\nPacket filter cost, same run: ADD of a pod selected by a 50-rule ACL (its table \
             programmed before the link exists) median {} ms / p99 {} ms (min {}, max {}; \
             {} failures) against {} ms without a policy: {:+.2} ms added; budget < 1 ms added: {}.",
            ms(a.median),
            ms(a.p99),
            ms(a.min),
            ms(a.max),
            a_add.failures.len(),
            ms(r.median),
            added,
            if added < 1.0 { "met" } else { "NOT met" }
        );
        if let Some(ad) = s(&a_del) {
            let _ = writeln!(
                md,
                "DEL of that pod (removes the table too): median {} ms.",
                ms(ad.median)
            );
        }
    }
    if let (Some(r), Some(f)) = (s(&r_add), s(&f_add)) {
        let _ = writeln!(
            md,
            "Rackline ADD median is {:.2}× the reference's ({} vs {} ms).",
            r.median / f.median,
            ms(r.median),
            ms(f.median)
        );
    }
    if !s_add.is_empty() {
        let _ = writeln!(
            md,
            "\nPer-step breakdown (Rackline with `{}` set; n = {}; instants from the plugin's \
             CLOCK_MONOTONIC against the bench's fork and exit; ↳ = nested in the step named \
             first):\n\n{}\n{}",
            steps::ENV,
            s_add.len(),
            steps::table("ADD", &s_add),
            steps::table("DEL", &s_del)
        );
    }
    let _ = write!(
        md,
        "{}",
        ipamd_means(&metrics_before, &metrics_after).replace("{node}", node.name())
    );
    let mut all_failures: Vec<&String> = [
        &r_add, &r_del, &f_add, &f_del, &a_add, &a_del, &floor, &ip_add, &ip_del,
    ]
    .iter()
    .flat_map(|x| x.failures.iter())
    .collect();
    all_failures.extend(s_fail.iter());
    if !all_failures.is_empty() {
        let _ = writeln!(md, "\nFailures ({}); first:", all_failures.len());
        for f in all_failures.iter().take(5) {
            let line: String = f.chars().take(300).collect();
            let _ = writeln!(md, "- `{}`", line.replace('`', "'"));
        }
    }
    let _ = writeln!(
        md,
        "\nLeak check after all samples: node links {} ({:?}); Rackline pod leases left: {}; \
         host-local files: {:?} (only `last_reserved_ip.0` and `lock` expected).",
        if links_before == links_after {
            "unchanged"
        } else {
            "CHANGED"
        },
        links_after,
        leases.len(),
        hl_files
    );
    Ok(md)
}

/// `met (0.72× …)` or `NOT met (…)` for a ratio against its goal.
fn verdict(ratio: f64, goal: f64, what: &str) -> String {
    if ratio <= goal {
        format!("met ({ratio:.2}× {what})")
    } else {
        format!("NOT met ({ratio:.2}× {what}, goal ≤ {goal}×)")
    }
}

/// The 50-rule ACL for `lat-rackline-acl` on node `k`'s network; waits until ipamd has it (an
/// ADD of that pod gets a table).
fn setup_acl(lab: &Lab, k: usize) -> Result<()> {
    let net = lab.network_of_node(k);
    let rules = |base: usize| -> Vec<String> {
        let mut r: Vec<String> = (0..24)
            .map(|i| format!("allow tcp:{} 10.{}.0.0/16", 1000 + i, base + i))
            .collect();
        r.push("deny".into());
        r
    };
    let mut args: Vec<String> = [
        "acl",
        "create",
        &net,
        "default",
        "latency",
        "--pods",
        "lat-rackline-acl",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for r in rules(100) {
        args.extend(["--ingress".into(), r]);
    }
    for r in rules(150) {
        args.extend(["--egress".into(), r]);
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    lab.racklinectl(&argv)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let pod = lab.add_pod(k, "lat-rackline-acl")?;
        lab.cni_add(&pod)?;
        let tables = lab
            .exec_in(&pod, &["nft", "list", "tables"])?
            .check()?
            .stdout;
        lab.cni_del(&pod)?;
        lab.delete_pod_netns(&pod)?;
        if tables.contains("rackline-") {
            return Ok(());
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "ipamd never applied the latency ACL"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn reference_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "version unknown".into())
}
