//! Byte-for-byte state of a namespace, for tests that must prove an operation changed nothing:
//! links with every detail (kind, alias, group, MAC, peer, flags), addresses (both families),
//! routes of every table (both families), policy rules, qdiscs and the IPv4 sysctls of every
//! interface — read by `ip`, `tc` and `/proc/sys` inside the namespace, independently of the
//! plugin's own netlink code.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::lab::Lab;
use crate::netns::Netns;

/// Sections of a namespace's state, each normalised (JSON without counters, sysctls sorted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NsState {
    pub sections: BTreeMap<String, String>,
}

const SCRIPT: &str = r#"
s() { echo "@@@ $1"; }
s links; ip -j -d link show
s addrs; ip -j addr show
s routes4; ip -j -4 route show table all
s routes6; ip -j -6 route show table all
s rules4; ip -j -4 rule show
s qdiscs; tc -j qdisc show
s sysctl; grep -r . /proc/sys/net/ipv4/conf/ 2>/dev/null | sort
s forward; cat /proc/sys/net/ipv4/ip_forward
"#;

/// Drops what changes by itself (traffic counters).
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.remove("stats");
            m.remove("stats64");
            for x in m.values_mut() {
                normalise(x);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

impl NsState {
    /// Sections that differ, with both versions (empty when equal).
    pub fn diff(&self, after: &NsState) -> String {
        let mut out = String::new();
        for (k, before) in &self.sections {
            let now = after
                .sections
                .get(k)
                .map(String::as_str)
                .unwrap_or("<missing>");
            if before != now {
                out.push_str(&format!("--- {k} before\n{before}\n+++ {k} after\n{now}\n"));
            }
        }
        out
    }
}

impl fmt::Display for NsState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (k, v) in &self.sections {
            writeln!(f, "[{k}]\n{v}")?;
        }
        Ok(())
    }
}

impl NsState {
    /// No IPv6 address is still in duplicate address detection (`tentative`): the kernel's
    /// own changes to fresh links are done.
    pub fn settled(&self) -> bool {
        !self
            .sections
            .get("addrs")
            .is_some_and(|a| a.contains("\"tentative\""))
    }
}

impl Lab {
    /// [`Lab::ns_state`] once the kernel has finished with fresh links on its own (IPv6
    /// link-local addresses leave duplicate address detection, their local routes appear):
    /// settled ([`NsState::settled`]) and two snapshots 300 ms apart agree; at most 20 s.
    pub fn settled_ns_state(&self, ns: &impl AsRef<Netns>) -> Result<NsState> {
        let start = std::time::Instant::now();
        let mut prev = self.ns_state(ns)?;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(300));
            let now = self.ns_state(ns)?;
            if now == prev && now.settled() {
                return Ok(now);
            }
            if start.elapsed() > std::time::Duration::from_secs(20) {
                bail!(
                    "{} does not settle:\n{}",
                    ns.as_ref().name(),
                    prev.diff(&now)
                );
            }
            prev = now;
        }
    }

    /// The full state of `ns` (see [`NsState`]); one `sh` inside the namespace.
    pub fn ns_state(&self, ns: &impl AsRef<Netns>) -> Result<NsState> {
        let out = self.exec_in(ns, &["sh", "-c", SCRIPT])?.check()?;
        let mut sections = BTreeMap::new();
        let mut name: Option<String> = None;
        let mut body = String::new();
        let mut flush = |name: &Option<String>, body: &mut String| -> Result<()> {
            if let Some(n) = name {
                let text = std::mem::take(body);
                let norm = if text.trim_start().starts_with('[') {
                    let mut v: Value = serde_json::from_str(&text)
                        .with_context(|| format!("{n}: not JSON: {text}"))?;
                    normalise(&mut v);
                    serde_json::to_string_pretty(&v)?
                } else {
                    text
                };
                sections.insert(n.clone(), norm);
            }
            Ok(())
        };
        for line in out.stdout.lines() {
            if let Some(n) = line.strip_prefix("@@@ ") {
                flush(&name, &mut body)?;
                name = Some(n.to_owned());
            } else {
                body.push_str(line);
                body.push('\n');
            }
        }
        flush(&name, &mut body)?;
        if sections.len() != 8 {
            bail!("state of {} incomplete: {out:?}", ns.as_ref().name());
        }
        Ok(NsState { sections })
    }
}
