//! The controller's cache of the cluster, fed by list + watch; ordered maps so every scan is deterministic.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::Value;

use crate::crds::{EC2NodeClass, NodeClaim, NodePool};
use crate::kube::{Kind, KubeError, ObjectKey, WatchEvent, decode};

#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub nodes: BTreeMap<String, Node>,
    pub nodeclaims: BTreeMap<String, NodeClaim>,
    pub nodepools: BTreeMap<String, NodePool>,
    pub nodeclasses: BTreeMap<String, EC2NodeClass>,
    pub daemonsets: BTreeMap<ObjectKey, DaemonSet>,
    /// Counts every change applied, so a decision can tell it is looking at the same cluster again.
    pub revision: u64,
}

/// What changed, so the controller can decide what to wake up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Upsert,
    Delete,
}

impl ClusterState {
    /// The kinds the controller watches.
    pub const WATCHED: [Kind; 6] = [
        Kind::Pod,
        Kind::Node,
        Kind::NodeClaim,
        Kind::NodePool,
        Kind::EC2NodeClass,
        Kind::DaemonSet,
    ];

    /// Replace everything of `kind` with a fresh list.
    pub fn reset(&mut self, kind: Kind, items: Vec<Value>) -> Result<(), KubeError> {
        match kind {
            Kind::Pod => self.pods.clear(),
            Kind::Node => self.nodes.clear(),
            Kind::NodeClaim => self.nodeclaims.clear(),
            Kind::NodePool => self.nodepools.clear(),
            Kind::EC2NodeClass => self.nodeclasses.clear(),
            Kind::DaemonSet => self.daemonsets.clear(),
            _ => {}
        }
        self.revision += 1;
        for item in items {
            self.apply(kind, Change::Upsert, item)?;
        }
        Ok(())
    }

    pub fn apply_event(
        &mut self,
        kind: Kind,
        event: WatchEvent,
    ) -> Result<Option<(Change, ObjectKey)>, KubeError> {
        let (change, value) = match event {
            WatchEvent::Added(v) | WatchEvent::Modified(v) => (Change::Upsert, v),
            WatchEvent::Deleted(v) => (Change::Delete, v),
            WatchEvent::Expired => return Ok(None),
        };
        let key = ObjectKey::of(&value);
        self.apply(kind, change, value)?;
        Ok(Some((change, key)))
    }

    fn apply(&mut self, kind: Kind, change: Change, value: Value) -> Result<(), KubeError> {
        let key = ObjectKey::of(&value);
        self.revision += 1;
        macro_rules! upsert {
            ($map:expr, $k:expr) => {
                match change {
                    Change::Upsert => {
                        $map.insert($k, decode(kind, value)?);
                    }
                    Change::Delete => {
                        $map.remove(&$k);
                    }
                }
            };
        }
        match kind {
            Kind::Pod => upsert!(self.pods, key),
            Kind::Node => upsert!(self.nodes, key.name),
            Kind::NodeClaim => upsert!(self.nodeclaims, key.name),
            Kind::NodePool => upsert!(self.nodepools, key.name),
            Kind::EC2NodeClass => upsert!(self.nodeclasses, key.name),
            Kind::DaemonSet => upsert!(self.daemonsets, key),
            _ => {}
        }
        Ok(())
    }
}

/// A pod the scheduler has tried and failed to place: no node, not finished, and `PodScheduled=False`
/// with reason `Unschedulable` — the only pods Karpenter provisions for.
pub fn is_provisionable(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if spec.node_name.is_some() || pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return false;
    }
    status.conditions.iter().flatten().any(|c| {
        c.type_ == "PodScheduled"
            && c.status == "False"
            && c.reason.as_deref() == Some("Unschedulable")
    })
}

/// Whether a node reports `Ready=True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
