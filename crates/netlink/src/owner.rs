//! The names and ownership marks Rackline gives an attachment's links, shared
//! by the CNI plugin (which creates and removes them) and ipamd's leak
//! reconciler (which removes the node ends of pods that are gone). One
//! definition, so both always agree on what is Rackline's.
//!
//! Names are deterministic (DEL finds what ADD made without any state on the
//! node) and every name fits IFNAMSIZ (15).

use std::hash::Hasher;

use fnv::FnvHasher;

use crate::LinkInfo;

/// FNV-1a over `parts`, each followed by a NUL. FNV-1a is specified and
/// stable across Rust releases (std's default hasher is not guaranteed to
/// be), so a plugin upgrade between ADD and DEL still computes the same
/// names.
pub fn name_hash(parts: &[&str]) -> u64 {
    let mut h = FnvHasher::default();
    for p in parts {
        h.write(p.as_bytes());
        h.write_u8(0);
    }
    h.finish()
}

/// Node-side end of the node<->pod veth: "rl" + 12 hex digits.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!(
        "rl{:012x}",
        name_hash(&[container_id, ifname]) & 0xffff_ffff_ffff
    )
}

/// Whether `name` has the shape of a node veth: `rl` + 12 hex digits.
pub fn is_host_veth_name(name: &str) -> bool {
    name.len() == 14 && name.starts_with("rl") && name[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// The device group that tags an attachment's links, so DEL removes them
/// (and the veth peer) in one kernel batch. High bit set to stay clear of
/// small group numbers operators may use.
pub fn link_group(ifname: &str) -> u32 {
    0x8000_0000 | (name_hash(&["rackline-group", ifname]) as u32 & 0x7fff_ffff)
}

/// The prefix of every ownership mark.
pub const MARK_PREFIX: &str = "rackline:";

/// The proof of ownership every link Rackline creates carries in its alias
/// (`IFLA_IFALIAS`): `rackline:<containerId>:<ifname>`. When that exceeds the
/// kernel's 255-byte alias limit (container ids over 230 bytes), the id is
/// replaced by `#` + 32 hex digits of two FNV-1a hashes over
/// `containerId \0 ifname \0`, seeded differently. Both forms are a pure
/// function of the attachment, so DEL recomputes and compares them without
/// any state; the container id makes two pods' links (or a stranger's)
/// impossible to mistake for each other.
pub fn owner_mark(container_id: &str, ifname: &str) -> String {
    let full = format!("{MARK_PREFIX}{container_id}:{ifname}");
    if full.len() <= crate::link::MAX_ALIAS_LEN {
        return full;
    }
    format!(
        "{MARK_PREFIX}#{:016x}{:016x}:{ifname}",
        name_hash(&["rackline-mark-a", container_id, ifname]),
        name_hash(&["rackline-mark-b", container_id, ifname])
    )
}

/// The attachment an attachment mark names: (container id, ifname). None for
/// anything else, including a VLAN device's mark and the hashed form (whose
/// container id cannot be recovered). Interface names cannot contain `:`, so
/// the last `:` separates them. (A VLAN device's mark, `rackline:vlan:<device>`,
/// has the same shape: an id of `vlan` is refused.)
pub fn parse_mark(alias: &str) -> Option<(&str, &str)> {
    let rest = alias.strip_prefix(MARK_PREFIX)?;
    let (id, ifname) = rest.rsplit_once(':')?;
    if id.is_empty() || ifname.is_empty() || id.starts_with('#') || id == "vlan" {
        return None;
    }
    (owner_mark(id, ifname) == alias).then_some((id, ifname))
}

/// Whether `link` is the marked node veth of attachment
/// (`container_id`, `ifname`): kind veth, the name derived from the
/// attachment, its mark and its device group. The rule DEL applies to a
/// marked node veth; an unmarked one is never this.
pub fn is_marked_node_veth(link: &LinkInfo, container_id: &str, ifname: &str) -> bool {
    link.kind.as_deref() == Some("veth")
        && link.name == host_veth(container_id, ifname)
        && link.alias.as_deref() == Some(owner_mark(container_id, ifname).as_str())
        && link.group == link_group(ifname)
}

/// Whether `link` is a node veth of any Rackline attachment (marked, or
/// named `rl` + 12 hex digits without an alias): the only kind of device a
/// stale node route to a pod address may point at and still be replaced.
pub fn is_rackline_node_veth(link: &LinkInfo) -> bool {
    if link.kind.as_deref() != Some("veth") {
        return false;
    }
    match &link.alias {
        Some(a) => a.starts_with(MARK_PREFIX),
        None => is_host_veth_name(&link.name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn veth(name: &str, alias: Option<&str>, group: u32) -> LinkInfo {
        LinkInfo {
            index: 7,
            name: name.into(),
            kind: Some("veth".into()),
            mtu: 1500,
            mac: None,
            up: true,
            parent_index: None,
            vlan_id: None,
            vlan_protocol: None,
            macvlan_mode: None,
            group,
            alias: alias.map(str::to_owned),
        }
    }

    #[test]
    fn marks_parse_back_to_their_attachment() {
        assert_eq!(parse_mark("rackline:abc:eth0"), Some(("abc", "eth0")));
        assert_eq!(
            parse_mark(&owner_mark("a.b-c", "net1")),
            Some(("a.b-c", "net1"))
        );
        assert_eq!(parse_mark("rackline:vlan:eth1.100"), None);
        assert_eq!(parse_mark(&owner_mark(&"x".repeat(300), "eth0")), None);
        assert_eq!(parse_mark("operator note"), None);
        assert_eq!(parse_mark("rackline::eth0"), None);
    }

    #[test]
    fn a_marked_node_veth_needs_name_mark_kind_and_group() {
        let (id, ifn) = ("c1", "eth0");
        let good = veth(
            &host_veth(id, ifn),
            Some(&owner_mark(id, ifn)),
            link_group(ifn),
        );
        assert!(is_marked_node_veth(&good, id, ifn));
        assert!(!is_marked_node_veth(&good, "c2", ifn));
        let mut other = good.clone();
        other.alias = Some("my uplink".into());
        assert!(!is_marked_node_veth(&other, id, ifn));
        let mut unmarked = good.clone();
        unmarked.alias = None;
        assert!(!is_marked_node_veth(&unmarked, id, ifn));
        let mut group = good.clone();
        group.group = 0;
        assert!(!is_marked_node_veth(&group, id, ifn));
        let mut kind = good;
        kind.kind = Some("dummy".into());
        assert!(!is_marked_node_veth(&kind, id, ifn));
        assert!(is_host_veth_name("rl0123456789ab") && !is_host_veth_name("rl0123456789ag"));
    }
}
