//! Provisioning: batch pending pods, plan new NodeClaims for them with the scheduling core, create them.

pub mod batcher;
pub mod provisioner;

pub use batcher::Batcher;
