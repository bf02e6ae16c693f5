//! racklinectl's rack, node, block and pool commands. As for networks, the
//! CLI passes strings through and the server validates.

use std::io::Write;

use clap::{Args, Subcommand};
use rackline_admin_client::AdminClient;
use rackline_proto::admin::v1 as pb;

use super::{emit_json, now_unix_ms, CtlError};
use crate::render::{
    self, BlockJson, EmptyJson, NodeDeleteJson, NodeDetailJson, NodeJson, RackDetailJson, RackJson,
    RackNetJson, ReleasedJson, UtilizationJson,
};

#[derive(Debug, Clone, Subcommand)]
pub enum RackCommand {
    /// Create a rack.
    Create {
        name: String,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List racks.
    List,
    /// Show a rack with its network bindings and nodes.
    Show { name: String },
    /// Delete a rack (refused while it has nodes or blocks; its bindings go
    /// with it).
    Delete { name: String },
    /// Bind a rack to a network: the rack's subnet, gateway (its TOR) and
    /// ranges on it. Binding again replaces the binding.
    Bind(BindArgs),
    /// Remove a rack's binding to a network. Refused while the rack's
    /// nodes hold pod leases, reservations or quarantine records on it;
    /// their standby records and blocks are given back first (each ipamd
    /// returns its own while the binding is marked for removal).
    Unbind {
        rack: String,
        network: String,
        /// Seconds to wait for the rack's ipamds to give back their
        /// standby records and blocks (at most 25).
        #[arg(long, value_name = "SECS", default_value_t = 15,
              value_parser = clap::value_parser!(u32).range(1..=25))]
        wait: u32,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BindArgs {
    pub rack: String,
    pub network: String,
    /// The rack's subnet on this network (the network's own, or a separate
    /// one).
    #[arg(long)]
    pub subnet: String,
    /// The rack's gateway (its TOR), inside the subnet.
    #[arg(long)]
    pub gateway: String,
    /// Addresses the rack's pods get: an address, a CIDR or FIRST-LAST.
    /// Repeatable; none = the whole subnet.
    #[arg(long = "range", value_name = "RANGE")]
    pub ranges: Vec<String>,
    /// Infrastructure inside the rack's subnet that pods never get (switch
    /// or server management addresses, VIPs): an address, a CIDR or
    /// FIRST-LAST. Repeatable. Registered node addresses and gateways are
    /// never given in any case.
    #[arg(long = "exclude", value_name = "RANGE")]
    pub exclude: Vec<String>,
}

impl BindArgs {
    pub fn to_proto(&self) -> pb::RackNet {
        pb::RackNet {
            rack: self.rack.clone(),
            network: self.network.clone(),
            subnet: self.subnet.clone(),
            gateway: self.gateway.clone(),
            ranges: self.ranges.clone(),
            exclude: self.exclude.clone(),
        }
    }
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// List nodes with their blocks and lease counts.
    List {
        #[arg(long)]
        rack: Option<String>,
    },
    /// Show a node, its blocks and lease count.
    Show { name: String },
    /// Register a node in a rack (ipamd does this at start-up).
    Register {
        name: String,
        #[arg(long)]
        rack: String,
        /// The node's own address. Repeatable.
        #[arg(long = "address", value_name = "IP")]
        addresses: Vec<String>,
    },
    /// Drain a node: it gets no new blocks, and its ipamd gives back its
    /// standby records and empty blocks on every network (pods already
    /// there keep their addresses; new ones borrow). `node list` shows
    /// the state.
    Drain {
        name: String,
        /// Lift the drain instead.
        #[arg(long)]
        undo: bool,
    },
    /// Delete a node for good: its standby records and blocks are freed,
    /// its sticky pods' addresses become reservations, its record goes.
    /// Refused while its ipamd is live or pods hold leases on it.
    Delete {
        name: String,
        /// Even then (pod leases are freed; admin only).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum BlockCommand {
    /// List blocks with their lease counts; filters combine with AND.
    List(BlockListArgs),
    /// Hand a node a free block of its rack (ipamd does this; for tests and
    /// repairs).
    Acquire {
        network: String,
        #[arg(long)]
        node: String,
    },
    /// Return a node's empty block (refused while it holds a lease).
    Release {
        network: String,
        /// The block's first address.
        first: String,
        #[arg(long)]
        node: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct BlockListArgs {
    #[arg(long)]
    pub network: Option<String>,
    #[arg(long)]
    pub rack: Option<String>,
    #[arg(long)]
    pub node: Option<String>,
}

impl BlockListArgs {
    pub fn to_proto(&self) -> pb::ListBlocksRequest {
        let s = |o: &Option<String>| o.clone().unwrap_or_default();
        pb::ListBlocksRequest {
            network: s(&self.network),
            rack: s(&self.rack),
            node: s(&self.node),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Only this network.
    #[arg(long)]
    pub network: Option<String>,
}

pub async fn rack(
    cmd: RackCommand,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match cmd {
        RackCommand::Create { name, description } => {
            let r = client
                .racks()
                .create_rack(pb::Rack { name, description })
                .await?;
            if json {
                emit_json(out, &RackJson::from(&r))?;
            } else {
                let d = pb::RackDetail {
                    rack: Some(r),
                    ..Default::default()
                };
                write!(out, "{}", render::rack_detail(&d))?;
            }
        }
        RackCommand::List => {
            let racks = client.racks().list_racks().await?;
            if json {
                let v: Vec<RackJson> = racks.iter().map(RackJson::from).collect();
                emit_json(out, &v)?;
            } else {
                let bindings = client.racks().list_rack_nets("", "").await?;
                write!(out, "{}", render::racks_and_bindings(&racks, &bindings))?;
            }
        }
        RackCommand::Show { name } => {
            let d = client.racks().get_rack(&name).await?;
            if json {
                emit_json(out, &RackDetailJson::from(&d))?;
            } else {
                write!(out, "{}", render::rack_detail(&d))?;
            }
        }
        RackCommand::Delete { name } => {
            client.racks().delete_rack(&name).await?;
            if json {
                emit_json(out, &EmptyJson {})?;
            } else {
                writeln!(out, "rack {name} deleted")?;
            }
        }
        RackCommand::Bind(args) => {
            let b = client.racks().bind_rack(args.to_proto()).await?;
            if json {
                emit_json(out, &RackNetJson::from(&b))?;
            } else {
                write!(out, "{}", render::racknet_detail(&b))?;
            }
        }
        RackCommand::Unbind {
            rack,
            network,
            wait,
        } => {
            client.racks().unbind_rack(&rack, &network, wait).await?;
            if json {
                emit_json(out, &EmptyJson {})?;
            } else {
                writeln!(out, "rack {rack} unbound from network {network}")?;
            }
        }
    }
    Ok(())
}

// Stays long: one match arm per `node` subcommand, each a request and its
// printout; splitting would only move the arms elsewhere.
pub async fn node(
    cmd: NodeCommand,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match cmd {
        NodeCommand::List { rack } => {
            let nodes = client
                .nodes()
                .list_nodes(rack.as_deref().unwrap_or(""))
                .await?;
            if json {
                let v: Vec<NodeDetailJson> = nodes.iter().map(NodeDetailJson::from).collect();
                emit_json(out, &v)?;
            } else {
                write!(out, "{}", render::nodes_table(&nodes, now_unix_ms()))?;
            }
        }
        NodeCommand::Show { name } => {
            let d = client.nodes().get_node(&name).await?;
            if json {
                emit_json(out, &NodeDetailJson::from(&d))?;
            } else {
                write!(out, "{}", render::node_detail(&d, now_unix_ms()))?;
            }
        }
        NodeCommand::Register {
            name,
            rack,
            addresses,
        } => {
            let n = client
                .nodes()
                .register_node(pb::Node {
                    name,
                    rack,
                    addresses,
                    registered_unix_ms: 0,
                })
                .await?;
            if json {
                emit_json(out, &NodeJson::from(&n))?;
            } else {
                write!(out, "{}", render::node_record(&n))?;
            }
        }
        NodeCommand::Drain { name, undo } => {
            let d = client.nodes().drain_node(&name, undo).await?;
            if json {
                emit_json(out, &NodeDetailJson::from(&d))?;
            } else {
                write!(out, "{}", render::node_detail(&d, now_unix_ms()))?;
            }
        }
        NodeCommand::Delete { name, force } => {
            let r = client.nodes().delete_node(&name, force).await?;
            if json {
                emit_json(out, &NodeDeleteJson::from(&r))?;
            } else {
                writeln!(
                    out,
                    "node {name} deleted: {} standby record(s) and {} block(s) freed, \
                     {} sticky address(es) reserved, {} pod lease(s) freed",
                    r.standby_freed, r.blocks_returned, r.reserved, r.leases_freed
                )?;
            }
        }
    }
    Ok(())
}

pub async fn block(
    cmd: BlockCommand,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match cmd {
        BlockCommand::List(args) => {
            let blocks = client.blocks().list_blocks(args.to_proto()).await?;
            if json {
                let v: Vec<BlockJson> = blocks.iter().map(BlockJson::from).collect();
                emit_json(out, &v)?;
            } else {
                write!(out, "{}", render::blocks_table(&blocks, now_unix_ms()))?;
            }
        }
        BlockCommand::Acquire { network, node } => {
            let b = client.blocks().acquire_block(&network, &node).await?;
            if json {
                emit_json(out, &BlockJson::from(&b))?;
            } else {
                write!(
                    out,
                    "{}",
                    render::blocks_table(std::slice::from_ref(&b), now_unix_ms())
                )?;
            }
        }
        BlockCommand::Release {
            network,
            first,
            node,
        } => {
            let released = client
                .blocks()
                .release_block(&network, &first, &node)
                .await?;
            if json {
                emit_json(out, &ReleasedJson { released })?;
            } else if released {
                writeln!(out, "block {first} of network {network} released")?;
            } else {
                writeln!(
                    out,
                    "block {first} of network {network} was already released"
                )?;
            }
        }
    }
    Ok(())
}

pub async fn pool(
    args: PoolArgs,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let rows = client
        .blocks()
        .utilization(args.network.as_deref().unwrap_or(""))
        .await?;
    if json {
        let v: Vec<UtilizationJson> = rows.iter().map(UtilizationJson::from).collect();
        emit_json(out, &v)?;
    } else {
        write!(out, "{}", render::pool_table(&rows))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command, LeaseCommand, EXIT_USAGE};
    use super::*;
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("racklinectl").chain(args.iter().copied()))
    }

    #[test]
    fn bind_flags_become_a_proto_binding() {
        let cli = parse(&[
            "rack",
            "bind",
            "r1",
            "prod",
            "--subnet",
            "10.10.0.0/16",
            "--gateway",
            "10.10.0.1",
            "--range",
            "10.10.1.0/24",
            "--range",
            "10.10.2.0-10.10.2.99",
            "--exclude",
            "10.10.1.2-10.10.1.9",
            "--exclude",
            "10.10.2.64/28",
        ])
        .unwrap();
        let Command::Rack(RackCommand::Bind(args)) = cli.command else {
            panic!("not a bind");
        };
        assert_eq!(
            args.to_proto(),
            pb::RackNet {
                rack: "r1".into(),
                network: "prod".into(),
                subnet: "10.10.0.0/16".into(),
                gateway: "10.10.0.1".into(),
                ranges: vec!["10.10.1.0/24".into(), "10.10.2.0-10.10.2.99".into()],
                exclude: vec!["10.10.1.2-10.10.1.9".into(), "10.10.2.64/28".into()],
            }
        );
    }

    #[test]
    fn filters_pass_through() {
        let cli = parse(&["block", "list", "--rack", "r1", "--node", "n1"]).unwrap();
        let Command::Block(BlockCommand::List(args)) = cli.command else {
            panic!("not a block list");
        };
        let req = args.to_proto();
        assert_eq!(
            (req.network.as_str(), req.rack.as_str(), req.node.as_str()),
            ("", "r1", "n1")
        );
        let cli = parse(&["lease", "list", "--rack", "r2"]).unwrap();
        let Command::Lease(LeaseCommand::List(args)) = cli.command else {
            panic!("not a lease list");
        };
        assert_eq!(args.to_proto().rack, "r2");
        let cli = parse(&["pool", "--network", "prod", "-o", "json"]).unwrap();
        let Command::Pool(args) = cli.command else {
            panic!("not pool");
        };
        assert_eq!(args.network.as_deref(), Some("prod"));
    }

    #[test]
    fn missing_required_flags_are_usage_errors() {
        for bad in [
            &["rack", "bind", "r1", "prod", "--gateway", "10.0.0.1"][..],
            &[
                "rack",
                "bind",
                "r1",
                "--subnet",
                "10.0.0.0/24",
                "--gateway",
                "10.0.0.1",
            ][..],
            &["rack", "unbind", "r1"][..],
            &["node", "register", "n1"][..],
            &["block", "acquire", "prod"][..],
            &["block", "release", "prod", "--node", "n1"][..],
            &["rack", "frobnicate"][..],
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.exit_code(), i32::from(EXIT_USAGE), "{bad:?}");
        }
    }
}
