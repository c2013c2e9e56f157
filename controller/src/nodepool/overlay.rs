//! NodeOverlays (the `NodeOverlay` gate): Karpenter's price and extended-resource adjustments to the
//! instance types each NodePool's scheduling simulation sees, and the conflicts between overlays of equal
//! weight. Pure: overlays, pools and their types in, adjusted types and verdicts out.

use std::collections::{BTreeMap, BTreeSet};

use crate::cloudprovider::{CloudProvider, InstanceType, Offering};
use crate::conditions::Desired;
use crate::context::Context;
use crate::crds::NodeOverlay;
use crate::crds::labels;
use crate::kube::{Kind, ObjectKey};
use crate::quantity::Milli;
use crate::scheduling::PoolOptions;
use crate::scheduling::requirements::{Requirement, Requirements, restricted_label};
use crate::state::ClusterState;
use serde_json::{Value, json};

/// Resources an overlay may not add: they are the node's own.
const WELL_KNOWN_RESOURCES: [&str; 4] = ["cpu", "memory", "ephemeral-storage", "pods"];

/// A change to a price, as `price` or `priceAdjustment` write it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PriceChange {
    /// `price: "0.5"`: this price.
    Set(f64),
    /// `priceAdjustment: "+0.1"` / `"-0.05"`: this much more (never below zero).
    Add(f64),
    /// `priceAdjustment: "+10%"` / `"-15%"`: this share more (never below zero).
    Percent(f64),
}

impl PriceChange {
    pub fn parse(
        price: Option<&str>,
        adjustment: Option<&str>,
    ) -> Result<Option<PriceChange>, String> {
        let num = |s: &str, field: &str| {
            s.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("spec.{field}: `{s}` is not a number"))
        };
        match (price, adjustment) {
            (Some(_), Some(_)) => Err("cannot set both 'price' and 'priceAdjustment'".into()),
            (Some(p), None) => Ok(Some(PriceChange::Set(num(p, "price")?))),
            (None, Some(a)) => match a.strip_suffix('%') {
                Some(pct) => Ok(Some(PriceChange::Percent(num(pct, "priceAdjustment")?))),
                None => Ok(Some(PriceChange::Add(num(a, "priceAdjustment")?))),
            },
            (None, None) => Ok(None),
        }
    }

    pub fn apply(self, price: f64) -> f64 {
        let p = match self {
            PriceChange::Set(p) => p,
            PriceChange::Add(d) => price + d,
            PriceChange::Percent(pct) => price * (1.0 + pct / 100.0),
        };
        p.max(0.0)
    }
}

/// An overlay as it applies: its requirements, price change and extended resources.
#[derive(Debug, Clone, PartialEq)]
pub struct Overlay {
    pub name: String,
    pub weight: i32,
    requirements: Requirements,
    price: Option<PriceChange>,
    capacity: BTreeMap<String, Milli>,
}

/// The overlays that can apply, in Karpenter's order (weight, highest first; equal weights by name, later
/// in the alphabet first), and those whose spec cannot, with why (Karpenter's runtime validation).
pub fn read(list: &[&NodeOverlay]) -> (Vec<Overlay>, BTreeMap<String, String>) {
    let mut ok = Vec::new();
    let mut invalid = BTreeMap::new();
    for o in list {
        let name = o.metadata.name.clone().unwrap_or_default();
        match overlay(o) {
            Ok(parsed) => ok.push(parsed),
            Err(why) => {
                invalid.insert(name, why);
            }
        }
    }
    ok.sort_by(|a: &Overlay, b| b.weight.cmp(&a.weight).then(b.name.cmp(&a.name)));
    (ok, invalid)
}

fn overlay(o: &NodeOverlay) -> Result<Overlay, String> {
    let mut requirements = Requirements::default();
    for (i, r) in o.spec.requirements.iter().enumerate() {
        if let Some(why) = restricted_label(&r.key) {
            return Err(format!("spec.requirements[{i}]: {why}"));
        }
        if r.operator == "NotIn" && r.values.is_empty() {
            return Err(format!(
                "spec.requirements[{i}]: key {} with operator NotIn must have a value defined",
                r.key
            ));
        }
        requirements.add(
            Requirement::parse(&r.key, &r.operator, &r.values, None)
                .map_err(|e| format!("spec.requirements[{i}]: {e}"))?,
        );
    }
    let mut capacity = BTreeMap::new();
    for (k, v) in &o.spec.capacity {
        if WELL_KNOWN_RESOURCES.contains(&k.as_str()) {
            return Err(format!(
                "spec.capacity: {k} is the node's own, not an extended resource"
            ));
        }
        let q = crate::quantity::parse(v).map_err(|e| format!("spec.capacity.{k}: {e}"))?;
        capacity.insert(k.clone(), q);
    }
    Ok(Overlay {
        name: o.metadata.name.clone().unwrap_or_default(),
        weight: o.spec.weight.unwrap_or(0),
        requirements,
        price: PriceChange::parse(o.spec.price.as_deref(), o.spec.price_adjustment.as_deref())?,
        capacity,
    })
}

/// One pool as overlays see it: its name, its template's labels, the types its class offers.
pub struct PoolView<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
    pub types: Vec<&'a InstanceType>,
}

/// What applies to one type of one pool: per offering (by index) the price change and the weight of the
/// lowest overlay that touched it; per extended resource its quantity; the lowest weight that set capacity
/// and the resources it set.
#[derive(Debug, Default, Clone)]
struct TypeChange {
    prices: BTreeMap<usize, (PriceChange, i32)>,
    capacity: BTreeMap<String, Milli>,
    capacity_lowest: Option<(i32, BTreeSet<String>)>,
}

/// The overlays applied to every pool's types, and the overlays refused for a conflict or an invalid spec.
#[derive(Debug, Default, Clone)]
pub struct Applied {
    changes: BTreeMap<(String, String), TypeChange>,
    /// Overlays whose spec cannot apply (Karpenter's runtime validation), with why.
    pub invalid: BTreeMap<String, String>,
    /// Overlays left out because one of equal weight already sets the same offering's price or the same
    /// resource on a type both select.
    pub conflicts: BTreeSet<String>,
}

/// Whether a requirement holds for a value that may be absent.
fn holds(r: &Requirement, v: Option<&str>) -> bool {
    r.satisfied_by(v)
}

/// Offerings of `it` in `pool` that the overlay selects (none: the type is not selected at all).
fn selected(o: &Overlay, pool: &PoolView, it: &InstanceType) -> Vec<usize> {
    let label = |key: &str| -> Option<String> {
        if key == labels::NODEPOOL {
            return Some(pool.name.to_string());
        }
        it.labels.get(key).or_else(|| pool.labels.get(key)).cloned()
    };
    let offering_key = |key: &str| {
        key == labels::ZONE
            || key == labels::CAPACITY_TYPE
            || labels::RESERVATION_LABELS.contains(&key)
    };
    let type_ok = o
        .requirements
        .0
        .values()
        .filter(|r| !offering_key(&r.key))
        .all(|r| holds(r, label(&r.key).as_deref()));
    if !type_ok {
        return Vec::new();
    }
    let offering_value = |off: &Offering, key: &str| -> Option<String> {
        match key {
            labels::ZONE => Some(off.zone.clone()),
            labels::CAPACITY_TYPE => Some(off.capacity_type.as_str().to_string()),
            _ => off
                .reservation
                .as_ref()
                .and_then(|r| r.labels.get(key).cloned()),
        }
    };
    it.offerings
        .iter()
        .enumerate()
        .filter(|(_, off)| {
            o.requirements
                .0
                .values()
                .filter(|r| offering_key(&r.key))
                .all(|r| holds(r, offering_value(off, &r.key).as_deref()))
        })
        .map(|(i, _)| i)
        .collect()
}

impl Applied {
    /// Karpenter's store: overlays in order; one that would set, at the weight of an overlay already
    /// there, the price of an offering or a resource of a type that overlay set conflicts and is left out
    /// entirely (never half applied); a lower weight never overrides a higher one.
    pub fn build(overlays: &[Overlay], pools: &[PoolView]) -> Applied {
        let mut out = Applied::default();
        for o in overlays {
            let hits: Vec<(String, String, Vec<usize>)> = pools
                .iter()
                .flat_map(|p| {
                    p.types.iter().filter_map(move |it| {
                        let offs = selected(o, p, it);
                        (!offs.is_empty()).then(|| (p.name.to_string(), it.name.clone(), offs))
                    })
                })
                .collect();
            let conflict = hits.iter().any(|(pool, t, offs)| {
                let Some(c) = out.changes.get(&(pool.clone(), t.clone())) else {
                    return false;
                };
                let price = o.price.is_some()
                    && offs
                        .iter()
                        .any(|i| c.prices.get(i).is_some_and(|(_, w)| *w == o.weight));
                let capacity = !o.capacity.is_empty()
                    && c.capacity_lowest.as_ref().is_some_and(|(w, set)| {
                        *w == o.weight && o.capacity.keys().any(|k| set.contains(k))
                    });
                price || capacity
            });
            if conflict {
                out.conflicts.insert(o.name.clone());
                continue;
            }
            for (pool, t, offs) in hits {
                let c = out.changes.entry((pool, t)).or_default();
                if let Some(change) = o.price {
                    for i in offs {
                        c.prices
                            .entry(i)
                            .and_modify(|(_, w)| *w = o.weight)
                            .or_insert((change, o.weight));
                    }
                }
                if !o.capacity.is_empty() {
                    for (k, q) in &o.capacity {
                        c.capacity.entry(k.clone()).or_insert(*q);
                    }
                    c.capacity_lowest = Some((o.weight, o.capacity.keys().cloned().collect()));
                }
            }
        }
        out
    }

    /// The type as the pool's simulation sees it, when an overlay changes it.
    pub fn apply(&self, pool: &str, it: &InstanceType) -> Option<InstanceType> {
        let c = self.changes.get(&(pool.to_string(), it.name.clone()))?;
        let mut t = it.clone();
        for (i, (change, _)) in &c.prices {
            if let Some(o) = t.offerings.get_mut(*i) {
                o.price = change.apply(o.price);
            }
        }
        for (k, q) in &c.capacity {
            t.capacity.set(k, *q);
            t.allocatable.set(k, *q);
        }
        Some(t)
    }
}

/// A pool's name, template labels and types as its node class offers them.
type PoolTypes<'a> = (
    &'a str,
    &'a BTreeMap<String, String>,
    Vec<std::borrow::Cow<'a, InstanceType>>,
);

/// The cluster's overlays built over every NodePool's types (as its node class offers them): what each
/// pool's simulation sees, and the overlays refused for a conflict. Empty when there is no overlay.
pub fn for_cluster(state: &ClusterState, provider: &dyn CloudProvider) -> Applied {
    let list: Vec<&NodeOverlay> = state.nodeoverlays.values().collect();
    let (overlays, invalid) = read(&list);
    if overlays.is_empty() {
        return Applied {
            invalid,
            ..Applied::default()
        };
    }
    static NONE: BTreeMap<String, String> = BTreeMap::new();
    let typed: Vec<PoolTypes> = state
        .nodepools
        .iter()
        .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
        .map(|(name, p)| {
            let class = &p.spec.template.spec.node_class_ref.name;
            (
                name.as_str(),
                p.spec
                    .template
                    .metadata
                    .as_ref()
                    .map_or(&NONE, |m| &m.labels),
                provider
                    .instance_types()
                    .iter()
                    .map(|it| crate::cloudprovider::class_type(provider, state, class, it))
                    .collect(),
            )
        })
        .collect();
    let views: Vec<PoolView> = typed
        .iter()
        .map(|(name, labels, types)| PoolView {
            name,
            labels,
            types: types.iter().map(|t| &**t).collect(),
        })
        .collect();
    Applied {
        invalid,
        ..Applied::build(&overlays, &views)
    }
}

/// The overlays applied to what the pools see (the planner's prices and capacity).
pub fn apply_to<'a, 'b: 'a>(
    applied: &Applied,
    pools: impl Iterator<Item = &'a mut PoolOptions<'b>>,
) {
    for p in pools {
        let name = p.name.clone();
        for t in p.instance_types.iter_mut() {
            if let Some(changed) = applied.apply(&name, t) {
                *t = std::borrow::Cow::Owned(changed);
            }
        }
    }
}

/// Karpenter's NodeOverlay status: `ValidationSucceeded` (False: `RuntimeValidation` with why, or
/// `Conflict` with an overlay of equal weight) and `Ready`, written where they change; a refused overlay
/// is said once in the trace.
pub(crate) async fn write_statuses(
    ctx: &Context,
    state: &mut ClusterState,
    provider: &dyn CloudProvider,
) {
    if !ctx.settings.feature_gates.node_overlay || state.nodeoverlays.is_empty() {
        return;
    }
    let Applied {
        invalid, conflicts, ..
    } = for_cluster(state, provider);
    let overlays: Vec<NodeOverlay> = state.nodeoverlays.values().cloned().collect();
    let now = ctx.clock.now().to_string();
    for o in overlays {
        let name = o.metadata.name.clone().unwrap_or_default();
        let (ok, reason, message) = match invalid.get(&name) {
            Some(why) => (false, "RuntimeValidation", why.clone()),
            None if conflicts.contains(&name) => (
                false,
                "Conflict",
                "conflict with another overlay of the same weight".to_string(),
            ),
            None => (true, "", String::new()),
        };
        let wanted: Vec<Desired> = vec![
            ("ValidationSucceeded", Some(ok), reason, message.clone()),
            ("Ready", Some(ok), reason, message.clone()),
        ];
        let old = crate::conditions::as_values(o.status.as_ref().map(|s| s.conditions.as_slice()));
        let conditions = crate::conditions::merge(&old, &wanted, &now);
        let status_of = |list: &[Value], t: &str| {
            list.iter()
                .find(|c| c["type"] == t)
                .map(|c| (c["status"].clone(), c["message"].clone()))
        };
        if status_of(&old, "ValidationSucceeded") == status_of(&conditions, "ValidationSucceeded")
            && status_of(&old, "Ready") == status_of(&conditions, "Ready")
        {
            continue;
        }
        if !ok {
            ctx.journal.record(
                "nodeoverlay",
                format!("nodeoverlay/{name} not applied ({reason}): {message}"),
            );
        }
        match ctx
            .kube
            .patch_status(
                Kind::NodeOverlay,
                &ObjectKey::cluster(&name),
                json!({"status": {"conditions": conditions}}),
            )
            .await
        {
            Ok(updated) => {
                let _ = state.apply_event(
                    Kind::NodeOverlay,
                    crate::kube::WatchEvent::Modified(updated),
                );
            }
            Err(e) => ctx.journal.record(
                "nodeoverlay",
                format!("nodeoverlay/{name}: status not written: {e}; retrying next pass"),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudprovider::CapacityType;
    use crate::crds::nodeoverlay::{NodeOverlaySpec, OverlayRequirement};

    fn it(name: &str, price: f64) -> InstanceType {
        let family = name.split('.').next().unwrap_or_default().to_string();
        InstanceType {
            name: name.into(),
            labels: [
                (labels::INSTANCE_TYPE.to_string(), name.to_string()),
                (labels::INSTANCE_FAMILY.to_string(), family),
            ]
            .into(),
            capacity: Default::default(),
            allocatable: Default::default(),
            offerings: ["z1", "z2"]
                .iter()
                .flat_map(|z| {
                    [CapacityType::OnDemand, CapacityType::Spot].map(|ct| Offering {
                        zone: z.to_string(),
                        capacity_type: ct,
                        price: if ct == CapacityType::Spot {
                            price / 2.0
                        } else {
                            price
                        },
                        available: true,
                        reservation: None,
                    })
                })
                .collect(),
        }
    }

    fn overlay(name: &str, weight: Option<i32>, reqs: &[(&str, &str, &[&str])]) -> NodeOverlay {
        NodeOverlay::new(
            name,
            NodeOverlaySpec {
                requirements: reqs
                    .iter()
                    .map(|(k, op, v)| OverlayRequirement {
                        key: k.to_string(),
                        operator: op.to_string(),
                        values: v.iter().map(|s| s.to_string()).collect(),
                    })
                    .collect(),
                weight,
                ..Default::default()
            },
        )
    }

    fn priced(mut o: NodeOverlay, price: Option<&str>, adjustment: Option<&str>) -> NodeOverlay {
        o.spec.price = price.map(String::from);
        o.spec.price_adjustment = adjustment.map(String::from);
        o
    }

    fn build(list: &[NodeOverlay], pools: &[(&str, Vec<&InstanceType>)]) -> Applied {
        let refs: Vec<&NodeOverlay> = list.iter().collect();
        let (overlays, invalid) = read(&refs);
        assert!(invalid.is_empty(), "{invalid:?}");
        let none = BTreeMap::new();
        let views: Vec<PoolView> = pools
            .iter()
            .map(|(n, t)| PoolView {
                name: n,
                labels: &none,
                types: t.clone(),
            })
            .collect();
        Applied::build(&overlays, &views)
    }

    fn od_price(t: &InstanceType) -> f64 {
        t.price("z1", CapacityType::OnDemand).unwrap_or(f64::NAN)
    }

    #[test]
    fn prices_set_added_and_scaled_never_below_zero() -> Result<(), String> {
        assert_eq!(
            PriceChange::parse(Some("0.5"), None)?,
            Some(PriceChange::Set(0.5))
        );
        let p = PriceChange::parse(None, Some("+10%"))?.ok_or("a change")?;
        assert!((p.apply(1.0) - 1.1).abs() < 1e-12);
        let p = PriceChange::parse(None, Some("-0.3"))?.ok_or("a change")?;
        assert_eq!(p.apply(0.2), 0.0);
        assert!(PriceChange::parse(Some("1"), Some("+1")).is_err());
        Ok(())
    }

    #[test]
    fn the_heavier_overlay_wins_and_equal_weights_that_overlap_conflict() -> Result<(), String> {
        let m = it("m7g.large", 0.08);
        let c = it("c7g.large", 0.07);
        let fam = |f: &'static [&'static str]| [(labels::INSTANCE_FAMILY, "In", f)];
        let heavy = priced(
            overlay("heavy", Some(20), &fam(&["m7g"])),
            None,
            Some("-50%"),
        );
        let light = priced(
            overlay("light", Some(10), &fam(&["m7g", "c7g"])),
            Some("1"),
            None,
        );
        let applied = build(&[light.clone(), heavy], &[("web", vec![&m, &c])]);
        assert!(applied.conflicts.is_empty());
        let m2 = applied.apply("web", &m).ok_or("m7g changed")?;
        assert!(
            (od_price(&m2) - 0.04).abs() < 1e-12,
            "the heavier -50% wins on m7g"
        );
        let c2 = applied.apply("web", &c).ok_or("c7g changed")?;
        assert_eq!(od_price(&c2), 1.0, "the lighter one still prices c7g");
        // Same weight, overlapping: the later in Karpenter's order (earlier name) is refused whole.
        let rival = priced(
            overlay("a-rival", Some(10), &fam(&["c7g"])),
            Some("2"),
            None,
        );
        let applied = build(&[light, rival], &[("web", vec![&m, &c])]);
        assert_eq!(applied.conflicts, BTreeSet::from(["a-rival".to_string()]));
        assert_eq!(od_price(&applied.apply("web", &c).ok_or("c7g")?), 1.0);
        Ok(())
    }

    #[test]
    fn offering_requirements_select_offerings_and_pools_by_name() -> Result<(), String> {
        let m = it("m7g.large", 0.08);
        let spot_only = priced(
            overlay(
                "spot",
                None,
                &[
                    (labels::CAPACITY_TYPE, "In", &["spot"]),
                    (labels::NODEPOOL, "In", &["batch"]),
                ],
            ),
            Some("0.01"),
            None,
        );
        let applied = build(&[spot_only], &[("web", vec![&m]), ("batch", vec![&m])]);
        assert!(applied.apply("web", &m).is_none(), "another pool");
        let b = applied.apply("batch", &m).ok_or("batch's m7g")?;
        assert_eq!(b.price("z1", CapacityType::Spot), Some(0.01));
        assert_eq!(od_price(&b), 0.08, "on-demand untouched");
        Ok(())
    }

    #[test]
    fn capacity_adds_extended_resources_and_conflicts_per_resource() -> Result<(), String> {
        let m = it("m7g.large", 0.08);
        let mut a = overlay("a", Some(5), &[(labels::INSTANCE_FAMILY, "In", &["m7g"])]);
        a.spec.capacity = [("example.com/license".to_string(), "2".to_string())].into();
        let mut b = overlay("b", Some(5), &[(labels::INSTANCE_TYPE, "Exists", &[])]);
        b.spec.capacity = [("example.com/fpga".to_string(), "1".to_string())].into();
        let applied = build(&[a.clone(), b], &[("web", vec![&m])]);
        assert!(applied.conflicts.is_empty(), "different resources merge");
        let t = applied.apply("web", &m).ok_or("changed")?;
        assert_eq!(
            t.allocatable.get("example.com/license"),
            Milli::from_units(2)
        );
        assert_eq!(t.capacity.get("example.com/fpga"), Milli::from_units(1));
        let mut same = overlay("c", Some(5), &[(labels::INSTANCE_TYPE, "Exists", &[])]);
        same.spec.capacity = [("example.com/license".to_string(), "9".to_string())].into();
        assert_eq!(
            build(&[a, same], &[("web", vec![&m])]).conflicts,
            BTreeSet::from(["a".to_string()]),
            "`c` comes first by name; `a` then sets the same resource at the same weight"
        );
        Ok(())
    }

    #[test]
    fn runtime_validation_refuses_restricted_labels_and_node_resources() {
        let mut cpu = overlay("cpu", None, &[(labels::INSTANCE_TYPE, "Exists", &[])]);
        cpu.spec.capacity = [("cpu".to_string(), "2".to_string())].into();
        let host = overlay("host", None, &[(labels::HOSTNAME, "In", &["n1"])]);
        let refs = [&cpu, &host];
        let (ok, invalid) = read(&refs);
        assert!(ok.is_empty());
        assert!(
            invalid["cpu"].contains("not an extended resource"),
            "{invalid:?}"
        );
        assert!(invalid["host"].contains("restricted"), "{invalid:?}");
    }
}
