//! Garbage collection and liveness: orphaned instances, claims whose instance died or never came, and
//! launches that keep dying the same way (a broken KMS key) — recognised, named in a condition, backed off.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::cloud::{DescribeInstancesRequest, Instance, InstanceState};
use crate::crds::nodeclaim::conditions;
use crate::crds::{NodeClaim, labels};
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::run::Controller;

/// How often instances are compared with NodeClaims.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// An instance this young with no claim may be a launch whose claim update is still on its way.
pub const ORPHAN_GRACE: Duration = Duration::from_secs(60);
/// Karpenter's liveness: a claim not launched in 5 minutes, or not registered 15 minutes after creation,
/// is deleted and its pods planned again.
pub const LAUNCH_TTL: Duration = Duration::from_secs(5 * 60);
pub const REGISTRATION_TTL: Duration = Duration::from_secs(15 * 60);
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
}

impl LaunchHealth {
    /// Record a death; returns the pause (until, length) when this death starts or lengthens one.
    pub fn record_death(
        &mut self,
        class: &str,
        reason: &str,
        now: Duration,
    ) -> Option<(Duration, Duration)> {
        let list = self.deaths.entry(class.to_string()).or_default();
        list.retain(|(t, _)| now.saturating_sub(*t) < FAILURE_WINDOW);
        list.push((now, reason.to_string()));
        if list.len() < FAILURES_TO_PAUSE {
            return None;
        }
        let length = match self.paused.get(class) {
            Some((_, len)) => (*len * 2).min(MAX_PAUSE),
            None => FIRST_PAUSE,
        };
        self.paused
            .insert(class.to_string(), (now + length, length));
        Some((now + length, length))
    }

    /// Until when launches for this class wait, if they do.
    pub fn paused_until(&self, class: &str, now: Duration) -> Option<Duration> {
        self.paused.get(class).map(|(t, _)| *t).filter(|t| *t > now)
    }

    /// A node of this class came up: forget its deaths. True when it had been marked failing.
    pub fn healed(&mut self, class: &str) -> bool {
        self.deaths.remove(class);
        self.paused.remove(class).is_some()
    }
}

/// The EC2 instance id in a claim's providerID (`aws:///<zone>/i-...`).
pub(crate) fn instance_id(claim: &NodeClaim) -> Option<String> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(|p| p.rsplit('/').next())
        .filter(|s| s.starts_with("i-"))
        .map(str::to_string)
}

impl Controller {
    /// Every instance tagged for this cluster, all pages, terminated ones included (EC2 shows them for a
    /// while, with the reason they died).
    async fn cluster_instances(&self) -> Result<BTreeMap<String, Instance>, ControllerError> {
        let (key, value) = self.cluster_tag();
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .ctx
                .cloud
                .describe_instances(DescribeInstancesRequest {
                    tags: [(key.clone(), value.clone())].into(),
                    max_results: Some(1000),
                    next_token: token,
                    ..Default::default()
                })
                .await?;
            for i in page.instances {
                out.insert(i.id.clone(), i);
            }
            token = page.next_token;
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// One garbage-collection pass. Untagged instances and other clusters' never appear in the listing, so
    /// they are never touched.
    pub(crate) async fn collect_garbage(&mut self) -> Result<(), ControllerError> {
        let instances = self.cluster_instances().await?;
        let now = self.now();
        let wall = self.ctx.clock.now();
        let claims: Vec<NodeClaim> = self.state.nodeclaims.values().cloned().collect();
        for claim in &claims {
            if claim.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let name = claim.metadata.name.clone().unwrap_or_default();
            let age = claim
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| crate::clock::since(wall, t.0))
                .unwrap_or_default();
            let launched = claim.condition_true(conditions::LAUNCHED);
            let registered = claim.condition_true(conditions::REGISTERED);
            // A claim held back by a launch pause waits by our choice, not because it is stuck.
            let paused = self
                .launch_health
                .paused_until(&claim.spec.node_class_ref.name, now)
                .is_some();
            let why = if !launched && !paused && age >= LAUNCH_TTL {
                Some(format!("not launched after {}s", LAUNCH_TTL.as_secs()))
            } else if launched && !registered && age >= REGISTRATION_TTL {
                Some(format!(
                    "not registered after {}s",
                    REGISTRATION_TTL.as_secs()
                ))
            } else if let Some(id) = instance_id(claim) {
                match instances.get(&id) {
                    Some(i)
                        if matches!(
                            i.state,
                            InstanceState::Terminated | InstanceState::ShuttingDown
                        ) =>
                    {
                        let reason = i
                            .state_reason
                            .as_ref()
                            .map(|r| r.code.clone())
                            .unwrap_or_else(|| "no reason given".into());
                        if !registered {
                            self.launch_died(claim, &id, &reason, now).await;
                        }
                        self.instance_gone.insert(name.clone());
                        Some(format!("instance {id} is {} ({reason})", i.state.as_str()))
                    }
                    // Just launched instances may not be listed yet (eventual consistency).
                    None if claim
                        .condition_time(conditions::LAUNCHED)
                        .is_none_or(|t| crate::clock::since(wall, t) >= ORPHAN_GRACE) =>
                    {
                        self.instance_gone.insert(name.clone());
                        Some(format!("instance {id} no longer exists"))
                    }
                    _ => None,
                }
            } else {
                None
            };
            if let Some(why) = why {
                self.ctx
                    .journal
                    .record("gc", format!("delete nodeclaim/{name}: {why}"));
                // `kubectl describe nodeclaim` shows why it went.
                self.emit_event(
                    Kind::NodeClaim,
                    &ObjectKey::cluster(&name),
                    claim.metadata.uid.clone(),
                    crate::events::EventType::Warning,
                    "GarbageCollected",
                    &format!("Deleting this NodeClaim: {why}"),
                )
                .await;
                self.ctx
                    .kube
                    .delete(Kind::NodeClaim, &ObjectKey::cluster(&name))
                    .await?;
            }
        }
        // Instances whose claim is gone: a launch whose claim update was lost (a restart), or a claim
        // deleted behind our back. Terminate them once they are past the grace period.
        let mut orphans = Vec::new();
        for (id, i) in &instances {
            if !matches!(i.state, InstanceState::Pending | InstanceState::Running) {
                continue;
            }
            let owner = i.tags.get(labels::TAG_NODECLAIM);
            let recorded = self
                .state
                .nodeclaims
                .values()
                .any(|c| instance_id(c).as_deref() == Some(id.as_str()));
            // A claim without a provider id may still be recording this launch (or adopt it after a
            // restart); a claim that recorded another instance does not own this one: it leaked.
            let owner_claim = owner.and_then(|n| self.state.nodeclaims.get(n));
            let in_flight = owner_claim.is_some_and(|c| instance_id(c).is_none());
            if !recorded && !in_flight && crate::clock::since(wall, i.launch_time) >= ORPHAN_GRACE {
                orphans.push(id.clone());
                let why = match (owner, owner_claim.and_then(instance_id)) {
                    (None, _) => "no nodeclaim tag".to_string(),
                    (Some(n), Some(other)) => format!("nodeclaim/{n} runs on {other}"),
                    (Some(n), None) => format!("nodeclaim/{n} not found"),
                };
                self.ctx.journal.record(
                    "gc",
                    format!("terminate orphan {id} ({why}): no NodeClaim owns it"),
                );
            }
        }
        if !orphans.is_empty() {
            self.ctx.cloud.terminate_instances(orphans).await?;
        }
        self.collect_lost_nodes(&instances).await
    }

    /// Nodes of a NodePool whose instance is gone and that no NodeClaim owns (a leaked launch's node after
    /// its instance was terminated): delete them so their pods are rescheduled and the count is honest.
    async fn collect_lost_nodes(
        &mut self,
        instances: &BTreeMap<String, Instance>,
    ) -> Result<(), ControllerError> {
        let wall = self.ctx.clock.now();
        let mut lost = Vec::new();
        // Node names and provider ids some claim records, to ask once per node instead of scanning claims.
        let owned: std::collections::BTreeSet<&str> = self
            .state
            .nodeclaims
            .values()
            .filter_map(|c| c.status.as_ref())
            .flat_map(|s| [s.node_name.as_deref(), s.provider_id.as_deref()])
            .flatten()
            .collect();
        for (name, node) in &self.state.nodes {
            let provider = node.spec.as_ref().and_then(|s| s.provider_id.as_deref());
            let managed = node
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(labels::NODEPOOL));
            if !managed
                || node.metadata.deletion_timestamp.is_some()
                || owned.contains(name.as_str())
                || provider.is_some_and(|p| owned.contains(p))
            {
                continue;
            }
            let Some(id) = node
                .spec
                .as_ref()
                .and_then(|s| s.provider_id.as_deref())
                .and_then(|p| p.rsplit('/').next())
            else {
                continue;
            };
            let gone = match instances.get(id) {
                Some(i) => matches!(
                    i.state,
                    InstanceState::Terminated | InstanceState::ShuttingDown
                ),
                // Not listed: gone, unless the node is too young for the listing to have caught up.
                None => node
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .is_some_and(|t| crate::clock::since(wall, t.0) >= ORPHAN_GRACE),
            };
            if gone {
                lost.push((name.clone(), id.to_string()));
            }
        }
        for (name, id) in lost {
            self.ctx.journal.record(
                "gc",
                format!("delete node/{name}: instance {id} is gone and no NodeClaim owns the node"),
            );
            self.delete_if_present(Kind::Node, &ObjectKey::cluster(&name))
                .await?;
        }
        Ok(())
    }

    /// A launch died before its node registered: count it against the node class; at the threshold,
    /// pause that class's launches and say why on the EC2NodeClass.
    pub(crate) async fn launch_died(
        &mut self,
        claim: &NodeClaim,
        id: &str,
        reason: &str,
        now: Duration,
    ) {
        let class = claim.spec.node_class_ref.name.clone();
        let Some((_, length)) = self.launch_health.record_death(&class, reason, now) else {
            return;
        };
        let keys: Vec<String> = self
            .state
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
        let message = format!(
            "{FAILURES_TO_PAUSE} launches died within {}m before their nodes registered (last: {id}, {reason}){hint}; launches paused for {}s",
            FAILURE_WINDOW.as_secs() / 60,
            length.as_secs()
        );
        self.ctx.journal.record(
            "lifecycle",
            format!("ec2nodeclass/{class} launches failing: {message}"),
        );
        self.set_class_condition(&class, "False", "InstancesTerminatedOnLaunch", &message)
            .await;
    }

    /// Set the `LaunchesHealthy` condition on an EC2NodeClass, keeping its other conditions. Best effort:
    /// a failed patch is logged, the next event sets it again.
    pub(crate) async fn set_class_condition(
        &mut self,
        class: &str,
        status: &str,
        reason: &str,
        message: &str,
    ) {
        let Some(nc) = self.state.nodeclasses.get(class) else {
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
            "lastTransitionTime": self.ctx.clock.now().to_string(),
        }));
        self.patch_class_status(class, json!({ "conditions": conds }), "lifecycle")
            .await;
    }
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
