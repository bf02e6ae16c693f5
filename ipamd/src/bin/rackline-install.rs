//! rackline-install: wiring only (see `rackline_ipamd::install`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rackline_ipamd::install::{self, Plan, DEFAULT_CONFLIST, DEFAULT_CONFLIST_NAME};

#[derive(Debug, Parser)]
#[command(
    name = "rackline-install",
    version,
    about = "Installs the rackline CNI plugin and its conflist into the host's CNI directories"
)]
struct Args {
    /// The plugin binary to install.
    #[arg(
        long,
        env = "RACKLINE_PLUGIN",
        default_value = "/usr/local/bin/rackline"
    )]
    plugin: PathBuf,
    /// The host's CNI binary directory, as mounted in this container.
    #[arg(
        long,
        env = "RACKLINE_CNI_BIN_DIR",
        default_value = "/host/opt/cni/bin"
    )]
    cni_bin_dir: PathBuf,
    /// The host's CNI configuration directory, as mounted in this container.
    #[arg(
        long,
        env = "RACKLINE_CNI_CONF_DIR",
        default_value = "/host/etc/cni/net.d"
    )]
    cni_conf_dir: PathBuf,
    /// The conflist to install (default: the one built into the binary,
    /// conf/10-rackline.conflist).
    #[arg(long, env = "RACKLINE_CONFLIST")]
    conflist: Option<PathBuf>,
    /// Its file name in the configuration directory.
    #[arg(long, env = "RACKLINE_CONFLIST_NAME", default_value = DEFAULT_CONFLIST_NAME)]
    conflist_name: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (conflist, origin) = match &args.conflist {
        None => (DEFAULT_CONFLIST.to_string(), "built-in".to_string()),
        Some(p) => match std::fs::read_to_string(p) {
            Ok(t) => (t, p.display().to_string()),
            Err(e) => {
                eprintln!("rackline-install: {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
        },
    };
    let plan = Plan {
        plugin: args.plugin,
        bin_dir: args.cni_bin_dir,
        conf_dir: args.cni_conf_dir,
        conflist,
        conflist_origin: origin,
        conflist_name: args.conflist_name,
    };
    match install::run(&plan) {
        Ok(outcomes) => {
            for o in outcomes {
                println!("rackline-install: {o}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("rackline-install: {e}");
            ExitCode::FAILURE
        }
    }
}
