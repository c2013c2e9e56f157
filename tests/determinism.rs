//! Same scenario + same seed -> byte-identical trace; another seed -> another world.

use dovetail_tests::run_scenario;

#[test]
fn one_seed_one_trace() {
    let a = run_scenario("steady-web.yaml", 11);
    let b = run_scenario("steady-web.yaml", 11);
    assert_eq!(a, b, "two runs with seed 11 differ");
    let c = run_scenario("steady-web.yaml", 12);
    assert_ne!(
        a, c,
        "the seed must reach the simulation (instance ids, latencies, spot prices)"
    );
}
