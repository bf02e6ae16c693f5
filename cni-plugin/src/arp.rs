//! ARP on an `AF_PACKET` socket: RFC 5227 probes, gratuitous announcements,
//! and spotting another host that answers for an address.
//!
//! The socket is `SOCK_DGRAM` with protocol `ETH_P_ARP`: the kernel adds and
//! strips the Ethernet header (source = the device's MAC), so we only build
//! and parse the 28-byte ARP body. A packet socket belongs to the network
//! namespace it was created in, so it is opened once on the thread that
//! opens the pod's netlink socket (see `datapath::open_pod_sockets`) and then
//! used from the plugin's own thread without any further `setns`.
//!
//! Why not a crate: `pnet`'s datalink layer opens its own sockets by
//! interface name in the caller's namespace and pulls a large dependency
//! tree; `nix` has no constructor for `sockaddr_ll` to send with. What we
//! need is four syscalls, written here with `libc` and `// SAFETY:` notes.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

pub const BROADCAST: [u8; 6] = [0xff; 6];
const ARP_LEN: usize = 28;
const OP_REQUEST: u16 = 1;
const OP_REPLY: u16 = 2;
const HTYPE_ETHERNET: u16 = 1;
const PTYPE_IPV4: u16 = 0x0800;

/// The fields of an Ethernet/IPv4 ARP packet we act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    pub op: u16,
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_mac: [u8; 6],
    pub target_ip: Ipv4Addr,
}

impl Arp {
    /// RFC 5227 §2.1.1 probe: "who has `ip`?" with sender IP 0.0.0.0, so no
    /// peer's cache learns anything from it (the address is not ours yet).
    pub fn probe(mac: [u8; 6], ip: Ipv4Addr) -> Self {
        Self {
            op: OP_REQUEST,
            sender_mac: mac,
            sender_ip: Ipv4Addr::UNSPECIFIED,
            target_mac: [0; 6],
            target_ip: ip,
        }
    }

    /// RFC 5227 §2.3 announcement (gratuitous ARP): a request with sender
    /// IP = target IP = `ip`. Linux peers holding an entry for `ip` take the
    /// new MAC at once (`arp_process`: `is_garp` overrides the lock time).
    pub fn announcement(mac: [u8; 6], ip: Ipv4Addr) -> Self {
        Self {
            op: OP_REQUEST,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: [0; 6],
            target_ip: ip,
        }
    }

    pub fn to_bytes(&self) -> [u8; ARP_LEN] {
        let mut b = [0u8; ARP_LEN];
        b[0..2].copy_from_slice(&HTYPE_ETHERNET.to_be_bytes());
        b[2..4].copy_from_slice(&PTYPE_IPV4.to_be_bytes());
        b[4] = 6;
        b[5] = 4;
        b[6..8].copy_from_slice(&self.op.to_be_bytes());
        b[8..14].copy_from_slice(&self.sender_mac);
        b[14..18].copy_from_slice(&self.sender_ip.octets());
        b[18..24].copy_from_slice(&self.target_mac);
        b[24..28].copy_from_slice(&self.target_ip.octets());
        b
    }

    /// None for anything that is not Ethernet/IPv4 ARP (trailing padding
    /// from short frames is ignored).
    pub fn parse(b: &[u8]) -> Option<Self> {
        if b.len() < ARP_LEN
            || u16::from_be_bytes([b[0], b[1]]) != HTYPE_ETHERNET
            || u16::from_be_bytes([b[2], b[3]]) != PTYPE_IPV4
            || b[4] != 6
            || b[5] != 4
        {
            return None;
        }
        let mac = |i: usize| -> [u8; 6] { b[i..i + 6].try_into().expect("6 bytes") };
        let ip = |i: usize| Ipv4Addr::new(b[i], b[i + 1], b[i + 2], b[i + 3]);
        let op = u16::from_be_bytes([b[6], b[7]]);
        if op != OP_REQUEST && op != OP_REPLY {
            return None;
        }
        Some(Self {
            op,
            sender_mac: mac(8),
            sender_ip: ip(14),
            target_mac: mac(18),
            target_ip: ip(24),
        })
    }

    /// The MAC of another host claiming `candidate` while we probe for it
    /// (RFC 5227 §2.1.1): any ARP whose sender IP is the candidate (its
    /// owner answering our probe, or announcing), or another host's probe
    /// for the same address (two pods racing for it). Our own frames, and
    /// frames about other addresses, are not conflicts.
    pub fn conflict_for(&self, candidate: Ipv4Addr, ours: [u8; 6]) -> Option<[u8; 6]> {
        if self.sender_mac == ours {
            return None;
        }
        let claims = self.sender_ip == candidate;
        let races =
            self.op == OP_REQUEST && self.sender_ip.is_unspecified() && self.target_ip == candidate;
        (claims || races).then_some(self.sender_mac)
    }
}

/// `PACKET_OUTGOING`: a copy of a frame this host sent.
const PACKET_OUTGOING: u8 = 4;

/// An `AF_PACKET`/`SOCK_DGRAM` socket for ARP in the namespace it was
/// opened in.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
}

fn ll_addr(ifindex: u32, dest: [u8; 6]) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
    sa.sll_family = libc::AF_PACKET as u16;
    sa.sll_protocol = (libc::ETH_P_ARP as u16).to_be();
    sa.sll_ifindex = ifindex as i32;
    sa.sll_halen = 6;
    sa.sll_addr[..6].copy_from_slice(&dest);
    sa
}

impl ArpSocket {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        // SAFETY: plain syscall with constant arguments; the result is
        // checked before it is used as a descriptor.
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
        // SAFETY: `fd` is a fresh descriptor we own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd })
    }

    /// Receives only ARP arriving on `ifindex` from now on, then drops what
    /// was queued before (frames from other interfaces of the namespace).
    pub fn bind(&self, ifindex: u32) -> io::Result<()> {
        let sa = ll_addr(ifindex, [0; 6]);
        // SAFETY: `sa` is a valid sockaddr_ll that outlives the call, and
        // the length passed is its size.
        let r = unsafe {
            libc::bind(
                self.fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = [0u8; 64];
        while self.recv(&mut buf)?.is_some() {}
        Ok(())
    }

    /// Sends one ARP body out of `ifindex` to `dest`.
    pub fn send(&self, ifindex: u32, dest: [u8; 6], arp: &Arp) -> io::Result<()> {
        let body = arp.to_bytes();
        let sa = ll_addr(ifindex, dest);
        // SAFETY: `body` and `sa` are valid for the whole call and the
        // lengths passed are theirs.
        let r = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                body.as_ptr().cast(),
                body.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// One queued frame that was received (not sent) by this host: its
    /// length, or None when nothing is queued.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data; all-zero is valid.
            let mut sa: libc::sockaddr_ll = unsafe { zeroed() };
            let mut len = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: `buf`, `sa` and `len` are valid for the call; the
            // kernel writes at most `buf.len()` bytes and `len` bytes of
            // address.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sa as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            if sa.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            return Ok(Some(n as usize));
        }
    }

    /// Waits until `deadline` for a frame claiming `candidate` from a MAC
    /// other than `ours`; returns that MAC.
    pub fn watch_until(
        &self,
        deadline: Instant,
        candidate: Ipv4Addr,
        ours: [u8; 6],
    ) -> io::Result<Option<[u8; 6]>> {
        let mut buf = [0u8; 64];
        loop {
            while let Some(n) = self.recv(&mut buf)? {
                if let Some(mac) =
                    Arp::parse(&buf[..n]).and_then(|a| a.conflict_for(candidate, ours))
                {
                    return Ok(Some(mac));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            self.wait_readable(deadline - now)?;
        }
    }

    fn wait_readable(&self, timeout: Duration) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // Round up: a 0 ms poll for a sub-millisecond rest would spin.
        let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, count 1, for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OURS: [u8; 6] = [0x0a, 0x58, 10, 10, 0, 70];
    const OTHER: [u8; 6] = [0x02, 0, 0, 0, 0, 9];
    const IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 70);

    #[test]
    fn probe_has_zero_sender_ip_and_round_trips() {
        let b = Arp::probe(OURS, IP).to_bytes();
        assert_eq!(
            b,
            [
                0, 1, 8, 0, 6, 4, 0, 1, // ethernet, ipv4, request
                0x0a, 0x58, 10, 10, 0, 70, 0, 0, 0, 0, // sha, spa 0.0.0.0
                0, 0, 0, 0, 0, 0, 10, 10, 0, 70, // tha 0, tpa
            ]
        );
        assert_eq!(Arp::parse(&b), Some(Arp::probe(OURS, IP)));
    }

    #[test]
    fn announcement_has_sender_equal_target() {
        let a = Arp::announcement(OURS, IP);
        let b = a.to_bytes();
        assert_eq!(&b[14..18], &IP.octets());
        assert_eq!(&b[24..28], &IP.octets());
        assert_eq!(&b[6..8], &[0, 1], "a request (RFC 5227 prefers it)");
        // Padding of a minimum-size Ethernet frame is ignored.
        let mut padded = b.to_vec();
        padded.extend_from_slice(&[0; 18]);
        assert_eq!(Arp::parse(&padded), Some(a));
    }

    #[test]
    fn parse_rejects_what_is_not_ethernet_ipv4_arp() {
        let good = Arp::probe(OURS, IP).to_bytes();
        assert!(Arp::parse(&good[..27]).is_none());
        for (i, v) in [(1, 6u8), (3, 0xdd), (4, 8), (5, 16), (7, 9)] {
            let mut b = good;
            b[i] = v;
            assert!(Arp::parse(&b).is_none(), "byte {i} = {v}");
        }
    }

    #[test]
    fn replies_and_claims_for_the_candidate_are_conflicts() {
        // The owner answers our probe (Linux: a reply to sender IP 0).
        let reply = Arp {
            op: OP_REPLY,
            sender_mac: OTHER,
            sender_ip: IP,
            target_mac: OURS,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert_eq!(reply.conflict_for(IP, OURS), Some(OTHER));
        // The owner announces it, or asks for someone with it as sender.
        assert_eq!(
            Arp::announcement(OTHER, IP).conflict_for(IP, OURS),
            Some(OTHER)
        );
        let asks = Arp {
            target_ip: Ipv4Addr::new(10, 10, 0, 1),
            ..Arp::announcement(OTHER, IP)
        };
        assert_eq!(asks.conflict_for(IP, OURS), Some(OTHER));
        // Another host probing for the same address at the same time.
        assert_eq!(Arp::probe(OTHER, IP).conflict_for(IP, OURS), Some(OTHER));
    }

    #[test]
    fn our_own_frames_and_other_addresses_are_not_conflicts() {
        assert_eq!(Arp::probe(OURS, IP).conflict_for(IP, OURS), None);
        assert_eq!(Arp::announcement(OURS, IP).conflict_for(IP, OURS), None);
        let elsewhere = Ipv4Addr::new(10, 10, 0, 71);
        assert_eq!(
            Arp::announcement(OTHER, elsewhere).conflict_for(IP, OURS),
            None
        );
        assert_eq!(Arp::probe(OTHER, elsewhere).conflict_for(IP, OURS), None);
        // Someone asking for the candidate with a real sender address is
        // only looking for it (e.g. the TOR refreshing its cache).
        let asks = Arp {
            sender_ip: Ipv4Addr::new(10, 10, 0, 1),
            ..Arp::probe(OTHER, IP)
        };
        assert_eq!(asks.conflict_for(IP, OURS), None);
    }
}
