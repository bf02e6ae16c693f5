//! racklinectl's `qos` commands and the QoS flags of `network create`.
//! Bandwidths are written `ingress=100M,egress=50M[,ingress-burst=..,
//! egress-burst=..]` (bits/s and bits, Kubernetes quantities); the CLI only
//! turns the quantities into numbers, the server validates the values.

use std::io::Write;

use clap::{Args, Subcommand};
use rackline_admin_client::AdminClient;
use rackline_model::qos::Bandwidth;
use rackline_proto::admin::v1 as pb;

use super::{emit_deleted, emit_json, CtlError};
use crate::render::{self, QosPolicyJson};

#[derive(Debug, Clone, Subcommand)]
pub enum QosCommand {
    /// Set (create or replace) a namespace or application bandwidth policy.
    Set(QosSetArgs),
    /// List policies.
    List {
        /// Only this network's.
        #[arg(long)]
        network: Option<String>,
    },
    /// Delete a policy.
    Delete {
        network: String,
        namespace: String,
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct QosSetArgs {
    pub network: String,
    pub namespace: String,
    pub name: String,
    /// e.g. ingress=100M,egress=50M (bits/s; bursts in bits).
    #[arg(long, value_parser = parse_bandwidth)]
    pub bandwidth: Bandwidth,
    /// Only pods whose name matches this anchored regex (an application,
    /// e.g. 'web-.*'); default: every pod of the namespace.
    #[arg(long = "pods", value_name = "REGEX")]
    pub pod_pattern: Option<String>,
}

/// The QoS flags of `network create`.
#[derive(Debug, Clone, Default, Args)]
pub struct NetworkQosArgs {
    /// Bandwidth every pod of the network gets unless a more specific level
    /// says otherwise, e.g. ingress=1G,egress=1G.
    #[arg(long = "qos-default", value_name = "BANDWIDTH", value_parser = parse_bandwidth)]
    pub default: Option<Bandwidth>,
    /// Cap on every pod's bandwidth (also caps unshaped pods).
    #[arg(long = "qos-max", value_name = "BANDWIDTH", value_parser = parse_bandwidth)]
    pub max: Option<Bandwidth>,
    /// Bandwidth for pods on nodes of a class (ipamd --node-class):
    /// CLASS:BANDWIDTH. Repeatable.
    #[arg(long = "qos-class", value_name = "CLASS:BANDWIDTH", value_parser = parse_class)]
    pub classes: Vec<(String, Bandwidth)>,
}

pub fn parse_bandwidth(s: &str) -> Result<Bandwidth, String> {
    Bandwidth::parse_spec(s).map_err(|e| e.to_string())
}

pub(super) fn parse_class(s: &str) -> Result<(String, Bandwidth), String> {
    let (class, b) = s
        .split_once(':')
        .ok_or_else(|| format!("{s:?}: write CLASS:BANDWIDTH"))?;
    Ok((class.trim().to_string(), parse_bandwidth(b)?))
}

impl NetworkQosArgs {
    pub fn to_proto(&self) -> Option<pb::NetworkQos> {
        let spec = rackline_model::QosSpec {
            default: self.default,
            max: self.max,
            node_classes: self.classes.iter().cloned().collect(),
        };
        rackline_admin_client::qos::network_qos_to_proto(&spec)
    }
}

impl QosSetArgs {
    pub fn to_proto(&self) -> pb::QosPolicy {
        pb::QosPolicy {
            network: self.network.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            pod_pattern: self.pod_pattern.clone().unwrap_or_default(),
            bandwidth: Some(rackline_admin_client::qos::bandwidth_to_proto(
                &self.bandwidth,
            )),
        }
    }
}

pub async fn qos(
    cmd: QosCommand,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match cmd {
        QosCommand::Set(args) => {
            let p = client.policies().set_qos_policy(args.to_proto()).await?;
            if json {
                emit_json(out, &QosPolicyJson::from(&p))?;
            } else {
                write!(out, "{}", render::qos_policies_table(&[p]))?;
            }
        }
        QosCommand::List { network } => {
            let ps = client
                .policies()
                .list_qos_policies(network.as_deref().unwrap_or(""))
                .await?;
            if json {
                let v: Vec<QosPolicyJson> = ps.iter().map(QosPolicyJson::from).collect();
                emit_json(out, &v)?;
            } else {
                write!(out, "{}", render::qos_policies_table(&ps))?;
            }
        }
        QosCommand::Delete {
            network,
            namespace,
            name,
        } => {
            let deleted = client
                .policies()
                .delete_qos_policy(&network, &namespace, &name)
                .await?;
            let what = format!("QoS policy {network}/{namespace}/{name}");
            emit_deleted(out, json, &what, deleted)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command, NetworkCommand};
    use super::*;
    use clap::Parser;

    #[test]
    fn network_create_qos_flags() {
        let cli = Cli::try_parse_from([
            "racklinectl",
            "network",
            "create",
            "prod",
            "--subnet",
            "10.0.0.0/24",
            "--gateway",
            "10.0.0.1",
            "--master",
            "eth0",
            "--qos-default",
            "ingress=100M,egress=100M",
            "--qos-max",
            "egress=1G",
            "--qos-class",
            "small:egress=50M,egress-burst=1M",
        ])
        .unwrap();
        let Command::Network(NetworkCommand::Create(args)) = cli.command else {
            panic!()
        };
        let q = args.to_proto().qos.unwrap();
        assert_eq!(q.default.unwrap().ingress_rate, 100_000_000);
        assert_eq!(q.max.unwrap().egress_rate, 1_000_000_000);
        assert_eq!(q.node_classes["small"].egress_burst, 1_000_000);
        for bad in [
            "--qos-default=ingress=fast",
            "--qos-class=small",
            "--qos-max=nope=1M",
        ] {
            let r = Cli::try_parse_from([
                "racklinectl",
                "network",
                "create",
                "p",
                "--subnet",
                "s",
                "--gateway",
                "g",
                "--master",
                "m",
                bad,
            ]);
            assert!(r.is_err(), "{bad}");
        }
    }

    #[test]
    fn qos_set_parses() {
        let cli = Cli::try_parse_from([
            "racklinectl",
            "qos",
            "set",
            "prod",
            "shop",
            "web",
            "--bandwidth",
            "egress=20M",
            "--pods",
            "web-.*",
        ])
        .unwrap();
        let Command::Qos(QosCommand::Set(a)) = cli.command else {
            panic!()
        };
        let p = a.to_proto();
        assert_eq!(p.pod_pattern, "web-.*");
        assert_eq!(p.bandwidth.unwrap().egress_rate, 20_000_000);
    }
}
