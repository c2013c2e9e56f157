//! Snapshot tests of scenario traces: a behaviour change shows up as a readable diff in review.

use dovetail_tests::run_scenario;

#[test]
fn steady_web_seed_7() {
    let text = run_scenario("steady-web.yaml", 7);
    insta::assert_snapshot!("steady-web.seed-7", text);
}

#[test]
fn ice_fallback_seed_3() {
    let text = run_scenario("ice-fallback.yaml", 3);
    insta::assert_snapshot!("ice-fallback.seed-3", text);
}

#[test]
fn api_blips_seed_5() {
    let text = run_scenario("api-blips.yaml", 5);
    insta::assert_snapshot!("api-blips.seed-5", text);
}

#[test]
fn multi_nodepool_gpu_seed_11() {
    let text = run_scenario("multi-nodepool-gpu.yaml", 11);
    insta::assert_snapshot!("multi-nodepool-gpu.seed-11", text);
}

#[test]
fn topology_spread_zones_seed_7() {
    let text = run_scenario("topology-spread-zones.yaml", 7);
    insta::assert_snapshot!("topology-spread-zones.seed-7", text);
}
