//! The cluster state every controller reads: the cache fed by list + watch (ordered maps so every scan is
//! deterministic), plus the few facts controllers learn that the API does not hold, and queries over both.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::storage::v1::{CSINode, StorageClass};
use serde_json::Value;

use crate::crds::{EC2NodeClass, NodeClaim, NodePool, labels};
use crate::kube::{Kind, KubeError, ObjectKey, WatchEvent, decode};
use crate::resources::Resources;

#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    pub pods: BTreeMap<ObjectKey, Pod>,
    pub nodes: BTreeMap<String, Node>,
    pub nodeclaims: BTreeMap<String, NodeClaim>,
    pub nodepools: BTreeMap<String, NodePool>,
    pub nodeclasses: BTreeMap<String, EC2NodeClass>,
    pub daemonsets: BTreeMap<ObjectKey, DaemonSet>,
    /// Volumes: where a pod's claims pin it (a bound volume's node affinity, an unbound one's class
    /// topology) and how many attachments each node has room for (its CSINode).
    pub pvcs: BTreeMap<ObjectKey, PersistentVolumeClaim>,
    pub pvs: BTreeMap<String, PersistentVolume>,
    pub storage_classes: BTreeMap<String, StorageClass>,
    pub csinodes: BTreeMap<String, CSINode>,
    /// NodeOverlays (watched only with the NodeOverlay gate on; empty otherwise).
    pub nodeoverlays: BTreeMap<String, crate::crds::NodeOverlay>,
    /// CapacityBuffers (watched only with the CapacityBuffer gate on; empty otherwise).
    pub capacitybuffers: BTreeMap<ObjectKey, crate::crds::CapacityBuffer>,
    /// The buffers' virtual pods, as the CapacityBuffer controller last resolved them (learned, not
    /// watched): planned like pending pods after every real one, never bound, never evicted.
    pub headroom: Vec<(ObjectKey, Pod)>,
    /// Counts every change applied, so a decision can tell it is looking at the same cluster again.
    pub revision: u64,
    /// Claims whose instance is known gone (terminated, interrupted, vanished): their nodes have nothing
    /// left to drain and their finalizer need not ask the cloud again. Learned, not watched.
    pub instance_gone: BTreeSet<String>,
    /// When a pod last arrived on or left each node (`consolidateAfter` counts from then).
    pub pod_changes: BTreeMap<String, Duration>,
}

/// What changed, so the controller can decide what to wake up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Upsert,
    Delete,
}

impl ClusterState {
    /// The kinds the controller watches.
    pub const WATCHED: [Kind; 13] = [
        Kind::Pod,
        Kind::Node,
        Kind::NodeClaim,
        Kind::NodePool,
        Kind::EC2NodeClass,
        Kind::DaemonSet,
        Kind::PersistentVolumeClaim,
        Kind::PersistentVolume,
        Kind::StorageClass,
        Kind::CSINode,
        Kind::NodeOverlay,
        Kind::CapacityBuffer,
        // Not kept: an event only tells the buffers naming the template to resolve again.
        Kind::PodTemplate,
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
            Kind::PersistentVolumeClaim => self.pvcs.clear(),
            Kind::PersistentVolume => self.pvs.clear(),
            Kind::StorageClass => self.storage_classes.clear(),
            Kind::CSINode => self.csinodes.clear(),
            Kind::NodeOverlay => self.nodeoverlays.clear(),
            Kind::CapacityBuffer => self.capacitybuffers.clear(),
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
        if kind == Kind::PodTemplate {
            // Nothing of it is kept, so the cluster the decisions saw has not changed.
            return Ok(());
        }
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
            Kind::PersistentVolumeClaim => upsert!(self.pvcs, key),
            Kind::PersistentVolume => upsert!(self.pvs, key.name),
            Kind::StorageClass => upsert!(self.storage_classes, key.name),
            Kind::CSINode => upsert!(self.csinodes, key.name),
            Kind::NodeOverlay => upsert!(self.nodeoverlays, key.name),
            Kind::CapacityBuffer => upsert!(self.capacitybuffers, key),
            _ => {}
        }
        Ok(())
    }
}

impl ClusterState {
    /// Replace the buffers' virtual pods; whether they changed (a change is a new revision, so decisions
    /// cached on the cluster as it was are made again).
    pub fn set_headroom(&mut self, pods: Vec<(ObjectKey, Pod)>) -> bool {
        if self.headroom == pods {
            return false;
        }
        self.headroom = pods;
        self.revision += 1;
        true
    }

    /// Nodes on their way out — deleted, or owned by a deleted claim. Their pods are planned for before
    /// they are evicted, as Karpenter does, so replacements are already coming. (A node only tainted by a
    /// disruption command in progress is not leaving yet: its replacements are already planned, and if
    /// they fail the taint is rolled back.)
    pub fn leaving_nodes(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.metadata.deletion_timestamp.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        out.extend(
            self.nodeclaims
                .values()
                .filter(|c| c.metadata.deletion_timestamp.is_some())
                .filter_map(|c| c.status.as_ref().and_then(|s| s.node_name.clone())),
        );
        out
    }

    /// The claim a node belongs to: by the node name it recorded, or by provider id.
    pub fn claim_of_node(&self, node: &Node) -> Option<&NodeClaim> {
        let name = node.metadata.name.as_deref()?;
        let provider = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
        self.nodeclaims.values().find(|c| {
            let st = c.status.as_ref();
            st.and_then(|s| s.node_name.as_deref()) == Some(name)
                || (provider.is_some() && st.and_then(|s| s.provider_id.as_deref()) == provider)
        })
    }

    /// Capacity of the pool's live NodeClaims, as counted against `spec.limits`.
    pub fn pool_usage(&self, pool: &str) -> Resources {
        let mut used = Resources::default();
        for claim in self.nodeclaims.values() {
            if claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
                .map(String::as_str)
                != Some(pool)
            {
                continue;
            }
            let capacity = claim
                .status
                .as_ref()
                .map(|s| &s.capacity)
                .filter(|c| !c.is_empty());
            let amounts = match capacity {
                Some(c) => Resources::parse(c).unwrap_or_default(),
                None => claim
                    .spec
                    .resources
                    .as_ref()
                    .and_then(|r| Resources::parse(&r.requests).ok())
                    .unwrap_or_default(),
            };
            used.add(&amounts);
            *used
                .0
                .entry(crate::resources::NODES.to_string())
                .or_default() += crate::quantity::Milli::from_units(1);
        }
        used
    }
}

/// A pod the scheduler has tried and failed to place: no node, not finished, and `PodScheduled=False`
/// with reason `Unschedulable` — the only pods Karpenter provisions for.
pub fn is_provisionable(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    if spec.node_name.is_some() || pod.metadata.deletion_timestamp.is_some() {
        return false;
    }
    // A DaemonSet's pod is pinned to one node (its capacity is counted as daemon overhead of every new
    // node), and a static pod belongs to its node: no new node helps either, as in Karpenter.
    if pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet" || o.kind == "Node")
    {
        return false;
    }
    let Some(status) = &pod.status else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded") | Some("Failed")) {
        return false;
    }
    marked_unschedulable(pod)
}

/// Whether the scheduler has marked the pod `PodScheduled=False` with reason `Unschedulable`.
pub fn marked_unschedulable(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
}

/// A node's taints less those with `key`.
pub fn node_taints_without(node: &Node, key: &str) -> Vec<k8s_openapi::api::core::v1::Taint> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t.key != key)
        .collect()
}

/// Whether a node reports `Ready=True`.
pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
