//! A Cluster-Autoscaler-style baseline for comparison (not a product): fixed on-demand node groups, one per
//! instance type and zone, scale-up for unschedulable pods with the least-waste expander, scale-down of nodes
//! under half requested for 10 minutes, one non-empty node at a time. It runs in the controller's place,
//! through the same Kube and Cloud seams, so it meets the same latencies and faults.

mod headroom;
mod scale_down;
mod scale_up;
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dovetail::aws::ami::{self, SsmCache};
use dovetail::aws::cloud::{Cloud, CloudError};
use dovetail::aws::launch;
use dovetail::clock::Clock;
use dovetail::crds::{EC2NodeClass, labels};
use dovetail::journal::Journal;
use dovetail::kube::{Kind, Kube};
use dovetail::resources::{Resources, pod_requests};
use k8s_openapi::api::core::v1::{Pod, PodSpec};
use serde_json::Value;

pub use view::{NodeView, PodView};

/// The node groups' instance types (the choice: a small and a large general-purpose type).
pub const GROUP_TYPES: [&str; 2] = ["m5.large", "m5.2xlarge"];
/// The Cluster Autoscaler's defaults.
const SCAN_INTERVAL: Duration = Duration::from_secs(10);
const SCALE_DOWN_UTILIZATION: f64 = 0.5;
const SCALE_DOWN_UNNEEDED_TIME: Duration = Duration::from_secs(600);
const SCALE_DOWN_DELAY_AFTER_ADD: Duration = Duration::from_secs(600);
const MAX_NODE_PROVISION_TIME: Duration = Duration::from_secs(900);
const MAX_EMPTY_BULK_DELETE: usize = 10;
const MAX_POD_EVICTION_TIME: Duration = Duration::from_secs(120);
const INITIAL_BACKOFF: Duration = Duration::from_secs(300);
const MAX_BACKOFF: Duration = Duration::from_secs(1800);
/// Tag naming the group an instance belongs to (an Auto Scaling group's own tag, in spirit).
const GROUP_TAG: &str = "sim.dovetail.dev/ca-group";

/// One node group: an instance type in one zone.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub instance_type: String,
    pub zone: String,
    pub subnet_id: String,
    /// A fresh node's allocatable.
    pub allocatable: Resources,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<(String, String)>,
    /// Millicores of capacity a node adds (for the cores-total limit).
    pub cores: i128,
    backoff_until: Duration,
    backoff: Duration,
}

/// An instance asked for and not yet registered as a node.
#[derive(Debug, Clone)]
struct Upcoming {
    group: usize,
    since: Duration,
}

/// A node being drained: since when, and whether its taint is on.
#[derive(Debug, Clone)]
struct Drain {
    node: String,
    instance_id: String,
    since: Duration,
}

pub struct Baseline {
    clock: Arc<dyn Clock>,
    kube: Arc<dyn Kube>,
    cloud: Arc<dyn Cloud>,
    journal: Arc<dyn Journal>,
    groups: Vec<Group>,
    template: String,
    /// instance id -> the group and when it was asked for.
    upcoming: BTreeMap<String, Upcoming>,
    /// node name -> since when it has been unneeded.
    unneeded: BTreeMap<String, Duration>,
    drain: Option<Drain>,
    last_scale_up: Option<Duration>,
    /// vCPUs the whole cluster may have (the NodePool's cpu limit as `--cores-total`).
    max_cores: Option<i128>,
    start: jiff::Timestamp,
    /// `value:Effect` of each NodePool template taint, by key, for the node-template taint tags.
    group_taint_values: Vec<(String, String)>,
    /// The last "cannot help these pods" line, so it is not repeated every scan.
    last_note: String,
    /// Whether CapacityBuffers are honoured (the scenario's `CapacityBuffer` gate: the Cluster
    /// Autoscaler's buffer controller and fake-pod injection, both flags on).
    buffers: bool,
    /// What was last said of each buffer not acted on, so it is said once.
    buffer_notes: BTreeMap<String, String>,
}

fn elapsed(start: jiff::Timestamp, now: jiff::Timestamp) -> Duration {
    Duration::try_from(now.duration_since(start)).unwrap_or(Duration::ZERO)
}

impl Baseline {
    fn now(&self) -> Duration {
        elapsed(self.start, self.clock.now())
    }

    fn say(&self, line: String) {
        self.journal.record("ca", line);
    }

    /// The object of `kind` whose name sorts first.
    async fn first_by_name(&self, kind: Kind) -> Result<Option<Value>, String> {
        let list = self.kube.list(kind).await.map_err(|e| e.to_string())?;
        Ok(list.items.into_iter().min_by(|a, b| {
            a["metadata"]["name"]
                .as_str()
                .cmp(&b["metadata"]["name"].as_str())
        }))
    }

    /// The node groups and their launch template, from the first EC2NodeClass and NodePool (by name): the
    /// same AMI, subnets, security groups, labels and taints Dovetail would use.
    async fn set_up(&mut self) -> Result<(), String> {
        let class_value = self
            .first_by_name(Kind::EC2NodeClass)
            .await?
            .ok_or("no EC2NodeClass to take subnets, AMI and security groups from")?;
        let class: EC2NodeClass =
            serde_json::from_value(class_value).map_err(|e| format!("EC2NodeClass: {e}"))?;
        let pool = self
            .first_by_name(Kind::NodePool)
            .await?
            .unwrap_or(Value::Null);
        self.max_cores = pool["spec"]["limits"]["cpu"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                pool["spec"]["limits"]["cpu"]
                    .as_i64()
                    .map(|n| n.to_string())
            })
            .and_then(|q| dovetail::quantity::parse(&q).ok())
            .map(|m| m.0);
        let cloud_err = |e: CloudError| format!("{}: {}", e.code, e.message);
        let subnets = launch::select_subnets(
            &class,
            self.cloud.describe_subnets().await.map_err(cloud_err)?,
        );
        let mut sgs = Vec::new();
        for f in launch::security_group_filters(&class) {
            sgs.extend(
                self.cloud
                    .describe_security_groups(f)
                    .await
                    .map_err(cloud_err)?
                    .into_iter()
                    .map(|g| g.id),
            );
        }
        let k8s = self
            .kube
            .server_version()
            .await
            .map_err(|e| e.to_string())?;
        let selection = ami::resolve(
            self.cloud.as_ref(),
            &mut SsmCache::default(),
            self.now(),
            self.clock.now(),
            &class,
            &k8s,
        )
        .await
        .map_err(cloud_err)?;
        // Node groups are amd64 without accelerators: the image such a type launches with.
        let amd64 = BTreeMap::from([(labels::ARCH.to_string(), "amd64".to_string())]);
        let image = ami::for_instance_type(&selection.amis, &amd64)
            .ok_or("no image of the EC2NodeClass suits amd64 instance types")?;
        let cluster = dovetail::aws::userdata::Cluster {
            name: "sim".into(),
            ..Default::default()
        };
        let data = launch::template_data(&class, &cluster, &image.id, &sgs, &BTreeMap::new());
        let name = format!(
            "ca-baseline/{}",
            class.metadata.name.clone().unwrap_or_default()
        );
        self.cloud
            .create_launch_template(name.clone(), data)
            .await
            .map_err(cloud_err)?;
        self.template = name;

        let infos = self
            .cloud
            .describe_instance_types()
            .await
            .map_err(cloud_err)?;
        let mut labels = BTreeMap::new();
        for (k, v) in pool["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .into_iter()
            .flatten()
        {
            labels.insert(k.clone(), v.as_str().unwrap_or_default().to_string());
        }
        let taints: Vec<(String, String, String)> = pool["spec"]["template"]["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                let s = |f: &str| t[f].as_str().unwrap_or_default().to_string();
                (s("key"), s("value"), s("effect"))
            })
            .collect();
        let mut zones: Vec<(String, String)> = subnets
            .iter()
            .map(|s| (s.zone.clone(), s.id.clone()))
            .collect();
        zones.sort();
        zones.dedup_by(|a, b| a.0 == b.0);
        for t in GROUP_TYPES {
            let Some(info) = infos.iter().find(|i| i.name == t) else {
                continue;
            };
            let (capacity, allocatable) =
                dovetail::aws::instancetype::capacity_and_allocatable(info, None);
            for (zone, subnet_id) in &zones {
                let mut l = labels.clone();
                l.insert("node.kubernetes.io/instance-type".into(), t.into());
                l.insert("topology.kubernetes.io/zone".into(), zone.clone());
                l.insert("karpenter.sh/capacity-type".into(), "on-demand".into());
                l.insert("kubernetes.io/arch".into(), "amd64".into());
                l.insert("kubernetes.io/os".into(), "linux".into());
                let name = format!("{t}-{zone}");
                // The group's own label, which its node-template tags give its nodes.
                l.insert(GROUP_TAG.into(), name.clone());
                self.groups.push(Group {
                    name,
                    instance_type: t.into(),
                    zone: zone.clone(),
                    subnet_id: subnet_id.clone(),
                    allocatable: allocatable.clone(),
                    labels: l,
                    taints: taints
                        .iter()
                        .map(|(k, _, e)| (k.clone(), e.clone()))
                        .collect(),
                    cores: capacity.get(dovetail::resources::CPU).0,
                    backoff_until: Duration::ZERO,
                    backoff: Duration::ZERO,
                });
            }
        }
        if self.groups.is_empty() {
            return Err("none of the node group types is offered in the node class's zones".into());
        }
        let names: Vec<&str> = self.groups.iter().map(|g| g.name.as_str()).collect();
        self.say(format!("node groups {}", names.join(",")));
        self.group_taint_values = taints
            .iter()
            .map(|(k, v, e)| (k.clone(), format!("{v}:{e}")))
            .collect();
        Ok(())
    }

    /// What every DaemonSet adds to a fresh node.
    async fn daemon_overhead(&self) -> Resources {
        let mut total = Resources::default();
        let Ok(list) = self.kube.list(Kind::DaemonSet).await else {
            return total;
        };
        for ds in list.items {
            let spec: Option<PodSpec> =
                serde_json::from_value(ds["spec"]["template"]["spec"].clone()).ok();
            let pod = Pod {
                spec,
                ..Default::default()
            };
            if let Ok(r) = pod_requests(&pod) {
                total.add(&r);
            }
        }
        total
    }

    async fn observe(&self) -> Option<(Vec<NodeView>, Vec<PodView>)> {
        let nodes = self.kube.list(Kind::Node).await.ok()?;
        let pods = self.kube.list(Kind::Pod).await.ok()?;
        let mut nodes: Vec<NodeView> = nodes.items.iter().filter_map(NodeView::of).collect();
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        let pods: Vec<PodView> = pods.items.iter().filter_map(PodView::of).collect();
        let index: BTreeMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        for p in &pods {
            if let Some(i) = p.node.as_ref().and_then(|n| index.get(n)) {
                nodes[*i].used.add(&p.requests);
            }
        }
        Some((nodes, pods))
    }

    async fn step(&mut self) {
        let Some((nodes, pods)) = self.observe().await else {
            return;
        };
        let now = self.now();
        self.forget_registered(&nodes, now).await;
        let overhead = self.daemon_overhead().await;
        let headroom = if self.buffers {
            self.headroom().await
        } else {
            Vec::new()
        };
        let scaled = self
            .scale_up(&nodes, &pods, &headroom, &overhead, now)
            .await;
        if !scaled {
            // Chunks that fit a node sit on it in scale-down's picture, so the node is kept for them
            // unless they fit elsewhere.
            let (nodes, pods) = headroom::placed(nodes, pods, &headroom);
            self.scale_down(&nodes, &pods, now).await;
        }
    }
}

/// Run the baseline until the host is stopped. Errors while setting up are retried each scan.
pub async fn run(
    clock: Arc<dyn Clock>,
    kube: Arc<dyn Kube>,
    cloud: Arc<dyn Cloud>,
    journal: Arc<dyn Journal>,
    buffers: bool,
) {
    let start = clock.now();
    let mut b = Baseline {
        clock,
        kube,
        cloud,
        journal,
        groups: Vec::new(),
        template: String::new(),
        upcoming: BTreeMap::new(),
        unneeded: BTreeMap::new(),
        drain: None,
        last_scale_up: None,
        max_cores: None,
        start,
        group_taint_values: Vec::new(),
        last_note: String::new(),
        buffers,
        buffer_notes: BTreeMap::new(),
    };
    let mut told = None;
    loop {
        if b.groups.is_empty() {
            if let Err(e) = b.set_up().await {
                if told.as_ref() != Some(&e) {
                    b.say(format!("not ready: {e}"));
                    told = Some(e);
                }
                b.groups.clear();
            }
        } else {
            b.step().await;
        }
        b.clock.sleep(SCAN_INTERVAL).await;
    }
}
