//! Plain hosts on a rack's L2 segment (a rogue squatting on addresses, a neighbour with an ARP
//! cache) and an ARP capture, for the duplicate-address probe tests.
//!
//! The capture is written here, independently of the plugin's own ARP code, so a test does not
//! trust the code it checks: an `AF_PACKET` socket opened by a thread that entered the
//! namespace (the socket stays in that namespace; the thread exits when the capture stops).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sched::{setns, CloneFlags};

use crate::cni::Cidr4;
use crate::lab::Lab;
use crate::netns::Netns;
use crate::topology::{ip_batch, BRIDGE};

/// The interface of a host made by [`Lab::add_host`].
pub const HOST_IF: &str = "eth0";

/// One ARP packet seen on the wire (Ethernet/IPv4 only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpFrame {
    /// 1 request, 2 reply.
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

impl ArpFrame {
    /// An RFC 5227 probe for `ip`: a request with sender IP 0.0.0.0.
    pub fn is_probe_for(&self, ip: Ipv4Addr) -> bool {
        self.op == 1 && self.sender_ip.is_unspecified() && self.target_ip == ip
    }

    /// A gratuitous announcement of `ip`: sender IP = target IP = `ip`.
    pub fn is_announcement_of(&self, ip: Ipv4Addr) -> bool {
        self.sender_ip == ip && self.target_ip == ip
    }

    fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < 28 || b[0..6] != [0, 1, 8, 0, 6, 4] {
            return None;
        }
        Some(Self {
            op: u16::from_be_bytes([b[6], b[7]]),
            sender_mac: b[8..14].try_into().ok()?,
            sender_ip: Ipv4Addr::new(b[14], b[15], b[16], b[17]),
            target_ip: Ipv4Addr::new(b[24], b[25], b[26], b[27]),
        })
    }
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// ARP received by every interface of one namespace, until [`ArpCapture::stop`].
pub struct ArpCapture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<io::Result<Vec<ArpFrame>>>>,
}

impl ArpCapture {
    /// Stops and returns every ARP frame the namespace received (in order).
    pub fn stop(mut self) -> Result<Vec<ArpFrame>> {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.take().context("capture already stopped")?;
        match t.join() {
            Ok(r) => r.context("ARP capture failed"),
            Err(_) => bail!("ARP capture thread panicked"),
        }
    }
}

impl Drop for ArpCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn open_packet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant arguments; checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            i32::from((libc::ETH_P_ARP as u16).to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn capture_loop(fd: &OwnedFd, stop: &AtomicBool) -> io::Result<Vec<ArpFrame>> {
    let mut frames = Vec::new();
    let mut buf = [0u8; 128];
    loop {
        // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
        let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: buffer, address and length are valid for the call.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut sa as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n >= 0 {
            // PACKET_OUTGOING (4): frames this namespace sent itself.
            if sa.sll_pkttype != 4 {
                if let Some(f) = ArpFrame::parse(&buf[..n as usize]) {
                    frames.push(f);
                }
            }
            continue;
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                // Checked only once the queue is drained: stop() loses nothing already received.
                if stop.load(Ordering::SeqCst) {
                    return Ok(frames);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return Err(e),
        }
    }
}

impl Lab {
    /// A plain host on rack 1's TOR bridge: namespace `<id>-<name>`, a veth port `h-<name>` on
    /// `br0`, interface [`HOST_IF`] carrying `addrs`, up. Deleted with the lab.
    pub fn add_host(&self, name: &str, addrs: &[Cidr4]) -> Result<Netns> {
        let port = format!("h-{name}");
        anyhow::ensure!(port.len() <= 15, "host name {name:?} too long");
        let ns = Netns::named(format!("{}-{name}", self.id()));
        self.create_netns(&ns)?;
        ip_batch(
            self.tools(),
            self.tor(),
            &[
                format!(
                    "link add {port} type veth peer name {HOST_IF} netns {}",
                    ns.name()
                ),
                format!("link set {port} master {BRIDGE}"),
                format!("link set {port} up"),
            ],
        )?;
        let mut lines = vec!["link set lo up".to_owned()];
        for a in addrs {
            lines.push(format!("addr add {a} dev {HOST_IF}"));
        }
        lines.push(format!("link set {HOST_IF} up"));
        ip_batch(self.tools(), &ns, &lines)?;
        Ok(ns)
    }

    /// The MAC of `ifname` in `ns`, as `ip -j link` shows it.
    pub fn mac_of(&self, ns: &impl AsRef<Netns>, ifname: &str) -> Result<String> {
        let link = self
            .link(ns, ifname)?
            .with_context(|| format!("no {ifname} in {}", ns.as_ref().name()))?;
        link["address"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{ifname} has no address: {link}"))
    }

    /// Runs `ip <args>` inside `ns` (fails on a non-zero exit).
    pub fn ip_in(&self, ns: &impl AsRef<Netns>, args: &[&str]) -> Result<()> {
        ip_batch(self.tools(), ns.as_ref(), &[args.join(" ")])
    }

    /// Starts capturing the ARP every interface of `ns` receives.
    pub fn capture_arp(&self, ns: &impl AsRef<Netns>) -> Result<ArpCapture> {
        let nsfd = ns.as_ref().open()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rackline-lab-arpcap".into())
            .spawn(move || -> io::Result<Vec<ArpFrame>> {
                // A dedicated thread that exits with the capture: nothing else ever runs in
                // the namespace it entered.
                let opened = setns(&nsfd, CloneFlags::CLONE_NEWNET)
                    .map_err(io::Error::from)
                    .and_then(|()| open_packet_socket());
                let fd = match opened {
                    Ok(fd) => {
                        let _ = ready_tx.send(Ok(()));
                        fd
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                capture_loop(&fd, &flag)
            })
            .context("spawning the ARP capture thread")?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(ArpCapture {
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => bail!("ARP capture in {}: {e}", ns.as_ref().name()),
            Err(_) => bail!("ARP capture thread died"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_and_classify() {
        let mut b = [0u8; 28];
        b[..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        b[8..14].copy_from_slice(&[0x0a, 0x58, 10, 10, 1, 10]);
        b[24..28].copy_from_slice(&[10, 10, 1, 10]);
        let f = ArpFrame::parse(&b).unwrap();
        let ip = Ipv4Addr::new(10, 10, 1, 10);
        assert!(f.is_probe_for(ip) && !f.is_announcement_of(ip));
        b[14..18].copy_from_slice(&[10, 10, 1, 10]);
        let f = ArpFrame::parse(&b).unwrap();
        assert!(!f.is_probe_for(ip) && f.is_announcement_of(ip));
        assert_eq!(format_mac(f.sender_mac), "0a:58:0a:0a:01:0a");
        assert!(ArpFrame::parse(&b[..20]).is_none());
    }
}
