//! The `rackline` CNI plugin (CNI spec 1.1.0). Synchronous: it runs once per
//! runtime call and must start fast; the only async part is the ipamd client,
//! on a current-thread runtime.
//!
//! Everything the runtime hands over — the environment (as `OsString`),
//! stdin, CNI_ARGS — crosses ONE boundary, [`request::parse`], into typed
//! values; nothing past it sees raw strings. [`run`] takes the raw
//! [`Invocation`], so tests and fuzzers drive the whole plugin in-process.

pub mod arp;
pub mod commands;
pub mod conf;
pub mod datapath;
pub mod dataplane;
pub mod env;
pub mod error;
#[cfg(any(test, feature = "test-support"))]
pub mod fake_ipamd;
pub mod fsutil;
pub mod ipam;
pub mod links;
pub mod names;
pub mod owner;
pub mod podside;
pub mod probe;
pub mod qos;
pub mod request;
pub mod result;
pub mod routes;
pub mod spool;
pub mod stdin;
pub mod steps;
pub mod teardown;
pub mod timing;
pub mod verify;
pub mod vlan;

#[cfg(test)]
mod attach_tests;
#[cfg(test)]
mod datapath_tests;
#[cfg(test)]
mod run_tests;

use std::ffi::OsString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;
use tracing::error;

use crate::conf::{sniff_version, NetConf};
use crate::dataplane::Datapath;
use crate::env::CniEnv;
use crate::error::CniError;
use crate::request::Request;

/// What the runtime handed the plugin, untouched: the whole environment and
/// stdin.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Vec<u8>,
    /// Why stdin could not be read completely (not closed in time, too
    /// large); the verbs that need it fail with code 6.
    pub stdin_problem: Option<String>,
}

/// Runs one invocation; returns the process exit code. stdout carries only
/// the protocol (result or error JSON); logs go to stderr or `logFile`.
pub fn run(inv: &Invocation, stdout: &mut dyn Write) -> i32 {
    run_with(inv, stdout, &mut dataplane::Kernel::default())
}

/// [`run`] over the datapath `dp` (a fake one in tests).
pub fn run_with(inv: &Invocation, stdout: &mut dyn Write, dp: &mut dyn Datapath) -> i32 {
    let started = std::time::Instant::now();
    let steps_sink = steps::sink(&inv.env);
    let code = answer(inv, stdout, steps_sink.is_some(), dp);
    // After the answer is out: the next ipamd call on this node reports it.
    let command = inv
        .env
        .iter()
        .find(|(k, _)| k == "CNI_COMMAND")
        .and_then(|(_, v)| v.to_str());
    if let Some(cmd) = command {
        let t = steps::now_ns();
        timing::record(cmd, started.elapsed(), code == 0);
        steps::record("timing_record", t, steps::now_ns());
        if let Some(path) = steps_sink {
            steps::flush(&path, cmd);
        }
    }
    code
}

fn answer(
    inv: &Invocation,
    stdout: &mut dyn Write,
    with_steps: bool,
    dp: &mut dyn Datapath,
) -> i32 {
    let version = sniff_version(&inv.stdin);
    match dispatch(inv, with_steps, dp) {
        Ok(Some(v)) => {
            let t = steps::now_ns();
            let _ = writeln!(stdout, "{v}");
            steps::record("result_write", t, steps::now_ns());
            0
        }
        Ok(None) => 0,
        Err(e) => {
            // The runtime shows stderr; a log file (if configured) gets the
            // same line inside the invocation's span.
            if LOG_TO_FILE.load(Ordering::Relaxed) {
                error!(code = e.code(), "{e}");
            }
            eprintln!("rackline: {e}");
            let _ = writeln!(stdout, "{}", e.to_json(&version));
            1
        }
    }
}

fn dispatch(
    inv: &Invocation,
    with_steps: bool,
    dp: &mut dyn Datapath,
) -> Result<Option<Value>, CniError> {
    let t = steps::now_ns();
    let (env, conf) = match request::parse(inv)? {
        Request::Version(requested) => return Ok(Some(commands::version(&requested))),
        Request::Verb(v) => *v,
    };
    let t2 = steps::now_ns();
    steps::record("parse", t, t2);
    init_logging(&conf, with_steps);
    timing::init(&conf.vlan.runtime_dir);
    steps::record("log_init", t2, steps::now_ns());
    let span = span_for(&env, &conf);
    let _entered = span.enter();
    match &env {
        CniEnv::Add(p) => commands::add(p, &conf, dp).map(Some),
        CniEnv::Del(d) => commands::del(d, &conf, dp).map(|()| None),
        CniEnv::Check(p) => commands::check(p, &conf, dp).map(|()| None),
        CniEnv::Gc => commands::gc(&conf).map(|()| None),
        CniEnv::Status => commands::status(&conf).map(|()| None),
        CniEnv::Version => unreachable!("answered by request::parse"),
    }
}

fn span_for(env: &CniEnv, conf: &NetConf) -> tracing::Span {
    let (container, ifname, netns) = match env {
        CniEnv::Add(p) | CniEnv::Check(p) => (
            p.attachment.container_id.to_string(),
            p.attachment.ifname.to_string(),
            p.netns.display().to_string(),
        ),
        CniEnv::Del(d) => match &d.attachment {
            Ok(a) => (
                a.container_id.to_string(),
                a.ifname.to_string(),
                d.netns
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            Err(_) => Default::default(),
        },
        _ => Default::default(),
    };
    tracing::info_span!(
        "cni",
        cmd = ?env.command(),
        container = %container,
        ifname = %ifname,
        netns = %netns,
        network = %conf.network,
    )
}

static LOG_TO_FILE: AtomicBool = AtomicBool::new(false);

fn init_logging(conf: &NetConf, with_steps: bool) {
    use tracing_subscriber::fmt::writer::BoxMakeWriter;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = tracing_subscriber::EnvFilter::try_new(&conf.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let writer = match &conf.log_file {
        Some(path) => {
            // Never a blocking open: a FIFO (or a device, a directory) named
            // as the log file is refused, and the plugin logs to stderr.
            use std::os::unix::fs::OpenOptionsExt;
            let opened = fsutil::open_regular(
                path,
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600),
                true,
            );
            match opened {
                Ok(f) => {
                    LOG_TO_FILE.store(true, Ordering::Relaxed);
                    BoxMakeWriter::new(std::sync::Mutex::new(f))
                }
                Err(e) => {
                    eprintln!(
                        "rackline: cannot use log file {}: {e}; logging to stderr",
                        path.display()
                    );
                    BoxMakeWriter::new(std::io::stderr)
                }
            }
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    // The log's filter applies to the log only: the step spans (DEBUG) reach
    // the step recorder whatever logLevel says, and only when it is on.
    let log = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(writer)
        .with_filter(filter);
    let registry = tracing_subscriber::registry().with(log);
    let _ = if with_steps {
        let only_steps = tracing_subscriber::filter::filter_fn(|m| m.target() == steps::TARGET);
        registry
            .with(steps::StepLayer.with_filter(only_steps))
            .try_init()
    } else {
        registry.try_init()
    };
}
