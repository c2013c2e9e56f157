//! Differential test of the two schedulers that share no code: wherever dovetail's planner says a pending
//! pod fits an existing node, fakekube's scheduler must bind it there, and the other way round. Random
//! nodes (zones, labels, taints, room) with bound pods (requests, host ports, labels) and a pending pod
//! (requests, tolerations, node selector, required node affinity, host ports, required anti-affinity);
//! proptest shrinks a disagreement to a small case and prints it.

use std::sync::Arc;
use std::time::Duration;

use dovetail::clock::ManualClock;
use dovetail::journal::Journal;
use dovetail::kube::ObjectKey;
use dovetail::provisioning::inputs::{existing_pod, node_capacity, pending_pod};
use dovetail::resources::{Resources, pod_requests};
use dovetail::scheduling::plan;
use fakekube::scheduler::Scheduler;
use fakekube::{FakeKube, Store};
use k8s_openapi::api::core::v1::{Node, Pod};
use proptest::prelude::*;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde_json::{Value, json};

struct Silent;
impl Journal for Silent {
    fn record(&self, _: &'static str, _: String) {}
}

#[derive(Debug, Clone)]
struct NodeCase {
    zone: &'static str,
    team: Option<&'static str>,
    millicpu: u32,
    dedicated_taint: bool,
    bound: Vec<BoundCase>,
}

#[derive(Debug, Clone)]
struct BoundCase {
    millicpu: u32,
    app: &'static str,
    host_port: Option<u16>,
}

#[derive(Debug, Clone)]
struct PodCase {
    millicpu: u32,
    memory_mib: u32,
    tolerates_dedicated: bool,
    selector_team: Option<&'static str>,
    /// (key, operator, values) of one required node-affinity term.
    affinity: Option<(&'static str, &'static str, Vec<&'static str>)>,
    host_port: Option<u16>,
    avoid_db_on_host: bool,
}

fn node_case() -> impl Strategy<Value = NodeCase> {
    (
        prop_oneof![Just("a"), Just("b")],
        prop_oneof![Just(None), Just(Some("x")), Just(Some("y"))],
        prop_oneof![Just(1000u32), Just(2000), Just(4000)],
        any::<bool>(),
        proptest::collection::vec(bound_case(), 0..3),
    )
        .prop_map(|(zone, team, millicpu, dedicated_taint, bound)| NodeCase {
            zone,
            team,
            millicpu,
            dedicated_taint,
            bound,
        })
}

fn bound_case() -> impl Strategy<Value = BoundCase> {
    (
        prop_oneof![Just(250u32), Just(500), Just(1000)],
        prop_oneof![Just("web"), Just("db")],
        prop_oneof![Just(None), Just(Some(8080u16)), Just(Some(9100))],
    )
        .prop_map(|(millicpu, app, host_port)| BoundCase {
            millicpu,
            app,
            host_port,
        })
}

fn pod_case() -> impl Strategy<Value = PodCase> {
    let affinity = prop_oneof![
        Just(None),
        Just(Some(("topology.kubernetes.io/zone", "In", vec!["a"]))),
        Just(Some(("team", "NotIn", vec!["y"]))),
        Just(Some(("team", "DoesNotExist", vec![]))),
        Just(Some(("team", "Exists", vec![]))),
    ];
    (
        prop_oneof![Just(100u32), Just(500), Just(1500), Just(3000)],
        prop_oneof![Just(256u32), Just(4096)],
        any::<bool>(),
        prop_oneof![Just(None), Just(Some("x"))],
        affinity,
        prop_oneof![Just(None), Just(Some(8080u16)), Just(Some(9100))],
        any::<bool>(),
    )
        .prop_map(
            |(
                millicpu,
                memory_mib,
                tolerates_dedicated,
                selector_team,
                affinity,
                host_port,
                avoid,
            )| {
                PodCase {
                    millicpu,
                    memory_mib,
                    tolerates_dedicated,
                    selector_team,
                    affinity,
                    host_port,
                    avoid_db_on_host: avoid,
                }
            },
        )
}

fn ports(p: Option<u16>) -> Value {
    p.map_or(json!([]), |p| json!([{"containerPort": p, "hostPort": p}]))
}

fn node_json(n: &NodeCase) -> Value {
    let mut labels = json!({"kubernetes.io/hostname": "n1", "topology.kubernetes.io/zone": n.zone});
    if let Some(t) = n.team {
        labels["team"] = json!(t);
    }
    let taints = if n.dedicated_taint {
        json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}])
    } else {
        json!([])
    };
    json!({"metadata": {"name": "n1", "labels": labels}, "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": format!("{}m", n.millicpu), "memory": "8Gi", "pods": "110"},
        "conditions": [{"type": "Ready", "status": "True"}]}})
}

fn pending_json(p: &PodCase) -> Value {
    let mut spec = json!({"containers": [{"name": "c", "ports": ports(p.host_port),
        "resources": {"requests": {"cpu": format!("{}m", p.millicpu), "memory": format!("{}Mi", p.memory_mib)}}}]});
    if p.tolerates_dedicated {
        spec["tolerations"] = json!([{"key": "dedicated", "operator": "Exists"}]);
    }
    if let Some(t) = p.selector_team {
        spec["nodeSelector"] = json!({"team": t});
    }
    if let Some((key, op, values)) = &p.affinity {
        let mut expr = json!({"key": key, "operator": op});
        if !values.is_empty() {
            expr["values"] = json!(values);
        }
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] =
            json!({"nodeSelectorTerms": [{"matchExpressions": [expr]}]});
    }
    if p.avoid_db_on_host {
        spec["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"] = json!([
            {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]);
    }
    json!({"metadata": {"name": "pending", "namespace": "default", "labels": {"app": "new"}},
        "spec": spec, "status": {"phase": "Pending"}})
}

/// (fake scheduler binds it, planner places it on the node).
fn verdicts(node: &NodeCase, pod: &PodCase) -> (bool, bool) {
    let clock = ManualClock::starting_at(jiff::Timestamp::from_second(1_767_225_600).unwrap());
    let now = jiff::Timestamp::from_second(1_767_225_600).unwrap();
    let kube = FakeKube::new(
        Store::new(ChaCha8Rng::seed_from_u64(1)),
        Arc::new(clock),
        Duration::ZERO,
    );
    let mut st = kube.store();
    let stored_node = st.create("Node", node_json(node), now).unwrap();
    let mut bound = Vec::new();
    for (i, b) in node.bound.iter().enumerate() {
        let pod = json!({"metadata": {"name": format!("b{i}"), "namespace": "default", "labels": {"app": b.app}},
            "spec": {"nodeName": "n1", "tolerations": [{"operator": "Exists"}], "containers": [{"name": "c", "ports": ports(b.host_port),
                "resources": {"requests": {"cpu": format!("{}m", b.millicpu)}}}]},
            "status": {"phase": "Running"}});
        bound.push(st.create("Pod", pod, now).unwrap());
    }
    let stored_pending = st.create("Pod", pending_json(pod), now).unwrap();
    drop(st);

    // The planner reads the objects as the API server stores them, through the controller's own inputs.
    let node_obj: Node = serde_json::from_value(stored_node).unwrap();
    let mut used = Resources::default();
    let mut existing_pods = Vec::new();
    for b in &bound {
        let p: Pod = serde_json::from_value(b.clone()).unwrap();
        let key = ObjectKey::namespaced("default", p.metadata.name.clone().unwrap());
        used.add(&pod_requests(&p).unwrap());
        existing_pods.push(existing_pod(&key, &p));
    }
    let capacity = node_capacity("n1", &node_obj, &used, existing_pods).expect("a ready node");
    let pending_obj: Pod = serde_json::from_value(stored_pending).unwrap();
    let key = ObjectKey::namespaced("default", "pending");
    let planner_fits = match pending_pod(&key, &pending_obj) {
        Ok(p) => !plan(&[p], &[capacity], &[]).on_existing.is_empty(),
        Err(_) => false,
    };

    let mut scheduler = Scheduler::new(Arc::new(Silent));
    scheduler.schedule(&kube, now);
    let bound_by_fake =
        kube.store().get("Pod", "default", "pending").unwrap()["spec"]["nodeName"].is_string();
    (bound_by_fake, planner_fits)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("DIFFERENTIAL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
    ))]
    #[test]
    fn the_planner_and_the_fake_scheduler_agree_on_existing_nodes(node in node_case(), pod in pod_case()) {
        let (fake, planner) = verdicts(&node, &pod);
        prop_assert_eq!(
            fake, planner,
            "fake scheduler binds: {}, planner places: {}\nnode: {:#?}\npod: {:#?}",
            fake, planner, node, pod
        );
    }
}
