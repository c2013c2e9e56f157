//! Planner tests, written from Karpenter's documented scheduling behaviour.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::cloudprovider::Offering;
use crate::quantity::{Milli, parse};
use crate::resources::PODS;
use crate::scheduling::requirements::Requirement;

fn it(name: &str, cpu_m: i128, mem: &str, pods: i128, price: f64) -> InstanceType {
    let mut a = Resources::default();
    a.set(CPU, Milli(cpu_m));
    a.set(MEMORY, parse(mem).unwrap());
    a.set(PODS, Milli::from_units(pods));
    let family = name.split('.').next().unwrap().to_string();
    InstanceType {
        name: name.into(),
        labels: [
            (labels::INSTANCE_TYPE.to_string(), name.to_string()),
            (labels::INSTANCE_FAMILY.to_string(), family),
        ]
        .into(),
        capacity: a.clone(),
        allocatable: a,
        offerings: ["z1", "z2"]
            .iter()
            .flat_map(|z| {
                [
                    Offering {
                        zone: z.to_string(),
                        capacity_type: CapacityType::OnDemand,
                        price,
                        available: true,
                        reservation: None,
                    },
                    Offering {
                        zone: z.to_string(),
                        capacity_type: CapacityType::Spot,
                        price: price * 0.4,
                        available: true,
                        reservation: None,
                    },
                ]
            })
            .collect(),
    }
}

fn pod(name: &str, cpu_m: i128, mem: &str) -> PendingPod {
    let mut r = Resources::default();
    r.set(CPU, Milli(cpu_m));
    r.set(MEMORY, parse(mem).unwrap());
    r.set(PODS, Milli::from_units(1));
    PendingPod::simple(ObjectKey::namespaced("default", name), r)
}

fn req(key: &str, op: &str, values: &[&str]) -> Requirement {
    Requirement::parse(
        key,
        op,
        &values.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        None,
    )
    .unwrap()
}

fn with_req(mut p: PendingPod, r: Requirement) -> PendingPod {
    p.requirements[0].add(r);
    p
}

fn pool<'a>(name: &str, types: Vec<&'a InstanceType>) -> PoolOptions<'a> {
    let mut requirements = Requirements::default();
    requirements.add(req(labels::CAPACITY_TYPE, "In", &["on-demand"]));
    requirements.add(req(labels::NODEPOOL, "In", &[name]));
    PoolOptions {
        name: name.into(),
        weight: 0,
        requirements,
        taints: Vec::new(),
        instance_types: types.into_iter().map(std::borrow::Cow::Borrowed).collect(),
        daemon_overhead: Resources::default(),
        daemon_ports: Vec::new(),
        remaining_limits: None,
        min_values_best_effort: false,
    }
}

#[test]
fn packs_onto_one_claim_and_lists_fitting_types_cheapest_first() {
    let small = it("small.large", 1900, "3Gi", 10, 0.05);
    let large = it("large.large", 7900, "30Gi", 50, 0.20);
    let medium = it("medium.large", 3900, "14Gi", 20, 0.10);
    let pods: Vec<PendingPod> = (0..4).map(|i| pod(&format!("p{i}"), 500, "1Gi")).collect();
    let p = plan(
        &pods,
        &[],
        &[pool("default", vec![&small, &large, &medium])],
    );
    assert_eq!(p.claims.len(), 1);
    assert_eq!(p.claims[0].pods.len(), 4);
    assert_eq!(
        p.claims[0].instance_types,
        vec!["medium.large", "large.large"],
        "small cannot hold 2 cpu"
    );
    assert!(p.unschedulable.is_empty());
}

/// An empty existing node with room for 1 cpu, 2Gi and 5 pods.
fn small_node() -> ExistingCapacity {
    let mut avail = Resources::default();
    avail.set(CPU, Milli(1000));
    avail.set(MEMORY, parse("2Gi").unwrap());
    avail.set(PODS, Milli::from_units(5));
    ExistingCapacity {
        name: "n1".into(),
        available: avail,
        labels: BTreeMap::new(),
        taints: Vec::new(),
        pods: vec![],
    }
}

#[test]
fn uses_existing_capacity_before_opening_claims() {
    let large = it("large.large", 7900, "30Gi", 50, 0.20);
    let existing = vec![small_node()];
    let pods = vec![
        pod("a", 500, "1Gi"),
        pod("b", 500, "1Gi"),
        pod("c", 500, "1Gi"),
    ];
    let p = plan(&pods, &existing, &[pool("default", vec![&large])]);
    assert_eq!(p.on_existing.len(), 2);
    assert_eq!(p.claims.len(), 1);
    assert_eq!(p.claims[0].pods.len(), 1);
}

#[test]
fn headroom_chunks_come_after_every_real_pod_and_are_reported_apart() {
    let large = it("large.large", 7900, "30Gi", 50, 0.20);
    let existing = vec![small_node()];
    // By size alone the chunk (the bigger) would take the node and push the real pod to a new claim.
    let chunk = PendingPod {
        headroom: true,
        ..pod("chunk", 1000, "2Gi")
    };
    let pods = vec![chunk.clone(), pod("real", 500, "1Gi")];
    let p = plan(&pods, &existing, &[pool("default", vec![&large])]);
    assert_eq!(p.on_existing.len(), 1);
    assert_eq!(p.on_existing[0].0.name, "real");
    assert_eq!(p.claims.len(), 1);
    assert_eq!(p.claims[0].pods[0].name, "chunk");
    // A chunk nothing can host is not among the pods explained as unschedulable.
    let p = plan(&[chunk], &[], &[]);
    assert!(p.unschedulable.is_empty());
    assert_eq!(p.headroom_unschedulable.len(), 1);
}

#[test]
fn existing_capacity_honours_taints_and_labels() {
    let large = it("large.large", 7900, "30Gi", 50, 0.20);
    let mut avail = Resources::default();
    avail.set(CPU, Milli(8000));
    avail.set(MEMORY, parse("32Gi").unwrap());
    avail.set(PODS, Milli::from_units(50));
    let tainted = ExistingCapacity {
        name: "gpu".into(),
        available: avail.clone(),
        labels: BTreeMap::new(),
        taints: vec![Taint {
            key: "nvidia.com/gpu".into(),
            value: None,
            effect: "NoSchedule".into(),
            time_added: None,
        }],
        pods: vec![],
    };
    let zoned = ExistingCapacity {
        name: "z1".into(),
        available: avail,
        labels: [(labels::ZONE.to_string(), "z1".to_string())].into(),
        taints: vec![],
        pods: vec![],
    };
    let p = plan(
        &[with_req(
            pod("a", 500, "1Gi"),
            req(labels::ZONE, "In", &["z2"]),
        )],
        &[tainted, zoned],
        &[pool("default", vec![&large])],
    );
    assert!(
        p.on_existing.is_empty(),
        "tainted node and wrong zone are both out"
    );
    assert_eq!(p.claims.len(), 1);
    assert!(
        p.claims[0]
            .requirements
            .get(labels::ZONE)
            .unwrap()
            .has("z2")
    );
}

#[test]
fn limits_bound_only_the_resources_they_name() {
    let large = it("large.large", 7900, "30Gi", 50, 0.20);
    let mut p = pool("default", vec![&large]);
    let mut rem = Resources::default();
    rem.set(CPU, Milli(7900));
    p.remaining_limits = Some(rem.clone());
    assert_eq!(
        plan(&[pod("a", 500, "1Gi")], &[], std::slice::from_ref(&p))
            .claims
            .len(),
        1
    );
    rem.set(CPU, Milli(4000));
    p.remaining_limits = Some(rem);
    let out = plan(&[pod("a", 500, "1Gi")], &[], &[p]);
    assert!(
        out.claims.is_empty(),
        "a node of 7.9 cpu would break a 4 cpu limit"
    );
    assert!(out.unschedulable[0].1.contains("limits"));
}

#[test]
fn a_pod_too_big_for_every_type_is_explained() {
    let small = it("small.large", 1900, "3Gi", 10, 0.05);
    let p = plan(
        &[pod("huge", 64_000, "1Gi")],
        &[],
        &[pool("default", vec![&small])],
    );
    assert!(p.claims.is_empty());
    let reason = &p.unschedulable[0].1;
    assert!(
        reason.contains("nodepool \"default\": no instance type fits cpu=64"),
        "{reason}"
    );
    assert!(
        reason.contains("largest candidate small.large lacks cpu"),
        "{reason}"
    );
}

#[test]
fn the_largest_candidate_is_largest_in_the_short_resource() {
    let compute = it("c.16xlarge", 64_000, "128Gi", 110, 2.7);
    let memory = it("x.4xlarge", 16_000, "488Gi", 110, 1.7);
    let p = plan(
        &[pod("cache", 4_000, "600Gi")],
        &[],
        &[pool("default", vec![&compute, &memory])],
    );
    let reason = &p.unschedulable[0].1;
    assert!(
        reason.contains("largest candidate x.4xlarge lacks memory"),
        "{reason}"
    );
    // And a cpu-bound pod names the biggest-cpu type.
    let p = plan(
        &[pod("render", 96_000, "1Gi")],
        &[],
        &[pool("default", vec![&compute, &memory])],
    );
    let reason = &p.unschedulable[0].1;
    assert!(
        reason.contains("largest candidate c.16xlarge lacks cpu"),
        "{reason}"
    );
}

#[test]
fn opens_a_second_claim_when_the_largest_type_is_full() {
    let small = it("small.large", 1900, "3Gi", 10, 0.05);
    let pods: Vec<PendingPod> = (0..6)
        .map(|i| pod(&format!("p{i}"), 500, "512Mi"))
        .collect();
    let p = plan(&pods, &[], &[pool("default", vec![&small])]);
    assert_eq!(p.claims.len(), 2);
    assert_eq!(p.claims.iter().map(|c| c.pods.len()).sum::<usize>(), 6);
}

#[test]
fn pods_share_a_node_only_when_that_is_not_dearer() {
    // Three one-GPU pods: one 4-GPU node costs 5.67/h, three 1-GPU nodes 3 x 1.006/h.
    let mut small = it("g5.xlarge", 3900, "15Gi", 58, 1.006);
    small
        .allocatable
        .set("nvidia.com/gpu", Milli::from_units(1));
    let mut big = it("g5.12xlarge", 47000, "180Gi", 234, 5.672);
    big.allocatable.set("nvidia.com/gpu", Milli::from_units(4));
    let gpu_pod = |n: &str| {
        let mut p = pod(n, 2000, "8Gi");
        p.requests.set("nvidia.com/gpu", Milli::from_units(1));
        p
    };
    let out = plan(
        &[gpu_pod("a"), gpu_pod("b"), gpu_pod("c")],
        &[],
        &[pool("gpu", vec![&small, &big])],
    );
    assert_eq!(out.claims.len(), 3);
    assert!(
        out.claims
            .iter()
            .all(|c| c.instance_types[0] == "g5.xlarge")
    );
    // Linear prices: sharing is never dearer, so pods still pack.
    let m = it("m5.large", 1900, "7Gi", 29, 0.096);
    let m2 = it("m5.xlarge", 3900, "15Gi", 58, 0.192);
    let out = plan(
        &[pod("a", 900, "1Gi"), pod("b", 900, "1Gi")],
        &[],
        &[pool("default", vec![&m, &m2])],
    );
    assert_eq!(out.claims.len(), 1);
}

#[test]
fn weights_order_pools_and_names_break_ties() {
    let t = it("m5.large", 1900, "7Gi", 29, 0.1);
    let mut heavy = pool("zz-heavy", vec![&t]);
    heavy.weight = 10;
    let light = pool("aa-light", vec![&t]);
    let p = plan(&[pod("a", 100, "100Mi")], &[], &[light.clone(), heavy]);
    assert_eq!(p.claims[0].pool, "zz-heavy");
    let p = plan(
        &[pod("a", 100, "100Mi")],
        &[],
        &[pool("bb", vec![&t]), light],
    );
    assert_eq!(p.claims[0].pool, "aa-light");
}

#[test]
fn taints_need_tolerations_and_say_so() {
    let t = it("g5.xlarge", 3900, "15Gi", 58, 1.0);
    let mut gpu = pool("gpu", vec![&t]);
    gpu.taints = vec![Taint {
        key: "nvidia.com/gpu".into(),
        value: Some("true".into()),
        effect: "NoSchedule".into(),
        time_added: None,
    }];
    let out = plan(
        &[pod("plain", 100, "100Mi")],
        &[],
        std::slice::from_ref(&gpu),
    );
    assert_eq!(
        out.unschedulable[0].1,
        "nodepool \"gpu\": taint nvidia.com/gpu=true:NoSchedule not tolerated"
    );
    let mut tolerant = pod("tolerant", 100, "100Mi");
    tolerant.tolerations = vec![Toleration {
        key: Some("nvidia.com/gpu".into()),
        operator: Some("Exists".into()),
        ..Default::default()
    }];
    assert_eq!(plan(&[tolerant], &[], &[gpu]).claims.len(), 1);
}

#[test]
fn custom_labels_must_be_defined_by_the_pool() {
    let t = it("m5.large", 1900, "7Gi", 29, 0.1);
    let plain = pool("default", vec![&t]);
    let mut teams = pool("teams", vec![&t]);
    teams.requirements.add(req("team", "In", &["a", "b"]));
    let p = plan(
        &[with_req(pod("a", 100, "100Mi"), req("team", "In", &["b"]))],
        &[],
        &[plain.clone(), teams],
    );
    assert_eq!(p.claims[0].pool, "teams");
    assert!(p.claims[0].requirements.get("team").unwrap().has("b"));
    let p = plan(
        &[with_req(pod("a", 100, "100Mi"), req("team", "In", &["b"]))],
        &[],
        &[plain],
    );
    assert!(
        p.unschedulable[0].1.contains("does not define"),
        "{}",
        p.unschedulable[0].1
    );
}

#[test]
fn zone_and_capacity_type_narrow_the_claim() {
    let t = it("m5.large", 1900, "7Gi", 29, 0.1);
    let mut both = pool("default", vec![&t]);
    both.requirements
        .add(req(labels::CAPACITY_TYPE, "Exists", &[]));
    both.requirements = {
        let mut r = Requirements::default();
        r.add(req(labels::CAPACITY_TYPE, "In", &["spot", "on-demand"]));
        r
    };
    let p = plan(
        &[with_req(
            with_req(pod("a", 100, "100Mi"), req(labels::ZONE, "In", &["z2"])),
            req(labels::CAPACITY_TYPE, "In", &["spot"]),
        )],
        &[],
        &[both],
    );
    let r = &p.claims[0].requirements;
    assert!(r.get(labels::ZONE).unwrap().has("z2") && !r.get(labels::ZONE).unwrap().has("z1"));
    assert_eq!(capacity_types(r), vec![CapacityType::Spot]);
}

#[test]
fn incompatible_pods_do_not_share_a_claim() {
    let t = it("m5.large", 1900, "7Gi", 29, 0.1);
    let pods = vec![
        with_req(pod("a", 100, "100Mi"), req(labels::ZONE, "In", &["z1"])),
        with_req(pod("b", 100, "100Mi"), req(labels::ZONE, "In", &["z2"])),
    ];
    assert_eq!(
        plan(&pods, &[], &[pool("default", vec![&t])]).claims.len(),
        2
    );
}

#[test]
fn affinity_alternatives_are_tried_in_order() {
    let t = it("m5.large", 1900, "7Gi", 29, 0.1);
    let mut p = pod("a", 100, "100Mi");
    let mut preferred = Requirements::default();
    preferred.add(req(labels::ZONE, "In", &["z9"]));
    let mut fallback = Requirements::default();
    fallback.add(req(labels::ZONE, "In", &["z1"]));
    p.requirements = vec![preferred, fallback];
    let out = plan(&[p], &[], &[pool("default", vec![&t])]);
    assert!(
        out.claims[0]
            .requirements
            .get(labels::ZONE)
            .unwrap()
            .has("z1"),
        "the impossible preference is relaxed"
    );
}

#[test]
fn daemonset_overhead_is_part_of_every_new_node() {
    let t = it("m5.large", 1900, "7Gi", 29, 0.1);
    let mut p = pool("default", vec![&t]);
    p.daemon_overhead.set(CPU, Milli(1000));
    let out = plan(&[pod("a", 1000, "100Mi")], &[], &[p]);
    assert!(
        out.claims.is_empty(),
        "1 cpu pod + 1 cpu of daemons exceed 1.9 cpu"
    );
    assert!(
        out.unschedulable[0]
            .1
            .contains("incl. daemonset overhead cpu=1"),
        "{}",
        out.unschedulable[0].1
    );
}

#[test]
fn min_values_keep_enough_diversity() {
    let a = it("c5.large", 1900, "3Gi", 29, 0.08);
    let b = it("m5.large", 1900, "7Gi", 29, 0.1);
    let big = it("r5.large", 1900, "15Gi", 29, 0.12);
    let mut p = pool("default", vec![&a, &b, &big]);
    p.requirements
        .add(Requirement::parse(labels::INSTANCE_FAMILY, "Exists", &[], Some(2)).unwrap());
    // 8 GiB fits only r5: one family left, fewer than minValues 2.
    let out = plan(&[pod("a", 100, "8Gi")], &[], std::slice::from_ref(&p));
    assert!(out.claims.is_empty());
    assert!(out.unschedulable[0].1.contains("minValues"));
    let out = plan(&[pod("a", 100, "2Gi")], &[], std::slice::from_ref(&p));
    assert_eq!(out.claims[0].instance_types.len(), 3);
    assert!(out.claims[0].min_values_relaxed.is_empty());
    // BestEffort: the 8 GiB pod gets its r5 node, and the claim says which minValues it falls short of.
    p.min_values_best_effort = true;
    let out = plan(&[pod("a", 100, "8Gi")], &[], &[p]);
    assert!(out.unschedulable.is_empty());
    assert_eq!(out.claims[0].instance_types, vec!["r5.large".to_string()]);
    assert_eq!(
        out.claims[0].min_values_relaxed,
        [(labels::INSTANCE_FAMILY.to_string(), 1)].into()
    );
}

// ---- topology -------------------------------------------------------------------------------------------

use crate::scheduling::topology::{
    HostPort, LabelSelector, Namespaces, PodTerm, Strength, TermKind, TopologyTerm,
};

fn term(kind: TermKind, key: &str, app: &str) -> TopologyTerm {
    TopologyTerm {
        kind,
        key: key.into(),
        namespaces: Namespaces::Listed(["default".to_string()].into()),
        selector: LabelSelector::from_labels([("app", app)]),
    }
}

fn spread(skew: u32, min_domains: u32) -> TermKind {
    TermKind::Spread {
        max_skew: skew,
        min_domains,
        honor_node_affinity: true,
    }
}

/// A pod labelled `app=<app>` holding `kind` on `key` against its own app, at `strength`.
fn topo_pod(name: &str, app: &str, kind: TermKind, key: &str, strength: Strength) -> PendingPod {
    let mut p = pod(name, 500, "512Mi");
    p.labels.insert("app".into(), app.into());
    p.topology.push(PodTerm {
        term: term(kind, key, app),
        strength,
    });
    p
}

/// `n` pods named `{prefix}0..`, all with the same topology term.
fn topo_pods(
    prefix: &str,
    n: usize,
    app: &str,
    kind: TermKind,
    key: &str,
    strength: Strength,
) -> Vec<PendingPod> {
    (0..n)
        .map(|i| topo_pod(&format!("{prefix}{i}"), app, kind, key, strength))
        .collect()
}

fn zone_of(c: &ClaimPlan) -> Option<String> {
    c.requirements
        .get(labels::ZONE)
        .and_then(|r| r.finite_values())
        .filter(|v| v.len() == 1)
        .and_then(|v| v.iter().next().cloned())
}

fn zone_counts(out: &Plan) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for c in &out.claims {
        *m.entry(zone_of(c).expect("spread pods pin their claim to one zone"))
            .or_default() += c.pods.len();
    }
    m
}

#[test]
fn zonal_spread_balances_and_pins_claims() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let pods: Vec<PendingPod> = topo_pods(
        "p",
        6,
        "web",
        spread(1, 1),
        labels::ZONE,
        Strength::Required,
    );
    let out = plan(&pods, &[], &[pool("default", vec![&t])]);
    assert!(out.unschedulable.is_empty(), "{:?}", out.unschedulable);
    assert_eq!(
        zone_counts(&out),
        [("z1".to_string(), 3), ("z2".to_string(), 3)].into()
    );
}

#[test]
fn spread_counts_existing_pods() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let mut avail = Resources::default();
    avail.set(CPU, Milli(0));
    let node = ExistingCapacity {
        name: "node/a".into(),
        available: avail,
        labels: [(labels::ZONE.to_string(), "z1".to_string())].into(),
        taints: vec![],
        pods: (0..2)
            .map(|_| ExistingPod {
                namespace: "default".into(),
                labels: [("app".to_string(), "web".to_string())].into(),
                ..Default::default()
            })
            .collect(),
    };
    let pods: Vec<PendingPod> = topo_pods(
        "p",
        2,
        "web",
        spread(1, 1),
        labels::ZONE,
        Strength::Required,
    );
    let out = plan(&pods, &[node], &[pool("default", vec![&t])]);
    assert_eq!(
        zone_counts(&out),
        [("z2".to_string(), 2)].into(),
        "z1 already has two"
    );
}

#[test]
fn min_domains_holds_the_global_minimum_at_zero() {
    // Two zones but minDomains 3: the minimum counts as 0, so each zone takes at most maxSkew pods.
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let pods: Vec<PendingPod> = topo_pods(
        "p",
        4,
        "web",
        spread(1, 3),
        labels::ZONE,
        Strength::Required,
    );
    let out = plan(&pods, &[], &[pool("default", vec![&t])]);
    assert_eq!(
        zone_counts(&out),
        [("z1".to_string(), 1), ("z2".to_string(), 1)].into()
    );
    assert_eq!(out.unschedulable.len(), 2);
    assert!(
        out.unschedulable[0]
            .1
            .contains("topology spread on topology.kubernetes.io/zone (maxSkew 1)"),
        "{}",
        out.unschedulable[0].1
    );
}

#[test]
fn hostname_spread_and_anti_affinity_split_nodes() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let mut pods: Vec<PendingPod> = topo_pods(
        "s",
        4,
        "spread",
        spread(2, 1),
        labels::HOSTNAME,
        Strength::Required,
    );
    pods.extend(topo_pods(
        "a",
        3,
        "anti",
        TermKind::AntiAffinity,
        labels::HOSTNAME,
        Strength::Required,
    ));
    let out = plan(&pods, &[], &[pool("default", vec![&t])]);
    assert!(out.unschedulable.is_empty());
    for c in &out.claims {
        let n = |prefix: &str| c.pods.iter().filter(|k| k.name.starts_with(prefix)).count();
        assert!(n("s") <= 2, "maxSkew 2 per node: {:?}", c.pods);
        assert!(n("a") <= 1, "anti-affinity: {:?}", c.pods);
    }
    assert_eq!(
        out.claims.len(),
        3,
        "three anti-affine pods need three nodes; spread pods fit among them"
    );
}

#[test]
fn anti_affinity_of_a_running_pod_keeps_matching_pods_away() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let mut avail = Resources::default();
    avail.set(CPU, Milli(8000));
    avail.set(MEMORY, parse("32Gi").unwrap());
    avail.set(PODS, Milli::from_units(50));
    let node = ExistingCapacity {
        name: "node/a".into(),
        available: avail,
        labels: [(labels::ZONE.to_string(), "z1".to_string())].into(),
        taints: vec![],
        pods: vec![ExistingPod {
            namespace: "default".into(),
            labels: [("app".to_string(), "db".to_string())].into(),
            anti_affinity: vec![term(TermKind::AntiAffinity, labels::ZONE, "web")],
            ..Default::default()
        }],
    };
    let mut web = pod("web", 500, "512Mi");
    web.labels.insert("app".into(), "web".into());
    let out = plan(&[web], &[node], &[pool("default", vec![&t])]);
    assert!(
        out.on_existing.is_empty(),
        "the db pod's anti-affinity closes z1"
    );
    assert_eq!(zone_of(&out.claims[0]).as_deref(), Some("z2"));
}

#[test]
fn zonal_anti_affinity_across_undecided_claims() {
    // Three mutually anti-affine pods, two zones: two claims in distinct zones, the third explained.
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let pods: Vec<PendingPod> = topo_pods(
        "p",
        3,
        "db",
        TermKind::AntiAffinity,
        labels::ZONE,
        Strength::Required,
    );
    let out = plan(&pods, &[], &[pool("default", vec![&t])]);
    assert_eq!(
        zone_counts(&out),
        [("z1".to_string(), 1), ("z2".to_string(), 1)].into()
    );
    assert_eq!(out.unschedulable.len(), 1);
    assert!(
        out.unschedulable[0]
            .1
            .contains("pod anti-affinity on topology.kubernetes.io/zone")
    );
}

#[test]
fn zonal_self_affinity_gathers_in_one_zone() {
    let t = it("m.small", 1000, "4Gi", 58, 0.02);
    let pods: Vec<PendingPod> = topo_pods(
        "p",
        5,
        "cache",
        TermKind::Affinity,
        labels::ZONE,
        Strength::Required,
    );
    let out = plan(&pods, &[], &[pool("default", vec![&t])]);
    assert!(out.unschedulable.is_empty());
    assert!(out.claims.len() > 1, "the pods need several small nodes");
    assert_eq!(zone_counts(&out).len(), 1, "all in one zone");
}

#[test]
fn preferences_are_relaxed_when_they_cannot_hold() {
    // A node limit of one: preferred anti-affinity and a ScheduleAnyway spread give way; required would not.
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let mut p = pool("default", vec![&t]);
    let mut rem = Resources::default();
    rem.set(NODES, Milli::from_units(1));
    p.remaining_limits = Some(rem);
    let soft: Vec<PendingPod> = topo_pods(
        "p",
        2,
        "web",
        TermKind::AntiAffinity,
        labels::HOSTNAME,
        Strength::PreferredAntiAffinity,
    );
    let out = plan(&soft, &[], std::slice::from_ref(&p));
    assert_eq!((out.claims.len(), out.unschedulable.len()), (1, 0));
    let hard: Vec<PendingPod> = topo_pods(
        "p",
        2,
        "web",
        TermKind::AntiAffinity,
        labels::HOSTNAME,
        Strength::Required,
    );
    let out = plan(&hard, &[], std::slice::from_ref(&p));
    assert_eq!((out.claims.len(), out.unschedulable.len()), (1, 1));
    assert!(
        out.unschedulable[0].1.contains("`nodes` limit"),
        "{}",
        out.unschedulable[0].1
    );
    let anyway: Vec<PendingPod> = topo_pods(
        "p",
        4,
        "web",
        spread(1, 1),
        labels::ZONE,
        Strength::ScheduleAnyway,
    );
    let out = plan(&anyway, &[], &[p]);
    assert_eq!((out.claims.len(), out.unschedulable.len()), (1, 0));
}

#[test]
fn host_ports_keep_pods_apart() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let pods: Vec<PendingPod> = (0..2)
        .map(|i| {
            let mut p = pod(&format!("p{i}"), 100, "64Mi");
            p.host_ports.push(HostPort {
                protocol: "TCP".into(),
                port: 9100,
                ip: String::new(),
            });
            p
        })
        .collect();
    let out = plan(&pods, &[], &[pool("default", vec![&t])]);
    assert_eq!(out.claims.len(), 2);
}

#[test]
fn a_daemonsets_host_port_is_taken_on_every_new_node() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let port = |n: i32| HostPort {
        protocol: "TCP".into(),
        port: n,
        ip: String::new(),
    };
    let mut p = pool("default", vec![&t]);
    p.daemon_ports
        .push((port(9100), "monitoring/node-exporter".into()));
    let mut clash = pod("exporter", 100, "64Mi");
    clash.host_ports.push(port(9100));
    let mut fine = pod("web", 100, "64Mi");
    fine.host_ports.push(port(8080));
    let out = plan(&[clash, fine], &[], &[p]);
    assert_eq!(out.claims.len(), 1);
    assert_eq!(out.claims[0].pods[0].name, "web");
    let (who, why) = &out.unschedulable[0];
    assert_eq!(who.name, "exporter");
    assert!(
        why.contains("host port 9100/TCP is held by DaemonSet monitoring/node-exporter"),
        "{why}"
    );
}

#[test]
fn node_limits_are_pessimistic() {
    // cpu limit 10: the first claim may become an 8-cpu node, leaving room only for types of 2 cpu.
    let big = it("m.2xlarge", 8000, "32Gi", 58, 0.3);
    let small = it("m.large", 2000, "8Gi", 58, 0.1);
    let mut p = pool("default", vec![&big, &small]);
    let mut rem = Resources::default();
    rem.set(CPU, Milli(10_000));
    p.remaining_limits = Some(rem);
    let pods: Vec<PendingPod> = topo_pods(
        "p",
        2,
        "web",
        TermKind::AntiAffinity,
        labels::HOSTNAME,
        Strength::Required,
    );
    let out = plan(&pods, &[], &[p]);
    assert_eq!(out.claims.len(), 2);
    assert_eq!(out.claims[1].instance_types, vec!["m.large".to_string()]);
}

type PodSpecs = Vec<(i128, i128, Option<&'static str>)>;
type TypeSpecs = Vec<(i128, i128, f64)>;

fn arb_world() -> impl Strategy<Value = (PodSpecs, TypeSpecs)> {
    let pods = proptest::collection::vec(
        (
            50i128..4000,
            64i128..8192,
            prop_oneof![Just(None), Just(Some("z1")), Just(Some("z2"))],
        ),
        1..40,
    );
    let types = proptest::collection::vec((1000i128..16000, 1024i128..65536, 0.01f64..2.0), 1..8);
    (pods, types)
}

fn build(
    pods: &[(i128, i128, Option<&'static str>)],
    types: &[(i128, i128, f64)],
) -> (Vec<PendingPod>, Vec<InstanceType>) {
    let ps = pods
        .iter()
        .enumerate()
        .map(|(i, (c, m, z))| {
            let p = pod(&format!("p{i:03}"), *c, &format!("{m}Mi"));
            match z {
                Some(z) => with_req(p, req(labels::ZONE, "In", &[z])),
                None => p,
            }
        })
        .collect();
    let ts = types
        .iter()
        .enumerate()
        .map(|(i, (c, m, price))| it(&format!("t{i}.x"), *c, &format!("{m}Mi"), 58, *price))
        .collect();
    (ps, ts)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Every claim's pods fit its cheapest listed type and agree with its requirements; every pod is
    /// either placed or explained, exactly once; the same input gives the same plan.
    #[test]
    fn plans_respect_constraints_and_are_deterministic((pods, types) in arb_world()) {
        let (ps, ts) = build(&pods, &types);
        let p = pool("default", ts.iter().collect());
        let out = plan(&ps, &[], std::slice::from_ref(&p));
        prop_assert_eq!(&out, &plan(&ps, &[], std::slice::from_ref(&p)));
        let placed: usize = out.claims.iter().map(|c| c.pods.len()).sum();
        prop_assert_eq!(placed + out.unschedulable.len(), ps.len());
        for c in &out.claims {
            let first = ts.iter().find(|t| t.name == c.instance_types[0]).unwrap();
            prop_assert!(first.allocatable.fits(&c.requests));
            for key in &c.pods {
                let pod = ps.iter().find(|p| &p.key == key).unwrap();
                if let Some(z) = pod.requirements[0].get(labels::ZONE) {
                    let claim_zone = c.requirements.get(labels::ZONE).unwrap();
                    prop_assert!(["z1", "z2"].iter().all(|v| !claim_zone.has(v) || z.has(v)));
                }
            }
        }
    }

    /// Offering one more instance type never strands a pod that could be placed before.
    #[test]
    fn more_instance_types_never_hurt((pods, types) in arb_world(), extra in (1000i128..32000, 1024i128..131072, 0.01f64..4.0)) {
        let (ps, ts) = build(&pods, &types);
        let before = plan(&ps, &[], &[pool("default", ts.iter().collect())]);
        let (_, more) = build(&[], &[extra]);
        let mut all: Vec<InstanceType> = ts.clone();
        all.push(InstanceType { name: "extra.x".into(), ..more[0].clone() });
        let after = plan(&ps, &[], &[pool("default", all.iter().collect())]);
        let stuck_before: BTreeSet<&ObjectKey> = before.unschedulable.iter().map(|(k, _)| k).collect();
        for (k, _) in &after.unschedulable {
            prop_assert!(stuck_before.contains(k), "{k} became unschedulable");
        }
    }
}

/// A random mix over the five kinds of the reference benchmark: (kind, label value, cpu milli).
fn arb_topology_pods() -> impl Strategy<Value = Vec<(u8, u8, i128)>> {
    proptest::collection::vec((0u8..5, 0u8..3, 100i128..2000), 1..40)
}

fn topology_world(spec: &[(u8, u8, i128)]) -> Vec<PendingPod> {
    spec.iter()
        .enumerate()
        .map(|(i, (kind, v, cpu))| {
            let name = format!("k{kind}-v{v}-{i:03}");
            let value = format!("v{v}");
            let (label, term) = match kind {
                0 => ("generic", None),
                1 => ("zspread", Some((spread(1, 1), labels::ZONE))),
                2 => ("hspread", Some((spread(2, 1), labels::HOSTNAME))),
                3 => ("zaff", Some((TermKind::Affinity, labels::ZONE))),
                _ => ("hanti", Some((TermKind::AntiAffinity, labels::HOSTNAME))),
            };
            let mut p = pod(&name, *cpu, "256Mi");
            p.labels.insert(label.into(), value.clone());
            if let Some((kind, key)) = term {
                p.topology.push(PodTerm {
                    term: TopologyTerm {
                        kind,
                        key: key.into(),
                        namespaces: Namespaces::Listed(["default".to_string()].into()),
                        selector: LabelSelector::from_labels([(label, value.as_str())]),
                    },
                    strength: Strength::Required,
                });
            }
            p
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Topology terms hold in every plan: at most one anti-affine pod and `maxSkew` hostname-spread pods of
    /// a group per claim; zonal spread pods sit on claims settled on one zone, within the skew; a zonal
    /// affinity group shares one zone; every pod is placed or explained once; the plan is deterministic.
    #[test]
    fn topology_constraints_hold(spec in arb_topology_pods()) {
        let small = it("m.large", 2000, "8Gi", 58, 0.1);
        let big = it("m.2xlarge", 8000, "32Gi", 58, 0.38);
        let pods = topology_world(&spec);
        let p = pool("default", vec![&small, &big]);
        let out = plan(&pods, &[], std::slice::from_ref(&p));
        prop_assert_eq!(&out, &plan(&pods, &[], std::slice::from_ref(&p)));
        let placed: usize = out.claims.iter().map(|c| c.pods.len()).sum();
        prop_assert_eq!(placed + out.unschedulable.len(), pods.len());
        let mut zspread: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let mut zaff: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for c in &out.claims {
            let mut per_claim: BTreeMap<String, usize> = BTreeMap::new();
            for k in &c.pods {
                let group = k.name.split('-').take(2).collect::<Vec<_>>().join("-");
                *per_claim.entry(group.clone()).or_default() += 1;
                if k.name.starts_with("k1") {
                    let z = zone_of(c);
                    prop_assert!(z.is_some(), "zonal spread pod on an unsettled claim");
                    *zspread.entry(group.clone()).or_default().entry(z.unwrap()).or_default() += 1;
                }
                if k.name.starts_with("k3") {
                    let z = zone_of(c);
                    prop_assert!(z.is_some(), "zonal affinity pod on an unsettled claim");
                    zaff.entry(group).or_default().insert(z.unwrap());
                }
            }
            for (g, n) in &per_claim {
                if g.starts_with("k4") {
                    prop_assert!(*n <= 1, "anti-affinity group {} has {} pods on one claim", g, n);
                }
                if g.starts_with("k2") {
                    prop_assert!(*n <= 2, "hostname spread group {} has {} pods on one claim", g, n);
                }
            }
        }
        for (g, zones) in &zspread {
            let counts: Vec<usize> = ["z1", "z2"].iter().map(|z| zones.get(*z).copied().unwrap_or(0)).collect();
            prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{} skewed: {:?}", g, counts);
        }
        for (g, zones) in &zaff {
            prop_assert_eq!(zones.len(), 1, "affinity group {} split over {:?}", g, zones);
        }
    }
}

// ---- relaxation order (Karpenter's preferences) -----------------------------------------------------------

fn zone_req(z: &str) -> Requirements {
    let mut r = Requirements::default();
    r.add(req(labels::ZONE, "In", &[z]));
    r
}

#[test]
fn an_unsatisfiable_heavy_preference_does_not_erase_a_lighter_one() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    // As `pod_requirements` orders them: heaviest (z9, offered nowhere), then the lighter (z2), then none.
    let mut p = pod("a", 100, "100Mi");
    p.requirements = vec![zone_req("z9"), zone_req("z2"), Requirements::default()];
    p.required_alternatives = 1;
    let out = plan(&[p], &[], &[pool("default", vec![&t])]);
    assert_eq!(zone_of(&out.claims[0]).as_deref(), Some("z2"));
}

#[test]
fn preferred_pod_affinity_gives_way_before_preferred_node_affinity() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    // A full node in z1 runs the web pod the cache would like to be near.
    let full = ExistingCapacity {
        name: "node/n1".into(),
        available: Resources::default(),
        labels: [
            (labels::ZONE.to_string(), "z1".to_string()),
            (labels::HOSTNAME.to_string(), "n1".to_string()),
        ]
        .into(),
        taints: Vec::new(),
        pods: vec![ExistingPod {
            namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            ..Default::default()
        }],
    };
    let mut p = topo_pod(
        "cache",
        "cache",
        TermKind::Affinity,
        labels::ZONE,
        Strength::PreferredAffinity,
    );
    p.topology[0].term = term(TermKind::Affinity, labels::ZONE, "web");
    // It also prefers z2 by node affinity: Karpenter drops the pod affinity first and keeps z2.
    p.requirements = vec![zone_req("z2"), Requirements::default()];
    p.required_alternatives = 1;
    let out = plan(&[p], &[full], &[pool("default", vec![&t])]);
    assert_eq!(zone_of(&out.claims[0]).as_deref(), Some("z2"));
}

#[test]
fn a_prefer_no_schedule_pool_is_avoided_while_another_can_take_the_pod() {
    let t = it("m.large", 8000, "32Gi", 58, 0.1);
    let small = it("s.small", 500, "1Gi", 8, 0.01);
    let mut tainted = pool("spare", vec![&t]);
    tainted.weight = 100;
    tainted.taints.push(Taint {
        key: "spare".into(),
        value: None,
        effect: "PreferNoSchedule".into(),
        time_added: None,
    });
    let plain = pool("main", vec![&t]);
    let out = plan(
        &[pod("a", 100, "100Mi")],
        &[],
        &[tainted.clone(), plain.clone()],
    );
    assert_eq!(
        out.claims[0].pool, "main",
        "the heavier pool's taint is a preference to honour"
    );
    // When only the tainted pool can take it, the preference gives way.
    let tiny = pool("main", vec![&small]);
    let out = plan(&[pod("a", 2000, "100Mi")], &[], &[tainted, tiny]);
    assert_eq!(out.claims[0].pool, "spare");
}

#[test]
fn a_static_claim_lists_every_type_that_holds_the_daemons_cheapest_first() -> Result<(), String> {
    let small = it("small.large", 900, "3Gi", 10, 0.05);
    let large = it("large.large", 7900, "30Gi", 50, 0.20);
    let medium = it("medium.large", 3900, "14Gi", 20, 0.10);
    let mut p = pool("static", vec![&large, &small, &medium]);
    let claim = static_claim(&p)?;
    assert_eq!(
        claim.instance_types,
        ["small.large", "medium.large", "large.large"]
    );
    assert!(claim.pods.is_empty());
    // DaemonSet pods that do not fit the small type leave it out; the claim asks for them.
    p.daemon_overhead.set(CPU, Milli(1000));
    let claim = static_claim(&p)?;
    assert_eq!(claim.instance_types, ["medium.large", "large.large"]);
    assert_eq!(claim.requests.get(CPU), Milli(1000));
    // A requirement no type meets: no claim, and why.
    p.requirements
        .add(req(labels::INSTANCE_FAMILY, "In", &["nothing"]));
    assert!(static_claim(&p).is_err_and(|e| e.contains("no instance type")));
    Ok(())
}

/// A type with a capacity reservation of `room` in z1 (Karpenter's price: on-demand / 10^7).
fn reserved_type(name: &str, cpu_m: i128, price: f64, id: &str, room: u32) -> InstanceType {
    let mut t = it(name, cpu_m, "30Gi", 50, price);
    t.offerings.push(Offering {
        zone: "z1".into(),
        capacity_type: CapacityType::Reserved,
        price: price / 1e7,
        available: room > 0,
        reservation: Some(crate::cloudprovider::ReservedOffering {
            id: id.into(),
            labels: [
                (labels::CAPACITY_RESERVATION_ID.to_string(), id.to_string()),
                (
                    labels::CAPACITY_RESERVATION_TYPE.to_string(),
                    "default".to_string(),
                ),
            ]
            .into(),
            capacity: room,
            rank: 0,
        }),
    });
    t
}

fn reserving_pool<'a>(types: Vec<&'a InstanceType>, cts: &[&str]) -> PoolOptions<'a> {
    let mut p = pool("default", types);
    p.requirements.0.insert(
        labels::CAPACITY_TYPE.into(),
        req(labels::CAPACITY_TYPE, "In", cts),
    );
    p
}

fn allowed(c: &ClaimPlan, key: &str) -> Vec<String> {
    c.requirements
        .get(key)
        .and_then(|r| r.finite_values())
        .map(|v| v.iter().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn reserved_capacity_is_used_while_it_has_room_then_on_demand() -> Result<(), String> {
    // Karpenter's scheduling suite: with room for two, two claims are pinned to the reservation and the
    // third falls back to on-demand in the same pass.
    let r = reserved_type("m.2xlarge", 7900, 0.40, "cr-1", 2);
    let pods: Vec<PendingPod> = (0..3).map(|i| pod(&format!("p{i}"), 6000, "1Gi")).collect();
    let p = plan(
        &pods,
        &[],
        &[reserving_pool(vec![&r], &["reserved", "on-demand"])],
    );
    assert!(p.unschedulable.is_empty(), "{:?}", p.unschedulable);
    assert_eq!(p.claims.len(), 3);
    let kinds: Vec<Vec<String>> = p
        .claims
        .iter()
        .map(|c| allowed(c, labels::CAPACITY_TYPE))
        .collect();
    assert_eq!(
        kinds,
        vec![
            vec!["reserved".to_string()],
            vec!["reserved".to_string()],
            vec!["on-demand".to_string()]
        ]
    );
    assert_eq!(
        allowed(&p.claims[0], labels::CAPACITY_RESERVATION_ID),
        vec!["cr-1".to_string()]
    );
    assert!(
        p.claims[2]
            .requirements
            .get(labels::CAPACITY_RESERVATION_ID)
            .is_none()
    );
    Ok(())
}

#[test]
fn a_reserved_claim_fills_only_as_far_as_its_reserved_type_holds() -> Result<(), String> {
    // Strict mode: a pod that would leave the claim no type of its reservation goes to another claim
    // rather than growing it onto a larger, unreserved type.
    let small = reserved_type("m.xlarge", 3900, 0.20, "cr-1", 1);
    let big = it("m.4xlarge", 15900, "60Gi", 100, 0.80);
    let pods: Vec<PendingPod> = (0..6).map(|i| pod(&format!("p{i}"), 1000, "1Gi")).collect();
    let p = plan(
        &pods,
        &[],
        &[reserving_pool(
            vec![&small, &big],
            &["reserved", "on-demand"],
        )],
    );
    assert!(p.unschedulable.is_empty());
    let reserved: Vec<&ClaimPlan> = p
        .claims
        .iter()
        .filter(|c| allowed(c, labels::CAPACITY_TYPE) == vec!["reserved".to_string()])
        .collect();
    assert_eq!(reserved.len(), 1);
    assert_eq!(reserved[0].pods.len(), 3, "3.9 cpu hold three 1-cpu pods");
    assert_eq!(reserved[0].instance_types, vec!["m.xlarge".to_string()]);
    let rest: usize = p
        .claims
        .iter()
        .filter(|c| allowed(c, labels::CAPACITY_TYPE) == vec!["on-demand".to_string()])
        .map(|c| c.pods.len())
        .sum();
    assert_eq!(rest, 3);
    Ok(())
}

#[test]
fn reservations_need_the_pool_to_allow_reserved() -> Result<(), String> {
    let r = reserved_type("m.2xlarge", 7900, 0.40, "cr-1", 5);
    let pods = vec![pod("a", 6000, "1Gi")];
    // The default on-demand requirement: the reservation is not this pool's to use.
    let p = plan(&pods, &[], &[pool("default", vec![&r])]);
    assert_eq!(p.claims.len(), 1);
    assert!(
        p.claims[0]
            .requirements
            .get(labels::CAPACITY_RESERVATION_ID)
            .is_none()
    );
    assert_eq!(
        allowed(&p.claims[0], labels::CAPACITY_TYPE),
        vec!["on-demand".to_string()]
    );
    Ok(())
}

#[test]
fn a_pod_selecting_a_reservation_lands_only_in_it() -> Result<(), String> {
    let r = reserved_type("m.2xlarge", 7900, 0.40, "cr-1", 1);
    let pick = |n: &str| {
        with_req(
            pod(n, 6000, "1Gi"),
            req(labels::CAPACITY_RESERVATION_ID, "In", &["cr-1"]),
        )
    };
    let pools = [reserving_pool(vec![&r], &["reserved", "on-demand"])];
    let p = plan(&[pick("a"), pick("b")], &[], &pools);
    assert_eq!(p.claims.len(), 1, "one slot of cr-1");
    assert_eq!(
        allowed(&p.claims[0], labels::CAPACITY_TYPE),
        vec!["reserved".to_string()]
    );
    assert_eq!(
        p.unschedulable.len(),
        1,
        "an on-demand node would lack the label"
    );
    // A pool allowing only reserved capacity cannot launch once the room is taken.
    let only = [reserving_pool(vec![&r], &["reserved"])];
    let p = plan(&[pod("c", 6000, "1Gi"), pod("d", 6000, "1Gi")], &[], &only);
    assert_eq!(p.claims.len(), 1);
    let why = &p.unschedulable.first().ok_or("one pod left over")?.1;
    assert!(why.contains("capacity reservation"), "{why}");
    Ok(())
}

#[test]
fn at_equal_price_an_odcr_is_taken_before_an_interruptible_one() -> Result<(), String> {
    // Karpenter's partition order: ODCRs, then Capacity Blocks, then interruptible ODCRs.
    let mut t = reserved_type("m.2xlarge", 7900, 0.40, "cr-a", 1);
    let mut second = t.offerings.last().cloned().ok_or("a reserved offering")?;
    if let Some(r) = t.offerings.last_mut().and_then(|o| o.reservation.as_mut()) {
        r.rank = 2;
    }
    if let Some(r) = second.reservation.as_mut() {
        r.id = "cr-b".into();
        r.labels
            .insert(labels::CAPACITY_RESERVATION_ID.into(), "cr-b".into());
    }
    t.offerings.push(second);
    let p = plan(
        &[pod("a", 6000, "1Gi"), pod("b", 6000, "1Gi")],
        &[],
        &[reserving_pool(vec![&t], &["reserved", "on-demand"])],
    );
    let ids: Vec<Vec<String>> = p
        .claims
        .iter()
        .map(|c| allowed(c, labels::CAPACITY_RESERVATION_ID))
        .collect();
    assert_eq!(
        ids,
        vec![vec!["cr-b".to_string()], vec!["cr-a".to_string()]]
    );
    Ok(())
}
