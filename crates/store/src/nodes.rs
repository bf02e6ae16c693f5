//! Nodes (`nodes/<node>`), registered by their ipamd through netmaster. A
//! node belongs to exactly one rack; it may change rack only while it owns
//! no block and no lease (its addresses belong to its old rack's ranges).

use std::collections::{BTreeMap, HashMap};

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rackline_model::{Block, DrainTarget, Lease, Node};
use tracing::{debug, warn};

use crate::blocks::BlockUsage;
use crate::facets::AdminReads;
use crate::racks::decode_all;
use crate::reads::{get, get_prefix, now_unix_ms, unchanged_prefix, ATTEMPTS};
use crate::{decode_json, LeaderStore, Object, Result, Store, StoreError};

/// A node with what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub node: Node,
    /// By network, then first address.
    pub blocks: Vec<BlockUsage>,
    /// Leases recorded for the node, on every network.
    pub leases: u64,
    /// A drain marker is up for the node (`racklinectl node drain`).
    pub draining: bool,
    /// The node's ipamd holds its liveness record (runs and reaches etcd).
    pub live: bool,
}

impl Store {
    /// Every lease as of `revision`, read in pages (the records of 100 000
    /// leases exceed etcd's answer size limit in one read).
    async fn leases_at(&self, revision: i64) -> Result<Vec<Lease>> {
        let mut leases = Vec::new();
        self.for_each_page(&self.keys.all_leases_prefix(), revision, |kvs| {
            leases.extend(decode_leases_lenient(kvs));
            Ok(())
        })
        .await?;
        Ok(leases)
    }

    /// Fills in `draining` and `live` from the drain markers and liveness
    /// records read with the nodes.
    fn add_states(
        &self,
        infos: &mut [NodeInfo],
        drains: &[etcd_client::KeyValue],
        liveness: &[etcd_client::KeyValue],
    ) {
        let keys = |kvs: &[etcd_client::KeyValue]| -> std::collections::HashSet<String> {
            kvs.iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
                .collect()
        };
        let (drains, liveness) = (keys(drains), keys(liveness));
        for i in infos {
            let name = i.node.name.clone();
            i.draining = drains.contains(&self.keys.drain(&DrainTarget::Node(name.clone())));
            i.live = liveness.contains(&self.keys.liveness(&name));
        }
    }
}

impl AdminReads<'_> {
    pub async fn get_node(&self, name: &str) -> Result<Option<NodeInfo>> {
        let (r, rev) = self
            .read_at_once(vec![
                get(self.keys.node(name)),
                get_prefix(self.keys.all_blocks_prefix()),
                get_prefix(self.keys.drains_prefix()),
                get_prefix(self.keys.liveness_prefix()),
            ])
            .await?;
        let Some(kv) = r[0].kvs().first() else {
            return Ok(None);
        };
        let node: Node = decode_json(kv)?;
        let leases = self.leases_at(rev).await?;
        let mut infos = node_infos(vec![node], decode_all(r[1].kvs())?, leases);
        self.add_states(&mut infos, r[2].kvs(), r[3].kvs());
        Ok(infos.into_iter().next())
    }

    /// Nodes (of one rack, or all) by name, with their blocks and lease
    /// counts from one consistent read.
    pub async fn list_nodes(&self, rack: Option<&str>) -> Result<Vec<NodeInfo>> {
        let (r, rev) = self
            .read_at_once(vec![
                get_prefix(self.keys.nodes_prefix()),
                get_prefix(self.keys.all_blocks_prefix()),
                get_prefix(self.keys.drains_prefix()),
                get_prefix(self.keys.liveness_prefix()),
            ])
            .await?;
        let mut nodes: Vec<Node> = decode_all::<Node>(r[0].kvs())?
            .into_iter()
            .filter(|n| rack.is_none_or(|r| r == n.rack))
            .collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        // The leases at the same revision: one consistent state.
        let leases = self.leases_at(rev).await?;
        let mut infos = node_infos(nodes, decode_all(r[1].kvs())?, leases);
        self.add_states(&mut infos, r[2].kvs(), r[3].kvs());
        Ok(infos)
    }
}

fn rack_of(kv: &etcd_client::KeyValue) -> Option<String> {
    decode_json::<Node>(kv).ok().map(|n| n.rack)
}

/// Lease records are written by every ipamd; one that does not decode is
/// skipped (and logged) rather than failing an admin view. Its key still
/// exists, so it still blocks its address for allocation.
pub(crate) fn decode_leases_lenient(kvs: &[etcd_client::KeyValue]) -> Vec<Lease> {
    kvs.iter()
        .filter_map(|kv| match decode_json::<Lease>(kv) {
            Ok(l) => Some(l),
            Err(e) => {
                warn!("ignoring an undecodable record: {e}");
                None
            }
        })
        .collect()
}

/// Attaches to each node its blocks (with their lease counts) and its lease
/// count. Cost: O((blocks + leases) · log blocks); nothing per address.
pub(crate) fn node_infos(
    nodes: Vec<Node>,
    blocks: Vec<Block>,
    leases: Vec<Lease>,
) -> Vec<NodeInfo> {
    // network -> first address -> index into `blocks`
    let mut by_first: HashMap<&str, BTreeMap<u32, usize>> = HashMap::new();
    for (i, b) in blocks.iter().enumerate() {
        by_first
            .entry(b.network.as_str())
            .or_default()
            .insert(u32::from(b.first), i);
    }
    let mut leased = vec![0u64; blocks.len()];
    let mut per_node: HashMap<&str, u64> = HashMap::new();
    for l in &leases {
        *per_node.entry(l.node.as_str()).or_default() += 1;
        let ip = u32::from(l.address);
        if let Some((_, &i)) = by_first
            .get(l.network.as_str())
            .and_then(|m| m.range(..=ip).next_back())
        {
            if blocks[i].contains(l.address) {
                leased[i] += 1;
            }
        }
    }
    let mut held: HashMap<&str, Vec<BlockUsage>> = HashMap::new();
    for (b, n) in blocks.iter().zip(leased) {
        held.entry(b.node.as_str()).or_default().push(BlockUsage {
            block: b.clone(),
            leased: n,
        });
    }
    nodes
        .into_iter()
        .map(|node| {
            let mut blocks = held.remove(node.name.as_str()).unwrap_or_default();
            blocks.sort_by(|a, b| {
                (&a.block.network, u32::from(a.block.first))
                    .cmp(&(&b.block.network, u32::from(b.block.first)))
            });
            let leases = per_node.get(node.name.as_str()).copied().unwrap_or(0);
            NodeInfo {
                node,
                blocks,
                leases,
                draining: false,
                live: false,
            }
        })
        .collect()
}

impl LeaderStore {
    /// The compares a node's move to another rack is written under: the
    /// node's record and its new rack's as read, and no block or lease written
    /// since the read that found the node holding none. Refused while it
    /// holds any; None when the record changed under the read (read again).
    async fn move_guards(&self, node: &Node) -> Result<Option<Vec<Compare>>> {
        let key = self.keys.node(&node.name);
        let rack_key = self.keys.rack(&node.rack);
        let blocks_prefix = self.keys.all_blocks_prefix();
        let leases_prefix = self.keys.all_leases_prefix();
        let (r, rev) = self
            .read_at_once(vec![
                get(key.clone()),
                get(rack_key.clone()),
                get_prefix(blocks_prefix.clone()),
                get_prefix(leases_prefix.clone()),
            ])
            .await?;
        let (Some(node_kv), Some(rack_kv)) = (r[0].kvs().first(), r[1].kvs().first()) else {
            return Ok(None);
        };
        let old_rack = rack_of(node_kv).unwrap_or_else(|| "?".into());
        if old_rack == node.rack {
            return Ok(None);
        }
        let blocks = decode_all::<Block>(r[2].kvs())?
            .iter()
            .filter(|b| b.node == node.name)
            .count();
        let leases = decode_leases_lenient(r[3].kvs())
            .iter()
            .filter(|l| l.node == node.name)
            .count();
        if blocks > 0 || leases > 0 {
            return Err(StoreError::Refused(format!(
                "node {:?} is registered in rack {old_rack:?} and still owns {blocks} \
                     block(s) and {leases} lease(s); it can move to rack {:?} only once \
                     they are released",
                node.name, node.rack
            )));
        }
        Ok(Some(vec![
            Compare::mod_revision(rack_key.clone(), CompareOp::Equal, rack_kv.mod_revision()),
            Compare::mod_revision(key.clone(), CompareOp::Equal, node_kv.mod_revision()),
            unchanged_prefix(&blocks_prefix, rev),
            unchanged_prefix(&leases_prefix, rev),
        ]))
    }

    /// Registers `node` (or refreshes its addresses and registration time)
    /// and returns the stored record. The rack must exist; moving to another
    /// rack is refused while the node owns blocks or leases.
    pub async fn register_node(&self, node: &Node) -> Result<Node> {
        node.validate()?;
        let key = self.keys.node(&node.name);
        let rack_key = self.keys.rack(&node.rack);
        for _ in 0..ATTEMPTS {
            // The cheap read first: re-registration in the same rack (every
            // ipamd start) must not read every lease of the cluster.
            let (r, _) = self
                .read_at_once(vec![get(key.clone()), get(rack_key.clone())])
                .await?;
            let Some(rack_kv) = r[1].kvs().first() else {
                return Err(StoreError::Missing(Object::Rack(node.rack.clone())));
            };
            let mut when = vec![Compare::mod_revision(
                rack_key.clone(),
                CompareOp::Equal,
                rack_kv.mod_revision(),
            )];
            match r[0].kvs().first() {
                None => when.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0)),
                Some(kv) if rack_of(kv).as_deref() == Some(node.rack.as_str()) => when.push(
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                ),
                Some(_) => {
                    // A move: everything the node holds, at one revision.
                    let Some(guards) = self.move_guards(node).await? else {
                        continue;
                    };
                    when = guards;
                }
            }
            let mut record = node.clone();
            record.registered_unix_ms = now_unix_ms();
            let value = serde_json::to_vec(&record).expect("Node serialises");
            let txn =
                Txn::new()
                    .when(self.guard(when))
                    .and_then([TxnOp::put(key.clone(), value, None)]);
            if self.commit(txn).await?.succeeded() {
                return Ok(record);
            }
            self.check_fence().await?;
            debug!(node = %node.name, "node registration raced another update; retrying");
        }
        Err(StoreError::Contended(ATTEMPTS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            rack: "r1".into(),
            addresses: vec![],
            registered_unix_ms: 0,
        }
    }

    fn block(net: &str, first: [u8; 4], size: u32, node: &str) -> Block {
        Block {
            network: net.into(),
            rack: "r1".into(),
            first: Ipv4Addr::from(first),
            size,
            node: node.into(),
            created_unix_ms: 0,
        }
    }

    fn lease(net: &str, ip: [u8; 4], node: &str) -> Lease {
        rackline_testkit::fixtures::lease(net, Ipv4Addr::from(ip))
            .node(node)
            .container("c")
            .build()
    }

    #[test]
    fn blocks_and_leases_are_attributed() {
        let infos = node_infos(
            vec![node("n1"), node("n2"), node("n3")],
            vec![
                block("prod", [10, 0, 0, 16], 16, "n1"),
                block("prod", [10, 0, 0, 2], 14, "n1"),
                block("dev", [10, 0, 0, 16], 16, "n2"),
            ],
            vec![
                lease("prod", [10, 0, 0, 17], "n1"),
                lease("prod", [10, 0, 0, 31], "n2"), // borrowed from n1's block
                lease("prod", [10, 0, 0, 32], "n1"), // outside every block
                lease("dev", [10, 0, 0, 20], "n2"),
                lease("other", [10, 0, 0, 20], "n2"),
            ],
        );
        let n1 = &infos[0];
        assert_eq!(n1.leases, 2);
        let firsts: Vec<(String, u64)> = n1
            .blocks
            .iter()
            .map(|b| (b.block.first.to_string(), b.leased))
            .collect();
        assert_eq!(
            firsts,
            [("10.0.0.2".to_string(), 0), ("10.0.0.16".to_string(), 2)]
        );
        assert_eq!(infos[1].leases, 3);
        assert_eq!(infos[1].blocks.len(), 1);
        assert_eq!(infos[1].blocks[0].leased, 1);
        assert_eq!((infos[2].leases, infos[2].blocks.len()), (0, 0));
    }
}
