//! The tonic adapter: `rackline.admin.v1.Admin` over [`AdminService`].
//!
//! Only translation lives here: proto → model (validating), the call, model →
//! proto, and domain errors → gRPC status codes. racklinectl maps those codes
//! to its exit codes, so the mapping is part of the contract.

use rackline_proto::admin::v1 as pb;
use rackline_proto::admin::v1::admin_server::Admin;
use tonic::{Request, Response, Status};
use tracing::warn;

use crate::admin::{AdminError, AdminService};
use crate::convert::{self, ConvertError};

pub use rackline_proto::admin::v1::admin_server::AdminServer;

pub struct GrpcAdmin {
    svc: AdminService,
}

impl GrpcAdmin {
    pub fn new(svc: AdminService) -> Self {
        Self { svc }
    }

    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }
}

/// The gRPC status for a domain error. Messages are the domain's own: they
/// end up verbatim on the operator's terminal.
pub fn status_of(e: &AdminError) -> Status {
    let msg = e.to_string();
    match e {
        AdminError::Invalid(_) => Status::invalid_argument(msg),
        AdminError::AlreadyExists(_) => Status::already_exists(msg),
        AdminError::NotFound(_) => Status::not_found(msg),
        AdminError::InUse { .. } => Status::failed_precondition(msg),
        AdminError::NotPermitted(_) => Status::failed_precondition(msg),
        AdminError::Unavailable(_) => Status::unavailable(msg),
        AdminError::Contended(_) => Status::aborted(msg),
        AdminError::Store(_) => {
            warn!(error = %msg, "admin request failed in the store");
            Status::internal(msg)
        }
    }
}

fn invalid(e: ConvertError) -> Status {
    Status::invalid_argument(e.to_string())
}

fn fail(e: AdminError) -> Status {
    status_of(&e)
}

#[tonic::async_trait]
impl Admin for GrpcAdmin {
    async fn create_network(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let req = request.into_inner();
        let net = req
            .network
            .ok_or_else(|| invalid(ConvertError::MissingNetwork))?;
        let spec = convert::network_from_proto(&net).map_err(invalid)?;
        let view = self.svc.create_network(spec).await.map_err(fail)?;
        Ok(Response::new(convert::network_to_proto(&view)))
    }

    async fn get_network(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let name = request.into_inner().name;
        let view = self.svc.get_network(&name).await.map_err(fail)?;
        Ok(Response::new(convert::network_to_proto(&view)))
    }

    async fn list_networks(
        &self,
        _request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksReply>, Status> {
        let views = self.svc.list_networks().await.map_err(fail)?;
        Ok(Response::new(pb::ListNetworksReply {
            networks: views.iter().map(convert::network_to_proto).collect(),
        }))
    }

    async fn delete_network(
        &self,
        request: Request<pb::DeleteNetworkRequest>,
    ) -> Result<Response<pb::DeleteNetworkReply>, Status> {
        let req = request.into_inner();
        let leases_deleted = self
            .svc
            .delete_network(&req.name, req.force)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::DeleteNetworkReply { leases_deleted }))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesReply>, Status> {
        let filter = convert::lease_filter_from_proto(request.get_ref()).map_err(invalid)?;
        let leases = self.svc.list_leases(&filter).await.map_err(fail)?;
        Ok(Response::new(pb::ListLeasesReply {
            leases: leases.iter().map(convert::lease_to_proto).collect(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rackline_store::StoreError;
    use tonic::Code;

    #[test]
    fn domain_errors_map_to_grpc_codes() {
        let cases = [
            (
                AdminError::Invalid(rackline_model::ValidationError::Vlan(4095)),
                Code::InvalidArgument,
                "VLAN id 4095 is outside 1-4094",
            ),
            (
                AdminError::AlreadyExists("prod".into()),
                Code::AlreadyExists,
                "network \"prod\" already exists",
            ),
            (
                AdminError::NotFound("prod".into()),
                Code::NotFound,
                "network \"prod\" not found",
            ),
            (
                AdminError::InUse {
                    name: "prod".into(),
                    leases: 3,
                },
                Code::FailedPrecondition,
                "still has 3 lease(s)",
            ),
            (
                AdminError::Unavailable("no answer".into()),
                Code::Unavailable,
                "etcd unavailable: no answer",
            ),
            (AdminError::Contended(16), Code::Aborted, "gave up after 16"),
            (
                AdminError::Store(StoreError::Corrupt {
                    key: "k".into(),
                    reason: "bad json".into(),
                }),
                Code::Internal,
                "corrupt record at k",
            ),
        ];
        for (err, code, msg) in cases {
            let s = status_of(&err);
            assert_eq!(s.code(), code, "{err}");
            assert!(
                s.message().contains(msg),
                "{:?} should contain {msg:?}",
                s.message()
            );
        }
        let s = invalid(ConvertError::MissingNetwork);
        assert_eq!(s.code(), Code::InvalidArgument);
    }
}
