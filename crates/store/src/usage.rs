//! Pool utilisation per network × rack, the numbers an operator reads to
//! see which rack runs out first.
//!
//! Nothing is iterated per address: capacities are interval-set sizes,
//! block figures come from the block records, and lease counts are
//! count-only range reads over the runs of each allocatable set (a /8 costs
//! what a /24 costs).

use rackline_model::network::validate_name;
use rackline_model::{Block, IntervalSet, NetworkSpec, Pool, RackNet};

use crate::facets::AdminReads;
use crate::racks::decode_all;
use crate::reads::{get, get_prefix};
use crate::{decode_network, Result, StoreError};

/// One row of the utilisation table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Utilization {
    pub network: String,
    /// Empty for a block-less (single-rack) network.
    pub rack: String,
    /// Addresses the rack may ever hand out on this network.
    pub capacity: u64,
    pub blocks: u64,
    /// Addresses inside the rack's blocks.
    pub in_blocks: u64,
    /// Lease keys inside the rack's allocatable set.
    pub leased: u64,
    /// `capacity - leased`.
    pub free: u64,
}

impl AdminReads<'_> {
    /// Rows by network, then rack: one per binding, or one with rack ""
    /// for a network without bindings. `network` restricts to one network
    /// (`NotFound` if it does not exist).
    pub async fn utilization(&self, network: Option<&str>) -> Result<Vec<Utilization>> {
        let (nets_op, racknets, blocks) = match network {
            Some(n) => {
                validate_name(n)?;
                (
                    get(self.keys.network(n)),
                    self.keys.racknets_prefix(n),
                    self.keys.blocks_prefix(n),
                )
            }
            None => (
                get_prefix(self.keys.networks_prefix()),
                self.keys.all_racknets_prefix(),
                self.keys.all_blocks_prefix(),
            ),
        };
        let (r, rev) = self
            .read_at_once(vec![nets_op, get_prefix(racknets), get_prefix(blocks)])
            .await?;
        let mut nets: Vec<NetworkSpec> = r[0]
            .kvs()
            .iter()
            .map(|kv| decode_network(kv).map(|n| n.spec))
            .collect::<Result<_>>()?;
        if let Some(n) = network {
            if nets.is_empty() {
                return Err(StoreError::NotFound(n.to_string()));
            }
        }
        nets.sort_by(|a, b| a.name.cmp(&b.name));
        let bindings = self.decode_bindings(r[1].kvs(), network, None)?;
        let blocks: Vec<Block> = decode_all(r[2].kvs())?;
        let (mut rows, sets) = plan(&nets, &bindings, &blocks);
        // One count per run of every row's allocatable set, all at `rev`.
        let mut ranges = Vec::new();
        let mut owner = Vec::new();
        for (i, (row, set)) in rows.iter().zip(&sets).enumerate() {
            for (s, e) in set.iter_runs() {
                ranges.push(self.keys.lease_range(&row.network, s.into(), e.into()));
                owner.push(i);
            }
        }
        let counts = self.count_ranges(&ranges, rev).await?;
        for (i, c) in owner.into_iter().zip(counts) {
            rows[i].leased += c;
        }
        for row in &mut rows {
            row.free = row.capacity.saturating_sub(row.leased);
        }
        Ok(rows)
    }
}

/// The rows without their lease counts, and each row's allocatable set.
fn plan(
    nets: &[NetworkSpec],
    bindings: &[RackNet],
    blocks: &[Block],
) -> (Vec<Utilization>, Vec<IntervalSet>) {
    let mut rows = Vec::new();
    let mut sets = Vec::new();
    for net in nets {
        let mine: Vec<&RackNet> = bindings.iter().filter(|b| b.network == net.name).collect();
        if mine.is_empty() {
            let set = Pool::new(net).allocatable().clone();
            rows.push(Utilization {
                network: net.name.clone(),
                capacity: set.len(),
                ..Default::default()
            });
            sets.push(set);
            continue;
        }
        for b in mine {
            let set = b.allocatable(net);
            let (count, size) = blocks
                .iter()
                .filter(|x| x.network == net.name && x.rack == b.rack)
                .fold((0u64, 0u64), |(n, s), x| (n + 1, s + u64::from(x.size)));
            rows.push(Utilization {
                network: net.name.clone(),
                rack: b.rack.clone(),
                capacity: set.len(),
                blocks: count,
                in_blocks: size,
                ..Default::default()
            });
            sets.push(set);
        }
    }
    (rows, sets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    use rackline_testkit::fixtures::network as net;

    #[test]
    fn rows_per_binding_or_one_for_a_blockless_network() {
        let nets = [
            net("dev", "10.20.0.0/24", "10.20.0.1"),
            net("prod", "10.10.0.0/16", "10.10.0.1"),
        ];
        let binding = |rack: &str, range: &str| RackNet {
            rack: rack.into(),
            network: "prod".into(),
            subnet: "10.10.0.0/16".parse().unwrap(),
            gateway: "10.10.0.1".parse().unwrap(),
            ranges: vec![range.parse().unwrap()],
            exclude: vec![],
        };
        let bindings = [binding("r1", "10.10.1.0/24"), binding("r2", "10.10.2.0/25")];
        let block = |rack: &str, first: [u8; 4], size| Block {
            network: "prod".into(),
            rack: rack.into(),
            first: Ipv4Addr::from(first),
            size,
            node: "n".into(),
            created_unix_ms: 0,
        };
        let blocks = [
            block("r1", [10, 10, 1, 0], 16),
            block("r1", [10, 10, 1, 16], 16),
            block("r2", [10, 10, 2, 0], 16),
        ];
        let (rows, sets) = plan(&nets, &bindings, &blocks);
        let got: Vec<(&str, &str, u64, u64, u64)> = rows
            .iter()
            .map(|r| {
                (
                    r.network.as_str(),
                    r.rack.as_str(),
                    r.capacity,
                    r.blocks,
                    r.in_blocks,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("dev", "", 253, 0, 0),
                ("prod", "r1", 256, 2, 32),
                ("prod", "r2", 128, 1, 16),
            ]
        );
        assert_eq!(sets[1].runs(), 1);
    }
}
