//! `expect:` — what a scenario asserts about its run, checked at the end; each failure names itself, the
//! expected and the seen value.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::duration::human;

/// A label selector as `kubectl -l` writes it: `app=web,tier!=db,canary,!legacy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    pub text: String,
    terms: Vec<(String, Term)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Equals(String),
    NotEquals(String),
    Exists,
    Absent,
}

impl Selector {
    pub fn parse(text: &str) -> Result<Selector, String> {
        let mut terms = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let term = if let Some((k, v)) = part.split_once("!=") {
                (k.trim().to_string(), Term::NotEquals(v.trim().to_string()))
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                (k.trim().to_string(), Term::Equals(v.trim().to_string()))
            } else if let Some(k) = part.strip_prefix('!') {
                (k.trim().to_string(), Term::Absent)
            } else {
                (part.to_string(), Term::Exists)
            };
            let value_bad = match &term.1 {
                Term::Equals(v) | Term::NotEquals(v) => v.contains(char::is_whitespace),
                _ => false,
            };
            if term.0.is_empty() || term.0.contains(char::is_whitespace) || value_bad {
                return Err(format!(
                    "`{text}` is not a label selector such as `app=web,tier!=db`"
                ));
            }
            terms.push(term);
        }
        Ok(Selector {
            text: text.to_string(),
            terms,
        })
    }

    pub fn matches(&self, labels: &Value) -> bool {
        self.terms.iter().all(|(k, t)| {
            let v = labels.get(k).and_then(Value::as_str);
            match t {
                Term::Equals(x) => v == Some(x.as_str()),
                Term::NotEquals(x) => v != Some(x.as_str()),
                Term::Exists => v.is_some(),
                Term::Absent => v.is_none(),
            }
        })
    }
}

/// Patterns (`*` wildcards) a launched value must match (`allowed`, when given) and must not
/// (`forbidden`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowDeny {
    pub allowed: Vec<String>,
    pub forbidden: Vec<String>,
}

impl AllowDeny {
    fn refuses(&self, value: &str) -> bool {
        let glob = dovetail::aws::cloud::glob;
        (!self.allowed.is_empty() && !self.allowed.iter().any(|p| glob(p, value)))
            || self.forbidden.iter().any(|p| glob(p, value))
    }
}

/// Pods matching a selector at the end run only on nodes of this pool / these types / these zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub selector: Selector,
    pub nodepool: Option<String>,
    pub instance_types: Vec<String>,
    pub zones: Vec<String>,
}

/// Pods pending at the end that match the selector are each explained by a FailedScheduling Event whose
/// message matches `reason` (a regular expression).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explained {
    pub selector: Option<Selector>,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Expectations {
    pub pods_pending_max: Option<Duration>,
    /// The 99th percentile wait from creation to binding, at most `.0`, of the pods matching `.1` (all
    /// when None).
    pub pods_pending_p99: Option<(Duration, Option<Selector>)>,
    pub cost_per_hour_max: Option<f64>,
    pub cost_total_max: Option<f64>,
    /// Total cost over the fluid lower bound's total.
    pub cost_over_bound_max: Option<f64>,
    pub nodes_max: Option<u32>,
    /// Nodes at the end, `low..high` inclusive.
    pub nodes_at_end: Option<(u32, u32)>,
    pub launches_max: Option<u32>,
    pub evictions_max: Option<u32>,
    /// Pods unbound at the end, at most `.0`, of those matching `.1` (all when None).
    pub pods_pending_at_end: Option<(u32, Option<Selector>)>,
    pub pods_explained: Vec<Explained>,
    pub instance_types: Option<AllowDeny>,
    pub instance_families: Option<AllowDeny>,
    pub capacity_types: Option<AllowDeny>,
    pub zones: Option<AllowDeny>,
    pub placement: Vec<Placement>,
    /// NodeClaims disrupted by reason (`empty`, `underutilized`, `drifted`, `expired`, `interruption`,
    /// `unhealthy`):
    /// (min, max).
    pub disruptions: BTreeMap<String, (Option<u32>, Option<u32>)>,
    /// Pod-minutes of pods that should run and did not (pending or starting), summed over the run.
    pub unavailable_pod_minutes_max: Option<f64>,
    /// Regular expressions some trace line must match / no trace line may match.
    pub trace_contains: Vec<String>,
    pub trace_lacks: Vec<String>,
}

/// The disruption reasons `karpenter_nodeclaims_disrupted_total` counts.
pub const DISRUPTION_REASONS: [&str; 6] = [
    "empty",
    "underutilized",
    "drifted",
    "expired",
    "interruption",
    "unhealthy",
];

/// What the checks read at the end of a run.
pub struct Ended<'a> {
    pub trace: &'a str,
    pub observations: &'a crate::report::Observations,
    pub metrics: &'a dovetail::metrics::Metrics,
}

/// A checked expectation: what was asked and what was seen, and whether it held.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub what: String,
    pub ok: bool,
}

fn verdict(ok: bool, what: String) -> Verdict {
    Verdict { what, ok }
}

fn objects<'a>(e: &'a Ended<'_>, kind: &str) -> &'a [Value] {
    e.observations.objects.get(kind).map_or(&[], Vec::as_slice)
}

fn live(p: &Value) -> bool {
    p["metadata"]["deletionTimestamp"].is_null()
        && !matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

fn name(v: &Value) -> String {
    let n = v["metadata"]["name"].as_str().unwrap_or("?");
    match v["metadata"]["namespace"].as_str() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{n}"),
        _ => n.to_string(),
    }
}

/// At most three examples, then how many more.
fn examples(items: &[String]) -> String {
    let mut s = items.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > 3 {
        s.push_str(&format!(" +{} more", items.len() - 3));
    }
    s
}

impl Expectations {
    /// Every expectation written, checked.
    pub fn check(&self, e: &Ended<'_>) -> Vec<Verdict> {
        let o = e.observations;
        let mut out = Vec::new();
        if let Some(max) = self.pods_pending_max {
            let got = o.pending_max();
            out.push(verdict(
                got <= max,
                format!("pods_pending_max {} (got {})", human(max), human(got)),
            ));
        }
        if let Some((max, selector)) = &self.pods_pending_p99 {
            let got = o.pending_p99_of(selector.as_ref());
            let of = selector
                .as_ref()
                .map(|s| format!(" of `{}`", s.text))
                .unwrap_or_default();
            out.push(verdict(
                got <= *max,
                format!("pods_pending_p99{of} {} (got {})", human(*max), human(got)),
            ));
        }
        if let Some(max) = self.cost_per_hour_max {
            out.push(verdict(
                o.max_cost_per_hour <= max,
                format!("cost_per_hour_max {max} (got {:.4})", o.max_cost_per_hour),
            ));
        }
        if let Some(max) = self.cost_total_max {
            out.push(verdict(
                o.cost_total <= max,
                format!("cost_total_max {max} (got {:.4})", o.cost_total),
            ));
        }
        if let Some(max) = self.cost_over_bound_max {
            let ratio = if o.lower_bound_total > 0.0 {
                o.cost_total / o.lower_bound_total
            } else {
                1.0
            };
            out.push(verdict(
                ratio <= max,
                format!("cost_over_bound_max {max:.2} (got {ratio:.2})"),
            ));
        }
        if let Some(max) = self.nodes_max {
            let got = o
                .series
                .iter()
                .map(|s| s.nodes)
                .chain([o.last.nodes])
                .max()
                .unwrap_or(0);
            out.push(verdict(
                got <= max as usize,
                format!("nodes_max {max} (got {got})"),
            ));
        }
        if let Some((lo, hi)) = self.nodes_at_end {
            let got = o.last.nodes;
            let want = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}..{hi}")
            };
            out.push(verdict(
                (lo as usize..=hi as usize).contains(&got),
                format!("nodes_at_end {want} (got {got})"),
            ));
        }
        if let Some(max) = self.launches_max {
            out.push(verdict(
                o.launches <= u64::from(max),
                format!("launches_max {max} (got {})", o.launches),
            ));
        }
        if let Some(max) = self.evictions_max {
            out.push(verdict(
                o.evictions <= u64::from(max),
                format!("evictions_max {max} (got {})", o.evictions),
            ));
        }
        if let Some((max, selector)) = &self.pods_pending_at_end {
            let pending: Vec<String> = objects(e, "Pod")
                .iter()
                .filter(|p| live(p) && p["spec"]["nodeName"].is_null())
                .filter(|p| {
                    selector
                        .as_ref()
                        .is_none_or(|s| s.matches(&p["metadata"]["labels"]))
                })
                .map(name)
                .collect();
            let of = selector
                .as_ref()
                .map(|s| format!(" of `{}`", s.text))
                .unwrap_or_default();
            out.push(verdict(
                pending.len() <= *max as usize,
                format!(
                    "pods_pending_at_end{of} max {max} (got {}{})",
                    pending.len(),
                    if pending.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", examples(&pending))
                    }
                ),
            ));
        }
        for x in &self.pods_explained {
            out.push(self.explained(e, x));
        }
        let launched = &o.launched;
        for (field, rule, value) in [
            ("instance_types", &self.instance_types, 0),
            ("instance_families", &self.instance_families, 1),
            ("capacity_types", &self.capacity_types, 2),
            ("zones", &self.zones, 3),
        ] {
            let Some(rule) = rule else { continue };
            let bad: Vec<String> = launched
                .iter()
                .map(|l| match value {
                    0 => l.instance_type.clone(),
                    1 => l
                        .instance_type
                        .split('.')
                        .next()
                        .unwrap_or_default()
                        .to_string(),
                    2 => l.capacity_type.clone(),
                    _ => l.zone.clone(),
                })
                .filter(|v| rule.refuses(v))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut want = Vec::new();
            if !rule.allowed.is_empty() {
                want.push(format!("allowed [{}]", rule.allowed.join(", ")));
            }
            if !rule.forbidden.is_empty() {
                want.push(format!("forbidden [{}]", rule.forbidden.join(", ")));
            }
            out.push(verdict(
                bad.is_empty(),
                format!(
                    "{field} {} (got {})",
                    want.join(", "),
                    if bad.is_empty() {
                        format!("{} launches within", launched.len())
                    } else {
                        format!("launched {}", bad.join(", "))
                    }
                ),
            ));
        }
        for p in &self.placement {
            out.push(placement(e, p));
        }
        for (reason, (min, max)) in &self.disruptions {
            let got: f64 = e
                .metrics
                .series(dovetail::metrics::NODECLAIMS_DISRUPTED)
                .iter()
                .filter(|(labels, _)| labels.iter().any(|(k, v)| *k == "reason" && v == reason))
                .map(|(_, v)| v)
                .sum();
            let got = got as u32;
            let want = match (min, max) {
                (Some(a), Some(b)) => format!("{a}..{b}"),
                (Some(a), None) => format!("min {a}"),
                (None, Some(b)) => format!("max {b}"),
                (None, None) => "any".into(),
            };
            out.push(verdict(
                min.is_none_or(|m| got >= m) && max.is_none_or(|m| got <= m),
                format!("disruptions.{reason} {want} (got {got})"),
            ));
        }
        if let Some(max) = self.unavailable_pod_minutes_max {
            let got = o.unavailable_pod_seconds / 60.0;
            out.push(verdict(
                got <= max,
                format!("unavailable_pod_minutes_max {max:.1} (got {got:.1})"),
            ));
        }
        for pattern in &self.trace_contains {
            let found = regex::Regex::new(pattern)
                .map(|re| e.trace.lines().any(|l| re.is_match(l)))
                .unwrap_or(false);
            out.push(verdict(
                found,
                format!(
                    "trace_contains `{pattern}` ({})",
                    if found { "found" } else { "no line matches" }
                ),
            ));
        }
        for pattern in &self.trace_lacks {
            let hit = regex::Regex::new(pattern)
                .ok()
                .and_then(|re| e.trace.lines().find(|l| re.is_match(l)).map(str::to_string));
            out.push(verdict(
                hit.is_none(),
                format!(
                    "trace_lacks `{pattern}` ({})",
                    hit.map_or_else(|| "no line matches".to_string(), |l| format!("found: {l}"))
                ),
            ));
        }
        out
    }

    fn explained(&self, e: &Ended<'_>, x: &Explained) -> Verdict {
        let re = regex::Regex::new(&x.reason).ok();
        let events = objects(e, "Event");
        let mut unexplained = Vec::new();
        let mut count = 0;
        for p in objects(e, "Pod")
            .iter()
            .filter(|p| live(p) && p["spec"]["nodeName"].is_null())
            .filter(|p| {
                x.selector
                    .as_ref()
                    .is_none_or(|s| s.matches(&p["metadata"]["labels"]))
            })
        {
            count += 1;
            let (ns, n) = (
                p["metadata"]["namespace"].as_str(),
                p["metadata"]["name"].as_str(),
            );
            let ok = events.iter().any(|ev| {
                ev["reason"] == "FailedScheduling"
                    && ev["involvedObject"]["kind"] == "Pod"
                    && ev["involvedObject"]["namespace"].as_str() == ns
                    && ev["involvedObject"]["name"].as_str() == n
                    && re
                        .as_ref()
                        .is_some_and(|re| re.is_match(ev["message"].as_str().unwrap_or_default()))
            });
            if !ok {
                unexplained.push(name(p));
            }
        }
        let of = x
            .selector
            .as_ref()
            .map(|s| format!(" of `{}`", s.text))
            .unwrap_or_default();
        verdict(
            unexplained.is_empty(),
            format!(
                "pods_explained{of} reason `{}` (got {} pending, {})",
                x.reason,
                count,
                if unexplained.is_empty() {
                    "all explained".to_string()
                } else {
                    format!("not explained so: {}", examples(&unexplained))
                }
            ),
        )
    }
}

fn placement(e: &Ended<'_>, p: &Placement) -> Verdict {
    let nodes: BTreeMap<&str, &Value> = objects(e, "Node")
        .iter()
        .filter_map(|n| Some((n["metadata"]["name"].as_str()?, &n["metadata"]["labels"])))
        .collect();
    let glob = dovetail::aws::cloud::glob;
    let mut wrong = Vec::new();
    let mut count = 0;
    for pod in objects(e, "Pod").iter().filter(|x| live(x)) {
        if !p.selector.matches(&pod["metadata"]["labels"]) {
            continue;
        }
        let Some(node) = pod["spec"]["nodeName"].as_str() else {
            continue;
        };
        count += 1;
        let labels = nodes.get(node).copied().unwrap_or(&Value::Null);
        let label = |k: &str| labels[k].as_str().unwrap_or_default().to_string();
        let mut why = Vec::new();
        if let Some(pool) = &p.nodepool
            && label("karpenter.sh/nodepool") != *pool
        {
            why.push(format!("nodepool {}", label("karpenter.sh/nodepool")));
        }
        let it = label("node.kubernetes.io/instance-type");
        if !p.instance_types.is_empty() && !p.instance_types.iter().any(|g| glob(g, &it)) {
            why.push(it);
        }
        let zone = label("topology.kubernetes.io/zone");
        if !p.zones.is_empty() && !p.zones.contains(&zone) {
            why.push(zone);
        }
        if !why.is_empty() {
            wrong.push(format!("{} on {node} ({})", name(pod), why.join(", ")));
        }
    }
    let mut want = Vec::new();
    if let Some(pool) = &p.nodepool {
        want.push(format!("nodepool {pool}"));
    }
    if !p.instance_types.is_empty() {
        want.push(format!("instance types [{}]", p.instance_types.join(", ")));
    }
    if !p.zones.is_empty() {
        want.push(format!("zones [{}]", p.zones.join(", ")));
    }
    verdict(
        wrong.is_empty(),
        format!(
            "placement of `{}` on {} (got {count} running{})",
            p.selector.text,
            want.join(", "),
            if wrong.is_empty() {
                ", all there".to_string()
            } else {
                format!(", elsewhere: {}", examples(&wrong))
            }
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_read_as_kubectl_reads_them() {
        let s =
            Selector::parse("app=web, tier!=db,canary,!legacy").unwrap_or_else(|e| panic!("{e}"));
        assert!(s.matches(&json!({"app": "web", "canary": "1"})));
        assert!(!s.matches(&json!({"app": "web", "canary": "1", "tier": "db"})));
        assert!(!s.matches(&json!({"app": "web"})));
        assert!(!s.matches(&json!({"app": "web", "canary": "1", "legacy": "y"})));
        assert!(Selector::parse("app = web x").is_err());
    }
}
