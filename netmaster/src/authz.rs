//! Authorisation and audit of the admin API: ONE table maps every RPC of
//! `rackline.admin.v1.Admin` to the access it needs, and [`Authorized`]
//! wraps the service so that no RPC reaches it unchecked.
//!
//! The table is also the wrapper's implementation of the `Admin` trait: an
//! RPC added to admin.proto without a row here does not compile (the trait
//! impl misses a method), and a row needs an access class. Every mutating
//! call (and every refused one) is logged as one line on the tracing target
//! `audit`: identity, role, method, request summary, outcome.

use std::sync::Arc;

use rackline_proto::admin::v1 as pb;
use rackline_proto::admin::v1::admin_server::Admin;
use rackline_security::listener::PeerInfo;
use tonic::{Request, Response, Status};

use crate::auth::{Authenticator, Caller, Role};

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reads: read-only, operator, admin.
    Read,
    /// Reservations, pins, QoS policies, ACLs, node drain and delete: operator,
    /// admin.
    Operate,
    /// Networks, racks, bindings, forced deletes: admin.
    Administer,
    /// What ipamd does for its node (registration, blocks): node, admin.
    NodeAgent,
}

impl Access {
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Read => matches!(role, Role::ReadOnly | Role::Operator | Role::Admin),
            Access::Operate => matches!(role, Role::Operator | Role::Admin),
            Access::Administer => role == Role::Admin,
            Access::NodeAgent => matches!(role, Role::Node | Role::Admin),
        }
    }

    /// Everything but reads changes state and is audited.
    pub fn mutates(self) -> bool {
        self != Access::Read
    }

    fn needs(self) -> &'static str {
        match self {
            Access::Read => "read-only, operator or admin",
            Access::Operate => "operator or admin",
            Access::Administer => "admin",
            Access::NodeAgent => "node or admin",
        }
    }
}

/// The admin service behind authentication, authorisation and audit.
pub struct Authorized<T> {
    inner: T,
    auth: Arc<Authenticator>,
}

impl<T> Authorized<T> {
    pub fn new(inner: T, auth: Arc<Authenticator>) -> Self {
        Self { inner, auth }
    }

    fn check<R>(&self, rpc: Rpc, access: Access, req: &Request<R>) -> Result<Caller, Status>
    where
        R: std::fmt::Debug,
    {
        let peer = req.extensions().get::<PeerInfo>();
        let caller = match self.auth.authenticate(req.metadata(), peer) {
            Ok(c) => c,
            Err(status) => {
                audit_refused(rpc, None, req, peer, &status);
                return Err(status);
            }
        };
        if !access.allows(caller.role) {
            let status = Status::permission_denied(format!(
                "{} (role {}) may not call {}: it needs {}",
                caller.name,
                caller.role,
                rpc.name(),
                access.needs()
            ));
            audit_refused(rpc, Some(&caller), req, peer, &status);
            return Err(status);
        }
        Ok(caller)
    }
}

/// A request summary for the audit line: the message's fields (no admin
/// request carries a secret), cut to a bounded length.
fn summary<R: std::fmt::Debug>(req: &R) -> String {
    let mut s = format!("{req:?}");
    if s.len() > 600 {
        let mut cut = 600;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

fn remote(peer: Option<&PeerInfo>) -> String {
    peer.and_then(|p| p.remote)
        .map(|a| a.to_string())
        .unwrap_or_else(|| "-".into())
}

fn audit_refused<R: std::fmt::Debug>(
    rpc: Rpc,
    caller: Option<&Caller>,
    req: &Request<R>,
    peer: Option<&PeerInfo>,
    status: &Status,
) {
    tracing::warn!(
        target: "audit",
        identity = caller.map(|c| c.name.as_str()).unwrap_or("-"),
        role = caller.map(|c| c.role.as_str()).unwrap_or("-"),
        via = caller.map(|c| c.via).unwrap_or("-"),
        remote = %remote(peer),
        method = rpc.name(),
        request = %summary(req.get_ref()),
        outcome = "refused",
        code = ?status.code(),
        reason = status.message(),
        "admin call refused"
    );
}

fn audit_done<T>(
    rpc: Rpc,
    caller: &Caller,
    remote: &str,
    request: &str,
    result: &Result<Response<T>, Status>,
) {
    let (outcome, code, reason) = match result {
        Ok(_) => ("ok", tonic::Code::Ok, ""),
        Err(s) => ("error", s.code(), s.message()),
    };
    tracing::info!(
        target: "audit",
        identity = caller.name.as_str(),
        role = caller.role.as_str(),
        via = caller.via,
        remote,
        method = rpc.name(),
        request,
        outcome,
        code = ?code,
        reason,
        "admin call"
    );
}

/// Generates [`Rpc`] and the `Admin` impl of [`Authorized`] from the table.
/// A row: `method(Request) -> Reply = "ProtoName", Access;` — optionally
/// `[force]` after the access: a request with `force` set needs admin.
/// After `[streams]`, server-streaming RPCs: `method(Request) -> StreamType =
/// "ProtoName", Read;` (reads only: nothing to audit).
macro_rules! admin_rpcs {
    ($( $method:ident ( $req:ty ) -> $rep:ty = $name:literal , $access:ident $([$force:ident])? ; )*
     [streams] $( $smethod:ident ( $sreq:ty ) -> $stype:ident = $sname:literal , Read ; )*) => {
        /// Every RPC of `rackline.admin.v1.Admin`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[allow(non_camel_case_types)]
        pub enum Rpc { $($method,)* $($smethod,)* }

        impl Rpc {
            pub const ALL: &'static [Rpc] = &[$(Rpc::$method,)* $(Rpc::$smethod,)*];

            /// The gRPC method name, as in admin.proto.
            pub fn name(self) -> &'static str {
                match self { $(Rpc::$method => $name,)* $(Rpc::$smethod => $sname,)* }
            }

            /// The access the RPC needs (a forced request needs admin).
            pub fn access(self) -> Access {
                match self { $(Rpc::$method => Access::$access,)* $(Rpc::$smethod => Access::Read,)* }
            }

            /// Whether a `force` flag raises it to admin.
            pub fn force_needs_admin(self) -> bool {
                match self {
                    $(Rpc::$method => false $(|| { let _ = stringify!($force); true })?,)*
                    $(Rpc::$smethod => false,)*
                }
            }
        }

        #[tonic::async_trait]
        impl<T: Admin> Admin for Authorized<T> {
            $(
            type $stype = T::$stype;

            async fn $smethod(
                &self,
                request: Request<$sreq>,
            ) -> Result<Response<Self::$stype>, Status> {
                self.check(Rpc::$smethod, Access::Read, &request)?;
                self.inner.$smethod(request).await
            }
            )*
            $(
            async fn $method(
                &self,
                request: Request<$req>,
            ) -> Result<Response<$rep>, Status> {
                #[allow(unused_mut)]
                let mut access = Access::$access;
                $( if request.get_ref().$force { access = Access::Administer; } )?
                let caller = self.check(Rpc::$method, access, &request)?;
                if !access.mutates() {
                    return self.inner.$method(request).await;
                }
                let remote = remote(request.extensions().get::<PeerInfo>());
                let req_summary = summary(request.get_ref());
                let result = self.inner.$method(request).await;
                audit_done(Rpc::$method, &caller, &remote, &req_summary, &result);
                result
            }
            )*
        }
    };
}

admin_rpcs! {
    create_network(pb::CreateNetworkRequest) -> pb::Network = "CreateNetwork", Administer;
    get_network(pb::GetNetworkRequest) -> pb::Network = "GetNetwork", Read;
    list_networks(pb::ListNetworksRequest) -> pb::ListNetworksReply = "ListNetworks", Read;
    delete_network(pb::DeleteNetworkRequest) -> pb::DeleteNetworkReply = "DeleteNetwork", Administer;
    // Operators tune networks in place; forcing past leased addresses is an
    // admin's call, like a forced delete.
    update_network(pb::UpdateNetworkRequest) -> pb::UpdateNetworkReply = "UpdateNetwork", Operate [force];
    list_leases(pb::ListLeasesRequest) -> pb::ListLeasesReply = "ListLeases", Read;
    create_rack(pb::CreateRackRequest) -> pb::Rack = "CreateRack", Administer;
    get_rack(pb::GetRackRequest) -> pb::RackDetail = "GetRack", Read;
    list_racks(pb::ListRacksRequest) -> pb::ListRacksReply = "ListRacks", Read;
    delete_rack(pb::DeleteRackRequest) -> pb::DeleteRackReply = "DeleteRack", Administer;
    bind_rack(pb::BindRackRequest) -> pb::RackNet = "BindRack", Administer;
    unbind_rack(pb::UnbindRackRequest) -> pb::UnbindRackReply = "UnbindRack", Administer;
    list_rack_nets(pb::ListRackNetsRequest) -> pb::ListRackNetsReply = "ListRackNets", Read;
    register_node(pb::RegisterNodeRequest) -> pb::Node = "RegisterNode", NodeAgent;
    get_node(pb::GetNodeRequest) -> pb::NodeDetail = "GetNode", Read;
    list_nodes(pb::ListNodesRequest) -> pb::ListNodesReply = "ListNodes", Read;
    drain_node(pb::DrainNodeRequest) -> pb::NodeDetail = "DrainNode", Operate;
    delete_node(pb::DeleteNodeRequest) -> pb::DeleteNodeReply = "DeleteNode", Operate [force];
    acquire_block(pb::AcquireBlockRequest) -> pb::Block = "AcquireBlock", NodeAgent;
    release_block(pb::ReleaseBlockRequest) -> pb::ReleaseBlockReply = "ReleaseBlock", NodeAgent;
    list_blocks(pb::ListBlocksRequest) -> pb::ListBlocksReply = "ListBlocks", Read;
    utilization(pb::UtilizationRequest) -> pb::UtilizationReply = "Utilization", Read;
    leader(pb::LeaderRequest) -> pb::LeaderReply = "Leader", Read;
    list_reservations(pb::ListReservationsRequest) -> pb::ListReservationsReply = "ListReservations", Read;
    pin_reservation(pb::PinReservationRequest) -> pb::Reservation = "PinReservation", Operate;
    release_reservation(pb::ReleaseReservationRequest) -> pb::ReleaseReservationReply = "ReleaseReservation", Operate [force];
    set_qos_policy(pb::QosPolicy) -> pb::QosPolicy = "SetQosPolicy", Operate;
    list_qos_policies(pb::ListQosPoliciesRequest) -> pb::ListQosPoliciesReply = "ListQosPolicies", Read;
    delete_qos_policy(pb::DeleteQosPolicyRequest) -> pb::DeleteQosPolicyReply = "DeleteQosPolicy", Operate;
    set_acl(pb::Acl) -> pb::Acl = "SetAcl", Operate;
    list_acls(pb::ListAclsRequest) -> pb::ListAclsReply = "ListAcls", Read;
    delete_acl(pb::DeleteAclRequest) -> pb::DeleteAclReply = "DeleteAcl", Operate;
    set_acl_default(pb::AclDefault) -> pb::AclDefault = "SetAclDefault", Operate;
    [streams]
    // The IP event stream: what a CMDB's read-only account follows.
    watch_events(pb::WatchEventsRequest) -> WatchEventsStream = "WatchEvents", Read;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Belt and braces beside the compile-time check: the table names
    /// exactly the RPCs of admin.proto.
    #[test]
    fn the_table_covers_every_rpc_of_the_proto() {
        let proto = include_str!("../../crates/proto/proto/rackline/admin/v1/admin.proto");
        let mut in_proto: Vec<&str> = proto
            .lines()
            .filter_map(|l| l.trim().strip_prefix("rpc "))
            .filter_map(|l| l.split('(').next())
            .map(str::trim)
            .collect();
        let mut in_table: Vec<&str> = Rpc::ALL.iter().map(|r| r.name()).collect();
        in_proto.sort_unstable();
        in_table.sort_unstable();
        assert_eq!(in_proto, in_table);
    }

    #[test]
    fn roles_and_access_classes() {
        use Role::*;
        let table = [
            (Access::Read, [true, true, true, false]),
            (Access::Operate, [false, true, true, false]),
            (Access::Administer, [false, false, true, false]),
            (Access::NodeAgent, [false, false, true, true]),
        ];
        for (access, allowed) in table {
            for (role, ok) in [ReadOnly, Operator, Admin, Node].into_iter().zip(allowed) {
                assert_eq!(access.allows(role), ok, "{access:?} {role:?}");
            }
        }
        assert!(Rpc::release_reservation.force_needs_admin());
        assert!(Rpc::update_network.force_needs_admin());
        assert_eq!(Rpc::update_network.access(), Access::Operate);
        assert!(!Rpc::pin_reservation.force_needs_admin());
        assert!(Rpc::delete_node.force_needs_admin());
        assert_eq!(Rpc::drain_node.access(), Access::Operate);
        assert_eq!(Rpc::delete_node.access(), Access::Operate);
    }
}
