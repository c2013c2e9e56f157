//! The provisioning batch window: close after 1 s without new pending pods, or 10 s after it opened.

use std::time::Duration;

/// A pure state machine over a monotonic time in nanoseconds, so tests drive it without a clock.
#[derive(Debug, Clone)]
pub struct Batcher {
    idle: Duration,
    max: Duration,
    opened_at: Option<Duration>,
    last_trigger: Duration,
}

impl Batcher {
    pub fn new(idle: Duration, max: Duration) -> Self {
        Batcher {
            idle,
            max,
            opened_at: None,
            last_trigger: Duration::ZERO,
        }
    }

    /// A pod became pending (or changed while pending) at `now`.
    pub fn trigger(&mut self, now: Duration) {
        if self.opened_at.is_none() {
            self.opened_at = Some(now);
        }
        self.last_trigger = now;
    }

    pub fn is_open(&self) -> bool {
        self.opened_at.is_some()
    }

    /// When the open window closes, if one is open.
    pub fn deadline(&self) -> Option<Duration> {
        let opened = self.opened_at?;
        Some((self.last_trigger + self.idle).min(opened + self.max))
    }

    /// Close the window if due at `now`; returns how long it was open.
    pub fn close_if_due(&mut self, now: Duration) -> Option<Duration> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        let opened = self.opened_at.take()?;
        Some(now - opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn closes_after_one_idle_second() {
        let mut b = Batcher::new(s(1.0), s(10.0));
        b.trigger(s(0.0));
        b.trigger(s(0.5));
        assert_eq!(b.deadline(), Some(s(1.5)));
        assert_eq!(b.close_if_due(s(1.4)), None);
        assert_eq!(b.close_if_due(s(1.5)), Some(s(1.5)));
        assert!(!b.is_open());
    }

    #[test]
    fn a_steady_trickle_is_cut_at_ten_seconds() {
        let mut b = Batcher::new(s(1.0), s(10.0));
        for i in 0..40 {
            b.trigger(s(i as f64 * 0.5));
            if b.close_if_due(s(i as f64 * 0.5)).is_some() {
                assert_eq!(i, 20, "window must close at 10 s");
                return;
            }
        }
        panic!("window never closed");
    }
}
