//! `racklinectl events`: the IP event stream, one line per event, flushed
//! as it comes (a human line, or NDJSON with `-o json` for pipes).

use std::io::Write;

use clap::Args;
use rackline_admin_client::{AdminClient, ClientError};
use rackline_proto::admin::v1 as pb;
use serde::Serialize;

use super::CtlError;

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start at this etcd revision (inclusive; an event's `revision`).
    /// Default: with --follow the next change, else the oldest revision
    /// etcd still keeps.
    #[arg(long, value_name = "REV", value_parser = clap::value_parser!(i64).range(1..))]
    pub since: Option<i64>,
}

/// One event in JSON (camelCase, like the webhook payload's events).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventJson<'a> {
    revision: i64,
    index: u32,
    kind: &'a str,
    time_unix_ms: i64,
    network: &'a str,
    rack: &'a str,
    node: &'a str,
    address: &'a str,
    mac: &'a str,
    pod: PodJson<'a>,
    container_id: &'a str,
    ifname: &'a str,
    sticky: bool,
    reason: &'a str,
    conflict_mac: &'a str,
    quarantined: bool,
    expires_unix_ms: i64,
}

#[derive(Debug, Serialize)]
struct PodJson<'a> {
    namespace: &'a str,
    name: &'a str,
    uid: &'a str,
}

impl<'a> From<&'a pb::LeaseEvent> for EventJson<'a> {
    fn from(e: &'a pb::LeaseEvent) -> Self {
        let pod = e.pod.as_ref();
        EventJson {
            revision: e.revision,
            index: e.index,
            kind: &e.kind,
            time_unix_ms: e.time_unix_ms,
            network: &e.network,
            rack: &e.rack,
            node: &e.node,
            address: &e.address,
            mac: &e.mac,
            pod: PodJson {
                namespace: pod.map_or("", |p| p.namespace.as_str()),
                name: pod.map_or("", |p| p.name.as_str()),
                uid: pod.map_or("", |p| p.uid.as_str()),
            },
            container_id: &e.container_id,
            ifname: &e.ifname,
            sticky: e.sticky,
            reason: &e.reason,
            conflict_mac: &e.conflict_mac,
            quarantined: e.quarantined,
            expires_unix_ms: e.expires_unix_ms,
        }
    }
}

/// `2026-12-02T10:04:05.123Z` (UTC) from ms since the epoch.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let (year, month, day) = rackline_security::tls::civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The human line of one event.
pub fn line(e: &pb::LeaseEvent) -> String {
    let pod = e
        .pod
        .as_ref()
        .filter(|p| !p.name.is_empty())
        .map(|p| {
            if p.namespace.is_empty() {
                p.name.clone()
            } else {
                format!("{}/{}", p.namespace, p.name)
            }
        })
        .unwrap_or_else(|| "-".into());
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut detail = Vec::new();
    if !e.container_id.is_empty() {
        let short: String = e.container_id.chars().take(12).collect();
        detail.push(format!("container={short}"));
    }
    if !e.reason.is_empty() {
        detail.push(format!("reason={}", e.reason));
    }
    if !e.conflict_mac.is_empty() {
        detail.push(format!("in-use-by={}", e.conflict_mac));
        detail.push(if e.quarantined { "quarantined" } else { "kept" }.into());
    }
    if e.expires_unix_ms > 0 {
        detail.push(format!("until={}", rfc3339(e.expires_unix_ms)));
    }
    format!(
        "{:<8} {} {:<13} {:<10} {:<8} {:<10} {:<15} {:<24} {}",
        e.revision,
        rfc3339(e.time_unix_ms),
        e.kind,
        e.network,
        or_dash(&e.rack),
        or_dash(&e.node),
        e.address,
        pod,
        detail.join(" ")
    )
    .trim_end()
    .to_string()
}

/// A followed stream never ends by itself: the server went away. `last`:
/// the last revision printed, where to resume.
fn ended(last: Option<i64>) -> CtlError {
    let resume = last.map_or(String::new(), |r| {
        format!(" after revision {r}; resume with --since {}", r + 1)
    });
    CtlError::Client(ClientError::Rpc(tonic::Status::unavailable(format!(
        "the event stream ended{resume}"
    ))))
}

/// A stream that broke after it started (the netmaster went away: h2 and
/// transport errors surface as Unknown/Internal) is "unreachable", exit 3;
/// only the server's own refusals keep their code. The message says where
/// to pick up: nothing before it is lost.
fn broke(s: tonic::Status, last: Option<i64>) -> CtlError {
    let s = match s.code() {
        tonic::Code::Unknown
        | tonic::Code::Internal
        | tonic::Code::Cancelled
        | tonic::Code::DeadlineExceeded => {
            tonic::Status::unavailable(format!("event stream broke: {}", s.message()))
        }
        _ => s,
    };
    let msg = match last {
        Some(r) if s.code() != tonic::Code::OutOfRange => format!(
            "{} (the stream ended after revision {r}; resume with --since {})",
            s.message(),
            r + 1
        ),
        _ => s.message().to_string(),
    };
    CtlError::Client(ClientError::Rpc(tonic::Status::new(s.code(), msg)))
}

pub async fn run(
    args: EventsArgs,
    client: &mut AdminClient,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let mut stream = client
        .watch_events(args.since.unwrap_or(0), args.follow)
        .await?;
    let mut last: Option<i64> = None;
    loop {
        let reply = match stream.message().await {
            Ok(Some(r)) => r,
            // A followed stream never ends by itself: the server went away.
            Ok(None) if args.follow => return Err(ended(last)),
            Ok(None) => break,
            Err(s) => return Err(broke(s, last)),
        };
        for e in &reply.events {
            if json {
                let j =
                    serde_json::to_string(&EventJson::from(e)).map_err(std::io::Error::other)?;
                writeln!(out, "{j}")?;
            } else {
                writeln!(out, "{}", line(e))?;
            }
        }
        last = Some(reply.revision);
        out.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: CtlError) -> tonic::Status {
        match e {
            CtlError::Client(ClientError::Rpc(s)) => s,
            other => panic!("not an RPC error: {other:?}"),
        }
    }

    #[test]
    fn a_broken_stream_is_unreachable_and_says_where_to_resume() {
        let s = status(broke(tonic::Status::unknown("h2 protocol error"), Some(41)));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.message(),
            "event stream broke: h2 protocol error (the stream ended after revision 41; resume with --since 42)"
        );
        // The server's own refusal keeps its code; a compacted start has no resume point.
        let s = status(broke(tonic::Status::out_of_range("compacted"), Some(41)));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::OutOfRange, "compacted")
        );
        let s = status(broke(tonic::Status::permission_denied("no"), None));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::PermissionDenied, "no")
        );
        let s = status(ended(Some(7)));
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(
            s.message(),
            "the event stream ended after revision 7; resume with --since 8"
        );
        assert_eq!(status(ended(None)).message(), "the event stream ended");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }

    #[test]
    fn a_line_and_a_json_object_per_event() {
        let e = pb::LeaseEvent {
            revision: 812,
            index: 0,
            kind: "conflict".into(),
            time_unix_ms: 1_795_000_000_123,
            network: "prod".into(),
            rack: "rack1".into(),
            node: "n1".into(),
            address: "10.10.0.70".into(),
            mac: "0a:58:0a:0a:00:46".into(),
            pod: Some(pb::PodRef {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: "u".into(),
            }),
            container_id: "3f1c0123456789abcdef".into(),
            ifname: "eth0".into(),
            sticky: false,
            reason: String::new(),
            conflict_mac: "02:00:00:00:00:09".into(),
            quarantined: true,
            expires_unix_ms: 0,
        };
        let l = line(&e);
        assert!(
            l.starts_with("812      2026-11-18T11:06:40.123Z conflict"),
            "{l}"
        );
        assert!(
            l.contains("shop/web-0") && l.contains("container=3f1c01234567"),
            "{l}"
        );
        assert!(
            l.ends_with("in-use-by=02:00:00:00:00:09 quarantined"),
            "{l}"
        );
        let j = serde_json::to_value(EventJson::from(&e)).unwrap();
        assert_eq!(j["kind"], "conflict");
        assert_eq!(j["pod"]["name"], "web-0");
        assert_eq!(j["conflictMac"], "02:00:00:00:00:09");
        assert_eq!(j["quarantined"], true);
    }
}
