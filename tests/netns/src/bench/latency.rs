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
use super::{check_interrupted, ms, pod_invocation};
use crate::{Cmd, Lab};

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

struct Plugin {
    name: &'static str,
    program: PathBuf,
    cni_path: String,
    conf: Value,
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

fn check(t: Timed, what: &str) -> Result<Timed> {
    anyhow::ensure!(
        t.success(),
        "{what} failed: {} {}",
        t.failure_class(),
        t.stdout.trim()
    );
    Ok(t)
}

fn inv(lab: &Lab, p: &Plugin, cmd: Cmd, pod: &crate::Pod, prev: Option<&Value>) -> Invocation {
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

/// The floor: fork + setns + exec + exit of `/bin/cat` reading the same netconf.
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

pub fn run(cfg: &LatencyConfig) -> Result<String> {
    super::on_spanning_lab(cfg.racks, cfg.nodes_per_rack, |lab| measure(lab, cfg))
}

fn measure(lab: &Lab, cfg: &LatencyConfig) -> Result<String> {
    super::wait_for_blocks(lab, Duration::from_secs(30))?;
    let node = lab.rack_node(1, 1);
    let k = node.index();
    let bins = lab.bins()?;
    let data_dir = lab.dir().join("host-local");
    std::fs::create_dir_all(&data_dir)?;
    let rack = lab.rack(1);
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
    let links_before = lab.link_names(node)?;

    let (mut r_add, mut r_del, mut f_add, mut f_del, mut floor) = Default::default();
    let series: [(&Plugin, &mut Series, &mut Series); 2] = [
        (&rackline, &mut r_add, &mut r_del),
        (&reference, &mut f_add, &mut f_del),
    ];
    let mut series = series;
    let total = cfg.warmup + cfg.runs;
    for i in 0..total {
        check_interrupted()?;
        if i % 20 == 0 {
            eprintln!("latency: sample {i}/{total}…");
        }
        let measured = i >= cfg.warmup;
        // Alternate which plugin goes first, so slow drifts of the machine hit both alike.
        let order: [usize; 2] = if i % 2 == 0 { [0, 1] } else { [1, 0] };
        for j in order {
            let (p, add, del) = &mut series[j];
            add.push(measured, sample_add(lab, p, k));
            del.push(measured, sample_del(lab, p, k));
        }
        Series::push(&mut floor, measured, sample_floor(lab, &rackline, k));
    }

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
         {} dropped warm-up samples, plugins interleaved (alternating which goes first).\n",
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
        let (budget, verdict) = match (verb, rs, fs) {
            ("ADD", Some(r), _) => (
                "median ≤ 4 ms".to_owned(),
                if r.median <= 4.0 {
                    format!("met ({} ms, {:.2} ms under)", ms(r.median), 4.0 - r.median)
                } else {
                    format!(
                        "NOT met ({} ms, {:.2} ms over)",
                        ms(r.median),
                        r.median - 4.0
                    )
                },
            ),
            ("DEL", Some(r), Some(f)) => (
                "median ≤ reference".to_owned(),
                if r.median <= f.median {
                    format!("met ({:.2}× the reference)", r.median / f.median)
                } else {
                    format!(
                        "NOT met ({:.2}× the reference, {:.2} ms over)",
                        r.median / f.median,
                        r.median - f.median
                    )
                },
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
    if let Some(fl) = s(&floor) {
        let _ = writeln!(
            md,
            "\nFloor (fork + setns + exec + exit of `/bin/cat` reading the same netconf, same \
             executor): median {} ms, p99 {} ms.",
            ms(fl.median),
            ms(fl.p99)
        );
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
    let all_failures: Vec<&String> = [&r_add, &r_del, &f_add, &f_del, &floor]
        .iter()
        .flat_map(|x| x.failures.iter())
        .collect();
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

fn reference_version() -> String {
    std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "version unknown".into())
}
