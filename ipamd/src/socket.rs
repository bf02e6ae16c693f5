//! The root-only unix socket the CNI plugin connects to.
//!
//! Two locks: the socket file is mode 0600 root from the moment it is
//! reachable, and every caller's uid (SO_PEERCRED) is checked on its
//! requests (only uid 0 is served), so a socket made accessible by mistake
//! (a chmod, a permissive parent directory) still serves nobody else.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use tokio::net::UnixListener;

/// Binds `path` with mode 0600 (its directory 0700 when we create it).
/// Refuses to steal the socket of a live ipamd; removes a stale one.
///
/// `bind(2)` creates the socket file with the mode `0777 & ~umask`, so a
/// chmod after bind leaves a window in which another user could connect.
/// Changing the umask is process-wide (other threads create files too), so
/// instead the socket is bound inside a fresh 0700 directory, made 0600
/// there, and renamed into place: nobody else can reach it before it is
/// 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() && !dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another ipamd is serving this socket",
                ));
            }
            fs::remove_file(path)?;
        }
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "path exists and is not a socket; refusing to remove it",
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ipamd.sock".into());
    let private = dir.join(format!(".{name}.{}.bind", std::process::id()));
    if fs::symlink_metadata(&private).is_ok() {
        fs::remove_dir_all(&private)?;
    }
    fs::DirBuilder::new().mode(0o700).create(&private)?;
    // DirBuilder's mode is filtered by the umask too: make sure.
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700))?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = std::os::unix::net::UnixListener::bind(&staged)?;
        fs::set_permissions(&staged, fs::Permissions::from_mode(0o600))?;
        fs::rename(&staged, path)?;
        listener.set_nonblocking(true)?;
        Ok::<_, io::Error>(listener)
    })();
    let _ = fs::remove_file(&staged);
    let _ = fs::remove_dir(&private);
    UnixListener::from_std(bound?)
}

pub fn remove(path: &Path) {
    if let Ok(meta) = fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            let _ = fs::remove_file(path);
        }
    }
}
