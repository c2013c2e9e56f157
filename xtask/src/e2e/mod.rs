//! `cargo xtask e2e`: the shipped `dovetail` binary against a real Kubernetes control plane (built from the
//! Go module proxy, see `controlplane.rs`) and the fake EC2 / SQS / SSM served on loopback, with fake
//! kubelets registering Nodes through the real API. Real time, bounded, cleaned up at the end.
//!
//! What it checks, in order: our CRDs are accepted by the real API server and a bad NodePool is refused
//! with the server's own message; pending pods of a Deployment (marked unschedulable by the real
//! kube-scheduler) become NodeClaims the server validates, then CreateFleet launches, Nodes register and
//! the pods run; `/metrics` counts the claims created; a spot interruption warning on the queue drains and
//! replaces the node; of two replicas the second takes the leader's Lease when the first is killed; scaled
//! to zero, the nodes are consolidated away; SIGTERM releases the Lease.

mod controlplane;
mod kubelet;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakecloud::http::AwsFront;
use fakecloud::{Catalog, CloudConfig, FakeCloud};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

use controlplane::ControlPlane;

/// The cluster's name, in the fake account's discovery tags and the binary's settings.
const CLUSTER: &str = "e2e";

const NODE_CLASS_AND_POOL: &str = "
apiVersion: karpenter.k8s.aws/v1
kind: EC2NodeClass
metadata: {name: default}
spec:
  amiSelectorTerms: [{alias: al2023@latest}]
  role: KarpenterNodeRole-e2e
  subnetSelectorTerms: [{tags: {karpenter.sh/discovery: e2e}}]
  securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: e2e}}]
---
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: default}
spec:
  disruption: {consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: 5s}
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      expireAfter: Never
      requirements:
        - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
        - {key: node.kubernetes.io/instance-type, operator: In, values: [m5.large, m5.xlarge, m5.2xlarge]}
";

const BAD_POOL: &str = "
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: too-heavy}
spec:
  weight: 500
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements: []
";

const DEPLOYMENT: &str = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 4
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
        - name: web
          image: nginx
          resources: {requests: {cpu: 700m, memory: 1Gi}}
";

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

/// The `dovetail` binary as a child process, killed when dropped.
struct Controller(Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run the test; `binary` is the `dovetail` binary to run.
pub fn run(root: &Path, binary: &Path) -> Result<Report, String> {
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
    let result = rt.block_on(scenario(&cp, binary, &dir, started, &mut steps));
    if let Err(e) = &result {
        return Err(format!(
            "{e}\n--- kube-apiserver (last lines) ---\n{}\n--- dovetail (last lines) ---\n{}",
            cp.log_tail("kube-apiserver"),
            controlplane::last_lines(&dir.join("dovetail.log"), 25)
        ));
    }
    Ok(Report { steps })
}

async fn scenario(
    cp: &ControlPlane,
    binary: &Path,
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
    match steps_against(&client, cp, binary, dir, &mut step).await {
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

async fn steps_against(
    client: &kube::Client,
    cp: &ControlPlane,
    binary: &Path,
    dir: &Path,
    step: &mut impl FnMut(&str),
) -> Result<(), String> {
    let client = client.clone();

    // Our CRDs, validated by the real API server (structural schema, CEL rules, defaults).
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds"))
        .map_err(|e| format!("deploy/crds: {e}"))?
    {
        let path = entry.map_err(|e| e.to_string())?.path();
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let crd: CustomResourceDefinition =
            serde_saphyr::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        crds.create(&PostParams::default(), &crd)
            .await
            .map_err(|e| format!("the API server refused {}: {e}", path.display()))?;
    }
    for name in [
        "nodepools.karpenter.sh",
        "nodeclaims.karpenter.sh",
        "ec2nodeclasses.karpenter.k8s.aws",
    ] {
        until(
            &format!("CRD {name} established"),
            Duration::from_secs(30),
            || {
                let crds = crds.clone();
                async move {
                    let crd = crds.get(name).await.map_err(|e| e.to_string())?;
                    let established = crd.status.and_then(|s| s.conditions).is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    });
                    Ok(established.then_some(()))
                }
            },
        )
        .await?;
    }
    step("CRDs accepted and established");

    // A NodePool the schema refuses: the server's message names the field.
    let bad = objects(BAD_POOL)?.remove(0);
    match apply(&client, &bad).await {
        Ok(()) => return Err("the API server accepted a NodePool with weight 500".into()),
        Err(kube::Error::Api(s)) if s.code == 422 && s.message.contains("spec.weight") => {
            eprintln!("  refused as expected: {}", s.message);
        }
        Err(e) => {
            return Err(format!(
                "a bad NodePool was refused, but not for spec.weight: {e}"
            ));
        }
    }
    for obj in objects(NODE_CLASS_AND_POOL)? {
        apply(&client, &obj)
            .await
            .map_err(|e| format!("apply {:?}: {e}", obj.metadata.name))?;
    }
    step("bad NodePool refused; EC2NodeClass and NodePool applied");

    // The fake AWS account, in real time, served on loopback; its kubelets registering through the API.
    let cloud = FakeCloud::new(
        CloudConfig {
            cluster_name: CLUSTER.into(),
            foreign_instances: 0,
            launch_latency: (Duration::from_secs(1), Duration::from_secs(2)),
            shutdown_latency: Duration::from_secs(3),
            visibility_lag: (Duration::ZERO, Duration::from_millis(500)),
            ..CloudConfig::default()
        },
        Catalog::builtin(),
        1,
        Arc::new(dovetail::clock::SystemClock),
        Arc::new(dovetail::journal::LogJournal),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind: {e}"))?;
    let aws_endpoint = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(fakecloud::http::serve(
        listener,
        AwsFront::new(cloud.clone()),
    ));
    {
        let cloud = cloud.clone();
        let client = client.clone();
        tokio::spawn(async move {
            let mut registered = BTreeSet::new();
            loop {
                cloud.step();
                if let Err(e) = kubelet::step(&client, &cloud, &mut registered).await {
                    eprintln!("  kubelet: {e}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    // The controller: the binary as shipped, configured as in a cluster.
    let start_replica = |replica: u32| -> Result<(Controller, u16), String> {
        let metrics_port = controlplane::free_port()?;
        let health_port = controlplane::free_port()?;
        let log_name = if replica == 0 {
            "dovetail.log".to_string()
        } else {
            format!("dovetail-{replica}.log")
        };
        let log = std::fs::File::create(dir.join(log_name)).map_err(|e| e.to_string())?;
        let child = Command::new(binary)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("CLUSTER_NAME", CLUSTER)
            .env("CLUSTER_ENDPOINT", &cp.server)
            .env("INTERRUPTION_QUEUE", &cloud.config().queue_url)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ENDPOINT_URL", &aws_endpoint)
            .env("AWS_ACCESS_KEY_ID", "e2e")
            .env("AWS_SECRET_ACCESS_KEY", "e2e")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("METRICS_PORT", metrics_port.to_string())
            .env("HEALTH_PROBE_PORT", health_port.to_string())
            .env("POD_NAME", format!("dovetail-e2e-{replica}"))
            .env("LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", binary.display()))?;
        Ok((Controller(child), metrics_port))
    };
    let (mut first, metrics_port) = start_replica(0)?;
    step("dovetail started");

    for obj in objects(DEPLOYMENT)? {
        apply(&client, &obj)
            .await
            .map_err(|e| format!("deployment: {e}"))?;
    }
    let claims = gvk_api(&client, "karpenter.sh", "v1", "NodeClaim");
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "default");
    until(
        "the web pods to run on launched nodes",
        Duration::from_secs(120),
        || {
            let pods = pods.clone();
            async move {
                let list = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .map_err(|e| e.to_string())?;
                let running = list
                    .items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                    })
                    .count();
                Ok((running == 4).then_some(()))
            }
        },
    )
    .await?;
    let created = claims
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
        .len();
    if created == 0 {
        return Err("the pods run but no NodeClaim exists".into());
    }
    step(&format!(
        "4 pending pods -> {created} NodeClaim(s) -> instances -> nodes -> pods Running"
    ));

    // /metrics: the claims created, counted.
    let metrics = http_get(metrics_port, "/metrics").await?;
    let counted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("karpenter_nodeclaims_created_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    if counted as usize != created {
        return Err(format!(
            "karpenter_nodeclaims_created_total says {counted}, the API has {created} NodeClaims"
        ));
    }
    step("/metrics karpenter_nodeclaims_created_total matches");

    // A spot interruption warning for the node's instance, through the served queue: the controller drains
    // the node and replaces it before the instance is reclaimed; the pods run again elsewhere.
    let victim = cloud
        .instances()
        .into_iter()
        .find(|r| {
            r.instance.state == dovetail::aws::cloud::InstanceState::Running
                && r.instance.tags.contains_key("karpenter.sh/nodeclaim")
        })
        .ok_or("no running instance of the controller's to interrupt")?;
    let (victim_id, victim_node) = (victim.instance.id, victim.instance.private_dns_name);
    cloud.inject_message(fakecloud::sqs::spot_interruption_warning(
        &cloud.config().region,
        &victim_id,
        jiff::Timestamp::now(),
    ));
    until(
        "the interrupted node's pods to run on its replacement",
        Duration::from_secs(90),
        || {
            let pods = pods.clone();
            let cloud = cloud.clone();
            let (victim_id, victim_node) = (victim_id.clone(), victim_node.clone());
            async move {
                let gone = cloud.instances().iter().any(|r| {
                    r.instance.id == victim_id
                        && r.instance.state != dovetail::aws::cloud::InstanceState::Running
                });
                let list = pods
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .map_err(|e| e.to_string())?;
                let moved = list
                    .items
                    .iter()
                    .filter(|p| {
                        p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                            && p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                                != Some(victim_node.as_str())
                    })
                    .count();
                Ok((gone && moved == 4).then_some(()))
            }
        },
    )
    .await?;
    step(&format!(
        "spot interruption of {victim_id} via SQS -> drained, replaced, instance terminated, pods Running again"
    ));

    // Two replicas: the first holds the Lease; killed, the second takes over.
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "kube-system");
    let holder = |leases: Api<k8s_openapi::api::coordination::v1::Lease>| async move {
        let lease = leases
            .get_opt("dovetail-leader-election")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(
            lease
                .and_then(|l| l.spec?.holder_identity)
                .unwrap_or_default(),
        )
    };
    let now_holding = holder(leases.clone()).await?;
    if now_holding != "dovetail-e2e-0" {
        return Err(format!(
            "the Lease is held by {now_holding:?}, not by the first replica"
        ));
    }
    let (mut second, _) = start_replica(1)?;
    let _ = first.0.kill();
    let _ = first.0.wait();
    let killed = Instant::now();
    until(
        "the second replica to take the Lease",
        Duration::from_secs(60),
        || {
            let leases = leases.clone();
            async move { Ok((holder(leases).await? == "dovetail-e2e-1").then_some(())) }
        },
    )
    .await?;
    step(&format!(
        "leader killed -> the second replica holds the Lease after {:.1} s",
        killed.elapsed().as_secs_f64()
    ));

    // Scale to zero (the second replica acts now): the empty nodes are consolidated away, their instances
    // terminated.
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), "default");
    deployments
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 0}})),
        )
        .await
        .map_err(|e| format!("scale to zero: {e}"))?;
    until(
        "the NodeClaims to be consolidated away",
        Duration::from_secs(120),
        || {
            let claims = claims.clone();
            async move {
                let n = claims
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                Ok((n == 0).then_some(()))
            }
        },
    )
    .await?;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client.clone());
    let left = nodes
        .list(&ListParams::default())
        .await
        .map_err(|e| e.to_string())?
        .items
        .len();
    let running = cloud
        .instances()
        .iter()
        .filter(|r| r.instance.state == dovetail::aws::cloud::InstanceState::Running)
        .count();
    if left != 0 || running != 0 {
        return Err(format!(
            "after consolidation {left} Node(s) and {running} running instance(s) remain"
        ));
    }
    step("scaled to zero -> nodes consolidated, instances terminated");

    // SIGTERM: the leader lets go of its Lease on the way out.
    let pid = second.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let exited = tokio::task::spawn_blocking(move || {
        let status = second.0.wait();
        (second, status)
    })
    .await
    .map_err(|e| e.to_string())?;
    let (_second, status) = exited;
    let status = status.map_err(|e| e.to_string())?;
    let after = holder(leases.clone()).await?;
    if !after.is_empty() {
        return Err(format!(
            "after SIGTERM ({status}) the Lease is still held by {after:?}"
        ));
    }
    step(&format!("SIGTERM -> exited ({status}), the Lease released"));
    Ok(())
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
    let newer = ["controller/src", "operator/src", "kubeclient/src"]
        .iter()
        .flat_map(|d| newer_sources(&root.join(d), built))
        .next();
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
        } else if path.extension().is_some_and(|x| x == "rs")
            && e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m > than)
        {
            out.push(path);
        }
    }
    out
}
