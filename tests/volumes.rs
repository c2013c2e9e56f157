//! Volumes in the simulated cluster: a StatefulSet's claims pin its pods to their volumes' zone, through
//! a node being replaced; EBS attach limits (the Nitro shared 28 slots) cap pods per node, and the planner
//! launches for them up front rather than finding out from the scheduler.

use dovetail_sim::Scenario;
use serde_json::Value;

const POOL: &str = concat!(
    r#"
"#,
    dovetail_tests::default_node_class_and_pool_head!(),
    r#"            - {key: karpenter.k8s.aws/instance-family, operator: In, values: [m5, c5, m6i]}
            - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
      disruption: {consolidationPolicy: WhenEmpty, consolidateAfter: 1m}
  - apiVersion: storage.k8s.io/v1
    kind: StorageClass
    metadata:
      name: gp3
      annotations: {storageclass.kubernetes.io/is-default-class: "true"}
    provisioner: ebs.csi.aws.com
    volumeBindingMode: WaitForFirstConsumer
"#
);

/// A StatefulSet `db` of `replicas` (Parallel), 100m each, with one `data` claim per pod.
fn statefulset(replicas: u32, spread: bool) -> String {
    let affinity = if spread {
        "\n          topologySpreadConstraints:\n            - {maxSkew: 1, minDomains: 3, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: db}}}"
    } else {
        ""
    };
    format!(
        r#"
  - apiVersion: apps/v1
    kind: StatefulSet
    metadata: {{name: db}}
    spec:
      replicas: {replicas}
      podManagementPolicy: Parallel
      serviceName: db
      selector: {{matchLabels: {{app: db}}}}
      template:
        metadata: {{labels: {{app: db}}}}
        spec:{affinity}
          containers:
            - {{name: db, image: postgres, resources: {{requests: {{cpu: 100m, memory: 256Mi}}}}}}
      volumeClaimTemplates:
        - metadata: {{name: data}}
          spec:
            accessModes: [ReadWriteOnce]
            resources: {{requests: {{storage: 10Gi}}}}
"#
    )
}

fn scenario(duration: &str, manifests: &str, timeline: &str) -> Scenario {
    let text = format!(
        "name: volumes\nseed: 3\nduration: {duration}\nmanifests:{POOL}{manifests}\ntimeline:{timeline}\n"
    );
    Scenario::parse("volumes.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
}

fn objects<'a>(out: &'a dovetail_sim::Outcome, kind: &str) -> &'a [Value] {
    out.objects.get(kind).map_or(&[], Vec::as_slice)
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or_default()
}

/// Each running `db` pod's zone (its node's) and its volume's zone (the PV's node affinity).
fn pod_and_volume_zones(out: &dovetail_sim::Outcome) -> Vec<(String, String, String)> {
    let zone_of_node = |n: &str| {
        objects(out, "Node")
            .iter()
            .find(|x| name(x) == n)
            .and_then(|x| x["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str())
            .unwrap_or("?")
            .to_string()
    };
    let pv_zone = |claim: &str| {
        let pvc = objects(out, "PersistentVolumeClaim")
            .iter()
            .find(|c| name(c) == claim)?;
        let pv = objects(out, "PersistentVolume")
            .iter()
            .find(|v| name(v) == pvc["spec"]["volumeName"].as_str().unwrap_or("-"))?;
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]
            ["values"][0]
            .as_str()
            .map(str::to_string)
    };
    objects(out, "Pod")
        .iter()
        .filter(|p| p["metadata"]["labels"]["app"] == "db" && p["status"]["phase"] == "Running")
        .map(|p| {
            let pod = name(p).to_string();
            let node = zone_of_node(p["spec"]["nodeName"].as_str().unwrap_or_default());
            let volume = pv_zone(&format!("data-{pod}")).unwrap_or_else(|| "none".into());
            (pod, node, volume)
        })
        .collect()
}

#[test]
fn thirty_pods_with_a_volume_each_need_two_nodes_where_the_attach_limit_is_26() {
    let out = dovetail_tests::simulate_passing(&scenario("8m", &statefulset(30, false), " []"));
    let first_batch = out
        .trace
        .lines()
        .find(|l| l.contains("provision  batch pods=30"))
        .unwrap_or_else(|| panic!("no batch of all 30 pods:\n{}", out.trace));
    assert!(
        first_batch.contains("new-claims=2"),
        "the planner sees the limit (m5, c5, m6i: 28 Nitro slots less the primary network interface and the root volume) and plans two nodes at once, though one would hold all 30 pods by cpu and memory: {first_batch}"
    );
    let last = out.series.last().expect("samples");
    assert_eq!((last.nodes, last.pods_pending), (2, 0), "{}", out.summary);
    let per_node: std::collections::BTreeMap<&str, usize> = objects(&out, "Pod")
        .iter()
        .filter_map(|p| p["spec"]["nodeName"].as_str())
        .fold(Default::default(), |mut m, n| {
            *m.entry(n).or_default() += 1;
            m
        });
    assert!(
        per_node.values().all(|n| *n <= 26),
        "no node holds more volumes than it can attach: {per_node:?}"
    );
    assert!(
        !out.trace.contains("exceed max volume count"),
        "no pod waited on a node that could not attach its volume"
    );
}

#[test]
fn a_statefulsets_replacement_node_comes_up_in_the_zone_its_volume_is_pinned_to() {
    // As a cluster dump holds it: the volume already exists in us-east-1b (the EBS driver's own zone
    // key), bound to the claim the StatefulSet's pod 0 uses.
    let volume = r#"
  - apiVersion: v1
    kind: PersistentVolume
    metadata: {name: pvc-0b1e}
    spec:
      capacity: {storage: 10Gi}
      accessModes: [ReadWriteOnce]
      storageClassName: gp3
      csi: {driver: ebs.csi.aws.com, volumeHandle: vol-0abc}
      claimRef: {namespace: default, name: data-db-0}
      nodeAffinity:
        required:
          nodeSelectorTerms:
            - matchExpressions:
                - {key: topology.ebs.csi.aws.com/zone, operator: In, values: [us-east-1b]}
  - apiVersion: v1
    kind: PersistentVolumeClaim
    metadata: {name: data-db-0, namespace: default}
    spec:
      accessModes: [ReadWriteOnce]
      storageClassName: gp3
      volumeName: pvc-0b1e
      resources: {requests: {storage: 10Gi}}
"#;
    let timeline = "\n  - {at: 5m, delete_nodes: {count: 1}}";
    let out = dovetail_tests::simulate_passing(&scenario(
        "12m",
        &format!("{volume}{}", statefulset(1, false)),
        timeline,
    ));
    let zones = pod_and_volume_zones(&out);
    assert_eq!(
        zones,
        [(
            "db-0".to_string(),
            "us-east-1b".to_string(),
            "us-east-1b".to_string()
        )],
        "{}",
        out.trace
    );
    let launches: Vec<&str> = out
        .trace
        .lines()
        .filter(|l| l.contains("lifecycle  launched"))
        .collect();
    assert_eq!(
        launches.len(),
        2,
        "the first node and its replacement: {launches:#?}"
    );
    assert!(
        launches.iter().all(|l| l.contains("us-east-1b")),
        "both in the volume's zone: {launches:#?}"
    );
}

#[test]
fn volumes_provisioned_where_pods_first_land_bring_them_back_there() {
    // Three replicas spread over zones (minDomains: the first node to come up must not take all three);
    // their volumes are made in whatever zone each first lands in. Then
    // every node goes: each pod must come back in its volume's zone.
    let timeline = "\n  - {at: 5m, delete_nodes: {count: 3}}";
    let out = dovetail_tests::simulate_passing(&scenario("14m", &statefulset(3, true), timeline));
    let zones = pod_and_volume_zones(&out);
    assert_eq!(zones.len(), 3, "{}", out.trace);
    for (pod, node, volume) in &zones {
        assert_eq!(node, volume, "{pod} runs in its volume's zone: {zones:?}");
    }
    let distinct: std::collections::BTreeSet<&String> = zones.iter().map(|z| &z.2).collect();
    assert_eq!(distinct.len(), 3, "spread over three zones: {zones:?}");
    assert!(
        out.trace.matches("lifecycle  launched").count() >= 6,
        "every node was replaced"
    );
}
