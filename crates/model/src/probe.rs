//! Duplicate-address probe settings of a network: RFC 5227 ARP
//! probes sent by the plugin before the leased address is configured.
//! Off unless a network sets them (`NetworkSpec::probe`), because the
//! probe costs `count × interval` of every ADD.

use serde::{Deserialize, Serialize};

use crate::ValidationError;

pub const DEFAULT_PROBE_COUNT: u32 = 3;
pub const DEFAULT_PROBE_INTERVAL_MS: u32 = 100;
pub const DEFAULT_QUARANTINE_SECS: u64 = 600;
/// A probe that costs more than ~300 ms per ADD is felt (Spiderpool's
/// conflict and gateway probes add ~1 s); 10 × 1000 ms is the hard ceiling
/// we accept.
pub const PROBE_COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=10;
pub const PROBE_INTERVAL_MS_RANGE: std::ops::RangeInclusive<u32> = 10..=1000;
/// etcd lease TTLs are whole seconds; a day is far more than any operator
/// wants an address held out of the pool.
pub const QUARANTINE_SECS_RANGE: std::ops::RangeInclusive<u64> = 1..=86_400;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
// Unknown keys are tolerated like everywhere in stored network records, so
// an older ipamd reads what a newer netmaster wrote.
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// ARP probes per candidate address.
    #[serde(default = "default_count")]
    pub count: u32,
    /// Time between probes; the probe listens for `count × interval_ms`.
    #[serde(default = "default_interval")]
    pub interval_ms: u32,
    /// How long an address found in use stays out of the pool (an etcd
    /// lease TTL on the conflict record).
    #[serde(default = "default_quarantine")]
    pub quarantine_secs: u64,
}

fn default_count() -> u32 {
    DEFAULT_PROBE_COUNT
}
fn default_interval() -> u32 {
    DEFAULT_PROBE_INTERVAL_MS
}
fn default_quarantine() -> u64 {
    DEFAULT_QUARANTINE_SECS
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            count: DEFAULT_PROBE_COUNT,
            interval_ms: DEFAULT_PROBE_INTERVAL_MS,
            quarantine_secs: DEFAULT_QUARANTINE_SECS,
        }
    }
}

impl ProbeSpec {
    pub fn validate(&self) -> Result<(), ValidationError> {
        let bad = |why: String| Err(ValidationError::Probe(why));
        if !PROBE_COUNT_RANGE.contains(&self.count) {
            return bad(format!("count {} is outside 1-10", self.count));
        }
        if !PROBE_INTERVAL_MS_RANGE.contains(&self.interval_ms) {
            return bad(format!(
                "interval {} ms is outside 10-1000",
                self.interval_ms
            ));
        }
        if !QUARANTINE_SECS_RANGE.contains(&self.quarantine_secs) {
            return bad(format!(
                "quarantine {} s is outside 1-86400",
                self.quarantine_secs
            ));
        }
        Ok(())
    }

    /// The longest a probe delays an ADD: `count × interval`.
    pub fn budget(&self) -> std::time::Duration {
        std::time::Duration::from_millis(u64::from(self.count) * u64::from(self.interval_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_three_probes_100ms_apart_and_600s_quarantine() {
        let p: ProbeSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(p, ProbeSpec::default());
        assert_eq!((p.count, p.interval_ms, p.quarantine_secs), (3, 100, 600));
        assert_eq!(p.budget(), std::time::Duration::from_millis(300));
        p.validate().unwrap();
        let j = serde_json::to_string(&p).unwrap();
        assert_eq!(j, r#"{"count":3,"intervalMs":100,"quarantineSecs":600}"#);
    }

    #[test]
    fn out_of_range_values_are_refused() {
        for (p, want) in [
            (
                ProbeSpec {
                    count: 0,
                    ..Default::default()
                },
                "count 0",
            ),
            (
                ProbeSpec {
                    count: 11,
                    ..Default::default()
                },
                "count 11",
            ),
            (
                ProbeSpec {
                    interval_ms: 9,
                    ..Default::default()
                },
                "interval 9",
            ),
            (
                ProbeSpec {
                    interval_ms: 1001,
                    ..Default::default()
                },
                "interval 1001",
            ),
            (
                ProbeSpec {
                    quarantine_secs: 0,
                    ..Default::default()
                },
                "quarantine 0",
            ),
        ] {
            let e = p.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should mention {want:?}");
        }
    }
}
