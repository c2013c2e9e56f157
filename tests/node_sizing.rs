//! What a node holds, end to end: the EC2NodeClass's kubelet settings size Dovetail's launches exactly as
//! the catalog and the documented kubelet formulas say (and the simulated kubelet, configured from the
//! NodeConfig user data, agrees: nothing it refuses, nothing left pending); extended resources such as
//! `vpc.amazonaws.com/pod-eni` come from the instance type.

use dovetail_sim::Scenario;

/// m5.large as the catalog has it: 2 vCPU, 8192 MiB, 3 ENIs x 10 IPv4 addresses, 9 branch interfaces.
const VCPU: u64 = 2;
const MEMORY_MIB: u64 = 8192;
const ENI_PODS: u64 = 3 * (10 - 1) + 2;

/// A scenario of `replicas` pods requesting `cpu_m` millicores and `memory_mi` MiB on a pool pinned to
/// on-demand m5.large, whose class carries `kubelet` (YAML under `spec.kubelet`, or empty).
fn scenario(
    kubelet: &str,
    replicas: u64,
    cpu_m: u64,
    memory_mi: u64,
    pod_extra: &str,
    types: &str,
) -> Scenario {
    scenario_on(
        "al2023@latest",
        "1.33",
        kubelet,
        replicas,
        cpu_m,
        memory_mi,
        pod_extra,
        types,
    )
}

/// `scenario` on another image family (`alias`) and Kubernetes version.
#[allow(clippy::too_many_arguments)]
fn scenario_on(
    alias: &str,
    version: &str,
    kubelet: &str,
    replicas: u64,
    cpu_m: u64,
    memory_mi: u64,
    pod_extra: &str,
    types: &str,
) -> Scenario {
    let kubelet = if kubelet.is_empty() {
        String::new()
    } else {
        format!("      kubelet: {kubelet}\n")
    };
    let text = format!(
        r#"name: node-sizing
seed: 1
duration: 10m
cloud:
  zones: [us-east-1a]
cluster:
  kubernetes_version: "{version}"
manifests:
  - apiVersion: karpenter.k8s.aws/v1
    kind: EC2NodeClass
    metadata: {{name: default}}
    spec:
      amiSelectorTerms: [{{alias: {alias}}}]
      role: KarpenterNodeRole-sim
      subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: sim}}}}]
      securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: sim}}}}]
{kubelet}  - apiVersion: karpenter.sh/v1
    kind: NodePool
    metadata: {{name: default}}
    spec:
      template:
        spec:
          nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}
          requirements:
            - {{key: node.kubernetes.io/instance-type, operator: In, values: [{types}]}}
            - {{key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}}
      disruption: {{consolidationPolicy: WhenEmpty, consolidateAfter: Never}}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {{name: app, namespace: default}}
    spec:
      replicas: {replicas}
      selector: {{matchLabels: {{app: app}}}}
      template:
        metadata: {{labels: {{app: app}}}}
        spec:
          containers:
            - name: app
              image: app
              resources:
                requests: {{cpu: {cpu_m}m, memory: {memory_mi}Mi{pod_extra}}}
                limits: {{cpu: {cpu_m}m, memory: {memory_mi}Mi{pod_extra}}}
"#
    );
    Scenario::parse("node-sizing.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

use dovetail_tests::run_to_end as run;

/// m5.large's allocatable under the documented formulas, given the reservations (MiB / millicores).
struct Node {
    pods: u64,
    cpu_m: u64,
    memory_mib: u64,
}

fn m5_large(
    max_pods: u64,
    kube_memory_mib: Option<u64>,
    extra_cpu_m: u64,
    eviction_mib: u64,
) -> Node {
    // The hypervisor keeps 7.5% (rounded up); kube-reserved memory is 11 MiB per ENI-limited pod + 255 MiB;
    // CPU: 6% of the first core, 1% of the second.
    let capacity = MEMORY_MIB - (MEMORY_MIB * 75).div_ceil(1000);
    let kube = kube_memory_mib.unwrap_or(11 * ENI_PODS + 255);
    Node {
        pods: max_pods,
        cpu_m: VCPU * 1000 - 70 - extra_cpu_m,
        memory_mib: capacity - kube - eviction_mib,
    }
}

fn expected_nodes(node: &Node, replicas: u64, cpu_m: u64, memory_mi: u64) -> usize {
    let per_node = node
        .pods
        .min(node.cpu_m / cpu_m)
        .min(node.memory_mib / memory_mi);
    replicas.div_ceil(per_node) as usize
}

#[test]
fn without_kubelet_settings_the_eni_limit_sizes_nodes() {
    let r = run(&scenario("", 60, 10, 16, "", "m5.large"));
    let want = expected_nodes(&m5_large(ENI_PODS, None, 0, 100), 60, 10, 16);
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
    assert_eq!(want, 3);
}

#[test]
fn max_pods_caps_pods_per_node() {
    let r = run(&scenario("{maxPods: 10}", 60, 10, 16, "", "m5.large"));
    let want = expected_nodes(&m5_large(10, None, 0, 100), 60, 10, 16);
    assert_eq!(want, 6);
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
}

#[test]
fn pods_per_core_caps_pods_per_node() {
    let r = run(&scenario("{podsPerCore: 4}", 60, 10, 16, "", "m5.large"));
    let want = expected_nodes(&m5_large(4 * VCPU, None, 0, 100), 60, 10, 16);
    assert_eq!(want, 8);
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
}

#[test]
fn kube_reserved_memory_replaces_the_default() {
    let r = run(&scenario(
        "{kubeReserved: {memory: 2Gi}}",
        30,
        10,
        1024,
        "",
        "m5.large",
    ));
    let want = expected_nodes(&m5_large(ENI_PODS, Some(2048), 0, 100), 30, 10, 1024);
    let default = expected_nodes(&m5_large(ENI_PODS, None, 0, 100), 30, 10, 1024);
    assert_eq!((default, want), (5, 6));
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
}

#[test]
fn system_reserved_cpu_is_taken_off_allocatable() {
    let r = run(&scenario(
        "{systemReserved: {cpu: 500m}}",
        12,
        500,
        64,
        "",
        "m5.large",
    ));
    let want = expected_nodes(&m5_large(ENI_PODS, None, 500, 100), 12, 500, 64);
    let default = expected_nodes(&m5_large(ENI_PODS, None, 0, 100), 12, 500, 64);
    assert_eq!((default, want), (4, 6));
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
}

#[test]
fn eviction_hard_memory_is_held_back_from_allocatable() {
    let capacity = MEMORY_MIB - (MEMORY_MIB * 75).div_ceil(1000);
    let evict = (capacity as f64 * 0.2).ceil() as u64;
    let r = run(&scenario(
        "{evictionHard: {memory.available: 20%, nodefs.available: 10%}}",
        30,
        10,
        1024,
        "",
        "m5.large",
    ));
    let want = expected_nodes(&m5_large(ENI_PODS, None, 0, evict), 30, 10, 1024);
    assert_eq!(want, 6);
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
}

#[test]
fn bottlerocket_reserves_memory_by_its_max_pods_and_its_kubelet_agrees() {
    // Bottlerocket keeps 11 MiB per pod it may run (here 10) + 255 MiB; Amazon Linux would keep it per
    // ENI-addressable pod (29): 365 vs 574 MiB. 1000 MiB pods: 7 per node instead of 6.
    let capacity = MEMORY_MIB - (MEMORY_MIB * 75).div_ceil(1000);
    let per_node = |reserved: u64| (capacity - reserved - 100) / 1000;
    assert_eq!(
        (per_node(11 * 10 + 255), per_node(11 * ENI_PODS + 255)),
        (7, 6)
    );
    let r = run(&scenario_on(
        "bottlerocket@latest",
        "1.33",
        "{maxPods: 10}",
        21,
        10,
        1000,
        "",
        "m5.large",
    ));
    // The simulated kubelet read the TOML user data itself: had it reserved like Amazon Linux, three
    // pods would not fit where the controller put them.
    assert_eq!((r.nodes, r.pending), (3, 0), "{}", r.trace);
    let al = run(&scenario("{maxPods: 10}", 21, 10, 1000, "", "m5.large"));
    assert_eq!((al.nodes, al.pending), (4, 0), "{}", al.trace);
}

#[test]
fn al2_nodes_take_their_kubelet_settings_from_the_bootstrap_flags() {
    let r = run(&scenario_on(
        "al2@latest",
        "1.32",
        "{maxPods: 10, systemReserved: {cpu: 500m}}",
        12,
        500,
        64,
        "",
        "m5.large",
    ));
    let want = expected_nodes(&m5_large(10, None, 500, 100), 12, 500, 64);
    assert_eq!(want, 6);
    assert_eq!((r.nodes, r.pending), (want, 0), "{}", r.trace);
}

#[test]
fn a_security_groups_for_pods_pod_gets_a_trunking_node() {
    let pod_eni = ", vpc.amazonaws.com/pod-eni: \"1\"";
    // m5.large offers 9 branch interfaces: 12 such pods need two nodes.
    let r = run(&scenario("", 12, 10, 16, pod_eni, "m5.large, t3.medium"));
    assert_eq!((r.nodes, r.pending), (2, 0), "{}", r.trace);
    assert!(!r.trace.contains("t3.medium"), "{}", r.trace);
}

#[test]
fn without_a_trunking_type_a_pod_eni_pod_waits_and_says_why() {
    let pod_eni = ", vpc.amazonaws.com/pod-eni: \"1\"";
    let r = run(&scenario("", 1, 10, 16, pod_eni, "t3.medium"));
    assert_eq!((r.nodes, r.pending), (0, 1), "{}", r.trace);
    assert!(
        r.trace
            .lines()
            .any(|l| l.contains("cannot place") && l.contains("lacks vpc.amazonaws.com/pod-eni")),
        "{}",
        r.trace
    );
}
