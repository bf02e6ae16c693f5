//! CNI errors. Each variant names what went wrong and carries its cause;
//! the CNI code, the message and the details a runtime sees are derived
//! from it in ONE place ([`CniError::parts`]), at the edge
//! ([`CniError::to_json`]). Code deep in the datapath never picks a number.

use std::borrow::Cow;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use rackline_netlink::NetlinkError;
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

/// What a datapath step failed on, kept whole (a netlink error keeps its
/// errno, an I/O error its kind) so callers can still ask.
#[derive(Debug, thiserror::Error)]
pub enum DatapathCause {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Everything the plugin can fail with. Display is `"{msg}: {details}"`,
/// the same text the CNI error JSON carries.
#[derive(Debug, thiserror::Error)]
pub enum CniError {
    // --- the runtime's input ---
    /// The config's `cniVersion` is not one the plugin speaks.
    IncompatibleVersion(String),
    /// CHECK was asked under a CNI version that predates it.
    CheckNotDefined { version: String },
    /// The CNI environment is missing or malformed.
    InvalidEnv(String),
    /// stdin is not a JSON object.
    Decode(String),
    /// stdin could not be read completely.
    StdinUnreadable(String),
    /// The network configuration is invalid.
    InvalidConfig(String),

    // --- the pod network namespace ---
    /// CNI_NETNS does not exist.
    NetnsNotFound {
        path: PathBuf,
        #[source]
        cause: NetlinkError,
    },
    /// CNI_NETNS exists but cannot be used as a network namespace (ADD, CHECK).
    NetnsUnusable {
        path: PathBuf,
        #[source]
        cause: NetlinkError,
    },
    /// CNI_NETNS is no network namespace file at all (DEL).
    NotANetns {
        path: PathBuf,
        #[source]
        cause: NetlinkError,
    },
    /// CNI_NETNS is the namespace the plugin runs in (the node's).
    OwnNetns { path: PathBuf },
    /// Comparing CNI_NETNS with the plugin's own namespace failed.
    NetnsIdentity {
        path: PathBuf,
        #[source]
        cause: NetlinkError,
    },
    /// Opening CNI_NETNS failed for a reason other than its absence (DEL).
    NetnsOpen {
        path: PathBuf,
        #[source]
        cause: NetlinkError,
    },

    // --- local I/O ---
    /// A spooled release of this attachment could not be removed.
    SpoolClear(#[source] std::io::Error),
    /// The ipamd client's runtime could not be started.
    ClientRuntime(#[source] std::io::Error),
    /// ipamd is away and spooling the release failed too; the code is the
    /// release's.
    SpoolFailed {
        release: Box<CniError>,
        dir: PathBuf,
        #[source]
        cause: std::io::Error,
    },

    // --- the datapath ---
    /// Creating, configuring or reading links, addresses, routes, filters.
    /// `context` says what was being done; empty when the cause says it all.
    Datapath {
        context: String,
        #[source]
        cause: Option<DatapathCause>,
    },
    /// CHECK (or a repeated ADD) found the attachment differs from ADD's.
    CheckFailed(String),
    /// CHECK: ipamd holds no lease for the attachment.
    NoLease(String),
    /// CHECK: the pod runs with settings its network no longer has.
    OutOfSpec(Vec<String>),
    /// CHECK: the pod's packet filter differs from its policy.
    FilterDiffers(String),
    /// The sticky pod's address answers from another host.
    StickyAddressInUse {
        address: Ipv4Addr,
        /// Who answers: a node link name, or `MAC xx:..`.
        holder: String,
        network: String,
        pod: String,
    },
    /// Every address offered answered from another host.
    ConflictsExhausted {
        attempts: usize,
        network: String,
        /// `addr (in use by holder)`, comma-separated.
        list: String,
        /// The Allocate error that ended the attempts, if any.
        then: Option<Box<CniError>>,
    },

    // --- ipamd ---
    /// The ipamd socket cannot be dialled or the connection broke.
    IpamUnreachable { socket: PathBuf, why: String },
    /// ipamd did not answer within the timeout.
    IpamTimeout { socket: PathBuf, after: Duration },
    /// ipamd is busy, starting or cannot reach etcd.
    TryAgainLater(String),
    /// ipamd (or the node) says no pod can be added now (STATUS).
    NotAvailable(String),
    /// ipamd rejected the request as malformed.
    IpamRejected(String),
    /// The network has no free address.
    Exhausted(String),
    /// The network (or, for CHECK, the lease) does not exist.
    UnknownNetwork(String),
    /// The sticky pod is live on another node.
    StickyLiveElsewhere(String),
    /// The sticky pod's address belongs to another rack.
    StickyWrongRack(String),
    /// None of the requested addresses can be given.
    RequestedAddress(String),
    /// ipamd's answer cannot be used (missing or malformed fields).
    IpamUnusable(String),
    /// ipamd failed in a way the plugin has no name for.
    Ipam {
        status: tonic::Code,
        message: String,
    },
    /// The release of the address did not happen (DEL's release thread).
    ReleaseFailed(&'static str),
}

impl CniError {
    /// The CNI code, message and details: the one mapping from a variant to
    /// what the runtime sees. Long on purpose: one arm per variant, so every
    /// code and message the plugin can emit is read (and reviewed) in one
    /// table; splitting it would scatter exactly what this type gathers.
    fn parts(&self) -> (u32, &'static str, Cow<'_, str>) {
        use code::*;
        use CniError as E;
        let b = |s: &str| Cow::Owned(s.to_owned());
        match self {
            E::IncompatibleVersion(d) => (INCOMPATIBLE_VERSION, "incompatible CNI version", b(d)),
            E::CheckNotDefined { version } => (
                INCOMPATIBLE_VERSION,
                "CHECK is not defined for this CNI version",
                format!("cniVersion {version} predates CHECK (0.4.0)").into(),
            ),
            E::InvalidEnv(d) => (INVALID_ENV, "invalid CNI environment", b(d)),
            E::Decode(d) => (DECODE, "cannot decode the network configuration", b(d)),
            E::StdinUnreadable(d) => (DECODE, "cannot read the network configuration", b(d)),
            E::InvalidConfig(d) => (INVALID_CONFIG, "invalid network configuration", b(d)),
            E::NetnsNotFound { path, cause } => (
                CONTAINER_UNKNOWN,
                "the pod network namespace does not exist",
                format!("{}: {cause}", path.display()).into(),
            ),
            E::NetnsUnusable { path, cause } => (
                INVALID_ENV,
                "CNI_NETNS is not a usable network namespace",
                format!("CNI_NETNS={}: {cause}", path.display()).into(),
            ),
            E::NotANetns { path, cause } => (
                INVALID_ENV,
                "CNI_NETNS is not a network namespace",
                format!("CNI_NETNS={}: {cause}", path.display()).into(),
            ),
            E::OwnNetns { path } => (
                INVALID_ENV,
                "CNI_NETNS is the plugin's own network namespace",
                format!(
                    "CNI_NETNS={} is the namespace the plugin runs in (the node's): refusing to configure it as a pod",
                    path.display()
                )
                .into(),
            ),
            E::NetnsIdentity { path, cause } => (
                IO_FAILURE,
                "cannot identify the pod network namespace",
                format!("{}: {cause}", path.display()).into(),
            ),
            E::NetnsOpen { path, cause } => (
                IO_FAILURE,
                "cannot open the pod network namespace",
                format!("{}: {cause}", path.display()).into(),
            ),
            E::SpoolClear(e) => (
                IO_FAILURE,
                "cannot clear a spooled release of this attachment",
                e.to_string().into(),
            ),
            E::ClientRuntime(e) => (
                IO_FAILURE,
                "cannot start the ipamd client",
                e.to_string().into(),
            ),
            E::SpoolFailed {
                release,
                dir,
                cause,
            } => {
                let (code, msg, details) = release.parts();
                (
                    code,
                    msg,
                    format!(
                        "{details}; spooling the release under {} failed too: {cause}",
                        dir.display()
                    )
                    .into(),
                )
            }
            E::Datapath { context, cause } => (
                DATAPATH,
                "setting up the pod network failed",
                match cause {
                    None => b(context),
                    Some(c) if context.is_empty() => c.to_string().into(),
                    Some(c) => format!("{context}: {c}").into(),
                },
            ),
            E::CheckFailed(d) => (CHECK_FAILED, "the pod network is not as set up", b(d)),
            E::NoLease(d) => (
                CHECK_FAILED,
                "CHECK failed: no lease for this attachment",
                b(d),
            ),
            E::OutOfSpec(settings) => (
                CHECK_FAILED,
                "the pod runs with settings its network no longer has (re-create it to apply them)",
                settings.join("; ").into(),
            ),
            E::FilterDiffers(d) => (
                CHECK_FAILED,
                "the pod's packet filter is not as its policy says",
                b(d),
            ),
            E::StickyAddressInUse {
                address,
                holder,
                network,
                pod,
            } => (
                ADDRESS_CONFLICT,
                "the sticky pod's address is in use by another host",
                format!(
                    "address {address} is in use by {holder} on network {network}; the sticky pod {pod} cannot start until it is freed"
                )
                .into(),
            ),
            E::ConflictsExhausted {
                attempts,
                network,
                list,
                then,
            } => {
                let mut d = format!(
                    "{attempts} attempt(s) on network {network}: {list}; the addresses are quarantined, find the hosts squatting on them"
                );
                if let Some(t) = then {
                    d = format!("{d}; then: {}", t.details());
                }
                (
                    ADDRESS_CONFLICT,
                    "every address offered was in use by another host",
                    d.into(),
                )
            }
            E::IpamUnreachable { socket, why } => (
                TRY_AGAIN_LATER,
                "rackline-ipamd is unreachable",
                format!(
                    "{}: {why} (is rackline-ipamd running on this node?)",
                    socket.display()
                )
                .into(),
            ),
            E::IpamTimeout { socket, after } => (
                TRY_AGAIN_LATER,
                "rackline-ipamd did not answer in time",
                format!("no answer within {after:?} on {}", socket.display()).into(),
            ),
            E::TryAgainLater(d) => (
                TRY_AGAIN_LATER,
                "rackline-ipamd is busy, starting or cannot reach etcd",
                b(d),
            ),
            E::NotAvailable(d) => (NOT_AVAILABLE, "rackline cannot add pods now", b(d)),
            E::IpamRejected(d) => (INVALID_CONFIG, "ipamd rejected the request", b(d)),
            E::Exhausted(d) => (EXHAUSTED, "no free address", b(d)),
            E::UnknownNetwork(d) => (UNKNOWN_NETWORK, "unknown Rackline network", b(d)),
            E::StickyLiveElsewhere(d) => (
                STICKY_LIVE,
                "the pod's sticky address is in use by the same pod on another node",
                b(d),
            ),
            E::StickyWrongRack(d) => (
                STICKY_WRONG_RACK,
                "the pod's sticky address belongs to another rack",
                b(d),
            ),
            E::RequestedAddress(d) => (
                REQUESTED_ADDRESS,
                "the requested address cannot be given",
                b(d),
            ),
            E::IpamUnusable(d) => (IPAM, "rackline-ipamd sent an unusable answer", b(d)),
            E::Ipam { status, message } => (
                IPAM,
                "rackline-ipamd failed",
                format!("{status:?}: {message}").into(),
            ),
            E::ReleaseFailed(d) => (IPAM, "releasing the address failed", b(d)),
        }
    }

    /// The CNI error code.
    pub fn code(&self) -> u32 {
        self.parts().0
    }

    /// The CNI error message (`msg`).
    pub fn msg(&self) -> &'static str {
        self.parts().1
    }

    /// The CNI error details.
    pub fn details(&self) -> String {
        self.parts().2.into_owned()
    }

    /// ipamd could not be reached, or not in time: the caller may retry
    /// later (DEL spools the release instead).
    pub fn is_try_again_later(&self) -> bool {
        self.code() == code::TRY_AGAIN_LATER
    }

    pub fn env(details: impl Into<String>) -> Self {
        Self::InvalidEnv(details.into())
    }

    pub fn config(details: impl Into<String>) -> Self {
        Self::InvalidConfig(details.into())
    }

    /// A datapath failure known only by its description.
    pub fn datapath(details: impl Into<String>) -> Self {
        Self::Datapath {
            context: details.into(),
            cause: None,
        }
    }

    /// A datapath step (`what`) that failed with `cause` (errno kept).
    pub fn datapath_by(what: impl Into<String>, cause: impl Into<DatapathCause>) -> Self {
        Self::Datapath {
            context: what.into(),
            cause: Some(cause.into()),
        }
    }

    /// The netlink error behind a datapath failure, if that is what it is.
    pub fn netlink_cause(&self) -> Option<&NetlinkError> {
        match self {
            Self::Datapath {
                cause: Some(DatapathCause::Netlink(e)),
                ..
            } => Some(e),
            _ => None,
        }
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (_, msg, details) = self.parts();
        write!(f, "{msg}: {details}")
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
        let (code, msg, details) = self.parts();
        serde_json::to_string(&ErrorJson {
            cni_version,
            code,
            msg,
            details: &details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{code},\"msg\":\"error\"}}"))
    }
}

impl From<NetlinkError> for CniError {
    fn from(e: NetlinkError) -> Self {
        Self::datapath_by("", e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(e: &CniError) -> serde_json::Value {
        serde_json::from_str(&e.to_json("1.1.0")).unwrap()
    }

    #[test]
    fn datapath_keeps_the_errno_and_prints_context_then_cause() {
        let e = CniError::datapath_by(
            "creating macvlan eth0",
            NetlinkError::Kernel {
                op: "create macvlan",
                target: "eth0".into(),
                errno: nix::errno::Errno::EEXIST,
            },
        );
        assert_eq!(e.code(), code::DATAPATH);
        assert_eq!(
            e.netlink_cause().and_then(NetlinkError::errno),
            Some(nix::errno::Errno::EEXIST)
        );
        let j = json(&e);
        assert_eq!(j["code"], 100);
        assert_eq!(j["msg"], "setting up the pod network failed");
        assert_eq!(
            j["details"],
            format!(
                "creating macvlan eth0: create macvlan eth0: {} (EEXIST)",
                nix::errno::Errno::EEXIST.desc()
            )
        );
        assert!(std::error::Error::source(&e).is_some());
    }

    #[test]
    fn a_failed_spool_keeps_the_release_errors_code_and_message() {
        let e = CniError::SpoolFailed {
            release: Box::new(CniError::TryAgainLater("etcd down".into())),
            dir: "/run/rackline".into(),
            cause: std::io::Error::other("disk full"),
        };
        let j = json(&e);
        assert_eq!(j["code"], 11);
        assert_eq!(
            j["msg"],
            "rackline-ipamd is busy, starting or cannot reach etcd"
        );
        assert_eq!(
            j["details"],
            "etcd down; spooling the release under /run/rackline failed too: disk full"
        );
        assert!(e.is_try_again_later());
    }

    #[test]
    fn display_is_msg_then_details_and_empty_details_are_left_out_of_json() {
        let e = CniError::config("name is missing");
        assert_eq!(
            e.to_string(),
            "invalid network configuration: name is missing"
        );
        let j = json(&CniError::NotAvailable(String::new()));
        assert_eq!(j["code"], 50);
        assert!(j.get("details").is_none(), "{j}");
        assert_eq!(j["cniVersion"], "1.1.0");
    }

    #[test]
    fn conflicts_exhausted_appends_the_final_allocate_error() {
        let e = CniError::ConflictsExhausted {
            attempts: 2,
            network: "blue".into(),
            list: "10.0.0.5 (in use by MAC aa), 10.0.0.6 (in use by MAC bb)".into(),
            then: Some(Box::new(CniError::Exhausted("none left".into()))),
        };
        assert_eq!(e.code(), code::ADDRESS_CONFLICT);
        assert!(e.details().ends_with("; then: none left"), "{e}");
    }
}
