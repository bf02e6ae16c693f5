//! A set of `u32` kept as disjoint, merged, inclusive runs.
//!
//! Free-space search walks runs, not addresses, so its cost depends on how
//! fragmented the pool is, never on how large it is (a peer IPAM took over a
//! minute per address on a /10 because it materialised the pool).

use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalSet {
    /// start -> end (inclusive); runs never touch or overlap.
    runs: BTreeMap<u32, u32>,
    len: u64,
}

impl IntervalSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of members.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of disjoint runs (a measure of fragmentation).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    pub fn iter_runs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.runs.iter().map(|(s, e)| (*s, *e))
    }

    /// The run containing `x`, if any.
    pub fn run_containing(&self, x: u32) -> Option<(u32, u32)> {
        let (s, e) = self.runs.range(..=x).next_back()?;
        (x <= *e).then_some((*s, *e))
    }

    pub fn contains(&self, x: u32) -> bool {
        self.run_containing(x).is_some()
    }

    /// Inserts `x`; returns false when it was already present.
    pub fn insert(&mut self, x: u32) -> bool {
        self.insert_range(x, x) == 1
    }

    /// Inserts every member of `[lo, hi]`; returns how many were new.
    pub fn insert_range(&mut self, lo: u32, hi: u32) -> u64 {
        if lo > hi {
            return 0;
        }
        let mut start = lo;
        let mut end = hi;
        let mut removed: u64 = 0;
        // Merge with a run that ends at or just before `lo`.
        if let Some((&s, &e)) = self.runs.range(..=lo).next_back() {
            if e.checked_add(1).is_none_or(|n| n >= lo) {
                start = s;
                end = end.max(e);
                removed += u64::from(e - s) + 1;
                self.runs.remove(&s);
            }
        }
        // Absorb every run starting inside or just after the new one.
        loop {
            let next = match end.checked_add(1) {
                Some(limit) => self.runs.range(start..=limit).next().map(|(s, e)| (*s, *e)),
                None => self.runs.range(start..).next().map(|(s, e)| (*s, *e)),
            };
            match next {
                Some((s, e)) => {
                    end = end.max(e);
                    removed += u64::from(e - s) + 1;
                    self.runs.remove(&s);
                }
                None => break,
            }
        }
        self.runs.insert(start, end);
        let added = u64::from(end - start) + 1 - removed;
        self.len += added;
        added
    }

    /// Removes `x`; returns false when it was absent.
    pub fn remove(&mut self, x: u32) -> bool {
        let Some((s, e)) = self.run_containing(x) else {
            return false;
        };
        self.runs.remove(&s);
        if s < x {
            self.runs.insert(s, x - 1);
        }
        if x < e {
            self.runs.insert(x + 1, e);
        }
        self.len -= 1;
        true
    }

    /// Removes every member of `[lo, hi]`; returns how many were present.
    pub fn remove_range(&mut self, lo: u32, hi: u32) -> u64 {
        if lo > hi {
            return 0;
        }
        let mut removed = 0;
        let first = self.run_containing(lo).map(|(s, _)| s).unwrap_or(lo);
        let hit: Vec<(u32, u32)> = self.runs.range(first..=hi).map(|(s, e)| (*s, *e)).collect();
        for (s, e) in hit {
            if e < lo {
                continue;
            }
            self.runs.remove(&s);
            if s < lo {
                self.runs.insert(s, lo - 1);
            }
            if e > hi {
                self.runs.insert(hi + 1, e);
            }
            removed += u64::from(e.min(hi) - s.max(lo)) + 1;
        }
        self.len -= removed;
        removed
    }

    /// The first run that ends at or after `x` (the run containing `x`, or
    /// the next one).
    pub fn run_at_or_after(&self, x: u32) -> Option<(u32, u32)> {
        if let Some(r) = self.run_containing(x) {
            return Some(r);
        }
        self.runs.range(x..).next().map(|(s, e)| (*s, *e))
    }

    /// Members of `self` inside `[lo, hi]`, as a new set.
    pub fn clip(&self, lo: u32, hi: u32) -> IntervalSet {
        let mut out = IntervalSet::new();
        if lo > hi {
            return out;
        }
        let first = self.run_containing(lo).map(|(s, _)| s).unwrap_or(lo);
        for (&s, &e) in self.runs.range(first..=hi) {
            let a = s.max(lo);
            let b = e.min(hi);
            if a <= b {
                out.insert_range(a, b);
            }
        }
        out
    }

    /// Number of members inside `[lo, hi]`.
    pub fn count_in(&self, lo: u32, hi: u32) -> u64 {
        if lo > hi {
            return 0;
        }
        let mut n = 0;
        let first = self.run_containing(lo).map(|(s, _)| s).unwrap_or(lo);
        for (&s, &e) in self.runs.range(first..=hi) {
            let a = s.max(lo);
            let b = e.min(hi);
            if a <= b {
                n += u64::from(b - a) + 1;
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &IntervalSet) -> Vec<(u32, u32)> {
        s.iter_runs().collect()
    }

    #[test]
    fn inserts_merge_adjacent_and_overlapping_runs() {
        let mut s = IntervalSet::new();
        assert!(s.insert(5));
        assert!(s.insert(7));
        assert_eq!(members(&s), vec![(5, 5), (7, 7)]);
        assert!(s.insert(6));
        assert_eq!(members(&s), vec![(5, 7)]);
        assert!(!s.insert(6));
        assert_eq!(s.insert_range(1, 10), 7);
        assert_eq!(members(&s), vec![(1, 10)]);
        assert_eq!(s.len(), 10);
        assert_eq!(s.insert_range(12, 20), 9);
        assert_eq!(s.insert_range(11, 11), 1);
        assert_eq!(members(&s), vec![(1, 20)]);
    }

    #[test]
    fn remove_splits_runs() {
        let mut s = IntervalSet::new();
        s.insert_range(1, 10);
        assert!(s.remove(5));
        assert!(!s.remove(5));
        assert_eq!(members(&s), vec![(1, 4), (6, 10)]);
        assert!(s.remove(1));
        assert!(s.remove(10));
        assert_eq!(members(&s), vec![(2, 4), (6, 9)]);
        assert_eq!(s.len(), 7);
        assert!(!s.contains(5));
        assert!(s.contains(9));
    }

    #[test]
    fn handles_u32_edges() {
        let mut s = IntervalSet::new();
        assert_eq!(s.insert_range(u32::MAX - 1, u32::MAX), 2);
        assert_eq!(s.insert_range(0, 0), 1);
        assert!(s.insert(u32::MAX - 2));
        assert_eq!(members(&s), vec![(0, 0), (u32::MAX - 2, u32::MAX)]);
        assert!(s.remove(u32::MAX));
        assert_eq!(s.len(), 3);
    }

    #[test]
    fn remove_range_clip_and_next_run() {
        let mut s = IntervalSet::new();
        s.insert_range(0, 100);
        assert_eq!(s.remove_range(10, 19), 10);
        assert_eq!(s.remove_range(50, 200), 51);
        assert_eq!(members(&s), vec![(0, 9), (20, 49)]);
        assert_eq!(s.len(), 40);
        assert_eq!(s.run_at_or_after(12), Some((20, 49)));
        assert_eq!(s.run_at_or_after(5), Some((0, 9)));
        assert_eq!(s.run_at_or_after(50), None);
        assert_eq!(members(&s.clip(5, 25)), vec![(5, 9), (20, 25)]);
        assert_eq!(s.remove_range(0, u32::MAX), 40);
        assert!(s.is_empty());
    }

    #[test]
    fn count_in_clips_runs() {
        let mut s = IntervalSet::new();
        s.insert_range(10, 20);
        s.insert_range(30, 40);
        assert_eq!(s.count_in(0, 100), 22);
        assert_eq!(s.count_in(15, 35), 12);
        assert_eq!(s.count_in(21, 29), 0);
        assert_eq!(s.count_in(40, 10), 0);
    }
}
