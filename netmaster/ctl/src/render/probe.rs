//! How the duplicate-address probe shows: a network's probe
//! settings and the conflict (quarantine) records it leaves.

use rackline_proto::admin::v1 as pb;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeJson {
    pub count: u32,
    pub interval_ms: u32,
    pub quarantine_secs: u64,
}

impl From<&pb::Probe> for ProbeJson {
    fn from(p: &pb::Probe) -> Self {
        Self {
            count: p.count,
            interval_ms: p.interval_ms,
            quarantine_secs: p.quarantine_secs,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConflictJson {
    /// The MAC that answered for the address.
    pub mac: String,
    /// The attachment whose probe found it.
    pub container_id: String,
    pub ifname: String,
    pub detected_unix_ms: i64,
    pub quarantine_secs: u64,
}

impl From<&pb::LeaseConflict> for ConflictJson {
    fn from(c: &pb::LeaseConflict) -> Self {
        Self {
            mac: c.mac.clone(),
            container_id: c.container_id.clone(),
            ifname: c.ifname.clone(),
            detected_unix_ms: c.detected_unix_ms,
            quarantine_secs: c.quarantine_secs,
        }
    }
}

pub(super) fn probe_cell(p: Option<&pb::Probe>) -> String {
    match p {
        None => "off".into(),
        Some(p) => format!(
            "{} x {} ms, quarantine {} s",
            p.count, p.interval_ms, p.quarantine_secs
        ),
    }
}

/// The POD cell of a quarantine record: what answered, and for whom.
pub(super) fn conflict_cell(l: &pb::Lease, c: &pb::LeaseConflict) -> String {
    let pod = l.pod.as_ref().map(|p| p.name.as_str()).unwrap_or_default();
    if pod.is_empty() {
        format!("(conflict: in use by {})", c.mac)
    } else {
        format!("(conflict: in use by {}; found by {pod})", c.mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_say_off_or_the_settings_and_name_the_mac() {
        assert_eq!(probe_cell(None), "off");
        let p = pb::Probe {
            count: 3,
            interval_ms: 100,
            quarantine_secs: 600,
        };
        assert_eq!(probe_cell(Some(&p)), "3 x 100 ms, quarantine 600 s");
        let c = pb::LeaseConflict {
            mac: "02:00:00:00:00:09".into(),
            ..Default::default()
        };
        let l = pb::Lease {
            pod: Some(pb::PodRef {
                name: "web-0".into(),
                ..Default::default()
            }),
            state: "conflict".into(),
            conflict: Some(c.clone()),
            ..Default::default()
        };
        assert_eq!(
            conflict_cell(&l, &c),
            "(conflict: in use by 02:00:00:00:00:09; found by web-0)"
        );
        let json = serde_json::to_value(ConflictJson::from(&c)).unwrap();
        assert_eq!(json["mac"], "02:00:00:00:00:09");
        assert_eq!(json["detectedUnixMs"], 0);
    }
}
