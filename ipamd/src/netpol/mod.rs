//! Kubernetes NetworkPolicy for Rackline pods: the pure compiler from
//! cluster objects to the `netpol` layer of a pod's filter
//! ([`rackline_model::filter::PodFilter`]), and the watcher that keeps the
//! layer of every local pod current.

pub mod compile;
pub mod selector;
pub mod watch;

pub use compile::{Compiled, World};
pub use watch::{Change, FiltersSink, LogSink, Netpol, NetpolSink, PodKey};
