//! Provisioning: batch pending pods, plan new NodeClaims for them with the scheduling core, create them;
//! keep static pools at their replica count; keep CapacityBuffers' headroom.

pub mod batcher;
pub mod buffers;
pub mod inputs;
pub(crate) mod provisioner;
pub(crate) mod static_capacity;
pub mod volumes;

pub use batcher::Batcher;
pub use inputs::pod_requirements;
pub(crate) use provisioner::{Provisioner, create_nodeclaim};
