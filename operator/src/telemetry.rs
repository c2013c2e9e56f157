//! Logs through `tracing`: JSON lines or text, filtered by LOG_LEVEL.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use crate::error::OperatorError;

/// Install the global subscriber; decisions arrive as `dovetail::decision` events from the journal.
pub fn init(level: &str, format: LogFormat) -> Result<(), OperatorError> {
    let filter = EnvFilter::try_new(level).map_err(|e| OperatorError::Config {
        field: "LOG_LEVEL".into(),
        message: format!("`{level}` is not a level or tracing filter: {e}"),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
    installed.map_err(|e| OperatorError::Config {
        field: "LOG_FORMAT".into(),
        message: format!("cannot install the logger: {e}"),
    })
}
