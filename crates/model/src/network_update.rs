//! `racklinectl network update`: a patch of a network definition. Only what
//! the patch names changes. Lists are edited, not replaced: cleared first
//! (when asked), then entries removed (each must be there), then added
//! (an entry already there is kept once), so "exclude one more address"
//! never risks dropping the others.
//!
//! Pure: applying a patch needs no etcd. Whether the result is acceptable
//! against what runs on the network (leases, blocks) is decided by
//! netmaster with [`Refusal`]s built here, so the messages are the same
//! whoever checks.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::qos::Bandwidth;
use crate::{
    AddrRange, CrossRack, NetworkSpec, ProbeSpec, RouteSpec, StickyPolicy, ValidationError,
};

/// An edit of one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEdit<T, K = T> {
    pub clear: bool,
    /// Entries (or, for routes, destinations) to remove; each must exist.
    pub remove: Vec<K>,
    pub add: Vec<T>,
}

impl<T, K> Default for ListEdit<T, K> {
    fn default() -> Self {
        Self {
            clear: false,
            remove: Vec::new(),
            add: Vec::new(),
        }
    }
}

impl<T, K> ListEdit<T, K> {
    pub fn is_empty(&self) -> bool {
        !self.clear && self.remove.is_empty() && self.add.is_empty()
    }
}

/// A setting that can be set or cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit<T> {
    Set(T),
    Clear,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StickyEdit {
    /// No stickiness at all (the policy is removed). Exclusive with the rest.
    pub disable: bool,
    /// Stickiness on (every pod, unless narrowed); implied by any field below.
    pub enable: bool,
    pub namespaces: ListEdit<String>,
    pub pod_patterns: ListEdit<String>,
    pub hold_secs: Option<u64>,
    pub cross_rack: Option<CrossRack>,
}

impl StickyEdit {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QosEdit {
    pub default: Option<Edit<Bandwidth>>,
    pub max: Option<Edit<Bandwidth>>,
    /// Node classes: `add` sets (or replaces) a class's bandwidth.
    pub classes: ListEdit<(String, Bandwidth), String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeEdit {
    /// Probe off. Exclusive with the rest.
    pub disable: bool,
    /// Probe on (defaults); implied by any field below.
    pub enable: bool,
    pub count: Option<u32>,
    pub interval_ms: Option<u32>,
    pub quarantine_secs: Option<u64>,
}

impl ProbeEdit {
    fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// The changes of one `network update`. `None` / empty = unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPatch {
    /// Immutable: accepted only when equal to the stored value.
    pub subnet: Option<Ipv4Network>,
    /// Immutable: accepted only when equal to the stored value.
    pub gateway: Option<Ipv4Addr>,
    /// Refused while pods run on the network (see [`Refusal`]).
    pub master: Option<String>,
    /// Some(None) = untagged. Refused while pods run on the network.
    pub vlan: Option<Option<u16>>,
    pub mtu: Option<u32>,
    /// Refused while the network has blocks.
    pub block_size: Option<u32>,
    pub exclude: ListEdit<AddrRange>,
    /// Removed by destination.
    pub routes: ListEdit<RouteSpec, Ipv4Network>,
    pub host_routes: ListEdit<Ipv4Network>,
    pub sticky: StickyEdit,
    pub qos: QosEdit,
    pub probe: ProbeEdit,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    #[error("{field} cannot be changed ({from} -> {to}): {why}")]
    Immutable {
        field: &'static str,
        from: String,
        to: String,
        why: String,
    },
    #[error("{list}: {item} is not in the list (it has {has})")]
    NotListed {
        list: &'static str,
        item: String,
        has: String,
    },
    #[error("{0}")]
    Conflicting(String),
    #[error("nothing to change: give at least one setting")]
    Empty,
    #[error(transparent)]
    Invalid(#[from] ValidationError),
}

impl NetworkPatch {
    pub fn is_empty(&self) -> bool {
        self.subnet.is_none()
            && self.gateway.is_none()
            && self.master.is_none()
            && self.vlan.is_none()
            && self.mtu.is_none()
            && self.block_size.is_none()
            && self.exclude.is_empty()
            && self.routes.is_empty()
            && self.host_routes.is_empty()
            && self.sticky.is_empty()
            && self.qos == QosEdit::default()
            && self.probe.is_empty()
    }

    /// `old` with this patch applied and validated. Subnet and gateway are
    /// refused here (every lease, block, rack binding and running pod is
    /// built on them: delete and re-create the network); master, VLAN and
    /// block size depend on what runs, see [`Refusal`].
    pub fn apply(&self, old: &NetworkSpec) -> Result<NetworkSpec, PatchError> {
        if self.is_empty() {
            return Err(PatchError::Empty);
        }
        let mut n = old.clone();
        self.check_immutable(old)?;
        if let Some(m) = &self.master {
            n.master = m.clone();
        }
        if let Some(v) = self.vlan {
            n.vlan = v;
        }
        if let Some(m) = self.mtu {
            n.mtu = m;
        }
        if let Some(b) = self.block_size {
            n.block_size = b;
        }
        edit_list(
            "exclude",
            &mut n.exclude,
            &self.exclude,
            |a, b| a == b,
            |a, b| a == b,
        )?;
        edit_list(
            "routes",
            &mut n.routes,
            &self.routes,
            |r, dst| r.dst == *dst,
            |a, b| a.dst == b.dst,
        )?;
        edit_list(
            "host routes",
            &mut n.host_routes,
            &self.host_routes,
            |a, b| a == b,
            |a, b| a == b,
        )?;
        n.sticky = self.sticky_after(old.sticky.as_ref())?;
        self.edit_qos(&mut n.qos)?;
        n.probe = self.probe_after(old.probe)?;
        n.validate()?;
        Ok(n)
    }

    /// Subnet and gateway cannot change in place.
    fn check_immutable(&self, old: &NetworkSpec) -> Result<(), PatchError> {
        let rebuild = "the pods, leases, blocks and rack bindings of the network are built on it; delete and re-create the network to change it";
        if let Some(s) = self.subnet.filter(|s| *s != old.subnet) {
            return Err(PatchError::Immutable {
                field: "subnet",
                from: old.subnet.to_string(),
                to: s.to_string(),
                why: rebuild.into(),
            });
        }
        if let Some(g) = self.gateway.filter(|g| *g != old.gateway) {
            return Err(PatchError::Immutable {
                field: "gateway",
                from: old.gateway.to_string(),
                to: g.to_string(),
                why: "running pods route through it; delete and re-create the network to change it"
                    .into(),
            });
        }
        Ok(())
    }

    fn sticky_after(&self, old: Option<&StickyPolicy>) -> Result<Option<StickyPolicy>, PatchError> {
        let e = &self.sticky;
        if e.disable {
            let mut rest = e.clone();
            rest.disable = false;
            if !rest.is_empty() {
                return Err(PatchError::Conflicting(
                    "--no-sticky cannot be combined with other sticky settings".into(),
                ));
            }
            return Ok(None);
        }
        if e.is_empty() {
            return Ok(old.cloned());
        }
        let mut p = old.cloned().unwrap_or(StickyPolicy {
            namespaces: Vec::new(),
            pod_patterns: Vec::new(),
            hold_secs: crate::sticky::DEFAULT_HOLD_SECS,
            cross_rack: CrossRack::default(),
        });
        edit_list(
            "sticky namespaces",
            &mut p.namespaces,
            &e.namespaces,
            |a, b| a == b,
            |a, b| a == b,
        )?;
        edit_list(
            "sticky pod patterns",
            &mut p.pod_patterns,
            &e.pod_patterns,
            |a, b| a == b,
            |a, b| a == b,
        )?;
        if let Some(h) = e.hold_secs {
            p.hold_secs = h;
        }
        if let Some(c) = e.cross_rack {
            p.cross_rack = c;
        }
        Ok(Some(p))
    }

    fn edit_qos(&self, q: &mut crate::QosSpec) -> Result<(), PatchError> {
        let set = |slot: &mut Option<Bandwidth>, e: Option<Edit<Bandwidth>>| match e {
            Some(Edit::Set(b)) => *slot = Some(b),
            Some(Edit::Clear) => *slot = None,
            None => {}
        };
        set(&mut q.default, self.qos.default);
        set(&mut q.max, self.qos.max);
        let c = &self.qos.classes;
        if c.clear {
            q.node_classes.clear();
        }
        for name in &c.remove {
            if q.node_classes.remove(name).is_none() {
                return Err(PatchError::NotListed {
                    list: "QoS classes",
                    item: name.clone(),
                    has: joined(q.node_classes.keys()),
                });
            }
        }
        let added: BTreeMap<String, Bandwidth> = c.add.iter().cloned().collect();
        q.node_classes.extend(added);
        Ok(())
    }

    fn probe_after(&self, old: Option<ProbeSpec>) -> Result<Option<ProbeSpec>, PatchError> {
        let e = &self.probe;
        if e.disable {
            let mut rest = e.clone();
            rest.disable = false;
            if !rest.is_empty() {
                return Err(PatchError::Conflicting(
                    "--no-probe cannot be combined with other probe settings".into(),
                ));
            }
            return Ok(None);
        }
        if e.is_empty() {
            return Ok(old);
        }
        let mut p = old.unwrap_or_default();
        if let Some(c) = e.count {
            p.count = c;
        }
        if let Some(i) = e.interval_ms {
            p.interval_ms = i;
        }
        if let Some(q) = e.quarantine_secs {
            p.quarantine_secs = q;
        }
        Ok(Some(p))
    }
}

fn joined<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let v: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

fn edit_list<T: Clone + Describe, K: Describe>(
    list: &'static str,
    items: &mut Vec<T>,
    e: &ListEdit<T, K>,
    matches: impl Fn(&T, &K) -> bool,
    same: impl Fn(&T, &T) -> bool,
) -> Result<(), PatchError> {
    if e.clear {
        items.clear();
    }
    for k in &e.remove {
        let before = items.len();
        items.retain(|t| !matches(t, k));
        if items.len() == before {
            return Err(PatchError::NotListed {
                list,
                item: k.describe(),
                has: joined(items.iter().map(Describe::describe)),
            });
        }
    }
    for t in &e.add {
        match items.iter_mut().find(|i| same(i, t)) {
            // A route to a destination already routed: the new next hop.
            Some(i) => *i = t.clone(),
            None => items.push(t.clone()),
        }
    }
    Ok(())
}

/// How an entry is named in messages.
pub trait Describe {
    fn describe(&self) -> String;
}

impl Describe for AddrRange {
    fn describe(&self) -> String {
        self.to_string()
    }
}
impl Describe for Ipv4Network {
    fn describe(&self) -> String {
        self.to_string()
    }
}
impl Describe for String {
    fn describe(&self) -> String {
        self.clone()
    }
}
impl Describe for RouteSpec {
    fn describe(&self) -> String {
        match self.gw {
            Some(g) => format!("{}@{g}", self.dst),
            None => self.dst.to_string(),
        }
    }
}
impl Describe for (String, Bandwidth) {
    fn describe(&self) -> String {
        format!("{}:{}", self.0, self.1)
    }
}

/// Leased addresses a refusal names before "and N more".
const MAX_LISTED: usize = 20;

/// Why an update is refused because of what runs on the network. Built by
/// netmaster from the network's leases and blocks, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// master or VLAN while pods run on it.
    InUse {
        field: &'static str,
        from: String,
        to: String,
        pods: usize,
    },
    /// Block size while blocks exist.
    Blocks { from: u32, to: u32, blocks: usize },
    /// New exclusions cover addresses held by pods or sticky reservations.
    Leased { addresses: Vec<String> },
    /// New exclusions cover standby records of nodes whose ipamd is not
    /// live: only that ipamd may give them back (its reserve, persisted
    /// reserve and outage journal count on them), so `--force` does not
    /// override this.
    StandbyOffline {
        addresses: Vec<String>,
        nodes: String,
    },
}

/// "a, b, c and N more": a list bounded for a message.
fn bounded(items: &[String]) -> String {
    let shown = items.len().min(MAX_LISTED);
    let more = match items.len() - shown {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    format!("{}{more}", items[..shown].join(", "))
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::InUse { field, from, to, pods } => write!(
                f,
                "{field} cannot be changed ({from} -> {to}) while {pods} pod(s) run on the network: their interfaces hang off the current one; drain the network first"
            ),
            Refusal::Blocks { from, to, blocks } => write!(
                f,
                "block-size cannot be changed ({from} -> {to}) while the network has {blocks} block(s): nodes own blocks of the current size"
            ),
            // A wide exclusion over a busy range: name enough to act on.
            Refusal::Leased { addresses } => write!(
                f,
                "the new exclusions cover {} leased address(es): {}; release them first, or pass --force to keep those pods running (they are then reported as differing from the network)",
                addresses.len(),
                bounded(addresses)
            ),
            Refusal::StandbyOffline { addresses, nodes } => write!(
                f,
                "the new exclusions cover {} standby record(s) of node(s) {nodes}, whose ipamd is not live: {}; only that ipamd can give them back (it may be serving pods from them without etcd): start it, or remove a node gone for good with `racklinectl node delete NODE`",
                addresses.len(),
                bounded(addresses)
            ),
        }
    }
}

/// The settings that differ between `old` and `new`, one line each (what
/// `network update` reports and logs).
pub fn changes(old: &NetworkSpec, new: &NetworkSpec) -> Vec<String> {
    let mut out = Vec::new();
    let mut diff = |what: &str, a: String, b: String| {
        if a != b {
            out.push(format!("{what}: {a} -> {b}"));
        }
    };
    diff("master", old.master.clone(), new.master.clone());
    diff("vlan", vlan(old.vlan), vlan(new.vlan));
    diff("mtu", old.mtu.to_string(), new.mtu.to_string());
    diff(
        "block-size",
        old.block_size.to_string(),
        new.block_size.to_string(),
    );
    diff(
        "exclude",
        joined(old.exclude.iter().map(Describe::describe)),
        joined(new.exclude.iter().map(Describe::describe)),
    );
    diff(
        "routes",
        joined(old.routes.iter().map(Describe::describe)),
        joined(new.routes.iter().map(Describe::describe)),
    );
    diff(
        "host routes",
        joined(old.host_routes.iter()),
        joined(new.host_routes.iter()),
    );
    diff(
        "sticky",
        sticky(old.sticky.as_ref()),
        sticky(new.sticky.as_ref()),
    );
    diff("qos", qos(&old.qos), qos(&new.qos));
    diff("probe", probe(old.probe), probe(new.probe));
    out
}

fn vlan(v: Option<u16>) -> String {
    v.map_or_else(|| "untagged".into(), |v| v.to_string())
}

fn sticky(p: Option<&StickyPolicy>) -> String {
    match p {
        None => "off".into(),
        Some(p) => format!(
            "namespaces [{}] pods [{}] hold {}s cross-rack {}",
            p.namespaces.join(", "),
            p.pod_patterns.join(", "),
            p.hold_secs,
            p.cross_rack.as_str()
        ),
    }
}

fn qos(q: &crate::QosSpec) -> String {
    let b = |b: Option<&Bandwidth>| b.map_or_else(|| "-".into(), Bandwidth::to_string);
    format!(
        "default {} max {} classes [{}]",
        b(q.default.as_ref()),
        b(q.max.as_ref()),
        joined(q.node_classes.iter().map(|(k, v)| format!("{k}:{v}")))
    )
}

fn probe(p: Option<ProbeSpec>) -> String {
    match p {
        None => "off".into(),
        Some(p) => format!(
            "{} x {} ms, quarantine {} s",
            p.count, p.interval_ms, p.quarantine_secs
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> NetworkSpec {
        serde_json::from_str(
            r#"{"name":"prod","subnet":"10.0.0.0/24","gateway":"10.0.0.1","master":"eth1",
                "mtu":1500,"exclude":["10.0.0.2-10.0.0.9"],"hostRoutes":["10.96.0.0/12"],
                "routes":[{"dst":"192.168.0.0/16"}]}"#,
        )
        .unwrap()
    }

    #[test]
    fn only_what_the_patch_names_changes() {
        let old = spec();
        let p = NetworkPatch {
            mtu: Some(9000),
            ..Default::default()
        };
        let n = p.apply(&old).unwrap();
        assert_eq!(n.mtu, 9000);
        assert_eq!(
            NetworkSpec {
                mtu: 1500,
                ..n.clone()
            },
            old
        );
        assert_eq!(changes(&old, &n), vec!["mtu: 1500 -> 9000"]);
    }

    #[test]
    fn lists_are_cleared_then_removed_from_then_added_to() {
        let old = spec();
        let r: AddrRange = "10.0.0.100".parse().unwrap();
        let p = NetworkPatch {
            exclude: ListEdit {
                add: vec![r, r],
                ..Default::default()
            },
            host_routes: ListEdit {
                clear: true,
                add: vec!["10.200.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            routes: ListEdit {
                remove: vec!["192.168.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            ..Default::default()
        };
        let n = p.apply(&old).unwrap();
        assert_eq!(n.exclude.len(), 2, "added once: {:?}", n.exclude);
        assert_eq!(n.host_routes, vec!["10.200.0.0/16".parse().unwrap()]);
        assert!(n.routes.is_empty());
        let bad = NetworkPatch {
            host_routes: ListEdit {
                remove: vec!["10.1.0.0/16".parse().unwrap()],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            bad.apply(&old).unwrap_err().to_string(),
            "host routes: 10.1.0.0/16 is not in the list (it has 10.96.0.0/12)"
        );
    }

    #[test]
    fn subnet_and_gateway_are_refused_by_name_unless_unchanged() {
        let old = spec();
        let same = NetworkPatch {
            subnet: Some(old.subnet),
            gateway: Some(old.gateway),
            mtu: Some(1400),
            ..Default::default()
        };
        same.apply(&old).unwrap();
        let e = NetworkPatch {
            subnet: Some("10.0.0.0/23".parse().unwrap()),
            ..Default::default()
        }
        .apply(&old)
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("subnet cannot be changed (10.0.0.0/24 -> 10.0.0.0/23)"),
            "{e}"
        );
        let e = NetworkPatch {
            gateway: Some("10.0.0.254".parse().unwrap()),
            ..Default::default()
        }
        .apply(&old)
        .unwrap_err();
        assert!(
            e.to_string().starts_with("gateway cannot be changed"),
            "{e}"
        );
        assert_eq!(
            NetworkPatch::default().apply(&old).unwrap_err(),
            PatchError::Empty
        );
    }

    #[test]
    fn sticky_probe_and_qos_edits() {
        let old = spec();
        let n = NetworkPatch {
            sticky: StickyEdit {
                namespaces: ListEdit {
                    add: vec!["db".into()],
                    ..Default::default()
                },
                ..Default::default()
            },
            probe: ProbeEdit {
                count: Some(5),
                ..Default::default()
            },
            qos: QosEdit {
                default: Some(Edit::Set(Bandwidth::parse_spec("egress=10M").unwrap())),
                classes: ListEdit {
                    add: vec![("small".into(), Bandwidth::parse_spec("ingress=1M").unwrap())],
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
        .apply(&old)
        .unwrap();
        let s = n.sticky.clone().unwrap();
        assert_eq!(s.namespaces, vec!["db"]);
        assert_eq!(s.hold_secs, crate::sticky::DEFAULT_HOLD_SECS);
        assert_eq!(n.probe.unwrap().count, 5);
        assert_eq!(n.probe.unwrap().interval_ms, 100);
        assert!(n.qos.node_classes.contains_key("small"));
        let off = NetworkPatch {
            sticky: StickyEdit {
                disable: true,
                ..Default::default()
            },
            probe: ProbeEdit {
                disable: true,
                ..Default::default()
            },
            qos: QosEdit {
                default: Some(Edit::Clear),
                ..Default::default()
            },
            ..Default::default()
        }
        .apply(&n)
        .unwrap();
        assert_eq!((off.sticky, off.probe, off.qos.default), (None, None, None));
        let e = NetworkPatch {
            sticky: StickyEdit {
                disable: true,
                hold_secs: Some(5),
                ..Default::default()
            },
            ..Default::default()
        }
        .apply(&n)
        .unwrap_err();
        assert!(matches!(e, PatchError::Conflicting(_)), "{e}");
    }

    #[test]
    fn a_refusal_names_the_leased_addresses_but_not_endlessly() {
        let r = Refusal::Leased {
            addresses: (0..25).map(|i| format!("10.0.0.{i}")).collect(),
        };
        let m = r.to_string();
        assert!(
            m.starts_with("the new exclusions cover 25 leased address(es): 10.0.0.0, 10.0.0.1,"),
            "{m}"
        );
        assert!(
            m.contains("10.0.0.19 and 5 more; release them first"),
            "{m}"
        );
    }

    #[test]
    fn the_result_is_validated() {
        let e = NetworkPatch {
            exclude: ListEdit {
                add: vec!["10.1.0.0/24".parse().unwrap()],
                ..Default::default()
            },
            ..Default::default()
        }
        .apply(&spec())
        .unwrap_err();
        assert!(e.to_string().contains("outside subnet"), "{e}");
    }
}
