//! Installing Rackline on Kubernetes: the deploy/ manifests (rendered with kustomize,
//! validated strictly against the OpenAPI schemas of the oldest and newest supported
//! Kubernetes), the OCI image, and the installer run from the image the way the DaemonSet's
//! init container runs it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use rackline_lab::runtimes::{self, image, kubelet, node::RuntimeNode, podman::Podman};
use rackline_lab::{check_root, Lab};
use serde_json::Value;

/// Kubernetes versions the manifests support: the oldest and the newest are validated.
const OLDEST: &str = "1.28.0";
const NEWEST: &str = "1.37.0";
const RENDERED: [&str; 3] = ["base", "overlays/lab", "overlays/production"];
/// The only image deploy/ names besides Rackline's own: the lab overlay's example etcd.
const LAB_ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.21-0";

fn validate(file: &Path, version: &str) -> Result<runtimes::Output> {
    let mut cmd = Command::new("kubernetes-validate");
    cmd.args(["--strict", "--quiet", "-k", version]).arg(file);
    runtimes::exec(cmd, None, b"", Duration::from_secs(300))
        .context("kubernetes-validate (pip install kubernetes-validate; scripts/install-deps.sh)")
}

fn containers(doc: &Value) -> Vec<&Value> {
    let spec = &doc["spec"]["template"]["spec"];
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .collect()
}

#[test]
fn manifests_render_and_validate_strictly_on_the_oldest_and_newest_kubernetes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let built = image::ensure()?;
    for overlay in RENDERED {
        let yaml = image::render(overlay)?;
        let file = dir
            .path()
            .join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, &yaml)?;
        for v in [OLDEST, NEWEST] {
            let out = validate(&file, v)?;
            ensure!(
                out.success(),
                "deploy/{overlay} does not validate against Kubernetes {v}:\n{}{}",
                out.stdout,
                out.stderr
            );
        }
        // Every container of Rackline's workloads runs the image the build produced.
        let docs = image::yaml_to_json(&yaml)?;
        let mut rackline = 0;
        for d in &docs {
            for c in containers(d) {
                let img = c["image"].as_str().unwrap_or_default();
                if d["metadata"]["name"] == "rackline-etcd" {
                    ensure!(img == LAB_ETCD_IMAGE, "lab etcd image {img}");
                    continue;
                }
                ensure!(
                    img == built.tag,
                    "deploy/{overlay}: {} container {} runs {img:?}, not the built {}",
                    d["metadata"]["name"],
                    c["name"],
                    built.tag
                );
                rackline += 1;
            }
        }
        ensure!(
            rackline == 3,
            "deploy/{overlay}: {rackline} Rackline containers"
        );
    }
    // The built archive really holds that tag.
    let mut tar = Command::new("tar");
    tar.arg("-xOf").arg(&built.archive).arg("index.json");
    let index: Value = serde_json::from_str(
        &runtimes::exec(tar, None, b"", Duration::from_secs(60))?
            .check()?
            .stdout,
    )?;
    let names: Vec<&str> = index["manifests"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["annotations"]["org.opencontainers.image.ref.name"].as_str())
        .collect();
    ensure!(
        names.iter().any(|n| built.tag.ends_with(n)),
        "{} names {names:?}, not {}",
        built.archive.display(),
        built.tag
    );
    // Strict means strict: an unknown field fails.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        image::render("base")?.replace(
            "hostNetwork: true",
            "hostNetwork: true\n      hostNetwrk: true",
        ),
    )?;
    let out = validate(&bad, OLDEST)?;
    ensure!(
        !out.success() && out.stdout.contains("hostNetwrk"),
        "an unknown field passed validation:\n{}",
        out.stdout
    );
    Ok(())
}

/// The shape the install guide and the upgrade story rely on.
#[test]
fn the_daemonset_deployment_and_rbac_say_what_the_docs_promise() -> Result<()> {
    let docs = image::yaml_to_json(&image::render("base")?)?;
    let ds = image::object(&docs, "DaemonSet", "rackline-node")?;
    let spec = kubelet::pod_spec(ds);
    ensure!(spec["hostNetwork"] == true);
    ensure!(spec["priorityClassName"] == "system-node-critical");
    ensure!(spec["tolerations"] == serde_json::json!([{"operator": "Exists"}]));
    ensure!(ds["spec"]["updateStrategy"]["type"] == "RollingUpdate");
    ensure!(ds["metadata"]["namespace"] == "rackline-system");
    let init = kubelet::container(spec, "install-cni")?;
    ensure!(init["command"][0] == "/usr/local/bin/rackline-install");
    let ipamd = kubelet::container(spec, "ipamd")?;
    let env = |name: &str| {
        ipamd["env"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["name"] == name)
            .cloned()
            .unwrap_or(Value::Null)
    };
    ensure!(env("NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName");
    ensure!(ipamd["args"][0] == "--node-name=$(NODE_NAME)");
    ensure!(env("RACKLINE_METRICS_LISTEN")["value"] == "$(NODE_IP):9641");
    ensure!(ipamd["ports"][0]["containerPort"] == 9641);
    ensure!(ipamd["readinessProbe"]["httpGet"]["path"] == "/readyz");
    ensure!(ipamd["livenessProbe"]["httpGet"]["path"] == "/healthz");
    let host_paths: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    ensure!(
        host_paths
            == [
                "/opt/cni/bin",
                "/etc/cni/net.d",
                "/run/rackline",
                "/var/lib/rackline"
            ],
        "{host_paths:?}"
    );

    let nm = image::object(&docs, "Deployment", "rackline-netmaster")?;
    ensure!(nm["spec"]["replicas"] == 3);
    let nspec = kubelet::pod_spec(nm);
    ensure!(
        nspec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
            ["topologyKey"]
            == "kubernetes.io/hostname"
    );
    ensure!(nspec["securityContext"]["runAsNonRoot"] == true);
    let c = kubelet::container(nspec, "netmaster")?;
    ensure!(c["readinessProbe"]["httpGet"]["port"] == "metrics");
    let svc = image::object(&docs, "Service", "rackline-netmaster")?;
    let ports: Vec<i64> = svc["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["port"].as_i64())
        .collect();
    ensure!(ports == [7650, 9642], "{ports:?}");
    image::object(&docs, "PodDisruptionBudget", "rackline-netmaster")?;

    // Least privilege: read nodes, pods, namespaces and NetworkPolicies,
    // create events; nothing else.
    let role = image::object(&docs, "ClusterRole", "rackline-ipamd")?;
    let mut rules: Vec<String> = Vec::new();
    for r in role["rules"].as_array().into_iter().flatten() {
        for res in r["resources"].as_array().into_iter().flatten() {
            for verb in r["verbs"].as_array().into_iter().flatten() {
                rules.push(format!(
                    "{}:{}",
                    res.as_str().unwrap(),
                    verb.as_str().unwrap()
                ));
            }
        }
    }
    rules.sort();
    rules.dedup();
    ensure!(
        rules
            == [
                "events:create",
                "events:patch",
                "namespaces:get",
                "namespaces:list",
                "namespaces:watch",
                "networkpolicies:get",
                "networkpolicies:list",
                "networkpolicies:watch",
                "nodes:get",
                "nodes:list",
                "nodes:watch",
                "pods:get",
                "pods:list",
                "pods:watch"
            ],
        "{rules:?}"
    );

    // Production: TLS material only from the named Secrets.
    let prod = image::yaml_to_json(&image::render("overlays/production")?)?;
    let ds = image::object(&prod, "DaemonSet", "rackline-node")?;
    let secrets: Vec<&str> = kubelet::pod_spec(ds)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["secret"]["secretName"].as_str())
        .collect();
    ensure!(
        secrets
            == [
                "rackline-etcd-client",
                "rackline-netmaster-tls",
                "rackline-ipamd-token"
            ],
        "{secrets:?}"
    );
    Ok(())
}

#[test]
fn the_image_holds_every_binary_statically_linked_and_is_small() -> Result<()> {
    check_root()?;
    let built = image::ensure()?;
    let dir = tempfile::tempdir()?;
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty)?;
    let podman = Podman::new(&dir.path().join("podman"), None, &empty, &empty, "none")?;
    podman.load(&built.archive)?;
    let size: u64 = podman
        .ok(&["image", "inspect", "--format", "{{.Size}}", &built.tag])?
        .stdout
        .trim()
        .parse()?;
    println!(
        "image {}: {} KiB ({})",
        built.tag,
        size / 1024,
        built.summary
    );
    // A regression alarm with room for the daemons' growth, not a target.
    ensure!(size < 64 << 20, "image is {size} bytes: too big");
    // Each binary runs in the scratch image (static: there is no libc in it).
    for (bin, arg, needle) in [
        ("rackline-ipamd", "--version", "rackline-ipamd"),
        ("rackline-netmaster", "--version", "rackline-netmaster"),
        ("racklinectl", "--version", "racklinectl"),
        ("rackline-install", "--version", "rackline-install"),
    ] {
        let out = podman.ok(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--pull",
            "never",
            "--entrypoint",
            &format!("/usr/local/bin/{bin}"),
            &built.tag,
            arg,
        ])?;
        ensure!(out.stdout.contains(needle), "{bin}: {}", out.stdout);
    }
    let out = podman.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--pull",
        "never",
        "--env",
        "CNI_COMMAND=VERSION",
        "--entrypoint",
        "/usr/local/bin/rackline",
        &built.tag,
    ])?;
    let v: Value = serde_json::from_str(out.stdout.trim())?;
    for want in ["1.0.0", "1.1.0"] {
        ensure!(
            v["supportedVersions"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == want)),
            "{v}"
        );
    }
    podman.clean()?;
    ensure!(podman.containers()?.is_empty());
    Ok(())
}

/// A copy of `src` with bytes appended: the same program (ELF ignores trailing bytes) with
/// other content, standing in for a newer plugin.
fn changed_copy(src: &Path, dst: &Path) -> Result<()> {
    let mut b = std::fs::read(src)?;
    b.extend_from_slice(b"\0rackline-upgrade-test\0");
    std::fs::write(dst, b)?;
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn tree(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = std::fs::read_dir(dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;
    names.sort();
    Ok(names)
}

#[test]
fn the_installer_from_the_image_is_atomic_idempotent_and_safe_during_an_add() -> Result<()> {
    check_root()?;
    // The node namespace exists only to give the ADD below a real netns; nothing in the lab
    // runs (no etcd, no ipamd).
    let lab = Lab::builder().nodes(1).rackline(false).build()?;
    let dir = tempfile::tempdir()?;
    let node = RuntimeNode::prepare(&lab, 1, dir.path())?;
    let bin = node.cni_bin().join("rackline");
    let conf = node.cni_conf().join("10-rackline.conflist");

    let first = node.install(&[])?.check()?;
    ensure!(
        first.stdout.contains("installed") && !first.stdout.contains("up to date"),
        "{}",
        first.stdout
    );
    let static_plugin =
        runtimes::workspace_root().join("target/static/x86_64-unknown-linux-gnu/vm/rackline");
    ensure!(
        std::fs::read(&bin)? == std::fs::read(&static_plugin)?,
        "installed plugin differs from the built one"
    );
    ensure!(std::fs::metadata(&bin)?.permissions().mode() & 0o7777 == 0o755);
    let wanted = &node.ctx.config_maps["rackline-cni"]["10-rackline.conflist"];
    ensure!(&std::fs::read_to_string(&conf)? == wanted);
    ensure!(std::fs::metadata(&conf)?.permissions().mode() & 0o7777 == 0o644);
    let inode = std::fs::metadata(&bin)?.ino();

    // Idempotent: nothing rewritten.
    let again = node.install(&[])?.check()?;
    ensure!(
        again.stdout.matches("up to date").count() == 2,
        "{}",
        again.stdout
    );
    ensure!(std::fs::metadata(&bin)?.ino() == inode);

    // An ADD is running from the installed binary (ipamd's socket accepts but never answers,
    // so the plugin waits for its deadline) while a newer plugin is installed, and runtimes
    // keep exec'ing the plugin (VERSION) throughout.
    let silent = dir.path().join("silent.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&silent)?;
    let netconf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "rackline", "type": "rackline", "network": "prod",
        "ipamdSocket": silent.display().to_string(), "timeoutMs": 3000
    })
    .to_string();
    let pod_ns = lab.add_pod(1, "during-install")?;
    let newer = dir.path().join("rackline-newer");
    changed_copy(&static_plugin, &newer)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (add, execs, upgrade) = std::thread::scope(|s| {
        let add = s.spawn(|| {
            let mut cmd = Command::new(&bin);
            cmd.env_clear()
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", "during-install")
                .env("CNI_IFNAME", "eth0")
                .env("CNI_NETNS", pod_ns.netns_path())
                .env("CNI_PATH", node.cni_bin())
                .env(
                    "CNI_ARGS",
                    "K8S_POD_NAMESPACE=default;K8S_POD_NAME=during-install",
                );
            runtimes::exec(
                cmd,
                Some(&node.netns),
                netconf.as_bytes(),
                Duration::from_secs(60),
            )
        });
        let execs = s.spawn(|| -> Result<usize> {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut cmd = Command::new(&bin);
                cmd.env_clear().env("CNI_COMMAND", "VERSION");
                let out = runtimes::exec(
                    cmd,
                    None,
                    b"{\"cniVersion\":\"1.0.0\"}",
                    Duration::from_secs(30),
                )?;
                if !out.success() || !out.stdout.contains("supportedVersions") {
                    bail!("exec #{n} of the plugin during the install failed: {out:?}");
                }
                n += 1;
            }
            Ok(n)
        });
        std::thread::sleep(Duration::from_millis(500));
        let upgrade = node.install(&[
            "--volume".into(),
            format!("{}:/usr/local/bin/rackline:ro", newer.display()),
        ]);
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (add.join(), execs.join(), upgrade)
    });
    let upgrade = upgrade?.check()?;
    ensure!(upgrade.stdout.contains("installed"), "{}", upgrade.stdout);
    let execs = execs.map_err(|_| anyhow::anyhow!("exec thread panicked"))??;
    ensure!(execs > 0, "no exec happened during the install");
    // The running ADD finished normally: its own timeout, reported as CNI code 11.
    let add = add.map_err(|_| anyhow::anyhow!("ADD thread panicked"))??;
    let err: Value = serde_json::from_str(add.stdout.trim())
        .with_context(|| format!("ADD output is not CNI JSON: {add:?}"))?;
    ensure!(err["code"] == 11, "the running ADD ended with {err}");
    ensure!(
        std::fs::read(&bin)? == std::fs::read(&newer)?,
        "the newer plugin is not in place"
    );
    ensure!(std::fs::metadata(&bin)?.ino() != inode);
    // No temporary left in either directory (podman keeps its own cni.lock next to the
    // conflist; nothing else is there).
    ensure!(
        tree(&node.cni_bin())? == ["rackline"],
        "{:?}",
        tree(&node.cni_bin())?
    );
    let confs: Vec<String> = tree(&node.cni_conf())?
        .into_iter()
        .filter(|n| n != "cni.lock")
        .collect();
    ensure!(confs == ["10-rackline.conflist"], "{confs:?}");

    // A broken ConfigMap is refused and leaves the host as it was.
    let before = std::fs::read(&conf)?;
    let bad = dir.path().join("bad.conflist");
    std::fs::write(
        &bad,
        "{\"cniVersion\":\"1.0.0\",\"name\":\"x\",\"plugins\":[]}",
    )?;
    let out = node.install(&[
        "--volume".into(),
        format!(
            "{}:/etc/rackline/cni/10-rackline.conflist:ro",
            bad.display()
        ),
    ])?;
    ensure!(!out.success(), "a conflist without rackline was installed");
    ensure!(
        out.stderr.contains("no plugin of type \"rackline\""),
        "{}",
        out.stderr
    );
    ensure!(std::fs::read(&conf)? == before);
    node.podman.clean()?;
    ensure!(node.podman.containers()?.is_empty());
    Ok(())
}
