//! The scheduling core: pure code (no async, no I/O) that decides where pending pods can go and which new
//! NodeClaims to create for the rest.

pub mod planner;
pub mod requirements;
pub mod taints;
pub mod topology;

pub use planner::{
    ClaimPlan, ExistingCapacity, ExistingPod, PendingPod, Plan, PoolOptions, plan, plan_on,
};
pub use requirements::{Requirement, RequirementError, Requirements};
