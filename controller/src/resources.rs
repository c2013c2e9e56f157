//! Resource lists (cpu, memory, pods, extended resources) and a pod's effective requests.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity::{self, Cores, Gibibytes, Milli, QuantityError};

pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const PODS: &str = "pods";
pub const EPHEMERAL_STORAGE: &str = "ephemeral-storage";
/// Not a node resource: the node count a NodePool's `spec.limits` may cap.
pub const NODES: &str = "nodes";
/// Not written to the API either: EBS volume attachments, a node's room for them (its CSINode's
/// `ebs.csi.aws.com` count, or its instance type's) and a pod's need (its EBS-backed claims). Counting them
/// as a resource lets every fit check honour attach limits.
pub const EBS_ATTACHMENTS: &str = "dovetail.dev/ebs-attachments";

/// A resource name -> amount map, ordered so that iteration (and therefore output) is deterministic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Resources(pub BTreeMap<String, Milli>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resource `{resource}`: {source}")]
pub struct ResourceError {
    pub resource: String,
    #[source]
    pub source: QuantityError,
}

impl Resources {
    pub fn get(&self, name: &str) -> Milli {
        self.0.get(name).copied().unwrap_or(Milli::ZERO)
    }

    pub fn set(&mut self, name: &str, value: Milli) {
        self.0.insert(name.to_string(), value);
    }

    /// Apply `f(mine, theirs)` for every resource `other` names (a missing one of mine starts at zero);
    /// keys are cloned only when new, since this runs in the planner's inner loop.
    fn combine(&mut self, other: &Resources, f: impl Fn(Milli, Milli) -> Milli) {
        for (k, v) in &other.0 {
            match self.0.get_mut(k) {
                Some(e) => *e = f(*e, *v),
                None => {
                    self.0.insert(k.clone(), f(Milli::ZERO, *v));
                }
            }
        }
    }

    pub fn add(&mut self, other: &Resources) {
        self.combine(other, |a, b| a + b);
    }

    pub fn sub(&mut self, other: &Resources) {
        self.combine(other, |a, b| a - b);
    }

    /// Element-wise maximum.
    pub fn max_with(&mut self, other: &Resources) {
        self.combine(other, Milli::max);
    }

    /// Element-wise minimum over the resources both name (a resource only one names counts as zero).
    pub fn min_with(&mut self, other: &Resources) {
        for (k, v) in self.0.iter_mut() {
            *v = (*v).min(other.get(k));
        }
    }

    /// Whether adding `extra` to `used` still fits in `self`, for the resources `extra` names (what `used`
    /// holds already is taken to fit), without building the sum.
    pub fn fits_sum(&self, used: &Resources, extra: &Resources) -> bool {
        extra.0.iter().all(|(k, v)| *v + used.get(k) <= self.get(k))
    }

    /// Whether every requested amount fits in `self` (a resource `self` lacks counts as zero).
    pub fn fits(&self, request: &Resources) -> bool {
        request.0.iter().all(|(k, v)| *v <= self.get(k))
    }

    /// Parse a Kubernetes resource list, naming the offending resource on error.
    pub fn parse(list: &BTreeMap<String, Quantity>) -> Result<Resources, ResourceError> {
        let mut out = Resources::default();
        for (name, q) in list {
            let v = quantity::parse(&q.0).map_err(|source| ResourceError {
                resource: name.clone(),
                source,
            })?;
            out.0.insert(name.clone(), v);
        }
        Ok(out)
    }

    /// Render as Kubernetes quantities in their canonical form (whole cpus as `2`, else millicores; the
    /// rest in base units), as the API server stores them.
    pub fn to_quantities(&self) -> BTreeMap<String, Quantity> {
        self.0
            .iter()
            .filter(|(k, _)| k.as_str() != EBS_ATTACHMENTS)
            .map(|(k, v)| {
                let q = if k == CPU && v.0 % 1000 != 0 {
                    format!("{}m", v.0)
                } else {
                    format!("{}", v.units())
                };
                (k.clone(), Quantity(q))
            })
            .collect()
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} mem={}",
            Cores(self.get(CPU)),
            Gibibytes(self.get(MEMORY))
        )
    }
}

fn container_requests(c: &Container) -> Result<Resources, ResourceError> {
    let Some(res) = &c.resources else {
        return Ok(Resources::default());
    };
    // Kubernetes defaults requests to limits when only limits are given.
    let mut out = match &res.limits {
        Some(limits) => Resources::parse(limits)?,
        None => Resources::default(),
    };
    if let Some(requests) = &res.requests {
        for (k, v) in Resources::parse(requests)?.0 {
            out.0.insert(k, v);
        }
    }
    Ok(out)
}

/// A pod's effective requests by Kubernetes' rules: the larger of the app containers' sum and each init
/// container's peak (sidecar init containers, `restartPolicy: Always`, keep running and add to both), plus
/// pod overhead, plus one `pods`.
pub fn pod_requests(pod: &Pod) -> Result<Resources, ResourceError> {
    let Some(spec) = &pod.spec else {
        let mut r = Resources::default();
        r.set(PODS, Milli::from_units(1));
        return Ok(r);
    };
    let mut sidecars = Resources::default();
    let mut init_peak = Resources::default();
    for c in spec.init_containers.iter().flatten() {
        let req = container_requests(c)?;
        if c.restart_policy.as_deref() == Some("Always") {
            sidecars.add(&req);
            init_peak.max_with(&sidecars);
        } else {
            let mut during = sidecars.clone();
            during.add(&req);
            init_peak.max_with(&during);
        }
    }
    let mut total = sidecars;
    for c in &spec.containers {
        total.add(&container_requests(c)?);
    }
    total.max_with(&init_peak);
    if let Some(overhead) = &spec.overhead {
        total.add(&Resources::parse(overhead)?);
    }
    total.set(PODS, total.get(PODS) + Milli::from_units(1));
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(spec: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn sums_containers_and_counts_one_pod() {
        let p = pod(json!({"containers": [
            {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
            {"name": "b", "resources": {"requests": {"cpu": "250m"}, "limits": {"memory": "1Gi"}}}
        ]}));
        let r = pod_requests(&p).unwrap();
        assert_eq!(r.get(CPU), Milli(500));
        assert_eq!(r.get(MEMORY), quantity::parse("1536Mi").unwrap());
        assert_eq!(r.get(PODS), Milli(1000));
    }

    #[test]
    fn init_containers_count_at_their_peak_and_sidecars_throughout() {
        let p = pod(json!({
            "initContainers": [
                {"name": "big-init", "resources": {"requests": {"cpu": "2"}}},
                {"name": "sidecar", "restartPolicy": "Always", "resources": {"requests": {"cpu": "100m"}}}
            ],
            "containers": [{"name": "app", "resources": {"requests": {"cpu": "1"}}}],
            "overhead": {"cpu": "50m"}
        }));
        // max(init 2000, sidecar 100 + app 1000) + overhead 50
        assert_eq!(pod_requests(&p).unwrap().get(CPU), Milli(2050));
    }

    #[test]
    fn a_bad_quantity_names_the_resource() {
        let p =
            pod(json!({"containers": [{"name": "a", "resources": {"requests": {"cpu": "5OOm"}}}]}));
        let err = pod_requests(&p).unwrap_err();
        assert_eq!(err.resource, "cpu");
    }
}
