//! The leader redirect. A follower refuses a write with
//! `FAILED_PRECONDITION`, and names the leader's `host:port` twice: in the
//! [`LEADER_METADATA`] metadata entry (what clients read), and in the
//! message text (for the operator, and what replicas before the metadata
//! entry existed send, which clients still understand).
//!
//! The server builds the refusal with [`not_leader`] only; clients read it
//! with [`leader_of`] only, so the format lives in this one file.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// gRPC metadata key (trailer of the refusal) holding the leader's
/// advertise address, `host:port`.
pub const LEADER_METADATA: &str = "x-rackline-leader";

/// The text that precedes the leader's address in the refusal's message.
pub const LEADER_TEXT: &str = "not the leader; leader is ";

/// The message naming `leader`, as a follower words it.
pub fn not_leader_message(leader: &str) -> String {
    format!("{LEADER_TEXT}{leader}")
}

/// A follower's refusal: `message` (which names the leader in text, see
/// [`not_leader_message`]) with the leader's address in metadata too.
pub fn not_leader(message: String, leader: &str) -> Status {
    let mut s = Status::failed_precondition(message);
    // An address that is not a valid header value (it never is one: host and
    // port are ASCII) still goes out in the text.
    if let Ok(v) = MetadataValue::try_from(leader) {
        s.metadata_mut().insert(LEADER_METADATA, v);
    }
    s
}

/// The leader's `host:port` a refusal names, if it is one: the metadata
/// entry when present, else the address in the message text (older
/// replicas). The address is returned as sent (it may carry a scheme).
pub fn leader_of(status: &Status) -> Option<String> {
    if status.code() != Code::FailedPrecondition {
        return None;
    }
    if let Some(v) = status.metadata().get(LEADER_METADATA) {
        if let Some(addr) = v.to_str().ok().map(str::trim).filter(|a| !a.is_empty()) {
            return Some(addr.to_string());
        }
    }
    leader_in_text(status.message()).map(str::to_string)
}

/// "… not the leader; leader is 10.0.0.3:7650" -> "10.0.0.3:7650". Sentence
/// punctuation after the address is not part of it.
fn leader_in_text(message: &str) -> Option<&str> {
    let rest = &message[message.find(LEADER_TEXT)? + LEADER_TEXT.len()..];
    let addr = rest
        .split_whitespace()
        .next()?
        .trim_end_matches(['.', ',', ';']);
    (!addr.is_empty()).then_some(addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_names_the_leader_in_metadata_and_text() {
        let s = not_leader(
            format!(
                "this netmaster may not write: {}",
                not_leader_message("10.0.0.3:7650")
            ),
            "10.0.0.3:7650",
        );
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(
            s.metadata()
                .get(LEADER_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("10.0.0.3:7650")
        );
        assert_eq!(
            s.message(),
            "this netmaster may not write: not the leader; leader is 10.0.0.3:7650"
        );
        assert_eq!(leader_of(&s).as_deref(), Some("10.0.0.3:7650"));
    }

    #[test]
    fn metadata_wins_over_the_text() {
        let mut s = Status::failed_precondition("not the leader; leader is old:1");
        s.metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("new:2"));
        assert_eq!(leader_of(&s).as_deref(), Some("new:2"));
        // An empty entry is no answer: the text is read instead.
        let mut s = Status::failed_precondition("not the leader; leader is old:1");
        s.metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static(""));
        assert_eq!(leader_of(&s).as_deref(), Some("old:1"));
    }

    #[test]
    fn older_replicas_text_is_still_understood() {
        let text = |m: &str| leader_of(&Status::failed_precondition(m.to_string()));
        assert_eq!(
            text("this netmaster may not write: not the leader; leader is 10.0.0.3:7650")
                .as_deref(),
            Some("10.0.0.3:7650")
        );
        assert_eq!(
            text("not the leader; leader is http://h:1.").as_deref(),
            Some("http://h:1")
        );
        assert_eq!(text("no leader elected yet"), None);
        assert_eq!(text("not the leader; leader is "), None);
    }

    #[test]
    fn only_a_failed_precondition_redirects() {
        // "No leader yet" and a lapsed leadership are Unavailable: retry
        // later, never a redirect, whatever the text says.
        let s = Status::unavailable("not the leader; leader is h:1");
        assert_eq!(leader_of(&s), None);
        let mut s = Status::unavailable("x");
        s.metadata_mut()
            .insert(LEADER_METADATA, MetadataValue::from_static("h:1"));
        assert_eq!(leader_of(&s), None);
    }
}
