//! The provisioning planner: pure bin packing of pending pods onto existing capacity and new NodeClaims.
//!
//! Plain data in, plain data out: no async, no I/O. Pods are packed largest first; each new claim keeps every
//! instance type that still fits all of its pods, cheapest first, and the launch picks among them.

use std::collections::BTreeMap;

use crate::cloud::CapacityType;
use crate::crds::labels;
use crate::instancetype::InstanceType;
use crate::kube::ObjectKey;
use crate::resources::{CPU, MEMORY, Resources};

/// A pod waiting for capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPod {
    pub key: ObjectKey,
    pub requests: Resources,
    pub node_selector: BTreeMap<String, String>,
}

/// Capacity that exists or is on its way: a node, or a NodeClaim not yet carrying pods.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingCapacity {
    pub name: String,
    pub available: Resources,
    pub labels: BTreeMap<String, String>,
}

/// What one NodePool can launch.
#[derive(Debug, Clone)]
pub struct PoolOptions<'a> {
    pub name: String,
    pub weight: i32,
    /// Labels every node of the pool carries (template labels and the nodepool label).
    pub labels: BTreeMap<String, String>,
    /// Instance types the pool's requirements allow, each with at least one allowed offering.
    pub instance_types: Vec<&'a InstanceType>,
    pub capacity_types: Vec<CapacityType>,
    pub zones: Vec<String>,
    /// Requests of the DaemonSet pods every new node will run.
    pub daemon_overhead: Resources,
    /// What the pool may still add before hitting `spec.limits` (None: unlimited).
    pub remaining_limits: Option<Resources>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClaimPlan {
    pub pool: String,
    pub pods: Vec<ObjectKey>,
    /// Pod requests plus DaemonSet overhead.
    pub requests: Resources,
    /// Fitting instance types, cheapest allowed offering first.
    pub instance_types: Vec<String>,
    pub capacity_types: Vec<CapacityType>,
    pub zones: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub claims: Vec<ClaimPlan>,
    /// Pods that fit capacity already there or on its way.
    pub on_existing: Vec<(ObjectKey, String)>,
    /// Pods nothing can host, with the reason.
    pub unschedulable: Vec<(ObjectKey, String)>,
}

struct OpenClaim<'p, 'a> {
    pool: &'p PoolOptions<'a>,
    pods: Vec<ObjectKey>,
    requests: Resources,
    types: Vec<&'a InstanceType>,
}

fn selector_allows(
    selector: &BTreeMap<String, String>,
    pool: &PoolOptions,
    it: &InstanceType,
) -> bool {
    selector.iter().all(|(k, v)| match k.as_str() {
        labels::ZONE => pool.zones.contains(v) && it.offerings.iter().any(|o| &o.zone == v),
        labels::CAPACITY_TYPE => pool.capacity_types.iter().any(|c| c.as_str() == v),
        _ => pool.labels.get(k).or_else(|| it.labels.get(k)) == Some(v),
    })
}

fn cheapest_price(pool: &PoolOptions, it: &InstanceType) -> f64 {
    it.cheapest(|o| pool.capacity_types.contains(&o.capacity_type) && pool.zones.contains(&o.zone))
        .map_or(f64::INFINITY, |o| o.price)
}

fn within_limits(pool: &PoolOptions, it: &InstanceType) -> bool {
    pool.remaining_limits
        .as_ref()
        .is_none_or(|rem| rem.0.iter().all(|(k, v)| it.capacity.get(k) <= *v))
}

/// Pack `pods` onto `existing` capacity first, then onto as few new claims as the pools allow.
pub fn plan(pods: &[PendingPod], existing: &[ExistingCapacity], pools: &[PoolOptions]) -> Plan {
    let mut order: Vec<&PendingPod> = pods.iter().collect();
    order.sort_by(|a, b| {
        b.requests
            .get(CPU)
            .cmp(&a.requests.get(CPU))
            .then(b.requests.get(MEMORY).cmp(&a.requests.get(MEMORY)))
            .then(a.key.cmp(&b.key))
    });
    let mut pools_by_preference: Vec<&PoolOptions> = pools.iter().collect();
    pools_by_preference.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.name.cmp(&b.name)));

    let mut existing: Vec<ExistingCapacity> = existing.to_vec();
    let mut open: Vec<OpenClaim> = Vec::new();
    let mut out = Plan::default();

    'pods: for pod in order {
        for cap in existing.iter_mut() {
            let selects = pod
                .node_selector
                .iter()
                .all(|(k, v)| cap.labels.get(k) == Some(v));
            if selects && cap.available.fits(&pod.requests) {
                cap.available.sub(&pod.requests);
                out.on_existing.push((pod.key.clone(), cap.name.clone()));
                continue 'pods;
            }
        }
        for claim in open.iter_mut() {
            let mut total = claim.requests.clone();
            total.add(&pod.requests);
            let still: Vec<&InstanceType> = claim
                .types
                .iter()
                .copied()
                .filter(|it| {
                    selector_allows(&pod.node_selector, claim.pool, it)
                        && it.allocatable.fits(&total)
                })
                .collect();
            if !still.is_empty() {
                claim.requests = total;
                claim.types = still;
                claim.pods.push(pod.key.clone());
                continue 'pods;
            }
        }
        let mut reasons = Vec::new();
        for pool in &pools_by_preference {
            let mut total = pool.daemon_overhead.clone();
            total.add(&pod.requests);
            let types: Vec<&InstanceType> = pool
                .instance_types
                .iter()
                .copied()
                .filter(|it| selector_allows(&pod.node_selector, pool, it))
                .filter(|it| it.allocatable.fits(&total))
                .filter(|it| within_limits(pool, it))
                .collect();
            if types.is_empty() {
                reasons.push(format!(
                    "nodepool/{}: no instance type fits {} and the pod's selector within limits",
                    pool.name, pod.requests
                ));
                continue;
            }
            open.push(OpenClaim {
                pool,
                pods: vec![pod.key.clone()],
                requests: total,
                types,
            });
            continue 'pods;
        }
        if reasons.is_empty() {
            reasons.push("no NodePool is ready to launch".to_string());
        }
        out.unschedulable
            .push((pod.key.clone(), reasons.join("; ")));
    }

    out.claims = open
        .into_iter()
        .map(|c| {
            let mut types: Vec<(f64, &str)> = c
                .types
                .iter()
                .map(|it| (cheapest_price(c.pool, it), it.name.as_str()))
                .collect();
            types.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            ClaimPlan {
                pool: c.pool.name.clone(),
                pods: c.pods,
                requests: c.requests,
                instance_types: types.into_iter().map(|(_, n)| n.to_string()).collect(),
                capacity_types: c.pool.capacity_types.clone(),
                zones: c.pool.zones.clone(),
            }
        })
        .collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instancetype::Offering;
    use crate::quantity::{Milli, parse};
    use crate::resources::PODS;

    fn it(name: &str, cpu_m: i128, mem: &str, pods: i128, price: f64) -> InstanceType {
        let mut a = Resources::default();
        a.set(CPU, Milli(cpu_m));
        a.set(MEMORY, parse(mem).unwrap());
        a.set(PODS, Milli::from_units(pods));
        InstanceType {
            name: name.into(),
            labels: [(labels::INSTANCE_TYPE.to_string(), name.to_string())].into(),
            capacity: a.clone(),
            allocatable: a,
            offerings: vec![Offering {
                zone: "z1".into(),
                capacity_type: CapacityType::OnDemand,
                price,
                available: true,
            }],
        }
    }

    fn pod(name: &str, cpu_m: i128, mem: &str) -> PendingPod {
        let mut r = Resources::default();
        r.set(CPU, Milli(cpu_m));
        r.set(MEMORY, parse(mem).unwrap());
        r.set(PODS, Milli::from_units(1));
        PendingPod {
            key: ObjectKey::namespaced("default", name),
            requests: r,
            node_selector: BTreeMap::new(),
        }
    }

    fn pool<'a>(types: Vec<&'a InstanceType>) -> PoolOptions<'a> {
        PoolOptions {
            name: "default".into(),
            weight: 0,
            labels: BTreeMap::new(),
            instance_types: types,
            capacity_types: vec![CapacityType::OnDemand],
            zones: vec!["z1".into()],
            daemon_overhead: Resources::default(),
            remaining_limits: None,
        }
    }

    #[test]
    fn packs_onto_one_claim_and_lists_fitting_types_cheapest_first() {
        let small = it("small", 1900, "3Gi", 10, 0.05);
        let large = it("large", 7900, "30Gi", 50, 0.20);
        let medium = it("medium", 3900, "14Gi", 20, 0.10);
        let pods: Vec<PendingPod> = (0..4).map(|i| pod(&format!("p{i}"), 500, "1Gi")).collect();
        let p = plan(&pods, &[], &[pool(vec![&small, &large, &medium])]);
        assert_eq!(p.claims.len(), 1);
        assert_eq!(p.claims[0].pods.len(), 4);
        assert_eq!(
            p.claims[0].instance_types,
            vec!["medium", "large"],
            "small cannot hold 2 cpu"
        );
        assert!(p.unschedulable.is_empty());
    }

    #[test]
    fn uses_existing_capacity_before_opening_claims() {
        let large = it("large", 7900, "30Gi", 50, 0.20);
        let mut avail = Resources::default();
        avail.set(CPU, Milli(1000));
        avail.set(MEMORY, parse("2Gi").unwrap());
        avail.set(PODS, Milli::from_units(5));
        let existing = vec![ExistingCapacity {
            name: "n1".into(),
            available: avail,
            labels: BTreeMap::new(),
        }];
        let pods = vec![
            pod("a", 500, "1Gi"),
            pod("b", 500, "1Gi"),
            pod("c", 500, "1Gi"),
        ];
        let p = plan(&pods, &existing, &[pool(vec![&large])]);
        assert_eq!(p.on_existing.len(), 2);
        assert_eq!(p.claims.len(), 1);
        assert_eq!(p.claims[0].pods.len(), 1);
    }

    #[test]
    fn limits_bound_only_the_resources_they_name() {
        let large = it("large", 7900, "30Gi", 50, 0.20);
        let mut p = pool(vec![&large]);
        let mut rem = Resources::default();
        rem.set(CPU, Milli(7900));
        p.remaining_limits = Some(rem.clone());
        assert_eq!(
            plan(&[pod("a", 500, "1Gi")], &[], &[p.clone()])
                .claims
                .len(),
            1
        );
        rem.set(CPU, Milli(4000));
        p.remaining_limits = Some(rem);
        let out = plan(&[pod("a", 500, "1Gi")], &[], &[p]);
        assert!(
            out.claims.is_empty(),
            "a node of 7.9 cpu would break a 4 cpu limit"
        );
        assert_eq!(out.unschedulable.len(), 1);
    }

    #[test]
    fn a_pod_too_big_for_every_type_is_explained() {
        let small = it("small", 1900, "3Gi", 10, 0.05);
        let p = plan(&[pod("huge", 64_000, "1Gi")], &[], &[pool(vec![&small])]);
        assert!(p.claims.is_empty());
        assert_eq!(p.unschedulable.len(), 1);
        assert!(p.unschedulable[0].1.contains("nodepool/default"));
    }

    #[test]
    fn opens_a_second_claim_when_the_largest_type_is_full() {
        let small = it("small", 1900, "3Gi", 10, 0.05);
        let pods: Vec<PendingPod> = (0..6)
            .map(|i| pod(&format!("p{i}"), 500, "512Mi"))
            .collect();
        let p = plan(&pods, &[], &[pool(vec![&small])]);
        assert_eq!(p.claims.len(), 2);
        assert_eq!(p.claims.iter().map(|c| c.pods.len()).sum::<usize>(), 6);
    }
}
