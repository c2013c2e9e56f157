//! Pure bin packing: pending pods onto existing capacity first, then onto as few new NodeClaims as the
//! NodePools allow, each claim keeping every instance type that still fits all its pods, cheapest first.
//!
//! Plain data in, plain data out: no async, no I/O. Pods are packed largest first. For each pod the planner
//! walks its relaxation steps in Karpenter's order, one change per step, over all capacity each time: the
//! required OR-terms in turn, then without preferred pod affinity, then without preferred anti-affinity,
//! then the lighter preferred node-affinity terms one at a time (heaviest dropped first), then without
//! `ScheduleAnyway` spreads, and last tolerating PreferNoSchedule taints (see `groups::relaxation_steps`).
//! Every pod left over carries one reason per NodePool.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use k8s_openapi::api::core::v1::Toleration;

use crate::cloudprovider::CapacityType;
use crate::cloudprovider::{InstanceType, Offering};
use crate::crds::{Taint, labels};
use crate::kube::ObjectKey;
use crate::resources::{CPU, MEMORY, NODES, PODS, Resources};
use crate::scheduling::requirements::{Requirement, Requirements};
use crate::scheduling::taints::untolerated;
use crate::scheduling::topology::{HostPort, PodTerm, Strength, TermKind, TopologyTerm};

/// A pod waiting for capacity.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPod {
    pub key: ObjectKey,
    pub requests: Resources,
    /// Node requirement alternatives in relaxation order (nodeSelector and affinity folded in): first one per
    /// OR-ed required node-affinity term, each with the heaviest preferred term; then the last required term
    /// with each lighter preferred term in turn, and with none.
    pub requirements: Vec<Requirements>,
    /// How many of `requirements` are the required terms (the rest relax preferred node affinity).
    pub required_alternatives: usize,
    pub tolerations: Vec<Toleration>,
    pub labels: BTreeMap<String, String>,
    /// Topology spread and pod (anti-)affinity terms, hard and soft.
    pub topology: Vec<PodTerm>,
    pub host_ports: Vec<HostPort>,
    /// A CapacityBuffer's chunk, not a real pod: placed after every real pod, so headroom never takes a
    /// real pod's place (Karpenter orders only by size, so a chunk may).
    pub headroom: bool,
}

impl PendingPod {
    /// A pod with no constraints beyond its requests.
    pub fn simple(key: ObjectKey, requests: Resources) -> Self {
        PendingPod {
            key,
            requests,
            requirements: vec![Requirements::default()],
            required_alternatives: 1,
            tolerations: Vec::new(),
            labels: BTreeMap::new(),
            topology: Vec::new(),
            host_ports: Vec::new(),
            headroom: false,
        }
    }
}

/// A pod already bound to (or headed for) existing capacity: counted by topology terms, and its required
/// anti-affinity and host ports keep others away.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExistingPod {
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub anti_affinity: Vec<TopologyTerm>,
    pub host_ports: Vec<HostPort>,
}

/// Capacity that exists or is on its way: a node, or a NodeClaim not yet carrying pods.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingCapacity {
    pub name: String,
    pub available: Resources,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub pods: Vec<ExistingPod>,
}

/// What one NodePool can launch.
#[derive(Debug, Clone)]
pub struct PoolOptions<'a> {
    pub name: String,
    pub weight: i32,
    /// The pool's requirements with its template labels folded in as `In`.
    pub requirements: Requirements,
    pub taints: Vec<Taint>,
    /// The catalog's types as nodes of this pool's class would be (`CloudProvider::sized_for`).
    pub instance_types: Vec<std::borrow::Cow<'a, InstanceType>>,
    /// `MIN_VALUES_POLICY=BestEffort`: a new claim whose types cannot meet a `minValues` is opened anyway
    /// (the provisioner relaxes the claim's minValues and says so); Strict (Karpenter's default) refuses it.
    pub min_values_best_effort: bool,
    /// Requests of the DaemonSet pods every new node of this pool will run.
    pub daemon_overhead: Resources,
    /// Host ports those DaemonSet pods hold on every new node, with the DaemonSet's name.
    pub daemon_ports: Vec<(HostPort, String)>,
    /// What the pool may still add before hitting `spec.limits` (None: unlimited); `nodes` counts claims.
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
    /// `minValues` the types fall short of (BestEffort only): requirement key -> distinct values they have.
    pub min_values_relaxed: BTreeMap<String, usize>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub claims: Vec<ClaimPlan>,
    /// Pods that fit capacity already there or on its way.
    pub on_existing: Vec<(ObjectKey, String)>,
    /// Pods nothing can host, with one reason per NodePool.
    pub unschedulable: Vec<(ObjectKey, String)>,
    /// CapacityBuffer chunks nothing can host (kept apart: no pod waits on them).
    pub headroom_unschedulable: Vec<(ObjectKey, String)>,
}

/// Why a candidate turned a pod away: `Settled` reasons hold for every later pod of the same shape (the
/// candidate only fills up and narrows), so the scan may skip it from then on.
enum Reject {
    Settled,
    ForNow,
}

/// Hostname-keyed topology on one candidate: pods each group counts here, and required anti-affinity
/// terms held by pods here.
#[derive(Default)]
struct HostCounts {
    counts: BTreeMap<usize, u32>,
    owners: BTreeMap<usize, u32>,
}

struct OpenClaim<'a> {
    pool: usize,
    hc: HostCounts,
    pods: Vec<ObjectKey>,
    requests: Resources,
    requirements: Requirements,
    types: Vec<&'a InstanceType>,
    /// Element-wise max / min allocatable over `types`: a quick no, and a quick "all still fit".
    max_alloc: Resources,
    min_alloc: Resources,
    ports: Vec<HostPort>,
    /// Pods counted by a group whose domain this claim has not chosen yet (group -> pods).
    unrecorded: BTreeMap<usize, u32>,
    /// The capacity reservation whose slot the claim holds: pods that would leave it no type of that
    /// reservation go elsewhere (Karpenter's strict reserved-offering mode).
    reserved: Option<String>,
}

impl<'a> OpenClaim<'a> {
    fn set_types(&mut self, types: Vec<&'a InstanceType>) {
        // Types only ever narrow: the same count means the same set, and the bounds still hold.
        if types.len() == self.types.len() && !self.max_alloc.0.is_empty() {
            return;
        }
        let (max, min) = alloc_bounds(&types);
        self.max_alloc = max;
        self.min_alloc = min;
        self.types = types;
    }
}

fn alloc_bounds(types: &[&InstanceType]) -> (Resources, Resources) {
    let mut max = Resources::default();
    let mut min = types
        .first()
        .map(|t| t.allocatable.clone())
        .unwrap_or_default();
    for t in types {
        max.max_with(&t.allocatable);
        min.min_with(&t.allocatable);
    }
    (max, min)
}

/// Existing capacity during one plan: borrowed, with only what placing pods changes owned (so a plan over
/// a large cluster copies no labels or pod lists).
struct Slot<'a> {
    cap: &'a ExistingCapacity,
    /// Copied on the first placement only.
    available: std::borrow::Cow<'a, Resources>,
    /// Host ports of pods placed here in this plan (those of pods already there are on `cap.pods`).
    ports: Vec<HostPort>,
    hc: HostCounts,
}

/// Offerings of an instance type that the requirements allow (zone and capacity type live on offerings).
fn allowed_offerings<'a>(
    it: &'a InstanceType,
    reqs: &'a Requirements,
) -> impl Iterator<Item = &'a Offering> + 'a {
    let zone = reqs.get(labels::ZONE);
    let ct = reqs.get(labels::CAPACITY_TYPE);
    it.offerings.iter().filter(move |o| {
        o.available
            && zone.is_none_or(|r| r.has(&o.zone))
            && ct.is_none_or(|r| r.has(o.capacity_type.as_str()))
            && reservation_allowed(o, reqs)
    })
}

/// The reservation labels live on offerings: a reserved offering's must satisfy the requirements, and any
/// other offering's node lacks them, which only a requirement allowing absence accepts.
pub fn reservation_allowed(o: &Offering, reqs: &Requirements) -> bool {
    labels::RESERVATION_LABELS.iter().all(|key| {
        reqs.get(key).is_none_or(|r| {
            r.satisfied_by(
                o.reservation
                    .as_ref()
                    .and_then(|res| res.labels.get(*key))
                    .map(String::as_str),
            )
        })
    })
}

/// Whether an instance type can satisfy the requirements: its labels, and at least one offering.
fn type_allowed(it: &InstanceType, reqs: &Requirements) -> bool {
    let label_ok = reqs.0.values().all(|r| {
        if r.key == labels::ZONE
            || r.key == labels::CAPACITY_TYPE
            || labels::RESERVATION_LABELS.contains(&r.key.as_str())
        {
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

/// The cheapest available offering of a type that the requirements allow (infinity when none).
pub fn cheapest_price(it: &InstanceType, reqs: &Requirements) -> f64 {
    allowed_offerings(it, reqs)
        .map(|o| o.price)
        .fold(f64::INFINITY, f64::min)
}

/// Whether a node of this type stays within what the pool may still add (`nodes` counts one).
fn within_limits(remaining: Option<&Resources>, it: &InstanceType) -> bool {
    remaining.is_none_or(|rem| {
        rem.0.iter().all(|(k, v)| {
            if k == NODES {
                v.units() >= 1
            } else {
                it.capacity.get(k) <= *v
            }
        })
    })
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

/// Each `minValues` the types fall short of, with how many distinct values they do have.
fn min_values_shortfall(types: &[&InstanceType], reqs: &Requirements) -> BTreeMap<String, usize> {
    reqs.0
        .values()
        .filter_map(|r| {
            let m = r.min_values?;
            let distinct: BTreeSet<&str> = types
                .iter()
                .filter_map(|it| it.labels.get(&r.key).map(String::as_str))
                .collect();
            (distinct.len() < m).then(|| (r.key.clone(), distinct.len()))
        })
        .collect()
}

/// A pod asking for an accelerator gets a node of its own only when joining a claim would both raise the
/// claim's price by more than this many times the price of a node of its own, and leave it on a type that is
/// this many times dearer per pod-sized slot. Every extra node also costs daemonsets, kube-reserved, an
/// address and a launch that can fail, and spot prices wobble by type, so near-ties pack as Karpenter does;
/// big steps (a 4-GPU node for 1-GPU pods) do not.
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
                PODS,
                crate::resources::EPHEMERAL_STORAGE,
                crate::resources::EBS_ATTACHMENTS,
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

/// The cheapest of `types` and its price.
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
        .filter(|(k, v)| v.0 > 0 && k.as_str() != PODS)
        .map(|(k, v)| (it.allocatable.get(k).0 / v.0) as f64)
        .fold(f64::INFINITY, f64::min);
    // Whole pods only: a type that holds 1.9 pods holds one.
    if fits.is_finite() && fits >= 1.0 {
        price / fits
    } else {
        price
    }
}

/// A taint that keeps the pod off: NoSchedule and NoExecute always, PreferNoSchedule until the last
/// relaxation step tolerates it (as Karpenter treats it).
fn blocking_taint<'t>(
    tolerations: &[Toleration],
    taints: &'t [Taint],
    pns_ok: bool,
) -> Option<&'t Taint> {
    untolerated(tolerations, taints).or_else(|| {
        if pns_ok {
            return None;
        }
        taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule")
            .find(|taint| {
                !tolerations
                    .iter()
                    .any(|t| crate::scheduling::taints::tolerates(t, taint))
            })
    })
}

fn ports_conflict(have: &[HostPort], want: &[HostPort]) -> bool {
    want.iter().any(|w| have.iter().any(|h| h.conflicts(w)))
}

fn taint_reason(t: &Taint) -> String {
    format!(
        "taint {}={}:{} not tolerated",
        t.key,
        t.value.as_deref().unwrap_or(""),
        t.effect
    )
}

// ---------------------------------------------------------------------------------------------------------
// Topology: counted groups and the domains a candidate could be in.

fn try_existing(
    topo: &Topology,
    slot: &Slot,
    info: &PodInfo,
    step: Step,
) -> Result<(), (Reject, String)> {
    let pod = info.pod;
    let cap = slot.cap;
    if !slot.available.fits(&pod.requests)
        || blocking_taint(&pod.tolerations, &cap.taints, step.pns).is_some()
        || ports_conflict(&slot.ports, &pod.host_ports)
        || (!pod.host_ports.is_empty()
            && cap
                .pods
                .iter()
                .any(|p| ports_conflict(&p.host_ports, &pod.host_ports)))
    {
        return Err((Reject::Settled, String::new()));
    }
    let alt = &pod.requirements[step.alt];
    if !alt.matches_labels(&cap.labels) {
        return Err((Reject::Settled, String::new()));
    }
    let at = At::Node {
        labels: &cap.labels,
    };
    topo.fit(info, step.level, alt, &at, &slot.hc).map(|_| ())
}

/// How a claim changes when a pod joins: new requirements and types, where they change.
struct Join<'a> {
    requirements: Option<Requirements>,
    types: Option<Vec<&'a InstanceType>>,
}

/// Try to add a pod to an open claim, narrowing its requirements and instance types. Beyond Karpenter: an
/// accelerator pod stays out when joining is clearly dearer than a node of its own ([`SPLIT_THRESHOLD`]),
/// so three one-GPU pods get three small GPU nodes, not one four-GPU node at 1.4 times the price per GPU.
#[allow(clippy::too_many_arguments)]
fn try_claim<'a>(
    topo: &Topology,
    claim: &OpenClaim<'a>,
    taints: &[Taint],
    info: &PodInfo,
    step: Step,
    alone: Option<Alone>,
    quick: &Quick,
) -> Result<Join<'a>, Reject> {
    let pod = info.pod;
    let level = step.level;
    if !claim.max_alloc.fits_sum(&claim.requests, &pod.requests)
        || blocking_taint(&pod.tolerations, taints, step.pns).is_some()
        || ports_conflict(&claim.ports, &pod.host_ports)
    {
        return Err(Reject::Settled);
    }
    let mut why = Reject::Settled;
    // One alternative per step; the loop's `continue`s are its ways of saying no.
    for alt in std::iter::once(&pod.requirements[step.alt]) {
        if claim.requirements.compatible(alt).is_err() {
            continue;
        }
        let settled_elsewhere = quick.settled.iter().any(|(key, open)| {
            claim
                .requirements
                .get(key)
                .and_then(|r| r.finite_values())
                .filter(|v| v.len() == 1)
                .is_some_and(|v| v.iter().all(|d| !open.contains(d.as_str())))
        });
        let too_many = quick.slack.iter().any(|(gid, slack)| {
            claim
                .unrecorded
                .get(gid)
                .is_some_and(|n| *n as i64 > *slack)
        });
        if settled_elsewhere || too_many {
            why = Reject::ForNow;
            continue;
        }
        let merged = (!alt.0.is_empty()).then(|| claim.requirements.merged(alt));
        let base = merged.as_ref().unwrap_or(&claim.requirements);
        let at = At::Claim {
            reqs: base,
            unrecorded: Some(&claim.unrecorded),
        };
        let pins = match topo.fit(info, level, alt, &at, &claim.hc) {
            Ok(p) => p,
            Err((r, _)) => {
                if matches!(r, Reject::ForNow) {
                    why = Reject::ForNow;
                }
                continue;
            }
        };
        let narrowed = if pins.0.is_empty() {
            merged
        } else {
            Some(base.merged(&pins))
        };
        let types = match &narrowed {
            None if claim.min_alloc.fits_sum(&claim.requests, &pod.requests) => None,
            _ => {
                let mut total = claim.requests.clone();
                total.add(&pod.requests);
                let still: Vec<&InstanceType> = claim
                    .types
                    .iter()
                    .copied()
                    .filter(|it| {
                        it.allocatable.fits(&total)
                            && narrowed.as_ref().is_none_or(|r| type_allowed(it, r))
                    })
                    .collect();
                let reqs = narrowed.as_ref().unwrap_or(&claim.requirements);
                if still.is_empty() || !min_values_hold(&still, reqs) {
                    // A domain pin is chosen afresh for each pod; another pin may leave types that fit.
                    if !pins.0.is_empty() {
                        why = Reject::ForNow;
                    }
                    continue;
                }
                Some(still)
            }
        };
        if let Some(id) = &claim.reserved {
            let reqs = narrowed.as_ref().unwrap_or(&claim.requirements);
            let still = types.as_deref().unwrap_or(&claim.types);
            let keeps = still.iter().any(|it| {
                allowed_offerings(it, reqs)
                    .any(|o| o.reservation.as_ref().is_some_and(|r| r.id == *id))
            });
            if !keeps {
                // The claim only fills and narrows: this shape never fits it again.
                continue;
            }
        }
        if let Some(alone) = alone.filter(|_| scarce_request(pod)) {
            let reqs = narrowed.as_ref().unwrap_or(&claim.requirements);
            let still = types.as_deref().unwrap_or(&claim.types);
            if let (Some((after, after_price)), Some((_, before_price))) = (
                cheapest_type(still, reqs),
                cheapest_type(&claim.types, &claim.requirements),
            ) {
                let marginal = after_price - before_price;
                let per_slot = cost_per_fit(after, after_price, &pod.requests);
                if marginal > alone.price * SPLIT_THRESHOLD
                    && per_slot > alone.per_slot * SPLIT_THRESHOLD
                {
                    why = Reject::ForNow;
                    continue;
                }
            }
        }
        return Ok(Join {
            requirements: narrowed,
            types,
        });
    }
    Err(why)
}

/// Fitting types of a pool with their allocatable bounds, or why none fit.
type Fitting<'a> = Result<(Vec<&'a InstanceType>, Resources, Resources), String>;

/// Instance types of a pool that could carry `total` under `reqs`, or why none can. Memoised: pods of one
/// Deployment ask the same question again and again.
type TypeMemo<'a> = BTreeMap<u64, Vec<(usize, Requirements, Resources, Fitting<'a>)>>;

fn pool_types<'a>(
    memo: &mut TypeMemo<'a>,
    pool_ix: usize,
    pool: &'a PoolOptions<'a>,
    reqs: &Requirements,
    total: &Resources,
) -> Fitting<'a> {
    let mut h = DefaultHasher::new();
    pool_ix.hash(&mut h);
    reqs.hash(&mut h);
    total.hash(&mut h);
    let bucket = memo.entry(h.finish()).or_default();
    if let Some((_, _, _, r)) = bucket
        .iter()
        .find(|(p, r, t, _)| *p == pool_ix && r == reqs && t == total)
    {
        return r.clone();
    }
    let allowed: Vec<&InstanceType> = pool
        .instance_types
        .iter()
        .map(|it| &**it)
        .filter(|it| type_allowed(it, reqs))
        .collect();
    let result = if allowed.is_empty() {
        Err("no instance type offered in the allowed zones and capacity types matches the requirements".into())
    } else {
        let fitting: Vec<&InstanceType> = allowed
            .iter()
            .copied()
            .filter(|it| it.allocatable.fits(total))
            .collect();
        if fitting.is_empty() {
            // The largest candidate by the resource that is shortest: the one the pods need most of
            // relative to the most any allowed type has (memory-bound pods name the biggest-memory type).
            let most = |k: &str| {
                allowed
                    .iter()
                    .map(|it| it.allocatable.get(k))
                    .max()
                    .unwrap_or_default()
            };
            let tightest = total
                .0
                .iter()
                .filter(|(_, need)| need.0 > 0)
                .max_by(|(a, need_a), (b, need_b)| {
                    // need_a / most(a) vs need_b / most(b), cross-multiplied; ties by name.
                    let (ma, mb) = (most(a).0.max(1), most(b).0.max(1));
                    (need_a.0 * mb).cmp(&(need_b.0 * ma)).then(b.cmp(a))
                })
                .map_or(CPU, |(k, _)| k.as_str());
            let largest = allowed
                .iter()
                .max_by_key(|it| {
                    (
                        it.allocatable.get(tightest),
                        it.allocatable.get(CPU),
                        it.allocatable.get(MEMORY),
                    )
                })
                .map_or("none", |it| it.name.as_str());
            let short: Vec<&str> = total
                .0
                .iter()
                .filter(|(k, v)| allowed.iter().all(|it| it.allocatable.get(k) < **v))
                .map(|(k, _)| k.as_str())
                .collect();
            Err(format!(
                "no instance type fits {} pods={} (incl. daemonset overhead {}); largest candidate {largest}{}",
                total,
                total.get(PODS).units(),
                pool.daemon_overhead,
                if short.is_empty() {
                    String::new()
                } else {
                    format!(" lacks {}", short.join(","))
                }
            ))
        } else {
            let (max, min) = alloc_bounds(&fitting);
            Ok((fitting, max, min))
        }
    };
    bucket.push((pool_ix, reqs.clone(), total.clone(), result.clone()));
    result
}

/// A new claim's requirements, types and their allocatable bounds.
type NewClaim<'a> = (Requirements, Vec<&'a InstanceType>, Resources, Resources);

/// Try to place a pod on a new claim of a pool; the claim's requirements and types, or why not.
#[allow(clippy::too_many_arguments)]
fn open_on<'a>(
    topo: &Topology,
    memo: &mut TypeMemo<'a>,
    pool_ix: usize,
    pool: &'a PoolOptions<'a>,
    remaining: Option<&Resources>,
    info: &PodInfo,
    step: Step,
) -> Result<NewClaim<'a>, String> {
    let pod = info.pod;
    let level = step.level;
    if let Some(t) = blocking_taint(&pod.tolerations, &pool.taints, step.pns) {
        return Err(taint_reason(t));
    }
    if remaining.is_some_and(|r| r.0.get(NODES).is_some_and(|n| n.units() < 1)) {
        return Err("the NodePool's `nodes` limit is reached".into());
    }
    if let Some((port, ds)) = pool
        .daemon_ports
        .iter()
        .find(|(held, _)| pod.host_ports.iter().any(|p| p.conflicts(held)))
    {
        return Err(format!(
            "host port {}/{} is held by DaemonSet {ds} on every node of the pool",
            port.port, port.protocol
        ));
    }
    let mut last_err = String::from("no requirement alternative");
    let mut total = pool.daemon_overhead.clone();
    total.add(&pod.requests);
    let empty = HostCounts::default();
    for alt in std::iter::once(&pod.requirements[step.alt]) {
        if let Err(e) = pool.requirements.compatible(alt) {
            last_err = e;
            continue;
        }
        let mut reqs = pool.requirements.merged(alt);
        let at = At::Claim {
            reqs: &reqs,
            unrecorded: None,
        };
        match topo.fit(info, level, alt, &at, &empty) {
            Ok(pins) if !pins.0.is_empty() => reqs = reqs.merged(&pins),
            Ok(_) => {}
            Err((_, why)) => {
                last_err = why;
                continue;
            }
        }
        let (fitting, mut max, mut min) = match pool_types(memo, pool_ix, pool, &reqs, &total) {
            Ok(f) => f,
            Err(e) => {
                last_err = e;
                continue;
            }
        };
        let n = fitting.len();
        let types: Vec<&InstanceType> = fitting
            .into_iter()
            .filter(|it| within_limits(remaining, it))
            .collect();
        if types.is_empty() {
            last_err = "every fitting instance type would exceed the NodePool's limits".into();
            continue;
        }
        if !min_values_hold(&types, &reqs) && !pool.min_values_best_effort {
            last_err = "too few instance types left to satisfy minValues".into();
            continue;
        }
        if types.len() != n {
            (max, min) = alloc_bounds(&types);
        }
        return Ok((reqs, types, max, min));
    }
    Err(last_err)
}

/// Where the scan of each candidate list may start for a pod shape: everything before was turned away for
/// reasons that only harden.
#[derive(Default, Clone, Copy)]
struct Cursor {
    existing: usize,
    claims: usize,
}

/// A pool's instance types sorted by price under one pair of zone and capacity-type requirements, memoised
/// per pool and pair: claims share a handful of such pairs, and sorting each claim's list anew dominated.
type PriceMemo = BTreeMap<(usize, String), Vec<usize>>;

/// The claim's types, cheapest allowed offering first (name breaks ties).
fn claim_types_by_price(
    memo: &mut PriceMemo,
    pool_ix: usize,
    pool: &PoolOptions,
    position: &BTreeMap<usize, usize>,
    c: &OpenClaim,
) -> Vec<String> {
    let key = format!(
        "{:?}|{:?}|{:?}",
        c.requirements.get(labels::ZONE),
        c.requirements.get(labels::CAPACITY_TYPE),
        c.requirements.get(labels::CAPACITY_RESERVATION_ID)
    );
    let sorted = memo.entry((pool_ix, key)).or_insert_with(|| {
        let mut v: Vec<(f64, &str, usize)> = pool
            .instance_types
            .iter()
            .enumerate()
            .map(|(i, it)| (cheapest_price(it, &c.requirements), it.name.as_str(), i))
            .collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
        v.into_iter().map(|(_, _, i)| i).collect()
    });
    let mut member = vec![false; pool.instance_types.len()];
    for it in &c.types {
        // Addresses are only looked up here, never iterated: the output order does not depend on them.
        member[position[&(*it as *const InstanceType as usize)]] = true;
    }
    sorted
        .iter()
        .filter(|&&i| member[i])
        .map(|&i| pool.instance_types[i].name.clone())
        .collect()
}

/// A claim of a static pool (`spec.replicas`), made for no pod: the pool's requirements and every type it
/// allows that holds its DaemonSet pods, cheapest first (its `nodes` limit is the caller's to count).
pub fn static_claim(pool: &PoolOptions) -> Result<ClaimPlan, String> {
    let reqs = &pool.requirements;
    let total = pool.daemon_overhead.clone();
    let mut types: Vec<(f64, &InstanceType)> = pool
        .instance_types
        .iter()
        .map(|it| &**it)
        .filter(|it| type_allowed(it, reqs) && it.allocatable.fits(&total))
        .map(|it| (cheapest_price(it, reqs), it))
        .collect();
    if types.is_empty() {
        return Err(format!(
            "no instance type offered in the allowed zones and capacity types matches the requirements and holds the daemonset overhead {total}"
        ));
    }
    types.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.name.cmp(&b.1.name)));
    let chosen: Vec<&InstanceType> = types.iter().map(|(_, it)| *it).collect();
    let min_values_relaxed = if min_values_hold(&chosen, reqs) {
        BTreeMap::new()
    } else if pool.min_values_best_effort {
        min_values_shortfall(&chosen, reqs)
    } else {
        let short = min_values_shortfall(&chosen, reqs);
        let what: Vec<String> = short
            .iter()
            .map(|(k, have)| format!("{k} has {have} values"))
            .collect();
        return Err(format!(
            "minValues cannot be met ({}; MIN_VALUES_POLICY=Strict)",
            what.join(", ")
        ));
    };
    Ok(ClaimPlan {
        pool: pool.name.clone(),
        pods: Vec::new(),
        requests: total,
        requirements: reqs.clone(),
        instance_types: chosen.iter().map(|it| it.name.clone()).collect(),
        min_values_relaxed,
    })
}

/// Pack `pods` onto `existing` capacity first, then onto as few new claims as the pools allow.
pub fn plan(pods: &[PendingPod], existing: &[ExistingCapacity], pools: &[PoolOptions]) -> Plan {
    let existing: Vec<&ExistingCapacity> = existing.iter().collect();
    plan_on(pods, &existing, pools)
}

/// [`plan`] over borrowed capacity: what consolidation uses to leave candidates out of one shared list
/// without copying it for every simulation.
pub fn plan_on(pods: &[PendingPod], existing: &[&ExistingCapacity], pools: &[PoolOptions]) -> Plan {
    let mut order: Vec<&PendingPod> = pods.iter().collect();
    order.sort_by(|a, b| {
        a.headroom
            .cmp(&b.headroom)
            .then(b.requests.get(CPU).cmp(&a.requests.get(CPU)))
            .then(b.requests.get(MEMORY).cmp(&a.requests.get(MEMORY)))
            .then(a.key.cmp(&b.key))
    });
    let mut by_pref: Vec<&PoolOptions> = pools.iter().collect();
    by_pref.sort_by(|a, b| b.weight.cmp(&a.weight).then(a.name.cmp(&b.name)));

    // PreferNoSchedule taints keep pods off until their last relaxation step, which exists only if any
    // capacity carries one.
    let any_pns = existing
        .iter()
        .flat_map(|c| &c.taints)
        .chain(by_pref.iter().flat_map(|p| &p.taints))
        .any(|t| t.effect == "PreferNoSchedule");
    let (mut topo, infos, host_counts) = build_topology(&order, existing, &by_pref, any_pns);
    let mut slots: Vec<Slot> = existing
        .iter()
        .copied()
        .zip(host_counts)
        .map(|(c, hc)| Slot {
            ports: Vec::new(),
            cap: c,
            available: std::borrow::Cow::Borrowed(&c.available),
            hc,
        })
        .collect();
    let mut remaining: Vec<Option<Resources>> =
        by_pref.iter().map(|p| p.remaining_limits.clone()).collect();
    let mut open: Vec<OpenClaim> = Vec::new();
    // Room left in each capacity reservation, shared by every pool: a new claim takes a slot.
    let mut room = reservation_room(&by_pref);
    let mut memo: TypeMemo = BTreeMap::new();
    // Per shape and relaxation step: a candidate that turned a shape away at a step for good stays skipped.
    let mut cursors: Vec<Vec<Cursor>> = Vec::new();
    let mut out = Plan::default();

    'pods: for info in &infos {
        let pod = info.pod;
        if cursors.len() <= info.shape {
            cursors.resize(info.shape + 1, Vec::new());
        }
        if cursors[info.shape].len() < info.steps.len() {
            cursors[info.shape].resize(info.steps.len(), Cursor::default());
        }
        let mut reasons = Vec::new();
        for (si, &step) in info.steps.iter().enumerate() {
            // Existing capacity first.
            let mut cur = cursors[info.shape][si];
            let mut contiguous = true;
            for (i, slot) in slots.iter_mut().enumerate().skip(cur.existing) {
                match try_existing(&topo, slot, info, step) {
                    Ok(()) => {
                        slot.available.to_mut().sub(&pod.requests);
                        slot.ports.extend(pod.host_ports.iter().cloned());
                        let at = At::Node {
                            labels: &slot.cap.labels,
                        };
                        topo.record(info, &at, &mut slot.hc);
                        out.on_existing
                            .push((pod.key.clone(), slot.cap.name.clone()));
                        cursors[info.shape][si] = cur;
                        continue 'pods;
                    }
                    Err((Reject::Settled, _)) if contiguous => cur.existing = i + 1,
                    Err(_) => contiguous = false,
                }
            }
            // What this pod would cost on a node of its own, per pool, to judge whether sharing pays.
            // Only accelerator pods weigh a node of their own; skip the work for the rest.
            let alone: Vec<Option<Alone>> = by_pref
                .iter()
                .enumerate()
                .map(|(pi, p)| {
                    if !scarce_request(pod) {
                        return None;
                    }
                    let (reqs, types, _, _) =
                        open_on(&topo, &mut memo, pi, p, remaining[pi].as_ref(), info, step)
                            .ok()?;
                    cheapest_type(&types, &reqs).map(|(it, price)| Alone {
                        price,
                        per_slot: cost_per_fit(it, price, &pod.requests),
                    })
                })
                .collect();
            contiguous = true;
            let quick: Quick = if info.owned.is_empty() {
                Quick::default()
            } else {
                topo.open_domains(info, step.level, &pod.requirements[step.alt])
            };
            for (i, claim) in open.iter_mut().enumerate().skip(cur.claims) {
                let pool_ix = claim.pool;
                match try_claim(
                    &topo,
                    claim,
                    &by_pref[pool_ix].taints,
                    info,
                    step,
                    alone[pool_ix],
                    &quick,
                ) {
                    Ok(join) => {
                        if let Some(r) = join.requirements {
                            claim.requirements = r;
                        }
                        if let Some(t) = join.types {
                            claim.set_types(t);
                        }
                        claim.requests.add(&pod.requests);
                        claim.pods.push(pod.key.clone());
                        claim.ports.extend(pod.host_ports.iter().cloned());
                        let at = At::Claim {
                            reqs: &claim.requirements,
                            unrecorded: None,
                        };
                        for (g, n) in topo.record(info, &at, &mut claim.hc) {
                            *claim.unrecorded.entry(g).or_default() += n;
                        }
                        topo.settle(claim);
                        cursors[info.shape][si] = cur;
                        continue 'pods;
                    }
                    Err(Reject::Settled) if contiguous => cur.claims = i + 1,
                    Err(_) => contiguous = false,
                }
            }
            cursors[info.shape][si] = cur;
            reasons.clear();
            for (pi, pool) in by_pref.iter().enumerate() {
                match open_on(
                    &topo,
                    &mut memo,
                    pi,
                    pool,
                    remaining[pi].as_ref(),
                    info,
                    step,
                ) {
                    Ok((reqs, types, max_alloc, min_alloc)) => {
                        // Limits are enforced pessimistically: the claim may become its largest type.
                        if let Some(rem) = remaining[pi].as_mut() {
                            let mut most = Resources::default();
                            for t in &types {
                                most.max_with(&t.capacity);
                            }
                            most.set(NODES, crate::quantity::Milli::from_units(1));
                            for (k, v) in rem.0.iter_mut() {
                                *v = *v - most.get(k);
                            }
                        }
                        let mut requests = pool.daemon_overhead.clone();
                        requests.add(&pod.requests);
                        let mut claim = OpenClaim {
                            pool: pi,
                            hc: HostCounts::default(),
                            pods: vec![pod.key.clone()],
                            requests,
                            requirements: reqs,
                            types,
                            max_alloc,
                            min_alloc,
                            ports: pool
                                .daemon_ports
                                .iter()
                                .map(|(p, _)| p.clone())
                                .chain(pod.host_ports.iter().cloned())
                                .collect(),
                            unrecorded: BTreeMap::new(),
                            reserved: None,
                        };
                        claim.reserved = take_reservation(&claim, &mut room);
                        let at = At::Claim {
                            reqs: &claim.requirements,
                            unrecorded: None,
                        };
                        claim.unrecorded = topo.record(info, &at, &mut claim.hc);
                        topo.settle(&mut claim);
                        open.push(claim);
                        continue 'pods;
                    }
                    Err(why) => reasons.push(format!("nodepool \"{}\": {why}", pool.name)),
                }
            }
        }
        if reasons.is_empty() {
            reasons.push("no NodePool is ready to launch".to_string());
        }
        out.unschedulable
            .push((pod.key.clone(), reasons.join("; ")));
    }

    let mut prices = PriceMemo::new();
    let positions: Vec<BTreeMap<usize, usize>> = by_pref
        .iter()
        .map(|p| {
            p.instance_types
                .iter()
                .enumerate()
                .map(|(i, it)| (&**it as *const InstanceType as usize, i))
                .collect()
        })
        .collect();
    // Claims are pinned to the reservation they hold, or kept off reserved capacity.
    let mut settled = Vec::with_capacity(open.len());
    for mut c in open {
        match settle_reservation(&mut c) {
            Ok(()) => settled.push(c),
            Err(why) => {
                let why = format!("nodepool \"{}\": {why}", by_pref[c.pool].name);
                for pod in c.pods {
                    out.unschedulable.push((pod, why.clone()));
                }
            }
        }
    }
    out.claims = settled
        .into_iter()
        .map(|c| ClaimPlan {
            pool: by_pref[c.pool].name.clone(),
            instance_types: claim_types_by_price(
                &mut prices,
                c.pool,
                by_pref[c.pool],
                &positions[c.pool],
                &c,
            ),
            min_values_relaxed: min_values_shortfall(&c.types, &c.requirements),
            pods: c.pods,
            requests: c.requests,
            requirements: c.requirements,
        })
        .collect();
    if pods.iter().any(|p| p.headroom) {
        let chunks: BTreeSet<&ObjectKey> =
            pods.iter().filter(|p| p.headroom).map(|p| &p.key).collect();
        let (chunks, real) = std::mem::take(&mut out.unschedulable)
            .into_iter()
            .partition(|(k, _)| chunks.contains(k));
        out.unschedulable = real;
        out.headroom_unschedulable = chunks;
    }
    out
}

/// How many more instances each capacity reservation the pools' offerings name can take (the least any
/// pool's copy says, should two views differ).
fn reservation_room(pools: &[&PoolOptions]) -> BTreeMap<String, u32> {
    let mut room: BTreeMap<String, u32> = BTreeMap::new();
    for res in pools
        .iter()
        .flat_map(|p| p.instance_types.iter())
        .flat_map(|it| it.offerings.iter())
        .filter_map(|o| o.reservation.as_ref())
    {
        room.entry(res.id.clone())
            .and_modify(|n| *n = (*n).min(res.capacity))
            .or_insert(res.capacity);
    }
    room
}

/// A new claim that may run on reserved capacity takes one slot of the cheapest reservation its types
/// and requirements allow that still has room (so two claims never count on one slot).
fn take_reservation(c: &OpenClaim, room: &mut BTreeMap<String, u32>) -> Option<String> {
    if !capacity_types(&c.requirements).contains(&CapacityType::Reserved) {
        return None;
    }
    let id = c
        .types
        .iter()
        .flat_map(|it| allowed_offerings(it, &c.requirements))
        .filter_map(|o| o.reservation.as_ref().map(|r| (o.price, r.rank, &r.id)))
        .filter(|(_, _, id)| room.get(*id).is_some_and(|n| *n > 0))
        .min_by(|a, b| {
            a.0.total_cmp(&b.0)
                .then(a.1.cmp(&b.1))
                .then_with(|| a.2.cmp(b.2))
        })
        .map(|(_, _, id)| id.clone())?;
    if let Some(n) = room.get_mut(&id) {
        *n -= 1;
    }
    Some(id)
}

/// A claim holding a reservation is pinned to it: capacity type `reserved`, the reservation's labels,
/// the types it holds. One that may run on reserved capacity but holds none keeps its other capacity
/// types; with none, it cannot launch.
fn settle_reservation(c: &mut OpenClaim) -> Result<(), String> {
    let allowed = capacity_types(&c.requirements);
    if !allowed.contains(&CapacityType::Reserved) {
        return Ok(());
    }
    let best = c.reserved.as_ref().and_then(|id| {
        c.types
            .iter()
            .flat_map(|it| it.offerings.iter())
            .filter_map(|o| o.reservation.as_ref())
            .find(|r| r.id == *id)
            .cloned()
    });
    let mut reqs = c.requirements.clone();
    match &best {
        Some(r) => {
            reqs.add(Requirement::in_values(
                labels::CAPACITY_TYPE,
                [CapacityType::Reserved.as_str()],
            ));
            for (k, v) in &r.labels {
                reqs.add(Requirement::in_values(k, [v.clone()]));
            }
        }
        None => {
            let rest: Vec<&str> = allowed
                .iter()
                .filter(|ct| **ct != CapacityType::Reserved)
                .map(|ct| ct.as_str())
                .collect();
            if rest.is_empty() {
                return Err(
                    "every capacity reservation its instance types may launch into is full".into(),
                );
            }
            reqs.add(Requirement::in_values(labels::CAPACITY_TYPE, rest));
        }
    }
    let types: Vec<&InstanceType> = c
        .types
        .iter()
        .copied()
        .filter(|it| type_allowed(it, &reqs))
        .collect();
    if types.is_empty() {
        return Err(
            "every capacity reservation its instance types may launch into is full, and no other offering is allowed"
                .into(),
        );
    }
    c.requirements = reqs;
    c.set_types(types);
    Ok(())
}

/// The capacity types a claim's requirements allow, in Karpenter's order of preference: reserved (already
/// paid for), spot, on-demand.
pub fn capacity_types(reqs: &Requirements) -> Vec<CapacityType> {
    [
        CapacityType::Reserved,
        CapacityType::Spot,
        CapacityType::OnDemand,
    ]
    .into_iter()
    .filter(|c| {
        reqs.get(labels::CAPACITY_TYPE)
            .is_none_or(|r| r.has(c.as_str()))
    })
    .collect()
}

mod groups;

use groups::*;

#[cfg(test)]
mod tests;
