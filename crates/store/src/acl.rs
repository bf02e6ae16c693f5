//! Rackline ACLs (`acl/<network>/<namespace>/<name>`) and each network's
//! default (`acl/<network>/.default`). Admin-rate writes, only while the
//! network exists (one transaction compares the network key), fenced like
//! every netmaster write. ipamd watches the whole `acl/` prefix.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rackline_model::acl::{Acl, AclDefault, DEFAULT_KEY};
use rackline_model::network::ValidationError;

use crate::reads::get_prefix;
use crate::{PolicyWrites, Result, Store, StoreError};

/// One record under `acl/`, decoded by the shape of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AclRecord {
    Acl(Acl),
    Default {
        network: String,
        default: AclDefault,
    },
}

impl Store {
    /// Decodes one `acl/` key and value; `None` for a key of another shape.
    pub fn decode_acl(
        &self,
        key: &str,
        value: &[u8],
    ) -> Option<std::result::Result<AclRecord, String>> {
        let rest = key.strip_prefix(&self.keys.all_acl_prefix())?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [network, d] if *d == DEFAULT_KEY => Some(
                serde_json::from_slice(value)
                    .map(|default| AclRecord::Default {
                        network: network.to_string(),
                        default,
                    })
                    .map_err(|e| e.to_string()),
            ),
            [_, _, _] => Some(
                serde_json::from_slice(value)
                    .map(AclRecord::Acl)
                    .map_err(|e| e.to_string()),
            ),
            _ => None,
        }
    }

    /// ACLs and defaults of `network` (all networks with `None`) with their
    /// keys, sorted by key, and the revision read at (to watch from).
    pub async fn list_acls(
        &self,
        network: Option<&str>,
    ) -> Result<(Vec<(String, AclRecord)>, i64)> {
        let prefix = match network {
            Some(n) => self.keys.acl_prefix(n),
            None => self.keys.all_acl_prefix(),
        };
        let (r, rev) = self.read_at_once(vec![get_prefix(prefix)]).await?;
        let mut out = Vec::new();
        for kv in r[0].kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match self.decode_acl(&key, kv.value()) {
                Some(Ok(rec)) => out.push((key, rec)),
                // One bad record must not hide every other ACL.
                Some(Err(e)) => tracing::warn!(%key, "ignoring an undecodable ACL record: {e}"),
                None => tracing::warn!(%key, "ignoring a key of unknown shape under acl/"),
            }
        }
        Ok((out, rev))
    }
}

impl PolicyWrites<'_> {
    /// Creates or replaces an ACL. `NotFound` when its network does not
    /// exist; invalid input is refused before anything is written.
    pub async fn set_acl(&self, a: &Acl) -> Result<()> {
        a.validate().map_err(ValidationError::from)?;
        let key = self.keys.acl(&a.network, &a.namespace, &a.name);
        let value = serde_json::to_vec(a).expect("Acl serialises");
        self.put_if_network(&a.network, key, value).await
    }

    /// Sets a network's default verdicts.
    pub async fn set_acl_default(&self, network: &str, d: &AclDefault) -> Result<()> {
        let key = self.keys.acl_default(network);
        let value = serde_json::to_vec(d).expect("AclDefault serialises");
        self.put_if_network(network, key, value).await
    }

    async fn put_if_network(&self, network: &str, key: String, value: Vec<u8>) -> Result<()> {
        let net = self.keys.network(network);
        let txn = Txn::new()
            .when(self.guard(vec![Compare::create_revision(net, CompareOp::Greater, 0)]))
            .and_then([TxnOp::put(key, value, None)]);
        if self.commit(txn).await?.succeeded() {
            return Ok(());
        }
        self.check_fence().await?;
        Err(StoreError::NotFound(network.to_string()))
    }

    /// Deletes an ACL; `false` when there was none.
    pub async fn delete_acl(&self, network: &str, namespace: &str, name: &str) -> Result<bool> {
        let key = self.keys.acl(network, namespace, name);
        let txn = Txn::new()
            .when(self.guard(Vec::new()))
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.commit(txn).await?;
        if !resp.succeeded() {
            self.check_fence().await?;
        }
        Ok(resp
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0)))
    }
}
