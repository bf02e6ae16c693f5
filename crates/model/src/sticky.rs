//! Sticky addresses: a pod identity (network, namespace, pod name) keeps its
//! address across re-creation. The identity record is the single source of
//! truth for "which address belongs to this identity"; the lease record of
//! that address names the identity back, and both are always written in one
//! etcd transaction.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::network::ValidationError;

mod decide;
mod pin;
pub use decide::{decide, Holder, StickyDecision, StickyFacts};
pub use pin::{pin_at, pin_from, PinAt, PinFrom};

/// Default hold time of a reservation after DEL: long enough for a node
/// drain or a StatefulSet rolling update, short enough that a deleted
/// workload's addresses come back the same day.
pub const DEFAULT_HOLD_SECS: u64 = 30 * 60;

/// Upper bound of a hold time (a year): etcd lease TTLs are int64 seconds,
/// but a hold longer than this is an operator mistake; pin instead.
pub const MAX_HOLD_SECS: u64 = 365 * 24 * 3600;

/// What happens when a sticky pod starts on a node of another rack than
/// the one its reserved address belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CrossRack {
    /// Fail the ADD, naming the rack the address belongs to: the address is
    /// routable only behind that rack's TOR.
    #[default]
    Strict,
    /// Give the pod a new address in its new rack and drop the old
    /// reservation.
    Reallocate,
}

impl CrossRack {
    pub fn as_str(&self) -> &'static str {
        match self {
            CrossRack::Strict => "strict",
            CrossRack::Reallocate => "reallocate",
        }
    }
}

impl std::str::FromStr for CrossRack {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "strict" => Ok(CrossRack::Strict),
            "reallocate" => Ok(CrossRack::Reallocate),
            other => Err(format!(
                "cross-rack policy {other:?}: use strict or reallocate"
            )),
        }
    }
}

/// A network's stickiness policy. Absent on the network = no pod is sticky
/// (operator pins still are). Empty `namespaces` and `pod_patterns` = every
/// pod is sticky.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
/// Stored JSON tolerates unknown fields like `NetworkSpec` (an older ipamd
/// reads what a newer netmaster wrote).
#[serde(rename_all = "camelCase")]
pub struct StickyPolicy {
    /// Only pods in these namespaces (empty = all namespaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Only pods whose name matches one of these regular expressions,
    /// anchored at both ends (e.g. `web-\d+` for a StatefulSet's ordinals).
    /// Empty = every name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pod_patterns: Vec<String>,
    /// How long a deleted sticky pod's address stays reserved for it.
    /// 0 = no reservation (the address is freed at DEL as usual).
    #[serde(default = "default_hold")]
    pub hold_secs: u64,
    #[serde(default)]
    pub cross_rack: CrossRack,
}

fn default_hold() -> u64 {
    DEFAULT_HOLD_SECS
}

impl Default for StickyPolicy {
    fn default() -> Self {
        Self {
            namespaces: Vec::new(),
            pod_patterns: Vec::new(),
            hold_secs: DEFAULT_HOLD_SECS,
            cross_rack: CrossRack::Strict,
        }
    }
}

fn anchored(p: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{p})$"))
}

impl StickyPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |why: String| ValidationError::Sticky(why);
        for ns in &self.namespaces {
            if !is_dns_label(ns) {
                return Err(bad(format!("namespace {ns:?} is not a valid name")));
            }
        }
        for p in &self.pod_patterns {
            anchored(p).map_err(|e| bad(format!("pod pattern {p:?}: {e}")))?;
        }
        if self.hold_secs > MAX_HOLD_SECS {
            return Err(bad(format!(
                "hold time {}s is over a year; pin the address instead",
                self.hold_secs
            )));
        }
        Ok(())
    }

    /// Whether the pod `namespace/name` is sticky under this policy
    /// (compiles the patterns: hold a [`StickyMatcher`] where this is asked
    /// per ADD).
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        self.matcher().matches(namespace, name)
    }

    /// The policy with its patterns compiled once. Patterns are validated
    /// before a policy is stored; one that fails to compile here (a record
    /// written by a newer version) matches nothing.
    pub fn matcher(&self) -> StickyMatcher {
        StickyMatcher {
            namespaces: self.namespaces.clone(),
            patterns: self.pod_patterns.iter().map(|p| anchored(p).ok()).collect(),
        }
    }
}

/// A [`StickyPolicy`]'s selection with compiled patterns (ipamd keeps one per
/// network: matching is on the ADD path).
#[derive(Debug, Clone)]
pub struct StickyMatcher {
    namespaces: Vec<String>,
    /// None: a pattern that did not compile (matches nothing).
    patterns: Vec<Option<regex::Regex>>,
}

impl StickyMatcher {
    pub fn matches(&self, namespace: &str, name: &str) -> bool {
        if name.is_empty() {
            return false;
        }
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == namespace) {
            return false;
        }
        self.patterns.is_empty()
            || self
                .patterns
                .iter()
                .any(|r| r.as_ref().is_some_and(|r| r.is_match(name)))
    }
}

/// Kubernetes namespace and pod names: RFC 1123 labels/subdomains. We only
/// need "no '/' and sane length" for keys; check the stricter form so
/// typos fail early.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.'])
}

/// The identity record `identities/<network>/<namespace>/<pod>`: which
/// address this pod identity owns, live or reserved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    pub network: String,
    pub namespace: String,
    pub name: String,
    pub address: Ipv4Addr,
    /// Set by an operator: the reservation never expires and survives
    /// every DEL until released.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pinned: bool,
    /// The rack the address belongs to (rack-bound networks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default)]
    pub created_unix_ms: i64,
    /// Sticky because the pod asked (annotation `rackline.io/sticky:
    /// "true"`), not because of the network's policy: on a network without
    /// a sticky section its reservation is held for `DEFAULT_HOLD_SECS`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opt_in: bool,
}

impl Identity {
    pub fn display(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ns: &[&str], pats: &[&str]) -> StickyPolicy {
        StickyPolicy {
            namespaces: ns.iter().map(|s| s.to_string()).collect(),
            pod_patterns: pats.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn matching_by_namespace_and_anchored_pattern() {
        let all = policy(&[], &[]);
        assert!(all.matches("default", "anything"));
        assert!(!all.matches("default", ""), "no pod name, no identity");
        let ns = policy(&["db"], &[]);
        assert!(ns.matches("db", "x"));
        assert!(!ns.matches("web", "x"));
        let sts = policy(&[], &[r"web-\d+"]);
        assert!(sts.matches("a", "web-0"));
        assert!(sts.matches("a", "web-12"));
        assert!(!sts.matches("a", "web-0-x"), "anchored at the end");
        assert!(!sts.matches("a", "xweb-0"), "anchored at the start");
        let both = policy(&["db"], &[r"pg-\d+", "redis"]);
        assert!(both.matches("db", "redis"));
        assert!(!both.matches("web", "redis"));
    }

    #[test]
    fn validation_rejects_bad_policies() {
        assert!(policy(&["Bad/ns"], &[]).validate().is_err());
        assert!(policy(&[], &["(unclosed"]).validate().is_err());
        let long = StickyPolicy {
            hold_secs: MAX_HOLD_SECS + 1,
            ..Default::default()
        };
        assert!(long.validate().is_err());
        assert!(policy(&["db"], &[r"web-\d+"]).validate().is_ok());
    }

    #[test]
    fn json_defaults_and_forward_compatible() {
        let p: StickyPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, StickyPolicy::default());
        let p: StickyPolicy =
            serde_json::from_str(r#"{"holdSecs":0,"crossRack":"reallocate"}"#).unwrap();
        assert_eq!(p.hold_secs, 0);
        assert_eq!(p.cross_rack, CrossRack::Reallocate);
        assert!(serde_json::from_str::<StickyPolicy>(r#"{"future":1}"#).is_ok());
    }
}
