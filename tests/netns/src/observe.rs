//! Observability in the lab: every daemon serves `/metrics`, `/healthz` and `/readyz`
//! (`--metrics-listen`): ipamd of node `k` on `<node address>:9641` inside the node, netmaster
//! replica `i` on `<ctrl>:<9642 + i - 1>` inside `ctrl`. [`Lab::http_get`] scrapes them from
//! inside a namespace; [`WebhookReceiver`] is a small HTTP server in `ctrl` that records what
//! netmaster's webhook sink POSTs.
//!
//! Sockets are opened inside a namespace by a short-lived thread that enters it (`setns`) and
//! exits: the socket stays in that namespace, the test process itself never changes namespace.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rackline_testkit::http;
use serde_json::Value;

use crate::lab::Lab;
use crate::netns::Netns;

/// ipamd's metrics port (the conventional one).
pub const IPAMD_METRICS_PORT: u16 = 9641;
/// netmaster replica 1's metrics port; replica `i` uses `+ i - 1`.
pub const NETMASTER_METRICS_PORT: u16 = 9642;
/// Deadline of one scrape.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `f` on a fresh thread that entered `ns` (network namespace only) and returns its result.
fn in_netns<T: Send + 'static>(
    ns: &Netns,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let fd = ns.open()?;
    std::thread::spawn(move || {
        // SAFETY: setns(2) on an fd we own; it changes only this thread, which exits after `f`.
        if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns: {}", std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the netns thread panicked"))?
}

/// An HTTP answer: status code and body.
#[derive(Debug, Clone)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

fn get(addr: SocketAddr, path: &str) -> Result<HttpReply> {
    let mut s = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(HTTP_TIMEOUT))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("reading GET {path} from {addr}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no HTTP answer from {addr}: {text:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status line from {addr}: {head:?}"))?;
    Ok(HttpReply {
        status,
        body: body.to_owned(),
    })
}

impl Lab {
    /// Where node `k`'s ipamd serves its metrics (inside the node).
    pub fn ipamd_metrics_addr(&self, k: usize) -> SocketAddr {
        SocketAddr::from((self.node(k).address(), IPAMD_METRICS_PORT))
    }

    /// Where netmaster replica `i` serves its metrics (inside `ctrl`).
    pub fn netmaster_metrics_addr(&self, i: usize) -> SocketAddr {
        let port = NETMASTER_METRICS_PORT + u16::try_from(i - 1).expect("replica index fits");
        SocketAddr::from((self.ctrl_addr(), port))
    }

    /// `GET path` on `addr` from inside `ns`.
    pub fn http_get(
        &self,
        ns: &impl AsRef<Netns>,
        addr: SocketAddr,
        path: &str,
    ) -> Result<HttpReply> {
        let path = path.to_owned();
        in_netns(ns.as_ref(), move || get(addr, &path))
    }

    /// Node `k`'s ipamd `GET path` (`/metrics`, `/healthz`, `/readyz`).
    pub fn ipamd_http(&self, k: usize, path: &str) -> Result<HttpReply> {
        self.http_get(self.node(k), self.ipamd_metrics_addr(k), path)
    }

    /// netmaster replica `i`'s `GET path`.
    pub fn netmaster_http(&self, i: usize, path: &str) -> Result<HttpReply> {
        self.http_get(self.ctrl(), self.netmaster_metrics_addr(i), path)
    }

    /// A [`WebhookReceiver`] listening on `<ctrl>:<port>` inside `ctrl` (port 0: any).
    pub fn webhook_receiver(&self) -> Result<WebhookReceiver> {
        let addr = SocketAddr::from((self.ctrl_addr(), 0));
        let listener = in_netns(self.ctrl(), move || {
            TcpListener::bind(addr).with_context(|| format!("binding {addr}"))
        })?;
        WebhookReceiver::start(listener)
    }
}

/// One POST the receiver got.
#[derive(Debug, Clone)]
pub struct WebhookPost {
    pub path: String,
    pub body: Value,
    /// The status it answered.
    pub status: u16,
}

/// A tiny HTTP/1.1 server recording every POST's JSON body, answering 200 (or the status set
/// with [`WebhookReceiver::answer`]). One request per connection (`Connection: close`). Its
/// thread is stopped and joined on drop.
pub struct WebhookReceiver {
    addr: SocketAddr,
    posts: Arc<Mutex<Vec<WebhookPost>>>,
    status: Arc<AtomicU16>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// The socket to wake the accept loop with on drop (same namespace).
    listener: Arc<TcpListener>,
}

impl WebhookReceiver {
    fn start(listener: TcpListener) -> Result<Self> {
        let addr = listener.local_addr()?;
        let listener = Arc::new(listener);
        let posts = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (listener, posts, status, stop) = (
                listener.clone(),
                posts.clone(),
                status.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(mut s) = conn else { continue };
                    let _ = s.set_read_timeout(Some(HTTP_TIMEOUT));
                    let Some(http::Request { path, body, .. }) = http::read_request(&mut s) else {
                        continue;
                    };
                    let code = status.load(Ordering::SeqCst);
                    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    posts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(WebhookPost {
                            path,
                            body,
                            status: code,
                        });
                    let _ = write!(
                        s,
                        "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                    let _ = s.shutdown(Shutdown::Both);
                }
            })
        };
        Ok(Self {
            addr,
            posts,
            status,
            stop,
            thread: Some(thread),
            listener,
        })
    }

    /// `http://<addr>/<path>`: what netmaster's `--webhook-url` should say.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Answer every following POST with `status` (e.g. 503 to make the sink retry).
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn posts(&self) -> Vec<WebhookPost> {
        self.posts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Every event of every POST answered 2xx, in arrival order (duplicates kept).
    pub fn events(&self) -> Vec<Value> {
        self.posts()
            .into_iter()
            .filter(|p| (200..300).contains(&p.status))
            .flat_map(|p| p.body["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Polls until `done(events)` holds; fails after `within`.
    pub fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        loop {
            let ev = self.events();
            if done(&ev) {
                return Ok(ev);
            }
            if Instant::now() >= deadline {
                bail!(
                    "the webhook receiver did not get the expected events within {within:?}; got {} post(s): {:?}",
                    self.posts().len(),
                    self.posts().iter().map(|p| p.body.to_string()).collect::<Vec<_>>()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop: a connection from inside the listener's namespace is not
        // possible from here, so shut the listening socket down instead.
        // SAFETY: shutdown(2) on a listening socket we own; accept() then fails and the loop ends.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Lab {
    /// A [`WebhookReceiver`] on `<ctrl>:<port>` inside `ctrl`: a port chosen before the lab
    /// is built can go into netmaster's `--webhook-url` (the sink retries until it listens).
    pub fn webhook_receiver_on(&self, port: u16) -> Result<WebhookReceiver> {
        let addr = SocketAddr::from((self.ctrl_addr(), port));
        let listener = in_netns(self.ctrl(), move || {
            TcpListener::bind(addr).with_context(|| format!("binding {addr}"))
        })?;
        WebhookReceiver::start(listener)
    }

    /// `/metrics` of node `k`'s ipamd (an error unless it answers 200).
    pub fn ipamd_metrics(&self, k: usize) -> Result<String> {
        let r = self.ipamd_http(k, "/metrics")?;
        anyhow::ensure!(
            r.status == 200,
            "ipamd /metrics answered {}: {}",
            r.status,
            r.body
        );
        Ok(r.body)
    }

    /// `/metrics` of netmaster replica `i` (an error unless it answers 200).
    pub fn netmaster_metrics(&self, i: usize) -> Result<String> {
        let r = self.netmaster_http(i, "/metrics")?;
        anyhow::ensure!(
            r.status == 200,
            "netmaster /metrics answered {}: {}",
            r.status,
            r.body
        );
        Ok(r.body)
    }

    /// etcd's current revision (the header of a read).
    pub fn etcd_revision(&self) -> Result<i64> {
        let out = self
            .etcdctl(&[
                "get",
                "--limit",
                "1",
                "/rackline-lab-revision-probe",
                "-w",
                "json",
            ])?
            .check()?;
        let doc: Value = serde_json::from_str(&out.stdout)
            .with_context(|| format!("etcdctl printed no JSON: {:?}", out.stdout))?;
        doc["header"]["revision"]
            .as_i64()
            .with_context(|| format!("no header revision in {doc}"))
    }

    /// Starts `racklinectl --server <server> events --follow --since <since> -o json` inside
    /// `ctrl`, its output going to a log file ([`EventFollower::events`] reads it).
    pub fn follow_events(&self, server: &str, since: i64) -> Result<EventFollower> {
        let mut cmd = std::process::Command::new(&self.bins()?.racklinectl);
        cmd.env_clear()
            .env("PATH", crate::process::CHILD_PATH)
            .args(["--server", server]);
        if let Some(p) = &self.pki {
            cmd.arg("--config").arg(&p.ctl_config);
        }
        cmd.args(["-o", "json", "events", "--follow"])
            .args(["--since", &since.to_string()]);
        let n = {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            N.fetch_add(1, Ordering::Relaxed)
        };
        let label = format!("events-follower-{n}");
        let daemon =
            crate::process::Daemon::spawn(&label, cmd, self.ctrl(), &self.log_path(&label))?;
        Ok(EventFollower { daemon })
    }
}

/// A running `racklinectl events --follow -o json` ([`Lab::follow_events`]).
pub struct EventFollower {
    daemon: crate::process::Daemon,
}

impl EventFollower {
    /// Every event printed so far (NDJSON lines of its output), in order.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read(self.daemon.log())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        text.lines()
            .filter(|l| l.starts_with('{'))
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Its whole output (events and error lines).
    pub fn output(&self) -> String {
        crate::process::tail(self.daemon.log(), 10_000)
    }

    /// Polls until `done(events)` holds; fails after `within` with the output.
    pub fn wait_for(
        &self,
        within: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        let deadline = Instant::now() + within;
        loop {
            let ev = self.events();
            if done(&ev) {
                return Ok(ev);
            }
            if Instant::now() >= deadline {
                bail!(
                    "events follower: condition not met within {within:?}; output:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its exit status once it exited (a follower only exits when its stream breaks).
    pub fn exited(&mut self) -> Result<Option<std::process::ExitStatus>> {
        self.daemon.exited()
    }
}
