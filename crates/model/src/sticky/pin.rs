//! The operator's pin: `racklinectl reservation pin` reserves an address for
//! a pod identity ahead of time (or moves the identity's reservation). The
//! rules are the ones an ADD obeys ([`super::decide`](fn@super::decide)): a record belongs to
//! an identity only when it names the identity back, and an address a pod
//! of the identity runs with is never taken from it. They are pure here so
//! netmaster's pin applies them in one place, table-tested.

use std::net::Ipv4Addr;

use super::Identity;
use crate::Lease;

impl Identity {
    /// Whether `lease` is this identity's record: sticky and naming the same
    /// pod. A lease at the identity's address that does not name it back
    /// belongs to someone else (the identity dangles).
    pub fn is_named_by(&self, lease: &Lease) -> bool {
        lease.sticky && lease.pod.namespace == self.namespace && lease.pod.name == self.name
    }
}

/// What becomes of the identity's current reservation when it is pinned to
/// `ip`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinFrom {
    /// The identity already owns `ip`: only its record is rewritten (pinned).
    Same,
    /// Refused: a pod of the identity runs with its old address; it keeps
    /// that address until the pod is deleted.
    Running { address: Ipv4Addr, node: String },
    /// Delete the old reservation (identity and lease together).
    DropReservation,
    /// Delete the identity alone: nothing at its address names it.
    DropIdentity,
}

/// The identity's current record and the lease at its address (any owner).
pub fn pin_from(identity: &Identity, lease_there: Option<&Lease>, ip: Ipv4Addr) -> PinFrom {
    if identity.address == ip {
        return PinFrom::Same;
    }
    match lease_there.filter(|l| identity.is_named_by(l)) {
        Some(l) if l.state.is_active() => PinFrom::Running {
            address: identity.address,
            node: l.node.clone(),
        },
        Some(_) => PinFrom::DropReservation,
        None => PinFrom::DropIdentity,
    }
}

/// What the pin writes at `ip`, given the lease record there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinAt {
    /// Refused: the address belongs to someone else (another pod, a node's
    /// outage reserve, a quarantine record).
    InUse,
    /// The identity's pod runs with it: the lease stays exactly as it is.
    KeepActive(Lease),
    /// The identity's reservation: kept, without an expiry from now on.
    Unexpire(Lease),
    /// Nothing there: a new reservation for the identity.
    Reserve,
}

/// `identity` is the identity as it will be written (address `ip`).
pub fn pin_at(identity: &Identity, lease_there: Option<&Lease>) -> PinAt {
    match lease_there {
        Some(l) if !identity.is_named_by(l) => PinAt::InUse,
        Some(l) if l.state.is_active() => PinAt::KeepActive(l.clone()),
        Some(l) => PinAt::Unexpire(Lease {
            expires_unix_ms: None,
            ..l.clone()
        }),
        None => PinAt::Reserve,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{LeaseState, PodRef};

    const OLD: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 5);
    const NEW: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

    fn identity(address: Ipv4Addr) -> Identity {
        Identity {
            network: "n".into(),
            namespace: "ns".into(),
            name: "web-0".into(),
            address,
            pinned: false,
            rack: None,
            created_unix_ms: 0,
            opt_in: false,
        }
    }

    fn lease(address: Ipv4Addr, pod: &str, sticky: bool, state: LeaseState) -> Lease {
        Lease {
            network: "n".into(),
            address,
            node: "node-b".into(),
            container_id: "c1".into(),
            ifname: "eth0".into(),
            pod: PodRef {
                namespace: "ns".into(),
                name: pod.into(),
                uid: String::new(),
            },
            created_unix_ms: 0,
            state,
            sticky,
            new_identity: false,
            expires_unix_ms: Some(1),
            conflict: None,
            settings: None,
        }
    }

    #[test]
    fn a_record_is_the_identitys_only_when_it_names_it_back() {
        let i = identity(OLD);
        assert!(i.is_named_by(&lease(OLD, "web-0", true, LeaseState::Active)));
        // Same pod name, but not a sticky record: an ordinary lease.
        assert!(!i.is_named_by(&lease(OLD, "web-0", false, LeaseState::Active)));
        assert!(!i.is_named_by(&lease(OLD, "web-1", true, LeaseState::Reserved)));
    }

    #[test]
    fn moving_a_reservation_table() {
        use LeaseState::{Active, Reserved, Standby};
        let i = identity(OLD);
        let running = PinFrom::Running {
            address: OLD,
            node: "node-b".into(),
        };
        // (lease at the identity's address, pinned-to address, expected)
        let table = [
            (None, OLD, PinFrom::Same),
            (Some(lease(OLD, "web-0", true, Active)), OLD, PinFrom::Same),
            (Some(lease(OLD, "web-0", true, Active)), NEW, running),
            (
                Some(lease(OLD, "web-0", true, Reserved)),
                NEW,
                PinFrom::DropReservation,
            ),
            (None, NEW, PinFrom::DropIdentity),
            // Someone else's record at the old address is not the identity's.
            (
                Some(lease(OLD, "web-1", true, Active)),
                NEW,
                PinFrom::DropIdentity,
            ),
            (
                Some(lease(OLD, "web-0", false, Standby)),
                NEW,
                PinFrom::DropIdentity,
            ),
        ];
        for (there, ip, want) in table {
            assert_eq!(pin_from(&i, there.as_ref(), ip), want, "{there:?} → {ip}");
        }
    }

    #[test]
    fn pinning_at_an_address_table() {
        use LeaseState::{Active, Conflict, Reserved, Standby};
        let i = identity(NEW);
        let reserved = lease(NEW, "web-0", true, Reserved);
        let unexpired = Lease {
            expires_unix_ms: None,
            ..reserved.clone()
        };
        let running = lease(NEW, "web-0", true, Active);
        let table = [
            (None, PinAt::Reserve),
            (Some(running.clone()), PinAt::KeepActive(running)),
            (Some(reserved), PinAt::Unexpire(unexpired)),
            (Some(lease(NEW, "web-1", true, Active)), PinAt::InUse),
            (Some(lease(NEW, "web-0", false, Active)), PinAt::InUse),
            (Some(lease(NEW, "", false, Standby)), PinAt::InUse),
            (Some(lease(NEW, "", false, Conflict)), PinAt::InUse),
        ];
        for (there, want) in table {
            assert_eq!(pin_at(&i, there.as_ref()), want, "{there:?}");
        }
    }
}
