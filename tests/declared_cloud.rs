//! `cloud:` declared as a real account has it: subnets, security groups and images with real ids and tags
//! that a real EC2NodeClass selects, and offerings and spot prices set by hand.

use dovetail_sim::Scenario;

const CLOUD: &str = r#"cloud:
  zones: [us-east-1a, us-east-1b, us-east-1c]
  subnets:
    - {id: subnet-0a1a, zone: us-east-1a, tags: {Name: prod-private-a, karpenter.sh/discovery: prod}, free_addresses: 250}
    - {id: subnet-0b1b, zone: us-east-1b, tags: {Name: prod-private-b, karpenter.sh/discovery: prod}}
    - {id: subnet-0c1c, zone: us-east-1c, tags: {Name: prod-public-c}}
  security_groups:
    - {id: sg-0123456789abcdef0, name: eks-cluster-sg-prod, tags: {aws:eks:cluster-name: prod}}
  images:
    - {id: ami-0f00d, name: golden-al2023-2025-11, arch: x86_64, owner: self, created: "2025-11-01T00:00:00Z"}
    - {id: ami-0dead, name: golden-al2023-2025-10, arch: x86_64, owner: self, created: "2025-10-01T00:00:00Z"}
  offerings:
    - {instance_types: ["c5.large"], offered: true, spot_price: 0.0123}
    - {instance_types: ["m5.*"], offered: false}
"#;

const MANIFESTS: &str = r#"manifests:
  - apiVersion: karpenter.k8s.aws/v1
    kind: EC2NodeClass
    metadata: {name: default}
    spec:
      amiFamily: AL2023
      amiSelectorTerms: [{name: "golden-al2023-*", owner: self}]
      role: KarpenterNodeRole-prod
      subnetSelectorTerms: [{tags: {karpenter.sh/discovery: prod}}]
      securityGroupSelectorTerms: [{id: sg-0123456789abcdef0}]
  - apiVersion: karpenter.sh/v1
    kind: NodePool
    metadata: {name: default}
    spec:
      template:
        spec:
          nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
          requirements:
            - {key: node.kubernetes.io/instance-type, operator: In, values: [c5.large, m5.large]}
            - {key: karpenter.sh/capacity-type, operator: In, values: [spot, on-demand]}
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
"#;

fn scenario(cloud: &str) -> Result<Scenario, String> {
    Scenario::parse(
        "cloud.yaml",
        &format!("name: cloud\nseed: 2\nduration: 6m\n{cloud}{MANIFESTS}"),
    )
    .map_err(|e| e.to_string())
}

#[test]
fn a_node_class_selects_the_declared_subnets_groups_and_images_and_the_offerings_hold() {
    let s = scenario(CLOUD).unwrap_or_else(|e| panic!("{e}"));
    let out = dovetail_tests::simulate_passing(&s);
    let launches: Vec<&str> = out
        .trace
        .lines()
        .filter(|l| l.contains("cloud      launch i-"))
        .collect();
    assert!(!launches.is_empty(), "{}", out.trace);
    for l in &launches {
        // Only the prod-tagged subnets' zones; the cheap spot c5.large; never m5 (not offered).
        assert!(l.contains("us-east-1a") || l.contains("us-east-1b"), "{l}");
        assert!(
            l.contains(" c5.large ") && l.contains(" spot 0.0123/h"),
            "{l}"
        );
    }
    assert!(
        out.trace.contains("image=ami-0f00d"),
        "the newest of the account's golden images:\n{}",
        out.trace
    );
    let class = &out.objects["EC2NodeClass"][0];
    let ids = |field: &str| -> Vec<String> {
        class["status"][field]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|x| x["id"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(ids("subnets"), ["subnet-0a1a", "subnet-0b1b"]);
    assert_eq!(ids("securityGroups"), ["sg-0123456789abcdef0"]);
}

#[test]
fn declared_cloud_mistakes_stop_the_load_naming_the_field() {
    for (from, to, field, hint) in [
        (
            "zone: us-east-1c, tags",
            "zone: us-west-2a, tags",
            "cloud.subnets[2].zone",
            "not one of cloud.zones",
        ),
        (
            "arch: x86_64, owner: self, created: \"2025-11",
            "arch: amd64, owner: self, created: \"2025-11",
            "cloud.images[0].arch",
            "x86_64 or arm64",
        ),
        (
            "created: \"2025-10-01T00:00:00Z\"",
            "created: yesterday",
            "cloud.images[1].created",
            "RFC 3339",
        ),
        (
            "{instance_types: [\"m5.*\"], offered: false}",
            "{instance_types: [\"m5.*\"]}",
            "cloud.offerings[1]",
            "offered",
        ),
        (
            "free_addresses: 250}",
            "free_address: 250}",
            "free_address",
            "unknown field",
        ),
        (
            "offered: false}\n",
            "offered: false}\n  capacity_reservations:\n    - {instance_type: c5.large, zone: us-east-1a, count: 0}\n",
            "cloud.capacity_reservations[0].count",
            "at least one instance",
        ),
        (
            "offered: false}\n",
            "offered: false}\n  capacity_reservations:\n    - {instance_type: c5.huge, zone: us-east-1a, count: 1}\n",
            "cloud.capacity_reservations[0].instance_type",
            "catalog",
        ),
    ] {
        assert!(CLOUD.contains(from), "{from}");
        let e = scenario(&CLOUD.replace(from, to)).err().unwrap_or_default();
        assert!(e.contains(field) && e.contains(hint), "{to}: {e}");
        assert!(e.starts_with("cloud.yaml:"), "{e}");
    }
}

#[test]
fn a_node_groups_instances_run_from_the_start_join_with_their_labels_and_taints_and_are_left_alone()
{
    let cloud = r#"cloud:
  zones: [us-east-1a, us-east-1b]
  existing_instances:
    - {instance_type: m5.large, zone: us-east-1a, count: 2, node_group: system, labels: {role: system}, taints: ["CriticalAddonsOnly=true:NoSchedule"]}
"#;
    let text = format!(
        "name: cloud\nseed: 2\nduration: 8m\n{cloud}{}",
        MANIFESTS
            .replace("subnetSelectorTerms: [{tags: {karpenter.sh/discovery: prod}}]", "subnetSelectorTerms: [{tags: {karpenter.sh/discovery: sim}}]")
            .replace("securityGroupSelectorTerms: [{id: sg-0123456789abcdef0}]", "securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: sim}}]")
            .replace("amiFamily: AL2023\n      amiSelectorTerms: [{name: \"golden-al2023-*\", owner: self}]", "amiSelectorTerms: [{alias: al2023@latest}]")
    ) + r#"  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: coredns, namespace: kube-system}
    spec:
      replicas: 2
      selector: {matchLabels: {app: coredns}}
      template:
        metadata: {labels: {app: coredns}}
        spec:
          nodeSelector: {role: system}
          tolerations: [{key: CriticalAddonsOnly, operator: Exists}]
          containers: [{name: coredns, image: coredns, resources: {requests: {cpu: 100m}}}]
"#;
    let s = Scenario::parse("cloud.yaml", &text).unwrap_or_else(|e| panic!("{e}"));
    let out = dovetail_tests::simulate_passing(&s);
    let group: Vec<&serde_json::Value> = out.objects["Node"]
        .iter()
        .filter(|n| n["metadata"]["labels"]["role"] == "system")
        .collect();
    assert_eq!(group.len(), 2, "{}", out.trace);
    for n in &group {
        assert_eq!(n["spec"]["taints"][0]["key"], "CriticalAddonsOnly");
        assert!(
            n["metadata"]["labels"]
                .get("karpenter.sh/nodepool")
                .is_none()
        );
    }
    // coredns runs there; web (which does not tolerate the taint) on Dovetail's nodes.
    for p in &out.objects["Pod"] {
        let on_group = group
            .iter()
            .any(|n| n["metadata"]["name"] == p["spec"]["nodeName"]);
        let name = p["metadata"]["name"].as_str().unwrap_or_default();
        assert_eq!(on_group, name.starts_with("coredns"), "{name}");
    }
    assert!(out.trace.contains("labels role=system"), "{}", out.trace);
    assert!(
        out.passed,
        "no node group instance was terminated:\n{}",
        out.summary
    );
    let e = Scenario::parse(
        "cloud.yaml",
        &text.replace(
            "CriticalAddonsOnly=true:NoSchedule",
            "CriticalAddonsOnly=true",
        ),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(
        e.contains("cloud.existing_instances[0].taints[0]") && e.contains("key=value:Effect"),
        "{e}"
    );
}
