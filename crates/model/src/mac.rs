//! Stable MAC addresses derived from the pod's IPv4 address.
//!
//! A sticky pod that moves to another node keeps its address; if it also
//! keeps its MAC, every neighbour's ARP entry for it (the TOR's included)
//! stays valid and nothing has to be re-learned. Deriving the MAC from the
//! address gives that for free, with no record to store.
//!
//! Layout: `0a:58:` followed by the four address bytes.
//! * `0x0a` has the locally-administered bit (0x02) set and the multicast
//!   bit (0x01) clear: a unicast address no vendor OUI can ever use.
//! * `0a:58` is the prefix OVN-Kubernetes already uses for MACs derived
//!   from a pod's IPv4 address, so operators recognise the scheme in a
//!   switch's MAC table.
//! * Two pods on one L2 segment have distinct IPv4 addresses (the IPAM
//!   guarantees it), so their MACs differ: a collision within a segment is
//!   impossible by construction. Addresses of different networks may map to
//!   the same MAC only if the networks' subnets overlap, which netmaster
//!   refuses.

use std::net::Ipv4Addr;

/// The fixed first two bytes of every Rackline pod MAC.
pub const MAC_PREFIX: [u8; 2] = [0x0a, 0x58];

/// The MAC a pod with `ip` gets on its macvlan.
pub fn for_address(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [MAC_PREFIX[0], MAC_PREFIX[1], o[0], o[1], o[2], o[3]]
}

/// The second-choice prefix: the kernel refuses two macvlans with one MAC
/// on one parent, so when two incarnations of one sticky pod overlap on a
/// node (the new sandbox before the old one's DEL), the newer one uses
/// `0a:59:` + the address. Still locally administered unicast, still unique
/// per address.
pub const ALTERNATE_PREFIX: [u8; 2] = [0x0a, 0x59];

/// The alternate MAC of `ip` (see [`ALTERNATE_PREFIX`]).
pub fn alternate_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [
        ALTERNATE_PREFIX[0],
        ALTERNATE_PREFIX[1],
        o[0],
        o[1],
        o[2],
        o[3],
    ]
}

/// `aa:bb:cc:dd:ee:ff`, the form `ip link` and the CNI result use.
pub fn format(mac: [u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_is_prefix_plus_address_and_locally_administered_unicast() {
        let mac = for_address(Ipv4Addr::new(10, 10, 0, 70));
        assert_eq!(mac, [0x0a, 0x58, 10, 10, 0, 70]);
        assert_eq!(format(mac), "0a:58:0a:0a:00:46");
        assert_eq!(mac[0] & 0x01, 0, "unicast");
        assert_eq!(mac[0] & 0x02, 0x02, "locally administered");
    }

    #[test]
    fn distinct_addresses_never_share_a_mac() {
        let a = for_address(Ipv4Addr::new(10, 10, 0, 1));
        let b = for_address(Ipv4Addr::new(10, 10, 1, 0));
        let c = for_address(Ipv4Addr::new(192, 168, 0, 1));
        assert!(a != b && b != c && a != c);
        // Pure: the same address always gives the same MAC.
        assert_eq!(a, for_address(Ipv4Addr::new(10, 10, 0, 1)));
        let alt = alternate_for(Ipv4Addr::new(10, 10, 0, 1));
        assert_ne!(alt, a);
        assert_eq!(alt, [0x0a, 0x59, 10, 10, 0, 1]);
        assert_eq!(alt[0] & 0x03, 0x02, "locally administered unicast");
    }
}
