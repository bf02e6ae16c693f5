//! Racks (`racks/<rack>`) and their bindings to networks
//! (`racknets/<network>/<rack>`).
//!
//! Every check that spans records (other racks' ranges, other networks'
//! subnets, "still in use") is made against one consistent read, and the
//! write's transaction compares the revisions of exactly what was checked:
//! a concurrent change makes it fail and retry, never slip past the check.

use std::collections::{BTreeMap, BTreeSet};

use etcd_client::{Compare, CompareOp, KeyValue, Txn, TxnOp};
use rackline_model::{
    Block, DrainTarget, Lease, NetworkSpec, Node, Rack, RackNet, ValidationError,
};
use tracing::debug;

use crate::facets::AdminReads;
use crate::reads::{get, get_prefix, unchanged_prefix, unchanged_range, ATTEMPTS};
use crate::{
    decode_json, decode_network, LeaderStore, LeaseCensus, Object, Result, Store, StoreError,
};

/// More lease ranges than this in one compare list and unbind guards the
/// network's whole lease prefix instead (etcd caps compares per txn).
const MAX_RANGE_COMPARES: usize = 64;

/// A rack with its bindings and the names of its registered nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RackInfo {
    pub rack: Rack,
    /// By network name.
    pub bindings: Vec<RackNet>,
    /// Sorted.
    pub nodes: Vec<String>,
}

impl Store {
    /// Decodes the bindings whose key matches the filters (the key names
    /// network and rack, so other records are not even decoded).
    pub(crate) fn decode_bindings(
        &self,
        kvs: &[KeyValue],
        network: Option<&str>,
        rack: Option<&str>,
    ) -> Result<Vec<RackNet>> {
        let mut out = Vec::new();
        for kv in kvs {
            let k = String::from_utf8_lossy(kv.key());
            let Some((n, r)) = self.keys.parse_racknet(&k) else {
                continue;
            };
            if network.is_some_and(|x| x != n) || rack.is_some_and(|x| x != r) {
                continue;
            }
            out.push(decode_json::<RackNet>(kv)?);
        }
        out.sort_by(|a, b| (&a.network, &a.rack).cmp(&(&b.network, &b.rack)));
        Ok(out)
    }

    fn is_rack_key(&self, kv: &KeyValue) -> bool {
        let k = String::from_utf8_lossy(kv.key());
        self.keys
            .rack_name_of(&k)
            .is_some_and(|n| !n.is_empty() && !n.contains('/'))
    }
}

impl AdminReads<'_> {
    /// Racks by name.
    pub async fn list_racks(&self) -> Result<Vec<Rack>> {
        let (r, _) = self
            .read_at_once(vec![get_prefix(self.keys.racks_prefix())])
            .await?;
        let mut racks = r[0]
            .kvs()
            .iter()
            .filter(|kv| self.is_rack_key(kv))
            .map(decode_json::<Rack>)
            .collect::<Result<Vec<_>>>()?;
        racks.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(racks)
    }

    pub async fn get_rack(&self, name: &str) -> Result<Option<RackInfo>> {
        let (r, _) = self
            .read_at_once(vec![
                get(self.keys.rack(name)),
                get_prefix(self.keys.all_racknets_prefix()),
                get_prefix(self.keys.nodes_prefix()),
            ])
            .await?;
        let Some(kv) = r[0].kvs().first() else {
            return Ok(None);
        };
        let rack: Rack = decode_json(kv)?;
        let bindings = self.decode_bindings(r[1].kvs(), None, Some(name))?;
        let mut nodes: Vec<String> = decode_all::<Node>(r[2].kvs())?
            .into_iter()
            .filter(|n| n.rack == name)
            .map(|n| n.name)
            .collect();
        nodes.sort();
        Ok(Some(RackInfo {
            rack,
            bindings,
            nodes,
        }))
    }

    /// What keeps `rack` from being unbound from `network` now: its blocks
    /// and its nodes' lease records on the network, at one revision.
    pub async fn binding_census(&self, rack: &str, network: &str) -> Result<BindingCensus> {
        rackline_model::network::validate_name(network)?;
        let (r, _) = self
            .read_at_once(vec![
                get(self.keys.racknet(network, rack)),
                get_prefix(self.keys.nodes_prefix()),
                get_prefix(self.keys.blocks_prefix(network)),
                get_prefix(self.keys.leases_prefix(network)),
            ])
            .await?;
        if r[0].kvs().is_empty() {
            return Err(StoreError::Missing(Object::Binding {
                rack: rack.to_string(),
                network: network.to_string(),
            }));
        }
        let members: BTreeSet<String> = decode_all::<Node>(r[1].kvs())?
            .into_iter()
            .filter(|n| n.rack == rack)
            .map(|n| n.name)
            .collect();
        Ok(BindingCensus::of(
            rack,
            &members,
            decode_all::<Block>(r[2].kvs())?,
            &crate::nodes::decode_leases_lenient(r[3].kvs()),
        ))
    }

    /// Bindings, optionally of one network and/or one rack, by network then
    /// rack.
    pub async fn list_racknets(
        &self,
        network: Option<&str>,
        rack: Option<&str>,
    ) -> Result<Vec<RackNet>> {
        let prefix = match network {
            Some(n) => {
                rackline_model::network::validate_name(n)?;
                self.keys.racknets_prefix(n)
            }
            None => self.keys.all_racknets_prefix(),
        };
        let (r, _) = self.read_at_once(vec![get_prefix(prefix)]).await?;
        self.decode_bindings(r[0].kvs(), network, rack)
    }
}

/// A rack's share of a network as an unbind sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingCensus {
    /// The lease records of the rack's nodes on the network.
    pub leases: LeaseCensus,
    /// The rack's blocks on the network, by owning node.
    pub blocks: BTreeMap<String, usize>,
}

impl BindingCensus {
    fn of(rack: &str, members: &BTreeSet<String>, blocks: Vec<Block>, leases: &[Lease]) -> Self {
        let mut by_node: BTreeMap<String, usize> = BTreeMap::new();
        for b in blocks.iter().filter(|b| b.rack == rack) {
            *by_node.entry(b.node.clone()).or_default() += 1;
        }
        BindingCensus {
            leases: LeaseCensus::of(leases.iter().filter(|l| members.contains(&l.node))),
            blocks: by_node,
        }
    }

    pub fn block_total(&self) -> usize {
        self.blocks.values().sum()
    }

    /// Only reserve records and blocks are left: what the rack's ipamds
    /// give back under a drain marker.
    pub fn drainable(&self) -> bool {
        self.leases.blocking(true).is_none()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.total() == 0 && self.blocks.is_empty()
    }

    /// "2 block(s) of node(s) n1 (1), n2 (1)", or None.
    pub fn blocks_phrase(&self) -> Option<String> {
        if self.blocks.is_empty() {
            return None;
        }
        let nodes: Vec<String> = self
            .blocks
            .iter()
            .map(|(n, c)| format!("{n} ({c})"))
            .collect();
        Some(format!(
            "{} block(s) of node(s) {}",
            self.block_total(),
            nodes.join(", ")
        ))
    }

    /// Why an unbind is refused now, or None when nothing is left.
    pub fn refusal(&self) -> Option<String> {
        if let Some(why) = self.leases.blocking(true) {
            return Some(why);
        }
        let parts: Vec<String> = [self.leases.standby_phrase(), self.blocks_phrase()]
            .into_iter()
            .flatten()
            .collect();
        if parts.is_empty() {
            return None;
        }
        Some(format!(
            "{} not given back yet; the rack's ipamds return them while the binding is being \
             removed (is each of them running?)",
            crate::census::join(&parts)
        ))
    }
}

/// Refuses to unbind `rack` from `network` while the rack still has blocks
/// on it or its nodes hold leases there, from one read of the nodes, the
/// network's blocks and its leases.
fn refuse_if_in_use(
    rack: &str,
    network: &str,
    nodes: &[KeyValue],
    blocks: &[KeyValue],
    leases: &[KeyValue],
) -> Result<()> {
    let members: BTreeSet<String> = decode_all::<Node>(nodes)?
        .into_iter()
        .filter(|n| n.rack == rack)
        .map(|n| n.name)
        .collect();
    let left = BindingCensus::of(
        rack,
        &members,
        decode_all::<Block>(blocks)?,
        &decode_all::<Lease>(leases)?,
    );
    match left.refusal() {
        Some(why) => Err(StoreError::Refused(format!(
            "rack {rack:?} on network {network:?} still has {why}"
        ))),
        None => Ok(()),
    }
}

pub(crate) fn decode_all<T: serde::de::DeserializeOwned>(kvs: &[KeyValue]) -> Result<Vec<T>> {
    kvs.iter().map(decode_json).collect()
}

/// " (a, b, c, …)" for an error message; empty for no names.
fn name_list(names: &[String]) -> String {
    const SHOWN: usize = 5;
    if names.is_empty() {
        return String::new();
    }
    let mut s = names
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOWN {
        s.push_str(", …");
    }
    format!(" ({s})")
}

impl LeaderStore {
    pub async fn create_rack(&self, rack: &Rack) -> Result<Rack> {
        rack.validate()?;
        let key = self.keys.rack(&rack.name);
        let value = serde_json::to_vec(rack).expect("Rack serialises");
        let txn = Txn::new()
            .when(self.guard(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )]))
            .and_then([TxnOp::put(key, value, None)]);
        if self.commit(txn).await?.succeeded() {
            return Ok(rack.clone());
        }
        self.check_fence().await?;
        Err(StoreError::Exists(Object::Rack(rack.name.clone())))
    }

    /// Deletes an unused rack and its bindings; returns how many bindings
    /// went with it. Refused while a node is registered in the rack or a
    /// block of the rack exists.
    ///
    /// Leases need no check of their own: a lease belongs to a rack through
    /// its node, and a rack without nodes has none. Blocks created after the
    /// read need no compare either: `acquire_block` compares the binding
    /// (deleted here) and the record of a node of this rack (the nodes prefix
    /// is compared here, and it held no such node).
    pub async fn delete_rack(&self, name: &str) -> Result<usize> {
        let key = self.keys.rack(name);
        let nodes_prefix = self.keys.nodes_prefix();
        let racknets_prefix = self.keys.all_racknets_prefix();
        for _ in 0..ATTEMPTS {
            let (r, rev) = self
                .read_at_once(vec![
                    get(key.clone()),
                    get_prefix(nodes_prefix.clone()),
                    get_prefix(racknets_prefix.clone()),
                    get_prefix(self.keys.all_blocks_prefix()),
                ])
                .await?;
            let Some(rack_kv) = r[0].kvs().first() else {
                return Err(StoreError::Missing(Object::Rack(name.to_string())));
            };
            let nodes: Vec<String> = decode_all::<Node>(r[1].kvs())?
                .into_iter()
                .filter(|n| n.rack == name)
                .map(|n| n.name)
                .collect();
            let blocks = decode_all::<Block>(r[3].kvs())?
                .iter()
                .filter(|b| b.rack == name)
                .count();
            if !nodes.is_empty() || blocks > 0 {
                return Err(StoreError::Refused(format!(
                    "rack {name:?} is in use: {} node(s){} and {blocks} block(s); \
                     release the blocks and move the nodes to another rack first",
                    nodes.len(),
                    name_list(&nodes),
                )));
            }
            let bindings: Vec<String> = r[2]
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let k = String::from_utf8_lossy(kv.key());
                    let (_, rack) = self.keys.parse_racknet(&k)?;
                    (rack == name).then(|| k.to_string())
                })
                .collect();
            let mut ops = vec![TxnOp::delete(key.clone(), None)];
            ops.extend(bindings.iter().map(|k| TxnOp::delete(k.clone(), None)));
            let txn = Txn::new()
                .when(self.guard(vec![
                    Compare::mod_revision(key.clone(), CompareOp::Equal, rack_kv.mod_revision()),
                    unchanged_prefix(&nodes_prefix, rev),
                    unchanged_prefix(&racknets_prefix, rev),
                ]))
                .and_then(ops);
            if self.commit(txn).await?.succeeded() {
                return Ok(bindings.len());
            }
            self.check_fence().await?;
            debug!(rack = %name, "rack delete raced another update; retrying");
        }
        Err(StoreError::Contended(ATTEMPTS))
    }

    /// Creates or replaces the binding of `binding.rack` to
    /// `binding.network`, validated against the network, the other racks'
    /// ranges on it, and every other network's subnet and bindings. A
    /// replacement must keep every existing block of the rack inside the
    /// new ranges.
    // Stays long: one read-validate-write round per attempt, whose compares
    // must name exactly the records validated; the checks are helpers.
    pub async fn bind_rack(&self, binding: &RackNet) -> Result<RackNet> {
        let net_key = self.keys.network(&binding.network);
        let rack_key = self.keys.rack(&binding.rack);
        let key = self.keys.racknet(&binding.network, &binding.rack);
        let networks_prefix = self.keys.networks_prefix();
        let racknets_prefix = self.keys.all_racknets_prefix();
        let blocks_prefix = self.keys.blocks_prefix(&binding.network);
        rackline_model::network::validate_name(&binding.network)?;
        for _ in 0..ATTEMPTS {
            let (r, rev) = self
                .read_at_once(vec![
                    get(net_key.clone()),
                    get(rack_key.clone()),
                    get_prefix(networks_prefix.clone()),
                    get_prefix(racknets_prefix.clone()),
                    get_prefix(blocks_prefix.clone()),
                ])
                .await?;
            let Some(net_kv) = r[0].kvs().first() else {
                return Err(StoreError::NotFound(binding.network.clone()));
            };
            let net = decode_network(net_kv)?.spec;
            binding.validate(&net)?;
            let Some(rack_kv) = r[1].kvs().first() else {
                return Err(StoreError::Missing(Object::Rack(binding.rack.clone())));
            };
            let all = self.decode_bindings(r[3].kvs(), None, None)?;
            binding.check_overlap(&net, all.iter().filter(|b| b.network == net.name))?;
            subnet_clash(binding, &net, r[2].kvs(), &all)?;
            let existing = r[3]
                .kvs()
                .iter()
                .find(|kv| kv.key() == key.as_bytes())
                .map(KeyValue::mod_revision);
            let mut when = vec![
                Compare::mod_revision(net_key.clone(), CompareOp::Equal, net_kv.mod_revision()),
                Compare::mod_revision(rack_key.clone(), CompareOp::Equal, rack_kv.mod_revision()),
                unchanged_prefix(&networks_prefix, rev),
                unchanged_prefix(&racknets_prefix, rev),
            ];
            match existing {
                None => when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
                Some(seen) => {
                    // A replacement may not strand a block outside the
                    // rack's ranges, nor exclude an address inside a block
                    // (ipamd takes a block as allocatable end to end); blocks
                    // acquired meanwhile are caught by the prefix compare.
                    blocks_fit(binding, &net, r[4].kvs())?;
                    when.push(Compare::mod_revision(key.clone(), CompareOp::Equal, seen));
                    when.push(unchanged_prefix(&blocks_prefix, rev));
                }
            }
            let value = serde_json::to_vec(binding).expect("RackNet serialises");
            let txn =
                Txn::new()
                    .when(self.guard(when))
                    .and_then([TxnOp::put(key.clone(), value, None)]);
            if self.commit(txn).await?.succeeded() {
                return Ok(binding.clone());
            }
            self.check_fence().await?;
            debug!(rack = %binding.rack, network = %binding.network, "bind raced another update; retrying");
        }
        Err(StoreError::Contended(ATTEMPTS))
    }

    /// Removes a rack's binding to a network. Refused while the rack has
    /// blocks on the network, or nodes of the rack hold leases on it.
    ///
    /// New leases of the rack's nodes on a rack-bound network are written
    /// only inside the rack's blocks (none exist, and the blocks prefix is
    /// compared); the lease ranges of the rack's allocatable set are compared
    /// as well, so even a writer outside that contract cannot slip in.
    /// One attempt: one read at one revision, the census taken from it and
    /// the transaction compared against that revision.
    pub async fn unbind_rack(&self, rack: &str, network: &str) -> Result<()> {
        rackline_model::network::validate_name(network)?;
        let key = self.keys.racknet(network, rack);
        let nodes_prefix = self.keys.nodes_prefix();
        let blocks_prefix = self.keys.blocks_prefix(network);
        let leases_prefix = self.keys.leases_prefix(network);
        for _ in 0..ATTEMPTS {
            let (r, rev) = self
                .read_at_once(vec![
                    get(key.clone()),
                    get(self.keys.network(network)),
                    get_prefix(nodes_prefix.clone()),
                    get_prefix(blocks_prefix.clone()),
                    get_prefix(leases_prefix.clone()),
                ])
                .await?;
            let Some(binding_kv) = r[0].kvs().first() else {
                return Err(StoreError::Missing(Object::Binding {
                    rack: rack.to_string(),
                    network: network.to_string(),
                }));
            };
            let binding: RackNet = decode_json(binding_kv)?;
            refuse_if_in_use(rack, network, r[2].kvs(), r[3].kvs(), r[4].kvs())?;
            let mut when = vec![
                Compare::mod_revision(key.clone(), CompareOp::Equal, binding_kv.mod_revision()),
                unchanged_prefix(&nodes_prefix, rev),
                unchanged_prefix(&blocks_prefix, rev),
            ];
            when.extend(self.binding_lease_compares(
                network,
                &binding,
                r[1].kvs().first(),
                &leases_prefix,
                rev,
            )?);
            let marker = self.keys.drain(&DrainTarget::RackNet {
                network: network.to_string(),
                rack: rack.to_string(),
            });
            let txn = Txn::new().when(self.guard(when)).and_then([
                TxnOp::delete(key.clone(), None),
                TxnOp::delete(marker, None),
            ]);
            if self.commit(txn).await?.succeeded() {
                return Ok(());
            }
            self.check_fence().await?;
            debug!(%rack, %network, "unbind raced another update; retrying");
        }
        Err(StoreError::Contended(ATTEMPTS))
    }
}

impl LeaderStore {
    /// "No lease appeared since `rev`" for a binding being removed: over the
    /// binding's allocatable ranges of the network, or over every lease of
    /// the network when it is gone or the ranges are too many to compare.
    fn binding_lease_compares(
        &self,
        network: &str,
        binding: &RackNet,
        network_kv: Option<&KeyValue>,
        leases_prefix: &str,
        rev: i64,
    ) -> Result<Vec<Compare>> {
        let runs: Vec<(u32, u32)> = match network_kv {
            Some(kv) => binding
                .allocatable(&decode_network(kv)?.spec)
                .iter_runs()
                .collect(),
            None => Vec::new(),
        };
        if runs.is_empty() || runs.len() > MAX_RANGE_COMPARES {
            return Ok(vec![unchanged_prefix(leases_prefix, rev)]);
        }
        Ok(runs
            .into_iter()
            .map(|(s, e)| {
                let (start, end) = self.keys.lease_range(network, s.into(), e.into());
                unchanged_range(&start, &end, rev)
            })
            .collect())
    }
}

/// Refuses a binding whose subnet overlaps another network's subnet or
/// another network's rack binding.
fn subnet_clash(
    binding: &RackNet,
    net: &NetworkSpec,
    networks: &[KeyValue],
    all: &[RackNet],
) -> Result<()> {
    let bad = |why: String| {
        StoreError::Invalid(ValidationError::RackNet {
            rack: binding.rack.clone(),
            network: binding.network.clone(),
            why,
        })
    };
    for kv in networks {
        let other = decode_network(kv)?.spec;
        if other.name != net.name && binding.subnet.overlaps(other.subnet) {
            return Err(bad(format!(
                "subnet {} overlaps subnet {} of network {:?}",
                binding.subnet, other.subnet, other.name
            )));
        }
    }
    for o in all.iter().filter(|o| o.network != net.name) {
        if binding.subnet.overlaps(o.subnet) {
            return Err(bad(format!(
                "subnet {} overlaps subnet {} of rack {:?} on network {:?}",
                binding.subnet, o.subnet, o.rack, o.network
            )));
        }
    }
    Ok(())
}

/// Refuses a replacement binding that would leave one of the rack's
/// blocks on the network outside its allocatable ranges.
fn blocks_fit(binding: &RackNet, net: &NetworkSpec, blocks: &[KeyValue]) -> Result<()> {
    let allocatable = binding.allocatable(net);
    for b in decode_all::<Block>(blocks)? {
        let (lo, hi) = b.span();
        if b.rack == binding.rack && allocatable.count_in(lo, hi) != u64::from(b.size) {
            return Err(StoreError::Refused(format!(
                "block {} (node {:?}) of rack {:?} would fall outside the new \
                 ranges (or into an exclusion) on network {:?}; release it first",
                b.first, b.node, binding.rack, binding.network
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_lists_are_short() {
        assert_eq!(name_list(&[]), "");
        let names: Vec<String> = (1..=7).map(|i| format!("n{i}")).collect();
        assert_eq!(name_list(&names[..2]), " (n1, n2)");
        assert_eq!(name_list(&names), " (n1, n2, n3, n4, n5, …)");
    }
}
