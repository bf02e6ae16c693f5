//! `rackline-lab`: a rack built from network namespaces on one machine, for Rackline's
//! end-to-end tests and the demo (docs/CONTRACTS.md, "Lab topology").
//!
//! ```no_run
//! use rackline_lab::{Cmd, Lab};
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::builder().nodes(2).build()?;       // tor, ctrl (etcd, netmaster), n1, n2 (ipamd)
//! let pod = lab.add_pod(1, "web")?;                   // empty netns rl<pid>x<n>-n1p1, lo up
//! let result = lab.cni(Cmd::Add, &pod).run()?;        // the real `rackline` binary, from n1
//! let addr = rackline_lab::result_ipv4(result.result()?)?;
//! assert!(lab.ping(&pod, rackline_lab::GATEWAY)?);
//! assert!(lab.ping(lab.node(1), addr.addr)?);
//! lab.cni(Cmd::Del, &pod).prev_result(result.result()?).run()?.ok()?;
//! # Ok(()) }                                          // drop: stop daemons, delete namespaces
//! ```
//!
//! Everything runs inside namespaces the lab creates; the root namespace is never changed.
//! Processes are started with fork + `setns` (never `ip netns exec`) and stopped by pid.
//! Needs root, iproute2, iputils-ping, etcd-server and etcd-client (`scripts/install-deps.sh`),
//! and the Rackline binaries (`cargo build --workspace --bins`) unless built with
//! `rackline(false)`.

mod cni;
mod daemons;
mod host;
mod inspect;
mod lab;
mod netns;
mod process;
mod topology;

pub use cni::{result_interface_of, result_ipv4, Cidr4, Cmd, CniCall, CniOutput, PLUGIN_TIMEOUT};
pub use daemons::{CLIENT_TIMEOUT, READY_TIMEOUT};
pub use host::{bin_dir, check_root, Bins, Tools, BIN_DIR_ENV};
pub use inspect::NetSnapshot;
pub use lab::{Lab, LabBuilder, Node, Pod, KEEP_ENV};
pub use netns::{lab_owner_pid, list_netns, pid_alive, sweep_stale, Netns, SweepReport, NETNS_DIR};
pub use process::{tail, Daemon, Output};
pub use topology::{
    in_pool, node_address, CTRL_ADDR, ETCD_URL, GATEWAY, MAX_NODES, NETMASTER_URL, NETWORK,
    POOL_FIRST, POOL_LAST, PREFIX_LEN, SERVICE_CIDR, SUBNET, UPLINK,
};
