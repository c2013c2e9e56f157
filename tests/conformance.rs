//! The conformance corpus (`tests/conformance/`): Karpenter v1.14's NodePool / NodeClaim / EC2NodeClass
//! fields are all in Dovetail's CRDs; the valid manifests, which together set every spec field, load into
//! the simulator and survive our types whole; each invalid manifest is refused with its error and field,
//! by the simulator's loader and by the generated CRDs in `deploy/crds` evaluated as an API server would.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use fakekube::schema::{Crds, render};
use serde_json::Value;

fn corpus() -> PathBuf {
    dovetail_tests::root().join("tests/conformance")
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn json_of(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The API server of a cluster where `kubectl apply -f deploy/crds` ran.
fn installed() -> Crds {
    let mut crds = Crds::default();
    for file in yaml_files(&dovetail_tests::root().join("deploy/crds")) {
        crds.install(&json_of(&file)).unwrap();
    }
    crds
}

/// `Kind path` for every property under spec and status of each CRD (`[]` for a list's items).
fn schema_paths(kind: &str, schema: &Value, path: &str, out: &mut BTreeSet<String>) {
    if let Some(props) = schema["properties"].as_object() {
        for (name, sub) in props {
            let p = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            out.insert(format!("{kind} {p}"));
            schema_paths(kind, sub, &p, out);
        }
    }
    if schema["items"].is_object() {
        schema_paths(kind, &schema["items"], &format!("{path}[]"), out);
    }
}

/// `Kind path` for every field set in an object (map keys of free-form maps are not paths).
fn object_paths(kind: &str, schema: &Value, value: &Value, path: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            let Some(props) = schema["properties"].as_object() else {
                return;
            };
            for (name, child) in map {
                let p = if path.is_empty() {
                    name.clone()
                } else {
                    format!("{path}.{name}")
                };
                out.insert(format!("{kind} {p}"));
                if let Some(sub) = props.get(name) {
                    object_paths(kind, sub, child, &p, out);
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                object_paths(kind, &schema["items"], item, &format!("{path}[]"), out);
            }
        }
        _ => {}
    }
}

fn crd_schema(kind: &str) -> Value {
    yaml_files(&dovetail_tests::root().join("deploy/crds"))
        .iter()
        .map(|f| json_of(f))
        .find(|c| c["spec"]["names"]["kind"] == kind)
        .map(|c| c["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone())
        .unwrap()
}

fn karpenter_fields() -> Vec<String> {
    std::fs::read_to_string(corpus().join("karpenter-v1.14.1-fields.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_field_of_karpenter_v1_14_is_in_our_crds() {
    let mut ours = BTreeSet::new();
    for kind in [
        "NodePool",
        "NodeClaim",
        "EC2NodeClass",
        "NodeOverlay",
        "CapacityBuffer",
    ] {
        schema_paths(kind, &crd_schema(kind), "", &mut ours);
    }
    let missing: Vec<String> = karpenter_fields()
        .into_iter()
        .filter(|f| !ours.contains(f))
        .collect();
    assert!(
        missing.is_empty(),
        "fields of Karpenter v1.14.1 missing from deploy/crds: {missing:#?}"
    );
}

#[test]
fn the_valid_corpus_sets_every_spec_field() {
    let mut used = BTreeSet::new();
    for file in yaml_files(&corpus().join("valid")) {
        let obj = json_of(&file);
        let kind = obj["kind"].as_str().unwrap().to_string();
        object_paths(&kind, &crd_schema(&kind), &obj, "", &mut used);
    }
    let unused: Vec<String> = karpenter_fields()
        .into_iter()
        .filter(|f| {
            ["NodePool spec", "EC2NodeClass spec", "CapacityBuffer spec"]
                .iter()
                .any(|k| f.starts_with(k))
        })
        .filter(|f| !used.contains(f))
        .collect();
    assert!(
        unused.is_empty(),
        "spec fields no valid corpus manifest sets: {unused:#?}"
    );
}

/// Load `manifest` into a scenario (steady-web's, with it added) as a user would, via `file:`.
fn load_with(
    manifest: &Path,
) -> Result<dovetail_sim::scenario::Scenario, dovetail_sim::error::SimError> {
    let base =
        std::fs::read_to_string(dovetail_tests::root().join("scenarios/steady-web.yaml")).unwrap();
    let text = base.replacen(
        "manifests:\n",
        &format!("manifests:\n  - file: {}\n", manifest.display()),
        1,
    );
    let dir = std::env::temp_dir().join(format!("dovetail-conformance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(manifest.file_name().unwrap());
    std::fs::write(&path, text).unwrap();
    dovetail_sim::scenario::Scenario::load(&path)
}

#[test]
fn valid_manifests_load_and_keep_every_field_in_our_types() {
    let crds = installed();
    for file in yaml_files(&corpus().join("valid")) {
        let name = file.display().to_string();
        let mut obj = json_of(&file);
        let kind = obj["kind"].as_str().unwrap().to_string();
        let errors = crds.admit(&kind, &mut obj, None);
        assert!(errors.is_empty(), "{name}: {errors:?}");
        let typed = match kind.as_str() {
            "NodePool" => serde_json::to_value(
                serde_json::from_value::<dovetail::crds::NodePool>(obj.clone()).unwrap(),
            ),
            "EC2NodeClass" => serde_json::to_value(
                serde_json::from_value::<dovetail::crds::EC2NodeClass>(obj.clone()).unwrap(),
            ),
            "NodeOverlay" => serde_json::to_value(
                serde_json::from_value::<dovetail::crds::NodeOverlay>(obj.clone()).unwrap(),
            ),
            "CapacityBuffer" => serde_json::to_value(
                serde_json::from_value::<dovetail::crds::CapacityBuffer>(obj.clone()).unwrap(),
            ),
            other => panic!("{name}: unexpected kind {other}"),
        }
        .unwrap();
        // Quantities and numbers may be respelt; fields must all be there.
        let mut before = BTreeSet::new();
        let mut after = BTreeSet::new();
        object_paths(&kind, &crd_schema(&kind), &obj, "", &mut before);
        object_paths(&kind, &crd_schema(&kind), &typed, "", &mut after);
        let lost: Vec<_> = before.difference(&after).collect();
        assert!(
            lost.is_empty(),
            "{name}: fields dropped by our types: {lost:?}"
        );
        if let Err(e) = load_with(&file) {
            panic!("{name}: the simulator refuses it: {e}");
        }
    }
}

struct Expected {
    field: String,
    error: String,
}

fn expected(file: &Path) -> Expected {
    let text = std::fs::read_to_string(file).unwrap();
    let header = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("# {key}: ")))
            .unwrap_or_else(|| panic!("{}: no `# {key}:` line", file.display()))
            .to_string()
    };
    Expected {
        field: header("field"),
        error: header("error"),
    }
}

#[test]
fn invalid_manifests_are_refused_by_the_crds_naming_field_and_error() {
    let crds = installed();
    let files = yaml_files(&corpus().join("invalid"));
    assert!(
        files.len() >= 30,
        "the invalid corpus shrank to {}",
        files.len()
    );
    for file in files {
        let name = file.display().to_string();
        let want = expected(&file);
        let mut obj = json_of(&file);
        let kind = obj["kind"].as_str().unwrap().to_string();
        let errors = crds.admit(&kind, &mut obj, None);
        assert!(
            errors
                .iter()
                .any(|e| render(&e.path) == want.field && e.message.contains(&want.error)),
            "{name}: wanted `{}: …{}…`, got {:?}",
            want.field,
            want.error,
            errors.iter().map(ToString::to_string).collect::<Vec<_>>()
        );
    }
}

#[test]
fn invalid_manifests_stop_the_simulator_at_load_naming_file_line_field_and_error() {
    for file in yaml_files(&corpus().join("invalid")) {
        let name = file.display().to_string();
        let want = expected(&file);
        let err = match load_with(&file) {
            Ok(_) => panic!("{name}: the simulator accepted it"),
            Err(e) => e,
        };
        assert_eq!(err.exit_code(), 2, "{name}");
        let shown = err.to_string();
        assert!(
            shown.starts_with(&name),
            "{name}: the error names another file: {shown}"
        );
        assert!(
            shown.contains(&format!("{}: ", want.field)) && shown.contains(&want.error),
            "{name}: wanted `{}` and `{}` in: {shown}",
            want.field,
            want.error
        );
    }
}
