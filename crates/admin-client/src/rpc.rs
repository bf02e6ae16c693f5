//! One [`AdminClient`](crate::AdminClient) method per RPC of the Admin
//! service, grouped by what they manage. The type carries one method per
//! RPC on purpose (it mirrors the service); each is a thin request builder
//! over [`AdminClient::call`](crate::AdminClient::call).

mod acl;
mod networks;
mod qos;
mod racks;
