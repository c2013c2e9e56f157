//! Capacity reservations (the `ReservedCapacity` gate): the node class's `capacityReservationSelectorTerms`
//! as DescribeCapacityReservations queries, the reservations as the class status reports them, how many
//! more instances each can take, and the `reserved` offerings they make.
//!
//! Karpenter's rules: a reservation is an offering of its type in its zone, priced at the on-demand price
//! divided by ten million (free, yet ordered for consolidation), available while it has room and is not
//! `expiring` — a Capacity Block is expiring from 40 minutes before its end, when its nodes are drained.
//! Room is what EC2 last said, less launches since, plus terminations since.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::cloud::{CapacityReservation, CapacityReservationQuery, ReservationType};
use crate::cloudprovider::{CapacityType, InstanceType, Offering, ReservedOffering};
use crate::context::Context;
use crate::crds::ec2nodeclass::CapacityReservationSelectorTerm;
use crate::crds::{NodeClaim, labels};
use crate::events::EventType;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// A Capacity Block is `expiring` (no launches; its nodes drained) this long before its end: ten minutes
/// before EC2 starts terminating its instances.
pub const EXPIRING_BEFORE: Duration = Duration::from_secs(40 * 60);

/// Karpenter prices a reservation at the on-demand price divided by this: as good as free, yet a larger
/// type still costs more for consolidation.
pub const PRICE_DIVISOR: f64 = 10_000_000.0;

/// A reservation a node class may launch into, as its status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    pub owner_id: String,
    pub instance_match_criteria: String,
    pub kind: ReservationType,
    pub end: Option<jiff::Timestamp>,
    /// A Capacity Block within 40 minutes of its end.
    pub expiring: bool,
}

impl Reservation {
    /// The labels a node in it carries.
    pub fn labels(&self) -> BTreeMap<String, String> {
        offering_labels(&self.id, self.kind)
    }
}

/// The labels of a node in reservation `id` of `kind`.
pub fn offering_labels(id: &str, kind: ReservationType) -> BTreeMap<String, String> {
    [
        (labels::CAPACITY_RESERVATION_ID, id.to_string()),
        (
            labels::CAPACITY_RESERVATION_TYPE,
            kind.ec2_type().to_string(),
        ),
        (
            labels::CAPACITY_RESERVATION_INTERRUPTIBLE,
            (kind == ReservationType::Interruptible).to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Karpenter's queries: one by id for a term naming one, one by owner / tags / match criteria for a term
/// with tags or match criteria.
pub fn queries(terms: &[CapacityReservationSelectorTerm]) -> Vec<CapacityReservationQuery> {
    let mut out = Vec::new();
    for t in terms {
        if let Some(id) = &t.id {
            out.push(CapacityReservationQuery {
                ids: vec![id.clone()],
                ..Default::default()
            });
        }
        if !t.tags.is_empty() || t.instance_match_criteria.is_some() {
            out.push(CapacityReservationQuery {
                ids: Vec::new(),
                owner_id: t.owner_id.clone(),
                tags: t.tags.clone(),
                instance_match_criteria: t.instance_match_criteria.clone(),
            });
        }
    }
    out
}

/// A reservation EC2 reported, as the status holds it; Err names what Dovetail cannot use (an instance
/// match criteria or reservation type EC2 added later).
pub fn from_ec2(r: &CapacityReservation, now: jiff::Timestamp) -> Result<Reservation, String> {
    if !matches!(r.instance_match_criteria.as_str(), "open" | "targeted") {
        return Err(format!(
            "capacity reservation {}: instance match criteria `{}` is not supported (open, targeted)",
            r.id, r.instance_match_criteria
        ));
    }
    let kind = match (r.reservation_type.as_str(), r.interruptible) {
        ("default" | "", false) => ReservationType::Default,
        ("default" | "", true) => ReservationType::Interruptible,
        ("capacity-block", _) => ReservationType::CapacityBlock,
        (other, _) => {
            return Err(format!(
                "capacity reservation {}: reservation type `{other}` is not supported (default, capacity-block)",
                r.id
            ));
        }
    };
    let expiring = kind == ReservationType::CapacityBlock
        && r.end_date.is_some_and(|end| {
            let left = end.duration_since(now);
            left < jiff::SignedDuration::try_from(EXPIRING_BEFORE).unwrap_or_default()
        });
    Ok(Reservation {
        id: r.id.clone(),
        instance_type: r.instance_type.clone(),
        zone: r.zone.clone(),
        owner_id: r.owner_id.clone(),
        instance_match_criteria: r.instance_match_criteria.clone(),
        kind,
        end: r.end_date,
        expiring,
    })
}

/// The class status's `capacityReservations` (none: the field goes, as Karpenter leaves it unset).
pub fn status(reservations: &[Reservation]) -> Value {
    if reservations.is_empty() {
        return Value::Null;
    }
    json!(
        reservations
            .iter()
            .map(|r| {
                let mut v = json!({
                    "id": r.id,
                    "availabilityZone": r.zone,
                    "instanceType": r.instance_type,
                    "ownerID": r.owner_id,
                    "instanceMatchCriteria": r.instance_match_criteria,
                    "reservationType": r.kind.ec2_type(),
                    "interruptible": r.kind == ReservationType::Interruptible,
                    "state": if r.expiring { "expiring" } else { "active" },
                });
                if let Some(end) = r.end {
                    v["endTime"] = json!(end.to_string());
                }
                v
            })
            .collect::<Vec<_>>()
    )
}

/// How many more instances each reservation can take: EC2's count when last read, less our launches
/// since, plus our terminations (an overestimate beats leaving a reservation idle; a launch that finds it
/// full marks it so).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Availability {
    room: BTreeMap<String, u32>,
}

impl Availability {
    pub fn sync(&mut self, id: &str, available: u32) {
        self.room.insert(id.to_string(), available);
    }

    pub fn launched(&mut self, id: &str) {
        if let Some(n) = self.room.get_mut(id) {
            *n = n.saturating_sub(1);
        }
    }

    pub fn terminated(&mut self, id: &str) {
        if let Some(n) = self.room.get_mut(id) {
            *n += 1;
        }
    }

    /// A launch found it full.
    pub fn full(&mut self, id: &str) {
        if let Some(n) = self.room.get_mut(id) {
            *n = 0;
        }
    }

    pub fn room(&self, id: &str) -> u32 {
        self.room.get(id).copied().unwrap_or(0)
    }
}

/// The reserved offerings of one instance type under a class's reservations: each reservation of the
/// type in a zone the class launches in, with room less `pending` (claims already counting on it that
/// have not launched).
pub fn offerings(
    reservations: &[Reservation],
    availability: &Availability,
    pending: &BTreeMap<String, u32>,
    it: &InstanceType,
    zones: &BTreeSet<String>,
) -> Vec<Offering> {
    let od = it
        .offerings
        .iter()
        .filter(|o| o.capacity_type == CapacityType::OnDemand)
        .map(|o| o.price)
        .fold(f64::NAN, f64::max);
    reservations
        .iter()
        .filter(|r| r.instance_type == it.name)
        .map(|r| {
            let room = availability
                .room(&r.id)
                .saturating_sub(pending.get(&r.id).copied().unwrap_or(0));
            Offering {
                zone: r.zone.clone(),
                capacity_type: CapacityType::Reserved,
                // Without an on-demand price the reservation is free: consolidation then cannot order it.
                price: if od.is_nan() { 0.0 } else { od / PRICE_DIVISOR },
                available: room > 0 && !r.expiring && zones.contains(&r.zone),
                reservation: Some(ReservedOffering {
                    id: r.id.clone(),
                    labels: r.labels(),
                    capacity: room,
                    rank: match r.kind {
                        ReservationType::Default => 0,
                        ReservationType::CapacityBlock => 1,
                        ReservationType::Interruptible => 2,
                    },
                }),
            }
        })
        .collect()
}

impl super::AwsProvider {
    /// Karpenter's capacity reservation controllers, after each node class pass (every minute): the
    /// claims of a Capacity Block that is expiring are deleted, so their nodes drain ten minutes before
    /// EC2 starts terminating them; a reserved claim whose instance left its reservation (a default one
    /// that ended or was cancelled) becomes on-demand — claim and node relabelled, which a pool allowing
    /// only `reserved` then sees as drift.
    pub(crate) async fn reconcile_reservations(&mut self, ctx: &Context, state: &mut ClusterState) {
        if !ctx.settings.feature_gates.reserved_capacity {
            return;
        }
        let expiring: BTreeMap<String, Reservation> = state
            .nodeclasses
            .keys()
            .filter_map(|c| self.classes.get(c))
            .filter_map(|r| r.reservations.as_ref())
            .flatten()
            .filter(|r| r.expiring)
            .map(|r| (r.id.clone(), r.clone()))
            .collect();
        let reserved: Vec<NodeClaim> = state
            .nodeclaims
            .values()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .filter(|c| claim_label(c, labels::CAPACITY_TYPE) == Some("reserved"))
            .cloned()
            .collect();
        if reserved.is_empty() {
            return;
        }
        for claim in &reserved {
            let Some(id) = claim_label(claim, labels::CAPACITY_RESERVATION_ID) else {
                continue;
            };
            let Some(r) = expiring.get(id) else { continue };
            let name = claim.metadata.name.clone().unwrap_or_default();
            let end = r.end.map(|e| e.to_string()).unwrap_or_default();
            ctx.journal.record(
                "reservation",
                format!("capacity block {id} ends at {end}: draining nodeclaim/{name}"),
            );
            if let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.clone()) {
                crate::events::on_node(
                    ctx,
                    state,
                    &node,
                    EventType::Normal,
                    "CapacityBlockExpiring",
                    &format!("capacity block {id} ends at {end}: draining the node before EC2 reclaims it"),
                )
                .await;
            }
            if let Err(e) = ctx
                .delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&name))
                .await
            {
                ctx.journal.record(
                    "reservation",
                    format!("nodeclaim/{name}: delete failed: {e}; retrying"),
                );
            }
        }
        self.demote_left_reservations(ctx, state, &reserved).await;
    }

    /// Claims labelled `reserved` whose instance EC2 no longer shows in a reservation: on-demand now.
    async fn demote_left_reservations(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        reserved: &[NodeClaim],
    ) {
        let instances = match crate::cloudprovider::CloudProvider::list(self, ctx).await {
            Ok(i) => i,
            Err(e) => {
                ctx.journal.record(
                    "reservation",
                    format!("listing instances failed: {e}; retrying"),
                );
                return;
            }
        };
        for claim in reserved {
            let Some(id) = super::instance_id_of(claim) else {
                continue;
            };
            let Some(instance) = instances.get(&id) else {
                continue;
            };
            if instance.capacity_type != CapacityType::OnDemand {
                continue;
            }
            let name = claim.metadata.name.clone().unwrap_or_default();
            let was = claim_label(claim, labels::CAPACITY_RESERVATION_ID).unwrap_or("?");
            let mut patch = json!({labels::CAPACITY_TYPE: "on-demand"});
            for l in labels::RESERVATION_LABELS {
                patch[l] = Value::Null;
            }
            let patch = json!({"metadata": {"labels": patch}});
            ctx.journal.record(
                "reservation",
                format!("nodeclaim/{name}: {id} left capacity reservation {was}: on-demand now"),
            );
            if let Err(e) = ctx
                .kube
                .patch(Kind::NodeClaim, &ObjectKey::cluster(&name), patch.clone())
                .await
            {
                ctx.journal.record(
                    "reservation",
                    format!("nodeclaim/{name}: relabel failed: {e}"),
                );
                continue;
            }
            if let Some(node) = claim.status.as_ref().and_then(|s| s.node_name.clone())
                && state.nodes.contains_key(&node)
                && let Err(e) = ctx
                    .kube
                    .patch(Kind::Node, &ObjectKey::cluster(&node), patch)
                    .await
            {
                ctx.journal
                    .record("reservation", format!("node/{node}: relabel failed: {e}"));
            }
        }
    }
}

fn claim_label<'a>(claim: &'a NodeClaim, key: &str) -> Option<&'a str> {
    claim
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map(String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec2(
        id: &str,
        kind: &str,
        interruptible: bool,
        end_in_min: Option<i64>,
    ) -> CapacityReservation {
        let now = jiff::Timestamp::UNIX_EPOCH;
        CapacityReservation {
            id: id.into(),
            instance_type: "m5.large".into(),
            zone: "us-east-1a".into(),
            owner_id: "123456789012".into(),
            total_instance_count: 4,
            available_instance_count: 3,
            instance_match_criteria: "targeted".into(),
            reservation_type: kind.into(),
            interruptible,
            state: "active".into(),
            start_date: Some(now),
            end_date: end_in_min.map(|m| now + jiff::SignedDuration::from_mins(m)),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn a_term_with_an_id_and_tags_is_two_queries() {
        let terms = vec![
            CapacityReservationSelectorTerm {
                id: Some("cr-1".into()),
                tags: [("team".to_string(), "ml".to_string())].into(),
                ..Default::default()
            },
            CapacityReservationSelectorTerm {
                owner_id: Some("123456789012".into()),
                instance_match_criteria: Some("open".into()),
                ..Default::default()
            },
        ];
        let q = queries(&terms);
        assert_eq!(q.len(), 3);
        assert_eq!(q[0].ids, vec!["cr-1".to_string()]);
        assert!(q[1].ids.is_empty() && q[1].tags.contains_key("team"));
        assert_eq!(q[2].instance_match_criteria.as_deref(), Some("open"));
        assert_eq!(q[2].owner_id.as_deref(), Some("123456789012"));
    }

    #[test]
    fn a_capacity_block_expires_forty_minutes_before_its_end() -> Result<(), String> {
        let now = jiff::Timestamp::UNIX_EPOCH;
        assert!(!from_ec2(&ec2("cr-1", "capacity-block", false, Some(41)), now)?.expiring);
        assert!(from_ec2(&ec2("cr-1", "capacity-block", false, Some(39)), now)?.expiring);
        // A default reservation never expires early: its instances run on as on-demand.
        assert!(!from_ec2(&ec2("cr-1", "default", false, Some(1)), now)?.expiring);
        let r = from_ec2(&ec2("cr-2", "default", true, None), now)?;
        assert_eq!(r.kind, ReservationType::Interruptible);
        assert_eq!(
            r.labels()
                .get(labels::CAPACITY_RESERVATION_INTERRUPTIBLE)
                .map(String::as_str),
            Some("true")
        );
        let mut odd = ec2("cr-3", "default", false, None);
        odd.instance_match_criteria = "something-new".into();
        let err = from_ec2(&odd, now).err().unwrap_or_default();
        assert!(
            err.contains("cr-3") && err.contains("something-new"),
            "{err}"
        );
        Ok(())
    }

    #[test]
    fn offerings_are_nearly_free_and_count_room() -> Result<(), String> {
        let now = jiff::Timestamp::UNIX_EPOCH;
        let r = from_ec2(&ec2("cr-1", "default", false, None), now)?;
        let it = InstanceType {
            name: "m5.large".into(),
            labels: BTreeMap::new(),
            capacity: Default::default(),
            allocatable: Default::default(),
            offerings: vec![Offering {
                zone: "us-east-1a".into(),
                capacity_type: CapacityType::OnDemand,
                price: 0.096,
                available: true,
                reservation: None,
            }],
        };
        let zones: BTreeSet<String> = ["us-east-1a".to_string()].into();
        let mut avail = Availability::default();
        avail.sync("cr-1", 2);
        let pending: BTreeMap<String, u32> = [("cr-1".to_string(), 1)].into();
        let o = offerings(std::slice::from_ref(&r), &avail, &pending, &it, &zones);
        assert_eq!(o.len(), 1);
        assert!(o[0].available && o[0].price > 0.0 && o[0].price < 0.096 / 1e6);
        assert_eq!(o[0].reservation.as_ref().map(|x| x.capacity), Some(1));
        avail.launched("cr-1");
        let o = offerings(std::slice::from_ref(&r), &avail, &pending, &it, &zones);
        assert!(!o[0].available, "room 1, one claim pending: full");
        avail.terminated("cr-1");
        avail.full("cr-1");
        assert_eq!(avail.room("cr-1"), 0);
        // A zone the class has no subnet in offers nothing.
        let o = offerings(&[r], &avail, &BTreeMap::new(), &it, &BTreeSet::new());
        assert!(!o[0].available);
        Ok(())
    }
}
