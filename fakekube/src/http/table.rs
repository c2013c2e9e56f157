//! `Table` answers for `kubectl get`: the columns kube-apiserver prints for each built-in kind, and a CRD's
//! `additionalPrinterColumns` evaluated with their JSONPath.

use jiff::Timestamp;
use serde_json::{Value, json};

use super::resources::Resource;

/// A column: header, type, and whether it shows only with `-o wide` (priority 1).
struct Column {
    name: &'static str,
    kind: &'static str,
    wide: bool,
}

const fn col(name: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        wide: false,
    }
}

const fn wide(name: &'static str) -> Column {
    Column {
        name,
        kind: "string",
        wide: true,
    }
}

/// kubectl's short ages: `45s`, `3m20s`, `5h10m`, `3d4h` (apimachinery's HumanDuration).
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    if seconds < 0 {
        return "0s".into();
    }
    if seconds < 120 {
        return format!("{seconds}s");
    }
    let minutes = seconds / 60;
    if minutes < 10 {
        let s = seconds % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = minutes / 60;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    if hours < 24 * 365 * 8 {
        let d = (hours / 24) % 365;
        return if d == 0 {
            format!("{}y", hours / 24 / 365)
        } else {
            format!("{}y{d}d", hours / 24 / 365)
        };
    }
    format!("{}y", hours / 24 / 365)
}

fn age(ts: &Value, now: Timestamp) -> Value {
    match ts.as_str().and_then(|s| s.parse::<Timestamp>().ok()) {
        Some(t) => json!(human_duration(now.as_second() - t.as_second())),
        None => json!("<unknown>"),
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn or_none(v: String) -> Value {
    if v.is_empty() {
        json!("<none>")
    } else {
        json!(v)
    }
}

fn num(v: &Value) -> Value {
    json!(v.as_i64().unwrap_or(0))
}

fn containers(spec: &Value) -> (String, String) {
    let list = spec["containers"].as_array().cloned().unwrap_or_default();
    let names: Vec<String> = list.iter().map(|c| s(&c["name"])).collect();
    let images: Vec<String> = list.iter().map(|c| s(&c["image"])).collect();
    (names.join(","), images.join(","))
}

fn selector(sel: &Value) -> String {
    let mut parts: Vec<String> = sel["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", s(v)))
        .collect();
    for e in sel["matchExpressions"].as_array().into_iter().flatten() {
        let values: Vec<String> = e["values"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let key = s(&e["key"]);
        parts.push(match e["operator"].as_str() {
            Some("In") => format!("{key} in ({})", values.join(",")),
            Some("NotIn") => format!("{key} notin ({})", values.join(",")),
            Some("DoesNotExist") => format!("!{key}"),
            _ => key,
        });
    }
    parts.join(",")
}

fn condition<'a>(obj: &'a Value, kind: &str) -> Option<&'a Value> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

fn pod_status(pod: &Value) -> String {
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        return "Terminating".into();
    }
    if let Some(reason) = pod["status"]["reason"].as_str() {
        return reason.to_string();
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or("Pending");
    if phase == "Pending" && !pod["spec"]["nodeName"].is_null() {
        return "ContainerCreating".into();
    }
    phase.to_string()
}

fn node_status(node: &Value) -> String {
    let mut status = match condition(node, "Ready").map(|c| c["status"].clone()) {
        Some(v) if v == "True" => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if node["spec"]["unschedulable"] == true {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<&str> = node["metadata"]["labels"]
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, _)| k.strip_prefix("node-role.kubernetes.io/"))
        .collect();
    roles.sort_unstable();
    roles.join(",")
}

fn address(node: &Value, kind: &str) -> String {
    node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|a| a["type"] == kind)
        .map(|a| s(&a["address"]))
        .unwrap_or_default()
}

/// The built-in columns of `kind` and each object's cells for them (None: the kind prints `Name` and
/// `Created At`, kube-apiserver's default).
fn builtin(kind: &str, o: &Value, now: Timestamp) -> Option<(Vec<Column>, Vec<Value>)> {
    let spec = &o["spec"];
    let st = &o["status"];
    let name = json!(o["metadata"]["name"]);
    let created = age(&o["metadata"]["creationTimestamp"], now);
    Some(match kind {
        "Node" => (
            vec![
                col("Name"),
                col("Status"),
                col("Roles"),
                col("Age"),
                col("Version"),
                wide("Internal-IP"),
                wide("External-IP"),
                wide("OS-Image"),
                wide("Kernel-Version"),
                wide("Container-Runtime"),
            ],
            vec![
                name,
                json!(node_status(o)),
                or_none(node_roles(o)),
                created,
                json!(s(&st["nodeInfo"]["kubeletVersion"])),
                or_none(address(o, "InternalIP")),
                or_none(address(o, "ExternalIP")),
                or_none(s(&st["nodeInfo"]["osImage"])),
                or_none(s(&st["nodeInfo"]["kernelVersion"])),
                or_none(s(&st["nodeInfo"]["containerRuntimeVersion"])),
            ],
        ),
        "Pod" => {
            let total = spec["containers"].as_array().map_or(0, Vec::len);
            let statuses = st["containerStatuses"].as_array();
            let ready = statuses.map_or(0, |c| c.iter().filter(|c| c["ready"] == true).count());
            let restarts: i64 = statuses.map_or(0, |c| {
                c.iter().filter_map(|c| c["restartCount"].as_i64()).sum()
            });
            (
                vec![
                    col("Name"),
                    col("Ready"),
                    col("Status"),
                    col("Restarts"),
                    col("Age"),
                    wide("IP"),
                    wide("Node"),
                    wide("Nominated Node"),
                    wide("Readiness Gates"),
                ],
                vec![
                    name,
                    json!(format!("{ready}/{total}")),
                    json!(pod_status(o)),
                    json!(restarts),
                    created,
                    or_none(s(&st["podIP"])),
                    or_none(s(&spec["nodeName"])),
                    or_none(s(&st["nominatedNodeName"])),
                    json!("<none>"),
                ],
            )
        }
        "Deployment" => {
            let (names, images) = containers(&spec["template"]["spec"]);
            (
                vec![
                    col("Name"),
                    col("Ready"),
                    col("Up-to-date"),
                    col("Available"),
                    col("Age"),
                    wide("Containers"),
                    wide("Images"),
                    wide("Selector"),
                ],
                vec![
                    name,
                    json!(format!(
                        "{}/{}",
                        st["readyReplicas"].as_i64().unwrap_or(0),
                        spec["replicas"].as_i64().unwrap_or(1)
                    )),
                    num(&st["updatedReplicas"]),
                    num(&st["availableReplicas"]),
                    created,
                    json!(names),
                    json!(images),
                    json!(selector(&spec["selector"])),
                ],
            )
        }
        "ReplicaSet" => {
            let (names, images) = containers(&spec["template"]["spec"]);
            (
                vec![
                    col("Name"),
                    col("Desired"),
                    col("Current"),
                    col("Ready"),
                    col("Age"),
                    wide("Containers"),
                    wide("Images"),
                    wide("Selector"),
                ],
                vec![
                    name,
                    json!(spec["replicas"].as_i64().unwrap_or(1)),
                    num(&st["replicas"]),
                    num(&st["readyReplicas"]),
                    created,
                    json!(names),
                    json!(images),
                    json!(selector(&spec["selector"])),
                ],
            )
        }
        "StatefulSet" => {
            let (names, images) = containers(&spec["template"]["spec"]);
            (
                vec![
                    col("Name"),
                    col("Ready"),
                    col("Age"),
                    wide("Containers"),
                    wide("Images"),
                ],
                vec![
                    name,
                    json!(format!(
                        "{}/{}",
                        st["readyReplicas"].as_i64().unwrap_or(0),
                        spec["replicas"].as_i64().unwrap_or(1)
                    )),
                    created,
                    json!(names),
                    json!(images),
                ],
            )
        }
        "DaemonSet" => (
            vec![
                col("Name"),
                col("Desired"),
                col("Current"),
                col("Ready"),
                col("Up-to-date"),
                col("Available"),
                col("Node Selector"),
                col("Age"),
            ],
            vec![
                name,
                num(&st["desiredNumberScheduled"]),
                num(&st["currentNumberScheduled"]),
                num(&st["numberReady"]),
                num(&st["updatedNumberScheduled"]),
                num(&st["numberAvailable"]),
                or_none(
                    spec["template"]["spec"]["nodeSelector"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, v)| format!("{k}={}", s(v)))
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                created,
            ],
        ),
        "PodDisruptionBudget" => (
            vec![
                col("Name"),
                col("Min Available"),
                col("Max Unavailable"),
                col("Allowed Disruptions"),
                col("Age"),
            ],
            vec![
                name,
                or_none(s(&spec["minAvailable"])),
                or_none(s(&spec["maxUnavailable"])),
                num(&st["disruptionsAllowed"]),
                created,
            ],
        ),
        "PersistentVolumeClaim" => (
            vec![
                col("Name"),
                col("Status"),
                col("Volume"),
                col("Capacity"),
                col("Access Modes"),
                col("StorageClass"),
                col("Age"),
            ],
            vec![
                name,
                json!(s(&st["phase"])),
                json!(s(&spec["volumeName"])),
                json!(s(&st["capacity"]["storage"])),
                json!(access_modes(&st["accessModes"])),
                or_none(s(&spec["storageClassName"])),
                created,
            ],
        ),
        "PersistentVolume" => {
            let claim = &spec["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", s(&claim["namespace"]), s(&claim["name"]))
            } else {
                String::new()
            };
            (
                vec![
                    col("Name"),
                    col("Capacity"),
                    col("Access Modes"),
                    col("Reclaim Policy"),
                    col("Status"),
                    col("Claim"),
                    col("StorageClass"),
                    col("Age"),
                ],
                vec![
                    name,
                    json!(s(&spec["capacity"]["storage"])),
                    json!(access_modes(&spec["accessModes"])),
                    json!(s(&spec["persistentVolumeReclaimPolicy"])),
                    json!(s(&st["phase"])),
                    json!(claim),
                    json!(s(&spec["storageClassName"])),
                    created,
                ],
            )
        }
        "StorageClass" => {
            let default = o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                == "true";
            (
                vec![
                    col("Name"),
                    col("Provisioner"),
                    col("ReclaimPolicy"),
                    col("VolumeBindingMode"),
                    col("AllowVolumeExpansion"),
                    col("Age"),
                ],
                vec![
                    json!(if default {
                        format!("{} (default)", s(&o["metadata"]["name"]))
                    } else {
                        s(&o["metadata"]["name"])
                    }),
                    json!(s(&o["provisioner"])),
                    json!(o["reclaimPolicy"].as_str().unwrap_or("Delete")),
                    json!(o["volumeBindingMode"].as_str().unwrap_or("Immediate")),
                    json!(o["allowVolumeExpansion"].as_bool().unwrap_or(false)),
                    created,
                ],
            )
        }
        "Namespace" => (
            vec![col("Name"), col("Status"), col("Age")],
            vec![
                name,
                json!(st["phase"].as_str().unwrap_or("Active")),
                created,
            ],
        ),
        "Event" => (
            vec![
                col("Last Seen"),
                col("Type"),
                col("Reason"),
                col("Object"),
                col("Message"),
            ],
            vec![
                age(
                    if o["lastTimestamp"].is_string() {
                        &o["lastTimestamp"]
                    } else {
                        &o["eventTime"]
                    },
                    now,
                ),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&o["involvedObject"]["kind"]).to_lowercase(),
                    s(&o["involvedObject"]["name"])
                )),
                json!(s(&o["message"])),
            ],
        ),
        _ => return None,
    })
}

fn access_modes(modes: &Value) -> String {
    modes
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| match m.as_str() {
            Some("ReadWriteOnce") => "RWO",
            Some("ReadOnlyMany") => "ROX",
            Some("ReadWriteMany") => "RWX",
            Some("ReadWriteOncePod") => "RWOP",
            _ => "?",
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// One step of a printer column's JSONPath.
#[derive(Debug, PartialEq)]
enum Step {
    Field(String),
    Index(usize),
    /// `[?(@.field=="value")]`
    Filter(String, String),
}

/// `.metadata.labels.node\.kubernetes\.io/instance-type`, `.status.conditions[?(@.type=="Ready")].status`.
fn parse_path(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let chars: Vec<char> = path
        .trim_start_matches(['{', '$'])
        .trim_end_matches('}')
        .chars()
        .collect();
    let mut i = 0;
    let mut field = String::new();
    let flush = |field: &mut String, steps: &mut Vec<Step>| {
        if !field.is_empty() {
            steps.push(Step::Field(std::mem::take(field)));
        }
    };
    while i < chars.len() {
        match chars[i] {
            '\\' if i + 1 < chars.len() => {
                field.push(chars[i + 1]);
                i += 2;
                continue;
            }
            '.' => flush(&mut field, &mut steps),
            '[' => {
                flush(&mut field, &mut steps);
                let end = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .map_or(chars.len(), |p| i + p);
                let inner: String = chars[i + 1..end.min(chars.len())].iter().collect();
                if let Some(cond) = inner.strip_prefix("?(@.").and_then(|c| c.strip_suffix(')')) {
                    if let Some((k, v)) = cond.split_once("==") {
                        steps.push(Step::Filter(
                            k.trim().to_string(),
                            v.trim().trim_matches(['"', '\'']).to_string(),
                        ));
                    }
                } else if let Ok(n) = inner.trim().parse() {
                    steps.push(Step::Index(n));
                }
                i = end + 1;
                continue;
            }
            c => field.push(c),
        }
        i += 1;
    }
    flush(&mut field, &mut steps);
    steps
}

/// The first value a printer column's JSONPath finds (Null when none).
pub fn json_path(obj: &Value, path: &str) -> Value {
    let mut cur = obj.clone();
    for step in parse_path(path) {
        cur = match step {
            Step::Field(f) => cur.get(&f).cloned().unwrap_or(Value::Null),
            Step::Index(n) => cur.get(n).cloned().unwrap_or(Value::Null),
            Step::Filter(k, v) => cur
                .as_array()
                .and_then(|items| items.iter().find(|i| s(&i[&k]) == v).cloned())
                .unwrap_or(Value::Null),
        };
        if cur.is_null() {
            break;
        }
    }
    cur
}

fn column_definition(name: &str, kind: &str, wide: bool, description: &str) -> Value {
    json!({
        "name": name,
        "type": kind,
        "format": if name == "Name" { "name" } else { "" },
        "description": description,
        "priority": i32::from(wide),
    })
}

/// What a Table row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Include {
    None,
    Metadata,
    Object,
}

impl Include {
    pub fn parse(v: Option<&str>) -> Include {
        match v {
            Some("None") => Include::None,
            Some("Object") => Include::Object,
            _ => Include::Metadata,
        }
    }
}

/// The column definitions and one row per object.
pub fn table(
    resource: &Resource,
    objects: &[Value],
    now: Timestamp,
    include: Include,
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let mut definitions: Vec<Value> = Vec::new();
    let mut rows = Vec::new();
    let custom = resource.schema.is_some();
    if custom {
        definitions.push(column_definition(
            "Name",
            "string",
            false,
            "Name must be unique within a namespace.",
        ));
        for c in &resource.printer_columns {
            definitions.push(column_definition(
                c["name"].as_str().unwrap_or_default(),
                c["type"].as_str().unwrap_or("string"),
                c["priority"].as_i64().unwrap_or(0) > 0,
                c["description"].as_str().unwrap_or_default(),
            ));
        }
        if resource.printer_columns.is_empty() {
            definitions.push(column_definition(
                "Age",
                "date",
                false,
                "Time since creation",
            ));
        }
    } else {
        let empty = json!({});
        match builtin(&resource.kind, objects.first().unwrap_or(&empty), now) {
            Some((cols, _)) => {
                definitions = cols
                    .iter()
                    .map(|c| column_definition(c.name, c.kind, c.wide, ""))
                    .collect();
            }
            None => {
                definitions.push(column_definition("Name", "string", false, ""));
                definitions.push(column_definition("Created At", "date", false, ""));
            }
        }
    }
    for o in objects {
        let cells: Vec<Value> = if custom {
            let mut cells = vec![o["metadata"]["name"].clone()];
            for c in &resource.printer_columns {
                let v = json_path(o, c["jsonPath"].as_str().unwrap_or_default());
                cells.push(if c["type"] == "date" && !v.is_null() {
                    age(&v, now)
                } else {
                    v
                });
            }
            if resource.printer_columns.is_empty() {
                cells.push(age(&o["metadata"]["creationTimestamp"], now));
            }
            cells
        } else {
            match builtin(&resource.kind, o, now) {
                Some((_, cells)) => cells,
                None => vec![
                    o["metadata"]["name"].clone(),
                    o["metadata"]["creationTimestamp"].clone(),
                ],
            }
        };
        let mut row = json!({"cells": cells});
        match include {
            Include::None => {}
            Include::Metadata => {
                row["object"] = json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                });
            }
            Include::Object => row["object"] = o.clone(),
        }
        rows.push(row);
    }
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(c) = continue_token {
        metadata["continue"] = json!(c);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_kubectl_prints_them() {
        for (secs, want) in [
            (5, "5s"),
            (119, "119s"),
            (200, "3m20s"),
            (600, "10m"),
            (3 * 3600 + 600, "3h10m"),
            (20 * 3600, "20h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (30 * 86400, "30d"),
        ] {
            assert_eq!(human_duration(secs), want);
        }
    }

    #[test]
    fn printer_column_paths_escape_dots_and_filter_lists() {
        let claim = json!({
            "metadata": {"labels": {"node.kubernetes.io/instance-type": "m5.large"}},
            "status": {"conditions": [{"type": "Launched", "status": "True"}, {"type": "Ready", "status": "False"}]},
        });
        assert_eq!(
            json_path(
                &claim,
                r".metadata.labels.node\.kubernetes\.io/instance-type"
            ),
            json!("m5.large")
        );
        assert_eq!(
            json_path(&claim, r#".status.conditions[?(@.type=="Ready")].status"#),
            json!("False")
        );
        assert_eq!(
            json_path(&claim, ".status.conditions[0].type"),
            json!("Launched")
        );
        assert!(json_path(&claim, ".status.nodeName").is_null());
    }
}
