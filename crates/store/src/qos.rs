//! Namespace/application QoS policies (`qos/<network>/<namespace>/<name>`).
//! Admin-rate writes: a policy is only ever set while its network exists
//! (one transaction compares the network key), fenced like every netmaster
//! write.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use rackline_model::network::ValidationError;
use rackline_model::QosPolicy;

use crate::reads::get_prefix;
use crate::{decode_json, PolicyWrites, Result, Store, StoreError};

impl Store {
    /// Policies of `network` (all networks with `None`) with their keys,
    /// sorted by key, and the revision read at (to watch from).
    pub async fn list_qos_policies(
        &self,
        network: Option<&str>,
    ) -> Result<(Vec<(String, QosPolicy)>, i64)> {
        let prefix = match network {
            Some(n) => self.keys.qos_prefix(n),
            None => self.keys.all_qos_prefix(),
        };
        let (r, rev) = self.read_at_once(vec![get_prefix(prefix)]).await?;
        let mut out = Vec::new();
        for kv in r[0].kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match decode_json::<QosPolicy>(kv) {
                Ok(p) => out.push((key, p)),
                // One bad record must not hide every other policy.
                Err(e) => tracing::warn!("ignoring an undecodable QoS policy: {e}"),
            }
        }
        Ok((out, rev))
    }
}

impl PolicyWrites<'_> {
    /// Creates or replaces a policy. `NotFound` when its network does not
    /// exist.
    pub async fn set_qos_policy(&self, p: &QosPolicy) -> Result<()> {
        p.validate().map_err(ValidationError::from)?;
        let key = self.keys.qos_policy(&p.network, &p.namespace, &p.name);
        let value = serde_json::to_vec(p).expect("QosPolicy serialises");
        let net = self.keys.network(&p.network);
        let txn = Txn::new()
            .when(self.guard(vec![Compare::create_revision(net, CompareOp::Greater, 0)]))
            .and_then([TxnOp::put(key, value, None)]);
        if self.commit(txn).await?.succeeded() {
            return Ok(());
        }
        self.check_fence().await?;
        Err(StoreError::NotFound(p.network.clone()))
    }

    /// Deletes a policy; `false` when there was none.
    pub async fn delete_qos_policy(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool> {
        let key = self.keys.qos_policy(network, namespace, name);
        let txn = Txn::new()
            .when(self.guard(Vec::new()))
            .and_then([TxnOp::delete(key, None)]);
        let resp = self.commit(txn).await?;
        if !resp.succeeded() {
            self.check_fence().await?;
        }
        let deleted = resp
            .op_responses()
            .into_iter()
            .any(|r| matches!(r, etcd_client::TxnOpResponse::Delete(d) if d.deleted() > 0));
        Ok(deleted)
    }
}
