//! Operation while etcd is unreachable: the standby reserve, the journal
//! (fsync'd before any answer) and its replay.

use std::net::Ipv4Addr;

use rackline_model::Lease;
use rackline_store::{CreateLease, StoredLease};
use tracing::{debug, error, info, warn};

use super::{now_ms, AllocateArgs, Allocated, IpamError, Mode, Reserve};
use crate::netstate::{AttachmentKey, NetState};
use crate::store::LeaseStore;
use tokio::sync::watch;

impl<S: LeaseStore> Reserve<'_, S> {
    pub(super) fn lease_for(&self, net: &NetState, a: &AllocateArgs, ip: Ipv4Addr) -> Lease {
        Lease {
            network: a.network.clone(),
            address: ip,
            node: self.node.clone(),
            container_id: a.container_id.clone(),
            ifname: a.ifname.clone(),
            pod: a.pod.clone(),
            created_unix_ms: now_ms(),
            state: rackline_model::LeaseState::Active,
            sticky: false,
            expires_unix_ms: None,
            conflict: None,
            new_identity: false,
            settings: net.pod_settings(),
        }
    }

    /// etcd is unreachable: hand out one of this node's standby addresses
    /// (recorded in etcd as ours, so nobody else can have it), journalled
    /// and fsync'd before we answer.
    pub(super) async fn allocate_offline(
        &self,
        net: &NetState,
        a: &AllocateArgs,
    ) -> Result<Allocated, IpamError> {
        let Some(journal) = &self.outage.journal else {
            return Err(IpamError::Unavailable("etcd is unreachable".into()));
        };
        let Some((ip, rev)) = net.standby().take() else {
            return Err(IpamError::Unavailable(
                "etcd is unreachable and this node has no standby address left".into(),
            ));
        };
        let lease = self.lease_for(net, a, ip);
        let entry = crate::journal::Entry::Activate {
            lease: lease.clone(),
            standby_revision: rev,
        };
        if let Err(e) = journal.append(&entry).await {
            net.standby().give_back(ip, rev);
            return Err(IpamError::Unavailable(format!(
                "etcd is unreachable and the journal cannot be written: {e}"
            )));
        }
        net.standby().activate_offline(lease.clone(), rev);
        warn!(network = %a.network, %ip, container = %a.container_id, "leased a standby address while etcd is unreachable (journalled)");
        Ok(Allocated {
            lease,
            network: net.effective_spec(),
            existing: false,
        })
    }

    /// Online, with nothing free: turn one of this node's standby records
    /// into the pod's lease (revision-compared).
    pub(super) async fn allocate_from_standby(
        &self,
        net: &NetState,
        a: &AllocateArgs,
    ) -> Result<Option<Allocated>, IpamError> {
        while let Some((ip, rev)) = net.standby().take() {
            // The persisted reserve stops listing it before etcd changes.
            self.save_reserve().await;
            let lease = self.lease_for(net, a, ip);
            match self.store.replace_lease(&lease, rev).await {
                Ok(Some(new_rev)) => {
                    net.observe(
                        StoredLease {
                            lease: lease.clone(),
                            mod_revision: new_rev,
                        },
                        &self.node,
                    );
                    return Ok(Some(Allocated {
                        lease,
                        network: net.effective_spec(),
                        existing: false,
                    }));
                }
                // The record changed (someone released our reserve): next.
                Ok(None) => continue,
                Err(e) => {
                    net.standby().give_back(ip, rev);
                    self.outage.note_store_error(&e);
                    return Err(e.into());
                }
            }
        }
        Ok(None)
    }

    /// etcd is unreachable: release locally, journalled before answering.
    pub(super) async fn release_offline(
        &self,
        net: &NetState,
        key: &AttachmentKey,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        let Some(journal) = &self.outage.journal else {
            return Err(IpamError::Unavailable("etcd is unreachable".into()));
        };
        let held = net.leases().held(key);
        if held.is_empty() && self.outage.from_persisted() {
            // Started while etcd was away: only the persisted reserve and this run's offline
            // leases are known here, not the leases etcd holds for this node. "Nothing held"
            // could be false (a lease made just before a restart) and would leak it; say "try
            // again later" instead, so the plugin spools the release and the spool is drained
            // once etcd's state is loaded.
            return Err(IpamError::Unavailable(
                "etcd is unreachable and this ipamd started without its state: the release is kept for later".into(),
            ));
        }
        let mut out = Vec::new();
        for (ip, _) in held {
            let entry = crate::journal::Entry::Release {
                network: net.spec.name.clone(),
                address: ip,
                container_id: key.0.clone(),
                ifname: key.1.clone(),
            };
            journal.append(&entry).await.map_err(|e| {
                IpamError::Unavailable(format!(
                    "etcd is unreachable and the journal cannot be written: {e}"
                ))
            })?;
            net.standby().release_offline(key, ip);
            warn!(network = %net.spec.name, %ip, container = %key.0, "released while etcd is unreachable (journalled)");
            out.push(ip);
        }
        Ok(out)
    }

    /// Replays the outage journal into etcd, oldest first. Every step is
    /// revision-compared and idempotent, so a replay interrupted by another
    /// outage simply runs again. Clears what reached etcd.
    pub async fn replay_journal(&self) -> Result<usize, IpamError> {
        use crate::journal::Entry;
        let Some(journal) = &self.outage.journal else {
            return Ok(0);
        };
        let entries = journal.entries();
        let mut done = 0;
        let result: Result<(), IpamError> = async {
            for e in &entries {
                match e {
                    Entry::Activate {
                        lease,
                        standby_revision,
                    } => self.replay_activate(lease, *standby_revision).await?,
                    Entry::Release {
                        network,
                        address,
                        container_id,
                        ifname,
                    } => {
                        self.replay_release(network, address, container_id, ifname)
                            .await?
                    }
                }
                done += 1;
            }
            Ok(())
        }
        .await;
        if done > 0 {
            // The persisted reserve must not list the standby addresses these
            // entries consumed once the journal no longer says so.
            self.save_reserve().await;
            if let Err(e) = journal.drain(done).await {
                // Replaying again is harmless; losing entries is not.
                error!(
                    "cannot trim the journal at {}: {e}",
                    journal.path().display()
                );
            }
        }
        result.map(|()| done)
    }

    /// Replays one offline lease: the standby record becomes the lease
    /// (revision-compared), and a create lost at the start of the outage
    /// must not leave the attachment a second address.
    async fn replay_activate(&self, lease: &Lease, standby_revision: i64) -> Result<(), IpamError> {
        let key = (lease.container_id.clone(), lease.ifname.clone());
        let recorded = match self.store.replace_lease(lease, standby_revision).await? {
            Some(_) => {
                info!(network = %lease.network, ip = %lease.address, "journal: offline lease recorded in etcd");
                true
            }
            None => match self.store.get_lease(&lease.network, lease.address).await? {
                Some(cur) if self.is_mine(&cur.lease, &key) => true,
                other => {
                    error!(network = %lease.network, ip = %lease.address, found = ?other.map(|o| o.lease), "journal: the standby record of an offline lease changed in etcd; not overwriting it");
                    false
                }
            },
        };
        if recorded {
            self.outage
                .replayed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((lease.network.clone(), key.clone(), lease.address));
        }
        // A create lost at the start of the outage must not
        // leave this attachment a second address.
        let net = self.mirror.nets_read().get(&lease.network).cloned();
        if let Some(net) = net {
            for ip in net.uncertain().take(&key) {
                if ip == lease.address {
                    continue;
                }
                if let Some(cur) = self.store.get_lease(&lease.network, ip).await? {
                    if self.is_mine(&cur.lease, &key) {
                        self.store
                            .delete_lease(&lease.network, ip, cur.mod_revision)
                            .await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Replays one offline release.
    async fn replay_release(
        &self,
        network: &str,
        address: &Ipv4Addr,
        container_id: &str,
        ifname: &str,
    ) -> Result<(), IpamError> {
        let key = (container_id.to_string(), ifname.to_string());
        if let Some(cur) = self.store.get_lease(network, *address).await? {
            if self.is_mine(&cur.lease, &key) {
                // A sticky lease becomes its identity's
                // reservation, as an online DEL would do.
                let spec = self.mirror.nets_read().get(network).map(|n| n.spec.clone());
                match spec {
                    Some(spec) => {
                        self.sticky().retire(&spec, &cur, false).await?;
                    }
                    None => {
                        self.store
                            .delete_lease(network, *address, cur.mod_revision)
                            .await?;
                    }
                }
                info!(%network, ip = %address, "journal: offline release recorded in etcd");
            }
        }
        Ok(())
    }

    /// After the snapshot that follows a journal replay: an attachment whose
    /// offline lease was just recorded must hold no other lease of this
    /// node. One appears when a create whose answer was lost landed in etcd
    /// and ipamd then restarted without etcd (the in-memory note of the
    /// uncertain create went with it): the runtime's retry was answered
    /// from the reserve, so the offline address is the pod's and the other
    /// one nobody's. It is deleted comparing its revision (never a sticky
    /// one: sticky pods take no offline address). Entries whose check
    /// failed (etcd) stay for the next snapshot. Returns what was dropped.
    pub async fn settle_replayed(&self) -> Vec<Ipv4Addr> {
        let todo = std::mem::take(
            &mut *self
                .outage
                .replayed
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut dropped = Vec::new();
        let mut retry = Vec::new();
        for (network, key, kept) in todo {
            let Some(net) = self.mirror.nets_read().get(&network).cloned() else {
                continue;
            };
            let _g = self.allocator().lock_attachment(&network, &key).await;
            if !self
                .drop_second_leases(&net, &network, &key, kept, &mut dropped)
                .await
            {
                retry.push((network.clone(), key.clone(), kept));
            }
        }
        if !retry.is_empty() {
            self.outage
                .replayed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(retry);
        }
        dropped
    }

    /// `settle_replayed` for one attachment, under its lock: deletes each
    /// active non-sticky lease of it other than `kept`, compared on the
    /// revision just read. False: etcd failed, try again at the next
    /// snapshot.
    async fn drop_second_leases(
        &self,
        net: &NetState,
        network: &str,
        key: &AttachmentKey,
        kept: Ipv4Addr,
        dropped: &mut Vec<Ipv4Addr>,
    ) -> bool {
        for (ip, _) in net.leases().held(key) {
            if ip == kept {
                continue;
            }
            let cur = match self.store.get_lease(network, ip).await {
                Ok(Some(cur)) => cur,
                Ok(None) => continue,
                Err(e) => {
                    self.outage.note_store_error(&e);
                    return false;
                }
            };
            if !self.is_mine(&cur.lease, key) || !cur.lease.state.is_active() || cur.lease.sticky {
                continue;
            }
            match self.store.delete_lease(network, ip, cur.mod_revision).await {
                Ok(true) => {
                    warn!(%network, %ip, kept = %kept, container = %key.0, ifname = %key.1, "dropped a second lease of an attachment: its create was answered too late, the pod got the offline address");
                    net.forget(ip, 0);
                    dropped.push(ip);
                }
                Ok(false) => {}
                Err(e) => {
                    self.outage.note_store_error(&e);
                    return false;
                }
            }
        }
        true
    }

    /// Tops up (or gives back) each network's standby reserve. Only while
    /// etcd answers and the journal is empty. The reserve is given back when
    /// the rack (or flat network) runs short, so every address stays usable
    /// by some node when capacity equals demand, and all of it when a drain
    /// marker concerns the network here (see engine/mirror.rs). Records that
    /// a `network update` has since excluded always go back first: netmaster
    /// leaves them to their node, whose reserve (and persisted reserve)
    /// still holds them, and waits for them.
    pub async fn maintain_standby(&self) {
        if !self.outage.etcd_ok()
            || self.outage.from_persisted()
            || self.outage.has_journal_entries()
        {
            return;
        }
        for net in self.mirror.networks() {
            let draining = self.mirror.draining(&net);
            let excluded = net.standby().excluded();
            if draining.is_none()
                && excluded.is_empty()
                && (self.outage.standby_target == 0 || !net.in_use_here())
            {
                continue;
            }
            let free = net.free_for_anyone();
            let target = if draining.is_none() && free >= 4 * self.outage.standby_target as u64 {
                self.outage.standby_target
            } else {
                0
            };
            let have = net.standby().count();
            // Excluded records count for nothing: they are never handed out.
            let usable = have - excluded.len();
            debug!(network = %net.spec.name, free, target, have, usable, "standby reserve");
            let ok = if !excluded.is_empty() || usable > target {
                if let Some(d) = &draining {
                    info!(network = %net.spec.name, records = have, "{} is being drained: giving the standby reserve back", d.describe());
                }
                if !excluded.is_empty() {
                    let ips: Vec<String> = excluded.iter().map(|(ip, _)| ip.to_string()).collect();
                    info!(network = %net.spec.name, addresses = %ips.join(","), "giving back standby records the network now excludes");
                }
                self.give_back(&net, &excluded, usable.saturating_sub(target))
                    .await
            } else {
                self.top_up(&net, have, target).await
            };
            if !ok {
                return;
            }
        }
    }

    /// Gives the excluded records and `surplus` more back; false when etcd
    /// failed (the rest stays in the reserve).
    async fn give_back(
        &self,
        net: &NetState,
        excluded: &[(Ipv4Addr, i64)],
        surplus: usize,
    ) -> bool {
        // Out of the reserve (and of the persisted reserve) before
        // the records are deleted: once deleted, another node may
        // take the address.
        let give: Vec<(Ipv4Addr, i64)> = excluded
            .iter()
            .copied()
            .chain(
                net.standby()
                    .list()
                    .into_iter()
                    .filter(|e| !excluded.contains(e))
                    .take(surplus),
            )
            .filter(|(ip, _)| net.standby().withdraw(*ip).is_some())
            .collect();
        self.save_reserve().await;
        for (n, (ip, rev)) in give.iter().enumerate() {
            match self.store.delete_lease(&net.spec.name, *ip, *rev).await {
                Ok(true) => net.forget(*ip, 0),
                // Changed meanwhile: the watch brings the new record.
                Ok(false) => {}
                Err(e) => {
                    for (ip, rev) in &give[n..] {
                        net.standby().give_back(*ip, *rev);
                    }
                    self.outage.note_store_error(&e);
                    return false;
                }
            }
        }
        true
    }

    /// Adds standby records from `have` up to `target`; false when etcd
    /// failed.
    async fn top_up(&self, net: &NetState, have: usize, target: usize) -> bool {
        for _ in have..target {
            let Some(pick) = net.picks().pick_own() else {
                break;
            };
            let lease = Lease::standby(&net.spec.name, pick.ip, &self.node, now_ms());
            match self
                .store
                .create_lease(&lease, net.create_revision, pick.guard.as_ref())
                .await
            {
                Ok(CreateLease::Created { mod_revision }) => net.observe(
                    StoredLease {
                        lease,
                        mod_revision,
                    },
                    &self.node,
                ),
                Ok(CreateLease::Taken(_)) => {}
                Ok(CreateLease::BlockChanged) => {
                    debug!(ip = %pick.ip, "reserve: block changed");
                    net.picks().unpick(pick.ip);
                    net.blocks().drop_at(pick.ip);
                    break;
                }
                Ok(CreateLease::NetworkGone) => {
                    net.picks().unpick(pick.ip);
                    break;
                }
                Err(e) => {
                    net.picks().unpick(pick.ip);
                    self.outage.note_store_error(&e);
                    return false;
                }
            }
        }
        true
    }

    /// One probe, bounded by the policy's timeout.
    async fn probe_once(&self) -> Result<(), String> {
        match tokio::time::timeout(self.outage.probe.timeout, self.store.probe()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.outage.probe.timeout)),
        }
    }

    /// The prober: idle while online; probes right away when ipamd turns
    /// suspect, then every `interval` until etcd answers.
    pub async fn run_prober(self, mut shutdown: watch::Receiver<bool>) {
        let mut rx = self.outage.mode_changes();
        loop {
            tokio::select! {
                r = rx.wait_for(|m| *m != Mode::Online) => if r.is_err() { return },
                _ = shutdown.changed() => return,
            }
            while self.outage.mode() != Mode::Online {
                let outcome = tokio::select! {
                    o = self.probe_once() => o,
                    _ = shutdown.changed() => return,
                };
                self.outage.probed(outcome);
                if self.outage.mode() == Mode::Online {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(self.outage.probe.interval) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    }
}
