//! The allocator: allocate, release, check, GC and reclaim. Allocation is
//! one etcd round trip: pick a free address from the mirror, then a
//! create-if-absent transaction on that address's own key; concurrent ADDs
//! on this node serialise only per attachment. Requested addresses are in
//! engine/requested.rs, sticky identities in engine/sticky.rs, offline
//! operation in engine/outage.rs.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use rackline_model::{Identity, Lease};
use rackline_store::{CreateLease, StoreError, StoredLease};
use tracing::{debug, info};

use super::sticky::Claim;
use super::{
    now_ms, validate_attachment, AllocateArgs, Allocated, Allocator, AttachGuard, IpamError, Mode,
    StatusInfo, MAX_ATTEMPTS, MAX_RESERVE_WAIT, RESERVE_POLL,
};
use crate::netstate::{AttachmentKey, NetState, Pick};
use crate::store::LeaseStore;

/// What a fresh lease's create came to, once
/// [`Allocator::settle_create`] has done the bookkeeping.
pub(super) enum Settled {
    /// Written and recorded in the cache.
    Created,
    /// Someone else holds the address (the owner, when the store read it).
    Taken(Option<Box<Lease>>),
    /// The candidate's block changed; its mark is freed.
    BlockChanged,
    /// The network was deleted or re-created; the mark is freed.
    NetworkGone,
    /// etcd did not answer: the create may have been applied, and the
    /// attachment is marked uncertain.
    Unavailable(String),
}

/// What one candidate address came to.
enum Attempt {
    Done(Box<Allocated>),
    /// Try the next candidate.
    Next,
}

impl Attempt {
    fn done(lease: Lease, net: &NetState) -> Self {
        Attempt::Done(Box::new(Allocated {
            lease,
            network: net.effective_spec(),
            existing: false,
        }))
    }

    fn done_with(a: Allocated) -> Self {
        Attempt::Done(Box::new(a))
    }
}

/// The active lease a fresh allocation by `node` writes at `ip`.
pub(super) fn fresh_lease(
    node: &str,
    net: &NetState,
    a: &AllocateArgs,
    ip: Ipv4Addr,
    sticky: bool,
) -> Lease {
    Lease {
        network: a.network.clone(),
        address: ip,
        node: node.to_string(),
        container_id: a.container_id.clone(),
        ifname: a.ifname.clone(),
        pod: a.pod.clone(),
        created_unix_ms: now_ms(),
        state: rackline_model::LeaseState::Active,
        sticky,
        new_identity: sticky,
        expires_unix_ms: None,
        conflict: None,
        settings: net.pod_settings(),
    }
}

impl<'e, S: LeaseStore> Allocator<'e, S> {
    pub(super) async fn network(&self, name: &str) -> Result<Arc<NetState>, IpamError> {
        self.mirror.wait_synced(Duration::from_secs(2)).await?;
        if let Some(st) = self.mirror.nets_read().get(name) {
            return Ok(st.clone());
        }
        if let Some(why) = self
            .mirror
            .unbound
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
        {
            return Err(IpamError::NotInRack(why.clone()));
        }
        // The watch may lag a network created a moment ago.
        match self.store.get_network(name).await? {
            Some(n) => {
                let mut nets = self.mirror.nets_write();
                let st = nets.entry(name.to_string()).or_insert_with(|| {
                    self.mirror
                        .tracked(NetState::new(n.spec, n.create_revision))
                });
                Ok(st.clone())
            }
            None => Err(IpamError::UnknownNetwork(name.to_string())),
        }
    }

    pub(super) async fn lock_attachment(
        &self,
        network: &str,
        key: &AttachmentKey,
    ) -> AttachGuard<'e> {
        let lk = (network.to_string(), key.0.clone(), key.1.clone());
        let m = {
            let mut map = self.attach_locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(lk.clone()).or_default().clone()
        };
        let guard = m.lock_owned().await;
        AttachGuard {
            map: &self.0.attach_locks,
            key: lk,
            guard: Some(guard),
        }
    }

    // ---- the API ----

    pub async fn allocate(&self, a: AllocateArgs) -> Result<Allocated, IpamError> {
        validate_attachment(&a.container_id, &a.ifname)?;
        let net = self.network(&a.network).await?;
        let mut a = a;
        if a.requested.is_empty() && !a.annotated.is_empty() {
            a.requested = super::requested::from_annotation(&net, &a)?;
        }
        let key: AttachmentKey = (a.container_id.clone(), a.ifname.clone());
        let _g = self.lock_attachment(&a.network, &key).await;

        if let Some(sl) = net.leases().existing(&key) {
            debug!(ip = %sl.lease.address, "allocation already held");
            super::requested::check_held(&a, &sl.lease)?;
            return Ok(Allocated {
                lease: sl.lease,
                network: net.effective_spec(),
                existing: true,
            });
        }
        // Sticky pods claim their identity's address first; they never take
        // an offline address (see engine/sticky.rs).
        let mut identity = None;
        if self.sticky().maybe_sticky(&net, &a) {
            match self.sticky().claim_identity(&net, &a).await? {
                Some(Claim::Done(done)) => return Ok(*done),
                Some(Claim::Fresh(i)) => identity = Some(i),
                None => {}
            }
        }
        if !a.requested.is_empty() {
            // Requested addresses are claimed through etcd only: an offline
            // standby address would not be the one asked for.
            if let Some(done) = self.adopt_uncertain(&net, &key).await? {
                super::requested::check_held(&a, &done.lease)?;
                return Ok(done);
            }
            return self.allocate_requested(&net, &a, identity).await;
        }
        if identity.is_none() && self.outage_first().await {
            return self.reserve().allocate_offline(&net, &a).await;
        }
        if let Some(done) = self.adopt_uncertain(&net, &key).await? {
            return Ok(done);
        }
        self.allocate_fresh(&net, &a, &key, identity).await
    }

    /// Whether a non-sticky ADD goes to the standby reserve without trying
    /// etcd: offline operation is on and etcd is away (or the state came
    /// from the persisted reserve). Suspect: waits for the prober's verdict
    /// rather than spend the reserve on what may be one slow request.
    async fn outage_first(&self) -> bool {
        if !self.outage.journaling() {
            return false;
        }
        let mode = match self.outage.mode() {
            Mode::Suspect => self.outage.await_verdict().await,
            m => m,
        };
        mode != Mode::Online || self.outage.from_persisted()
    }

    /// A fresh address for the attachment (and, with `identity`, a new
    /// sticky identity written with it): candidates from the mirror, each
    /// tried with a create-if-absent on its own key.
    async fn allocate_fresh(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        key: &AttachmentKey,
        mut identity: Option<Identity>,
    ) -> Result<Allocated, IpamError> {
        let mut reserve_wait = Duration::ZERO;
        let mut attempts = 0;
        while attempts < MAX_ATTEMPTS {
            attempts += 1;
            let Some(pick) = net.picks().pick() else {
                match self.when_exhausted(net, a, &mut reserve_wait).await? {
                    Some(done) => return Ok(done),
                    None => {
                        attempts -= 1;
                        continue;
                    }
                }
            };
            let ip = pick.ip;
            let lease = fresh_lease(&self.node, net, a, ip, identity.is_some());
            let created = match self
                .create_fresh(net, &lease, identity.as_ref(), &pick)
                .await
            {
                Ok(Some(c)) => Ok(c),
                Ok(None) => {
                    // Someone created this identity meanwhile: claim
                    // it the regular way (it may be live elsewhere).
                    net.picks().unpick(ip);
                    match self.sticky().claim_identity(net, a).await? {
                        Some(Claim::Done(done)) => return Ok(*done),
                        Some(Claim::Fresh(i)) => identity = Some(i),
                        None => identity = None,
                    }
                    continue;
                }
                Err(e) => Err(e),
            };
            let sticky = identity.is_some();
            match self
                .created(net, a, key, &pick, lease, created, sticky)
                .await?
            {
                Attempt::Done(done) => return Ok(*done),
                Attempt::Next => {}
            }
        }
        Err(IpamError::Contended(MAX_ATTEMPTS))
    }

    /// Nothing free in the mirror: this node's own reserve as a last
    /// resort (Some), or None after a short wait when other nodes still
    /// hold reserves they give back when the rack runs short (every
    /// RESERVE_INTERVAL; with capacity equal to demand, waiting for that
    /// beats failing the ADD), or `Exhausted`.
    async fn when_exhausted(
        &self,
        net: &NetState,
        a: &AllocateArgs,
        reserve_wait: &mut Duration,
    ) -> Result<Option<Allocated>, IpamError> {
        if let Some(done) = self.reserve().allocate_from_standby(net, a).await? {
            return Ok(Some(done));
        }
        if net.standby().foreign() > 0 && *reserve_wait < MAX_RESERVE_WAIT {
            tokio::time::sleep(RESERVE_POLL).await;
            *reserve_wait += RESERVE_POLL;
            return Ok(None);
        }
        let (capacity, allocated, _) = net.usage();
        Err(IpamError::Exhausted {
            network: a.network.clone(),
            allocated,
            capacity,
        })
    }

    /// Creates a fresh lease at `pick` and, with `identity`, the new sticky
    /// identity in the same transaction. Ok(None): the identity appeared
    /// meanwhile and nothing was written.
    pub(super) async fn create_fresh(
        &self,
        net: &NetState,
        lease: &Lease,
        identity: Option<&Identity>,
        pick: &Pick,
    ) -> Result<Option<CreateLease>, StoreError> {
        match identity {
            None => self
                .store
                .create_lease(lease, net.create_revision, pick.guard.as_ref())
                .await
                .map(Some),
            Some(i) => {
                self.sticky()
                    .create_sticky(net, lease, i, pick.guard.as_ref())
                    .await
            }
        }
    }

    /// The bookkeeping every create of a fresh lease needs, whichever way
    /// its address was chosen (picked here or requested by the pod): the
    /// cache, the mark and the uncertain set follow the store's answer.
    /// What differs between the two callers is left to them.
    pub(super) fn settle_create(
        &self,
        net: &NetState,
        a: &AllocateArgs,
        pick: &Pick,
        lease: &Lease,
        created: Result<CreateLease, StoreError>,
    ) -> Result<Settled, IpamError> {
        let ip = pick.ip;
        match created {
            Ok(CreateLease::Created { mod_revision }) => {
                self.outage.note_reachable();
                net.observe(
                    StoredLease {
                        lease: lease.clone(),
                        mod_revision,
                    },
                    &self.node,
                );
                if pick.guard.is_some() || pick.borrowed {
                    self.block_demand.notify_one();
                }
                let requested = !a.requested.is_empty();
                info!(network = %a.network, %ip, borrowed = pick.borrowed, requested, container = %a.container_id, ifname = %a.ifname, pod = %a.pod.display(), "leased");
                Ok(Settled::Created)
            }
            // Our cache lagged or we lost the race: the address stays
            // marked taken and the watch fills in the owner's record.
            Ok(CreateLease::Taken(owner)) => Ok(Settled::Taken(owner)),
            Ok(CreateLease::BlockChanged) => {
                // Our view of the block is stale; the watch brings the
                // new one. Free the mark.
                debug!(%ip, "block changed under the candidate");
                net.picks().unpick(ip);
                net.blocks().drop_at(ip);
                Ok(Settled::BlockChanged)
            }
            Ok(CreateLease::NetworkGone) => {
                net.picks().unpick(ip);
                Ok(Settled::NetworkGone)
            }
            Err(StoreError::Unavailable(m)) => {
                // The request may have been applied: remember it so the
                // retry, the DEL or the journal replay resolves it
                // instead of leaking it.
                net.uncertain()
                    .mark(&(a.container_id.clone(), a.ifname.clone()), ip);
                self.outage.note_unreachable(&m);
                Ok(Settled::Unavailable(m))
            }
            Err(e) => {
                net.picks().unpick(ip);
                Err(e.into())
            }
        }
    }

    /// Acts on the outcome of one candidate's create.
    #[allow(clippy::too_many_arguments)]
    async fn created(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        key: &AttachmentKey,
        pick: &Pick,
        lease: Lease,
        created: Result<CreateLease, StoreError>,
        sticky: bool,
    ) -> Result<Attempt, IpamError> {
        match self.settle_create(net, a, pick, &lease, created)? {
            Settled::Created => Ok(Attempt::done(lease, net)),
            Settled::Taken(owner) => {
                debug!(ip = %pick.ip, owner = ?owner.as_ref().map(|o| &o.node), "candidate already leased; next");
                Ok(Attempt::Next)
            }
            Settled::BlockChanged => Ok(Attempt::Next),
            Settled::NetworkGone => {
                self.mirror
                    .nets_write()
                    .retain(|_, st| !Arc::ptr_eq(st, net));
                Err(IpamError::UnknownNetwork(a.network.clone()))
            }
            Settled::Unavailable(m) => {
                if self.outage.journal.is_none() {
                    return Err(IpamError::Unavailable(m));
                }
                if self.outage.await_verdict().await != Mode::Online || sticky {
                    return Ok(Attempt::done_with(
                        self.reserve().allocate_offline(net, a).await?,
                    ));
                }
                self.recreate(net, a, key, pick, lease).await
            }
        }
    }

    /// etcd answers again after a create whose answer was lost, but the
    /// lost create may still be on its way (queued behind a slow request):
    /// ask for the SAME key again. Create-if-absent on one key succeeds
    /// once, so the attachment cannot end up with two addresses, whichever
    /// of the two requests lands.
    async fn recreate(
        &self,
        net: &Arc<NetState>,
        a: &AllocateArgs,
        key: &AttachmentKey,
        pick: &Pick,
        lease: Lease,
    ) -> Result<Attempt, IpamError> {
        let ip = pick.ip;
        match self
            .store
            .create_lease(&lease, net.create_revision, pick.guard.as_ref())
            .await
        {
            Ok(CreateLease::Created { mod_revision }) => {
                net.observe(
                    StoredLease {
                        lease: lease.clone(),
                        mod_revision,
                    },
                    &self.node,
                );
                info!(network = %a.network, %ip, container = %a.container_id, ifname = %a.ifname, pod = %a.pod.display(), "leased (after a retry)");
                Ok(Attempt::done(lease, net))
            }
            // Ours (the first request landed) or another's:
            // reading the key settles which.
            Ok(CreateLease::Taken(_)) => match self.adopt_uncertain(net, key).await? {
                Some(done) => Ok(Attempt::done_with(done)),
                None => Ok(Attempt::Next),
            },
            Ok(CreateLease::BlockChanged) | Ok(CreateLease::NetworkGone) => {
                // The first request failed the same guard.
                net.uncertain().resolve_absent(key, ip);
                Ok(Attempt::Next)
            }
            Err(e) => {
                self.outage.note_store_error(&e);
                Ok(Attempt::done_with(
                    self.reserve().allocate_offline(net, a).await?,
                ))
            }
        }
    }

    /// An earlier attempt for this attachment may have been written even
    /// though we never heard back: adopt it rather than take a second one.
    pub(super) async fn adopt_uncertain(
        &self,
        net: &NetState,
        key: &AttachmentKey,
    ) -> Result<Option<Allocated>, IpamError> {
        for ip in net.uncertain().take(key) {
            match self.store.get_lease(&net.spec.name, ip).await {
                Ok(Some(sl)) if self.is_mine(&sl.lease, key) => {
                    let lease = sl.lease.clone();
                    net.observe(sl, &self.node);
                    return Ok(Some(Allocated {
                        lease,
                        network: net.effective_spec(),
                        existing: false,
                    }));
                }
                Ok(Some(sl)) => net.observe(sl, &self.node),
                Ok(None) => net.uncertain().resolve_absent(key, ip),
                Err(e) => {
                    net.uncertain().mark(key, ip);
                    self.outage.note_store_error(&e);
                    return Err(e.into());
                }
            }
        }
        Ok(None)
    }

    /// Releases every lease this node holds for the attachment (see
    /// `Engine::release`); `rollback` = the plugin undoes its own failed ADD
    /// (a sticky identity that ADD created goes with the lease). Only if
    /// `still_wanted()` holds once the attachment's lock is taken: a release
    /// the plugin spooled is dropped when an ADD of the same attachment
    /// removed the record meanwhile (the ADD removes it before it allocates,
    /// so whichever comes second under the lock sees the other's effect).
    pub async fn release_if(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        rollback: bool,
        still_wanted: impl FnOnce() -> bool,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        validate_attachment(container_id, ifname)?;
        let net = match self.network(network).await {
            Ok(n) => n,
            Err(IpamError::UnknownNetwork(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let key: AttachmentKey = (container_id.to_string(), ifname.to_string());
        let _g = self.lock_attachment(network, &key).await;
        if !still_wanted() {
            return Ok(Vec::new());
        }
        if self.outage.journal.is_some() {
            let mode = match self.outage.mode() {
                Mode::Suspect => self.outage.await_verdict().await,
                m => m,
            };
            if mode != Mode::Online || self.outage.from_persisted() {
                return self.reserve().release_offline(&net, &key).await;
            }
        }
        match self.release_locked(&net, &key, |_| true, rollback).await {
            Err(IpamError::Unavailable(m)) if self.outage.journal.is_some() => {
                self.outage.note_unreachable(&m);
                if self.outage.await_verdict().await == Mode::Online {
                    return self.release_locked(&net, &key, |_| true, rollback).await;
                }
                self.reserve().release_offline(&net, &key).await
            }
            other => other,
        }
    }

    pub(super) async fn release_locked(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        should_release: impl Fn(&StoredLease) -> bool,
        rollback: bool,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        self.release_locked_for(net, key, should_release, rollback, None)
            .await
    }

    /// `release_locked`; `reclaim` names why the pod is known to be gone
    /// (`rackline_model::event::reclaim`: GC, the reconciler). Each lease
    /// is then marked with the reason before it is freed, so the IP event
    /// stream reports a reclaim rather than a DEL (one more etcd write per
    /// reclaimed lease, off the ADD/DEL path).
    pub(crate) async fn release_locked_for(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        should_release: impl Fn(&StoredLease) -> bool,
        rollback: bool,
        reclaim: Option<&str>,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        let mut released = Vec::new();
        for (ip, rev) in net.leases().held(key) {
            let Some(rev) = self.revision_of(net, key, ip, rev).await? else {
                continue;
            };
            if let Some(sl) = net.leases().at(ip) {
                if !should_release(&sl) {
                    continue;
                }
            }
            if self
                .release_one(net, key, ip, rev, rollback, reclaim)
                .await?
            {
                released.push(ip);
            }
        }
        Ok(released)
    }

    /// The revision to release the attachment's lease at `ip` at (`rev`
    /// when the cache knows it), or None when the record is not the
    /// attachment's any more.
    async fn revision_of(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        ip: Ipv4Addr,
        rev: Option<i64>,
    ) -> Result<Option<i64>, IpamError> {
        if let Some(r) = rev {
            return Ok(Some(r));
        }
        match self.store.get_lease(&net.spec.name, ip).await {
            Ok(Some(sl)) if self.is_mine(&sl.lease, key) => Ok(Some(sl.mod_revision)),
            Ok(Some(sl)) => {
                net.leases().disown(key, ip);
                net.observe(sl, &self.node);
                Ok(None)
            }
            Ok(None) => {
                net.uncertain().resolve_absent(key, ip);
                Ok(None)
            }
            Err(e) => {
                self.outage.note_store_error(&e);
                Err(e.into())
            }
        }
    }

    /// Releases the attachment's lease at `ip`, re-reading a record that
    /// changed (at most three times). True when this call released it,
    /// false when the record turned out to be someone else's or gone.
    async fn release_one(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        ip: Ipv4Addr,
        mut rev: i64,
        rollback: bool,
        reclaim: Option<&str>,
    ) -> Result<bool, IpamError> {
        let name = &net.spec.name;
        for _ in 0..3 {
            if let Some(reason) = reclaim {
                rev = self.mark_reclaimed(net, ip, rev, reason).await?;
            }
            match self.sticky().retire_at(net, ip, rev, rollback).await {
                Ok(true) => {
                    net.leases().disown(key, ip);
                    info!(network = %name, %ip, container = %key.0, ifname = %key.1, "released");
                    return Ok(true);
                }
                Ok(false) => match self.store.get_lease(name, ip).await {
                    Ok(Some(sl)) if self.is_mine(&sl.lease, key) => rev = sl.mod_revision,
                    Ok(Some(sl)) => {
                        net.leases().disown(key, ip);
                        net.observe(sl, &self.node);
                        return Ok(false);
                    }
                    Ok(None) => {
                        net.forget(ip, 0);
                        net.uncertain().resolve_absent(key, ip);
                        return Ok(false);
                    }
                    Err(e) => {
                        self.outage.note_store_error(&e);
                        return Err(e.into());
                    }
                },
                Err(e) => {
                    self.outage.note_store_error(&e);
                    return Err(e.into());
                }
            }
        }
        // The record kept changing under us: report it so DEL fails
        // (code 11) and is retried, instead of claiming a release.
        Err(IpamError::Contended(3))
    }

    pub async fn check(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Allocated>, IpamError> {
        validate_attachment(container_id, ifname)?;
        let net = self.network(network).await?;
        let key: AttachmentKey = (container_id.to_string(), ifname.to_string());
        Ok(net.leases().existing(&key).map(|sl| Allocated {
            lease: sl.lease,
            network: net.effective_spec(),
            existing: true,
        }))
    }

    /// CNI GC: releases this node's leases on `network` whose attachment is
    /// not in `valid`, except those younger than the grace period (their ADD
    /// may be in flight and missing from the runtime's list).
    /// Returns the released leases and the network's prefix length.
    pub async fn gc(
        &self,
        network: &str,
        valid: &HashSet<AttachmentKey>,
    ) -> Result<(Vec<Lease>, u8), IpamError> {
        let net = match self.network(network).await {
            Ok(n) => n,
            Err(IpamError::UnknownNetwork(_)) => return Ok((Vec::new(), 32)),
            Err(e) => return Err(e),
        };
        let mut stale: Vec<AttachmentKey> = net
            .leases()
            .of_node(&self.node)
            .into_iter()
            .map(|sl| (sl.lease.container_id, sl.lease.ifname))
            .filter(|k| !valid.contains(k))
            .collect();
        stale.sort();
        stale.dedup();
        let mut out = Vec::new();
        for key in stale {
            let _g = self.lock_attachment(network, &key).await;
            // Re-checked under the attachment lock: an ADD that completed
            // meanwhile made a young lease, which the grace keeps.
            let cutoff = now_ms() - self.gc_grace.as_millis() as i64;
            let before: Vec<Lease> = net
                .leases()
                .held(&key)
                .into_iter()
                .filter_map(|(ip, _)| net.leases().at(ip))
                .map(|sl| sl.lease)
                .collect();
            let freed = self
                .release_locked_for(
                    &net,
                    &key,
                    |sl| sl.lease.created_unix_ms <= cutoff,
                    false,
                    Some(rackline_model::event::reclaim::GC),
                )
                .await?;
            out.extend(before.into_iter().filter(|l| freed.contains(&l.address)));
        }
        if !out.is_empty() {
            info!(network, released = out.len(), "gc released stale leases");
            self.observed_reclaims(network, rackline_model::event::reclaim::GC, out.len());
        }
        Ok((out, net.spec.subnet.prefix()))
    }

    /// The leak reconciler's release: frees the attachment's leases on
    /// `network` that were created at or before `cutoff_ms` (younger ones
    /// belong to an ADD that may still be in flight), exactly as CNI GC
    /// does — under the attachment's lock, a sticky lease kept for its pod
    /// like a DEL keeps it, each lease marked `reclaimedBy: reconcile` —
    /// and counts them. Never offline: a reclaim is not worth a journal
    /// entry, it waits for etcd.
    pub async fn reclaim(
        &self,
        network: &str,
        container_id: &str,
        ifname: &str,
        cutoff_ms: i64,
    ) -> Result<Vec<Lease>, IpamError> {
        validate_attachment(container_id, ifname)?;
        let net = match self.network(network).await {
            Ok(n) => n,
            Err(IpamError::UnknownNetwork(_)) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        if !self.outage.etcd_ok() || self.outage.from_persisted() {
            return Err(IpamError::Unavailable(
                "etcd is unreachable or not loaded yet: reclaims wait for it".into(),
            ));
        }
        let key: AttachmentKey = (container_id.to_string(), ifname.to_string());
        let _g = self.lock_attachment(network, &key).await;
        let before: Vec<Lease> = net
            .leases()
            .held(&key)
            .into_iter()
            .filter_map(|(ip, _)| net.leases().at(ip))
            .map(|sl| sl.lease)
            .collect();
        let reason = rackline_model::event::reclaim::RECONCILE;
        let freed = self
            .release_locked_for(
                &net,
                &key,
                |sl| sl.lease.state.is_active() && sl.lease.created_unix_ms <= cutoff_ms,
                false,
                Some(reason),
            )
            .await?;
        let out: Vec<Lease> = before
            .into_iter()
            .filter(|l| freed.contains(&l.address))
            .collect();
        if !out.is_empty() {
            self.observed_reclaims(network, reason, out.len());
        }
        Ok(out)
    }

    pub async fn status(&self, network: &str) -> Result<StatusInfo, IpamError> {
        let net = self.network(network).await?;
        let (capacity, allocated, available) = net.usage();
        let etcd_connected = self.outage.etcd_ok();
        // Never "can add pods" while /readyz says not ready.
        if let rackline_telemetry::Readiness::NotReady(reason) =
            super::observe::readiness(&self.mirror, &self.outage)
        {
            return Ok(StatusInfo {
                capacity,
                allocated,
                available,
                etcd_connected,
                can_allocate: false,
                reason,
            });
        }
        let reserve = if self.outage.journal.is_some() {
            net.standby().count()
        } else {
            0
        };
        let mode = self.outage.mode();
        let (can_allocate, reason) = if mode == Mode::Offline && reserve > 0 {
            (
                true,
                format!(
                    "{}; serving from {reserve} standby address(es)",
                    self.outage.mode_detail()
                ),
            )
        } else if mode == Mode::Offline {
            (
                false,
                format!("{}; no standby address is left", self.outage.mode_detail()),
            )
        } else if mode == Mode::Suspect {
            (true, self.outage.mode_detail())
        } else if available == 0 {
            (
                false,
                format!("network {network:?} is exhausted ({allocated}/{capacity} in use)"),
            )
        } else {
            (true, String::new())
        };
        Ok(StatusInfo {
            capacity,
            allocated,
            available,
            etcd_connected,
            can_allocate,
            reason,
        })
    }
}
