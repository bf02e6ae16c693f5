//! What keeps a network from being deleted or a rack from being unbound,
//! by kind: the refusals name what is left and what to do about it.

use std::collections::BTreeMap;

use rackline_model::{Lease, LeaseState};

/// Pod names shown in a message at most.
const SHOWN: usize = 5;

/// Lease records (of a network, or of a rack's share of one), by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseCensus {
    /// Active leases of pods.
    pub pods: usize,
    /// The first few of those pods (`namespace/name`, or the container).
    pub pod_names: Vec<String>,
    /// Sticky reservations (pods not running, address held for them).
    pub reserved: usize,
    /// Conflict quarantine records (etcd deletes them at expiry).
    pub quarantined: usize,
    /// Standby reserve records, by the node holding them.
    pub standby: BTreeMap<String, usize>,
}

impl LeaseCensus {
    pub fn of<'a>(leases: impl IntoIterator<Item = &'a Lease>) -> Self {
        let mut c = LeaseCensus::default();
        for l in leases {
            c.add(l);
        }
        c
    }

    pub fn add(&mut self, l: &Lease) {
        match l.state {
            LeaseState::Active => {
                self.pods += 1;
                if self.pod_names.len() < SHOWN {
                    let who = l.pod.display();
                    self.pod_names.push(if who.is_empty() {
                        format!("container {}", l.container_id)
                    } else {
                        who
                    });
                }
            }
            LeaseState::Reserved => self.reserved += 1,
            LeaseState::Conflict => self.quarantined += 1,
            LeaseState::Standby => *self.standby.entry(l.node.clone()).or_default() += 1,
        }
    }

    pub fn standby_total(&self) -> usize {
        self.standby.values().sum()
    }

    pub fn total(&self) -> usize {
        self.pods + self.reserved + self.quarantined + self.standby_total()
    }

    /// What no drain gives back — pods, reservations and, when
    /// `quarantine_blocks`, quarantine records — as a phrase with what to
    /// do about it; None when nothing of that kind is left.
    pub fn blocking(&self, quarantine_blocks: bool) -> Option<String> {
        let mut parts = Vec::new();
        let mut advice = Vec::new();
        if self.pods > 0 {
            let more = if self.pods > self.pod_names.len() {
                ", …"
            } else {
                ""
            };
            parts.push(format!(
                "{} pod lease(s) ({}{more})",
                self.pods,
                self.pod_names.join(", ")
            ));
            advice.push("delete those pods");
        }
        if self.reserved > 0 {
            parts.push(format!("{} sticky reservation(s)", self.reserved));
            advice.push("release the reservations (`racklinectl reservation list`/`release`)");
        }
        if quarantine_blocks && self.quarantined > 0 {
            parts.push(format!(
                "{} conflict quarantine record(s)",
                self.quarantined
            ));
            advice.push("wait for the quarantine to expire");
        }
        if parts.is_empty() {
            return None;
        }
        Some(format!("{}; {} first", join(&parts), advice.join(", ")))
    }

    /// "3 standby record(s) of node(s) n1 (2), n2 (1)", or None.
    pub fn standby_phrase(&self) -> Option<String> {
        if self.standby.is_empty() {
            return None;
        }
        let nodes: Vec<String> = self
            .standby
            .iter()
            .map(|(n, c)| format!("{n} ({c})"))
            .collect();
        Some(format!(
            "{} standby record(s) of node(s) {}",
            self.standby_total(),
            nodes.join(", ")
        ))
    }
}

/// "a", "a and b", "a, b and c".
pub(crate) fn join(parts: &[String]) -> String {
    match parts {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(state: LeaseState, node: &str, pod: &str) -> Lease {
        rackline_testkit::fixtures::lease("prod", "10.0.0.2".parse().unwrap())
            .node(node)
            .container("c1")
            .pod("shop", pod)
            .state(state)
            .build()
    }

    #[test]
    fn reserve_records_alone_block_nothing_a_drain_cannot_fix() {
        let c = LeaseCensus::of(&[
            lease(LeaseState::Standby, "n1", ""),
            lease(LeaseState::Standby, "n1", ""),
            lease(LeaseState::Standby, "n2", ""),
            lease(LeaseState::Conflict, "n2", ""),
        ]);
        assert_eq!(c.blocking(false), None);
        assert_eq!(
            c.blocking(true).unwrap(),
            "1 conflict quarantine record(s); wait for the quarantine to expire first"
        );
        assert_eq!(
            c.standby_phrase().unwrap(),
            "3 standby record(s) of node(s) n1 (2), n2 (1)"
        );
        assert_eq!(c.total(), 4);
    }

    #[test]
    fn pods_and_reservations_are_named() {
        let c = LeaseCensus::of(&[
            lease(LeaseState::Active, "n1", "web-0"),
            lease(LeaseState::Reserved, "n1", "db-0"),
        ]);
        assert_eq!(
            c.blocking(false).unwrap(),
            "1 pod lease(s) (shop/web-0) and 1 sticky reservation(s); delete those pods, \
             release the reservations (`racklinectl reservation list`/`release`) first"
        );
    }
}
