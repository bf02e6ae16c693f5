//! Client calls for ACLs (through
//! [`AdminClient::call`](crate::AdminClient::call)).

use rackline_proto::admin::v1 as pb;

use super::Policies;
use crate::Result;

impl Policies<'_> {
    pub async fn set_acl(&mut self, a: pb::Acl) -> Result<pb::Acl> {
        self.client
            .call(|mut c| {
                let a = a.clone();
                async move { c.set_acl(a).await }
            })
            .await
    }

    pub async fn set_acl_default(&mut self, d: pb::AclDefault) -> Result<pb::AclDefault> {
        self.client
            .call(|mut c| {
                let d = d.clone();
                async move { c.set_acl_default(d).await }
            })
            .await
    }

    pub async fn list_acls(&mut self, network: &str) -> Result<pb::ListAclsReply> {
        let req = pb::ListAclsRequest {
            network: network.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.list_acls(req).await }
            })
            .await
    }

    pub async fn delete_acl(&mut self, network: &str, namespace: &str, name: &str) -> Result<bool> {
        let req = pb::DeleteAclRequest {
            network: network.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        };
        self.client
            .call(|mut c| {
                let req = req.clone();
                async move { c.delete_acl(req).await }
            })
            .await
            .map(|r| r.deleted)
    }
}
