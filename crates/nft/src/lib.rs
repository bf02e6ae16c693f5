//! The pod packet filter in the pod's network namespace: one nftables
//! table per attachment, `inet rackline-<ifname>`, owned by Rackline and
//! marked as such by its comment, programmed over nf_tables netlink in one
//! atomic batch.
//!
//! Why netlink and not `nft`: spawning `nsenter … nft -f` with a 50-rule
//! table costs ~16 ms per call on the 2-core lab machine (~6 ms of it the
//! namespace entry, the rest nft's start-up, parse and cache fetch);
//! opening a socket in the namespace costs ~0.15 ms and the batch itself
//! is then only the kernel's commit (see docs/benchmarks.md). Nothing in the rust-netlink crates
//! speaks nf_tables (and `rustables` is GPL), so [`wire`] frames the
//! handful of messages by hand on a `netlink-sys` socket.
//!
//! Only the attachment's own table in family inet is ever touched:
//! other tables in the namespace (a sidecar's, an operator's) are left
//! alone, and a foreign table with our name is refused, not replaced.

pub mod render;
pub mod wire;

use std::io;

use netlink_sys::{Socket, SocketAddr};
use nix::errno::Errno;
use rackline_model::filter::PodFilter;
use rackline_netlink::netns::{run_in_netns, Netns};

use crate::render::{comment, comment_of, Rendered, COMMENT_PREFIX};
use crate::wire::{
    attr, message, nft_type, split, Attrs, Msg, NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END,
    NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};

#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nf_tables socket: {0}")]
    Io(#[from] io::Error),
    #[error("entering the pod network namespace: {0}")]
    Netns(#[from] rackline_netlink::NetlinkError),
    #[error("nf_tables refused {what}: {desc} ({errno:?})", desc = errno.desc())]
    Kernel { what: &'static str, errno: Errno },
    #[error("a table inet {0} that Rackline did not create exists in the pod namespace (comment {1:?}); leaving it alone")]
    Foreign(String, String),
    #[error("no answer from nf_tables to {0}")]
    NoAnswer(&'static str),
    #[error("this kernel has no nf_tables (EPROTONOSUPPORT), so the pod's packet filter cannot be programmed")]
    Unsupported,
}

impl NftError {
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

const RECV_BUF: usize = 64 * 1024;

pub type Result<T> = std::result::Result<T, NftError>;

/// How the pod's table differs from what it should be (CHECK).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the pod has no nftables table inet {0} but its policy needs one")]
    Missing(String),
    #[error("the pod has an nftables table inet {0} but its policy needs none")]
    Unexpected(String),
    #[error("the pod's nftables table inet {0} was programmed for another policy (comment {1:?})")]
    Stale(String, String),
    #[error(
        "the pod's nftables table inet {table} has other members in set {set} than its policy"
    )]
    Members { table: String, set: String },
    #[error("the pod's nftables table inet {table} has {found} rules, its policy {expected}")]
    Rules {
        table: String,
        found: usize,
        expected: usize,
    },
}

/// What [`PodTable::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table already matched.
    Unchanged,
    /// Only set members differed: `added` and `removed` elements in one
    /// batch; rules and counters kept.
    Sets { added: usize, removed: usize },
    /// Created or atomically replaced (counters restart from zero).
    Replaced,
    /// The filter is allow-all and the table was removed.
    Removed,
}

/// Packets dropped by the pod's filter since its table was (re)created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    pub ingress: u64,
    pub egress: u64,
}

/// An nf_tables socket bound to one network namespace. Created on a
/// short-lived thread inside that namespace; used from any thread after.
pub struct PodTable {
    /// `None`: the kernel has no nf_tables (built without it, or the
    /// module cannot load). No table can exist there, so reading and
    /// removing find nothing and only programming a filter fails; a node
    /// without ACLs works as before.
    socket: Option<Socket>,
    table: String,
    own: std::net::Ipv4Addr,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for PodTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTable").finish_non_exhaustive()
    }
}

fn open_socket() -> io::Result<Option<Socket>> {
    let mut s = match Socket::new(wire::NETLINK_NETFILTER) {
        Ok(s) => s,
        Err(e) if e.raw_os_error() == Some(libc::EPROTONOSUPPORT) => return Ok(None),
        Err(e) => return Err(e),
    };
    s.bind_auto()?;
    s.connect(&SocketAddr::new(0, 0))?;
    let timeout = nix::sys::time::TimeVal::new(2, 0);
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimeout, &timeout)
        .map_err(io::Error::from)?;
    Ok(Some(s))
}

impl PodTable {
    /// The table of attachment `ifname` (address `own`) in the namespace
    /// `ns` (the calling thread never changes namespace).
    pub fn open(ns: &Netns, ifname: &str, own: std::net::Ipv4Addr) -> Result<Self> {
        let socket = run_in_netns(ns, open_socket)??;
        Ok(Self::from_socket(socket, ifname, own))
    }

    /// The same, for a caller already in the pod's namespace.
    pub fn current(ifname: &str, own: std::net::Ipv4Addr) -> Result<Self> {
        Ok(Self::from_socket(open_socket()?, ifname, own))
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn from_socket(socket: Option<Socket>, ifname: &str, own: std::net::Ipv4Addr) -> Self {
        PodTable {
            socket,
            table: render::table_name(ifname),
            own,
            seq: 1,
            buf: Vec::with_capacity(RECV_BUF),
        }
    }

    fn socket(&self) -> Result<&Socket> {
        self.socket.as_ref().ok_or(NftError::Unsupported)
    }

    /// Whether this namespace's kernel has nf_tables at all.
    pub fn supported(&self) -> bool {
        self.socket.is_some()
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// One nf_tables batch (BEGIN, `msgs`, END) and the sequence number of
    /// its last message. Only the last message asks for an acknowledgement:
    /// a failing one reports its error regardless, and the kernel answers
    /// after the whole batch is committed.
    fn batch(&mut self, msgs: &[(Msg, u16, &[u8])]) -> (Vec<u8>, u32) {
        let size: usize = msgs.iter().map(|(_, _, a)| a.len() + 32).sum();
        let mut batch = Vec::with_capacity(size + 64);
        let mut seq = self.next_seq();
        message(
            &mut batch,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        let n = msgs.len();
        for (i, (m, flags, a)) in msgs.iter().enumerate() {
            seq = seq.wrapping_add(1);
            let ack = if i + 1 == n { NLM_F_ACK } else { 0 };
            message(
                &mut batch,
                nft_type(*m),
                NLM_F_REQUEST | ack | flags,
                seq,
                NFPROTO_INET,
                0,
                a,
            );
        }
        let last = seq;
        seq = seq.wrapping_add(1);
        message(
            &mut batch,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            seq,
            0,
            NFNL_SUBSYS_NFTABLES,
            &[],
        );
        self.seq = seq;
        (batch, last)
    }

    /// Creates or atomically replaces the pod's table with `f`. Nothing
    /// else in the namespace changes; the old table (if any) stays in force
    /// until the new one is complete.
    pub fn program(&mut self, f: &PodFilter) -> Result<Rendered> {
        if self.socket.is_none() {
            return Err(NftError::Unsupported);
        }
        let r = render::render(f, &self.table, self.own);
        let existing = self.table_comment()?;
        if let Some(c) = &existing {
            if !c.starts_with(COMMENT_PREFIX) {
                return Err(NftError::Foreign(self.table.clone(), c.clone()));
            }
        }
        let table_comment = comment(r.fingerprint);
        let del_attrs = render::table_attrs(&self.table, None).0;
        let new_attrs = render::table_attrs(&self.table, Some(&table_comment)).0;
        let mut msgs: Vec<(Msg, u16, &[u8])> = Vec::with_capacity(r.objects.len() + 2);
        if existing.is_some() {
            msgs.push((Msg::DelTable, 0, &del_attrs));
        }
        msgs.push((Msg::NewTable, wire::NLM_F_CREATE, &new_attrs));
        msgs.extend(r.objects.iter().map(|o| (o.msg, o.flags, &o.attrs[..])));
        let (batch, last) = self.batch(&msgs);
        self.send_batch(&batch, last, "the pod filter table")?;
        Ok(r)
    }

    /// Removes the pod's table; `false` when there was none. A foreign
    /// table with our name is left alone.
    pub fn remove(&mut self) -> Result<bool> {
        match self.table_comment()? {
            None => return Ok(false),
            Some(c) if !c.starts_with(COMMENT_PREFIX) => {
                return Err(NftError::Foreign(self.table.clone(), c))
            }
            Some(_) => {}
        }
        let attrs = render::table_attrs(&self.table, None).0;
        let (batch, last) = self.batch(&[(Msg::DelTable, 0, &attrs)]);
        match self.send_batch(&batch, last, "deleting the pod filter table") {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Whether the pod's table is what `f` programs (`f` allow-all: no
    /// table at all).
    pub fn verify(&mut self, f: &PodFilter) -> Result<std::result::Result<(), Mismatch>> {
        let existing = self.table_comment()?;
        if f.is_allow_all() {
            return Ok(match existing {
                Some(c) if c.starts_with(COMMENT_PREFIX) => {
                    Err(Mismatch::Unexpected(self.table.clone()))
                }
                _ => Ok(()),
            });
        }
        let r = render::render(f, &self.table, self.own);
        let Some(c) = existing else {
            return Ok(Err(Mismatch::Missing(self.table.clone())));
        };
        if c != comment(r.fingerprint) {
            return Ok(Err(Mismatch::Stale(self.table.clone(), c)));
        }
        let found = self.rule_count()?;
        if found != r.rules {
            return Ok(Err(Mismatch::Rules {
                table: self.table.clone(),
                found,
                expected: r.rules,
            }));
        }
        for (set, (add, del)) in self.set_diff(f)? {
            if !add.is_empty() || !del.is_empty() {
                return Ok(Err(Mismatch::Members {
                    table: self.table.clone(),
                    set,
                }));
            }
        }
        Ok(Ok(()))
    }

    /// Makes the pod's table match `f` with the least change: nothing when
    /// it matches; when only set members differ (same rules — the
    /// structural fingerprint and rule count match) one batch of element
    /// updates that keeps rules and drop counters; otherwise a full atomic
    /// replace ([`PodTable::program`]), also the fallback when the element
    /// batch is refused (a set changed under us).
    pub fn apply(&mut self, f: &PodFilter) -> Result<Applied> {
        if f.is_allow_all() {
            return Ok(if self.remove()? {
                Applied::Removed
            } else {
                Applied::Unchanged
            });
        }
        let r = render::render(f, &self.table, self.own);
        let same_rules = match self.table_comment()? {
            Some(c) if c == comment(r.fingerprint) => self.rule_count()? == r.rules,
            _ => false,
        };
        if !same_rules {
            self.program(f)?;
            return Ok(Applied::Replaced);
        }
        let diff = self.set_diff(f)?;
        let added: usize = diff.iter().map(|(_, (a, _))| a.len()).sum();
        let removed: usize = diff.iter().map(|(_, (_, d))| d.len()).sum();
        if added + removed == 0 {
            return Ok(Applied::Unchanged);
        }
        match self.update_sets(&diff) {
            Ok(()) => Ok(Applied::Sets { added, removed }),
            Err(NftError::Kernel { .. }) => {
                self.program(f)?;
                Ok(Applied::Replaced)
            }
            Err(e) => Err(e),
        }
    }

    /// Per set of `f`: the members to add and to remove.
    #[allow(clippy::type_complexity)]
    fn set_diff(
        &mut self,
        f: &PodFilter,
    ) -> Result<Vec<(String, (Vec<std::net::Ipv4Addr>, Vec<std::net::Ipv4Addr>))>> {
        let mut out = Vec::new();
        for name in render::set_names(f) {
            let want: std::collections::BTreeSet<_> =
                f.sets.get(&name).into_iter().flatten().copied().collect();
            let have: std::collections::BTreeSet<_> =
                self.set_members(&name)?.into_iter().collect();
            let add = want.difference(&have).copied().collect();
            let del = have.difference(&want).copied().collect();
            out.push((name, (add, del)));
        }
        Ok(out)
    }

    /// The members of set `set` in the pod's table.
    pub fn set_members(&mut self, set: &str) -> Result<Vec<std::net::Ipv4Addr>> {
        let a = render::set_elems(&self.table, set, &[]);
        let replies = self.request(
            Msg::GetSetElem,
            NLM_F_DUMP,
            &a.0,
            "listing a peer set's members",
        )?;
        Ok(replies
            .iter()
            .flat_map(|p| render::parse_set_elems(p))
            .collect())
    }

    /// One batch: every NEWSETELEM first, then every DELSETELEM. The batch
    /// commits atomically anyway; adding first keeps that true even if a
    /// kernel ever applied it piecemeal — a member allowed before and after
    /// is never absent.
    #[allow(clippy::type_complexity)]
    fn update_sets(
        &mut self,
        diff: &[(String, (Vec<std::net::Ipv4Addr>, Vec<std::net::Ipv4Addr>))],
    ) -> Result<()> {
        let mut msgs: Vec<(Msg, u16, Vec<u8>)> = Vec::new();
        for (set, (add, _)) in diff {
            if !add.is_empty() {
                msgs.push((
                    Msg::NewSetElem,
                    wire::NLM_F_CREATE,
                    render::set_elems(&self.table, set, add).0,
                ));
            }
        }
        for (set, (_, del)) in diff {
            if !del.is_empty() {
                msgs.push((
                    Msg::DelSetElem,
                    0,
                    render::set_elems(&self.table, set, del).0,
                ));
            }
        }
        let msgs: Vec<(Msg, u16, &[u8])> = msgs.iter().map(|(m, f, a)| (*m, *f, &a[..])).collect();
        let (batch, last) = self.batch(&msgs);
        self.send_batch(&batch, last, "updating the pod's peer sets")
    }

    /// The drop counters of the pod's table; `None` without a table.
    pub fn drops(&mut self) -> Result<Option<Drops>> {
        if self.socket.is_none() {
            return Ok(None);
        }
        let mut d = Drops::default();
        for (name, slot) in [
            (render::DROP_INGRESS, &mut d.ingress),
            (render::DROP_EGRESS, &mut d.egress),
        ] {
            let mut a = Attrs::default();
            a.str(render::OBJ_TABLE, &self.table)
                .str(render::OBJ_NAME, name)
                .be32(render::OBJ_TYPE, render::OBJECT_COUNTER);
            let replies = match self.request(Msg::GetObj, 0, &a.0, "reading a drop counter") {
                Ok(r) => r,
                Err(e) if e.errno() == Some(Errno::ENOENT) => return Ok(None),
                Err(e) => return Err(e),
            };
            for p in replies {
                if let Some(data) = attr(&p, render::OBJ_DATA) {
                    if let Some(v) = attr(data, render::COUNTER_PACKETS) {
                        *slot = u64::from_be_bytes(v.try_into().unwrap_or([0; 8]));
                    }
                }
            }
        }
        Ok(Some(d))
    }

    /// The comment of the namespace's `inet rackline` table, `Some("")` for
    /// a table without one, `None` without the table.
    pub fn table_comment(&mut self) -> Result<Option<String>> {
        if self.socket.is_none() {
            return Ok(None);
        }
        match self.request(
            Msg::GetTable,
            0,
            &render::table_attrs(&self.table, None).0,
            "reading the pod filter table",
        ) {
            Ok(replies) => Ok(Some(
                replies
                    .first()
                    .and_then(|p| attr(p, 6))
                    .and_then(comment_of)
                    .unwrap_or_default(),
            )),
            Err(e) if e.errno() == Some(Errno::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn rule_count(&mut self) -> Result<usize> {
        let mut a = Attrs::default();
        a.str(1, &self.table);
        Ok(self
            .request(
                Msg::GetRule,
                NLM_F_DUMP,
                &a.0,
                "listing the pod filter rules",
            )?
            .len())
    }

    /// One request; the attribute payloads of its replies.
    fn request(
        &mut self,
        m: Msg,
        flags: u16,
        a: &[u8],
        what: &'static str,
    ) -> Result<Vec<Vec<u8>>> {
        let seq = self.next_seq();
        let mut out = Vec::new();
        message(
            &mut out,
            nft_type(m),
            NLM_F_REQUEST | NLM_F_ACK | flags,
            seq,
            NFPROTO_INET,
            0,
            a,
        );
        self.socket()?.send(&out, 0)?;
        let mut replies = Vec::new();
        loop {
            self.recv(what)?;
            for msg in split(&self.buf) {
                if msg.seq != seq {
                    continue;
                }
                match msg.ty {
                    NLMSG_ERROR => {
                        let code =
                            i32::from_ne_bytes(msg.payload[..4].try_into().unwrap_or([0; 4]));
                        if code < 0 {
                            return Err(NftError::Kernel {
                                what,
                                errno: Errno::from_raw(-code),
                            });
                        }
                        return Ok(replies);
                    }
                    NLMSG_DONE => return Ok(replies),
                    _ => replies.push(msg.payload.get(4..).unwrap_or_default().to_vec()),
                }
            }
        }
    }

    /// One datagram into `self.buf` (whole: 64 KiB holds any reply here;
    /// MSG_TRUNC reports a longer one instead of cutting it).
    fn recv(&mut self, what: &'static str) -> Result<()> {
        loop {
            self.buf.clear();
            self.buf.reserve(RECV_BUF);
            let Some(socket) = self.socket.as_ref() else {
                return Err(NftError::Unsupported);
            };
            match socket.recv(&mut self.buf, libc::MSG_TRUNC) {
                Ok(0) => return Err(NftError::NoAnswer(what)),
                Ok(n) if n > self.buf.capacity() => {
                    return Err(NftError::Io(io::Error::other(format!(
                        "{n}-byte netlink datagram exceeds the buffer"
                    ))))
                }
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Err(NftError::NoAnswer(what))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends a batch and reads acknowledgements until the last message's
    /// (every message asks for one) or the first error: the kernel aborts
    /// the whole batch at the first failing message and acks nothing after.
    fn send_batch(&mut self, batch: &[u8], last_seq: u32, what: &'static str) -> Result<()> {
        self.socket()?.send(batch, 0)?;
        loop {
            self.recv(what)?;
            for msg in split(&self.buf) {
                if msg.ty != NLMSG_ERROR {
                    continue;
                }
                let code = i32::from_ne_bytes(msg.payload[..4].try_into().unwrap_or([0; 4]));
                if code < 0 {
                    return Err(NftError::Kernel {
                        what,
                        errno: Errno::from_raw(-code),
                    });
                }
                if msg.seq == last_seq {
                    return Ok(());
                }
            }
        }
    }
}
