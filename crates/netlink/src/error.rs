//! One error enum for the crate. Kernel failures keep their errno so callers
//! branch on `EEXIST` / `ENODEV` instead of parsing strings (the netavark
//! habit), and only the CNI edge maps them to CNI error codes.

use nix::errno::Errno;

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The kernel answered a request with `NLMSG_ERROR` (or a failed
    /// `NLMSG_DONE`). Displays like `create macvlan eth0: File exists (EEXIST)`.
    #[error("{op} {target}: {desc} ({errno:?})", desc = errno.desc())]
    Kernel {
        op: &'static str,
        target: String,
        errno: Errno,
    },
    /// Socket-level failure (socket/bind/send/recv).
    #[error("netlink I/O: {0}")]
    Io(#[from] std::io::Error),
    /// A reply the crate could not parse, or one that breaks the protocol.
    #[error("decode netlink reply: {0}")]
    Decode(String),
    /// Opening, checking or entering a network namespace failed. `ENOENT`
    /// on open means the namespace is gone (see [`NetlinkError::is_not_found`]).
    #[error("{op} {path}: {desc} ({errno:?})", desc = errno.desc())]
    Namespace {
        op: &'static str,
        path: String,
        errno: Errno,
    },
    /// The path exists but is not a network namespace file (a FIFO, a
    /// directory, a regular file, ...); found without opening it.
    #[error("{path} is {found}, not a network namespace")]
    NotANamespace { path: String, found: &'static str },
    /// Reading or writing `/proc/sys/<key>` inside a namespace failed.
    #[error("sysctl {key}: {desc} ({errno:?})", desc = errno.desc())]
    Sysctl { key: String, errno: Errno },
    /// The helper thread that enters a namespace could not be spawned.
    #[error("network namespace thread: {0}")]
    NamespaceThread(String),
    /// Rejected before anything was sent (interface name longer than
    /// IFNAMSIZ-1, VLAN id out of range, bad sysctl key, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl NetlinkError {
    /// The errno behind this error, when there is one. Validation errors
    /// ([`NetlinkError::InvalidArgument`]) and decode errors have none.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Self::Kernel { errno, .. }
            | Self::Namespace { errno, .. }
            | Self::Sysctl { errno, .. } => Some(*errno),
            Self::Io(e) => e.raw_os_error().map(Errno::from_raw),
            Self::Decode(_)
            | Self::NamespaceThread(_)
            | Self::InvalidArgument(_)
            | Self::NotANamespace { .. } => None,
        }
    }

    /// `EEXIST`: a link, address or route with that identity already exists.
    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }

    /// The object is gone: `ENODEV` (no such link), `ENOENT` (no such netns
    /// file or sysctl), `ESRCH` (no such route), and `EADDRNOTAVAIL` (the
    /// kernel's answer to deleting an IPv4 address that is not there). DEL
    /// paths treat all of them as "already done".
    pub fn is_not_found(&self) -> bool {
        matches!(
            self.errno(),
            Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH | Errno::EADDRNOTAVAIL)
        )
    }

    pub(crate) fn kernel(op: &'static str, target: &str, errno: Errno) -> Self {
        Self::Kernel {
            op,
            target: target.to_owned(),
            errno,
        }
    }

    pub(crate) fn io_errno(e: &std::io::Error) -> Errno {
        Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_error_display_and_predicates() {
        let e = NetlinkError::kernel("create macvlan", "eth0", Errno::EEXIST);
        assert_eq!(e.to_string(), "create macvlan eth0: File exists (EEXIST)");
        assert!(e.is_exists());
        assert!(!e.is_not_found());
        assert_eq!(e.errno(), Some(Errno::EEXIST));

        for errno in [
            Errno::ENODEV,
            Errno::ENOENT,
            Errno::ESRCH,
            Errno::EADDRNOTAVAIL,
        ] {
            let e = NetlinkError::kernel("delete link", "ifindex 7", errno);
            assert!(e.is_not_found(), "{errno:?}");
        }
        let io = NetlinkError::Io(std::io::Error::from_raw_os_error(libc::ENOBUFS));
        assert_eq!(io.errno(), Some(Errno::ENOBUFS));
        assert_eq!(NetlinkError::Decode("x".into()).errno(), None);
    }
}
