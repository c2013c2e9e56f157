//! The controller's metrics (what `/metrics` serves in a cluster) agree with the trace of the same run.

use dovetail::metrics::{self as m, Metrics};

fn total(metrics: &Metrics, def: m::MetricDef) -> f64 {
    metrics.series(def).iter().map(|(_, v)| v).sum()
}

fn lines(trace: &str, source: &str, needle: &str) -> f64 {
    trace
        .lines()
        .filter(|l| l.get(14..).is_some_and(|r| r.starts_with(source)) && l.contains(needle))
        .count() as f64
}

fn run(name: &str) -> dovetail_sim::Outcome {
    let path = dovetail_tests::root().join("scenarios").join(name);
    let scenario = dovetail_sim::Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    dovetail_sim::simulate(&scenario, &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn nodeclaim_counters_match_the_trace() {
    let out = run("spot-storm.yaml");
    let (t, metrics) = (&out.trace, &out.controller_metrics);
    let created = total(metrics, m::NODECLAIMS_CREATED);
    assert!(created >= 3.0, "spot-storm creates claims: {created}");
    assert_eq!(created, lines(t, "provision", "create nodeclaim/"));
    assert_eq!(
        total(metrics, m::NODECLAIMS_LAUNCHED),
        lines(t, "lifecycle", "launched nodeclaim/")
    );
    assert_eq!(
        total(metrics, m::NODECLAIMS_INITIALIZED),
        lines(t, "lifecycle", "initialized nodeclaim/")
    );
    // Every interruption notice the controller acted on disrupted a claim, labelled so.
    let interrupted: f64 = metrics
        .series(m::NODECLAIMS_DISRUPTED)
        .iter()
        .filter(|(l, _)| l.iter().any(|(k, v)| *k == "reason" && v == "interruption"))
        .map(|(_, v)| v)
        .sum();
    assert!(interrupted > 0.0);
    assert_eq!(
        interrupted,
        lines(t, "interruption", "replacing nodeclaim/")
    );
    let received = total(metrics, m::INTERRUPTION_RECEIVED);
    assert!(
        received >= interrupted,
        "{received} messages, {interrupted} acted on"
    );
    assert_eq!(total(metrics, m::INTERRUPTION_DELETED), received);
}

#[test]
fn drain_counters_match_the_api_servers_audit() {
    let out = run("pdb-drain.yaml");
    let metrics = &out.controller_metrics;
    let by_code = |code: &str| -> f64 {
        metrics
            .series(m::EVICTION_REQUESTS)
            .iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| *k == "code" && v == code))
            .map(|(_, v)| v)
            .sum()
    };
    // fakekube counts what it granted and refused on its own side of the eviction API (the summary's
    // `evictions N (refused by budgets M, ...)`).
    let audit = out
        .summary
        .lines()
        .find_map(|l| l.trim().strip_prefix("evictions"))
        .expect("an evictions line");
    let numbers: Vec<f64> = audit
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    assert_eq!(by_code("200"), numbers[0], "{audit}");
    assert_eq!(by_code("429"), numbers[1], "{audit}");
    assert!(by_code("429") > 0.0, "pdb-drain refuses evictions");
    // Every pod the trace says was evicted or deleted is counted once, under why its node went.
    let drained = total(metrics, m::PODS_DRAINED);
    let traced: f64 = out
        .trace
        .lines()
        .filter(|l| {
            l.contains(" termination ") && (l.contains(" evicted ") || l.contains("deleted "))
        })
        .filter_map(|l| {
            l.split(" evicted ")
                .nth(1)
                .or_else(|| l.split("deleted ").nth(1))?
                .split(' ')
                .next()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    assert_eq!(drained, traced);
    // pdb-drain's nodes go by `kubectl delete node`: no disruption reason to label them with.
    assert!(
        metrics
            .series(m::PODS_DRAINED)
            .iter()
            .all(|(l, _)| l.iter().any(|(k, v)| *k == "reason" && v.is_empty())),
        "{:?}",
        metrics.series(m::PODS_DRAINED)
    );
    // Consolidation drains carry their reason.
    let diurnal = run("diurnal-consolidation.yaml");
    let reasons: Vec<String> = diurnal
        .controller_metrics
        .series(m::PODS_DRAINED)
        .iter()
        .flat_map(|(l, _)| {
            l.iter()
                .filter(|(k, _)| *k == "reason")
                .map(|(_, v)| v.clone())
        })
        .collect();
    assert!(reasons.iter().any(|r| r == "Underutilized"), "{reasons:?}");
}

#[test]
fn state_gauges_describe_the_cluster_at_the_end() {
    let out = run("steady-web.yaml");
    let metrics = &out.controller_metrics;
    let pods = metrics.series(m::PODS_STATE);
    assert_eq!(
        pods.iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| *k == "phase" && v == "Running"))
            .count(),
        60,
        "steady-web ends with 60 running pods"
    );
    assert_eq!(metrics.get(m::CLUSTER_SYNCED, &[]), Some(1.0));
    let limit = metrics.get(
        m::NODEPOOLS_LIMIT,
        &[("nodepool", "default"), ("resource_type", "cpu")],
    );
    assert_eq!(limit, Some(1000.0));
    let used = metrics
        .get(
            m::NODEPOOLS_USAGE,
            &[("nodepool", "default"), ("resource_type", "cpu")],
        )
        .expect("cpu usage of the pool");
    assert!(used >= 30.0, "60 pods of 500m need at least 30 cpu: {used}");
    let nodes = metrics.get(m::CLUSTER_NODES, &[]).expect("node count");
    assert!(nodes >= 1.0);
}

#[test]
fn disruption_decisions_are_counted() {
    let out = run("diurnal-consolidation.yaml");
    let metrics = &out.controller_metrics;
    let executed = lines(&out.trace, "disruption", "executed: ");
    assert!(executed > 0.0);
    assert_eq!(total(metrics, m::DISRUPTION_DECISIONS), executed);
}

#[test]
fn a_launch_that_fails_for_capacity_is_an_event_on_its_nodeclaim() {
    let out = run("ice-fallback.yaml");
    let failed = lines(&out.trace, "lifecycle", "deleting the claim to re-plan");
    assert!(
        failed > 0.0,
        "ice-fallback has launches that fail for capacity"
    );
    let events = out
        .events
        .get("NodeClaim/InsufficientCapacityError")
        .copied()
        .unwrap_or(0);
    assert_eq!(f64::from(events), failed, "{:?}", out.events);
}
