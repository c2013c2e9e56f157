//! Provisioning: batch pending pods, plan new NodeClaims for them, and create those claims.

pub mod batcher;
pub mod planner;
pub mod provisioner;
pub mod requirements;

pub use batcher::Batcher;
pub use planner::{ClaimPlan, PendingPod, PoolOptions, plan};
