//! The `rackline` CNI plugin (CNI spec 1.1.0). Synchronous: it runs once per
//! runtime call and must start fast; the only async part is the ipamd client,
//! on a current-thread runtime.

pub mod arp;
pub mod commands;
pub mod conf;
pub mod datapath;
pub mod env;
pub mod error;
pub mod ipam;
pub mod names;
pub mod probe;
pub mod qos;
pub mod result;
pub mod timing;
pub mod vlan;

use std::collections::HashMap;
use std::io::Write;

use serde_json::Value;
use tracing::error;

use crate::conf::{sniff_version, NetConf};
use crate::env::{CniEnv, Command};
use crate::error::CniError;

/// Runs one invocation; returns the process exit code. stdout carries only
/// the protocol (result or error JSON); logs go to stderr or `logFile`.
pub fn run(vars: &HashMap<String, String>, stdin: &[u8], stdout: &mut dyn Write) -> i32 {
    let started = std::time::Instant::now();
    let code = answer(vars, stdin, stdout);
    // After the answer is out: the next ipamd call on this node reports it.
    if let Some(cmd) = vars.get("CNI_COMMAND") {
        timing::record(cmd, started.elapsed(), code == 0);
    }
    code
}

fn answer(vars: &HashMap<String, String>, stdin: &[u8], stdout: &mut dyn Write) -> i32 {
    let version = sniff_version(stdin);
    match dispatch(vars, stdin) {
        Ok(Some(v)) => {
            let _ = writeln!(stdout, "{v}");
            0
        }
        Ok(None) => 0,
        Err(e) => {
            // The runtime shows stderr; a log file (if configured) gets the
            // same line inside the invocation's span.
            if LOG_TO_FILE.load(std::sync::atomic::Ordering::Relaxed) {
                error!(code = e.code, "{e}");
            }
            eprintln!("rackline: {e}");
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            1
        }
    }
}

fn dispatch(vars: &HashMap<String, String>, stdin: &[u8]) -> Result<Option<Value>, CniError> {
    let env = CniEnv::from_map(vars)?;
    if env.command == Command::Version {
        return Ok(Some(commands::version(&sniff_version(stdin))));
    }
    let conf = NetConf::parse(stdin)?;
    init_logging(&conf);
    timing::init(&conf.vlan.runtime_dir);
    let span = tracing::info_span!(
        "cni",
        cmd = ?env.command,
        container = %env.container_id,
        ifname = %env.ifname,
        netns = %env.netns,
        network = %conf.network,
    );
    let _entered = span.enter();
    match env.command {
        Command::Add => commands::add(&env, &conf).map(Some),
        Command::Del => commands::del(&env, &conf).map(|()| None),
        Command::Check => commands::check(&env, &conf).map(|()| None),
        Command::Gc => commands::gc(&conf).map(|()| None),
        Command::Status => commands::status(&conf).map(|()| None),
        Command::Version => unreachable!("handled above"),
    }
}

static LOG_TO_FILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn init_logging(conf: &NetConf) {
    let filter = tracing_subscriber::EnvFilter::try_new(&conf.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let _ = match &conf.log_file {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => {
                LOG_TO_FILE.store(true, std::sync::atomic::Ordering::Relaxed);
                builder.with_writer(std::sync::Mutex::new(f)).try_init()
            }
            Err(e) => {
                eprintln!(
                    "rackline: cannot open log file {}: {e}; logging to stderr",
                    path.display()
                );
                builder.with_writer(std::io::stderr).try_init()
            }
        },
        None => builder.with_writer(std::io::stderr).try_init(),
    };
}
