//! Rackline's netlink layer: a small synchronous typed rtnetlink socket and
//! network-namespace helpers, for the CNI plugin (no tokio, 4 ms ADD budget)
//! and the daemons.
//!
//! Shape (after containers/netavark `network/netlink.rs`): one [`Netlink`]
//! handle per network namespace, created *in* that namespace, with one typed
//! method per verb. Every request is built by a pure function
//! (`link::macvlan_request`, `route::add_route_request`, ...) so the exact
//! attributes are unit-tested without root. Errors keep the kernel errno
//! ([`NetlinkError::errno`], `is_exists()`, `is_not_found()`).
//!
//! Links are born in their final namespace: a macvlan carries its parent's
//! ifindex plus `IFLA_NET_NS_FD` of the pod, a veth peer carries its own
//! `IFLA_NET_NS_FD` inside `VETH_INFO_PEER`. Product code never runs `ip`/`tc`.

pub mod addr;
pub mod error;
pub mod link;
pub mod netns;
pub mod owner;
pub mod route;
pub mod rule;
mod socket;
pub mod tc;

pub use addr::AddrInfo;
pub use error::{NetlinkError, Result};
pub use link::{LinkInfo, MacvlanMode};
pub use netns::{read_sysctl_in, run_in_netns, write_sysctl_in, Netns};
pub use route::{RouteInfo, RouteScope, RouteSpec};
pub use rule::{RuleInfo, RuleSpec};
pub use socket::Netlink;
pub use tc::{FilterInfo, QdiscInfo, QdiscSlot, Tbf};

/// Linux `IFNAMSIZ` is 16 including the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;

/// Checks an interface name the way the kernel's `dev_valid_name()` does, so
/// a bad name fails before anything is sent (and with a clearer message
/// than the kernel's bare EINVAL).
pub fn validate_ifname(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        "is empty"
    } else if name.len() > MAX_IFNAME_LEN {
        "is longer than 15 bytes (IFNAMSIZ)"
    } else if name == "." || name == ".." {
        "is '.' or '..'"
    } else if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        "contains '/', ':', NUL or whitespace"
    } else {
        return Ok(());
    };
    Err(NetlinkError::InvalidArgument(format!(
        "interface name {name:?} {why}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_validation_matches_kernel_rules() {
        for ok in ["eth0", "mv-0123456789ab", "eth0.100", "a"] {
            validate_ifname(ok).unwrap();
        }
        for bad in ["", "0123456789abcdef", ".", "..", "a/b", "a b", "a:b"] {
            assert!(validate_ifname(bad).is_err(), "{bad:?}");
        }
    }
}
