//! Looking into namespaces: run a command inside one, `ip -j` dumps, ping, and snapshots that
//! prove an operation left nothing behind.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt;
use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::cni::Cidr4;
use crate::daemons::CLIENT_TIMEOUT;
use crate::lab::Lab;
use crate::netns::Netns;
use crate::process::{run, Output, CHILD_PATH};

/// Links, IPv4 addresses and IPv4 routes of a namespace, normalised for comparison.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSnapshot {
    /// Link names.
    pub links: BTreeSet<String>,
    /// `ifname 10.10.0.11/24`.
    pub addrs: BTreeSet<String>,
    /// Each route of the main table as compact JSON.
    pub routes: BTreeSet<String>,
}

impl NetSnapshot {
    /// What `after` has that `self` lacks, and the reverse; empty when equal.
    pub fn diff(&self, after: &NetSnapshot) -> String {
        let mut out = String::new();
        let sets = [
            ("link", &self.links, &after.links),
            ("addr", &self.addrs, &after.addrs),
            ("route", &self.routes, &after.routes),
        ];
        for (what, before, after) in sets {
            for added in after.difference(before) {
                out.push_str(&format!("+ {what} {added}\n"));
            }
            for removed in before.difference(after) {
                out.push_str(&format!("- {what} {removed}\n"));
            }
        }
        out
    }
}

impl fmt::Display for NetSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "links: {:?}", self.links)?;
        writeln!(f, "addrs: {:?}", self.addrs)?;
        for r in &self.routes {
            writeln!(f, "route: {r}")?;
        }
        Ok(())
    }
}

fn json_array(text: &str, what: &str) -> Result<Vec<Value>> {
    // `ip -j` prints nothing at all for some empty dumps.
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    match serde_json::from_str(text).with_context(|| format!("{what}: not JSON: {text:?}"))? {
        Value::Array(items) => Ok(items),
        other => bail!("{what}: expected a JSON array, got {other}"),
    }
}

impl Lab {
    /// Runs `argv` inside `ns` (fork + setns, like the plugin) and returns its output whatever
    /// the exit code. `argv[0]` is looked up in `PATH` (sbin included).
    pub fn exec_in<S: AsRef<OsStr>>(&self, ns: &impl AsRef<Netns>, argv: &[S]) -> Result<Output> {
        let (program, args) = argv.split_first().context("exec_in: empty argv")?;
        let mut cmd = Command::new(program);
        cmd.args(args).env("PATH", CHILD_PATH);
        run(cmd, Some(ns.as_ref()), b"", CLIENT_TIMEOUT)
    }

    /// `ip -j <args>` inside `ns`, parsed (fails on a non-zero exit).
    pub fn ip_json(&self, ns: &impl AsRef<Netns>, args: &[&str]) -> Result<Vec<Value>> {
        let mut cmd = self.tools.ip_cmd(["-j"]);
        cmd.args(args);
        let out = run(cmd, Some(ns.as_ref()), b"", CLIENT_TIMEOUT)?.check()?;
        json_array(&out.stdout, &format!("ip -j {}", args.join(" ")))
    }

    /// `ip -j -d link`: every link with details (`linkinfo.info_kind` = veth, macvlan…).
    pub fn links(&self, ns: &impl AsRef<Netns>) -> Result<Vec<Value>> {
        self.ip_json(ns, &["-d", "link", "show"])
    }

    /// One link by name (`None` when absent).
    pub fn link(&self, ns: &impl AsRef<Netns>, ifname: &str) -> Result<Option<Value>> {
        Ok(self.links(ns)?.into_iter().find(|l| l["ifname"] == ifname))
    }

    /// Sorted link names.
    pub fn link_names(&self, ns: &impl AsRef<Netns>) -> Result<Vec<String>> {
        let mut names: Vec<String> = self
            .links(ns)?
            .iter()
            .filter_map(|l| l["ifname"].as_str().map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// `(ifname, address/prefix)` of every IPv4 address.
    pub fn ipv4_addrs(&self, ns: &impl AsRef<Netns>) -> Result<Vec<(String, Cidr4)>> {
        let mut out = Vec::new();
        for link in self.ip_json(ns, &["-4", "addr", "show"])? {
            let ifname = link["ifname"].as_str().unwrap_or_default().to_owned();
            for a in link["addr_info"].as_array().into_iter().flatten() {
                if let (Some(local), Some(prefix)) = (a["local"].as_str(), a["prefixlen"].as_u64())
                {
                    out.push((ifname.clone(), format!("{local}/{prefix}").parse()?));
                }
            }
        }
        Ok(out)
    }

    /// IPv4 routes of the main table (`ip -j -4 route show`); `dst` is `default`, a bare
    /// address for /32, or a CIDR.
    pub fn routes(&self, ns: &impl AsRef<Netns>) -> Result<Vec<Value>> {
        self.ip_json(ns, &["-4", "route", "show"])
    }

    /// The route whose `dst` is exactly `dst` (`"default"`, `"10.10.0.11"`, `"10.96.0.0/12"`).
    pub fn route_to(&self, ns: &impl AsRef<Netns>, dst: &str) -> Result<Option<Value>> {
        Ok(self.routes(ns)?.into_iter().find(|r| r["dst"] == dst))
    }

    /// Links, addresses and routes, for before/after comparisons.
    pub fn snapshot(&self, ns: &impl AsRef<Netns>) -> Result<NetSnapshot> {
        Ok(NetSnapshot {
            links: self.link_names(ns)?.into_iter().collect(),
            addrs: self
                .ipv4_addrs(ns)?
                .into_iter()
                .map(|(i, a)| format!("{i} {a}"))
                .collect(),
            routes: self.routes(ns)?.iter().map(Value::to_string).collect(),
        })
    }

    /// One `ping -c1 -W1 -n` from inside `from`.
    pub fn ping_once(&self, from: &impl AsRef<Netns>, to: Ipv4Addr) -> Result<bool> {
        let to = to.to_string();
        Ok(self
            .exec_in(from, &["ping", "-c1", "-W1", "-n", &to])?
            .success())
    }

    /// Reachability: up to 3 × `ping -c1 -W1` (the first probe may be spent on ARP/neighbour
    /// resolution on a loaded machine); true as soon as one is answered.
    pub fn ping(&self, from: &impl AsRef<Netns>, to: Ipv4Addr) -> Result<bool> {
        for _ in 0..3 {
            if self.ping_once(from, to)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}
