//! nf_tables netlink framing, by hand. The rust-netlink family
//! (netlink-packet-*) has no nf_tables message types, so this module writes
//! the few messages Rackline needs — table, chain, rule, set, set element,
//! counter object, batch begin/end — and reads back table userdata, counter
//! values and rule counts. Constants are from `linux/netfilter/nf_tables.h`
//! and `linux/netfilter/nfnetlink.h`. nf_tables numbers are big-endian on
//! the wire; `ct state` and ifindex compare in host order (as `nft` emits).

pub const NETLINK_NETFILTER: isize = 12;
pub const NFNL_SUBSYS_NFTABLES: u16 = 10;
pub const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
pub const NFNL_MSG_BATCH_END: u16 = 0x11;
pub const NFPROTO_INET: u8 = 1;
pub const NFPROTO_IPV4: u8 = 2;
pub const NFPROTO_IPV6: u8 = 10;

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Msg {
    NewTable = 0,
    GetTable = 1,
    DelTable = 2,
    NewChain = 3,
    NewRule = 6,
    GetRule = 7,
    NewSet = 9,
    NewSetElem = 12,
    GetSetElem = 13,
    DelSetElem = 14,
    NewObj = 18,
    GetObj = 19,
}

/// An attribute tree being written: `put_*` append, `nest` opens a nested
/// attribute and closes it when the closure returns.
#[derive(Debug, Default, Clone)]
pub struct Attrs(pub Vec<u8>);

impl Attrs {
    pub fn bytes(&mut self, ty: u16, v: &[u8]) -> &mut Self {
        let len = 4 + v.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(v);
        self.pad();
        self
    }
    /// A NUL-terminated string, as the kernel's `nla_strscpy` expects.
    pub fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.bytes(ty, &v)
    }
    pub fn be32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }
    pub fn be64(&mut self, ty: u16, v: u64) -> &mut Self {
        self.bytes(ty, &v.to_be_bytes())
    }
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let start = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
}

/// Appends one netlink message (header + nfgenmsg + attributes) to `out`.
pub fn message(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.push(family);
    out.push(0); // NFNETLINK_V0
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

pub fn nft_type(m: Msg) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | m as u16
}

/// One received netlink message.
#[derive(Debug)]
pub struct Received<'a> {
    pub ty: u16,
    pub seq: u32,
    /// After the nfgenmsg (nf_tables messages) or the raw payload (errors).
    pub payload: &'a [u8],
}

/// Splits a datagram into messages; malformed tails are ignored (the
/// kernel never sends them).
pub fn split(buf: &[u8]) -> Vec<Received<'_>> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        if len < 16 || off + len > buf.len() {
            break;
        }
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
        let seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
        out.push(Received {
            ty,
            seq,
            payload: &buf[off + 16..off + len],
        });
        off += (len + 3) & !3;
    }
    out
}

/// The attributes of a buffer: (type without flags, payload).
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((ty, &buf[4..len]));
        let next = ((len + 3) & !3).min(buf.len());
        buf = &buf[next..];
    }
    out
}

pub fn attr(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_nested_and_parse_back() {
        let mut a = Attrs::default();
        a.str(1, "rackline").nest(4, |n| {
            n.be32(1, 1).be32(2, 0);
        });
        // "rackline\0" = 9 bytes + 4 header = 13, padded to 16; nest = 4 + 2*8.
        assert_eq!(a.0.len(), 16 + 20);
        let top = attrs(&a.0);
        assert_eq!(top[0], (1, &b"rackline\0"[..]));
        let hook = attrs(top[1].1);
        assert_eq!(hook[0], (1, &1u32.to_be_bytes()[..]));
        let mut out = Vec::new();
        message(
            &mut out,
            nft_type(Msg::NewTable),
            NLM_F_REQUEST,
            7,
            NFPROTO_INET,
            0,
            &a.0,
        );
        let m = split(&out);
        assert_eq!((m.len(), m[0].seq, m[0].ty), (1, 7, 0x0a00));
        assert_eq!(&m[0].payload[4..], &a.0[..]);
    }
}
