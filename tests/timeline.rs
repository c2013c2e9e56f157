//! Timeline actions a platform engineer performs by hand: `kubectl drain` (cordon, evict under budgets,
//! DaemonSet pods left) and `kubectl delete pods -l` (by selector and zone).

use dovetail_sim::Scenario;

const BASE: &str = concat!(
    r#"name: timeline
seed: 6
duration: 15m
cloud:
  zones: [us-east-1a, us-east-1b]
manifests:
"#,
    dovetail_tests::default_node_class_and_pool_head!(),
    r#"            - {key: node.kubernetes.io/instance-type, operator: In, values: [m5.xlarge, c5.xlarge]}
      disruption: {consolidationPolicy: WhenEmpty, consolidateAfter: 30s}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: default}
    spec:
      replicas: 6
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          topologySpreadConstraints:
            - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: web}}}
          containers: [{name: web, image: web, resources: {requests: {cpu: "1", memory: 1Gi}}}]
  - apiVersion: policy/v1
    kind: PodDisruptionBudget
    metadata: {name: web, namespace: default}
    spec:
      maxUnavailable: 1
      selector: {matchLabels: {app: web}}
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: logs, namespace: kube-system}
    spec:
      selector: {matchLabels: {app: logs}}
      template:
        metadata: {labels: {app: logs}}
        spec:
          containers: [{name: logs, image: logs, resources: {requests: {cpu: 50m}}}]
"#
);

fn run(timeline: &str) -> dovetail_sim::Outcome {
    let s = Scenario::parse("timeline.yaml", &format!("{BASE}timeline:\n{timeline}"))
        .unwrap_or_else(|e| panic!("{e}"));
    dovetail_tests::simulate_passing(&s)
}

#[test]
fn a_drained_node_is_cordoned_emptied_within_its_budget_and_given_back() {
    let out = run("  - {at: 5m, drain: {count: 1, pick: oldest}}\n");
    let t = &out.trace;
    let cordoned = t
        .lines()
        .find(|l| l.contains("cordoned (kubectl drain)"))
        .unwrap_or_else(|| panic!("no drain:\n{t}"));
    let node = cordoned
        .split("drain node ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .unwrap_or_default()
        .to_string();
    assert!(t.contains(&format!("drain node {node}: drained")), "{t}");
    // The budget let one web pod go at a time.
    assert!(
        t.lines()
            .filter(|l| l.contains(&format!("drain node {node}: evicted")))
            .all(|l| l.matches("default/web-").count() <= 1),
        "{t}"
    );
    assert!(
        t.contains(&format!("drain node {node}: "))
            && t.contains("evictions refused, retrying in 5s"),
        "a refused eviction is retried:\n{t}"
    );
    // The DaemonSet pod was left, and the emptied node given back by consolidation.
    assert!(
        !t.lines()
            .any(|l| l.contains(&format!("drain node {node}: evicted")) && l.contains("logs-"))
    );
    assert!(
        t.lines()
            .any(|l| l.contains("disruption executed: Empty delete") && l.contains(&node)),
        "{t}"
    );
    let last = out.series.last().expect("samples");
    assert_eq!(last.pods_pending, 0, "{}", out.summary);
}

#[test]
fn pods_deleted_by_selector_and_zone_are_only_those() {
    let out = run("  - {at: 5m, delete_pods: {selector: app=web, zone: us-east-1a, count: 2}}\n");
    let line = out
        .trace
        .lines()
        .find(|l| l.contains("delete pods `app=web`"))
        .unwrap_or_else(|| panic!("{}", out.trace));
    assert_eq!(line.matches("default/web-").count(), 2, "{line}");
    // The Deployment makes them again.
    assert!(
        out.trace
            .lines()
            .any(|l| l.contains("deployment/default/web created 2 pods (6 desired)")),
        "{}",
        out.trace
    );
    let bad = Scenario::parse(
        "timeline.yaml",
        &format!("{BASE}timeline:\n  - {{at: 1m, drain: {{pick: random}}}}\n"),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        bad.contains("timeline[0].drain.pick") && bad.contains("oldest or newest"),
        "{bad}"
    );
}
