//! Volumes as the control plane treats them: the PersistentVolume controller and the CSI provisioners
//! (binding claims, provisioning `Immediate` claims at once in a zone of their class), and the scheduler's
//! volume filters (a bound volume's node affinity, a `WaitForFirstConsumer` class's topology, the node's
//! CSINode attach limit), with the provisioning that follows a binding.

use std::collections::BTreeSet;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::scheduler::expression_holds;
use crate::store::Store;

pub const EBS_CSI_DRIVER: &str = crate::kubelet::EBS_CSI_DRIVER;
/// The in-tree EBS provisioner, served by the EBS CSI driver since CSI migration (EKS's `gp2` class).
const IN_TREE_EBS: &str = "kubernetes.io/aws-ebs";
const ZONE: &str = "topology.kubernetes.io/zone";

/// Where a pod's claim stands.
#[derive(Debug, Clone)]
enum ClaimState {
    /// The claim does not exist: the pod cannot be scheduled.
    Missing,
    /// The claim is bound to a volume that does not exist (`Lost`).
    Lost { volume: String },
    /// Unbound, waiting for its class's provisioner (`Immediate`), or for a class that does not exist.
    Unbound,
    /// Bound: the volume's node affinity terms (ORed).
    Bound { terms: Vec<Value> },
    /// Unbound under a `WaitForFirstConsumer` class: provisioned where the pod lands, within its
    /// `allowedTopologies` (ORed terms).
    Delayed { class: Value },
}

/// One claim a pod mounts.
#[derive(Debug, Clone)]
pub struct PodClaim {
    namespace: String,
    name: String,
    /// The CSI driver behind it (EBS counts against attach limits).
    driver: String,
    state: ClaimState,
}

impl PodClaim {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// The CSI driver that serves a provisioner name.
fn driver_of(provisioner: &str) -> String {
    if provisioner == IN_TREE_EBS {
        EBS_CSI_DRIVER.to_string()
    } else {
        provisioner.to_string()
    }
}

/// The claims a pod mounts (`persistentVolumeClaim` volumes; generic ephemeral ones as `<pod>-<volume>`).
pub fn pod_claims(st: &Store, pod: &Value) -> Vec<PodClaim> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let mut out = Vec::new();
    for v in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let name = if let Some(c) = v["persistentVolumeClaim"]["claimName"].as_str() {
            c.to_string()
        } else if v["ephemeral"].is_object() {
            format!("{pod_name}-{}", v["name"].as_str().unwrap_or_default())
        } else {
            continue;
        };
        let (driver, state) = match st.get("PersistentVolumeClaim", ns, &name) {
            None => (String::new(), ClaimState::Missing),
            Some(claim) => claim_state(st, claim),
        };
        out.push(PodClaim {
            namespace: ns.to_string(),
            name,
            driver,
            state,
        });
    }
    out
}

fn claim_state(st: &Store, claim: &Value) -> (String, ClaimState) {
    if let Some(volume) = claim["spec"]["volumeName"]
        .as_str()
        .filter(|v| !v.is_empty())
    {
        let Some(pv) = st.get("PersistentVolume", "", volume) else {
            let volume = volume.to_string();
            return (String::new(), ClaimState::Lost { volume });
        };
        let driver = pv["spec"]["csi"]["driver"]
            .as_str()
            .map(str::to_string)
            .or_else(|| {
                pv["spec"]["awsElasticBlockStore"]
                    .is_object()
                    .then(|| EBS_CSI_DRIVER.to_string())
            })
            .unwrap_or_default();
        let terms = pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        return (driver, ClaimState::Bound { terms });
    }
    let class = claim["spec"]["storageClassName"]
        .as_str()
        .and_then(|c| st.get("StorageClass", "", c));
    match class {
        Some(class) => {
            let driver = driver_of(class["provisioner"].as_str().unwrap_or_default());
            if class["volumeBindingMode"] == "WaitForFirstConsumer" {
                (
                    driver,
                    ClaimState::Delayed {
                        class: class.clone(),
                    },
                )
            } else {
                (driver, ClaimState::Unbound)
            }
        }
        None => (String::new(), ClaimState::Unbound),
    }
}

/// The EBS claims attached on each node: those of its pods that still run there.
pub fn attached(st: &Store, node: &str) -> BTreeSet<String> {
    st.iter("Pod")
        .filter(|p| p["spec"]["nodeName"] == node)
        .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
        .flat_map(|p| ebs_keys(&pod_claims(st, p)).collect::<Vec<_>>())
        .collect()
}

/// The EBS claims among `claims`.
pub fn ebs_keys(claims: &[PodClaim]) -> impl Iterator<Item = String> + '_ {
    claims
        .iter()
        .filter(|c| c.driver == EBS_CSI_DRIVER)
        .map(PodClaim::key)
}

/// The EBS attach limit a node's CSINode reports (None: no limit known, none applied).
pub fn attach_limit(st: &Store, node: &str) -> Option<u64> {
    st.get("CSINode", "", node)?["spec"]["drivers"]
        .as_array()?
        .iter()
        .find(|d| d["name"] == EBS_CSI_DRIVER)?["allocatable"]["count"]
        .as_u64()
}

fn terms_admit(terms: &[Value], labels: &Value, key: &str) -> bool {
    terms.is_empty()
        || terms.iter().any(|t| {
            t[key]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| expression_holds(e, labels))
        })
}

/// The scheduler's volume filters for `pod`'s claims on `node`: why not, or None.
pub fn unfit_reason(
    claims: &[PodClaim],
    node: &Value,
    attached: &BTreeSet<String>,
    limit: Option<u64>,
) -> Option<String> {
    let labels = &node["metadata"]["labels"];
    for c in claims {
        match &c.state {
            ClaimState::Missing => {
                return Some(format!("persistentvolumeclaim \"{}\" not found", c.name));
            }
            ClaimState::Lost { volume } => {
                return Some(format!(
                    "persistentvolume \"{volume}\" of persistentvolumeclaim \"{}\" not found",
                    c.name
                ));
            }
            ClaimState::Unbound => {
                return Some("pod has unbound immediate PersistentVolumeClaims".into());
            }
            ClaimState::Bound { terms } => {
                if !terms_admit(terms, labels, "matchExpressions") {
                    return Some("node(s) had volume node affinity conflict".into());
                }
            }
            ClaimState::Delayed { class } => {
                let topologies = class["allowedTopologies"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                // allowedTopologies terms list keys with values (no operator): each value set is an In.
                let as_terms: Vec<Value> = topologies
                    .iter()
                    .map(|t| {
                        let exprs: Vec<Value> = t["matchLabelExpressions"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|e| json!({"key": e["key"], "operator": "In", "values": e["values"]}))
                            .collect();
                        json!({"matchExpressions": exprs})
                    })
                    .collect();
                if !terms_admit(&as_terms, labels, "matchExpressions") {
                    return Some("node(s) didn't find available persistent volumes to bind".into());
                }
            }
        }
    }
    if let Some(limit) = limit {
        let mut after = attached.clone();
        after.extend(ebs_keys(claims));
        if after.len() as u64 > limit {
            return Some("node(s) exceed max volume count".into());
        }
    }
    None
}

/// FNV-1a: a stable choice from a name.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    })
}

/// Create the volume for `claim` in `zone` (None: a driver without topology) and bind the two, as the
/// CSI provisioner and the PersistentVolume controller do.
fn provision(st: &mut Store, claim: &Value, class: &Value, zone: Option<&str>, now: Timestamp) {
    let (ns, name) = crate::store::ns_name(claim);
    let uid = claim["metadata"]["uid"].as_str().unwrap_or_default();
    let pv_name = format!("pvc-{uid}");
    let driver = driver_of(class["provisioner"].as_str().unwrap_or_default());
    let mut spec = json!({
        "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"].clone()},
        "accessModes": claim["spec"]["accessModes"].clone(),
        "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name, "uid": uid},
        "storageClassName": class["metadata"]["name"].clone(),
        "persistentVolumeReclaimPolicy": class["reclaimPolicy"].as_str().unwrap_or("Delete"),
        "volumeMode": claim["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
        "csi": {"driver": driver, "volumeHandle": format!("vol-{:017x}", fnv(&pv_name) >> 4)},
    });
    if let Some(zone) = zone {
        // The EBS driver reports both its own key and the well-known one.
        spec["nodeAffinity"] = json!({"required": {"nodeSelectorTerms": [{"matchExpressions": [
            {"key": crate::kubelet::EBS_ZONE_LABEL, "operator": "In", "values": [zone]},
            {"key": ZONE, "operator": "In", "values": [zone]},
        ]}]}});
    }
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "annotations": {"pv.kubernetes.io/provisioned-by": driver}},
        "spec": spec,
    });
    if st.create("PersistentVolume", pv, now).is_ok() {
        let _ = st.patch(
            "PersistentVolumeClaim",
            &ns,
            &name,
            &json!({"spec": {"volumeName": pv_name}}),
            false,
        );
    }
}

/// After binding `pod` to `node`: provision its delayed claims in the node's zone.
pub fn provision_for(st: &mut Store, claims: &[PodClaim], node: &Value, now: Timestamp) {
    let zone = node["metadata"]["labels"][ZONE]
        .as_str()
        .map(str::to_string);
    for c in claims {
        let ClaimState::Delayed { class } = &c.state else {
            continue;
        };
        let Some(claim) = st
            .get("PersistentVolumeClaim", &c.namespace, &c.name)
            .cloned()
        else {
            continue;
        };
        let zonal = driver_of(class["provisioner"].as_str().unwrap_or_default()) == EBS_CSI_DRIVER;
        provision(st, &claim, class, zone.as_deref().filter(|_| zonal), now);
    }
}

/// The PersistentVolume controller and the `Immediate` provisioners: provision unbound claims of an
/// `Immediate` class (EBS in a zone its `allowedTopologies` allow, else one the cluster's nodes are in,
/// chosen by the claim's name), and keep both sides' `phase` current.
pub fn reconcile(st: &mut Store, now: Timestamp) {
    for claim in st.list("PersistentVolumeClaim") {
        if !claim["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let (ns, name) = crate::store::ns_name(&claim);
        let volume = claim["spec"]["volumeName"]
            .as_str()
            .filter(|v| !v.is_empty());
        match volume {
            Some(pv) if st.get("PersistentVolume", "", pv).is_some() => {
                if claim["status"]["phase"] != "Bound" {
                    let _ = st.patch(
                        "PersistentVolumeClaim",
                        &ns,
                        &name,
                        &json!({"status": {"phase": "Bound"}}),
                        true,
                    );
                    let _ = st.patch(
                        "PersistentVolume",
                        "",
                        pv,
                        &json!({"status": {"phase": "Bound"}}),
                        true,
                    );
                }
            }
            Some(_) => {
                if claim["status"]["phase"] != "Lost" {
                    let _ = st.patch(
                        "PersistentVolumeClaim",
                        &ns,
                        &name,
                        &json!({"status": {"phase": "Lost"}}),
                        true,
                    );
                }
            }
            None => {
                // Retroactive default class: a claim made before any default existed gets it now.
                if claim["spec"].get("storageClassName").is_none()
                    && let Some(default) = crate::plugins::default_class(st)
                {
                    let _ = st.patch(
                        "PersistentVolumeClaim",
                        &ns,
                        &name,
                        &json!({"spec": {"storageClassName": default}}),
                        false,
                    );
                    continue;
                }
                let Some(class) = claim["spec"]["storageClassName"]
                    .as_str()
                    .and_then(|c| st.get("StorageClass", "", c))
                    .cloned()
                else {
                    continue;
                };
                if class["volumeBindingMode"] == "WaitForFirstConsumer" {
                    continue;
                }
                let zonal =
                    driver_of(class["provisioner"].as_str().unwrap_or_default()) == EBS_CSI_DRIVER;
                let mut zones: Vec<String> = class["allowedTopologies"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|t| t["matchLabelExpressions"].as_array().into_iter().flatten())
                    .filter(|e| {
                        matches!(
                            e["key"].as_str(),
                            Some(ZONE | crate::kubelet::EBS_ZONE_LABEL)
                        )
                    })
                    .flat_map(|e| e["values"].as_array().into_iter().flatten())
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect();
                if zones.is_empty() {
                    zones = st
                        .iter("Node")
                        .filter_map(|n| n["metadata"]["labels"][ZONE].as_str().map(str::to_string))
                        .collect();
                }
                zones.sort();
                zones.dedup();
                if zonal && zones.is_empty() {
                    continue; // nowhere to put it yet: the provisioner retries
                }
                let zone = (!zones.is_empty()).then(|| {
                    zones[(fnv(&format!("{ns}/{name}")) % zones.len() as u64) as usize].clone()
                });
                provision(st, &claim, &class, zone.as_deref().filter(|_| zonal), now);
            }
        }
    }
}
