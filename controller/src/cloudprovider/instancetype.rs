//! Instance types as the scheduler sees them: labels, allocatable after overhead, and priced offerings.

use std::collections::BTreeMap;

use super::CapacityType;
use crate::resources::Resources;

/// Where and how an instance type can be bought, and at what price.
#[derive(Debug, Clone, PartialEq)]
pub struct Offering {
    pub zone: String,
    pub capacity_type: CapacityType,
    /// USD per hour.
    pub price: f64,
    pub available: bool,
    /// Set on `reserved` offerings only: the capacity reservation it launches into.
    pub reservation: Option<ReservedOffering>,
}

/// A capacity reservation as an offering: the labels its nodes carry (among them the id) and how many
/// more instances it can take now.
#[derive(Debug, Clone, PartialEq)]
pub struct ReservedOffering {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: u32,
    /// Among reservations of equal price, lower is taken first (AWS: ODCRs, then Capacity Blocks, then
    /// interruptible ODCRs, as Karpenter orders them).
    pub rank: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceType {
    pub name: String,
    /// Label key -> value, for requirement matching (instance-type, arch, family, cpu, ...).
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub allocatable: Resources,
    pub offerings: Vec<Offering>,
}

impl InstanceType {
    /// The listed price of one offering (available or not): what a running node of it costs (for
    /// `reserved`, any of the type's reservations in the zone: they are priced alike).
    pub fn price(&self, zone: &str, ct: CapacityType) -> Option<f64> {
        self.offerings
            .iter()
            .find(|o| o.zone == zone && o.capacity_type == ct)
            .map(|o| o.price)
    }

    /// The cheapest available offering matching `allowed`.
    pub fn cheapest(&self, allowed: impl Fn(&Offering) -> bool) -> Option<&Offering> {
        self.offerings
            .iter()
            .filter(|o| o.available && allowed(o))
            .min_by(|a, b| {
                a.price
                    .total_cmp(&b.price)
                    .then_with(|| a.zone.cmp(&b.zone))
            })
    }
}
