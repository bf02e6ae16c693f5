//! Self-test of the harness itself: topology, etcd in `ctrl`, exec inside namespaces, restart,
//! teardown (also on panic) and the stale-lab sweeper. Needs no Rackline binary.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use rackline_lab::{
    list_netns, node_address, pid_alive, sweep_stale, Lab, CTRL_ADDR, ETCD_URL, GATEWAY,
};

fn topology_lab() -> Result<Lab> {
    Lab::builder().nodes(2).rackline(false).build()
}

#[test]
fn topology_is_reachable() -> Result<()> {
    let lab = topology_lab()?;
    let (n1, n2) = (lab.node(1), lab.node(2));

    // Addressing per CONTRACTS.md.
    let addrs = lab.ipv4_addrs(n1)?;
    ensure!(
        addrs
            .iter()
            .any(|(i, a)| i == "uplink0" && a.to_string() == "10.10.0.11/24"),
        "n1 addresses: {addrs:?}"
    );
    let default = lab
        .route_to(n1, "default")?
        .context("n1 has no default route")?;
    ensure!(
        default["gateway"] == "10.10.0.1" && default["dev"] == "uplink0",
        "{default}"
    );
    let ctrl_addrs = lab.ipv4_addrs(lab.ctrl())?;
    ensure!(
        ctrl_addrs
            .iter()
            .any(|(i, a)| i == "eth0" && a.to_string() == "10.10.0.2/24"),
        "ctrl addresses: {ctrl_addrs:?}"
    );
    let br0 = lab.link(lab.tor(), "br0")?.context("tor has no br0")?;
    ensure!(br0["linkinfo"]["info_kind"] == "bridge", "{br0}");

    // node → gateway, node ↔ node, ctrl → node, node → itself via lo.
    ensure!(lab.ping(n1, GATEWAY)?, "n1 cannot reach the gateway");
    ensure!(lab.ping(n2, GATEWAY)?, "n2 cannot reach the gateway");
    ensure!(lab.ping(n1, node_address(2))?, "n1 cannot reach n2");
    ensure!(lab.ping(n2, node_address(1))?, "n2 cannot reach n1");
    ensure!(
        lab.ping(lab.ctrl(), node_address(1))?,
        "ctrl cannot reach n1"
    );
    ensure!(lab.ping(n1, Ipv4Addr::LOCALHOST)?, "lo is down in n1");

    // node → etcd on 10.10.0.2:2379.
    for node in [n1, n2] {
        let mut cmd = vec!["etcdctl".to_string()];
        cmd.extend(lab.etcdctl_args());
        cmd.extend(["--dial-timeout", "2s", "endpoint", "health"].map(String::from));
        ensure!(
            cmd[2] == ETCD_URL,
            "the one-rack lab's etcd is {ETCD_URL}: {cmd:?}"
        );
        let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
        let out = lab.exec_in(node, &cmd)?;
        ensure!(out.success(), "{} cannot reach etcd: {out:?}", node.name());
    }
    ensure!(lab.ping(n1, CTRL_ADDR)?, "n1 cannot reach ctrl");

    // Nothing routes outside the rack: the lab is isolated from the host.
    ensure!(
        !lab.ping_once(n1, Ipv4Addr::new(10, 10, 1, 1))?,
        "n1 reached outside the rack"
    );
    // Nothing of Rackline's in etcd yet: the checker passes on an empty store.
    let report = lab.check_invariants()?;
    ensure!(report.leases == 0 && report.networks == 0, "{report}");
    Ok(())
}

#[test]
fn pods_are_empty_namespaces_with_lo_up() -> Result<()> {
    let lab = topology_lab()?;
    let pod = lab.add_pod(2, "web")?;
    ensure!(
        pod.netns.name() == format!("{}-n2p1", lab.id()),
        "{}",
        pod.netns.name()
    );
    ensure!(pod.netns.path().exists());
    ensure!(lab.link_names(&pod)?.as_slice() == ["lo"], "pod links");
    let lo = lab.link(&pod, "lo")?.context("no lo")?;
    ensure!(
        lo["flags"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "UP")),
        "{lo}"
    );
    ensure!(lab.routes(&pod)?.is_empty(), "pod has routes");
    ensure!(
        pod.container_id.len() == 64 && pod.uid.len() == 36,
        "{pod:?}"
    );
    ensure!(
        pod.cni_args().contains("K8S_POD_NAME=web;"),
        "{}",
        pod.cni_args()
    );

    // A second pod on the same node gets the next name; ids differ.
    let other = lab.add_pod(2, "db")?;
    ensure!(other.netns.name().ends_with("-n2p2") && other.container_id != pod.container_id);

    // exec_in really runs inside the namespace: the pod cannot see the node's uplink.
    let out = lab.exec_in(&pod, &["ip", "link", "show", "uplink0"])?;
    ensure!(!out.success(), "uplink0 visible from the pod: {out:?}");
    lab.delete_pod_netns(&pod)?;
    ensure!(!pod.netns.path().exists());
    ensure!(!lab.netns_names().contains(&pod.netns.name().to_owned()));
    Ok(())
}

#[test]
fn etcd_restarts_with_its_data() -> Result<()> {
    let lab = topology_lab()?;
    lab.etcdctl(&["put", "/rackline-lab/k", "v1"])?.check()?;
    lab.stop_etcd()?;
    ensure!(!lab.etcd_healthy()?, "etcd still answers after stop_etcd");
    lab.start_etcd()?;
    let out = lab
        .etcdctl(&["get", "--print-value-only", "/rackline-lab/k"])?
        .check()?;
    ensure!(
        out.stdout.trim() == "v1",
        "value lost across restart: {out:?}"
    );
    Ok(())
}

#[test]
fn teardown_removes_everything() -> Result<()> {
    let lab = topology_lab()?;
    lab.add_pod(1, "a")?;
    let names: BTreeSet<String> = lab.netns_names().into_iter().collect();
    ensure!(names.len() == 5, "tor, ctrl, n1, n2, pod: {names:?}");
    let dir = lab.dir().to_owned();
    let etcd_pid = etcd_pid(&lab)?;
    drop(lab);
    let left: Vec<String> = list_netns()
        .into_iter()
        .filter(|n| names.contains(n))
        .collect();
    ensure!(left.is_empty(), "namespaces left after drop: {left:?}");
    ensure!(!dir.exists(), "temp dir {} left after drop", dir.display());
    ensure!(
        !pid_alive(etcd_pid),
        "etcd {etcd_pid} still alive after drop"
    );
    Ok(())
}

#[test]
fn teardown_runs_when_a_test_panics() -> Result<()> {
    let mut seen = Vec::new();
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = topology_lab().expect("lab");
        seen = lab.netns_names();
        panic!("simulated test failure");
    }));
    ensure!(caught.is_err());
    ensure!(!seen.is_empty());
    let all = list_netns();
    let left: Vec<&String> = seen.iter().filter(|n| all.contains(n)).collect();
    ensure!(left.is_empty(), "namespaces left after a panic: {left:?}");
    Ok(())
}

/// A namespace named after a dead pid (as a run killed by a timeout leaves it), with a process
/// of ours inside: both the Rust sweeper and scripts/lab-sweep.sh remove it and kill the process,
/// and neither touches a live lab.
#[test]
fn sweep_removes_only_stale_labs() -> Result<()> {
    let live = topology_lab()?;
    for use_script in [false, true] {
        let dead_pid = {
            let mut c = Command::new("true").spawn()?;
            c.wait()?;
            c.id()
        };
        let name = format!("rl{dead_pid}x1-sweeptest");
        let ns_path = Path::new("/var/run/netns").join(&name);
        Command::new("ip").args(["netns", "add", &name]).status()?;
        ensure!(ns_path.exists());
        let mut sleeper = Command::new("sleep");
        sleeper.arg("60");
        let mut sleeper = spawn_in_netns(&mut sleeper, &ns_path)?;

        if use_script {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/lab-sweep.sh");
            let out = Command::new("bash").arg(&script).output()?;
            ensure!(out.status.success(), "lab-sweep.sh failed: {out:?}");
        } else {
            let report = sweep_stale()?;
            ensure!(report.namespaces.contains(&name), "{report:?}");
            ensure!(report.errors.is_empty(), "{report:?}");
        }
        let status = sleeper.wait()?;
        ensure!(
            !status.success(),
            "process in the stale netns was not killed"
        );
        ensure!(!ns_path.exists(), "stale netns {name} survived the sweep");
    }
    for ns in live.netns_names() {
        ensure!(
            Path::new("/var/run/netns").join(&ns).exists(),
            "sweep removed live {ns}"
        );
    }
    ensure!(live.etcd_healthy()?, "sweep disturbed a live lab's etcd");
    Ok(())
}

fn spawn_in_netns(cmd: &mut Command, ns: &Path) -> Result<std::process::Child> {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = std::fs::File::open(ns)?;
    let raw = fd.as_raw_fd();
    // SAFETY: only the setns syscall runs between fork and exec; `fd` outlives spawn().
    unsafe {
        cmd.pre_exec(move || {
            // SAFETY: plain syscall on a valid fd.
            if libc::setns(raw, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

fn etcd_pid(lab: &Lab) -> Result<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", lab.ctrl().name()])
        .output()?;
    let pids = String::from_utf8_lossy(&out.stdout).to_string();
    pids.split_whitespace()
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("no process in ctrl: {pids:?}"))
}
