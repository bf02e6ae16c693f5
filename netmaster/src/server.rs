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
    /// The IP event stream, metrics and pool index (absent: WatchEvents is
    /// unavailable and nothing is counted).
    obs: Option<crate::observability::Handles>,
}

impl GrpcAdmin {
    pub fn new(svc: AdminService) -> Self {
        Self { svc, obs: None }
    }

    /// Serves WatchEvents from `events` and counts block grants/returns.
    pub fn with_observability(mut self, obs: crate::observability::Handles) -> Self {
        self.obs = Some(obs);
        self
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
        // A setting that may not change is a refusal, like "in use".
        AdminError::Patch(rackline_model::PatchError::Immutable { .. }) => {
            Status::failed_precondition(msg)
        }
        AdminError::Patch(_) => Status::invalid_argument(msg),
        AdminError::AlreadyExists(_) => Status::already_exists(msg),
        AdminError::NotFound(_) => Status::not_found(msg),
        AdminError::InUse { .. } => Status::failed_precondition(msg),
        // With the leader's address the client retries there; without one
        // (no leader elected yet, leadership lapsed or lost mid-write)
        // "try again later", racklinectl's exit 3.
        AdminError::NotLeader { leader } => {
            rackline_admin_client::redirect::not_leader(msg, leader)
        }
        AdminError::NotPermitted(_) => Status::unavailable(msg),
        AdminError::Unavailable(_) => Status::unavailable(msg),
        AdminError::Contended(_) | AdminError::Changed { .. } => Status::aborted(msg),
        AdminError::Missing(_) => Status::not_found(msg),
        AdminError::Exists(_) => Status::already_exists(msg),
        AdminError::Refused(_) => Status::failed_precondition(msg),
        AdminError::Exhausted { .. } => Status::resource_exhausted(msg),
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
    type WatchEventsStream = crate::observability::EventStream;

    async fn watch_events(
        &self,
        request: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let obs = self
            .obs
            .as_ref()
            .ok_or_else(|| Status::unavailable("this netmaster serves no event stream"))?;
        let r = request.into_inner();
        if r.from_revision < 0 {
            return Err(Status::invalid_argument(format!(
                "from_revision {} is negative",
                r.from_revision
            )));
        }
        Ok(Response::new(obs.watch_events(r.from_revision, r.follow)))
    }

    async fn list_reservations(
        &self,
        request: Request<pb::ListReservationsRequest>,
    ) -> Result<Response<pb::ListReservationsReply>, Status> {
        let network = request.into_inner().network;
        let network = (!network.is_empty()).then_some(network);
        let v = self
            .svc
            .reservations()
            .list_reservations(network.as_deref())
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ListReservationsReply {
            reservations: v.iter().map(convert::reservation_to_proto).collect(),
        }))
    }

    async fn pin_reservation(
        &self,
        request: Request<pb::PinReservationRequest>,
    ) -> Result<Response<pb::Reservation>, Status> {
        let r = request.into_inner();
        let ip: std::net::Ipv4Addr = r.address.trim().parse().map_err(|_| {
            Status::invalid_argument(format!("{:?} is not an IPv4 address", r.address))
        })?;
        let v = self
            .svc
            .reservations()
            .pin_reservation(&r.network, &r.namespace, &r.name, ip)
            .await
            .map_err(fail)?;
        Ok(Response::new(convert::reservation_to_proto(&v)))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReleaseReservationRequest>,
    ) -> Result<Response<pb::ReleaseReservationReply>, Status> {
        let r = request.into_inner();
        let ip = self
            .svc
            .reservations()
            .release_reservation(&r.network, &r.namespace, &r.name, r.force)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ReleaseReservationReply {
            address: ip.to_string(),
        }))
    }

    async fn create_network(
        &self,
        request: Request<pb::CreateNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let req = request.into_inner();
        let net = req
            .network
            .ok_or_else(|| invalid(ConvertError::MissingNetwork))?;
        let spec = convert::network_from_proto(&net).map_err(invalid)?;
        let view = self
            .svc
            .networks()
            .create_network(spec)
            .await
            .map_err(fail)?;
        Ok(Response::new(convert::network_to_proto(&view)))
    }

    async fn get_network(
        &self,
        request: Request<pb::GetNetworkRequest>,
    ) -> Result<Response<pb::Network>, Status> {
        let name = request.into_inner().name;
        let view = self.svc.networks().get_network(&name).await.map_err(fail)?;
        Ok(Response::new(convert::network_to_proto(&view)))
    }

    async fn list_networks(
        &self,
        _request: Request<pb::ListNetworksRequest>,
    ) -> Result<Response<pb::ListNetworksReply>, Status> {
        let views = self.svc.networks().list_networks().await.map_err(fail)?;
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
            .networks()
            .delete_network(
                &req.name,
                req.force,
                crate::admin::drain_wait(req.wait_seconds),
            )
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::DeleteNetworkReply { leases_deleted }))
    }

    async fn update_network(
        &self,
        request: Request<pb::UpdateNetworkRequest>,
    ) -> Result<Response<pb::UpdateNetworkReply>, Status> {
        let req = request.into_inner();
        let patch = convert::patch_from_proto(&req).map_err(invalid)?;
        let report = self
            .svc
            .networks()
            .update_network(crate::admin::NetworkUpdate {
                name: req.name.clone(),
                patch,
                force: req.force,
                expect_revision: (req.expect_revision != 0).then_some(req.expect_revision),
                dry_run: req.dry_run,
            })
            .await
            .map_err(fail)?;
        Ok(Response::new(convert::update_report_to_proto(&report)))
    }

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<Response<pb::ListLeasesReply>, Status> {
        let filter = convert::lease_filter_from_proto(request.get_ref()).map_err(invalid)?;
        let leases = self
            .svc
            .networks()
            .list_leases(&filter)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ListLeasesReply {
            leases: leases.iter().map(convert::lease_to_proto).collect(),
        }))
    }

    async fn create_rack(
        &self,
        request: Request<pb::CreateRackRequest>,
    ) -> Result<Response<pb::Rack>, Status> {
        let req = request.into_inner();
        let rack = req
            .rack
            .ok_or_else(|| invalid(ConvertError::Required("rack")))?;
        let rack = convert::rack_from_proto(&rack).map_err(invalid)?;
        let rack = self.svc.racks().create_rack(rack).await.map_err(fail)?;
        Ok(Response::new(convert::rack_to_proto(&rack)))
    }

    async fn get_rack(
        &self,
        request: Request<pb::GetRackRequest>,
    ) -> Result<Response<pb::RackDetail>, Status> {
        let name = request.into_inner().name;
        convert::validate_rack_name(&name).map_err(invalid)?;
        let info = self.svc.racks().get_rack(&name).await.map_err(fail)?;
        Ok(Response::new(convert::rack_detail_to_proto(&info)))
    }

    async fn list_racks(
        &self,
        _request: Request<pb::ListRacksRequest>,
    ) -> Result<Response<pb::ListRacksReply>, Status> {
        let racks = self.svc.racks().list_racks().await.map_err(fail)?;
        Ok(Response::new(pb::ListRacksReply {
            racks: racks.iter().map(convert::rack_to_proto).collect(),
        }))
    }

    async fn delete_rack(
        &self,
        request: Request<pb::DeleteRackRequest>,
    ) -> Result<Response<pb::DeleteRackReply>, Status> {
        let name = request.into_inner().name;
        convert::validate_rack_name(&name).map_err(invalid)?;
        self.svc.racks().delete_rack(&name).await.map_err(fail)?;
        Ok(Response::new(pb::DeleteRackReply {}))
    }

    async fn bind_rack(
        &self,
        request: Request<pb::BindRackRequest>,
    ) -> Result<Response<pb::RackNet>, Status> {
        let req = request.into_inner();
        let b = req
            .binding
            .ok_or_else(|| invalid(ConvertError::Required("binding")))?;
        let b = convert::racknet_from_proto(&b).map_err(invalid)?;
        let b = self.svc.racks().bind_rack(b).await.map_err(fail)?;
        Ok(Response::new(convert::racknet_to_proto(&b)))
    }

    async fn unbind_rack(
        &self,
        request: Request<pb::UnbindRackRequest>,
    ) -> Result<Response<pb::UnbindRackReply>, Status> {
        let req = request.into_inner();
        let rack = convert::rack_filter(&req.rack)
            .map_err(invalid)?
            .ok_or_else(|| invalid(ConvertError::Required("rack")))?;
        let network = convert::network_filter(&req.network)
            .map_err(invalid)?
            .ok_or_else(|| invalid(ConvertError::Required("network")))?;
        self.svc
            .racks()
            .unbind_rack(&rack, &network, crate::admin::drain_wait(req.wait_seconds))
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::UnbindRackReply {}))
    }

    async fn list_rack_nets(
        &self,
        request: Request<pb::ListRackNetsRequest>,
    ) -> Result<Response<pb::ListRackNetsReply>, Status> {
        let req = request.into_inner();
        let network = convert::network_filter(&req.network).map_err(invalid)?;
        let rack = convert::rack_filter(&req.rack).map_err(invalid)?;
        let bindings = self
            .svc
            .racks()
            .list_racknets(network.as_deref(), rack.as_deref())
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ListRackNetsReply {
            bindings: bindings.iter().map(convert::racknet_to_proto).collect(),
        }))
    }

    async fn register_node(
        &self,
        request: Request<pb::RegisterNodeRequest>,
    ) -> Result<Response<pb::Node>, Status> {
        let req = request.into_inner();
        let node = req
            .node
            .ok_or_else(|| invalid(ConvertError::Required("node")))?;
        let node = convert::node_from_proto(&node).map_err(invalid)?;
        let node = self.svc.nodes().register_node(node).await.map_err(fail)?;
        Ok(Response::new(convert::node_to_proto(&node)))
    }

    async fn get_node(
        &self,
        request: Request<pb::GetNodeRequest>,
    ) -> Result<Response<pb::NodeDetail>, Status> {
        let name = request.into_inner().name;
        let name = convert::node_filter(&name)
            .map_err(invalid)?
            .ok_or_else(|| invalid(ConvertError::Required("name")))?;
        let info = self.svc.nodes().get_node(&name).await.map_err(fail)?;
        Ok(Response::new(convert::node_detail_to_proto(&info)))
    }

    async fn list_nodes(
        &self,
        request: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesReply>, Status> {
        let rack = convert::rack_filter(&request.into_inner().rack).map_err(invalid)?;
        let nodes = self
            .svc
            .nodes()
            .list_nodes(rack.as_deref())
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ListNodesReply {
            nodes: nodes.iter().map(convert::node_detail_to_proto).collect(),
        }))
    }

    async fn drain_node(
        &self,
        request: Request<pb::DrainNodeRequest>,
    ) -> Result<Response<pb::NodeDetail>, Status> {
        let req = request.into_inner();
        let name = convert::node_filter(&req.name)
            .map_err(invalid)?
            .ok_or_else(|| invalid(ConvertError::Required("name")))?;
        let info = self
            .svc
            .nodes()
            .drain_node(&name, req.undo)
            .await
            .map_err(fail)?;
        Ok(Response::new(convert::node_detail_to_proto(&info)))
    }

    async fn delete_node(
        &self,
        request: Request<pb::DeleteNodeRequest>,
    ) -> Result<Response<pb::DeleteNodeReply>, Status> {
        let req = request.into_inner();
        let name = convert::node_filter(&req.name)
            .map_err(invalid)?
            .ok_or_else(|| invalid(ConvertError::Required("name")))?;
        let r = self
            .svc
            .nodes()
            .delete_node(&name, req.force)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::DeleteNodeReply {
            leases_freed: r.leases_freed,
            reserved: r.reserved,
            standby_freed: r.standby_freed,
            blocks_returned: r.blocks_returned,
        }))
    }

    async fn acquire_block(
        &self,
        request: Request<pb::AcquireBlockRequest>,
    ) -> Result<Response<pb::Block>, Status> {
        let req = convert::acquire_from_proto(request.get_ref()).map_err(invalid)?;
        let (b, created) = self
            .svc
            .blocks()
            .acquire_block(&req.network, &req.node, req.known.as_deref())
            .await
            .map_err(fail)?;
        if let (Some(o), true) = (&self.obs, created) {
            o.metrics.block_granted(&b.network, &b.rack);
        }
        Ok(Response::new(convert::block_to_proto(&b, 0)))
    }

    async fn release_block(
        &self,
        request: Request<pb::ReleaseBlockRequest>,
    ) -> Result<Response<pb::ReleaseBlockReply>, Status> {
        let (network, first, node) =
            convert::release_from_proto(request.get_ref()).map_err(invalid)?;
        let released = self
            .svc
            .blocks()
            .release_block(&network, first, &node)
            .await
            .map_err(fail)?;
        if let (true, Some(o)) = (released, &self.obs) {
            let rack = o.index.rack_of(&network, first, &node);
            o.metrics.block_returned(&network, &rack);
        }
        Ok(Response::new(pb::ReleaseBlockReply { released }))
    }

    async fn list_blocks(
        &self,
        request: Request<pb::ListBlocksRequest>,
    ) -> Result<Response<pb::ListBlocksReply>, Status> {
        let filter = convert::block_filter_from_proto(request.get_ref()).map_err(invalid)?;
        let blocks = self.svc.blocks().list_blocks(&filter).await.map_err(fail)?;
        Ok(Response::new(pb::ListBlocksReply {
            blocks: blocks.iter().map(convert::block_usage_to_proto).collect(),
        }))
    }

    async fn utilization(
        &self,
        request: Request<pb::UtilizationRequest>,
    ) -> Result<Response<pb::UtilizationReply>, Status> {
        let network = convert::network_filter(&request.into_inner().network).map_err(invalid)?;
        let rows = self
            .svc
            .blocks()
            .utilization(network.as_deref())
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::UtilizationReply {
            rows: rows.iter().map(convert::utilization_to_proto).collect(),
        }))
    }

    async fn leader(
        &self,
        _request: Request<pb::LeaderRequest>,
    ) -> Result<Response<pb::LeaderReply>, Status> {
        let v = self.svc.leader().map_err(fail)?;
        Ok(Response::new(pb::LeaderReply {
            id: v.id,
            advertise: v.advertise,
            is_self: v.is_self,
        }))
    }

    async fn set_qos_policy(
        &self,
        request: Request<pb::QosPolicy>,
    ) -> Result<Response<pb::QosPolicy>, Status> {
        let p = convert::policy_from_proto(request.get_ref()).map_err(invalid)?;
        let p = self.svc.policies().set_qos_policy(p).await.map_err(fail)?;
        Ok(Response::new(convert::policy_to_proto(&p)))
    }

    async fn list_qos_policies(
        &self,
        request: Request<pb::ListQosPoliciesRequest>,
    ) -> Result<Response<pb::ListQosPoliciesReply>, Status> {
        let network = request.into_inner().network;
        let network = Some(network.trim()).filter(|n| !n.is_empty());
        if let Some(n) = network {
            // Also keeps the etcd prefix scan from widening ("a/").
            rackline_model::network::validate_name(n)
                .map_err(|e| invalid(ConvertError::Invalid(e)))?;
        }
        let list = self
            .svc
            .policies()
            .list_qos_policies(network)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::ListQosPoliciesReply {
            policies: list.iter().map(convert::policy_to_proto).collect(),
        }))
    }

    async fn delete_qos_policy(
        &self,
        request: Request<pb::DeleteQosPolicyRequest>,
    ) -> Result<Response<pb::DeleteQosPolicyReply>, Status> {
        let r = request.into_inner();
        for v in [&r.network, &r.namespace, &r.name] {
            rackline_model::network::validate_name(v)
                .map_err(|e| invalid(ConvertError::Invalid(e)))?;
        }
        let deleted = self
            .svc
            .policies()
            .delete_qos_policy(&r.network, &r.namespace, &r.name)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::DeleteQosPolicyReply { deleted }))
    }

    async fn set_acl(&self, request: Request<pb::Acl>) -> Result<Response<pb::Acl>, Status> {
        let a = convert::acl_from_proto(request.get_ref()).map_err(invalid)?;
        let a = self.svc.policies().set_acl(a).await.map_err(fail)?;
        Ok(Response::new(convert::acl_to_proto(&a)))
    }

    async fn set_acl_default(
        &self,
        request: Request<pb::AclDefault>,
    ) -> Result<Response<pb::AclDefault>, Status> {
        let (network, d) = convert::acl_default_from_proto(request.get_ref()).map_err(invalid)?;
        let d = self
            .svc
            .policies()
            .set_acl_default(&network, d)
            .await
            .map_err(fail)?;
        Ok(Response::new(convert::acl_default_to_proto(&network, &d)))
    }

    async fn list_acls(
        &self,
        request: Request<pb::ListAclsRequest>,
    ) -> Result<Response<pb::ListAclsReply>, Status> {
        let network = request.into_inner().network;
        let network = Some(network.trim()).filter(|n| !n.is_empty());
        if let Some(n) = network {
            rackline_model::network::validate_name(n)
                .map_err(|e| invalid(ConvertError::Invalid(e)))?;
        }
        let (acls, defaults) = self.svc.policies().list_acls(network).await.map_err(fail)?;
        Ok(Response::new(pb::ListAclsReply {
            acls: acls.iter().map(convert::acl_to_proto).collect(),
            defaults: defaults
                .iter()
                .map(|(n, d)| convert::acl_default_to_proto(n, d))
                .collect(),
        }))
    }

    async fn delete_acl(
        &self,
        request: Request<pb::DeleteAclRequest>,
    ) -> Result<Response<pb::DeleteAclReply>, Status> {
        let r = request.into_inner();
        for v in [&r.network, &r.namespace, &r.name] {
            rackline_model::network::validate_name(v)
                .map_err(|e| invalid(ConvertError::Invalid(e)))?;
        }
        let deleted = self
            .svc
            .policies()
            .delete_acl(&r.network, &r.namespace, &r.name)
            .await
            .map_err(fail)?;
        Ok(Response::new(pb::DeleteAclReply { deleted }))
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
                    detail: "3 pod lease(s)".into(),
                },
                Code::FailedPrecondition,
                "still has 3 pod lease(s)",
            ),
            (
                AdminError::Unavailable("no answer".into()),
                Code::Unavailable,
                "etcd unavailable: no answer",
            ),
            (AdminError::Contended(16), Code::Aborted, "gave up after 16"),
            (
                AdminError::Missing(rackline_store::Object::Rack("r9".into())),
                Code::NotFound,
                "rack \"r9\" not found",
            ),
            (
                AdminError::Exists(rackline_store::Object::Rack("r1".into())),
                Code::AlreadyExists,
                "rack \"r1\" already exists",
            ),
            (
                AdminError::Refused("rack \"r1\" is in use".into()),
                Code::FailedPrecondition,
                "is in use",
            ),
            (
                AdminError::Exhausted {
                    network: "prod".into(),
                    rack: "r1".into(),
                },
                Code::ResourceExhausted,
                "rack \"r1\" has no free block left on network \"prod\"",
            ),
            (
                AdminError::NotLeader {
                    leader: "10.10.0.3:7650".into(),
                },
                Code::FailedPrecondition,
                "not the leader; leader is 10.10.0.3:7650",
            ),
            (
                AdminError::NotPermitted("no leader elected yet".into()),
                Code::Unavailable,
                "no leader elected yet",
            ),
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
