//! The scaling trace: one line per event, sim time first, fixed columns; the format users read and CI snapshots.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dovetail::journal::Journal;

use crate::clock::SimClock;
use crate::duration::stamp;

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub at: Duration,
    pub seq: u64,
    pub source: &'static str,
    pub text: String,
}

impl Entry {
    pub fn render(&self) -> String {
        format!("{} {:<10} {}", stamp(self.at), self.source, self.text)
    }
}

/// Collects entries from every host. Hosts run one after another within a tick, so entries are sorted by
/// time (then arrival) when read.
#[derive(Clone, Default)]
pub struct Trace {
    clock: SimClock,
    entries: Arc<Mutex<Vec<Entry>>>,
}

impl Trace {
    pub fn new(clock: SimClock) -> Self {
        Trace {
            clock,
            entries: Arc::default(),
        }
    }

    pub fn push(&self, source: &'static str, text: String) {
        self.push_at(self.clock.elapsed(), source, text);
    }

    /// The sim time now.
    pub fn now(&self) -> Duration {
        self.clock.elapsed()
    }

    /// An entry stamped with an explicit sim time, for code running outside a simulated host.
    pub fn push_at(&self, at: Duration, source: &'static str, text: String) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let seq = e.len() as u64;
        e.push(Entry {
            at,
            seq,
            source,
            text,
        });
    }

    pub fn entries(&self) -> Vec<Entry> {
        let mut v = self
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        v.sort_by_key(|e| (e.at, e.seq));
        v
    }
}

impl Journal for Trace {
    fn record(&self, source: &'static str, line: String) {
        self.push(source, line);
    }
}
