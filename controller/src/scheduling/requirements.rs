//! Node requirements as sets: In, NotIn, Exists, DoesNotExist, Gt, Lt, Gte, Lte, their intersection, and
//! compatibility by Karpenter's rules (well-known labels vs custom labels, label aliases, minValues).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::crds::NodeSelectorRequirementWithMinValues;
use crate::crds::labels;

/// Labels Karpenter knows how to provide: a pod may require them even if a NodePool says nothing of them.
/// (`kubernetes.io/hostname` is not one: every node gets its own, so no new node can be made to match.)
pub const WELL_KNOWN: [&str; 20] = [
    labels::ZONE,
    labels::REGION,
    labels::INSTANCE_TYPE,
    labels::ARCH,
    labels::OS,
    labels::CAPACITY_TYPE,
    labels::NODEPOOL,
    labels::INSTANCE_CATEGORY,
    labels::INSTANCE_FAMILY,
    labels::INSTANCE_GENERATION,
    labels::INSTANCE_SIZE,
    labels::INSTANCE_CPU,
    labels::INSTANCE_MEMORY,
    labels::INSTANCE_HYPERVISOR,
    labels::INSTANCE_GPU_COUNT,
    labels::INSTANCE_GPU_NAME,
    "topology.k8s.aws/zone-id",
    labels::CAPACITY_RESERVATION_ID,
    labels::CAPACITY_RESERVATION_TYPE,
    labels::CAPACITY_RESERVATION_INTERRUPTIBLE,
];

/// Label domains whose labels only the cluster's own components set, and the sub-domains excepted from that.
const RESTRICTED_DOMAINS: [&str; 3] = ["kubernetes.io", "k8s.io", "karpenter.sh"];
const UNRESTRICTED_DOMAINS: [&str; 3] = [
    "node.kubernetes.io",
    "node-restriction.kubernetes.io",
    "kops.k8s.io",
];

/// Why a pod may not select a label for provisioning, as in Karpenter: `kubernetes.io/hostname`, and
/// labels of a restricted domain that are not well known (no new node would carry them).
pub fn restricted_label(key: &str) -> Option<String> {
    let key = normalize_key(key);
    if WELL_KNOWN.contains(&key) {
        return None;
    }
    let domain = key.split_once('/').map_or("", |(d, _)| d);
    let under = |d: &str| domain == d || domain.ends_with(&format!(".{d}"));
    let restricted = key == labels::HOSTNAME
        || (RESTRICTED_DOMAINS.iter().any(|d| under(d))
            && !UNRESTRICTED_DOMAINS.iter().any(|d| under(d)));
    restricted.then(|| {
        format!(
            "label `{key}` is restricted: no new node can be given it (select a well-known label, or a custom label outside {})",
            RESTRICTED_DOMAINS.join(", ")
        )
    })
}

/// Deprecated label names and the name they stand for.
pub fn normalize_key(key: &str) -> &str {
    match key {
        "failure-domain.beta.kubernetes.io/zone" => labels::ZONE,
        "failure-domain.beta.kubernetes.io/region" => labels::REGION,
        "beta.kubernetes.io/arch" => labels::ARCH,
        "beta.kubernetes.io/os" => labels::OS,
        "beta.kubernetes.io/instance-type" => labels::INSTANCE_TYPE,
        // The EBS CSI driver's zone key, on volumes' node affinity (Karpenter's AWS provider folds it too).
        "topology.ebs.csi.aws.com/zone" => labels::ZONE,
        other => other,
    }
}

/// The set of values a requirement admits: `In` lists them, `NotIn` lists the exceptions (so `NotIn {}` is
/// Exists); and whether a node without the label satisfies it (NotIn and DoesNotExist do; once intersected
/// with In, Exists, Gt or Lt it no longer does).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    pub key: String,
    complement: bool,
    values: BTreeSet<String>,
    absent_ok: bool,
    /// Exclusive integer bounds (Gt / Lt; Gte n is Gt n-1).
    greater_than: Option<i64>,
    less_than: Option<i64>,
    pub min_values: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("requirement on `{key}`: {message}")]
pub struct RequirementError {
    pub key: String,
    pub message: String,
}

impl Requirement {
    pub fn exists(key: &str) -> Self {
        Requirement {
            key: key.to_string(),
            complement: true,
            values: BTreeSet::new(),
            absent_ok: false,
            greater_than: None,
            less_than: None,
            min_values: None,
        }
    }

    pub fn in_values<I: IntoIterator<Item = S>, S: Into<String>>(key: &str, values: I) -> Self {
        Requirement {
            complement: false,
            values: values.into_iter().map(Into::into).collect(),
            ..Requirement::exists(key)
        }
    }

    /// Build from a Kubernetes / Karpenter node selector requirement, validating it as the API server would.
    pub fn parse(
        key: &str,
        operator: &str,
        values: &[String],
        min_values: Option<i64>,
    ) -> Result<Requirement, RequirementError> {
        let key = normalize_key(key);
        let err = |message: String| RequirementError {
            key: key.to_string(),
            message,
        };
        let bound = || -> Result<i64, RequirementError> {
            match values {
                [v] => v
                    .parse()
                    .map_err(|_| err(format!("{operator} needs an integer, got `{v}`"))),
                _ => Err(err(format!(
                    "{operator} takes exactly one value, got {}",
                    values.len()
                ))),
            }
        };
        let mut r = match operator {
            "In" | "NotIn" => {
                if values.is_empty() {
                    return Err(err(format!("{operator} needs at least one value")));
                }
                Requirement {
                    complement: operator == "NotIn",
                    values: values.iter().cloned().collect(),
                    absent_ok: operator == "NotIn",
                    ..Requirement::exists(key)
                }
            }
            "Exists" | "DoesNotExist" => {
                if !values.is_empty() {
                    return Err(err(format!("{operator} takes no values")));
                }
                Requirement {
                    complement: operator == "Exists",
                    absent_ok: operator == "DoesNotExist",
                    ..Requirement::exists(key)
                }
            }
            "Gt" => Requirement {
                greater_than: Some(bound()?),
                ..Requirement::exists(key)
            },
            "Gte" => Requirement {
                greater_than: Some(bound()?.saturating_sub(1)),
                ..Requirement::exists(key)
            },
            "Lt" => Requirement {
                less_than: Some(bound()?),
                ..Requirement::exists(key)
            },
            "Lte" => Requirement {
                less_than: Some(bound()?.saturating_add(1)),
                ..Requirement::exists(key)
            },
            other => {
                return Err(err(format!(
                    "unknown operator `{other}`; use In, NotIn, Exists, DoesNotExist, Gt, Gte, Lt or Lte"
                )));
            }
        };
        if let Some(m) = min_values {
            if !(1..=50).contains(&m) {
                return Err(err(format!("minValues must be between 1 and 50, got {m}")));
            }
            r.min_values = Some(m as usize);
        }
        Ok(r)
    }

    fn within_bounds(&self, value: &str) -> bool {
        if self.greater_than.is_none() && self.less_than.is_none() {
            return true;
        }
        let Ok(v) = value.parse::<i64>() else {
            return false;
        };
        self.greater_than.is_none_or(|g| v > g) && self.less_than.is_none_or(|l| v < l)
    }

    /// Whether a label value satisfies the requirement.
    pub fn has(&self, value: &str) -> bool {
        self.within_bounds(value) && (self.values.contains(value) != self.complement)
    }

    /// The values it admits when that is a finite list (`In`), else None.
    pub fn finite_values(&self) -> Option<&BTreeSet<String>> {
        (!self.complement).then_some(&self.values)
    }

    /// Whether an absent label satisfies it (NotIn and DoesNotExist do).
    pub fn allows_absent(&self) -> bool {
        self.absent_ok
    }

    /// The requirement admits no value of the label (DoesNotExist, or an empty intersection).
    pub fn does_not_exist(&self) -> bool {
        !self.complement && self.values.is_empty()
    }

    /// Whether a node's label (None: the node lacks it) satisfies the requirement.
    pub fn satisfied_by(&self, value: Option<&str>) -> bool {
        value.map_or(self.absent_ok, |v| self.has(v))
    }

    pub fn intersect(&self, other: &Requirement) -> Requirement {
        let greater_than = match (self.greater_than, other.greater_than) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        let less_than = match (self.less_than, other.less_than) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (complement, values) = match (self.complement, other.complement) {
            (false, false) => (
                false,
                self.values.intersection(&other.values).cloned().collect(),
            ),
            (false, true) => (
                false,
                self.values.difference(&other.values).cloned().collect(),
            ),
            (true, false) => (
                false,
                other.values.difference(&self.values).cloned().collect(),
            ),
            (true, true) => (true, self.values.union(&other.values).cloned().collect()),
        };
        let mut r = Requirement {
            key: self.key.clone(),
            complement,
            values,
            absent_ok: self.absent_ok && other.absent_ok,
            greater_than,
            less_than,
            min_values: self.min_values.max(other.min_values),
        };
        if !r.complement {
            let kept: BTreeSet<String> = r
                .values
                .iter()
                .filter(|v| r.within_bounds(v))
                .cloned()
                .collect();
            r.values = kept;
        }
        r
    }

    /// Whether some label value, or the label's absence, satisfies both (so NotIn and DoesNotExist on a key
    /// are compatible, as in Karpenter).
    pub fn intersects(&self, other: &Requirement) -> bool {
        if self.absent_ok && other.absent_ok {
            return true;
        }
        let i = self.intersect(other);
        if i.complement {
            // An open set is empty only if the bounds leave no integer.
            return match (i.greater_than, i.less_than) {
                (Some(g), Some(l)) => l - g > 1,
                _ => true,
            };
        }
        !i.values.is_empty()
    }

    /// Back to the CRD form (bounds as Gt / Lt).
    pub fn to_node_selector(&self) -> Vec<NodeSelectorRequirementWithMinValues> {
        let mk = |op: &str, values: Vec<String>| NodeSelectorRequirementWithMinValues {
            key: self.key.clone(),
            operator: op.to_string(),
            values,
            min_values: self.min_values.map(|m| m as i64),
        };
        let mut out = Vec::new();
        if !self.complement {
            match (self.values.is_empty(), self.absent_ok) {
                (false, _) => out.push(mk("In", self.values.iter().cloned().collect())),
                (true, true) => out.push(mk("DoesNotExist", vec![])),
                // Nothing satisfies it: `In` needs a value, so say it as two requirements that clash.
                (true, false) => {
                    out.push(mk("Exists", vec![]));
                    out.push(mk("DoesNotExist", vec![]));
                }
            }
            return out;
        }
        let bounded = self.greater_than.is_some() || self.less_than.is_some();
        // NotIn alone admits a node without the label; Exists says it must have one.
        if !self.absent_ok && !bounded {
            out.push(mk("Exists", vec![]));
        }
        if !self.values.is_empty() {
            out.push(mk("NotIn", self.values.iter().cloned().collect()));
        }
        if let Some(g) = self.greater_than {
            out.push(mk("Gt", vec![g.to_string()]));
        }
        if let Some(l) = self.less_than {
            out.push(mk("Lt", vec![l.to_string()]));
        }
        out
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let vals: Vec<&str> = self.values.iter().map(String::as_str).collect();
        match (self.complement, vals.is_empty()) {
            (false, true) if self.absent_ok => write!(f, "{} DoesNotExist", self.key)?,
            (false, true) => write!(f, "{} In []", self.key)?,
            (false, false) => write!(f, "{} In [{}]", self.key, vals.join(","))?,
            (true, true) => write!(f, "{} Exists", self.key)?,
            (true, false) if self.absent_ok => {
                write!(f, "{} NotIn [{}]", self.key, vals.join(","))?
            }
            (true, false) => write!(f, "{} Exists NotIn [{}]", self.key, vals.join(","))?,
        }
        if let Some(g) = self.greater_than {
            write!(f, " >{g}")?;
        }
        if let Some(l) = self.less_than {
            write!(f, " <{l}")?;
        }
        Ok(())
    }
}

/// Requirements by key; adding a requirement on a key already present intersects them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Requirements(pub BTreeMap<String, Requirement>);

impl Requirements {
    pub fn from_node_selector(
        reqs: &[NodeSelectorRequirementWithMinValues],
    ) -> Result<Requirements, RequirementError> {
        let mut out = Requirements::default();
        for r in reqs {
            out.add(Requirement::parse(
                &r.key,
                &r.operator,
                &r.values,
                r.min_values,
            )?);
        }
        Ok(out)
    }

    /// `key: value` pairs as `In` requirements (a nodeSelector, or a template's labels).
    pub fn from_labels(labels: &BTreeMap<String, String>) -> Requirements {
        let mut out = Requirements::default();
        for (k, v) in labels {
            out.add(Requirement::in_values(normalize_key(k), [v.clone()]));
        }
        out
    }

    pub fn add(&mut self, r: Requirement) {
        let merged = match self.0.get(&r.key) {
            Some(existing) => existing.intersect(&r),
            None => r,
        };
        self.0.insert(merged.key.clone(), merged);
    }

    pub fn merged(&self, other: &Requirements) -> Requirements {
        let mut out = self.clone();
        for r in other.0.values() {
            out.add(r.clone());
        }
        out
    }

    pub fn get(&self, key: &str) -> Option<&Requirement> {
        self.0.get(key)
    }

    /// Can a node satisfying `self` (the NodePool side) also satisfy `pod`? Karpenter's rule: keys both
    /// define must intersect; a key only the pod names is fine if it is well known (Karpenter will fill it in)
    /// or the pod only excludes values; a custom label the NodePool never defines cannot be required.
    pub fn compatible(&self, pod: &Requirements) -> Result<(), String> {
        for (key, want) in &pod.0 {
            match self.0.get(key) {
                Some(have) => {
                    if !have.intersects(want) {
                        return Err(format!(
                            "requirement {want} conflicts with the NodePool's {have}"
                        ));
                    }
                }
                None if WELL_KNOWN.contains(&key.as_str()) || want.allows_absent() => {}
                None => {
                    return Err(format!(
                        "label `{key}` is required but the NodePool does not define it"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether a concrete label set satisfies every requirement (absent labels only where allowed).
    pub fn matches_labels(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.values().all(|r| match labels.get(&r.key) {
            Some(v) => r.has(v),
            None => r.allows_absent(),
        })
    }

    pub fn to_node_selector(&self) -> Vec<NodeSelectorRequirementWithMinValues> {
        self.0
            .values()
            .flat_map(Requirement::to_node_selector)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(key: &str, op: &str, values: &[&str]) -> Requirement {
        Requirement::parse(
            key,
            op,
            &values.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
            None,
        )
        .unwrap()
    }

    #[test]
    fn operators_admit_what_kubernetes_admits() {
        assert!(p("k", "In", &["a", "b"]).has("a"));
        assert!(!p("k", "NotIn", &["a"]).has("a"));
        assert!(p("k", "NotIn", &["a"]).has("z"));
        assert!(p("k", "Exists", &[]).has("anything"));
        assert!(!p("k", "DoesNotExist", &[]).has("x"));
        assert!(p("k", "DoesNotExist", &[]).allows_absent());
        assert!(p("k", "Gt", &["4"]).has("5") && !p("k", "Gt", &["4"]).has("4"));
        assert!(p("k", "Gte", &["4"]).has("4"));
        assert!(p("k", "Lte", &["4"]).has("4") && !p("k", "Lt", &["4"]).has("4"));
        assert!(!p("k", "Gt", &["4"]).has("many"));
    }

    #[test]
    fn bad_requirements_are_named() {
        let e = |op: &str, v: &[&str]| {
            Requirement::parse(
                "k",
                op,
                &v.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                None,
            )
            .unwrap_err()
        };
        assert!(e("Gt", &["x"]).message.contains("integer"));
        assert!(e("Gt", &["1", "2"]).message.contains("exactly one"));
        assert!(e("In", &[]).message.contains("at least one"));
        assert!(e("Exists", &["a"]).message.contains("no values"));
        assert!(e("Near", &["a"]).message.contains("unknown operator"));
        assert_eq!(e("Near", &["a"]).key, "k");
        assert!(Requirement::parse("k", "In", &["a".into()], Some(0)).is_err());
    }

    #[test]
    fn aliases_are_folded() {
        assert_eq!(
            p("failure-domain.beta.kubernetes.io/zone", "In", &["a"]).key,
            labels::ZONE
        );
    }

    #[test]
    fn compatibility_follows_karpenters_rules() {
        let pool = Requirements::from_node_selector(&[
            NodeSelectorRequirementWithMinValues {
                key: labels::CAPACITY_TYPE.into(),
                operator: "In".into(),
                values: vec!["spot".into()],
                min_values: None,
            },
            NodeSelectorRequirementWithMinValues {
                key: "team".into(),
                operator: "In".into(),
                values: vec!["a".into()],
                min_values: None,
            },
        ])
        .unwrap();
        let pod = |k: &str, op: &str, v: &[&str]| {
            let mut r = Requirements::default();
            r.add(p(k, op, v));
            r
        };
        assert!(
            pool.compatible(&pod(labels::CAPACITY_TYPE, "In", &["spot", "on-demand"]))
                .is_ok()
        );
        assert!(
            pool.compatible(&pod(labels::CAPACITY_TYPE, "In", &["on-demand"]))
                .is_err()
        );
        assert!(
            pool.compatible(&pod(labels::ZONE, "In", &["us-east-1a"]))
                .is_ok(),
            "well-known, undefined by the pool"
        );
        assert!(
            pool.compatible(&pod("gpu", "In", &["true"])).is_err(),
            "custom and undefined"
        );
        assert!(pool.compatible(&pod("gpu", "DoesNotExist", &[])).is_ok());
        assert!(pool.compatible(&pod("team", "NotIn", &["a"])).is_err());
    }

    #[test]
    fn crd_round_trip() {
        let mut r = Requirements::default();
        r.add(p(labels::INSTANCE_CPU, "Gt", &["3"]));
        r.add(p(labels::INSTANCE_CPU, "Lt", &["17"]));
        r.add(p(labels::ARCH, "In", &["amd64"]));
        let back = Requirements::from_node_selector(&r.to_node_selector()).unwrap();
        assert_eq!(back, r);
    }

    fn arb_req() -> impl Strategy<Value = Requirement> {
        let values = proptest::collection::vec(
            prop_oneof![Just("1"), Just("2"), Just("4"), Just("8"), Just("a")],
            1..4,
        );
        (
            prop_oneof![
                Just("In"),
                Just("NotIn"),
                Just("Exists"),
                Just("DoesNotExist"),
                Just("Gt"),
                Just("Lt")
            ],
            values,
        )
            .prop_map(|(op, vals)| {
                let vals: Vec<String> = match op {
                    "Exists" | "DoesNotExist" => vec![],
                    "Gt" | "Lt" => vec![if vals[0] == "a" {
                        "3".to_string()
                    } else {
                        vals[0].to_string()
                    }],
                    _ => vals.iter().map(|s| s.to_string()).collect(),
                };
                Requirement::parse("k", op, &vals, None).unwrap()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        /// A value is admitted by the intersection exactly when both admit it.
        #[test]
        fn intersection_is_conjunction(a in arb_req(), b in arb_req(), v in prop_oneof![Just("1"), Just("2"), Just("3"), Just("4"), Just("8"), Just("16"), Just("a")]) {
            prop_assert_eq!(a.intersect(&b).has(v), a.has(v) && b.has(v));
        }

        /// If both admit some value, they intersect.
        #[test]
        fn shared_values_mean_intersecting(a in arb_req(), b in arb_req()) {
            let witness = ["1", "2", "3", "4", "8", "16", "a"].iter().any(|v| a.has(v) && b.has(v));
            if witness {
                prop_assert!(a.intersects(&b));
            }
        }
    }

    // ---- a brute-force model: what a node's label (or its absence) satisfies, straight from the operator ----

    /// (operator, values) as written.
    type Written = (&'static str, Vec<&'static str>);

    /// Kubernetes' meaning of one written requirement for a node whose label is `v` (None: no label).
    fn model(w: &Written, v: Option<&str>) -> bool {
        let (op, vals) = w;
        let num = |s: &str| s.parse::<i64>().ok();
        match (*op, v) {
            ("In", Some(v)) => vals.contains(&v),
            ("NotIn", Some(v)) => !vals.contains(&v),
            ("NotIn", None) | ("DoesNotExist", None) => true,
            ("Exists", Some(_)) => true,
            ("Gt", Some(v)) => matches!((num(v), num(vals[0])), (Some(a), Some(b)) if a > b),
            ("Lt", Some(v)) => matches!((num(v), num(vals[0])), (Some(a), Some(b)) if a < b),
            _ => false,
        }
    }

    /// Every label a node could carry that matters here, and no label at all.
    fn universe() -> Vec<Option<String>> {
        let mut u: Vec<Option<String>> = (0..=10).map(|i| Some(i.to_string())).collect();
        u.extend(["a", "b", "c"].map(|s| Some(s.to_string())));
        u.push(None);
        u
    }

    fn arb_written() -> impl Strategy<Value = Written> {
        let vals = proptest::collection::vec(
            prop_oneof![
                Just("1"),
                Just("2"),
                Just("4"),
                Just("8"),
                Just("a"),
                Just("b")
            ],
            1..3,
        );
        let bound = prop_oneof![Just("1"), Just("2"), Just("4"), Just("8")];
        prop_oneof![
            vals.clone().prop_map(|v| ("In", v)),
            vals.prop_map(|v| ("NotIn", v)),
            Just(("Exists", vec![])),
            Just(("DoesNotExist", vec![])),
            bound.clone().prop_map(|b| ("Gt", vec![b])),
            bound.prop_map(|b| ("Lt", vec![b])),
        ]
    }

    fn parsed(w: &Written) -> Requirement {
        let vals: Vec<String> = w.1.iter().map(|s| s.to_string()).collect();
        Requirement::parse("k", w.0, &vals, None).unwrap()
    }

    fn together(ws: &[Written]) -> Requirements {
        let mut r = Requirements::default();
        for w in ws {
            r.add(parsed(w));
        }
        r
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Requirements on one key combine to exactly the labels (and absence) that satisfy all of them.
        #[test]
        fn combining_matches_the_model(ws in proptest::collection::vec(arb_written(), 1..4)) {
            let combined = together(&ws);
            let r = combined.get("k").unwrap();
            for v in universe() {
                prop_assert_eq!(
                    r.satisfied_by(v.as_deref()),
                    ws.iter().all(|w| model(w, v.as_deref())),
                    "{} for {:?}", r, v
                );
            }
        }

        /// Two sets intersect exactly when some label, or no label, satisfies both.
        #[test]
        fn intersecting_matches_the_model(a in proptest::collection::vec(arb_written(), 1..3), b in proptest::collection::vec(arb_written(), 1..3)) {
            let (ra, rb) = (together(&a), together(&b));
            let model_says = universe().iter().any(|v| {
                a.iter().chain(&b).all(|w| model(w, v.as_deref()))
            });
            prop_assert_eq!(ra.get("k").unwrap().intersects(rb.get("k").unwrap()), model_says);
        }

        /// A pool and a pod are compatible on a custom label exactly when some node of the pool (which has the
        /// label only if the pool defines it) satisfies the pod.
        #[test]
        fn compatibility_matches_the_model(pool in proptest::collection::vec(arb_written(), 0..3), pod in proptest::collection::vec(arb_written(), 1..3)) {
            let model_says = universe().iter().any(|v| {
                let pool_ok = if pool.is_empty() { v.is_none() } else { pool.iter().all(|w| model(w, v.as_deref())) };
                pool_ok && pod.iter().all(|w| model(w, v.as_deref()))
            });
            prop_assert_eq!(together(&pool).compatible(&together(&pod)).is_ok(), model_says);
        }

        /// Written back to the CRD form and read again, a combination means the same.
        #[test]
        fn the_crd_form_keeps_the_meaning(ws in proptest::collection::vec(arb_written(), 1..4)) {
            let combined = together(&ws);
            let back = Requirements::from_node_selector(&combined.to_node_selector()).unwrap();
            for v in universe() {
                prop_assert_eq!(
                    back.get("k").is_none_or(|r| r.satisfied_by(v.as_deref())),
                    combined.get("k").unwrap().satisfied_by(v.as_deref())
                );
            }
        }
    }

    #[test]
    fn not_in_and_does_not_exist_are_compatible() {
        let pool = together(&[("NotIn", vec!["a"])]);
        assert!(
            pool.compatible(&together(&[("DoesNotExist", vec![])]))
                .is_ok()
        );
        let pool = together(&[("DoesNotExist", vec![])]);
        assert!(pool.compatible(&together(&[("NotIn", vec!["a"])])).is_ok());
        // Exists then NotIn needs the label: a node without it does not do.
        let must = together(&[("Exists", vec![]), ("NotIn", vec!["a"])]);
        assert!(!must.get("k").unwrap().allows_absent());
        assert!(
            must.compatible(&together(&[("DoesNotExist", vec![])]))
                .is_err()
        );
    }
}
