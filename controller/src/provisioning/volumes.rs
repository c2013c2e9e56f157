//! A pod's volumes as the planner needs them: where its claims pin it (a bound volume's node affinity,
//! an unbound claim's StorageClass `allowedTopologies`) and how many EBS attachments it needs.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::{PersistentVolume, Pod};

use crate::kube::ObjectKey;
use crate::quantity::Milli;
use crate::resources::{EBS_ATTACHMENTS, Resources};
use crate::scheduling::requirements::{Requirement, Requirements, normalize_key};
use crate::state::ClusterState;

/// The EBS CSI driver, and the in-tree provisioner it took over.
pub const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";
const IN_TREE_EBS: &str = "kubernetes.io/aws-ebs";

/// What a pod's volumes ask of its node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodVolumes {
    /// Requirements every node of the pod must meet (a zone, mostly).
    pub requirements: Requirements,
    /// The EBS-backed claims it mounts (`namespace/name`), each one attachment.
    pub ebs_claims: BTreeSet<String>,
}

impl PodVolumes {
    /// The attachments as a request.
    pub fn requests(&self) -> Resources {
        let mut r = Resources::default();
        if !self.ebs_claims.is_empty() {
            r.set(
                EBS_ATTACHMENTS,
                Milli::from_units(self.ebs_claims.len() as i128),
            );
        }
        r
    }
}

/// The claim names a pod mounts: its `persistentVolumeClaim` volumes and, for generic ephemeral volumes,
/// the claim Kubernetes makes for each (`<pod>-<volume>`).
fn claim_names(pod: &Pod) -> Vec<(String, String)> {
    let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            let claim = match (&v.persistent_volume_claim, &v.ephemeral) {
                (Some(c), _) => c.claim_name.clone(),
                (None, Some(_)) => format!("{pod_name}-{}", v.name),
                _ => return None,
            };
            Some((v.name.clone(), claim))
        })
        .collect()
}

fn is_ebs_volume(pv: &PersistentVolume) -> bool {
    pv.spec.as_ref().is_some_and(|s| {
        s.aws_elastic_block_store.is_some()
            || s.csi.as_ref().is_some_and(|c| c.driver == EBS_CSI_DRIVER)
    })
}

/// Requirements of a volume's node affinity: its first term, as Karpenter reads it.
fn volume_requirements(pv: &PersistentVolume, field: &str) -> Result<Requirements, String> {
    let mut out = Requirements::default();
    let term = pv
        .spec
        .as_ref()
        .and_then(|s| s.node_affinity.as_ref())
        .and_then(|a| a.required.as_ref())
        .and_then(|r| r.node_selector_terms.first());
    for e in term
        .and_then(|t| t.match_expressions.as_ref())
        .into_iter()
        .flatten()
    {
        let values = e.values.clone().unwrap_or_default();
        out.add(
            Requirement::parse(&e.key, &e.operator, &values, None)
                .map_err(|err| format!("{field}: {err}"))?,
        );
    }
    Ok(out)
}

/// What `pod`'s volumes ask of a node, or why the pod cannot be planned for yet (a claim or class that
/// does not exist; the scheduler would not place it either).
pub fn pod_volumes(state: &ClusterState, pod: &Pod) -> Result<PodVolumes, String> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mut out = PodVolumes::default();
    for (volume, claim_name) in claim_names(pod) {
        let key = ObjectKey::namespaced(namespace, &claim_name);
        let Some(claim) = state.pvcs.get(&key) else {
            return Err(format!(
                "volume `{volume}`: persistentvolumeclaim {key} not found"
            ));
        };
        let spec = claim.spec.clone().unwrap_or_default();
        let bound = match spec.volume_name.as_deref().filter(|v| !v.is_empty()) {
            Some(v) => match state.pvs.get(v) {
                Some(pv) => Some(pv),
                None => {
                    return Err(format!(
                        "volume `{volume}`: persistentvolume {v} of persistentvolumeclaim {key} not found"
                    ));
                }
            },
            None => None,
        };
        if let Some(pv) = bound {
            let field = format!(
                "persistentvolume {}",
                pv.metadata.name.as_deref().unwrap_or_default()
            );
            out.requirements = out.requirements.merged(&volume_requirements(pv, &field)?);
            if is_ebs_volume(pv) {
                out.ebs_claims.insert(key.to_string());
            }
            continue;
        }
        let class_name = spec.storage_class_name.unwrap_or_default();
        if class_name.is_empty() {
            return Err(format!(
                "volume `{volume}`: persistentvolumeclaim {key} is unbound and names no StorageClass"
            ));
        }
        let Some(class) = state.storage_classes.get(&class_name) else {
            return Err(format!(
                "volume `{volume}`: storageclass {class_name} of persistentvolumeclaim {key} not found"
            ));
        };
        // Karpenter reads the first topology term, as for volumes.
        for e in class
            .allowed_topologies
            .iter()
            .flatten()
            .take(1)
            .flat_map(|t| t.match_label_expressions.iter().flatten())
        {
            out.requirements.add(Requirement::in_values(
                normalize_key(&e.key),
                e.values.iter().cloned(),
            ));
        }
        if matches!(class.provisioner.as_str(), EBS_CSI_DRIVER | IN_TREE_EBS) {
            out.ebs_claims.insert(key.to_string());
        }
    }
    Ok(out)
}

/// How many EBS attachments a bound pod holds on its node (claims that cannot be read hold none).
pub fn ebs_attachments(state: &ClusterState, pod: &Pod) -> Resources {
    pod_volumes(state, pod)
        .map(|v| v.requests())
        .unwrap_or_default()
}

/// A node's room for EBS attachments as its CSINode reports it, if it does.
pub fn csinode_limit(state: &ClusterState, node: &str) -> Option<Milli> {
    state
        .csinodes
        .get(node)?
        .spec
        .drivers
        .iter()
        .find(|d| d.name == EBS_CSI_DRIVER)?
        .allocatable
        .as_ref()?
        .count
        .map(|c| Milli::from_units(i128::from(c)))
}
