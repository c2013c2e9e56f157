//! Dovetail: a Kubernetes node autoscaler for AWS that reads Karpenter's API and runs unchanged in simulation.
//!
//! The controller talks to the outside world only through three seams: [`clock::Clock`],
//! [`kube::Kube`] and the AWS provider's [`aws::cloud::Cloud`] (plus the [`journal::Journal`] it reports
//! decisions to). The provider-neutral controllers (`provisioning`, `nodeclaim`, `node`, `nodepool`,
//! `disruption`) reach the cloud only through [`cloudprovider::CloudProvider`], which `aws` implements.
//! See ARCHITECTURE.md for the map and its invariants.

// Seams and shared services.
pub mod clock;
pub mod context;
pub mod journal;
pub mod kube;

pub(crate) mod condition_metrics;
pub mod events;
pub mod leader;
pub mod metrics;

// Shared vocabulary.
pub(crate) mod conditions;
pub mod crds;
pub mod duration;
pub mod error;
pub mod names;
pub mod quantity;
pub mod resources;

// The cluster state and the pure scheduling core.
pub mod scheduling;
pub mod state;

// Provider-neutral controllers and their one interface to a cloud.
pub mod cloudprovider;
pub mod disruption;
pub mod node;
pub mod nodeclaim;
pub mod nodepool;
pub mod provisioning;

// Everything that knows EC2 and SQS exist.
pub mod aws;

// The main loop that wires them together.
pub mod run;

pub use context::{Context, Settings};
pub use error::ControllerError;
pub use run::run;
