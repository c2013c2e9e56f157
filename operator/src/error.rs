//! The binary's errors: what stopped it, with what to change.

#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    #[error("{field}: {message}")]
    Config { field: String, message: String },
    #[error("cannot serve {what} on {addr}: {source}")]
    Listen {
        what: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the Kubernetes API: {0} (in a pod, check the ServiceAccount; outside, KUBECONFIG)"
    )]
    Kube(String),
    #[error("AWS: {0} (check the IAM role, AWS_REGION and the credentials chain)")]
    Aws(String),
    #[error("this build has no {0} adapter; build with the default features")]
    NoAdapter(&'static str),
    #[error("the controller stopped: {0}")]
    Controller(#[from] dovetail::ControllerError),
}
