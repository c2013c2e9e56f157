//! The Clock seam: wall time for Kubernetes timestamps and sleeping, real or simulated.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

/// Everything the controller knows about time comes through here.
#[async_trait]
pub trait Clock: Send + Sync + 'static {
    /// The current wall-clock time.
    fn now(&self) -> Timestamp;

    /// Sleep for `duration` of this clock's time.
    async fn sleep(&self, duration: Duration);
}

/// The real clock: the system's wall time and tokio's timers. The only place in the controller that may read
/// the system time (the tidy test allow-lists this file).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let now = std::time::SystemTime::now(); // allow-nondeterminism: the real clock adapter; the simulator passes its own Clock
        Timestamp::try_from(now).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// Signed duration from `earlier` to `later`, saturating at zero.
pub fn since(later: Timestamp, earlier: Timestamp) -> Duration {
    let span = later.as_duration().saturating_sub(earlier.as_duration());
    Duration::try_from(span).unwrap_or(Duration::ZERO)
}

/// A clock that moves only when told to; sleeping advances it at once. For tests of code on the Clock seam.
#[derive(Debug, Clone)]
pub struct ManualClock(std::sync::Arc<std::sync::Mutex<Timestamp>>);

impl ManualClock {
    pub fn starting_at(t: Timestamp) -> Self {
        ManualClock(std::sync::Arc::new(std::sync::Mutex::new(t)))
    }

    pub fn advance(&self, d: Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *t = t.checked_add(d).unwrap_or(*t);
    }
}

#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn sleep(&self, duration: Duration) {
        self.advance(duration);
    }
}
