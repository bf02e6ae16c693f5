//! The pool and lease model shared by ipamd and netmaster. Pure logic: no etcd,
//! no gRPC, no netlink, so it is unit-tested without root or daemons.

pub mod acl;
pub mod applied;
pub mod block;
pub mod event;
pub mod filter;
pub mod infra;
pub mod intervals;
pub mod lease;
pub mod lifecycle;
pub mod mac;
pub mod network;
pub mod network_update;
pub mod pool;
pub mod probe;
pub mod qos;
pub mod rack;
pub mod spool;
pub mod sticky;

pub use applied::PodSettings;
pub use block::Block;
pub use event::{EventKind, LeaseEvent};
pub use infra::Infra;
pub use intervals::IntervalSet;
pub use lease::{ConflictInfo, Lease, LeaseState, PodRef};
pub use lifecycle::{Drain, DrainTarget, Liveness};
pub use network::{AddrRange, NetworkSpec, RouteSpec, ValidationError};
pub use network_update::{NetworkPatch, PatchError, Refusal};
pub use pool::Pool;
pub use probe::ProbeSpec;
pub use qos::{Bandwidth, QosPolicy, QosSpec};
pub use rack::{Node, Rack, RackNet};
pub use sticky::{CrossRack, Identity, StickyPolicy};
