//! Namespace/application QoS policies. Writes are permitted and fenced like
//! every other; the store refuses a policy for a network that does not
//! exist.

use rackline_model::QosPolicy;
use tracing::info;

use super::{Policies, Result};

impl Policies<'_> {
    pub async fn set_qos_policy(&self, p: QosPolicy) -> Result<QosPolicy> {
        let w = self.svc.writer()?;
        w.policies().set_qos_policy(&p).await?;
        info!(network = %p.network, namespace = %p.namespace, policy = %p.name,
              bandwidth = %p.bandwidth, "QoS policy set");
        Ok(p)
    }

    /// Sorted by network, namespace, name.
    pub async fn list_qos_policies(&self, network: Option<&str>) -> Result<Vec<QosPolicy>> {
        let (list, _) = self.svc.store.list_qos_policies(network).await?;
        Ok(list.into_iter().map(|(_, p)| p).collect())
    }

    pub async fn delete_qos_policy(
        &self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool> {
        let w = self.svc.writer()?;
        let deleted = w
            .policies()
            .delete_qos_policy(network, namespace, name)
            .await?;
        info!(%network, %namespace, policy = %name, deleted, "QoS policy deleted");
        Ok(deleted)
    }
}
