//! racklinectl's `acl` commands. Rules are written as
//! `<allow|deny> [<proto>[:<ports>]] [<cidr>,...]`, one per `--ingress` /
//! `--egress` flag, in evaluation order; the server parses and validates
//! them and stores nothing when one is bad.

use std::io::Write;

use clap::{Args, Subcommand};
use rackline_admin_client::AdminClient;
use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use super::{emit_deleted, emit_json, CtlError};

#[derive(Debug, Clone, Subcommand)]
pub enum AclCommand {
    /// Create or replace an ACL.
    Create(AclCreateArgs),
    /// List ACLs and the networks' defaults.
    List {
        /// Only this network's.
        #[arg(long)]
        network: Option<String>,
    },
    /// Show one ACL with its rules.
    Show {
        network: String,
        namespace: String,
        name: String,
    },
    /// Delete an ACL.
    Delete {
        network: String,
        namespace: String,
        name: String,
    },
    /// Set a network's default verdicts (when no rule matches). Without
    /// one a network allows both ways.
    Default {
        network: String,
        #[arg(long, value_name = "allow|deny")]
        ingress: String,
        #[arg(long, value_name = "allow|deny")]
        egress: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct AclCreateArgs {
    pub network: String,
    pub namespace: String,
    pub name: String,
    /// Only pods whose name matches this anchored regex (e.g. 'web-.*');
    /// default: every pod of the namespace.
    #[arg(long = "pods", value_name = "REGEX")]
    pub pod_pattern: Option<String>,
    /// Evaluation order among the ACLs selecting a pod (lower first).
    #[arg(long, default_value_t = 0)]
    pub order: u32,
    /// A rule for traffic to the pod, e.g. 'allow tcp:80,443 10.0.0.0/8'.
    /// Repeatable, evaluated in order.
    #[arg(long, value_name = "RULE")]
    pub ingress: Vec<String>,
    /// A rule for traffic from the pod, e.g. 'deny udp:53'. Repeatable.
    #[arg(long, value_name = "RULE")]
    pub egress: Vec<String>,
}

impl AclCreateArgs {
    pub fn to_proto(&self) -> pb::Acl {
        pb::Acl {
            network: self.network.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            pod_pattern: self.pod_pattern.clone().unwrap_or_default(),
            order: self.order,
            ingress: self.ingress.clone(),
            egress: self.egress.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AclJson<'a> {
    network: &'a str,
    namespace: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    pod_pattern: &'a str,
    order: u32,
    ingress: &'a [String],
    egress: &'a [String],
}

impl<'a> From<&'a pb::Acl> for AclJson<'a> {
    fn from(a: &'a pb::Acl) -> Self {
        AclJson {
            network: &a.network,
            namespace: &a.namespace,
            name: &a.name,
            pod_pattern: &a.pod_pattern,
            order: a.order,
            ingress: &a.ingress,
            egress: &a.egress,
        }
    }
}

#[derive(Debug, Serialize)]
struct DefaultJson<'a> {
    network: &'a str,
    ingress: &'a str,
    egress: &'a str,
}

fn table(acls: &[pb::Acl]) -> String {
    let mut s = format!(
        "{:<12} {:<16} {:<20} {:<16} {:>5} {:>7} {:>6}\n",
        "NETWORK", "NAMESPACE", "NAME", "PODS", "ORDER", "INGRESS", "EGRESS"
    );
    for a in acls {
        let pods = if a.pod_pattern.is_empty() {
            "*"
        } else {
            &a.pod_pattern
        };
        s += &format!(
            "{:<12} {:<16} {:<20} {:<16} {:>5} {:>7} {:>6}\n",
            a.network,
            a.namespace,
            a.name,
            pods,
            a.order,
            a.ingress.len(),
            a.egress.len()
        );
    }
    s
}

fn show(a: &pb::Acl) -> String {
    let mut s = format!(
        "ACL:      {}/{}/{}\nPods:     {}\nOrder:    {}\n",
        a.network,
        a.namespace,
        a.name,
        if a.pod_pattern.is_empty() {
            "every pod of the namespace"
        } else {
            &a.pod_pattern
        },
        a.order
    );
    for (dir, rules) in [("Ingress", &a.ingress), ("Egress", &a.egress)] {
        s += &format!("{dir}:\n");
        if rules.is_empty() {
            s += "  -\n";
        }
        for (i, r) in rules.iter().enumerate() {
            s += &format!("  {:>3}. {r}\n", i + 1);
        }
    }
    s
}

// Stays long: one match arm per `acl` subcommand, each a request and its
// printout; splitting would only move the arms elsewhere.
pub async fn run(
    cmd: AclCommand,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    match cmd {
        AclCommand::Create(args) => {
            let a = client.policies().set_acl(args.to_proto()).await?;
            if json {
                emit_json(out, &AclJson::from(&a))?;
            } else {
                write!(out, "{}", show(&a))?;
            }
        }
        AclCommand::List { network } => {
            let r = client
                .policies()
                .list_acls(network.as_deref().unwrap_or(""))
                .await?;
            if json {
                let acls: Vec<AclJson> = r.acls.iter().map(AclJson::from).collect();
                let defaults: Vec<DefaultJson> = r
                    .defaults
                    .iter()
                    .map(|d| DefaultJson {
                        network: &d.network,
                        ingress: &d.ingress,
                        egress: &d.egress,
                    })
                    .collect();
                emit_json(
                    out,
                    &serde_json::json!({ "acls": acls, "defaults": defaults }),
                )?;
            } else {
                write!(out, "{}", table(&r.acls))?;
                for d in &r.defaults {
                    writeln!(
                        out,
                        "default of {}: ingress {}, egress {}",
                        d.network, d.ingress, d.egress
                    )?;
                }
            }
        }
        AclCommand::Show {
            network,
            namespace,
            name,
        } => {
            let r = client.policies().list_acls(&network).await?;
            let Some(a) = r
                .acls
                .iter()
                .find(|a| a.namespace == namespace && a.name == name)
            else {
                return Err(CtlError::Client(rackline_admin_client::ClientError::Rpc(
                    tonic::Status::not_found(format!("no ACL {network}/{namespace}/{name}")),
                )));
            };
            if json {
                emit_json(out, &AclJson::from(a))?;
            } else {
                write!(out, "{}", show(a))?;
            }
        }
        AclCommand::Delete {
            network,
            namespace,
            name,
        } => {
            let deleted = client
                .policies()
                .delete_acl(&network, &namespace, &name)
                .await?;
            let what = format!("ACL {network}/{namespace}/{name}");
            emit_deleted(out, json, &what, deleted)?;
        }
        AclCommand::Default {
            network,
            ingress,
            egress,
        } => {
            let d = client
                .policies()
                .set_acl_default(pb::AclDefault {
                    network,
                    ingress,
                    egress,
                })
                .await?;
            if json {
                emit_json(
                    out,
                    &DefaultJson {
                        network: &d.network,
                        ingress: &d.ingress,
                        egress: &d.egress,
                    },
                )?;
            } else {
                writeln!(
                    out,
                    "default of {}: ingress {}, egress {}",
                    d.network, d.ingress, d.egress
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command};
    use super::*;
    use clap::Parser;

    #[test]
    fn acl_create_parses_repeated_rules_in_order() {
        let cli = Cli::try_parse_from([
            "racklinectl",
            "acl",
            "create",
            "prod",
            "shop",
            "web",
            "--pods",
            "web-.*",
            "--order",
            "10",
            "--ingress",
            "deny 10.0.5.0/24",
            "--ingress",
            "allow tcp:80",
            "--egress",
            "deny udp:53",
        ])
        .unwrap();
        let Command::Acl(AclCommand::Create(a)) = cli.command else {
            panic!()
        };
        let p = a.to_proto();
        assert_eq!(p.ingress, ["deny 10.0.5.0/24", "allow tcp:80"]);
        assert_eq!((p.order, p.pod_pattern.as_str()), (10, "web-.*"));
        assert!(show(&p).contains("  2. allow tcp:80"));
    }
}
