//! Rackline under real container runtimes on a lab node, installed and run the way the
//! DaemonSet does it (the rendered lab overlay: the installer and ipamd from the built image,
//! by podman, in the node's namespace): pods created through containerd's CRI and through
//! podman's CNI backend, and a rolling restart of ipamd while pods are being created.
//!
//! The labs run plaintext like the lab overlay (`deploy/overlays/lab`: etcd and netmaster
//! without TLS), whose manifests these nodes run.
//!
//! Needs root, containerd, runc, podman, conmon, gcc (the pause image), busybox-static,
//! kubectl and PyYAML (scripts/install-deps.sh).

use std::collections::{BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use rackline_lab::runtimes::containerd::{build_pause_archive, Containerd, PAUSE_IMAGE};
use rackline_lab::runtimes::cri::{Cri, PodDef};
use rackline_lab::runtimes::node::{RuntimeNode, CNI_NETWORK};
use rackline_lab::runtimes::{self, busybox_rootfs};
use rackline_lab::{check_root, in_pool, Lab};
use serde_json::Value;

/// Active leases of `node` (standby reserves and reservations excluded).
fn active_leases(lab: &Lab, node: &str) -> Result<Vec<Value>> {
    Ok(lab
        .leases()?
        .into_iter()
        .filter(|l| l["node"] == node && l["state"] == "active")
        .collect())
}

fn lease_of(lab: &Lab, container_id: &str) -> Result<Vec<Value>> {
    Ok(lab
        .lease_records()?
        .into_iter()
        .filter(|l| l["containerId"] == container_id)
        .collect())
}

fn nsenter(netns: &Path, argv: &[&str]) -> Result<String> {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net={}", netns.display())).args(argv);
    Ok(runtimes::exec(cmd, None, b"", Duration::from_secs(30))?
        .check()?
        .stdout)
}

/// A node with ipamd from the image, containerd and a CRI client; torn down on drop.
struct CriNode {
    node: RuntimeNode,
    ctrd: Containerd,
    cri: Option<Cri>,
    cgroup_parent: String,
    ipamd: String,
}

impl CriNode {
    fn start(lab: &Lab, dir: &Path) -> Result<Self> {
        let node = RuntimeNode::prepare(lab, 1, dir)?;
        node.install(&[])?.check()?;
        node.add_loopback()?;
        let ipamd = node.start_ipamd()?;
        let pause = build_pause_archive(dir, &node.podman)?;
        let ctrd = Containerd::start(
            &dir.join("containerd"),
            &node.netns,
            &node.cni_bin(),
            &node.cni_conf(),
        )?;
        ctrd.import(&pause, PAUSE_IMAGE)?;
        let cgroup_parent = format!("/rackline-test-{}", std::process::id());
        let cri = Cri::connect(ctrd.socket(), &cgroup_parent, &dir.join("pod-logs"))?;
        Ok(Self {
            node,
            ctrd,
            cri: Some(cri),
            cgroup_parent,
            ipamd,
        })
    }

    fn cri(&mut self) -> &mut Cri {
        self.cri.as_mut().expect("CRI client")
    }

    /// A new CRI connection (after a containerd restart).
    fn reconnect(&mut self) -> Result<()> {
        self.cri = Some(Cri::connect(
            self.ctrd.socket(),
            &self.cgroup_parent,
            &self.node.dir.join("pod-logs"),
        )?);
        Ok(())
    }

    /// Everything a failure message needs.
    fn diagnostics(&self) -> String {
        format!(
            "--- containerd:\n{}\n--- ipamd ({}):\n{}\n--- plugin:\n{}",
            self.ctrd.log_tail(40),
            self.ipamd,
            self.node.logs(&self.ipamd),
            self.node.plugin_log()
        )
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        let cri = self.cri.as_mut();
        self.ctrd.shutdown(cri);
        let _ = self.node.podman.clean();
        // The (now empty) cgroup parent runc created, on v2 or on every v1 hierarchy.
        let name = self.cgroup_parent.trim_start_matches('/');
        if let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") {
            for e in entries.flatten() {
                let _ = std::fs::remove_dir(e.path().join(name));
            }
        }
        let _ = std::fs::remove_dir(Path::new("/sys/fs/cgroup").join(name));
    }
}

fn run_checked(n: &mut CriNode, pod: &PodDef) -> Result<(String, Ipv4Addr, PathBuf)> {
    let id = match n.cri().run(pod) {
        Ok(id) => id,
        Err(e) => bail!("{e:#}\n{}", n.diagnostics()),
    };
    let st = n.cri().status(&id)?;
    ensure!(st.ready, "sandbox {} not ready", pod.name);
    let ip: Ipv4Addr = st
        .ip
        .parse()
        .with_context(|| format!("sandbox {} has no IPv4 address: {st:?}", pod.name))?;
    let netns = st.netns.context("no netns in the sandbox status")?;
    Ok((id, ip, netns))
}

#[test]
fn containerd_cri_pods_on_a_node_running_the_daemonset() -> Result<()> {
    check_root()?;
    let lab = Lab::builder()
        .nodes(2)
        .tls(false)
        .network_args(&["--sticky-pod", "db-.*"])
        .build()?;
    let dir = tempfile::tempdir()?;
    let mut n = CriNode::start(&lab, dir.path())?;
    let node = n.node.node_name.clone();

    // An address from the rack, recorded for this sandbox; bandwidth annotations shaped.
    let web = PodDef::new("default", "web-1", "uid-web-1")
        .annotation("kubernetes.io/ingress-bandwidth", "10M")
        .annotation("kubernetes.io/egress-bandwidth", "20M");
    let (web_id, web_ip, web_ns) = run_checked(&mut n, &web)?;
    ensure!(in_pool(web_ip), "{web_ip} is not from the rack's pool");
    let l = lease_of(&lab, &web_id)?;
    ensure!(l.len() == 1, "{l:?}");
    ensure!(l[0]["address"] == web_ip.to_string() && l[0]["node"] == node.as_str());
    ensure!(l[0]["pod"]["namespace"] == "default" && l[0]["pod"]["name"] == "web-1");
    ensure!(l[0]["pod"]["uid"] == "uid-web-1");
    let egress = nsenter(&web_ns, &["tc", "qdisc", "show", "dev", "eth0"])?;
    ensure!(
        egress.contains("tbf") && egress.contains("rate 20Mbit"),
        "egress: {egress}"
    );
    let ingress = nsenter(&web_ns, &["tc", "qdisc", "show", "dev", "rlifb-eth0"])?;
    ensure!(
        ingress.contains("tbf") && ingress.contains("rate 10Mbit"),
        "ingress: {ingress}"
    );
    // One container-side interface besides lo: eth0 (and the node veth's pod end).
    let links = nsenter(&web_ns, &["ip", "-o", "-4", "addr", "show", "dev", "eth0"])?;
    ensure!(links.contains(&format!("{web_ip}/")), "{links}");

    // Stop = DEL with the netns: the lease goes. Stop again and Remove (DEL with an empty
    // netns): both succeed and change nothing.
    n.cri().stop(&web_id)?;
    ensure!(lease_of(&lab, &web_id)?.is_empty(), "lease kept after Stop");
    n.cri().stop(&web_id)?;
    n.cri().remove(&web_id)?;
    ensure!(lease_of(&lab, &web_id)?.is_empty());
    // And the installed plugin itself, as a runtime retrying DEL of that sandbox with an empty
    // netns: twice, both exit 0 with nothing left to do.
    let conflist: Value = serde_json::from_str(&std::fs::read_to_string(
        n.node.cni_conf().join("10-rackline.conflist"),
    )?)?;
    let mut netconf = conflist["plugins"][0].clone();
    netconf["cniVersion"] = conflist["cniVersion"].clone();
    netconf["name"] = conflist["name"].clone();
    for attempt in 1..=2 {
        let mut cmd = Command::new(n.node.cni_bin().join("rackline"));
        cmd.env_clear()
            .env("CNI_COMMAND", "DEL")
            .env("CNI_CONTAINERID", &web_id)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", "")
            .env("CNI_PATH", n.node.cni_bin());
        let out = runtimes::exec(
            cmd,
            Some(&n.node.netns),
            netconf.to_string().as_bytes(),
            Duration::from_secs(60),
        )?;
        ensure!(out.success(), "DEL #{attempt} with an empty netns: {out:?}");
    }

    // A sticky pod re-created gets its address back.
    let (db1, db_ip, _) = run_checked(&mut n, &PodDef::new("default", "db-0", "uid-db-a"))?;
    n.cri().stop(&db1)?;
    n.cri().remove(&db1)?;
    let held: Vec<Value> = lab
        .lease_records()?
        .into_iter()
        .filter(|l| l["address"] == db_ip.to_string())
        .collect();
    ensure!(
        held.len() == 1 && held[0]["state"] == "reserved",
        "{held:?}"
    );
    let (db2, db_ip2, _) = run_checked(&mut n, &PodDef::new("default", "db-0", "uid-db-b"))?;
    ensure!(
        db_ip2 == db_ip,
        "sticky db-0 came back with {db_ip2}, not {db_ip}"
    );
    n.cri().stop(&db2)?;
    n.cri().remove(&db2)?;

    // containerd restarts while a pod runs: the pod keeps its address, and Stop/Remove after
    // the restart still release it.
    let (mid, mid_ip, _) = run_checked(&mut n, &PodDef::new("default", "mid-1", "uid-mid-1"))?;
    // The restarted containerd runs on the other shipped configuration, the single-plugin
    // conf/rackline.conf (its socket path pointed at this node's), so both are proven under
    // a real runtime.
    let single = std::fs::read_to_string(runtimes::workspace_root().join("conf/rackline.conf"))?
        .replace(
            "/run/rackline/ipamd.sock",
            &n.node.socket().display().to_string(),
        );
    std::fs::remove_file(n.node.cni_conf().join("10-rackline.conflist"))?;
    std::fs::write(n.node.cni_conf().join("rackline.conf"), single)?;
    n.ctrd.restart()?;
    n.reconnect()?;
    let st = n.cri().status(&mid)?;
    ensure!(st.ready && st.ip == mid_ip.to_string(), "{st:?}");
    let (after, _, _) = run_checked(&mut n, &PodDef::new("default", "after-1", "uid-after-1"))?;
    for id in [&mid, &after] {
        n.cri().stop(id)?;
        n.cri().remove(id)?;
        ensure!(lease_of(&lab, id)?.is_empty(), "lease of {id} left");
    }

    // Nothing left: no active lease of the node, no sandbox, no node-side link.
    ensure!(n.cri().list()?.is_empty());
    let left = active_leases(&lab, &node)?;
    ensure!(left.is_empty(), "leases left: {left:?}");
    let links = lab.link_names(&n.node.netns)?;
    ensure!(
        !links.iter().any(|l| l.starts_with("rl")),
        "node links left: {links:?}"
    );
    lab.check_invariants()?;
    Ok(())
}

fn podman_run(
    node: &RuntimeNode,
    rootfs: &Path,
    opts: &[&str],
    cmd: &[&str],
) -> Result<runtimes::Output> {
    // Every option before --rootfs: after it they would be the command, and podman would fall
    // back to its default network.
    let mut argv: Vec<String> = vec!["run".into(), "--network".into(), CNI_NETWORK.into()];
    argv.extend(opts.iter().map(|s| s.to_string()));
    argv.push("--rootfs".into());
    argv.push(rootfs.display().to_string());
    argv.extend(cmd.iter().map(|s| s.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    node.podman.raw(&argv)
}

fn inet_of(out: &str) -> Result<Ipv4Addr> {
    let word = out
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .with_context(|| format!("no inet in {out:?}"))?;
    Ok(word.split('/').next().unwrap_or_default().parse()?)
}

#[test]
fn podman_cni_backend_on_a_node_running_the_daemonset() -> Result<()> {
    check_root()?;
    let lab = Lab::builder().nodes(2).tls(false).build()?;
    let dir = tempfile::tempdir()?;
    let node = RuntimeNode::prepare(&lab, 1, dir.path())?;
    node.install(&[])?.check()?;
    node.add_loopback()?;
    let ipamd = node.start_ipamd()?;
    let rootfs = busybox_rootfs(dir.path())?;
    let name = node.node_name.clone();
    let diag = || {
        format!(
            "--- ipamd:\n{}\n--- plugin:\n{}",
            node.logs(&ipamd),
            node.plugin_log()
        )
    };

    // podman run --rm: an address from the rack, released when the container ends.
    let out = podman_run(
        &node,
        &rootfs,
        &["--rm"],
        &["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"],
    )?;
    ensure!(out.success(), "{out:?}\n{}", diag());
    let ip = inet_of(&out.stdout)?;
    ensure!(in_pool(ip), "{ip}");
    ensure!(
        active_leases(&lab, &name)?.is_empty(),
        "lease kept after --rm"
    );

    // --ip: the requested address, or a clear refusal.
    let out = podman_run(
        &node,
        &rootfs,
        &["--rm", "--ip", "10.10.0.200"],
        &["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"],
    )?;
    ensure!(out.success(), "{out:?}\n{}", diag());
    ensure!(
        inet_of(&out.stdout)? == Ipv4Addr::new(10, 10, 0, 200),
        "{}",
        out.stdout
    );
    let out = podman_run(
        &node,
        &rootfs,
        &["--rm", "--ip", "10.10.0.5"],
        &["/bin/true"],
    )?;
    ensure!(!out.success(), "an excluded address was given: {out:?}");
    ensure!(out.stderr.contains("requested address"), "{}", out.stderr);

    // podman network reload x50 on a running container (DEL, then ADD with the stored
    // result's container interface): always exactly one lease, for eth0, holding the address
    // the container has now (without --ip the re-ADD may take another address), none leaked.
    let out = podman_run(
        &node,
        &rootfs,
        &["-d", "--name", "reload-me"],
        &["/bin/sleep", "600"],
    )?;
    ensure!(out.success(), "{out:?}\n{}", diag());
    let id = out.stdout.trim().to_string();
    let current = || -> Result<String> {
        Ok(node
            .podman
            .ok(&[
                "inspect",
                "--format",
                &format!("{{{{.NetworkSettings.Networks.{CNI_NETWORK}.IPAddress}}}}"),
                "reload-me",
            ])?
            .stdout
            .trim()
            .to_string())
    };
    for i in 0..50 {
        let out = node.podman.raw(&["network", "reload", "reload-me"])?;
        ensure!(out.success(), "reload #{i}: {out:?}\n{}", diag());
        if i % 5 == 4 {
            let l = lease_of(&lab, &id)?;
            let now = current()?;
            ensure!(
                l.len() == 1 && l[0]["address"] == now.as_str() && l[0]["ifname"] == "eth0",
                "after reload #{i} the container has {now}; its leases: {l:?}"
            );
            let all = active_leases(&lab, &name)?;
            ensure!(
                all.len() == 1,
                "after reload #{i}: leases of the node: {all:?}"
            );
        }
    }
    let leases = active_leases(&lab, &name)?;
    ensure!(leases.len() == 1, "leases after 50 reloads: {leases:?}");
    node.podman.ok(&["rm", "-f", "-t", "0", "reload-me"])?;
    ensure!(lease_of(&lab, &id)?.is_empty(), "lease kept after rm");

    // Nothing left.
    node.stop_ipamd(&ipamd)?;
    ensure!(node.podman.containers()?.is_empty());
    ensure!(active_leases(&lab, &name)?.is_empty());
    let links = lab.link_names(&node.netns)?;
    ensure!(!links.iter().any(|l| l.starts_with("rl")), "{links:?}");
    lab.check_invariants()?;
    Ok(())
}

/// The DaemonSet's RollingUpdate on a node: the old ipamd pod is stopped (SIGTERM), the new
/// one started, while the kubelet keeps creating pods. No ADD fails (the plugin waits for the
/// socket within its timeout) and no lease is lost or doubled.
#[test]
fn a_rolling_restart_of_ipamd_loses_no_add_and_no_lease() -> Result<()> {
    check_root()?;
    const PODS: usize = 16;
    let lab = Lab::builder().nodes(2).tls(false).build()?;
    let dir = tempfile::tempdir()?;
    let mut n = CriNode::start(&lab, dir.path())?;
    let node_name = n.node.node_name.clone();
    let socket = n.node.dir.join("pod-logs");
    let cgroup = n.cgroup_parent.clone();
    let crisock = n.ctrd.socket().to_owned();
    let created = std::sync::Mutex::new(Vec::<(String, Result<Ipv4Addr>)>::new());
    let done = std::sync::atomic::AtomicBool::new(false);
    let restarts = std::thread::scope(|s| -> Result<Vec<String>> {
        let creator = s.spawn(|| -> Result<()> {
            let mut cri = Cri::connect(&crisock, &cgroup, &socket)?;
            for i in 0..PODS {
                let pod = PodDef::new("default", &format!("up-{i}"), &format!("uid-up-{i}"));
                let r = cri.run(&pod).and_then(|id| {
                    let st = cri.status(&id)?;
                    Ok((id, st.ip.parse::<Ipv4Addr>()?))
                });
                let mut c = created.lock().unwrap();
                match r {
                    Ok((id, ip)) => c.push((id, Ok(ip))),
                    Err(e) => c.push((pod.name.clone(), Err(e))),
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        });
        let mut names = vec![n.ipamd.clone()];
        for after in [3, 9] {
            let deadline = Instant::now() + Duration::from_secs(180);
            while created.lock().unwrap().len() < after {
                ensure!(Instant::now() < deadline, "pods are not being created");
                std::thread::sleep(Duration::from_millis(20));
            }
            let old = names.last().unwrap().clone();
            let gap = Instant::now();
            n.node.stop_ipamd(&old)?;
            names.push(n.node.start_ipamd()?);
            // The window the plugin has to bridge (its timeoutMs is 5 s).
            println!("ipamd {old} replaced; socket away for {:?}", gap.elapsed());
        }
        creator
            .join()
            .map_err(|_| anyhow::anyhow!("creator panicked"))??;
        Ok(names)
    })?;
    n.ipamd = restarts.last().unwrap().clone();
    ensure!(done.load(std::sync::atomic::Ordering::SeqCst));
    let created = created.into_inner().unwrap();
    let mut ids = Vec::new();
    let mut failed = Vec::new();
    for (id, r) in &created {
        match r {
            Ok(ip) => ids.push((id.clone(), *ip)),
            Err(e) => failed.push(format!("{id}: {e:#}")),
        }
    }
    ensure!(
        failed.is_empty(),
        "ADDs lost during the rolling restart:\n{}\n{}",
        failed.join("\n"),
        n.diagnostics()
    );
    // Every pod holds exactly its lease; no address twice.
    let mut addrs = BTreeSet::new();
    let by_id: HashMap<String, Vec<Value>> = ids
        .iter()
        .map(|(id, _)| Ok((id.clone(), lease_of(&lab, id)?)))
        .collect::<Result<_>>()?;
    for (id, ip) in &ids {
        let l = &by_id[id];
        ensure!(
            l.len() == 1 && l[0]["address"] == ip.to_string(),
            "{id}: {l:?}"
        );
        ensure!(addrs.insert(*ip), "{ip} twice");
    }
    ensure!(active_leases(&lab, &node_name)?.len() == PODS);
    lab.check_invariants()?;
    for (id, _) in &ids {
        n.cri().stop(id)?;
        n.cri().remove(id)?;
    }
    ensure!(active_leases(&lab, &node_name)?.is_empty());
    Ok(())
}

/// The DaemonSet's probes: ipamd from the image answers `/healthz` and `/readyz` on the
/// node's address, port 9641 (`RACKLINE_METRICS_LISTEN=$(NODE_IP):9641`), where the kubelet
/// probes a host-network pod.
#[test]
fn the_daemonset_probes_answer_on_the_nodes_metrics_port() -> Result<()> {
    check_root()?;
    let lab = Lab::builder().nodes(1).tls(false).build()?;
    let dir = tempfile::tempdir()?;
    let node = RuntimeNode::prepare(&lab, 1, dir.path())?;
    let ipamd = node.start_ipamd()?;
    let addr: std::net::SocketAddr = format!("{}:9641", node.node_ip).parse()?;
    for path in ["/healthz", "/readyz"] {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = runtimes::http_get_in(&node.netns, addr, path);
            if matches!(got, Ok((200, _))) {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "http://{addr}{path} does not answer 200: {got:?}\n{}",
                node.logs(&ipamd)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    node.stop_ipamd(&ipamd)?;
    Ok(())
}
