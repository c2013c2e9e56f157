//! Node termination: the `karpenter.sh/disrupted` taint, a drain through the eviction API in Karpenter's
//! order, the terminationGracePeriod deadline, then the instance and the finalizers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Node, Pod};
use serde_json::json;

use crate::crds::{NodeClaim, Taint, labels};
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::run::Controller;
use crate::scheduling::taints::tolerates;

/// The taint the kubelet's node controller puts on a node whose kubelet stopped answering.
const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
/// A pod's own grace period when it does not set one (the API server's default).
const DEFAULT_POD_GRACE: Duration = Duration::from_secs(30);
/// Refused evictions are retried after 1, 2, 4, 8, then every 10 seconds.
const EVICTION_RETRY_MAX: Duration = Duration::from_secs(10);

/// Which pods leave first. A group is evicted only once every pod of the groups before it is gone, so
/// that logging and monitoring DaemonSets and critical add-ons outlive the workloads they serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DrainGroup {
    Workload,
    Daemon,
    CriticalWorkload,
    CriticalDaemon,
}

/// How the drain treats one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Left where it is: it finished, it is a static pod, or it tolerates the disrupted taint.
    Ignored,
    Drain(DrainGroup),
}

/// What to do with a pod in this pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodAction {
    /// Through the eviction API, which honours PodDisruptionBudgets.
    Evict(ObjectKey),
    /// A plain delete: the node's terminationGracePeriod leaves no more time for budgets.
    Delete(ObjectKey),
}

/// One pass of the drain.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DrainStep {
    pub actions: Vec<PodAction>,
    /// Pods that must still leave before the instance may go.
    pub remaining: usize,
    /// Pods kept by `karpenter.sh/do-not-disrupt` until the deadline.
    pub held: Vec<ObjectKey>,
    /// Nothing is left to wait for (or the terminationGracePeriod ran out).
    pub drained: bool,
}

fn is_daemon(pod: &Pod) -> bool {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.kind == "DaemonSet")
}

fn is_static(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
        || pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "Node")
}

fn is_critical(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.priority_class_name.as_deref())
        .is_some_and(|p| p == "system-cluster-critical" || p == "system-node-critical")
}

/// `karpenter.sh/do-not-disrupt: "true"` on the pod.
pub fn do_not_disrupt(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(labels::DO_NOT_DISRUPT))
        .is_some_and(|v| v == "true")
}

fn disrupted_taint() -> Taint {
    Taint {
        key: labels::DISRUPTED_TAINT.to_string(),
        value: None,
        effect: "NoSchedule".to_string(),
    }
}

/// How the drain treats `pod` (Karpenter's rules: succeeded / failed pods, static pods and pods that
/// tolerate `karpenter.sh/disrupted:NoSchedule` stay).
pub fn disposition(pod: &Pod) -> Disposition {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded") | Some("Failed")) || is_static(pod) {
        return Disposition::Ignored;
    }
    let taint = disrupted_taint();
    let tolerations = pod.spec.as_ref().and_then(|s| s.tolerations.as_deref());
    if tolerations
        .into_iter()
        .flatten()
        .any(|t| tolerates(t, &taint))
    {
        return Disposition::Ignored;
    }
    Disposition::Drain(match (is_critical(pod), is_daemon(pod)) {
        (false, false) => DrainGroup::Workload,
        (false, true) => DrainGroup::Daemon,
        (true, false) => DrainGroup::CriticalWorkload,
        (true, true) => DrainGroup::CriticalDaemon,
    })
}

fn pod_grace(pod: &Pod) -> Duration {
    pod.spec
        .as_ref()
        .and_then(|s| s.termination_grace_period_seconds)
        .map_or(DEFAULT_POD_GRACE, |s| Duration::from_secs(s.max(0) as u64))
}

/// The drain's next pass over the pods bound to a node. `deadline` is when the node's
/// terminationGracePeriod runs out (None: the drain waits as long as budgets make it).
pub fn plan_drain(
    pods: &[(ObjectKey, &Pod)],
    now: Timestamp,
    deadline: Option<Timestamp>,
) -> DrainStep {
    let mut groups: BTreeMap<DrainGroup, Vec<&(ObjectKey, &Pod)>> = BTreeMap::new();
    for entry in pods {
        if let Disposition::Drain(g) = disposition(entry.1) {
            groups.entry(g).or_default().push(entry);
        }
    }
    let mut step = DrainStep {
        remaining: groups.values().map(Vec::len).sum(),
        ..DrainStep::default()
    };
    let out_of_time = deadline.is_some_and(|d| now >= d);
    if step.remaining == 0 || out_of_time {
        step.drained = true;
    }
    let mut deleted: BTreeSet<&ObjectKey> = BTreeSet::new();
    if let Some(deadline) = deadline {
        // Delete early enough that each pod still gets its own grace period before the node goes.
        for (key, pod) in groups.values().flatten().map(|e| (&e.0, e.1)) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let start = deadline
                .checked_sub(jiff::SignedDuration::try_from(pod_grace(pod)).unwrap_or_default())
                .unwrap_or(deadline);
            if now >= start {
                deleted.insert(key);
                step.actions.push(PodAction::Delete(key.clone()));
            }
        }
    }
    if let Some(first) = groups.values().next() {
        for (key, pod) in first.iter().map(|e| (&e.0, e.1)) {
            if pod.metadata.deletion_timestamp.is_some() || deleted.contains(key) {
                continue;
            }
            if do_not_disrupt(pod) {
                step.held.push(key.clone());
            } else {
                step.actions.push(PodAction::Evict(key.clone()));
            }
        }
    }
    step
}

/// Refused evictions and when each may be tried again.
#[derive(Debug, Default)]
pub struct EvictionRetries(BTreeMap<ObjectKey, (Duration, u32)>);

impl EvictionRetries {
    fn due(&self, key: &ObjectKey, now: Duration) -> bool {
        self.0.get(key).is_none_or(|(at, _)| now >= *at)
    }

    /// Note a refusal; returns how many times this pod has been refused.
    fn refused(&mut self, key: &ObjectKey, now: Duration) -> u32 {
        let entry = self.0.entry(key.clone()).or_insert((now, 0));
        entry.1 += 1;
        let pause = Duration::from_secs(1u64 << (entry.1 - 1).min(4)).min(EVICTION_RETRY_MAX);
        entry.0 = now + pause;
        entry.1
    }
}

fn has_taint(node: &Node, key: &str) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == key))
}

fn has_finalizer(node: &Node) -> bool {
    node.metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == labels::TERMINATION_FINALIZER)
}

impl Controller {
    /// The claim a node belongs to: by the node name it recorded, or by provider id.
    pub(crate) fn claim_of_node(&self, node: &Node) -> Option<&NodeClaim> {
        let name = node.metadata.name.as_deref()?;
        let provider = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
        self.state.nodeclaims.values().find(|c| {
            let st = c.status.as_ref();
            st.and_then(|s| s.node_name.as_deref()) == Some(name)
                || (provider.is_some() && st.and_then(|s| s.provider_id.as_deref()) == provider)
        })
    }

    /// Nodes being deleted that carry Dovetail's finalizer: taint, drain, terminate, release.
    pub(crate) async fn reconcile_node_terminations(&mut self) -> Result<(), ControllerError> {
        let names: Vec<String> = self
            .state
            .nodes
            .iter()
            .filter(|(_, n)| n.metadata.deletion_timestamp.is_some() && has_finalizer(n))
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            match self.terminate_node(&name).await {
                Ok(()) => {}
                Err(ControllerError::Kube(
                    KubeError::Conflict { .. } | KubeError::NotFound { .. },
                )) => {}
                Err(e) => return Err(e),
            }
        }
        let pods = &self.state.pods;
        self.eviction_retries.0.retain(|k, _| pods.contains_key(k));
        Ok(())
    }

    async fn terminate_node(&mut self, name: &str) -> Result<(), ControllerError> {
        let Some(node) = self.state.nodes.get(name).cloned() else {
            return Ok(());
        };
        let Some(claim) = self.claim_of_node(&node).cloned() else {
            // Karpenter's rule: with the claim gone there is nothing left to drain for; GC handles the
            // instance if one is still running.
            self.ctx.journal.record(
                "termination",
                format!("node/{name} has no NodeClaim; releasing it"),
            );
            return self
                .release(Kind::Node, name, node.metadata.finalizers.clone())
                .await;
        };
        let claim_name = claim.metadata.name.clone().unwrap_or_default();
        if !has_taint(&node, labels::DISRUPTED_TAINT) {
            self.taint_disrupted(&node).await?;
        }
        let now = self.ctx.clock.now();
        let deleted_at = node
            .metadata
            .deletion_timestamp
            .as_ref()
            .map_or(now, |t| t.0);
        let grace = claim
            .spec
            .termination_grace_period
            .as_deref()
            .and_then(|g| crate::duration::parse_or_never(g).ok().flatten());
        let deadline = grace.and_then(|g| {
            jiff::SignedDuration::try_from(g)
                .ok()
                .and_then(|g| deleted_at.checked_add(g).ok())
        });
        // A node whose kubelet is gone cannot shut its pods down; Kubernetes removes them itself.
        let kubelet_gone =
            has_taint(&node, UNREACHABLE_TAINT) || self.instance_gone.contains(&claim_name);
        let step = if kubelet_gone {
            DrainStep {
                drained: true,
                ..DrainStep::default()
            }
        } else {
            let pods: Vec<(ObjectKey, &Pod)> = self
                .state
                .pods
                .iter()
                .filter(|(_, p)| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name))
                .map(|(k, p)| (k.clone(), p))
                .collect();
            plan_drain(&pods, now, deadline)
        };
        self.carry_out_drain(&node, &step).await?;
        if !step.drained {
            return Ok(());
        }
        let waited = crate::clock::since(now, deleted_at);
        let forced = if step.remaining > 0 && !kubelet_gone {
            format!(
                "; terminationGracePeriod ran out with {} pods left",
                step.remaining
            )
        } else {
            String::new()
        };
        self.ctx.journal.record(
            "termination",
            format!(
                "node/{name} drained after {}s{forced}; terminating nodeclaim/{claim_name}",
                waited.as_secs()
            ),
        );
        if claim.metadata.deletion_timestamp.is_none() {
            self.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&claim_name))
                .await?;
        }
        if let Some(id) = crate::gc::instance_id(&claim) {
            match self.ctx.cloud.terminate_instances(vec![id.clone()]).await {
                Ok(()) => {
                    self.count(crate::metrics::NODECLAIMS_TERMINATED, &claim);
                    self.ctx
                        .journal
                        .record("termination", format!("terminate {id} for node/{name}"))
                }
                Err(e) if e.code == "InvalidInstanceID.NotFound" => {}
                Err(e) => return Err(e.into()),
            }
        }
        // The claim's own finalizer need not ask EC2 again.
        self.instance_gone.insert(claim_name);
        self.release(Kind::Node, name, node.metadata.finalizers.clone())
            .await
    }

    /// Keep new pods off a node that is going: `karpenter.sh/disrupted:NoSchedule`.
    async fn taint_disrupted(&mut self, node: &Node) -> Result<(), ControllerError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        self.write_disrupted_taint(node, true).await?;
        self.ctx.journal.record(
            "termination",
            format!(
                "node/{name} tainted {}:NoSchedule; draining",
                labels::DISRUPTED_TAINT
            ),
        );
        let uid = node.metadata.uid.clone();
        self.emit_event(
            Kind::Node,
            &ObjectKey::cluster(&name),
            uid,
            EventType::Normal,
            "DisruptionTerminating",
            "Draining the node through the eviction API before its instance is terminated",
        )
        .await;
        Ok(())
    }

    /// Add or remove `karpenter.sh/disrupted:NoSchedule`, keeping the node's other taints, and update the
    /// cache. The resourceVersion makes the list replacement safe against a concurrent taint change.
    pub(crate) async fn write_disrupted_taint(
        &mut self,
        node: &Node,
        on: bool,
    ) -> Result<(), ControllerError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let mut taints: Vec<serde_json::Value> = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|t| t.key != labels::DISRUPTED_TAINT)
            .map(|t| serde_json::to_value(t).unwrap_or_default())
            .collect();
        if on {
            taints.push(serde_json::to_value(disrupted_taint()).unwrap_or_default());
        }
        let updated = self
            .ctx
            .kube
            .patch(
                Kind::Node,
                &ObjectKey::cluster(&name),
                json!({"metadata": {"resourceVersion": node.metadata.resource_version}, "spec": {"taints": taints}}),
            )
            .await?;
        self.state
            .apply_event(Kind::Node, crate::kube::WatchEvent::Modified(updated))?;
        Ok(())
    }

    /// Evict and delete as the step says; refused evictions wait their retry time.
    async fn carry_out_drain(
        &mut self,
        node: &Node,
        step: &DrainStep,
    ) -> Result<(), ControllerError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = self.now();
        let mut evicted: Vec<String> = Vec::new();
        // Refusals grouped by reason: one budget usually refuses many pods for the same reason.
        let mut refused: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut deleted: Vec<String> = Vec::new();
        for action in &step.actions {
            match action {
                PodAction::Evict(key) => {
                    if !self.eviction_retries.due(key, now) {
                        continue;
                    }
                    match self.ctx.kube.evict(key).await {
                        Ok(()) | Err(KubeError::NotFound { .. }) => evicted.push(key.to_string()),
                        Err(KubeError::EvictionRefused { reason, .. }) => {
                            if self.eviction_retries.refused(key, now) == 1 {
                                refused.entry(reason).or_default().push(key.to_string());
                            }
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                PodAction::Delete(key) => match self.ctx.kube.delete(Kind::Pod, key).await {
                    Ok(()) | Err(KubeError::NotFound { .. }) => deleted.push(key.to_string()),
                    Err(e) => return Err(e.into()),
                },
            }
        }
        let list = |v: &[String]| match v {
            [one] => format!("pod/{one}"),
            [first, rest @ ..] => format!("pod/{first} +{} more", rest.len()),
            [] => String::new(),
        };
        if !evicted.is_empty() {
            self.ctx.journal.record(
                "termination",
                format!(
                    "node/{name} evicted {} pods ({})",
                    evicted.len(),
                    list(&evicted)
                ),
            );
        }
        if !deleted.is_empty() {
            self.ctx.journal.record(
                "termination",
                format!(
                    "node/{name} terminationGracePeriod: deleted {} pods ({})",
                    deleted.len(),
                    list(&deleted)
                ),
            );
        }
        for (reason, pods) in &refused {
            let message = format!(
                "eviction refused for {} pods ({}): {reason}; retrying",
                pods.len(),
                list(pods)
            );
            self.ctx
                .journal
                .record("termination", format!("node/{name} {message}"));
            let uid = node.metadata.uid.clone();
            self.emit_event(
                Kind::Node,
                &ObjectKey::cluster(&name),
                uid,
                EventType::Warning,
                "FailedDraining",
                &message,
            )
            .await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{PodSpec, PodStatus, Toleration};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

    fn pod(name: &str) -> (ObjectKey, Pod) {
        let p = Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                ..Default::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..Default::default()
            }),
        };
        (ObjectKey::namespaced("default", name), p)
    }

    fn daemon(mut p: (ObjectKey, Pod)) -> (ObjectKey, Pod) {
        p.1.metadata.owner_references = Some(vec![OwnerReference {
            kind: "DaemonSet".into(),
            name: "ds".into(),
            ..Default::default()
        }]);
        p
    }

    fn critical(mut p: (ObjectKey, Pod)) -> (ObjectKey, Pod) {
        p.1.spec.as_mut().unwrap().priority_class_name = Some("system-node-critical".into());
        p
    }

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn run(pods: &[(ObjectKey, Pod)], now: &str, deadline: Option<&str>) -> DrainStep {
        let refs: Vec<(ObjectKey, &Pod)> = pods.iter().map(|(k, p)| (k.clone(), p)).collect();
        plan_drain(&refs, t(now), deadline.map(t))
    }

    fn evicted(step: &DrainStep) -> Vec<String> {
        step.actions
            .iter()
            .filter_map(|a| match a {
                PodAction::Evict(k) => Some(k.name.clone()),
                PodAction::Delete(_) => None,
            })
            .collect()
    }

    const NOW: &str = "2026-01-01T00:00:00Z";

    #[test]
    fn workloads_first_then_daemons_then_critical() {
        let mut pods = vec![
            critical(daemon(pod("cd"))),
            critical(pod("cw")),
            daemon(pod("d")),
            pod("w1"),
            pod("w2"),
        ];
        let step = run(&pods, NOW, None);
        assert_eq!(evicted(&step), ["w1", "w2"]);
        assert_eq!(step.remaining, 5);
        assert!(!step.drained);
        // A workload still terminating holds the next group back.
        pods[3].1.metadata.deletion_timestamp = Some(Time(t(NOW)));
        pods.remove(4);
        assert_eq!(evicted(&run(&pods, NOW, None)), Vec::<String>::new());
        pods.remove(3);
        assert_eq!(evicted(&run(&pods, NOW, None)), ["d"]);
        pods.remove(2);
        assert_eq!(evicted(&run(&pods, NOW, None)), ["cw"]);
        pods.remove(1);
        assert_eq!(evicted(&run(&pods, NOW, None)), ["cd"]);
        pods.remove(0);
        assert!(run(&pods, NOW, None).drained);
    }

    #[test]
    fn finished_static_and_tolerating_pods_stay() {
        let mut done = pod("done");
        done.1.status.as_mut().unwrap().phase = Some("Succeeded".into());
        let mut mirror = pod("mirror");
        mirror.1.metadata.annotations =
            Some([("kubernetes.io/config.mirror".to_string(), "x".to_string())].into());
        let mut tolerant = pod("tolerant");
        tolerant.1.spec.as_mut().unwrap().tolerations = Some(vec![Toleration {
            key: Some(labels::DISRUPTED_TAINT.into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }]);
        let step = run(&[done, mirror, tolerant], NOW, None);
        assert!(step.drained);
        assert!(step.actions.is_empty());
    }

    #[test]
    fn do_not_disrupt_waits_for_the_deadline_then_is_deleted_in_time() {
        let mut keep = pod("keep");
        keep.1.metadata.annotations =
            Some([(labels::DO_NOT_DISRUPT.to_string(), "true".to_string())].into());
        keep.1
            .spec
            .as_mut()
            .unwrap()
            .termination_grace_period_seconds = Some(60);
        let pods = vec![keep, pod("w")];
        let deadline = "2026-01-01T00:10:00Z";
        let step = run(&pods, NOW, Some(deadline));
        assert_eq!(evicted(&step), ["w"]);
        assert_eq!(step.held, [ObjectKey::namespaced("default", "keep")]);
        assert!(!step.drained);
        // One minute before the deadline the held pod is deleted, so its 60 s grace period fits; the
        // other pod (30 s default grace) is not deleted yet.
        let step = run(&pods, "2026-01-01T00:09:00Z", Some(deadline));
        assert!(
            step.actions
                .contains(&PodAction::Delete(ObjectKey::namespaced("default", "keep")))
        );
        assert!(
            !step
                .actions
                .contains(&PodAction::Delete(ObjectKey::namespaced("default", "w")))
        );
        // At the deadline the node goes whatever is left.
        assert!(run(&pods, deadline, Some(deadline)).drained);
    }

    #[test]
    fn refused_evictions_back_off_up_to_ten_seconds() {
        let mut r = EvictionRetries::default();
        let k = ObjectKey::namespaced("a", "b");
        let now = Duration::from_secs(100);
        assert!(r.due(&k, now));
        let mut pauses = Vec::new();
        let mut at = now;
        for _ in 0..6 {
            r.refused(&k, at);
            let next = r.0[&k].0;
            pauses.push((next - at).as_secs());
            assert!(!r.due(&k, at));
            at = next;
            assert!(r.due(&k, at));
        }
        assert_eq!(pauses, [1, 2, 4, 8, 10, 10]);
    }
}
