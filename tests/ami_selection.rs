//! Which image a node launches with, end to end: `amiSelectorTerms` resolved as Karpenter resolves them
//! (an alias through its family's SSM parameters for the cluster's Kubernetes version, with GPU variants for
//! GPU types; `name` limited to the account's and Amazon's images unless an `owner` is given), against
//! fakecloud's published EKS images; and when a newer `@latest` image reaches the nodes.

use dovetail_sim::Scenario;
use fakecloud::images::id_for;

/// A scenario whose class selects images by `terms` (YAML flow list), on a cluster of Kubernetes `version`,
/// with a pool allowing `types`; `replicas` pods of `pod` resources; then `timeline` (YAML, or empty).
fn scenario(terms: &str, version: &str, types: &str, resources: &str, timeline: &str) -> Scenario {
    // Without an alias the family (for user data) must be named.
    let family = if terms.contains("alias") {
        ""
    } else {
        "amiFamily: AL2023\n      "
    };
    let text = format!(
        r#"name: ami-selection
seed: 3
duration: 1h
cloud:
  zones: [us-east-1a, us-east-1b]
cluster:
  kubernetes_version: "{version}"
manifests:
  - apiVersion: karpenter.k8s.aws/v1
    kind: EC2NodeClass
    metadata: {{name: default}}
    spec:
      {family}amiSelectorTerms: {terms}
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
            - {{key: node.kubernetes.io/instance-type, operator: In, values: [{types}]}}
            - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
      disruption: {{consolidationPolicy: WhenEmpty, consolidateAfter: Never, budgets: [{{nodes: "1"}}]}}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: app, namespace: default}}
    spec:
      replicas: 2
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
              resources: {{requests: {{{resources}}}, limits: {{{resources}}}}}
{timeline}"#
    );
    Scenario::parse("ami-selection.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

use dovetail_tests::run_to_end as run;

/// The images launch templates were created with, in order.
fn template_images(trace: &str) -> Vec<String> {
    trace
        .lines()
        .filter(|l| l.contains("created launch template"))
        .filter_map(|l| l.split("image=").nth(1).map(str::to_string))
        .collect()
}

const PLAIN: &str = "cpu: 500m, memory: 1Gi";
const GPU: &str = "cpu: 500m, memory: 1Gi, nvidia.com/gpu: 1";

#[test]
fn an_alias_launches_the_current_release_for_the_clusters_version() {
    let r = run(&scenario(
        "[{alias: al2023@latest}]",
        "1.34",
        "m5.large",
        PLAIN,
        "",
    ));
    assert_eq!((r.nodes, r.pending), (2, 0), "{}", r.trace);
    assert_eq!(
        template_images(&r.trace),
        [id_for(
            "amazon-eks-node-al2023-x86_64-standard-1.34-v20251201"
        )]
    );
}

#[test]
fn a_gpu_type_gets_the_nvidia_variant_and_a_plain_type_the_standard_one() {
    let gpu = run(&scenario(
        "[{alias: al2023@latest}]",
        "1.33",
        "m5.large, g4dn.xlarge",
        GPU,
        "",
    ));
    assert_eq!((gpu.nodes, gpu.pending), (2, 0), "{}", gpu.trace);
    assert_eq!(
        template_images(&gpu.trace),
        [id_for(
            "amazon-eks-node-al2023-x86_64-nvidia-1.33-v20251201"
        )]
    );
    // Plain pods: the cheapest type is plain, but the fleet may fall back to the GPU type, which launches
    // with its own image (a second launch template in the same CreateFleet).
    let plain = run(&scenario(
        "[{alias: al2023@latest}]",
        "1.33",
        "m5.large, g4dn.xlarge",
        PLAIN,
        "",
    ));
    let mut images = template_images(&plain.trace);
    images.sort();
    let mut want = vec![
        id_for("amazon-eks-node-al2023-x86_64-standard-1.33-v20251201"),
        id_for("amazon-eks-node-al2023-x86_64-nvidia-1.33-v20251201"),
    ];
    want.sort();
    assert_eq!(images, want, "{}", plain.trace);
}

#[test]
fn a_pinned_release_and_other_families_resolve_through_their_own_parameters() {
    let pinned = run(&scenario(
        "[{alias: al2023@v20251101}]",
        "1.33",
        "m6g.large",
        PLAIN,
        "",
    ));
    assert_eq!(
        template_images(&pinned.trace),
        [id_for(
            "amazon-eks-node-al2023-arm64-standard-1.33-v20251101"
        )]
    );
    let bottlerocket = run(&scenario(
        "[{alias: bottlerocket@latest}]",
        "1.33",
        "m6g.large",
        PLAIN,
        "",
    ));
    assert_eq!(
        template_images(&bottlerocket.trace),
        [id_for("bottlerocket-aws-k8s-1.33-arm64-v1.50.0")]
    );
    let al2 = run(&scenario(
        "[{alias: al2@latest}]",
        "1.32",
        "m5.large",
        PLAIN,
        "",
    ));
    assert_eq!(
        template_images(&al2.trace),
        [id_for("amazon-eks-node-1.32-v20251201")]
    );
}

#[test]
fn al2_on_kubernetes_1_33_launches_nothing_and_says_why() {
    let r = run(&scenario(
        "[{alias: al2@latest}]",
        "1.33",
        "m5.large",
        PLAIN,
        "",
    ));
    assert_eq!((r.nodes, r.pending), (0, 2));
    assert!(template_images(&r.trace).is_empty());
    assert!(
        r.trace
            .contains("AL2 images are not published for Kubernetes 1.33"),
        "{}",
        r.trace
    );
}

#[test]
fn a_name_term_finds_amazons_images_but_not_another_owners() {
    let by_name = run(&scenario(
        "[{name: amazon-eks-node-al2023-x86_64-standard-1.33-*}]",
        "1.33",
        "m5.large",
        PLAIN,
        "",
    ));
    assert_eq!(
        template_images(&by_name.trace),
        [id_for(
            "amazon-eks-node-al2023-x86_64-standard-1.33-v20251201"
        )],
        "the newest of the two releases"
    );
    let other_owner = run(&scenario(
        "[{name: amazon-eks-node-al2023-x86_64-standard-1.33-*, owner: \"111122223333\"}]",
        "1.33",
        "m5.large",
        PLAIN,
        "",
    ));
    assert_eq!((other_owner.nodes, other_owner.pending), (0, 2));
    assert!(
        other_owner
            .trace
            .contains("spec.amiSelectorTerms did not match any image"),
        "{}",
        other_owner.trace
    );
}

#[test]
fn a_new_latest_image_waits_out_the_day_long_cache_unless_the_old_one_is_withdrawn() {
    let release = |deprecate: bool| {
        format!(
            "timeline:\n  - at: 5m\n    ami_release: {{arch: x86_64, version: v20260301, deprecate_previous: {deprecate}}}\n"
        )
    };
    let quiet = run(&scenario(
        "[{alias: al2023@latest}]",
        "1.33",
        "m5.large",
        PLAIN,
        &release(false),
    ));
    assert!(
        !quiet.trace.contains("drifted"),
        "a release alone is picked up within a day, not an hour:\n{}",
        quiet.trace
    );
    let withdrawn = run(&scenario(
        "[{alias: al2023@latest}]",
        "1.33",
        "m5.large",
        PLAIN,
        &release(true),
    ));
    let new = id_for("amazon-eks-node-al2023-x86_64-standard-1.33-v20260301");
    assert_eq!(
        withdrawn
            .trace
            .lines()
            .filter(|l| l.contains("drifted: image ami-") && l.contains(&new))
            .count(),
        2,
        "both nodes drift to the new image after the half-hourly check:\n{}",
        withdrawn.trace
    );
    assert!(
        withdrawn
            .trace
            .contains("named a deprecated image; reading it again")
    );
}
