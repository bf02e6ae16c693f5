//! Security plumbing shared by rackline-ipamd, rackline-netmaster and
//! racklinectl:
//!
//! - [`tls`]: certificates, keys and CA bundles from PEM files, checked up
//!   front and re-read when they change; failures explained by name;
//! - [`redact`]: secrets out of log lines (URL userinfo, tokens, passwords);
//! - [`listener`]: accept loops with connection limits, timeouts and
//!   SO_PEERCRED, for tonic's `serve_with_incoming`.

pub mod client;
pub mod listener;
pub mod redact;
pub mod tls;

pub use redact::{redact_url, redact_urls, sha256_hex, Secret};
