//! Secrets never reach a log line. URLs may carry `user:password@`
//! (operators paste etcd URLs that way); tokens and passwords are read from
//! files into [`Secret`], whose `Debug` and `Display` print a placeholder.

use std::fmt;

/// `scheme://user:pass@host/…` → `scheme://***@host/…`; anything without
/// userinfo is returned unchanged. Query strings are cut (they may carry
/// tokens too).
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***@{}", &authority[at + 1..]),
        None => authority.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => format!("{}?***", &tail[..q]),
        None => tail.to_string(),
    };
    match scheme {
        Some(s) => format!("{s}://{authority}{tail}"),
        None => format!("{authority}{tail}"),
    }
}

/// Every URL of a list, redacted, comma-joined (for one log field).
pub fn redact_urls<S: AsRef<str>>(urls: &[S]) -> String {
    urls.iter()
        .map(|u| redact_url(u.as_ref()))
        .collect::<Vec<_>>()
        .join(",")
}

/// A credential held in memory. Never printed; compared and hashed only
/// through [`Secret::expose`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    /// Reads a secret file: the whole content without surrounding
    /// whitespace (a trailing newline is what `echo` and editors leave).
    pub fn from_file(path: &std::path::Path) -> std::io::Result<Self> {
        let s = std::fs::read_to_string(path)?;
        let s = s.trim();
        if s.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Hex SHA-256 of a token, the form netmaster's auth file stores.
pub fn sha256_hex(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_queries_are_redacted() {
        assert_eq!(
            redact_url("https://root:s3cret@10.0.0.2:2379"),
            "https://***@10.0.0.2:2379"
        );
        assert_eq!(redact_url("http://10.0.0.2:2379"), "http://10.0.0.2:2379");
        assert_eq!(redact_url("user:pw@host:1/x"), "***@host:1/x");
        assert_eq!(redact_url("https://h:1/p?token=abc"), "https://h:1/p?***");
        assert_eq!(
            redact_urls(&["http://a:b@h:1", "http://h:2"]),
            "http://***@h:1,http://h:2"
        );
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
