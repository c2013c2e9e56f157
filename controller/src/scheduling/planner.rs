//! Pure bin packing: pending pods onto existing capacity first, then onto as few new NodeClaims as the
//! NodePools allow, each claim keeping every instance type that still fits all its pods, cheapest first.
//!
//! Plain data in, plain data out: no async, no I/O. Pods are packed largest first; a pod's node affinity
//! alternatives are tried in order (preferences first, relaxed one at a time, then the required OR-terms);
//! every pod left over carries one reason per NodePool.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Toleration;

use crate::cloud::CapacityType;
use crate::crds::{Taint, labels};
use crate::instancetype::{InstanceType, Offering};
use crate::kube::ObjectKey;
use crate::resources::{CPU, MEMORY, Resources};
use crate::scheduling::requirements::Requirements;
use crate::scheduling::taints::untolerated;

/// A pod waiting for capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPod {
    pub key: ObjectKey,
    pub requests: Resources,
    /// Node requirement alternatives, strictest first (nodeSelector and affinity folded in); the pod may go
    /// wherever the first satisfiable alternative allows.
    pub requirements: Vec<Requirements>,
    pub tolerations: Vec<Toleration>,
}

impl PendingPod {
    /// A pod with no constraints beyond its requests.
    pub fn simple(key: ObjectKey, requests: Resources) -> Self {
        PendingPod {
            key,
            requests,
            requirements: vec![Requirements::default()],
            tolerations: Vec::new(),
        }
    }
}

/// Capacity that exists or is on its way: a node, or a NodeClaim not yet carrying pods.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingCapacity {
    pub name: String,
    pub available: Resources,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
}

/// What one NodePool can launch.
#[derive(Debug, Clone)]
pub struct PoolOptions<'a> {
    pub name: String,
    pub weight: i32,
    /// The pool's requirements with its template labels folded in as `In`.
    pub requirements: Requirements,
    pub taints: Vec<Taint>,
    pub instance_types: Vec<&'a InstanceType>,
    /// Requests of the DaemonSet pods every new node of this pool will run.
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
    /// The pool's requirements narrowed by every pod on the claim.
    pub requirements: Requirements,
    /// Fitting instance types, cheapest allowed offering first.
    pub instance_types: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub claims: Vec<ClaimPlan>,
    /// Pods that fit capacity already there or on its way.
    pub on_existing: Vec<(ObjectKey, String)>,
    /// Pods nothing can host, with one reason per NodePool.
    pub unschedulable: Vec<(ObjectKey, String)>,
}

struct OpenClaim<'p, 'a> {
    pool: &'p PoolOptions<'a>,
    pods: Vec<ObjectKey>,
    requests: Resources,
    requirements: Requirements,
    types: Vec<&'a InstanceType>,
}

/// Offerings of an instance type that the requirements allow (zone and capacity type live on offerings).
fn allowed_offerings<'a>(
    it: &'a InstanceType,
    reqs: &'a Requirements,
) -> impl Iterator<Item = &'a Offering> + 'a {
    it.offerings.iter().filter(move |o| {
        o.available
            && reqs.get(labels::ZONE).is_none_or(|r| r.has(&o.zone))
            && reqs
                .get(labels::CAPACITY_TYPE)
                .is_none_or(|r| r.has(o.capacity_type.as_str()))
    })
}

/// Whether an instance type can satisfy the requirements: its labels, and at least one offering.
fn type_allowed(it: &InstanceType, reqs: &Requirements) -> bool {
    let label_ok = reqs.0.values().all(|r| {
        if r.key == labels::ZONE || r.key == labels::CAPACITY_TYPE {
            return true;
        }
        match it.labels.get(&r.key) {
            Some(v) => r.has(v),
            // Labels the node gets from elsewhere (the pool's template, the hostname) are checked on the
            // pool side; an instance type not knowing a label neither proves nor breaks it.
            None => true,
        }
    });
    label_ok && allowed_offerings(it, reqs).next().is_some()
}

fn cheapest_price(it: &InstanceType, reqs: &Requirements) -> f64 {
    allowed_offerings(it, reqs)
        .map(|o| o.price)
        .fold(f64::INFINITY, f64::min)
}

fn within_limits(pool: &PoolOptions, it: &InstanceType) -> bool {
    pool.remaining_limits
        .as_ref()
        .is_none_or(|rem| rem.0.iter().all(|(k, v)| it.capacity.get(k) <= *v))
}

/// minValues: each such requirement must still see that many distinct values among the claim's types.
fn min_values_hold(types: &[&InstanceType], reqs: &Requirements) -> bool {
    reqs.0
        .values()
        .filter_map(|r| r.min_values.map(|m| (r, m)))
        .all(|(r, m)| {
            let distinct: BTreeSet<&str> = types
                .iter()
                .filter_map(|it| it.labels.get(&r.key).map(String::as_str))
                .collect();
            distinct.len() >= m
        })
}

/// Try to place `pod` on a new claim of `pool`; the reason it cannot, if it cannot.
fn open_on<'p, 'a>(
    pool: &'p PoolOptions<'a>,
    pod: &PendingPod,
) -> Result<OpenClaim<'p, 'a>, String> {
    if let Some(t) = untolerated(&pod.tolerations, &pool.taints) {
        return Err(format!(
            "taint {}={}:{} not tolerated",
            t.key,
            t.value.as_deref().unwrap_or(""),
            t.effect
        ));
    }
    let mut last_err = String::from("no requirement alternative");
    for alt in &pod.requirements {
        if let Err(e) = pool.requirements.compatible(alt) {
            last_err = e;
            continue;
        }
        let reqs = pool.requirements.merged(alt);
        let mut total = pool.daemon_overhead.clone();
        total.add(&pod.requests);
        let allowed: Vec<&InstanceType> = pool
            .instance_types
            .iter()
            .copied()
            .filter(|it| type_allowed(it, &reqs))
            .collect();
        if allowed.is_empty() {
            last_err = "no instance type offered in the allowed zones and capacity types matches the requirements".into();
            continue;
        }
        let fitting: Vec<&InstanceType> = allowed
            .iter()
            .copied()
            .filter(|it| it.allocatable.fits(&total))
            .collect();
        if fitting.is_empty() {
            let largest = allowed
                .iter()
                .max_by_key(|it| (it.allocatable.get(CPU), it.allocatable.get(MEMORY)))
                .map_or("none", |it| it.name.as_str());
            let short: Vec<&str> = total
                .0
                .iter()
                .filter(|(k, v)| allowed.iter().all(|it| it.allocatable.get(k) < **v))
                .map(|(k, _)| k.as_str())
                .collect();
            last_err = format!(
                "no instance type fits {} pods={} (incl. daemonset overhead {}); largest candidate {largest}{}",
                total,
                total.get(crate::resources::PODS).units(),
                pool.daemon_overhead,
                if short.is_empty() {
                    String::new()
                } else {
                    format!(" lacks {}", short.join(","))
                }
            );
            continue;
        }
        let types: Vec<&InstanceType> = fitting
            .into_iter()
            .filter(|it| within_limits(pool, it))
            .collect();
        if types.is_empty() {
            last_err = "every fitting instance type would exceed the NodePool's limits".into();
            continue;
        }
        if !min_values_hold(&types, &reqs) {
            last_err = "too few instance types left to satisfy minValues".into();
            continue;
        }
        return Ok(OpenClaim {
            pool,
            pods: vec![pod.key.clone()],
            requests: total,
            requirements: reqs,
            types,
        });
    }
    Err(last_err)
}

/// A pod asking for an accelerator gets a node of its own only when joining a claim would both raise the claim's price by more than
/// this many times the price of a node of its own, and leave it on a type that is this many times dearer per
/// pod-sized slot. Every extra node also costs daemonsets, kube-reserved, an address and a launch that can
/// fail, and spot prices wobble by type, so near-ties pack as Karpenter does; big steps (a 4-GPU node for
/// 1-GPU pods) do not.
pub const SPLIT_THRESHOLD: f64 = 1.25;

/// Whether a pod asks for an accelerator-like resource (anything beyond cpu, memory, pods and storage),
/// where instance sizes jump in large, unevenly priced steps. Only such pods are kept off bigger nodes;
/// cpu and memory pack greedily, as in Karpenter, and consolidation tidies up later.
fn scarce_request(pod: &PendingPod) -> bool {
    pod.requests.0.iter().any(|(k, v)| {
        v.0 > 0
            && ![
                CPU,
                MEMORY,
                crate::resources::PODS,
                crate::resources::EPHEMERAL_STORAGE,
            ]
            .contains(&k.as_str())
    })
}

/// What a pod would cost on a node of its own: that node's price, and its price per pod-sized slot.
#[derive(Debug, Clone, Copy)]
struct Alone {
    price: f64,
    per_slot: f64,
}

/// The claim's cheapest type and its price.
fn cheapest_type<'a>(
    types: &[&'a InstanceType],
    reqs: &Requirements,
) -> Option<(&'a InstanceType, f64)> {
    types
        .iter()
        .map(|it| (*it, cheapest_price(it, reqs)))
        .min_by(|a, b| a.1.total_cmp(&b.1).then(a.0.name.cmp(&b.0.name)))
}

/// Price per pod-sized slot: the type's price over how many whole times `request` fits in it (by the
/// scarcest requested resource).
fn cost_per_fit(it: &InstanceType, price: f64, request: &Resources) -> f64 {
    let fits = request
        .0
        .iter()
        .filter(|(k, v)| v.0 > 0 && k.as_str() != crate::resources::PODS)
        .map(|(k, v)| (it.allocatable.get(k).0 / v.0) as f64)
        .fold(f64::INFINITY, f64::min);
    // Whole pods only: a type that holds 1.9 pods holds one.
    if fits.is_finite() && fits >= 1.0 {
        price / fits
    } else {
        price
    }
}

/// Try to add `pod` to an open claim, narrowing its requirements and instance types. Beyond Karpenter: the
/// pod stays out when joining is clearly dearer than a node of its own ([`SPLIT_THRESHOLD`]), so three
/// one-GPU pods get three small GPU nodes, not one four-GPU node at 1.4 times the price per GPU.
fn add_to(claim: &mut OpenClaim, pod: &PendingPod, alone: Option<Alone>) -> bool {
    if untolerated(&pod.tolerations, &claim.pool.taints).is_some() {
        return false;
    }
    for alt in &pod.requirements {
        if claim.requirements.compatible(alt).is_err() {
            continue;
        }
        let reqs = claim.requirements.merged(alt);
        let mut total = claim.requests.clone();
        total.add(&pod.requests);
        let still: Vec<&InstanceType> = claim
            .types
            .iter()
            .copied()
            .filter(|it| type_allowed(it, &reqs) && it.allocatable.fits(&total))
            .collect();
        let cheaper_together = match (
            alone,
            cheapest_type(&still, &reqs),
            cheapest_type(&claim.types, &claim.requirements),
        ) {
            (Some(alone), Some((after, after_price)), Some((_, before_price)))
                if scarce_request(pod) =>
            {
                let marginal = after_price - before_price;
                let per_slot = cost_per_fit(after, after_price, &pod.requests);
                !(marginal > alone.price * SPLIT_THRESHOLD
                    && per_slot > alone.per_slot * SPLIT_THRESHOLD)
            }
            _ => true,
        };
        if !still.is_empty() && min_values_hold(&still, &reqs) && cheaper_together {
            claim.requirements = reqs;
            claim.requests = total;
            claim.types = still;
            claim.pods.push(pod.key.clone());
            return true;
        }
    }
    false
}

fn fits_existing(cap: &ExistingCapacity, pod: &PendingPod) -> bool {
    untolerated(&pod.tolerations, &cap.taints).is_none()
        && pod
            .requirements
            .iter()
            .any(|r| r.matches_labels(&cap.labels))
        && cap.available.fits(&pod.requests)
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
            if fits_existing(cap, pod) {
                cap.available.sub(&pod.requests);
                out.on_existing.push((pod.key.clone(), cap.name.clone()));
                continue 'pods;
            }
        }
        // What this pod would cost on a node of its own, per pool, to judge whether sharing pays.
        // Only accelerator pods weigh a node of their own (see `add_to`); skip the work for the rest.
        let alone: BTreeMap<&str, Option<Alone>> = pools_by_preference
            .iter()
            .filter(|_| scarce_request(pod))
            .map(|p| {
                let own = open_on(p, pod).ok().and_then(|c| {
                    cheapest_type(&c.types, &c.requirements).map(|(it, price)| Alone {
                        price,
                        per_slot: cost_per_fit(it, price, &pod.requests),
                    })
                });
                (p.name.as_str(), own)
            })
            .collect();
        for claim in open.iter_mut() {
            let own = alone.get(claim.pool.name.as_str()).copied().flatten();
            if add_to(claim, pod, own) {
                continue 'pods;
            }
        }
        let mut reasons = Vec::new();
        for pool in &pools_by_preference {
            match open_on(pool, pod) {
                Ok(claim) => {
                    open.push(claim);
                    continue 'pods;
                }
                Err(why) => reasons.push(format!("nodepool \"{}\": {why}", pool.name)),
            }
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
                .map(|it| (cheapest_price(it, &c.requirements), it.name.as_str()))
                .collect();
            types.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
            ClaimPlan {
                pool: c.pool.name.clone(),
                pods: c.pods,
                requests: c.requests,
                requirements: c.requirements,
                instance_types: types.into_iter().map(|(_, n)| n.to_string()).collect(),
            }
        })
        .collect();
    out
}

/// The capacity types a claim's requirements allow, spot first (Karpenter prefers spot when allowed).
pub fn capacity_types(reqs: &Requirements) -> Vec<CapacityType> {
    [CapacityType::Spot, CapacityType::OnDemand]
        .into_iter()
        .filter(|c| {
            reqs.get(labels::CAPACITY_TYPE)
                .is_none_or(|r| r.has(c.as_str()))
        })
        .collect()
}

#[cfg(test)]
mod tests;
