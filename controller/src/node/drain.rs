//! The drain's rules (pure): which pods leave, in which order (Karpenter's groups), which stay, and when
//! the node's terminationGracePeriod turns evictions into deletions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use crate::crds::{Taint, labels};
use crate::kube::ObjectKey;
use crate::scheduling::taints::tolerates;

/// A pod's own grace period when it does not set one (the API server's default).
const DEFAULT_POD_GRACE: Duration = Duration::from_secs(30);

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

pub(crate) fn disrupted_taint() -> Taint {
    Taint {
        key: labels::DISRUPTED_TAINT.to_string(),
        value: None,
        effect: "NoSchedule".to_string(),
        time_added: None,
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
}
