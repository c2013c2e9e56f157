//! The journal: where the controller reports each decision it takes, as one line of the scaling trace.
//!
//! In a cluster the lines go to the log; in the simulator they become the trace that users read and CI
//! snapshots, so every field written here is part of a stable, reviewed format.

/// A sink for decision lines. `source` is a short column such as `provision` or `lifecycle`.
pub trait Journal: Send + Sync + 'static {
    fn record(&self, source: &'static str, line: String);
}

/// Writes decisions to the `tracing` log; what the in-cluster binary uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct LogJournal;

impl Journal for LogJournal {
    fn record(&self, source: &'static str, line: String) {
        tracing::info!(target: "dovetail::decision", source, "{line}");
    }
}
