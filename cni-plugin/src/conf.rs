//! The network configuration on stdin, validated for the verb that reads it.
//!
//! The top level tolerates unknown keys (other plugins' fields, runtime
//! additions); Rackline's own values are validated strictly and every nested
//! value must have the JSON type it is documented with (an array where an
//! object belongs is code 7, never read positionally).
//!
//! Each verb validates only what it uses: DEL reads no `runtimeConfig`,
//! `prevResult`, `master` or `hostRoutes`, so junk there can never make a
//! sandbox impossible to remove.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use rackline_model::network::{parse_cidr, validate_ifname, validate_name};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::env::{parse_requested, Command};
use crate::error::CniError;
use crate::result::CniResult;

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_SOCKET: &str = "/run/rackline/ipamd.sock";
/// tmpfs, like the VLAN devices whose users it records (cleared together on reboot).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/rackline";
const DEFAULT_TIMEOUT_MS: u64 = 5000;
const MAX_PATH_LEN: usize = 4095;

/// Runtime-provided values (`capabilities` in the conflist).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub bandwidth: Option<Bandwidth>,
    /// The `ips` capability: at most one IPv4 address, prefix dropped.
    pub ip: Option<Ipv4Addr>,
}

/// Per-pod bandwidth request (kubelet's ingress/egress-bandwidth
/// annotations), in bits/s and bits (the CNI bandwidth convention); burst
/// u32::MAX means "unset". containerd sends PascalCase keys, the spec's
/// convention (and other runtimes) camelCase: both are accepted. Validated
/// by `qos::pod_request`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Bandwidth {
    #[serde(default, rename = "ingressRate", alias = "IngressRate")]
    pub ingress_rate: Option<u64>,
    #[serde(default, rename = "ingressBurst", alias = "IngressBurst")]
    pub ingress_burst: Option<u64>,
    #[serde(default, rename = "egressRate", alias = "EgressRate")]
    pub egress_rate: Option<u64>,
    #[serde(default, rename = "egressBurst", alias = "EgressBurst")]
    pub egress_burst: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// What happens to a VLAN device when its last pod on the node leaves
/// (netconf `vlanCleanup`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VlanCleanup {
    /// Default. The device stays: the next pod on that VLAN costs no
    /// create (and no RCU-waiting delete), node-level tools (monitoring,
    /// a DHCP relay, a node address on the VLAN) never see it flap, and a
    /// rackline bug can never delete a device in use.
    #[default]
    Keep,
    /// Delete it when the last attachment leaves, but only if rackline
    /// created it (a device the operator made is never removed).
    Remove,
}

/// Where the VLAN registry lives and what DEL does (from the netconf).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VlanOptions {
    pub runtime_dir: PathBuf,
    pub cleanup: VlanCleanup,
    /// Longest wait for a device's lock (the netconf's `timeoutMs`).
    pub lock_wait: Duration,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The Rackline network in etcd.
    pub network: String,
    pub ipamd_socket: PathBuf,
    pub timeout: Duration,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    /// `vlanCleanup` and `runtimeDir` (see `vlan.rs`, `spool.rs`).
    pub vlan: VlanOptions,
    /// ADD and CHECK only (absent for the other verbs).
    pub master: Option<String>,
    pub host_routes: Vec<Ipv4Network>,
    pub runtime_config: RuntimeConfig,
    pub prev_result: Option<CniResult>,
    /// GC only.
    pub valid_attachments: Option<Vec<ValidAttachment>>,
}

/// Best effort: the version to answer errors in, even when the rest of the
/// config is unusable.
pub fn sniff_version(stdin: &[u8]) -> String {
    serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion")?.as_str().map(str::to_string))
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| "1.1.0".to_string())
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn wrong_type(key: &str, want: &str, got: &Value) -> CniError {
    CniError::config(format!("{key} must be {want}, not {}", type_name(got)))
}

/// `key` as a string; `None` when absent or null.
fn opt_str<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a str>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(wrong_type(key, "a string", v)),
    }
}

fn opt_path(m: &Map<String, Value>, key: &str) -> Result<Option<PathBuf>, CniError> {
    let Some(s) = opt_str(m, key)? else {
        return Ok(None);
    };
    if !s.starts_with('/') {
        return Err(CniError::config(format!(
            "{key} {s:?} must be an absolute path"
        )));
    }
    if s.len() > MAX_PATH_LEN || s.contains('\0') {
        return Err(CniError::config(format!(
            "{key} is longer than {MAX_PATH_LEN} bytes or contains NUL"
        )));
    }
    Ok(Some(PathBuf::from(s)))
}

fn opt_object<'a>(
    m: &'a Map<String, Value>,
    key: &str,
) -> Result<Option<&'a Map<String, Value>>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(v) => Err(wrong_type(key, "an object", v)),
    }
}

fn opt_array<'a>(m: &'a Map<String, Value>, key: &str) -> Result<Option<&'a [Value]>, CniError> {
    match m.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(wrong_type(key, "an array", v)),
    }
}

/// `cniVersion` (one this plugin speaks), `name`, and `type` if given.
fn version_and_name(m: &Map<String, Value>) -> Result<(&str, &str), CniError> {
    let cni_version = opt_str(m, "cniVersion")?
        .filter(|v| !v.is_empty())
        .ok_or_else(|| CniError::config("cniVersion is missing"))?;
    if !SUPPORTED_VERSIONS.contains(&cni_version) {
        return Err(CniError::IncompatibleVersion(format!(
            "cniVersion {:?} is not supported; use one of {}",
            crate::env::truncated(cni_version),
            SUPPORTED_VERSIONS.join(", ")
        )));
    }
    let name = opt_str(m, "name")?
        .filter(|n| !n.is_empty())
        .ok_or_else(|| CniError::config("name is missing"))?;
    if let Some(t) = opt_str(m, "type")? {
        if !t.is_empty() && t != "rackline" {
            return Err(CniError::config(format!(
                "type is {:?}; this plugin is \"rackline\"",
                crate::env::truncated(t)
            )));
        }
    }
    Ok((cni_version, name))
}

/// `timeoutMs`: 100 ms to 2 minutes, default [`DEFAULT_TIMEOUT_MS`].
fn timeout_ms(m: &Map<String, Value>) -> Result<u64, CniError> {
    let timeout_ms = match m.get("timeoutMs") {
        None | Some(Value::Null) => DEFAULT_TIMEOUT_MS,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| wrong_type("timeoutMs", "an unsigned integer", v))?,
    };
    if !(100..=120_000).contains(&timeout_ms) {
        return Err(CniError::config(format!(
            "timeoutMs {timeout_ms} is outside 100-120000"
        )));
    }
    Ok(timeout_ms)
}

/// `vlanCleanup`: `keep` (default) or `remove`.
fn vlan_cleanup(m: &Map<String, Value>) -> Result<VlanCleanup, CniError> {
    Ok(match m.get("vlanCleanup") {
        None | Some(Value::Null) => VlanCleanup::default(),
        Some(v) => VlanCleanup::deserialize(v).map_err(|_| {
            CniError::config(format!(
                "vlanCleanup must be \"keep\" or \"remove\", not {}",
                crate::env::truncated(&v.to_string())
            ))
        })?,
    })
}

/// `logFile`, checked only for its form: the logger opens it (and checks
/// its type).
fn log_file(m: &Map<String, Value>) -> Result<Option<PathBuf>, CniError> {
    Ok(match opt_str(m, "logFile")? {
        None | Some("") => None,
        Some(s) if s.contains('\0') || s.len() > MAX_PATH_LEN => {
            return Err(CniError::config("logFile is too long or contains NUL"))
        }
        Some(s) => Some(PathBuf::from(s)),
    })
}

impl NetConf {
    /// Parses stdin for `command` (not VERSION, which reads only the
    /// `cniVersion`).
    pub fn parse(stdin: &[u8], command: Command) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin)
            .map_err(|e| CniError::Decode(format!("stdin is not JSON: {e}")))?;
        let Value::Object(m) = value else {
            return Err(CniError::Decode("stdin must be a JSON object".into()));
        };
        let (cni_version, name) = version_and_name(&m)?;
        let network = opt_str(&m, "network")?.unwrap_or(name).to_owned();
        validate_name(&network).map_err(|e| CniError::config(format!("network: {e}")))?;
        let timeout_ms = timeout_ms(&m)?;
        let ipamd_socket =
            opt_path(&m, "ipamdSocket")?.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        let runtime_dir =
            opt_path(&m, "runtimeDir")?.unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
        let cleanup = vlan_cleanup(&m)?;
        let log_file = log_file(&m)?;
        let log_level = opt_str(&m, "logLevel")?.unwrap_or("info").to_owned();
        let mut conf = NetConf {
            cni_version: cni_version.to_owned(),
            name: name.to_owned(),
            network,
            ipamd_socket,
            timeout: Duration::from_millis(timeout_ms),
            log_file,
            log_level,
            vlan: VlanOptions {
                runtime_dir,
                cleanup,
                lock_wait: Duration::from_millis(timeout_ms),
            },
            master: None,
            host_routes: Vec::new(),
            runtime_config: RuntimeConfig::default(),
            prev_result: None,
            valid_attachments: None,
        };
        match command {
            Command::Add | Command::Check => conf.parse_pod_keys(&m)?,
            Command::Gc => conf.valid_attachments = parse_valid_attachments(&m)?,
            Command::Del | Command::Status | Command::Version => {}
        }
        Ok(conf)
    }

    fn parse_pod_keys(&mut self, m: &Map<String, Value>) -> Result<(), CniError> {
        if let Some(master) = opt_str(m, "master")? {
            validate_ifname(master).map_err(|e| CniError::config(format!("master: {e}")))?;
            self.master = Some(master.to_owned());
        }
        for v in opt_array(m, "hostRoutes")?.unwrap_or_default() {
            let s = v
                .as_str()
                .ok_or_else(|| wrong_type("hostRoutes[]", "a string", v))?;
            let c = parse_cidr(s).map_err(|e| CniError::config(format!("hostRoutes: {e}")))?;
            self.host_routes.push(c);
        }
        if let Some(rc) = opt_object(m, "runtimeConfig")? {
            self.runtime_config = parse_runtime_config(rc)?;
        }
        if let Some(prev) = m.get("prevResult").filter(|v| !v.is_null()) {
            self.prev_result = Some(
                CniResult::from_prev(prev)
                    .map_err(|e| CniError::config(format!("prevResult: {e}")))?,
            );
        }
        Ok(())
    }

    /// True for 1.0.0 and later (the 1.x result shape).
    pub fn is_v1(&self) -> bool {
        self.cni_version.starts_with("1.")
    }

    /// The address the runtime asks for (`IP=` in CNI_ARGS or the `ips`
    /// capability): at most one, and both must agree (code 7 otherwise).
    pub fn requested(&self, from_args: Option<Ipv4Addr>) -> Result<Option<Ipv4Addr>, CniError> {
        match (from_args, self.runtime_config.ip) {
            (Some(a), Some(b)) if a != b => Err(CniError::config(format!(
                "CNI_ARGS IP={a} and runtimeConfig.ips {b} ask for two IPv4 addresses; an attachment has exactly one"
            ))),
            (a, b) => Ok(a.or(b)),
        }
    }
}

fn parse_runtime_config(rc: &Map<String, Value>) -> Result<RuntimeConfig, CniError> {
    let mut out = RuntimeConfig::default();
    let bw = match (rc.get("bandwidth"), rc.get("Bandwidth")) {
        (Some(_), Some(_)) => {
            return Err(CniError::config(
                "runtimeConfig has both bandwidth and Bandwidth",
            ))
        }
        (Some(v), None) | (None, Some(v)) => Some(v),
        (None, None) => None,
    };
    match bw {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => {
            out.bandwidth = Some(
                Bandwidth::deserialize(v)
                    .map_err(|e| CniError::config(format!("runtimeConfig.bandwidth: {e}")))?,
            );
        }
        Some(v) => return Err(wrong_type("runtimeConfig.bandwidth", "an object", v)),
    }
    let mut ips: Vec<Ipv4Addr> = Vec::new();
    for v in opt_array(rc, "ips")
        .map_err(|e| CniError::config(format!("runtimeConfig.{}", e.details())))?
        .unwrap_or_default()
    {
        let s = v
            .as_str()
            .ok_or_else(|| wrong_type("runtimeConfig.ips[]", "a string", v))?;
        let ip =
            parse_requested(s).map_err(|e| CniError::config(format!("runtimeConfig.ips: {e}")))?;
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    if ips.len() > 1 {
        return Err(CniError::config(format!(
            "runtimeConfig.ips asks for {} IPv4 addresses; an attachment has exactly one",
            ips.len()
        )));
    }
    out.ip = ips.first().copied();
    Ok(out)
}

fn parse_valid_attachments(
    m: &Map<String, Value>,
) -> Result<Option<Vec<ValidAttachment>>, CniError> {
    let key = "cni.dev/valid-attachments";
    let Some(list) = opt_array(m, key)? else {
        return Ok(None);
    };
    let mut out = Vec::with_capacity(list.len());
    for v in list {
        if !v.is_object() {
            return Err(wrong_type(&format!("{key}[]"), "an object", v));
        }
        out.push(
            ValidAttachment::deserialize(v).map_err(|e| CniError::config(format!("{key}: {e}")))?,
        );
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes(), Command::Add)
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse(r#"{"cniVersion":"1.1.0","name":"prod","type":"rackline"}"#).unwrap();
        assert_eq!(c.network, "prod");
        assert_eq!(c.ipamd_socket, PathBuf::from(DEFAULT_SOCKET));
        assert_eq!(c.timeout, Duration::from_millis(5000));
        assert_eq!(c.vlan.cleanup, VlanCleanup::Keep);
        assert_eq!(c.vlan.runtime_dir, PathBuf::from(DEFAULT_RUNTIME_DIR));
        assert!(c.is_v1());
    }

    #[test]
    fn vlan_options_are_read() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","vlanCleanup":"remove","runtimeDir":"/tmp/rl"}"#,
        )
        .unwrap();
        assert_eq!(c.vlan.cleanup, VlanCleanup::Remove);
        assert_eq!(c.vlan.runtime_dir, PathBuf::from("/tmp/rl"));
        let keep = parse(r#"{"cniVersion":"1.1.0","name":"n","vlanCleanup":"keep"}"#).unwrap();
        assert_eq!(keep.vlan.cleanup, VlanCleanup::Keep);
    }

    #[test]
    fn unknown_top_level_keys_are_tolerated() {
        let c = parse(
            r#"{"cniVersion":"0.4.0","name":"n","type":"rackline","someOtherPlugin":{"x":1},"capabilities":{"bandwidth":true}}"#,
        )
        .unwrap();
        assert!(!c.is_v1());
    }

    #[test]
    fn runtime_config_accepts_both_key_cases() {
        let pascal = parse(
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":{"IngressRate":10000000,"IngressBurst":4294967295,"EgressRate":20000000,"EgressBurst":4294967295}}}"#,
        )
        .unwrap();
        let camel = parse(
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"Bandwidth":{"ingressRate":10000000,"ingressBurst":4294967295,"egressRate":20000000,"egressBurst":4294967295}}}"#,
        )
        .unwrap();
        let a = pascal.runtime_config.bandwidth.unwrap();
        assert_eq!(a, camel.runtime_config.bandwidth.unwrap());
        assert_eq!(a.ingress_rate, Some(10_000_000));
        assert_eq!(a.egress_burst, Some(u64::from(u32::MAX)));
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        assert_eq!(parse("not json").unwrap_err().code(), code::DECODE);
        assert_eq!(parse("[1]").unwrap_err().code(), code::DECODE);
        assert_eq!(
            parse(r#"{"cniVersion":"9.9.9","name":"n"}"#)
                .unwrap_err()
                .code(),
            code::INCOMPATIBLE_VERSION
        );
        for bad in [
            r#"{"cniVersion":"1.1.0"}"#,
            r#"{"cniVersion":1,"name":"n"}"#,
            r#"{"cniVersion":"1.1.0","name":["n"]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","hostRoutes":["nope"]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","hostRoutes":"10.96.0.0/12"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","hostRoutes":[1]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","hostRoutes":["10.96.0.1/12"]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","master":"has space"}"#,
            r#"{"cniVersion":"1.1.0","name":"Bad_Name"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","timeoutMs":1}"#,
            r#"{"cniVersion":"1.1.0","name":"n","timeoutMs":-5}"#,
            r#"{"cniVersion":"1.1.0","name":"n","timeoutMs":"5000"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipamdSocket":"relative.sock"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","type":"macvlan"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","vlanCleanup":"sometimes"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","vlanCleanup":true}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeDir":"run/rackline"}"#,
            // Arrays where objects belong are never read positionally.
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":[{"ingressRate":1}]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":[10000000,0,0,0]}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":"fast"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":{},"Bandwidth":{}}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","prevResult":"x"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","prevResult":[1]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","prevResult":{"ips":{"address":"10.0.0.1/24"}}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","prevResult":{"ips":[{"address":"10.0.0.1/24","interface":5}],"interfaces":[]}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"ips":"10.0.0.1"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"ips":["fd00::1"]}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"ips":["10.0.0.1","10.0.0.2/24"]}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"ips":[5]}}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code(), code::INVALID_CONFIG, "{bad}: {e}");
        }
    }

    #[test]
    fn del_ignores_what_it_does_not_use() {
        let junk = r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":"fast","ips":[1]},
            "prevResult":"x","hostRoutes":"nope","master":"bad name",
            "cni.dev/valid-attachments":5}"#;
        let c = NetConf::parse(junk.as_bytes(), Command::Del).unwrap();
        assert_eq!(c.runtime_config, RuntimeConfig::default());
        assert!(c.prev_result.is_none() && c.master.is_none());
        // What DEL does use stays strict.
        let bad = r#"{"cniVersion":"1.1.0","name":"n","ipamdSocket":"rel"}"#;
        assert_eq!(
            NetConf::parse(bad.as_bytes(), Command::Del)
                .unwrap_err()
                .code(),
            code::INVALID_CONFIG
        );
    }

    #[test]
    fn requested_addresses_from_the_ips_capability() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"ips":["10.10.0.70/24","10.10.0.70"]}}"#,
        )
        .unwrap();
        let want = Ipv4Addr::new(10, 10, 0, 70);
        assert_eq!(c.runtime_config.ip, Some(want));
        assert_eq!(c.requested(None).unwrap(), Some(want));
        assert_eq!(c.requested(Some(want)).unwrap(), Some(want));
        let e = c.requested(Some(Ipv4Addr::new(10, 10, 0, 71))).unwrap_err();
        assert_eq!(e.code(), code::INVALID_CONFIG);
    }

    #[test]
    fn valid_attachments_are_read_for_gc() {
        let c = NetConf::parse(
            br#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
            Command::Gc,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
        for bad in [
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":{"containerID":"a","ifname":"eth0"}}"#,
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[["a","eth0"]]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a"}]}"#,
        ] {
            let e = NetConf::parse(bad.as_bytes(), Command::Gc).unwrap_err();
            assert_eq!(e.code(), code::INVALID_CONFIG, "{bad}");
        }
    }

    #[test]
    fn sniffs_version_for_error_replies() {
        assert_eq!(sniff_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(sniff_version(b"garbage"), "1.1.0");
    }
}
