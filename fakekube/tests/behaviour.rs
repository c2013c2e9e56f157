//! One test per Kubernetes behaviour fakekube models, on a manual clock.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dovetail::clock::{Clock, ManualClock};
use dovetail::journal::Journal;
use dovetail::kube::{Kind, Kube, KubeError, ObjectKey, WatchEvent};
use fakekube::scheduler::Scheduler;
use fakekube::workloads::Workloads;
use fakekube::{FakeKube, Kubelets, Machine, Store};
use futures::StreamExt;
use futures::executor::block_on;
use jiff::Timestamp;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde_json::{Value, json};

struct Silent;
impl Journal for Silent {
    fn record(&self, _: &'static str, _: String) {}
}

struct World {
    kube: FakeKube,
    clock: ManualClock,
    scheduler: Scheduler,
    workloads: Workloads,
}

fn world() -> World {
    let clock = ManualClock::starting_at(Timestamp::from_second(1_767_225_600).unwrap());
    let kube = FakeKube::new(
        Store::new(ChaCha8Rng::seed_from_u64(1)),
        Arc::new(clock.clone()),
        Duration::from_millis(5),
    );
    World {
        kube,
        clock,
        scheduler: Scheduler::new(Arc::new(Silent)),
        workloads: Workloads::new(Arc::new(Silent)),
    }
}

impl World {
    fn now(&self) -> Timestamp {
        self.clock.now()
    }
    fn create(&self, kind: &str, v: Value) -> Value {
        self.kube.store().create(kind, v, self.now()).unwrap()
    }
    fn node(&self, name: &str, labels: Value, cpu: &str, taints: Value) {
        let mut l = json!({"kubernetes.io/hostname": name});
        for (k, v) in labels.as_object().unwrap() {
            l[k] = v.clone();
        }
        self.create(
            "Node",
            json!({"metadata": {"name": name, "labels": l}, "spec": {"taints": taints},
                "status": {"allocatable": {"cpu": cpu, "memory": "16Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True"}]}}),
        );
    }
    fn pod(&self, name: &str, labels: Value, spec_extra: Value) {
        let mut spec =
            json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "500m"}}}]});
        for (k, v) in spec_extra.as_object().unwrap() {
            spec[k] = v.clone();
        }
        self.create("Pod", json!({"metadata": {"name": name, "namespace": "default", "labels": labels}, "spec": spec, "status": {"phase": "Pending"}}));
    }
    fn schedule(&mut self) {
        let now = self.now();
        self.scheduler.schedule(&self.kube, now);
    }
    fn node_of(&self, pod: &str) -> Option<String> {
        self.kube
            .store()
            .get("Pod", "default", pod)
            .and_then(|p| p["spec"]["nodeName"].as_str().map(String::from))
    }
    fn unschedulable_message(&self, pod: &str) -> String {
        let p = self
            .kube
            .store()
            .get("Pod", "default", pod)
            .cloned()
            .unwrap();
        p["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "PodScheduled")
            .unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string()
    }
    fn run_pods(&self) {
        let mut st = self.kube.store();
        for p in st.list("Pod") {
            if p["spec"]["nodeName"].is_string() && p["status"]["phase"] != "Running" {
                let ns = p["metadata"]["namespace"].as_str().unwrap().to_string();
                let name = p["metadata"]["name"].as_str().unwrap().to_string();
                st.patch("Pod", &ns, &name, &json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}), true).unwrap();
            }
        }
    }
}

// ---- store and API -------------------------------------------------------------------------------------

#[test]
fn watches_deliver_in_commit_order_and_resume_from_a_version() {
    let w = world();
    let list = block_on(w.kube.list(Kind::Pod)).unwrap();
    w.pod("a", json!({}), json!({}));
    let after_a = block_on(w.kube.list(Kind::Pod)).unwrap().resource_version;
    w.pod("b", json!({}), json!({}));
    w.kube
        .store()
        .patch(
            "Pod",
            "default",
            "a",
            &json!({"metadata": {"labels": {"x": "1"}}}),
            false,
        )
        .unwrap();
    block_on(
        w.kube
            .delete(Kind::Pod, &ObjectKey::namespaced("default", "b")),
    )
    .unwrap();
    let names = |events: Vec<WatchEvent>| -> Vec<String> {
        events
            .into_iter()
            .map(|e| match e {
                WatchEvent::Added(v) => format!("+{}", v["metadata"]["name"].as_str().unwrap()),
                WatchEvent::Modified(v) => format!("~{}", v["metadata"]["name"].as_str().unwrap()),
                WatchEvent::Deleted(v) => format!("-{}", v["metadata"]["name"].as_str().unwrap()),
                WatchEvent::Expired => "expired".into(),
            })
            .collect()
    };
    let all = block_on(
        w.kube
            .watch(Kind::Pod, &list.resource_version)
            .take(4)
            .collect::<Vec<_>>(),
    );
    assert_eq!(names(all), ["+a", "+b", "~a", "-b"]);
    let resumed = block_on(
        w.kube
            .watch(Kind::Pod, &after_a)
            .take(3)
            .collect::<Vec<_>>(),
    );
    assert_eq!(names(resumed), ["+b", "~a", "-b"]);
    w.kube.store().compact(1);
    let expired = block_on(
        w.kube
            .watch(Kind::Pod, &list.resource_version)
            .take(1)
            .collect::<Vec<_>>(),
    );
    assert_eq!(expired, vec![WatchEvent::Expired]);
}

#[test]
fn a_stale_write_conflicts() {
    let w = world();
    let n = w.create("Node", json!({"metadata": {"name": "n"}}));
    let stale = n["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    block_on(w.kube.patch(
        Kind::Node,
        &ObjectKey::cluster("n"),
        json!({"metadata": {"labels": {"a": "1"}}}),
    ))
    .unwrap();
    let err = block_on(w.kube.patch(
        Kind::Node,
        &ObjectKey::cluster("n"),
        json!({"metadata": {"resourceVersion": stale, "labels": {"a": "2"}}}),
    ));
    assert!(matches!(err, Err(KubeError::Conflict { .. })), "{err:?}");
}

#[test]
fn finalizers_hold_deletion() {
    let w = world();
    w.create(
        "NodeClaim",
        json!({"metadata": {"name": "c", "finalizers": ["karpenter.sh/termination"]}}),
    );
    block_on(w.kube.delete(Kind::NodeClaim, &ObjectKey::cluster("c"))).unwrap();
    let held = block_on(w.kube.get(Kind::NodeClaim, &ObjectKey::cluster("c")))
        .unwrap()
        .unwrap();
    assert!(held["metadata"]["deletionTimestamp"].is_string());
    block_on(w.kube.patch(
        Kind::NodeClaim,
        &ObjectKey::cluster("c"),
        json!({"metadata": {"finalizers": null}}),
    ))
    .unwrap();
    assert!(
        block_on(w.kube.get(Kind::NodeClaim, &ObjectKey::cluster("c")))
            .unwrap()
            .is_none()
    );
}

#[test]
fn an_outage_fails_every_call_until_it_ends() {
    let w = world();
    w.kube
        .set_unavailable(w.now().checked_add(Duration::from_secs(60)).unwrap());
    assert!(matches!(
        block_on(w.kube.list(Kind::Node)),
        Err(KubeError::Unavailable(_))
    ));
    w.clock.advance(Duration::from_secs(60));
    assert!(block_on(w.kube.list(Kind::Node)).is_ok());
}

#[test]
fn a_watch_disconnect_ends_the_stream() {
    let w = world();
    let mut watch = w.kube.watch(Kind::Node, "0");
    w.kube.disconnect_watches();
    assert_eq!(block_on(watch.next()), None);
}

// ---- eviction and budgets ------------------------------------------------------------------------------

#[test]
fn eviction_is_refused_by_a_pdb_and_allowed_once_a_replacement_is_ready() {
    let mut w = world();
    w.node("n1", json!({}), "8", json!([]));
    w.create("Deployment", json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 2,
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}}}));
    w.create("PodDisruptionBudget", json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "web"}}}}));
    let now = w.now();
    w.workloads.step(&w.kube, now);
    w.schedule();
    w.run_pods();
    w.workloads.step(&w.kube, now);
    let victim = w.kube.store().list("Pod")[0]["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    let err = block_on(w.kube.evict(&ObjectKey::namespaced("default", &victim)));
    assert!(
        matches!(&err, Err(KubeError::EvictionRefused { reason, .. }) if reason.contains("default/web")),
        "{err:?}"
    );
    let pdb = w
        .kube
        .store()
        .get("PodDisruptionBudget", "default", "web")
        .cloned()
        .unwrap();
    assert_eq!(pdb["status"]["disruptionsAllowed"], 0);
    // Scale up: once the third pod is Ready, one disruption is allowed.
    w.kube
        .store()
        .patch(
            "Deployment",
            "default",
            "web",
            &json!({"spec": {"replicas": 3}}),
            false,
        )
        .unwrap();
    w.workloads.step(&w.kube, now);
    w.schedule();
    assert!(
        block_on(w.kube.evict(&ObjectKey::namespaced("default", &victim))).is_err(),
        "not yet Ready"
    );
    w.run_pods();
    block_on(w.kube.evict(&ObjectKey::namespaced("default", &victim))).unwrap();
}

#[test]
fn percentage_budgets_count_the_controllers_scale() {
    let mut w = world();
    w.node("n1", json!({}), "8", json!([]));
    w.create("Deployment", json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 4,
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}}}));
    w.create("PodDisruptionBudget", json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"maxUnavailable": "25%", "selector": {"matchLabels": {"app": "web"}}}}));
    let now = w.now();
    w.workloads.step(&w.kube, now);
    w.schedule();
    w.run_pods();
    w.workloads.step(&w.kube, now);
    let pdb = w
        .kube
        .store()
        .get("PodDisruptionBudget", "default", "web")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            pdb["status"]["expectedPods"].as_i64(),
            pdb["status"]["disruptionsAllowed"].as_i64()
        ),
        (Some(4), Some(1))
    );
}

// ---- workload controllers ------------------------------------------------------------------------------

#[test]
fn a_deployment_replaces_a_deleted_pod() {
    let mut w = world();
    w.create("Deployment", json!({"metadata": {"name": "web", "namespace": "default"}, "spec": {"replicas": 2,
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c"}]}}}}));
    let now = w.now();
    w.workloads.step(&w.kube, now);
    let pods = w.kube.store().list("Pod");
    assert_eq!(pods.len(), 2);
    let gone = pods[0]["metadata"]["name"].as_str().unwrap().to_string();
    w.kube.store().delete("Pod", "default", &gone, now).unwrap();
    w.workloads.step(&w.kube, now);
    let names: Vec<String> = w
        .kube
        .store()
        .list("Pod")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names.len(), 2);
    assert!(!names.contains(&gone));
    w.schedule();
}

#[test]
fn a_job_runs_to_completion_with_its_parallelism() {
    let mut w = world();
    w.node("n1", json!({}), "8", json!([]));
    let machine = Machine {
        instance_id: "i-1".into(),
        node_name: "n1".into(),
        zone: "z".into(),
        region: "r".into(),
        instance_type: "m5.large".into(),
        capacity_type: "on-demand".into(),
        arch: "amd64".into(),
        running: true,
        capacity: BTreeMap::new(),
        allocatable: BTreeMap::new(),
        tags: BTreeMap::new(),
        ebs_volume_limit: None,
    };
    let mut kubelets = Kubelets::new(
        ChaCha8Rng::seed_from_u64(1),
        (Duration::ZERO, Duration::ZERO),
        Arc::new(Silent),
    );
    w.create("Job", json!({"metadata": {"name": "batch", "namespace": "default"}, "spec": {"completions": 4, "parallelism": 2,
        "template": {"metadata": {"annotations": {"sim.dovetail.dev/run-duration": "60s"}}, "spec": {"restartPolicy": "Never", "containers": [{"name": "c"}]}}}}));
    let mut max_active = 0;
    for _ in 0..600 {
        let now = w.now();
        w.workloads.step(&w.kube, now);
        w.schedule();
        kubelets.step(&w.kube, std::slice::from_ref(&machine), now);
        let active = w
            .kube
            .store()
            .list("Pod")
            .iter()
            .filter(|p| p["status"]["phase"] == "Running")
            .count();
        max_active = max_active.max(active);
        w.clock.advance(Duration::from_secs(1));
    }
    let job = w
        .kube
        .store()
        .get("Job", "default", "batch")
        .cloned()
        .unwrap();
    assert_eq!(job["status"]["succeeded"], 4);
    assert_eq!(job["status"]["conditions"][0]["type"], "Complete");
    assert_eq!(max_active, 2, "parallelism bounds the running pods");
}

#[test]
fn a_daemonset_places_one_pod_per_admitting_node() {
    let mut w = world();
    w.node("n1", json!({"role": "web"}), "8", json!([]));
    w.node(
        "n2",
        json!({"role": "web"}),
        "8",
        json!([{"key": "gpu", "value": "true", "effect": "NoSchedule"}]),
    );
    w.node("n3", json!({"role": "db"}), "8", json!([]));
    w.create("DaemonSet", json!({"metadata": {"name": "agent", "namespace": "kube-system"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"nodeSelector": {"role": "web"}, "containers": [{"name": "c"}]}}}}));
    let now = w.now();
    w.workloads.step(&w.kube, now);
    w.workloads.step(&w.kube, now);
    // Created unbound, pinned to their node by node affinity, and placed by the scheduler.
    assert!(
        w.kube
            .store()
            .list("Pod")
            .iter()
            .all(|p| p["spec"]["nodeName"].is_null())
    );
    w.schedule();
    let mut on: Vec<String> = w
        .kube
        .store()
        .list("Pod")
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap().to_string())
        .collect();
    on.sort();
    assert_eq!(
        on,
        ["n1"],
        "n2's taint is not tolerated, n3 is not selected"
    );
}

#[test]
fn a_daemon_pod_waits_when_its_node_has_no_room() {
    let mut w = world();
    w.node("full", json!({}), "1", json!([]));
    w.pod("web", json!({}), json!({}));
    w.pod("web-2", json!({}), json!({}));
    w.schedule();
    assert_eq!(w.node_of("web-2").as_deref(), Some("full"));
    w.create("DaemonSet", json!({"metadata": {"name": "agent", "namespace": "default"}, "spec": {
        "selector": {"matchLabels": {"app": "agent"}},
        "template": {"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "100m"}}}]}}}}));
    let now = w.now();
    w.workloads.step(&w.kube, now);
    w.schedule();
    let daemon = w
        .kube
        .store()
        .list("Pod")
        .into_iter()
        .find(|p| p["metadata"]["labels"]["app"] == "agent")
        .unwrap();
    assert!(daemon["spec"]["nodeName"].is_null(), "{daemon}");
    let name = daemon["metadata"]["name"].as_str().unwrap();
    assert!(
        w.unschedulable_message(name).contains("Insufficient cpu"),
        "{}",
        w.unschedulable_message(name)
    );
    assert!(w.kube.audit().violations.is_empty());
}

#[test]
fn quantities_are_read_typed_and_stored_canonically() {
    let mut w = world();
    w.node("half", json!({}), "500m", json!([]));
    // An unquoted `cpu: 1` is one cpu, not zero.
    w.pod(
        "one-cpu",
        json!({}),
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": 1, "memory": "1024Mi"}}}]}),
    );
    w.schedule();
    assert_eq!(w.node_of("one-cpu"), None);
    let pod = w
        .kube
        .store()
        .get("Pod", "default", "one-cpu")
        .cloned()
        .unwrap();
    let requests = &pod["spec"]["containers"][0]["resources"]["requests"];
    assert_eq!(requests["cpu"], "1");
    assert_eq!(requests["memory"], "1Gi");
    let err = w
        .kube
        .store()
        .create(
            "Pod",
            json!({"metadata": {"name": "bad", "namespace": "default"}, "spec": {"containers": [{"name": "c", "resources": {"requests": {"cpu": "lots"}}}]}}),
            w.now(),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("Pod default/bad is invalid: spec.containers[0].resources.requests[cpu]"),
        "{err}"
    );
}

#[test]
fn scheduler_host_ports() {
    let mut w = world();
    w.node("one", json!({}), "8", json!([]));
    let port = |p: i64| json!({"containers": [{"name": "c", "ports": [{"containerPort": 80, "hostPort": p}]}]});
    w.pod("a", json!({}), port(8080));
    w.pod("b", json!({}), port(8080));
    w.pod("c", json!({}), port(9090));
    w.schedule();
    assert_eq!(w.node_of("a").as_deref(), Some("one"));
    assert_eq!(w.node_of("b"), None);
    assert!(w.unschedulable_message("b").contains("free ports"));
    assert_eq!(w.node_of("c").as_deref(), Some("one"));
}

#[test]
fn scheduler_takes_the_oldest_pod_first_by_time_not_text() {
    let mut w = world();
    w.node("one", json!({}), "500m", json!([]));
    w.pod("first", json!({}), json!({}));
    // Created half a second later: `…00.5Z` sorts before `…00Z` as text.
    w.clock.advance(Duration::from_millis(500));
    w.pod("second", json!({}), json!({}));
    w.schedule();
    assert_eq!(w.node_of("first").as_deref(), Some("one"));
    assert_eq!(w.node_of("second"), None);
}

#[test]
fn the_kubelet_fails_a_pod_that_does_not_fit() {
    let w = world();
    w.node("one", json!({}), "1", json!([]));
    let mut kubelets = Kubelets::new(
        ChaCha8Rng::seed_from_u64(2),
        (Duration::ZERO, Duration::ZERO),
        Arc::new(Silent),
    );
    // Bound by hand (as a pod written with nodeName is), past the scheduler: 600m + 600m > 1 cpu.
    for name in ["a", "b"] {
        w.create("Pod", json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": "one", "containers": [{"name": "c", "resources": {"requests": {"cpu": "600m"}}}]}, "status": {"phase": "Pending"}}));
    }
    let now = w.now();
    kubelets.step(&w.kube, &[], now);
    w.clock.advance(Duration::from_secs(3));
    kubelets.step(&w.kube, &[], w.now());
    let phase = |n: &str| {
        w.kube.store().get("Pod", "default", n).unwrap()["status"]["phase"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(phase("a"), "Running");
    assert_eq!(phase("b"), "Failed");
    assert_eq!(
        w.kube.store().get("Pod", "default", "b").unwrap()["status"]["reason"],
        "OutOfcpu"
    );
    // And the placement invariant saw the over-commit when b was bound.
    let violations = w.kube.audit().violations;
    assert!(
        violations
            .iter()
            .any(|v| v.contains("pod default/b bound to node one") && v.contains("cpu")),
        "{violations:?}"
    );
}

#[test]
fn placement_invariants_catch_a_bad_binding() {
    let w = world();
    w.node(
        "tainted",
        json!({"role": "db"}),
        "8",
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]),
    );
    let bound = |name: &str, spec: Value| {
        let mut spec = spec;
        spec["nodeName"] = json!("tainted");
        spec["containers"] = json!([{"name": "c", "ports": [{"containerPort": 53, "hostPort": 53, "protocol": "UDP"}]}]);
        w.create(
            "Pod",
            json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec}),
        );
    };
    bound(
        "tolerant",
        json!({"tolerations": [{"key": "dedicated", "operator": "Exists"}]}),
    );
    assert!(w.kube.audit().violations.is_empty());
    bound("intolerant", json!({"nodeSelector": {"role": "web"}}));
    let violations = w.kube.audit().violations;
    assert_eq!(violations.len(), 3, "{violations:?}");
    assert!(violations[0].contains("taint dedicated:NoSchedule"));
    assert!(violations[1].contains("nodeSelector"));
    assert!(violations[2].contains("host port 53/UDP"));
}

// ---- the scheduler, one constraint at a time ----------------------------------------------------------

#[test]
fn scheduler_resources() {
    let mut w = world();
    w.node("small", json!({}), "1", json!([]));
    w.pod("fits", json!({}), json!({}));
    w.pod(
        "big",
        json!({}),
        json!({"containers": [{"name": "c", "resources": {"requests": {"cpu": "2"}}}]}),
    );
    w.schedule();
    assert_eq!(w.node_of("fits").as_deref(), Some("small"));
    assert_eq!(w.node_of("big"), None);
    assert!(
        w.unschedulable_message("big").contains("Insufficient cpu"),
        "{}",
        w.unschedulable_message("big")
    );
}

#[test]
fn scheduler_taints_and_tolerations() {
    let mut w = world();
    w.node(
        "gpu",
        json!({}),
        "8",
        json!([{"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"}]),
    );
    w.pod("plain", json!({}), json!({}));
    w.pod("tolerant", json!({}), json!({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}));
    w.schedule();
    assert_eq!(w.node_of("plain"), None);
    assert!(
        w.unschedulable_message("plain")
            .contains("untolerated taint")
    );
    assert_eq!(w.node_of("tolerant").as_deref(), Some("gpu"));
}

#[test]
fn scheduler_node_selector_and_required_affinity() {
    let mut w = world();
    w.node("a", json!({"zone": "a", "size": "8"}), "8", json!([]));
    w.node("b", json!({"zone": "b", "size": "2"}), "8", json!([]));
    w.pod("sel", json!({}), json!({"nodeSelector": {"zone": "b"}}));
    w.pod("aff", json!({}), json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "size", "operator": "Gt", "values": ["4"]}]}]}}}}));
    w.pod("none", json!({}), json!({"nodeSelector": {"zone": "c"}}));
    w.schedule();
    assert_eq!(w.node_of("sel").as_deref(), Some("b"));
    assert_eq!(w.node_of("aff").as_deref(), Some("a"));
    assert_eq!(w.node_of("none"), None);
}

#[test]
fn scheduler_topology_spread() {
    let mut w = world();
    w.node("a1", json!({"zone": "a"}), "8", json!([]));
    w.node("a2", json!({"zone": "a"}), "8", json!([]));
    w.node("b1", json!({"zone": "b"}), "8", json!([]));
    let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "s"}}}]});
    for i in 0..4 {
        w.pod(&format!("s{i}"), json!({"app": "s"}), spread.clone());
        w.schedule();
    }
    let zone = |n: Option<String>| {
        if n.unwrap().starts_with('a') {
            "a"
        } else {
            "b"
        }
    };
    let in_a = (0..4)
        .filter(|i| zone(w.node_of(&format!("s{i}"))) == "a")
        .count();
    assert_eq!(in_a, 2, "four pods over two zones with maxSkew 1 split 2/2");
}

#[test]
fn scheduler_pod_affinity_and_anti_affinity() {
    let mut w = world();
    w.node("n1", json!({}), "8", json!([]));
    w.node("n2", json!({}), "8", json!([]));
    let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    for i in 0..3 {
        w.pod(&format!("db{i}"), json!({"app": "db"}), anti.clone());
        w.schedule();
    }
    let mut hosts: Vec<Option<String>> = (0..3).map(|i| w.node_of(&format!("db{i}"))).collect();
    hosts.sort();
    assert_eq!(
        hosts,
        [None, Some("n1".into()), Some("n2".into())],
        "one db per host; the third waits"
    );
    assert!(w.unschedulable_message("db2").contains("anti-affinity"));
    let with = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
    w.pod("cache", json!({"app": "cache"}), with);
    w.schedule();
    let cache_host = w.node_of("cache").unwrap();
    assert!(
        hosts.iter().flatten().any(|h| *h == cache_host),
        "the cache lands next to a db"
    );
    // The existing db pods' anti-affinity keeps a newcomer labelled app=db away even without its own rule.
    w.pod("db-plain", json!({"app": "db"}), json!({}));
    w.schedule();
    assert_eq!(w.node_of("db-plain"), None);
}

// ---- kubelets ------------------------------------------------------------------------------------------

#[test]
fn kubelets_register_after_boot_then_go_not_ready_and_lose_pods() {
    let mut w = world();
    w.create("NodeClaim", json!({"metadata": {"name": "c1"}, "spec": {"taints": [{"key": "team", "value": "a", "effect": "NoSchedule"}],
        "startupTaints": [{"key": "cni", "effect": "NoSchedule"}]}}));
    let mut m = Machine {
        instance_id: "i-1".into(),
        node_name: "ip-10-0-0-4.ec2.internal".into(),
        zone: "us-east-1a".into(),
        region: "us-east-1".into(),
        instance_type: "m5.large".into(),
        capacity_type: "spot".into(),
        arch: "amd64".into(),
        running: true,
        capacity: [("cpu".to_string(), "2".to_string())].into(),
        allocatable: [
            ("cpu".to_string(), "1930m".to_string()),
            ("pods".to_string(), "29".to_string()),
            ("memory".to_string(), "6903Mi".to_string()),
        ]
        .into(),
        tags: [
            ("karpenter.sh/nodeclaim".to_string(), "c1".to_string()),
            ("karpenter.sh/nodepool".to_string(), "default".to_string()),
        ]
        .into(),
        ebs_volume_limit: Some(26),
    };
    let mut kubelets = Kubelets::new(
        ChaCha8Rng::seed_from_u64(1),
        (Duration::from_secs(40), Duration::from_secs(40)),
        Arc::new(Silent),
    );
    let step = |k: &mut Kubelets, w: &World, m: &Machine| {
        k.step(&w.kube, std::slice::from_ref(m), w.now())
    };
    step(&mut kubelets, &w, &m);
    w.clock.advance(Duration::from_secs(39));
    step(&mut kubelets, &w, &m);
    assert!(
        w.kube.store().get("Node", "", &m.node_name).is_none(),
        "still booting"
    );
    w.clock.advance(Duration::from_secs(1));
    step(&mut kubelets, &w, &m);
    let node = w
        .kube
        .store()
        .get("Node", "", &m.node_name)
        .cloned()
        .expect("registered at 40s");
    assert_eq!(node["spec"]["providerID"], "aws:///us-east-1a/i-1");
    assert_eq!(
        node["metadata"]["labels"]["karpenter.sh/nodepool"],
        "default"
    );
    assert_eq!(
        node["metadata"]["labels"]["karpenter.sh/capacity-type"],
        "spot"
    );
    let taints: Vec<&str> = node["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap())
        .collect();
    assert_eq!(taints, ["karpenter.sh/unregistered", "team", "cni"]);
    assert_eq!(node["status"]["allocatable"]["cpu"], "1930m");
    assert_eq!(
        node["metadata"]["labels"]["topology.ebs.csi.aws.com/zone"],
        "us-east-1a"
    );
    let csinode = w
        .kube
        .store()
        .get("CSINode", "", &m.node_name)
        .cloned()
        .expect("the kubelet makes the node's CSINode");
    assert_eq!(csinode["spec"]["drivers"][0]["name"], "ebs.csi.aws.com");
    assert_eq!(csinode["spec"]["drivers"][0]["allocatable"]["count"], 26);
    w.clock.advance(Duration::from_secs(5));
    step(&mut kubelets, &w, &m);
    let taints: Vec<String> =
        w.kube.store().get("Node", "", &m.node_name).unwrap()["spec"]["taints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["key"].as_str().unwrap().to_string())
            .collect();
    assert!(
        !taints.contains(&"cni".to_string()),
        "startup taints clear after a delay"
    );

    // A pod bound there; then the instance dies.
    w.pod("p", json!({}), json!({"nodeName": m.node_name.clone()}));
    step(&mut kubelets, &w, &m);
    w.clock.advance(Duration::from_secs(2));
    step(&mut kubelets, &w, &m);
    assert_eq!(
        w.kube.store().get("Pod", "default", "p").unwrap()["status"]["phase"],
        "Running"
    );
    m.running = false;
    step(&mut kubelets, &w, &m);
    let node = w
        .kube
        .store()
        .get("Node", "", &m.node_name)
        .cloned()
        .unwrap();
    assert_eq!(node["status"]["conditions"][0]["status"], "Unknown");
    w.clock.advance(Duration::from_secs(299));
    step(&mut kubelets, &w, &m);
    assert!(
        w.kube.store().get("Pod", "default", "p").is_some(),
        "pods stay while their toleration lasts"
    );
    w.clock.advance(Duration::from_secs(1));
    step(&mut kubelets, &w, &m);
    assert!(
        w.kube.store().get("Pod", "default", "p").is_none(),
        "lost after five minutes unreachable"
    );
    w.schedule();
}

fn step_workloads(w: &mut World) {
    let now = w.now();
    w.workloads.step(&w.kube, now);
}

fn pod_names(w: &World) -> Vec<String> {
    w.kube
        .store()
        .iter("Pod")
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| p["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

fn statefulset(policy: &str, replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db", "namespace": "default"},
        "spec": {"replicas": replicas, "podManagementPolicy": policy, "serviceName": "db",
            "selector": {"matchLabels": {"app": "db"}},
            "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"containers": [{"name": "db"}]}},
            "volumeClaimTemplates": [{"metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})
}

#[test]
fn an_ordered_statefulset_makes_one_pod_at_a_time_with_its_own_claim() {
    let mut w = world();
    w.create("StorageClass", json!({"metadata": {"name": "gp3", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"}));
    w.create("StatefulSet", statefulset("OrderedReady", 3));
    step_workloads(&mut w);
    assert_eq!(pod_names(&w), ["db-0"], "one at a time");
    let pod = w
        .kube
        .store()
        .get("Pod", "default", "db-0")
        .cloned()
        .unwrap();
    assert_eq!(
        pod["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "data-db-0"
    );
    assert_eq!(pod["spec"]["hostname"], "db-0");
    assert!(
        w.kube
            .store()
            .get("PersistentVolumeClaim", "default", "data-db-0")
            .is_some()
    );
    step_workloads(&mut w);
    assert_eq!(pod_names(&w), ["db-0"], "db-1 waits for db-0 to be Ready");
    w.node("n1", json!({}), "8", json!([]));
    w.schedule();
    assert_eq!(w.node_of("db-0").as_deref(), Some("n1"));
    w.run_pods();
    step_workloads(&mut w);
    assert_eq!(pod_names(&w), ["db-0", "db-1"]);
    // A deleted pod comes back under its name and finds its claim again.
    let now = w.now();
    w.kube
        .store()
        .delete("Pod", "default", "db-0", now)
        .unwrap();
    step_workloads(&mut w);
    assert!(pod_names(&w).contains(&"db-0".to_string()));
}

#[test]
fn a_parallel_statefulset_makes_and_removes_pods_at_once_from_the_top() {
    let mut w = world();
    w.create("StatefulSet", statefulset("Parallel", 3));
    step_workloads(&mut w);
    assert_eq!(pod_names(&w), ["db-0", "db-1", "db-2"]);
    w.kube
        .store()
        .patch(
            "StatefulSet",
            "default",
            "db",
            &json!({"spec": {"replicas": 1}}),
            false,
        )
        .unwrap();
    step_workloads(&mut w);
    assert_eq!(pod_names(&w), ["db-0"]);
    assert!(
        w.kube
            .store()
            .get("PersistentVolumeClaim", "default", "data-db-2")
            .is_some(),
        "claims stay when the set scales down (whenScaled: Retain)"
    );
}

fn claim(name: &str, class: Option<&str>) -> Value {
    let mut spec =
        json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}});
    if let Some(c) = class {
        spec["storageClassName"] = json!(c);
    }
    json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})
}

fn with_claims(names: &[&str]) -> Value {
    let volumes: Vec<Value> = names
        .iter()
        .map(|n| json!({"name": n, "persistentVolumeClaim": {"claimName": n}}))
        .collect();
    json!({"volumes": volumes})
}

#[test]
fn a_delayed_claim_is_provisioned_in_the_zone_its_pod_lands_and_pins_the_next_pod_there() {
    let mut w = world();
    w.create("StorageClass", json!({"metadata": {"name": "gp3", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
        "provisioner": "ebs.csi.aws.com", "volumeBindingMode": "WaitForFirstConsumer"}));
    let c = w.create("PersistentVolumeClaim", claim("data", None));
    assert_eq!(c["spec"]["storageClassName"], "gp3", "the default class");
    w.node(
        "a",
        json!({"topology.kubernetes.io/zone": "us-east-1a"}),
        "1",
        json!([]),
    );
    w.pod("p1", json!({}), with_claims(&["data"]));
    w.schedule();
    assert_eq!(w.node_of("p1").as_deref(), Some("a"));
    let claim = w
        .kube
        .store()
        .get("PersistentVolumeClaim", "default", "data")
        .cloned()
        .unwrap();
    let pv = w
        .kube
        .store()
        .get(
            "PersistentVolume",
            "",
            claim["spec"]["volumeName"].as_str().unwrap(),
        )
        .cloned()
        .unwrap();
    assert_eq!(pv["spec"]["csi"]["driver"], "ebs.csi.aws.com");
    // The volume lives in us-east-1a: a pod using it cannot go to a node elsewhere.
    let now = w.now();
    w.kube.store().delete("Pod", "default", "p1", now).unwrap();
    w.node(
        "b",
        json!({"topology.kubernetes.io/zone": "us-east-1b"}),
        "8",
        json!([]),
    );
    w.pod("p2", json!({}), with_claims(&["data"]));
    w.kube
        .store()
        .patch(
            "Node",
            "",
            "a",
            &json!({"spec": {"unschedulable": true}}),
            false,
        )
        .unwrap();
    w.schedule();
    assert_eq!(w.node_of("p2"), None);
    assert!(
        w.unschedulable_message("p2")
            .contains("1 node(s) had volume node affinity conflict"),
        "{}",
        w.unschedulable_message("p2")
    );
}

#[test]
fn a_node_takes_no_more_volumes_than_its_csinode_allows() {
    let mut w = world();
    w.create(
        "StorageClass",
        json!({"metadata": {"name": "gp3"}, "provisioner": "ebs.csi.aws.com",
        "volumeBindingMode": "WaitForFirstConsumer"}),
    );
    w.node(
        "a",
        json!({"topology.kubernetes.io/zone": "us-east-1a"}),
        "8",
        json!([]),
    );
    w.create(
        "CSINode",
        json!({"metadata": {"name": "a"}, "spec": {"drivers": [
        {"name": "ebs.csi.aws.com", "nodeID": "i-1", "allocatable": {"count": 2}}]}}),
    );
    for i in 0..3 {
        w.create(
            "PersistentVolumeClaim",
            claim(&format!("v{i}"), Some("gp3")),
        );
    }
    w.pod("p0", json!({}), with_claims(&["v0", "v1"]));
    w.schedule();
    w.pod("p1", json!({}), with_claims(&["v2"]));
    w.schedule();
    assert_eq!(w.node_of("p0").as_deref(), Some("a"));
    assert_eq!(w.node_of("p1"), None);
    assert!(
        w.unschedulable_message("p1")
            .contains("exceed max volume count")
    );
    // A claim that does not exist keeps its pod off every node, saying which.
    w.pod("p2", json!({}), with_claims(&["missing"]));
    w.schedule();
    assert!(
        w.unschedulable_message("p2")
            .contains("persistentvolumeclaim \"missing\" not found")
    );
}

#[test]
fn priority_and_runtime_classes_are_applied_at_admission() {
    let w = world();
    w.create(
        "PriorityClass",
        json!({"metadata": {"name": "high"}, "value": 1000}),
    );
    w.create("RuntimeClass", json!({"metadata": {"name": "gvisor"}, "handler": "runsc",
        "overhead": {"podFixed": {"cpu": "250m", "memory": "120Mi"}},
        "scheduling": {"nodeSelector": {"sandbox": "gvisor"}, "tolerations": [{"key": "sandbox", "operator": "Exists"}]}}));
    w.pod(
        "p",
        json!({}),
        json!({"priorityClassName": "high", "runtimeClassName": "gvisor"}),
    );
    let p = w.kube.store().get("Pod", "default", "p").cloned().unwrap();
    assert_eq!(p["spec"]["priority"], 1000);
    assert_eq!(p["spec"]["overhead"]["cpu"], "250m");
    assert_eq!(p["spec"]["nodeSelector"]["sandbox"], "gvisor");
    assert_eq!(p["spec"]["tolerations"][0]["key"], "sandbox");
    let refused = w.kube.store().create(
        "Pod",
        json!({"metadata": {"name": "q", "namespace": "default"}, "spec": {"containers": [{"name": "c"}], "priorityClassName": "nope"}}),
        w.now(),
    );
    assert!(
        matches!(&refused, Err(e) if e.to_string().contains("no PriorityClass with name nope")),
        "{refused:?}"
    );
}

#[test]
fn a_higher_priority_pod_preempts_the_lowest_priority_pods_it_needs_gone() {
    let mut w = world();
    w.create(
        "PriorityClass",
        json!({"metadata": {"name": "high"}, "value": 1000}),
    );
    w.create(
        "PriorityClass",
        json!({"metadata": {"name": "low"}, "value": 10}),
    );
    w.node("n1", json!({}), "2", json!([]));
    for (name, class) in [("a", "low"), ("b", "low"), ("c", "high")] {
        w.pod(name, json!({}), json!({"priorityClassName": class}));
    }
    w.schedule();
    w.run_pods();
    // 2 cpus hold four 500m pods: a, b, c are bound; the fourth low pod fills the node.
    w.pod("d", json!({}), json!({"priorityClassName": "low"}));
    w.schedule();
    w.run_pods();
    w.pod("urgent", json!({}), json!({"priorityClassName": "high"}));
    w.schedule();
    let gone: Vec<String> = ["a", "b", "d"]
        .iter()
        .filter(|p| w.kube.store().get("Pod", "default", p).is_none())
        .map(|p| p.to_string())
        .collect();
    assert_eq!(gone.len(), 1, "one low-priority pod makes room: {gone:?}");
    assert!(
        w.kube.store().get("Pod", "default", "c").is_some(),
        "the high one stays"
    );
    let urgent = w
        .kube
        .store()
        .get("Pod", "default", "urgent")
        .cloned()
        .unwrap();
    assert_eq!(urgent["status"]["nominatedNodeName"], "n1");
    w.schedule();
    assert_eq!(w.node_of("urgent").as_deref(), Some("n1"));
    // A pod that may not preempt waits.
    w.pod(
        "polite",
        json!({}),
        json!({"priorityClassName": "high", "preemptionPolicy": "Never"}),
    );
    w.schedule();
    assert_eq!(w.node_of("polite"), None);
}
