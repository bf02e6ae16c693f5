//! Leases: one key per address; create-if-absent, revision-compared replace and delete.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use rackline_model::Lease;

use crate::*;

impl LeaseOps<'_> {
    pub async fn get_lease(&self, network: &str, ip: Ipv4Addr) -> Result<Option<StoredLease>> {
        let key = self.keys.lease(network, ip);
        let mut c = self.client();
        let resp = self.deadline(async move { c.get(key, None).await }).await?;
        resp.kvs()
            .first()
            .map(|kv| {
                Ok(StoredLease {
                    lease: decode_lease(kv)?,
                    mod_revision: kv.mod_revision(),
                })
            })
            .transpose()
    }

    /// The one round trip of an allocation: create the lease key if nobody
    /// owns the address and the network is still the one we know.
    pub async fn create_lease(&self, lease: &Lease, network_revision: i64) -> Result<CreateLease> {
        self.create_lease_guarded(lease, network_revision, None)
            .await
    }

    /// `create_lease`, also guarded by the block the address lies in. With
    /// group commit on ([`Store::with_group_commit`]) the write may share an
    /// etcd transaction with other concurrent creations, each still under
    /// its own guards (see group.rs).
    pub async fn create_lease_guarded(
        &self,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> Result<CreateLease> {
        let create = LeaseCreate::new(self, lease, network_revision, block);
        match &self.group {
            Some(g) => g.submit(create).await,
            None => self.create_one(&create).await,
        }
    }

    /// One creation in a transaction of its own.
    pub(crate) async fn create_one(&self, create: &LeaseCreate) -> Result<CreateLease> {
        let txn = create.txn();
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let ops = if resp.succeeded() {
            Vec::new()
        } else {
            resp.op_responses()
        };
        Ok(create.outcome(resp.succeeded(), &ops, rev))
    }

    /// Overwrites exactly the lease record the caller saw (by mod revision):
    /// a node's standby record becoming a pod's lease, or the reverse.
    /// Returns the new revision, or None when the record had changed.
    pub async fn replace_lease(&self, lease: &Lease, mod_revision: i64) -> Result<Option<i64>> {
        let key = self.keys.lease(&lease.network, lease.address);
        let value = serde_json::to_vec(lease).expect("Lease serialises");
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(key, value, None)]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or(0)))
    }

    /// Deletes exactly the lease record the caller saw (by mod revision), so
    /// a stale release can never free an address someone re-acquired.
    /// Returns false when the record was already gone or had changed.
    pub async fn delete_lease(
        &self,
        network: &str,
        ip: Ipv4Addr,
        mod_revision: i64,
    ) -> Result<bool> {
        let key = self.keys.lease(network, ip);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(key, None)]);
        let mut c = self.client();
        let resp = self.deadline(async move { c.txn(txn).await }).await?;
        Ok(resp.succeeded())
    }
}

impl Store {
    /// All leases of one network (or of every network), with the revision the
    /// read was taken at, for a watch to continue from.
    pub async fn list_leases(&self, network: Option<&str>) -> Result<(Vec<StoredLease>, i64)> {
        let prefix = match network {
            Some(n) => self.keys.leases_prefix(n),
            None => self.keys.all_leases_prefix(),
        };
        let mut leases = Vec::new();
        let rev = self
            .for_each_page(&prefix, 0, |kvs| {
                for kv in kvs {
                    leases.push(StoredLease {
                        lease: decode_lease(kv)?,
                        mod_revision: kv.mod_revision(),
                    });
                }
                Ok(())
            })
            .await?;
        Ok((leases, rev))
    }
}

impl AdminReads<'_> {
    /// Number of leases of one network, without fetching the records.
    pub async fn count_leases(&self, network: &str) -> Result<u64> {
        let prefix = self.keys.leases_prefix(network);
        let mut c = self.client();
        let resp = self
            .deadline(async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await
            })
            .await?;
        Ok(resp.count().max(0) as u64)
    }
}

/// One guarded lease creation: the key must not exist, the network must be
/// the incarnation the caller saw and, inside a block, the block must be at
/// the revision the caller saw. The same guards whether it travels alone or
/// nested in a group commit.
#[derive(Debug, Clone)]
pub(crate) struct LeaseCreate {
    pub(crate) key: String,
    value: Vec<u8>,
    net_key: String,
    network_revision: i64,
    block: Option<BlockGuard>,
}

impl LeaseCreate {
    fn new(
        store: &Store,
        lease: &Lease,
        network_revision: i64,
        block: Option<&BlockGuard>,
    ) -> Self {
        Self {
            key: store.keys.lease(&lease.network, lease.address),
            value: serde_json::to_vec(lease).expect("Lease serialises"),
            net_key: store.keys.network(&lease.network),
            network_revision,
            block: block.cloned(),
        }
    }

    pub(crate) fn txn(&self) -> Txn {
        let mut when = vec![
            Compare::create_revision(self.key.clone(), CompareOp::Equal, 0),
            Compare::create_revision(
                self.net_key.clone(),
                CompareOp::Equal,
                self.network_revision,
            ),
        ];
        let mut otherwise = vec![
            TxnOp::get(self.key.clone(), None),
            TxnOp::get(self.net_key.clone(), None),
        ];
        if let Some(b) = &self.block {
            when.push(b.compare());
            otherwise.push(TxnOp::get(b.key.clone(), None));
        }
        Txn::new()
            .when(when)
            .and_then([TxnOp::put(self.key.clone(), self.value.clone(), None)])
            .or_else(otherwise)
    }

    /// What the transaction's answer means; `revision` is the revision the
    /// (outermost) transaction was applied at.
    pub(crate) fn outcome(
        &self,
        succeeded: bool,
        ops: &[TxnOpResponse],
        revision: i64,
    ) -> CreateLease {
        if succeeded {
            return CreateLease::Created {
                mod_revision: revision,
            };
        }
        let first_kv = |i: usize| match ops.get(i) {
            Some(TxnOpResponse::Get(g)) => g.kvs().first().cloned(),
            _ => None,
        };
        if let Some(owner) = first_kv(0) {
            return CreateLease::Taken(decode_lease(&owner).ok().map(Box::new));
        }
        if first_kv(1).is_none_or(|kv| kv.create_revision() != self.network_revision) {
            return CreateLease::NetworkGone;
        }
        if let Some(b) = &self.block {
            if first_kv(2).is_none_or(|kv| kv.mod_revision() != b.mod_revision) {
                return CreateLease::BlockChanged;
            }
        }
        CreateLease::Taken(None)
    }
}
