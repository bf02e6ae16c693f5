//! Runs a container of a rendered pod template with podman the way a kubelet would: the same
//! image, command, arguments, environment (downward API, ConfigMap keys, `$(VAR)` expansion
//! including the Service variables the kubelet injects), volumes (hostPath under a node root
//! directory, ConfigMaps as files), user, capabilities, read-only root and host network. So
//! the tests run exactly what `deploy/` says, not a copy of it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// What the kubelet would know about the node and the cluster.
#[derive(Clone, Debug)]
pub struct NodeContext {
    pub node_name: String,
    pub node_ip: String,
    /// hostPath `/x/y` is `<host_root>/x/y`.
    pub host_root: PathBuf,
    /// Service variables (`RACKLINE_NETMASTER_SERVICE_HOST`, ...).
    pub service_env: BTreeMap<String, String>,
    /// ConfigMaps by name (the rendered ones, possibly edited by the test).
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Where ConfigMap volumes are materialised.
    pub scratch: PathBuf,
}

impl NodeContext {
    /// The host path behind `hostPath: path`.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.host_root.join(path.trim_start_matches('/'))
    }
}

/// The ConfigMaps of rendered manifests, by name.
pub fn config_maps(docs: &[Value]) -> BTreeMap<String, BTreeMap<String, String>> {
    docs.iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| {
            let data = d["data"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                data,
            )
        })
        .collect()
}

/// Kubernetes `$(VAR)` expansion: known variables are replaced, `$$` escapes, unknown
/// references stay as written (as the kubelet leaves them).
pub fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) if vars.contains_key(&body[..end]) => {
                    out.push_str(&vars[&body[..end]]);
                    rest = &body[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// The container's environment in the kubelet's order and expansion.
pub fn environment(container: &Value, ctx: &NodeContext) -> Result<Vec<(String, String)>> {
    let mut vars: BTreeMap<String, String> = ctx.service_env.clone();
    let mut env = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().context("env without name")?.to_string();
        let value = if let Some(v) = e["value"].as_str() {
            expand(v, &vars)
        } else if let Some(f) = e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match f {
                "spec.nodeName" => ctx.node_name.clone(),
                "status.hostIP" | "status.podIP" => ctx.node_ip.clone(),
                "metadata.name" => format!("{}-pod", ctx.node_name),
                other => bail!("fieldRef {other} is not emulated"),
            }
        } else if e["valueFrom"]["configMapKeyRef"].is_object() {
            let r = &e["valueFrom"]["configMapKeyRef"];
            let (cm, key) = (
                r["name"].as_str().unwrap_or_default(),
                r["key"].as_str().unwrap_or_default(),
            );
            ctx.config_maps
                .get(cm)
                .and_then(|d| d.get(key))
                .cloned()
                .with_context(|| format!("ConfigMap {cm} key {key} (env {name})"))?
        } else {
            bail!("env {name}: unsupported source {e}")
        };
        vars.insert(name.clone(), value.clone());
        env.push((name, value));
    }
    Ok(env)
}

/// `podman run` arguments for `container` of `pod_spec` (a pod template's `spec`), without
/// the leading `run` and the mode flags (`--rm`/`-d --name`), which the caller adds.
pub fn podman_run_args(
    pod_spec: &Value,
    container: &Value,
    ctx: &NodeContext,
    image_tag: &str,
) -> Result<Vec<String>> {
    let name = container["name"].as_str().unwrap_or("?");
    let image = container["image"].as_str().unwrap_or_default();
    if image != image_tag {
        bail!("container {name} runs image {image:?}, not the built {image_tag:?}");
    }
    if pod_spec["hostNetwork"] != true {
        bail!("the pod template is not hostNetwork: only host-network pods are emulated");
    }
    let mut a: Vec<String> = vec![
        "--network".into(),
        "host".into(),
        "--pull".into(),
        "never".into(),
    ];
    let env = environment(container, ctx)?;
    let vars: BTreeMap<String, String> = ctx
        .service_env
        .clone()
        .into_iter()
        .chain(env.iter().cloned())
        .collect();
    for (k, v) in &env {
        a.push("--env".into());
        a.push(format!("{k}={v}"));
    }
    let sc = &container["securityContext"];
    if let Some(u) = sc["runAsUser"]
        .as_u64()
        .or(pod_spec["securityContext"]["runAsUser"].as_u64())
    {
        a.push("--user".into());
        a.push(u.to_string());
    }
    if sc["readOnlyRootFilesystem"] == true {
        a.push("--read-only".into());
    }
    if sc["allowPrivilegeEscalation"] == false {
        a.push("--security-opt".into());
        a.push("no-new-privileges".into());
    }
    for c in strs(&sc["capabilities"]["drop"]) {
        a.push("--cap-drop".into());
        a.push(c.to_lowercase());
    }
    for c in strs(&sc["capabilities"]["add"]) {
        a.push("--cap-add".into());
        a.push(c.to_lowercase());
    }
    let volumes = pod_spec["volumes"].as_array().cloned().unwrap_or_default();
    for m in container["volumeMounts"].as_array().into_iter().flatten() {
        let vname = m["name"].as_str().unwrap_or_default();
        let path = m["mountPath"]
            .as_str()
            .context("volumeMount without mountPath")?;
        let v = volumes
            .iter()
            .find(|v| v["name"] == vname)
            .with_context(|| format!("volume {vname} not in the pod"))?;
        let src = if let Some(hp) = v["hostPath"]["path"].as_str() {
            let p = ctx.host_path(hp);
            if v["hostPath"]["type"] == "DirectoryOrCreate" {
                std::fs::create_dir_all(&p)?;
            }
            p
        } else if let Some(cm) = v["configMap"]["name"].as_str() {
            let dir = ctx.scratch.join(format!("configmap-{cm}"));
            std::fs::create_dir_all(&dir)?;
            for (k, text) in ctx
                .config_maps
                .get(cm)
                .with_context(|| format!("ConfigMap {cm}"))?
            {
                std::fs::write(dir.join(k), text)?;
            }
            dir
        } else {
            bail!("volume {vname}: only hostPath and configMap are emulated: {v}");
        };
        let ro = if m["readOnly"] == true { ":ro" } else { "" };
        a.push("--volume".into());
        a.push(format!("{}:{path}{ro}", src.display()));
    }
    let command = strs(&container["command"]);
    if !command.is_empty() {
        a.push("--entrypoint".into());
        a.push(serde_json::to_string(&command)?);
    }
    a.push(image.to_string());
    a.extend(strs(&container["args"]).iter().map(|s| expand(s, &vars)));
    Ok(a)
}

/// The pod template spec of a rendered workload.
pub fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// A container (or init container) of a pod spec by name.
pub fn container<'a>(spec: &'a Value, name: &str) -> Result<&'a Value> {
    spec["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
        .chain(spec["containers"].as_array().into_iter().flatten())
        .find(|c| c["name"] == name)
        .with_context(|| format!("no container {name} in the pod template"))
}

/// Writes a file the way a host would have it (for tests that pre-populate a node root).
pub fn write_host_file(ctx: &NodeContext, path: &str, content: &[u8]) -> Result<PathBuf> {
    let p = ctx.host_path(path);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&p, content)?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "1".to_string())].into();
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$A", &vars), "$A");
    }

    #[test]
    fn host_paths_live_under_the_node_root() {
        let ctx = NodeContext {
            node_name: "n".into(),
            node_ip: "1.2.3.4".into(),
            host_root: Path::new("/tmp/r").into(),
            service_env: BTreeMap::new(),
            config_maps: BTreeMap::new(),
            scratch: Path::new("/tmp/s").into(),
        };
        assert_eq!(
            ctx.host_path("/run/rackline"),
            Path::new("/tmp/r/run/rackline")
        );
    }
}
