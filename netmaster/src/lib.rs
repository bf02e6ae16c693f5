//! Rackline's control plane: rackline-netmaster, the admin gRPC service
//! over etcd. Its command-line client, racklinectl, is the `rackline-ctl`
//! package (netmaster/ctl); racklinectl and ipamd share the admin client
//! of `rackline-admin-client`.
//!
//! - [`admin`]: the transport-free domain service over the etcd store;
//! - [`convert`]: proto ↔ model, where requests are validated;
//! - [`server`]: the tonic adapter serving `rackline.admin.v1.Admin`;
//! - [`daemon`]: rackline-netmaster's flags and serve loop;
//! - [`leader`]: leader election among replicas and the write fence;
//! - [`reclaim`]: the leader's reclaim of nodes dead past their grace;
//! - [`auth`] and [`authz`]: who calls (tokens, client certificates) and
//!   what each role may do, with the audit log;
//! - [`index`], [`events`], [`metrics`], [`webhook`], [`observability`]:
//!   the pool index, the IP event stream, Prometheus metrics and health, the
//!   webhook sink, and their wiring.
//!
//! The binary only parses arguments and calls [`daemon::run`].

pub mod admin;
pub mod auth;
pub mod authz;
pub mod convert;
pub mod daemon;
pub mod events;
pub mod index;
pub mod leader;
pub mod metrics;
pub mod observability;
pub mod reclaim;
pub mod server;
pub mod webhook;

pub use admin::{AdminError, AdminService, LeaseFilter, NetworkView, PodFilter};
