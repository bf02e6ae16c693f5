//! `racklinectl network create` flags of the duplicate-address probe.
//! The ranges are checked here too, because 0 on the wire means
//! "the default" and an explicit `--probe-count 0` must not silently
//! become 3; the server validates again.

use clap::Args;
use rackline_proto::admin::v1 as pb;

#[derive(Debug, Clone, Default, Args)]
pub struct ProbeArgs {
    /// ARP-probe each address before configuring it (RFC 5227; default
    /// 3 probes 100 ms apart, 600 s quarantine for an address found in use).
    #[arg(long)]
    pub probe: bool,
    /// Probes per address, 1-10 (implies --probe).
    #[arg(long = "probe-count", value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10))]
    pub count: Option<u32>,
    /// Milliseconds between probes, 10-1000 (implies --probe).
    #[arg(long = "probe-interval-ms", value_name = "N", value_parser = clap::value_parser!(u32).range(10..=1000))]
    pub interval_ms: Option<u32>,
    /// Seconds an address found in use stays out of the pool (implies --probe).
    #[arg(long = "probe-quarantine-secs", value_name = "N", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub quarantine_secs: Option<u64>,
}

impl ProbeArgs {
    /// None = probe off; an unset field goes out as 0 ("the default").
    pub fn to_proto(&self) -> Option<pb::Probe> {
        let any = self.probe
            || self.count.is_some()
            || self.interval_ms.is_some()
            || self.quarantine_secs.is_some();
        any.then(|| pb::Probe {
            count: self.count.unwrap_or(0),
            interval_ms: self.interval_ms.unwrap_or(0),
            quarantine_secs: self.quarantine_secs.unwrap_or(0),
        })
    }
}
