//! The in-cluster `dovetail` binary's parts: flags, logs, the real adapters, `/metrics` and health, and
//! the run loop with graceful shutdown. The controller itself is the `dovetail` crate, unchanged.

pub mod config;
pub mod error;
pub mod run;
pub mod server;
pub mod telemetry;

#[cfg(feature = "aws")]
pub mod aws;
/// The Kube seam on kube-rs (its own crate, shared with the simulator's wire mode).
#[cfg(feature = "kube-client")]
pub use dovetail_kubeclient as kubeclient;

pub use error::OperatorError;
