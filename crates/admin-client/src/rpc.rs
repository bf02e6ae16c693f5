//! One method per RPC of the Admin service, each a thin request builder over
//! [`AdminClient::call`](crate::AdminClient::call). They are grouped, like
//! the service's own operations, by the resource they manage: each group is
//! a view borrowing the client ([`AdminClient::networks`] and so on), so the
//! client itself keeps only connecting, failover, the leader and the event
//! stream.

use crate::AdminClient;

mod acl;
mod networks;
mod qos;
mod racks;

/// Networks and their leases: [`AdminClient::networks`].
pub struct Networks<'a> {
    client: &'a mut AdminClient,
}

/// Racks and their bindings to networks: [`AdminClient::racks`].
pub struct Racks<'a> {
    client: &'a mut AdminClient,
}

/// Node registrations and drains: [`AdminClient::nodes`].
pub struct Nodes<'a> {
    client: &'a mut AdminClient,
}

/// Address blocks and their utilisation: [`AdminClient::blocks`].
pub struct Blocks<'a> {
    client: &'a mut AdminClient,
}

/// Sticky reservations: [`AdminClient::reservations`].
pub struct Reservations<'a> {
    client: &'a mut AdminClient,
}

/// QoS policies and ACLs: [`AdminClient::policies`].
pub struct Policies<'a> {
    client: &'a mut AdminClient,
}

impl AdminClient {
    pub fn networks(&mut self) -> Networks<'_> {
        Networks { client: self }
    }

    pub fn racks(&mut self) -> Racks<'_> {
        Racks { client: self }
    }

    pub fn nodes(&mut self) -> Nodes<'_> {
        Nodes { client: self }
    }

    pub fn blocks(&mut self) -> Blocks<'_> {
        Blocks { client: self }
    }

    pub fn reservations(&mut self) -> Reservations<'_> {
        Reservations { client: self }
    }

    pub fn policies(&mut self) -> Policies<'_> {
        Policies { client: self }
    }
}
