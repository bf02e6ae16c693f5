//! Helpers shared by the observability lab tests (metrics.rs, events.rs).

#![allow(dead_code)] // each test file uses a different part

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rackline_lab::{Cmd, Lab, Pod};
use rackline_telemetry::exposition::{self, Exposition};
use serde_json::json;

pub fn parse(text: &str, who: &str) -> Result<Exposition> {
    let e = exposition::parse(text).map_err(|e| anyhow::anyhow!("{who} /metrics: {e}\n{text}"))?;
    e.check_conventions()
        .map_err(|e| anyhow::anyhow!("{who} /metrics: {e}"))?;
    Ok(e)
}

pub fn ipamd(lab: &Lab, k: usize) -> Result<Exposition> {
    parse(&lab.ipamd_metrics(k)?, &format!("ipamd {k}"))
}

pub fn netmaster(lab: &Lab, i: usize) -> Result<Exposition> {
    parse(&lab.netmaster_metrics(i)?, &format!("netmaster {i}"))
}

/// A counter's value (0 when the series does not exist yet).
pub fn count(e: &Exposition, name: &str, labels: &[(&str, &str)]) -> f64 {
    e.sum(name, labels)
}

pub fn add_on(lab: &Lab, pod: &Pod, network: &str) -> Result<rackline_lab::CniOutput> {
    lab.cni(Cmd::Add, pod).set("network", json!(network)).run()
}

pub fn del_on(lab: &Lab, pod: &Pod, network: &str) -> Result<()> {
    lab.cni(Cmd::Del, pod)
        .set("network", json!(network))
        .run()?
        .ok()
        .map(drop)
}

pub fn poll<T>(
    within: Duration,
    what: &str,
    mut f: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = Some(e),
        }
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?} (last error: {last:?})");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
