//! Blocks: aligned runs of a rack's addresses owned by one node, so a node
//! allocates inside its own blocks without contending with anyone.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::IntervalSet;

pub const DEFAULT_BLOCK_SIZE: u32 = 16;
pub const MIN_BLOCK_SIZE: u32 = 4;
pub const MAX_BLOCK_SIZE: u32 = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Block {
    pub network: String,
    pub rack: String,
    pub first: Ipv4Addr,
    /// Number of allocatable addresses from `first` (a block at the edge of
    /// a range may be shorter than the network's block size).
    pub size: u32,
    pub node: String,
    #[serde(default)]
    pub created_unix_ms: i64,
}

impl Block {
    pub fn last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first) + self.size - 1)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last())).contains(&u32::from(ip))
    }

    /// `(first, last)` as integers.
    pub fn span(&self) -> (u32, u32) {
        (u32::from(self.first), u32::from(self.first) + self.size - 1)
    }
}

/// Finds the next free block: a run of up to `size` allocatable addresses
/// inside one `size`-aligned window, not overlapping any assigned block,
/// starting the search at `from`. Jumps over whole runs of assigned blocks
/// and of unallocatable space, so a /8 costs what a /24 costs.
pub fn next_free_block(
    allocatable: &IntervalSet,
    assigned: &IntervalSet,
    size: u32,
    from: u32,
) -> Option<(u32, u32)> {
    debug_assert!(size.is_power_of_two());
    let mut c = from;
    let mut wrapped = false;
    loop {
        let Some((s, e)) = allocatable.run_at_or_after(c) else {
            if wrapped {
                return None;
            }
            wrapped = true;
            c = 0;
            continue;
        };
        let x = c.max(s);
        if wrapped && x >= from {
            return None;
        }
        let window_start = x & !(size - 1);
        let window_end = window_start.saturating_add(size - 1);
        let lo = x;
        let hi = window_end.min(e);
        if let Some((_, ae)) = assigned.clip(lo, hi).iter_runs().last() {
            // Something in this window is assigned: skip past the assigned
            // run, to the next window boundary.
            let skip_to = assigned
                .run_containing(ae)
                .map(|(_, end)| end)
                .unwrap_or(ae);
            match skip_to.checked_add(1) {
                Some(n) => c = n,
                None => {
                    wrapped = true;
                    c = 0;
                }
            }
            continue;
        }
        // Free: extend back to the window start when those addresses are
        // allocatable and unassigned (a block never straddles a window).
        let mut start = lo;
        while start > window_start
            && allocatable.contains(start - 1)
            && !assigned.contains(start - 1)
        {
            start -= 1;
        }
        return Some((start, hi));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(runs: &[(u32, u32)]) -> IntervalSet {
        let mut s = IntervalSet::new();
        for (a, b) in runs {
            s.insert_range(*a, *b);
        }
        s
    }

    #[test]
    fn carves_aligned_blocks_in_order_until_full() {
        let alloc = set(&[(2, 61)]);
        let mut assigned = IntervalSet::new();
        let mut got = Vec::new();
        while let Some((a, b)) = next_free_block(&alloc, &assigned, 16, 0) {
            assigned.insert_range(a, b);
            got.push((a, b));
        }
        assert_eq!(got, vec![(2, 15), (16, 31), (32, 47), (48, 61)]);
        assert_eq!(assigned.len(), alloc.len());
    }

    #[test]
    fn reuses_a_returned_block_and_skips_holes() {
        let alloc = set(&[(0, 15), (32, 47)]);
        let mut assigned = set(&[(0, 15)]);
        assert_eq!(next_free_block(&alloc, &assigned, 16, 0), Some((32, 47)));
        assigned.insert_range(32, 47);
        assert_eq!(next_free_block(&alloc, &assigned, 16, 0), None);
        assigned.remove_range(0, 15);
        assert_eq!(next_free_block(&alloc, &assigned, 16, 40), Some((0, 15)));
    }

    #[test]
    fn a_huge_range_with_many_assigned_blocks_is_cheap() {
        // 10.0.0.0/8: one allocatable run; the first 100k blocks assigned as
        // one merged run. The search is a handful of jumps.
        let alloc = set(&[(0x0a00_0001, 0x0aff_fffe)]);
        let assigned = set(&[(0x0a00_0001, 0x0a00_0000 + 16 * 100_000 - 1)]);
        let t = std::time::Instant::now();
        let b = next_free_block(&alloc, &assigned, 16, 0).unwrap();
        assert_eq!(
            b,
            (0x0a00_0000 + 16 * 100_000, 0x0a00_0000 + 16 * 100_000 + 15)
        );
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
    }
}
