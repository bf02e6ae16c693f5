//! Shared fixtures for the root-only integration tests: every test works in
//! network namespaces it creates (`rlnl<pid>-<n>`) and deletes them in
//! `Drop`, also when the test panics. Nothing here touches the root
//! namespace's links, routes or sysctls.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use rackline_netlink::{LinkInfo, Netlink, Netns};
use serde_json::Value;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// These tests need CAP_NET_ADMIN + CAP_SYS_ADMIN; without them they must
/// fail loudly, never skip.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "rackline-netlink integration tests create network namespaces and must run as root"
    );
}

pub struct TestNs {
    pub name: String,
    pub ns: Netns,
}

impl TestNs {
    pub fn new() -> Self {
        require_root();
        let name = format!(
            "rlnl{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        run("ip", &["netns", "add", &name]);
        // From here on Drop cleans up, even if opening fails below.
        let guard = NsName(name.clone());
        let ns = Netns::open(&Path::new("/var/run/netns").join(&name)).expect("open test netns");
        std::mem::forget(guard);
        Self { name, ns }
    }

    pub fn netlink(&self) -> Netlink {
        Netlink::in_netns(&self.ns).expect("netlink socket in test netns")
    }

    /// `ip -j [-d] -n <ns> <args>` parsed as JSON.
    pub fn ip_json(&self, details: bool, args: &[&str]) -> Value {
        let mut full = vec!["-j"];
        if details {
            full.push("-d");
        }
        full.extend(["-n", &self.name]);
        full.extend(args);
        let out = run("ip", &full);
        if out.trim().is_empty() {
            return Value::Array(vec![]);
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("ip {full:?}: {e}: {out}"))
    }

    /// The `ip -j -d link show dev <name>` object for one link.
    pub fn ip_link(&self, name: &str) -> Value {
        let v = self.ip_json(true, &["link", "show", "dev", name]);
        v[0].clone()
    }

    pub fn ip_link_names(&self) -> Vec<String> {
        self.ip_json(false, &["link", "show"])
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["ifname"].as_str().unwrap().to_owned())
            .collect()
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        delete_netns(&self.name);
    }
}

struct NsName(String);

impl Drop for NsName {
    fn drop(&mut self) {
        delete_netns(&self.0);
    }
}

fn delete_netns(name: &str) {
    let status = Command::new("ip").args(["netns", "del", name]).status();
    if !matches!(status, Ok(s) if s.success()) {
        eprintln!("warning: could not delete test netns {name}: {status:?}");
    }
}

pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn link(nl: &mut Netlink, name: &str) -> LinkInfo {
    nl.link_by_name(name)
        .expect("get link")
        .unwrap_or_else(|| panic!("link {name} missing"))
}

pub fn flags(link: &Value) -> Vec<String> {
    link["flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_owned())
        .collect()
}
