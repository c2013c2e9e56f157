//! The baseline's picture of the cluster: nodes with what their pods request, pods with what they need,
//! and a simple resource-and-selector fit (the Cluster Autoscaler's simulated scheduler, reduced).

use std::collections::BTreeMap;

use dovetail::resources::{CPU, MEMORY, PODS, Resources, pod_requests};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

/// The taint the Cluster Autoscaler puts on a node it is removing.
pub const TO_BE_DELETED: &str = "ToBeDeletedByClusterAutoscaler";

/// A pod as the baseline reasons about it.
#[derive(Debug, Clone)]
pub struct PodView {
    pub namespace: String,
    pub name: String,
    pub requests: Resources,
    pub node: Option<String>,
    pub daemon: bool,
    /// Being deleted: still holds its resources, no longer pending.
    pub deleting: bool,
    /// `cluster-autoscaler.kubernetes.io/safe-to-evict: "false"` keeps its node.
    pub pinned: bool,
    pub unschedulable: bool,
    /// A CapacityBuffer chunk (a fake pod: never in the API, never evicted).
    pub headroom: bool,
    pub node_selector: BTreeMap<String, String>,
    /// Tolerated taint keys (`None` key: tolerates everything).
    tolerations: Vec<(Option<String>, Option<String>)>,
}

impl PodView {
    pub fn of(v: &Value) -> Option<PodView> {
        if matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let pod: Pod = serde_json::from_value(v.clone()).ok()?;
        let requests = pod_requests(&pod).ok()?;
        let str_at = |p: &Value| p.as_str().unwrap_or_default().to_string();
        Some(PodView {
            namespace: str_at(&v["metadata"]["namespace"]),
            name: str_at(&v["metadata"]["name"]),
            requests,
            node: v["spec"]["nodeName"].as_str().map(str::to_string),
            deleting: !v["metadata"]["deletionTimestamp"].is_null(),
            daemon: v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|o| o["kind"] == "DaemonSet")),
            pinned: v["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"]
                == "false",
            unschedulable: v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "PodScheduled" && c["reason"] == "Unschedulable"),
            headroom: false,
            node_selector: v["spec"]["nodeSelector"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), str_at(v)))
                .collect(),
            tolerations: v["spec"]["tolerations"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (
                        t["key"].as_str().map(str::to_string),
                        t["effect"].as_str().map(str::to_string),
                    )
                })
                .collect(),
        })
    }

    /// Whether the pod's node selector and tolerations admit a node with these labels and taints.
    pub fn admits(&self, labels: &BTreeMap<String, String>, taints: &[(String, String)]) -> bool {
        self.node_selector
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && taints.iter().all(|(key, effect)| {
                effect == "PreferNoSchedule"
                    || self.tolerations.iter().any(|(k, e)| {
                        k.as_ref().is_none_or(|k| k == key)
                            && e.as_ref().is_none_or(|e| e.is_empty() || e == effect)
                    })
            })
    }
}

/// A registered node.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub name: String,
    pub instance_id: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<(String, String)>,
    /// The taints as the API has them, for patching the list.
    pub raw_taints: Vec<Value>,
    pub allocatable: Resources,
    pub used: Resources,
    pub ready: bool,
    pub deleting: bool,
}

impl NodeView {
    pub fn of(v: &Value) -> Option<NodeView> {
        let name = v["metadata"]["name"].as_str()?.to_string();
        let instance_id = v["spec"]["providerID"]
            .as_str()?
            .rsplit('/')
            .next()?
            .to_string();
        let mut allocatable = Resources::default();
        for (k, q) in v["status"]["allocatable"].as_object().into_iter().flatten() {
            if let Some(m) = q.as_str().and_then(|q| dovetail::quantity::parse(q).ok()) {
                allocatable.set(k, m);
            }
        }
        let taints = v["spec"]["taints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|t| {
                (
                    t["key"].as_str().unwrap_or_default().to_string(),
                    t["effect"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        Some(NodeView {
            name,
            instance_id,
            labels: v["metadata"]["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect(),
            taints,
            raw_taints: v["spec"]["taints"].as_array().cloned().unwrap_or_default(),
            allocatable,
            used: Resources::default(),
            ready: v["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Ready" && c["status"] == "True"),
            deleting: !v["metadata"]["deletionTimestamp"].is_null(),
        })
    }

    pub fn free(&self) -> Resources {
        let mut f = self.allocatable.clone();
        f.sub(&self.used);
        f
    }

    /// The larger of requested cpu and memory over allocatable: the Cluster Autoscaler's utilization.
    pub fn utilization(&self) -> f64 {
        [CPU, MEMORY]
            .iter()
            .map(|r| {
                let a = self.allocatable.get(r).0;
                if a <= 0 {
                    0.0
                } else {
                    self.used.get(r).0 as f64 / a as f64
                }
            })
            .fold(0.0, f64::max)
    }

    pub fn marked_for_deletion(&self) -> bool {
        self.deleting || self.taints.iter().any(|(k, _)| k == TO_BE_DELETED)
    }
}

/// First-fit decreasing (by cpu, then memory; real pods before CapacityBuffer chunks, as the Cluster
/// Autoscaler appends its fake pods) of `pods` into bins of free capacity; returns, per pod in the given
/// order, the bin it went to (None: no bin had room). `fits` says whether a pod may go to a bin at all.
pub fn first_fit(
    pods: &[&PodView],
    bins: &mut [Resources],
    fits: impl Fn(&PodView, usize) -> bool,
) -> Vec<Option<usize>> {
    let mut order: Vec<usize> = (0..pods.len()).collect();
    order.sort_by(|&a, &b| {
        let (ra, rb) = (&pods[a].requests, &pods[b].requests);
        (pods[a].headroom.cmp(&pods[b].headroom))
            .then(rb.get(CPU).cmp(&ra.get(CPU)))
            .then(rb.get(MEMORY).cmp(&ra.get(MEMORY)))
            .then(a.cmp(&b))
    });
    let mut out = vec![None; pods.len()];
    for i in order {
        let p = pods[i];
        if let Some(b) = (0..bins.len()).find(|&b| fits(p, b) && bins[b].fits(&p.requests)) {
            bins[b].sub(&p.requests);
            out[i] = Some(b);
        }
    }
    out
}

/// A fresh node's room for pods, after its DaemonSet pods.
pub fn room(allocatable: &Resources, daemon_overhead: &Resources) -> Resources {
    let mut r = allocatable.clone();
    r.sub(daemon_overhead);
    for k in [CPU, MEMORY, PODS] {
        if r.get(k).0 < 0 {
            r.set(k, dovetail::quantity::Milli::ZERO);
        }
    }
    r
}
