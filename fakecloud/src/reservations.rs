//! Capacity reservations as EC2 keeps them: On-Demand Capacity Reservations (open or targeted,
//! interruptible or not) and Capacity Blocks, per instance type and zone, with counts and a window.
//!
//! What EC2 does with them, as documented: a reservation is `scheduled` before its start and `active` in
//! its window; a launch naming one (CapacityReservationTarget) runs in it or fails
//! `ReservationCapacityExceeded`; an on-demand launch that leaves the preference `open` runs in any active
//! open reservation of its type and zone with room; a default reservation's end leaves its instances
//! running as ordinary on-demand ones, while a Capacity Block warns 40 minutes ahead (EventBridge
//! "Capacity Block Expiration Warning") and terminates its instances from 30 minutes before its end; an
//! interruptible reservation's owner may reclaim it, each instance warned 2 minutes before it is
//! terminated ("EC2 Capacity Reservation Instance Interruption Warning"). A reservation is billed for its
//! whole count at the on-demand price while active, used or not; instances in it cost nothing more.

use std::collections::BTreeMap;
use std::time::Duration;

use dovetail::aws::cloud::{CapacityReservation, ReservationType};
use jiff::Timestamp;

/// A reservation as a scenario declares it; times are offsets from the start of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservationSpec {
    /// Drawn when not given.
    pub id: Option<String>,
    pub instance_type: String,
    pub zone: String,
    pub count: u32,
    /// `open` or `targeted`.
    pub instance_match_criteria: String,
    pub kind: ReservationType,
    pub owner_id: String,
    pub tags: BTreeMap<String, String>,
    /// When it becomes active (zero: from the start).
    pub starts_after: Duration,
    /// How long it lasts once active (None: until cancelled).
    pub lasts: Option<Duration>,
}

/// How long before a Capacity Block's end EC2 warns, and starts terminating its instances.
pub const BLOCK_WARNING: Duration = Duration::from_secs(40 * 60);
pub const BLOCK_RECLAIM: Duration = Duration::from_secs(30 * 60);
/// An interruptible reservation's warning ahead of each termination.
pub const INTERRUPTIBLE_WARNING: Duration = Duration::from_secs(120);

/// One reservation and what the fake tracks beyond the API's view.
#[derive(Debug, Clone, PartialEq)]
pub struct Reservation {
    pub id: String,
    pub instance_type: String,
    pub zone: String,
    pub owner_id: String,
    pub count: u32,
    pub instance_match_criteria: String,
    pub kind: ReservationType,
    pub tags: BTreeMap<String, String>,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
    /// Cancelled (or reclaimed whole) at this time.
    pub cancelled_at: Option<Timestamp>,
    /// Whether the 40-minute warning of a Capacity Block has gone out.
    pub warned: bool,
}

impl Reservation {
    /// EC2's state at `now`.
    pub fn state(&self, now: Timestamp) -> &'static str {
        if self.cancelled_at.is_some_and(|c| c <= now) {
            "cancelled"
        } else if now < self.start {
            "scheduled"
        } else if self.end.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }

    pub fn is_active(&self, now: Timestamp) -> bool {
        self.state(now) == "active"
    }

    /// Whether a launch may run in it now: active, and for a Capacity Block not in its last 30 minutes,
    /// when EC2 is taking its instances back.
    pub fn launchable(&self, now: Timestamp) -> bool {
        self.is_active(now)
            && !(self.kind == ReservationType::CapacityBlock
                && self.end.is_some_and(|end| {
                    end.duration_since(now)
                        <= jiff::SignedDuration::try_from(BLOCK_RECLAIM).unwrap_or_default()
                }))
    }

    /// The API's view, with `used` instances running in it.
    pub fn describe(&self, used: u32, now: Timestamp) -> CapacityReservation {
        CapacityReservation {
            id: self.id.clone(),
            instance_type: self.instance_type.clone(),
            zone: self.zone.clone(),
            owner_id: self.owner_id.clone(),
            total_instance_count: self.count,
            available_instance_count: self.count.saturating_sub(used),
            instance_match_criteria: self.instance_match_criteria.clone(),
            reservation_type: self.kind.ec2_type().to_string(),
            interruptible: self.kind == ReservationType::Interruptible,
            state: self.state(now).to_string(),
            start_date: Some(self.start),
            end_date: self.end,
            tags: self.tags.clone(),
        }
    }

    /// EC2's InstanceLifecycle for instances launched into it.
    pub fn lifecycle(&self) -> Option<String> {
        match self.kind {
            ReservationType::Default => None,
            ReservationType::CapacityBlock => Some("capacity-block".into()),
            ReservationType::Interruptible => Some("interruptible-capacity-reservation".into()),
        }
    }
}

/// An EventBridge "Capacity Block Expiration Warning".
pub fn block_expiration_warning(region: &str, id: &str, end: Timestamp, now: Timestamp) -> String {
    serde_json::json!({
        "version": "0",
        "id": format!("{id}-approaching-expiry"),
        "detail-type": "Capacity Block Expiration Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": now.to_string(),
        "region": region,
        "resources": [format!("arn:aws:ec2:{region}:123456789012:capacity-reservation/{id}")],
        "detail": {"capacity-reservation-id": id, "end-date": end.to_string()},
    })
    .to_string()
}

/// An EventBridge "EC2 Capacity Reservation Instance Interruption Warning".
pub fn interruption_warning(
    region: &str,
    instance_id: &str,
    at: Timestamp,
    now: Timestamp,
) -> String {
    serde_json::json!({
        "version": "0",
        "id": format!("{instance_id}-cr-interruption"),
        "detail-type": "EC2 Capacity Reservation Instance Interruption Warning",
        "source": "aws.ec2",
        "account": "123456789012",
        "time": now.to_string(),
        "region": region,
        "resources": [format!("arn:aws:ec2:{region}:123456789012:instance/{instance_id}")],
        "detail": {
            "instance-id": instance_id,
            "instance-action": "terminate",
            "instance-termination-time": at.to_string(),
        },
    })
    .to_string()
}
