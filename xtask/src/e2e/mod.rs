//! `cargo xtask e2e`: the shipped `dovetail` binary (and with `--image` its container image under podman)
//! against a real Kubernetes control plane (built from the Go module proxy, see `controlplane.rs`) and the
//! fake EC2 / SQS / SSM served on loopback, with fake kubelets registering Nodes through the real API. Real
//! time, bounded, cleaned up at the end.
//!
//! What it checks, in order (`steps.rs`): our CRDs are accepted by the real API server and a bad NodePool
//! is refused with the server's own message; a NodePool the server accepts but Dovetail cannot use says
//! `Ready=False`; pending pods of a Deployment (marked unschedulable by the real kube-scheduler) become
//! NodeClaims the server validates, then CreateFleet launches, Nodes register and the pods run; `/metrics`
//! counts the claims created; a malformed queue message is deleted and counted; a spot interruption warning
//! drains and replaces the node through a PodDisruptionBudget's 429s and a second writer's 409s; of two
//! replicas the second takes the leader's Lease when the first is killed; scaled to zero, the nodes are
//! consolidated away; SIGTERM releases the Lease.

mod controlplane;
mod kubelet;
mod replica;
mod steps;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

use controlplane::ControlPlane;
pub use replica::Launcher;

/// What a run measured.
pub struct Report {
    pub steps: Vec<(String, Duration)>,
}

fn gvk_api(client: &kube::Client, group: &str, version: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk(group, version, kind);
    Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk))
}

fn objects(text: &str) -> Result<Vec<DynamicObject>, String> {
    text.split("\n---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| {
            serde_saphyr::from_str::<DynamicObject>(d).map_err(|e| format!("test manifest: {e}"))
        })
        .collect()
}

/// Apply one object with server-side apply (field manager `dovetail-e2e`).
async fn apply(client: &kube::Client, obj: &DynamicObject) -> Result<(), kube::Error> {
    let types = obj.types.clone().unwrap_or_default();
    let (group, version) = match types.api_version.split_once('/') {
        Some((g, v)) => (g.to_string(), v.to_string()),
        None => (String::new(), types.api_version.clone()),
    };
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(&group, &version, &types.kind));
    let name = obj.metadata.name.clone().unwrap_or_default();
    let api: Api<DynamicObject> = match &obj.metadata.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
        None => Api::all_with(client.clone(), &resource),
    };
    api.patch(
        &name,
        &PatchParams::apply("dovetail-e2e").force(),
        &Patch::Apply(obj),
    )
    .await
    .map(|_| ())
}

/// Wait (polling every 500 ms) until `check` answers `Some`, or fail after `limit` saying what was awaited.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let started = Instant::now();
    let mut last = String::new();
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = e,
        }
        if started.elapsed() > limit {
            return Err(format!(
                "timed out after {limit:?} waiting for {what} {last}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Run the test: the first replica started by `first`, the one that takes over by `second`.
pub fn run(root: &Path, first: Launcher, second: Launcher) -> Result<Report, String> {
    let mut steps = Vec::new();
    let started = Instant::now();
    let bin = controlplane::binary(root)?;
    steps.push(("control plane binary ready".to_string(), started.elapsed()));
    let dir = std::env::temp_dir().join(format!("dovetail-e2e-{}", std::process::id()));
    let cp = ControlPlane::start(&bin, dir.clone())?;
    steps.push(("kube-apiserver ready".to_string(), started.elapsed()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let result = rt.block_on(scenario(&cp, first, second, &dir, started, &mut steps));
    if let Err(e) = &result {
        return Err(format!(
            "{e}\n--- kube-apiserver (last lines) ---\n{}\n--- dovetail (last lines) ---\n{}\n--- dovetail, second replica (last lines) ---\n{}",
            cp.log_tail("kube-apiserver"),
            controlplane::last_lines(&dir.join("dovetail.log"), 25),
            controlplane::last_lines(&dir.join("dovetail-1.log"), 25)
        ));
    }
    Ok(Report { steps })
}

async fn scenario(
    cp: &ControlPlane,
    first: Launcher,
    second: Launcher,
    dir: &Path,
    started: Instant,
    steps: &mut Vec<(String, Duration)>,
) -> Result<(), String> {
    let mut step = |what: &str| steps.push((what.to_string(), started.elapsed()));
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(&cp.kubeconfig).map_err(|e| e.to_string())?,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| format!("kubeconfig: {e}"))?;
    let client = dovetail_kubeclient::client(config).map_err(|e| format!("client: {e}"))?;
    let mut e2e = steps::E2e::new(client.clone(), cp, dir, first, second);
    match e2e.run(&mut step).await {
        Ok(()) => Ok(()),
        Err(e) => Err(format!(
            "{e}\n--- the cluster ---\n{}",
            diagnose(&client).await
        )),
    }
}

/// What a failure needs explained: each pod's phase, node and scheduling message; each node's taints.
async fn diagnose(client: &kube::Client) -> String {
    let mut out = String::new();
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
    if let Ok(list) = pods.list(&ListParams::default()).await {
        for p in list.items {
            let status = p.status.unwrap_or_default();
            let scheduled = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled")
                .map(|c| format!("{} {}", c.status, c.message.unwrap_or_default()))
                .unwrap_or_default();
            out.push_str(&format!(
                "pod {}/{} phase={} node={} scheduled={scheduled}\n",
                p.metadata.namespace.unwrap_or_default(),
                p.metadata.name.unwrap_or_default(),
                status.phase.unwrap_or_default(),
                p.spec.and_then(|s| s.node_name).unwrap_or_default(),
            ));
        }
    }
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    if let Ok(list) = nodes.list(&ListParams::default()).await {
        for n in list.items {
            let spec = n.spec.unwrap_or_default();
            out.push_str(&format!(
                "node {} unschedulable={:?} taints={:?} allocatable={:?}\n",
                n.metadata.name.unwrap_or_default(),
                spec.unschedulable,
                spec.taints
                    .unwrap_or_default()
                    .iter()
                    .map(|t| format!("{}:{}", t.key, t.effect))
                    .collect::<Vec<_>>(),
                n.status.and_then(|s| s.allocatable).unwrap_or_default(),
            ));
        }
    }
    out
}

/// GET a path from the controller's HTTP server on loopback (hyper's client, as the rest of the project).
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect to :{port}: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header("host", "127.0.0.1")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The `dovetail` binary to test: `target/debug/dovetail`, as the test build leaves it (CI runs the tests
/// first). It is not built from here: a cargo started inside `cargo xtask` sees the environment `cargo run`
/// sets and rebuilds much of the workspace (the AWS SDK included) under other fingerprints.
pub fn test_binary(root: &Path) -> Result<PathBuf, String> {
    let binary = root.join("target/debug/dovetail");
    let built = std::fs::metadata(&binary)
        .and_then(|m| m.modified())
        .map_err(|_| {
            format!(
                "{} is missing: build it first with `cargo test --workspace --no-run` (or `cargo build -p dovetail-operator`)",
                binary.display()
            )
        })?;
    // Cargo's dep-info names exactly the files the binary was built from, so an edited unit test (which
    // only the test build reads) does not count; without it, every source under the crates it links.
    let newer = match std::fs::read_to_string(binary.with_extension("d")) {
        Ok(depinfo) => built_from(&depinfo)
            .into_iter()
            .find(|p| modified_after(p, built)),
        Err(_) => ["controller/src", "operator/src", "kubeclient/src"]
            .iter()
            .flat_map(|d| newer_sources(&root.join(d), built))
            .next(),
    };
    if let Some(source) = newer {
        return Err(format!(
            "{} is older than {}: rebuild it first with `cargo test --workspace --no-run`",
            binary.display(),
            source.display()
        ));
    }
    Ok(binary)
}

/// The `.rs` files under `dir` changed after `than`.
fn newer_sources(dir: &Path, than: std::time::SystemTime) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            out.extend(newer_sources(&path, than));
        } else if path.extension().is_some_and(|x| x == "rs") && modified_after(&path, than) {
            out.push(path);
        }
    }
    out
}

fn modified_after(path: &Path, than: std::time::SystemTime) -> bool {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|m| m > than)
}

/// The inputs a cargo dep-info file (`target: a.rs b\ c.rs ...`, spaces in names escaped) gives for its
/// first target.
fn built_from(depinfo: &str) -> Vec<PathBuf> {
    let Some(line) = depinfo.lines().next() else {
        return Vec::new();
    };
    // The target ends at the first unescaped `: ` (a Windows drive letter has no space after it).
    let bytes = line.as_bytes();
    let Some(colon) = (0..bytes.len().saturating_sub(1))
        .find(|&i| bytes[i] == b':' && bytes[i + 1] == b' ' && (i == 0 || bytes[i - 1] != b'\\'))
    else {
        return Vec::new();
    };
    let rest = &line[colon + 2..];
    let mut files = Vec::new();
    let mut current = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.extend(chars.next()),
            ' ' => {
                if !current.is_empty() {
                    files.push(PathBuf::from(std::mem::take(&mut current)));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        files.push(PathBuf::from(current));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dep_info_lists_the_inputs_of_its_first_target_with_escaped_spaces() {
        let d = "/t/debug/dovetail: /w/a.rs /w/my\\ dir/b.rs  /w/c.csv\n\n/w/a.rs:\n";
        assert_eq!(
            built_from(d),
            vec![
                PathBuf::from("/w/a.rs"),
                PathBuf::from("/w/my dir/b.rs"),
                PathBuf::from("/w/c.csv")
            ]
        );
        assert!(built_from("").is_empty());
        assert!(built_from("no target here").is_empty());
    }
}
