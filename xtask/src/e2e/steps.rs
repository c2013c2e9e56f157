//! The end-to-end scenario, one method per step, each failing with what it waited for.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fakecloud::FakeCloud;
use fakecloud::http::AwsFront;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

use super::controlplane::{self, ControlPlane};
use super::replica::{Launcher, Replica};
use super::{apply, gvk_api, http_get, kubelet, objects, until};
use dovetail::aws::cloud::InstanceState;

/// The cluster's name, in the fake account's discovery tags and the binary's settings.
const CLUSTER: &str = "e2e";

/// The Lease the replicas elect a leader with.
const LEASE: &str = "dovetail-leader-election";

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

/// The schema refuses it (weight is at most 100): the server's own message must name the field.
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

/// The server accepts it, but its EC2NodeClass does not exist: Dovetail must say `Ready=False` and launch
/// nothing from it — though its weight would make it the first choice.
const UNUSABLE_POOL: &str = "
apiVersion: karpenter.sh/v1
kind: NodePool
metadata: {name: no-class}
spec:
  weight: 50
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: missing}
      requirements:
        - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
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

/// No web pod may be evicted while it stands: every eviction of the drain is answered 429 until it goes.
const PDB: &str = "
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web, namespace: default}
spec:
  minAvailable: 4
  selector: {matchLabels: {app: web}}
";

/// Two chunks of headroom shaped like a PodTemplate (the replicas run with the CapacityBuffer gate on).
const BUFFER: &str = "
apiVersion: v1
kind: PodTemplate
metadata: {name: chunk, namespace: default}
template:
  metadata: {labels: {buffer: e2e}}
  spec:
    containers:
      - name: chunk
        image: registry.k8s.io/pause:3.10
        resources: {requests: {cpu: 500m, memory: 512Mi}}
---
apiVersion: autoscaling.x-k8s.io/v1beta1
kind: CapacityBuffer
metadata: {name: headroom, namespace: default}
spec:
  podTemplateRef: {name: chunk}
  replicas: 2
";

/// The CRD's CEL rule refuses it: a buffer names a PodTemplate or a workload, not both.
const BAD_BUFFER: &str = "
apiVersion: autoscaling.x-k8s.io/v1beta1
kind: CapacityBuffer
metadata: {name: both, namespace: default}
spec:
  podTemplateRef: {name: chunk}
  scalableRef: {kind: Deployment, name: web}
  replicas: 1
";

/// The test's state between steps.
pub struct E2e<'a> {
    client: kube::Client,
    cp: &'a ControlPlane,
    dir: PathBuf,
    first: Launcher,
    second: Launcher,
    cloud: Option<FakeCloud>,
    aws_endpoint: String,
    pods: Api<Pod>,
    claims: Api<DynamicObject>,
}

impl<'a> E2e<'a> {
    pub fn new(
        client: kube::Client,
        cp: &'a ControlPlane,
        dir: &Path,
        first: Launcher,
        second: Launcher,
    ) -> E2e<'a> {
        E2e {
            pods: Api::namespaced(client.clone(), "default"),
            claims: gvk_api(&client, "karpenter.sh", "v1", "NodeClaim"),
            client,
            cp,
            dir: dir.to_path_buf(),
            first,
            second,
            cloud: None,
            aws_endpoint: String::new(),
        }
    }

    /// Every step in order; `step` is told what each one showed.
    pub async fn run(&mut self, step: &mut impl FnMut(&str)) -> Result<(), String> {
        self.install_crds().await?;
        step("CRDs accepted and established");
        self.refuse_bad_pool().await?;
        step("bad NodePool refused; EC2NodeClass, NodePool and an unusable NodePool applied");
        self.serve_cloud().await?;
        let (mut first, metrics_port) = self.start_replica(0, &self.first.clone())?;
        step(&format!("dovetail started ({})", self.first.describe()));
        let why = self.unusable_pool_not_ready().await?;
        step(&format!("unusable NodePool: Ready=False read back ({why})"));
        let created = self.scale_up().await?;
        step(&format!(
            "4 pending pods -> {created} NodeClaim(s) -> instances -> nodes -> pods Running"
        ));
        self.metrics_count_claims(metrics_port, created).await?;
        step("/metrics karpenter_nodeclaims_created_total matches");
        self.metrics_conditions(metrics_port).await?;
        step(
            "/metrics operator_nodepool_status_condition_count{name=\"no-class\",type=\"Ready\",status=\"False\"} 1, and the older form",
        );
        self.malformed_message(metrics_port).await?;
        step("a malformed queue message: deleted and counted (message_type=\"malformed\")");
        let seen = self.interruption(metrics_port).await?;
        step(&seen);
        let (second, after) = self.failover(&mut first).await?;
        step(&format!(
            "leader killed -> the second replica ({}) holds the Lease after {after:.1} s",
            self.second.describe()
        ));
        self.scale_to_zero().await?;
        step("scaled to zero -> nodes consolidated, instances terminated");
        let status = self.capacity_buffer().await?;
        step(&format!(
            "CapacityBuffer: bad one refused by its CEL rule; status written ({status}); a node launched for the headroom alone, consolidated once the buffer is deleted"
        ));
        let status = second.terminate()?;
        let after = self.lease_holder().await?;
        if !after.is_empty() || !status.success() {
            return Err(format!(
                "after SIGTERM ({status}) the Lease is held by {after:?}"
            ));
        }
        step(&format!("SIGTERM -> exited ({status}), the Lease released"));
        Ok(())
    }

    fn cloud(&self) -> Result<&FakeCloud, String> {
        self.cloud
            .as_ref()
            .ok_or_else(|| "the fake AWS is not served yet".into())
    }

    /// Our CRDs, validated by the real API server (structural schema, CEL rules and their cost, defaults).
    async fn install_crds(&self) -> Result<(), String> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
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
            "capacitybuffers.autoscaling.x-k8s.io",
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
        Ok(())
    }

    /// A NodePool the schema refuses is refused with the server's message naming the field; the good ones
    /// (and one the server accepts but Dovetail cannot use) are applied.
    async fn refuse_bad_pool(&self) -> Result<(), String> {
        let bad = objects(BAD_POOL)?.remove(0);
        match apply(&self.client, &bad).await {
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
        for obj in objects(NODE_CLASS_AND_POOL)?
            .into_iter()
            .chain(objects(UNUSABLE_POOL)?)
        {
            apply(&self.client, &obj)
                .await
                .map_err(|e| format!("apply {:?}: {e}", obj.metadata.name))?;
        }
        Ok(())
    }

    /// The fake AWS account, in real time, served on loopback; its kubelets registering through the API.
    async fn serve_cloud(&mut self) -> Result<(), String> {
        let cloud = FakeCloud::new(
            fakecloud::CloudConfig {
                cluster_name: CLUSTER.into(),
                foreign_instances: 0,
                launch_latency: (Duration::from_secs(1), Duration::from_secs(2)),
                shutdown_latency: Duration::from_secs(3),
                visibility_lag: (Duration::ZERO, Duration::from_millis(500)),
                ..fakecloud::CloudConfig::default()
            },
            fakecloud::Catalog::builtin(),
            1,
            Arc::new(dovetail::clock::SystemClock),
            Arc::new(dovetail::journal::LogJournal),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("bind: {e}"))?;
        self.aws_endpoint = format!(
            "http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        );
        tokio::spawn(fakecloud::http::serve(
            listener,
            AwsFront::new(cloud.clone()),
        ));
        {
            let cloud = cloud.clone();
            let client = self.client.clone();
            tokio::spawn(async move {
                let mut registered = std::collections::BTreeSet::new();
                loop {
                    cloud.step();
                    if let Err(e) = kubelet::step(&client, &cloud, &mut registered).await {
                        eprintln!("  kubelet: {e}");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            });
        }
        self.cloud = Some(cloud);
        Ok(())
    }

    /// A replica configured as in a cluster; its metrics port.
    fn start_replica(&self, replica: u32, launcher: &Launcher) -> Result<(Replica, u16), String> {
        let metrics_port = controlplane::free_port()?;
        let health_port = controlplane::free_port()?;
        let log = if replica == 0 {
            "dovetail.log".to_string()
        } else {
            format!("dovetail-{replica}.log")
        };
        let cloud = self.cloud()?;
        let env: Vec<(String, String)> = [
            ("KUBECONFIG", self.cp.kubeconfig.display().to_string()),
            ("CLUSTER_NAME", CLUSTER.to_string()),
            ("CLUSTER_ENDPOINT", self.cp.server.clone()),
            ("INTERRUPTION_QUEUE", cloud.config().queue_url.clone()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT_URL", self.aws_endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "e2e".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "e2e".to_string()),
            ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
            ("METRICS_PORT", metrics_port.to_string()),
            ("HEALTH_PROBE_PORT", health_port.to_string()),
            ("POD_NAME", format!("dovetail-e2e-{replica}")),
            ("LOG_FORMAT", "text".to_string()),
            ("FEATURE_GATES", "CapacityBuffer=true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        // The kubeconfig names its CA file beside it: the container sees that directory where it is here.
        let kube_dir = self
            .cp
            .kubeconfig
            .parent()
            .ok_or("the kubeconfig has no directory")?;
        let replica = Replica::start(
            launcher,
            &format!("dovetail-e2e-{replica}"),
            &env,
            &[kube_dir],
            &self.dir.join(log),
        )?;
        Ok((replica, metrics_port))
    }

    /// The pool whose EC2NodeClass is missing: the controller writes `Ready=False` with the reason, read
    /// back from the real API server. Its reason and message.
    async fn unusable_pool_not_ready(&self) -> Result<String, String> {
        let pools = gvk_api(&self.client, "karpenter.sh", "v1", "NodePool");
        until(
            "nodepool/no-class to say Ready=False",
            Duration::from_secs(30),
            || {
                let pools = pools.clone();
                async move {
                    let pool = pools.get("no-class").await.map_err(|e| e.to_string())?;
                    let ready = pool.data["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|c| c["type"] == "Ready")
                        .cloned();
                    Ok(ready.filter(|c| c["status"] == "False").map(|c| {
                        format!(
                            "{}: {}",
                            c["reason"].as_str().unwrap_or_default(),
                            c["message"].as_str().unwrap_or_default()
                        )
                    }))
                }
            },
        )
        .await
    }

    /// A Deployment's pods, pending (the real scheduler says so), become NodeClaims of the usable pool,
    /// instances, Nodes, and run. The number of NodeClaims.
    async fn scale_up(&self) -> Result<usize, String> {
        for obj in objects(DEPLOYMENT)? {
            apply(&self.client, &obj)
                .await
                .map_err(|e| format!("deployment: {e}"))?;
        }
        until(
            "the web pods to run on launched nodes",
            Duration::from_secs(120),
            || {
                let pods = self.pods.clone();
                async move { Ok((running_web_pods(&pods, None).await? == 4).then_some(())) }
            },
        )
        .await?;
        let claims = self
            .claims
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items;
        if claims.is_empty() {
            return Err("the pods run but no NodeClaim exists".into());
        }
        let from_unusable: Vec<String> = claims
            .iter()
            .filter(|c| {
                c.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get("karpenter.sh/nodepool"))
                    != Some(&"default".to_string())
            })
            .filter_map(|c| c.metadata.name.clone())
            .collect();
        if !from_unusable.is_empty() {
            return Err(format!(
                "NodeClaims {from_unusable:?} are not from nodepool/default (the unusable pool launched?)"
            ));
        }
        Ok(claims.len())
    }

    async fn metrics_count_claims(&self, port: u16, created: usize) -> Result<(), String> {
        let counted = metric_sum(
            &http_get(port, "/metrics").await?,
            "karpenter_nodeclaims_created_total",
            &[],
        );
        if counted as usize != created {
            return Err(format!(
                "karpenter_nodeclaims_created_total says {counted}, the API has {created} NodeClaims"
            ));
        }
        Ok(())
    }

    /// The unusable pool's Ready=False is a status-condition series (refreshed every 15 s), in the
    /// per-kind form and the older one with group and kind.
    async fn metrics_conditions(&self, port: u16) -> Result<(), String> {
        until(
            "operator_nodepool_status_condition_count for the unusable pool",
            Duration::from_secs(40),
            || async move {
                let text = http_get(port, "/metrics").await?;
                let ready_false = [("name", "no-class"), ("type", "Ready"), ("status", "False")];
                let per_kind = metric_sum(
                    &text,
                    "operator_nodepool_status_condition_count",
                    &ready_false,
                );
                let older = metric_sum(
                    &text,
                    "operator_status_condition_count",
                    &[
                        ("kind", "NodePool"),
                        ("group", "karpenter.sh"),
                        ("name", "no-class"),
                        ("type", "Ready"),
                        ("status", "False"),
                    ],
                );
                Ok((per_kind == 1.0 && older == 1.0).then_some(()))
            },
        )
        .await
    }

    /// Garbage on the interruption queue (sent through the served SQS front's own code path): read,
    /// counted as malformed, deleted — and the controller goes on.
    async fn malformed_message(&self, port: u16) -> Result<(), String> {
        let cloud = self.cloud()?;
        cloud
            .send_message(
                &cloud.config().queue_url,
                "{\"detail-type\": 42, not json".into(),
            )
            .map_err(|e| format!("SendMessage: {e}"))?;
        until(
            "the malformed message to be counted and deleted",
            Duration::from_secs(30),
            || async move {
                let text = http_get(port, "/metrics").await?;
                let malformed = metric_sum(
                    &text,
                    "karpenter_interruption_received_messages_total",
                    &[("message_type", "malformed")],
                );
                let received =
                    metric_sum(&text, "karpenter_interruption_received_messages_total", &[]);
                let deleted =
                    metric_sum(&text, "karpenter_interruption_deleted_messages_total", &[]);
                Ok((malformed == 1.0 && deleted == received).then_some(()))
            },
        )
        .await
    }

    /// A spot interruption warning for the node, through the served queue, while a PodDisruptionBudget
    /// allows no eviction and a second writer keeps changing the Node: the evictions are refused (429) and
    /// retried, the taint write races the other writer (409 answers are retried; neither write is lost);
    /// when the budget goes, the node drains, the pods run on the replacement, the instance is terminated.
    async fn interruption(&self, port: u16) -> Result<String, String> {
        let cloud = self.cloud()?;
        let pdbs: Api<PodDisruptionBudget> = Api::namespaced(self.client.clone(), "default");
        for obj in objects(PDB)? {
            apply(&self.client, &obj)
                .await
                .map_err(|e| format!("pdb: {e}"))?;
        }
        // The disruption controller must have counted the pods, or the eviction API refuses for that reason.
        until("the PDB's status", Duration::from_secs(30), || {
            let pdbs = pdbs.clone();
            async move {
                let pdb = pdbs.get("web").await.map_err(|e| e.to_string())?;
                let status = pdb.status.unwrap_or_default();
                Ok(
                    (status.current_healthy == 4 && status.observed_generation.is_some())
                        .then_some(()),
                )
            }
        })
        .await?;
        let victim = cloud
            .instances()
            .into_iter()
            .find(|r| {
                r.instance.state == InstanceState::Running
                    && r.instance.tags.contains_key("karpenter.sh/nodeclaim")
            })
            .ok_or("no running instance of the controller's to interrupt")?;
        let (victim_id, victim_node) = (victim.instance.id, victim.instance.private_dns_name);
        let conflicts_before = self.apiserver_conflicts_on_nodes().await?;

        // The second writer: relabels the Node as fast as the server answers, until the taint is there.
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let nodes: Api<Node> = Api::all(self.client.clone());
            let (stop, node) = (stop.clone(), victim_node.clone());
            tokio::spawn(async move {
                // Bounded, so a controller that could never win the race fails on the taint, not forever.
                let started = Instant::now();
                let mut writes = 0u64;
                while !stop.load(Ordering::Relaxed) && started.elapsed() < Duration::from_secs(15) {
                    let patch = json!({"metadata": {"labels": {"e2e.dovetail.dev/writes": writes.to_string()}}});
                    if nodes
                        .patch(&node, &PatchParams::default(), &Patch::Merge(&patch))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    writes += 1;
                }
                writes
            })
        };
        cloud.inject_message(fakecloud::sqs::spot_interruption_warning(
            &cloud.config().region,
            &victim_id,
            jiff::Timestamp::now(),
        ));
        let nodes: Api<Node> = Api::all(self.client.clone());
        until(
            "the disrupted taint on the interrupted node",
            Duration::from_secs(60),
            || {
                let (nodes, node) = (nodes.clone(), victim_node.clone());
                async move {
                    let n = nodes.get(&node).await.map_err(|e| e.to_string())?;
                    let tainted = n
                        .spec
                        .and_then(|s| s.taints)
                        .unwrap_or_default()
                        .iter()
                        .any(|t| t.key == "karpenter.sh/disrupted" && t.effect == "NoSchedule");
                    Ok(tainted.then_some(()))
                }
            },
        )
        .await?;
        stop.store(true, Ordering::Relaxed);
        let writes = writer.await.map_err(|e| e.to_string())?;
        let node = nodes.get(&victim_node).await.map_err(|e| e.to_string())?;
        let last = node
            .metadata
            .labels
            .unwrap_or_default()
            .get("e2e.dovetail.dev/writes")
            .cloned();
        if writes == 0 || last != Some((writes - 1).to_string()) {
            return Err(format!(
                "the second writer's last label ({}) is not on the node ({last:?}): a write was lost",
                writes.saturating_sub(1)
            ));
        }
        let conflicts = self.apiserver_conflicts_on_nodes().await? - conflicts_before;

        // The budget holds: evictions are refused, and retried; no web pod leaves the node meanwhile.
        let refused = until(
            "an eviction refused with 429",
            Duration::from_secs(60),
            || async move {
                let text = http_get(port, "/metrics").await?;
                let refused = metric_sum(
                    &text,
                    "karpenter_pods_eviction_requests_total",
                    &[("code", "429")],
                );
                Ok((refused >= 1.0).then_some(refused))
            },
        )
        .await?;
        let on_victim = running_web_pods(&self.pods, Some(&victim_node)).await?;
        let total = running_web_pods(&self.pods, None).await?;
        if total != 4 {
            return Err(format!(
                "{total} web pods run while the PDB allowed no eviction (4 expected)"
            ));
        }
        pdbs.delete("web", &DeleteParams::default())
            .await
            .map_err(|e| format!("delete pdb: {e}"))?;
        until(
            "the interrupted node's pods to run on its replacement",
            Duration::from_secs(90),
            || {
                let pods = self.pods.clone();
                let (victim_id, victim_node) = (victim_id.clone(), victim_node.clone());
                async move {
                    let gone = cloud.instances().iter().any(|r| {
                        r.instance.id == victim_id && r.instance.state != InstanceState::Running
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
        let text = http_get(port, "/metrics").await?;
        let evicted = metric_sum(
            &text,
            "karpenter_pods_eviction_requests_total",
            &[("code", "200")],
        );
        Ok(format!(
            "spot interruption of {victim_id} via SQS -> tainted while a second writer relabelled the node \
             {writes} times ({conflicts} PATCH nodes answered 409, no write lost); {refused} eviction(s) refused \
             (429) by the PDB with {on_victim} pod(s) held on the node; PDB deleted -> {evicted} evicted, \
             replaced, instance terminated, pods Running again"
        ))
    }

    /// The 409 answers the API server has given to PATCH requests on Nodes, from its own `/metrics`.
    async fn apiserver_conflicts_on_nodes(&self) -> Result<f64, String> {
        let request = hyper::Request::get("/metrics")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        let text = self
            .client
            .request_text(request)
            .await
            .map_err(|e| format!("kube-apiserver /metrics: {e}"))?;
        Ok(metric_sum(
            &text,
            "apiserver_request_total",
            &[("code", "409"), ("resource", "nodes"), ("verb", "PATCH")],
        ))
    }

    async fn lease_holder(&self) -> Result<String, String> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-system");
        let lease = leases.get_opt(LEASE).await.map_err(|e| e.to_string())?;
        Ok(lease
            .and_then(|l| l.spec?.holder_identity)
            .unwrap_or_default())
    }

    /// Two replicas: the first holds the Lease; killed, the second takes over. The second, and how long the
    /// takeover took in seconds.
    async fn failover(&self, first: &mut Replica) -> Result<(Replica, f64), String> {
        let holding = self.lease_holder().await?;
        if holding != "dovetail-e2e-0" {
            return Err(format!(
                "the Lease is held by {holding:?}, not by the first replica"
            ));
        }
        let (second, _) = self.start_replica(1, &self.second.clone())?;
        first.kill();
        let killed = Instant::now();
        until(
            "the second replica to take the Lease",
            Duration::from_secs(90),
            || async move { Ok((self.lease_holder().await? == "dovetail-e2e-1").then_some(())) },
        )
        .await?;
        Ok((second, killed.elapsed().as_secs_f64()))
    }

    /// Scale to zero (the second replica acts now): the empty nodes are consolidated away, their instances
    /// terminated.
    async fn scale_to_zero(&self) -> Result<(), String> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), "default");
        deployments
            .patch(
                "web",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await
            .map_err(|e| format!("scale to zero: {e}"))?;
        self.consolidated_away("the NodeClaims to be consolidated away")
            .await
    }

    /// Wait until the number of NodeClaims satisfies `want`.
    async fn claims_until(
        &self,
        what: &str,
        limit: Duration,
        want: impl Fn(usize) -> bool,
    ) -> Result<(), String> {
        let want = &want;
        until(what, limit, || {
            let claims = self.claims.clone();
            async move {
                let n = claims
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?
                    .items
                    .len();
                Ok(want(n).then_some(()))
            }
        })
        .await
    }

    /// Every NodeClaim gone, and with them every Node and running instance.
    async fn consolidated_away(&self, what: &str) -> Result<(), String> {
        self.claims_until(what, Duration::from_secs(120), |n| n == 0)
            .await?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let left = nodes
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?
            .items
            .len();
        let running = self
            .cloud()?
            .instances()
            .iter()
            .filter(|r| r.instance.state == InstanceState::Running)
            .count();
        if left != 0 || running != 0 {
            return Err(format!(
                "after consolidation {left} Node(s) and {running} running instance(s) remain"
            ));
        }
        Ok(())
    }

    /// A CapacityBuffer through the real API: the CRD's CEL rule refuses a bad one; the binary resolves a
    /// good one and writes a status the CRD's schema accepts, its headroom alone gets a node, and deleting
    /// the buffer lets that node be consolidated away. Returns the Provisioning condition read back.
    async fn capacity_buffer(&self) -> Result<String, String> {
        let bad = objects(BAD_BUFFER)?.remove(0);
        match apply(&self.client, &bad).await {
            Ok(()) => {
                return Err("the API server accepted a CapacityBuffer naming two sources".into());
            }
            Err(kube::Error::Api(s))
                if s.code == 422 && s.message.contains("either PodTemplateRef or ScalableRef") =>
            {
                eprintln!("  refused as expected: {}", s.message);
            }
            Err(e) => {
                return Err(format!(
                    "a bad CapacityBuffer was refused, but not by its rule: {e}"
                ));
            }
        }
        for obj in objects(BUFFER)? {
            apply(&self.client, &obj)
                .await
                .map_err(|e| format!("apply {:?}: {e}", obj.metadata.name))?;
        }
        let buffers: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            "default",
            &kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
                "autoscaling.x-k8s.io",
                "v1beta1",
                "CapacityBuffer",
            )),
        );
        let condition = |b: &DynamicObject, t: &str| {
            b.data["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                .map(|c| {
                    format!(
                        "{}={} ({})",
                        t,
                        c["status"].as_str().unwrap_or_default(),
                        c["reason"].as_str().unwrap_or_default()
                    )
                })
        };
        until(
            "the buffer's status: 2 replicas, ReadyForProvisioning=True",
            Duration::from_secs(60),
            || {
                let buffers = buffers.clone();
                async move {
                    let b = buffers.get("headroom").await.map_err(|e| e.to_string())?;
                    let ready = condition(&b, "ReadyForProvisioning");
                    Ok((b.data["status"]["replicas"] == 2
                        && ready.as_deref() == Some("ReadyForProvisioning=True (Resolved)"))
                    .then_some(()))
                }
            },
        )
        .await?;
        self.claims_until(
            "a NodeClaim for the headroom",
            Duration::from_secs(60),
            |n| n > 0,
        )
        .await?;
        let provisioning = until(
            "the buffer's Provisioning=True (its chunks fit the new capacity)",
            Duration::from_secs(90),
            || {
                let buffers = buffers.clone();
                async move {
                    let b = buffers.get("headroom").await.map_err(|e| e.to_string())?;
                    let c = condition(&b, "Provisioning");
                    Ok(c.filter(|c| c.starts_with("Provisioning=True")))
                }
            },
        )
        .await?;
        buffers
            .delete("headroom", &DeleteParams::default())
            .await
            .map_err(|e| format!("delete the buffer: {e}"))?;
        self.consolidated_away("the headroom's NodeClaim to be consolidated away")
            .await?;
        Ok(provisioning)
    }
}

/// The web pods Running (on `node`, when given).
async fn running_web_pods(pods: &Api<Pod>, node: Option<&str>) -> Result<usize, String> {
    let list = pods
        .list(&ListParams::default().labels("app=web"))
        .await
        .map_err(|e| e.to_string())?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| node.is_none() || p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == node)
        .count())
}

/// The sum of a Prometheus text-format metric's samples whose labels include `labels`.
fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let have: BTreeMap<&str, &str> = rest
                .split(',')
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.trim(), v.trim_matches('"')))
                })
                .collect();
            labels
                .iter()
                .all(|(k, v)| have.get(k) == Some(v))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::metric_sum;

    #[test]
    fn metric_sums_select_by_label() {
        let text = "# HELP x\nx_total{code=\"429\",pool=\"a\"} 2\nx_total{code=\"200\"} 5\nx_total{code=\"429\"} 1\nx_totals 9\n";
        assert_eq!(metric_sum(text, "x_total", &[("code", "429")]), 3.0);
        assert_eq!(metric_sum(text, "x_total", &[]), 8.0);
        assert_eq!(metric_sum(text, "x_total", &[("code", "500")]), 0.0);
    }
}
