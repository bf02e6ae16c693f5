//! The gRPC channel to etcd: one connection at a time, to the first endpoint
//! that answers, in order from the last one that worked (failover).
//!
//! Why not etcd-client's own balanced channel: tonic's balancer reports a
//! refused connection to a dead member as the failure of the call that
//! picked it, so with one member of three down every other call failed.
//! Here the connector itself walks the endpoint list, and the channel
//! reconnects through it whenever its connection breaks.
//!
//! TLS is done here too (rustls with the ring provider, like kube's and
//! tonic's), per endpoint, so each member's certificate is checked against
//! the address used to reach it. After the handshake the connector waits for
//! etcd's first bytes (its HTTP/2 SETTINGS): with TLS 1.3 a server refuses
//! a client certificate only after the client considers the handshake done,
//! and this turns the refusal into a clear connect error ("received fatal
//! alert: BadCertificate") instead of a broken pipe on some later call.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// One etcd endpoint as parsed from its URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let (tls, rest) = match url.split_once("://") {
            Some(("https", r)) => (true, r),
            Some(("http", r)) => (false, r),
            Some((s, _)) => return Err(format!("unknown scheme {s:?}")),
            None => (false, url),
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or("unterminated [IPv6]")?;
            (h.to_string(), p.strip_prefix(':').unwrap_or(""))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (authority.to_string(), ""),
            }
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        let port = if port.is_empty() {
            2379
        } else {
            port.parse().map_err(|_| format!("invalid port {port:?}"))?
        };
        Ok(Self {
            url: url.to_string(),
            host,
            port,
            tls,
        })
    }
}

/// The TLS side of the connector.
pub(crate) fn client_config(
    ca: &[rustls::pki_types::CertificateDer<'static>],
    identity: Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
) -> Result<Arc<ClientConfig>, String> {
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| format!("etcd CA bundle: {e}"))?;
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
    let mut config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("etcd client certificate: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A tower connector over every endpoint, for tonic's
/// `connect_with_connector_lazy`.
#[derive(Clone)]
pub(crate) struct Failover {
    pub targets: Arc<Vec<Target>>,
    pub tls: Option<Arc<ClientConfig>>,
    /// Per endpoint.
    pub connect_timeout: Duration,
    /// Index of the endpoint that worked last.
    pub next: Arc<AtomicUsize>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<http::Uri> for Failover {
    type Response = hyper_util::rt::TokioIo<EtcdStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let n = this.targets.len();
            let start = this.next.load(Ordering::Relaxed) % n;
            let mut reasons = Vec::new();
            for i in 0..n {
                let idx = (start + i) % n;
                let t = &this.targets[idx];
                match connect_one(t, this.tls.as_ref(), this.connect_timeout).await {
                    Ok(s) => {
                        if idx != start {
                            tracing::info!(endpoint = %rackline_security::redact_url(&t.url), "etcd: failed over to this endpoint");
                        }
                        this.next.store(idx, Ordering::Relaxed);
                        return Ok(hyper_util::rt::TokioIo::new(s));
                    }
                    Err(e) => {
                        reasons.push(format!("{}: {e}", rackline_security::redact_url(&t.url)))
                    }
                }
            }
            Err(io::Error::new(io::ErrorKind::ConnectionRefused, reasons.join("; ")).into())
        })
    }
}

async fn connect_one(
    t: &Target,
    tls: Option<&Arc<ClientConfig>>,
    timeout: Duration,
) -> io::Result<EtcdStream> {
    let timed = |what: &str| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} timed out after {timeout:?}"),
        )
    };
    let tcp = tokio::time::timeout(timeout, TcpStream::connect((t.host.as_str(), t.port)))
        .await
        .map_err(|_| timed("TCP connect"))??;
    let _ = tcp.set_nodelay(true);
    if !t.tls {
        return Ok(EtcdStream::Plain(tcp));
    }
    let Some(config) = tls else {
        return Err(io::Error::other("https:// endpoint without TLS settings"));
    };
    let name = ServerName::try_from(t.host.clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", t.host)))?;
    let mut s = tokio::time::timeout(
        timeout,
        tokio_rustls::TlsConnector::from(config.clone()).connect(name, tcp),
    )
    .await
    .map_err(|_| timed("TLS handshake"))??;
    // The server speaks first in HTTP/2 (SETTINGS); a refusal of our
    // certificate arrives instead, as an alert (see the module docs).
    let mut first = vec![0u8; 64];
    let n = tokio::time::timeout(timeout, s.read(&mut first))
        .await
        .map_err(|_| timed("waiting for etcd after the TLS handshake"))??;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "etcd closed the connection right after the TLS handshake (certificate refused?)",
        ));
    }
    first.truncate(n);
    Ok(EtcdStream::Tls(Box::new(s), first))
}

/// A connection to etcd; with TLS, the bytes read while checking that
/// etcd accepted us come first.
pub(crate) enum EtcdStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>, Vec<u8>),
}

impl AsyncRead for EtcdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EtcdStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            EtcdStream::Tls(s, pending) => {
                if !pending.is_empty() {
                    let n = pending.len().min(buf.remaining());
                    buf.put_slice(&pending[..n]);
                    pending.drain(..n);
                    return Poll::Ready(Ok(()));
                }
                Pin::new(&mut **s).poll_read(cx, buf)
            }
        }
    }
}

impl AsyncWrite for EtcdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            EtcdStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            EtcdStream::Tls(s, _) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EtcdStream::Plain(s) => Pin::new(s).poll_flush(cx),
            EtcdStream::Tls(s, _) => Pin::new(&mut **s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            EtcdStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            EtcdStream::Tls(s, _) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let t = Target::parse("https://root:pw@10.0.0.2:2379").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.tls), ("10.0.0.2", 2379, true));
        let t = Target::parse("127.0.0.1:32379").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.tls),
            ("127.0.0.1", 32379, false)
        );
        let t = Target::parse("http://[::1]:1/x").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 1));
        assert_eq!(Target::parse("https://etcd.mgmt").unwrap().port, 2379);
        assert!(Target::parse("ftp://h:1").is_err());
        assert!(Target::parse("http://h:x").is_err());
    }
}
