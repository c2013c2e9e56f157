//! Faults on a node whose instance keeps running, as a scenario's timeline injects them: the kubelet stops
//! posting status or reports NotReady, or the EKS node monitoring agent reports a failed component; and
//! what the node lifecycle controller and the agent write to the Node for each.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::FakeKube;

/// kube-controller-manager's `node-monitor-grace-period` (50 s since Kubernetes 1.32): how long a kubelet
/// may go silent before its node's Ready turns Unknown.
pub const NODE_MONITOR_GRACE: Duration = Duration::from_secs(50);

/// What goes wrong on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFault {
    /// The kubelet stops posting node status (hung, out of memory, cut off from the API server): after
    /// the grace period the node lifecycle controller marks Ready Unknown and taints the node unreachable.
    KubeletStopped,
    /// The kubelet reports NotReady (its container runtime or network plugin is down): Ready False, and
    /// the node lifecycle controller taints the node not-ready.
    KubeletNotReady,
    /// The node monitoring agent reports this condition False; the kubelet stays Ready.
    Agent(&'static str),
}

/// The node monitoring agent's conditions, by the names a scenario gives their failure.
const AGENT: [(&str, &str); 5] = [
    ("accelerator_failed", "AcceleratedHardwareReady"),
    ("storage_failed", "StorageReady"),
    ("networking_failed", "NetworkingReady"),
    ("kernel_failed", "KernelReady"),
    ("container_runtime_failed", "ContainerRuntimeReady"),
];

impl NodeFault {
    /// Every fault's name as a scenario writes it.
    pub const NAMES: [&'static str; 7] = [
        "kubelet_stopped",
        "kubelet_not_ready",
        "accelerator_failed",
        "storage_failed",
        "networking_failed",
        "kernel_failed",
        "container_runtime_failed",
    ];

    pub fn parse(name: &str) -> Option<NodeFault> {
        match name {
            "kubelet_stopped" => Some(NodeFault::KubeletStopped),
            "kubelet_not_ready" => Some(NodeFault::KubeletNotReady),
            other => AGENT
                .iter()
                .find(|(n, _)| *n == other)
                .map(|(_, c)| NodeFault::Agent(c)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            NodeFault::KubeletStopped => "kubelet_stopped",
            NodeFault::KubeletNotReady => "kubelet_not_ready",
            NodeFault::Agent(c) => AGENT
                .iter()
                .find(|(_, cond)| *cond == c)
                .map_or("agent", |(n, _)| n),
        }
    }

    /// Whether the kubelet stops starting pods.
    pub fn kubelet_down(self) -> bool {
        matches!(self, NodeFault::KubeletStopped | NodeFault::KubeletNotReady)
    }

    /// How long after the fault the Node shows it.
    pub fn shows_after(self) -> Duration {
        match self {
            NodeFault::KubeletStopped => NODE_MONITOR_GRACE,
            _ => Duration::ZERO,
        }
    }

    /// The condition written while the fault lasts: type, status, reason, message.
    fn condition(self) -> (&'static str, &'static str, &'static str, String) {
        match self {
            NodeFault::KubeletStopped => (
                "Ready",
                "Unknown",
                "NodeStatusUnknown",
                "Kubelet stopped posting node status.".into(),
            ),
            NodeFault::KubeletNotReady => (
                "Ready",
                "False",
                "KubeletNotReady",
                "container runtime is down".into(),
            ),
            NodeFault::Agent(c) => (
                c,
                "False",
                "Failed",
                format!("the node monitoring agent reports {c} False"),
            ),
        }
    }

    /// The condition written once the fault heals.
    fn healed(self) -> (&'static str, &'static str, &'static str, String) {
        match self {
            NodeFault::KubeletStopped | NodeFault::KubeletNotReady => (
                "Ready",
                "True",
                "KubeletReady",
                "kubelet is posting ready status".into(),
            ),
            NodeFault::Agent(c) => (c, "True", "Healthy", String::new()),
        }
    }

    /// The taint the node lifecycle controller adds (NoSchedule and NoExecute) while the fault lasts.
    pub fn taint(self) -> Option<&'static str> {
        match self {
            NodeFault::KubeletStopped => Some("node.kubernetes.io/unreachable"),
            NodeFault::KubeletNotReady => Some("node.kubernetes.io/not-ready"),
            NodeFault::Agent(_) => None,
        }
    }

    /// Write what the fault looks like on the Node (`on`), or what it looks like healed.
    pub(crate) fn write(self, kube: &FakeKube, node: &str, on: bool, now: Timestamp) {
        let (type_, status, reason, message) = if on { self.condition() } else { self.healed() };
        set_condition(kube, node, type_, status, reason, &message, now);
        if let Some(key) = self.taint() {
            set_taint(kube, node, key, on, now);
        }
    }
}

/// A fault in force on a node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ActiveFault {
    pub fault: NodeFault,
    pub since: Timestamp,
    pub until: Option<Timestamp>,
    /// Written to the Node yet.
    pub shown: bool,
}

/// Set one condition in a Node's status, keeping the others; its transition time moves only when its
/// status changes, as the kubelet and the node lifecycle controller write it.
pub fn set_condition(
    kube: &FakeKube,
    node: &str,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let mut st = kube.store();
    let Some(current) = st.get("Node", "", node) else {
        return;
    };
    let mut conditions: Vec<Value> = current["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let stamp = now.to_string();
    let mut entry = json!({"type": type_, "status": status, "reason": reason, "message": message,
        "lastHeartbeatTime": stamp, "lastTransitionTime": stamp});
    match conditions.iter_mut().find(|c| c["type"] == type_) {
        Some(c) => {
            if c["status"] == status && c["lastTransitionTime"].is_string() {
                entry["lastTransitionTime"] = c["lastTransitionTime"].clone();
            }
            *c = entry;
        }
        None => conditions.push(entry),
    }
    let _ = st.patch(
        "Node",
        "",
        node,
        &json!({"status": {"conditions": conditions}}),
        true,
    );
}

/// Add or remove the node lifecycle controller's taints for a condition (NoSchedule and NoExecute),
/// keeping the node's others.
fn set_taint(kube: &FakeKube, node: &str, key: &str, on: bool, now: Timestamp) {
    let mut st = kube.store();
    let Some(current) = st.get("Node", "", node) else {
        return;
    };
    let mut taints: Vec<Value> = current["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["key"] != key)
        .cloned()
        .collect();
    if on {
        // TaintNodesByCondition keeps new pods off; taint-based eviction moves the running ones.
        taints.push(json!({"key": key, "effect": "NoSchedule", "timeAdded": now.to_string()}));
        taints.push(json!({"key": key, "effect": "NoExecute", "timeAdded": now.to_string()}));
    }
    let _ = st.patch(
        "Node",
        "",
        node,
        &json!({"spec": {"taints": taints}}),
        false,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_to_itself() {
        for name in NodeFault::NAMES {
            let f = NodeFault::parse(name).unwrap();
            assert_eq!(f.name(), name);
        }
        assert_eq!(NodeFault::parse("gpu_on_fire"), None);
        assert_eq!(
            NodeFault::parse("accelerator_failed"),
            Some(NodeFault::Agent("AcceleratedHardwareReady"))
        );
    }
}
