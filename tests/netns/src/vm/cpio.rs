//! A minimal newc ("070701") cpio writer: the format the kernel unpacks as an
//! initramfs (Documentation/driver-api/early-userspace/buffer-format.rst).
//!
//! Written here rather than taken from a crate: the format is ~40 lines, the
//! kernel needs only directories, regular files, symlinks and one device node
//! (`/dev/console`, so PID 1 has a console before devtmpfs is mounted), and the
//! maintained cpio crates either read only or pull in far more than this.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    CharDev(u32, u32),
}

/// An archive being assembled: paths without a leading `/`; parent
/// directories are added automatically; written sorted, so parents come first.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, (u32, Kind)>,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn clean(path: &str) -> Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    if p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("bad archive path {path:?}");
    }
    Ok(p.to_owned())
}

impl Archive {
    fn insert(&mut self, path: &str, mode: u32, kind: Kind) -> Result<()> {
        let p = clean(path)?;
        let mut parent = String::new();
        for comp in p
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map_or(&[][..], |x| x.1)
        {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(comp);
            match self.entries.get(&parent) {
                None => {
                    self.entries.insert(parent.clone(), (0o755, Kind::Dir));
                }
                Some((_, Kind::Dir)) => {}
                Some(_) => bail!("{parent} is not a directory (needed for {path})"),
            }
        }
        self.entries.insert(p, (mode & 0o7777, kind));
        Ok(())
    }

    pub fn dir(&mut self, path: &str) -> Result<()> {
        self.insert(path, 0o755, Kind::Dir)
    }

    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Result<()> {
        self.insert(path, mode, Kind::File(data.into()))
    }

    /// Copies a host file (following symlinks) to `path` in the archive.
    pub fn copy(&mut self, host: &Path, path: &str, mode: u32) -> Result<()> {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        self.file(path, mode, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, 0o777, Kind::Symlink(target.to_owned()))
    }

    pub fn char_dev(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.insert(path, mode, Kind::CharDev(major, minor))
    }

    pub fn contains(&self, path: &str) -> bool {
        clean(path).is_ok_and(|p| self.entries.contains_key(&p))
    }

    /// The archive bytes, ending with the `TRAILER!!!` record.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (ino, (name, (perm, kind))) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match kind {
                Kind::Dir => (S_IFDIR | perm, &[], (0, 0)),
                Kind::File(d) => (S_IFREG | perm, d, (0, 0)),
                Kind::Symlink(t) => (S_IFLNK | perm, t.as_bytes(), (0, 0)),
                Kind::CharDev(ma, mi) => (S_IFCHR | perm, &[], (*ma, *mi)),
            };
            let nlink = if matches!(kind, Kind::Dir) { 2 } else { 1 };
            record(&mut out, ino as u32 + 1, mode, nlink, name, data, rdev);
        }
        record(&mut out, 0, 0, 1, "TRAILER!!!", &[], (0, 0));
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn record(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    name: &str,
    data: &[u8],
    rdev: (u32, u32),
) {
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor,
    // rdevmajor, rdevminor, namesize (with NUL), check: 13 × 8 hex digits.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        data.len() as u32,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    let _ = write!(out, "070701");
    for f in fields {
        let _ = write!(out, "{f:08x}");
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_and_parents() {
        let mut a = Archive::default();
        a.file("/etc/x", 0o644, b"hello".to_vec()).unwrap();
        a.symlink("var/run", "../run").unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        assert!(a.contains("etc") && a.contains("/var") && a.contains("dev"));
        assert!(a.file("etc/x/y", 0o644, Vec::new()).is_err());
        assert!(a.file("../etc", 0o644, Vec::new()).is_err());
        let b = a.to_bytes();
        assert_eq!(b.len() % 4, 0);
        // First record: "dev" directory, ino 1, mode 040755, nlink 2, namesize 4.
        let h = std::str::from_utf8(&b[..110]).unwrap();
        assert_eq!(&h[..6], "070701");
        assert_eq!(&h[6..14], "00000001");
        assert_eq!(&h[14..22], "000041ed");
        assert_eq!(&h[94..102], "00000004");
        assert_eq!(&b[110..114], b"dev\0");
        let text = String::from_utf8_lossy(&b);
        assert!(text.contains("etc/x\0"));
        assert!(text.contains("hello"));
        // The console is a char device 5:1.
        let at = text.find("dev/console").unwrap() - 110;
        assert_eq!(&text[at + 14..at + 22], "00002180");
        assert_eq!(&text[at + 78..at + 86], "00000005");
        assert_eq!(&text[at + 86..at + 94], "00000001");
        assert!(text.ends_with("TRAILER!!!\0\0\0\0") || text.contains("TRAILER!!!\0"));
    }
}
