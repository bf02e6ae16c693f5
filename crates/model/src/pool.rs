//! Free-space bookkeeping for one network's address range.
//!
//! Only taken and reserved addresses are stored, as runs; finding a free
//! address jumps from run to run. A /16 costs the same as a /24 unless the
//! taken set is badly fragmented.

use std::net::Ipv4Addr;

use crate::{IntervalSet, NetworkSpec};

#[derive(Debug, Clone)]
pub struct Pool {
    /// First and last allocatable address (network and broadcast excluded).
    first: u32,
    last: u32,
    reserved: IntervalSet,
    taken: IntervalSet,
    /// Where the next search starts. Moving round-robin instead of reusing
    /// the lowest free address keeps a just-released address cold for as
    /// long as possible, so peers' ARP caches age out before it is reused.
    cursor: u32,
    capacity: u64,
}

impl Pool {
    pub fn new(spec: &NetworkSpec) -> Self {
        let first = u32::from(spec.subnet.network()) + 1;
        let last = u32::from(spec.subnet.broadcast()) - 1;
        let reserved = spec.reserved();
        let size = u64::from(last - first) + 1;
        let capacity = size - reserved.count_in(first, last);
        Self {
            first,
            last,
            reserved,
            taken: IntervalSet::new(),
            cursor: first,
            capacity,
        }
    }

    /// Addresses that may ever be handed out.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn allocated(&self) -> u64 {
        self.taken.len()
    }

    pub fn available(&self) -> u64 {
        self.capacity.saturating_sub(self.taken.len())
    }

    /// True when `ip` lies in the allocatable range and is not reserved.
    pub fn is_allocatable(&self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        (self.first..=self.last).contains(&x) && !self.reserved.contains(x)
    }

    pub fn is_taken(&self, ip: Ipv4Addr) -> bool {
        self.taken.contains(u32::from(ip))
    }

    /// Marks `ip` taken (a lease seen in etcd, or a tentative pick). Returns
    /// false when it already was. Addresses outside the range are ignored
    /// for accounting but reported as newly taken so callers can log them.
    pub fn mark_taken(&mut self, ip: Ipv4Addr) -> bool {
        let x = u32::from(ip);
        if !(self.first..=self.last).contains(&x) || self.reserved.contains(x) {
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
        let ip = self.find_free()?;
        let x = u32::from(ip);
        self.taken.insert(x);
        self.cursor = if x >= self.last { self.first } else { x + 1 };
        Some(ip)
    }

    fn find_free(&self) -> Option<Ipv4Addr> {
        if self.available() == 0 {
            return None;
        }
        let mut c = self.cursor;
        let mut wrapped = false;
        // Each step skips a whole run, so the loop is bounded by the number
        // of runs (plus one wrap).
        loop {
            if c > self.last {
                if wrapped {
                    return None;
                }
                wrapped = true;
                c = self.first;
            }
            if wrapped && c >= self.cursor {
                return None;
            }
            if let Some((_, end)) = self.reserved.run_containing(c) {
                match end.checked_add(1) {
                    Some(n) => c = n,
                    None => c = self.last + 1,
                }
                continue;
            }
            if let Some((_, end)) = self.taken.run_containing(c) {
                match end.checked_add(1) {
                    Some(n) => c = n,
                    None => c = self.last + 1,
                }
                continue;
            }
            return Some(Ipv4Addr::from(c));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(subnet: &str, gw: &str, exclude: &[&str]) -> NetworkSpec {
        NetworkSpec {
            name: "n".into(),
            subnet: subnet.parse().unwrap(),
            gateway: gw.parse().unwrap(),
            master: "eth1".into(),
            mtu: 0,
            vlan: None,
            exclude: exclude.iter().map(|e| e.parse().unwrap()).collect(),
            routes: vec![],
            host_routes: vec![],
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
}
