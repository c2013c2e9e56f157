//! `cargo xtask bench`: speed figures measured here, never asserted by tests.

use std::time::Instant;

use dovetail::aws::cloud::{InstanceTypeOffering, SpotPrice};
use dovetail::aws::instancetype::build;
use dovetail::cloudprovider::InstanceType;
use dovetail::crds::labels;
use dovetail::kube::ObjectKey;
use dovetail::quantity::Milli;
use dovetail::resources::{CPU, MEMORY, PODS, Resources};
use dovetail::scheduling::topology::{
    LabelSelector, Namespaces, PodTerm, Strength, TermKind, TopologyTerm,
};
use dovetail::scheduling::{PendingPod, PoolOptions, Requirement, Requirements, plan};
use fakecloud::Catalog;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};

/// The built-in catalog in three zones, spot at 40% of on-demand.
pub(crate) fn catalog() -> Vec<InstanceType> {
    let cat = Catalog::builtin();
    let zones = ["us-east-1a", "us-east-1b", "us-east-1c"];
    let infos = cat.describe_instance_types();
    let offerings: Vec<InstanceTypeOffering> = cat
        .types
        .keys()
        .flat_map(|t| {
            zones.iter().map(move |z| InstanceTypeOffering {
                instance_type: t.clone(),
                zone: z.to_string(),
            })
        })
        .collect();
    let od = cat
        .types
        .iter()
        .map(|(n, e)| (n.clone(), e.on_demand_price))
        .collect();
    let spot: Vec<SpotPrice> = cat
        .types
        .iter()
        .flat_map(|(n, e)| {
            zones.iter().map(move |z| SpotPrice {
                instance_type: n.clone(),
                zone: z.to_string(),
                price: e.on_demand_price * 0.4,
            })
        })
        .collect();
    build(&infos, &offerings, &od, &spot)
}

/// 400 instance types: the built-in catalog, then variants of it (`m5x1.large`, ...) priced 3% apart,
/// so the planner sees as many candidates as Karpenter's benchmark.
fn reference_types(base: &[InstanceType]) -> Vec<InstanceType> {
    let mut out: Vec<InstanceType> = base.to_vec();
    let mut k = 1;
    while out.len() < 400 {
        for it in base {
            if out.len() == 400 {
                break;
            }
            let mut v = it.clone();
            let (family, size) = it.name.split_once('.').unwrap_or((&it.name, ""));
            v.name = format!("{family}x{k}.{size}");
            v.labels
                .insert(labels::INSTANCE_TYPE.to_string(), v.name.clone());
            for o in &mut v.offerings {
                o.price *= 1.0 + 0.03 * k as f64;
            }
            out.push(v);
        }
        k += 1;
    }
    out
}

fn term(kind: TermKind, key: &str, label: &str, value: &str) -> PodTerm {
    PodTerm {
        term: TopologyTerm {
            kind,
            key: key.to_string(),
            namespaces: Namespaces::Listed(["bench".to_string()].into()),
            selector: LabelSelector::from_labels([(label, value)]),
        },
        strength: Strength::Required,
    }
}

/// The reference mix, seed 42: pods split evenly into generic, zonal topology spread, hostname
/// topology spread, zonal self-affinity and hostname anti-affinity; cpu from {100,250,500,1000,1500}m, memory
/// from {100,256,512,1024,2048,4096}Mi. Label values come from seven (`a`..`g`), as in Karpenter's benchmark,
/// and all anti-affinity pods repel each other.
fn reference_pods(n: usize) -> Vec<PendingPod> {
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let cpus = [100, 250, 500, 1000, 1500];
    let mems = [100, 256, 512, 1024, 2048, 4096];
    let values = ["a", "b", "c", "d", "e", "f", "g"];
    let spread = TermKind::Spread {
        max_skew: 1,
        min_domains: 1,
        honor_node_affinity: true,
    };
    (0..n)
        .map(|i| {
            let mut r = Resources::default();
            r.set(
                CPU,
                Milli(cpus[(rng.next_u64() % cpus.len() as u64) as usize]),
            );
            r.set(
                MEMORY,
                Milli::from_units(mems[(rng.next_u64() % mems.len() as u64) as usize] << 20),
            );
            r.set(PODS, Milli::from_units(1));
            let mut p = PendingPod::simple(ObjectKey::namespaced("bench", format!("p{i:06}")), r);
            let v = values[(rng.next_u64() % values.len() as u64) as usize];
            match i % 5 {
                0 => {
                    p.labels.insert("my-label".into(), v.into());
                }
                1 | 2 => {
                    p.labels.insert("my-label".into(), v.into());
                    let key = if i % 5 == 1 {
                        labels::ZONE
                    } else {
                        labels::HOSTNAME
                    };
                    p.topology.push(term(spread, key, "my-label", v));
                }
                3 => {
                    p.labels.insert("my-affinity".into(), v.into());
                    p.topology
                        .push(term(TermKind::Affinity, labels::ZONE, "my-affinity", v));
                }
                _ => {
                    p.labels.insert("app".into(), "nginx".into());
                    p.topology.push(term(
                        TermKind::AntiAffinity,
                        labels::HOSTNAME,
                        "app",
                        "nginx",
                    ));
                }
            }
            p
        })
        .collect()
}

pub fn run() -> String {
    let types = reference_types(&catalog());
    let mut reqs = Requirements::default();
    reqs.add(Requirement::in_values(
        labels::CAPACITY_TYPE,
        ["spot", "on-demand"],
    ));
    let pool = PoolOptions {
        name: "default".into(),
        weight: 0,
        requirements: reqs,
        taints: Vec::new(),
        instance_types: types.iter().map(std::borrow::Cow::Borrowed).collect(),
        daemon_overhead: Resources::default(),
        daemon_ports: Vec::new(),
        remaining_limits: None,
        min_values_best_effort: false,
    };
    let mut out = String::from(
        "| pods | instance types | claims | unschedulable | seconds | pods/s |\n|--|--|--|--|--|--|\n",
    );
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 20_000]);
    for n in sizes {
        let ps = reference_pods(n);
        let start = Instant::now();
        let result = plan(&ps, &[], std::slice::from_ref(&pool));
        let secs = start.elapsed().as_secs_f64();
        let row = format!(
            "| {n} | {} | {} | {} | {secs:.3} | {:.0} |\n",
            types.len(),
            result.claims.len(),
            result.unschedulable.len(),
            n as f64 / secs
        );
        eprint!("{row}");
        out.push_str(&row);
    }
    out
}
