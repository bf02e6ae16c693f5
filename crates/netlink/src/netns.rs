//! Network-namespace handles and the one safe way to act inside one.
//!
//! `setns(CLONE_NEWNET)` changes only the calling thread. A thread left in a
//! pod's namespace and then reused (a pool, a tokio worker, the main thread
//! of a plugin that later talks to the host) silently acts in the wrong
//! namespace — the bug containernetworking/plugins `pkg/ns` documents. So
//! nothing here ever moves the caller: every namespace section runs on a
//! fresh `std::thread` that enters the namespace and then exits.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{open, OFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::Mode;

use crate::error::{NetlinkError, Result};

/// `NS_GET_NSTYPE` from `<linux/nsfs.h>`: `_IO(0xb7, 0x3)`. Answers the
/// `CLONE_NEW*` type of an nsfs file (Linux 4.11+).
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// An open network namespace. Holding the fd keeps the namespace alive even
/// if its bind mount (`/var/run/netns/x`) is removed meanwhile.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    path: Option<PathBuf>,
}

impl Netns {
    /// Opens `/var/run/netns/<name>`, `/proc/<pid>/ns/net`, ... and checks it
    /// is a network namespace. A missing path is
    /// [`NetlinkError::Namespace`] with `ENOENT` (`is_not_found()`), which
    /// CNI DEL treats as "netns already gone".
    pub fn open(path: &Path) -> Result<Self> {
        let fd = open_nsfs(path)?;
        check_is_netns(&fd, path)?;
        Ok(Self {
            fd,
            path: Some(path.to_path_buf()),
        })
    }

    /// The calling thread's namespace (`/proc/thread-self/ns/net`: the
    /// thread's, not the process leader's, which can differ).
    pub fn current() -> Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Wraps an fd that already refers to a network namespace (e.g. one
    /// received from another process). The type is checked.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        check_is_netns(&fd, Path::new("<fd>"))?;
        Ok(Self { fd, path: None })
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The path this handle was opened from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The namespace's inode number: two handles refer to the same
    /// namespace exactly when their inodes match (nsfs has one device).
    pub fn inode(&self) -> Result<u64> {
        nix::sys::stat::fstat(&self.fd)
            .map(|st| st.st_ino)
            .map_err(|errno| NetlinkError::Namespace {
                op: "stat netns",
                path: self.display_path(),
                errno,
            })
    }

    /// `(st_dev, st_ino)`: the namespace's identity. A bind mount
    /// (`/var/run/netns/x`), a symlink to it and `/proc/<pid>/ns/net` of a
    /// process inside it all have the same one.
    pub fn identity(&self) -> Result<(u64, u64)> {
        nix::sys::stat::fstat(&self.fd)
            .map(|st| (st.st_dev, st.st_ino))
            .map_err(|errno| NetlinkError::Namespace {
                op: "stat netns",
                path: self.display_path(),
                errno,
            })
    }

    /// Whether this is the calling thread's own network namespace.
    pub fn is_current(&self) -> Result<bool> {
        Ok(self.identity()? == Self::current()?.identity()?)
    }

    pub fn try_clone(&self) -> Result<Self> {
        let fd = self.fd.try_clone().map_err(|e| NetlinkError::Namespace {
            op: "dup netns fd",
            path: self.display_path(),
            errno: NetlinkError::io_errno(&e),
        })?;
        Ok(Self {
            fd,
            path: self.path.clone(),
        })
    }

    fn display_path(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => format!("<fd {}>", self.fd.as_raw_fd()),
        }
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// `st_dev` of nsfs, where every namespace file lives (one superblock).
fn nsfs_dev() -> Result<u64> {
    static DEV: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    if let Some(d) = DEV.get() {
        return Ok(*d);
    }
    let own = Path::new("/proc/thread-self/ns/net");
    let fd = open(own, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
        NetlinkError::Namespace {
            op: "open netns",
            path: own.display().to_string(),
            errno,
        }
    })?;
    let st = nix::sys::stat::fstat(&fd).map_err(|errno| NetlinkError::Namespace {
        op: "stat netns",
        path: own.display().to_string(),
        errno,
    })?;
    Ok(*DEV.get_or_init(|| st.st_dev))
}

fn file_kind(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFIFO => "a FIFO",
        libc::S_IFSOCK => "a socket",
        libc::S_IFDIR => "a directory",
        libc::S_IFCHR => "a character device",
        libc::S_IFBLK => "a block device",
        libc::S_IFLNK => "a symbolic link",
        _ => "a regular file",
    }
}

/// Opens a namespace file without ever blocking: `O_PATH` first (opening a
/// FIFO for reading would wait for a writer forever, a device could do
/// anything), then `fstat` — nsfs files are regular files on the nsfs
/// superblock — and only a file that passes is opened for real, through
/// `/proc/self/fd` so it is the very file that was checked.
fn open_nsfs(path: &Path) -> Result<OwnedFd> {
    let pfd = open(path, OFlag::O_PATH | OFlag::O_CLOEXEC, Mode::empty()).map_err(|errno| {
        NetlinkError::Namespace {
            op: "open netns",
            path: path.display().to_string(),
            errno,
        }
    })?;
    let st = nix::sys::stat::fstat(&pfd).map_err(|errno| NetlinkError::Namespace {
        op: "stat netns",
        path: path.display().to_string(),
        errno,
    })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_dev != nsfs_dev()? {
        return Err(NetlinkError::NotANamespace {
            path: path.display().to_string(),
            found: file_kind(st.st_mode),
        });
    }
    let reopen = PathBuf::from(format!("/proc/self/fd/{}", pfd.as_raw_fd()));
    open(
        &reopen,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )
    .map_err(|errno| NetlinkError::Namespace {
        op: "open netns",
        path: path.display().to_string(),
        errno,
    })
}

fn check_is_netns(fd: &OwnedFd, path: &Path) -> Result<()> {
    // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd's inode;
    // `fd` is a valid open descriptor borrowed for the duration of the call.
    let kind = unsafe { libc::ioctl(fd.as_raw_fd(), NS_GET_NSTYPE) };
    let errno = if kind < 0 {
        // ENOTTY: not an nsfs file at all (e.g. the empty placeholder file a
        // failed `ip netns add` leaves behind).
        Errno::last()
    } else if kind != libc::CLONE_NEWNET {
        Errno::EINVAL
    } else {
        return Ok(());
    };
    Err(NetlinkError::Namespace {
        op: "check network namespace",
        path: path.display().to_string(),
        errno,
    })
}

/// Runs `f` on a fresh thread that first `setns(CLONE_NEWNET)`s into `ns`;
/// the thread exits afterwards, so no thread is ever left (or pooled) in a
/// foreign namespace. Scoped, so `f` may borrow from the caller. A panic in
/// `f` is propagated to the caller as if `f` had run inline.
pub fn run_in_netns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> Result<T> {
    let fd = ns.as_fd();
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("rackline-netns".into())
            .spawn_scoped(scope, move || {
                setns(fd, CloneFlags::CLONE_NEWNET).map_err(|errno| NetlinkError::Namespace {
                    op: "setns",
                    path: ns.display_path(),
                    errno,
                })?;
                Ok(f())
            })
            .map_err(|e| NetlinkError::NamespaceThread(format!("spawn: {e}")))?;
        match handle.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Writes `/proc/sys/<key>` as seen from `ns`, e.g.
/// `("net/ipv4/conf/eth0/arp_notify", "1")`. The file is opened on a thread
/// inside `ns` because `/proc/sys/net` resolves against the *opener's*
/// netns (`net_ctl_header_lookup()` uses `current->nsproxy->net_ns`), not
/// the namespace of the process that mounted /proc.
pub fn write_sysctl_in(ns: &Netns, key: &str, value: &str) -> Result<()> {
    let path = sysctl_path(key)?;
    run_in_netns(ns, || -> std::io::Result<()> {
        // No O_CREAT/O_TRUNC: a missing key must be ENOENT, and proc sysctls
        // take the value in a single write.
        let mut file = OpenOptions::new().write(true).open(&path)?;
        file.write_all(value.as_bytes())
    })?
    .map_err(|e| sysctl_error(key, &e))
}

/// Reads `/proc/sys/<key>` as seen from `ns`, trailing newline removed.
pub fn read_sysctl_in(ns: &Netns, key: &str) -> Result<String> {
    let path = sysctl_path(key)?;
    let raw = run_in_netns(ns, || -> std::io::Result<String> {
        let mut value = String::new();
        OpenOptions::new()
            .read(true)
            .open(&path)?
            .read_to_string(&mut value)?;
        Ok(value)
    })?
    .map_err(|e| sysctl_error(key, &e))?;
    Ok(raw.trim_end_matches('\n').to_owned())
}

fn sysctl_error(key: &str, e: &std::io::Error) -> NetlinkError {
    NetlinkError::Sysctl {
        key: key.to_owned(),
        errno: NetlinkError::io_errno(e),
    }
}

/// Only `net/...` keys: they are the sysctls that are per network namespace.
/// Anything else (`kernel/...`, `vm/...`) is host-global, and writing it
/// "inside" a pod netns would silently change the host. Slash form only: a
/// dotted form would be ambiguous with interface names like `eth0.100`.
pub(crate) fn sysctl_path(key: &str) -> Result<PathBuf> {
    let invalid = |why: &str| NetlinkError::InvalidArgument(format!("sysctl key {key:?}: {why}"));
    if key.starts_with('/') {
        return Err(invalid("must be relative to /proc/sys"));
    }
    if !key.starts_with("net/") {
        return Err(invalid("only net/... sysctls are per network namespace"));
    }
    if key.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if key
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(invalid("empty, '.' or '..' path component"));
    }
    let rel = Path::new(key);
    debug_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))));
    Ok(Path::new("/proc/sys").join(rel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_keys_are_validated() {
        assert_eq!(
            sysctl_path("net/ipv4/conf/eth0.100/arp_notify").unwrap(),
            Path::new("/proc/sys/net/ipv4/conf/eth0.100/arp_notify")
        );
        for bad in [
            "/proc/sys/net/ipv4/ip_forward",
            "net/../kernel/hostname",
            "net/ipv4/./ip_forward",
            "net//ipv4",
            "net/ipv4/",
            "kernel/hostname",
            "",
            "net/ipv4\0/x",
        ] {
            let err = sysctl_path(bad).unwrap_err();
            assert!(
                matches!(err, NetlinkError::InvalidArgument(_)),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn missing_netns_is_not_found() {
        let err = Netns::open(Path::new("/var/run/netns/rackline-does-not-exist")).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert_eq!(err.errno(), Some(Errno::ENOENT));
    }

    #[test]
    fn non_namespace_file_is_rejected() {
        let err = Netns::open(Path::new("/proc/self/status")).unwrap_err();
        assert!(
            matches!(
                err,
                NetlinkError::NotANamespace {
                    found: "a regular file",
                    ..
                }
            ),
            "{err}"
        );
        // Another kind of namespace: nsfs, but not CLONE_NEWNET.
        let err = Netns::open(Path::new("/proc/self/ns/mnt")).unwrap_err();
        assert_eq!(err.errno(), Some(Errno::EINVAL), "{err}");
    }

    #[test]
    fn fifo_socket_and_dir_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        let sock = dir.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        for (p, kind) in [
            (fifo.as_path(), "a FIFO"),
            (sock.as_path(), "a socket"),
            (dir.path(), "a directory"),
            (Path::new("/dev/null"), "a character device"),
        ] {
            let err = Netns::open(p).unwrap_err();
            assert!(
                matches!(&err, NetlinkError::NotANamespace { found, .. } if *found == kind),
                "{}: {err}",
                p.display()
            );
        }
    }

    #[test]
    fn own_namespace_is_recognised_through_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("mine");
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
        let ns = Netns::open(&link).unwrap();
        assert!(ns.is_current().unwrap());
        assert!(Netns::current().unwrap().is_current().unwrap());
    }

    #[test]
    fn current_netns_handle_is_stable() {
        // Entering one's own namespace needs CAP_SYS_ADMIN; this unit test
        // only checks the handle itself, the integration tests enter others.
        let ns = Netns::current().unwrap();
        assert_eq!(
            ns.inode().unwrap(),
            ns.try_clone().unwrap().inode().unwrap()
        );
    }
}
