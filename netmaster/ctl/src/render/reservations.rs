//! Output of `racklinectl reservation`.

use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use super::{age, table};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReservationJson {
    pub network: String,
    pub namespace: String,
    pub name: String,
    pub address: String,
    pub pinned: bool,
    pub rack: String,
    /// "active", "reserved" or "missing".
    pub state: String,
    pub node: String,
    pub container_id: String,
    pub expires_unix_ms: i64,
}

impl From<&pb::Reservation> for ReservationJson {
    fn from(r: &pb::Reservation) -> Self {
        Self {
            network: r.network.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
            address: r.address.clone(),
            pinned: r.pinned,
            rack: r.rack.clone(),
            state: r.state.clone(),
            node: r.node.clone(),
            container_id: r.container_id.clone(),
            expires_unix_ms: r.expires_unix_ms,
        }
    }
}

/// Time left until `at` (e.g. "29m"), "never" for pinned, "-" otherwise.
fn expires(r: &pb::Reservation, now_unix_ms: i64) -> String {
    if r.pinned {
        "never".into()
    } else if r.expires_unix_ms > 0 {
        // `age` measures from a past instant; mirror it for a future one.
        age(2 * now_unix_ms - r.expires_unix_ms, now_unix_ms)
    } else {
        "-".into()
    }
}

pub fn reservations_table(rs: &[pb::Reservation], now_unix_ms: i64) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let rows: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            vec![
                format!("{}/{}", r.namespace, r.name),
                r.address.clone(),
                r.network.clone(),
                dash(&r.rack),
                r.state.clone(),
                dash(&r.node),
                expires(r, now_unix_ms),
            ]
        })
        .collect();
    table(
        &[
            "POD",
            "ADDRESS",
            "NETWORK",
            "RACK",
            "STATE",
            "NODE",
            "EXPIRES IN",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_pins_and_time_left() {
        let now = 10_000_000;
        let r = |pinned, exp| pb::Reservation {
            network: "prod".into(),
            namespace: "db".into(),
            name: "pg-0".into(),
            address: "10.10.0.70".into(),
            pinned,
            rack: "r1".into(),
            state: "reserved".into(),
            node: "r1n1".into(),
            container_id: String::new(),
            expires_unix_ms: exp,
        };
        let t = reservations_table(&[r(true, 0), r(false, now + 90_000)], now);
        assert!(t.contains("never"), "{t}");
        assert!(t.contains("90s"), "{t}");
        assert!(t.contains("db/pg-0"), "{t}");
        assert_eq!(ReservationJson::from(&r(true, 0)).state, "reserved");
    }
}
