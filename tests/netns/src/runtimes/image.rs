//! The image built by `scripts/build-image.sh` and the manifests rendered from `deploy/`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use super::workspace_root;
use crate::process::run;

/// The image's tag: `rackline.local/rackline:<workspace version>` (what deploy/base names).
pub fn tag() -> String {
    format!("rackline.local/rackline:{}", env!("CARGO_PKG_VERSION"))
}

/// The built image: its tag and the OCI archive `podman save` wrote.
#[derive(Clone, Debug)]
pub struct Image {
    pub tag: String,
    pub archive: PathBuf,
    /// The build script's summary line (sizes).
    pub summary: String,
}

/// Runs `scripts/build-image.sh --profile vm` once per test process (a no-op when the
/// static-build step and an earlier build are up to date; the script serialises concurrent
/// callers).
pub fn ensure() -> Result<Image> {
    static BUILT: OnceLock<std::result::Result<Image, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!("building the image failed: {e}"))
}

fn build() -> Result<Image> {
    let root = workspace_root();
    let mut cmd = Command::new("bash");
    super::shell_build_env(&mut cmd);
    cmd.current_dir(&root)
        .arg("scripts/build-image.sh")
        .args(["--profile", "vm"]);
    let out = run(cmd, None, b"", Duration::from_secs(3600))?.check()?;
    let summary = out
        .stdout
        .lines()
        .rfind(|l| l.starts_with("build-image:"))
        .unwrap_or_default()
        .to_string();
    let archive = root.join(format!(
        "target/image/rackline-{}.oci.tar",
        env!("CARGO_PKG_VERSION")
    ));
    if !archive.is_file() {
        bail!("{} missing after the build:\n{summary}", archive.display());
    }
    Ok(Image {
        tag: tag(),
        archive,
        summary,
    })
}

/// `kubectl kustomize deploy/<dir>` as YAML.
pub fn render(dir: &str) -> Result<String> {
    let kubectl = super::require("kubectl", "kubectl (google-cloud-cli or kubernetes-client)")?;
    let mut cmd = Command::new(kubectl);
    cmd.arg("kustomize")
        .arg(workspace_root().join("deploy").join(dir));
    Ok(run(cmd, None, b"", Duration::from_secs(60))?
        .check()?
        .stdout)
}

/// The documents of a YAML stream as JSON (PyYAML, installed with kubernetes-validate).
pub fn yaml_to_json(yaml: &str) -> Result<Vec<Value>> {
    let mut cmd = Command::new("python3");
    cmd.args([
        "-c",
        "import sys, json, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
    ]);
    let out = run(cmd, None, yaml.as_bytes(), Duration::from_secs(60))?
        .check()
        .context(
            "python3 with PyYAML (pip install kubernetes-validate; scripts/install-deps.sh)",
        )?;
    let v: Value = serde_json::from_str(&out.stdout)?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// The rendered object of `kind` named `name`.
pub fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendered manifests"))
}
