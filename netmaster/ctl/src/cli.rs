//! racklinectl: flags, the commands, and their exit codes (CONTRACTS.md):
//! 0 success, 1 the server refused (validation, not found, conflict),
//! 2 usage, 3 server (or its etcd) unreachable.
//!
//! Request validation is the server's: the CLI only splits `--route
//! DST[@GW]` and passes strings through, so there is one set of rules and
//! messages whoever the client is.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

use clap::{Args, Parser, Subcommand, ValueEnum};
use rackline_admin_client::{AdminClient, ClientError, Timeouts};
use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use crate::render::{self, DeleteJson, LeaseJson, NetworkJson};

mod acl;
pub mod config;
mod events;
mod probe;
mod qos;
mod racks;
mod reservations;
mod update;
pub use events::EventsArgs;
pub use qos::{NetworkQosArgs, QosCommand, QosSetArgs};
pub use racks::{BindArgs, BlockCommand, BlockListArgs, NodeCommand, PoolArgs, RackCommand};
pub use update::UpdateArgs;

pub const EXIT_REFUSED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_UNREACHABLE: u8 = 3;

/// Global flags also come from `RACKLINE_*` variables, and the connection
/// settings from the config file (see [`config`]).
/// Per-command flags deliberately do not: a stray `RACKLINE_FORCE` in an
/// operator's shell must never turn a refused delete into a forced one.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "racklinectl",
    version,
    about = "Administer Rackline networks, racks, nodes, blocks and leases"
)]
pub struct Cli {
    /// netmaster's gRPC URL, or every replica's, comma separated: the
    /// first that answers is used, writes follow the leader. https:// =
    /// TLS, http:// = plaintext [default: the config file's, else
    /// http://127.0.0.1:7650].
    #[arg(long, env = "RACKLINE_SERVER", global = true)]
    pub server: Option<String>,
    /// Config file (TOML: server, ca-file, cert-file, key-file,
    /// token-file) [default: ~/.config/rackline/config, if it exists].
    #[arg(long, env = "RACKLINE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// CA bundle (PEM) that signed netmaster's certificate.
    #[arg(long, env = "RACKLINE_CA_FILE", value_name = "PEM", global = true)]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for mTLS, with --key-file.
    #[arg(long, env = "RACKLINE_CERT_FILE", value_name = "PEM", global = true)]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "RACKLINE_KEY_FILE", value_name = "PEM", global = true)]
    pub key_file: Option<std::path::PathBuf>,
    /// File holding a bearer token (never pass a token on the command line).
    #[arg(long, env = "RACKLINE_TOKEN_FILE", value_name = "FILE", global = true)]
    pub token_file: Option<std::path::PathBuf>,
    /// Output format.
    #[arg(
        short = 'o',
        long = "output",
        env = "RACKLINE_OUTPUT",
        value_enum,
        default_value_t = Output::Table,
        global = true
    )]
    pub output: Output,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Create, list, show, update and delete networks.
    #[command(subcommand)]
    Network(NetworkCommand),
    /// Inspect leases.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Create, list, show and delete racks; bind them to networks.
    #[command(subcommand)]
    Rack(RackCommand),
    /// Inspect nodes (and register one, as ipamd does).
    #[command(subcommand)]
    Node(NodeCommand),
    /// Inspect blocks (and acquire or release one, as ipamd does).
    #[command(subcommand)]
    Block(BlockCommand),
    /// Address utilisation per network and rack.
    Pool(PoolArgs),
    /// Sticky reservations: list, pin an address to a pod ahead of time,
    /// release one.
    #[command(subcommand, alias = "reservations")]
    Reservation(reservations::ReservationCommand),
    /// Per-pod bandwidth policies for namespaces and applications.
    #[command(subcommand)]
    Qos(QosCommand),
    /// Rackline ACLs: allow/deny rules for the pods of a namespace or an
    /// application, and each network's default.
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// The IP event stream: every lease change, in order (NDJSON with
    /// -o json).
    Events(EventsArgs),
}

#[derive(Debug, Clone, Subcommand)]
pub enum NetworkCommand {
    /// Create a network.
    Create(Box<CreateArgs>),
    /// List networks.
    List,
    /// Show one network.
    Show { name: String },
    /// Change some settings of a network in place; what is not given keeps
    /// its value. Running pods keep what they got at ADD: the command lists
    /// those that now differ.
    Update(Box<UpdateArgs>),
    /// Delete a network. Refused while pods, sticky reservations hold
    /// addresses on it; the nodes' standby reserve is given back first
    /// (each ipamd returns its own while the network is marked deleting).
    Delete {
        name: String,
        /// Delete even when leases exist (they are deleted with it).
        #[arg(long)]
        force: bool,
        /// Seconds to wait for the ipamds to give their standby records
        /// back (at most 25).
        #[arg(long, value_name = "SECS", default_value_t = 15,
              value_parser = clap::value_parser!(u32).range(1..=25))]
        wait: u32,
    },
}

#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    pub name: String,
    /// e.g. 10.10.0.0/24
    #[arg(long)]
    pub subnet: String,
    /// The underlay gateway (the TOR), inside the subnet.
    #[arg(long)]
    pub gateway: String,
    /// The node uplink the macvlans hang off.
    #[arg(long)]
    pub master: String,
    /// 0 = inherit the master's MTU.
    #[arg(long, default_value_t = 0)]
    pub mtu: u32,
    /// 802.1Q id 1-4094; omit (or 0) for untagged.
    #[arg(long, default_value_t = 0)]
    pub vlan: u32,
    /// Never hand out: an address, a CIDR or FIRST-LAST. Repeatable.
    #[arg(long = "exclude", value_name = "RANGE")]
    pub exclude: Vec<String>,
    /// A pod route to DST, via GW when written DST@GW (default next hop: the
    /// gateway). Repeatable.
    #[arg(long = "route", value_name = "DST[@GW]", value_parser = parse_route)]
    pub routes: Vec<RouteArg>,
    /// A CIDR the pod reaches via its node. Repeatable.
    #[arg(long = "host-route", value_name = "CIDR")]
    pub host_routes: Vec<String>,
    /// Addresses per node block on rack-bound networks (power of two, 4-256).
    #[arg(long = "block-size", default_value_t = 16)]
    pub block_size: u32,
    /// Make pods keep their address across re-creation (all pods, unless
    /// narrowed by --sticky-namespace / --sticky-pod).
    #[arg(long)]
    pub sticky: bool,
    /// Only pods of this namespace are sticky. Repeatable; implies --sticky.
    #[arg(long = "sticky-namespace", value_name = "NS")]
    pub sticky_namespaces: Vec<String>,
    /// Only pods whose name fully matches this regex are sticky (e.g.
    /// 'web-\d+' for a StatefulSet). Repeatable; implies --sticky.
    #[arg(long = "sticky-pod", value_name = "REGEX")]
    pub sticky_pods: Vec<String>,
    /// Seconds a deleted sticky pod's address stays reserved (default 1800;
    /// 0 = none). Implies --sticky.
    #[arg(long = "sticky-hold-secs", value_name = "SECS")]
    pub sticky_hold_secs: Option<u64>,
    /// A sticky pod started in another rack: strict (fail, default) or
    /// reallocate (new address there). Implies --sticky.
    #[arg(long = "sticky-cross-rack", value_name = "POLICY")]
    pub sticky_cross_rack: Option<String>,
    #[command(flatten)]
    pub qos: NetworkQosArgs,
    #[command(flatten)]
    pub probe: crate::cli::probe::ProbeArgs,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteArg {
    pub dst: String,
    pub gw: String,
}

/// Only the syntax; the values are validated by the server.
pub(crate) fn parse_route(s: &str) -> Result<RouteArg, String> {
    let (dst, gw) = match s.split_once('@') {
        Some((d, "")) => return Err(format!("{d:?}: empty next hop after '@'")),
        Some((d, g)) => (d, g),
        None => (s, ""),
    };
    if dst.is_empty() {
        return Err("missing destination; write DST[@GW]".into());
    }
    Ok(RouteArg {
        dst: dst.to_string(),
        gw: gw.to_string(),
    })
}

#[derive(Debug, Clone, Subcommand)]
pub enum LeaseCommand {
    /// List leases; filters combine with AND.
    List(LeaseListArgs),
}

#[derive(Debug, Clone, Args)]
pub struct LeaseListArgs {
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
    /// Leases of the nodes registered in this rack.
    #[arg(long)]
    pub rack: Option<String>,
    /// NAMESPACE/NAME, or NAME in any namespace.
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long)]
    pub address: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    #[error(transparent)]
    Client(#[from] ClientError),
    /// Connection settings that cannot work (config file, credentials).
    #[error("{0}")]
    Usage(String),
    #[error("cannot write output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Client(ClientError::BadServer(..)) | CtlError::Usage(_) => EXIT_USAGE,
            CtlError::Client(e) if e.is_unavailable() => EXIT_UNREACHABLE,
            CtlError::Client(_) | CtlError::Output(_) => EXIT_REFUSED,
        }
    }
}

impl CreateArgs {
    pub fn to_proto(&self) -> pb::Network {
        pb::Network {
            name: self.name.clone(),
            subnet: self.subnet.clone(),
            gateway: self.gateway.clone(),
            master: self.master.clone(),
            mtu: self.mtu,
            vlan: self.vlan,
            exclude: self.exclude.clone(),
            routes: self
                .routes
                .iter()
                .map(|r| pb::Route {
                    dst: r.dst.clone(),
                    gw: r.gw.clone(),
                })
                .collect(),
            host_routes: self.host_routes.clone(),
            capacity: 0,
            allocated: 0,
            block_size: self.block_size,
            sticky: self.sticky_policy(),
            qos: self.qos.to_proto(),
            probe: self.probe.to_proto(),
            revision: 0,
        }
    }

    fn sticky_policy(&self) -> Option<pb::StickyPolicy> {
        let wanted = self.sticky
            || !self.sticky_namespaces.is_empty()
            || !self.sticky_pods.is_empty()
            || self.sticky_hold_secs.is_some()
            || self.sticky_cross_rack.is_some();
        wanted.then(|| pb::StickyPolicy {
            namespaces: self.sticky_namespaces.clone(),
            pod_patterns: self.sticky_pods.clone(),
            hold_secs: self.sticky_hold_secs,
            cross_rack: self.sticky_cross_rack.clone().unwrap_or_default(),
        })
    }
}

impl LeaseListArgs {
    pub fn to_proto(&self) -> pb::ListLeasesRequest {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        pb::ListLeasesRequest {
            network: s(&self.network),
            node: s(&self.node),
            pod: s(&self.pod),
            address: s(&self.address),
            rack: s(&self.rack),
        }
    }
}

/// Runs one command against the server, printing its result on `out`.
// Stays long: resolves the connection once, then one dispatch arm per
// top-level command; the arms are one-liners into the cli modules.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<(), CtlError> {
    let file = config::ConfigFile::load(cli.config.as_deref()).map_err(CtlError::Usage)?;
    let conn = config::resolve(
        cli.server.clone(),
        rackline_security::client::ClientCredentials {
            ca_file: cli.ca_file.clone(),
            cert_file: cli.cert_file.clone(),
            key_file: cli.key_file.clone(),
            token_file: cli.token_file.clone(),
        },
        file,
    );
    let auth = conn
        .credentials
        .load(config::FLAGS)
        .map_err(CtlError::Usage)?;
    let mut client = AdminClient::connect_with(&conn.server, Timeouts::default(), auth).await?;
    let json = cli.output == Output::Json;
    match cli.command {
        Command::Network(NetworkCommand::Create(args)) => {
            let n = client.networks().create_network(args.to_proto()).await?;
            if json {
                emit_json(out, &NetworkJson::from(&n))?;
            } else {
                write!(out, "{}", render::network_detail(&n))?;
            }
        }
        Command::Network(NetworkCommand::List) => {
            let nets = client.networks().list_networks().await?;
            if json {
                let v: Vec<NetworkJson> = nets.iter().map(NetworkJson::from).collect();
                emit_json(out, &v)?;
            } else {
                write!(out, "{}", render::networks_table(&nets))?;
            }
        }
        Command::Network(NetworkCommand::Show { name }) => {
            let n = client.networks().get_network(&name).await?;
            if json {
                emit_json(out, &NetworkJson::from(&n))?;
            } else {
                write!(out, "{}", render::network_detail(&n))?;
            }
        }
        Command::Network(NetworkCommand::Update(args)) => {
            let r = client.networks().update_network(args.to_proto()).await?;
            if json {
                emit_json(out, &render::UpdateJson::from(&r))?;
            } else {
                write!(out, "{}", render::update_report(&r))?;
            }
        }
        Command::Network(NetworkCommand::Delete { name, force, wait }) => {
            let leases_deleted = client.networks().delete_network(&name, force, wait).await?;
            if json {
                emit_json(out, &DeleteJson { leases_deleted })?;
            } else if leases_deleted > 0 {
                writeln!(out, "network {name} deleted with {leases_deleted} lease(s)")?;
            } else {
                writeln!(out, "network {name} deleted")?;
            }
        }
        Command::Lease(LeaseCommand::List(args)) => {
            let leases = client.networks().list_leases(args.to_proto()).await?;
            if json {
                let v: Vec<LeaseJson> = leases.iter().map(LeaseJson::from).collect();
                emit_json(out, &v)?;
            } else {
                write!(out, "{}", render::leases_table(&leases, now_unix_ms()))?;
            }
        }
        Command::Rack(cmd) => racks::rack(cmd, &mut client, json, out).await?,
        Command::Node(cmd) => racks::node(cmd, &mut client, json, out).await?,
        Command::Block(cmd) => racks::block(cmd, &mut client, json, out).await?,
        Command::Pool(args) => racks::pool(args, &mut client, json, out).await?,
        Command::Reservation(cmd) => reservations::run(cmd, &mut client, json, out).await?,
        Command::Qos(cmd) => qos::qos(cmd, &mut client, json, out).await?,
        Command::Acl(cmd) => acl::run(cmd, &mut client, json, out).await?,
        Command::Events(args) => events::run(args, &mut client, json, out).await?,
    }
    out.flush()?;
    Ok(())
}

/// The outcome of deleting a named object (`what`: "ACL prod/ns/name"): `{"deleted": bool}` in
/// JSON, else one line saying whether it existed. Deleting what is gone is not an error.
fn emit_deleted(out: &mut dyn Write, json: bool, what: &str, deleted: bool) -> std::io::Result<()> {
    if json {
        emit_json(out, &serde_json::json!({ "deleted": deleted }))
    } else if deleted {
        writeln!(out, "{what} deleted")
    } else {
        writeln!(out, "{what} did not exist")
    }
}

fn emit_json(out: &mut dyn Write, v: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, v)?;
    writeln!(out)
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("racklinectl").chain(args.iter().copied()))
    }

    #[test]
    fn create_flags_become_a_proto_network() {
        let cli = parse(&[
            "network",
            "create",
            "prod",
            "--subnet",
            "10.10.0.0/24",
            "--gateway",
            "10.10.0.1",
            "--master",
            "uplink0",
            "--vlan",
            "7",
            "--exclude",
            "10.10.0.2-10.10.0.63",
            "--exclude",
            "10.10.0.200",
            "--route",
            "192.168.0.0/16@10.10.0.254",
            "--route",
            "172.16.0.0/12",
            "--host-route",
            "10.96.0.0/12",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.output, Output::Json);
        let Command::Network(NetworkCommand::Create(args)) = cli.command else {
            panic!("not a create");
        };
        let n = args.to_proto();
        assert_eq!(n.vlan, 7);
        assert_eq!(n.mtu, 0);
        assert_eq!(n.exclude.len(), 2);
        assert_eq!(
            n.routes,
            vec![
                pb::Route {
                    dst: "192.168.0.0/16".into(),
                    gw: "10.10.0.254".into()
                },
                pb::Route {
                    dst: "172.16.0.0/12".into(),
                    gw: String::new()
                },
            ]
        );
        assert_eq!(n.host_routes, vec!["10.96.0.0/12".to_string()]);
    }

    #[test]
    fn usage_errors_exit_with_2() {
        for bad in [
            &[
                "network",
                "create",
                "prod",
                "--gateway",
                "10.0.0.1",
                "--master",
                "e",
            ][..],
            &[
                "network",
                "create",
                "p",
                "--subnet",
                "s",
                "--gateway",
                "g",
                "--master",
                "m",
                "--route",
                "@1.2.3.4",
            ][..],
            &[
                "network",
                "create",
                "p",
                "--subnet",
                "s",
                "--gateway",
                "g",
                "--master",
                "m",
                "--route",
                "10.0.0.0/8@",
            ][..],
            &["network", "list", "-o", "yaml"][..],
            &["lease", "frobnicate"][..],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
        }
    }

    #[test]
    fn lease_filters_pass_through() {
        let cli = parse(&["lease", "list", "--pod", "default/web-0", "--node", "n1"]).unwrap();
        let Command::Lease(LeaseCommand::List(args)) = cli.command else {
            panic!("not a lease list");
        };
        let req = args.to_proto();
        assert_eq!(req.pod, "default/web-0");
        assert_eq!(req.node, "n1");
        assert_eq!(req.network, "");
    }

    #[test]
    fn unavailable_errors_exit_with_3() {
        let e = CtlError::Client(ClientError::Rpc(tonic::Status::unavailable("etcd down")));
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
        let e = CtlError::Client(ClientError::Rpc(tonic::Status::not_found("nope")));
        assert_eq!(e.exit_code(), EXIT_REFUSED);
        let e = CtlError::Client(ClientError::Unreachable {
            server: "s".into(),
            reason: "refused".into(),
        });
        assert_eq!(e.exit_code(), EXIT_UNREACHABLE);
    }
}
