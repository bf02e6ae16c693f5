//! Sticky pods: a pod identity (network, namespace, pod name)
//! keeps its address across re-creation.
//!
//! The identity record `identities/<net>/<ns>/<pod>` says which address the
//! identity owns; the lease at that address names the identity back
//! (`sticky: true` + `pod`). Every change writes both in one transaction
//! that compares the revisions we read of both, so:
//! - two nodes starting the same identity at once: one write wins, the
//!   other re-reads and sees the identity live elsewhere → clear error;
//! - the old incarnation's DEL after the new one's ADD: the lease now names
//!   the new container, so the old DEL finds nothing of its own to free;
//! - a reservation expiring (etcd deletes both records when the hold's etcd
//!   lease runs out) while an ADD re-activates it: the ADD's compare fails
//!   and it re-reads; either it re-activated first (the write detached the
//!   records from the etcd lease, so expiry no longer touches them) or the
//!   address was freed and the pod gets a fresh one — never both.
//!
//! Sticky pods need etcd: while it is unreachable their ADD fails with
//! "try again later" instead of taking an offline address that would
//! break the promise.

use std::net::Ipv4Addr;
use std::sync::Arc;

use rackline_model::sticky::{decide, Holder, StickyDecision, StickyFacts};
use rackline_model::{Identity, Lease, LeaseState};
use rackline_store::{IdentityView, StickyWrite, StoreError, StoredIdentity, StoredLease};
use tracing::{info, warn};

use super::{now_ms, AllocateArgs, Allocated, IpamError, Sticky};
use crate::netstate::NetState;
use crate::store::LeaseStore;

/// Re-reads a changing identity at most this often before giving up (only
/// reachable when the identity is being fought over).
const MAX_CLAIM_ROUNDS: u32 = 8;

/// What an ADD of a possibly sticky pod does.
pub(super) enum Claim {
    /// The identity's address is this attachment's now.
    Done(Box<Allocated>),
    /// A sticky pod without a reservation: allocate a fresh address and
    /// write this identity with it.
    Fresh(Identity),
}

fn unavailable_for_sticky(a: &AllocateArgs, e: StoreError) -> IpamError {
    match e {
        StoreError::Unavailable(m) => IpamError::Unavailable(format!(
            "pod {} is sticky and its address can only be claimed through etcd ({m}); retry",
            a.pod.display()
        )),
        other => IpamError::Store(other),
    }
}

impl<S: LeaseStore> Sticky<'_, S> {
    fn policy_sticky(net: &NetState, a: &AllocateArgs) -> bool {
        net.sticky_matcher
            .as_ref()
            .is_some_and(|m| m.matches(&a.pod.namespace, &a.pod.name))
    }

    /// The network's policy or the pod's own annotation makes it sticky
    /// (the annotation wins either way).
    fn wants_sticky(net: &NetState, a: &AllocateArgs) -> bool {
        a.sticky.unwrap_or_else(|| Self::policy_sticky(net, a))
    }

    /// Whether this ADD must go through the identity path: the network's
    /// policy makes the pod sticky, or an identity record exists for it
    /// (operator pin, or a policy changed since).
    pub(super) fn maybe_sticky(&self, net: &NetState, a: &AllocateArgs) -> bool {
        !a.pod.name.is_empty()
            && (Self::wants_sticky(net, a)
                || net.sticky_hint(&a.pod.namespace, &a.pod.name).is_some())
    }

    fn active_lease(&self, net: &NetState, a: &AllocateArgs, ip: std::net::Ipv4Addr) -> Lease {
        Lease {
            network: a.network.clone(),
            address: ip,
            node: self.node.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            pod: a.pod.clone(),
            created_unix_ms: now_ms(),
            state: LeaseState::Active,
            sticky: true,
            new_identity: false,
            expires_unix_ms: None,
            conflict: None,
            settings: net.pod_settings(),
        }
    }

    /// Claims the identity's address for this attachment, or says to
    /// allocate a fresh one (`Fresh`), or None when the pod is not sticky.
    /// The rules are `rackline_model::sticky::decide`'s; this carries them
    /// out, re-reading when a compared write finds the records changed.
    pub(super) async fn claim_identity(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
    ) -> Result<Option<Claim>, IpamError> {
        for _ in 0..MAX_CLAIM_ROUNDS {
            let view = self
                .store
                .identity_view(&a.network, &a.pod.namespace, &a.pod.name)
                .await
                .map_err(|e| {
                    self.outage.note_store_error(&e);
                    unavailable_for_sticky(a, e)
                })?;
            let (ident, cur) = match view {
                None => (None, None),
                Some(view) => match self.own_record(a, view).await? {
                    Some((ident, cur)) => (Some(ident), cur),
                    None => continue,
                },
            };
            let decision = decide(&self.facts(net, a, ident.as_ref(), cur.as_ref()));
            match decision {
                StickyDecision::NotSticky => return Ok(None),
                StickyDecision::Fresh => return Ok(Some(Claim::Fresh(self.new_identity(net, a)))),
                _ => {}
            }
            let (Some(ident), decision) = (ident, decision) else {
                unreachable!("only an identity's absence decides fresh or not sticky")
            };
            if let Some(claim) = self.carry_out(net, a, &ident, cur, decision).await? {
                return Ok(Some(claim));
            }
        }
        Err(IpamError::Contended(MAX_CLAIM_ROUNDS))
    }

    /// The identity's record with the record at its address, or None once
    /// an identity pointing at an address whose record is not its own (left
    /// by a manual edit or an older version) is dropped: the address record
    /// wins.
    async fn own_record(
        &self,
        a: &AllocateArgs,
        view: IdentityView,
    ) -> Result<Option<(StoredIdentity, Option<StoredLease>)>, IpamError> {
        let ident = view.identity;
        match view.lease {
            // The same rule netmaster's pin and its reservation views apply.
            Some(sl) if !ident.identity.is_named_by(&sl.lease) => {
                let ip = ident.identity.address;
                warn!(network = %a.network, %ip, pod = %a.pod.display(), owner = ?sl.lease, "identity points at an address owned by someone else; dropping the identity");
                self.store
                    .delete_identity(&ident.identity, ident.mod_revision)
                    .await
                    .map_err(|e| unavailable_for_sticky(a, e))?;
                Ok(None)
            }
            other => Ok(Some((ident, other))),
        }
    }

    /// What the decision depends on, as this node sees it.
    fn facts<'a>(
        &'a self,
        net: &NetState,
        a: &'a AllocateArgs,
        ident: Option<&'a StoredIdentity>,
        cur: Option<&'a StoredLease>,
    ) -> StickyFacts<'a> {
        let serves_address = ident.is_some_and(|i| net.serves(i.identity.address));
        StickyFacts {
            identity: ident.map(|i| &i.identity),
            holder: cur.map(|sl| Holder {
                node: &sl.lease.node,
                container_id: &sl.lease.container_id,
                ifname: &sl.lease.ifname,
                active: sl.lease.state.is_active(),
            }),
            node: &self.node,
            container_id: &a.container_id,
            ifname: &a.ifname,
            serves_address,
            cross_rack: net
                .spec
                .sticky
                .as_ref()
                .map(|p| p.cross_rack)
                .unwrap_or_default(),
            wants_sticky: Self::wants_sticky(net, a),
        }
    }

    /// A sticky pod without a reservation: the identity written with its
    /// fresh address.
    fn new_identity(&self, net: &NetState, a: &AllocateArgs) -> Identity {
        Identity {
            network: a.network.clone(),
            namespace: a.pod.namespace.clone(),
            name: a.pod.name.clone(),
            address: std::net::Ipv4Addr::UNSPECIFIED,
            pinned: false,
            rack: self.rack.clone().filter(|_| net.is_racked()),
            created_unix_ms: now_ms(),
            opt_in: a.sticky == Some(true) && !Self::policy_sticky(net, a),
        }
    }

    /// Carries out a decision about an existing identity: Some(claim) when
    /// the ADD is answered, None to read the records again.
    async fn carry_out(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        ident: &StoredIdentity,
        cur: Option<StoredLease>,
        decision: StickyDecision,
    ) -> Result<Option<Claim>, IpamError> {
        let ip = ident.identity.address;
        match decision {
            StickyDecision::LiveElsewhere { node, container_id } => {
                Err(live_elsewhere(a, ip, &node, &container_id))
            }
            StickyDecision::AlreadyHeld => {
                // Ours already (our cache had not seen it yet).
                let sl = cur.expect("held means a record");
                net.observe(sl.clone(), &self.node);
                Ok(Some(Claim::Done(Box::new(Allocated {
                    lease: sl.lease,
                    network: net.effective_spec(),
                    existing: true,
                }))))
            }
            StickyDecision::WrongRack { rack } => {
                let rack = rack.unwrap_or_else(|| "?".into());
                let here = (self.node.as_str(), self.rack.as_deref().unwrap_or("-"));
                Err(wrong_rack(a, ip, &rack, here))
            }
            StickyDecision::DropAndRetry => {
                self.drop_reservation(a, ident, cur.as_ref()).await?;
                Ok(None)
            }
            StickyDecision::Reuse => {
                if !a.requested.is_empty() && !a.requested.contains(&ip) {
                    return Err(IpamError::RequestedAddress(format!(
                        "pod {} is sticky and its address is {ip}; it cannot be given {} instead (release the reservation first: {})",
                        a.pod.display(),
                        super::requested::list(&a.requested),
                        release_command(a, "")
                    )));
                }
                self.take_over(net, a, ident, cur).await
            }
            StickyDecision::NotSticky | StickyDecision::Fresh => {
                unreachable!("an existing identity is never fresh")
            }
        }
    }

    /// Cross-rack policy reallocate: drops the old reservation (both
    /// records); the pod then starts over as a fresh sticky pod here.
    async fn drop_reservation(
        &self,
        a: &AllocateArgs,
        ident: &StoredIdentity,
        cur: Option<&StoredLease>,
    ) -> Result<(), IpamError> {
        let ip = ident.identity.address;
        let rack = ident.identity.rack.clone().unwrap_or_else(|| "?".into());
        let dropped = match cur {
            Some(sl) => self
                .store
                .delete_sticky(&sl.lease, sl.mod_revision, ident.mod_revision)
                .await
                .map_err(|e| unavailable_for_sticky(a, e))?,
            None => self
                .store
                .delete_identity(&ident.identity, ident.mod_revision)
                .await
                .map_err(|e| unavailable_for_sticky(a, e))?,
        };
        if dropped {
            info!(network = %a.network, %ip, %rack, pod = %a.pod.display(), "sticky pod moved to another rack: old reservation dropped (cross-rack policy reallocate)");
        }
        Ok(())
    }

    /// Same rack (or flat network): takes the address over. The write
    /// compares both records, so a concurrent claim, DEL or expiry makes it
    /// fail (None: read again).
    async fn take_over(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        ident: &StoredIdentity,
        cur: Option<StoredLease>,
    ) -> Result<Option<Claim>, IpamError> {
        let ip = ident.identity.address;
        let lease = self.active_lease(net, a, ip);
        let mut identity = ident.identity.clone();
        identity.rack = self.rack.clone().filter(|_| net.is_racked());
        let lease_rev = cur.as_ref().map(|c| c.mod_revision).unwrap_or(0);
        let guard = if lease_rev == 0 {
            Some(net.create_revision)
        } else {
            None
        };
        let written = self
            .store
            .write_sticky(
                &lease,
                lease_rev,
                &identity,
                ident.mod_revision,
                None,
                guard,
                None,
            )
            .await;
        match written {
            Ok(StickyWrite::Done { mod_revision }) => {
                self.outage.note_reachable();
                if let Some(prev) = cur.as_ref().filter(|c| c.lease.state.is_active()) {
                    info!(network = %a.network, %ip, pod = %a.pod.display(), old_container = %prev.lease.container_id, container = %a.container_id, "sticky address taken over by the pod's new incarnation (its ADD came before the old one's DEL)");
                } else {
                    info!(network = %a.network, %ip, pod = %a.pod.display(), container = %a.container_id, "sticky address re-activated");
                }
                net.observe(
                    StoredLease {
                        lease: lease.clone(),
                        mod_revision,
                    },
                    &self.node,
                );
                Ok(Some(Claim::Done(Box::new(Allocated {
                    lease,
                    network: net.effective_spec(),
                    existing: false,
                }))))
            }
            Ok(StickyWrite::Changed) => Ok(None),
            Err(e) => {
                self.outage.note_store_error(&e);
                Err(unavailable_for_sticky(a, e))
            }
        }
    }

    /// Retires a lease being released: a sticky one becomes a reservation
    /// for its identity (or is deleted with it when the hold time is 0);
    /// anything else is deleted. Compares the revision the caller saw.
    /// Returns Ok(None) when the record had changed, else the record left
    /// behind (None inside = the key is gone).
    pub(super) async fn retire(
        &self,
        spec: &rackline_model::NetworkSpec,
        sl: &StoredLease,
        rollback: bool,
    ) -> Result<Option<Option<StoredLease>>, StoreError> {
        let l = &sl.lease;
        if !l.sticky {
            return Ok(self
                .store
                .delete_lease(&l.network, l.address, sl.mod_revision)
                .await?
                .then_some(None));
        }
        let ident = self
            .store
            .get_identity(&l.network, &l.pod.namespace, &l.pod.name)
            .await?;
        let Some(ident) = ident.filter(|i| i.identity.address == l.address) else {
            // No identity names this address any more: a plain lease.
            return Ok(self
                .store
                .delete_lease(&l.network, l.address, sl.mod_revision)
                .await?
                .then_some(None));
        };
        // Rolling back the failed ADD that created this identity: the pod
        // never ran, so nothing is held for it.
        if rollback && l.new_identity && !ident.identity.pinned {
            let done = self
                .store
                .delete_sticky(l, sl.mod_revision, ident.mod_revision)
                .await?;
            return Ok(done.then_some(None));
        }
        let hold = Self::hold_for(spec, &ident.identity);
        if hold == Some(0) {
            let done = self
                .store
                .delete_sticky(l, sl.mod_revision, ident.mod_revision)
                .await?;
            return Ok(done.then_some(None));
        }
        self.reserve_for(sl, &ident, hold).await
    }

    /// How long a released sticky address is held for its identity: None
    /// for ever (pinned), Some(0) not at all (the records go).
    fn hold_for(spec: &rackline_model::NetworkSpec, identity: &Identity) -> Option<u64> {
        if identity.pinned {
            return None;
        }
        // A pod that opted in by annotation on a network without a
        // sticky policy gets the default hold.
        Some(match spec.sticky.as_ref() {
            Some(p) => p.hold_secs,
            None if identity.opt_in => rackline_model::sticky::DEFAULT_HOLD_SECS,
            None => 0,
        })
    }

    /// Turns the released lease into its identity's reservation for `hold`
    /// seconds (None: no expiry), compared on both records.
    async fn reserve_for(
        &self,
        sl: &StoredLease,
        ident: &StoredIdentity,
        hold: Option<u64>,
    ) -> Result<Option<Option<StoredLease>>, StoreError> {
        let l = &sl.lease;
        let reserved = Lease {
            new_identity: false,
            // A conflict the running pod's probe recorded ends with it.
            conflict: None,
            // Recorded afresh when the pod comes back.
            settings: None,
            container_id: String::new(),
            ifname: String::new(),
            state: LeaseState::Reserved,
            expires_unix_ms: hold.map(|s| now_ms() + (s as i64) * 1000),
            created_unix_ms: now_ms(),
            ..l.clone()
        };
        match self
            .store
            .write_sticky(
                &reserved,
                sl.mod_revision,
                &ident.identity,
                ident.mod_revision,
                hold,
                None,
                None,
            )
            .await?
        {
            StickyWrite::Done { mod_revision } => {
                info!(network = %l.network, ip = %l.address, pod = %l.pod.display(), hold_secs = ?hold, "sticky address reserved for the pod");
                Ok(Some(Some(StoredLease {
                    lease: reserved,
                    mod_revision,
                })))
            }
            StickyWrite::Changed => Ok(None),
        }
    }

    /// `retire` for the record at `ip` last seen at `rev`, keeping the cache
    /// in step (a reservation stays taken, a deletion frees the address).
    /// Returns false when the record had changed.
    pub(super) async fn retire_at(
        &self,
        net: &NetState,
        ip: std::net::Ipv4Addr,
        rev: i64,
        rollback: bool,
    ) -> Result<bool, StoreError> {
        let sl = match net.leases().at(ip).filter(|s| s.mod_revision == rev) {
            Some(sl) => sl,
            None => match self.store.get_lease(&net.spec.name, ip).await? {
                Some(sl) if sl.mod_revision == rev => sl,
                _ => return Ok(false),
            },
        };
        match self.retire(&net.spec, &sl, rollback).await? {
            None => Ok(false),
            Some(None) => {
                net.forget(ip, 0);
                Ok(true)
            }
            Some(Some(reserved)) => {
                net.observe(reserved, &self.node);
                Ok(true)
            }
        }
    }

    /// Creates a fresh sticky lease and its identity in one transaction.
    /// Ok(None): the identity appeared meanwhile (claim it instead).
    pub(super) async fn create_sticky(
        &self,
        net: &NetState,
        lease: &Lease,
        identity: &Identity,
        guard: Option<&rackline_store::BlockGuard>,
    ) -> Result<Option<rackline_store::CreateLease>, StoreError> {
        use rackline_store::CreateLease;
        let identity = Identity {
            address: lease.address,
            ..identity.clone()
        };
        match self
            .store
            .write_sticky(
                lease,
                0,
                &identity,
                0,
                None,
                Some(net.create_revision),
                guard,
            )
            .await?
        {
            StickyWrite::Done { mod_revision } => Ok(Some(CreateLease::Created { mod_revision })),
            StickyWrite::Changed => {
                // Which compare failed decides what the caller does next.
                if let Some(owner) = self.store.get_lease(&lease.network, lease.address).await? {
                    return Ok(Some(CreateLease::Taken(Some(Box::new(owner.lease)))));
                }
                if self
                    .store
                    .get_identity(&identity.network, &identity.namespace, &identity.name)
                    .await?
                    .is_some()
                {
                    return Ok(None);
                }
                match self.store.get_network(&lease.network).await? {
                    Some(n) if n.create_revision == net.create_revision => {
                        Ok(Some(CreateLease::BlockChanged))
                    }
                    _ => Ok(Some(CreateLease::NetworkGone)),
                }
            }
        }
    }
}

/// The operator's command that releases the pod's reservation; `flags`
/// goes before the arguments (e.g. "--force ").
fn release_command(a: &AllocateArgs, flags: &str) -> String {
    format!(
        "`racklinectl reservation release {flags}{} {} {}`",
        a.network, a.pod.namespace, a.pod.name
    )
}

/// The sticky pod already runs on another node.
fn live_elsewhere(a: &AllocateArgs, ip: Ipv4Addr, node: &str, container_id: &str) -> IpamError {
    IpamError::IdentityLive(format!(
        "pod {} already holds {ip} on node {node:?} (container {container_id}); delete it there first, or, if that node is gone for good, run {}",
        a.pod.display(),
        release_command(a, "--force ")
    ))
}

/// The sticky pod's address lives in another rack; `here` = this node and
/// its rack.
fn wrong_rack(a: &AllocateArgs, ip: Ipv4Addr, rack: &str, here: (&str, &str)) -> IpamError {
    let (node, node_rack) = here;
    IpamError::WrongRack(format!(
        "pod {} has address {ip} reserved in rack {rack:?}, and node {node:?} is in rack {node_rack:?}: the address is only reachable behind rack {rack:?}'s TOR. Start the pod in rack {rack:?}, or release the reservation ({})",
        a.pod.display(),
        release_command(a, "")
    ))
}
