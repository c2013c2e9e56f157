//! Old Karpenter manifests to v1: `karpenter.sh/v1alpha5` Provisioner + `karpenter.k8s.aws/v1alpha1`
//! AWSNodeTemplate and `v1beta1` NodePool + EC2NodeClass become v1 NodePool + EC2NodeClass, following
//! Karpenter's upgrade guides; every field read is reported converted, defaulted or without equivalent.
//!
//! Fields are taken out of a working copy as they are converted, so whatever is left at the end is
//! reported by path: nothing is dropped without a line saying so.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

/// What happened to one field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Carried over (renamed, moved or rewritten).
    Converted,
    /// Not written, but v1 would default it differently: written so behaviour stays the same.
    Defaulted,
    /// v1 has nothing that does this; the field is not carried over.
    NoEquivalent,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Note {
    /// `Provisioner default`, `EC2NodeClass default`.
    pub object: String,
    /// The old field's path, `spec.ttlSecondsAfterEmpty`.
    pub field: String,
    pub outcome: Outcome,
    pub message: String,
}

impl std::fmt::Display for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tag = match self.outcome {
            Outcome::Converted => "converted",
            Outcome::Defaulted => "defaulted",
            Outcome::NoEquivalent => "NO EQUIVALENT",
        };
        write!(
            f,
            "{}: {}: {tag}: {}",
            self.object, self.field, self.message
        )
    }
}

/// The converted documents, in input order (an inline provider or a split node class follows the object
/// it came from), and the report.
#[derive(Debug, Clone, Default)]
pub struct Migration {
    pub objects: Vec<Value>,
    pub notes: Vec<Note>,
}

impl Migration {
    /// Fields v1 cannot express.
    pub fn lost(&self) -> impl Iterator<Item = &Note> {
        self.notes
            .iter()
            .filter(|n| n.outcome == Outcome::NoEquivalent)
    }

    /// The converted documents as one multi-document YAML file.
    pub fn to_yaml(&self) -> Result<String, String> {
        let mut out = String::new();
        for (i, o) in self.objects.iter().enumerate() {
            if i > 0 {
                out.push_str("---\n");
            }
            out.push_str(&serde_saphyr::to_string(o).map_err(|e| e.to_string())?);
        }
        Ok(out)
    }
}

const V1_POOL: &str = "karpenter.sh/v1";
const V1_CLASS: &str = "karpenter.k8s.aws/v1";
/// Old pod and node annotations that v1 reads as `karpenter.sh/do-not-disrupt`.
const OLD_DO_NOT_DISRUPT: [&str; 2] = [
    "karpenter.sh/do-not-evict",
    "karpenter.sh/do-not-consolidate",
];
/// Server-set metadata, dropped without comment (it is not the user's).
const SERVER_SET: [&str; 7] = [
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "selfLink",
    "finalizers",
];
/// kubelet settings v1's EC2NodeClass `spec.kubelet` has under the same names.
const KUBELET_FIELDS: [&str; 12] = [
    "clusterDNS",
    "maxPods",
    "podsPerCore",
    "systemReserved",
    "kubeReserved",
    "evictionHard",
    "evictionSoft",
    "evictionSoftGracePeriod",
    "evictionMaxPodGracePeriod",
    "imageGCHighThresholdPercent",
    "imageGCLowThresholdPercent",
    "cpuCFSQuota",
];

/// The report being written for one object.
struct Report<'a> {
    object: String,
    notes: &'a mut Vec<Note>,
}

impl Report<'_> {
    fn note(&mut self, field: &str, outcome: Outcome, message: impl Into<String>) {
        self.notes.push(Note {
            object: self.object.clone(),
            field: field.to_string(),
            outcome,
            message: message.into(),
        });
    }
}

/// Take `key` out of an object (None if absent or not an object).
fn take(v: &mut Value, key: &str) -> Option<Value> {
    v.as_object_mut()?.shift_remove(key)
}

/// Whatever is left under `v` (at `path`): one NoEquivalent line per leaf or emptied container.
fn leftovers(v: &Value, path: &str, r: &mut Report<'_>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, x) in m {
                let at = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                leftovers(x, &at, r);
            }
        }
        Value::Object(_) => {}
        _ => r.note(
            path,
            Outcome::NoEquivalent,
            "not a field of the old API or of v1; not carried over",
        ),
    }
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"].as_str().unwrap_or("?").to_string()
}

/// A selector map of the old API (`aws-ids`/`aws::ids`, `aws::name`, `aws::owners`, else tags) as v1
/// selector terms.
fn selector_terms(selector: &Map<String, Value>, with_name_owner: bool) -> Vec<Value> {
    let mut terms = Vec::new();
    let mut tags = Map::new();
    let mut name: Option<String> = None;
    let mut owners: Vec<String> = Vec::new();
    for (k, v) in selector {
        let text = v.as_str().unwrap_or_default();
        let list = || {
            text.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        match k.as_str() {
            "aws-ids" | "aws::ids" => {
                terms.extend(list().into_iter().map(|id| json!({"id": id})));
            }
            "aws::name" if with_name_owner => name = Some(text.to_string()),
            "aws::owners" if with_name_owner => owners = list(),
            _ => {
                tags.insert(k.clone(), v.clone());
            }
        }
    }
    match (name, owners.is_empty()) {
        (Some(n), true) => terms.push(json!({"name": n})),
        (Some(n), false) => terms.extend(owners.iter().map(|o| json!({"name": n, "owner": o}))),
        (None, false) => terms.extend(owners.iter().map(|o| json!({"owner": o}))),
        (None, true) => {}
    }
    if !tags.is_empty() {
        terms.push(json!({"tags": tags}));
    }
    terms
}

/// The v1 alias for an old `amiFamily` (None: v1 has no alias for it).
fn alias_for(family: &str) -> Option<&'static str> {
    match family {
        "AL2" => Some("al2@latest"),
        "AL2023" => Some("al2023@latest"),
        "Bottlerocket" => Some("bottlerocket@latest"),
        "Windows2019" => Some("windows2019@latest"),
        "Windows2022" => Some("windows2022@latest"),
        _ => None,
    }
}

/// Old `amiFamily` (+ no selector) to v1's `amiSelectorTerms` / `amiFamily`.
fn ami_family(spec: &mut Value, out: &mut Map<String, Value>, has_terms: bool, r: &mut Report<'_>) {
    let Some(family) = take(spec, "amiFamily") else {
        if !has_terms {
            out.insert(
                "amiSelectorTerms".into(),
                json!([{"alias": "al2023@latest"}]),
            );
            r.note(
                "spec.amiFamily",
                Outcome::Defaulted,
                "unset (the old default was AL2): amiSelectorTerms [{alias: al2023@latest}]; AL2 images are not published for Kubernetes 1.33 and later",
            );
        }
        return;
    };
    let family = family.as_str().unwrap_or_default().to_string();
    match (alias_for(&family), has_terms) {
        (_, true) => {
            if family == "Ubuntu" {
                out.insert("amiFamily".into(), json!("Custom"));
                r.note("spec.amiFamily", Outcome::NoEquivalent, "Ubuntu is not a v1 family: written as Custom, so the user data is not generated; supply userData that joins the cluster");
            } else {
                out.insert("amiFamily".into(), json!(family));
                r.note(
                    "spec.amiFamily",
                    Outcome::Converted,
                    format!("amiFamily {family} kept beside the selector terms"),
                );
            }
        }
        (Some(alias), false) => {
            out.insert("amiSelectorTerms".into(), json!([{"alias": alias}]));
            let mut message = format!("amiSelectorTerms [{{alias: {alias}}}]");
            if family == "AL2" {
                message.push_str("; AL2 images are not published for Kubernetes 1.33 and later: consider al2023@latest");
            }
            r.note("spec.amiFamily", Outcome::Converted, message);
        }
        (None, false) => {
            out.insert("amiFamily".into(), json!("Custom"));
            r.note(
                "spec.amiFamily",
                Outcome::NoEquivalent,
                format!("{family} without an AMI selector has no v1 alias: written as amiFamily Custom; add amiSelectorTerms naming your images"),
            );
        }
    }
}

/// The EC2NodeClass fields both old APIs spell as v1 does.
fn same_class_fields(spec: &mut Value, out: &mut Map<String, Value>, r: &mut Report<'_>) {
    for f in [
        "role",
        "instanceProfile",
        "userData",
        "tags",
        "blockDeviceMappings",
        "instanceStorePolicy",
        "detailedMonitoring",
        "associatePublicIPAddress",
        "context",
    ] {
        if let Some(v) = take(spec, f) {
            out.insert(f.into(), v);
            r.note(&format!("spec.{f}"), Outcome::Converted, "same field in v1");
        }
    }
    if let Some(m) = take(spec, "metadataOptions") {
        let hop = m.get("httpPutResponseHopLimit").cloned();
        out.insert("metadataOptions".into(), m);
        r.note(
            "spec.metadataOptions",
            Outcome::Converted,
            "same field in v1",
        );
        if hop.is_none() {
            out.entry("metadataOptions").or_insert_with(|| json!({}))["httpPutResponseHopLimit"] =
                json!(2);
            r.note(
                "spec.metadataOptions.httpPutResponseHopLimit",
                Outcome::Defaulted,
                "2, the old default (v1's is 1, which keeps pods off the instance's metadata)",
            );
        }
    }
}

/// The kubelet settings of an old pool, as v1's EC2NodeClass `spec.kubelet`.
fn kubelet(mut old: Value, field: &str, r: &mut Report<'_>) -> Map<String, Value> {
    let mut out = Map::new();
    for f in KUBELET_FIELDS {
        if let Some(v) = take(&mut old, f) {
            out.insert(f.into(), v);
        }
    }
    if !out.is_empty() {
        r.note(
            field,
            Outcome::Converted,
            format!(
                "to the EC2NodeClass's spec.kubelet ({})",
                out.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        );
    }
    if take(&mut old, "containerRuntime").is_some() {
        r.note(
            &format!("{field}.containerRuntime"),
            Outcome::NoEquivalent,
            "containerd is the only runtime in v1",
        );
    }
    leftovers(&old, field, r);
    out
}

/// Rename the old do-not-evict / do-not-consolidate annotations in a metadata block.
fn rename_annotations(meta: &mut Value, field: &str, r: &mut Report<'_>) {
    let Some(annotations) = meta.get_mut("annotations").and_then(Value::as_object_mut) else {
        return;
    };
    for old in OLD_DO_NOT_DISRUPT {
        if let Some(v) = annotations.shift_remove(old) {
            annotations.insert("karpenter.sh/do-not-disrupt".into(), v);
            r.note(
                &format!("{field}.annotations[{old}]"),
                Outcome::Converted,
                "karpenter.sh/do-not-disrupt",
            );
        }
    }
}

/// Metadata carried over: name, namespace-less, labels and annotations; server-set fields dropped.
fn carry_metadata(old: &mut Value, r: &mut Report<'_>) -> Value {
    let mut meta = take(old, "metadata").unwrap_or_else(|| json!({}));
    for f in SERVER_SET {
        take(&mut meta, f);
    }
    if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
        a.shift_remove("kubectl.kubernetes.io/last-applied-configuration");
    }
    let mut out = Map::new();
    for f in ["name", "labels", "annotations"] {
        if let Some(v) = take(&mut meta, f).filter(|v| v.as_object().is_none_or(|m| !m.is_empty()))
        {
            out.insert(f.into(), v);
        }
    }
    take(&mut meta, "namespace");
    leftovers(&meta, "metadata", r);
    Value::Object(out)
}

/// A NodePool spec in the order v1's documentation writes it: template, disruption, limits, weight.
fn in_v1_order(
    template: Map<String, Value>,
    disruption: Map<String, Value>,
    rest: Map<String, Value>,
) -> Value {
    let mut spec = Map::new();
    spec.insert("template".into(), Value::Object(template));
    spec.insert("disruption".into(), Value::Object(disruption));
    spec.extend(rest);
    Value::Object(spec)
}

/// An old object opened for conversion: its kind and status dropped, its metadata carried over, its spec
/// taken out to be converted field by field.
fn open(old: &mut Value, r: &mut Report<'_>) -> (Value, Value) {
    take(old, "apiVersion");
    take(old, "kind");
    take(old, "status");
    let metadata = carry_metadata(old, r);
    let spec = take(old, "spec").unwrap_or_else(|| json!({}));
    (metadata, spec)
}

/// A duration in seconds as v1 writes it.
fn seconds(v: &Value) -> String {
    format!("{}s", v.as_i64().unwrap_or(0))
}

/// v1alpha5 Provisioner to a v1 NodePool (and an EC2NodeClass if it carried its provider inline).
fn provisioner(
    mut old: Value,
    notes: &mut Vec<Note>,
) -> (Value, Option<Value>, Map<String, Value>, String) {
    let name = name_of(&old);
    let mut r = Report {
        object: format!("Provisioner {name}"),
        notes,
    };
    let (metadata, mut spec) = open(&mut old, &mut r);
    let mut template_meta = Map::new();
    let mut template_spec = Map::new();
    let mut pool_spec = Map::new();
    let mut disruption = Map::new();
    for (from, to) in [("labels", "labels"), ("annotations", "annotations")] {
        if let Some(v) = take(&mut spec, from) {
            template_meta.insert(to.into(), v);
            r.note(
                &format!("spec.{from}"),
                Outcome::Converted,
                format!("spec.template.metadata.{to}"),
            );
        }
    }
    for f in ["requirements", "taints", "startupTaints"] {
        if let Some(v) = take(&mut spec, f) {
            template_spec.insert(f.into(), v);
            r.note(
                &format!("spec.{f}"),
                Outcome::Converted,
                format!("spec.template.spec.{f}"),
            );
        }
    }
    let kubelet_settings = take(&mut spec, "kubeletConfiguration")
        .map(|k| kubelet(k, "spec.kubeletConfiguration", &mut r))
        .unwrap_or_default();
    let mut class_name = name.clone();
    let mut inline = None;
    if let Some(p) = take(&mut spec, "providerRef") {
        class_name = p["name"].as_str().unwrap_or(&name).to_string();
        r.note("spec.providerRef", Outcome::Converted, format!("spec.template.spec.nodeClassRef {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: {class_name}}}"));
    } else if let Some(provider) = take(&mut spec, "provider") {
        r.note(
            "spec.provider",
            Outcome::Converted,
            format!("its own EC2NodeClass {name}, which the NodePool references"),
        );
        let doc = json!({"apiVersion": "karpenter.k8s.aws/v1alpha1", "kind": "AWSNodeTemplate",
            "metadata": {"name": name}, "spec": provider});
        let mut r2 = Report {
            object: format!("Provisioner {name} spec.provider"),
            notes: r.notes,
        };
        inline = Some(node_template(doc, &mut r2));
        r = Report {
            object: format!("Provisioner {name}"),
            notes: r2.notes,
        };
    } else {
        r.note("spec.providerRef", Outcome::NoEquivalent, format!("neither providerRef nor provider: the NodePool references EC2NodeClass {name}, which you must write"));
    }
    template_spec.insert(
        "nodeClassRef".into(),
        json!({"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": class_name}),
    );
    let empty = take(&mut spec, "ttlSecondsAfterEmpty");
    let consolidation = take(&mut spec, "consolidation");
    let enabled = consolidation
        .as_ref()
        .and_then(|c| c["enabled"].as_bool())
        .unwrap_or(false);
    match (&empty, enabled) {
        (_, true) => {
            disruption.insert(
                "consolidationPolicy".into(),
                json!("WhenEmptyOrUnderutilized"),
            );
            disruption.insert("consolidateAfter".into(), json!("0s"));
            r.note(
                "spec.consolidation.enabled",
                Outcome::Converted,
                "disruption.consolidationPolicy WhenEmptyOrUnderutilized, consolidateAfter 0s",
            );
            if empty.is_some() {
                r.note("spec.ttlSecondsAfterEmpty", Outcome::NoEquivalent, "consolidation already removes empty nodes; the two could not be set together in v1alpha5 either");
            }
        }
        (Some(ttl), false) => {
            disruption.insert("consolidationPolicy".into(), json!("WhenEmpty"));
            disruption.insert("consolidateAfter".into(), json!(seconds(ttl)));
            r.note(
                "spec.ttlSecondsAfterEmpty",
                Outcome::Converted,
                format!(
                    "disruption.consolidationPolicy WhenEmpty, consolidateAfter {}",
                    seconds(ttl)
                ),
            );
            if consolidation.is_some() {
                r.note(
                    "spec.consolidation.enabled",
                    Outcome::Converted,
                    "false: only empty nodes go",
                );
            }
        }
        (None, false) => {
            disruption.insert("consolidationPolicy".into(), json!("WhenEmpty"));
            disruption.insert("consolidateAfter".into(), json!("Never"));
            r.note("spec.ttlSecondsAfterEmpty", Outcome::Defaulted, "neither it nor consolidation set: nothing was consolidated, so consolidateAfter Never");
        }
    }
    if let Some(c) = consolidation {
        let mut rest = c;
        take(&mut rest, "enabled");
        leftovers(&rest, "spec.consolidation", &mut r);
    }
    match take(&mut spec, "ttlSecondsUntilExpired") {
        Some(ttl) => {
            template_spec.insert("expireAfter".into(), json!(seconds(&ttl)));
            r.note(
                "spec.ttlSecondsUntilExpired",
                Outcome::Converted,
                format!("spec.template.spec.expireAfter {}", seconds(&ttl)),
            );
        }
        None => {
            template_spec.insert("expireAfter".into(), json!("Never"));
            r.note(
                "spec.ttlSecondsUntilExpired",
                Outcome::Defaulted,
                "unset, nodes never expired: expireAfter Never (v1 would default to 720h)",
            );
        }
    }
    if let Some(mut limits) = take(&mut spec, "limits") {
        if let Some(res) = take(&mut limits, "resources") {
            pool_spec.insert("limits".into(), res);
            r.note("spec.limits.resources", Outcome::Converted, "spec.limits");
        }
        leftovers(&limits, "spec.limits", &mut r);
    }
    if let Some(w) = take(&mut spec, "weight") {
        pool_spec.insert("weight".into(), w);
        r.note("spec.weight", Outcome::Converted, "same field in v1");
    }
    leftovers(&spec, "spec", &mut r);
    leftovers(&old, "", &mut r);
    let mut template = Map::new();
    if !template_meta.is_empty() {
        template.insert("metadata".into(), Value::Object(template_meta));
    }
    template.insert("spec".into(), Value::Object(template_spec));
    let pool = json!({"apiVersion": V1_POOL, "kind": "NodePool", "metadata": metadata,
        "spec": in_v1_order(template, disruption, pool_spec)});
    (pool, inline, kubelet_settings, class_name)
}

/// v1alpha1 AWSNodeTemplate to a v1 EC2NodeClass.
fn node_template(mut old: Value, r: &mut Report<'_>) -> Value {
    let (metadata, mut spec) = open(&mut old, r);
    let mut out = Map::new();
    for (from, to, name_owner) in [
        ("subnetSelector", "subnetSelectorTerms", false),
        ("securityGroupSelector", "securityGroupSelectorTerms", false),
        ("amiSelector", "amiSelectorTerms", true),
    ] {
        if let Some(sel) = take(&mut spec, from) {
            let terms = selector_terms(sel.as_object().unwrap_or(&Map::new()), name_owner);
            r.note(
                &format!("spec.{from}"),
                Outcome::Converted,
                format!(
                    "spec.{to}: {} selector term(s), one per id, tags together",
                    terms.len()
                ),
            );
            out.insert(to.into(), json!(terms));
        }
    }
    let has_terms = out.contains_key("amiSelectorTerms");
    ami_family(&mut spec, &mut out, has_terms, r);
    if take(&mut spec, "launchTemplate").is_some() {
        r.note("spec.launchTemplate", Outcome::NoEquivalent, "v1 builds its own launch templates; move what yours set into blockDeviceMappings, metadataOptions, userData and tags");
    }
    same_class_fields(&mut spec, &mut out, r);
    if !out.contains_key("role") && !out.contains_key("instanceProfile") {
        r.note("spec.instanceProfile", Outcome::NoEquivalent, "unset: the old default came from the controller's settings; set spec.role (or instanceProfile) in the EC2NodeClass");
    }
    leftovers(&spec, "spec", r);
    leftovers(&old, "", r);
    json!({"apiVersion": V1_CLASS, "kind": "EC2NodeClass", "metadata": metadata, "spec": out})
}

/// v1beta1 NodePool to v1.
fn nodepool_v1beta1(mut old: Value, notes: &mut Vec<Note>) -> (Value, Map<String, Value>, String) {
    let name = name_of(&old);
    let mut r = Report {
        object: format!("NodePool {name}"),
        notes,
    };
    let (metadata, mut spec) = open(&mut old, &mut r);
    let mut template = take(&mut spec, "template").unwrap_or_else(|| json!({}));
    let mut tspec = take(&mut template, "spec").unwrap_or_else(|| json!({}));
    let mut out_tspec = Map::new();
    let mut class_name = name.clone();
    if let Some(mut r0) = take(&mut tspec, "nodeClassRef") {
        class_name = take(&mut r0, "name")
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or(name.clone());
        take(&mut r0, "apiVersion");
        take(&mut r0, "kind");
        r.note(
            "spec.template.spec.nodeClassRef",
            Outcome::Converted,
            "apiVersion becomes group: karpenter.k8s.aws",
        );
        leftovers(&r0, "spec.template.spec.nodeClassRef", &mut r);
    }
    out_tspec.insert(
        "nodeClassRef".into(),
        json!({"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": class_name}),
    );
    for f in ["requirements", "taints", "startupTaints"] {
        if let Some(v) = take(&mut tspec, f) {
            out_tspec.insert(f.into(), v);
            r.note(
                &format!("spec.template.spec.{f}"),
                Outcome::Converted,
                "same field in v1",
            );
        }
    }
    let kubelet_settings = take(&mut tspec, "kubelet")
        .map(|k| kubelet(k, "spec.template.spec.kubelet", &mut r))
        .unwrap_or_default();
    if take(&mut tspec, "resources").is_some() {
        r.note(
            "spec.template.spec.resources",
            Outcome::NoEquivalent,
            "never used by Karpenter; removed in v1",
        );
    }
    leftovers(&tspec, "spec.template.spec", &mut r);
    let mut out_template = Map::new();
    if let Some(mut m) = take(&mut template, "metadata") {
        rename_annotations(&mut m, "spec.template.metadata", &mut r);
        out_template.insert("metadata".into(), m);
        r.note(
            "spec.template.metadata",
            Outcome::Converted,
            "same field in v1",
        );
    }
    leftovers(&template, "spec.template", &mut r);
    let mut pool_spec = Map::new();
    let mut disruption = take(&mut spec, "disruption").unwrap_or_else(|| json!({}));
    let mut out_disruption = Map::new();
    match take(&mut disruption, "consolidationPolicy")
        .as_ref()
        .and_then(Value::as_str)
    {
        Some("WhenUnderutilized") => {
            out_disruption.insert(
                "consolidationPolicy".into(),
                json!("WhenEmptyOrUnderutilized"),
            );
            out_disruption.insert("consolidateAfter".into(), json!("0s"));
            r.note(
                "spec.disruption.consolidationPolicy",
                Outcome::Converted,
                "WhenUnderutilized is WhenEmptyOrUnderutilized, consolidateAfter 0s",
            );
        }
        Some(p) => {
            out_disruption.insert("consolidationPolicy".into(), json!(p));
            r.note(
                "spec.disruption.consolidationPolicy",
                Outcome::Converted,
                "same value in v1",
            );
        }
        None => {
            out_disruption.insert(
                "consolidationPolicy".into(),
                json!("WhenEmptyOrUnderutilized"),
            );
            out_disruption.insert("consolidateAfter".into(), json!("0s"));
            r.note("spec.disruption.consolidationPolicy", Outcome::Defaulted, "v1beta1's default, WhenUnderutilized: WhenEmptyOrUnderutilized, consolidateAfter 0s");
        }
    }
    if let Some(after) = take(&mut disruption, "consolidateAfter") {
        out_disruption.insert("consolidateAfter".into(), after);
        r.note(
            "spec.disruption.consolidateAfter",
            Outcome::Converted,
            "same field in v1",
        );
    }
    match take(&mut disruption, "expireAfter") {
        Some(e) => {
            out_tspec.insert("expireAfter".into(), e);
            r.note(
                "spec.disruption.expireAfter",
                Outcome::Converted,
                "spec.template.spec.expireAfter",
            );
        }
        None => {
            out_tspec.insert("expireAfter".into(), json!("720h"));
            r.note(
                "spec.disruption.expireAfter",
                Outcome::Defaulted,
                "720h, v1beta1's default (and v1's)",
            );
        }
    }
    if let Some(b) = take(&mut disruption, "budgets") {
        out_disruption.insert("budgets".into(), b);
        r.note(
            "spec.disruption.budgets",
            Outcome::Converted,
            "same field in v1",
        );
    }
    leftovers(&disruption, "spec.disruption", &mut r);
    for f in ["limits", "weight"] {
        if let Some(v) = take(&mut spec, f) {
            pool_spec.insert(f.into(), v);
            r.note(&format!("spec.{f}"), Outcome::Converted, "same field in v1");
        }
    }
    leftovers(&spec, "spec", &mut r);
    leftovers(&old, "", &mut r);
    out_template.insert("spec".into(), Value::Object(out_tspec));
    let spec = in_v1_order(out_template, out_disruption, pool_spec);
    (
        json!({"apiVersion": V1_POOL, "kind": "NodePool", "metadata": metadata, "spec": spec}),
        kubelet_settings,
        class_name,
    )
}

/// v1beta1 EC2NodeClass to v1.
fn nodeclass_v1beta1(mut old: Value, r: &mut Report<'_>) -> Value {
    let (metadata, mut spec) = open(&mut old, r);
    let mut out = Map::new();
    for f in [
        "subnetSelectorTerms",
        "securityGroupSelectorTerms",
        "amiSelectorTerms",
    ] {
        if let Some(v) = take(&mut spec, f) {
            out.insert(f.into(), v);
            r.note(&format!("spec.{f}"), Outcome::Converted, "same field in v1");
        }
    }
    let has_terms = out.contains_key("amiSelectorTerms");
    ami_family(&mut spec, &mut out, has_terms, r);
    same_class_fields(&mut spec, &mut out, r);
    leftovers(&spec, "spec", r);
    leftovers(&old, "", r);
    json!({"apiVersion": V1_CLASS, "kind": "EC2NodeClass", "metadata": metadata, "spec": out})
}

/// Any other object: the old do-not-evict / do-not-consolidate annotations renamed, on the object and on
/// a workload's pod template.
fn other(mut doc: Value, notes: &mut Vec<Note>) -> Value {
    let kind = doc["kind"].as_str().unwrap_or("object").to_string();
    let mut r = Report {
        object: format!("{kind} {}", name_of(&doc)),
        notes,
    };
    if let Some(m) = doc.get_mut("metadata") {
        rename_annotations(m, "metadata", &mut r);
    }
    if let Some(m) = doc.pointer_mut("/spec/template/metadata") {
        rename_annotations(m, "spec.template.metadata", &mut r);
    }
    doc
}

/// Convert every document; anything not Karpenter's old API passes through (annotations renamed).
pub fn migrate(docs: &[Value]) -> Migration {
    let mut m = Migration::default();
    // Node classes by name as converted, so pools' kubelet settings can be moved into them.
    let mut classes: BTreeMap<String, usize> = BTreeMap::new();
    let mut pending_kubelet: Vec<(String, String, Map<String, Value>)> = Vec::new();
    for doc in docs {
        let api = doc["apiVersion"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        match (api, kind) {
            ("karpenter.sh/v1alpha5", "Provisioner") => {
                let name = name_of(doc);
                let (pool, inline, kubelet, class) = provisioner(doc.clone(), &mut m.notes);
                m.objects.push(pool);
                if let Some(c) = inline {
                    classes.insert(class.clone(), m.objects.len());
                    m.objects.push(c);
                }
                if !kubelet.is_empty() {
                    pending_kubelet.push((name, class, kubelet));
                }
            }
            ("karpenter.sh/v1beta1", "NodePool") => {
                let name = name_of(doc);
                let (pool, kubelet, class) = nodepool_v1beta1(doc.clone(), &mut m.notes);
                m.objects.push(pool);
                if !kubelet.is_empty() {
                    pending_kubelet.push((name, class, kubelet));
                }
            }
            ("karpenter.k8s.aws/v1alpha1", "AWSNodeTemplate") => {
                let mut r = Report {
                    object: format!("AWSNodeTemplate {}", name_of(doc)),
                    notes: &mut m.notes,
                };
                let c = node_template(doc.clone(), &mut r);
                classes.insert(name_of(doc), m.objects.len());
                m.objects.push(c);
            }
            ("karpenter.k8s.aws/v1beta1", "EC2NodeClass") => {
                let mut r = Report {
                    object: format!("EC2NodeClass {}", name_of(doc)),
                    notes: &mut m.notes,
                };
                let c = nodeclass_v1beta1(doc.clone(), &mut r);
                classes.insert(name_of(doc), m.objects.len());
                m.objects.push(c);
            }
            _ => m.objects.push(other(doc.clone(), &mut m.notes)),
        }
    }
    // v1 keeps kubelet settings on the node class. A class whose pools disagree is split: each pool
    // with different settings gets its own copy, as Karpenter's upgrade guide says.
    for (pool, class, kubelet) in pending_kubelet {
        let object = format!("NodePool {pool}");
        let Some(&at) = classes.get(&class) else {
            m.notes.push(Note { object, field: "kubelet".into(), outcome: Outcome::NoEquivalent,
                message: format!("its node class {class} is not among the files converted: add these settings to its spec.kubelet by hand: {}", Value::Object(kubelet)) });
            continue;
        };
        let existing = m.objects[at]["spec"].get("kubelet").cloned();
        match existing {
            None => {
                m.objects[at]["spec"]["kubelet"] = Value::Object(kubelet);
            }
            Some(k) if k == Value::Object(kubelet.clone()) => {}
            Some(_) => {
                let split = format!("{class}-{pool}");
                let mut copy = m.objects[at].clone();
                copy["metadata"]["name"] = json!(split);
                copy["spec"]["kubelet"] = Value::Object(kubelet);
                m.objects.push(copy);
                if let Some(p) = m
                    .objects
                    .iter_mut()
                    .find(|o| o["kind"] == "NodePool" && name_of(o) == pool)
                {
                    p["spec"]["template"]["spec"]["nodeClassRef"]["name"] = json!(split);
                }
                m.notes.push(Note { object, field: "kubelet".into(), outcome: Outcome::Converted,
                    message: format!("differs from another pool's on EC2NodeClass {class}: written to a copy, EC2NodeClass {split}, which this pool now references") });
            }
        }
    }
    m
}

/// The documents of a YAML file (`---`-separated; a `kind: List` is its items).
pub fn read_documents(text: &str) -> Result<Vec<Value>, String> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for d in docs {
        if d.is_null() {
            continue;
        }
        if d["kind"] == "List" {
            out.extend(d["items"].as_array().cloned().unwrap_or_default());
        } else {
            out.push(d);
        }
    }
    Ok(out)
}

/// `migrate FILE...` as both binaries run it: the converted YAML of every file, in order, and the report
/// (a line per field, then a count). Err names the file that could not be read.
pub fn run(files: &[String]) -> Result<(String, String), String> {
    if files.is_empty() {
        return Err("usage: migrate FILE... (Karpenter v1alpha5 / v1beta1 manifests; the v1 YAML goes to stdout, the report to stderr)".into());
    }
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: cannot read: {e}"))?;
        docs.extend(read_documents(&text).map_err(|e| format!("{f}: {e}"))?);
    }
    let m = migrate(&docs);
    let yaml = m.to_yaml()?;
    let mut report: String = m.notes.iter().map(|n| format!("{n}\n")).collect();
    report.push_str(&format!(
        "{} fields converted, {} defaulted to keep behaviour, {} without a v1 equivalent\n",
        m.notes
            .iter()
            .filter(|n| n.outcome == Outcome::Converted)
            .count(),
        m.notes
            .iter()
            .filter(|n| n.outcome == Outcome::Defaulted)
            .count(),
        m.lost().count()
    ));
    Ok((yaml, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_maps_become_terms() {
        let sel = json!({"aws-ids": "subnet-1, subnet-2", "karpenter.sh/discovery": "prod"});
        let terms = selector_terms(sel.as_object().unwrap_or(&Map::new()), false);
        assert_eq!(
            terms,
            [
                json!({"id": "subnet-1"}),
                json!({"id": "subnet-2"}),
                json!({"tags": {"karpenter.sh/discovery": "prod"}})
            ]
        );
        let ami = json!({"aws::name": "my-ami-*", "aws::owners": "self,123456789012"});
        assert_eq!(
            selector_terms(ami.as_object().unwrap_or(&Map::new()), true),
            [
                json!({"name": "my-ami-*", "owner": "self"}),
                json!({"name": "my-ami-*", "owner": "123456789012"})
            ]
        );
    }
}
