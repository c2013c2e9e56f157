//! Launch health per EC2NodeClass: launches that die before their node registers (a broken KMS key kills
//! every one the same way) are counted, pause the class's launches with a doubling backoff, and are named
//! in its `LaunchesHealthy` condition.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::context::Context;
use crate::crds::NodeClaim;
use crate::state::ClusterState;

/// Launch deaths in this window that mark a node class as failing.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(10 * 60);
pub const FAILURES_TO_PAUSE: usize = 3;
/// Launch pauses double from the first to the last.
pub const FIRST_PAUSE: Duration = Duration::from_secs(60);
pub const MAX_PAUSE: Duration = Duration::from_secs(5 * 60);
/// Condition type on an EC2NodeClass whose launches die before they run.
pub const LAUNCHES_HEALTHY: &str = "LaunchesHealthy";

/// Launch deaths per node class, and the pause they earned.
#[derive(Debug, Default)]
pub struct LaunchHealth {
    deaths: BTreeMap<String, Vec<(Duration, String)>>,
    paused: BTreeMap<String, (Duration, Duration)>,
    /// The message of the class's failing condition.
    problems: BTreeMap<String, String>,
    /// Deaths since a node of the class last registered.
    since_healthy: BTreeMap<String, usize>,
}

impl LaunchHealth {
    /// Record a death; returns the pause (until, length) when this death starts or lengthens one. Once a
    /// class is failing, every further death doubles its pause (up to the cap) until a node of it
    /// registers: the launch rate only falls, and no two launches slip through between pauses.
    pub fn record_death(
        &mut self,
        class: &str,
        reason: &str,
        now: Duration,
    ) -> Option<(Duration, Duration)> {
        *self.since_healthy.entry(class.to_string()).or_default() += 1;
        let list = self.deaths.entry(class.to_string()).or_default();
        list.retain(|(t, _)| now.saturating_sub(*t) < FAILURE_WINDOW);
        list.push((now, reason.to_string()));
        let length = match self.paused.get(class) {
            Some((_, len)) => (*len * 2).min(MAX_PAUSE),
            None if list.len() < FAILURES_TO_PAUSE => return None,
            None => FIRST_PAUSE,
        };
        self.paused
            .insert(class.to_string(), (now + length, length));
        Some((now + length, length))
    }

    /// Why launches of this class are failing, while they are (from the first pause until a node of it
    /// registers).
    pub fn problem(&self, class: &str) -> Option<&str> {
        self.problems.get(class).map(String::as_str)
    }

    /// Until when launches for this class wait, if they do.
    pub fn paused_until(&self, class: &str, now: Duration) -> Option<Duration> {
        self.paused.get(class).map(|(t, _)| *t).filter(|t| *t > now)
    }

    /// A node of this class came up: forget its deaths. True when it had been marked failing.
    pub fn healed(&mut self, class: &str) -> bool {
        self.deaths.remove(class);
        self.problems.remove(class);
        self.since_healthy.remove(class);
        self.paused.remove(class).is_some()
    }

    /// A launch died before its node registered: count it against the node class; at the threshold,
    /// pause that class's launches and say why on the EC2NodeClass.
    pub(crate) async fn launch_died(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        claim: &NodeClaim,
        id: &str,
        reason: &str,
        now: Duration,
    ) {
        let class = claim.spec.node_class_ref.name.clone();
        let Some((_, length)) = self.record_death(&class, reason, now) else {
            return;
        };
        let keys: Vec<String> = state
            .nodeclasses
            .get(&class)
            .map(|c| {
                c.spec
                    .block_device_mappings
                    .iter()
                    .filter_map(|b| b.ebs.as_ref().and_then(|e| e.kms_key_id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let hint = if keys.is_empty() {
            String::new()
        } else {
            format!(
                "; check that KMS key {} is enabled and usable by the node role",
                keys.join(", ")
            )
        };
        let deaths = self.since_healthy.get(&class).copied().unwrap_or_default();
        let message = format!(
            "{deaths} launches died before their nodes registered (last: {id}, {reason}){hint}; launches paused for {}s",
            length.as_secs()
        );
        self.problems.insert(class.clone(), message.clone());
        ctx.journal.record(
            "lifecycle",
            format!("ec2nodeclass/{class} launches failing: {message}"),
        );
        set_class_condition(
            ctx,
            state,
            &class,
            "False",
            "InstancesTerminatedOnLaunch",
            &message,
        )
        .await;
    }

    /// A claim's node registered: forget its class's deaths, and say so if the class had been failing.
    pub(crate) async fn registered(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        claim: &NodeClaim,
    ) {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let class = claim.spec.node_class_ref.name.clone();
        if self.healed(&class) {
            ctx.journal.record(
                "lifecycle",
                format!("ec2nodeclass/{class} launches healthy again: nodeclaim/{name} registered"),
            );
            set_class_condition(
                ctx,
                state,
                &class,
                "True",
                "NodeRegistered",
                &format!("nodeclaim/{name} registered its node"),
            )
            .await;
        }
    }
}

/// Set the `LaunchesHealthy` condition on an EC2NodeClass, keeping its other conditions. Best effort:
/// a failed patch is logged, the next event sets it again.
async fn set_class_condition(
    ctx: &Context,
    state: &mut ClusterState,
    class: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let Some(nc) = state.nodeclasses.get(class) else {
        return;
    };
    let mut conds: Vec<serde_json::Value> = nc
        .status
        .as_ref()
        .map(|s| {
            s.conditions
                .iter()
                .filter(|c| c.type_ != LAUNCHES_HEALTHY)
                .map(|c| serde_json::to_value(c).unwrap_or_default())
                .collect()
        })
        .unwrap_or_default();
    conds.push(json!({
        "type": LAUNCHES_HEALTHY,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": ctx.clock.now().to_string(),
    }));
    super::nodeclass::patch_class_status(
        ctx,
        state,
        class,
        json!({ "conditions": conds }),
        "lifecycle",
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deaths_pause_launches_with_doubling_backoff() {
        let mut h = LaunchHealth::default();
        let t = |s| Duration::from_secs(s);
        assert_eq!(h.record_death("c", "Client.InternalError", t(0)), None);
        assert_eq!(h.record_death("c", "Client.InternalError", t(10)), None);
        assert_eq!(
            h.record_death("c", "Client.InternalError", t(20)),
            Some((t(80), t(60)))
        );
        assert_eq!(h.paused_until("c", t(30)), Some(t(80)));
        assert_eq!(h.paused_until("c", t(80)), None);
        assert_eq!(
            h.record_death("c", "Client.InternalError", t(90)),
            Some((t(210), t(120)))
        );
        assert_eq!(h.paused_until("other", t(90)), None);
        assert!(h.healed("c"));
        assert!(!h.healed("c"));
        assert_eq!(
            h.record_death("c", "x", t(300)),
            None,
            "healing starts the count again"
        );
    }

    #[test]
    fn a_failing_class_backs_off_monotonically_until_it_heals() {
        let mut h = LaunchHealth::default();
        let t = |s| Duration::from_secs(s);
        for at in [0, 5, 10] {
            h.record_death("c", "x", t(at));
        }
        // One death per pause, each after the pause ended: the pauses only grow, to the cap, even when
        // the deaths that started it have left the window.
        let mut at = 10;
        let mut lengths = Vec::new();
        for _ in 0..6 {
            let until = h.paused_until("c", t(at)).unwrap();
            at = until.as_secs() + 5;
            let (_, length) = h.record_death("c", "x", t(at)).unwrap();
            lengths.push(length.as_secs());
        }
        assert_eq!(lengths, [120, 240, 300, 300, 300, 300]);
        assert!(h.healed("c"));
        assert_eq!(h.paused_until("c", t(at)), None);
    }

    #[test]
    fn old_deaths_fall_out_of_the_window() {
        let mut h = LaunchHealth::default();
        let t = |s| Duration::from_secs(s);
        h.record_death("c", "x", t(0));
        h.record_death("c", "x", t(10));
        assert_eq!(
            h.record_death("c", "x", t(700)),
            None,
            "the first two are over 10 minutes old"
        );
    }
}
