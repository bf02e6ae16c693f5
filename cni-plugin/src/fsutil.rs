//! Files the plugin opens because the runtime or the netconf named them
//! (`logFile`, `runtimeDir`): never a blocking open, never a wait without a
//! bound.
//!
//! Opening a FIFO for writing blocks until a reader appears (for reading,
//! until a writer does), and a device can do anything; so the type is checked
//! with `stat` first and again with `fstat` on a descriptor opened with
//! `O_NONBLOCK` (for a FIFO without a reader the open fails with `ENXIO`
//! instead of waiting).

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};

/// "a FIFO", "a directory", ... for messages.
pub fn kind_of(ft: std::fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "a regular file"
    }
}

fn not_regular(path: &Path, ft: std::fs::FileType) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("{} is {}, not a regular file", path.display(), kind_of(ft)),
    )
}

/// Opens `path` as a regular file without ever blocking. `follow`: whether a
/// symbolic link is followed (a log file may be one; files inside the
/// runtime directory never are).
pub fn open_regular(path: &Path, opts: &mut OpenOptions, follow: bool) -> io::Result<File> {
    let meta = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match meta {
        Ok(m) if !m.file_type().is_file() => return Err(not_regular(path, m.file_type())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut flags = libc::O_NONBLOCK | libc::O_CLOEXEC;
    if !follow {
        flags |= libc::O_NOFOLLOW;
    }
    let f = opts.custom_flags(flags).open(path)?;
    let m = f.metadata()?;
    if !m.file_type().is_file() {
        return Err(not_regular(path, m.file_type()));
    }
    Ok(f)
}

/// Reads a small regular file (at most `max` bytes).
pub fn read_small(path: &Path, max: u64) -> io::Result<String> {
    let f = open_regular(path, OpenOptions::new().read(true), false)?;
    let mut s = String::new();
    f.take(max).read_to_string(&mut s)?;
    Ok(s)
}

/// Creates `dir` (and its parents) with mode 0700 and checks it is a
/// directory (not a symbolic link to one).
pub fn ensure_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let m = std::fs::symlink_metadata(dir)?;
    if !m.file_type().is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {}, not a directory",
                dir.display(),
                kind_of(m.file_type())
            ),
        ));
    }
    Ok(())
}

/// Writes `bytes` to `dir/name` atomically and durably: a temporary file
/// (created exclusively, mode 0600), fsync, rename over the name, fsync of
/// the directory. A crash leaves the old content or the new, never a torn
/// record.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dir.join(name))?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `dir/name` (created or truncated) without atomicity: for records
/// whose loss only makes the plugin more careful (the VLAN registry).
pub fn write_plain(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = open_regular(
        path,
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600),
        false,
    )?;
    f.write_all(bytes)
}

/// Removes a file; a missing one is fine.
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Takes an exclusive flock(2) on `file`, waiting at most `wait`: holders
/// keep it for a lookup or a delete only, so a lock still held after
/// seconds belongs to a stuck or hostile process, and the caller gets an
/// error instead of hanging with it.
pub fn lock_bounded(file: File, path: &Path, wait: Duration) -> io::Result<Flock<File>> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(1);
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => return Ok(l),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "{} is still locked by another process after {wait:?}",
                            path.display()
                        ),
                    ));
                }
                std::thread::sleep(pause.min(deadline - now));
                pause = (pause * 2).min(Duration::from_millis(50));
                file = f;
            }
            Err((_, errno)) => return Err(io::Error::from_raw_os_error(errno as i32)),
        }
    }
}

/// The inode of the calling thread's network namespace: the node identity
/// that keys the VLAN registry and the release spool.
pub fn node_netns_ino() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::stat::Mode;

    #[test]
    fn fifo_and_dir_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        for p in [fifo.as_path(), d.path()] {
            let e =
                open_regular(p, OpenOptions::new().append(true).create(true), true).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
            let e = read_small(p, 10).unwrap_err();
            assert!(e.to_string().contains("not a regular file"), "{e}");
            assert!(write_plain(p, b"x").is_err());
        }
        // A FIFO with a reader: open succeeds, fstat refuses it.
        let reader = std::thread::spawn({
            let fifo = fifo.clone();
            move || {
                let _ = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(fifo);
            }
        });
        reader.join().unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        assert!(open_regular(&link, OpenOptions::new().read(true), false).is_err());
        assert!(open_regular(&link, OpenOptions::new().read(true), true).is_err());
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        write_atomic(d.path(), "r.json", b"one").unwrap();
        write_atomic(d.path(), "r.json", b"two").unwrap();
        assert_eq!(read_small(&d.path().join("r.json"), 100).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("r.json")]);
        remove_if_present(&d.path().join("r.json")).unwrap();
        remove_if_present(&d.path().join("r.json")).unwrap();
    }

    #[test]
    fn lock_wait_is_bounded() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("lock");
        let open = || {
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&p)
                .unwrap()
        };
        let held = lock_bounded(open(), &p, Duration::from_secs(1)).unwrap();
        let t = Instant::now();
        let e = lock_bounded(open(), &p, Duration::from_millis(100)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(t.elapsed() < Duration::from_secs(5));
        drop(held);
        lock_bounded(open(), &p, Duration::from_millis(100)).unwrap();
    }
}
