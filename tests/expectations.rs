//! `expect:`: every kind of expectation, once failing with a message naming it, what was expected and what
//! was seen, and once holding on the same run.

use dovetail_sim::Scenario;

const RUN: &str = concat!(
    r#"name: expectations
seed: 4
duration: 12m
manifests:
"#,
    dovetail_tests::default_node_class_and_pool_head!(),
    r#"            - {key: karpenter.k8s.aws/instance-family, operator: In, values: [m5, c5]}
            - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: default}
    spec:
      replicas: 10
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers: [{name: web, image: web, resources: {requests: {cpu: 500m, memory: 512Mi}}}]
  - apiVersion: v1
    kind: Pod
    metadata: {name: stuck, namespace: default, labels: {app: stuck}}
    spec:
      nodeSelector: {topology.kubernetes.io/zone: eu-west-1a}
      containers: [{name: c, image: c, resources: {requests: {cpu: 100m}}}]
timeline:
  - {at: 5m, delete_nodes: {count: 1}}
"#
);

fn run(expect: &str) -> dovetail_sim::Outcome {
    let text = format!("{RUN}expect:\n{expect}");
    let scenario = Scenario::parse("expectations.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    dovetail_sim::simulate(&scenario, &Default::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The summary line of one expectation.
fn line<'a>(summary: &'a str, field: &str) -> &'a str {
    summary
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with(&format!("expect           {field}"))
        })
        .unwrap_or_else(|| panic!("no line for {field}:\n{summary}"))
}

#[test]
fn each_expectation_fails_naming_itself_the_expected_and_the_seen() {
    let out = run(r#"  pods_pending_max: 1s
  cost_per_hour_max: 0.001
  cost_total_max: 0.0001
  cost_over_bound_max: 0.5
  nodes_max: 0
  nodes_at_end: 50..60
  launches_max: 0
  evictions_max: 0
  pods_pending_at_end: {max: 0, selector: app=stuck}
  pods_explained: [{selector: app=stuck, reason: "no such reason"}]
  instance_types: {forbidden: ["m5.*", "c5.*"]}
  instance_families: {allowed: [x1]}
  capacity_types: {forbidden: [on-demand]}
  zones: {allowed: [eu-west-1a]}
  placement: [{selector: app=web, zones: [eu-west-1a]}]
  disruptions: {underutilized: {min: 5}}
  unavailable_pod_minutes_max: 0.1
  trace_contains: ["this never happens"]
  trace_lacks: ["lifecycle +launched"]
"#);
    assert!(!out.passed);
    let s = &out.summary;
    for (field, expected, seen) in [
        ("pods_pending_max", "1.0s", "(got "),
        ("cost_per_hour_max", "0.001", "(got 0."),
        ("cost_total_max", "0.0001", "(got 0."),
        ("cost_over_bound_max", "0.50", "(got "),
        ("nodes_max", "0", "(got "),
        ("nodes_at_end", "50..60", "(got "),
        ("launches_max", "0", "(got "),
        ("evictions_max", "0", "(got "),
        (
            "pods_pending_at_end of `app=stuck`",
            "max 0",
            "(got 1: default/stuck)",
        ),
        (
            "pods_explained of `app=stuck`",
            "`no such reason`",
            "not explained so: default/stuck",
        ),
        ("instance_types", "forbidden [m5.*, c5.*]", "(got launched "),
        ("instance_families", "allowed [x1]", "(got launched "),
        (
            "capacity_types",
            "forbidden [on-demand]",
            "(got launched on-demand)",
        ),
        ("zones", "allowed [eu-west-1a]", "(got launched us-east-1"),
        (
            "placement of `app=web`",
            "zones [eu-west-1a]",
            "elsewhere: default/web-",
        ),
        ("disruptions.underutilized", "min 5", "(got "),
        ("unavailable_pod_minutes_max", "0.1", "(got "),
        ("trace_contains", "`this never happens`", "no line matches"),
        ("trace_lacks", "`lifecycle +launched`", "found: +00:"),
    ] {
        let l = line(s, field);
        assert!(
            l.ends_with(": FAILED") && l.contains(expected) && l.contains(seen),
            "{field}: `{l}` should name {expected:?} and {seen:?}"
        );
    }
    assert!(s.contains("verdict          FAIL"), "{s}");
}

#[test]
fn the_same_expectations_hold_when_the_run_meets_them() {
    let out = run(r#"  pods_pending_max: 30m
  cost_over_bound_max: 20
  nodes_max: 6
  nodes_at_end: 1..4
  launches_max: 6
  evictions_max: 40
  pods_pending_at_end: {max: 0, selector: app=web}
  pods_explained: [{selector: app=stuck, reason: "eu-west-1a"}]
  instance_families: {allowed: [m5, c5]}
  capacity_types: {forbidden: [spot]}
  zones: {forbidden: [eu-west-1a]}
  placement: [{selector: app=web, nodepool: default}]
  disruptions: {underutilized: {max: 5}, drifted: {max: 0}}
  unavailable_pod_minutes_max: 120
  trace_contains: ["cannot place 1 pods \\(pod/default/stuck\\)"]
  trace_lacks: ["invariant"]
"#);
    assert!(out.passed, "{}", out.summary);
    assert!(!out.summary.contains("FAILED"), "{}", out.summary);
}

#[test]
fn bad_expectations_stop_the_load_naming_the_field() {
    for (expect, field, hint) in [
        (
            "  trace_contains: [\"(unclosed\"]\n",
            "expect.trace_contains[0]",
            "regular expression",
        ),
        (
            "  placement: [{selector: \"app = web x\", zones: [a]}]\n",
            "expect.placement[0].selector",
            "label selector",
        ),
        (
            "  nodes_at_end: 5..2\n",
            "expect.nodes_at_end",
            "ends before it starts",
        ),
        (
            "  disruptions: {consolidated: {max: 1}}\n",
            "consolidated",
            "unknown field",
        ),
    ] {
        let text = format!("{RUN}expect:\n{expect}");
        let e = Scenario::parse("expectations.yaml", &text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains(field) && e.contains(hint), "{expect}: {e}");
        assert!(e.starts_with("expectations.yaml:"), "{e}");
    }
}
