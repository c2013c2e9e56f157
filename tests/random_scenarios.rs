//! Property: random workloads and fault schedules never break an invariant. A failing case is shrunk and
//! written to `target/random-scenarios/case-N.yaml`, a scenario `cargo xtask sim` replays. CI runs a few
//! cases; `RANDOM_CASES=200 cargo test --release --test random_scenarios` sweeps longer.

use dovetail_sim::random::{Shape, check, minimize};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

#[test]
fn random_scenarios_keep_every_invariant() {
    let cases: u64 = std::env::var("RANDOM_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    for case in 0..cases {
        let shape = Shape::random(&mut ChaCha8Rng::seed_from_u64(case));
        if let Err(why) = check(&shape, case) {
            let small = minimize(shape, case);
            let dir = dovetail_tests::root().join("target/random-scenarios");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("case-{case}.yaml"));
            let yaml = small.to_yaml(case);
            let _ = std::fs::write(&path, &yaml);
            panic!(
                "case {case}: {why}\nshrunk to {} (cargo xtask sim {0}):\n{yaml}",
                path.display()
            );
        }
    }
}
