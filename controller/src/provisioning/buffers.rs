//! The CapacityBuffer controller: resolves each buffer's chunk shape and count as Karpenter does, keeps the
//! chunks as virtual pods in the cluster state (the planner places them after every real pod; consolidation
//! keeps room for them), and writes each buffer's status from where the last plan put its chunks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition, PodSpec, PodStatus, PodTemplateSpec};
use kube_core::ObjectMeta;
use serde_json::{Value, json};

use crate::conditions::Desired;
use crate::context::Context;
use crate::crds::CapacityBuffer;
use crate::crds::capacitybuffer::{ACTIVE_CAPACITY, conditions};
use crate::kube::{Kind, Kube, KubeError, ObjectKey, WatchEvent};
use crate::quantity::{self, Milli};
use crate::resources::{PODS, Resources, pod_requests};
use crate::scheduling::Plan;
use crate::state::ClusterState;

/// How often every buffer is resolved again: a PodTemplate or a workload's replica count changes without
/// the buffer changing (Karpenter requeues each buffer after 30 s).
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// Virtual pods are keyed `<namespace>/capacitybuffer/<buffer>/<chunk>`: no real pod's name holds a `/`,
/// so a virtual pod can never be taken for a real one.
const VIRTUAL_PREFIX: &str = "capacitybuffer/";

/// Whether a pod key names a buffer's chunk rather than a real pod.
pub fn is_virtual(key: &ObjectKey) -> bool {
    key.name.starts_with(VIRTUAL_PREFIX)
}

/// The buffer a chunk belongs to.
fn buffer_of(key: &ObjectKey) -> Option<ObjectKey> {
    let rest = key.name.strip_prefix(VIRTUAL_PREFIX)?;
    let (name, _) = rest.rsplit_once('/')?;
    Some(ObjectKey::namespaced(&key.namespace, name))
}

/// What resolving a buffer found.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Ready {
        template: Box<PodTemplateSpec>,
        replicas: i32,
        /// The PodTemplate used and its generation (None when shaped by a workload).
        pod_template: Option<(String, Option<i64>)>,
    },
    /// Not acted on: the reason (Karpenter's) and why.
    NotReady {
        reason: &'static str,
        message: String,
    },
}

/// Where the last plan put one buffer's chunks.
#[derive(Debug, Clone, Default, PartialEq)]
struct Placement {
    existing: u32,
    new: u32,
    failed: u32,
    why: Option<String>,
}

/// The CapacityBuffer controller's own state.
#[derive(Debug, Default)]
pub(crate) struct Buffers {
    next_resolve: Duration,
    verdicts: BTreeMap<ObjectKey, Verdict>,
    placement: BTreeMap<ObjectKey, Placement>,
    /// Capacity (`node/<name>`, `nodeclaim/<name>`) holding chunks in the last plan: a pod bound there
    /// uses headroom, so the buffer is planned again.
    hosts: BTreeSet<String>,
    /// The last thing the trace said about each buffer, so it is said once.
    said: BTreeMap<ObjectKey, String>,
    /// The generation of each buffer's spec last resolved: a status write (ours) changes none.
    resolved: BTreeMap<ObjectKey, Option<i64>>,
}

impl Buffers {
    /// When the buffers are next resolved.
    pub(crate) fn next_resolve(&self) -> Duration {
        self.next_resolve
    }

    /// Whether the last plan left chunks waiting for new capacity or with none: the next resolve pass
    /// plans them again (the claims launched for them now count as capacity on its way, or room was
    /// freed), so the status catches up and nothing waits on an unrelated pod event.
    pub(crate) fn unsettled(&self) -> bool {
        self.placement.values().any(|p| p.new > 0 || p.failed > 0)
    }

    /// A buffer was written: resolve again at the next pass when its spec changed or it is gone.
    pub(crate) fn observe(&mut self, state: &ClusterState, key: &ObjectKey) {
        let generation = state
            .capacitybuffers
            .get(key)
            .map(|b| b.metadata.generation);
        if generation.is_none() || self.resolved.get(key) != generation.as_ref() {
            self.next_resolve = Duration::ZERO;
        }
    }

    /// A PodTemplate was written or deleted: the buffers whose `podTemplateRef` names it resolve at the
    /// next pass (Karpenter watches PodTemplates too; workloads are seen at the 30 s resolve).
    pub(crate) fn template_changed(&mut self, state: &ClusterState, template: &ObjectKey) {
        let named = state.capacitybuffers.iter().any(|(k, b)| {
            k.namespace == template.namespace
                && b.spec
                    .pod_template_ref
                    .as_ref()
                    .is_some_and(|r| r.name == template.name)
        });
        if named {
            self.next_resolve = Duration::ZERO;
        }
    }

    /// Whether a pod bound to this node (or its claim) takes room the last plan kept for a buffer.
    pub(crate) fn hosts(&self, state: &ClusterState, node: &str) -> bool {
        if self.hosts.is_empty() {
            return false;
        }
        self.hosts.contains(&format!("node/{node}"))
            || state
                .nodes
                .get(node)
                .and_then(|n| state.claim_of_node(n))
                .and_then(|c| c.metadata.name.as_deref())
                .is_some_and(|c| self.hosts.contains(&format!("nodeclaim/{c}")))
    }

    /// Resolve every buffer, publish their chunks as the cluster's headroom and write their status.
    /// Returns whether the headroom changed (the provisioner then plans it).
    pub(crate) async fn reconcile(&mut self, ctx: &Context, state: &mut ClusterState) -> bool {
        self.next_resolve = ctx.now() + RESOLVE_INTERVAL;
        if !ctx.settings.feature_gates.capacity_buffer {
            return state.set_headroom(Vec::new());
        }
        let buffers: Vec<(ObjectKey, CapacityBuffer)> = state
            .capacitybuffers
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        self.verdicts
            .retain(|k, _| state.capacitybuffers.contains_key(k));
        self.placement
            .retain(|k, _| state.capacitybuffers.contains_key(k));
        self.said
            .retain(|k, _| state.capacitybuffers.contains_key(k));
        self.resolved = buffers
            .iter()
            .map(|(k, b)| (k.clone(), b.metadata.generation))
            .collect();
        for (key, buffer) in &buffers {
            match resolve(ctx.kube.as_ref(), key, buffer).await {
                Ok(v) => {
                    self.verdicts.insert(key.clone(), v);
                }
                // The API failed us: keep what was resolved before and try again next pass.
                Err(e) => ctx.journal.record(
                    "capacitybuffer",
                    format!("capacitybuffer/{key}: not resolved: {e}; retrying"),
                ),
            }
        }
        let mut pods = Vec::new();
        for (key, verdict) in &self.verdicts {
            if let Verdict::Ready {
                template, replicas, ..
            } = verdict
            {
                pods.extend(virtual_pods(key, template, *replicas));
            }
        }
        let changed = state.set_headroom(pods);
        self.write_statuses(ctx, state).await;
        changed
    }

    /// Learn where a plan put each buffer's chunks (`claims[i]` was created as `names[i]`).
    pub(crate) fn record_plan(&mut self, plan: &Plan, names: &[Option<String>]) {
        let mut placement: BTreeMap<ObjectKey, Placement> = BTreeMap::new();
        self.hosts.clear();
        for (pod, capacity) in &plan.on_existing {
            if let Some(b) = buffer_of(pod) {
                placement.entry(b).or_default().existing += 1;
                self.hosts.insert(capacity.clone());
            }
        }
        for (i, claim) in plan.claims.iter().enumerate() {
            for b in claim.pods.iter().filter_map(buffer_of) {
                placement.entry(b).or_default().new += 1;
                if let Some(Some(name)) = names.get(i) {
                    self.hosts.insert(format!("nodeclaim/{name}"));
                }
            }
        }
        for (pod, why) in &plan.headroom_unschedulable {
            if let Some(b) = buffer_of(pod) {
                let p = placement.entry(b).or_default();
                p.failed += 1;
                p.why.get_or_insert_with(|| why.clone());
            }
        }
        self.placement = placement;
    }

    /// Each buffer's status: the resolved shape and count, `ReadyForProvisioning`, and `Provisioning` from
    /// the last plan; written only where it changed. A buffer refused or short of room is said once.
    pub(crate) async fn write_statuses(&mut self, ctx: &Context, state: &mut ClusterState) {
        let now = ctx.clock.now().to_string();
        let buffers: Vec<(ObjectKey, CapacityBuffer)> = state
            .capacitybuffers
            .iter()
            .map(|(k, b)| (k.clone(), b.clone()))
            .collect();
        for (key, buffer) in buffers {
            let Some(verdict) = self.verdicts.get(&key) else {
                continue;
            };
            let placement = self.placement.get(&key);
            let (status, wanted) = desired_status(&buffer, verdict, placement);
            let said = match (verdict, &wanted[..]) {
                (Verdict::NotReady { reason, message }, _) => {
                    Some(format!("not acted on ({reason}): {message}"))
                }
                (_, [_, (_, Some(false), "RequiresNewCapacity", message)]) => Some(message.clone()),
                (Verdict::Ready { replicas, .. }, _) => Some(format!(
                    "{replicas} chunks of headroom{}",
                    match placement {
                        Some(p) if p.existing > 0 => " fit capacity in place or on its way",
                        _ => "",
                    }
                )),
            };
            if let Some(line) = said
                && self.said.get(&key) != Some(&line)
            {
                ctx.journal
                    .record("capacitybuffer", format!("capacitybuffer/{key}: {line}"));
                self.said.insert(key.clone(), line);
            }
            let old_status = buffer.status.clone().unwrap_or_default();
            let old = crate::conditions::as_values(Some(old_status.conditions.as_slice()));
            let conditions =
                crate::conditions::merge_reasoned(&old, &wanted, &now, buffer.metadata.generation);
            let same_conditions = wanted.iter().all(|(t, ..)| {
                let pick = |list: &[Value]| {
                    list.iter().find(|c| c["type"] == *t).map(|c| {
                        (
                            c["status"].clone(),
                            c["reason"].clone(),
                            c["message"].clone(),
                        )
                    })
                };
                pick(&old) == pick(&conditions)
            });
            let old_fields = json!({
                "podTemplateRef": old_status.pod_template_ref,
                "replicas": old_status.replicas,
                "podTemplateGeneration": old_status.pod_template_generation,
                "provisioningStrategy": old_status.provisioning_strategy,
            });
            if same_conditions && old_fields == status {
                continue;
            }
            let mut patch = status;
            patch["conditions"] = json!(conditions);
            match ctx
                .kube
                .patch_status(Kind::CapacityBuffer, &key, json!({ "status": patch }))
                .await
            {
                Ok(updated) => {
                    let _ = state.apply_event(Kind::CapacityBuffer, WatchEvent::Modified(updated));
                }
                Err(e) => ctx.journal.record(
                    "capacitybuffer",
                    format!("capacitybuffer/{key}: status not written: {e}; retrying next pass"),
                ),
            }
        }
    }
}

/// The status fields a verdict sets (null clears one) and the two conditions.
fn desired_status(
    buffer: &CapacityBuffer,
    verdict: &Verdict,
    placement: Option<&Placement>,
) -> (Value, Vec<Desired>) {
    let strategy = buffer.spec.provisioning_strategy.clone();
    match verdict {
        Verdict::NotReady { reason, message } => (
            json!({
                "podTemplateRef": buffer.status.as_ref().and_then(|s| s.pod_template_ref.clone()),
                "replicas": buffer.status.as_ref().and_then(|s| s.replicas),
                "podTemplateGeneration": buffer.status.as_ref().and_then(|s| s.pod_template_generation),
                "provisioningStrategy": strategy,
            }),
            vec![
                (
                    conditions::READY_FOR_PROVISIONING,
                    Some(false),
                    reason,
                    message.clone(),
                ),
                (
                    conditions::PROVISIONING,
                    Some(false),
                    "NotReadyForProvisioning",
                    "the buffer is not ready for provisioning".to_string(),
                ),
            ],
        ),
        Verdict::Ready {
            replicas,
            pod_template,
            ..
        } => {
            let fields = json!({
                "podTemplateRef": pod_template.as_ref().map(|(n, _)| json!({"name": n})),
                "replicas": replicas,
                "podTemplateGeneration": pod_template.as_ref().and_then(|(_, g)| *g),
                "provisioningStrategy": strategy,
            });
            let source = match pod_template {
                Some((name, _)) => format!("podtemplate/{name}"),
                None => buffer
                    .spec
                    .scalable_ref
                    .as_ref()
                    .map(|r| format!("{}/{}", r.kind.to_lowercase(), r.name))
                    .unwrap_or_default(),
            };
            let ready = (
                conditions::READY_FOR_PROVISIONING,
                Some(true),
                "Resolved",
                format!("{replicas} chunks shaped like {source}"),
            );
            let provisioning = if *replicas == 0 {
                Some((
                    conditions::PROVISIONING,
                    Some(false),
                    "BufferEmpty",
                    "the buffer wants no chunks".to_string(),
                ))
            } else {
                placement.and_then(|p| {
                    let wanted = u32::try_from(*replicas).unwrap_or(0);
                    if p.new > 0 || p.failed > 0 {
                        let mut m = format!(
                            "{}/{wanted} chunks need new capacity, {} cannot be placed",
                            p.new, p.failed
                        );
                        if let Some(why) = &p.why {
                            m.push_str(&format!(": {why}"));
                        }
                        Some((
                            conditions::PROVISIONING,
                            Some(false),
                            "RequiresNewCapacity",
                            m,
                        ))
                    } else if p.existing == wanted {
                        Some((
                            conditions::PROVISIONING,
                            Some(true),
                            "FitsExistingCapacity",
                            format!("all {wanted} chunks fit capacity in place or on its way"),
                        ))
                    } else {
                        None
                    }
                })
            };
            (
                fields,
                [Some(ready), provisioning].into_iter().flatten().collect(),
            )
        }
    }
}

/// One buffer's chunks as virtual pods, resolved as Dovetail resolves them (for the simulator's Cluster
/// Autoscaler baseline, which reads the same API). `Ok(Err(why))`: the buffer is not acted on.
pub async fn headroom_of(
    kube: &dyn Kube,
    key: &ObjectKey,
    buffer: &CapacityBuffer,
) -> Result<Result<Vec<(ObjectKey, Pod)>, String>, KubeError> {
    Ok(match resolve(kube, key, buffer).await? {
        Verdict::Ready {
            template, replicas, ..
        } => Ok(virtual_pods(key, &template, replicas)),
        Verdict::NotReady { reason, message } => Err(format!("{reason}: {message}")),
    })
}

/// Karpenter's resolution of one buffer: its pod shape from the PodTemplate or the workload it names,
/// and the chunk count from `replicas`, `percentage` and `limits`. Err only when the API failed.
async fn resolve(
    kube: &dyn Kube,
    key: &ObjectKey,
    buffer: &CapacityBuffer,
) -> Result<Verdict, KubeError> {
    let not_ready = |reason: &'static str, message: String| Verdict::NotReady { reason, message };
    if buffer.strategy() != ACTIVE_CAPACITY {
        // Beyond Karpenter (which treats every strategy as active): another strategy belongs to
        // another autoscaler, so it is left alone and said.
        return Ok(not_ready(
            "UnsupportedProvisioningStrategy",
            format!(
                "provisioningStrategy {:?} is not acted on (only {ACTIVE_CAPACITY} is)",
                buffer.strategy()
            ),
        ));
    }
    let spec = &buffer.spec;
    let (template, pod_template, workload_replicas) = match (
        &spec.pod_template_ref,
        &spec.scalable_ref,
    ) {
        (Some(r), _) => {
            let at = ObjectKey::namespaced(&key.namespace, &r.name);
            let Some(pt) = kube.get(Kind::PodTemplate, &at).await? else {
                return Ok(not_ready(
                    "PodTemplateNotFound",
                    format!("podtemplate {at} not found"),
                ));
            };
            let generation = pt["metadata"]["generation"].as_i64();
            match serde_json::from_value::<PodTemplateSpec>(pt["template"].clone()) {
                Ok(t) => (t, Some((r.name.clone(), generation)), None),
                Err(e) => {
                    return Ok(not_ready(
                        "ResolutionFailed",
                        format!("podtemplate {at}: template cannot be read: {e}"),
                    ));
                }
            }
        }
        (None, Some(r)) => {
            let group = r.api_group.as_deref().unwrap_or("");
            if !(group.is_empty() || group == "apps") {
                return Ok(not_ready(
                    "ResolutionFailed",
                    format!("scalableRef apiGroup {group:?} is not supported (only apps)"),
                ));
            }
            let kind = match r.kind.as_str() {
                "Deployment" => Kind::Deployment,
                "StatefulSet" => Kind::StatefulSet,
                "ReplicaSet" => Kind::ReplicaSet,
                other => {
                    return Ok(not_ready(
                        "ResolutionFailed",
                        format!(
                            "scalableRef kind {other:?} is not supported (Deployment, StatefulSet or ReplicaSet)"
                        ),
                    ));
                }
            };
            let at = ObjectKey::namespaced(&key.namespace, &r.name);
            let Some(w) = kube.get(kind, &at).await? else {
                return Ok(not_ready(
                    "ScalableRefNotFound",
                    format!("{} {at} not found", r.kind.to_lowercase()),
                ));
            };
            let replicas = w["spec"]["replicas"].as_i64().unwrap_or(1);
            match serde_json::from_value::<PodTemplateSpec>(w["spec"]["template"].clone()) {
                Ok(t) => (t, None, Some(replicas)),
                Err(e) => {
                    return Ok(not_ready(
                        "ResolutionFailed",
                        format!("{} {at}: pod template cannot be read: {e}", r.kind),
                    ));
                }
            }
        }
        (None, None) => {
            return Ok(not_ready(
                "ResolutionFailed",
                "neither podTemplateRef nor scalableRef is set".to_string(),
            ));
        }
    };
    let requests = match chunk_requests(&template) {
        Ok(r) => r,
        Err(e) => {
            return Ok(not_ready(
                "ResolutionFailed",
                format!("the pod shape cannot be read: {e}"),
            ));
        }
    };
    let limits = match parse_limits(spec.limits.as_ref()) {
        Ok(l) => l,
        Err(e) => return Ok(not_ready("ResolutionFailed", e)),
    };
    let replicas = chunk_count(
        spec.replicas,
        spec.percentage,
        workload_replicas,
        limits.as_ref(),
        &requests,
    );
    Ok(Verdict::Ready {
        template: Box::new(template),
        replicas,
        pod_template,
    })
}

/// One chunk's requests (without the `pods` a pod counts), for `limits`.
fn chunk_requests(template: &PodTemplateSpec) -> Result<Resources, String> {
    let pod = Pod {
        spec: template.spec.clone(),
        ..Default::default()
    };
    let mut r = pod_requests(&pod).map_err(|e| e.to_string())?;
    r.0.remove(PODS);
    Ok(r)
}

/// `limits` as resources; an entry that is not a quantity is an error naming it.
fn parse_limits(limits: Option<&BTreeMap<String, Value>>) -> Result<Option<Resources>, String> {
    let Some(limits) = limits else {
        return Ok(None);
    };
    let mut out = Resources::default();
    for (name, v) in limits {
        let text = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            other => return Err(format!("limits.{name}: {other} is not a quantity")),
        };
        let q = quantity::parse(&text).map_err(|e| format!("limits.{name}: {e}"))?;
        out.set(name, q);
    }
    Ok(Some(out))
}

/// The chunk count, by the Cluster Autoscaler's rules as Karpenter applies them: the larger of
/// `replicas` and `percentage` of the workload (rounded up, at least 1 of a running workload), capped by
/// how many chunks `limits` holds; `limits` alone when neither is set. Limits on resources a chunk does
/// not request cap nothing.
fn chunk_count(
    replicas: Option<i32>,
    percentage: Option<i32>,
    workload_replicas: Option<i64>,
    limits: Option<&Resources>,
    requests: &Resources,
) -> i32 {
    let mut candidates: Vec<i64> = Vec::new();
    if let (Some(pct), Some(running)) = (percentage, workload_replicas)
        && running > 0
    {
        let n = (running * i64::from(pct) + 99) / 100;
        candidates.push(if pct > 0 { n.max(1) } else { n });
    }
    if let Some(r) = replicas {
        candidates.push(i64::from(r));
    }
    let desired = candidates.iter().copied().max();
    let by_limits = limits.and_then(|l| {
        l.0.iter()
            .filter_map(|(name, limit)| {
                let req = requests.get(name);
                (req > Milli(0)).then(|| limit.0.max(0) / req.0)
            })
            .min()
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX))
    });
    let n = match (desired, by_limits) {
        (Some(d), Some(l)) => d.min(l),
        (Some(d), None) => d,
        (None, Some(l)) => l,
        (None, None) => 0,
    };
    i32::try_from(n.max(0)).unwrap_or(i32::MAX)
}

/// `replicas` identical placeholder pods shaped like the template, as Karpenter builds them: the
/// template's labels (so spread and affinity count them), no node name, no claim-backed volumes (a
/// placeholder's claims would never exist), the lowest priority, marked unschedulable.
fn virtual_pods(
    key: &ObjectKey,
    template: &PodTemplateSpec,
    replicas: i32,
) -> Vec<(ObjectKey, Pod)> {
    let mut spec: PodSpec = template.spec.clone().unwrap_or_default();
    spec.node_name = None;
    let dropped: BTreeSet<String> = spec
        .volumes
        .iter()
        .flatten()
        .filter(|v| v.persistent_volume_claim.is_some() || v.ephemeral.is_some())
        .map(|v| v.name.clone())
        .collect();
    if let Some(volumes) = &mut spec.volumes {
        volumes.retain(|v| !dropped.contains(&v.name));
    }
    for c in spec
        .containers
        .iter_mut()
        .chain(spec.init_containers.iter_mut().flatten())
    {
        if let Some(mounts) = &mut c.volume_mounts {
            mounts.retain(|m| !dropped.contains(&m.name));
        }
    }
    spec.priority = Some(i32::MIN);
    let labels = template.metadata.as_ref().and_then(|m| m.labels.clone());
    (1..=replicas.max(0))
        .map(|i| {
            let name = format!("{VIRTUAL_PREFIX}{}/{i}", key.name);
            let pod = Pod {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(key.namespace.clone()),
                    labels: labels.clone(),
                    ..Default::default()
                },
                spec: Some(spec.clone()),
                status: Some(PodStatus {
                    conditions: Some(vec![PodCondition {
                        type_: "PodScheduled".into(),
                        status: "False".into(),
                        reason: Some("Unschedulable".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
            };
            (ObjectKey::namespaced(&key.namespace, name), pod)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(pairs: &[(&str, &str)]) -> Result<Resources, String> {
        let mut r = Resources::default();
        for (k, v) in pairs {
            r.set(k, quantity::parse(v).map_err(|e| e.to_string())?);
        }
        Ok(r)
    }

    #[test]
    fn replicas_and_percentage_take_the_larger_and_limits_cap_both() -> Result<(), String> {
        let req = res(&[("cpu", "500m"), ("memory", "1Gi")])?;
        assert_eq!(chunk_count(Some(3), None, None, None, &req), 3);
        // 20% of 10 is 2; the larger of 2 and 3.
        assert_eq!(chunk_count(Some(3), Some(20), Some(10), None, &req), 3);
        assert_eq!(chunk_count(Some(1), Some(20), Some(10), None, &req), 2);
        // Rounded up, and at least one chunk of a running workload.
        assert_eq!(chunk_count(None, Some(15), Some(10), None, &req), 2);
        assert_eq!(chunk_count(None, Some(1), Some(3), None, &req), 1);
        // A workload scaled to nothing asks nothing by percentage.
        assert_eq!(chunk_count(None, Some(50), Some(0), None, &req), 0);
        // 2 cpu hold 4 chunks of 500m: caps replicas, and sizes a buffer alone.
        let limits = res(&[("cpu", "2")])?;
        assert_eq!(chunk_count(Some(10), None, None, Some(&limits), &req), 4);
        assert_eq!(chunk_count(None, None, None, Some(&limits), &req), 4);
        assert_eq!(chunk_count(Some(2), None, None, Some(&limits), &req), 2);
        // The tightest resource decides; a limit on a resource not requested caps nothing.
        let limits = res(&[("cpu", "2"), ("memory", "1536Mi"), ("nvidia.com/gpu", "1")])?;
        assert_eq!(chunk_count(Some(10), None, None, Some(&limits), &req), 1);
        let limits = res(&[("nvidia.com/gpu", "1")])?;
        assert_eq!(chunk_count(Some(10), None, None, Some(&limits), &req), 10);
        assert_eq!(chunk_count(None, None, None, Some(&limits), &req), 0);
        assert_eq!(chunk_count(None, None, None, None, &req), 0);
        Ok(())
    }

    #[test]
    fn limits_read_integers_and_quantities_and_name_a_bad_one() -> Result<(), String> {
        let limits: BTreeMap<String, Value> = [
            ("cpu".to_string(), json!(4)),
            ("memory".to_string(), json!("8Gi")),
        ]
        .into();
        let parsed = parse_limits(Some(&limits))?.ok_or("no limits")?;
        assert_eq!(parsed.get("cpu"), Milli::from_units(4));
        let bad: BTreeMap<String, Value> = [("cpu".to_string(), json!("lots"))].into();
        assert!(parse_limits(Some(&bad)).is_err_and(|e| e.starts_with("limits.cpu")));
        Ok(())
    }

    #[test]
    fn chunks_carry_the_template_labels_but_no_claims_nor_node() -> Result<(), String> {
        let template: PodTemplateSpec = serde_json::from_value(json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "nodeName": "n1",
                "containers": [{"name": "c", "volumeMounts": [
                    {"name": "data", "mountPath": "/d"}, {"name": "cfg", "mountPath": "/c"}]}],
                "volumes": [
                    {"name": "data", "persistentVolumeClaim": {"claimName": "x"}},
                    {"name": "cfg", "configMap": {"name": "c"}}]
            }
        }))
        .map_err(|e| e.to_string())?;
        let key = ObjectKey::namespaced("default", "burst");
        let pods = virtual_pods(&key, &template, 2);
        assert_eq!(pods.len(), 2);
        let (k, pod) = &pods[1];
        assert!(is_virtual(k) && k.name == "capacitybuffer/burst/2");
        assert_eq!(buffer_of(k), Some(key));
        assert!(!is_virtual(&ObjectKey::namespaced(
            "default",
            "capacitybuffer-burst-2"
        )));
        let spec = pod.spec.as_ref().ok_or("no spec")?;
        assert_eq!(spec.node_name, None);
        assert_eq!(spec.priority, Some(i32::MIN));
        let volumes: Vec<&str> = spec
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(volumes, ["cfg"]);
        let mounts = spec.containers[0]
            .volume_mounts
            .as_ref()
            .ok_or("no mounts")?;
        assert_eq!(mounts.len(), 1);
        assert!(crate::state::is_provisionable(pod));
        assert_eq!(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("app"))
                .map(String::as_str),
            Some("web")
        );
        Ok(())
    }
}
