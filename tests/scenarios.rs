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

#[test]
fn kms_broken_key_seed_5() {
    let text = run_scenario("kms-broken-key.yaml", 5);
    // The cause is named, launches back off instead of looping, and the cluster recovers on its own.
    assert!(
        text.contains("ec2nodeclass/default launches failing")
            && text.contains("check that KMS key alias/ebs-nodes is enabled"),
        "no condition names the key"
    );
    let launches: Vec<u64> = text
        .lines()
        .filter(|l| l.contains(" cloud      launch "))
        .filter_map(|l| {
            let t = l.get(1..13)?;
            let mut parts = t.split(':');
            let h: u64 = parts.next()?.parse().ok()?;
            let m: u64 = parts.next()?.parse().ok()?;
            let s: f64 = parts.next()?.parse().ok()?;
            Some(h * 3600 + m * 60 + s as u64)
        })
        .collect();
    for (i, start) in launches.iter().enumerate() {
        let in_window = launches[i..]
            .iter()
            .take_while(|t| **t < start + 600)
            .count();
        assert!(
            in_window <= 6,
            "{in_window} launches in the 10 minutes from +{start}s"
        );
    }
    assert!(text.contains("launches healthy again"), "never recovered");
    assert!(
        text.contains("0 pending at end"),
        "pods still pending at the end"
    );
    insta::assert_snapshot!("kms-broken-key.seed-5", text);
}
