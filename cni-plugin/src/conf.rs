//! The network configuration on stdin. The top level tolerates unknown keys
//! (other plugins' fields, runtime additions); Rackline's own values are
//! validated strictly.

use std::path::PathBuf;
use std::time::Duration;

use ipnetwork::Ipv4Network;
use rackline_model::network::{parse_cidr, validate_ifname, validate_name};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{code, CniError};
use crate::vlan::{VlanCleanup, VlanOptions};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_SOCKET: &str = "/run/rackline/ipamd.sock";
/// tmpfs, like the VLAN devices whose users it records (cleared together on reboot).
pub const DEFAULT_RUNTIME_DIR: &str = "/run/rackline";
const DEFAULT_TIMEOUT_MS: u64 = 5000;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    #[serde(default)]
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(default, rename = "type")]
    plugin_type: String,
    #[serde(default)]
    network: Option<String>,
    #[serde(default)]
    ipamd_socket: Option<PathBuf>,
    #[serde(default)]
    master: Option<String>,
    #[serde(default)]
    host_routes: Vec<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    log_file: Option<PathBuf>,
    #[serde(default)]
    log_level: Option<String>,
    #[serde(default)]
    runtime_config: Option<RuntimeConfig>,
    #[serde(default)]
    vlan_cleanup: Option<VlanCleanup>,
    #[serde(default)]
    runtime_dir: Option<PathBuf>,
    #[serde(default)]
    prev_result: Option<Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<ValidAttachment>>,
}

/// Runtime-provided values. containerd sends PascalCase keys, the spec's
/// convention (and other runtimes) camelCase: accept both.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuntimeConfig {
    #[serde(default, alias = "Bandwidth")]
    pub bandwidth: Option<Bandwidth>,
}

/// Per-pod bandwidth request (kubelet's ingress/egress-bandwidth
/// annotations), in bits/s and bits (the CNI bandwidth convention); burst
/// u32::MAX means "unset". Validated by `qos::pod_request`.
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
#[serde(rename_all = "camelCase")]
pub struct ValidAttachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    /// The Rackline network in etcd.
    pub network: String,
    pub ipamd_socket: PathBuf,
    pub master: Option<String>,
    pub host_routes: Vec<Ipv4Network>,
    pub timeout: Duration,
    pub log_file: Option<PathBuf>,
    pub log_level: String,
    pub runtime_config: RuntimeConfig,
    /// `vlanCleanup` and `runtimeDir` (see `vlan.rs`).
    pub vlan: VlanOptions,
    pub prev_result: Option<Value>,
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

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                "cannot decode the network configuration",
                format!("stdin is not JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                code::DECODE,
                "cannot decode the network configuration",
                "stdin must be a JSON object",
            ));
        }
        let raw: RawConf =
            serde_json::from_value(value).map_err(|e| CniError::config(e.to_string()))?;
        if raw.cni_version.is_empty() {
            return Err(CniError::config("cniVersion is missing"));
        }
        if !SUPPORTED_VERSIONS.contains(&raw.cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                "incompatible CNI version",
                format!(
                    "cniVersion {} is not supported; use one of {}",
                    raw.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        if raw.name.is_empty() {
            return Err(CniError::config("name is missing"));
        }
        if !raw.plugin_type.is_empty() && raw.plugin_type != "rackline" {
            return Err(CniError::config(format!(
                "type is {:?}; this plugin is \"rackline\"",
                raw.plugin_type
            )));
        }
        let network = raw.network.clone().unwrap_or_else(|| raw.name.clone());
        validate_name(&network).map_err(|e| CniError::config(format!("network: {e}")))?;
        if let Some(m) = &raw.master {
            validate_ifname(m).map_err(|e| CniError::config(format!("master: {e}")))?;
        }
        let host_routes = raw
            .host_routes
            .iter()
            .map(|c| parse_cidr(c).map_err(|e| CniError::config(format!("hostRoutes: {e}"))))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout_ms = raw.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if !(100..=120_000).contains(&timeout_ms) {
            return Err(CniError::config(format!(
                "timeoutMs {timeout_ms} is outside 100-120000"
            )));
        }
        let socket = raw
            .ipamd_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET));
        if !socket.is_absolute() {
            return Err(CniError::config(format!(
                "ipamdSocket {} must be an absolute path",
                socket.display()
            )));
        }
        let runtime_dir = raw
            .runtime_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RUNTIME_DIR));
        if !runtime_dir.is_absolute() {
            return Err(CniError::config(format!(
                "runtimeDir {} must be an absolute path",
                runtime_dir.display()
            )));
        }
        Ok(NetConf {
            cni_version: raw.cni_version,
            name: raw.name,
            network,
            ipamd_socket: socket,
            master: raw.master,
            host_routes,
            timeout: Duration::from_millis(timeout_ms),
            log_file: raw.log_file,
            log_level: raw.log_level.unwrap_or_else(|| "info".into()),
            runtime_config: raw.runtime_config.unwrap_or_default(),
            vlan: VlanOptions {
                runtime_dir,
                cleanup: raw.vlan_cleanup.unwrap_or_default(),
            },
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        })
    }

    /// True for 1.0.0 and later (the 1.x result shape).
    pub fn is_v1(&self) -> bool {
        self.cni_version.starts_with("1.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
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
            r#"{"cniVersion":"1.1.0","name":"n","runtimeConfig":{"bandwidth":{"ingressRate":10000000,"ingressBurst":4294967295,"egressRate":20000000,"egressBurst":4294967295}}}"#,
        )
        .unwrap();
        let a = pascal.runtime_config.bandwidth.unwrap();
        assert_eq!(a, camel.runtime_config.bandwidth.unwrap());
        assert_eq!(a.ingress_rate, Some(10_000_000));
        assert_eq!(a.egress_burst, Some(u64::from(u32::MAX)));
    }

    #[test]
    fn bad_input_gets_the_right_code() {
        assert_eq!(parse("not json").unwrap_err().code, code::DECODE);
        assert_eq!(parse("[1]").unwrap_err().code, code::DECODE);
        assert_eq!(
            parse(r#"{"cniVersion":"9.9.9","name":"n"}"#)
                .unwrap_err()
                .code,
            code::INCOMPATIBLE_VERSION
        );
        for bad in [
            r#"{"cniVersion":"1.1.0"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","hostRoutes":["nope"]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","hostRoutes":["10.96.0.1/12"]}"#,
            r#"{"cniVersion":"1.1.0","name":"n","master":"has space"}"#,
            r#"{"cniVersion":"1.1.0","name":"Bad_Name"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","timeoutMs":1}"#,
            r#"{"cniVersion":"1.1.0","name":"n","ipamdSocket":"relative.sock"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","type":"macvlan"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","vlanCleanup":"sometimes"}"#,
            r#"{"cniVersion":"1.1.0","name":"n","vlanCleanup":true}"#,
            r#"{"cniVersion":"1.1.0","name":"n","runtimeDir":"run/rackline"}"#,
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG, "{bad}: {e}");
        }
    }

    #[test]
    fn valid_attachments_are_read_for_gc() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"n","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.valid_attachments.unwrap(),
            vec![ValidAttachment {
                container_id: "a".into(),
                ifname: "eth0".into()
            }]
        );
    }

    #[test]
    fn sniffs_version_for_error_replies() {
        assert_eq!(sniff_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
        assert_eq!(sniff_version(b"garbage"), "1.1.0");
    }
}
