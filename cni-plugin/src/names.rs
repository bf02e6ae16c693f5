//! Deterministic interface names, so DEL finds what ADD made without any
//! state on the node, and every name fits IFNAMSIZ (15).

use rackline_model::network::MAX_IFNAME_LEN;
// The node veth's name, the device group and the ownership mark are shared
// with ipamd's leak reconciler: one definition in the netlink crate.
pub use rackline_netlink::owner::{host_veth, link_group, owner_mark, MARK_PREFIX};

fn hash(parts: &[&str]) -> u64 {
    rackline_netlink::owner::name_hash(parts)
}

/// Pod-side end: `rl-<ifname>` when it fits, else a hashed form.
pub fn pod_veth(ifname: &str) -> String {
    let n = format!("rl-{ifname}");
    if n.len() <= MAX_IFNAME_LEN {
        n
    } else {
        format!("rl-{:012x}", hash(&[ifname]) & 0xffff_ffff_ffff)
    }
}

/// The ifb carrying a pod interface's ingress shaper, in the pod netns:
/// `rlifb-<ifname>` when it fits, else a hashed form.
pub fn ifb(ifname: &str) -> String {
    let n = format!("rlifb-{ifname}");
    if n.len() <= MAX_IFNAME_LEN {
        n
    } else {
        format!("rlifb{:010x}", hash(&["ifb", ifname]) & 0xff_ffff_ffff)
    }
}

/// The mark (alias) of a VLAN device Rackline created: `rackline:vlan:<device>`.
/// Shared by every attachment on the device, so it names the device; the
/// registry's `created` record (same ifindex) and this mark together decide
/// whether DEL may delete it.
pub fn vlan_mark(device: &str) -> String {
    format!("{MARK_PREFIX}vlan:{device}")
}

/// Temporary name for a macvlan whose final name clashes in the node netns
/// (the kernel checks the name in the caller's netns even when the link is
/// born in another one).
///
/// Unique per process and instant, not random: `rand`'s OS seed is a blocking
/// getrandom(2), which hangs until the kernel CRNG is initialised — found
/// when the VLAN VM test's ADD froze right after boot; a node that starts
/// pods early in boot would freeze the same way.
pub fn temporary() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let seed = format!("{}-{nanos}", std::process::id());
    format!("rltmp{:08x}", hash(&["rackline-tmp", &seed]) as u32)
}

/// The VLAN device of `vid` on `master`: `<master>.<vid>` (the `ip link`
/// convention) when it fits in 15 bytes, else "rlv" + 7 hex digits of the
/// FNV-1a hash of the master's name + "." + vid, e.g. "rlv2c09e81.4094" for
/// enp129s0f1np1. Deterministic, so every ADD on the node (and DEL) agrees
/// on the name without any state; a hash clash with another master is caught
/// by the reuse check (parent ifindex), never silently shared.
pub fn vlan_device(master: &str, vid: u16) -> String {
    let n = format!("{master}.{vid}");
    if n.len() <= MAX_IFNAME_LEN {
        n
    } else {
        format!("rlv{:07x}.{vid}", hash(&[master]) & 0xfff_ffff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_distinct_and_short() {
        let a = host_veth("c1", "eth0");
        assert_eq!(a, host_veth("c1", "eth0"));
        assert_ne!(a, host_veth("c1", "net1"));
        assert_ne!(a, host_veth("c2", "eth0"));
        assert_eq!(a.len(), 14);
        assert_eq!(pod_veth("eth0"), "rl-eth0");
        let long = pod_veth("averylongname15");
        assert!(long.len() <= 15, "{long}");
        assert!(temporary().len() <= 15);
        assert_eq!(ifb("eth0"), "rlifb-eth0");
        let i = ifb("averylongname15");
        assert!(i.len() <= 15 && i.starts_with("rlifb"), "{i}");
        assert_ne!(i, ifb("averylongname16"));
        assert!(temporary().starts_with("rltmp"));
        assert_eq!(vlan_device("eth1", 100), "eth1.100");
        let v = vlan_device("enp129s0f1np1", 4094);
        assert!(v.len() <= 15 && v.ends_with(".4094"), "{v}");
        assert_eq!(v, vlan_device("enp129s0f1np1", 4094));
        assert_ne!(link_group("eth0"), link_group("net1"));
        assert!(link_group("eth0") & 0x8000_0000 != 0);
    }

    #[test]
    fn owner_marks_fit_the_alias_limit_and_differ() {
        assert_eq!(owner_mark("abc", "eth0"), "rackline:abc:eth0");
        assert_ne!(owner_mark("abc", "eth0"), owner_mark("abd", "eth0"));
        assert_ne!(owner_mark("abc", "eth0"), owner_mark("abc", "net1"));
        let long_a = "a".repeat(256);
        let mut long_b = "a".repeat(255);
        long_b.push('b');
        let (ma, mb) = (
            owner_mark(&long_a, "averylongname15"),
            owner_mark(&long_b, "averylongname15"),
        );
        assert!(ma.len() <= 255 && mb.len() <= 255, "{ma}");
        assert!(
            ma.starts_with("rackline:#") && ma.ends_with(":averylongname15"),
            "{ma}"
        );
        assert_ne!(ma, mb);
        // The longest id that keeps the readable form.
        let edge = "c".repeat(255 - "rackline::".len() - "averylongname15".len());
        assert_eq!(
            owner_mark(&edge, "averylongname15"),
            format!("rackline:{edge}:averylongname15")
        );
        // Pinned: a plugin upgrade between ADD and DEL must agree.
        assert_eq!(
            owner_mark(&long_a, "eth0"),
            "rackline:#b068856bda97cdefd25824cf3ae1613c:eth0"
        );
    }

    #[test]
    fn vlan_short_form_is_pinned() {
        // Renaming would orphan VLAN devices (and their registry) on upgrade.
        assert_eq!(vlan_device("enp129s0f1np1", 4094), "rlv2c09e81.4094");
        assert_eq!(vlan_device("enp129s0f1np1", 40), "rlv2c09e81.40");
        // 15 bytes exactly still gets the readable form.
        assert_eq!(vlan_device("enp129s0f1np1", 7), "enp129s0f1np1.7");
        assert_eq!(vlan_device("enp12s0f1n", 4094), "enp12s0f1n.4094");
        assert_ne!(vlan_device("enp12s0f1np", 4094), "enp12s0f1np.4094");
    }

    const PINNED_HOST_VETH: &str = "rl68676b661760";
    const PINNED_GROUP: u32 = 2_992_123_745;

    #[test]
    fn known_fnv_value_pins_the_hash() {
        // Changing the hash or the name format would orphan every running
        // pod's veth on upgrade: pin concrete values.
        assert_eq!(hash(&[]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(host_veth("abc", "eth0"), PINNED_HOST_VETH);
        assert_eq!(link_group("eth0"), PINNED_GROUP);
    }
}
