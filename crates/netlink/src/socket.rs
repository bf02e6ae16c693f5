//! The synchronous rtnetlink transport: one `NETLINK_ROUTE` socket, one
//! request in flight at a time, replies matched by sequence number.
//!
//! Request flow: serialize with `NLM_F_REQUEST` (+`NLM_F_ACK` for "do"
//! requests), then read datagrams until the `NLMSG_ERROR` carrying our
//! sequence number (code 0 = ACK) or, for dumps, `NLMSG_DONE`. Messages with
//! another sequence number (late replies to an earlier request that failed
//! half-way) are skipped without being decoded.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NlasIterator, NLM_F_ACK,
    NLM_F_CAPPED, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::errno::Errno;

use crate::error::{NetlinkError, Result};
use crate::netns::{run_in_netns, Netns};

/// The kernel sizes dump skbs from the reader's recent `recvmsg` lengths but
/// caps them at 32 KiB (`netlink_dump()`, `max_recvmsg_len`), so 64 KiB holds
/// any datagram rtnetlink sends us. A truncated datagram is reported, never
/// silently parsed.
const RECV_BUF_LEN: usize = 64 * 1024;

/// A kernel that never answers would hang the CNI plugin; runtimes kill us
/// long before this, but a bounded wait turns a bug into an error.
const RECV_TIMEOUT: Duration = Duration::from_secs(30);

/// `NLM_F_DUMP_INTR` means the table changed during the dump; the result may
/// miss or duplicate entries, so the dump is repeated (iproute2 does the same).
const DUMP_ATTEMPTS: usize = 5;

/// `NLM_F_ACK_TLVS` on an `NLMSG_ERROR`: extended-ack attributes follow the
/// echoed request header. `NLMSGERR_ATTR_MSG` is the kernel's text reason.
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// A typed rtnetlink socket. The socket's network namespace is fixed when the
/// socket is created (`netlink_create()` takes `current->nsproxy->net_ns`),
/// so a handle made by [`Netlink::in_netns`] keeps acting in that namespace
/// from any thread, with no further `setns`.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Netlink {
    /// A socket in the calling thread's current network namespace.
    pub fn new() -> Result<Self> {
        Ok(Self::from_socket(open_socket()?))
    }

    /// A socket bound to `ns`, created on a short-lived dedicated thread that
    /// `setns()`s into `ns` and exits. The calling thread never changes
    /// namespace, so this is safe from async runtimes and thread pools.
    pub fn in_netns(ns: &Netns) -> Result<Self> {
        let socket = run_in_netns(ns, open_socket)??;
        Ok(Self::from_socket(socket))
    }

    fn from_socket(socket: Socket) -> Self {
        Self {
            socket,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF_LEN),
        }
    }

    /// Sends a "do" request (`NLM_F_REQUEST|NLM_F_ACK|extra_flags`) and
    /// returns the messages the kernel sent before its ACK (e.g. the
    /// `RTM_NEWLINK` answering an `RTM_GETLINK`).
    pub(crate) fn execute(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        extra_flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let flags = NLM_F_REQUEST | NLM_F_ACK | extra_flags;
        let (replies, _) = self.transact(op, target, msg, flags, false)?;
        Ok(replies)
    }

    /// Sends a dump request (`NLM_F_REQUEST|NLM_F_DUMP`) and returns every
    /// message up to `NLMSG_DONE`, repeating the dump when the kernel flags it
    /// as interrupted. No `NLM_F_ACK`: the kernel does not ACK a dump that
    /// started (`netlink_dump_start()` returns -EINTR, which skips the ACK).
    pub(crate) fn dump(
        &mut self,
        op: &'static str,
        msg: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        for attempt in 1..=DUMP_ATTEMPTS {
            let (replies, interrupted) =
                self.transact(op, "dump", msg.clone(), NLM_F_REQUEST | NLM_F_DUMP, true)?;
            if !interrupted {
                return Ok(replies);
            }
            tracing::debug!(op, attempt, "netlink dump interrupted, retrying");
        }
        Err(NetlinkError::kernel(op, "dump", Errno::EINTR))
    }

    fn transact(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
        dump: bool,
    ) -> Result<(Vec<RouteNetlinkMessage>, bool)> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let bytes = serialize(msg, flags, seq);
        send_all(&self.socket, &bytes)?;

        let mut collector = Collector::new(seq, dump);
        loop {
            let len = recv_datagram(&self.socket, &mut self.buf)?;
            match collector.feed(&self.buf[..len])? {
                Step::More => continue,
                Step::Finished => return Ok((collector.replies, collector.interrupted)),
                Step::Failed { errno, reason } => {
                    if let Some(reason) = reason {
                        // The extended ACK text ("VLAN id out of range", ...) is
                        // the kernel's own explanation; the errno stays the
                        // contract, the text goes to the log.
                        tracing::debug!(op, target, %errno, reason, "netlink request failed");
                    }
                    return Err(NetlinkError::kernel(op, target, errno));
                }
            }
        }
    }
}

fn open_socket() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    // Kernel-assigned port id: several handles may live in one process.
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // CAP_ACK: errors echo only our 16-byte header, not the whole request.
    // EXT_ACK: errors carry the kernel's text reason. Both are best effort
    // (absent before 4.2 / 4.12); replies are parsed correctly either way.
    let _ = socket.set_cap_ack(true);
    let _ = socket.set_ext_ack(true);
    let timeout = nix::sys::time::TimeVal::new(RECV_TIMEOUT.as_secs() as _, 0);
    nix::sys::socket::setsockopt(
        &socket.as_fd(),
        nix::sys::socket::sockopt::ReceiveTimeout,
        &timeout,
    )
    .map_err(io::Error::from)?;
    Ok(socket)
}

/// Frames one request. Pure, so tests can check the exact bytes.
pub(crate) fn serialize(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut bytes = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut bytes);
    bytes
}

fn send_all(socket: &Socket, bytes: &[u8]) -> Result<()> {
    loop {
        match socket.send(bytes, 0) {
            // Netlink datagrams are sent whole or not at all.
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NetlinkError::Io(e)),
        }
    }
}

fn recv_datagram(socket: &Socket, buf: &mut Vec<u8>) -> Result<usize> {
    loop {
        buf.clear();
        // MSG_TRUNC makes recv return the real datagram length, so a message
        // larger than the buffer is detected instead of parsed half.
        match socket.recv(buf, libc::MSG_TRUNC) {
            Ok(len) if len > buf.capacity() => {
                return Err(NetlinkError::Decode(format!(
                    "netlink datagram of {len} bytes exceeds the {} byte receive buffer",
                    buf.capacity()
                )))
            }
            Ok(len) => return Ok(len),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(NetlinkError::Io(e)),
        }
    }
}

/// What one datagram meant for the request in flight.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Keep reading: multi-part reply not finished yet.
    More,
    /// ACK received (do request) or `NLMSG_DONE` (dump).
    Finished,
    /// The kernel refused the request.
    Failed {
        errno: Errno,
        reason: Option<String>,
    },
}

/// Accumulates the replies to one request across datagrams. Pure: it never
/// touches the socket, so the reply state machine is unit-tested with
/// hand-built datagrams.
pub(crate) struct Collector {
    seq: u32,
    dump: bool,
    pub(crate) replies: Vec<RouteNetlinkMessage>,
    pub(crate) interrupted: bool,
}

impl Collector {
    pub(crate) fn new(seq: u32, dump: bool) -> Self {
        Self {
            seq,
            dump,
            replies: Vec::new(),
            interrupted: false,
        }
    }

    /// Walks every netlink message in one datagram (a dump packs many).
    pub(crate) fn feed(&mut self, datagram: &[u8]) -> Result<Step> {
        let mut offset = 0;
        while offset < datagram.len() {
            let rest = &datagram[offset..];
            let frame = NetlinkBuffer::new_checked(rest)
                .map_err(|e| NetlinkError::Decode(format!("netlink header: {e}")))?;
            let len = frame.length() as usize;
            // NLMSG_ALIGN: messages in a datagram start on 4-byte boundaries.
            offset += (len + 3) & !3;
            if frame.sequence_number() != self.seq {
                // A late answer to an earlier request (e.g. one whose caller
                // gave up on an error mid-dump). Not ours: skip undecoded.
                continue;
            }
            if frame.flags() & NLM_F_DUMP_INTR != 0 {
                self.interrupted = true;
            }
            let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&rest[..len])
                .map_err(|e| NetlinkError::Decode(e.to_string()))?;
            let flags = msg.header.flags;
            match msg.payload {
                NetlinkPayload::InnerMessage(inner) => self.replies.push(inner),
                NetlinkPayload::Error(err) => {
                    return Ok(match err.code {
                        None => Step::Finished,
                        Some(code) => Step::Failed {
                            errno: Errno::from_raw(-code.get()),
                            reason: ext_ack_reason(flags, &err.header),
                        },
                    });
                }
                NetlinkPayload::Done(done) if self.dump => {
                    // A dump that fails after it started reports the error
                    // in NLMSG_DONE's payload instead of an NLMSG_ERROR.
                    return Ok(if done.code < 0 {
                        Step::Failed {
                            errno: Errno::from_raw(-done.code),
                            reason: None,
                        }
                    } else {
                        Step::Finished
                    });
                }
                NetlinkPayload::Done(_) | NetlinkPayload::Noop => {}
                NetlinkPayload::Overrun(_) => {
                    return Err(NetlinkError::Decode("NLMSG_OVERRUN".into()));
                }
                other => {
                    return Err(NetlinkError::Decode(format!(
                        "unexpected netlink payload type {}",
                        other.message_type()
                    )))
                }
            }
        }
        Ok(Step::More)
    }
}

/// With `NETLINK_CAP_ACK` the error payload is our 16-byte `nlmsghdr`
/// followed, when `NLM_F_ACK_TLVS` is set, by extended-ack attributes.
fn ext_ack_reason(flags: u16, payload: &[u8]) -> Option<String> {
    const NLMSGHDR_LEN: usize = 16;
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < NLMSGHDR_LEN {
        return None;
    }
    // NLM_F_CAPPED: only the header was echoed (our CAP_ACK); otherwise the
    // whole request precedes the TLVs and its length is in that header.
    let start = if flags & NLM_F_CAPPED != 0 {
        NLMSGHDR_LEN
    } else {
        let echoed = u32::from_ne_bytes(payload[..4].try_into().ok()?) as usize;
        (echoed.max(NLMSGHDR_LEN) + 3) & !3
    };
    NlasIterator::new(payload.get(start..)?)
        .filter_map(|nla| nla.ok())
        .find(|nla| nla.kind() == NLMSGERR_ATTR_MSG)
        .map(|nla| {
            let value = nla.value();
            let end = value.iter().position(|&b| b == 0).unwrap_or(value.len());
            String::from_utf8_lossy(&value[..end]).into_owned()
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{DoneMessage, ErrorMessage};
    use netlink_packet_route::link::{LinkAttribute, LinkMessage};
    use std::num::NonZeroI32;

    fn frame(payload: NetlinkPayload<RouteNetlinkMessage>, seq: u32, flags: u16) -> Vec<u8> {
        let mut header = NetlinkHeader::default();
        header.sequence_number = seq;
        header.flags = flags;
        let mut packet = NetlinkMessage::new(header, payload);
        packet.finalize();
        let mut bytes = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut bytes);
        bytes
    }

    fn link(name: &str) -> RouteNetlinkMessage {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        RouteNetlinkMessage::NewLink(msg)
    }

    fn error(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut err = ErrorMessage::default();
        err.code = NonZeroI32::new(code);
        err.header = vec![0; 16];
        NetlinkPayload::Error(err)
    }

    fn done(code: i32) -> NetlinkPayload<RouteNetlinkMessage> {
        let mut d = DoneMessage::default();
        d.code = code;
        NetlinkPayload::Done(d)
    }

    #[test]
    fn serialize_sets_flags_seq_and_length() {
        let bytes = serialize(link("a"), NLM_F_REQUEST | NLM_F_ACK, 42);
        let buf = NetlinkBuffer::new_checked(&bytes[..]).unwrap();
        assert_eq!(buf.length() as usize, bytes.len());
        assert_eq!(buf.sequence_number(), 42);
        assert_eq!(buf.flags(), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(buf.message_type(), libc::RTM_NEWLINK);
    }

    #[test]
    fn do_request_collects_reply_then_ack_and_skips_other_seqs() {
        let mut c = Collector::new(7, false);
        // One datagram: a stale reply (seq 6), then ours, then the ACK.
        let mut dgram = frame(NetlinkPayload::InnerMessage(link("stale")), 6, 0);
        dgram.extend(frame(NetlinkPayload::InnerMessage(link("mine")), 7, 0));
        dgram.extend(frame(error(0), 7, 0));
        assert_eq!(c.feed(&dgram).unwrap(), Step::Finished);
        assert_eq!(c.replies, vec![link("mine")]);
    }

    #[test]
    fn error_keeps_errno() {
        let mut c = Collector::new(3, false);
        let dgram = frame(error(-libc::EEXIST), 3, 0);
        assert_eq!(
            c.feed(&dgram).unwrap(),
            Step::Failed {
                errno: Errno::EEXIST,
                reason: None
            }
        );
        // An error for another request is ignored.
        let mut c = Collector::new(4, false);
        assert_eq!(c.feed(&dgram).unwrap(), Step::More);
    }

    #[test]
    fn dump_spans_datagrams_until_done() {
        let mut c = Collector::new(9, true);
        let first = frame(NetlinkPayload::InnerMessage(link("a")), 9, 2);
        let mut second = frame(
            NetlinkPayload::InnerMessage(link("b")),
            9,
            2 | NLM_F_DUMP_INTR,
        );
        second.extend(frame(done(0), 9, 2));
        assert_eq!(c.feed(&first).unwrap(), Step::More);
        assert_eq!(c.feed(&second).unwrap(), Step::Finished);
        assert_eq!(c.replies, vec![link("a"), link("b")]);
        assert!(c.interrupted);

        let mut c = Collector::new(9, true);
        assert_eq!(
            c.feed(&frame(done(-libc::EBUSY), 9, 2)).unwrap(),
            Step::Failed {
                errno: Errno::EBUSY,
                reason: None
            }
        );
    }

    #[test]
    fn extended_ack_message_is_extracted() {
        // nlmsghdr (16 bytes, len=16) + NLMSGERR_ATTR_MSG "bad vlan\0".
        let mut payload = vec![0u8; 16];
        payload[..4].copy_from_slice(&16u32.to_ne_bytes());
        let text = b"bad vlan\0";
        let nla_len = 4 + text.len();
        payload.extend((nla_len as u16).to_ne_bytes());
        payload.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        payload.extend(text);
        payload.resize(payload.len().next_multiple_of(4), 0);
        assert_eq!(
            ext_ack_reason(NLM_F_ACK_TLVS | NLM_F_CAPPED, &payload).as_deref(),
            Some("bad vlan")
        );
        assert_eq!(ext_ack_reason(0, &payload), None);
    }

    #[test]
    fn truncated_frame_is_a_decode_error() {
        let bytes = frame(NetlinkPayload::InnerMessage(link("a")), 1, 0);
        let mut c = Collector::new(1, false);
        assert!(matches!(
            c.feed(&bytes[..bytes.len() - 4]),
            Err(NetlinkError::Decode(_))
        ));
    }
}
