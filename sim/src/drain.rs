//! `kubectl drain` as the timeline asks for it: cordon the node, then evict every pod on it through the
//! eviction API — DaemonSet pods and finished pods excepted, as kubectl skips them — retrying the ones a
//! PodDisruptionBudget refuses every 5 s (kubectl's interval) until none is left.

use std::collections::BTreeMap;
use std::time::Duration;

use dovetail::kube::{Kube, KubeError, ObjectKey};
use fakekube::FakeKube;
use serde_json::json;

use crate::trace::Trace;

/// How long kubectl waits before retrying an eviction a budget refused.
pub const RETRY: Duration = Duration::from_secs(5);

/// Nodes being drained, each with when to try next (sim time since the start).
#[derive(Debug, Default)]
pub struct Drains {
    next: BTreeMap<String, Duration>,
}

impl Drains {
    /// Cordon `node` now and start evicting its pods.
    pub fn start(&mut self, kube: &FakeKube, node: &str, at: Duration) {
        let _ = kube.store().patch(
            "Node",
            "",
            node,
            &json!({"spec": {"unschedulable": true}}),
            false,
        );
        self.next.insert(node.to_string(), at);
    }

    /// The nodes due for another round.
    pub fn due(&self, at: Duration) -> Vec<String> {
        self.next
            .iter()
            .filter(|(_, t)| **t <= at)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn retry_later(&mut self, node: &str, at: Duration) {
        self.next.insert(node.to_string(), at + RETRY);
    }

    pub fn done(&mut self, node: &str) {
        self.next.remove(node);
    }
}

/// What `kubectl drain` would evict from `node`: its pods that are not DaemonSet pods, not finished and not
/// already going.
fn evictable(kube: &FakeKube, node: &str) -> Vec<ObjectKey> {
    kube.store()
        .iter("Pod")
        .filter(|p| p["spec"]["nodeName"] == node)
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .filter(|p| {
            !p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["kind"] == "DaemonSet"))
        })
        .map(ObjectKey::of)
        .collect()
}

/// One round for one node: evict what can go; Ok(true) once nothing is left.
pub async fn round(kube: &FakeKube, trace: &Trace, node: &str) -> bool {
    let pods = evictable(kube, node);
    if pods.is_empty() {
        trace.push("workload", format!("drain node {node}: drained"));
        return true;
    }
    let (mut evicted, mut refused) = (Vec::new(), Vec::new());
    for key in pods {
        match kube.evict(&key).await {
            Ok(()) | Err(KubeError::NotFound { .. }) => evicted.push(key.to_string()),
            Err(e) => refused.push(format!("{key} ({e})")),
        }
    }
    if !evicted.is_empty() {
        trace.push(
            "workload",
            format!("drain node {node}: evicted {}", evicted.join(", ")),
        );
    }
    if let Some(first) = refused.first() {
        trace.push(
            "workload",
            format!(
                "drain node {node}: {} evictions refused, retrying in 5s: {first}",
                refused.len()
            ),
        );
    }
    false
}
