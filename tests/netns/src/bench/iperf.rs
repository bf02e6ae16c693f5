//! One iperf3 TCP measurement between two namespaces (shared by the
//! throughput and QoS benchmarks and the QoS lab test).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::exec::{run_timed, Background, Invocation};
use crate::Netns;

/// One iperf3 run: receiver throughput and the sender's retransmits.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    pub gbps: f64,
    pub retransmits: u64,
}

impl Rate {
    pub fn mbps(&self) -> f64 {
        self.gbps * 1000.0
    }
}

/// `iperf3 -c <addr> -t <seconds> [-O <omit>] -J` from `from` to a one-shot
/// `iperf3 -s -1 -B <addr>` in `to`; the receiver's rate over the measured
/// (not omitted) seconds. `omit` skips TCP slow start and, for a shaped
/// pod, the initial burst of a full token bucket.
pub fn iperf3(
    from: &Netns,
    to: &Netns,
    addr: Ipv4Addr,
    seconds: u32,
    omit: u32,
    log: &Path,
) -> Result<Rate> {
    let a = addr.to_string();
    let server = Background::spawn(
        "iperf3 server",
        "iperf3",
        &["-s", "-1", "-B", &a],
        &to.path(),
        log,
    )?;
    let mut args: Vec<String> = ["-c", &a, "-t", &seconds.to_string(), "-J"]
        .map(str::to_owned)
        .to_vec();
    if omit > 0 {
        args.extend(["-O".to_owned(), omit.to_string()]);
    }
    let client = Invocation {
        program: "iperf3".into(),
        args,
        env: Vec::new(),
        stdin: Vec::new(),
        netns: from.path(),
    };
    // The server needs a moment to listen: retry while the connection is refused (iperf3 -J
    // reports that in its JSON `error`, with exit code 0 or 1 depending on the failure point).
    let mut attempt = 0;
    let doc = loop {
        let out = run_timed(&client, Duration::from_secs(u64::from(seconds + omit) + 30))?;
        let doc = out.json();
        let error = match &doc {
            Some(d) => d["error"].as_str().map(str::to_owned),
            None => Some(format!("no JSON output (exit {})", out.code)),
        };
        let Some(error) = error.or_else(|| (!out.success()).then(|| format!("exit {}", out.code)))
        else {
            break doc.unwrap_or_default();
        };
        attempt += 1;
        if !error.contains("Connection refused") || attempt >= 50 {
            bail!("iperf3 -c {a} from {}: {error}", from.name());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = server.finish(Duration::from_secs(5));
    let bps = doc["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .with_context(|| format!("no end.sum_received in iperf3 output: {doc}"))?;
    Ok(Rate {
        gbps: bps / 1e9,
        retransmits: doc["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
    })
}
