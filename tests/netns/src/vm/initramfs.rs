//! The VLAN test VM's initramfs: busybox-static as the userland, iproute2's
//! `ip` and tcpdump with the shared libraries `ldd` names, the static Rackline
//! binaries under test, and the kernel modules the scenario needs (8021q,
//! veth, macvlan, bridge, the virtio NIC) with their dependencies resolved
//! from the kernel's own `modules.dep`, in load order.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

use super::cpio::Archive;
use crate::process::{run, CHILD_PATH};

/// Modules the guest loads (dependencies are added from modules.dep):
/// 802.1Q, the lab's links, and the virtio NIC that reaches the host's etcd.
pub const GUEST_MODULES: &[&str] = &[
    "8021q",
    "veth",
    "macvlan",
    "bridge",
    "virtio_pci",
    "virtio_net",
];

/// Where the guest finds things (the scenario's environment points here).
pub const GUEST_IP: &str = "/usr/sbin/ip";
pub const GUEST_TCPDUMP: &str = "/usr/bin/tcpdump";
pub const GUEST_RACKLINE: &str = "/usr/local/bin/rackline";
pub const GUEST_IPAMD: &str = "/usr/local/bin/rackline-ipamd";

const INIT_SH: &str = include_str!("../../vm/init.sh");
pub const SCENARIO_SH: &str = include_str!("../../vm/vlan-scenario.sh");

/// What goes into the image.
pub struct Contents<'a> {
    pub modules_dir: &'a Path,
    pub busybox: &'a Path,
    pub ip: &'a Path,
    pub tcpdump: &'a Path,
    pub rackline: &'a Path,
    pub ipamd: &'a Path,
    /// `/etc/rackline/vm.env`: the scenario's variables.
    pub env: String,
}

/// Resolves `wanted` (module names, `-` and `_` equivalent) against
/// `modules.dep` into relative paths in load order: every module after all
/// of its dependencies, each once.
pub fn module_load_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>> {
    let norm = |s: &str| s.replace('-', "_");
    let mut deps = std::collections::HashMap::new();
    let mut by_name = std::collections::HashMap::new();
    for line in modules_dep.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let name = Path::new(path)
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| f.split('.').next())
            .map(norm)
            .unwrap_or_default();
        by_name.insert(name, path.to_owned());
        deps.insert(
            path.to_owned(),
            rest.split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        );
    }
    fn visit(
        path: &str,
        deps: &std::collections::HashMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        if !seen.insert(path.to_owned()) {
            return;
        }
        for d in deps.get(path).into_iter().flatten() {
            visit(d, deps, seen, out);
        }
        out.push(path.to_owned());
    }
    let (mut seen, mut out) = (BTreeSet::new(), Vec::new());
    for w in wanted {
        let path = by_name.get(&norm(w)).with_context(|| {
            format!("module {w} is not in modules.dep (built into this kernel, or missing)")
        })?;
        visit(path, &deps, &mut seen, &mut out);
    }
    Ok(out)
}

/// The shared libraries (and the dynamic loader) a host binary needs, from
/// `ldd`: `(path as ldd prints it, real file)`.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>> {
    let mut cmd = Command::new("ldd");
    cmd.env_clear().env("PATH", CHILD_PATH).arg(bin);
    let out = run(cmd, None, b"", std::time::Duration::from_secs(30))?;
    if out.stdout.contains("not a dynamic executable") || out.stderr.contains("not a dynamic") {
        return Ok(Vec::new());
    }
    let out = out
        .check()
        .with_context(|| format!("ldd {}", bin.display()))?;
    let mut libs = Vec::new();
    for line in out.stdout.lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x…)"; linux-vdso has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line
                .split_whitespace()
                .next()
                .filter(|p| p.starts_with('/')),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Whether an ELF file has a `PT_INTERP` header (a dynamically linked executable).
pub fn is_dynamic(bin: &Path) -> Result<bool> {
    let b = std::fs::read(bin).with_context(|| format!("reading {}", bin.display()))?;
    ensure!(
        b.len() > 64 && &b[..4] == b"\x7fELF" && b[4] == 2,
        "{} is not a 64-bit ELF file",
        bin.display()
    );
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        ensure!(
            at + 4 <= b.len(),
            "{}: truncated program headers",
            bin.display()
        );
        if u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes")) == 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

fn add_with_libs(a: &mut Archive, host: &Path, guest: &str) -> Result<()> {
    a.copy(host, guest, 0o755)?;
    for lib in shared_libs(host)? {
        let path = lib.to_string_lossy().into_owned();
        if !a.contains(&path) {
            a.copy(&lib, &path, 0o755)?;
        }
    }
    Ok(())
}

/// Assembles the image; returns the newc bytes (uncompressed: the kernel
/// unpacks it faster than it would decompress it under emulation).
pub fn build(c: &Contents<'_>) -> Result<Vec<u8>> {
    if is_dynamic(c.busybox)? {
        bail!(
            "{} is dynamically linked; the VM needs busybox-static (apt-get install busybox-static)",
            c.busybox.display()
        );
    }
    for bin in [c.rackline, c.ipamd] {
        if is_dynamic(bin)? {
            bail!("{} is not a static build", bin.display());
        }
    }
    let dep = std::fs::read_to_string(c.modules_dir.join("modules.dep"))
        .with_context(|| format!("reading {}/modules.dep", c.modules_dir.display()))?;
    let order = module_load_order(&dep, GUEST_MODULES)?;

    let mut a = Archive::default();
    for d in [
        "proc",
        "sys",
        "dev",
        "run",
        "tmp",
        "bin",
        "sbin",
        "etc/rackline",
        "lib/modules",
    ] {
        a.dir(d)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;
    // CNI_NETNS paths are /var/run/netns/<name>, as on the host.
    a.symlink("var/run", "../run")?;
    a.file("init", 0o755, INIT_SH)?;
    a.file("etc/rackline/vlan-scenario.sh", 0o755, SCENARIO_SH)?;
    a.file("etc/rackline/vm.env", 0o644, c.env.clone())?;
    a.file("etc/rackline/modules.order", 0o644, order.join("\n") + "\n")?;
    // tcpdump looks its users up (-Z root) even when it keeps root.
    a.file("etc/passwd", 0o644, "root:x:0:0:root:/:/bin/sh\n")?;
    a.file("etc/group", 0o644, "root:x:0:\n")?;
    a.copy(c.busybox, "bin/busybox", 0o755)?;
    a.symlink("bin/sh", "busybox")?;
    add_with_libs(&mut a, c.ip, GUEST_IP)?;
    add_with_libs(&mut a, c.tcpdump, GUEST_TCPDUMP)?;
    a.copy(c.rackline, GUEST_RACKLINE, 0o755)?;
    a.copy(c.ipamd, GUEST_IPAMD, 0o755)?;
    for m in &order {
        a.copy(&c.modules_dir.join(m), &format!("lib/modules/{m}"), 0o644)?;
    }
    Ok(a.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/net/802/mrp.ko:
kernel/net/llc/llc.ko:
kernel/net/802/stp.ko: kernel/net/llc/llc.ko
kernel/net/802/garp.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/net/8021q/8021q.ko: kernel/net/802/garp.ko kernel/net/802/stp.ko kernel/net/802/mrp.ko kernel/net/llc/llc.ko
kernel/net/bridge/bridge.ko: kernel/net/802/stp.ko kernel/net/llc/llc.ko
kernel/drivers/net/macvlan.ko:
";

    #[test]
    fn dependencies_load_first_and_once() {
        let order = module_load_order(DEP, &["8021q", "bridge", "macvlan"]).unwrap();
        let names: Vec<&str> = order
            .iter()
            .map(|p| p.rsplit('/').next().unwrap().trim_end_matches(".ko"))
            .collect();
        assert_eq!(
            names,
            ["llc", "stp", "garp", "mrp", "8021q", "bridge", "macvlan"]
        );
        assert!(module_load_order(DEP, &["dummy"]).is_err());
    }

    #[test]
    fn detects_dynamic_and_static_elves() {
        // /bin/sh on Debian is dash, dynamically linked.
        assert!(is_dynamic(Path::new("/bin/sh")).unwrap());
        assert!(is_dynamic(Path::new("/etc/hostname")).is_err());
    }
}
