//! `rackline-lab`: racks built from network namespaces on one machine, for Rackline's
//! end-to-end tests and the demo (docs/CONTRACTS.md, "Lab topology"; the multi-rack addressing
//! plan is in [`topology`]).
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
//! lab.check_invariants()?;                            // etcd state: no address owned twice, …
//! # Ok(()) }                                          // drop: stop daemons, delete namespaces
//! ```
//! Two racks behind a routed spine (nodes `r1n1`, `r1n2`, `r2n1`, `r2n2`; one network per rack
//! with today's binaries, see [`LabNetworkMode`]):
//! ```no_run
//! # use rackline_lab::Lab;
//! # fn main() -> anyhow::Result<()> {
//! let lab = Lab::builder().racks(2).nodes_per_rack(2).build()?;
//! let r2n1 = lab.rack_node(2, 1);
//! let pod = lab.add_pod(r2n1.index(), "web")?;        // gets 10.11.0.x from network rack2
//! # Ok(()) }
//! ```
//!
//! Every daemon serves `/metrics`, `/healthz` and `/readyz` ([`observe`]: [`Lab::ipamd_http`],
//! [`Lab::netmaster_http`], a [`WebhookReceiver`] in `ctrl`).
//!
//! netmaster HA (`.netmasters(3)`: replicas nm1..nm3 on ports 7650.. inside `ctrl`; see
//! [`netmasters`]): [`Lab::netmaster_leader`], [`Lab::kill_netmaster`],
//! [`Lab::start_netmaster_replica`], [`Lab::check_one_netmaster_leader`].
//!
//! Everything runs inside namespaces the lab creates; the root namespace is never changed.
//! Processes are started with fork + `setns` (never `ip netns exec`) and stopped by pid.
//! Needs root, iproute2, iputils-ping, etcd-server and etcd-client (`scripts/install-deps.sh`),
//! and the Rackline binaries (`cargo build --workspace --bins`) unless built with
//! `rackline(false)`.

pub mod bench;
mod cni;
mod daemons;
mod host;
mod hosts;
mod inspect;
pub mod invariants;
mod lab;
pub mod netmasters;
mod netns;
mod networks;
pub mod observe;
pub mod pki;
mod process;
mod rack;
pub mod runtimes;
mod state;
pub mod topology;
pub mod vm;

pub use cni::{result_interface_of, result_ipv4, Cidr4, Cmd, CniCall, CniOutput, PLUGIN_TIMEOUT};
pub use daemons::{CLIENT_TIMEOUT, READY_TIMEOUT};
pub use host::{bin_dir, check_root, Bins, Tools, BIN_DIR_ENV};
pub use hosts::{format_mac, ArpCapture, ArpFrame, HOST_IF};
pub use inspect::NetSnapshot;
pub use invariants::InvariantReport;
pub use lab::{Lab, LabBuilder, KEEP_ENV};
pub use netmasters::{NetmasterLeader, ReplicaRole, MAX_NETMASTERS, NETMASTER_LEASE_TTL_SECS};
pub use netns::{lab_owner_pid, list_netns, pid_alive, sweep_stale, Netns, SweepReport, NETNS_DIR};
pub use networks::{LabNetwork, LabNetworkMode, RackShare, DEFAULT_NETWORK_MODE};
pub use observe::{
    HttpReply, WebhookPost, WebhookReceiver, IPAMD_METRICS_PORT, NETMASTER_METRICS_PORT,
};
pub use process::{tail, Daemon, Output};
pub use rack::{Node, Pod, Rack};
pub use state::NsState;
pub use topology::{
    in_pool, in_rack_pool, node_address, rack_gateway, rack_node_address, rack_of_address,
    rack_pool, rack_subnet, CTRL_ADDR, ETCD_URL, GATEWAY, MAX_NODES, MAX_RACKS, NETMASTER_URL,
    NETWORK, POOL_FIRST, POOL_LAST, PREFIX_LEN, SERVICE_CIDR, SPINE_CTRL_ADDR, SPINE_GATEWAY,
    SUBNET, UPLINK,
};
