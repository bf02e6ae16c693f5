//! Duplicate-address probe settings and conflict records between
//! the admin protocol and the model.

use rackline_model::{ConflictInfo, ProbeSpec, ValidationError};
use rackline_proto::admin::v1 as pb;

/// Absent = probe off. Zero fields take the defaults, so `--probe` alone
/// (an empty message) enables the probe with 3 × 100 ms and 600 s.
pub fn probe_from_proto(p: Option<&pb::Probe>) -> Result<Option<ProbeSpec>, ValidationError> {
    let Some(p) = p else { return Ok(None) };
    let d = ProbeSpec::default();
    let spec = ProbeSpec {
        count: if p.count == 0 { d.count } else { p.count },
        interval_ms: if p.interval_ms == 0 {
            d.interval_ms
        } else {
            p.interval_ms
        },
        quarantine_secs: if p.quarantine_secs == 0 {
            d.quarantine_secs
        } else {
            p.quarantine_secs
        },
    };
    spec.validate()?;
    Ok(Some(spec))
}

pub fn probe_to_proto(p: Option<&ProbeSpec>) -> Option<pb::Probe> {
    p.map(|p| pb::Probe {
        count: p.count,
        interval_ms: p.interval_ms,
        quarantine_secs: p.quarantine_secs,
    })
}

pub fn conflict_to_proto(c: Option<&ConflictInfo>) -> Option<pb::LeaseConflict> {
    c.map(|c| pb::LeaseConflict {
        mac: c.mac.clone(),
        container_id: c.container_id.clone(),
        ifname: c.ifname.clone(),
        detected_unix_ms: c.detected_unix_ms,
        quarantine_secs: c.quarantine_secs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_off_and_zeroes_take_defaults() {
        assert_eq!(probe_from_proto(None).unwrap(), None);
        let p = probe_from_proto(Some(&pb::Probe::default())).unwrap();
        assert_eq!(p, Some(ProbeSpec::default()));
        let p = probe_from_proto(Some(&pb::Probe {
            count: 2,
            interval_ms: 50,
            quarantine_secs: 5,
        }))
        .unwrap()
        .unwrap();
        assert_eq!((p.count, p.interval_ms, p.quarantine_secs), (2, 50, 5));
        assert_eq!(
            probe_to_proto(Some(&p)),
            Some(pb::Probe {
                count: 2,
                interval_ms: 50,
                quarantine_secs: 5
            })
        );
        let e = probe_from_proto(Some(&pb::Probe {
            count: 11,
            ..Default::default()
        }))
        .unwrap_err();
        assert!(e.to_string().contains("count 11"), "{e}");
    }
}
