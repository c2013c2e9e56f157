//! The simulated Clock: turmoil's virtual time from a fixed epoch.

use std::time::Duration;

use async_trait::async_trait;
use dovetail::clock::Clock;
use jiff::Timestamp;

/// Every simulation starts at this instant, so Kubernetes timestamps are the same on every machine.
pub const EPOCH_SECONDS: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    epoch: Timestamp,
}

impl Default for SimClock {
    fn default() -> Self {
        SimClock {
            epoch: Timestamp::from_second(EPOCH_SECONDS).unwrap_or(Timestamp::UNIX_EPOCH),
        }
    }
}

impl SimClock {
    pub fn epoch(&self) -> Timestamp {
        self.epoch
    }

    /// Virtual time since the simulation began (zero outside a running host).
    pub fn elapsed(&self) -> Duration {
        turmoil::sim_elapsed().unwrap_or(Duration::ZERO)
    }
}

#[async_trait]
impl Clock for SimClock {
    fn now(&self) -> Timestamp {
        self.epoch.checked_add(self.elapsed()).unwrap_or(self.epoch)
    }

    async fn sleep(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}
