//! `cargo xtask bench consolidation`: a 1000-node, 20k-pod cluster built in memory; times every
//! single-node evaluation and one decision pass (multi-node first) of the controller's disruption code.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dovetail::aws::AwsProvider;
use dovetail::clock::ManualClock;
use dovetail::cloudprovider::InstanceType;
use dovetail::disruption::Evaluator;
use dovetail::journal::LogJournal;
use dovetail::kube::Kind;
use dovetail::state::ClusterState;
use fakecloud::{Catalog, CloudConfig, FakeCloud};
use fakekube::{FakeKube, Store};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde_json::{Value, json};

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];
/// Node types of the cluster: on-demand, 8 and 16 vCPUs.
const TYPES: [&str; 4] = ["m5.2xlarge", "c5.2xlarge", "m5.4xlarge", "r5.2xlarge"];
const CPU_MILLI: [u64; 5] = [100, 150, 200, 250, 300];

fn cluster(nodes: usize, pods_per_node: usize, types: &[InstanceType], seed: u64) -> ClusterState {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut state = ClusterState::default();
    let long_ago = "2025-12-31T00:00:00Z";
    let pool = json!({"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "default"},
        "spec": {"template": {"spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
            "requirements": [
                {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["on-demand"]},
                {"key": "karpenter.k8s.aws/instance-category", "operator": "In", "values": ["c", "m", "r"]}]}},
            "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "0s",
                "budgets": [{"nodes": "100%"}]}}});
    let class = json!({"apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": "default"},
        "spec": {"amiSelectorTerms": [{"alias": "al2023@latest"}], "role": "nodes",
            "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": "bench"}}],
            "securityGroupSelectorTerms": [{"tags": {"karpenter.sh/discovery": "bench"}}]}});
    let _ = state.reset(Kind::NodePool, vec![pool]);
    let _ = state.reset(Kind::EC2NodeClass, vec![class]);
    let (mut node_items, mut claim_items, mut pod_items) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..nodes {
        let t = TYPES[n % TYPES.len()];
        let zone = ZONES[n % ZONES.len()];
        let it = types
            .iter()
            .find(|i| i.name == t)
            .expect("type in the catalog");
        let alloc: Value = serde_json::to_value(it.allocatable.to_quantities()).unwrap_or_default();
        let name = format!("ip-10-0-{}-{}.ec2.internal", n / 250, n % 250);
        let claim = format!("default-{n:05}");
        let labels = json!({"karpenter.sh/nodepool": "default", "node.kubernetes.io/instance-type": t,
            "topology.kubernetes.io/zone": zone, "karpenter.sh/capacity-type": "on-demand",
            "kubernetes.io/hostname": name, "kubernetes.io/arch": "amd64", "kubernetes.io/os": "linux"});
        let provider = format!("aws:///{zone}/i-{n:017x}");
        node_items.push(json!({"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": labels, "creationTimestamp": long_ago},
            "spec": {"providerID": provider},
            "status": {"allocatable": alloc, "capacity": alloc,
                "conditions": [{"type": "Ready", "status": "True"}]}}));
        let conditions: Vec<Value> = ["Launched", "Registered", "Initialized"]
            .iter()
            .map(|c| json!({"type": c, "status": "True", "reason": c, "lastTransitionTime": long_ago}))
            .collect();
        claim_items.push(json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim",
            "metadata": {"name": claim, "labels": labels, "creationTimestamp": long_ago},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"}, "requirements": []},
            "status": {"nodeName": name, "providerID": provider, "allocatable": alloc, "capacity": alloc,
                "conditions": conditions}}));
        // Fill a node to about half its cpu, so many nodes could be merged.
        let budget = (it.allocatable.get(dovetail::resources::CPU).0 / 2) as u64;
        let mut used = 0;
        for p in 0..pods_per_node {
            let cpu = CPU_MILLI[(rng.next_u64() % CPU_MILLI.len() as u64) as usize];
            if used + cpu > budget {
                break;
            }
            used += cpu;
            let app = format!("app-{}", rng.next_u64() % 20);
            pod_items.push(json!({"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": format!("{app}-{n}-{p}"), "namespace": "default", "labels": {"app": app},
                    "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": app, "uid": app, "controller": true}]},
                "spec": {"nodeName": name, "containers": [{"name": "c", "image": "x",
                    "resources": {"requests": {"cpu": format!("{cpu}m"), "memory": format!("{}Mi", cpu * 2)}}}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}));
        }
    }
    let _ = state.reset(Kind::Node, node_items);
    let _ = state.reset(Kind::NodeClaim, claim_items);
    let _ = state.reset(Kind::Pod, pod_items);
    state
}

fn context() -> dovetail::Context {
    let clock = ManualClock::starting_at("2026-01-01T00:00:00Z".parse().unwrap_or_default());
    let clock: Arc<dyn dovetail::clock::Clock> = Arc::new(clock);
    let journal = Arc::new(LogJournal);
    dovetail::Context {
        metrics: Default::default(),
        clock: clock.clone(),
        kube: Arc::new(FakeKube::new(
            Store::new(ChaCha8Rng::seed_from_u64(1)),
            clock.clone(),
            Duration::ZERO,
        )),
        journal,
        rng: ChaCha8Rng::seed_from_u64(3),
        settings: dovetail::Settings::default(),
    }
}

/// Run the benchmark; returns the report.
pub fn run() -> String {
    let types = crate::bench::catalog();
    let state = cluster(1000, 20, &types, 42);
    let pods = state.pods.len();
    let ctx = context();
    let cloud = Arc::new(FakeCloud::new(
        CloudConfig::default(),
        Catalog::builtin(),
        2,
        ctx.clock.clone(),
        ctx.journal.clone(),
    ));
    let provider = AwsProvider::with_catalog(cloud, ctx.clock.now(), types);
    let eval = Evaluator::new(ctx, state, Box::new(provider));
    let t = Instant::now();
    let (candidates, alone) = eval.single_node_pass();
    let single = t.elapsed();
    let t = Instant::now();
    let merged = eval.decision_pass();
    let multi = t.elapsed();
    format!(
        "consolidation (1000 on-demand nodes of 8-16 vCPUs, {pods} pods at about half their cpu, seed 42):\n\n\
         | pass | result | seconds |\n|--|--|--|\n\
         | every single-node candidate | {alone} of {candidates} could go alone | {:.3} |\n\
         | one decision (multi-node first) | a command over {merged} nodes | {:.3} |\n\
         | total | | {:.3} |\n",
        single.as_secs_f64(),
        multi.as_secs_f64(),
        (single + multi).as_secs_f64()
    )
}
