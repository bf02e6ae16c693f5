//! [`Lab`]: racks built from network namespaces (one by default; a routed spine between several),
//! their nodes and pods, and the teardown.

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

use crate::daemons::MAX_ETCD_MEMBERS;
use crate::host::{Bins, Tools};
use crate::netmasters::MAX_NETMASTERS;
use crate::netns::{next_lab_id, Netns, TEMP_PREFIX};
use crate::networks::{LabNetworkMode, DEFAULT_NETWORK_MODE};
use crate::process::{tail, Daemon};
use crate::rack::{Node, Pod, Rack};
use crate::topology::{
    self, rack_gateway, rack_node_address, rack_subnet, CTRL_ADDR, CTRL_IF, MAX_NODES, MAX_RACKS,
    PREFIX_LEN, SPINE_CTRL_ADDR, SPINE_GATEWAY, UPLINK,
};

/// Set to `1` to keep a lab's temp dir (logs, etcd data) after teardown; its path is printed.
pub const KEEP_ENV: &str = "RACKLINE_LAB_KEEP";

/// How long a daemon gets between SIGTERM and SIGKILL at teardown.
pub(crate) const STOP_GRACE: Duration = Duration::from_secs(3);

/// Configures a [`Lab`]. Defaults: one rack of 2 nodes, one network per rack
/// ([`DEFAULT_NETWORK_MODE`]), the full Rackline control plane, `debug` logs.
#[derive(Clone, Debug)]
pub struct LabBuilder {
    pub(crate) racks: usize,
    pub(crate) nodes_per_rack: usize,
    pub(crate) network_mode: LabNetworkMode,
    pub(crate) rackline: bool,
    pub(crate) log_level: String,
    pub(crate) gc_grace_secs: u64,
    pub(crate) keep: bool,
    /// Spanning mode: addresses per rack range (from `.64`); None = `.64`-`.254`.
    pub(crate) rack_range_len: Option<u8>,
    /// ipamd `--standby`.
    pub(crate) standby: usize,
    /// Network block size (Spanning mode).
    pub(crate) block_size: u32,
    /// netmaster replicas in `ctrl` (HA: one leads, the others follow).
    pub(crate) netmasters: usize,
    /// Extra `racklinectl network create` arguments (e.g. a sticky policy, QoS levels).
    pub(crate) network_args: Vec<String>,
    /// ipamd `--node-class` by node index.
    pub(crate) node_classes: BTreeMap<usize, String>,
    /// Extra flags of every netmaster replica (e.g. `--webhook-url`).
    pub(crate) netmaster_args: Vec<String>,
    /// Extra flags of every ipamd (e.g. the leak reconciler's, `--liveness-ttl-secs`).
    pub(crate) ipamd_args: Vec<String>,
    /// TLS everywhere (etcd client certificates, netmaster TLS + tokens); see [`crate::pki`].
    pub(crate) tls: bool,
    /// Spanning mode: `rack bind` arguments by rack index, replacing the default
    /// `--range <spanning range>` (e.g. none = the whole subnet, `--exclude`s).
    pub(crate) rack_bind_args: BTreeMap<usize, Vec<String>>,
    /// etcd cluster members: member 1 in `ctrl`, members 2.. in their own namespaces
    /// `etcd<m>` on `ctrl`'s bridge (so each can be killed or cut off alone).
    pub(crate) etcd_members: usize,
}

/// `RACKLINE_LAB_TLS=0` turns the lab's default TLS off (to compare timings).
pub const TLS_ENV: &str = "RACKLINE_LAB_TLS";

impl Default for LabBuilder {
    fn default() -> Self {
        Self {
            racks: 1,
            nodes_per_rack: 2,
            network_mode: DEFAULT_NETWORK_MODE,
            rackline: true,
            log_level: "debug".into(),
            gc_grace_secs: 0,
            keep: std::env::var(KEEP_ENV).is_ok_and(|v| v == "1"),
            rack_range_len: None,
            standby: 4,
            block_size: 16,
            netmasters: 1,
            network_args: Vec::new(),
            node_classes: BTreeMap::new(),
            netmaster_args: Vec::new(),
            ipamd_args: Vec::new(),
            tls: std::env::var(TLS_ENV).map_or(true, |v| v != "0"),
            rack_bind_args: BTreeMap::new(),
            etcd_members: 1,
        }
    }
}

impl LabBuilder {
    /// etcd cluster size (1 up to `MAX_ETCD_MEMBERS`, default 1). Member 1 runs in `ctrl`,
    /// member `m` ≥ 2 in namespace `etcd<m>` at `ctrl`'s address + `m - 1`, on the same bridge.
    pub fn etcd_members(mut self, n: usize) -> Self {
        self.etcd_members = n;
        self
    }

    /// Number of racks (1..=244). One rack is the flat lab: `tor`, `ctrl` on the rack
    /// bridge (10.10.0.2), nodes `n1..nK`. Two or more add a routed `spine` with `ctrl` on its
    /// side (10.254.0.2), TORs `tor1..`, nodes `r<r>n<k>` (see [`crate::topology`]).
    pub fn racks(mut self, n: usize) -> Self {
        self.racks = n;
        self
    }

    /// Spanning mode: each rack's range holds exactly `n` addresses (from `.64`), e.g. for
    /// capacity-equals-demand tests.
    pub fn rack_range_len(mut self, n: u8) -> Self {
        self.rack_range_len = Some(n);
        self
    }

    /// ipamd's standby reserve per network (`--standby`).
    pub fn standby(mut self, n: usize) -> Self {
        self.standby = n;
        self
    }

    /// The network's block size (Spanning mode).
    pub fn block_size(mut self, n: u32) -> Self {
        self.block_size = n;
        self
    }

    /// netmaster replicas (1..=[`MAX_NETMASTERS`], default 1), all inside `ctrl`: replica `i`
    /// listens on port 7650 + i - 1 with `--id nm<i>` (see [`crate::netmasters`]). ipamd
    /// (Spanning mode) and the lab's racklinectl are given every replica.
    pub fn netmasters(mut self, n: usize) -> Self {
        self.netmasters = n;
        self
    }

    /// Spanning mode: binds rack `r` with exactly these `rack bind` arguments after
    /// `--subnet`/`--gateway` (its own subnet and TOR), instead of `--range <its spanning
    /// range>`: `&[]` binds the whole subnet, as an operator reading "none = the whole subnet"
    /// would; `--exclude` declares infrastructure.
    pub fn rack_bind_args(mut self, r: usize, args: &[&str]) -> Self {
        self.rack_bind_args
            .insert(r, args.iter().map(|a| (*a).to_owned()).collect());
        self
    }

    /// Starts node `k`'s ipamd with `--node-class <class>`.
    pub fn node_class(mut self, k: usize, class: &str) -> Self {
        self.node_classes.insert(k, class.to_owned());
        self
    }

    /// Extra `racklinectl network create` arguments for every network the lab creates
    /// (e.g. `["--sticky", "--sticky-hold-secs", "3"]`).
    pub fn network_args(mut self, args: &[&str]) -> Self {
        self.network_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Extra flags of every ipamd (e.g. `["--liveness-ttl-secs", "2"]`).
    pub fn ipamd_args(mut self, args: &[&str]) -> Self {
        self.ipamd_args = args.iter().map(|a| a.to_string()).collect();
        self
    }

    /// Extra flags for every netmaster replica (e.g. `["--webhook-url", url]`).
    pub fn netmaster_args(mut self, args: &[&str]) -> Self {
        self.netmaster_args = args.iter().map(|s| s.to_string()).collect();
        self
    }

    /// TLS everywhere (default; `false` = plaintext on the lab's private networks).
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Nodes per rack (1..=53).
    pub fn nodes_per_rack(mut self, k: usize) -> Self {
        self.nodes_per_rack = k;
        self
    }

    /// Same as [`LabBuilder::nodes_per_rack`]: in the default one-rack lab, the node count
    /// (`n1..nN`).
    pub fn nodes(self, n: usize) -> Self {
        self.nodes_per_rack(n)
    }

    /// How racks map to Rackline networks (default [`DEFAULT_NETWORK_MODE`]).
    pub fn network_mode(mut self, mode: LabNetworkMode) -> Self {
        self.network_mode = mode;
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
            (1..=MAX_RACKS).contains(&self.racks),
            "a lab has 1..={MAX_RACKS} racks, not {}",
            self.racks
        );
        ensure!(
            (1..=MAX_NODES).contains(&self.nodes_per_rack),
            "a rack has 1..={MAX_NODES} nodes, not {}",
            self.nodes_per_rack
        );
        ensure!(
            (1..=MAX_NETMASTERS).contains(&self.netmasters),
            "a lab runs 1..={MAX_NETMASTERS} netmaster replicas, not {}",
            self.netmasters
        );
        ensure!(
            (1..=MAX_ETCD_MEMBERS).contains(&self.etcd_members),
            "a lab runs 1..={MAX_ETCD_MEMBERS} etcd members, not {}",
            self.etcd_members
        );
        let id = next_lab_id();
        let dir = tempfile::Builder::new()
            .prefix(&format!("{TEMP_PREFIX}{id}-"))
            .tempdir()
            .context("creating the lab temp dir")?;
        std::fs::create_dir(dir.path().join("logs"))?;
        let multi = self.racks > 1;
        let racks: Vec<Rack> = (1..=self.racks)
            .map(|r| Rack {
                index: r,
                name: format!("rack{r}"),
                tor: Netns::named(if multi {
                    format!("{id}-tor{r}")
                } else {
                    format!("{id}-tor")
                }),
                gateway: rack_gateway(r),
                subnet: rack_subnet(r),
            })
            .collect();
        let mut nodes = Vec::new();
        for r in 1..=self.racks {
            for k in 1..=self.nodes_per_rack {
                let name = if multi {
                    format!("r{r}n{k}")
                } else {
                    format!("n{k}")
                };
                nodes.push(Node {
                    index: nodes.len() + 1,
                    rack: r,
                    position: k,
                    netns: Netns::named(format!("{id}-{name}")),
                    address: rack_node_address(r, k),
                    gateway: rack_gateway(r),
                    ipamd_socket: dir.path().join(&name).join("ipamd.sock"),
                    name,
                });
            }
        }
        let ctrl_addr = if multi { SPINE_CTRL_ADDR } else { CTRL_ADDR };
        let pki = if self.tls {
            Some(crate::pki::LabPki::generate(dir.path(), ctrl_addr)?)
        } else {
            None
        };
        let lab = Lab {
            spine: multi.then(|| Netns::named(format!("{id}-spine"))),
            ctrl: Netns::named(format!("{id}-ctrl")),
            etcd_ns: (2..=self.etcd_members)
                .map(|m| Netns::named(format!("{id}-etcd{m}")))
                .collect(),
            ctrl_addr,
            pki,
            racks,
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

#[derive(Default)]
pub(crate) struct State {
    /// Every namespace we created, in creation order (torn down in reverse).
    pub(crate) created: Vec<Netns>,
    /// etcd members by 1-based index.
    pub(crate) etcd: BTreeMap<usize, Daemon>,
    /// netmaster replicas by 1-based index.
    pub(crate) netmasters: BTreeMap<usize, Daemon>,
    pub(crate) ipamd: BTreeMap<usize, Daemon>,
    pub(crate) pods_per_node: BTreeMap<usize, usize>,
}

/// Racks of network namespaces with etcd, netmaster and an ipamd per node.
/// All methods take `&self`: a lab can be shared by threads (`std::thread::scope`).
/// Dropping it stops every process it started (by pid) and deletes every namespace it created,
/// also when the test panics.
pub struct Lab {
    pub(crate) id: String,
    pub(crate) tools: Tools,
    pub(crate) bins: Option<Bins>,
    pub(crate) dir: Option<TempDir>,
    pub(crate) dir_path: PathBuf,
    /// The routing spine of a multi-rack lab.
    pub(crate) spine: Option<Netns>,
    pub(crate) ctrl: Netns,
    /// Namespaces of etcd members 2.. (member 1 runs in `ctrl`).
    pub(crate) etcd_ns: Vec<Netns>,
    pub(crate) ctrl_addr: Ipv4Addr,
    pub(crate) racks: Vec<Rack>,
    pub(crate) nodes: Vec<Node>,
    pub(crate) opts: LabBuilder,
    pub(crate) state: Mutex<State>,
    /// Certificates and tokens (None: a plaintext lab).
    pub(crate) pki: Option<crate::pki::LabPki>,
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// `rl<pid>x<n>`: the prefix of all of this lab's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The lab's temp dir (`logs/`, `etcd/`, `<node>/ipamd.sock`).
    pub fn dir(&self) -> &Path {
        &self.dir_path
    }
    pub fn log_dir(&self) -> PathBuf {
        self.dir_path.join("logs")
    }
    /// The lab's certificates and tokens (None: built with `.tls(false)`).
    pub fn pki(&self) -> Option<&crate::pki::LabPki> {
        self.pki.as_ref()
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
    /// Rack 1's TOR (see [`Rack::tor`] for the others).
    pub fn tor(&self) -> &Netns {
        self.racks[0].tor()
    }
    /// The spine (multi-rack labs only).
    pub fn spine(&self) -> Option<&Netns> {
        self.spine.as_ref()
    }
    pub fn ctrl(&self) -> &Netns {
        &self.ctrl
    }
    /// Where etcd and netmaster listen: 10.10.0.2 (one rack) or 10.254.0.2 (spine side).
    pub fn ctrl_addr(&self) -> Ipv4Addr {
        self.ctrl_addr
    }
    pub fn racks(&self) -> &[Rack] {
        &self.racks
    }
    /// Rack `r` (1-based). Panics when out of range: a test bug.
    pub fn rack(&self, r: usize) -> &Rack {
        assert!(
            (1..=self.racks.len()).contains(&r),
            "lab has racks 1..={}, not {r}",
            self.racks.len()
        );
        &self.racks[r - 1]
    }
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
    /// The nodes of rack `r`, in position order.
    pub fn rack_nodes(&self, r: usize) -> &[Node] {
        let per = self.opts.nodes_per_rack;
        let _ = self.rack(r);
        &self.nodes[(r - 1) * per..r * per]
    }
    /// Node `k` (1-based position) of rack `r`.
    pub fn rack_node(&self, r: usize, k: usize) -> &Node {
        let nodes = self.rack_nodes(r);
        assert!(
            (1..=nodes.len()).contains(&k),
            "rack {r} has nodes 1..={}, not {k}",
            nodes.len()
        );
        &nodes[k - 1]
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
        match &self.spine {
            None => self.wire_one_rack()?,
            Some(spine) => self.wire_racks(spine)?,
        }
        self.wire_etcd_members()?;
        for node in &self.nodes {
            self.create_netns(&node.netns)?;
            topology::wire_port(
                &self.tools,
                self.rack(node.rack).tor(),
                &node.name,
                &node.netns,
                UPLINK,
                node.address,
                Some(node.gateway),
            )?;
        }
        self.start_etcd()?;
        if self.bins.is_some() {
            // In index order: replica 1 is up (and leads) before the others join.
            for i in 1..=self.opts.netmasters {
                self.start_netmaster_replica(i)?;
            }
            self.create_networks()?;
            for node in &self.nodes {
                self.start_ipamd(node.index)?;
            }
        }
        Ok(())
    }

    /// The flat one-rack lab: `ctrl` hangs off the TOR bridge, everything is one L2 segment.
    fn wire_one_rack(&self) -> Result<()> {
        let rack = &self.racks[0];
        self.create_netns(&rack.tor)?;
        topology::wire_switch(&self.tools, &rack.tor, rack.gateway, PREFIX_LEN)?;
        self.create_netns(&self.ctrl)?;
        topology::wire_port(
            &self.tools,
            &rack.tor,
            "ctrl",
            &self.ctrl,
            CTRL_IF,
            self.ctrl_addr,
            None,
        )
    }

    /// etcd members 2.. on `ctrl`'s bridge (the TOR of a flat lab, the spine otherwise).
    fn wire_etcd_members(&self) -> Result<()> {
        let (switch, gw) = match &self.spine {
            None => (&self.racks[0].tor, None),
            Some(spine) => (spine, Some(SPINE_GATEWAY)),
        };
        for (i, ns) in self.etcd_ns.iter().enumerate() {
            let m = i + 2;
            self.create_netns(ns)?;
            topology::wire_port(
                &self.tools,
                switch,
                &format!("etcd{m}"),
                ns,
                CTRL_IF,
                self.etcd_member_addr(m),
                gw,
            )?;
        }
        Ok(())
    }

    /// Spine with `ctrl` on its bridge, then each TOR with its /31 link to the spine. Routing
    /// (ip_forward) is switched on in exactly these namespaces.
    fn wire_racks(&self, spine: &Netns) -> Result<()> {
        self.create_netns(spine)?;
        topology::wire_switch(&self.tools, spine, SPINE_GATEWAY, PREFIX_LEN)?;
        topology::enable_forwarding(spine)?;
        self.create_netns(&self.ctrl)?;
        topology::wire_port(
            &self.tools,
            spine,
            "ctrl",
            &self.ctrl,
            CTRL_IF,
            self.ctrl_addr,
            Some(SPINE_GATEWAY),
        )?;
        for rack in &self.racks {
            self.create_netns(&rack.tor)?;
            topology::wire_switch(&self.tools, &rack.tor, rack.gateway, PREFIX_LEN)?;
            topology::enable_forwarding(&rack.tor)?;
            topology::wire_spine_link(&self.tools, spine, &rack.tor, rack.index)?;
        }
        Ok(())
    }

    /// Creates a pod sandbox on node `node` ([`Node::index`]): namespace `<id>-<node>p<k>`
    /// (`n1p1`, `r2n1p3`) with lo up, a fresh
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
        let daemons = st
            .etcd
            .values()
            .chain(st.netmasters.values())
            .chain(st.ipamd.values());
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
        daemons.extend(
            std::mem::take(&mut state.netmasters)
                .into_values()
                .map(|d| (d, STOP_GRACE)),
        );
        // etcd gets SIGKILL: a member without quorum takes seconds to honour SIGTERM.
        daemons.extend(
            std::mem::take(&mut state.etcd)
                .into_values()
                .map(|d| (d, Duration::ZERO)),
        );
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
