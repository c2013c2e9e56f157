//! `migrate`: old Karpenter manifests (v1alpha5 Provisioner + v1alpha1 AWSNodeTemplate, v1beta1 NodePool
//! + EC2NodeClass) become v1 ones the CRDs accept, and every field written is accounted for.

use dovetail::crds::migrate::{Outcome, migrate, read_documents};
use serde_json::Value;

fn read(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(dovetail_tests::root().join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    read_documents(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every leaf path under `spec` of the old Karpenter objects (lists count as leaves).
fn leaf_paths(v: &Value, path: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                leaf_paths(x, format!("{path}.{k}"), out);
            }
        }
        _ => out.push(path),
    }
}

/// Each old Karpenter object's fields must each fall under a report line (the line names the field or
/// a field above it).
fn assert_accounted(path: &str) {
    let docs = read(path);
    let m = migrate(&docs);
    for d in &docs {
        let kind = d["kind"].as_str().unwrap_or_default();
        if !matches!(
            kind,
            "Provisioner" | "AWSNodeTemplate" | "NodePool" | "EC2NodeClass"
        ) {
            continue;
        }
        let name = d["metadata"]["name"].as_str().unwrap_or_default();
        let mut leaves = Vec::new();
        leaf_paths(&d["spec"], "spec".into(), &mut leaves);
        for leaf in leaves {
            let covered = m.notes.iter().any(|n| {
                n.object.starts_with(&format!("{kind} {name}"))
                    && (leaf == n.field
                        || leaf.starts_with(&format!("{}.", n.field))
                        || n.object.ends_with("spec.provider") && leaf.starts_with("spec.provider"))
            });
            assert!(
                covered,
                "{path}: {kind} {name}: {leaf} is in no report line:\n{:#?}",
                m.notes
            );
        }
    }
}

/// The converted objects as the API server with Dovetail's CRDs sees them: no schema or CEL error.
fn assert_valid_v1(objects: &[Value]) {
    let store = dovetail_sim::world::api_server_store(0);
    for o in objects {
        let kind = o["kind"].as_str().unwrap_or_default();
        if matches!(kind, "NodePool" | "EC2NodeClass") {
            assert_eq!(
                o["apiVersion"].as_str().map(|a| a.ends_with("/v1")),
                Some(true)
            );
            let mut copy = o.clone();
            let errors = store.schema_errors(kind, &mut copy, None);
            assert!(
                errors.is_empty(),
                "{kind} {}: {errors:?}",
                o["metadata"]["name"]
            );
        }
    }
}

#[test]
fn every_field_of_a_v1alpha5_provisioner_and_node_template_is_converted_or_named() {
    assert_accounted("scenarios/clusters/legacy/karpenter-v1alpha5.yaml");
}

#[test]
fn every_field_of_a_v1beta1_nodepool_and_node_class_is_converted_or_named() {
    assert_accounted("tests/fixtures/karpenter-v1beta1.yaml");
}

#[test]
fn the_library_s_migrated_file_is_what_the_tool_writes_and_the_crds_accept() {
    let m = migrate(&read("scenarios/clusters/legacy/karpenter-v1alpha5.yaml"));
    let written = std::fs::read_to_string(
        dovetail_tests::root().join("scenarios/clusters/legacy/migrated.yaml"),
    )
    .unwrap_or_default();
    assert_eq!(
        m.to_yaml().unwrap_or_default(),
        written,
        "run `cargo xtask migrate scenarios/clusters/legacy/karpenter-v1alpha5.yaml > scenarios/clusters/legacy/migrated.yaml`"
    );
    assert_valid_v1(&m.objects);
}

#[test]
fn v1alpha5_semantics_carry_over() {
    let m = migrate(&read("scenarios/clusters/legacy/karpenter-v1alpha5.yaml"));
    let find = |kind: &str, name: &str| {
        m.objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let default = find("NodePool", "default");
    assert_eq!(
        default["spec"]["disruption"]["consolidationPolicy"],
        "WhenEmptyOrUnderutilized"
    );
    assert_eq!(
        default["spec"]["template"]["spec"]["expireAfter"],
        "2592000s"
    );
    assert_eq!(default["spec"]["limits"]["cpu"], "1000");
    assert_eq!(
        default["spec"]["template"]["metadata"]["labels"]["team"],
        "platform"
    );
    let batch = find("NodePool", "batch");
    assert_eq!(
        batch["spec"]["disruption"]["consolidationPolicy"],
        "WhenEmpty"
    );
    assert_eq!(batch["spec"]["disruption"]["consolidateAfter"], "30s");
    assert_eq!(
        batch["spec"]["template"]["spec"]["expireAfter"], "Never",
        "v1alpha5 nodes did not expire unless told"
    );
    // The inline provider is a node class of its own, with the pool's kubelet settings.
    let inline = find("EC2NodeClass", "batch");
    assert_eq!(
        inline["spec"]["amiSelectorTerms"][0]["alias"],
        "bottlerocket@latest"
    );
    assert_eq!(inline["spec"]["kubelet"]["maxPods"], 110);
    let class = find("EC2NodeClass", "default");
    assert_eq!(class["spec"]["kubelet"]["maxPods"], 58);
    assert_eq!(
        class["spec"]["metadataOptions"]["httpPutResponseHopLimit"],
        2
    );
    assert!(class["spec"]["kubelet"].get("containerRuntime").is_none());
    let ledger = find("Deployment", "ledger");
    assert_eq!(
        ledger["spec"]["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"],
        "true"
    );
    let lost: Vec<String> = m.lost().map(ToString::to_string).collect();
    assert_eq!(
        lost,
        [
            "Provisioner default: spec.kubeletConfiguration.containerRuntime: NO EQUIVALENT: containerd is the only runtime in v1"
        ]
    );
}

#[test]
fn v1beta1_semantics_carry_over_and_a_shared_class_with_two_kubelets_is_split() {
    let m = migrate(&read("tests/fixtures/karpenter-v1beta1.yaml"));
    assert_valid_v1(&m.objects);
    let pool = |name: &str| {
        m.objects
            .iter()
            .find(|o| o["kind"] == "NodePool" && o["metadata"]["name"] == name)
            .cloned()
            .unwrap_or_default()
    };
    let general = pool("general");
    assert_eq!(
        general["spec"]["disruption"]["consolidationPolicy"],
        "WhenEmptyOrUnderutilized"
    );
    assert_eq!(general["spec"]["template"]["spec"]["expireAfter"], "720h");
    assert_eq!(
        general["spec"]["template"]["spec"]["nodeClassRef"]["group"],
        "karpenter.k8s.aws"
    );
    assert_eq!(
        general["spec"]["template"]["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"],
        "true"
    );
    assert_eq!(
        general["spec"]["disruption"]["budgets"][1]["schedule"],
        "0 9 * * mon-fri"
    );
    assert_eq!(
        pool("batch")["spec"]["template"]["spec"]["nodeClassRef"]["name"],
        "default-batch"
    );
    let classes: Vec<(&str, &Value)> = m
        .objects
        .iter()
        .filter(|o| o["kind"] == "EC2NodeClass")
        .map(|o| {
            (
                o["metadata"]["name"].as_str().unwrap_or_default(),
                &o["spec"]["kubelet"]["maxPods"],
            )
        })
        .collect();
    assert_eq!(
        classes,
        [
            ("default", &Value::from(58)),
            ("default-batch", &Value::from(110))
        ]
    );
    assert!(m.lost().any(|n| n.field == "spec.template.spec.resources"));
}

#[test]
fn a_field_neither_api_has_is_reported_not_dropped() {
    let docs = read_documents(
        "apiVersion: karpenter.sh/v1alpha5\nkind: Provisioner\nmetadata: {name: p}\nspec:\n  providerRef: {name: p}\n  ttlSecondsAfterEmpty: 60\n  ttlSecondsAfterEmptyy: 30\n",
    )
    .unwrap_or_default();
    let m = migrate(&docs);
    let lost: Vec<&str> = m.lost().map(|n| n.field.as_str()).collect();
    assert_eq!(lost, ["spec.ttlSecondsAfterEmptyy"]);
    assert!(
        m.notes
            .iter()
            .any(|n| n.field == "spec.ttlSecondsAfterEmpty" && n.outcome == Outcome::Converted)
    );
}

#[test]
fn the_scenario_loader_points_old_kinds_at_the_tool() {
    let text = "name: old\nduration: 1m\nmanifests:\n  - apiVersion: karpenter.sh/v1alpha5\n    kind: Provisioner\n    metadata: {name: default}\n";
    let e = dovetail_sim::Scenario::parse("old.yaml", text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("old.yaml:5:5") && e.contains("cargo xtask migrate"),
        "{e}"
    );
    let text = "name: old\nduration: 1m\nmanifests:\n  - apiVersion: karpenter.sh/v1beta1\n    kind: NodePool\n    metadata: {name: default}\n";
    let e = dovetail_sim::Scenario::parse("old.yaml", text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        e.contains("apiVersion") && e.contains("cargo xtask migrate"),
        "{e}"
    );
}
