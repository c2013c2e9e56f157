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

/// The conditions of every object of a kind at the end of a run, as (name, type, status, reason).
fn conditions_of(out: &dovetail_sim::Outcome, kind: &str) -> Vec<(String, String, String, String)> {
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut all = Vec::new();
    for o in &out.objects[kind] {
        for c in o["status"]["conditions"].as_array().into_iter().flatten() {
            all.push((
                s(&o["metadata"]["name"]),
                s(&c["type"]),
                s(&c["status"]),
                s(&c["reason"]),
            ));
        }
    }
    all.sort();
    all
}

/// The (name, type, status, reason) of every series of a status-condition gauge.
fn condition_series(metrics: &Metrics, def: m::MetricDef) -> Vec<(String, String, String, String)> {
    let mut all: Vec<_> = metrics
        .series(def)
        .iter()
        .map(|(l, _)| {
            let get = |name: &str| {
                l.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (get("name"), get("type"), get("status"), get("reason"))
        })
        .collect();
    all.sort();
    all
}

#[test]
fn status_condition_gauges_mirror_the_objects_conditions() {
    // steady-web ends long after its last change, so the last 15 s refresh saw the final objects.
    let out = run("steady-web.yaml");
    let metrics = &out.controller_metrics;
    for (kind, def) in [
        ("NodePool", m::NODEPOOL_CONDITION_COUNT),
        ("NodeClaim", m::NODECLAIM_CONDITION_COUNT),
        ("EC2NodeClass", m::EC2NODECLASS_CONDITION_COUNT),
        ("Node", m::NODE_CONDITION_COUNT),
    ] {
        let want = conditions_of(&out, kind);
        assert!(!want.is_empty(), "{kind}s have conditions");
        assert_eq!(condition_series(metrics, def), want, "{kind}");
    }
    // Node and NodeClaim series carry their pool; the older form has group and kind instead.
    let nodes = metrics.series(m::NODE_CONDITION_COUNT);
    assert!(nodes.iter().all(|(l, _)| {
        l.iter()
            .any(|(k, v)| *k == "karpenter_sh_nodepool" && v == "default")
    }));
    let older = metrics.series(m::CONDITION_COUNT);
    assert!(
        older
            .iter()
            .any(|(l, _)| l.iter().any(|(k, v)| *k == "kind" && v == "NodePool"))
    );
    assert!(
        older
            .iter()
            .all(|(l, _)| !l.iter().any(|(k, v)| *k == "kind" && v == "Node")),
        "Nodes have no older-form series"
    );
    // Every claim went Launched=True once.
    let launched = metrics
        .get(
            m::NODECLAIM_CONDITION_TRANSITIONS,
            &[
                ("karpenter_k8s_aws_ec2nodeclass", "default"),
                ("karpenter_sh_nodepool", "default"),
                ("reason", "Launched"),
                ("status", "True"),
                ("type", "Launched"),
            ],
        )
        .unwrap_or_default();
    assert!(
        launched >= out.objects["NodeClaim"].len() as f64,
        "{launched}"
    );
}

#[test]
fn capacity_buffer_conditions_are_metrics_too() {
    let out = run("buffer-burst.yaml");
    let series = condition_series(&out.controller_metrics, m::CAPACITYBUFFER_CONDITION_COUNT);
    assert_eq!(series, conditions_of(&out, "CapacityBuffer"));
    assert!(
        series
            .iter()
            .any(|(n, t, s, _)| n == "checkout-headroom" && t == "Provisioning" && s == "True")
    );
}
