//! `cargo xtask bench`: speed figures measured here, never asserted by tests.

use std::time::Instant;

use dovetail::cloud::{InstanceTypeOffering, SpotPrice};
use dovetail::crds::labels;
use dovetail::instancetype::{InstanceType, build};
use dovetail::kube::ObjectKey;
use dovetail::quantity::Milli;
use dovetail::resources::{CPU, MEMORY, PODS, Resources};
use dovetail::scheduling::{PendingPod, PoolOptions, Requirement, Requirements, plan};
use fakecloud::Catalog;

/// The built-in catalog in three zones, spot at 40% of on-demand.
fn catalog() -> Vec<InstanceType> {
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

/// Deterministic pod mix: cpu from {100,250,500,1000,1500}m, memory 100..4096Mi, a third pinned to a zone.
fn pods(n: usize) -> Vec<PendingPod> {
    let cpus = [100, 250, 500, 1000, 1500];
    let mut x: u64 = 42;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut r = Resources::default();
            r.set(CPU, Milli(cpus[(x % 5) as usize]));
            r.set(
                MEMORY,
                Milli::from_units((100 + (x >> 8) as i128 % 3997) << 20),
            );
            r.set(PODS, Milli::from_units(1));
            let mut p = PendingPod::simple(ObjectKey::namespaced("bench", format!("p{i:06}")), r);
            if i % 3 == 0 {
                let zone = ["us-east-1a", "us-east-1b", "us-east-1c"][(x >> 20) as usize % 3];
                p.requirements[0].add(Requirement::in_values(labels::ZONE, [zone]));
            }
            p
        })
        .collect()
}

pub fn run() -> String {
    let types = catalog();
    let mut reqs = Requirements::default();
    reqs.add(Requirement::in_values(
        labels::CAPACITY_TYPE,
        ["spot", "on-demand"],
    ));
    reqs.add(Requirement::in_values(labels::ARCH, ["amd64"]));
    let pool = PoolOptions {
        name: "default".into(),
        weight: 0,
        requirements: reqs,
        taints: Vec::new(),
        instance_types: types.iter().collect(),
        daemon_overhead: Resources::default(),
        remaining_limits: None,
    };
    let mut out =
        String::from("| pods | instance types | claims | seconds | pods/s |\n|--|--|--|--|--|\n");
    let sizes: Vec<usize> = std::env::var("BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1_000, 5_000, 20_000]);
    for n in sizes {
        let ps = pods(n);
        let start = Instant::now();
        let result = plan(&ps, &[], std::slice::from_ref(&pool));
        let secs = start.elapsed().as_secs_f64();
        let row = format!(
            "| {n} | {} | {} | {secs:.3} | {:.0} |\n",
            types.len(),
            result.claims.len(),
            n as f64 / secs
        );
        eprint!("{row}");
        out.push_str(&row);
    }
    out
}
