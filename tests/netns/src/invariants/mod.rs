//! The ownership invariants of Rackline's etcd state, checked from the outside.
//!
//! [`Lab::check_invariants`] reads everything under `/rackline/v1/` in one `etcdctl get
//! --prefix -w json` (one revision, so one consistent snapshot) and judges it with its own small
//! parsers: it deliberately shares no code with the components under test (the key layout of
//! crates/model/src/keys.rs and the record shapes of docs/CONTRACTS.md are re-read here), so a
//! bug in the model cannot make the checker agree with itself.
//!
//! Checked always:
//! - no address is owned twice in a network (lease key ↔ record agree; no two records claim one
//!   address);
//! - no attachment `(node, containerId, ifname)` holds two leases (standby records, which have
//!   no attachment yet, are exempt);
//! - every lease lies in its network's allocatable range: subnet minus network, broadcast,
//!   gateway and exclusions (for a rack-bound network: the union of its racks' ranges).
//!
//! Checked when sticky identities (`identities/<network>/<ns>/<pod>`) exist:
//! - every identity names an address whose lease record names that identity back, and every
//!   sticky lease record has that identity naming its address (one fact, two records, always
//!   written together);
//! - a reserved record (no pod running) is exempt from the node-rack check when it names no
//!   node (pinned by an operator before any node used it) or a node no longer registered
//!   (`node delete` keeps a sticky pod's address as a reservation of its last node).
//!
//! Checked when rack bindings (`racknets/`) and blocks (`blocks/`) exist:
//! - a rack's ranges never overlap another rack's on the same network;
//! - every lease lies in the ranges of the rack of its node (`nodes/<node>.rack`), and any block
//!   it lies in belongs to that rack (a lease outside every block is a borrow from unassigned
//!   rack space, which ipamd does when its blocks are full and no block can be had, e.g. while
//!   netmaster has no leader; the per-address key keeps it exclusive);
//! - blocks of a network never overlap; each lies inside ONE run of its rack's ranges and inside
//!   one `blockSize`-aligned window; each is owned by a registered node of that rack.
//!
//! Checked always (infrastructure): no lease record (a pod's, a standby or a reserved one)
//! holds a registered node's own address (`nodes/<node>.addresses`) or the gateway of any rack
//! binding of its network (a gateway inside another rack's ranges included). A binding's own
//! `exclude` ranges are outside its ranges like the network's exclusions.

mod records;

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{ensure, Result};
use serde_json::Value;

use crate::lab::Lab;
pub use records::{base64_decode, parse_etcdctl_json, Record};
use records::{
    ip, lossy, parse_block, parse_lease, parse_network, parse_padded, parse_racknet, show_runs,
    str_field, Block, Lease, Network, RackNet, Runs,
};

/// Everything Rackline stores lives under this prefix (crates/model/src/keys.rs).
pub const ETCD_ROOT: &str = "/rackline/v1/";

/// What one check of the etcd state found.
#[derive(Clone, Debug, Default)]
pub struct InvariantReport {
    /// etcd revision of the snapshot.
    pub revision: i64,
    pub networks: usize,
    /// Lease records of pods (attachments).
    pub leases: usize,
    /// Standby records: addresses a node pre-reserved (`state: "standby"`, no attachment),
    /// and reservations of sticky pods (`state: "reserved"`).
    pub standby: usize,
    /// Sticky identity records.
    pub identities: usize,
    /// Conflict (quarantine) records: addresses another host answered for (`state:
    /// "conflict"`); like standby they have no attachment but keep the address.
    pub conflicts: usize,
    pub racknets: usize,
    pub nodes: usize,
    pub blocks: usize,
    /// One line per broken invariant; empty when everything holds.
    pub violations: Vec<String>,
}

impl InvariantReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }

    fn violation(&mut self, msg: String) {
        self.violations.push(msg);
    }
}

impl fmt::Display for InvariantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "etcd revision {}: {} networks, {} pod leases, {} standby, {} conflict, {} rack bindings, {} nodes, \
             {} blocks; ",
            self.revision,
            self.networks,
            self.leases,
            self.standby,
            self.conflicts,
            self.racknets,
            self.nodes,
            self.blocks
        )?;
        if self.ok() {
            return f.write_str("all invariants hold");
        }
        writeln!(f, "{} violations:", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  - {v}")?;
        }
        Ok(())
    }
}

impl Lab {
    /// Every key under [`ETCD_ROOT`] with its raw value, and the snapshot's revision.
    pub fn etcd_records(&self) -> Result<(i64, Vec<Record>)> {
        let out = self
            .etcdctl(&["get", "--prefix", ETCD_ROOT, "-w", "json"])?
            .check()?;
        parse_etcdctl_json(&out.stdout)
    }

    /// Reads etcd and judges it; the report lists violations without failing.
    pub fn invariants(&self) -> Result<InvariantReport> {
        let (revision, records) = self.etcd_records()?;
        let mut report = check_records(&records);
        report.revision = revision;
        Ok(report)
    }

    /// Reads etcd and fails listing every violation (see the module docs for what is checked).
    pub fn check_invariants(&self) -> Result<InvariantReport> {
        let report = self.invariants()?;
        ensure!(report.ok(), "Rackline invariants broken: {report}");
        Ok(report)
    }
}

pub fn check_records(records: &[Record]) -> InvariantReport {
    let mut rep = InvariantReport::default();
    let mut networks: BTreeMap<String, Network> = BTreeMap::new();
    // network → rack → binding
    let mut racknets: BTreeMap<String, BTreeMap<String, RackNet>> = BTreeMap::new();
    let mut node_racks: BTreeMap<String, String> = BTreeMap::new();
    // address → node
    let mut node_addrs: BTreeMap<u32, String> = BTreeMap::new();
    let mut leases: Vec<Lease> = Vec::new();
    let mut blocks: Vec<Block> = Vec::new();
    // (network, namespace, pod) -> (address, key)
    let mut identities: BTreeMap<(String, String, String), (u32, String)> = BTreeMap::new();

    for (key, raw) in records {
        let Some(rest) = key.strip_prefix(ETCD_ROOT) else {
            continue;
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let kind = match parts.as_slice() {
            ["networks", _] | ["leases", _, _] | ["nodes", _] | ["blocks", _, _] => parts[0],
            // keys.rs spells bindings racknets/<network>/<rack>; CONTRACTS.md's rack table
            // racks/<rack>/networks/<network>. Either is read; the record names both.
            ["racknets", _, _] | ["racks", _, "networks", _] => "racknets",
            ["identities", _, _, _] => "identities",
            _ => continue,
        };
        let value: Option<Value> = serde_json::from_slice(raw).ok();
        let Some(value) = value else {
            rep.violation(format!("{key}: value is not JSON: {:?}", lossy(raw)));
            continue;
        };
        let bad = |what: &str| format!("{key}: not a valid {what} record: {value}");
        match kind {
            "networks" => match parse_network(&value) {
                Some(net) => {
                    if str_field(&value, "name").as_deref() != Some(parts[1]) {
                        rep.violation(format!("{key}: record names another network: {value}"));
                    }
                    networks.insert(parts[1].to_owned(), net);
                }
                None => rep.violation(bad("network")),
            },
            "racknets" => match parse_racknet(key, &value) {
                Some((net, rack, binding)) => {
                    let (key_net, key_rack) = match parts[0] {
                        "racknets" => (parts[1], parts[2]),
                        _ => (parts[3], parts[1]),
                    };
                    if (net.as_str(), rack.as_str()) != (key_net, key_rack) {
                        rep.violation(format!("{key}: record binds {rack} to {net}"));
                    }
                    racknets.entry(net).or_default().insert(rack, binding);
                }
                None => rep.violation(bad("rack binding")),
            },
            "identities" => {
                match str_field(&value, "address").and_then(|a| records::parse_ip(&a)) {
                    Some(addr) => {
                        identities.insert(
                            (
                                parts[1].to_owned(),
                                parts[2].to_owned(),
                                parts[3].to_owned(),
                            ),
                            (addr, key.clone()),
                        );
                    }
                    None => rep.violation(bad("identity")),
                }
            }
            "nodes" => match str_field(&value, "rack") {
                Some(rack) => {
                    node_racks.insert(parts[1].to_owned(), rack);
                    let addrs = value.get("addresses").and_then(Value::as_array);
                    for a in addrs.into_iter().flatten() {
                        match a.as_str().and_then(records::parse_ip) {
                            Some(x) => {
                                node_addrs.insert(x, parts[1].to_owned());
                            }
                            None => rep.violation(bad("node")),
                        }
                    }
                }
                None => rep.violation(bad("node")),
            },
            "leases" => match parse_lease(key, &value) {
                Some(lease) => {
                    if lease.network != parts[1] || Some(lease.address) != parse_padded(parts[2]) {
                        rep.violation(format!(
                            "{key}: record is for {} in network {}",
                            ip(lease.address),
                            lease.network
                        ));
                    }
                    leases.push(lease);
                }
                None => rep.violation(bad("lease")),
            },
            _ => match parse_block(key, &value) {
                Some(block) => {
                    if block.network != parts[1] || Some(block.first) != parse_padded(parts[2]) {
                        rep.violation(format!(
                            "{key}: record is for block {} of network {}",
                            ip(block.first),
                            block.network
                        ));
                    }
                    blocks.push(block);
                }
                None => rep.violation(bad("block")),
            },
        }
    }
    rep.networks = networks.len();
    rep.racknets = racknets.values().map(BTreeMap::len).sum();
    rep.nodes = node_racks.len();
    rep.conflicts = leases.iter().filter(|l| l.conflict).count();
    rep.standby = leases.iter().filter(|l| l.is_standby()).count() - rep.conflicts;
    rep.leases = leases.len() - rep.standby - rep.conflicts;
    rep.blocks = blocks.len();

    // Allocatable ranges: per network, and per rack binding where there are any.
    let mut rack_ranges: BTreeMap<(String, String), Runs> = BTreeMap::new();
    for (net_name, bindings) in &racknets {
        let Some(net) = networks.get(net_name) else {
            for b in bindings.values() {
                rep.violation(format!("{}: binds unknown network {net_name}", b.key));
            }
            continue;
        };
        for (rack, b) in bindings {
            rack_ranges.insert((net_name.clone(), rack.clone()), b.allocatable(net));
        }
        let racks: Vec<&String> = bindings.keys().collect();
        for (i, a) in racks.iter().enumerate() {
            for b in &racks[i + 1..] {
                let (ra, rb) = (
                    &rack_ranges[&(net_name.clone(), (*a).clone())],
                    &rack_ranges[&(net_name.clone(), (*b).clone())],
                );
                if let Some(x) = ra.first_common(rb) {
                    rep.violation(format!(
                        "network {net_name}: ranges of racks {a} and {b} overlap (at {})",
                        ip(x)
                    ));
                }
            }
        }
    }
    let allocatable: BTreeMap<&String, Runs> = networks
        .iter()
        .map(|(name, net)| {
            let runs = match racknets.get(name) {
                Some(bindings) if !bindings.is_empty() => {
                    let mut all = Runs::default();
                    for rack in bindings.keys() {
                        for &(s, e) in &rack_ranges[&(name.clone(), rack.clone())].0 {
                            all.insert(s, e);
                        }
                    }
                    all
                }
                _ => net.allocatable(),
            };
            (name, runs)
        })
        .collect();

    check_leases(
        &mut rep,
        &leases,
        &allocatable,
        &racknets,
        &rack_ranges,
        &node_racks,
        &blocks,
    );
    check_blocks(&mut rep, &blocks, &networks, &rack_ranges, &node_racks);
    check_infrastructure(&mut rep, &leases, &allocatable, &racknets, &node_addrs);
    check_identities(&mut rep, &identities, &leases);
    rep
}

/// No lease record holds a node's own address, nor a rack's gateway that lies inside another
/// rack's ranges (a network's or a rack's own gateway is outside its allocatable ranges: the
/// range checks report those).
fn check_infrastructure(
    rep: &mut InvariantReport,
    leases: &[Lease],
    allocatable: &BTreeMap<&String, Runs>,
    racknets: &BTreeMap<String, BTreeMap<String, RackNet>>,
    node_addrs: &BTreeMap<u32, String>,
) {
    for l in leases {
        // A conflict record says another host answers for the address: no pod holds it.
        if l.conflict {
            continue;
        }
        let addr = ip(l.address);
        if let Some(node) = node_addrs.get(&l.address) {
            rep.violation(format!("{}: {addr} is the address of node {node}", l.key));
        }
        let in_ranges = allocatable
            .get(&l.network)
            .is_some_and(|r| r.contains(l.address));
        for (rack, b) in racknets.get(&l.network).into_iter().flatten() {
            if in_ranges && b.gateway == l.address {
                rep.violation(format!("{}: {addr} is rack {rack}'s gateway", l.key));
            }
        }
    }
}

fn check_identities(
    rep: &mut InvariantReport,
    identities: &BTreeMap<(String, String, String), (u32, String)>,
    leases: &[Lease],
) {
    rep.identities = identities.len();
    let by_addr: BTreeMap<(&str, u32), &Lease> = leases
        .iter()
        .map(|l| ((l.network.as_str(), l.address), l))
        .collect();
    for ((net, ns, pod), (addr, key)) in identities {
        match by_addr.get(&(net.as_str(), *addr)) {
            None => rep.violation(format!(
                "{key}: identity {ns}/{pod} names {} but no lease record exists there",
                ip(*addr)
            )),
            Some(l) if l.sticky.as_ref() != Some(&(ns.clone(), pod.clone())) => {
                rep.violation(format!(
                    "{key}: identity {ns}/{pod} names {} but {} does not name it back",
                    ip(*addr),
                    l.key
                ))
            }
            Some(_) => {}
        }
    }
    for l in leases {
        if let Some((ns, pod)) = &l.sticky {
            match identities.get(&(l.network.clone(), ns.clone(), pod.clone())) {
                Some((addr, _)) if *addr == l.address => {}
                other => rep.violation(format!(
                    "{}: sticky lease of {ns}/{pod} but its identity names {:?}",
                    l.key,
                    other.map(|(a, _)| ip(*a))
                )),
            }
        }
    }
}

fn check_leases(
    rep: &mut InvariantReport,
    leases: &[Lease],
    allocatable: &BTreeMap<&String, Runs>,
    racknets: &BTreeMap<String, BTreeMap<String, RackNet>>,
    rack_ranges: &BTreeMap<(String, String), Runs>,
    node_racks: &BTreeMap<String, String>,
    blocks: &[Block],
) {
    let mut owners: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    let mut attachments: BTreeMap<(&str, &str, &str), &str> = BTreeMap::new();
    for l in leases {
        let addr = ip(l.address);
        if let Some(first) = owners.insert((&l.network, l.address), &l.key) {
            rep.violation(format!(
                "address {addr} of network {} owned twice: {first} and {}",
                l.network, l.key
            ));
        }
        if !l.is_standby() {
            let att = (l.node.as_str(), l.container_id.as_str(), l.ifname.as_str());
            if let Some(first) = attachments.insert(att, &l.key) {
                rep.violation(format!(
                    "attachment (node {}, container {}, ifname {}) holds two leases: {first} and {}",
                    l.node, l.container_id, l.ifname, l.key
                ));
            }
        }
        let Some(pool) = allocatable.get(&l.network) else {
            rep.violation(format!("{}: unknown network {}", l.key, l.network));
            continue;
        };
        if !pool.contains(l.address) {
            rep.violation(format!(
                "{}: {addr} is outside network {}'s allocatable ranges {}",
                l.key,
                l.network,
                show_runs(pool)
            ));
        }
        // The lease must come from the rack of its node. A reservation may have no
        // node yet (an operator's pin), or name its last node after `node delete` removed
        // that node for good; the allocatable check above still holds for it.
        if racknets.get(&l.network).is_none_or(BTreeMap::is_empty)
            || (l.reserved && (l.node.is_empty() || !node_racks.contains_key(&l.node)))
        {
            continue;
        }
        let Some(rack) = node_racks.get(&l.node) else {
            rep.violation(format!(
                "{}: node {} is not registered (no nodes/{}), but network {} is rack-bound",
                l.key, l.node, l.node, l.network
            ));
            continue;
        };
        match rack_ranges.get(&(l.network.clone(), rack.clone())) {
            None => rep.violation(format!(
                "{}: node {}'s rack {rack} has no binding to network {}",
                l.key, l.node, l.network
            )),
            Some(runs) if !runs.contains(l.address) => rep.violation(format!(
                "{}: {addr} is outside the ranges {} of rack {rack} (node {})",
                l.key,
                show_runs(runs),
                l.node
            )),
            Some(_) => {}
        }
        if let Some(b) = blocks
            .iter()
            .find(|b| b.network == l.network && (b.first..=b.last()).contains(&l.address))
        {
            if &b.rack != rack {
                rep.violation(format!(
                    "{}: {addr} lies in a block of rack {} but node {} is in rack {rack}",
                    l.key, b.rack, l.node
                ));
            }
        }
    }
}

fn check_blocks(
    rep: &mut InvariantReport,
    blocks: &[Block],
    networks: &BTreeMap<String, Network>,
    rack_ranges: &BTreeMap<(String, String), Runs>,
    node_racks: &BTreeMap<String, String>,
) {
    for b in blocks {
        let (first, last) = (ip(b.first), ip(b.last()));
        if b.size == 0 {
            rep.violation(format!("{}: empty block", b.key));
        }
        let Some(net) = networks.get(&b.network) else {
            rep.violation(format!("{}: unknown network {}", b.key, b.network));
            continue;
        };
        match rack_ranges.get(&(b.network.clone(), b.rack.clone())) {
            None => rep.violation(format!(
                "{}: rack {} has no binding to network {}",
                b.key, b.rack, b.network
            )),
            Some(runs) if !runs.covers(b.first, b.last()) => rep.violation(format!(
                "{}: {first}-{last} is not inside one range of rack {} ({})",
                b.key,
                b.rack,
                show_runs(runs)
            )),
            Some(_) => {}
        }
        let bs = net.block_size.max(1);
        if b.first / bs != b.last() / bs {
            rep.violation(format!(
                "{}: {first}-{last} crosses a {bs}-address block boundary",
                b.key
            ));
        }
        match node_racks.get(&b.node) {
            None => rep.violation(format!(
                "{}: owner {} is not a registered node",
                b.key, b.node
            )),
            Some(rack) if rack != &b.rack => rep.violation(format!(
                "{}: owner {} belongs to rack {rack}, the block to rack {}",
                b.key, b.node, b.rack
            )),
            Some(_) => {}
        }
    }
    let mut by_net: BTreeMap<&str, Vec<&Block>> = BTreeMap::new();
    for b in blocks {
        by_net.entry(&b.network).or_default().push(b);
    }
    for (net, mut list) in by_net {
        list.sort_by_key(|b| b.first);
        for pair in list.windows(2) {
            if pair[1].first <= pair[0].last() {
                rep.violation(format!(
                    "network {net}: blocks {} and {} overlap",
                    pair[0].key, pair[1].key
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests;
