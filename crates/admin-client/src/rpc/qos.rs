//! Client calls for QoS policies (through
//! [`AdminClient::call`](crate::AdminClient::call)).

use rackline_proto::admin::v1 as pb;

use super::Policies;
use crate::Result;

impl Policies<'_> {
    pub async fn set_qos_policy(&mut self, p: pb::QosPolicy) -> Result<pb::QosPolicy> {
        self.client
            .call(|mut c| {
                let p = p.clone();
                async move { c.set_qos_policy(p).await }
            })
            .await
    }

    pub async fn list_qos_policies(&mut self, network: &str) -> Result<Vec<pb::QosPolicy>> {
        let req = pb::ListQosPoliciesRequest {
            network: network.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_qos_policies(req).await }
            })
            .await
            .map(|r| r.policies)
    }

    pub async fn delete_qos_policy(
        &mut self,
        network: &str,
        namespace: &str,
        name: &str,
    ) -> Result<bool> {
        let req = pb::DeleteQosPolicyRequest {
            network: network.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.delete_qos_policy(req).await }
            })
            .await
            .map(|r| r.deleted)
    }
}
