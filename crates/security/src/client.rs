//! The client side of netmaster's admin API (racklinectl, ipamd): the URL
//! scheme decides (`https://` = TLS, `http://` = plaintext, anything else
//! is an error), a CA bundle verifies netmaster, a client certificate or a
//! bearer token authenticates us.

use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::tls::{self, IdentityFiles};
use crate::Secret;

/// Credential files as given; `flags` names them in error messages
/// (`--ca-file` for racklinectl, `--netmaster-ca-file` for ipamd).
#[derive(Debug, Clone, Default)]
pub struct ClientCredentials {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
}

/// Flag names for messages.
#[derive(Debug, Clone, Copy)]
pub struct FlagNames {
    pub ca: &'static str,
    pub cert: &'static str,
    pub key: &'static str,
    pub token: &'static str,
}

/// Loaded credentials, ready to open channels.
#[derive(Clone, Default)]
pub struct ClientAuth {
    tls: Option<ClientTlsConfig>,
    has_identity: bool,
    token: Option<Secret>,
    flags: Option<FlagNames>,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("tls", &self.tls.is_some())
            .field("client_certificate", &self.has_identity)
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl ClientCredentials {
    pub fn load(&self, flags: FlagNames) -> Result<ClientAuth, String> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(format!("{} and {} go together", flags.cert, flags.key));
        }
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(
                IdentityFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                }
                .load()
                .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        if let Some(id) = &identity {
            if let Some(p) = id.leaf.validity_problem(std::time::SystemTime::now()) {
                return Err(format!(
                    "client certificate {} ({}) {p}",
                    self.cert_file
                        .as_deref()
                        .unwrap_or(std::path::Path::new(""))
                        .display(),
                    flags.cert
                ));
            }
        }
        let tls = match &self.ca_file {
            Some(ca) => {
                let pem = tls::load_ca_pem(ca).map_err(|e| e.to_string())?;
                let mut t = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
                if let Some(id) = &identity {
                    t = t.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
                }
                Some(t)
            }
            None if identity.is_some() => {
                return Err(format!(
                    "{} needs {} (the CA that signed netmaster's certificate)",
                    flags.cert, flags.ca
                ))
            }
            None => None,
        };
        let token = self.load_token(flags)?;
        Ok(ClientAuth {
            tls,
            has_identity: identity.is_some(),
            token,
            flags: Some(flags),
        })
    }
}

impl ClientCredentials {
    /// The bearer token, checked to fit an HTTP header.
    fn load_token(&self, flags: FlagNames) -> Result<Option<Secret>, String> {
        let token = self
            .token_file
            .as_deref()
            .map(|p| {
                Secret::from_file(p).map_err(|e| {
                    format!(
                        "cannot read the token file {} ({}): {e}",
                        p.display(),
                        flags.token
                    )
                })
            })
            .transpose()?;
        if let Some(t) = &token {
            if MetadataValue::<Ascii>::try_from(format!("Bearer {}", t.expose())).is_err() {
                return Err(format!(
                    "the token in {} holds characters a header cannot carry",
                    flags.token
                ));
            }
        }
        Ok(token)
    }
}

fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|a| a.is_loopback())
}

impl ClientAuth {
    /// No TLS, no token (plaintext to a loopback netmaster).
    pub fn none() -> Self {
        Self::default()
    }

    /// An endpoint for `url`, by its scheme. Refuses `http://` with a
    /// client certificate, and a token over `http://` to anything but a
    /// loopback address.
    pub fn endpoint(&self, url: &str) -> Result<Endpoint, String> {
        let flags = self.flag_names();
        let (scheme, rest) = url.split_once("://").ok_or_else(|| {
            format!("{url:?} has no scheme: write https://HOST:PORT (TLS) or http://HOST:PORT")
        })?;
        let host = rest
            .split('/')
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default();
        let host = match host.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        };
        let endpoint = Endpoint::from_shared(url.to_string()).map_err(|e| e.to_string())?;
        match scheme {
            "https" => {
                let tls = self.tls.clone().ok_or_else(|| {
                    format!(
                        "{url} is https:// but no CA bundle is given ({}): the CA that signed netmaster's certificate",
                        flags.ca
                    )
                })?;
                endpoint.tls_config(tls).map_err(|e| e.to_string())
            }
            "http" => {
                if self.has_identity {
                    return Err(format!(
                        "{url} is plaintext http:// but a client certificate is given: use https://"
                    ));
                }
                if self.token.is_some() && !is_loopback_host(host) {
                    return Err(format!(
                        "refusing to send a token in plaintext to {url}: use https://"
                    ));
                }
                Ok(endpoint)
            }
            other => Err(format!(
                "unknown scheme {other:?} in {url}: use https:// (TLS) or http:// (plaintext)"
            )),
        }
    }

    /// The flags these credentials were loaded from, for messages that
    /// tell the operator which one to fix (racklinectl's when none were).
    pub fn flag_names(&self) -> FlagNames {
        self.flags.unwrap_or(FlagNames {
            ca: "--ca-file",
            cert: "--cert-file",
            key: "--key-file",
            token: "--token-file",
        })
    }

    /// Adds the bearer token (if any) to every request.
    pub fn interceptor(&self) -> TokenInterceptor {
        TokenInterceptor(
            self.token.as_ref().and_then(|t| {
                MetadataValue::<Ascii>::try_from(format!("Bearer {}", t.expose())).ok()
            }),
        )
    }
}

/// Sets `authorization: Bearer <token>`; never printed.
#[derive(Clone, Default)]
pub struct TokenInterceptor(Option<MetadataValue<Ascii>>);

impl std::fmt::Debug for TokenInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenInterceptor(***)")
    }
}

impl tonic::service::Interceptor for TokenInterceptor {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_decide() {
        let none = ClientAuth::none();
        assert!(none.endpoint("http://10.0.0.2:7650").is_ok());
        let e = none.endpoint("ftp://10.0.0.2:7650").unwrap_err();
        assert!(e.contains("unknown scheme \"ftp\""), "{e}");
        let e = none.endpoint("https://10.0.0.2:7650").unwrap_err();
        assert!(e.contains("no CA bundle"), "{e}");
        let e = none.endpoint("10.0.0.2:7650").unwrap_err();
        assert!(e.contains("no scheme"), "{e}");
        let with_token = ClientAuth {
            token: Some(Secret::new("s3cret")),
            ..Default::default()
        };
        let e = with_token.endpoint("http://10.0.0.2:7650").unwrap_err();
        assert!(e.contains("refusing to send a token"), "{e}");
        assert!(!e.contains("s3cret"));
        assert!(with_token.endpoint("http://127.0.0.1:7650").is_ok());
        assert!(with_token.endpoint("http://[::1]:7650").is_ok());
        assert!(!format!("{with_token:?} {:?}", with_token.interceptor()).contains("s3cret"));
    }
}
