//! Reading the snapshot: `etcdctl -w json` (base64 keys and values), the record shapes of
//! docs/CONTRACTS.md parsed with local code, and address-run arithmetic.

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// One etcd key and its raw value.
pub type Record = (String, Vec<u8>);

/// Default `blockSize` of a network record without one (crates/model/src/block.rs).
const DEFAULT_BLOCK_SIZE: u32 = 16;

/// `etcdctl get -w json` output → (revision, [(key, value)]); keys and values are base64.
pub fn parse_etcdctl_json(text: &str) -> Result<(i64, Vec<Record>)> {
    let doc: Value =
        serde_json::from_str(text).with_context(|| format!("etcdctl printed no JSON: {text:?}"))?;
    let revision = doc["header"]["revision"].as_i64().unwrap_or_default();
    let mut records = Vec::new();
    for kv in doc["kvs"].as_array().into_iter().flatten() {
        let key = base64_decode(kv["key"].as_str().context("kv without key")?)?;
        let value = base64_decode(kv["value"].as_str().unwrap_or_default())?;
        records.push((String::from_utf8(key).context("non-UTF-8 key")?, value));
    }
    Ok((revision, records))
}

/// Standard base64 with padding (what etcdctl's JSON writer emits for `bytes` fields).
pub fn base64_decode(text: &str) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => bail!("invalid base64 {text:?}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

/// Sorted, disjoint, non-adjacent inclusive runs of addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Runs(pub(super) Vec<(u32, u32)>);

impl Runs {
    pub(super) fn insert(&mut self, a: u32, b: u32) {
        let mut merged = (a, b);
        let mut keep = Vec::with_capacity(self.0.len() + 1);
        for &(s, e) in &self.0 {
            if e.saturating_add(1) < merged.0 || merged.1.saturating_add(1) < s {
                keep.push((s, e));
            } else {
                merged = (merged.0.min(s), merged.1.max(e));
            }
        }
        keep.push(merged);
        keep.sort_unstable();
        self.0 = keep;
    }

    pub(super) fn remove(&mut self, a: u32, b: u32) {
        let mut keep = Vec::with_capacity(self.0.len() + 1);
        for &(s, e) in &self.0 {
            if e < a || s > b {
                keep.push((s, e));
                continue;
            }
            if s < a {
                keep.push((s, a - 1));
            }
            if e > b {
                keep.push((b + 1, e));
            }
        }
        self.0 = keep;
    }

    pub(super) fn contains(&self, x: u32) -> bool {
        self.covers(x, x)
    }

    /// Whether `[a, b]` lies inside ONE run.
    pub(super) fn covers(&self, a: u32, b: u32) -> bool {
        self.0.iter().any(|&(s, e)| s <= a && b <= e)
    }

    /// The first address both sets hold.
    pub(super) fn first_common(&self, other: &Runs) -> Option<u32> {
        self.0
            .iter()
            .flat_map(|&(s, e)| {
                other
                    .0
                    .iter()
                    .filter(move |&&(os, oe)| os <= e && s <= oe)
                    .map(move |&(os, _)| os.max(s))
            })
            .min()
    }
}

pub(super) fn ip(x: u32) -> Ipv4Addr {
    Ipv4Addr::from(x)
}

pub(super) fn parse_ip(s: &str) -> Option<u32> {
    s.trim().parse::<Ipv4Addr>().ok().map(u32::from)
}

/// `010.010.000.070` (and, leniently, `10.10.0.70`).
pub(super) fn parse_padded(s: &str) -> Option<u32> {
    let mut o = [0u8; 4];
    let mut parts = s.split('.');
    for x in &mut o {
        *x = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then(|| u32::from(Ipv4Addr::from(o)))
}

/// `a.b.c.d/len` → (network, broadcast).
pub(super) fn parse_cidr(s: &str) -> Option<(u32, u32)> {
    let (addr, len) = s.trim().split_once('/')?;
    let len: u32 = len.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    let net = parse_ip(addr)? & mask;
    Some((net, net | !mask))
}

/// An AddrRange as stored: `a`, `a-b` or `a/len`.
pub(super) fn parse_range(s: &str) -> Option<(u32, u32)> {
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (parse_ip(a)?, parse_ip(b)?);
        (a <= b).then_some((a, b))
    } else if s.contains('/') {
        parse_cidr(s)
    } else {
        parse_ip(s).map(|a| (a, a))
    }
}

/// Hosts of a subnet: network and broadcast excluded.
pub(super) fn hosts((net, bcast): (u32, u32)) -> Runs {
    let mut r = Runs::default();
    if bcast > net + 1 {
        r.insert(net + 1, bcast - 1);
    }
    r
}

pub(super) struct Network {
    pub(super) subnet: (u32, u32),
    pub(super) gateway: u32,
    pub(super) exclude: Vec<(u32, u32)>,
    pub(super) block_size: u32,
}

impl Network {
    /// The network's own pool: subnet minus network/broadcast/gateway/exclusions.
    pub(super) fn allocatable(&self) -> Runs {
        let mut r = hosts(self.subnet);
        r.remove(self.gateway, self.gateway);
        for &(a, b) in &self.exclude {
            r.remove(a, b);
        }
        r
    }
}

pub(super) struct RackNet {
    pub(super) key: String,
    pub(super) subnet: (u32, u32),
    pub(super) gateway: u32,
    pub(super) ranges: Vec<(u32, u32)>,
    /// The binding's own exclusions (infrastructure inside its subnet).
    pub(super) exclude: Vec<(u32, u32)>,
}

impl RackNet {
    /// Ranges (or the subnet) ∩ subnet hosts, minus the rack gateway, the network's gateway,
    /// the network's exclusions and the binding's own.
    pub(super) fn allocatable(&self, net: &Network) -> Runs {
        let hosts = hosts(self.subnet);
        let mut r = if self.ranges.is_empty() {
            hosts.clone()
        } else {
            let mut r = Runs::default();
            for &(a, b) in &self.ranges {
                for &(s, e) in &hosts.0 {
                    if a.max(s) <= b.min(e) {
                        r.insert(a.max(s), b.min(e));
                    }
                }
            }
            r
        };
        r.remove(self.gateway, self.gateway);
        r.remove(net.gateway, net.gateway);
        for &(a, b) in net.exclude.iter().chain(&self.exclude) {
            r.remove(a, b);
        }
        r
    }
}

pub(super) struct Lease {
    pub(super) key: String,
    pub(super) network: String,
    pub(super) address: u32,
    pub(super) node: String,
    pub(super) container_id: String,
    pub(super) ifname: String,
    pub(super) standby: bool,
    /// Held for a sticky pod identity that is not running.
    pub(super) reserved: bool,
    /// The sticky identity (namespace, pod) the record names, if any.
    pub(super) sticky: Option<(String, String)>,
    /// A conflict (quarantine) record: no attachment, the address stays taken.
    pub(super) conflict: bool,
}

pub(super) struct Block {
    pub(super) key: String,
    pub(super) network: String,
    pub(super) rack: String,
    pub(super) first: u32,
    pub(super) size: u32,
    pub(super) node: String,
}

impl Lease {
    /// A standby reserve record (or any record without an attachment, e.g. a conflict
    /// record): no pod holds it.
    pub(super) fn is_standby(&self) -> bool {
        self.standby || self.conflict || self.container_id.is_empty()
    }
}

impl Block {
    pub(super) fn last(&self) -> u32 {
        self.first.saturating_add(self.size.max(1) - 1)
    }
}

pub(super) fn str_field(v: &Value, field: &str) -> Option<String> {
    v.get(field)?.as_str().map(str::to_owned)
}

pub(super) fn parse_network(v: &Value) -> Option<Network> {
    Some(Network {
        subnet: parse_cidr(v.get("subnet")?.as_str()?)?,
        gateway: parse_ip(v.get("gateway")?.as_str()?)?,
        exclude: match v.get("exclude") {
            None | Some(Value::Null) => Vec::new(),
            Some(list) => list
                .as_array()?
                .iter()
                .map(|r| parse_range(r.as_str()?))
                .collect::<Option<_>>()?,
        },
        block_size: match v.get("blockSize") {
            None | Some(Value::Null) => DEFAULT_BLOCK_SIZE,
            Some(b) => u32::try_from(b.as_u64()?).ok()?,
        },
    })
}

pub(super) fn parse_racknet(key: &str, v: &Value) -> Option<(String, String, RackNet)> {
    let list = |field: &str| -> Option<Vec<(u32, u32)>> {
        match v.get(field) {
            None | Some(Value::Null) => Some(Vec::new()),
            Some(list) => list
                .as_array()?
                .iter()
                .map(|r| parse_range(r.as_str()?))
                .collect::<Option<_>>(),
        }
    };
    let ranges = list("ranges")?;
    let exclude = list("exclude")?;
    Some((
        str_field(v, "network")?,
        str_field(v, "rack")?,
        RackNet {
            key: key.to_owned(),
            subnet: parse_cidr(v.get("subnet")?.as_str()?)?,
            gateway: parse_ip(v.get("gateway")?.as_str()?)?,
            ranges,
            exclude,
        },
    ))
}

pub(super) fn parse_lease(key: &str, v: &Value) -> Option<Lease> {
    Some(Lease {
        key: key.to_owned(),
        network: str_field(v, "network")?,
        address: parse_ip(v.get("address")?.as_str()?)?,
        node: str_field(v, "node")?,
        container_id: str_field(v, "containerId").unwrap_or_default(),
        ifname: str_field(v, "ifname").unwrap_or_default(),
        standby: v.get("state").and_then(Value::as_str) == Some("standby"),
        reserved: v.get("state").and_then(Value::as_str) == Some("reserved"),
        sticky: if v.get("sticky").and_then(Value::as_bool) == Some(true) {
            let pod = v.get("pod")?;
            Some((str_field(pod, "namespace")?, str_field(pod, "name")?))
        } else {
            None
        },
        conflict: v.get("state").and_then(Value::as_str) == Some("conflict"),
    })
}

pub(super) fn parse_block(key: &str, v: &Value) -> Option<Block> {
    Some(Block {
        key: key.to_owned(),
        network: str_field(v, "network")?,
        rack: str_field(v, "rack")?,
        first: parse_ip(v.get("first")?.as_str()?)?,
        size: u32::try_from(v.get("size")?.as_u64()?).ok()?,
        node: str_field(v, "node")?,
    })
}

/// Judges a snapshot of `(key, value)` pairs (keys under [`super::ETCD_ROOT`]; others are ignored).
pub(super) fn show_runs(r: &Runs) -> String {
    let parts: Vec<String> =
        r.0.iter()
            .map(|&(s, e)| format!("{}-{}", ip(s), ip(e)))
            .collect();
    format!("[{}]", parts.join(", "))
}

pub(super) fn lossy(raw: &[u8]) -> String {
    String::from_utf8_lossy(&raw[..raw.len().min(200)]).into_owned()
}
