//! Simulated kubelets: register a Node for each running instance after its boot delay, report Ready,
//! start bound pods, clear startup taints, and go NotReady when the instance dies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dovetail::journal::Journal;
use jiff::Timestamp;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;
use serde_json::{Value, json};

use crate::api::FakeKube;
use crate::node_faults::{ActiveFault, NodeFault};

/// One machine as the kubelet running on it sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Machine {
    pub instance_id: String,
    pub node_name: String,
    pub zone: String,
    pub region: String,
    pub instance_type: String,
    pub capacity_type: String,
    pub arch: String,
    pub running: bool,
    pub capacity: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
    /// EC2 tags; `karpenter.sh/nodeclaim` links the node to its claim (as user data would).
    pub tags: BTreeMap<String, String>,
    /// EBS volumes pods may attach, as the EBS CSI node plugin reports it in the node's CSINode
    /// (None: no plugin on the node).
    pub ebs_volume_limit: Option<u32>,
}

/// A node's addresses as EC2's kubelet reports them: the private IP its `ip-a-b-c-d` name spells, and the
/// name as DNS name and hostname.
fn node_addresses(node_name: &str) -> Value {
    let ip = node_name
        .strip_prefix("ip-")
        .and_then(|rest| rest.split('.').next())
        .map(|dashed| dashed.replace('-', "."))
        .filter(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok());
    let mut addresses = Vec::new();
    if let Some(ip) = ip {
        addresses.push(json!({"type": "InternalIP", "address": ip}));
    }
    addresses.push(json!({"type": "InternalDNS", "address": node_name}));
    addresses.push(json!({"type": "Hostname", "address": node_name}));
    Value::Array(addresses)
}

/// The Node a machine's kubelet registers: the well-known labels, its NodeClaim's taints and startup taints
/// with Karpenter's `unregistered` taint (or a node group's labels and taints from its node-template tags),
/// capacity and allocatable, Ready, addresses and node info. `claim` is the NodeClaim its
/// `karpenter.sh/nodeclaim` tag names, if it exists.
pub fn node_object(m: &Machine, claim: Option<&Value>, kubernetes_version: &str) -> Value {
    let claim_name = m.tags.get("karpenter.sh/nodeclaim");
    let mut labels = json!({
        "node.kubernetes.io/instance-type": m.instance_type,
        "topology.kubernetes.io/zone": m.zone,
        "topology.kubernetes.io/region": m.region,
        "karpenter.sh/capacity-type": m.capacity_type,
        "kubernetes.io/arch": m.arch,
        "kubernetes.io/os": "linux",
        "kubernetes.io/hostname": m.node_name,
    });
    if let Some(pool) = m.tags.get("karpenter.sh/nodepool") {
        labels["karpenter.sh/nodepool"] = json!(pool);
    }
    // Karpenter's user data registers the node with its claim's taints, startup taints, and the
    // unregistered taint that the controller removes once it has synced the node. A node group's
    // instance (no claim) registers with the labels and taints its group configures, which the
    // Cluster Autoscaler's node-template tags mirror.
    let mut taints = Vec::new();
    if claim_name.is_some() {
        taints.push(json!({"key": "karpenter.sh/unregistered", "effect": "NoExecute"}));
    }
    for (k, v) in &m.tags {
        if let Some(label) = k.strip_prefix(NODE_TEMPLATE_LABEL) {
            labels[label] = json!(v);
        } else if let Some(key) = k.strip_prefix(NODE_TEMPLATE_TAINT) {
            let (value, effect) = v.rsplit_once(':').unwrap_or(("", v.as_str()));
            taints.push(json!({"key": key, "value": value, "effect": effect}));
        }
    }
    if let Some(c) = claim {
        for field in ["taints", "startupTaints"] {
            taints.extend(c["spec"][field].as_array().into_iter().flatten().cloned());
        }
    }
    // The EBS node plugin labels the nodes it runs on with its topology key.
    if m.ebs_volume_limit.is_some() {
        labels[EBS_ZONE_LABEL] = json!(m.zone);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": m.node_name, "labels": labels},
        "spec": {"providerID": m.provider_id(), "taints": taints},
        "status": {
            "capacity": m.capacity,
            "allocatable": m.allocatable,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "addresses": node_addresses(&m.node_name),
            // What `kubectl get nodes -o wide` prints; the image's OS and kernel are not simulated.
            "nodeInfo": {
                "kubeletVersion": format!("v{kubernetes_version}.0-eks"),
                "containerRuntimeVersion": "containerd://1.7.27",
                "architecture": m.arch,
                "operatingSystem": "linux",
            },
        },
    })
}

impl Machine {
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.zone, self.instance_id)
    }
}

pub struct Kubelets {
    rng: ChaCha8Rng,
    boot_to_ready: (Duration, Duration),
    pod_start: Duration,
    startup_taint_delay: Duration,
    journal: Arc<dyn Journal>,
    /// instance id -> when its node registers.
    booting: BTreeMap<String, Timestamp>,
    /// node name -> when it registered.
    registered: BTreeMap<String, Timestamp>,
    /// pod key -> when the kubelet first saw it bound.
    starting: BTreeMap<String, Timestamp>,
    /// pod key -> when it started running (for pods with a run duration).
    running: BTreeMap<String, Timestamp>,
    /// node name -> when it became unreachable.
    lost: BTreeMap<String, Timestamp>,
    /// Nodes whose startup taints are cleared (or that had none).
    startup_done: std::collections::BTreeSet<String>,
    /// Instances that stopped running and have no Node.
    finished: std::collections::BTreeSet<String>,
    /// The store's resourceVersion after the last pod scan.
    pods_rv: Option<u64>,
    /// node name -> the fault in force on it (a timeline's `node_fault`).
    faults: BTreeMap<String, ActiveFault>,
}

/// EC2 tag prefixes by which a node group states its nodes' labels and taints (`value:Effect`); the
/// Cluster Autoscaler reads the same tags to build node templates.
pub const NODE_TEMPLATE_LABEL: &str = "k8s.io/cluster-autoscaler/node-template/label/";
pub const NODE_TEMPLATE_TAINT: &str = "k8s.io/cluster-autoscaler/node-template/taint/";

/// Pods carrying this annotation exit successfully after the duration (`90s`, `5m`, `1h`): a Job's work.
pub const RUN_DURATION_ANNOTATION: &str = "sim.dovetail.dev/run-duration";

/// How long pods stay on an unreachable node before taint-based eviction removes them (the default
/// `tolerationSeconds` Kubernetes adds for `node.kubernetes.io/unreachable`).
pub const UNREACHABLE_EVICTION: Duration = Duration::from_secs(300);

/// The EBS CSI driver's name and the zone label its node plugin puts on nodes (volumes' node affinity
/// may use either it or `topology.kubernetes.io/zone`).
pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";
pub const EBS_ZONE_LABEL: &str = "topology.ebs.csi.aws.com/zone";

/// Labels every registering node carries, left out of the trace line.
const STANDARD_LABELS: [&str; 9] = [
    "node.kubernetes.io/instance-type",
    "topology.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "karpenter.sh/capacity-type",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "kubernetes.io/hostname",
    "karpenter.sh/nodepool",
    EBS_ZONE_LABEL,
];

fn labels_of(labels: &Value) -> Vec<String> {
    labels
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| !STANDARD_LABELS.contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect()
}

/// What a node registered with, for the trace: allocatable, then taints and unusual labels when any.
fn registered_with(
    allocatable: &BTreeMap<String, String>,
    labels: &[String],
    taints: &[Value],
) -> String {
    let alloc: Vec<String> = allocatable
        .iter()
        .filter(|(k, _)| !k.starts_with("hugepages") && k.as_str() != "ephemeral-storage")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let mut out = format!(" allocatable {}", alloc.join(" "));
    if !taints.is_empty() {
        let t: Vec<String> = taints
            .iter()
            .map(|t| {
                let key = t["key"].as_str().unwrap_or_default();
                let effect = t["effect"].as_str().unwrap_or_default();
                match t["value"].as_str() {
                    Some(v) if !v.is_empty() => format!("{key}={v}:{effect}"),
                    _ => format!("{key}:{effect}"),
                }
            })
            .collect();
        out.push_str(&format!("; taints {}", t.join(",")));
    }
    if !labels.is_empty() {
        out.push_str(&format!("; labels {}", labels.join(",")));
    }
    out
}

fn run_duration(pod: &Value) -> Option<Duration> {
    let s = pod["metadata"]["annotations"][RUN_DURATION_ANNOTATION].as_str()?;
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    }))
}

fn is_ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

fn add(ts: Timestamp, d: Duration) -> Timestamp {
    ts.checked_add(d).unwrap_or(ts)
}

impl Kubelets {
    pub fn new(
        rng: ChaCha8Rng,
        boot_to_ready: (Duration, Duration),
        journal: Arc<dyn Journal>,
    ) -> Self {
        Kubelets {
            rng,
            boot_to_ready,
            pod_start: Duration::from_secs(2),
            startup_taint_delay: Duration::from_secs(5),
            journal,
            booting: BTreeMap::new(),
            registered: BTreeMap::new(),
            starting: BTreeMap::new(),
            running: BTreeMap::new(),
            lost: BTreeMap::new(),
            startup_done: std::collections::BTreeSet::new(),
            finished: std::collections::BTreeSet::new(),
            pods_rv: None,
            faults: BTreeMap::new(),
        }
    }

    /// Inject a fault on a node whose instance keeps running, healing after `lasting` if given.
    pub fn fault(
        &mut self,
        node: &str,
        fault: NodeFault,
        now: Timestamp,
        lasting: Option<Duration>,
    ) {
        self.faults.insert(
            node.to_string(),
            ActiveFault {
                fault,
                since: now,
                until: lasting.map(|d| add(now, d)),
                shown: false,
            },
        );
    }

    /// Faults: shown on the Node when due, healed when over, pods of a silent kubelet evicted in time.
    fn step_faults(&mut self, kube: &FakeKube, machines: &[Machine], now: Timestamp) {
        let running: std::collections::BTreeSet<&str> = machines
            .iter()
            .filter(|m| m.running)
            .map(|m| m.node_name.as_str())
            .collect();
        let names: Vec<String> = self.faults.keys().cloned().collect();
        for node in names {
            let Some(f) = self.faults.get(&node).cloned() else {
                continue;
            };
            // A fault ends with its machine: a dead instance is the kubelet model's own case.
            if !running.contains(node.as_str()) || kube.store().get("Node", "", &node).is_none() {
                self.faults.remove(&node);
                continue;
            }
            if f.until.is_some_and(|u| now >= u) {
                if f.shown {
                    f.fault.write(kube, &node, false, now);
                }
                self.faults.remove(&node);
                self.lost.remove(&node);
                self.journal.record(
                    "cluster",
                    format!("node {node} recovered ({} over)", f.fault.name()),
                );
                continue;
            }
            if !f.shown && now >= add(f.since, f.fault.shows_after()) {
                f.fault.write(kube, &node, true, now);
                if let Some(active) = self.faults.get_mut(&node) {
                    active.shown = true;
                }
                if f.fault.kubelet_down() {
                    self.lost.entry(node.clone()).or_insert(now);
                }
                let (what, taint) = match f.fault {
                    NodeFault::KubeletStopped => (
                        "Ready=Unknown: kubelet stopped posting status".to_string(),
                        f.fault.taint(),
                    ),
                    NodeFault::KubeletNotReady => (
                        "Ready=False: kubelet reports NotReady".to_string(),
                        f.fault.taint(),
                    ),
                    NodeFault::Agent(c) => (format!("{c}=False: node monitoring agent"), None),
                };
                let taint = taint
                    .map(|t| format!("; tainted {t}:NoSchedule,NoExecute"))
                    .unwrap_or_default();
                self.journal
                    .record("cluster", format!("node {node} {what}{taint}"));
            }
            if f.fault.kubelet_down() {
                self.evict_lost_pods(kube, &node, now);
            }
        }
    }

    fn boot_delay(&mut self) -> Duration {
        let (lo, hi) = self.boot_to_ready;
        if hi <= lo {
            return lo;
        }
        lo + Duration::from_millis(self.rng.next_u64() % ((hi - lo).as_millis() as u64 + 1))
    }

    pub fn step(&mut self, kube: &FakeKube, machines: &[Machine], now: Timestamp) {
        if !self.faults.is_empty() {
            self.step_faults(kube, machines, now);
        }
        for m in machines {
            self.step_machine(kube, m, now);
        }
        // Pods start and finish on timers set when the kubelet sees them; with nothing written since the
        // last look and no timer running, there is nothing to scan for.
        if self.pods_rv != Some(kube.store().resource_version()) || !self.starting.is_empty() {
            self.start_pods(kube, now);
        }
        // Again: pods started just now must be seen running in this same step.
        if self.pods_rv != Some(kube.store().resource_version()) || !self.running.is_empty() {
            self.finish_pods(kube, now);
        }
        self.pods_rv = Some(kube.store().resource_version());
    }

    fn step_machine(&mut self, kube: &FakeKube, m: &Machine, now: Timestamp) {
        // A running node past its startup taints has nothing left to do here, and a dead machine whose
        // Node is gone never comes back: neither needs a look at the store.
        if (m.running && self.startup_done.contains(&m.node_name))
            || self.finished.contains(&m.instance_id)
        {
            return;
        }
        // Copy the Node only when there is something to do with it: most steps of a running node have none.
        let (exists, ready) = match kube.store().get("Node", "", &m.node_name) {
            Some(n) => (true, is_ready(n)),
            None => (false, false),
        };
        let wanted = match (m.running, exists) {
            (true, true) => !self.startup_done.contains(&m.node_name),
            (false, true) => ready || self.lost.contains_key(&m.node_name),
            _ => false,
        };
        let node = if wanted {
            kube.store().get("Node", "", &m.node_name).cloned()
        } else {
            None
        };
        match (m.running, node) {
            (_, None) if exists => {}
            (true, None) => {
                if self.registered.contains_key(&m.node_name) {
                    return; // its Node was deleted; a real kubelet would re-register, ours stays down
                }
                let delay = self.boot_delay();
                let at = *self
                    .booting
                    .entry(m.instance_id.clone())
                    .or_insert_with(|| add(now, delay));
                if now >= at {
                    self.register(kube, m, now);
                }
            }
            (true, Some(node)) => self.clear_startup_taints(kube, m, &node, now),
            (false, Some(node)) => {
                if is_ready(&node) {
                    // The node lifecycle controller's view of a dead kubelet: Unknown, and the unreachable taint.
                    NodeFault::KubeletStopped.write(kube, &m.node_name, true, now);
                    self.lost.entry(m.node_name.clone()).or_insert(now);
                    self.journal.record(
                        "cluster",
                        format!(
                            "node {} not-ready (instance {} gone)",
                            m.node_name, m.instance_id
                        ),
                    );
                }
                self.evict_lost_pods(kube, &m.node_name, now);
            }
            (false, None) => {
                if !self.lost.contains_key(&m.node_name) {
                    self.finished.insert(m.instance_id.clone());
                }
            }
        }
    }

    fn register(&mut self, kube: &FakeKube, m: &Machine, now: Timestamp) {
        let claim_name = m.tags.get("karpenter.sh/nodeclaim").cloned();
        let claim = claim_name
            .as_ref()
            .and_then(|n| kube.store().get("NodeClaim", "", n).cloned());
        let version = kube.store().kubernetes_version().to_string();
        let mut node = node_object(m, claim.as_ref(), &version);
        // The kubelet stamps its conditions: node repair measures how long a condition has held.
        for c in node["status"]["conditions"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            c["lastHeartbeatTime"] = json!(now.to_string());
            c["lastTransitionTime"] = json!(now.to_string());
        }
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let created_labels = node["metadata"]["labels"].clone();
        let created = kube.store().create("Node", node, now);
        if let (Ok(created), Some(count)) = (&created, m.ebs_volume_limit) {
            // The kubelet makes the CSINode (owned by the Node); the EBS plugin registers its driver in it.
            let csinode = json!({
                "apiVersion": "storage.k8s.io/v1",
                "kind": "CSINode",
                "metadata": {"name": m.node_name, "ownerReferences": [{
                    "apiVersion": "v1", "kind": "Node", "name": m.node_name,
                    "uid": created["metadata"]["uid"],
                }]},
                "spec": {"drivers": [{
                    "name": EBS_CSI_DRIVER,
                    "nodeID": m.instance_id,
                    "topologyKeys": [EBS_ZONE_LABEL],
                    "allocatable": {"count": count},
                }]},
            });
            let _ = kube.store().create("CSINode", csinode, now);
        }
        if created.is_ok() {
            self.booting.remove(&m.instance_id);
            self.registered.insert(m.node_name.clone(), now);
            let owner = claim_name
                .map(|n| format!(" (nodeclaim/{n})"))
                .unwrap_or_default();
            self.journal.record(
                "cluster",
                format!(
                    "node {} ready {} {}{owner}{}",
                    m.node_name,
                    m.instance_type,
                    m.zone,
                    registered_with(&m.allocatable, &labels_of(&created_labels), &taints)
                ),
            );
        }
    }

    fn clear_startup_taints(&mut self, kube: &FakeKube, m: &Machine, node: &Value, now: Timestamp) {
        let Some(since) = self.registered.get(&m.node_name) else {
            return;
        };
        if now < add(*since, self.startup_taint_delay) {
            return;
        }
        let startup: Vec<Value> = m
            .tags
            .get("karpenter.sh/nodeclaim")
            .and_then(|n| {
                kube.store().get("NodeClaim", "", n).map(|c| {
                    c["spec"]["startupTaints"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                })
            })
            .unwrap_or_default();
        // Done once the taints are off (or there were none): nothing here changes afterwards.
        self.startup_done.insert(m.node_name.clone());
        if startup.is_empty() {
            return;
        }
        let taints: Vec<Value> = node["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| !startup.iter().any(|s| s["key"] == t["key"]))
            .cloned()
            .collect();
        if taints.len() != node["spec"]["taints"].as_array().map_or(0, Vec::len) {
            let _ = kube.store().patch(
                "Node",
                "",
                &m.node_name,
                &json!({"spec": {"taints": taints}}),
                false,
            );
        }
    }

    /// Whether the node's kubelet starts no pods: its machine is gone or a fault keeps it down.
    fn kubelet_down(&self, node: &str) -> bool {
        self.lost.contains_key(node)
            || self
                .faults
                .get(node)
                .is_some_and(|f| f.fault.kubelet_down())
    }

    /// Taint-based eviction: pods on an unreachable node are deleted once their toleration runs out.
    fn evict_lost_pods(&mut self, kube: &FakeKube, node: &str, now: Timestamp) {
        let Some(since) = self.lost.get(node) else {
            return;
        };
        if now < add(*since, UNREACHABLE_EVICTION) {
            return;
        }
        let mut st = kube.store();
        let doomed: Vec<(String, String)> = st
            .iter("Pod")
            .filter(|p| {
                p["spec"]["nodeName"] == node && p["metadata"]["deletionTimestamp"].is_null()
            })
            .filter(|p| {
                !p["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|o| o["kind"] == "DaemonSet"))
            })
            .map(|p| {
                (
                    p["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    p["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        for (ns, name) in &doomed {
            let _ = st.delete("Pod", ns, name, now);
        }
        drop(st);
        let how = match self.faults.get(node).map(|f| f.fault) {
            Some(NodeFault::KubeletNotReady) => "not ready",
            _ => "unreachable",
        };
        if !doomed.is_empty() {
            self.journal.record(
                "cluster",
                format!("node {node} {how} for 5m: {} pods lost", doomed.len()),
            );
        }
    }

    /// Pods with a run duration finish: phase Succeeded.
    fn finish_pods(&mut self, kube: &FakeKube, now: Timestamp) {
        let pods: Vec<Value> = kube
            .store()
            .iter("Pod")
            .filter(|p| p["status"]["phase"] == "Running" && run_duration(p).is_some())
            .cloned()
            .collect();
        for p in pods {
            let Some(d) = run_duration(&p) else { continue };
            let (ns, name) = crate::store::ns_name(&p);
            let key = format!("{ns}/{name}");
            let started = *self.running.entry(key.clone()).or_insert(now);
            if now >= add(started, d) {
                let patch = json!({"status": {"phase": "Succeeded", "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted"}]}});
                let _ = kube.store().patch("Pod", &ns, &name, &patch, true);
                self.running.remove(&key);
            }
        }
    }

    fn start_pods(&mut self, kube: &FakeKube, now: Timestamp) {
        let pods: Vec<Value> = kube
            .store()
            .iter("Pod")
            .filter(|p| {
                !p["spec"]["nodeName"].is_null()
                    && !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Running" | "Succeeded" | "Failed")
                    )
            })
            .cloned()
            .collect();
        // What the pods already running use on each node, read once per pass when a pod is due to start.
        let mut admitted: Option<BTreeMap<String, Admitted>> = None;
        for p in pods {
            if p["spec"]["nodeName"].is_null()
                || matches!(
                    p["status"]["phase"].as_str(),
                    Some("Running" | "Succeeded" | "Failed")
                )
                || !p["metadata"]["deletionTimestamp"].is_null()
                || self.kubelet_down(p["spec"]["nodeName"].as_str().unwrap_or_default())
            {
                continue;
            }
            let (ns, name) = crate::store::ns_name(&p);
            let key = format!("{ns}/{name}");
            let seen = *self.starting.entry(key.clone()).or_insert(now);
            if now >= add(seen, self.pod_start) {
                let node = p["spec"]["nodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let admitted = admitted.get_or_insert_with(|| running_use(kube));
                let on_node = admitted.entry(node.clone()).or_default();
                let patch = match admit(kube, &node, on_node, &p) {
                    Ok(()) => {
                        // Every container started and ready, as `kubectl get pods` counts them.
                        let containers: Vec<Value> = p["spec"]["containers"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| {
                                json!({
                                    "name": c["name"], "image": c["image"], "ready": true,
                                    "started": true, "restartCount": 0,
                                    "state": {"running": {"startedAt": now.to_string()}},
                                })
                            })
                            .collect();
                        json!({"status": {"phase": "Running", "startTime": now.to_string(),
                            "containerStatuses": containers, "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "True"},
                        ]}})
                    }
                    Err((reason, message)) => {
                        self.journal.record(
                            "cluster",
                            format!("kubelet on {node} rejected pod/{key}: {reason}"),
                        );
                        json!({"status": {"phase": "Failed", "reason": reason, "message": message}})
                    }
                };
                let _ = kube.store().patch("Pod", &ns, &name, &patch, true);
                self.starting.remove(&key);
            }
        }
    }
}

/// What the pods a kubelet has admitted hold on its node.
#[derive(Default)]
struct Admitted {
    used: BTreeMap<String, i128>,
    ports: Vec<(String, String, i64)>,
}

/// The running pods' requests and host ports, by node.
fn running_use(kube: &FakeKube) -> BTreeMap<String, Admitted> {
    let mut out: BTreeMap<String, Admitted> = BTreeMap::new();
    for p in kube.store().iter("Pod") {
        let Some(node) = p["spec"]["nodeName"].as_str() else {
            continue;
        };
        if p["status"]["phase"] != "Running" {
            continue;
        }
        let a = out.entry(node.to_string()).or_default();
        for (k, v) in crate::scheduler::requests(p) {
            *a.used.entry(k).or_default() += v;
        }
        a.ports.extend(crate::scheduler::host_ports(p));
    }
    out
}

/// The kubelet's admission: a pod starts only if it fits beside the pods already running (every
/// resource it requests, and its host ports); otherwise it fails as `OutOf<resource>` or `NodePorts`.
fn admit(
    kube: &FakeKube,
    node: &str,
    on_node: &mut Admitted,
    pod: &Value,
) -> Result<(), (String, String)> {
    let allocatable: BTreeMap<String, i128> = kube
        .store()
        .get("Node", "", node)
        .and_then(|n| n["status"]["allocatable"].as_object().cloned())
        .into_iter()
        .flatten()
        .map(|(k, v)| (k, v.as_str().and_then(crate::quantity::milli).unwrap_or(0)))
        .collect();
    let ports = crate::scheduler::host_ports(pod);
    if ports.iter().any(|p| {
        on_node
            .ports
            .iter()
            .any(|u| crate::scheduler::ports_clash(p, u))
    }) {
        return Err((
            "NodePorts".into(),
            "Pod was rejected: node(s) didn't have free ports for the requested pod ports".into(),
        ));
    }
    let wants = crate::scheduler::requests(pod);
    for (res, amount) in &wants {
        let used = on_node.used.get(res).copied().unwrap_or(0);
        let cap = allocatable.get(res).copied().unwrap_or(0);
        if *amount > 0 && used + amount > cap {
            return Err((
                format!("OutOf{res}"),
                format!(
                    "Pod was rejected: Node didn't have enough resource: {res}, requested: {amount}m, used: {used}m, capacity: {cap}m"
                ),
            ));
        }
    }
    for (res, amount) in wants {
        *on_node.used.entry(res).or_default() += amount;
    }
    on_node.ports.extend(ports);
    Ok(())
}
