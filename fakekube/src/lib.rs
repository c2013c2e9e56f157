//! fakekube: an in-memory Kubernetes API server with a scheduler, kubelets and workload controllers.
//!
//! It implements dovetail's `Kube` trait. Its scheduler shares no code with dovetail's scheduling so that the
//! simulation can catch the controller's mistakes; the simulator's `cluster` host drives the control loops.

pub mod admission;
pub mod api;
pub mod cel;
pub mod disruption;
pub mod http;
pub mod kubelet;
pub mod merge;
pub mod node_faults;
pub mod placement;
pub mod plugins;
pub mod quantity;
pub mod scheduler;
pub mod schema;
pub mod selectors;
pub mod statefulsets;
pub mod store;
pub mod validation;
pub mod volumes;
pub mod workloads;

pub use api::FakeKube;
pub use kubelet::{Kubelets, Machine};
pub use node_faults::NodeFault;
pub use store::{Store, StoreError};
