//! fakecloud: an in-memory EC2 and SQS that behave like AWS, driven by simulated time and a seeded RNG.
//!
//! It implements dovetail's `Cloud` trait. The simulator's `cloud` host calls [`FakeCloud::step`] to move
//! time-driven state; everything else happens inside API calls. Same seed, same calls -> same answers.
//!
//! # What is modelled
//! - The real catalog (114 types, us-east-1 on-demand prices); each type offered in a seeded subset of zones;
//!   spot prices per (type, zone) 30-70% below on-demand, moving by a bounded seeded random walk each hour.
//! - Capacity pools per (type, zone, capacity type) with finite depth; launches consume, terminations refill;
//!   scenarios drain pools for a while (`capacity_shortage`).
//! - CreateFleet `instant`: a launch template (must exist) x overrides; `lowest-price` for on-demand
//!   (`prioritized` when `OnDemandOptions.AllocationStrategy` asks for it; an override without a priority last),
//!   `price-capacity-optimized` for spot (deep pools first, then the cheapest); per-override errors
//!   (`InsufficientInstanceCapacity`, `MaxSpotInstanceCountExceeded`, `VcpuLimitExceeded`, `Unsupported`,
//!   `InsufficientFreeAddressesInSubnet`, `UnfulfillableCapacity`) beside partial success; vCPU quotas per
//!   capacity type.
//! - Instances pending -> running -> shutting-down -> terminated with state reasons and tags; private IPs from
//!   per-zone subnets with finite addresses; DescribeInstances with id / tag / tag-key / state filters and
//!   pagination, eventually consistent (a new instance is invisible for a few seconds, and calls naming it
//!   answer `InvalidInstanceID.NotFound`); CreateTags; TerminateInstances.
//! - Launch templates by name with a quota (`MaxTemplateLimitExceeded`), duplicates refused; subnets, security
//!   groups found by tag / id / name filters.
//! - Images and SSM: the EKS-optimized images of every family, variant and supported Kubernetes version
//!   (`images.rs`) with owners and deprecation times, DescribeImages by id / name / tag / owner (deprecated
//!   included), GetParameter for the public `/aws/service/...` parameters (`ParameterNotFound` otherwise);
//!   releases that move `recommended` and may deprecate the image it named (drift).
//! - KMS: a launch template whose block device names a disabled key yields an instance that goes pending ->
//!   terminated within seconds with `Client.InternalError: Client error on launch` and never runs.
//! - The interruption queue (SQS): EventBridge-shaped spot interruption warnings (two minutes before the
//!   reclaim), rebalance recommendations, AWS Health scheduled changes, state-change notifications, and any
//!   injected body; ReceiveMessage (1..10, visibility timeout, redelivery until deleted), DeleteMessage.
//! - API faults: throttling (`RequestLimitExceeded`) at a rate, latency ranges, outage windows (`Unavailable`).
//! - Foreign instances (untagged, or another cluster's) in every account; terminating one is a violation.
//! - On the wire (`http`): EC2's Query protocol and SQS's / SSM's JSON protocols over the same fake, for the
//!   AWS CLI and aws-sdk-rust, SigV4 signatures required (not verified).
//!
//! - Capacity reservations (`reservations.rs`): On-Demand Capacity Reservations (open / targeted,
//!   interruptible) and Capacity Blocks per type and zone, with counts and windows; DescribeCapacityReservations
//!   by id / owner / tag / match criteria; targeted launches (`ReservationCapacityExceeded` when full), open
//!   reservations absorbing on-demand launches that leave the preference `open`; a default reservation's end
//!   leaves its instances on-demand, a Capacity Block warns 40 minutes ahead and reclaims from 30; an
//!   interruptible reservation reclaimed with a 2-minute warning; reservations billed whole while active.
//!
//! # What is not modelled (yet)
//! EBS volumes as resources, ENIs and prefix delegation, placement groups, instance
//! store, per-account API rate buckets (throttling is a flat rate), IMDS, spot price history older than the
//! latest price, SQS long polling and FIFO queues, the Pricing API's shape (prices come as a map), EC2
//! actions beyond the adapter's (RunInstances, fleets of type `maintain` / `request`), launch template
//! versions, SigV4 signature checks.

pub mod catalog;
pub mod config;
pub mod ec2;
pub mod http;
pub mod images;
pub mod kubelet;
pub mod reservations;
pub mod sqs;

pub use catalog::{Catalog, CatalogEntry};
pub use config::CloudConfig;
pub use ec2::{FakeCloud, InstanceRecord};
