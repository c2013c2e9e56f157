//! A scenario's `settings:` (the binary's names, over Dovetail's defaults), settings rolled out from the
//! timeline, and a cluster without an interruption queue.

use dovetail_sim::Scenario;

const BASE: &str = concat!(
    r#"name: settings
seed: 9
duration: 10m
cloud:
  zones: [us-east-1a]
manifests:
"#,
    dovetail_tests::default_node_class_and_pool_head!(),
    r#"            - {key: karpenter.k8s.aws/instance-family, operator: In, values: [m5, c5]}
            - {key: karpenter.sh/capacity-type, operator: In, values: [spot]}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: default}
    spec:
      replicas: 4
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers: [{name: web, image: web, resources: {requests: {cpu: "1", memory: 1Gi}}}]
"#
);

fn parse(extra: &str) -> Result<Scenario, String> {
    Scenario::parse("settings.yaml", &format!("{BASE}{extra}")).map_err(|e| e.to_string())
}

fn run(extra: &str) -> dovetail_sim::Outcome {
    let s = parse(extra).unwrap_or_else(|e| panic!("{e}"));
    dovetail_tests::simulate_passing(&s)
}

#[test]
fn settings_use_the_binarys_names_and_change_what_the_controller_does() {
    // CLUSTER_NAME is the discovery tag the simulated subnets and security groups carry; the batch waits
    // 3 s idle; LOG_LEVEL means nothing here and says so.
    let settings =
        "settings:\n  CLUSTER_NAME: prod\n  BATCH_IDLE_DURATION: 3s\n  LOG_LEVEL: debug\n";
    let text = format!(
        "{}{settings}",
        BASE.replace("discovery: sim", "discovery: prod")
    );
    let out = dovetail_tests::simulate_passing(
        &Scenario::parse("settings.yaml", &text).unwrap_or_else(|e| panic!("{e}")),
    );
    let batch = out
        .trace
        .lines()
        .find(|l| l.contains("provision  batch pods=4"))
        .unwrap_or_else(|| panic!("no batch:\n{}", out.trace));
    assert!(batch.contains("window=3.0"), "{batch}");
    assert!(
        out.trace
            .contains("settings.LOG_LEVEL: no effect in the simulation")
    );
    assert!(out.trace.contains("lifecycle  launched"), "{}", out.trace);
    // The same cluster name with a node class still selecting `sim`: nothing to launch into.
    let out = run(settings);
    assert!(!out.trace.contains("lifecycle  launched"), "{}", out.trace);
}

#[test]
fn a_rolled_out_setting_restarts_the_controller_and_then_applies() {
    let out = run(
        "timeline:\n  - {at: 4m, settings: {BATCH_IDLE_DURATION: 5s}}\n  - {at: 6m, scale: {deployment: default/web, replicas: 24}}\n",
    );
    assert!(
        out.trace
            .contains("settings BATCH_IDLE_DURATION=5s rolled out: the controller restarts")
    );
    let later = out
        .trace
        .lines()
        .filter(|l| l.contains("provision  batch pods="))
        .find(|l| dovetail_tests::at(l).is_some_and(|t| t > 360.0))
        .unwrap_or_else(|| panic!("no batch after the scale-up:\n{}", out.trace));
    assert!(later.contains("window=5.0"), "{later}");
}

#[test]
fn without_an_interruption_queue_reclaimed_spot_nodes_are_not_drained_first() {
    let storm = "timeline:\n  - {at: 3m, spot_interruption: {fraction: 1.0}}\n";
    let with = run(storm);
    assert!(
        with.trace.contains("interruption"),
        "the queue is read:\n{}",
        with.trace
    );
    let s = Scenario::parse(
        "settings.yaml",
        &format!(
            "{}{storm}",
            BASE.replace(
                "cloud:\n  zones: [us-east-1a]",
                "cloud:\n  zones: [us-east-1a]\n  interruption_queue: false"
            )
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let without = dovetail_tests::simulate_passing(&s);
    assert!(
        !without.trace.lines().any(|l| l.contains(" interruption ")),
        "nobody reads the warnings:\n{}",
        without.trace
    );
    assert!(
        without.trace.contains("not-ready (instance"),
        "the nodes just vanish"
    );
}

#[test]
fn bad_settings_stop_the_load_naming_the_setting() {
    for (extra, field, hint) in [
        (
            "settings:\n  BALANCED_K: 0\n",
            "settings.BALANCED_K",
            "1 or more",
        ),
        (
            "settings:\n  MIN_VALUES_POLICY: Sometimes\n",
            "settings.MIN_VALUES_POLICY",
            "Strict or BestEffort",
        ),
        (
            "settings:\n  FEATURE_GATES: \"Drift=true\"\n",
            "settings.FEATURE_GATES",
            "unknown feature gate `Drift`",
        ),
        (
            "settings:\n  BATCH_IDEL_DURATION: 2s\n",
            "settings.BATCH_IDEL_DURATION",
            "not a setting Dovetail reads",
        ),
        (
            "timeline:\n  - {at: 1m, settings: {BATCH_MAX_DURATION: soon}}\n",
            "timeline[0].settings.BATCH_MAX_DURATION",
            "soon",
        ),
    ] {
        let e = parse(extra).err().unwrap_or_default();
        assert!(e.contains(field) && e.contains(hint), "{extra}: {e}");
        assert!(e.starts_with("settings.yaml:"), "{e}");
    }
}
