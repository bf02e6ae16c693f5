//! Address conflicts found by the plugin's ARP probe.
//!
//! The plugin reports "another host answers for the address you gave this
//! attachment". For a non-sticky lease the lease record is replaced, in one
//! mod-revision-compared transaction, by a quarantine record (state
//! `conflict`: who found it, when, which MAC) put under an etcd lease with
//! the network's quarantine TTL. The address is then no longer held by the
//! attachment, so its next Allocate gets another one, and no node hands the
//! quarantined address out until etcd deletes the record.
//!
//! A sticky pod keeps its address (it is its identity) and fails to start
//! instead; its lease records the conflict (`conflict` on the active
//! record), so the IP event stream carries it too. Either way the observer
//! counts it and posts Kubernetes Events on the pod and the Node.

use std::net::Ipv4Addr;

use rackline_model::probe::DEFAULT_QUARANTINE_SECS;
use rackline_store::StoredLease;
use tracing::{info, warn};

use super::{now_ms, validate_attachment, Conflicts, IpamError};
use crate::netstate::{AttachmentKey, NetState};
use crate::store::LeaseStore;

#[derive(Debug, Clone)]
pub struct ConflictArgs {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub address: Ipv4Addr,
    /// `aa:bb:cc:dd:ee:ff` as the plugin saw it.
    pub mac: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantine {
    /// False when the attachment did not hold the address: nothing changed.
    pub quarantined: bool,
    pub quarantine_secs: u64,
}

fn validate_mac(mac: &str) -> Result<(), IpamError> {
    let ok = mac.len() == 17
        && mac.split(':').count() == 6
        && mac
            .split(':')
            .all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(IpamError::InvalidRequest(format!(
            "conflicting MAC {mac:?} is not of the form aa:bb:cc:dd:ee:ff"
        )))
    }
}

impl<S: LeaseStore> Conflicts<'_, S> {
    pub async fn report_conflict(&self, c: ConflictArgs) -> Result<Quarantine, IpamError> {
        validate_attachment(&c.container_id, &c.ifname)?;
        validate_mac(&c.mac)?;
        let net = self.allocator().network(&c.network).await?;
        let quarantine_secs = net
            .spec
            .probe
            .map_or(DEFAULT_QUARANTINE_SECS, |p| p.quarantine_secs);
        let unchanged = Quarantine {
            quarantined: false,
            quarantine_secs,
        };
        let key: AttachmentKey = (c.container_id.clone(), c.ifname.clone());
        let _g = self.allocator().lock_attachment(&c.network, &key).await;
        if !net
            .leases()
            .held(&key)
            .iter()
            .any(|(ip, _)| *ip == c.address)
        {
            info!(network = %c.network, address = %c.address, container = %c.container_id, "conflict reported for an address the attachment does not hold; nothing to do");
            return Ok(unchanged);
        }
        let Some(sl) = self.current(&net, &key, &c).await? else {
            return Ok(unchanged);
        };
        if sl.lease.sticky {
            return self.record_on_sticky(&net, &c, sl, unchanged).await;
        }
        self.quarantine(&net, &key, &c, sl, quarantine_secs).await
    }

    /// The authoritative record and its revision (the cache may lag), or
    /// None when the attachment no longer holds the address.
    async fn current(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        c: &ConflictArgs,
    ) -> Result<Option<StoredLease>, IpamError> {
        match self.store.get_lease(&c.network, c.address).await {
            Ok(Some(sl)) if self.is_mine(&sl.lease, key) => Ok(Some(sl)),
            Ok(Some(sl)) => {
                net.leases().disown(key, c.address);
                net.observe(sl, &self.node);
                Ok(None)
            }
            Ok(None) => {
                net.forget(c.address, 0);
                net.uncertain().resolve_absent(key, c.address);
                Ok(None)
            }
            Err(e) => {
                self.outage.note_store_error(&e);
                Err(e.into())
            }
        }
    }

    /// A sticky pod's address is its identity: never quarantined. The
    /// conflict is recorded on its lease (once per MAC: the runtime
    /// retries the failing ADD) and the pod's ADD fails.
    async fn record_on_sticky(
        &self,
        net: &NetState,
        c: &ConflictArgs,
        sl: StoredLease,
        unchanged: Quarantine,
    ) -> Result<Quarantine, IpamError> {
        let mac = c.mac.to_ascii_lowercase();
        warn!(network = %c.network, address = %c.address, mac = %mac, pod = %sl.lease.pod.display(), "conflict reported for a sticky pod's address; not quarantined");
        let Some(rec) =
            super::observe::with_conflict(&sl.lease, &mac, &c.container_id, &c.ifname, now_ms())
        else {
            return Ok(unchanged);
        };
        match self.store.replace_lease(&rec, sl.mod_revision).await {
            Ok(Some(rev)) => net.observe(
                StoredLease {
                    lease: rec,
                    mod_revision: rev,
                },
                &self.node,
            ),
            // Changed meanwhile: the next report records it.
            Ok(None) => return Ok(unchanged),
            Err(e) => {
                self.outage.note_store_error(&e);
                return Err(e.into());
            }
        }
        self.observed_conflict(super::ConflictReport {
            lease: sl.lease,
            mac,
            quarantined: false,
            quarantine_secs: 0,
        });
        Ok(unchanged)
    }

    /// Any other pod's address leaves the pool for `quarantine_secs` (the
    /// record expires with an etcd lease); the pod's ADD gets another.
    async fn quarantine(
        &self,
        net: &NetState,
        key: &AttachmentKey,
        c: &ConflictArgs,
        sl: StoredLease,
        quarantine_secs: u64,
    ) -> Result<Quarantine, IpamError> {
        let record =
            sl.lease
                .clone()
                .into_conflict(&c.mac.to_ascii_lowercase(), now_ms(), quarantine_secs);
        match self
            .store
            .replace_lease_expiring(&record, sl.mod_revision, quarantine_secs)
            .await
        {
            Ok(Some(rev)) => {
                self.outage.note_reachable();
                net.observe(
                    StoredLease {
                        lease: record,
                        mod_revision: rev,
                    },
                    &self.node,
                );
                net.leases().disown(key, c.address);
                warn!(
                    network = %c.network,
                    address = %c.address,
                    mac = %c.mac,
                    node = %self.node,
                    pod = %sl.lease.pod.display(),
                    container = %c.container_id,
                    ifname = %c.ifname,
                    quarantine_secs,
                    "address in use by another host: quarantined"
                );
                self.observed_conflict(super::ConflictReport {
                    lease: sl.lease,
                    mac: c.mac.to_ascii_lowercase(),
                    quarantined: true,
                    quarantine_secs,
                });
                Ok(Quarantine {
                    quarantined: true,
                    quarantine_secs,
                })
            }
            // Changed between our read and the write (a concurrent release
            // of this very attachment is excluded by the lock): let the
            // plugin's ADD fail and be retried rather than guess.
            Ok(None) => Err(IpamError::Contended(1)),
            Err(e) => {
                self.outage.note_store_error(&e);
                Err(e.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_mac;

    #[test]
    fn macs_must_be_six_hex_pairs() {
        validate_mac("0a:58:0a:0a:00:46").unwrap();
        validate_mac("AA:BB:CC:DD:EE:FF").unwrap();
        for bad in [
            "",
            "0a:58:0a:0a:00",
            "0a-58-0a-0a-00-46",
            "0a:58:0a:0a:00:4g",
            "0a:58:0a:0a:0:046",
        ] {
            assert!(validate_mac(bad).is_err(), "{bad}");
        }
    }
}
