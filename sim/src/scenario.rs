//! Scenario files: the schema, and loading with errors that name file, line, column and field.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use dovetail::aws::cloud::CapacityType;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_saphyr::Spanned;

use crate::duration;
use crate::error::SimError;
use crate::yaml::{Node, Pos, Seg, locate, pos, render_path, unknown_fields};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: Option<u64>,
    duration: Spanned<String>,
    #[serde(default)]
    tick: Option<Spanned<String>>,
    #[serde(default)]
    cloud: RawCloud,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    manifests: Vec<Spanned<Node>>,
    #[serde(default)]
    timeline: Vec<Spanned<RawEvent>>,
    #[serde(default)]
    expect: RawExpect,
    /// The controller's settings by the binary's environment variable names.
    #[serde(default)]
    settings: Option<Spanned<Node>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeletePods {
    selector: Spanned<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrain {
    #[serde(default)]
    node: Option<String>,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    nodepool: Option<String>,
    #[serde(default)]
    pick: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNodeFault {
    /// kubelet_stopped, kubelet_not_ready, accelerator_failed, ... (`fakekube::NodeFault::NAMES`).
    fault: Spanned<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    nodepool: Option<String>,
    #[serde(default)]
    pick: Option<Spanned<String>>,
    /// The fault heals after this long (default: it lasts).
    #[serde(default, rename = "for")]
    for_: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    #[serde(default)]
    interruption_queue: Option<bool>,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    zones: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    launch_latency: Option<Spanned<String>>,
    #[serde(default)]
    boot_to_ready: Option<Spanned<String>>,
    #[serde(default)]
    api_latency: Option<Spanned<String>>,
    #[serde(default)]
    foreign_instances: Option<u32>,
    #[serde(default)]
    spot_depth: Option<Spanned<String>>,
    #[serde(default)]
    on_demand_vcpu_quota: Option<u32>,
    #[serde(default)]
    spot_vcpu_quota: Option<u32>,
    #[serde(default)]
    visibility_lag: Option<Spanned<String>>,
    #[serde(default)]
    subnets: Vec<Spanned<RawSubnet>>,
    #[serde(default)]
    security_groups: Vec<RawSecurityGroup>,
    #[serde(default)]
    images: Vec<Spanned<RawImage>>,
    #[serde(default)]
    offerings: Vec<Spanned<RawOffering>>,
    #[serde(default)]
    existing_instances: Vec<Spanned<RawExisting>>,
    #[serde(default)]
    capacity_reservations: Vec<Spanned<RawReservation>>,
}

/// A capacity reservation of the account: an On-Demand Capacity Reservation or a Capacity Block.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReservation {
    #[serde(default)]
    id: Option<Spanned<String>>,
    instance_type: Spanned<String>,
    zone: Spanned<String>,
    count: u32,
    /// `open` or `targeted` (default).
    #[serde(default)]
    instance_match_criteria: Option<Spanned<String>>,
    /// `default` (an ODCR, the default) or `capacity-block`.
    #[serde(default)]
    reservation_type: Option<Spanned<String>>,
    #[serde(default)]
    interruptible: bool,
    #[serde(default)]
    owner_id: Option<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    /// When it becomes active, from the start (or from its timeline event).
    #[serde(default)]
    starts_after: Option<Spanned<String>>,
    /// How long it lasts once active (default: until cancelled; a Capacity Block needs one).
    #[serde(default)]
    lasts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReservationId {
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReclaim {
    id: String,
    count: Spanned<u32>,
}

/// Instances of a node group the cluster already runs (a managed node group), as many as `count`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExisting {
    instance_type: Spanned<String>,
    zone: Spanned<String>,
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    capacity_type: Option<Spanned<String>>,
    node_group: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// `key=value:Effect` or `key:Effect`.
    #[serde(default)]
    taints: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubnet {
    #[serde(default)]
    id: Option<String>,
    zone: Spanned<String>,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default = "default_free_addresses")]
    free_addresses: u32,
}

fn default_free_addresses() -> u32 {
    4091
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecurityGroup {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    #[serde(default)]
    id: Option<String>,
    name: String,
    #[serde(default)]
    arch: Option<Spanned<String>>,
    /// `self` (the cluster's account), `amazon`, or an account id.
    #[serde(default = "default_image_owner")]
    owner: String,
    #[serde(default)]
    created: Option<Spanned<String>>,
    #[serde(default)]
    deprecated: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
}

fn default_image_owner() -> String {
    "self".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOffering {
    #[serde(default)]
    instance_types: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    offered: Option<bool>,
    #[serde(default)]
    spot_price: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    #[serde(default)]
    api_latency: Option<Spanned<String>>,
    #[serde(default)]
    scheduler_interval: Option<Spanned<String>>,
    #[serde(default)]
    controller_replicas: Option<Spanned<u32>>,
    /// The API server's `major.minor` (which EKS images an alias means).
    #[serde(default)]
    kubernetes_version: Option<Spanned<String>>,
    /// The controller reaches the API server over the simulated network with the real kube-rs client.
    #[serde(default)]
    wire: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    at: Spanned<String>,
    #[serde(default)]
    scale: Option<RawScale>,
    #[serde(default)]
    apply: Option<Vec<Spanned<Node>>>,
    #[serde(default)]
    spot_interruption: Option<RawSpotInterruption>,
    #[serde(default)]
    capacity_shortage: Option<RawShortage>,
    #[serde(default)]
    kms_key_disabled: Option<RawKms>,
    #[serde(default)]
    api_throttle: Option<RawThrottle>,
    #[serde(default)]
    api_outage: Option<RawOutage>,
    #[serde(default)]
    vcpu_quota: Option<RawQuota>,
    #[serde(default)]
    ami_release: Option<RawAmi>,
    #[serde(default)]
    kube_outage: Option<RawOutage>,
    #[serde(default)]
    watch_disconnect: Option<RawEmpty>,
    #[serde(default)]
    queue_message: Option<RawQueueMessage>,
    #[serde(default)]
    delete: Option<RawDelete>,
    #[serde(default)]
    delete_nodes: Option<RawDeleteNodes>,
    #[serde(default)]
    controller_restart: Option<RawRestart>,
    #[serde(default)]
    controller_down: Option<RawOutage>,
    #[serde(default)]
    settings: Option<Spanned<Node>>,
    #[serde(default)]
    delete_pods: Option<RawDeletePods>,
    #[serde(default)]
    drain: Option<RawDrain>,
    #[serde(default)]
    node_fault: Option<RawNodeFault>,
    #[serde(default)]
    capacity_reservation: Option<Spanned<RawReservation>>,
    #[serde(default)]
    cancel_capacity_reservation: Option<RawReservationId>,
    #[serde(default)]
    reclaim_capacity_reservation: Option<RawReclaim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDelete {
    kind: Spanned<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeleteNodes {
    #[serde(default = "one")]
    count: u32,
    #[serde(default)]
    nodepool: Option<String>,
    /// `oldest` (default) or `newest`.
    #[serde(default)]
    pick: Option<Spanned<String>>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    /// `create_fleet`: crash right after the next CreateFleet returns, before the claim records it.
    #[serde(default)]
    after: Option<Spanned<String>>,
    /// How long the process stays down (default 10s, a pod restart).
    #[serde(default)]
    down_for: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQueueMessage {
    /// `rebalance_recommendation`, `scheduled_change` or `raw`.
    kind: Spanned<String>,
    #[serde(default)]
    zone: Option<String>,
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmpty {}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpotInterruption {
    #[serde(default)]
    zone: Option<String>,
    fraction: f64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShortage {
    #[serde(default)]
    instance_types: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
    #[serde(default)]
    capacity_type: Option<Spanned<String>>,
    #[serde(rename = "for")]
    for_: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKms {
    key: String,
    #[serde(rename = "for")]
    for_: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawThrottle {
    rate: f64,
    #[serde(rename = "for")]
    for_: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutage {
    #[serde(rename = "for")]
    for_: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuota {
    capacity_type: Spanned<String>,
    vcpus: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAmi {
    #[serde(default = "default_arch")]
    arch: String,
    version: String,
    /// AWS deprecates the images `recommended` named until now (a release withdrawn for a regression).
    #[serde(default)]
    deprecate_previous: bool,
}

fn default_arch() -> String {
    "x86_64".to_string()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScale {
    #[serde(default)]
    deployment: Option<Spanned<String>>,
    #[serde(default)]
    statefulset: Option<Spanned<String>>,
    #[serde(default)]
    replicaset: Option<Spanned<String>>,
    replicas: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    #[serde(default)]
    pods_pending_max: Option<Spanned<String>>,
    #[serde(default)]
    pods_pending_p99: Option<RawPendingP99>,
    #[serde(default)]
    cost_per_hour_max: Option<f64>,
    #[serde(default)]
    cost_total_max: Option<f64>,
    #[serde(default)]
    cost_over_bound_max: Option<f64>,
    #[serde(default)]
    nodes_max: Option<u32>,
    #[serde(default)]
    nodes_at_end: Option<Spanned<String>>,
    #[serde(default)]
    launches_max: Option<u32>,
    #[serde(default)]
    evictions_max: Option<u32>,
    #[serde(default)]
    pods_pending_at_end: Option<RawPendingAtEnd>,
    #[serde(default)]
    pods_explained: Vec<RawExplained>,
    #[serde(default)]
    instance_types: Option<RawAllowDeny>,
    #[serde(default)]
    instance_families: Option<RawAllowDeny>,
    #[serde(default)]
    capacity_types: Option<RawAllowDeny>,
    #[serde(default)]
    zones: Option<RawAllowDeny>,
    #[serde(default)]
    placement: Vec<RawPlacement>,
    #[serde(default)]
    disruptions: RawDisruptions,
    #[serde(default)]
    unavailable_pod_minutes_max: Option<f64>,
    #[serde(default)]
    trace_contains: Vec<Spanned<String>>,
    #[serde(default)]
    trace_lacks: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPendingP99 {
    max: Spanned<String>,
    #[serde(default)]
    selector: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPendingAtEnd {
    max: u32,
    #[serde(default)]
    selector: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExplained {
    #[serde(default)]
    selector: Option<Spanned<String>>,
    reason: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllowDeny {
    #[serde(default)]
    allowed: Vec<String>,
    #[serde(default)]
    forbidden: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlacement {
    selector: Spanned<String>,
    #[serde(default)]
    nodepool: Option<String>,
    #[serde(default)]
    instance_types: Vec<String>,
    #[serde(default)]
    zones: Vec<String>,
}

/// NodeClaims disrupted, by the reasons `karpenter_nodeclaims_disrupted_total` counts.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDisruptions {
    #[serde(default)]
    empty: Option<RawMinMax>,
    #[serde(default)]
    underutilized: Option<RawMinMax>,
    #[serde(default)]
    drifted: Option<RawMinMax>,
    #[serde(default)]
    expired: Option<RawMinMax>,
    #[serde(default)]
    interruption: Option<RawMinMax>,
    #[serde(default)]
    unhealthy: Option<RawMinMax>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMinMax {
    #[serde(default)]
    min: Option<u32>,
    #[serde(default)]
    max: Option<u32>,
}

/// A Kubernetes or Karpenter object from a scenario, already checked against its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub kind: String,
    pub object: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Set a Deployment's, StatefulSet's or ReplicaSet's replicas.
    Scale {
        kind: String,
        namespace: String,
        name: String,
        replicas: u32,
    },
    Apply(Vec<Manifest>),
    SpotInterruption {
        zone: Option<String>,
        fraction: f64,
    },
    CapacityShortage {
        instance_types: Vec<String>,
        zones: Vec<String>,
        capacity_type: Option<CapacityType>,
        for_: Duration,
    },
    KmsKeyDisabled {
        key: String,
        for_: Duration,
    },
    ApiThrottle {
        rate: f64,
        for_: Duration,
    },
    ApiOutage {
        for_: Duration,
    },
    VcpuQuota {
        capacity_type: CapacityType,
        vcpus: u32,
    },
    AmiRelease {
        arch: String,
        version: String,
        deprecate_previous: bool,
    },
    KubeOutage {
        for_: Duration,
    },
    WatchDisconnect,
    /// An EventBridge message on the interruption queue about the first running instance (in `zone` if
    /// given), or a raw body.
    QueueMessage {
        kind: QueueMessageKind,
        zone: Option<String>,
    },
    /// `kubectl delete` of one object.
    Delete {
        kind: String,
        namespace: String,
        name: String,
    },
    /// `kubectl delete node` of `count` nodes (of a NodePool if given), oldest or newest first.
    DeleteNodes {
        count: u32,
        nodepool: Option<String>,
        newest_first: bool,
    },
    /// The controller process dies and comes back `down_for` later (now, or right after the next
    /// CreateFleet).
    ControllerRestart {
        after_create_fleet: bool,
        down_for: Duration,
    },
    /// The controller is down for a while (a crash loop, a bad rollout).
    ControllerDown {
        for_: Duration,
    },
    /// New controller settings, rolled out: the controller restarts with them.
    Settings(Vec<(String, String)>),
    /// `kubectl delete pods -l ...`.
    DeletePods(PodPick),
    /// `kubectl drain` of a named node, or of `count` nodes of a pool (or any), oldest or newest first.
    Drain {
        node: Option<String>,
        count: u32,
        nodepool: Option<String>,
        newest_first: bool,
    },
    /// Something goes wrong on nodes whose instances keep running (a named node, or `count` nodes of a
    /// pool or any, oldest or newest first), healing after `for_` if given.
    NodeFault {
        fault: fakekube::NodeFault,
        node: Option<String>,
        count: u32,
        nodepool: Option<String>,
        newest_first: bool,
        for_: Option<Duration>,
    },
    /// The account buys a capacity reservation.
    CreateReservation(fakecloud::reservations::ReservationSpec),
    /// A capacity reservation is cancelled (its instances run on as on-demand; a block's end).
    CancelReservation(String),
    /// The owner of an interruptible reservation takes `count` instances' worth back.
    ReclaimReservation {
        id: String,
        count: u32,
    },
}

/// Pods a `delete_pods` action picks: by selector, in a namespace and zone when given, at most `count`.
#[derive(Debug, Clone, PartialEq)]
pub struct PodPick {
    pub selector: crate::expect::Selector,
    pub namespace: Option<String>,
    pub zone: Option<String>,
    pub count: Option<u32>,
}

/// Kinds a `delete` action may name.
const DELETABLE: [&str; 26] = [
    "NodePool",
    "EC2NodeClass",
    "NodeOverlay",
    "CapacityBuffer",
    "PodTemplate",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "Pod",
    "PodDisruptionBudget",
    "Node",
    "NodeClaim",
    "Namespace",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "CSINode",
    "PriorityClass",
    "RuntimeClass",
    "Service",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
    "Lease",
];

#[derive(Debug, Clone, PartialEq)]
pub enum QueueMessageKind {
    RebalanceRecommendation,
    ScheduledChange,
    Raw(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub at: Duration,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CloudSpec {
    pub region: String,
    pub zones: Vec<String>,
    pub launch_latency: (Duration, Duration),
    pub boot_to_ready: (Duration, Duration),
    pub api_latency: (Duration, Duration),
    pub foreign_instances: u32,
    pub spot_depth: (u32, u32),
    pub on_demand_vcpu_quota: u32,
    pub spot_vcpu_quota: u32,
    pub visibility_lag: (Duration, Duration),
    /// Whether the cluster has an interruption queue (EventBridge rules feeding SQS) for the controller to
    /// read; without one, spot interruptions and other notices reach nobody before they happen.
    pub interruption_queue: bool,
    /// Declared subnets, security groups, images and offering changes (empty: the defaults).
    pub subnets: Vec<fakecloud::config::SubnetSpec>,
    pub security_groups: Vec<fakecloud::config::SecurityGroupSpec>,
    pub images: Vec<dovetail::aws::cloud::Image>,
    pub offerings: Vec<fakecloud::config::OfferingRule>,
    pub existing_instances: Vec<fakecloud::config::ExistingInstance>,
    pub capacity_reservations: Vec<fakecloud::reservations::ReservationSpec>,
}

pub use crate::expect::Expectations;

/// A loaded, validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub seed: u64,
    pub duration: Duration,
    pub tick: Duration,
    pub cloud: CloudSpec,
    pub api_latency: Duration,
    pub scheduler_interval: Duration,
    /// Controller replicas; with two or more they elect a leader over a Lease.
    pub controller_replicas: u32,
    /// The API server's `major.minor`.
    pub kubernetes_version: String,
    /// Wire mode: the controller uses the production kube-rs adapter over turmoil's network against
    /// fakekube's HTTP front, instead of calling the in-memory API server.
    pub wire: bool,
    /// Controller settings by the binary's environment variable names (`BATCH_IDLE_DURATION: 2s`), applied
    /// over Dovetail's defaults.
    pub settings: Vec<(String, String)>,
    pub manifests: Vec<Manifest>,
    /// What loading changed in the manifests as written (objects left to their controllers, pods' node
    /// names), shown at the start of the trace.
    pub notes: Vec<String>,
    pub timeline: Vec<Event>,
    pub expect: Expectations,
}

struct Loader<'a> {
    file: &'a str,
    /// The scenario's directory, which `file:` manifests are read relative to (None for text not read
    /// from disk).
    dir: Option<&'a Path>,
    /// Reading a file a scenario included: includes do not nest.
    included: bool,
    /// What the loader left to the simulation instead of loading as written (objects a controller makes,
    /// pods' node names), for the trace.
    notes: std::cell::RefCell<Vec<String>>,
}

/// Kinds a scenario's manifests may hold.
const SUPPORTED_KINDS: [&str; 24] = [
    "NodePool",
    "EC2NodeClass",
    "NodeOverlay",
    "CapacityBuffer",
    "PodTemplate",
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "Pod",
    "PodDisruptionBudget",
    "Node",
    "Namespace",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "CSINode",
    "PriorityClass",
    "RuntimeClass",
    "Service",
    "ConfigMap",
    "Secret",
    "ServiceAccount",
];

/// Settings of the binary that the simulation sets another way, or that shape only its logs and ports.
const SIM_OWNED_SETTINGS: [(&str, &str); 12] = [
    ("AWS_REGION", "set cloud.region"),
    ("CLUSTER_ENDPOINT", "nodes join the simulated API server"),
    ("CLUSTER_CA_BUNDLE", "nodes join the simulated API server"),
    (
        "CLUSTER_CIDR",
        "the simulated cluster's service CIDR is fixed",
    ),
    ("LOG_LEVEL", "the trace replaces logs"),
    ("LOG_FORMAT", "the trace replaces logs"),
    ("METRICS_PORT", "metrics are read in process"),
    ("HEALTH_PROBE_PORT", "there are no probes"),
    ("DISABLE_LEADER_ELECTION", "set cluster.controller_replicas"),
    ("LEADER_ELECTION_NAME", "the Lease is the simulation's"),
    ("SYSTEM_NAMESPACE", "the Lease is the simulation's"),
    ("POD_NAME", "replicas are named dovetail-0.."),
];

/// Kinds whose simulated controllers make the objects they own.
const MANAGING_KINDS: [&str; 5] = [
    "Deployment",
    "ReplicaSet",
    "StatefulSet",
    "DaemonSet",
    "Job",
];

/// (kind, namespace, name) of a manifest a `scale` action may name.
fn scalable(m: &Manifest) -> Option<(String, String, String)> {
    matches!(m.kind.as_str(), "Deployment" | "StatefulSet" | "ReplicaSet").then(|| {
        (
            m.kind.clone(),
            m.object["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string(),
            m.object["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    })
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn display_name(json: &Value) -> String {
    let name = json["metadata"]["name"].as_str().unwrap_or("?");
    match json["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

impl Loader<'_> {
    fn err(&self, at: Pos, field: &str, message: impl Into<String>) -> SimError {
        SimError::Scenario {
            file: self.file.to_string(),
            line: at.line,
            column: at.column,
            field: field.to_string(),
            message: message.into(),
        }
    }

    fn duration(&self, s: &Spanned<String>, field: &str) -> Result<Duration, SimError> {
        duration::parse(&s.value).map_err(|m| self.err(pos(s), field, m))
    }

    fn count_range(&self, s: &Spanned<String>, field: &str) -> Result<(u32, u32), SimError> {
        let parse = |t: &str| {
            t.trim().parse::<u32>().map_err(|_| {
                self.err(
                    pos(s),
                    field,
                    format!("`{}` is not a count range such as 20..200", s.value),
                )
            })
        };
        match s.value.split_once("..") {
            Some((lo, hi)) => {
                let (lo, hi) = (parse(lo)?, parse(hi)?);
                if hi < lo {
                    return Err(self.err(
                        pos(s),
                        field,
                        format!("`{}`: the range ends before it starts", s.value),
                    ));
                }
                Ok((lo, hi))
            }
            None => parse(&s.value).map(|n| (n, n)),
        }
    }

    /// `oldest` (false) or `newest` (true) first.
    fn pick(&self, p: &Spanned<String>, field: &str) -> Result<bool, SimError> {
        match p.value.as_str() {
            "oldest" => Ok(false),
            "newest" => Ok(true),
            other => Err(self.err(
                pos(p),
                field,
                format!("unknown pick `{other}`; use oldest or newest"),
            )),
        }
    }

    /// A `settings:` block: the binary's environment variable names and values, each checked by setting it
    /// on Dovetail's defaults. Names the binary reads that mean nothing in a simulation are noted.
    fn settings(
        &self,
        node: &Spanned<Node>,
        field: &str,
    ) -> Result<Vec<(String, String)>, SimError> {
        let Node::Map(entries) = &node.value else {
            return Err(self.err(
                pos(node),
                field,
                "a map of the binary's settings, e.g. {BATCH_IDLE_DURATION: 2s, FEATURE_GATES: \"SpotToSpotConsolidation=false\"}",
            ));
        };
        let mut out = Vec::new();
        for (k, v) in entries {
            let at = format!("{field}.{}", k.value);
            let value = match &v.value {
                Node::Str(s) => s.clone(),
                Node::Int(i) => i.to_string(),
                Node::Float(f) => f.to_string(),
                Node::Bool(b) => b.to_string(),
                Node::Null => String::new(),
                _ => {
                    return Err(self.err(
                        pos(v),
                        &at,
                        "a setting's value is a string, number or boolean",
                    ));
                }
            };
            match k.value.as_str() {
                // Settings the simulation owns elsewhere, or that only shape logs and ports.
                "INTERRUPTION_QUEUE" => {}
                name if SIM_OWNED_SETTINGS.iter().any(|(n, _)| *n == name) => {
                    let why = SIM_OWNED_SETTINGS
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map_or("", |(_, w)| *w);
                    self.notes
                        .borrow_mut()
                        .push(format!("{at}: no effect in the simulation: {why}"));
                }
                name => dovetail::Settings::default()
                    .set(name, &value)
                    .map_err(|e| self.err(pos(k), &at, e))?,
            }
            out.push((k.value.clone(), value));
        }
        Ok(out)
    }

    /// `cloud.subnets`, `cloud.images` and `cloud.offerings`, checked against the cloud's zones.
    fn declared_cloud(&self, raw: &RawCloud, cloud: &mut CloudSpec) -> Result<(), SimError> {
        for (i, s) in raw.subnets.iter().enumerate() {
            if !cloud.zones.contains(&s.value.zone.value) {
                return Err(self.err(
                    pos(&s.value.zone),
                    &format!("cloud.subnets[{i}].zone"),
                    format!(
                        "`{}` is not one of cloud.zones ({})",
                        s.value.zone.value,
                        cloud.zones.join(", ")
                    ),
                ));
            }
            cloud.subnets.push(fakecloud::config::SubnetSpec {
                id: s.value.id.clone(),
                zone: s.value.zone.value.clone(),
                tags: s.value.tags.clone(),
                available_ip_addresses: s.value.free_addresses,
            });
        }
        for (i, img) in raw.images.iter().enumerate() {
            let r = &img.value;
            let field = format!("cloud.images[{i}]");
            let arch = r.arch.as_ref().map_or("x86_64", |a| a.value.as_str());
            if let Some(a) = &r.arch
                && !["x86_64", "arm64"].contains(&arch)
            {
                return Err(self.err(
                    pos(a),
                    &format!("{field}.arch"),
                    format!("`{arch}`: x86_64 or arm64 (EC2's names)"),
                ));
            }
            let created = r
                .created
                .as_ref()
                .map_or("2025-06-01T00:00:00Z", |c| c.value.as_str());
            if let Some(c) = &r.created
                && created.parse::<jiff::Timestamp>().is_err()
            {
                return Err(self.err(
                    pos(c),
                    &format!("{field}.created"),
                    format!("`{created}` is not an RFC 3339 time such as 2025-11-01T00:00:00Z"),
                ));
            }
            let (owner_id, owner_alias) = match r.owner.as_str() {
                "self" => (fakecloud::sqs::ACCOUNT.to_string(), None),
                "amazon" => (
                    fakecloud::images::EKS_ACCOUNT.to_string(),
                    Some("amazon".to_string()),
                ),
                account => (account.to_string(), None),
            };
            let hash = r.name.bytes().fold(0xcbf29ce484222325u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
            });
            cloud.images.push(dovetail::aws::cloud::Image {
                id: r
                    .id
                    .clone()
                    .unwrap_or_else(|| format!("ami-{:017x}", hash >> 4)),
                name: r.name.clone(),
                arch: arch.to_string(),
                creation_date: created.to_string(),
                deprecation_time: r.deprecated.then(|| created.to_string()),
                owner_id,
                owner_alias,
                tags: r.tags.clone(),
            });
        }
        for (i, x) in raw.existing_instances.iter().enumerate() {
            let r = &x.value;
            let field = format!("cloud.existing_instances[{i}]");
            self.type_and_zone(&r.instance_type, &r.zone, &field, cloud)?;
            let capacity_type = match &r.capacity_type {
                Some(c) => self.capacity_type(c, &format!("{field}.capacity_type"))?,
                None => CapacityType::OnDemand,
            };
            let mut tags: BTreeMap<String, String> =
                [("eks:nodegroup-name".to_string(), r.node_group.clone())].into();
            for (k, v) in &r.labels {
                tags.insert(
                    format!("{}{k}", fakekube::kubelet::NODE_TEMPLATE_LABEL),
                    v.clone(),
                );
            }
            for (j, t) in r.taints.iter().enumerate() {
                let (kv, effect) = t.value.rsplit_once(':').unwrap_or((t.value.as_str(), ""));
                if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
                    return Err(self.err(
                        pos(t),
                        &format!("{field}.taints[{j}]"),
                        format!("`{}`: write key=value:Effect (NoSchedule, PreferNoSchedule or NoExecute)", t.value),
                    ));
                }
                let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
                tags.insert(
                    format!("{}{key}", fakekube::kubelet::NODE_TEMPLATE_TAINT),
                    format!("{value}:{effect}"),
                );
            }
            for _ in 0..r.count {
                cloud
                    .existing_instances
                    .push(fakecloud::config::ExistingInstance {
                        instance_type: r.instance_type.value.clone(),
                        zone: r.zone.value.clone(),
                        capacity_type,
                        tags: tags.clone(),
                    });
            }
        }
        for (i, r) in raw.capacity_reservations.iter().enumerate() {
            let spec = self.reservation(r, &format!("cloud.capacity_reservations[{i}]"), cloud)?;
            if let Some(id) = &spec.id
                && cloud
                    .capacity_reservations
                    .iter()
                    .any(|c| c.id.as_ref() == Some(id))
            {
                return Err(self.err(
                    pos(r),
                    &format!("cloud.capacity_reservations[{i}].id"),
                    format!("`{id}` is declared twice"),
                ));
            }
            cloud.capacity_reservations.push(spec);
        }
        for (i, o) in raw.offerings.iter().enumerate() {
            let r = &o.value;
            if let Some(z) = r.zones.iter().find(|z| !cloud.zones.contains(z)) {
                return Err(self.err(
                    pos(o),
                    &format!("cloud.offerings[{i}].zones"),
                    format!(
                        "`{z}` is not one of cloud.zones ({})",
                        cloud.zones.join(", ")
                    ),
                ));
            }
            if r.spot_price.is_some_and(|p| !(p > 0.0 && p.is_finite())) {
                return Err(self.err(
                    pos(o),
                    &format!("cloud.offerings[{i}].spot_price"),
                    "a spot price is a positive number of USD per hour",
                ));
            }
            if r.offered.is_none() && r.spot_price.is_none() {
                return Err(self.err(
                    pos(o),
                    &format!("cloud.offerings[{i}]"),
                    "say `offered: true|false` or a `spot_price` (or both)",
                ));
            }
            cloud.offerings.push(fakecloud::config::OfferingRule {
                instance_types: r.instance_types.clone(),
                zones: r.zones.clone(),
                offered: r.offered,
                spot_price: r.spot_price,
            });
        }
        Ok(())
    }

    /// An instance type the catalog has, in one of the cloud's zones.
    fn type_and_zone(
        &self,
        instance_type: &Spanned<String>,
        zone: &Spanned<String>,
        field: &str,
        cloud: &CloudSpec,
    ) -> Result<(), SimError> {
        if !fakecloud::catalog::Catalog::builtin()
            .types
            .contains_key(&instance_type.value)
        {
            return Err(self.err(
                pos(instance_type),
                &format!("{field}.instance_type"),
                format!(
                    "`{}` is not in the simulator's catalog",
                    instance_type.value
                ),
            ));
        }
        if !cloud.zones.contains(&zone.value) {
            return Err(self.err(
                pos(zone),
                &format!("{field}.zone"),
                format!(
                    "`{}` is not one of cloud.zones ({})",
                    zone.value,
                    cloud.zones.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// A reservation as declared (in `cloud:` or on the timeline), checked.
    fn reservation(
        &self,
        raw: &Spanned<RawReservation>,
        field: &str,
        cloud: &CloudSpec,
    ) -> Result<fakecloud::reservations::ReservationSpec, SimError> {
        use dovetail::aws::cloud::ReservationType;
        let r = &raw.value;
        self.type_and_zone(&r.instance_type, &r.zone, field, cloud)?;
        if r.count == 0 {
            return Err(self.err(
                pos(raw),
                &format!("{field}.count"),
                "a reservation holds at least one instance",
            ));
        }
        if let Some(id) = &r.id
            && !(id.value.starts_with("cr-")
                && id.value.len() > 3
                && id.value[3..]
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase()))
        {
            return Err(self.err(
                pos(id),
                &format!("{field}.id"),
                format!(
                    "`{}`: a reservation id is `cr-` then lowercase letters and digits",
                    id.value
                ),
            ));
        }
        let criteria = match &r.instance_match_criteria {
            None => "targeted".to_string(),
            Some(m) if m.value == "open" || m.value == "targeted" => m.value.clone(),
            Some(m) => {
                return Err(self.err(
                    pos(m),
                    &format!("{field}.instance_match_criteria"),
                    format!("`{}`: open or targeted", m.value),
                ));
            }
        };
        let block = match &r.reservation_type {
            None => false,
            Some(t) if t.value == "default" => false,
            Some(t) if t.value == "capacity-block" => true,
            Some(t) => {
                return Err(self.err(
                    pos(t),
                    &format!("{field}.reservation_type"),
                    format!("`{}`: default or capacity-block", t.value),
                ));
            }
        };
        let kind = match (block, r.interruptible) {
            (true, true) => {
                return Err(self.err(
                    pos(raw),
                    &format!("{field}.interruptible"),
                    "a Capacity Block cannot be interruptible",
                ));
            }
            (true, false) => ReservationType::CapacityBlock,
            (false, true) => ReservationType::Interruptible,
            (false, false) => ReservationType::Default,
        };
        if block && criteria != "targeted" {
            return Err(self.err(
                pos(raw),
                &format!("{field}.instance_match_criteria"),
                "a Capacity Block is always targeted",
            ));
        }
        let lasts = match &r.lasts {
            Some(d) => Some(self.duration(d, &format!("{field}.lasts"))?),
            None if block => {
                return Err(self.err(
                    pos(raw),
                    &format!("{field}.lasts"),
                    "a Capacity Block has an end: say how long it `lasts`",
                ));
            }
            None => None,
        };
        Ok(fakecloud::reservations::ReservationSpec {
            id: r.id.as_ref().map(|i| i.value.clone()),
            instance_type: r.instance_type.value.clone(),
            zone: r.zone.value.clone(),
            count: r.count,
            instance_match_criteria: criteria,
            kind,
            owner_id: r
                .owner_id
                .clone()
                .unwrap_or_else(|| fakecloud::sqs::ACCOUNT.to_string()),
            tags: r.tags.clone(),
            starts_after: match &r.starts_after {
                Some(d) => self.duration(d, &format!("{field}.starts_after"))?,
                None => Duration::ZERO,
            },
            lasts,
        })
    }

    fn selector(
        &self,
        s: &Spanned<String>,
        field: &str,
    ) -> Result<crate::expect::Selector, SimError> {
        crate::expect::Selector::parse(&s.value).map_err(|e| self.err(pos(s), field, e))
    }

    fn pattern(&self, s: &Spanned<String>, field: &str) -> Result<String, SimError> {
        regex::Regex::new(&s.value)
            .map(|_| s.value.clone())
            .map_err(|e| self.err(pos(s), field, format!("not a regular expression: {e}")))
    }

    /// `expect:`, every value checked now so that a run does not end in a bad pattern.
    fn expectations(&self, raw: &RawExpect) -> Result<Expectations, SimError> {
        use crate::expect::{AllowDeny, Explained, Placement};
        let allow = |r: &Option<RawAllowDeny>| {
            r.as_ref().map(|r| AllowDeny {
                allowed: r.allowed.clone(),
                forbidden: r.forbidden.clone(),
            })
        };
        let d = &raw.disruptions;
        let disruptions: BTreeMap<String, (Option<u32>, Option<u32>)> = [
            ("empty", &d.empty),
            ("underutilized", &d.underutilized),
            ("drifted", &d.drifted),
            ("expired", &d.expired),
            ("interruption", &d.interruption),
            ("unhealthy", &d.unhealthy),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|m| (k.to_string(), (m.min, m.max))))
        .collect();
        Ok(Expectations {
            pods_pending_max: match &raw.pods_pending_max {
                Some(s) => Some(self.duration(s, "expect.pods_pending_max")?),
                None => None,
            },
            pods_pending_p99: match &raw.pods_pending_p99 {
                Some(p) => Some((
                    self.duration(&p.max, "expect.pods_pending_p99.max")?,
                    match &p.selector {
                        Some(s) => Some(self.selector(s, "expect.pods_pending_p99.selector")?),
                        None => None,
                    },
                )),
                None => None,
            },
            cost_per_hour_max: raw.cost_per_hour_max,
            cost_total_max: raw.cost_total_max,
            cost_over_bound_max: raw.cost_over_bound_max,
            nodes_max: raw.nodes_max,
            nodes_at_end: match &raw.nodes_at_end {
                Some(s) => Some(self.count_range(s, "expect.nodes_at_end")?),
                None => None,
            },
            launches_max: raw.launches_max,
            evictions_max: raw.evictions_max,
            pods_pending_at_end: match &raw.pods_pending_at_end {
                Some(p) => Some((
                    p.max,
                    match &p.selector {
                        Some(s) => Some(self.selector(s, "expect.pods_pending_at_end.selector")?),
                        None => None,
                    },
                )),
                None => None,
            },
            pods_explained: raw
                .pods_explained
                .iter()
                .enumerate()
                .map(|(i, x)| {
                    Ok(Explained {
                        selector: match &x.selector {
                            Some(s) => Some(
                                self.selector(s, &format!("expect.pods_explained[{i}].selector"))?,
                            ),
                            None => None,
                        },
                        reason: self
                            .pattern(&x.reason, &format!("expect.pods_explained[{i}].reason"))?,
                    })
                })
                .collect::<Result<_, SimError>>()?,
            instance_types: allow(&raw.instance_types),
            instance_families: allow(&raw.instance_families),
            capacity_types: allow(&raw.capacity_types),
            zones: allow(&raw.zones),
            placement: raw
                .placement
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    Ok(Placement {
                        selector: self
                            .selector(&p.selector, &format!("expect.placement[{i}].selector"))?,
                        nodepool: p.nodepool.clone(),
                        instance_types: p.instance_types.clone(),
                        zones: p.zones.clone(),
                    })
                })
                .collect::<Result<_, SimError>>()?,
            disruptions,
            unavailable_pod_minutes_max: raw.unavailable_pod_minutes_max,
            trace_contains: raw
                .trace_contains
                .iter()
                .enumerate()
                .map(|(i, p)| self.pattern(p, &format!("expect.trace_contains[{i}]")))
                .collect::<Result<_, _>>()?,
            trace_lacks: raw
                .trace_lacks
                .iter()
                .enumerate()
                .map(|(i, p)| self.pattern(p, &format!("expect.trace_lacks[{i}]")))
                .collect::<Result<_, _>>()?,
        })
    }

    fn capacity_type(&self, s: &Spanned<String>, field: &str) -> Result<CapacityType, SimError> {
        // `reserved` capacity is declared as `capacity_reservations`, not as a market.
        CapacityType::parse(&s.value)
            .filter(|c| *c != CapacityType::Reserved)
            .ok_or_else(|| {
                self.err(
                    pos(s),
                    field,
                    format!(
                        "`{}` is not a capacity type; use spot or on-demand",
                        s.value
                    ),
                )
            })
    }

    fn range(&self, s: &Spanned<String>, field: &str) -> Result<(Duration, Duration), SimError> {
        duration::parse_range(&s.value).map_err(|m| self.err(pos(s), field, m))
    }

    /// One entry of a manifest list: an inline manifest, or `file: PATH` naming a YAML file (relative to
    /// the scenario) of one or more `---`-separated manifests.
    fn manifests(&self, node: &Spanned<Node>, field: &str) -> Result<Vec<Manifest>, SimError> {
        let Some((path, at)) = file_reference(node) else {
            return self.manifest(node, field);
        };
        let field = format!("{field}.file");
        if self.included {
            return Err(self.err(
                at,
                &field,
                "a file included with `file:` cannot include another; list every file in the scenario",
            ));
        }
        let Some(dir) = self.dir else {
            return Err(self.err(
                at,
                &field,
                "`file:` manifests are read relative to the scenario's file; load the scenario from a file",
            ));
        };
        let full = dir.join(path);
        let shown = full.display().to_string();
        let text = std::fs::read_to_string(&full).map_err(|e| {
            self.err(
                at,
                &field,
                format!(
                    "cannot read `{shown}` ({e}); the path is relative to the scenario's directory"
                ),
            )
        })?;
        let docs: Vec<Spanned<Node>> =
            serde_saphyr::from_multiple(&text).map_err(|e| serde_error(&shown, e, ""))?;
        let inner = Loader {
            file: &shown,
            dir: Some(dir),
            included: true,
            notes: Default::default(),
        };
        let mut found: Vec<Manifest> = Vec::new();
        for (i, d) in docs.iter().filter(|d| d.value != Node::Null).enumerate() {
            found.extend(inner.manifest(d, &format!("document[{i}]"))?);
        }
        self.notes.borrow_mut().extend(inner.notes.take());
        if found.is_empty() {
            return Err(self.err(at, &field, format!("`{shown}` holds no manifest")));
        }
        Ok(found)
    }

    /// Decode a manifest into its type, reject fields the type does not have, and check quantities; a
    /// `kind: List` (what `kubectl get -o yaml` writes) is its items. Objects a controller makes from
    /// another one in the scenario (a Deployment's ReplicaSets, every workload's pods) are left to that
    /// controller, with a note.
    fn manifest(&self, node: &Spanned<Node>, field: &str) -> Result<Vec<Manifest>, SimError> {
        let json = node.value.to_json();
        let at = |path: &[Seg]| locate(node, path);
        let kind = json["kind"].as_str().unwrap_or_default().to_string();
        let api_version = json["apiVersion"].as_str().unwrap_or_default().to_string();
        if kind == "List" {
            let items = match &node.value {
                Node::Map(entries) => entries.iter().find(|(k, _)| k.value == "items"),
                _ => None,
            };
            let mut out = Vec::new();
            if let Some((
                _,
                Spanned {
                    value: Node::Seq(items),
                    ..
                },
            )) = items
            {
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.manifest(item, &format!("{field}.items[{i}]"))?);
                }
            }
            return Ok(out);
        }
        let expected = match kind.as_str() {
            "NodePool" => "karpenter.sh/v1",
            "NodeOverlay" => "karpenter.sh/v1alpha1",
            "CapacityBuffer" => "autoscaling.x-k8s.io/v1beta1",
            "EC2NodeClass" => "karpenter.k8s.aws/v1",
            "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet" => "apps/v1",
            "Job" => "batch/v1",
            "Pod"
            | "Node"
            | "Namespace"
            | "PodTemplate"
            | "PersistentVolumeClaim"
            | "PersistentVolume"
            | "Service"
            | "ConfigMap"
            | "Secret"
            | "ServiceAccount" => "v1",
            "StorageClass" | "CSINode" => "storage.k8s.io/v1",
            "PriorityClass" => "scheduling.k8s.io/v1",
            "RuntimeClass" => "node.k8s.io/v1",
            "PodDisruptionBudget" => "policy/v1",
            "" => {
                return Err(self.err(
                    at(&[]),
                    &format!("{field}.kind"),
                    "every manifest needs `kind` and `apiVersion`",
                ));
            }
            "Provisioner" | "AWSNodeTemplate" => {
                return Err(self.err(
                    at(&[Seg::Key("kind".into())]),
                    &format!("{field}.kind"),
                    format!("{kind} is Karpenter's old API ({api_version}); convert the file with `cargo xtask migrate FILE` (or `dovetail migrate FILE`) to NodePool and EC2NodeClass"),
                ));
            }
            other => {
                return Err(self.err(
                    at(&[Seg::Key("kind".into())]),
                    &format!("{field}.kind"),
                    format!(
                        "unsupported kind `{other}`; scenarios accept {}",
                        SUPPORTED_KINDS.join(", ")
                    ),
                ));
            }
        };
        if api_version != expected {
            let hint = if matches!(kind.as_str(), "NodePool" | "EC2NodeClass")
                && api_version.ends_with("/v1beta1")
            {
                "; convert the file with `cargo xtask migrate FILE` (or `dovetail migrate FILE`)"
            } else {
                ""
            };
            return Err(self.err(
                at(&[Seg::Key("apiVersion".into())]),
                &format!("{field}.apiVersion"),
                format!("{kind} is `{expected}`, not `{api_version}`{hint}"),
            ));
        }
        if let Some(owner) = json["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["controller"] == true)
        {
            let owner_kind = owner["kind"].as_str().unwrap_or_default();
            if MANAGING_KINDS.contains(&owner_kind) {
                self.notes.borrow_mut().push(format!(
                    "{field}: {} {} is made by its {owner_kind} {}; the simulated {owner_kind} controller makes it again",
                    kind.to_lowercase(),
                    display_name(&json),
                    owner["name"].as_str().unwrap_or("?"),
                ));
                return Ok(Vec::new());
            }
        }
        // The API server's own check of a custom resource: its CRD's schema and CEL rules.
        if matches!(
            kind.as_str(),
            "NodePool" | "EC2NodeClass" | "NodeOverlay" | "CapacityBuffer"
        ) {
            let store = crate::world::api_server_store(0);
            let mut defaulted = json.clone();
            if let Some(e) = store.schema_errors(&kind, &mut defaulted, None).first() {
                let path: Vec<Seg> =
                    e.path
                        .iter()
                        .map(|s| match s {
                            fakekube::schema::PathSeg::Field(k)
                            | fakekube::schema::PathSeg::Key(k) => Seg::Key(k.clone()),
                            fakekube::schema::PathSeg::Index(i) => Seg::Index(*i),
                        })
                        .collect();
                return Err(self.err(
                    at(&path),
                    &format!("{field}.{}", fakekube::schema::render(&e.path)),
                    format!(
                        "{kind} {}: {}",
                        json["metadata"]["name"].as_str().unwrap_or("?"),
                        e.message
                    ),
                ));
            }
        }
        use k8s_openapi::api::{apps, batch, core, node as node_api, policy, scheduling, storage};
        let understood = match kind.as_str() {
            "NodePool" => self.typed::<dovetail::crds::NodePool>(node, &json, field)?,
            "EC2NodeClass" => self.typed::<dovetail::crds::EC2NodeClass>(node, &json, field)?,
            "NodeOverlay" => self.typed::<dovetail::crds::NodeOverlay>(node, &json, field)?,
            "CapacityBuffer" => self.typed::<dovetail::crds::CapacityBuffer>(node, &json, field)?,
            "PodTemplate" => self.typed::<core::v1::PodTemplate>(node, &json, field)?,
            "Deployment" => self.typed::<apps::v1::Deployment>(node, &json, field)?,
            "DaemonSet" => self.typed::<apps::v1::DaemonSet>(node, &json, field)?,
            "StatefulSet" => self.typed::<apps::v1::StatefulSet>(node, &json, field)?,
            "ReplicaSet" => self.typed::<apps::v1::ReplicaSet>(node, &json, field)?,
            "Pod" => self.typed::<core::v1::Pod>(node, &json, field)?,
            "Node" => self.typed::<core::v1::Node>(node, &json, field)?,
            "Namespace" => self.typed::<core::v1::Namespace>(node, &json, field)?,
            "PersistentVolumeClaim" => {
                self.typed::<core::v1::PersistentVolumeClaim>(node, &json, field)?
            }
            "PersistentVolume" => self.typed::<core::v1::PersistentVolume>(node, &json, field)?,
            "Service" => self.typed::<core::v1::Service>(node, &json, field)?,
            "ConfigMap" => self.typed::<core::v1::ConfigMap>(node, &json, field)?,
            "Secret" => self.typed::<core::v1::Secret>(node, &json, field)?,
            "ServiceAccount" => self.typed::<core::v1::ServiceAccount>(node, &json, field)?,
            "StorageClass" => self.typed::<storage::v1::StorageClass>(node, &json, field)?,
            "CSINode" => self.typed::<storage::v1::CSINode>(node, &json, field)?,
            "PriorityClass" => self.typed::<scheduling::v1::PriorityClass>(node, &json, field)?,
            "RuntimeClass" => self.typed::<node_api::v1::RuntimeClass>(node, &json, field)?,
            "Job" => self.typed::<batch::v1::Job>(node, &json, field)?,
            _ => self.typed::<policy::v1::PodDisruptionBudget>(node, &json, field)?,
        };
        let mut unknown = Vec::new();
        unknown_fields(&json, &understood, &mut Vec::new(), &mut unknown);
        // Karpenter's types leave empty lists and maps out when written back (`taints: []`); their
        // CRD schema has already refused names it does not know, so an empty one is not unknown.
        if matches!(
            kind.as_str(),
            "NodePool" | "EC2NodeClass" | "NodeOverlay" | "CapacityBuffer"
        ) {
            unknown.retain(|path| {
                let v = path.iter().fold(&json, |v, s| match s {
                    Seg::Key(k) => &v[k.as_str()],
                    Seg::Index(i) => &v[*i],
                });
                !(v.as_array().is_some_and(Vec::is_empty)
                    || v.as_object().is_some_and(|m| m.is_empty()))
            });
        }
        if let Some(path) = unknown.first() {
            let name = match path.last() {
                Some(Seg::Key(k)) => k.clone(),
                _ => String::new(),
            };
            return Err(self.err(
                at(path),
                &format!("{field}.{}", render_path(path)),
                format!("unknown field `{name}` in {kind} (check the spelling against the {api_version} API)"),
            ));
        }
        if json["metadata"]["name"].as_str().is_none_or(str::is_empty) {
            return Err(self.err(
                at(&[Seg::Key("metadata".into())]),
                &format!("{field}.metadata.name"),
                "every manifest needs a name",
            ));
        }
        self.check_quantities(node, &json, field)?;
        // The API server's own validation of built-in kinds (label syntax, replicas, selectors, operators).
        if let Err(e) = fakekube::validation::validate(&kind, &json) {
            let (at_field, message) = e.split_once(": ").unwrap_or(("", e.as_str()));
            let path = parse_path(at_field);
            return Err(self.err(
                at(&path),
                &format!("{field}.{at_field}"),
                format!(
                    "{kind} {}: {message}",
                    json["metadata"]["name"].as_str().unwrap_or("?")
                ),
            ));
        }
        if kind == "Node"
            && !json["status"]["allocatable"].is_object()
            && !json["status"]["capacity"].is_object()
        {
            return Err(self.err(
                at(&[Seg::Key("metadata".into())]),
                &format!("{field}.status.allocatable"),
                format!(
                    "Node {}: a node that is already there needs `status.allocatable` (or `capacity`): what pods may use on it",
                    display_name(&json)
                ),
            ));
        }
        let object = self.as_created(&kind, json, field);
        Ok(vec![Manifest { kind, object }])
    }

    /// The object as `kubectl create` would send it from a dump: what the API server sets itself
    /// (uid, resourceVersion, timestamps, managedFields) goes, and so does `status` except a Node's
    /// (the API server keeps a created Node's status; the kubelet would report it). A pod's `nodeName`
    /// goes too, with a note: the simulated scheduler places it.
    fn as_created(&self, kind: &str, mut json: Value, field: &str) -> Value {
        if let Some(meta) = json["metadata"].as_object_mut() {
            for server_set in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "managedFields",
                "selfLink",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                meta.shift_remove(server_set);
            }
            meta.shift_remove("ownerReferences");
        }
        if kind == "Node" {
            // A node written without conditions is taken to be Ready, and one without allocatable to
            // hold back nothing from its capacity.
            if !json["status"]["conditions"].is_array() {
                json["status"]["conditions"] = serde_json::json!([
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"}
                ]);
            }
            if !json["status"]["allocatable"].is_object() {
                json["status"]["allocatable"] = json["status"]["capacity"].clone();
            }
        } else if let Some(obj) = json.as_object_mut() {
            obj.shift_remove("status");
        }
        if kind == "Pod"
            && let Some(spec) = json["spec"].as_object_mut()
            && let Some(node) = spec.shift_remove("nodeName")
        {
            self.notes.borrow_mut().push(format!(
                "{field}: pod {}: spec.nodeName {node} dropped; the simulated scheduler places it",
                display_name(&json)
            ));
        }
        json
    }

    fn typed<T: DeserializeOwned + serde::Serialize>(
        &self,
        node: &Spanned<Node>,
        json: &Value,
        field: &str,
    ) -> Result<Value, SimError> {
        let typed: T = serde_path_to_error::deserialize(json.clone()).map_err(|e| {
            let path: Vec<Seg> = e
                .path()
                .iter()
                .filter_map(|s| match s {
                    serde_path_to_error::Segment::Map { key } => Some(Seg::Key(key.clone())),
                    serde_path_to_error::Segment::Seq { index } => Some(Seg::Index(*index)),
                    serde_path_to_error::Segment::Enum { variant } => {
                        Some(Seg::Key(variant.clone()))
                    }
                    serde_path_to_error::Segment::Unknown => None,
                })
                .collect();
            self.err(
                locate(node, &path),
                &format!("{field}.{}", render_path(&path)),
                e.inner().to_string(),
            )
        })?;
        serde_json::to_value(&typed).map_err(|e| self.err(pos(node), field, e.to_string()))
    }

    /// Every resource quantity in pod templates and NodePool limits must parse.
    fn check_quantities(
        &self,
        node: &Spanned<Node>,
        json: &Value,
        field: &str,
    ) -> Result<(), SimError> {
        let mut lists: Vec<Vec<Seg>> = Vec::new();
        let k = |s: &str| Seg::Key(s.to_string());
        let pod_spec: Vec<Seg> = match json["kind"].as_str() {
            Some("Pod") => vec![k("spec")],
            Some("Deployment" | "DaemonSet" | "Job" | "StatefulSet" | "ReplicaSet") => {
                vec![k("spec"), k("template"), k("spec")]
            }
            Some("PersistentVolumeClaim") => {
                lists.push(vec![k("spec"), k("resources"), k("requests")]);
                lists.push(vec![k("spec"), k("resources"), k("limits")]);
                Vec::new()
            }
            Some("Node") => {
                lists.push(vec![k("status"), k("capacity")]);
                lists.push(vec![k("status"), k("allocatable")]);
                Vec::new()
            }
            Some("RuntimeClass") => {
                lists.push(vec![k("overhead"), k("podFixed")]);
                Vec::new()
            }
            Some("NodePool") => {
                lists.push(vec![k("spec"), k("limits")]);
                Vec::new()
            }
            _ => Vec::new(),
        };
        if !pod_spec.is_empty() {
            let spec = pod_spec.iter().fold(json, |v, s| match s {
                Seg::Key(key) => &v[key.as_str()],
                Seg::Index(i) => &v[*i],
            });
            for group in ["containers", "initContainers"] {
                for (i, _) in spec[group].as_array().into_iter().flatten().enumerate() {
                    for list in ["requests", "limits"] {
                        let mut p = pod_spec.clone();
                        p.extend([k(group), Seg::Index(i), k("resources"), k(list)]);
                        lists.push(p);
                    }
                }
            }
        }
        for path in lists {
            let value = path.iter().fold(json, |v, s| match s {
                Seg::Key(key) => &v[key.as_str()],
                Seg::Index(i) => &v[*i],
            });
            for (name, q) in value.as_object().into_iter().flatten() {
                let text = match q {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if let Err(e) = dovetail::quantity::parse(&text) {
                    let mut p = path.clone();
                    p.push(k(name));
                    return Err(self.err(
                        locate(node, &p),
                        &format!("{field}.{}", render_path(&p)),
                        e.to_string(),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// `spec.template.metadata.labels[example.com/app]` as path segments (a bracket holds an index or a map key,
/// which may contain dots).
fn parse_path(text: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_bracket = false;
    let flush = |word: &mut String, out: &mut Vec<Seg>, bracket: bool| {
        if word.is_empty() {
            return;
        }
        out.push(match word.parse::<usize>() {
            Ok(i) if bracket => Seg::Index(i),
            _ => Seg::Key(word.clone()),
        });
        word.clear();
    };
    for c in text.chars() {
        match c {
            '[' if !in_bracket => {
                flush(&mut word, &mut out, false);
                in_bracket = true;
            }
            ']' if in_bracket => {
                flush(&mut word, &mut out, true);
                in_bracket = false;
            }
            '.' if !in_bracket => flush(&mut word, &mut out, false),
            c => word.push(c),
        }
    }
    flush(&mut word, &mut out, false);
    out
}

/// `file: PATH` as a whole manifest entry: the path and where it was written.
fn file_reference(node: &Spanned<Node>) -> Option<(&str, Pos)> {
    match &node.value {
        Node::Map(entries) if entries.len() == 1 && entries[0].0.value == "file" => {
            match &entries[0].1.value {
                Node::Str(path) => Some((path.as_str(), pos(&entries[0].1))),
                _ => None,
            }
        }
        _ => None,
    }
}

fn serde_error(file: &str, e: serde_saphyr::Error, path: &str) -> SimError {
    let (line, column) = e
        .location()
        .map_or((0, 0), |l| (l.line() as u32, l.column() as u32));
    // serde's messages carry the field (`unknown field `x`, expected one of ...`); keep the first line.
    let message = e.to_string();
    let first = message.lines().next().unwrap_or_default().to_string();
    let named = first.split('`').nth(1).filter(|_| first.contains("field"));
    // Where the document stopped fitting, without the `value` of the position wrappers; an unknown
    // field is the path's last key already.
    let path = path
        .split('.')
        .filter(|seg| !seg.is_empty() && *seg != "value")
        .collect::<Vec<_>>()
        .join(".");
    let field = match named {
        Some(f) if path.is_empty() => f.to_string(),
        Some(f) if path == f || path.ends_with(&format!(".{f}")) => path,
        Some(f) => format!("{path}.{f}"),
        None => path,
    };
    SimError::Scenario {
        file: file.to_string(),
        line,
        column,
        field,
        message: first,
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Io {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Scenario::parse_in(&path.display().to_string(), &text, path.parent())
    }

    /// A scenario from text; `file:` manifests are refused (there is no directory to read them from).
    pub fn parse(file: &str, text: &str) -> Result<Scenario, SimError> {
        Scenario::parse_in(file, text, None)
    }

    fn parse_in(file: &str, text: &str, dir: Option<&Path>) -> Result<Scenario, SimError> {
        // The path to where the document stopped fitting the schema names the field in the error.
        let mut path = String::new();
        let raw: RawScenario = serde_saphyr::with_deserializer_from_str(text, |de| {
            serde_path_to_error::deserialize(de).map_err(|e| {
                path = e.path().to_string();
                e.into_inner()
            })
        })
        .map_err(|e| serde_error(file, e, &path))?;
        let l = Loader {
            file,
            dir,
            included: false,
            notes: Default::default(),
        };
        let duration = l.duration(&raw.duration, "duration")?;
        if duration.is_zero() {
            return Err(l.err(
                pos(&raw.duration),
                "duration",
                "a scenario must last longer than 0s",
            ));
        }
        let tick = match &raw.tick {
            Some(t) => l.duration(t, "tick")?,
            None => Duration::from_millis(100),
        };
        if tick.is_zero() || tick > Duration::from_secs(1) {
            let at = raw.tick.as_ref().map_or(pos(&raw.duration), pos);
            return Err(l.err(at, "tick", "tick must be between 1ms and 1s"));
        }
        let cloud = CloudSpec {
            region: raw
                .cloud
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".into()),
            zones: raw
                .cloud
                .zones
                .as_ref()
                .map(|z| z.value.clone())
                .unwrap_or_else(|| {
                    vec![
                        "us-east-1a".into(),
                        "us-east-1b".into(),
                        "us-east-1c".into(),
                    ]
                }),
            launch_latency: match &raw.cloud.launch_latency {
                Some(s) => l.range(s, "cloud.launch_latency")?,
                None => (Duration::from_secs(3), Duration::from_secs(12)),
            },
            boot_to_ready: match &raw.cloud.boot_to_ready {
                Some(s) => l.range(s, "cloud.boot_to_ready")?,
                None => (Duration::from_secs(40), Duration::from_secs(70)),
            },
            api_latency: match &raw.cloud.api_latency {
                Some(s) => l.range(s, "cloud.api_latency")?,
                None => (Duration::from_millis(30), Duration::from_millis(80)),
            },
            foreign_instances: raw.cloud.foreign_instances.unwrap_or(3),
            spot_depth: match &raw.cloud.spot_depth {
                Some(s) => l.count_range(s, "cloud.spot_depth")?,
                None => (20, 200),
            },
            on_demand_vcpu_quota: raw.cloud.on_demand_vcpu_quota.unwrap_or(20_000),
            spot_vcpu_quota: raw.cloud.spot_vcpu_quota.unwrap_or(20_000),
            visibility_lag: match &raw.cloud.visibility_lag {
                Some(s) => l.range(s, "cloud.visibility_lag")?,
                None => (Duration::ZERO, Duration::from_secs(3)),
            },
            interruption_queue: raw.cloud.interruption_queue.unwrap_or(true),
            subnets: Vec::new(),
            security_groups: raw
                .cloud
                .security_groups
                .iter()
                .map(|g| fakecloud::config::SecurityGroupSpec {
                    id: g.id.clone(),
                    name: g.name.clone(),
                    tags: g.tags.clone(),
                })
                .collect(),
            images: Vec::new(),
            offerings: Vec::new(),
            existing_instances: Vec::new(),
            capacity_reservations: Vec::new(),
        };
        if let Some(z) = raw.cloud.zones.as_ref().filter(|z| z.value.is_empty()) {
            return Err(l.err(pos(z), "cloud.zones", "at least one zone is needed"));
        }
        let mut cloud = cloud;
        l.declared_cloud(&raw.cloud, &mut cloud)?;
        let api_latency = match &raw.cluster.api_latency {
            Some(s) => l.duration(s, "cluster.api_latency")?,
            None => Duration::from_millis(5),
        };
        let scheduler_interval = match &raw.cluster.scheduler_interval {
            Some(s) => l.duration(s, "cluster.scheduler_interval")?,
            None => Duration::from_millis(500),
        };
        let controller_replicas = match &raw.cluster.controller_replicas {
            Some(r) if !(1..=3).contains(&r.value) => {
                return Err(l.err(
                    pos(r),
                    "cluster.controller_replicas",
                    format!("{} replicas: between 1 and 3", r.value),
                ));
            }
            Some(r) => r.value,
            None => 1,
        };
        let kubernetes_version = match &raw.cluster.kubernetes_version {
            Some(v) if !fakecloud::images::KUBERNETES_VERSIONS.contains(&v.value.as_str()) => {
                return Err(l.err(
                    pos(v),
                    "cluster.kubernetes_version",
                    format!(
                        "`{}`: one of {} (the versions EKS publishes node images for)",
                        v.value,
                        fakecloud::images::KUBERNETES_VERSIONS.join(", ")
                    ),
                ));
            }
            Some(v) => v.value.clone(),
            None => fakekube::store::DEFAULT_KUBERNETES_VERSION.to_string(),
        };
        let mut manifests = Vec::new();
        for (i, m) in raw.manifests.iter().enumerate() {
            manifests.extend(l.manifests(m, &format!("manifests[{i}]"))?);
        }
        let mut known_workloads: Vec<(String, String, String)> =
            manifests.iter().filter_map(scalable).collect();
        let mut timeline = Vec::new();
        for (i, ev) in raw.timeline.iter().enumerate() {
            let field = format!("timeline[{i}]");
            let at = l.duration(&ev.value.at, &format!("{field}.at"))?;
            let e = &ev.value;
            let given = [
                e.scale.is_some(),
                e.apply.is_some(),
                e.spot_interruption.is_some(),
                e.capacity_shortage.is_some(),
                e.kms_key_disabled.is_some(),
                e.api_throttle.is_some(),
                e.api_outage.is_some(),
                e.vcpu_quota.is_some(),
                e.ami_release.is_some(),
                e.kube_outage.is_some(),
                e.watch_disconnect.is_some(),
                e.queue_message.is_some(),
                e.delete.is_some(),
                e.delete_nodes.is_some(),
                e.controller_restart.is_some(),
                e.controller_down.is_some(),
                e.settings.is_some(),
                e.delete_pods.is_some(),
                e.drain.is_some(),
                e.node_fault.is_some(),
                e.capacity_reservation.is_some(),
                e.cancel_capacity_reservation.is_some(),
                e.reclaim_capacity_reservation.is_some(),
            ]
            .iter()
            .filter(|b| **b)
            .count();
            if given != 1 {
                return Err(l.err(
                    pos(ev),
                    &field,
                    "each timeline entry needs exactly one action: scale, apply, spot_interruption, capacity_shortage, kms_key_disabled, api_throttle, api_outage, vcpu_quota, ami_release, kube_outage, watch_disconnect, queue_message, delete, delete_nodes, controller_restart, controller_down, settings, delete_pods, drain, node_fault, capacity_reservation, cancel_capacity_reservation or reclaim_capacity_reservation",
                ));
            }
            let action = if let Some(s) = &e.scale {
                let targets: Vec<(&str, &Spanned<String>)> = [
                    ("Deployment", &s.deployment),
                    ("StatefulSet", &s.statefulset),
                    ("ReplicaSet", &s.replicaset),
                ]
                .into_iter()
                .filter_map(|(k, t)| t.as_ref().map(|t| (k, t)))
                .collect();
                let [(kind, target)] = targets[..] else {
                    return Err(l.err(
                        pos(ev),
                        &format!("{field}.scale"),
                        "name exactly one of `deployment`, `statefulset` or `replicaset` (namespace/name)",
                    ));
                };
                let (ns, name) = target
                    .value
                    .split_once('/')
                    .unwrap_or(("default", &target.value));
                if !known_workloads
                    .iter()
                    .any(|(k, n, d)| k == kind && n == ns && d == name)
                {
                    return Err(l.err(
                        pos(target),
                        &format!("{field}.scale.{}", kind.to_lowercase()),
                        format!("no {kind} `{ns}/{name}` in the scenario's manifests (write namespace/name)"),
                    ));
                }
                Action::Scale {
                    kind: kind.to_string(),
                    namespace: ns.to_string(),
                    name: name.to_string(),
                    replicas: s.replicas,
                }
            } else if let Some(list) = &e.apply {
                let mut out = Vec::new();
                for (j, m) in list.iter().enumerate() {
                    for man in l.manifests(m, &format!("{field}.apply[{j}]"))? {
                        known_workloads.extend(scalable(&man));
                        out.push(man);
                    }
                }
                Action::Apply(out)
            } else if let Some(s) = &e.spot_interruption {
                if !(0.0..=1.0).contains(&s.fraction) {
                    return Err(l.err(
                        pos(ev),
                        &format!("{field}.spot_interruption.fraction"),
                        "fraction must be between 0 and 1",
                    ));
                }
                Action::SpotInterruption {
                    zone: s.zone.clone(),
                    fraction: s.fraction,
                }
            } else if let Some(s) = &e.capacity_shortage {
                let capacity_type = match &s.capacity_type {
                    Some(c) => Some(
                        l.capacity_type(c, &format!("{field}.capacity_shortage.capacity_type"))?,
                    ),
                    None => None,
                };
                Action::CapacityShortage {
                    instance_types: s.instance_types.clone(),
                    zones: s.zones.clone(),
                    capacity_type,
                    for_: l.duration(&s.for_, &format!("{field}.capacity_shortage.for"))?,
                }
            } else if let Some(s) = &e.kms_key_disabled {
                Action::KmsKeyDisabled {
                    key: s.key.clone(),
                    for_: l.duration(&s.for_, &format!("{field}.kms_key_disabled.for"))?,
                }
            } else if let Some(s) = &e.api_throttle {
                if !(0.0..=1.0).contains(&s.rate) {
                    return Err(l.err(
                        pos(ev),
                        &format!("{field}.api_throttle.rate"),
                        "rate must be between 0 and 1",
                    ));
                }
                Action::ApiThrottle {
                    rate: s.rate,
                    for_: l.duration(&s.for_, &format!("{field}.api_throttle.for"))?,
                }
            } else if let Some(s) = &e.api_outage {
                Action::ApiOutage {
                    for_: l.duration(&s.for_, &format!("{field}.api_outage.for"))?,
                }
            } else if let Some(s) = &e.vcpu_quota {
                Action::VcpuQuota {
                    capacity_type: l.capacity_type(
                        &s.capacity_type,
                        &format!("{field}.vcpu_quota.capacity_type"),
                    )?,
                    vcpus: s.vcpus,
                }
            } else if let Some(s) = &e.ami_release {
                if s.arch != "x86_64" && s.arch != "arm64" {
                    return Err(l.err(
                        pos(ev),
                        &format!("{field}.ami_release.arch"),
                        "arch is x86_64 or arm64",
                    ));
                }
                Action::AmiRelease {
                    arch: s.arch.clone(),
                    version: s.version.clone(),
                    deprecate_previous: s.deprecate_previous,
                }
            } else if let Some(s) = &e.kube_outage {
                Action::KubeOutage {
                    for_: l.duration(&s.for_, &format!("{field}.kube_outage.for"))?,
                }
            } else if e.watch_disconnect.is_some() {
                Action::WatchDisconnect
            } else if let Some(q) = &e.queue_message {
                let kind = match (q.kind.value.as_str(), &q.body) {
                    ("rebalance_recommendation", None) => QueueMessageKind::RebalanceRecommendation,
                    ("scheduled_change", None) => QueueMessageKind::ScheduledChange,
                    ("raw", Some(body)) => QueueMessageKind::Raw(body.clone()),
                    ("raw", None) => {
                        return Err(l.err(
                            pos(&q.kind),
                            &format!("{field}.queue_message.body"),
                            "a raw message needs `body`",
                        ));
                    }
                    (_, Some(_)) => {
                        return Err(l.err(
                            pos(&q.kind),
                            &format!("{field}.queue_message.body"),
                            "only `kind: raw` takes a body",
                        ));
                    }
                    (other, None) => {
                        return Err(l.err(
                            pos(&q.kind),
                            &format!("{field}.queue_message.kind"),
                            format!("unknown message kind `{other}`; use rebalance_recommendation, scheduled_change or raw"),
                        ));
                    }
                };
                Action::QueueMessage {
                    kind,
                    zone: q.zone.clone(),
                }
            } else if let Some(d) = &e.delete {
                if !DELETABLE.contains(&d.kind.value.as_str()) {
                    return Err(l.err(
                        pos(&d.kind),
                        &format!("{field}.delete.kind"),
                        format!(
                            "cannot delete kind `{}`; use one of {}",
                            d.kind.value,
                            DELETABLE.join(", ")
                        ),
                    ));
                }
                let namespaced = fakekube::store::is_namespaced(&d.kind.value);
                Action::Delete {
                    kind: d.kind.value.clone(),
                    namespace: if namespaced {
                        d.namespace.clone().unwrap_or_else(|| "default".into())
                    } else {
                        String::new()
                    },
                    name: d.name.clone(),
                }
            } else if let Some(d) = &e.delete_nodes {
                let newest_first = match &d.pick {
                    Some(p) => l.pick(p, &format!("{field}.delete_nodes.pick"))?,
                    None => false,
                };
                if d.count == 0 {
                    return Err(l.err(
                        pos(ev),
                        &format!("{field}.delete_nodes.count"),
                        "count must be at least 1",
                    ));
                }
                Action::DeleteNodes {
                    count: d.count,
                    nodepool: d.nodepool.clone(),
                    newest_first,
                }
            } else if let Some(r) = &e.controller_restart {
                let after_create_fleet = match &r.after {
                    None => false,
                    Some(a) if a.value == "create_fleet" => true,
                    Some(a) => {
                        return Err(l.err(
                            pos(a),
                            &format!("{field}.controller_restart.after"),
                            format!("unknown crash point `{}`; the only one is create_fleet (or leave `after` out to restart at once)", a.value),
                        ));
                    }
                };
                let down_for = match &r.down_for {
                    Some(d) => l.duration(d, &format!("{field}.controller_restart.down_for"))?,
                    None => Duration::from_secs(10),
                };
                Action::ControllerRestart {
                    after_create_fleet,
                    down_for,
                }
            } else if let Some(d) = &e.controller_down {
                Action::ControllerDown {
                    for_: l.duration(&d.for_, &format!("{field}.controller_down.for"))?,
                }
            } else if let Some(n) = &e.settings {
                Action::Settings(l.settings(n, &format!("{field}.settings"))?)
            } else if let Some(d) = &e.delete_pods {
                Action::DeletePods(PodPick {
                    selector: l.selector(&d.selector, &format!("{field}.delete_pods.selector"))?,
                    namespace: d.namespace.clone(),
                    zone: d.zone.clone(),
                    count: d.count,
                })
            } else if let Some(d) = &e.drain {
                Action::Drain {
                    node: d.node.clone(),
                    count: d.count,
                    nodepool: d.nodepool.clone(),
                    newest_first: match &d.pick {
                        Some(p) => l.pick(p, &format!("{field}.drain.pick"))?,
                        None => false,
                    },
                }
            } else if let Some(f) = &e.node_fault {
                let Some(fault) = fakekube::NodeFault::parse(&f.fault.value) else {
                    return Err(l.err(
                        pos(&f.fault),
                        &format!("{field}.node_fault.fault"),
                        format!(
                            "unknown fault `{}`; use one of {}",
                            f.fault.value,
                            fakekube::NodeFault::NAMES.join(", ")
                        ),
                    ));
                };
                if f.count == 0 {
                    return Err(l.err(
                        pos(ev),
                        &format!("{field}.node_fault.count"),
                        "count must be at least 1",
                    ));
                }
                Action::NodeFault {
                    fault,
                    node: f.node.clone(),
                    count: f.count,
                    nodepool: f.nodepool.clone(),
                    newest_first: match &f.pick {
                        Some(p) => l.pick(p, &format!("{field}.node_fault.pick"))?,
                        None => false,
                    },
                    for_: match &f.for_ {
                        Some(d) => Some(l.duration(d, &format!("{field}.node_fault.for"))?),
                        None => None,
                    },
                }
            } else if let Some(r) = &e.capacity_reservation {
                Action::CreateReservation(l.reservation(
                    r,
                    &format!("{field}.capacity_reservation"),
                    &cloud,
                )?)
            } else if let Some(c) = &e.cancel_capacity_reservation {
                Action::CancelReservation(c.id.clone())
            } else if let Some(c) = &e.reclaim_capacity_reservation {
                if c.count.value == 0 {
                    return Err(l.err(
                        pos(&c.count),
                        &format!("{field}.reclaim_capacity_reservation.count"),
                        "count must be at least 1",
                    ));
                }
                Action::ReclaimReservation {
                    id: c.id.clone(),
                    count: c.count.value,
                }
            } else {
                unreachable!("exactly one action was counted above")
            };
            if at > duration {
                return Err(l.err(
                    pos(&ev.value.at),
                    &format!("{field}.at"),
                    format!(
                        "{} is after the end of the scenario ({})",
                        ev.value.at.value, raw.duration.value
                    ),
                ));
            }
            timeline.push(Event { at, action });
        }
        timeline.sort_by_key(|e| e.at);
        let expect = l.expectations(&raw.expect)?;
        let settings = match &raw.settings {
            Some(n) => l.settings(n, "settings")?,
            None => Vec::new(),
        };
        Ok(Scenario {
            name: raw.name,
            description: raw.description,
            seed: raw.seed.unwrap_or(0),
            duration,
            tick,
            cloud,
            api_latency,
            scheduler_interval,
            controller_replicas,
            kubernetes_version,
            wire: raw.cluster.wire.unwrap_or(false),
            manifests,
            timeline,
            expect,
            notes: l.notes.take(),
            settings,
        })
    }
}
