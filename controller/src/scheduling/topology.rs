//! Pod topology terms — topology spread, pod affinity and anti-affinity, host ports — read from pods into
//! plain data the planner counts domains for.
//!
//! Kubernetes' semantics: a spread constraint or (anti-)affinity term only constrains the pod that carries
//! it, except required anti-affinity, which also keeps matching pods out of the carrier's domain. Preferred
//! terms and `ScheduleAnyway` spreads are treated as required until the planner relaxes them, as Karpenter
//! does.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector as K8sSelector;

use crate::crds::labels;
use crate::scheduling::requirements::normalize_key;

/// One `matchExpressions` entry (`matchLabels` become `In` with one value).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SelectorExpr {
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A label selector over pods. `None` in the API (no selector) selects nothing; an empty one selects all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LabelSelector {
    pub exprs: Vec<SelectorExpr>,
    pub selects_nothing: bool,
}

impl LabelSelector {
    /// `key=value` for each pair.
    pub fn from_labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        LabelSelector {
            exprs: pairs
                .into_iter()
                .map(|(k, v)| SelectorExpr::In(k.to_string(), [v.to_string()].into()))
                .collect(),
            selects_nothing: false,
        }
    }

    pub fn parse(sel: Option<&K8sSelector>, field: &str) -> Result<Self, String> {
        let Some(sel) = sel else {
            return Ok(LabelSelector {
                exprs: Vec::new(),
                selects_nothing: true,
            });
        };
        let mut exprs: Vec<SelectorExpr> = sel
            .match_labels
            .iter()
            .flatten()
            .map(|(k, v)| SelectorExpr::In(k.clone(), [v.clone()].into()))
            .collect();
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let bad = |msg: &str| format!("{field}.matchExpressions[{i}]: {msg}");
            exprs.push(match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(bad(&format!("operator {} needs values", e.operator)));
                }
                "In" => SelectorExpr::In(e.key.clone(), values),
                "NotIn" => SelectorExpr::NotIn(e.key.clone(), values),
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(bad(&format!("operator {} takes no values", e.operator)));
                }
                "Exists" => SelectorExpr::Exists(e.key.clone()),
                "DoesNotExist" => SelectorExpr::DoesNotExist(e.key.clone()),
                other => {
                    return Err(bad(&format!(
                        "unknown operator `{other}` (expected In, NotIn, Exists or DoesNotExist)"
                    )));
                }
            });
        }
        Ok(LabelSelector {
            exprs,
            selects_nothing: false,
        })
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        !self.selects_nothing
            && self.exprs.iter().all(|e| match e {
                SelectorExpr::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                SelectorExpr::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                SelectorExpr::Exists(k) => labels.contains_key(k),
                SelectorExpr::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

/// Which namespaces a term counts pods in.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Namespaces {
    All,
    Listed(BTreeSet<String>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TermKind {
    /// Topology spread: `max_skew`, `min_domains` (1 when unset), and whether the pod's node affinity
    /// limits the domains counted (`nodeAffinityPolicy: Honor`, the default).
    Spread {
        max_skew: u32,
        min_domains: u32,
        honor_node_affinity: bool,
    },
    Affinity,
    AntiAffinity,
}

/// A counted group: pods matching `selector` in `namespaces`, per domain of `key`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopologyTerm {
    pub kind: TermKind,
    pub key: String,
    pub namespaces: Namespaces,
    pub selector: LabelSelector,
}

impl TopologyTerm {
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        let ns_ok = match &self.namespaces {
            Namespaces::All => true,
            Namespaces::Listed(l) => l.contains(namespace),
        };
        ns_ok && self.selector.matches(labels)
    }

    pub fn is_hostname(&self) -> bool {
        self.key == labels::HOSTNAME
    }
}

impl std::fmt::Display for TopologyTerm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kind {
            TermKind::Spread { max_skew, .. } => {
                write!(f, "topology spread on {} (maxSkew {max_skew})", self.key)
            }
            TermKind::Affinity => write!(f, "pod affinity on {}", self.key),
            TermKind::AntiAffinity => write!(f, "pod anti-affinity on {}", self.key),
        }
    }
}

/// How firmly a pod holds a term; the planner relaxes the soft ones in this order (Karpenter's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Strength {
    Required,
    PreferredAffinity,
    PreferredAntiAffinity,
    ScheduleAnyway,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodTerm {
    pub term: TopologyTerm,
    pub strength: Strength,
}

/// A host port a pod binds; two pods conflict on a node when protocol and port match and the addresses
/// overlap (an empty or 0.0.0.0 address is every address).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostPort {
    pub protocol: String,
    pub port: i32,
    pub ip: String,
}

impl HostPort {
    pub fn conflicts(&self, other: &HostPort) -> bool {
        let wild = |ip: &str| ip.is_empty() || ip == "0.0.0.0";
        self.protocol == other.protocol
            && self.port == other.port
            && (wild(&self.ip) || wild(&other.ip) || self.ip == other.ip)
    }
}

/// The host ports a pod's containers (and init containers, which hold them while they run) bind.
pub fn host_ports(pod: &Pod) -> Vec<HostPort> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<HostPort> = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| {
            p.host_port.filter(|h| *h > 0).map(|port| HostPort {
                protocol: p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                port,
                ip: p.host_ip.clone().unwrap_or_default(),
            })
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// matchLabelKeys: the pod's own values for these keys join the selector (e.g. pod-template-hash, so a
/// rollout's new pods are counted among themselves).
fn add_label_keys(
    selector: &mut LabelSelector,
    keys: Option<&[String]>,
    pod_labels: &BTreeMap<String, String>,
) {
    for key in keys.unwrap_or_default() {
        if let Some(v) = pod_labels.get(key) {
            selector
                .exprs
                .push(SelectorExpr::In(key.clone(), [v.clone()].into()));
        }
    }
}

fn affinity_term(
    t: &PodAffinityTerm,
    kind: TermKind,
    pod_namespace: &str,
    pod_labels: &BTreeMap<String, String>,
    field: &str,
) -> Result<TopologyTerm, String> {
    if t.topology_key.is_empty() {
        return Err(format!("{field}.topologyKey: must not be empty"));
    }
    let mut selector =
        LabelSelector::parse(t.label_selector.as_ref(), &format!("{field}.labelSelector"))?;
    add_label_keys(&mut selector, t.match_label_keys.as_deref(), pod_labels);
    let listed: BTreeSet<String> = t.namespaces.iter().flatten().cloned().collect();
    // A namespaceSelector needs namespace labels the planner does not see; `{}` means every namespace, and
    // any other selector is counted over every namespace too (more pods counted, never a broken constraint).
    let namespaces = match (&t.namespace_selector, listed.is_empty()) {
        (Some(_), _) => Namespaces::All,
        (None, true) => Namespaces::Listed([pod_namespace.to_string()].into()),
        (None, false) => Namespaces::Listed(listed),
    };
    Ok(TopologyTerm {
        kind,
        key: normalize_key(&t.topology_key).to_string(),
        namespaces,
        selector,
    })
}

/// Every topology term a pod carries, with field paths in errors (`spec.topologySpreadConstraints[1].maxSkew:
/// must be at least 1`).
pub fn pod_terms(pod: &Pod) -> Result<Vec<PodTerm>, String> {
    let Some(spec) = pod.spec.as_ref() else {
        return Ok(Vec::new());
    };
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let pod_labels = pod.metadata.labels.clone().unwrap_or_default();
    let mut out = Vec::new();
    for (i, c) in spec
        .topology_spread_constraints
        .iter()
        .flatten()
        .enumerate()
    {
        let field = format!("spec.topologySpreadConstraints[{i}]");
        if c.max_skew < 1 {
            return Err(format!(
                "{field}.maxSkew: must be at least 1, got {}",
                c.max_skew
            ));
        }
        let strength = match c.when_unsatisfiable.as_str() {
            "DoNotSchedule" => Strength::Required,
            "ScheduleAnyway" => Strength::ScheduleAnyway,
            other => {
                return Err(format!(
                    "{field}.whenUnsatisfiable: `{other}` is neither DoNotSchedule nor ScheduleAnyway"
                ));
            }
        };
        let min_domains = match c.min_domains {
            None => 1,
            Some(m) if m >= 1 && strength == Strength::Required => m as u32,
            Some(m) if m >= 1 => {
                return Err(format!(
                    "{field}.minDomains: only allowed with whenUnsatisfiable DoNotSchedule (got {m})"
                ));
            }
            Some(m) => return Err(format!("{field}.minDomains: must be at least 1, got {m}")),
        };
        let honor_node_affinity = match c.node_affinity_policy.as_deref() {
            None | Some("Honor") => true,
            Some("Ignore") => false,
            Some(other) => {
                return Err(format!(
                    "{field}.nodeAffinityPolicy: `{other}` is neither Honor nor Ignore"
                ));
            }
        };
        let mut selector =
            LabelSelector::parse(c.label_selector.as_ref(), &format!("{field}.labelSelector"))?;
        add_label_keys(&mut selector, c.match_label_keys.as_deref(), &pod_labels);
        out.push(PodTerm {
            term: TopologyTerm {
                kind: TermKind::Spread {
                    max_skew: c.max_skew as u32,
                    min_domains,
                    honor_node_affinity,
                },
                key: normalize_key(&c.topology_key).to_string(),
                namespaces: Namespaces::Listed([ns.to_string()].into()),
                selector,
            },
            strength,
        });
    }
    let affinity = spec.affinity.as_ref();
    let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
    let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
    let groups = [
        (
            pa.and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            TermKind::Affinity,
            Strength::Required,
            "spec.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution",
        ),
        (
            paa.and_then(|p| {
                p.required_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            TermKind::AntiAffinity,
            Strength::Required,
            "spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution",
        ),
    ];
    for (terms, kind, strength, path) in groups {
        for (i, t) in terms.iter().flat_map(|v| v.iter()).enumerate() {
            out.push(PodTerm {
                term: affinity_term(t, kind, ns, &pod_labels, &format!("{path}[{i}]"))?,
                strength,
            });
        }
    }
    let preferred = [
        (
            pa.and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            TermKind::Affinity,
            Strength::PreferredAffinity,
            "spec.affinity.podAffinity.preferredDuringSchedulingIgnoredDuringExecution",
        ),
        (
            paa.and_then(|p| {
                p.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            }),
            TermKind::AntiAffinity,
            Strength::PreferredAntiAffinity,
            "spec.affinity.podAntiAffinity.preferredDuringSchedulingIgnoredDuringExecution",
        ),
    ];
    for (terms, kind, strength, path) in preferred {
        // Heaviest preference first: it is the last to be given up.
        let mut weighted: Vec<(i32, TopologyTerm)> = Vec::new();
        for (i, t) in terms.iter().flat_map(|v| v.iter()).enumerate() {
            let field = format!("{path}[{i}].podAffinityTerm");
            weighted.push((
                t.weight,
                affinity_term(&t.pod_affinity_term, kind, ns, &pod_labels, &field)?,
            ));
        }
        weighted.sort_by_key(|w| std::cmp::Reverse(w.0));
        out.extend(
            weighted
                .into_iter()
                .map(|(_, term)| PodTerm { term, strength }),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        Affinity, Container, ContainerPort, PodAntiAffinity, PodSpec, TopologySpreadConstraint,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};

    fn pod_with(spec: PodSpec) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("web".into()),
                labels: Some(
                    [
                        ("app".to_string(), "web".to_string()),
                        ("hash".into(), "abc".into()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(spec),
            status: None,
        }
    }

    fn sel(app: &str) -> Option<K8sSelector> {
        Some(K8sSelector {
            match_labels: Some([("app".to_string(), app.to_string())].into()),
            match_expressions: None,
        })
    }

    #[test]
    fn selectors_follow_kubernetes() {
        let l: BTreeMap<String, String> = [("app".to_string(), "web".to_string())].into();
        assert!(
            !LabelSelector::parse(None, "f").unwrap().matches(&l),
            "no selector selects nothing"
        );
        assert!(
            LabelSelector::parse(Some(&K8sSelector::default()), "f")
                .unwrap()
                .matches(&l)
        );
        let s = K8sSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        assert!(LabelSelector::parse(Some(&s), "f").unwrap().matches(&l));
        let bad = K8sSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "tier".into(),
                operator: "Near".into(),
                values: None,
            }]),
        };
        let err = LabelSelector::parse(Some(&bad), "spec.x.labelSelector").unwrap_err();
        assert!(
            err.contains("spec.x.labelSelector.matchExpressions[0]") && err.contains("Near"),
            "{err}"
        );
    }

    #[test]
    fn spread_and_affinity_terms_are_read_with_their_defaults() {
        let p = pod_with(PodSpec {
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 2,
                topology_key: "failure-domain.beta.kubernetes.io/zone".into(),
                when_unsatisfiable: "ScheduleAnyway".into(),
                label_selector: sel("web"),
                match_label_keys: Some(vec!["hash".into()]),
                ..Default::default()
            }]),
            affinity: Some(Affinity {
                pod_anti_affinity: Some(PodAntiAffinity {
                    required_during_scheduling_ignored_during_execution: Some(vec![
                        PodAffinityTerm {
                            topology_key: labels::HOSTNAME.into(),
                            label_selector: sel("web"),
                            ..Default::default()
                        },
                    ]),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        });
        let terms = pod_terms(&p).unwrap();
        assert_eq!(terms.len(), 2);
        assert_eq!(terms[0].strength, Strength::ScheduleAnyway);
        assert_eq!(terms[0].term.key, labels::ZONE, "alias folded");
        assert!(
            terms[0]
                .term
                .selector
                .exprs
                .contains(&SelectorExpr::In("hash".into(), ["abc".to_string()].into()))
        );
        assert_eq!(terms[1].term.kind, TermKind::AntiAffinity);
        assert_eq!(
            terms[1].term.namespaces,
            Namespaces::Listed(["web".to_string()].into())
        );
    }

    #[test]
    fn bad_terms_name_the_field() {
        let p = pod_with(PodSpec {
            topology_spread_constraints: Some(vec![TopologySpreadConstraint {
                max_skew: 0,
                topology_key: labels::ZONE.into(),
                when_unsatisfiable: "DoNotSchedule".into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let err = pod_terms(&p).unwrap_err();
        assert!(
            err.starts_with("spec.topologySpreadConstraints[0].maxSkew"),
            "{err}"
        );
    }

    #[test]
    fn host_ports_conflict_on_overlapping_addresses() {
        let p = pod_with(PodSpec {
            containers: vec![Container {
                name: "c".into(),
                ports: Some(vec![ContainerPort {
                    container_port: 80,
                    host_port: Some(8080),
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        });
        let ports = host_ports(&p);
        assert_eq!(ports.len(), 1);
        let other = HostPort {
            protocol: "TCP".into(),
            port: 8080,
            ip: "10.0.0.1".into(),
        };
        assert!(ports[0].conflicts(&other));
        assert!(!ports[0].conflicts(&HostPort {
            protocol: "UDP".into(),
            ..other.clone()
        }));
        let a = HostPort {
            ip: "10.0.0.2".into(),
            ..other.clone()
        };
        assert!(!a.conflicts(&other));
    }
}
