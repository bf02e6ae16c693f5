//! Records that etcd itself deletes after a while: a lease record put under
//! an etcd lease (a TTL) is removed when the TTL runs out, with a normal
//! delete event every watcher sees. Used for conflict quarantine:
//! no daemon has to remember to free the address, and a daemon that dies
//! meanwhile cannot leak it.

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use rackline_model::Lease;

use crate::*;

// `LeaseOps::grant_ttl` (crates/store/src/identities.rs) grants the etcd lease.
impl LeaseOps<'_> {
    /// `replace_lease`, with the new record attached to etcd lease `ttl_id`
    /// so it disappears when the lease expires. Compares the mod revision
    /// the caller saw: the record is replaced only if nobody changed it.
    /// Returns the new revision, or None when the record had changed.
    pub async fn replace_lease_expiring(
        &self,
        lease: &Lease,
        mod_revision: i64,
        ttl_id: i64,
    ) -> Result<Option<i64>> {
        let key = self.keys.lease(&lease.network, lease.address);
        let value = serde_json::to_vec(lease).expect("Lease serialises");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(ttl_id)),
            )]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Replaces the record last seen at `mod_revision` by `lease`, deleted
    /// by etcd after `ttl_secs`. The TTL is granted first; when the compare
    /// fails (None) the unused grant is revoked (it would expire on its own
    /// anyway, with nothing attached).
    pub async fn replace_lease_for(
        &self,
        lease: &Lease,
        mod_revision: i64,
        ttl_secs: u64,
    ) -> Result<Option<i64>> {
        let id = self.grant_ttl(ttl_secs).await?;
        let r = self.replace_lease_expiring(lease, mod_revision, id).await;
        // Not on an error: the put may have landed with the answer lost, and
        // revoking would free the quarantined address at once.
        if matches!(r, Ok(None)) {
            let _ = self.etcd_leases().revoke(id).await;
        }
        r
    }
}
