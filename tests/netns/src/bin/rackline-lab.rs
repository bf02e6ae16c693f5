//! `rackline-lab`: the demo. Builds two racks behind a routed spine (2 racks × 2 nodes × 1 pod
//! by default) with the real Rackline binaries and ONE network spanning the racks (the product's
//! real mode, `LabNetworkMode::Spanning`: a rack binding per rack, so each pod gets an address
//! from its rack's range and its own rack's TOR as gateway), prints the network, every pod with
//! its gateway, a ping matrix (pods, each rack's gateway, nodes), the tail of the IP event stream
//! and the pool utilisation metrics, then tears everything down.
//! `--keep` leaves the lab up until Ctrl-C; `--sweep` only removes stale labs of dead runs.

use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use anyhow::{bail, Result};
use clap::Parser;
use nix::sys::signal::{SigSet, Signal};
use rackline_lab::{result_ipv4, sweep_stale, Cidr4, Lab, LabNetworkMode, Netns, Pod};

#[derive(Parser)]
#[command(
    about = "Rackline demo: racks of network namespaces behind a spine, real pods, a ping matrix"
)]
struct Args {
    /// Number of racks (1 = the single-rack lab without a spine).
    #[arg(long, default_value_t = 2)]
    racks: usize,
    /// Nodes per rack.
    #[arg(long, alias = "nodes", default_value_t = 2)]
    nodes_per_rack: usize,
    /// Pods per node.
    #[arg(long, default_value_t = 1)]
    pods_per_node: usize,
    /// netmaster replicas (one leads; ipamd and racklinectl are given all of them).
    #[arg(long, default_value_t = 1)]
    netmasters: usize,
    /// Keep the lab running until Ctrl-C (SIGINT/SIGTERM), then tear it down.
    #[arg(long)]
    keep: bool,
    /// Only delete leftovers of dead lab runs, then exit.
    #[arg(long)]
    sweep: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rackline-lab: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Blocks SIGINT/SIGTERM in every thread and waits for them on a dedicated one, so Ctrl-C
/// ends in an orderly teardown (Drop) instead of killing us with namespaces left behind.
/// Children get a clean signal mask: std resets it between fork and exec.
fn catch_signals() -> Result<mpsc::Receiver<Signal>> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            INTERRUPTED.store(true, Ordering::SeqCst);
            eprintln!("\nrackline-lab: {sig}, tearing down…");
            let _ = tx.send(sig);
        }
    });
    Ok(rx)
}

struct Endpoint<'a> {
    label: String,
    netns: Option<&'a Netns>,
    addr: Ipv4Addr,
}

fn run(args: &Args) -> Result<bool> {
    if args.sweep {
        let report = sweep_stale()?;
        println!("{report:#?}");
        return Ok(report.errors.is_empty());
    }
    let signals = catch_signals()?;
    eprintln!(
        "building the lab ({} racks × {} nodes, one spanning network, {} netmaster replica(s))…",
        args.racks, args.nodes_per_rack, args.netmasters
    );
    let lab = build_lab(args)?;
    let pods = add_pods(&lab, args.pods_per_node)?;
    let mut all_ok = print_topology(&lab, &pods);
    interrupted()?;
    all_ok &= print_connectivity(&lab, &pods);
    all_ok &= print_invariants(&lab);
    print_observability(&lab);
    if args.keep && !INTERRUPTED.load(Ordering::SeqCst) {
        println!();
        println!("lab kept; namespaces: {}", lab.netns_names().join(" "));
        if let Some((pod, _, _)) = pods.first() {
            println!(
                "  e.g. nsenter --net={} ip addr",
                pod.netns.path().display()
            );
        }
        println!("press Ctrl-C to tear down");
        let _ = signals.recv();
    }
    // After Ctrl-C the daemons got the SIGINT too (same foreground process group), so DEL
    // could only fail; the teardown removes the pods' namespaces and the lab's etcd anyway.
    let deletable = if INTERRUPTED.load(Ordering::SeqCst) {
        &pods[..0]
    } else {
        &pods[..]
    };
    for (pod, _, _) in deletable {
        if let Err(e) = lab.cni_del(pod) {
            eprintln!("DEL {}: {e:#}", pod.name);
            all_ok = false;
        }
    }
    drop(lab);
    Ok(all_ok)
}

/// The lab's racks, nodes, etcd and netmasters, up and running.
fn build_lab(args: &Args) -> Result<Lab> {
    let lab = Lab::builder()
        .racks(args.racks)
        .nodes_per_rack(args.nodes_per_rack)
        .network_mode(LabNetworkMode::Spanning)
        .netmasters(args.netmasters)
        .log_level("info")
        .build()?;
    interrupted()?;
    match lab.pki() {
        Some(p) => eprintln!(
            "control plane over TLS: etcd {} (client certificates), netmaster {} (TLS + tokens); \
             racklinectl --config {}",
            lab.etcd_url(),
            lab.netmaster_urls(),
            p.ctl_config.display()
        ),
        None => eprintln!("control plane in plaintext (RACKLINE_LAB_TLS=0)"),
    }
    Ok(lab)
}

/// `per_node` pods on every node, each ADDed: (pod, address, gateway).
fn add_pods(lab: &Lab, per_node: usize) -> Result<Vec<(Pod, Cidr4, String)>> {
    let mut pods: Vec<(Pod, Cidr4, String)> = Vec::new();
    for node in lab.nodes() {
        for _ in 0..per_node {
            interrupted()?;
            let pod = lab.add_pod(node.index(), &format!("web-{}", pods.len() + 1))?;
            let result = lab.cni_add(&pod)?;
            let addr = result_ipv4(&result)?;
            let gateway = result["ips"][0]["gateway"]
                .as_str()
                .unwrap_or("none")
                .to_owned();
            pods.push((pod, addr, gateway));
        }
    }

    Ok(pods)
}

/// The networks and every pod with its rack, node, address and gateway;
/// false when a pod's gateway is not its own rack's TOR.
fn print_topology(lab: &Lab, pods: &[(Pod, Cidr4, String)]) -> bool {
    println!(
        "Rackline lab {} — logs in {}",
        lab.id(),
        lab.log_dir().display()
    );
    println!();
    match lab.netmaster_leader_record() {
        Ok(Some(l)) => println!(
            "netmaster: {} replica(s), leader {} at {}",
            lab.netmaster_count(),
            l.id,
            l.advertise
        ),
        Ok(None) => println!("netmaster: no leader elected"),
        Err(e) => println!("netmaster: cannot read the leader: {e:#}"),
    }
    for net in lab.networks() {
        println!("network {} spans {} rack(s):", net.name, net.racks.len());
        let rows: Vec<[String; 4]> = net
            .racks
            .iter()
            .map(|s| {
                [
                    format!("  {}", lab.rack(s.rack).name()),
                    s.subnet.to_string(),
                    s.gateway.to_string(),
                    format!("{}-{}", s.pool.0, s.pool.1),
                ]
            })
            .collect();
        print_table(&["  RACK", "SUBNET", "GATEWAY", "RANGE"], &rows);
    }
    println!();
    let mut all_ok = true;
    let rows: Vec<[String; 6]> = pods
        .iter()
        .map(|(p, a, gw)| {
            let node = lab.node(p.node);
            let rack = lab.rack(node.rack());
            // A pod's gateway must be its own rack's TOR.
            let gw_ok = *gw == rack.gateway().to_string();
            all_ok &= gw_ok;
            [
                p.name.clone(),
                rack.name().to_owned(),
                node.name().to_owned(),
                lab.network_of_node(p.node),
                a.to_string(),
                if gw_ok {
                    gw.clone()
                } else {
                    format!("{gw} (WRONG: rack gateway is {})", rack.gateway())
                },
            ]
        })
        .collect();
    print_table(
        &["POD", "RACK", "NODE", "NETWORK", "ADDRESS", "GATEWAY"],
        &rows,
    );

    all_ok
}

/// Pings between every pod, gateway and node, printed as a matrix; false
/// when a path fails.
fn print_connectivity(lab: &Lab, pods: &[(Pod, Cidr4, String)]) -> bool {
    let mut all_ok = true;
    let mut sources: Vec<Endpoint> = Vec::new();
    for (pod, addr, _) in pods {
        sources.push(Endpoint {
            label: pod.name.clone(),
            netns: Some(&pod.netns),
            addr: addr.addr,
        });
    }
    for node in lab.nodes() {
        sources.push(Endpoint {
            label: node.name().into(),
            netns: Some(node.netns()),
            addr: node.address(),
        });
    }
    // Columns: pods, each rack's gateway, nodes.
    let gateways: Vec<Endpoint> = lab
        .racks()
        .iter()
        .map(|rack| Endpoint {
            label: format!("gw-{}", rack.name()),
            netns: None,
            addr: rack.gateway(),
        })
        .collect();
    let mut targets: Vec<&Endpoint> = sources[..pods.len()].iter().collect();
    targets.extend(&gateways);
    targets.extend(&sources[pods.len()..]);

    let matrix: Vec<Vec<Option<bool>>> = std::thread::scope(|s| {
        let handles: Vec<Vec<_>> = sources
            .iter()
            .map(|from| {
                let targets = &targets;
                let lab = &lab;
                targets
                    .iter()
                    .map(move |to| {
                        s.spawn(move || {
                            let ns = from.netns?;
                            (from.addr != to.addr).then(|| lab.ping(ns, to.addr).unwrap_or(false))
                        })
                    })
                    .collect()
            })
            .collect();
        handles
            .into_iter()
            .map(|row| {
                row.into_iter()
                    .map(|h| h.join().unwrap_or(Some(false)))
                    .collect()
            })
            .collect()
    });

    println!();
    println!("Connectivity (ping -c1 -W1, up to 3 tries; row = from, column = to):");
    let mut header = vec!["from \\ to".to_owned()];
    header.extend(targets.iter().map(|t| t.label.clone()));
    let rows: Vec<Vec<String>> = sources
        .iter()
        .zip(&matrix)
        .map(|(from, cells)| {
            let mut row = vec![from.label.clone()];
            row.extend(cells.iter().map(|c| match c {
                None => "-".to_owned(),
                Some(true) => "ok".to_owned(),
                Some(false) => {
                    all_ok = false;
                    "FAIL".to_owned()
                }
            }));
            row
        })
        .collect();
    let header_refs: Vec<&str> = header.iter().map(String::as_str).collect();
    print_table(&header_refs, &rows);
    println!();
    println!(
        "{}",
        if all_ok {
            "all paths ok"
        } else {
            "SOME PATHS FAILED"
        }
    );
    all_ok
}

/// The etcd invariants (no address twice, blocks inside their racks, …).
fn print_invariants(lab: &Lab) -> bool {
    match lab.invariants() {
        Ok(report) => {
            let ok = report.ok();
            println!("etcd invariants: {report}");
            ok
        }
        Err(e) => {
            println!("etcd invariants: cannot read etcd: {e:#}");
            false
        }
    }
}

/// The tail of the IP event stream and the pool utilisation gauges, as an operator sees them.
fn print_observability(lab: &Lab) {
    println!();
    println!("IP event stream (`racklinectl events`, last lines):");
    match lab.racklinectl_raw(&["events"]) {
        Ok(out) if out.success() => {
            let lines: Vec<&str> = out.stdout.lines().collect();
            for l in &lines[lines.len().saturating_sub(6)..] {
                println!("  {l}");
            }
        }
        Ok(out) => println!("  racklinectl events failed: {}", out.stderr.trim()),
        Err(e) => println!("  racklinectl events failed: {e:#}"),
    }
    println!();
    let leader = lab.netmaster_leader().unwrap_or(1);
    println!(
        "Pool utilisation (netmaster /metrics at {}):",
        lab.netmaster_metrics_addr(leader)
    );
    match lab.netmaster_http(leader, "/metrics") {
        Ok(r) if r.status == 200 => {
            for l in r.body.lines().filter(|l| {
                l.starts_with("rackline_pool_capacity_addresses{")
                    || (l.starts_with("rackline_pool_addresses{")
                        && (l.contains("state=\"used\"") || l.contains("state=\"free\"")))
            }) {
                println!("  {l}");
            }
        }
        Ok(r) => println!("  /metrics answered {}", r.status),
        Err(e) => println!("  cannot scrape netmaster: {e:#}"),
    }
}

fn print_table<R: AsRef<[String]>>(header: &[&str], rows: &[R]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row.as_ref()) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.as_ref().iter().map(String::as_str).collect());
    }
}
