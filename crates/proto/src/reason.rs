//! Why ipamd refused a call, as a typed reason on the gRPC status.
//!
//! The reason travels as a `google.rpc.ErrorInfo` status detail (domain
//! [`DOMAIN`]) beside the unchanged gRPC code and message, so a client maps
//! the reason instead of guessing from codes that several refusals share.
//! An older ipamd sends no detail: clients keep a code-based fallback
//! ([`IpamReason::from_legacy_code`]). The strings are wire format: never
//! rename one, only add.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of ipamd's reasons.
pub const DOMAIN: &str = "ipamd.rackline.io";

/// Every reason ipamd gives, defined once for ipamd (sets it) and the
/// plugin (maps it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpamReason {
    /// The network does not exist.
    UnknownNetwork,
    /// CHECK: the attachment holds no lease.
    NoLease,
    /// The network has no free address.
    Exhausted,
    /// The request is malformed.
    InvalidRequest,
    /// A pod annotation ipamd reads is malformed.
    BadAnnotation,
    /// etcd cannot be reached.
    Unavailable,
    /// ipamd is still starting.
    NotReady,
    /// NetworkPolicy is enforced and its caches are not synced yet.
    PolicyNotSynced,
    /// Lost a race for the address with another writer; retry.
    Contended,
    /// The node has no rack in this network.
    NotInRack,
    /// The sticky pod's identity is live on another node.
    StickyLiveElsewhere,
    /// The sticky pod's address belongs to another rack (`strict`).
    StickyWrongRack,
    /// None of the requested addresses can be given.
    RequestedAddress,
    /// The store failed.
    Store,
}

impl IpamReason {
    pub const ALL: [IpamReason; 14] = [
        Self::UnknownNetwork,
        Self::NoLease,
        Self::Exhausted,
        Self::InvalidRequest,
        Self::BadAnnotation,
        Self::Unavailable,
        Self::NotReady,
        Self::PolicyNotSynced,
        Self::Contended,
        Self::NotInRack,
        Self::StickyLiveElsewhere,
        Self::StickyWrongRack,
        Self::RequestedAddress,
        Self::Store,
    ];

    /// The wire string (`ErrorInfo.reason`: `[A-Z0-9_]+`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownNetwork => "UNKNOWN_NETWORK",
            Self::NoLease => "NO_LEASE",
            Self::Exhausted => "EXHAUSTED",
            Self::InvalidRequest => "INVALID_REQUEST",
            Self::BadAnnotation => "BAD_ANNOTATION",
            Self::Unavailable => "UNAVAILABLE",
            Self::NotReady => "NOT_READY",
            Self::PolicyNotSynced => "POLICY_NOT_SYNCED",
            Self::Contended => "CONTENDED",
            Self::NotInRack => "NOT_IN_RACK",
            Self::StickyLiveElsewhere => "STICKY_LIVE_ELSEWHERE",
            Self::StickyWrongRack => "STICKY_WRONG_RACK",
            Self::RequestedAddress => "REQUESTED_ADDRESS",
            Self::Store => "STORE",
        }
    }

    /// The reason a wire string names; `None` for one this build does not
    /// know (a newer ipamd): the caller falls back to the code.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// The gRPC code ipamd answers this reason with (unchanged from before
    /// reasons existed: older clients map the code).
    pub fn code(self) -> Code {
        match self {
            Self::UnknownNetwork | Self::NoLease => Code::NotFound,
            Self::Exhausted => Code::ResourceExhausted,
            Self::InvalidRequest | Self::BadAnnotation => Code::InvalidArgument,
            Self::Unavailable | Self::NotReady | Self::PolicyNotSynced => Code::Unavailable,
            Self::Contended => Code::Aborted,
            Self::NotInRack | Self::RequestedAddress => Code::FailedPrecondition,
            Self::StickyLiveElsewhere => Code::AlreadyExists,
            Self::StickyWrongRack => Code::OutOfRange,
            Self::Store => Code::Internal,
        }
    }

    /// A status with this reason's code, `message`, and the reason as an
    /// `ErrorInfo` detail.
    pub fn status(self, message: impl Into<String>) -> Status {
        Status::with_error_details(
            self.code(),
            message,
            ErrorDetails::with_error_info(self.as_str(), DOMAIN, std::collections::HashMap::new()),
        )
    }

    /// The reason a status carries: its `ErrorInfo` detail of [`DOMAIN`]
    /// with a known reason. `None` for a status without one (an older
    /// ipamd, or not ipamd's answer at all).
    pub fn of(status: &Status) -> Option<Self> {
        let info = status.get_details_error_info()?;
        (info.domain == DOMAIN)
            .then(|| Self::parse(&info.reason))
            .flatten()
    }

    /// The reason an older ipamd (no detail) meant by `code`, where the
    /// code alone says it. `FailedPrecondition` is a requested address only
    /// when the old metadata tag says so (`legacy_requested_address`);
    /// `NotFound` reads as an unknown network (CHECK's "no lease" shares it).
    pub fn from_legacy_code(code: Code, legacy_requested_address: bool) -> Option<Self> {
        Some(match code {
            Code::NotFound => Self::UnknownNetwork,
            Code::ResourceExhausted => Self::Exhausted,
            Code::InvalidArgument => Self::InvalidRequest,
            Code::Unavailable => Self::Unavailable,
            Code::Aborted => Self::Contended,
            Code::FailedPrecondition if legacy_requested_address => Self::RequestedAddress,
            Code::AlreadyExists => Self::StickyLiveElsewhere,
            Code::OutOfRange => Self::StickyWrongRack,
            _ => return None,
        })
    }
}

impl std::fmt::Display for IpamReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_round_trips_through_its_string() {
        for r in IpamReason::ALL {
            assert_eq!(IpamReason::parse(r.as_str()), Some(r), "{r}");
            assert!(r
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_eq!(IpamReason::parse("SOMETHING_NEWER"), None);
    }

    #[test]
    fn a_status_carries_its_reason_code_and_message() {
        for r in IpamReason::ALL {
            let s = r.status("the message");
            assert_eq!(s.code(), r.code());
            assert_eq!(s.message(), "the message");
            assert_eq!(IpamReason::of(&s), Some(r));
        }
    }

    #[test]
    fn a_status_without_details_or_of_another_domain_has_no_reason() {
        assert_eq!(IpamReason::of(&Status::not_found("x")), None);
        let foreign = Status::with_error_details(
            Code::NotFound,
            "x",
            ErrorDetails::with_error_info(
                "UNKNOWN_NETWORK",
                "example.com",
                std::collections::HashMap::new(),
            ),
        );
        assert_eq!(IpamReason::of(&foreign), None);
    }

    #[test]
    fn the_reason_survives_the_wire_headers() {
        // What the client sees: the status rebuilt from the trailers.
        let s = IpamReason::StickyWrongRack.status("rack r2");
        let response = s.into_http::<tonic::body::Body>();
        let back = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(back.code(), Code::OutOfRange);
        assert_eq!(back.message(), "rack r2");
        assert_eq!(IpamReason::of(&back), Some(IpamReason::StickyWrongRack));
    }
}
