//! CNI errors: a code from the spec (or ours, 100+), a message a person can
//! act on, and details. Mapped to codes only here, at the edge.

use serde::Serialize;

/// Codes from the CNI spec, and Rackline's own (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const UNSUPPORTED_FIELD: u32 = 2;
    pub const CONTAINER_UNKNOWN: u32 = 3;
    pub const INVALID_ENV: u32 = 4;
    pub const IO_FAILURE: u32 = 5;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN_LATER: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Creating or configuring links, addresses or routes failed.
    pub const DATAPATH: u32 = 100;
    /// The network has no free address.
    pub const EXHAUSTED: u32 = 101;
    /// The network named in the config does not exist in etcd.
    pub const UNKNOWN_NETWORK: u32 = 102;
    /// CHECK found the attachment differs from what ADD set up.
    pub const CHECK_FAILED: u32 = 103;
    /// ipamd answered with an unexpected error.
    pub const IPAM: u32 = 104;
    /// The pod is sticky and its identity is live on another node.
    pub const STICKY_LIVE: u32 = 105;
    /// The pod is sticky and its reserved address belongs to another rack
    /// (cross-rack policy `strict`).
    pub const STICKY_WRONG_RACK: u32 = 106;
    /// None of the requested addresses (`IP=` in CNI_ARGS, the `ips`
    /// capability, the pod's `rackline.io/ip` annotation) can be given:
    /// outside the node's rack, excluded, in use or reserved for another pod.
    pub const REQUESTED_ADDRESS: u32 = 107;
    /// The duplicate-address probe found the address in use, or it is one of
    /// the node's own addresses: a
    /// sticky pod's address, or every address tried.
    pub const ADDRESS_CONFLICT: u32 = 110;
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}: {details}")]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    pub fn env(details: impl Into<String>) -> Self {
        Self::new(code::INVALID_ENV, "invalid CNI environment", details)
    }

    pub fn config(details: impl Into<String>) -> Self {
        Self::new(
            code::INVALID_CONFIG,
            "invalid network configuration",
            details,
        )
    }

    pub fn datapath(details: impl Into<String>) -> Self {
        Self::new(code::DATAPATH, "setting up the pod network failed", details)
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorJson<'a> {
    cni_version: &'a str,
    code: u32,
    msg: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    details: &'a str,
}

impl CniError {
    pub fn to_json(&self, cni_version: &str) -> String {
        serde_json::to_string(&ErrorJson {
            cni_version,
            code: self.code,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code))
    }
}

impl From<rackline_netlink::NetlinkError> for CniError {
    fn from(e: rackline_netlink::NetlinkError) -> Self {
        CniError::datapath(e.to_string())
    }
}
