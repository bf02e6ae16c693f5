//! etcd leases: grant, revoke, keep alive. Shared by ipamd (its node
//! liveness record, see lifecycle.rs) and netmaster (the lease its leader
//! key is attached to, see leader_key.rs).

use etcd_client::{LeaseKeepAliveStream, LeaseKeeper};

use crate::{EtcdLeases, Result, StoreError};

/// A granted etcd lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantedLease {
    pub id: i64,
    /// What etcd granted (it may raise a TTL below its minimum).
    pub ttl_secs: i64,
}

/// One open keep-alive stream for one etcd lease.
pub struct LeaseKeepAlive {
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
    timeout: std::time::Duration,
}

impl LeaseKeepAlive {
    /// Sends one keep-alive and waits (bounded by the store's deadline) for
    /// its answer: the lease's remaining TTL in seconds, or `None` when etcd
    /// says the lease no longer exists (expired or revoked).
    pub async fn refresh(&mut self) -> Result<Option<i64>> {
        let exchange = async {
            self.keeper.keep_alive().await?;
            self.stream.message().await
        };
        let resp = match tokio::time::timeout(self.timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no keep-alive answer within {:?}",
                    self.timeout
                )))
            }
        };
        match resp {
            None => Err(StoreError::Unavailable("keep-alive stream ended".into())),
            Some(r) if r.ttl() <= 0 => Ok(None),
            Some(r) => Ok(Some(r.ttl())),
        }
    }
}

impl EtcdLeases<'_> {
    /// Grants a fresh etcd lease of `ttl_secs`.
    pub async fn grant(&self, ttl_secs: i64) -> Result<GrantedLease> {
        let mut c = self.client();
        let resp = self
            .deadline(async move { c.lease_grant(ttl_secs, None).await })
            .await?;
        Ok(GrantedLease {
            id: resp.id(),
            ttl_secs: resp.ttl(),
        })
    }

    /// Revokes a lease, deleting every key attached to it at once. A lease
    /// that is already gone is not an error.
    pub async fn revoke(&self, id: i64) -> Result<()> {
        let mut c = self.client();
        match self.deadline(async move { c.lease_revoke(id).await }).await {
            Ok(_) => Ok(()),
            Err(StoreError::Etcd(etcd_client::Error::GRpcStatus(s)))
                if s.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Opens a keep-alive stream for lease `id`. Opening it already sends
    /// (and waits for) one keep-alive; `None` when the lease no longer
    /// exists.
    pub async fn keep_alive(&self, id: i64) -> Result<Option<LeaseKeepAlive>> {
        let mut c = self.client();
        let opened = self
            .deadline(async move { c.lease_keep_alive(id).await })
            .await;
        let (keeper, stream) = match opened {
            Ok(ks) => ks,
            // etcd-client reports a lease that no longer exists this way.
            Err(StoreError::Etcd(etcd_client::Error::LeaseKeepAliveError(m)))
                if m.contains("not found") =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        Ok(Some(LeaseKeepAlive {
            keeper,
            stream,
            timeout: self.timeout,
        }))
    }
}
