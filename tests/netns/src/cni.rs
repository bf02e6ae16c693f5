//! Executing the real `rackline` CNI plugin exactly as a runtime does: a fork inside the node's
//! namespace, the `CNI_*` environment, the netconf on stdin, the result (or error) on stdout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::lab::Lab;
use crate::process::{run, CHILD_PATH};
use crate::rack::Pod;

/// The CNI verbs (`CNI_COMMAND`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Cmd {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Cmd {
    pub fn as_str(self) -> &'static str {
        match self {
            Cmd::Add => "ADD",
            Cmd::Del => "DEL",
            Cmd::Check => "CHECK",
            Cmd::Status => "STATUS",
            Cmd::Gc => "GC",
            Cmd::Version => "VERSION",
        }
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Deadline for one plugin execution (ADD/DEL take tens of ms; this only catches hangs).
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);

enum Stdin {
    Conf(Value),
    Raw(Vec<u8>),
}

/// One plugin execution being prepared; [`CniCall::run`] executes it. Created by [`Lab::cni`]
/// (pod verbs, environment filled from the pod) or [`Lab::cni_node`] (STATUS/GC/VERSION).
#[must_use = "a CniCall does nothing until run()"]
pub struct CniCall<'lab> {
    lab: &'lab Lab,
    node: usize,
    command: Cmd,
    env: BTreeMap<OsString, Option<OsString>>,
    stdin: Stdin,
    timeout: Duration,
}

impl<'lab> CniCall<'lab> {
    /// Replaces the netconf (default: [`Lab::conf`] of the node).
    pub fn conf(mut self, conf: Value) -> Self {
        self.stdin = Stdin::Conf(conf);
        self
    }

    /// Sets one top-level netconf key, e.g. `.set("master", json!("nonexistent0"))`.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        if let Stdin::Conf(Value::Object(map)) = &mut self.stdin {
            map.insert(key.into(), value);
        } else {
            panic!("set({key}) needs a JSON object netconf, not raw stdin");
        }
        self
    }

    /// Adds `prevResult` to the netconf (what a runtime sends with DEL and CHECK).
    pub fn prev_result(self, result: &Value) -> Self {
        self.set("prevResult", result.clone())
    }

    /// Sends these bytes as stdin instead of a netconf (garbage-input tests).
    pub fn stdin_raw(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Stdin::Raw(bytes.into());
        self
    }

    /// Sets (or overrides) an environment variable of the plugin.
    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.into(), Some(value.into().into()));
        self
    }

    /// Sets a variable to arbitrary bytes (e.g. not UTF-8), as a runtime may pass through.
    pub fn env_os(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.insert(key.into(), Some(value.into()));
        self
    }

    /// Removes a variable from the plugin's environment (e.g. `CNI_COMMAND`).
    pub fn unset(mut self, key: &str) -> Self {
        self.env.insert(key.into(), None);
        self
    }

    pub fn ifname(self, ifname: &str) -> Self {
        self.env("CNI_IFNAME", ifname)
    }

    pub fn container_id(self, id: &str) -> Self {
        self.env("CNI_CONTAINERID", id)
    }

    /// `CNI_NETNS`; `""` is what containerd sends on RemovePodSandbox.
    pub fn netns(self, path: &str) -> Self {
        self.env("CNI_NETNS", path)
    }

    pub fn args(self, cni_args: &str) -> Self {
        self.env("CNI_ARGS", cni_args)
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Executes the plugin inside the node's namespace. `Err` only when it cannot be executed
    /// or hangs; a failing plugin is an `Ok(CniOutput)` with a non-zero `exit_code`.
    pub fn run(self) -> Result<CniOutput> {
        let bins = self.lab.bins()?;
        let mut cmd = Command::new(&bins.rackline);
        cmd.env_clear().env("PATH", CHILD_PATH);
        for (key, value) in &self.env {
            if let Some(value) = value {
                cmd.env(key, value);
            }
        }
        let stdin = match &self.stdin {
            Stdin::Conf(conf) => serde_json::to_vec(conf)?,
            Stdin::Raw(bytes) => bytes.clone(),
        };
        let node = self.lab.node(self.node).netns();
        let out = run(cmd, Some(node), &stdin, self.timeout)?;
        let stdout_json = serde_json::from_str(&out.stdout).ok();
        Ok(CniOutput {
            command: self.command,
            exit_code: out.code,
            stdout: out.stdout,
            stdout_json,
            stderr: out.stderr,
        })
    }
}

/// What the plugin did.
#[derive(Clone, Debug)]
pub struct CniOutput {
    pub command: Cmd,
    pub exit_code: i32,
    pub stdout: String,
    /// stdout parsed as JSON (`None` when empty or not JSON).
    pub stdout_json: Option<Value>,
    pub stderr: String,
}

impl CniOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// `Ok(self)` on exit 0, else an error showing stdout and stderr.
    pub fn ok(self) -> Result<Self> {
        ensure!(self.success(), "{self}");
        Ok(self)
    }

    /// The JSON result of a successful ADD/VERSION/… (error otherwise).
    pub fn result(&self) -> Result<&Value> {
        ensure!(self.success(), "{self}");
        self.stdout_json.as_ref().with_context(|| {
            format!(
                "{} exited 0 but printed no JSON result\n{self}",
                self.command
            )
        })
    }

    /// `code` of the CNI error document on stdout.
    pub fn error_code(&self) -> Option<u64> {
        self.stdout_json.as_ref()?.get("code")?.as_u64()
    }

    /// Asserts a CNI error: non-zero exit and `{"code": code, "msg": "…"}` on stdout.
    pub fn expect_error(&self, code: u64) -> Result<&Value> {
        ensure!(
            !self.success(),
            "expected CNI error {code}, but the plugin succeeded\n{self}"
        );
        let doc = self
            .stdout_json
            .as_ref()
            .with_context(|| format!("expected a CNI error document on stdout\n{self}"))?;
        ensure!(
            doc.get("code").and_then(Value::as_u64) == Some(code),
            "expected CNI error code {code}\n{self}"
        );
        ensure!(
            doc.get("msg")
                .and_then(Value::as_str)
                .is_some_and(|m| !m.is_empty()),
            "CNI error without msg\n{self}"
        );
        Ok(doc)
    }
}

impl fmt::Display for CniOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stderr: Vec<&str> = self.stderr.lines().collect();
        let tail = stderr[stderr.len().saturating_sub(30)..].join("\n");
        write!(
            f,
            "rackline {} exited {}\nstdout: {}\nstderr (tail):\n{tail}",
            self.command,
            self.exit_code,
            self.stdout.trim_end()
        )
    }
}

/// An IPv4 address with prefix length, as in CNI results (`10.10.0.64/24`) and `ip -j addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr4 {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Cidr4 {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (addr, prefix) = s.split_once('/').unwrap_or((s, "32"));
        let addr = addr
            .parse()
            .with_context(|| format!("bad IPv4 address in {s:?}"))?;
        let prefix: u8 = prefix
            .parse()
            .with_context(|| format!("bad prefix in {s:?}"))?;
        ensure!(prefix <= 32, "bad prefix in {s:?}");
        Ok(Self { addr, prefix })
    }
}

impl fmt::Display for Cidr4 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// The first IPv4 entry of a CNI result's `ips` (any result version).
pub fn result_ipv4(result: &Value) -> Result<Cidr4> {
    let ips = result["ips"]
        .as_array()
        .with_context(|| format!("result has no ips array: {result}"))?;
    for ip in ips {
        if let Some(Ok(cidr)) = ip["address"].as_str().map(Cidr4::from_str) {
            return Ok(cidr);
        }
    }
    bail!("result has no IPv4 address: {result}")
}

/// The `interfaces[]` entry an `ips[]` entry points at (its `interface` index).
pub fn result_interface_of<'a>(result: &'a Value, ip: &Value) -> Option<&'a Value> {
    let index = usize::try_from(ip.get("interface")?.as_u64()?).ok()?;
    result["interfaces"].as_array()?.get(index)
}

impl Lab {
    /// The default netconf for node `k` (docs/CONTRACTS.md): CNI 1.1.0, the network of the
    /// node's rack ([`Lab::network_of_node`]: `prod` in a one-rack lab), the node's ipamd socket,
    /// the node's runtime dir ([`Lab::node_runtime_dir`]).
    pub fn conf(&self, k: usize) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "rackline",
            "type": "rackline",
            "network": self.network_of_node(k),
            "ipamdSocket": self.node(k).ipamd_socket().display().to_string(),
            "logLevel": self.opts.log_level,
            // The node's own runtime dir (the host's /run/rackline would be shared by every
            // lab on the machine): VLAN registry, the plugin's timing reports.
            "runtimeDir": self.node_runtime_dir(k).display().to_string(),
        })
    }

    /// Node `k`'s plugin `runtimeDir`: `<lab dir>/<node>/run`.
    pub fn node_runtime_dir(&self, k: usize) -> std::path::PathBuf {
        self.dir().join(self.node(k).name()).join("run")
    }

    /// A pod verb (ADD/DEL/CHECK) for `pod` on its node, environment as containerd sets it:
    /// `CNI_CONTAINERID`, `CNI_NETNS=/var/run/netns/<pod ns>`, `CNI_IFNAME=eth0`, `CNI_ARGS`,
    /// `CNI_PATH`; stdin = [`Lab::conf`]. Adjust with the [`CniCall`] builder, then `run()`.
    pub fn cni(&self, command: Cmd, pod: &Pod) -> CniCall<'_> {
        self.cni_node(pod.node, command)
            .container_id(&pod.container_id)
            .netns(&pod.netns_path())
            .ifname("eth0")
            .args(&pod.cni_args())
    }

    /// A verb without a pod (STATUS, GC, VERSION) on node `k`: only `CNI_COMMAND` and
    /// `CNI_PATH` are set; stdin = [`Lab::conf`].
    pub fn cni_node(&self, k: usize, command: Cmd) -> CniCall<'_> {
        let mut env = BTreeMap::new();
        env.insert("CNI_COMMAND".into(), Some(command.as_str().into()));
        if let Ok(bins) = self.bins() {
            env.insert("CNI_PATH".into(), Some(bins.cni_path().into()));
        }
        CniCall {
            lab: self,
            node: k,
            command,
            env,
            stdin: Stdin::Conf(self.conf(k)),
            timeout: PLUGIN_TIMEOUT,
        }
    }

    /// ADD with the defaults; the parsed result, or an error showing the plugin's output.
    pub fn cni_add(&self, pod: &Pod) -> Result<Value> {
        self.cni(Cmd::Add, pod).run()?.result().cloned()
    }

    /// DEL with the defaults (no prevResult); an error unless it exits 0.
    pub fn cni_del(&self, pod: &Pod) -> Result<()> {
        self.cni(Cmd::Del, pod).run()?.ok().map(drop)
    }
}
