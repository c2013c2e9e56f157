//! Wire mode: every library scenario with the controller's production kube-rs adapter talking HTTP over
//! turmoil's simulated TCP to fakekube's HTTP front. Each keeps its expectations and invariants, and one
//! seed still gives one trace.

use dovetail_sim::{RunOptions, Scenario, simulate};

fn run_wire(name: &str, seed: Option<u64>) -> dovetail_sim::Outcome {
    let path = dovetail_tests::root().join("scenarios").join(name);
    let scenario = Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let options = RunOptions {
        seed,
        wire: true,
        ..RunOptions::default()
    };
    simulate(&scenario, &options).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// One test per library scenario, so they run side by side.
macro_rules! keeps_its_expectations {
    ($($test:ident => $file:literal),* $(,)?) => {$(
        #[test]
        fn $test() {
            let outcome = run_wire($file, None);
            assert!(outcome.passed, "{} in wire mode:\n{}", $file, outcome.summary);
            // The controller acted (a wire client that cannot start leaves only a `cannot start` line).
            assert!(
                outcome.trace.lines().any(|l| l.contains(" provision ") || l.contains(" lifecycle ")),
                "{}: the controller did nothing", $file
            );
        }
    )*};
}

keeps_its_expectations! {
    api_blips => "api-blips.yaml",
    balanced_consolidation => "balanced-consolidation.yaml",
    budgets_schedule => "budgets-schedule.yaml",
    buffer_burst => "buffer-burst.yaml",
    burst_scale_up => "burst-scale-up.yaml",
    cluster_dump => "cluster-dump.yaml",
    controller_crash_loop => "controller-crash-loop.yaml",
    daemonset_grows => "daemonset-grows.yaml",
    diurnal_consolidation => "diurnal-consolidation.yaml",
    drift_ami_rollout => "drift-ami-rollout.yaml",
    ice_fallback => "ice-fallback.yaml",
    kms_broken_key => "kms-broken-key.yaml",
    leader_failover => "leader-failover.yaml",
    legacy_migrated => "legacy-migrated.yaml",
    limits_hit => "limits-hit.yaml",
    multi_nodepool_gpu => "multi-nodepool-gpu.yaml",
    node_repair => "node-repair.yaml",
    orphans => "orphans.yaml",
    overlay_prices => "overlay-prices.yaml",
    pdb_drain => "pdb-drain.yaml",
    reserved_first => "reserved-first.yaml",
    capacity_block_ends => "capacity-block-ends.yaml",
    spot_storm => "spot-storm.yaml",
    static_pool => "static-pool.yaml",
    steady_web => "steady-web.yaml",
    stuck_pod => "stuck-pod.yaml",
    throttled_api => "throttled-api.yaml",
    topology_spread_zones => "topology-spread-zones.yaml",
}

#[test]
fn every_library_scenario_is_listed() {
    let listed = include_str!("wire.rs");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(dovetail_tests::root().join("scenarios")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && !listed.contains(&format!("\"{name}\"")) {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "not run in wire mode: {missing:?}");
}

#[test]
fn one_seed_one_trace_over_the_wire() {
    let a = run_wire("steady-web.yaml", Some(11));
    let b = run_wire("steady-web.yaml", Some(11));
    assert_eq!(a.trace, b.trace, "two wire-mode runs with seed 11 differ");
    let c = run_wire("steady-web.yaml", Some(12));
    assert_ne!(a.trace, c.trace, "the seed must reach a wire-mode run");
}
