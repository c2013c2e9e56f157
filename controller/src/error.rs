//! The controller's error type: what stops the controller loop, as opposed to what is retried.

use crate::kube::KubeError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] KubeError),
    #[error("cloud API: {0}")]
    Cloud(#[from] CloudError),
    #[error(
        "lost the leader lease: could not renew it within the renew deadline; stopping so a follower can lead"
    )]
    LostLeadership,
}

/// A cloud API error answer: the code is what the provider classifies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CloudError {
    pub code: String,
    pub message: String,
}

impl CloudError {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        CloudError {
            code: code.into(),
            message: message.into(),
        }
    }
}
