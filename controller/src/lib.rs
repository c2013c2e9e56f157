//! Dovetail: a Kubernetes node autoscaler for AWS that reads Karpenter's API and runs unchanged in simulation.
//!
//! The controller talks to the outside world only through three seams: [`clock::Clock`],
//! [`kube::Kube`] and [`cloud::Cloud`] (plus the [`journal::Journal`] it reports decisions to).
//! Everything else — batching, instance-type choice, the NodeClaim lifecycle — is plain code here, so the
//! simulator exercises exactly what runs in a cluster.

pub mod clock;
pub mod cloud;
pub(crate) mod conditions;
pub mod crds;
pub mod disruption;
pub mod duration;
pub mod error;
pub mod events;
pub mod gc;
pub mod instancetype;
pub mod interruption;
pub mod journal;
pub mod kube;
pub mod launch;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod nodeclass;
pub mod poolstatus;
pub mod provisioning;
pub mod quantity;
pub mod resources;
pub mod run;
pub mod scheduling;
pub mod state;
pub mod termination;

pub use error::ControllerError;
pub use run::{Context, Settings, run};
