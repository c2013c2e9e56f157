//! The simulator's errors: bad input (exit code 2) versus a run that failed its checks (exit code 1).

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{file}:{line}:{column}: {field}: {message}")]
    Scenario {
        file: String,
        line: u32,
        column: u32,
        field: String,
        message: String,
    },
    #[error("cannot read {path}: {message}")]
    Io { path: String, message: String },
    #[error("simulation failed: {0}")]
    Run(String),
}

impl SimError {
    /// The process exit code: 2 for input the user must fix, 1 for a run that went wrong.
    pub fn exit_code(&self) -> u8 {
        match self {
            SimError::Scenario { .. } | SimError::Io { .. } => 2,
            SimError::Run(_) => 1,
        }
    }
}
