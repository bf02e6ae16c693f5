//! Blocks (`blocks/<network>/<first>`): aligned runs of a rack's addresses,
//! each owned by one node of the rack, written only by the netmaster leader
//! in fenced transactions.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use rackline_model::block::{next_free_block, MAX_BLOCK_SIZE};
use rackline_model::network::validate_name;
use rackline_model::rack::validate_node_name;
use rackline_model::{Block, DrainTarget, Infra, IntervalSet, NetworkSpec, Node, RackNet};
use tracing::debug;

use crate::facets::AdminReads;
use crate::racks::decode_all;
use crate::reads::{after, get, get_prefix, now_unix_ms, unchanged_range, ATTEMPTS};
use crate::{
    decode_json, decode_network, LeaderStore, Object, Result, Store, StoreError, StoredBlock,
};

/// Concurrent acquisitions in one rack all pick the lowest free block, so
/// each round exactly one of them wins: a burst of N needs up to N rounds.
const ACQUIRE_ATTEMPTS: u32 = 64;

/// A block with the number of lease keys inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockUsage {
    pub block: Block,
    pub leased: u64,
}

/// Block filters, combined with AND; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlockFilter {
    pub network: Option<String>,
    pub rack: Option<String>,
    pub node: Option<String>,
}

impl BlockFilter {
    pub fn matches(&self, b: &Block) -> bool {
        self.network.as_ref().is_none_or(|n| *n == b.network)
            && self.rack.as_ref().is_none_or(|r| *r == b.rack)
            && self.node.as_ref().is_none_or(|n| *n == b.node)
    }
}

/// What `acquire_block` handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcquiredBlock {
    pub block: StoredBlock,
    /// False: a block the node already owned and the caller did not know
    /// (see [`LeaderStore::acquire_block`]); nothing was written.
    pub created: bool,
}

impl Store {
    /// The lowest block of `node` in `rack` that is not in `known`.
    fn unknown_owned_block(
        &self,
        kvs: &[etcd_client::KeyValue],
        node: &str,
        rack: &str,
        known: &[Ipv4Addr],
    ) -> Result<Option<StoredBlock>> {
        let mut found: Option<StoredBlock> = None;
        for kv in kvs {
            let b: Block = decode_json(kv)?;
            if b.node != node || b.rack != rack || known.contains(&b.first) {
                continue;
            }
            if found
                .as_ref()
                .is_none_or(|f| u32::from(b.first) < u32::from(f.block.first))
            {
                found = Some(StoredBlock {
                    block: b,
                    mod_revision: kv.mod_revision(),
                });
            }
        }
        Ok(found)
    }

    /// The drain markers that would refuse `node` a block on `network`;
    /// refuses now if one of them is in `drains_kvs` (read with the rest),
    /// and returns their keys for the write to compare absent.
    fn refuse_drained(
        &self,
        drains_kvs: &[etcd_client::KeyValue],
        network: &str,
        node: &str,
        rack: &str,
    ) -> Result<Vec<String>> {
        // A drained node, a network being deleted or a binding being
        // removed gets no new block: those are being emptied.
        let drains = [
            DrainTarget::Node(node.to_string()),
            DrainTarget::Network(network.to_string()),
            DrainTarget::RackNet {
                network: network.to_string(),
                rack: rack.to_string(),
            },
        ];
        let drain_keys: Vec<String> = drains.iter().map(|t| self.keys.drain(t)).collect();
        if let Some(t) = drains.iter().zip(&drain_keys).find_map(|(t, k)| {
            drains_kvs
                .iter()
                .any(|kv| kv.key() == k.as_bytes())
                .then_some(t)
        }) {
            return Err(StoreError::Refused(format!(
                "{} is being drained: no new block for node {node:?}",
                t.describe()
            )));
        }
        Ok(drain_keys)
    }
}

/// The lowest free block of `rack`'s allocatable ranges on `network`,
/// leaving out every rack's gateways and the blocks already carved.
fn carve_block(
    net: &NetworkSpec,
    binding: &RackNet,
    racknets: &[etcd_client::KeyValue],
    blocks: &[etcd_client::KeyValue],
    network: &str,
    node: &str,
    rack: &str,
) -> Result<Block> {
    let mut allocatable = binding.allocatable(net);
    let bindings = decode_all::<RackNet>(racknets)?;
    for (s, e) in Infra::gateways(net, &bindings).set().iter_runs() {
        allocatable.remove_range(s, e);
    }
    let mut assigned = IntervalSet::new();
    for b in decode_all::<Block>(blocks)? {
        let (lo, hi) = b.span();
        assigned.insert_range(lo, hi);
    }
    let from = allocatable.iter_runs().next().map_or(0, |(s, _)| s);
    let Some((lo, hi)) = next_free_block(&allocatable, &assigned, net.block_size, from) else {
        return Err(StoreError::Exhausted {
            network: network.to_string(),
            rack: rack.to_string(),
        });
    };
    Ok(Block {
        network: network.to_string(),
        rack: rack.to_string(),
        first: Ipv4Addr::from(lo),
        size: hi - lo + 1,
        node: node.to_string(),
        created_unix_ms: now_unix_ms(),
    })
}

impl AdminReads<'_> {
    /// Blocks matching `filter` by network, then address, each with the
    /// number of lease keys in its range (count-only reads, no values).
    pub async fn list_blocks(&self, filter: &BlockFilter) -> Result<Vec<BlockUsage>> {
        let prefix = match &filter.network {
            Some(n) => {
                validate_name(n)?;
                self.keys.blocks_prefix(n)
            }
            None => self.keys.all_blocks_prefix(),
        };
        let (r, rev) = self.read_at_once(vec![get_prefix(prefix)]).await?;
        let mut blocks: Vec<Block> = decode_all::<Block>(r[0].kvs())?
            .into_iter()
            .filter(|b| filter.matches(b))
            .collect();
        blocks.sort_by(|a, b| {
            (&a.network, u32::from(a.first)).cmp(&(&b.network, u32::from(b.first)))
        });
        let ranges: Vec<(String, String)> = blocks
            .iter()
            .map(|b| self.keys.lease_range(&b.network, b.first, b.last()))
            .collect();
        let counts = self.count_ranges(&ranges, rev).await?;
        Ok(blocks
            .into_iter()
            .zip(counts)
            .map(|(block, leased)| BlockUsage { block, leased })
            .collect())
    }
}

impl LeaderStore {
    /// Hands `node` the lowest free block of its rack's ranges on `network`.
    ///
    /// The transaction creates the block key only if no block starting
    /// where an overlapping one could start (`[first - 255, last]`: blocks
    /// are at most 256 long) was written since the read, and only while the
    /// node, its rack's binding and the network are the records the choice
    /// was made from. Acquisitions elsewhere in the network do not conflict
    /// with it.
    ///
    /// Idempotence: a request carries no id, and the reply of a committed
    /// acquisition can be lost (deadline, leader failover) — the caller then
    /// asks again; it also asks again when its watch has not yet delivered
    /// the block the previous reply named. With `known` (the node's blocks
    /// the caller has seen), a block the node owns that is not among them is
    /// returned as it is, written by an earlier call: the node's free space
    /// is what it asked for, and that block is free space it has not
    /// counted. Returning an owned block with free space regardless of
    /// `known` would be wrong: a node asks while it still has a few free
    /// addresses (its watermark), so "owns a block with room" does not mean
    /// "was already served". `None` (racklinectl, an older ipamd): a new
    /// block every time.
    ///
    /// Gateways of every rack on the network are left out of the carved
    /// block, like the binding's exclusions. Registered node addresses are
    /// not: a node registers (or changes address) after blocks exist, so
    /// ipamd skips them when it picks an address anyway, and carving around
    /// them would split the windows they sit in into slivers of a few
    /// addresses, each a block record of its own.
    // Stays long: one read-decide-write round per attempt, whose compares
    // must name exactly the records the decision read; the decisions are helpers.
    pub async fn acquire_block(
        &self,
        network: &str,
        node: &str,
        known: Option<&[Ipv4Addr]>,
    ) -> Result<AcquiredBlock> {
        validate_name(network)?;
        validate_node_name(node)?;
        let node_key = self.keys.node(node);
        let net_key = self.keys.network(network);
        for _ in 0..ACQUIRE_ATTEMPTS {
            let (r, rev) = self
                .read_at_once(vec![
                    get(node_key.clone()),
                    get(net_key.clone()),
                    get_prefix(self.keys.racknets_prefix(network)),
                    get_prefix(self.keys.blocks_prefix(network)),
                    get_prefix(self.keys.drains_prefix()),
                ])
                .await?;
            let Some(node_kv) = r[0].kvs().first() else {
                return Err(StoreError::Missing(Object::Node(node.to_string())));
            };
            let owner: Node = decode_json(node_kv)?;
            let Some(net_kv) = r[1].kvs().first() else {
                return Err(StoreError::NotFound(network.to_string()));
            };
            let net = decode_network(net_kv)?.spec;
            let binding_key = self.keys.racknet(network, &owner.rack);
            let Some(binding_kv) = r[2]
                .kvs()
                .iter()
                .find(|kv| kv.key() == binding_key.as_bytes())
            else {
                return Err(StoreError::Missing(Object::Binding {
                    rack: owner.rack,
                    network: network.to_string(),
                }));
            };
            let binding: RackNet = decode_json(binding_kv)?;
            let drain_keys = self.refuse_drained(r[4].kvs(), network, node, &owner.rack)?;
            if let Some(known) = known {
                if let Some(b) = self.unknown_owned_block(r[3].kvs(), node, &owner.rack, known)? {
                    debug!(%network, %node, first = %b.block.first, "node asked again; its unseen block is the answer");
                    return Ok(AcquiredBlock {
                        block: b,
                        created: false,
                    });
                }
            }
            let block = carve_block(
                &net,
                &binding,
                r[2].kvs(),
                r[3].kvs(),
                network,
                node,
                &owner.rack,
            )?;
            let key = self.keys.block(network, block.first);
            let (lo, hi) = block.span();
            let guard_start = self.keys.block(
                network,
                Ipv4Addr::from(lo.saturating_sub(MAX_BLOCK_SIZE - 1)),
            );
            let guard_end = after(&self.keys.block(network, Ipv4Addr::from(hi)));
            let mut when = vec![
                Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                unchanged_range(&guard_start, &guard_end, rev),
                Compare::mod_revision(node_key.clone(), CompareOp::Equal, node_kv.mod_revision()),
                Compare::mod_revision(binding_key, CompareOp::Equal, binding_kv.mod_revision()),
                Compare::mod_revision(net_key.clone(), CompareOp::Equal, net_kv.mod_revision()),
            ];
            when.extend(
                drain_keys
                    .into_iter()
                    .map(|k| Compare::create_revision(k, CompareOp::Equal, 0)),
            );
            let value = serde_json::to_vec(&block).expect("Block serialises");
            let txn = Txn::new()
                .when(self.guard(when))
                .and_then([TxnOp::put(key, value, None)]);
            let resp = self.commit(txn).await?;
            if resp.succeeded() {
                let mod_revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                return Ok(AcquiredBlock {
                    block: StoredBlock {
                        block,
                        mod_revision,
                    },
                    created: true,
                });
            }
            self.check_fence().await?;
            debug!(%network, %node, first = %block.first, "block acquisition raced another; retrying");
        }
        Err(StoreError::Contended(ACQUIRE_ATTEMPTS))
    }

    /// Returns `node`'s block starting at `first` on `network`: deleted only
    /// if it is still the record read (same owner) and no lease key exists in
    /// its address range, both checked by the delete transaction itself.
    /// `Ok(false)` when the block is already gone (a retried release).
    pub async fn release_block(&self, network: &str, first: Ipv4Addr, node: &str) -> Result<bool> {
        validate_name(network)?;
        let key = self.keys.block(network, first);
        for _ in 0..ATTEMPTS {
            let (r, _) = self.read_at_once(vec![get(key.clone())]).await?;
            let Some(kv) = r[0].kvs().first() else {
                return Ok(false);
            };
            let b: Block = decode_json(kv)?;
            if b.node != node {
                return Err(StoreError::Refused(format!(
                    "block {first} of network {network:?} belongs to node {:?}, not {node:?}",
                    b.node
                )));
            }
            let (start, end) = self.keys.lease_range(network, b.first, b.last());
            let txn = Txn::new()
                .when(self.guard(vec![
                    Compare::mod_revision(key.clone(), CompareOp::Equal, kv.mod_revision()),
                    Compare::version(start.clone(), CompareOp::Equal, 0).with_range(end.clone()),
                ]))
                .and_then([TxnOp::delete(key.clone(), None)])
                .or_else([TxnOp::get(
                    start,
                    Some(GetOptions::new().with_range(end).with_count_only()),
                )]);
            let resp = self.commit(txn).await?;
            if resp.succeeded() {
                return Ok(true);
            }
            let leased = match resp.op_responses().first() {
                Some(TxnOpResponse::Get(g)) => g.count(),
                _ => 0,
            };
            if leased > 0 {
                return Err(StoreError::Refused(format!(
                    "block {first} of network {network:?} still has {leased} lease(s); \
                     only an empty block can be released"
                )));
            }
            self.check_fence().await?;
        }
        Err(StoreError::Contended(ATTEMPTS))
    }
}
