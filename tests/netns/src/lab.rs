//! [`Lab`]: one rack built from network namespaces, its nodes and pods, and its teardown.

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use tempfile::TempDir;

use crate::host::{Bins, Tools};
use crate::netns::{next_lab_id, Netns, TEMP_PREFIX};
use crate::process::{tail, Daemon};
use crate::topology::{self, node_address, CTRL_ADDR, CTRL_IF, MAX_NODES, UPLINK};

/// Set to `1` to keep a lab's temp dir (logs, etcd data) after teardown; its path is printed.
pub const KEEP_ENV: &str = "RACKLINE_LAB_KEEP";

/// How long a daemon gets between SIGTERM and SIGKILL at teardown.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);

/// Configures a [`Lab`]. Defaults: 2 nodes, the full Rackline control plane, `debug` logs.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    pub(crate) nodes: usize,
    pub(crate) rackline: bool,
    pub(crate) log_level: String,
    pub(crate) gc_grace_secs: u64,
    pub(crate) keep: bool,
}

impl Default for LabBuilder {
    fn default() -> Self {
        Self {
            nodes: 2,
            rackline: true,
            log_level: "debug".into(),
            gc_grace_secs: 0,
            keep: std::env::var(KEEP_ENV).is_ok_and(|v| v == "1"),
        }
    }
}

impl LabBuilder {
    /// Number of nodes `n1..nN` (1..=53).
    pub fn nodes(mut self, n: usize) -> Self {
        self.nodes = n;
        self
    }

    /// `false`: topology and etcd only — no netmaster, no network, no ipamd, so no Rackline
    /// binary is needed (the harness self-test).
    pub fn rackline(mut self, on: bool) -> Self {
        self.rackline = on;
        self
    }

    /// `--log-level` of the daemons and `logLevel` of the default netconf.
    pub fn log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    /// ipamd's `--gc-grace-secs` (default 0: GC releases at once).
    pub fn ipamd_gc_grace_secs(mut self, secs: u64) -> Self {
        self.gc_grace_secs = secs;
        self
    }

    /// Keep the temp dir (logs, etcd data) after teardown (also `RACKLINE_LAB_KEEP=1`).
    pub fn keep_temp_dir(mut self, keep: bool) -> Self {
        self.keep = keep;
        self
    }

    /// Checks the preconditions, then builds the rack and starts its daemons. On failure
    /// everything created so far is torn down and the error carries the daemons' log tails.
    pub fn build(self) -> Result<Lab> {
        let tools = Tools::locate()?;
        let bins = if self.rackline {
            Some(Bins::locate()?)
        } else {
            None
        };
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes),
            "a lab has 1..={MAX_NODES} nodes, not {}",
            self.nodes
        );
        let id = next_lab_id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{id}-"))
            .tempdir()
            .context("creating the lab temp dir")?;
        std::fs::create_dir(dir.path().join("logs"))?;
        let nodes = (1..=self.nodes)
            .map(|k| Node {
                index: k,
                name: format!("n{k}"),
                netns: Netns::named(format!("{id}-n{k}")),
                address: node_address(k),
                ipamd_socket: dir.path().join(format!("n{k}")).join("ipamd.sock"),
            })
            .collect();
        let lab = Lab {
            tor: Netns::named(format!("{id}-tor")),
            ctrl: Netns::named(format!("{id}-ctrl")),
            nodes,
            dir_path: dir.path().to_owned(),
            dir: Some(dir),
            tools,
            bins,
            opts: self,
            state: Mutex::new(State::default()),
            id,
        };
        if let Err(e) = lab.bring_up() {
            let logs = lab.logs(60);
            drop(lab);
            return Err(e.context(format!("building the lab failed; daemon logs:\n{logs}")));
        }
        Ok(lab)
    }

    /// Builds a lab, runs `f` on it and tears it down. When `f` fails (error or panic) the
    /// daemons' logs are printed first, so the failure report of the test shows them.
    pub fn run<T>(self, f: impl FnOnce(&Lab) -> Result<T>) -> Result<T> {
        let lab = self.build()?;
        let out = f(&lab);
        if out.is_err() {
            eprintln!("{}", lab.report());
        }
        out
    }
}

/// A node `nK`: its namespace, uplink address and ipamd socket.
#[derive(Clone, Debug)]
pub struct Node {
    index: usize,
    name: String,
    netns: Netns,
    address: Ipv4Addr,
    ipamd_socket: PathBuf,
}

impl Node {
    /// 1-based index (`n1` is 1).
    pub fn index(&self) -> usize {
        self.index
    }
    /// `n1`, `n2`, …: the `--node-name` given to its ipamd.
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn netns(&self) -> &Netns {
        &self.netns
    }
    /// Address on `uplink0` (n1 = 10.10.0.11).
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }
    pub fn ipamd_socket(&self) -> &Path {
        &self.ipamd_socket
    }
}

impl AsRef<Netns> for Node {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

/// A pod sandbox: an empty network namespace (lo up) plus the identity a runtime passes in
/// `CNI_CONTAINERID` / `CNI_ARGS`. Fields are public so tests can forge variants.
#[derive(Clone, Debug)]
pub struct Pod {
    /// Node index the pod is scheduled on.
    pub node: usize,
    /// Kubernetes namespace (`default`).
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// 64 hex digits, like containerd's sandbox ids.
    pub container_id: String,
    pub netns: Netns,
}

impl Pod {
    /// `CNI_ARGS` as containerd sends it.
    pub fn cni_args(&self) -> String {
        format!(
            "K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={};K8S_POD_INFRA_CONTAINER_ID={};IgnoreUnknown=1",
            self.namespace, self.name, self.uid, self.container_id
        )
    }

    /// `CNI_NETNS`: `/var/run/netns/<name>`.
    pub fn netns_path(&self) -> String {
        self.netns.path().display().to_string()
    }
}

impl AsRef<Netns> for Pod {
    fn as_ref(&self) -> &Netns {
        &self.netns
    }
}

#[derive(Default)]
pub(crate) struct State {
    /// Every namespace we created, in creation order (torn down in reverse).
    pub(crate) created: Vec<Netns>,
    pub(crate) etcd: Option<Daemon>,
    pub(crate) netmaster: Option<Daemon>,
    pub(crate) ipamd: BTreeMap<usize, Daemon>,
    pub(crate) pods_per_node: BTreeMap<usize, usize>,
}

/// One rack of network namespaces with etcd, netmaster and an ipamd per node.
/// All methods take `&self`: a lab can be shared by threads (`std::thread::scope`).
/// Dropping it stops every process it started (by pid) and deletes every namespace it created,
/// also when the test panics.
pub struct Lab {
    pub(crate) id: String,
    pub(crate) tools: Tools,
    pub(crate) bins: Option<Bins>,
    pub(crate) dir: Option<TempDir>,
    pub(crate) dir_path: PathBuf,
    pub(crate) tor: Netns,
    pub(crate) ctrl: Netns,
    pub(crate) nodes: Vec<Node>,
    pub(crate) opts: LabBuilder,
    pub(crate) state: Mutex<State>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// `rl<pid>x<n>`: the prefix of all of this lab's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The lab's temp dir (logs/, etcd/, nK/ipamd.sock).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir_path.join("logs")
    }
    pub fn tools(&self) -> &Tools {
        &self.tools
    }
    /// The Rackline binaries (an error for a `rackline(false)` lab).
    pub fn bins(&self) -> Result<&Bins> {
        self.bins
            .as_ref()
            .context("this lab was built with rackline(false): no Rackline binaries")
    }
    pub fn tor(&self) -> &Netns {
        &self.tor
    }
    pub fn ctrl(&self) -> &Netns {
        &self.ctrl
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// Node `k` (1-based). Panics when out of range: a test bug.
    pub fn node(&self, k: usize) -> &Node {
        assert!(
            (1..=self.nodes.len()).contains(&k),
            "lab has nodes 1..={}, not {k}",
            self.nodes.len()
        );
        &self.nodes[k - 1]
    }
    /// Names of all namespaces this lab created and has not deleted yet.
    pub fn netns_names(&self) -> Vec<String> {
        self.state()
            .created
            .iter()
            .map(|n| n.name().to_owned())
            .collect()
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn create_netns(&self, ns: &Netns) -> Result<()> {
        Netns::create(&self.tools, ns.name())?;
        self.state().created.push(ns.clone());
        Ok(())
    }

    fn bring_up(&self) -> Result<()> {
        self.create_netns(&self.tor)?;
        topology::wire_tor(&self.tools, &self.tor)?;
        self.create_netns(&self.ctrl)?;
        topology::wire_port(
            &self.tools,
            &self.tor,
            "ctrl",
            &self.ctrl,
            CTRL_IF,
            CTRL_ADDR,
            false,
        )?;
        for node in &self.nodes {
            self.create_netns(&node.netns)?;
            topology::wire_port(
                &self.tools,
                &self.tor,
                &node.name,
                &node.netns,
                UPLINK,
                node.address,
                true,
            )?;
        }
        self.start_etcd()?;
        if self.bins.is_some() {
            self.start_netmaster()?;
            self.create_network()?;
            for node in &self.nodes {
                self.start_ipamd(node.index)?;
            }
        }
        Ok(())
    }

    /// Creates a pod sandbox on node `node`: namespace `<id>-n<K>p<k>` with lo up, a fresh
    /// container id and uid, Kubernetes name `name` in namespace `default`.
    pub fn add_pod(&self, node: usize, name: &str) -> Result<Pod> {
        let node_name = self.node(node).name.clone();
        let k = {
            let mut st = self.state();
            let counter = st.pods_per_node.entry(node).or_default();
            *counter += 1;
            *counter
        };
        let netns = Netns::named(format!("{}-{node_name}p{k}", self.id));
        self.create_netns(&netns)?;
        topology::ip_batch(&self.tools, &netns, &["link set lo up".into()])?;
        let id = random_hex(64);
        let uid = random_hex(32);
        let uid = format!(
            "{}-{}-{}-{}-{}",
            &uid[..8],
            &uid[8..12],
            &uid[12..16],
            &uid[16..20],
            &uid[20..]
        );
        Ok(Pod {
            node,
            namespace: "default".into(),
            name: name.into(),
            uid,
            container_id: id,
            netns,
        })
    }

    /// Deletes a pod's namespace as a runtime does after StopPodSandbox (the kernel destroys the
    /// macvlan and the veth pair with it).
    pub fn delete_pod_netns(&self, pod: &Pod) -> Result<()> {
        pod.netns.delete(&self.tools)?;
        self.state().created.retain(|n| n != &pod.netns);
        Ok(())
    }

    /// The last `lines` lines of every daemon log, headed by file name.
    pub fn logs(&self, lines: usize) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.log_dir())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        files
            .iter()
            .map(|f| format!("----- {} -----\n{}\n", f.display(), tail(f, lines)))
            .collect()
    }

    /// Namespaces, pids and log tails: what a failing test should print.
    pub fn report(&self) -> String {
        let st = self.state();
        let mut pids = Vec::new();
        let daemons = st.etcd.iter().chain(&st.netmaster).chain(st.ipamd.values());
        for d in daemons {
            pids.push(format!("{}={}", d.label(), d.pid().unwrap_or(0)));
        }
        let names: Vec<String> = st.created.iter().map(|n| n.name().to_owned()).collect();
        drop(st);
        format!(
            "===== rackline lab {} (dir {}) =====\nnetns: {}\ndaemons: {}\n{}",
            self.id,
            self.dir_path.display(),
            names.join(" "),
            pids.join(" "),
            self.logs(80)
        )
    }

    fn teardown(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(PoisonError::into_inner);
        let mut daemons: Vec<(Daemon, Duration)> = Vec::new();
        daemons.extend(
            std::mem::take(&mut state.ipamd)
                .into_values()
                .map(|d| (d, STOP_GRACE)),
        );
        daemons.extend(state.netmaster.take().map(|d| (d, STOP_GRACE)));
        // etcd gets SIGKILL: a member without quorum takes seconds to honour SIGTERM.
        daemons.extend(state.etcd.take().map(|d| (d, Duration::ZERO)));
        thread::scope(|s| {
            for (mut daemon, grace) in daemons {
                s.spawn(move || daemon.stop(grace));
            }
        });
        for ns in std::mem::take(&mut state.created).iter().rev() {
            if let Err(e) = ns.delete(&self.tools) {
                eprintln!("rackline-lab teardown: {e:#}");
            }
        }
        if let Some(dir) = self.dir.take() {
            if self.opts.keep {
                eprintln!("rackline-lab: kept {}", dir.keep().display());
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.report());
        }
        self.teardown();
    }
}

/// `n` random lowercase hex digits (std's per-instance random hasher keys; no rand needed).
pub(crate) fn random_hex(n: usize) -> String {
    let mut out = String::with_capacity(n + 16);
    while out.len() < n {
        let word = RandomState::new().hash_one((std::process::id(), out.len()));
        out.push_str(&format!("{word:016x}"));
    }
    out.truncate(n);
    out
}
