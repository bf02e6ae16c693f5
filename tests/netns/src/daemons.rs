//! The lab's daemons: etcd in `ctrl`, one ipamd per node (the netmaster replicas are in
//! [`crate::netmasters`]); plus the clients (`etcdctl`, `racklinectl`) run inside `ctrl`.
//!
//! Every daemon is a [`Daemon`] we spawned ourselves; stopping one signals exactly its pid.

use std::net::Ipv4Addr;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::{Lab, STOP_GRACE};
use crate::netns::Netns;
use crate::process::{run, Daemon, Output, CHILD_PATH};
use crate::topology::{CTRL_IF, ETCD_CLIENT_PORT, ETCD_PEER_PORT, SPINE_GATEWAY};

/// Most etcd members a lab runs (addresses `ctrl` + 0..4 on its bridge).
pub const MAX_ETCD_MEMBERS: usize = 5;

/// How long a daemon may take to become ready (generous: CI machines run builds alongside).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline of one client command (etcdctl, racklinectl, ip, ping…).
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon's environment: nothing inherited but `RUST_LOG`/`RUST_BACKTRACE`, so stray
/// `RACKLINE_*` variables of the caller (flags may come from env) cannot change the lab.
pub(crate) fn daemon_command(program: &std::path::Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", CHILD_PATH);
    cmd.env(
        "RUST_BACKTRACE",
        std::env::var("RUST_BACKTRACE").unwrap_or_else(|_| "1".into()),
    );
    if let Ok(filter) = std::env::var("RUST_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    cmd
}

/// Polls `ready` every 50 ms until it returns true, `daemon` dies, or [`READY_TIMEOUT`].
pub(crate) fn wait_ready(
    daemon: &mut Daemon,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        daemon.ensure_running()?;
        if ready() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} (pid {:?}) not ready after {READY_TIMEOUT:?}: {what}; last log lines:\n{}",
                daemon.label(),
                daemon.pid(),
                crate::process::tail(daemon.log(), 40)
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

impl Lab {
    pub(crate) fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir().join(format!("{name}.log"))
    }

    /// etcd member 1's client URL (`https://<ctrl>:2379`; `http://` in a `.tls(false)` lab).
    pub fn etcd_url(&self) -> String {
        self.etcd_member_url(1)
    }

    /// Every member's client URL, comma-separated: what daemons and etcdctl are given.
    pub fn etcd_endpoints(&self) -> String {
        (1..=self.opts.etcd_members)
            .map(|m| self.etcd_member_url(m))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Number of etcd members ([`crate::LabBuilder::etcd_members`]).
    pub fn etcd_member_count(&self) -> usize {
        self.opts.etcd_members
    }

    /// Member `m`'s address: `ctrl`'s for member 1, then the next ones.
    pub fn etcd_member_addr(&self, m: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.ctrl_addr) + (m as u32 - 1))
    }

    /// Member `m`'s namespace (`ctrl` for member 1).
    pub fn etcd_member_netns(&self, m: usize) -> &Netns {
        if m <= 1 {
            &self.ctrl
        } else {
            &self.etcd_ns[m - 2]
        }
    }

    /// Member `m`'s client URL.
    pub fn etcd_member_url(&self, m: usize) -> String {
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        format!("{scheme}://{}:{ETCD_CLIENT_PORT}", self.etcd_member_addr(m))
    }

    /// etcdctl's connection flags: `--endpoints` (every member) and, with TLS, its CA and
    /// client certificate.
    pub fn etcdctl_args(&self) -> Vec<String> {
        let mut v = vec!["--endpoints".to_string(), self.etcd_endpoints()];
        if let Some(p) = &self.pki {
            v.extend(p.etcdctl_args());
        }
        v
    }

    /// The daemons' etcd flags (endpoints and credentials).
    pub(crate) fn etcd_client_args(&self) -> Vec<String> {
        let mut v = vec!["--etcd-endpoints".to_string(), self.etcd_endpoints()];
        if let Some(p) = &self.pki {
            v.extend(p.etcd_client_args());
        }
        v
    }

    fn etcd_member_name(m: usize) -> String {
        // Member 1 keeps the name of the single-member lab (its data dir records it).
        if m == 1 {
            "ctrl".into()
        } else {
            format!("etcd{m}")
        }
    }

    fn etcd_peer_url(&self, m: usize) -> String {
        format!("http://{}:{ETCD_PEER_PORT}", self.etcd_member_addr(m))
    }

    /// Starts every etcd member (client `:2379`, peer `:2380`, data in `<dir>/etcd` for
    /// member 1 and `<dir>/etcd<m>` for the others, kept across restarts) and waits until
    /// `etcdctl endpoint health` passes for all of them.
    pub fn start_etcd(&self) -> Result<()> {
        if !self.state().etcd.is_empty() {
            bail!("etcd is already running");
        }
        for m in 1..=self.opts.etcd_members {
            self.spawn_etcd_member(m)?;
        }
        let mut st = self.state();
        let first = st.etcd.get_mut(&1).context("etcd member 1 is gone")?;
        wait_ready(first, "etcdctl endpoint health", || {
            self.etcd_healthy().unwrap_or(false)
        })
    }

    fn spawn_etcd_member(&self, m: usize) -> Result<()> {
        let client = self.etcd_member_url(m);
        let peer = self.etcd_peer_url(m);
        let cluster = (1..=self.opts.etcd_members)
            .map(|i| format!("{}={}", Self::etcd_member_name(i), self.etcd_peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let data = if m == 1 {
            "etcd".to_string()
        } else {
            format!("etcd{m}")
        };
        let mut cmd = daemon_command(&self.tools.etcd);
        cmd.args(["--name", &Self::etcd_member_name(m), "--data-dir"])
            .arg(self.dir().join(data))
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &cluster])
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .args(["--logger", "zap", "--log-level", "error"])
            .args(["--auto-compaction-mode", "revision"])
            .args(["--auto-compaction-retention", "1000"]);
        if let Some(p) = &self.pki {
            cmd.args(p.etcd_server_args());
        }
        let label = if m == 1 {
            "etcd".to_string()
        } else {
            format!("etcd{m}")
        };
        let etcd = Daemon::spawn(
            &label,
            cmd,
            self.etcd_member_netns(m),
            &self.log_path(&label),
        )?;
        self.state().etcd.insert(m, etcd);
        Ok(())
    }

    /// SIGKILLs every etcd member (an outage; the data dirs stay for [`Lab::start_etcd`]).
    pub fn stop_etcd(&self) -> Result<()> {
        let members = std::mem::take(&mut self.state().etcd);
        if members.is_empty() {
            bail!("etcd is not running");
        }
        for (_, mut d) in members {
            d.stop(Duration::ZERO);
        }
        Ok(())
    }

    /// SIGKILLs etcd member `m` alone (its data dir stays for [`Lab::start_etcd_member`]).
    pub fn kill_etcd_member(&self, m: usize) -> Result<()> {
        let mut d = self
            .state()
            .etcd
            .remove(&m)
            .with_context(|| format!("etcd member {m} is not running"))?;
        d.stop(Duration::ZERO);
        Ok(())
    }

    /// Restarts etcd member `m` from its data dir (it rejoins the cluster; not waited for).
    pub fn start_etcd_member(&self, m: usize) -> Result<()> {
        if self.state().etcd.contains_key(&m) {
            bail!("etcd member {m} is already running");
        }
        self.spawn_etcd_member(m)
    }

    /// Indices of the running etcd members.
    pub fn running_etcd_members(&self) -> Vec<usize> {
        self.state().etcd.keys().copied().collect()
    }

    /// The member that leads the etcd cluster now (from `etcdctl endpoint status`).
    pub fn etcd_leader_member(&self) -> Result<usize> {
        let out = self.etcdctl(&[
            "--dial-timeout",
            "1s",
            "--command-timeout",
            "2s",
            "endpoint",
            "status",
            "-w",
            "json",
        ])?;
        let v: Value = serde_json::from_str(&out.stdout).context("endpoint status JSON")?;
        for e in v.as_array().into_iter().flatten() {
            let st = &e["Status"];
            if st["header"]["member_id"].as_u64().is_some()
                && st["header"]["member_id"] == st["leader"]
            {
                let ep = e["Endpoint"].as_str().unwrap_or_default();
                if let Some(m) =
                    (1..=self.opts.etcd_members).find(|m| self.etcd_member_url(*m) == ep)
                {
                    return Ok(m);
                }
            }
        }
        bail!("no etcd member reports itself as leader")
    }

    /// Cuts member `m` off the network (`down`: its interface down in its namespace) or
    /// reconnects it. Member 1 shares `ctrl` with the netmaster replicas, which go with it.
    pub fn partition_etcd_member(&self, m: usize, down: bool) -> Result<()> {
        let state = if down { "down" } else { "up" };
        let ns = self.etcd_member_netns(m);
        crate::topology::ip_batch(&self.tools, ns, &[format!("link set {CTRL_IF} {state}")])?;
        if !down && m > 1 {
            // The address's default route goes with the link; put it back (multi-rack labs).
            if self.spine.is_some() {
                let _ = crate::topology::ip_batch(
                    &self.tools,
                    ns,
                    &[format!(
                        "route replace default via {SPINE_GATEWAY} dev {CTRL_IF}"
                    )],
                );
            }
        }
        Ok(())
    }

    /// Whether `etcdctl endpoint health` (from `ctrl`) passes now.
    pub fn etcd_healthy(&self) -> Result<bool> {
        Ok(self
            .etcdctl(&[
                "--dial-timeout",
                "1s",
                "--command-timeout",
                "2s",
                "endpoint",
                "health",
            ])?
            .success())
    }

    /// Runs `etcdctl --endpoints <etcd url> <args>` inside `ctrl`.
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.tools.etcdctl);
        cmd.env("ETCDCTL_API", "3")
            .args(self.etcdctl_args())
            .args(args);
        run(cmd, Some(&self.ctrl), b"", CLIENT_TIMEOUT)
    }

    /// Starts `rackline-ipamd` for node `k` inside its namespace and waits until its socket
    /// accepts connections (a stale socket file of a killed ipamd does not count).
    pub fn start_ipamd(&self, k: usize) -> Result<()> {
        self.start_ipamd_with(k, true)
    }

    /// Starts node `k`'s ipamd and waits only for its socket, not for `/readyz` (an ipamd
    /// started while etcd is out of its reach).
    pub fn start_ipamd_unready(&self, k: usize) -> Result<()> {
        self.start_ipamd_with(k, false)
    }

    fn start_ipamd_with(&self, k: usize, until_ready: bool) -> Result<()> {
        let bins = self.bins()?;
        let node = self.node(k);
        if self.state().ipamd.contains_key(&k) {
            bail!("ipamd of {} is already running", node.name());
        }
        let socket = node.ipamd_socket().to_owned();
        let mut cmd = daemon_command(&bins.ipamd);
        cmd.args(["--node-name", node.name()])
            .args(self.etcd_client_args());
        if let Some(p) = &self.pki {
            cmd.args(p.ipamd_netmaster_args());
        }
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--runtime-dir")
            .arg(self.node_runtime_dir(k))
            .args(self.ipamd_rack_args(k))
            .args(["--gc-grace-secs", &self.opts.gc_grace_secs.to_string()])
            .args(["--standby", &self.opts.standby.to_string()])
            .args(["--log-level", &self.opts.log_level])
            .args(["--metrics-listen", &self.ipamd_metrics_addr(k).to_string()]);
        if let Some(class) = self.opts.node_classes.get(&k) {
            cmd.args(["--node-class", class]);
        }
        cmd.args(&self.opts.ipamd_args);
        let label = format!("{}-ipamd", node.name());
        let mut ipamd = Daemon::spawn(&label, cmd, node.netns(), &self.log_path(&label))?;
        wait_ready(
            &mut ipamd,
            &format!("socket {} accepts connections", socket.display()),
            || {
                socket.metadata().is_ok_and(|m| m.file_type().is_socket())
                    && UnixStream::connect(&socket).is_ok()
            },
        )?;
        // The socket accepts connections (listen backlog) before ipamd has loaded etcd's state;
        // as a kubelet would, wait for /readyz when etcd is there to load it from.
        if until_ready && !self.state().etcd.is_empty() {
            wait_ready(&mut ipamd, "GET /readyz answers 200", || {
                self.ipamd_http(k, "/readyz").is_ok_and(|r| r.status == 200)
            })?;
        }
        self.state().ipamd.insert(k, ipamd);
        Ok(())
    }

    /// Runs an ipamd that calls itself node `k` inside node `host`'s namespace, with a socket
    /// and state directory of its own (a second host claiming the same node name), until it
    /// exits or `limit` passes (then it is stopped). Returns its exit status (None: it was
    /// still running) and its log.
    pub fn run_ipamd_as(
        &self,
        k: usize,
        host: usize,
        limit: Duration,
    ) -> Result<(Option<std::process::ExitStatus>, String)> {
        let bins = self.bins()?;
        let name = self.node(k).name().to_owned();
        let dir = self
            .dir()
            .join(format!("{name}-impostor-on-{}", self.node(host).name()));
        std::fs::create_dir_all(&dir)?;
        let mut cmd = daemon_command(&bins.ipamd);
        cmd.args(["--node-name", &name])
            .args(self.etcd_client_args());
        if let Some(p) = &self.pki {
            cmd.args(p.ipamd_netmaster_args());
        }
        cmd.arg("--socket")
            .arg(dir.join("ipamd.sock"))
            .arg("--runtime-dir")
            .arg(dir.join("run"))
            .args(self.ipamd_rack_args(k))
            .args(["--log-level", &self.opts.log_level])
            .args(&self.opts.ipamd_args);
        let label = format!("{name}-ipamd-impostor");
        let log = self.log_path(&label);
        let mut d = Daemon::spawn(&label, cmd, self.node(host).netns(), &log)?;
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = d.exited()? {
                break Some(st);
            }
            if Instant::now() >= deadline {
                d.stop(STOP_GRACE);
                break None;
            }
            thread::sleep(Duration::from_millis(100));
        };
        Ok((status, std::fs::read_to_string(&log).unwrap_or_default()))
    }

    /// Stops node `k`'s ipamd gracefully (SIGTERM; it removes its socket).
    pub fn stop_ipamd(&self, k: usize) -> Result<()> {
        let mut ipamd = self.take_ipamd(k)?;
        ipamd.stop(STOP_GRACE);
        Ok(())
    }

    /// SIGKILLs node `k`'s ipamd: a crash, leaving its socket file behind.
    pub fn kill_ipamd(&self, k: usize) -> Result<()> {
        let mut ipamd = self.take_ipamd(k)?;
        ipamd.stop(Duration::ZERO);
        Ok(())
    }

    fn take_ipamd(&self, k: usize) -> Result<Daemon> {
        self.state()
            .ipamd
            .remove(&k)
            .with_context(|| format!("ipamd of {} is not running", self.node(k).name()))
    }

    /// Pid of node `k`'s ipamd, if it runs.
    pub fn ipamd_pid(&self, k: usize) -> Option<u32> {
        self.state().ipamd.get(&k).and_then(Daemon::pid)
    }

    /// Runs `racklinectl --server <every replica> <args>` inside `ctrl`, as is: the first
    /// replica that answers is used, writes follow the leader ([`Lab::netmaster_urls`]).
    pub fn racklinectl_raw(&self, args: &[&str]) -> Result<Output> {
        self.racklinectl_at(&self.netmaster_urls(), args)
    }

    /// Runs `racklinectl --server <server> <args>` inside `ctrl`, as is.
    pub(crate) fn racklinectl_at(&self, server: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = Command::new(&self.bins()?.racklinectl);
        cmd.env_clear()
            .env("PATH", CHILD_PATH)
            .args(["--server", server]);
        if let Some(p) = &self.pki {
            cmd.arg("--config").arg(&p.ctl_config);
        }
        cmd.args(args);
        run(cmd, Some(&self.ctrl), b"", CLIENT_TIMEOUT)
    }

    /// `racklinectl -o json <args>`: fails on a non-zero exit, returns the parsed document.
    pub fn racklinectl(&self, args: &[&str]) -> Result<Value> {
        let mut full = vec!["-o", "json"];
        full.extend_from_slice(args);
        let out = self.racklinectl_raw(&full)?.check()?;
        serde_json::from_str(&out.stdout).with_context(|| {
            format!(
                "racklinectl {args:?} printed no JSON document: {:?}",
                out.stdout
            )
        })
    }

    /// The pods' leases (`racklinectl lease list -o json`), without ipamd's standby reserve:
    /// records pre-written with `state: "standby"` and no attachment (docs/CONTRACTS.md),
    /// which belong to no pod. [`Lab::lease_records`] lists those too.
    pub fn leases(&self) -> Result<Vec<Value>> {
        let mut leases = self.lease_records()?;
        leases.retain(|l| {
            l["state"] != "standby" && l["containerId"].as_str().is_some_and(|c| !c.is_empty())
        });
        Ok(leases)
    }

    /// Every lease record racklinectl lists, standby reserve included.
    pub fn lease_records(&self) -> Result<Vec<Value>> {
        match self.racklinectl(&["lease", "list"])? {
            Value::Array(leases) => Ok(leases),
            other => bail!("`racklinectl lease list -o json` printed no array: {other}"),
        }
    }

    /// The leases held by one container id.
    pub fn leases_of(&self, container_id: &str) -> Result<Vec<Value>> {
        let mut leases = self.leases()?;
        leases.retain(|l| l["containerId"] == container_id);
        Ok(leases)
    }
}
