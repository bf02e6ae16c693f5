//! Per-pod bandwidth (QoS): the limits operators set at each level, their
//! validation, and the ONE function that layers them.
//!
//! Units follow kubelet and the CNI bandwidth convention: rates in bits per
//! second, bursts in bits. Levels, least to most specific:
//!
//! 1. the network's `qos.default`,
//! 2. the node class (machine type) `qos.nodeClasses[<class>]`,
//! 3. the namespace/application policy stored in netmaster ([`QosPolicy`]),
//! 4. the pod's own request (`runtimeConfig.bandwidth`),
//!
//! then clamped by the network's `qos.max`. Rate and burst of one direction
//! are taken TOGETHER from the most specific level that sets that
//! direction's rate: a burst tuned for 1 Gbit/s makes no sense under a
//! 10 Mbit/s rate from another level. Ingress and egress resolve
//! independently.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Smallest rate accepted: kubelet's own lower bound for the bandwidth
/// annotations (1k). Below it tbf's byte-granular rate is meaningless.
pub const MIN_RATE: u64 = 1_000;
/// Largest rate accepted: 1 Tbit/s. Anything higher is a typo (kubelet
/// allows up to 1P, but no node uplink comes near that).
pub const MAX_RATE: u64 = 1_000_000_000_000;
/// Smallest burst: one full 1500-byte Ethernet frame, else tbf can never
/// send a full-size packet (the kernel only warns, then drops them all).
pub const MIN_BURST: u64 = 1514 * 8;
/// Largest burst: the kernel keeps tbf's burst in bytes in a u32.
pub const MAX_BURST: u64 = (u32::MAX as u64) * 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QosError {
    #[error("{what}: rate must be set when a burst is given")]
    BurstWithoutRate { what: String },
    #[error("{what}: rate {rate} bit/s is outside {MIN_RATE}..={MAX_RATE} (1k..1T)")]
    Rate { what: String, rate: u64 },
    #[error("{what}: burst {burst} bit is outside {MIN_BURST}..={MAX_BURST} (one 1514-byte frame .. 4 GiB)")]
    Burst { what: String, burst: u64 },
    #[error("invalid quantity {0:?}: {1}")]
    Quantity(String, String),
    #[error("invalid bandwidth {0:?}: {1}")]
    Syntax(String, String),
    #[error("invalid node class name {0:?}: use 1-63 lowercase letters, digits and '-'")]
    ClassName(String),
    #[error("invalid pod pattern {0:?}: {1}")]
    Pattern(String, String),
    #[error("invalid policy {0}: {1}")]
    Policy(String, String),
}

/// Limits for one pod interface. `None` = this level does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress_burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_rate: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_burst: Option<u64>,
}

/// One direction's limit after resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// bits per second.
    pub rate: u64,
    /// bits; `None` = let the datapath derive one from the rate.
    pub burst: Option<u64>,
}

impl Bandwidth {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn ingress(&self) -> Option<Limit> {
        self.ingress_rate.map(|rate| Limit {
            rate,
            burst: self.ingress_burst,
        })
    }

    pub fn egress(&self) -> Option<Limit> {
        self.egress_rate.map(|rate| Limit {
            rate,
            burst: self.egress_burst,
        })
    }

    /// Rates and bursts within bounds; a burst only with its rate.
    pub fn validate(&self, what: &str) -> Result<(), QosError> {
        for (dir, rate, burst) in [
            ("ingress", self.ingress_rate, self.ingress_burst),
            ("egress", self.egress_rate, self.egress_burst),
        ] {
            let what = format!("{what} {dir}");
            match (rate, burst) {
                (None, Some(_)) => return Err(QosError::BurstWithoutRate { what }),
                (Some(rate), _) if !(MIN_RATE..=MAX_RATE).contains(&rate) => {
                    return Err(QosError::Rate { what, rate })
                }
                (_, Some(burst)) if !(MIN_BURST..=MAX_BURST).contains(&burst) => {
                    return Err(QosError::Burst { what, burst })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Parses the CLI form `ingress=100M,egress=50M,ingress-burst=1M,
    /// egress-burst=512k` (any subset, at least one key).
    pub fn parse_spec(s: &str) -> Result<Self, QosError> {
        let bad = |why: &str| QosError::Syntax(s.to_string(), why.to_string());
        let mut b = Bandwidth::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("expected key=value pairs"))?;
            let v = parse_quantity(v.trim())?;
            let slot = match k.trim() {
                "ingress" | "ingress-rate" => &mut b.ingress_rate,
                "egress" | "egress-rate" => &mut b.egress_rate,
                "ingress-burst" => &mut b.ingress_burst,
                "egress-burst" => &mut b.egress_burst,
                other => {
                    return Err(bad(&format!(
                        "unknown key {other:?}; use ingress, egress, ingress-burst, egress-burst"
                    )))
                }
            };
            if slot.replace(v).is_some() {
                return Err(bad(&format!("{} given twice", k.trim())));
            }
        }
        if b.is_empty() {
            return Err(bad("empty"));
        }
        b.validate("bandwidth")?;
        Ok(b)
    }
}

impl fmt::Display for Bandwidth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (k, v) in [
            ("ingress", self.ingress_rate),
            ("ingress-burst", self.ingress_burst),
            ("egress", self.egress_rate),
            ("egress-burst", self.egress_burst),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", format_quantity(v)));
            }
        }
        if parts.is_empty() {
            f.write_str("-")
        } else {
            f.write_str(&parts.join(","))
        }
    }
}

/// Parses a Kubernetes-style quantity: `10M`, `1G`, `1.5G`, `512Ki`,
/// `100000`. Decimal suffixes k/M/G/T/P, binary Ki/Mi/Gi/Ti/Pi. Fractions
/// must come out whole.
pub fn parse_quantity(s: &str) -> Result<u64, QosError> {
    let bad = |why: &str| QosError::Quantity(s.to_string(), why.to_string());
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, suffix) = t.split_at(split);
    let mult: u64 = match suffix {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => {
            return Err(bad(
                "unknown suffix; use k, M, G, T, P, Ki, Mi, Gi, Ti or Pi",
            ))
        }
    };
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.matches('.').count() > 1
    {
        return Err(bad("expected a number"));
    }
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    let too_big = || bad("too large");
    let int: u64 = int.parse().map_err(|_| too_big())?;
    let mut value = int.checked_mul(mult).ok_or_else(too_big)?;
    if !frac.is_empty() {
        let scale = 10u64
            .checked_pow(frac.len() as u32)
            .ok_or_else(|| bad("too many decimals"))?;
        let f: u64 = frac.parse().map_err(|_| bad("bad fraction"))?;
        let scaled = u128::from(f) * u128::from(mult);
        if scaled % u128::from(scale) != 0 {
            return Err(bad("fraction does not give a whole number"));
        }
        let part = u64::try_from(scaled / u128::from(scale)).map_err(|_| too_big())?;
        value = value.checked_add(part).ok_or_else(too_big)?;
    }
    Ok(value)
}

/// The shortest exact decimal-suffix form (`10M`, `1500k`, `12345`).
pub fn format_quantity(v: u64) -> String {
    for (mult, s) in [
        (1_000_000_000_000u64, "T"),
        (1_000_000_000, "G"),
        (1_000_000, "M"),
        (1_000, "k"),
    ] {
        if v >= mult && v % mult == 0 {
            return format!("{}{s}", v / mult);
        }
    }
    v.to_string()
}

/// The network's QoS section. All optional; an empty section is not stored,
/// so records written before QoS existed decode unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QosSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<Bandwidth>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_classes: BTreeMap<String, Bandwidth>,
}

impl QosSpec {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    pub fn validate(&self) -> Result<(), QosError> {
        if let Some(d) = &self.default {
            d.validate("qos.default")?;
        }
        if let Some(m) = &self.max {
            m.validate("qos.max")?;
        }
        for (name, b) in &self.node_classes {
            validate_class_name(name)?;
            b.validate(&format!("qos.nodeClasses.{name}"))?;
        }
        Ok(())
    }
}

pub fn validate_class_name(name: &str) -> Result<(), QosError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    ok.then_some(())
        .ok_or_else(|| QosError::ClassName(name.to_string()))
}

/// A namespace or application policy, stored by netmaster under
/// `qos/<network>/<namespace>/<name>`. Without `podPattern` it covers the
/// whole namespace; with one, only pods whose name matches the (anchored)
/// regex — an application's pods, e.g. `web-.*`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QosPolicy {
    pub network: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_pattern: Option<String>,
    pub bandwidth: Bandwidth,
}

impl QosPolicy {
    pub fn validate(&self) -> Result<(), QosError> {
        let id = format!("{}/{}/{}", self.network, self.namespace, self.name);
        let bad = |why: &str| QosError::Policy(id.clone(), why.to_string());
        crate::network::validate_name(&self.network).map_err(|e| bad(&e.to_string()))?;
        // Kubernetes namespaces are DNS labels; policy names the same.
        crate::network::validate_name(&self.namespace)
            .map_err(|_| bad("namespace must be a DNS label"))?;
        crate::network::validate_name(&self.name).map_err(|_| bad("name must be a DNS label"))?;
        if let Some(p) = &self.pod_pattern {
            compile_pattern(p)?;
        }
        if self.bandwidth.is_empty() {
            return Err(bad("bandwidth is empty"));
        }
        self.bandwidth.validate(&format!("policy {id}"))
    }

    /// Whether this policy covers pod `namespace/pod`.
    pub fn matches(&self, namespace: &str, pod: &str) -> bool {
        if self.namespace != namespace {
            return false;
        }
        match &self.pod_pattern {
            None => true,
            Some(p) => compile_pattern(p).is_ok_and(|re| re.is_match(pod)),
        }
    }
}

/// Patterns are anchored: `web` matches the pod `web` only, `web-.*` its
/// replicas. Unanchored matching would make `db` cover `mongodb-0`.
pub(crate) fn compile_pattern(p: &str) -> Result<regex::Regex, QosError> {
    if p.is_empty() || p.len() > 256 {
        return Err(QosError::Pattern(p.into(), "1-256 characters".into()));
    }
    regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| QosError::Pattern(p.into(), e.to_string()))
}

/// The policy for a pod among those of its network: a matching policy with
/// a pod pattern (an application) beats a namespace-wide one; among equals
/// the lowest name wins, so the choice never depends on etcd order.
pub fn select_policy<'a>(
    policies: impl IntoIterator<Item = &'a QosPolicy>,
    namespace: &str,
    pod: &str,
) -> Option<&'a QosPolicy> {
    policies
        .into_iter()
        .filter(|p| p.matches(namespace, pod))
        .min_by(|a, b| (a.pod_pattern.is_none(), &a.name).cmp(&(b.pod_pattern.is_none(), &b.name)))
}

/// Which level decided a direction (for logs and `racklinectl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    NetworkDefault,
    NodeClass,
    Policy,
    Pod,
    /// No level set it; the network maximum applies as a cap.
    Max,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NetworkDefault => "network-default",
            Self::NodeClass => "node-class",
            Self::Policy => "policy",
            Self::Pod => "pod",
            Self::Max => "max",
        })
    }
}

/// The burst a direction gets when no level sets one: 10 ms at the rate,
/// and at least four full frames. tbf refills by time, so a bucket smaller
/// than what the rate earns between two timer wake-ups under load caps the
/// throughput below the rate; 10 ms covers a loaded 2-core node (HZ=250
/// jiffies are 4 ms) and is what the rate yields in 10 ms anyway.
pub fn default_burst(rate: u64) -> u64 {
    (rate / 100).clamp(4 * MIN_BURST, MAX_BURST)
}

/// One direction after layering and clamping; the burst is always concrete
/// ([`default_burst`] when no level set one) so CHECK compares exact values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub limit: Limit,
    pub level: Level,
    /// The network maximum lowered the rate or the burst.
    pub clamped: bool,
}

/// The shaping a pod gets. Both `None` never happens: then `resolve`
/// answers `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effective {
    pub ingress: Option<Resolved>,
    pub egress: Option<Resolved>,
}

impl Effective {
    /// The limits as a plain [`Bandwidth`] (what the datapath applies).
    pub fn bandwidth(&self) -> Bandwidth {
        Bandwidth {
            ingress_rate: self.ingress.map(|r| r.limit.rate),
            ingress_burst: self.ingress.and_then(|r| r.limit.burst),
            egress_rate: self.egress.map(|r| r.limit.rate),
            egress_burst: self.egress.and_then(|r| r.limit.burst),
        }
    }
}

impl fmt::Display for Effective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let one = |r: Option<Resolved>| match r {
            None => "unlimited".to_string(),
            Some(r) => format!(
                "{}bit/s{} from {}{}",
                format_quantity(r.limit.rate),
                r.limit
                    .burst
                    .map(|b| format!(" burst {}bit", format_quantity(b)))
                    .unwrap_or_default(),
                r.level,
                if r.clamped { " (clamped by max)" } else { "" }
            ),
        };
        write!(
            f,
            "ingress {}, egress {}",
            one(self.ingress),
            one(self.egress)
        )
    }
}

/// Every level's say, least specific first. `None` = the level is absent.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layers<'a> {
    pub network_default: Option<&'a Bandwidth>,
    pub node_class: Option<&'a Bandwidth>,
    pub policy: Option<&'a Bandwidth>,
    pub pod: Option<&'a Bandwidth>,
    pub max: Option<&'a Bandwidth>,
}

/// Layers the levels: per direction the most specific level that sets a
/// rate wins (with its burst), then the network maximum caps rate and
/// burst. A direction no level sets gets the maximum itself (the cap holds
/// for every pod). Every input is validated first, so a bad pod request is
/// an error even where the max would hide it.
pub fn resolve(layers: &Layers<'_>) -> Result<Option<Effective>, QosError> {
    let named = [
        (
            layers.network_default,
            Level::NetworkDefault,
            "network default",
        ),
        (layers.node_class, Level::NodeClass, "node class"),
        (layers.policy, Level::Policy, "policy"),
        (layers.pod, Level::Pod, "pod request"),
        (layers.max, Level::Max, "network max"),
    ];
    for (b, _, what) in named {
        if let Some(b) = b {
            b.validate(what)?;
        }
    }
    let ingress = pick(&named, layers.max, Bandwidth::ingress);
    let egress = pick(&named, layers.max, Bandwidth::egress);
    Ok((ingress.is_some() || egress.is_some()).then_some(Effective { ingress, egress }))
}

/// One direction: the most specific of the first four levels that sets it,
/// capped by the network maximum (or the maximum alone).
fn pick(
    named: &[(Option<&Bandwidth>, Level, &str); 5],
    max: Option<&Bandwidth>,
    get: fn(&Bandwidth) -> Option<Limit>,
) -> Option<Resolved> {
    let max = max.and_then(get);
    let chosen = named[..4]
        .iter()
        .rev()
        .find_map(|(b, level, _)| b.and_then(get).map(|l| (l, *level)));
    match (chosen, max) {
        (None, None) => None,
        (None, Some(m)) => Some(Resolved {
            limit: concrete(m),
            level: Level::Max,
            clamped: false,
        }),
        (Some((l, level)), None) => Some(Resolved {
            limit: concrete(l),
            level,
            clamped: false,
        }),
        (Some((l, level)), Some(m)) => {
            let want = concrete(l);
            let rate = want.rate.min(m.rate);
            // The default burst follows the (clamped) rate; an explicit
            // burst is kept. Either is then capped by the max's burst.
            let burst = l.burst.unwrap_or_else(|| default_burst(rate));
            let burst = m.burst.map_or(burst, |mb| burst.min(mb));
            let clamped = rate < l.rate || l.burst.is_some_and(|b| burst < b);
            Some(Resolved {
                limit: Limit {
                    rate,
                    burst: Some(burst),
                },
                level,
                clamped,
            })
        }
    }
}

/// A limit with its burst made explicit (the default for its rate).
fn concrete(l: Limit) -> Limit {
    Limit {
        rate: l.rate,
        burst: Some(l.burst.unwrap_or_else(|| default_burst(l.rate))),
    }
}

#[cfg(test)]
#[path = "qos_tests.rs"]
mod tests;
