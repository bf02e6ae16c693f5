//! racklinectl reservation list|pin|release: sticky pod identities and
//! the addresses they hold.

use std::io::Write;

use clap::Subcommand;
use rackline_admin_client::AdminClient;
use rackline_proto::admin::v1 as pb;

use super::{emit_json, now_unix_ms, CtlError};
use crate::render::{self, ReservationJson};

#[derive(Debug, Clone, Subcommand)]
pub enum ReservationCommand {
    /// List sticky identities and the state of their address.
    List {
        /// Only this network.
        #[arg(long)]
        network: Option<String>,
    },
    /// Pin ADDRESS to pod NAMESPACE/POD on NETWORK: reserved for it until
    /// released, whatever the network's sticky policy.
    Pin {
        network: String,
        namespace: String,
        pod: String,
        address: String,
    },
    /// Free the address reserved for NAMESPACE/POD (refused while it runs).
    Release {
        network: String,
        namespace: String,
        pod: String,
        /// Also when the pod's lease is active: only for a node that is gone
        /// for good (if the pod still runs, its address becomes free for
        /// others).
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(
    cmd: ReservationCommand,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match cmd {
        ReservationCommand::List { network } => {
            let v = client
                .reservations()
                .list_reservations(network.as_deref().unwrap_or(""))
                .await?;
            if json {
                let j: Vec<ReservationJson> = v.iter().map(ReservationJson::from).collect();
                emit_json(out, &j)?;
            } else {
                write!(out, "{}", render::reservations_table(&v, now_unix_ms()))?;
            }
        }
        ReservationCommand::Pin {
            network,
            namespace,
            pod,
            address,
        } => {
            let r = client
                .reservations()
                .pin_reservation(pb::PinReservationRequest {
                    network,
                    namespace,
                    name: pod,
                    address,
                })
                .await?;
            if json {
                emit_json(out, &ReservationJson::from(&r))?;
            } else {
                writeln!(
                    out,
                    "{} pinned to {}/{} on network {}",
                    r.address, r.namespace, r.name, r.network
                )?;
            }
        }
        ReservationCommand::Release {
            network,
            namespace,
            pod,
            force,
        } => {
            let r = client
                .reservations()
                .release_reservation(pb::ReleaseReservationRequest {
                    network: network.clone(),
                    namespace: namespace.clone(),
                    name: pod.clone(),
                    force,
                })
                .await?;
            if json {
                emit_json(out, &serde_json::json!({ "address": r.address }))?;
            } else {
                writeln!(
                    out,
                    "released {} (was reserved for {namespace}/{pod} on network {network})",
                    r.address
                )?;
            }
        }
    }
    Ok(())
}
