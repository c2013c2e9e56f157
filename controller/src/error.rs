//! The controller's error type: what stops the controller loop, as opposed to what is retried.

use crate::cloudprovider::CloudError;
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
