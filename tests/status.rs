//! What `kubectl get nodepools,nodeclaims -o yaml` shows at the end of a run, as Karpenter v1.14 writes
//! it: a pool's `status.nodes` / `status.resources` / `nodeClassObservedGeneration` and
//! `NodeRegistrationHealthy`; a claim's `Drifted`, `Consolidatable`, `DisruptionReason` and `Drained`.

use dovetail_sim::Scenario;
use serde_json::Value;

/// One pool (`disruption` as YAML flow), `replicas` pods one per node, then `extra` (cloud settings,
/// manifests, timeline: YAML at the top level, or empty).
fn scenario(
    disruption: &str,
    replicas: u32,
    boot: &str,
    extra_manifests: &str,
    timeline: &str,
) -> Scenario {
    let text = format!(
        r#"name: status
seed: 5
duration: 40m
cloud:
  zones: [us-east-1a]
  boot_to_ready: {boot}
manifests:
  - apiVersion: karpenter.k8s.aws/v1
    kind: EC2NodeClass
    metadata: {{name: default}}
    spec:
      amiSelectorTerms: [{{alias: al2023@latest}}]
      role: KarpenterNodeRole-sim
      subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: sim}}}}]
      securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: sim}}}}]
  - apiVersion: karpenter.sh/v1
    kind: NodePool
    metadata: {{name: default}}
    spec:
      template:
        spec:
          nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
          requirements:
            - {{key: node.kubernetes.io/instance-type, operator: In, values: [m5.large]}}
            - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
      disruption: {disruption}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: app, namespace: default}}
    spec:
      replicas: {replicas}
      selector: {{matchLabels: {{app: app}}}}
      template:
        metadata: {{labels: {{app: app}}}}
        spec:
          affinity:
            podAntiAffinity:
              requiredDuringSchedulingIgnoredDuringExecution:
                - {{topologyKey: kubernetes.io/hostname, labelSelector: {{matchLabels: {{app: app}}}}}}
          containers:
            - name: app
              image: app
              resources: {{requests: {{cpu: 500m, memory: 1Gi}}}}
{extra_manifests}{timeline}"#
    );
    Scenario::parse("status.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

struct End {
    pools: Vec<Value>,
    claims: Vec<Value>,
    trace: String,
}

fn run(s: &Scenario) -> End {
    let out = dovetail_tests::simulate_passing(s);
    let of = |k: &str| out.objects.get(k).cloned().unwrap_or_default();
    End {
        pools: of("NodePool"),
        claims: of("NodeClaim"),
        trace: out.trace,
    }
}

fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

#[test]
fn a_pool_counts_its_nodes_and_capacity_and_reports_registrations_healthy() {
    let end = run(&scenario(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        3,
        "40s..70s",
        "",
        "",
    ));
    let pool = &end.pools[0];
    assert_eq!(end.claims.len(), 3, "{}", end.trace);
    assert_eq!(pool["status"]["nodes"], 3);
    // m5.large: 2 vCPU and 8192 MiB less Karpenter's 7.5% VM overhead (7577 MiB) each; the node count
    // is a resource too, as in Karpenter.
    assert_eq!(pool["status"]["resources"]["cpu"], "6");
    assert_eq!(pool["status"]["resources"]["nodes"], "3");
    let mib = 8192 - (8192u64 * 75).div_ceil(1000);
    assert_eq!(
        pool["status"]["resources"]["memory"],
        format!("{}", 3 * mib * 1024 * 1024)
    );
    assert_eq!(pool["status"]["nodeClassObservedGeneration"], 1);
    let healthy = condition(pool, "NodeRegistrationHealthy").expect("written");
    assert_eq!(healthy["status"], "True", "{healthy}");
}

#[test]
fn nodes_that_never_register_make_the_pool_registration_unhealthy() {
    // Nodes take 20 minutes to come up: each claim is deleted after Karpenter's 15-minute registration
    // timeout; the second failure of the four remembered makes the pool unhealthy.
    let end = run(&scenario(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        2,
        "20m..21m",
        "",
        "",
    ));
    let pool = &end.pools[0];
    let health = condition(pool, "NodeRegistrationHealthy").expect("written");
    assert_eq!(health["status"], "False", "{health}\n{}", end.trace);
    assert_eq!(health["reason"], "RegistrationFailed");
    assert!(
        end.trace
            .contains("nodepool/default NodeRegistrationHealthy=False (RegistrationFailed)"),
        "{}",
        end.trace
    );
}

#[test]
fn drifted_and_consolidatable_claims_say_so_and_a_blocked_drain_says_draining() {
    // A newer image withdraws the old one at 5m, but the budget allows no drift: every claim carries
    // Drifted=True (AMIDrift). With consolidateAfter 1m and nothing to consolidate onto, each is
    // Consolidatable too.
    let budget_no_drift = "{consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: 1m, budgets: [{nodes: \"0\", reasons: [Drifted]}]}";
    let timeline = "timeline:\n  - at: 5m\n    ami_release: {arch: x86_64, version: v20260301, deprecate_previous: true}\n";
    let end = run(&scenario(budget_no_drift, 2, "40s..70s", "", timeline));
    assert_eq!(end.claims.len(), 2, "{}", end.trace);
    for claim in &end.claims {
        let drifted = condition(claim, "Drifted").expect("Drifted");
        assert_eq!(
            (&drifted["status"], &drifted["reason"]),
            (&Value::from("True"), &Value::from("AMIDrift")),
            "{claim}"
        );
        assert!(
            drifted["message"]
                .as_str()
                .unwrap_or_default()
                .contains("replaced by")
        );
        assert_eq!(
            condition(claim, "Consolidatable").map(|c| &c["status"]),
            Some(&Value::from("True"))
        );
    }
    // Never drifted, never consolidatable: no such conditions.
    let quiet = run(&scenario(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        1,
        "40s..70s",
        "",
        "",
    ));
    assert!(condition(&quiet.claims[0], "Drifted").is_none());
    assert!(condition(&quiet.claims[0], "Consolidatable").is_none());

    // `kubectl delete node` of a node whose pod no eviction may take: the drain waits, the claim says so.
    let pdb = "  - apiVersion: policy/v1\n    kind: PodDisruptionBudget\n    metadata: {name: app, namespace: default}\n    spec: {maxUnavailable: 0, selector: {matchLabels: {app: app}}}\n";
    let delete = "timeline:\n  - at: 10m\n    delete_nodes: {count: 1}\n";
    let blocked = run(&scenario(
        "{consolidationPolicy: WhenEmpty, consolidateAfter: Never}",
        1,
        "40s..70s",
        pdb,
        delete,
    ));
    let draining = condition(&blocked.claims[0], "Drained").expect("Drained");
    assert_eq!(
        (&draining["status"], &draining["reason"]),
        (&Value::from("False"), &Value::from("Draining")),
        "{}",
        blocked.trace
    );
}
