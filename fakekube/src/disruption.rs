//! The disruption controller's arithmetic: how many pods a PodDisruptionBudget expects, how many are
//! healthy, and how many disruptions it allows right now.

use serde_json::{Value, json};

use crate::store::Store;

/// A PDB's status as Kubernetes computes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetStatus {
    pub expected_pods: i64,
    pub current_healthy: i64,
    pub desired_healthy: i64,
    pub disruptions_allowed: i64,
}

impl BudgetStatus {
    pub fn to_json(self) -> Value {
        json!({
            "expectedPods": self.expected_pods,
            "currentHealthy": self.current_healthy,
            "desiredHealthy": self.desired_healthy,
            "disruptionsAllowed": self.disruptions_allowed,
        })
    }
}

/// Ready and running, not being deleted.
pub fn pod_healthy(pod: &Value) -> bool {
    pod["metadata"]["deletionTimestamp"].is_null()
        && pod["status"]["phase"] == "Running"
        && pod["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

/// `intOrString` against a total; percentages round up, as the disruption controller does.
fn scaled(v: &Value, total: i64) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => match s.strip_suffix('%') {
            Some(p) => p.parse::<i64>().ok().map(|pct| (pct * total + 99) / 100),
            None => s.parse().ok(),
        },
        _ => None,
    }
}

/// Pods a PDB selects, in its namespace.
pub fn selected(store: &Store, pdb: &Value) -> Vec<Value> {
    let ns = pdb["metadata"]["namespace"].as_str().unwrap_or_default();
    store
        .iter("Pod")
        .filter(|p| p["metadata"]["namespace"].as_str() == Some(ns))
        .filter(|p| crate::selectors::matches(&pdb["spec"]["selector"], &p["metadata"]["labels"]))
        .cloned()
        .collect()
}

/// Status of one PDB, or None if it sets neither minAvailable nor maxUnavailable.
pub fn status(store: &Store, pdb: &Value) -> Option<BudgetStatus> {
    let pods = selected(store, pdb);
    let healthy = pods.iter().filter(|p| pod_healthy(p)).count() as i64;
    // With an integer minAvailable the expected count is the pods that exist; otherwise it is the scale of
    // their controllers (a Deployment's replicas), so a missing replica still counts as unavailable.
    let controller_scale = || {
        let mut owners: Vec<(String, String)> = Vec::new();
        let mut unowned = 0i64;
        for p in &pods {
            match p["metadata"]["ownerReferences"]
                .as_array()
                .and_then(|r| r.iter().find(|o| o["kind"] == "Deployment"))
            {
                Some(o) => {
                    let key = (
                        p["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        o["name"].as_str().unwrap_or_default().to_string(),
                    );
                    if !owners.contains(&key) {
                        owners.push(key);
                    }
                }
                None => unowned += 1,
            }
        }
        let scale: i64 = owners
            .iter()
            .filter_map(|(ns, name)| store.get("Deployment", ns, name))
            .map(|d| d["spec"]["replicas"].as_i64().unwrap_or(1))
            .sum();
        scale + unowned
    };
    let spec = &pdb["spec"];
    let (expected, desired) = match (&spec["minAvailable"], &spec["maxUnavailable"]) {
        (Value::Number(n), _) => (pods.len() as i64, n.as_i64().unwrap_or(0)),
        (min @ Value::String(_), _) => {
            let e = controller_scale();
            (e, scaled(min, e)?)
        }
        (_, max) if !max.is_null() => {
            let e = controller_scale();
            (e, e - scaled(max, e)?)
        }
        _ => return None,
    };
    Some(BudgetStatus {
        expected_pods: expected,
        current_healthy: healthy,
        desired_healthy: desired,
        disruptions_allowed: (healthy - desired).max(0),
    })
}

/// Why evicting `pod` would break a budget, if it would (the API server answers 429 then).
pub fn eviction_blocker(store: &Store, pod: &Value) -> Option<String> {
    let ns = pod["metadata"]["namespace"].as_str().unwrap_or_default();
    for pdb in store.list("PodDisruptionBudget") {
        if pdb["metadata"]["namespace"].as_str() != Some(ns)
            || !crate::selectors::matches(&pdb["spec"]["selector"], &pod["metadata"]["labels"])
        {
            continue;
        }
        let Some(st) = status(store, &pdb) else {
            continue;
        };
        // Evicting a pod that is already unhealthy does not reduce availability.
        if st.disruptions_allowed == 0 && pod_healthy(pod) {
            let name = pdb["metadata"]["name"].as_str().unwrap_or_default();
            return Some(format!(
                "Cannot evict pod as it would violate the pod's disruption budget {ns}/{name}: {} healthy, {} needed",
                st.current_healthy, st.desired_healthy
            ));
        }
    }
    None
}
