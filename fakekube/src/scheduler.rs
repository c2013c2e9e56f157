//! A kube-scheduler written for clarity: filter nodes (readiness, taints, selectors, affinity, resources),
//! score by least allocated, bind; mark the rest `PodScheduled=False, Unschedulable` with a message.
//!
//! It deliberately shares no code with dovetail's scheduling, so it can disagree with it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use dovetail::journal::Journal;
use jiff::Timestamp;
use serde_json::{Value, json};

use crate::api::FakeKube;
use crate::quantity::milli;

/// A pod the scheduler placed, and how long it had waited since creation.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    pub pod: String,
    pub node: String,
    pub waited: Duration,
    /// The pod's labels, so waits can be told apart by selector.
    pub labels: Value,
}

pub struct Scheduler {
    journal: Arc<dyn Journal>,
    pub bindings: Vec<Binding>,
    /// Requests by pod uid: a pod's requests never change, and a pass adds up every bound pod's.
    requests: BTreeMap<String, Amounts>,
    /// The store's resourceVersion after the last pass: with nothing written since, a pass would decide
    /// exactly the same, so it is skipped.
    seen_rv: Option<u64>,
    /// A pass preempted pods: the next one must run to bind the preemptor.
    preempted: bool,
}

type Amounts = BTreeMap<String, i128>;

pub(crate) fn requests(pod: &Value) -> Amounts {
    let mut sum = Amounts::new();
    // The API server has already defaulted requests to limits.
    let read = |c: &Value| -> Amounts {
        let mut out = Amounts::new();
        if let Some(m) = c["resources"]["requests"].as_object() {
            for (k, v) in m {
                out.insert(k.clone(), v.as_str().and_then(milli).unwrap_or(0));
            }
        }
        out
    };
    for c in pod["spec"]["containers"].as_array().into_iter().flatten() {
        for (k, v) in read(c) {
            *sum.entry(k).or_default() += v;
        }
    }
    for c in pod["spec"]["initContainers"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for (k, v) in read(c) {
            let e = sum.entry(k).or_default();
            *e = (*e).max(v);
        }
    }
    if let Some(m) = pod["spec"]["overhead"].as_object() {
        for (k, v) in m {
            *sum.entry(k.clone()).or_default() += v.as_str().and_then(milli).unwrap_or(0);
        }
    }
    *sum.entry("pods".into()).or_default() += 1000;
    sum
}

fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    })
}

pub(crate) fn tolerates(pod: &Value, taint: &Value) -> bool {
    pod["spec"]["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| {
            let key_ok = match t["key"].as_str() {
                None | Some("") => t["operator"] == "Exists",
                Some(k) => Some(k) == taint["key"].as_str(),
            };
            let value_ok = t["operator"] == "Exists"
                || t["value"].as_str().unwrap_or("") == taint["value"].as_str().unwrap_or("");
            let effect_ok = t["effect"]
                .as_str()
                .is_none_or(|e| e.is_empty() || Some(e) == taint["effect"].as_str());
            key_ok && value_ok && effect_ok
        })
}

pub(crate) fn expression_holds(expr: &Value, labels: &Value) -> bool {
    let actual = labels
        .get(expr["key"].as_str().unwrap_or_default())
        .and_then(Value::as_str);
    let values: Vec<&str> = expr["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let number = |s: &str| s.parse::<i64>().ok();
    match expr["operator"].as_str().unwrap_or_default() {
        "In" => actual.is_some_and(|a| values.contains(&a)),
        "NotIn" => actual.is_none_or(|a| !values.contains(&a)),
        "Exists" => actual.is_some(),
        "DoesNotExist" => actual.is_none(),
        "Gt" => {
            matches!((actual.and_then(number), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a > b)
        }
        "Lt" => {
            matches!((actual.and_then(number), values.first().and_then(|v| number(v))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// The (protocol, hostIP, hostPort) a pod claims on its node; hostIP `0.0.0.0` when unset.
pub(crate) fn host_ports(pod: &Value) -> Vec<(String, String, i64)> {
    let mut out = Vec::new();
    for group in ["initContainers", "containers"] {
        for c in pod["spec"][group].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                let Some(port) = p["hostPort"].as_i64().filter(|p| *p > 0) else {
                    continue;
                };
                let protocol = p["protocol"].as_str().unwrap_or("TCP").to_string();
                let ip = p["hostIP"]
                    .as_str()
                    .filter(|ip| !ip.is_empty())
                    .unwrap_or("0.0.0.0")
                    .to_string();
                out.push((protocol, ip, port));
            }
        }
    }
    out
}

/// Two host-port claims clash on the same port and protocol when either listens on every address.
pub(crate) fn ports_clash(a: &(String, String, i64), b: &(String, String, i64)) -> bool {
    a.0 == b.0 && a.2 == b.2 && (a.1 == b.1 || a.1 == "0.0.0.0" || b.1 == "0.0.0.0")
}

/// Why `pod` cannot go on `node`, or None if it can.
fn unfit_reason(
    pod: &Value,
    node: &Value,
    free: &Amounts,
    used_ports: &[(String, String, i64)],
) -> Option<String> {
    if !node_ready(node) || !node["metadata"]["deletionTimestamp"].is_null() {
        return Some("node(s) were not ready".into());
    }
    if node["spec"]["unschedulable"] == true {
        return Some("node(s) were unschedulable".into());
    }
    for taint in node["spec"]["taints"].as_array().into_iter().flatten() {
        let hard = matches!(
            taint["effect"].as_str(),
            Some("NoSchedule") | Some("NoExecute")
        );
        if hard && !tolerates(pod, taint) {
            return Some("node(s) had untolerated taint".into());
        }
    }
    if !node_affinity_admits(pod, node) {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if host_ports(pod)
        .iter()
        .any(|p| used_ports.iter().any(|u| ports_clash(p, u)))
    {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    for (res, amount) in requests(pod) {
        if amount > free.get(&res).copied().unwrap_or(0) {
            return Some(format!("Insufficient {res}"));
        }
    }
    None
}

/// A pod already placed (bound, or bound earlier in this pass), as inter-pod rules see it.
struct Placed {
    namespace: String,
    labels: Value,
    node: String,
    anti_affinity: Vec<Value>,
}

fn node_labels<'a>(nodes: &'a [Value], name: &str) -> Option<&'a Value> {
    nodes
        .iter()
        .find(|n| n["metadata"]["name"] == name)
        .map(|n| &n["metadata"]["labels"])
}

fn domain<'a>(nodes: &'a [Value], node: &str, key: &str) -> Option<&'a str> {
    node_labels(nodes, node).and_then(|l| l[key].as_str())
}

/// Does the pod's nodeSelector and required node affinity admit the node (nodeAffinityPolicy: Honor)?
pub(crate) fn node_affinity_admits(pod: &Value, node: &Value) -> bool {
    let labels = &node["metadata"]["labels"];
    let selector_ok = pod["spec"]["nodeSelector"]
        .as_object()
        .is_none_or(|sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let terms = &pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    // `matchFields` can only name `metadata.name` (how the DaemonSet controller pins a pod to its node).
    let fields = json!({"metadata.name": node["metadata"]["name"]});
    let affinity_ok = terms.as_array().is_none_or(|terms| {
        terms.iter().any(|t| {
            t["matchExpressions"]
                .as_array()
                .into_iter()
                .flatten()
                .all(|e| expression_holds(e, labels))
                && t["matchFields"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .all(|e| expression_holds(e, &fields))
        })
    });
    selector_ok && affinity_ok
}

fn term_namespaces(term: &Value, pod_ns: &str) -> Vec<String> {
    match term["namespaces"].as_array() {
        Some(list) if !list.is_empty() => list
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => vec![pod_ns.to_string()],
    }
}

/// Topology spread (DoNotSchedule) and required pod (anti-)affinity, both directions.
fn inter_pod_reason(
    pod: &Value,
    node: &Value,
    nodes: &[Value],
    placed: &[Placed],
) -> Option<String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    let node_name = node["metadata"]["name"].as_str().unwrap_or_default();
    let pod_labels = &pod["metadata"]["labels"];
    for c in pod["spec"]["topologySpreadConstraints"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if c["whenUnsatisfiable"].as_str().unwrap_or("DoNotSchedule") != "DoNotSchedule" {
            continue;
        }
        let key = c["topologyKey"].as_str().unwrap_or_default();
        let Some(here) = node["metadata"]["labels"][key].as_str() else {
            return Some(
                "node(s) didn't match pod topology spread constraints (missing required label)"
                    .into(),
            );
        };
        let max_skew = c["maxSkew"].as_i64().unwrap_or(1);
        let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
        for n in nodes.iter().filter(|n| node_affinity_admits(pod, n)) {
            if let Some(d) = n["metadata"]["labels"][key].as_str() {
                counts.entry(d).or_insert(0);
            }
        }
        for p in placed.iter().filter(|p| {
            p.namespace == ns && crate::selectors::matches(&c["labelSelector"], &p.labels)
        }) {
            if let Some(d) = domain(nodes, &p.node, key)
                && let Some(n) = counts.get_mut(d)
            {
                *n += 1;
            }
        }
        let min_domains = c["minDomains"].as_i64().unwrap_or(1);
        let global_min = if (counts.len() as i64) < min_domains {
            0
        } else {
            counts.values().copied().min().unwrap_or(0)
        };
        let self_match = i64::from(crate::selectors::matches(&c["labelSelector"], pod_labels));
        if counts.get(here).copied().unwrap_or(0) + self_match - global_min > max_skew {
            return Some("node(s) didn't match pod topology spread constraints".into());
        }
    }
    let affinity = &pod["spec"]["affinity"];
    for term in affinity["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = term["topologyKey"].as_str().unwrap_or_default();
        let namespaces = term_namespaces(term, ns);
        let matching: Vec<&Placed> = placed
            .iter()
            .filter(|p| {
                namespaces.contains(&p.namespace)
                    && crate::selectors::matches(&term["labelSelector"], &p.labels)
            })
            .collect();
        let here = node["metadata"]["labels"][key].as_str();
        let satisfied =
            here.is_some() && matching.iter().any(|p| domain(nodes, &p.node, key) == here);
        // The first pod of a group that selects itself may go anywhere, as in kube-scheduler.
        let first_of_its_group =
            matching.is_empty() && crate::selectors::matches(&term["labelSelector"], pod_labels);
        if !satisfied && !first_of_its_group {
            return Some("node(s) didn't match pod affinity rules".into());
        }
    }
    for term in affinity["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = term["topologyKey"].as_str().unwrap_or_default();
        let namespaces = term_namespaces(term, ns);
        let Some(here) = node["metadata"]["labels"][key].as_str() else {
            continue;
        };
        let clash = placed.iter().any(|p| {
            namespaces.contains(&p.namespace)
                && crate::selectors::matches(&term["labelSelector"], &p.labels)
                && domain(nodes, &p.node, key) == Some(here)
        });
        if clash {
            return Some("node(s) didn't match pod anti-affinity rules".into());
        }
    }
    // Existing pods' anti-affinity applies to newcomers too.
    for p in placed {
        for term in &p.anti_affinity {
            let key = term["topologyKey"].as_str().unwrap_or_default();
            if term_namespaces(term, &p.namespace).iter().any(|n| n == ns)
                && crate::selectors::matches(&term["labelSelector"], pod_labels)
                && domain(nodes, &p.node, key).is_some()
                && domain(nodes, &p.node, key) == domain(nodes, node_name, key)
            {
                return Some("node(s) didn't satisfy existing pods anti-affinity rules".into());
            }
        }
    }
    None
}

fn placed_of(p: &Value, node: &str) -> Placed {
    Placed {
        namespace: p["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        labels: p["metadata"]["labels"].clone(),
        node: node.to_string(),
        anti_affinity: p["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    }
}

fn key(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or_default(),
        v["metadata"]["name"].as_str().unwrap_or_default()
    )
}

/// Pods to preempt, as (namespace, name).
type Victims = Vec<(String, String)>;

/// A pod's priority as the Priority admission plugin set it.
fn priority(pod: &Value) -> i64 {
    pod["spec"]["priority"].as_i64().unwrap_or(0)
}

/// The scheduler's preemption (DefaultPreemption, simplified): a pod that fits nowhere may take a node whose
/// other filters it passes if deleting lower-priority pods there frees enough resources; the node needing the
/// fewest victims wins (ties: the lowest highest victim priority, then the name). Victims go lowest priority
/// first, newest first within a priority. `preemptionPolicy: Never` pods do not preempt.
fn preemption(
    st: &crate::store::Store,
    pod: &Value,
    nodes: &[Value],
    ports: &BTreeMap<String, Vec<(String, String, i64)>>,
) -> Option<(String, Victims)> {
    let mine = priority(pod);
    if pod["spec"]["preemptionPolicy"] == "Never" {
        return None;
    }
    let wants = requests(pod);
    let unlimited: Amounts = wants.keys().map(|k| (k.clone(), i128::MAX / 4)).collect();
    // (victim count, highest victim priority, node, victims)
    let mut best: Option<(usize, i64, String, Victims)> = None;
    for n in nodes {
        let name = n["metadata"]["name"].as_str().unwrap_or_default();
        let used = ports.get(name).map_or(&[][..], Vec::as_slice);
        // Everything but resources must already hold.
        if unfit_reason(pod, n, &unlimited, used).is_some() {
            continue;
        }
        let mut free: Amounts = n["status"]["allocatable"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().and_then(milli).unwrap_or(0)))
            .collect();
        let mut candidates: Vec<(i64, String, String, String, Amounts)> = Vec::new();
        for p in st.iter("Pod").filter(|p| p["spec"]["nodeName"] == name) {
            if matches!(p["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let r = requests(p);
            for (k, v) in &r {
                *free.entry(k.clone()).or_default() -= v;
            }
            let prio = priority(p);
            if prio < mine && p["metadata"]["deletionTimestamp"].is_null() {
                let (ns, pn) = crate::store::ns_name(p);
                let created = p["metadata"]["creationTimestamp"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                candidates.push((prio, created, ns, pn, r));
            }
        }
        // Lowest priority first; newest first within a priority.
        candidates.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let fits = |free: &Amounts| {
            wants
                .iter()
                .all(|(k, v)| free.get(k).copied().unwrap_or(0) >= *v)
        };
        let mut victims = Vec::new();
        let mut highest = i64::MIN;
        for (prio, _, ns, pn, r) in candidates {
            if fits(&free) {
                break;
            }
            for (k, v) in &r {
                *free.entry(k.clone()).or_default() += v;
            }
            highest = highest.max(prio);
            victims.push((ns, pn));
        }
        if victims.is_empty() || !fits(&free) {
            continue;
        }
        let key = (victims.len(), highest, name.to_string());
        if best
            .as_ref()
            .is_none_or(|b| (key.0, key.1, &key.2) < (b.0, b.1, &b.2))
        {
            best = Some((key.0, key.1, key.2, victims));
        }
    }
    best.map(|(_, _, node, victims)| (node, victims))
}

impl Scheduler {
    pub fn new(journal: Arc<dyn Journal>) -> Self {
        Scheduler {
            journal,
            bindings: Vec::new(),
            seen_rv: None,
            requests: BTreeMap::new(),
            preempted: false,
        }
    }

    /// One scheduling pass over every pending pod, oldest first.
    pub fn schedule(&mut self, kube: &FakeKube, now: Timestamp) {
        let mut st = kube.store();
        if self.seen_rv == Some(st.resource_version()) && !self.preempted {
            return;
        }
        self.preempted = false;
        self.pass(&mut st, now);
        self.seen_rv = Some(st.resource_version());
    }

    fn pass(&mut self, st: &mut crate::store::Store, now: Timestamp) {
        // Most passes have nothing to place: skip copying the world then.
        let any_pending = st.iter("Pod").any(|p| {
            p["spec"]["nodeName"].is_null() && p["metadata"]["deletionTimestamp"].is_null()
        });
        if !any_pending {
            return;
        }
        let nodes = st.list("Node");
        let mut free: BTreeMap<String, Amounts> = BTreeMap::new();
        for n in &nodes {
            let mut a = Amounts::new();
            for (k, v) in n["status"]["allocatable"].as_object().into_iter().flatten() {
                a.insert(k.clone(), v.as_str().and_then(milli).unwrap_or(0));
            }
            free.insert(
                n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                a,
            );
        }
        let mut pending = Vec::new();
        let mut placed: Vec<Placed> = Vec::new();
        let mut ports: BTreeMap<String, Vec<(String, String, i64)>> = BTreeMap::new();
        // Bound pods are read in place; only the pending ones are copied out to be placed.
        for p in st.iter("Pod") {
            let phase = p["status"]["phase"].as_str().unwrap_or("Pending");
            if let Some(node) = p["spec"]["nodeName"].as_str() {
                if phase != "Succeeded"
                    && phase != "Failed"
                    && let Some(f) = free.get_mut(node)
                {
                    let uid = p["metadata"]["uid"].as_str().unwrap_or_default();
                    if !self.requests.contains_key(uid) {
                        self.requests.insert(uid.to_string(), requests(p));
                    }
                    for (k, v) in &self.requests[uid] {
                        *f.entry(k.clone()).or_default() -= v;
                    }
                }
                if phase != "Succeeded" && phase != "Failed" {
                    ports
                        .entry(node.to_string())
                        .or_default()
                        .extend(host_ports(p));
                }
                if phase != "Succeeded"
                    && phase != "Failed"
                    && p["metadata"]["deletionTimestamp"].is_null()
                {
                    placed.push(placed_of(p, node));
                }
            } else if p["metadata"]["deletionTimestamp"].is_null() {
                pending.push(p.clone());
            }
        }
        // Oldest first by the time itself: RFC 3339 text does not sort (`…00.5Z` < `…00Z`).
        pending.sort_by_cached_key(|v| {
            let created: Option<Timestamp> = v["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|s| s.parse().ok());
            (created, key(v))
        });
        // EBS claims attached per node, read once a pod with claims needs them.
        let mut attached: Option<BTreeMap<String, BTreeSet<String>>> = None;
        for pod in pending {
            let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
            let mut best: Option<(i128, String)> = None;
            let claims = crate::volumes::pod_claims(st, &pod);
            if !claims.is_empty() && attached.is_none() {
                attached = Some(
                    nodes
                        .iter()
                        .filter_map(|n| n["metadata"]["name"].as_str())
                        .map(|n| (n.to_string(), crate::volumes::attached(st, n)))
                        .collect(),
                );
            }
            for n in &nodes {
                let name = n["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let f = &free[&name];
                let used = ports.get(&name).map_or(&[][..], Vec::as_slice);
                let volume_reason = || {
                    if claims.is_empty() {
                        return None;
                    }
                    let none = BTreeSet::new();
                    let on_node = attached
                        .as_ref()
                        .and_then(|a| a.get(&name))
                        .unwrap_or(&none);
                    crate::volumes::unfit_reason(
                        &claims,
                        n,
                        on_node,
                        crate::volumes::attach_limit(st, &name),
                    )
                };
                match unfit_reason(&pod, n, f, used)
                    .or_else(volume_reason)
                    .or_else(|| inter_pod_reason(&pod, n, &nodes, &placed))
                {
                    Some(r) => *reasons.entry(r).or_default() += 1,
                    None => {
                        // LeastAllocated: prefer the node with the most free cpu + memory, in per-mille of allocatable.
                        let alloc = |r: &str| {
                            n["status"]["allocatable"][r]
                                .as_str()
                                .and_then(milli)
                                .unwrap_or(1)
                                .max(1)
                        };
                        let score = f.get("cpu").copied().unwrap_or(0) * 1000 / alloc("cpu")
                            + f.get("memory").copied().unwrap_or(0) * 1000 / alloc("memory");
                        if best.as_ref().is_none_or(|(s, _)| score > *s) {
                            best = Some((score, name));
                        }
                    }
                }
            }
            let ns = pod["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let pod_name = pod["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            match best {
                Some((_, node)) => {
                    let patch = json!({"spec": {"nodeName": node}});
                    if st.patch("Pod", &ns, &pod_name, &patch, false).is_err() {
                        continue;
                    }
                    let status = json!({"status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}});
                    let _ = st.patch("Pod", &ns, &pod_name, &status, true);
                    if !claims.is_empty() {
                        if let Some(n) = nodes
                            .iter()
                            .find(|n| n["metadata"]["name"] == node.as_str())
                        {
                            crate::volumes::provision_for(st, &claims, n, now);
                        }
                        if let Some(a) = attached.as_mut() {
                            a.entry(node.clone())
                                .or_default()
                                .extend(crate::volumes::ebs_keys(&claims));
                        }
                    }
                    if let Some(f) = free.get_mut(&node) {
                        for (k, v) in requests(&pod) {
                            *f.entry(k).or_default() -= v;
                        }
                    }
                    ports
                        .entry(node.clone())
                        .or_default()
                        .extend(host_ports(&pod));
                    placed.push(placed_of(&pod, &node));
                    let created: Timestamp = pod["metadata"]["creationTimestamp"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(now);
                    let waited =
                        Duration::try_from(now.duration_since(created)).unwrap_or(Duration::ZERO);
                    self.journal.record(
                        "cluster",
                        format!(
                            "bind pod/{ns}/{pod_name} node={node} waited={:.1}s",
                            waited.as_secs_f64()
                        ),
                    );
                    self.bindings.push(Binding {
                        pod: format!("{ns}/{pod_name}"),
                        node,
                        waited,
                        labels: pod["metadata"]["labels"].clone(),
                    });
                }
                None => {
                    if let Some((node, victims)) = preemption(st, &pod, &nodes, &ports) {
                        for (vns, vname) in &victims {
                            let _ = st.delete("Pod", vns, vname, now);
                        }
                        let status = json!({"status": {"nominatedNodeName": node}});
                        let _ = st.patch("Pod", &ns, &pod_name, &status, true);
                        self.preempted = true;
                        let shown: Vec<String> =
                            victims.iter().map(|(a, b)| format!("{a}/{b}")).collect();
                        self.journal.record(
                            "cluster",
                            format!(
                                "preempt {} on {node} for pod/{ns}/{pod_name} (priority {})",
                                shown.join(", "),
                                priority(&pod)
                            ),
                        );
                        continue;
                    }
                    let detail: Vec<String> =
                        reasons.iter().map(|(r, n)| format!("{n} {r}")).collect();
                    let message = if detail.is_empty() {
                        "0/0 nodes are available".to_string()
                    } else {
                        format!(
                            "0/{} nodes are available: {}.",
                            nodes.len(),
                            detail.join(", ")
                        )
                    };
                    let already = pod["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter().any(|c| {
                            c["type"] == "PodScheduled"
                                && c["reason"] == "Unschedulable"
                                && c["message"] == message.as_str()
                        })
                    });
                    if !already {
                        let status = json!({"status": {"phase": "Pending", "conditions": [{
                            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message
                        }]}});
                        let _ = st.patch("Pod", &ns, &pod_name, &status, true);
                    }
                }
            }
        }
    }
}
