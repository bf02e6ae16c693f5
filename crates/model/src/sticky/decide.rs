//! The sticky decision: what an ADD of a possibly sticky pod does with its
//! identity's record. Pure and table-tested here; ipamd's claim applies it,
//! and the operator's pin (`pin.rs`) obeys the same two rules: a record is
//! the identity's only when it names it back (`Identity::is_named_by`), and
//! an address a pod of the identity runs with is never taken from it.

use super::{CrossRack, Identity};

/// The lease record at the identity's address, when that record names the
/// identity back (a record owned by anyone else is not the identity's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder<'a> {
    pub node: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// A pod runs with it (an active lease), rather than a reservation.
    pub active: bool,
}

/// Everything the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct StickyFacts<'a> {
    /// The identity's record; None: the pod has none.
    pub identity: Option<&'a Identity>,
    /// The record at the identity's address, if it names the identity.
    pub holder: Option<Holder<'a>>,
    /// The node asking, and its attachment.
    pub node: &'a str,
    pub container_id: &'a str,
    pub ifname: &'a str,
    /// Whether this node allocates the identity's address: it lies in the
    /// share of the node's rack of a rack-bound network, or in the subnet
    /// of a flat one.
    pub serves_address: bool,
    /// The network's cross-rack policy.
    pub cross_rack: CrossRack,
    /// The pod is sticky (the network's policy or its own annotation).
    pub wants_sticky: bool,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyDecision {
    /// No identity and not sticky: an ordinary allocation.
    NotSticky,
    /// Sticky without an identity: a fresh address, written together with
    /// a new identity.
    Fresh,
    /// This attachment holds the identity's address already.
    AlreadyHeld,
    /// Refuse: a pod of this identity runs with the address on another
    /// node.
    LiveElsewhere { node: String, container_id: String },
    /// Refuse: the address belongs to another rack, and the policy
    /// (strict) or an operator's pin forbids moving the identity.
    WrongRack { rack: Option<String> },
    /// The address belongs to another rack and the policy is reallocate:
    /// drop the old reservation, then decide again (the pod starts over as
    /// a fresh sticky pod in this rack).
    DropAndRetry,
    /// Take the address over for this attachment.
    Reuse,
}

/// Decides, in this order: no identity → fresh or not sticky; live on
/// another node → refuse; held by this attachment → nothing to do; outside
/// this node's rack → refuse (strict or pinned) or drop and retry
/// (reallocate); otherwise reuse.
pub fn decide(f: &StickyFacts<'_>) -> StickyDecision {
    let Some(identity) = f.identity else {
        return if f.wants_sticky {
            StickyDecision::Fresh
        } else {
            StickyDecision::NotSticky
        };
    };
    if let Some(h) = f.holder.filter(|h| h.active) {
        if h.node != f.node {
            return StickyDecision::LiveElsewhere {
                node: h.node.to_string(),
                container_id: h.container_id.to_string(),
            };
        }
        if h.container_id == f.container_id && h.ifname == f.ifname {
            return StickyDecision::AlreadyHeld;
        }
    }
    if !f.serves_address {
        if f.cross_rack == CrossRack::Strict || identity.pinned {
            return StickyDecision::WrongRack {
                rack: identity.rack.clone(),
            };
        }
        return StickyDecision::DropAndRetry;
    }
    StickyDecision::Reuse
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn identity(pinned: bool) -> Identity {
        Identity {
            network: "n".into(),
            namespace: "ns".into(),
            name: "web-0".into(),
            address: Ipv4Addr::new(10, 0, 0, 5),
            pinned,
            rack: Some("r1".into()),
            created_unix_ms: 0,
            opt_in: false,
        }
    }

    const HERE: &str = "node-a";

    fn holder(node: &'static str, container: &'static str, active: bool) -> Holder<'static> {
        Holder {
            node,
            container_id: container,
            ifname: "eth0",
            active,
        }
    }

    #[test]
    fn decisions_table() {
        use CrossRack::{Reallocate, Strict};
        use StickyDecision::*;
        let plain = identity(false);
        let pinned = identity(true);
        let live_b = holder("node-b", "c-old", true);
        let reserved_b = holder("node-b", "c-old", false);
        let mine = holder(HERE, "c1", true);
        let mine_other_container = holder(HERE, "c0", true);
        // (identity, holder, serves, policy, wants, expected)
        #[allow(clippy::type_complexity)]
        let table: Vec<(
            Option<&Identity>,
            Option<Holder>,
            bool,
            CrossRack,
            bool,
            StickyDecision,
        )> = vec![
            (None, None, true, Strict, false, NotSticky),
            (None, None, true, Strict, true, Fresh),
            (None, None, false, Reallocate, true, Fresh),
            (Some(&plain), None, true, Strict, false, Reuse),
            (Some(&plain), Some(reserved_b), true, Strict, true, Reuse),
            (
                Some(&plain),
                Some(mine_other_container),
                true,
                Strict,
                true,
                Reuse,
            ),
            (Some(&plain), Some(mine), true, Strict, true, AlreadyHeld),
            (
                Some(&plain),
                Some(live_b),
                true,
                Strict,
                true,
                LiveElsewhere {
                    node: "node-b".into(),
                    container_id: "c-old".into(),
                },
            ),
            // Live elsewhere wins over the rack question.
            (
                Some(&plain),
                Some(live_b),
                false,
                Reallocate,
                true,
                LiveElsewhere {
                    node: "node-b".into(),
                    container_id: "c-old".into(),
                },
            ),
            (
                Some(&plain),
                None,
                false,
                Strict,
                true,
                WrongRack {
                    rack: Some("r1".into()),
                },
            ),
            (
                Some(&plain),
                Some(reserved_b),
                false,
                Reallocate,
                true,
                DropAndRetry,
            ),
            (Some(&plain), None, false, Reallocate, false, DropAndRetry),
            // A pin never moves, whatever the policy.
            (
                Some(&pinned),
                None,
                false,
                Reallocate,
                true,
                WrongRack {
                    rack: Some("r1".into()),
                },
            ),
            (Some(&pinned), None, true, Reallocate, false, Reuse),
        ];
        for (i, (identity, holder, serves, cross_rack, wants, want)) in
            table.into_iter().enumerate()
        {
            let f = StickyFacts {
                identity,
                holder,
                node: HERE,
                container_id: "c1",
                ifname: "eth0",
                serves_address: serves,
                cross_rack,
                wants_sticky: wants,
            };
            assert_eq!(decide(&f), want, "row {i}: {f:?}");
        }
    }

    #[test]
    fn same_container_on_another_ifname_is_not_held() {
        let id = identity(false);
        let f = StickyFacts {
            identity: Some(&id),
            holder: Some(Holder {
                node: HERE,
                container_id: "c1",
                ifname: "net1",
                active: true,
            }),
            node: HERE,
            container_id: "c1",
            ifname: "eth0",
            serves_address: true,
            cross_rack: CrossRack::Strict,
            wants_sticky: true,
        };
        assert_eq!(decide(&f), StickyDecision::Reuse);
    }
}
