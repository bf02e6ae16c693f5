//! A [`PodFilter`] as nf_tables objects. Pure: the exact messages are
//! unit-tested without root, and the same bytes give the fingerprint that
//! CHECK compares.
//!
//! Layout of the table (`inet rackline-<ifname>`, one per attachment):
//! - base chains `input` (hook input) and `output` (hook output), priority
//!   0, policy accept: replies of allowed connections (ct established or
//!   related) and loopback pass; IPv6 passes only in a direction no layer
//!   restricts (Rackline pods are IPv4); packets not to/from this
//!   attachment's own address pass (another attachment's table decides);
//!   the node's own addresses pass; then `jump acl-<dir>` and
//!   `jump netpol-<dir>`;
//! - `acl-ingress`, `acl-egress`, `netpol-ingress`, `netpol-egress`: one
//!   chain per layer and direction, first match; an allowing rule returns
//!   to the base chain (the next layer still has its say), a denying one
//!   drops; falling off the end is the chain default;
//! - named counters `drop-ingress` / `drop-egress` every drop adds to;
//! - one set of IPv4 addresses per named peer set.

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;
use rackline_model::filter::{Chain, Direction, Peer, PodFilter, PortMatch, Proto, Rule, Verdict};

use crate::wire::{Attrs, Msg, NLM_F_APPEND, NLM_F_CREATE};

/// Table names are `rackline-<ifname>`: one table per attachment, so a
/// pod on two networks gets each network's filter, each scoped to its
/// attachment's address.
pub const TABLE_PREFIX: &str = "rackline-";

pub fn table_name(ifname: &str) -> String {
    format!("{TABLE_PREFIX}{ifname}")
}
/// Table comment prefix: marks the table as Rackline's in `nft list`.
pub const COMMENT_PREFIX: &str = "managed by rackline; do not edit; fingerprint ";
pub const DROP_INGRESS: &str = "drop-ingress";
pub const DROP_EGRESS: &str = "drop-egress";

// Attribute numbers (linux/netfilter/nf_tables.h).
const TABLE_NAME: u16 = 1;
const TABLE_USERDATA: u16 = 6;
const CHAIN_TABLE: u16 = 1;
const CHAIN_NAME: u16 = 3;
const CHAIN_HOOK: u16 = 4;
const CHAIN_POLICY: u16 = 5;
const CHAIN_TYPE: u16 = 7;
const HOOK_HOOKNUM: u16 = 1;
const HOOK_PRIORITY: u16 = 2;
const RULE_TABLE: u16 = 1;
const RULE_CHAIN: u16 = 2;
const RULE_EXPRESSIONS: u16 = 4;
const LIST_ELEM: u16 = 1;
const EXPR_NAME: u16 = 1;
const EXPR_DATA: u16 = 2;
const DATA_VALUE: u16 = 1;
const DATA_VERDICT: u16 = 2;
const VERDICT_CODE: u16 = 1;
const VERDICT_CHAIN: u16 = 2;
const SET_TABLE: u16 = 1;
const SET_NAME: u16 = 2;
const SET_FLAGS: u16 = 3;
const SET_KEY_TYPE: u16 = 4;
const SET_KEY_LEN: u16 = 5;
const SET_ID: u16 = 10;
const SET_ELEM_LIST_TABLE: u16 = 1;
const SET_ELEM_LIST_SET: u16 = 2;
const SET_ELEM_LIST_ELEMENTS: u16 = 3;
const SET_ELEM_KEY: u16 = 1;
pub const OBJ_TABLE: u16 = 1;
pub const OBJ_NAME: u16 = 2;
pub const OBJ_TYPE: u16 = 3;
pub const OBJ_DATA: u16 = 4;
pub const OBJECT_COUNTER: u32 = 1;
pub const COUNTER_BYTES: u16 = 1;
pub const COUNTER_PACKETS: u16 = 2;

const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_ACCEPT: i32 = 1;
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_RETURN: i32 = -5;
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const META_IIF: u32 = 4;
const META_OIF: u32 = 5;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const CT_STATE: u32 = 0;
const CT_ESTABLISHED_RELATED: u32 = 0x2 | 0x4;
/// nft's datatype number of `ipv4_addr` (set key type).
const TYPE_IPADDR: u32 = 7;
const UDATA_TABLE_COMMENT: u8 = 0;

/// One nf_tables message of a batch: kind, extra flags, attributes.
#[derive(Debug, Clone)]
pub struct Object {
    pub msg: Msg,
    pub flags: u16,
    pub attrs: Vec<u8>,
}

/// Everything one pod's table consists of, in creation order, plus the
/// number of rules (CHECK compares it with the kernel's).
#[derive(Debug, Clone)]
pub struct Rendered {
    pub objects: Vec<Object>,
    pub rules: usize,
    pub fingerprint: u64,
}

fn expr(e: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    e.nest(LIST_ELEM, |l| {
        l.str(EXPR_NAME, name).nest(EXPR_DATA, data);
    });
}

/// The expressions of one rule, written in order.
#[derive(Default)]
struct Exprs(Attrs);

impl Exprs {
    fn meta(&mut self, key: u32) -> &mut Self {
        expr(&mut self.0, "meta", |d| {
            d.be32(2, key).be32(1, REG_1);
        });
        self
    }
    fn cmp(&mut self, op: u32, value: &[u8]) -> &mut Self {
        expr(&mut self.0, "cmp", |d| {
            d.be32(1, REG_1).be32(2, op).nest(3, |v| {
                v.bytes(DATA_VALUE, value);
            });
        });
        self
    }
    fn payload(&mut self, base: u32, offset: u32, len: u32) -> &mut Self {
        expr(&mut self.0, "payload", |d| {
            d.be32(1, REG_1).be32(2, base).be32(3, offset).be32(4, len);
        });
        self
    }
    fn bitwise(&mut self, mask: &[u8]) -> &mut Self {
        let zero = vec![0u8; mask.len()];
        expr(&mut self.0, "bitwise", |d| {
            d.be32(1, REG_1)
                .be32(2, REG_1)
                .be32(3, mask.len() as u32)
                .nest(4, |v| {
                    v.bytes(DATA_VALUE, mask);
                })
                .nest(5, |v| {
                    v.bytes(DATA_VALUE, &zero);
                });
        });
        self
    }
    fn range(&mut self, from: &[u8], to: &[u8]) -> &mut Self {
        expr(&mut self.0, "range", |d| {
            d.be32(1, REG_1)
                .be32(2, 0)
                .nest(3, |v| {
                    v.bytes(DATA_VALUE, from);
                })
                .nest(4, |v| {
                    v.bytes(DATA_VALUE, to);
                });
        });
        self
    }
    fn lookup(&mut self, set: &str, id: u32) -> &mut Self {
        expr(&mut self.0, "lookup", |d| {
            d.str(1, set).be32(2, REG_1).be32(4, id);
        });
        self
    }
    fn ct_state(&mut self) -> &mut Self {
        expr(&mut self.0, "ct", |d| {
            d.be32(1, REG_1).be32(2, CT_STATE);
        });
        self
    }
    fn count_into(&mut self, counter: &str) -> &mut Self {
        expr(&mut self.0, "objref", |d| {
            d.be32(1, OBJECT_COUNTER).str(2, counter);
        });
        self
    }
    fn verdict(&mut self, code: i32, chain: Option<&str>) -> &mut Self {
        expr(&mut self.0, "immediate", |d| {
            d.be32(1, REG_VERDICT).nest(2, |data| {
                data.nest(DATA_VERDICT, |v| {
                    v.be32(VERDICT_CODE, code as u32);
                    if let Some(c) = chain {
                        v.str(VERDICT_CHAIN, c);
                    }
                });
            });
        });
        self
    }
    /// `meta nfproto ipv4`: the base chain already let IPv6 through or
    /// dropped it, so this only makes `nft list` print `ip saddr ...`
    /// instead of raw payload offsets.
    fn ipv4(&mut self) -> &mut Self {
        self.meta(META_NFPROTO)
            .cmp(CMP_EQ, &[crate::wire::NFPROTO_IPV4])
    }

    fn prefix(&mut self, net: &Ipv4Network, op: u32) -> &mut Self {
        if net.prefix() < 32 {
            self.bitwise(&net.mask().octets());
        }
        self.cmp(op, &net.network().octets())
    }
}

struct Builder<'a> {
    f: &'a PodFilter,
    table: &'a str,
    own: Ipv4Addr,
    objects: Vec<Object>,
    rules: usize,
    set_ids: Vec<String>,
}

impl Builder<'_> {
    fn push(&mut self, msg: Msg, attrs: Attrs) {
        self.objects.push(Object {
            msg,
            flags: NLM_F_CREATE,
            attrs: attrs.0,
        });
    }

    fn chain(&mut self, name: &str, hook: Option<u32>) {
        let mut a = Attrs::default();
        a.str(CHAIN_TABLE, self.table).str(CHAIN_NAME, name);
        if let Some(h) = hook {
            a.nest(CHAIN_HOOK, |n| {
                n.be32(HOOK_HOOKNUM, h).be32(HOOK_PRIORITY, 0);
            })
            .be32(CHAIN_POLICY, NF_ACCEPT as u32)
            .str(CHAIN_TYPE, "filter");
        }
        self.push(Msg::NewChain, a);
    }

    fn rule(&mut self, chain: &str, e: Exprs) {
        let mut a = Attrs::default();
        a.str(RULE_TABLE, self.table)
            .str(RULE_CHAIN, chain)
            .nest(RULE_EXPRESSIONS, |n| n.0.extend_from_slice(&e.0 .0));
        // Without APPEND the kernel inserts at the head of the chain.
        self.objects.push(Object {
            msg: Msg::NewRule,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            attrs: a.0,
        });
        self.rules += 1;
    }

    fn set_id(&self, name: &str) -> u32 {
        self.set_ids
            .iter()
            .position(|n| n == name)
            .map_or(0, |i| i as u32 + 1)
    }

    fn base(&mut self, dir: Direction) {
        let (name, hook, lo_meta, addr_off, acl, np, drops) = match dir {
            Direction::Ingress => (
                "input",
                NF_INET_LOCAL_IN,
                META_IIF,
                12,
                "acl-ingress",
                "netpol-ingress",
                DROP_INGRESS,
            ),
            Direction::Egress => (
                "output",
                NF_INET_LOCAL_OUT,
                META_OIF,
                16,
                "acl-egress",
                "netpol-egress",
                DROP_EGRESS,
            ),
        };
        self.chain(name, Some(hook));
        self.accept_established_and_loopback(name, lo_meta);
        self.ipv6_rule(name, dir, drops);
        // From here on every packet is IPv4. Traffic of the pod's other
        // attachments (other addresses) is theirs to filter.
        let own_off = if addr_off == 12 { 16 } else { 12 };
        let mut e = Exprs::default();
        e.ipv4()
            .payload(PAYLOAD_NETWORK, own_off, 4)
            .cmp(CMP_NEQ, &self.own.octets())
            .verdict(NF_ACCEPT, None);
        self.rule(name, e);
        for a in self.f.always_allow.clone() {
            let mut e = Exprs::default();
            e.ipv4()
                .payload(PAYLOAD_NETWORK, addr_off, 4)
                .cmp(CMP_EQ, &a.octets())
                .verdict(NF_ACCEPT, None);
            self.rule(name, e);
        }
        for target in [acl, np] {
            let mut e = Exprs::default();
            e.verdict(NFT_JUMP, Some(target));
            self.rule(name, e);
        }
    }

    /// Replies of connections already allowed, and loopback, pass first.
    fn accept_established_and_loopback(&mut self, name: &str, lo_meta: u32) {
        let mut e = Exprs::default();
        e.ct_state()
            .bitwise(&CT_ESTABLISHED_RELATED.to_ne_bytes())
            .cmp(CMP_NEQ, &0u32.to_ne_bytes())
            .verdict(NF_ACCEPT, None);
        self.rule(name, e);
        // Loopback is ifindex 1 in every namespace.
        let mut e = Exprs::default();
        e.meta(lo_meta)
            .cmp(CMP_EQ, &1u32.to_ne_bytes())
            .verdict(NF_ACCEPT, None);
        self.rule(name, e);
    }

    /// IPv6 is dropped (and counted) when the direction is filtered at all,
    /// accepted otherwise: the rules below match IPv4 only.
    fn ipv6_rule(&mut self, name: &str, dir: Direction, drops: &str) {
        let restricted = match dir {
            Direction::Ingress => {
                !(self.f.acl.ingress.is_allow_all() && self.f.netpol.ingress.is_allow_all())
            }
            Direction::Egress => {
                !(self.f.acl.egress.is_allow_all() && self.f.netpol.egress.is_allow_all())
            }
        };
        let mut e = Exprs::default();
        e.meta(META_NFPROTO)
            .cmp(CMP_EQ, &[crate::wire::NFPROTO_IPV6]);
        if restricted {
            e.count_into(drops).verdict(NF_DROP, None);
        } else {
            e.verdict(NF_ACCEPT, None);
        }
        self.rule(name, e);
    }

    fn layer_chain(&mut self, name: &str, chain: &Chain, dir: Direction) {
        self.chain(name, None);
        let (addr_off, drops) = match dir {
            Direction::Ingress => (12, DROP_INGRESS),
            Direction::Egress => (16, DROP_EGRESS),
        };
        for r in &chain.rules {
            self.layer_rule(name, r, addr_off, drops);
        }
        if chain.default == Verdict::Deny {
            let mut e = Exprs::default();
            e.count_into(drops).verdict(NF_DROP, None);
            self.rule(name, e);
        }
    }

    /// A rule matches any of its peers and any of its ports: one nftables
    /// rule per (peer, port) pair, all with the rule's verdict, keeps first
    /// match exact.
    fn layer_rule(&mut self, chain: &str, r: &Rule, addr_off: u32, drops: &str) {
        let peers: Vec<Option<&Peer>> = if r.peers.is_empty() {
            vec![None]
        } else {
            r.peers.iter().map(Some).collect()
        };
        let ports: Vec<Option<&PortMatch>> = if r.ports.is_empty() {
            vec![None]
        } else {
            r.ports.iter().map(Some).collect()
        };
        for peer in &peers {
            for port in &ports {
                let mut e = Exprs::default();
                if peer.is_some() {
                    e.ipv4();
                }
                match peer {
                    None => {}
                    Some(Peer::Cidr { net, except }) => {
                        if net.prefix() > 0 {
                            e.payload(PAYLOAD_NETWORK, addr_off, 4).prefix(net, CMP_EQ);
                        }
                        for x in except {
                            e.payload(PAYLOAD_NETWORK, addr_off, 4).prefix(x, CMP_NEQ);
                        }
                    }
                    Some(Peer::Set(name)) => {
                        let id = self.set_id(name);
                        e.payload(PAYLOAD_NETWORK, addr_off, 4).lookup(name, id);
                    }
                }
                if let Some(pm) = port {
                    e.meta(META_L4PROTO).cmp(CMP_EQ, &[proto_number(pm.proto)]);
                    match pm.ports {
                        None => {}
                        Some((lo, hi)) if lo == hi => {
                            e.payload(PAYLOAD_TRANSPORT, 2, 2)
                                .cmp(CMP_EQ, &lo.to_be_bytes());
                        }
                        Some((lo, hi)) => {
                            e.payload(PAYLOAD_TRANSPORT, 2, 2)
                                .range(&lo.to_be_bytes(), &hi.to_be_bytes());
                        }
                    }
                }
                match r.verdict {
                    Verdict::Allow => e.verdict(NFT_RETURN, None),
                    Verdict::Deny => e.count_into(drops).verdict(NF_DROP, None),
                };
                self.rule(chain, e);
            }
        }
    }
}

fn proto_number(p: Proto) -> u8 {
    match p {
        Proto::Tcp => 6,
        Proto::Udp => 17,
        Proto::Sctp => 132,
        Proto::Icmp => 1,
    }
}

/// Sets every `Peer::Set` names, with their members (an unknown set is
/// empty: it matches nobody).
pub fn set_names(f: &PodFilter) -> Vec<String> {
    let mut names: Vec<String> = f.sets.keys().cloned().collect();
    for c in [
        &f.acl.ingress,
        &f.acl.egress,
        &f.netpol.ingress,
        &f.netpol.egress,
    ] {
        for r in &c.rules {
            for p in &r.peers {
                if let Peer::Set(n) = p {
                    if !names.contains(n) {
                        names.push(n.clone());
                    }
                }
            }
        }
    }
    names.sort();
    names
}

/// FNV-1a: stable across builds and platforms (std's hasher is not).
fn fnv(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn table_attrs(table: &str, comment: Option<&str>) -> Attrs {
    let mut a = Attrs::default();
    a.str(TABLE_NAME, table);
    if let Some(c) = comment {
        // libnftnl's userdata TLV: type, length (with the NUL), value.
        let mut ud = vec![UDATA_TABLE_COMMENT, (c.len() + 1) as u8];
        ud.extend_from_slice(c.as_bytes());
        ud.push(0);
        a.bytes(TABLE_USERDATA, &ud);
    }
    a
}

/// The comment of a table's userdata, if it has one.
pub fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut u = userdata;
    while u.len() >= 2 {
        let (ty, len) = (u[0], u[1] as usize);
        if u.len() < 2 + len {
            return None;
        }
        if ty == UDATA_TABLE_COMMENT {
            let v = &u[2..2 + len];
            return Some(String::from_utf8_lossy(v.strip_suffix(&[0]).unwrap_or(v)).into_owned());
        }
        u = &u[2 + len..];
    }
    None
}

/// The objects of `f`'s table, after the table itself.
/// `own` is the attachment's address: only its traffic is filtered.
pub fn render(f: &PodFilter, table: &str, own: Ipv4Addr) -> Rendered {
    let mut b = Builder {
        f,
        table,
        own,
        objects: Vec::new(),
        rules: 0,
        set_ids: set_names(f),
    };
    for name in [DROP_INGRESS, DROP_EGRESS] {
        let mut a = Attrs::default();
        a.str(OBJ_TABLE, table)
            .str(OBJ_NAME, name)
            .be32(OBJ_TYPE, OBJECT_COUNTER)
            .nest(OBJ_DATA, |d| {
                d.be64(COUNTER_BYTES, 0).be64(COUNTER_PACKETS, 0);
            });
        b.push(Msg::NewObj, a);
    }
    for (i, name) in b.set_ids.clone().iter().enumerate() {
        let mut a = Attrs::default();
        a.str(SET_TABLE, table)
            .str(SET_NAME, name)
            .be32(SET_FLAGS, 0)
            .be32(SET_KEY_TYPE, TYPE_IPADDR)
            .be32(SET_KEY_LEN, 4)
            .be32(SET_ID, i as u32 + 1);
        b.push(Msg::NewSet, a);
        let members: &[Ipv4Addr] = f.sets.get(name).map_or(&[], Vec::as_slice);
        if !members.is_empty() {
            b.push(Msg::NewSetElem, set_elems(table, name, members));
        }
    }
    // Layer chains before the base chains that jump to them.
    b.layer_chain("acl-ingress", &f.acl.ingress, Direction::Ingress);
    b.layer_chain("acl-egress", &f.acl.egress, Direction::Egress);
    b.layer_chain("netpol-ingress", &f.netpol.ingress, Direction::Ingress);
    b.layer_chain("netpol-egress", &f.netpol.egress, Direction::Egress);
    b.base(Direction::Ingress);
    b.base(Direction::Egress);
    // The fingerprint covers the table's structure, not set members: a
    // membership change is an element update that cannot rewrite the
    // table's comment, and CHECK compares members itself.
    let fingerprint = fnv(b
        .objects
        .iter()
        .filter(|o| o.msg != Msg::NewSetElem)
        .flat_map(|o| {
            (o.msg as u16)
                .to_ne_bytes()
                .into_iter()
                .chain(o.attrs.iter().copied())
        }));
    Rendered {
        objects: b.objects,
        rules: b.rules,
        fingerprint,
    }
}

/// The attributes of a NEWSETELEM / DELSETELEM of `members` in `set`
/// (without members: the attributes of a GETSETELEM dump of the set).
pub fn set_elems(table: &str, set: &str, members: &[Ipv4Addr]) -> Attrs {
    let mut a = Attrs::default();
    a.str(SET_ELEM_LIST_TABLE, table)
        .str(SET_ELEM_LIST_SET, set);
    if !members.is_empty() {
        a.nest(SET_ELEM_LIST_ELEMENTS, |l| {
            for m in members {
                l.nest(LIST_ELEM, |el| {
                    el.nest(SET_ELEM_KEY, |k| {
                        k.bytes(DATA_VALUE, &m.octets());
                    });
                });
            }
        });
    }
    a
}

/// The IPv4 keys in one GETSETELEM reply (its attributes).
pub fn parse_set_elems(reply: &[u8]) -> Vec<Ipv4Addr> {
    let mut out = Vec::new();
    let Some(list) = crate::wire::attr(reply, SET_ELEM_LIST_ELEMENTS) else {
        return out;
    };
    for (ty, el) in crate::wire::attrs(list) {
        if ty != LIST_ELEM {
            continue;
        }
        let key =
            crate::wire::attr(el, SET_ELEM_KEY).and_then(|k| crate::wire::attr(k, DATA_VALUE));
        if let Some(Ok(b)) = key.map(<[u8; 4]>::try_from) {
            out.push(Ipv4Addr::from(b));
        }
    }
    out
}

pub fn comment(fingerprint: u64) -> String {
    format!("{COMMENT_PREFIX}{fingerprint:016x}")
}
