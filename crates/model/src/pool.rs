//! Free-space bookkeeping for one network's address range.
//!
//! Only taken and reserved addresses are stored, as runs; finding a free
//! address jumps from run to run. A /16 costs the same as a /24 unless the
//! taken set is badly fragmented.

use std::net::Ipv4Addr;

use crate::{IntervalSet, NetworkSpec};

#[derive(Debug, Clone)]
pub struct Pool {
    /// Every address that may be handed out, as runs (a network's range
    /// minus reservations, or the union of a node's blocks), minus
    /// `withheld`.
    allocatable: IntervalSet,
    /// Everything added, withheld or not: what an address that stops being
    /// withheld returns to.
    added: IntervalSet,
    /// Infrastructure addresses (nodes' own, gateways) never handed out even
    /// inside the ranges; kept so a block added later is clipped as well.
    withheld: IntervalSet,
    /// Taken addresses inside `allocatable` only.
    taken: IntervalSet,
    /// Where the next search starts. Moving round-robin instead of reusing
    /// the lowest free address keeps a just-released address cold for as
    /// long as possible, so peers' ARP caches age out before it is reused.
    cursor: u32,
}

impl Pool {
    /// A block-less network: its subnet minus network, broadcast, gateway
    /// and exclusions.
    pub fn new(spec: &NetworkSpec) -> Self {
        let first = u32::from(spec.subnet.network()) + 1;
        let last = u32::from(spec.subnet.broadcast()) - 1;
        let mut allocatable = IntervalSet::new();
        allocatable.insert_range(first, last);
        for (s, e) in spec.reserved().iter_runs() {
            allocatable.remove_range(s, e);
        }
        Self::from_allocatable(allocatable)
    }

    pub fn from_allocatable(allocatable: IntervalSet) -> Self {
        let cursor = allocatable.iter_runs().next().map(|(s, _)| s).unwrap_or(0);
        Self {
            added: allocatable.clone(),
            withheld: IntervalSet::new(),
            allocatable,
            taken: IntervalSet::new(),
            cursor,
        }
    }

    /// Adds addresses (a new block), except withheld ones. Already-taken
    /// ones stay taken.
    pub fn add_allocatable(&mut self, lo: u32, hi: u32) {
        self.added.insert_range(lo, hi);
        self.allocatable.insert_range(lo, hi);
        for (s, e) in self.withheld.clip(lo, hi).iter_runs() {
            self.allocatable.remove_range(s, e);
        }
    }

    /// Removes addresses (a returned block) and forgets their taken marks.
    pub fn remove_allocatable(&mut self, lo: u32, hi: u32) {
        self.added.remove_range(lo, hi);
        self.allocatable.remove_range(lo, hi);
        self.taken.remove_range(lo, hi);
    }

    /// Replaces the withheld set: those addresses are never handed out,
    /// whatever is added later; addresses no longer withheld become
    /// allocatable again where they were added. Their taken marks are
    /// forgotten either way (taken is tracked inside `allocatable` only):
    /// the caller marks again what it knows is taken.
    pub fn withhold(&mut self, set: &IntervalSet) {
        let old = std::mem::replace(&mut self.withheld, set.clone());
        for (s, e) in old.iter_runs() {
            for (a, b) in self.added.clip(s, e).iter_runs() {
                self.allocatable.insert_range(a, b);
            }
        }
        for (s, e) in self.withheld.iter_runs() {
            self.allocatable.remove_range(s, e);
            self.taken.remove_range(s, e);
        }
    }

    pub fn allocatable(&self) -> &IntervalSet {
        &self.allocatable
    }

    /// Addresses that may ever be handed out.
    pub fn capacity(&self) -> u64 {
        self.allocatable.len()
    }

    pub fn allocated(&self) -> u64 {
        self.taken.len()
    }

    pub fn available(&self) -> u64 {
        self.capacity().saturating_sub(self.taken.len())
    }

    /// Taken addresses inside `[lo, hi]`.
    pub fn taken_in(&self, lo: u32, hi: u32) -> u64 {
        self.taken.count_in(lo, hi)
    }

    /// Inside what was added (the ranges, the blocks), withheld or not.
    pub fn in_ranges(&self, ip: Ipv4Addr) -> bool {
        self.added.contains(u32::from(ip))
    }

    pub fn is_allocatable(&self, ip: Ipv4Addr) -> bool {
        self.allocatable.contains(u32::from(ip))
    }

    pub fn is_taken(&self, ip: Ipv4Addr) -> bool {
        self.taken.contains(u32::from(ip))
    }

    /// Marks `ip` taken (a lease seen in etcd, or a tentative pick). Returns
    /// false when it already was. Addresses outside the allocatable set are
    /// not tracked (they cannot be handed out from this pool anyway).
    pub fn mark_taken(&mut self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        if !self.allocatable.contains(x) {
            return true;
        }
        self.taken.insert(x)
    }

    pub fn mark_free(&mut self, ip: Ipv4Addr) -> bool {
        self.taken.remove(u32::from(ip))
    }

    /// Picks the next free address after the cursor and marks it taken.
    /// The caller unmarks it if the durable write fails.
    pub fn take_next(&mut self) -> Option<Ipv4Addr> {
        let x = self.find_free()?;
        self.taken.insert(x);
        self.cursor = x.wrapping_add(1);
        Some(Ipv4Addr::from(x))
    }

    /// The next free address at or after `from`, wrapping once. Each step
    /// skips a whole run (allocatable or taken), so the cost is bounded by
    /// the number of runs, never by the pool size.
    pub fn find_free_from(&self, from: u32) -> Option<u32> {
        if self.available() == 0 {
            return None;
        }
        let mut c = from;
        let mut wrapped = false;
        loop {
            let Some((s, e)) = self.allocatable.run_at_or_after(c) else {
                if wrapped {
                    return None;
                }
                wrapped = true;
                c = 0;
                continue;
            };
            let mut x = c.max(s);
            while x <= e {
                match self.taken.run_containing(x) {
                    Some((_, te)) => match te.checked_add(1) {
                        Some(n) => x = n,
                        None => break,
                    },
                    None => {
                        if wrapped && x >= from {
                            return None;
                        }
                        return Some(x);
                    }
                }
            }
            match e.checked_add(1) {
                Some(n) if !(wrapped && n > from) => c = n,
                _ => {
                    if wrapped {
                        return None;
                    }
                    wrapped = true;
                    c = 0;
                }
            }
        }
    }

    fn find_free(&self) -> Option<u32> {
        self.find_free_from(self.cursor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str, gw: &str, exclude: &[&str]) -> NetworkSpec {
        NetworkSpec {
            exclude: exclude.iter().map(|e| e.parse().unwrap()).collect(),
            ..NetworkSpec::new("n", subnet.parse().unwrap(), gw.parse().unwrap(), "eth1")
        }
    }

    #[test]
    fn capacity_excludes_network_broadcast_gateway_and_exclusions() {
        let p = Pool::new(&spec("10.0.0.0/24", "10.0.0.1", &["10.0.0.2-10.0.0.9"]));
        assert_eq!(p.capacity(), 254 - 1 - 8);
        let p = Pool::new(&spec("10.0.0.0/30", "10.0.0.1", &[]));
        assert_eq!(p.capacity(), 1);
    }

    #[test]
    fn hands_out_every_address_exactly_once_then_exhausts() {
        let s = spec(
            "10.0.0.0/26",
            "10.0.0.1",
            &["10.0.0.10-10.0.0.19", "10.0.0.40"],
        );
        let mut p = Pool::new(&s);
        let mut seen = std::collections::BTreeSet::new();
        while let Some(ip) = p.take_next() {
            assert!(p.is_allocatable(ip), "{ip} must be allocatable");
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert_eq!(seen.len() as u64, p.capacity());
        assert_eq!(p.available(), 0);
        assert!(p.take_next().is_none());
        // Freed addresses come back.
        let ip: Ipv4Addr = "10.0.0.33".parse().unwrap();
        assert!(p.mark_free(ip));
        assert_eq!(p.take_next(), Some(ip));
    }

    #[test]
    fn cursor_moves_round_robin_and_skips_taken_runs() {
        let mut p = Pool::new(&spec("10.0.0.0/24", "10.0.0.1", &[]));
        let a = p.take_next().unwrap();
        let b = p.take_next().unwrap();
        assert_eq!(a.to_string(), "10.0.0.2");
        assert_eq!(b.to_string(), "10.0.0.3");
        p.mark_free(a);
        // Not reused immediately.
        assert_eq!(p.take_next().unwrap().to_string(), "10.0.0.4");
        // Addresses another node took are skipped.
        p.mark_taken("10.0.0.5".parse().unwrap());
        p.mark_taken("10.0.0.6".parse().unwrap());
        assert_eq!(p.take_next().unwrap().to_string(), "10.0.0.7");
    }

    #[test]
    fn a_slash_8_does_not_materialise_the_pool() {
        let mut p = Pool::new(&spec("10.0.0.0/8", "10.0.0.1", &["10.0.0.0/16"]));
        // The excluded /16 also covers the network address and the gateway.
        assert_eq!(p.capacity(), (1 << 24) - 2 - 65535);
        for _ in 0..10_000 {
            p.take_next().unwrap();
        }
        // One run of taken addresses however many were handed out.
        assert_eq!(p.allocated(), 10_000);
        assert_eq!(p.taken.runs(), 1);
    }

    #[test]
    fn withheld_addresses_are_never_handed_out_even_in_blocks_added_later() {
        // A rack's whole /24 as one block-less pool: nodes at .11 and .12.
        let mut p = Pool::new(&spec("10.0.0.0/24", "10.0.0.1", &[]));
        let ip = |s: &str| u32::from(s.parse::<Ipv4Addr>().unwrap());
        let mut nodes = IntervalSet::new();
        nodes.insert(ip("10.0.0.11"));
        nodes.insert(ip("10.0.0.12"));
        p.withhold(&nodes);
        assert_eq!(p.capacity(), 253 - 2);
        let got: Vec<u32> = std::iter::from_fn(|| p.take_next())
            .map(u32::from)
            .collect();
        assert_eq!(got.len(), 251);
        assert!(!got.contains(&ip("10.0.0.11")) && !got.contains(&ip("10.0.0.12")));

        // A pool of blocks: the block added after the node registered is
        // clipped; a node that goes away gives its address back.
        let mut p = Pool::from_allocatable(IntervalSet::new());
        p.withhold(&nodes);
        p.add_allocatable(ip("10.0.0.0"), ip("10.0.0.15"));
        assert_eq!(p.capacity(), 14);
        assert!(!p.is_allocatable("10.0.0.11".parse().unwrap()));
        let mut one = IntervalSet::new();
        one.insert(ip("10.0.0.12"));
        p.withhold(&one);
        assert!(p.is_allocatable("10.0.0.11".parse().unwrap()));
        assert!(!p.is_allocatable("10.0.0.12".parse().unwrap()));
        // Withholding never makes up addresses that were not added.
        one.insert(ip("10.0.0.99"));
        p.withhold(&one);
        p.withhold(&IntervalSet::new());
        assert_eq!(p.capacity(), 16);
        assert!(!p.is_allocatable("10.0.0.99".parse().unwrap()));
        // A taken address that becomes withheld is no longer counted.
        let x: Ipv4Addr = "10.0.0.5".parse().unwrap();
        p.mark_taken(x);
        let mut five = IntervalSet::new();
        five.insert(u32::from(x));
        p.withhold(&five);
        assert_eq!((p.capacity(), p.allocated()), (15, 0));
        p.remove_allocatable(ip("10.0.0.0"), ip("10.0.0.15"));
        p.withhold(&IntervalSet::new());
        assert_eq!(p.capacity(), 0);
    }

    #[test]
    fn a_pool_of_blocks_hands_out_only_block_addresses() {
        let mut set = IntervalSet::new();
        set.insert_range(100, 103);
        set.insert_range(200, 201);
        let mut p = Pool::from_allocatable(set);
        let got: Vec<u32> = std::iter::from_fn(|| p.take_next())
            .map(u32::from)
            .collect();
        assert_eq!(got, vec![100, 101, 102, 103, 200, 201]);
        p.add_allocatable(300, 300);
        assert_eq!(p.take_next().map(u32::from), Some(300));
        p.mark_free(Ipv4Addr::from(101));
        assert_eq!(p.take_next().map(u32::from), Some(101));
        p.remove_allocatable(200, 201);
        assert_eq!(p.capacity(), 5);
        assert_eq!(p.allocated(), 5);
        assert!(p.take_next().is_none());
    }
}
