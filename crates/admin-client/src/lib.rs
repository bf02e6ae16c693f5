//! What every client of netmaster's admin gRPC service (racklinectl, ipamd)
//! shares: the admin client with its replica failover and leader following
//! ([`AdminClient`], with one method per RPC on its per-resource views such
//! as [`AdminClient::networks`]), how a follower that refuses a write names
//! the leader ([`redirect`], the server builds it here too), and the QoS
//! sections' wire form ([`qos`]) both sides read and write.

mod client;
pub mod qos;
pub mod redirect;
mod rpc;

pub use client::{endpoints, AdminClient, ClientError, Raw, Result, Timeouts, MAX_REPLY_BYTES};
pub use rpc::{Blocks, Networks, Nodes, Policies, Racks, Reservations};
