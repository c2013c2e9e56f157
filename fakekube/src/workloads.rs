//! Workload controllers, lite: Deployments keep their replica count of pods; pods on vanished nodes go.

use std::sync::Arc;

use dovetail::journal::Journal;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::FakeKube;

/// FNV-1a, for a stable pod-template hash in pod names.
fn template_hash(template: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in template.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x100000001b3);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..10)
        .map(|i| ALPHABET[((h >> (i * 6)) % ALPHABET.len() as u64) as usize] as char)
        .collect()
}

/// A pod from a template, owned by its controller.
fn pod_from_template(
    template: &Value,
    generate_name: &str,
    ns: &str,
    api_version: &str,
    kind: &str,
    owner: &str,
    uid: &str,
) -> Value {
    let mut meta = template["metadata"].clone();
    if !meta.is_object() {
        meta = json!({});
    }
    meta["generateName"] = json!(generate_name);
    meta["namespace"] = json!(ns);
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["ownerReferences"] = json!([{"apiVersion": api_version, "kind": kind, "name": owner, "uid": uid, "controller": true}]);
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"], "status": {"phase": "Pending"}})
}

fn owned_pods(st: &crate::store::Store, uid: &str) -> Vec<Value> {
    st.iter("Pod")
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|r| r.iter().any(|o| o["uid"] == uid))
        })
        .cloned()
        .collect()
}

/// Tolerations the DaemonSet controller adds to every daemon pod, so node conditions do not evict it.
const DAEMON_TOLERATIONS: [(&str, &str); 6] = [
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
];

/// A daemon pod's spec for one node: the template's, with the automatic tolerations and a required node
/// affinity on the node's name (`matchFields`, added to every term), as the DaemonSet controller writes it.
fn daemon_pod_spec(template: &Value, node: &str) -> Value {
    let mut spec = template["spec"].clone();
    if !spec["tolerations"].is_array() {
        spec["tolerations"] = json!([]);
    }
    if let Some(tols) = spec["tolerations"].as_array_mut() {
        for (key, effect) in DAEMON_TOLERATIONS {
            if !tols
                .iter()
                .any(|t| t["key"] == key && t["effect"] == effect)
            {
                tols.push(json!({"key": key, "operator": "Exists", "effect": effect}));
            }
        }
    }
    let pin = json!({"key": "metadata.name", "operator": "In", "values": [node]});
    let required =
        &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
    match required["nodeSelectorTerms"].as_array_mut() {
        Some(terms) if !terms.is_empty() => {
            for t in terms {
                t["matchFields"] = json!([pin.clone()]);
            }
        }
        _ => *required = json!({"nodeSelectorTerms": [{"matchFields": [pin]}]}),
    }
    spec
}

/// The node a daemon pod is for: where it is bound, or the node its `matchFields` pins it to.
fn daemon_target(pod: &Value) -> Option<&str> {
    pod["spec"]["nodeName"].as_str().or_else(|| {
        pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            ["nodeSelectorTerms"][0]["matchFields"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|f| f["key"] == "metadata.name")
            .and_then(|f| f["values"][0].as_str())
    })
}

/// Whether a daemon pod should run on a node: the template's node selector and affinity admit it, and
/// its tolerations (with the automatic ones) cover the node's NoSchedule and NoExecute taints.
fn daemon_admitted(template: &Value, node: &Value) -> bool {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let pod = json!({"spec": daemon_pod_spec(template, name)});
    let taints_ok = node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .all(|t| {
            !matches!(t["effect"].as_str(), Some("NoSchedule" | "NoExecute"))
                || crate::scheduler::tolerates(&pod, t)
        });
    taints_ok && crate::scheduler::node_affinity_admits(&pod, node)
}

/// The node lifecycle controller's taint for cordoned nodes: `node.kubernetes.io/unschedulable:NoSchedule`
/// while `spec.unschedulable` is true, gone when it is not.
fn cordon_taints(kube: &FakeKube) {
    const KEY: &str = "node.kubernetes.io/unschedulable";
    let mut st = kube.store();
    // Read every node in place; copy only the few whose taint must change.
    let changes: Vec<(String, Vec<Value>)> = st
        .iter("Node")
        .filter_map(|node| {
            let cordoned = node["spec"]["unschedulable"] == true;
            let taints = node["spec"]["taints"].as_array();
            let has = taints.is_some_and(|t| t.iter().any(|t| t["key"] == KEY));
            if cordoned == has {
                return None;
            }
            let mut taints = taints.cloned().unwrap_or_default();
            if cordoned {
                taints.push(json!({"key": KEY, "effect": "NoSchedule"}));
            } else {
                taints.retain(|t| t["key"] != KEY);
            }
            Some((node["metadata"]["name"].as_str()?.to_string(), taints))
        })
        .collect();
    for (name, taints) in changes {
        let _ = st.patch(
            "Node",
            "",
            &name,
            &json!({"spec": {"taints": taints}}),
            false,
        );
    }
}

/// Whether an object has a controlling owner.
fn has_controller(obj: &Value) -> bool {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|r| r.iter().any(|o| o["controller"] == true))
}

/// The disruption controller: keep every PDB's status current.
fn update_budgets(kube: &FakeKube) {
    let mut st = kube.store();
    for pdb in st.list("PodDisruptionBudget") {
        let Some(status) = crate::disruption::status(&st, &pdb) else {
            continue;
        };
        let (ns, name) = crate::store::ns_name(&pdb);
        let _ = st.patch(
            "PodDisruptionBudget",
            &ns,
            &name,
            &json!({"status": status.to_json()}),
            true,
        );
    }
}

pub struct Workloads {
    journal: Arc<dyn Journal>,
    /// The store's resourceVersion after the last step: the controllers here act on state alone, so with
    /// nothing written since there is nothing to do.
    seen_rv: Option<u64>,
}

impl Workloads {
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        Workloads {
            journal,
            seen_rv: None,
        }
    }

    pub fn step(&mut self, kube: &FakeKube, now: Timestamp) {
        let rv = kube.store().resource_version();
        if self.seen_rv == Some(rv) {
            return;
        }
        self.reconcile_deployments(kube, now);
        {
            let mut st = kube.store();
            for note in crate::statefulsets::reconcile(&mut st, now) {
                self.journal.record("workload", note);
            }
            crate::volumes::reconcile(&mut st, now);
        }
        self.reconcile_jobs(kube, now);
        cordon_taints(kube);
        self.reconcile_daemonsets(kube, now);
        self.collect_orphan_pods(kube, now);
        update_budgets(kube);
        self.seen_rv = Some(kube.store().resource_version());
    }

    /// Jobs: keep `parallelism` pods running until `completions` have succeeded, then mark it Complete.
    fn reconcile_jobs(&mut self, kube: &FakeKube, now: Timestamp) {
        let mut st = kube.store();
        for job in st.list("Job") {
            if !job["metadata"]["deletionTimestamp"].is_null()
                || job["status"]["completionTime"].is_string()
            {
                continue;
            }
            let uid = job["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (ns, name) = crate::store::ns_name(&job);
            let completions = job["spec"]["completions"].as_i64().unwrap_or(1).max(0);
            let parallelism = job["spec"]["parallelism"].as_i64().unwrap_or(1).max(0);
            let owned = owned_pods(&st, &uid);
            let succeeded = owned
                .iter()
                .filter(|p| p["status"]["phase"] == "Succeeded")
                .count() as i64;
            let active = owned
                .iter()
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")))
                .count() as i64;
            if succeeded >= completions {
                let status = json!({"status": {"succeeded": succeeded, "active": 0, "completionTime": now.to_string(),
                    "conditions": [{"type": "Complete", "status": "True"}]}});
                let _ = st.patch("Job", &ns, &name, &status, true);
                self.journal.record(
                    "workload",
                    format!("job/{ns}/{name} complete ({succeeded} succeeded)"),
                );
                continue;
            }
            let want = (parallelism.min(completions - succeeded) - active).max(0);
            for _ in 0..want {
                let pod = pod_from_template(
                    &job["spec"]["template"],
                    &format!("{name}-"),
                    &ns,
                    "batch/v1",
                    "Job",
                    &name,
                    &uid,
                );
                let _ = st.create("Pod", pod, now);
            }
            let status = json!({"status": {"succeeded": succeeded, "active": active + want}});
            let _ = st.patch("Job", &ns, &name, &status, true);
        }
    }

    /// DaemonSets: one pod for every node whose labels and taints admit it, pinned to that node by node
    /// affinity and left to the scheduler, which binds it when the node has room (pending otherwise).
    /// A daemon pod still pending for a node that is gone or no longer admits it is deleted.
    fn reconcile_daemonsets(&mut self, kube: &FakeKube, now: Timestamp) {
        let mut st = kube.store();
        let nodes = st.list("Node");
        for ds in st.list("DaemonSet") {
            if !ds["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let uid = ds["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (ns, name) = crate::store::ns_name(&ds);
            let template = &ds["spec"]["template"];
            let owned = owned_pods(&st, &uid);
            for p in &owned {
                let wanted = daemon_target(p).is_some_and(|target| {
                    nodes.iter().any(|n| {
                        n["metadata"]["name"] == target
                            && n["metadata"]["deletionTimestamp"].is_null()
                            && daemon_admitted(template, n)
                    })
                });
                // A failed daemon pod is replaced (the real controller backs off; the kubelet here only
                // fails pods the scheduler should never have bound).
                if (!wanted && p["spec"]["nodeName"].is_null()) || p["status"]["phase"] == "Failed"
                {
                    let (pns, pname) = crate::store::ns_name(p);
                    let _ = st.delete("Pod", &pns, &pname, now);
                }
            }
            let mut created = 0;
            for node in &nodes {
                let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
                if !node["metadata"]["deletionTimestamp"].is_null()
                    || !daemon_admitted(template, node)
                {
                    continue;
                }
                if owned.iter().any(|p| {
                    daemon_target(p) == Some(node_name)
                        && !matches!(p["status"]["phase"].as_str(), Some("Failed"))
                }) {
                    continue;
                }
                let mut pod = pod_from_template(
                    template,
                    &format!("{name}-"),
                    &ns,
                    "apps/v1",
                    "DaemonSet",
                    &name,
                    &uid,
                );
                pod["spec"] = daemon_pod_spec(template, node_name);
                if st.create("Pod", pod, now).is_ok() {
                    created += 1;
                }
            }
            if created > 0 {
                self.journal.record(
                    "workload",
                    format!("daemonset/{ns}/{name} created {created} pods"),
                );
            }
        }
    }

    /// Deployments, and ReplicaSets of their own (one a Deployment owns is that Deployment's business: its
    /// pods are the Deployment's here): keep `replicas` live pods.
    fn reconcile_deployments(&mut self, kube: &FakeKube, now: Timestamp) {
        let mut st = kube.store();
        let sets = st.list("Deployment").into_iter().chain(
            st.list("ReplicaSet")
                .into_iter()
                .filter(|rs| !has_controller(rs)),
        );
        for d in sets.collect::<Vec<_>>() {
            if !d["metadata"]["deletionTimestamp"].is_null() {
                continue;
            }
            let kind = d["kind"].as_str().unwrap_or("Deployment").to_string();
            let uid = d["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let (ns, name) = crate::store::ns_name(&d);
            let want = d["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
            // (unbound, creationTimestamp, name) of each live pod it owns: all a ReplicaSet needs to choose.
            // A pod that failed or finished (a kubelet's `OutOfcpu`) is not active: it gets a replacement.
            let mut owned: Vec<(bool, String, String)> = st
                .iter("Pod")
                .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
                .filter(|p| !matches!(p["status"]["phase"].as_str(), Some("Failed" | "Succeeded")))
                .filter(|p| {
                    p["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|r| r.iter().any(|o| o["uid"] == uid.as_str()))
                })
                .map(|p| {
                    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
                    (
                        p["spec"]["nodeName"].is_null(),
                        text(&p["metadata"]["creationTimestamp"]),
                        text(&p["metadata"]["name"]),
                    )
                })
                .collect();
            let template = &d["spec"]["template"];
            let hash = template_hash(template);
            if owned.len() < want {
                let missing = want - owned.len();
                for _ in 0..missing {
                    let mut meta = template["metadata"].clone();
                    if !meta.is_object() {
                        meta = json!({});
                    }
                    meta["generateName"] = json!(format!("{name}-{hash}-"));
                    meta["namespace"] = json!(ns);
                    meta["labels"]["pod-template-hash"] = json!(hash);
                    meta["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}]);
                    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": template["spec"], "status": {"phase": "Pending"}});
                    let _ = st.create("Pod", pod, now);
                }
                self.journal.record(
                    "workload",
                    format!(
                        "{}/{ns}/{name} created {missing} pods ({want} desired)",
                        kind.to_lowercase()
                    ),
                );
            } else if owned.len() > want {
                // Like a ReplicaSet: remove unscheduled pods first, then the newest.
                owned.sort_by(|a, b| b.cmp(a));
                let extra = owned.len() - want;
                for (_, _, pod) in owned.iter().take(extra) {
                    let _ = st.delete("Pod", &ns, pod, now);
                }
                self.journal.record(
                    "workload",
                    format!(
                        "{}/{ns}/{name} deleted {extra} pods ({want} desired)",
                        kind.to_lowercase()
                    ),
                );
            }
        }
    }

    /// The pod garbage collector: pods bound to a node that no longer exists are deleted.
    fn collect_orphan_pods(&mut self, kube: &FakeKube, now: Timestamp) {
        let mut st = kube.store();
        let orphans: Vec<(String, String)> = st
            .iter("Pod")
            .filter(|p| {
                p["spec"]["nodeName"]
                    .as_str()
                    .is_some_and(|node| st.get("Node", "", node).is_none())
            })
            .map(crate::store::ns_name)
            .collect();
        for (ns, name) in orphans {
            let _ = st.delete("Pod", &ns, &name, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use dovetail::clock::Clock;
    use dovetail::journal::LogJournal;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng;
    use std::time::Duration;

    struct Fixed;
    #[async_trait::async_trait]
    impl Clock for Fixed {
        fn now(&self) -> Timestamp {
            Timestamp::UNIX_EPOCH
        }
        async fn sleep(&self, _: Duration) {}
    }

    #[test]
    fn a_deployment_keeps_its_replica_count() {
        let kube = FakeKube::new(
            Store::new(ChaCha8Rng::seed_from_u64(1)),
            Arc::new(Fixed),
            Duration::ZERO,
        );
        let now = Timestamp::UNIX_EPOCH;
        kube.store()
            .create("Deployment", json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 3, "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}}}), now)
            .unwrap();
        let mut w = Workloads::new(Arc::new(LogJournal));
        w.step(&kube, now);
        w.step(&kube, now);
        assert_eq!(kube.store().list("Pod").len(), 3);
        kube.store()
            .patch(
                "Deployment",
                "default",
                "web",
                &json!({"spec": {"replicas": 1}}),
                false,
            )
            .unwrap();
        w.step(&kube, now);
        assert_eq!(kube.store().list("Pod").len(), 1);
        // A pod the kubelet refused is replaced, as a ReplicaSet replaces inactive pods.
        let name = kube.store().list("Pod")[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_string();
        kube.store()
            .patch(
                "Pod",
                "default",
                &name,
                &json!({"status": {"phase": "Failed", "reason": "OutOfcpu"}}),
                true,
            )
            .unwrap();
        w.step(&kube, now);
        assert_eq!(kube.store().list("Pod").len(), 2);
    }
}
