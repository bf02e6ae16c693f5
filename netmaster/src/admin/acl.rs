//! Rackline ACLs and network defaults. Writes are permitted and fenced like
//! every other; the store refuses an ACL for a network that does not exist
//! and validates before writing anything.

use rackline_model::acl::{Acl, AclDefault};
use rackline_store::AclRecord;
use tracing::info;

use super::{Policies, Result};

impl Policies<'_> {
    pub async fn set_acl(&self, a: Acl) -> Result<Acl> {
        let w = self.svc.writer()?;
        w.policies().set_acl(&a).await?;
        info!(network = %a.network, namespace = %a.namespace, acl = %a.name,
              ingress = a.ingress.len(), egress = a.egress.len(), "ACL set");
        Ok(a)
    }

    pub async fn set_acl_default(&self, network: &str, d: AclDefault) -> Result<AclDefault> {
        let w = self.svc.writer()?;
        w.policies().set_acl_default(network, &d).await?;
        info!(%network, ingress = ?d.ingress, egress = ?d.egress, "ACL default set");
        Ok(d)
    }

    /// ACLs sorted by network, namespace, name; and the defaults set.
    pub async fn list_acls(
        &self,
        network: Option<&str>,
    ) -> Result<(Vec<Acl>, Vec<(String, AclDefault)>)> {
        let (list, _) = self.svc.store.list_acls(network).await?;
        let (mut acls, mut defaults) = (Vec::new(), Vec::new());
        for (_, r) in list {
            match r {
                AclRecord::Acl(a) => acls.push(a),
                AclRecord::Default { network, default } => defaults.push((network, default)),
            }
        }
        Ok((acls, defaults))
    }

    pub async fn delete_acl(&self, network: &str, namespace: &str, name: &str) -> Result<bool> {
        let w = self.svc.writer()?;
        let deleted = w.policies().delete_acl(network, namespace, name).await?;
        info!(%network, %namespace, acl = %name, deleted, "ACL deleted");
        Ok(deleted)
    }
}
