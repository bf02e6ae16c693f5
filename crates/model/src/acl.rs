//! Rackline ACLs: operator-written allow/deny rules per network, selecting
//! pods by namespace and (anchored) pod-name pattern like QoS policies, and
//! the per-network default that applies when no rule matches.
//!
//! Stored by netmaster under `acl/<network>/<namespace>/<name>` (one ACL)
//! and `acl/<network>/.default` (the network's default; absent = allow-all,
//! today's behaviour). [`compile`] turns the ACLs selecting one pod into the
//! ACL [`Layer`] of its [`crate::filter::PodFilter`].
//!
//! Evaluation is first match: every ACL selecting the pod contributes its
//! rules in `(order, namespace, name)` order, and the first rule matching a
//! packet decides; none → the network default of that direction.

use std::fmt;
use std::str::FromStr;

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};

use crate::filter::{Chain, Layer, Peer, PortMatch, Proto, Rule, Verdict};

/// At most this many rules per direction in one ACL: each becomes one or
/// more nftables rules evaluated per new connection.
pub const MAX_RULES: usize = 256;
/// At most this many CIDRs or port ranges in one rule.
pub const MAX_ITEMS: usize = 64;
/// The name of the per-network default record under the network's prefix;
/// namespaces are DNS labels, so it never collides with one.
pub const DEFAULT_KEY: &str = ".default";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclError {
    #[error("invalid ACL {0}: {1}")]
    Acl(String, String),
    #[error("invalid ACL rule {0:?}: {1}")]
    Rule(String, String),
    #[error("invalid pod pattern {0:?}: {1}")]
    Pattern(String, String),
}

/// One operator rule. Matches when the remote address is in any of `cidrs`
/// (empty = any address) and, when `protocol` is set, the packet is of that
/// protocol and (when `ports` is not empty) its destination port is in one
/// of the ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AclRule {
    pub action: Verdict,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cidrs: Vec<Ipv4Network>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Proto>,
    /// Inclusive destination port ranges (`(80, 80)` is port 80).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<(u16, u16)>,
}

impl AclRule {
    pub fn validate(&self) -> Result<(), AclError> {
        let bad = |why: String| AclError::Rule(self.to_string(), why);
        if self.cidrs.len() > MAX_ITEMS || self.ports.len() > MAX_ITEMS {
            return Err(bad(format!(
                "at most {MAX_ITEMS} CIDRs and {MAX_ITEMS} port ranges"
            )));
        }
        for c in &self.cidrs {
            if c.network() != c.ip() {
                return Err(bad(format!(
                    "CIDR {c} has host bits set; did you mean {}/{}?",
                    c.network(),
                    c.prefix()
                )));
            }
        }
        if !self.ports.is_empty() {
            match self.protocol {
                None => return Err(bad("ports need a protocol (tcp, udp or sctp)".into())),
                Some(Proto::Icmp) => return Err(bad("icmp has no ports".into())),
                Some(_) => {}
            }
        }
        for &(lo, hi) in &self.ports {
            if lo == 0 || lo > hi {
                return Err(bad(format!(
                    "port range {lo}-{hi}: ports are 1-65535, low end first"
                )));
            }
        }
        Ok(())
    }

    /// The filter rule this compiles to.
    pub fn compile(&self) -> Rule {
        let peers = self
            .cidrs
            .iter()
            .map(|&net| Peer::Cidr {
                net,
                except: Vec::new(),
            })
            .collect();
        let ports = match self.protocol {
            None => Vec::new(),
            Some(proto) if self.ports.is_empty() => vec![PortMatch { proto, ports: None }],
            Some(proto) => self
                .ports
                .iter()
                .map(|&r| PortMatch {
                    proto,
                    ports: Some(r),
                })
                .collect(),
        };
        Rule {
            verdict: self.action,
            peers,
            ports,
        }
    }
}

/// The command-line form: `<allow|deny> [<proto>[:<ports>]] [<cidr>,...]`,
/// e.g. `allow tcp:80,8000-8080 10.0.0.0/8`, `deny icmp`, `deny 0.0.0.0/0`.
impl FromStr for AclRule {
    type Err = AclError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| AclError::Rule(s.to_string(), why);
        let mut words = s.split_whitespace();
        let action = match words.next().map(str::to_ascii_lowercase).as_deref() {
            Some("allow") => Verdict::Allow,
            Some("deny") => Verdict::Deny,
            _ => return Err(bad("start with allow or deny".into())),
        };
        let mut rule = AclRule {
            action,
            cidrs: Vec::new(),
            protocol: None,
            ports: Vec::new(),
        };
        for w in words {
            let first = w.chars().next().unwrap_or('0');
            if first.is_ascii_digit() {
                if !rule.cidrs.is_empty() {
                    return Err(bad("give the CIDRs as one comma-separated list".into()));
                }
                for c in w.split(',').filter(|c| !c.is_empty()) {
                    let c = if c.contains('/') {
                        c.to_string()
                    } else {
                        format!("{c}/32")
                    };
                    let net: Ipv4Network =
                        c.parse().map_err(|e| bad(format!("CIDR {c:?}: {e}")))?;
                    rule.cidrs.push(net);
                }
            } else {
                if rule.protocol.is_some() {
                    return Err(bad("one protocol per rule".into()));
                }
                let (proto, ports) = match w.split_once(':') {
                    Some((p, ports)) => (p, Some(ports)),
                    None => (w, None),
                };
                rule.protocol = Some(proto.parse().map_err(bad)?);
                for r in ports.unwrap_or("").split(',').filter(|r| !r.is_empty()) {
                    let (lo, hi) = r.split_once('-').unwrap_or((r, r));
                    let p = |x: &str| {
                        x.parse::<u16>()
                            .map_err(|_| bad(format!("port {x:?} is not 1-65535")))
                    };
                    rule.ports.push((p(lo)?, p(hi)?));
                }
            }
        }
        rule.validate()?;
        Ok(rule)
    }
}

impl fmt::Display for AclRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.action {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })?;
        if let Some(p) = self.protocol {
            write!(f, " {}", p.as_str())?;
            let ports: Vec<String> = self
                .ports
                .iter()
                .map(|&(lo, hi)| {
                    if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    }
                })
                .collect();
            if !ports.is_empty() {
                write!(f, ":{}", ports.join(","))?;
            }
        }
        if !self.cidrs.is_empty() {
            let c: Vec<String> = self.cidrs.iter().map(|c| c.to_string()).collect();
            write!(f, " {}", c.join(","))?;
        }
        Ok(())
    }
}

/// One ACL, stored under `acl/<network>/<namespace>/<name>`. Without
/// `podPattern` it covers the whole namespace; with one, the pods whose name
/// matches the anchored regex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Acl {
    pub network: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_pattern: Option<String>,
    /// Lower orders are evaluated first (ties: namespace, then name).
    #[serde(default)]
    pub order: u32,
    /// Traffic to the pod (the remote end is the source).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<AclRule>,
    /// Traffic from the pod (the remote end is the destination).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<AclRule>,
}

impl Acl {
    pub fn id(&self) -> String {
        format!("{}/{}/{}", self.network, self.namespace, self.name)
    }

    pub fn validate(&self) -> Result<(), AclError> {
        let bad = |why: String| AclError::Acl(self.id(), why);
        crate::network::validate_name(&self.network).map_err(|e| bad(e.to_string()))?;
        crate::network::validate_name(&self.namespace)
            .map_err(|_| bad("namespace must be a DNS label".into()))?;
        crate::network::validate_name(&self.name)
            .map_err(|_| bad("name must be a DNS label".into()))?;
        if let Some(p) = &self.pod_pattern {
            crate::qos::compile_pattern(p).map_err(|e| match e {
                crate::qos::QosError::Pattern(p, why) => AclError::Pattern(p, why),
                other => bad(other.to_string()),
            })?;
        }
        if self.ingress.is_empty() && self.egress.is_empty() {
            return Err(bad(
                "no rules: give at least one ingress or egress rule".into()
            ));
        }
        if self.ingress.len() > MAX_RULES || self.egress.len() > MAX_RULES {
            return Err(bad(format!("at most {MAX_RULES} rules per direction")));
        }
        for r in self.ingress.iter().chain(&self.egress) {
            r.validate()?;
        }
        Ok(())
    }

    /// Whether this ACL covers pod `namespace/pod`.
    pub fn matches(&self, namespace: &str, pod: &str) -> bool {
        if self.namespace != namespace {
            return false;
        }
        match &self.pod_pattern {
            None => true,
            Some(p) => crate::qos::compile_pattern(p).is_ok_and(|re| re.is_match(pod)),
        }
    }
}

/// A network's default verdicts, stored under `acl/<network>/.default`.
/// Absent = allow both ways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AclDefault {
    pub ingress: Verdict,
    pub egress: Verdict,
}

impl Default for AclDefault {
    fn default() -> Self {
        AclDefault {
            ingress: Verdict::Allow,
            egress: Verdict::Allow,
        }
    }
}

/// The ACL layer for pod `namespace/pod` from the ACLs of its network
/// (`acls` may hold other networks' too; they are skipped by `network`).
pub fn compile<'a>(
    network: &str,
    acls: impl IntoIterator<Item = &'a Acl>,
    default: AclDefault,
    namespace: &str,
    pod: &str,
) -> Layer {
    let mut selected: Vec<&Acl> = acls
        .into_iter()
        .filter(|a| a.network == network && a.matches(namespace, pod))
        .collect();
    selected
        .sort_by(|a, b| (a.order, &a.namespace, &a.name).cmp(&(b.order, &b.namespace, &b.name)));
    let chain = |rules: &mut dyn Iterator<Item = &AclRule>, default| Chain {
        rules: rules.map(AclRule::compile).collect(),
        default,
    };
    Layer {
        ingress: chain(
            &mut selected.iter().flat_map(|a| a.ingress.iter()),
            default.ingress,
        ),
        egress: chain(
            &mut selected.iter().flat_map(|a| a.egress.iter()),
            default.egress,
        ),
    }
}

#[cfg(test)]
#[path = "acl_tests.rs"]
mod tests;
