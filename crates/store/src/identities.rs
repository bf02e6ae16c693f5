//! Sticky identities: `identities/<network>/<ns>/<pod>` names the address a
//! pod identity owns; the lease at that address names the identity back.
//! Every write here changes both records in ONE transaction that compares
//! the revisions the caller saw of both, so they can never drift apart
//! (Whereabouts #409/#712: pool and reservation written separately drifted).
//!
//! Reservations expire through etcd itself: both records are attached to an
//! etcd lease whose TTL is the hold time, so expiry deletes them together,
//! atomically, with no reaper that could race an ADD. Re-activating writes
//! them without a lease, which detaches them.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use rackline_model::{Identity, Lease};

use crate::*;

/// An identity record with the revision writes compare against.
#[derive(Debug, Clone)]
pub struct StoredIdentity {
    pub identity: Identity,
    pub mod_revision: i64,
}

/// An identity and the lease record at its address (None: no such lease).
#[derive(Debug, Clone)]
pub struct IdentityView {
    pub identity: StoredIdentity,
    pub lease: Option<StoredLease>,
}

/// Outcome of writing a lease together with its identity.
#[derive(Debug)]
pub enum StickyWrite {
    Done {
        mod_revision: i64,
    },
    /// One of the two records changed since the caller read it.
    Changed,
}

impl LeaseOps<'_> {
    pub async fn get_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<StoredIdentity>> {
        let key = self.keys.identity(network, namespace, name);
        let mut c = self.client();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        resp.kvs()
            .first()
            .map(|kv| {
                Ok(StoredIdentity {
                    identity: decode_json(kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// The identity and the lease it points at. Two reads (the lease key
    /// depends on the first answer); every write compares both revisions,
    /// so a change in between costs a retry, never a wrong decision.
    pub async fn identity_view(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<Option<IdentityView>> {
        let Some(identity) = self.get_identity(network, namespace, name).await? else {
            return Ok(None);
        };
        let lease = self.get_lease(network, identity.identity.address).await?;
        Ok(Some(IdentityView { identity, lease }))
    }

    /// Grants an etcd lease of `secs` (at least 1): what a reservation's
    /// records are attached to so that etcd deletes both at expiry.
    pub async fn grant_ttl(&self, secs: u64) -> Result<i64> {
        let ttl = secs.clamp(1, i64::MAX as u64) as i64;
        let mut c = self.client();
        let resp = self
            .deadline(async move { c.lease_grant(ttl, None).await })
            .await?;
        Ok(resp.id())
    }

    /// Writes `lease` and `identity` together, provided the lease key is at
    /// `lease_rev` (0 = must not exist) and the identity key at
    /// `identity_rev` (0 = must not exist). `ttl_lease` attaches both to an
    /// etcd lease (a reservation); None detaches them (a live pod's).
    /// `extra` adds compares (the network incarnation, a block guard).
    pub async fn write_sticky(
        &self,
        lease: &Lease,
        lease_rev: i64,
        identity: &Identity,
        identity_rev: i64,
        ttl_lease: Option<i64>,
        extra: Vec<Compare>,
    ) -> Result<StickyWrite> {
        let lkey = self.keys.lease(&lease.network, lease.address);
        let ikey = self
            .keys
            .identity(&identity.network, &identity.namespace, &identity.name);
        let mut when = vec![
            rev_compare(&lkey, lease_rev),
            rev_compare(&ikey, identity_rev),
        ];
        when.extend(extra);
        let opts = ttl_lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new().when(when).and_then([
            TxnOp::put(
                lkey,
                serde_json::to_vec(lease).expect("Lease serialises"),
                opts.clone(),
            ),
            TxnOp::put(
                ikey,
                serde_json::to_vec(identity).expect("Identity serialises"),
                opts,
            ),
        ]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(if resp.succeeded() {
            StickyWrite::Done {
                mod_revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            }
        } else {
            StickyWrite::Changed
        })
    }

    /// Deletes a lease and its identity together, if both are still at the
    /// revisions the caller saw. Unfenced: the node agent's release.
    pub async fn delete_sticky(
        &self,
        network: &str,
        ip: Ipv4Addr,
        lease_rev: i64,
        namespace: &str,
        name: &str,
        identity_rev: i64,
    ) -> Result<bool> {
        self.delete_sticky_guarded(
            network,
            ip,
            lease_rev,
            namespace,
            name,
            identity_rev,
            Vec::new(),
        )
        .await
    }

    /// Deletes an identity record alone (one whose address record no longer
    /// names it: left by an older version or a manual edit). Unfenced.
    pub async fn delete_identity(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
        identity_rev: i64,
    ) -> Result<bool> {
        self.delete_identity_guarded(network, namespace, name, identity_rev, Vec::new())
            .await
    }

    /// The network's create-revision compare every lease write carries.
    pub fn network_compare(&self, network: &str, create_revision: i64) -> Compare {
        Compare::create_revision(
            self.keys.network(network),
            CompareOp::Equal,
            create_revision,
        )
    }
}

impl Store {
    /// Deletes a lease and its identity together, if both are still at the
    /// revisions the caller saw and every compare in `extra` holds (the
    /// leader's fence, for netmaster's writes).
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn delete_sticky_guarded(
        &self,
        network: &str,
        ip: Ipv4Addr,
        lease_rev: i64,
        namespace: &str,
        name: &str,
        identity_rev: i64,
        extra: Vec<Compare>,
    ) -> Result<bool> {
        let lkey = self.keys.lease(network, ip);
        let ikey = self.keys.identity(network, namespace, name);
        let mut when = vec![
            Compare::mod_revision(lkey.clone(), CompareOp::Equal, lease_rev),
            Compare::mod_revision(ikey.clone(), CompareOp::Equal, identity_rev),
        ];
        when.extend(extra);
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::delete(lkey, None), TxnOp::delete(ikey, None)]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }

    /// Deletes an identity record alone if it is still at `identity_rev`
    /// and every compare in `extra` holds.
    pub(crate) async fn delete_identity_guarded(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
        identity_rev: i64,
        extra: Vec<Compare>,
    ) -> Result<bool> {
        let ikey = self.keys.identity(network, namespace, name);
        let mut when = vec![Compare::mod_revision(
            ikey.clone(),
            CompareOp::Equal,
            identity_rev,
        )];
        when.extend(extra);
        let txn = Txn::new().when(when).and_then([TxnOp::delete(ikey, None)]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }
}

impl AdminReads<'_> {
    pub async fn list_identities(&self, network: Option<&str>) -> Result<Vec<StoredIdentity>> {
        let prefix = match network {
            Some(n) => self.keys.identities_prefix(n),
            None => self.keys.all_identities_prefix(),
        };
        let mut c = self.client();
        let resp = self
            .deadline(async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await?;
        resp.kvs()
            .iter()
            .map(|kv| {
                Ok(StoredIdentity {
                    identity: decode_json(kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .collect()
    }
}

/// `rev` 0 = the key must not exist; otherwise it must be exactly at `rev`.
fn rev_compare(key: &str, rev: i64) -> Compare {
    if rev == 0 {
        Compare::create_revision(key.to_string(), CompareOp::Equal, 0)
    } else {
        Compare::mod_revision(key.to_string(), CompareOp::Equal, rev)
    }
}
