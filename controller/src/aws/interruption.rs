//! The interruption queue: EventBridge messages about spot interruptions, scheduled maintenance, instance
//! state changes and rebalance recommendations, turned into early, graceful drains.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::AwsProvider;
use super::cloud::CapacityType;
use crate::context::Context;
use crate::crds::NodeClaim;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::state::ClusterState;

/// How often the queue is polled.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);
/// How long a received message stays hidden from other receivers while it is handled.
const VISIBILITY: Duration = Duration::from_secs(20);
/// Receives per poll at most (10 messages each), so a flooded queue cannot starve the other timers.
const RECEIVES_PER_POLL: usize = 10;

/// What a message asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// Two minutes before EC2 reclaims a spot instance.
    SpotInterruption,
    /// AWS Health: scheduled maintenance or retirement.
    ScheduledChange,
    /// The instance is stopping, stopped, shutting down or terminated.
    Stopping(String),
    /// EC2 suggests moving off a spot instance; Karpenter only records it.
    RebalanceRecommendation,
    /// Two minutes before EC2 reclaims an instance of an interruptible capacity reservation.
    CapacityReservationInterruption,
}

impl Notice {
    fn name(&self) -> String {
        match self {
            Notice::SpotInterruption => "spot-interruption".into(),
            Notice::ScheduledChange => "scheduled-change".into(),
            Notice::Stopping(state) => format!("state-change {state}"),
            Notice::RebalanceRecommendation => "rebalance-recommendation".into(),
            Notice::CapacityReservationInterruption => "capacity-reservation-interruption".into(),
        }
    }

    /// The `message_type` label Karpenter's interruption metrics use.
    fn metric_label(&self) -> &'static str {
        match self {
            Notice::SpotInterruption => "spot_interrupted",
            Notice::ScheduledChange => "scheduled_change",
            Notice::Stopping(_) => "instance_stopped",
            Notice::RebalanceRecommendation => "rebalance_recommendation",
            Notice::CapacityReservationInterruption => "capacity_reservation_interrupted",
        }
    }
}

/// The outcome of reading one message body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A notice about these instances.
    Notice(Notice, Vec<String>),
    /// A well-formed event that needs nothing (a `running` state change, another service's event).
    Ignored(String),
}

/// Read an EventBridge event as EC2 and AWS Health deliver it. `Err` names what is malformed.
pub fn parse(body: &str) -> Result<Parsed, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("not JSON: {e}"))?;
    let detail_type = v["detail-type"].as_str().ok_or("no `detail-type` field")?;
    let detail = &v["detail"];
    let instance = || {
        detail["instance-id"]
            .as_str()
            .map(|s| vec![s.to_string()])
            .ok_or_else(|| format!("{detail_type} without `detail.instance-id`"))
    };
    Ok(match detail_type {
        "EC2 Spot Instance Interruption Warning" => {
            Parsed::Notice(Notice::SpotInterruption, instance()?)
        }
        "EC2 Capacity Reservation Instance Interruption Warning" => {
            Parsed::Notice(Notice::CapacityReservationInterruption, instance()?)
        }
        "EC2 Instance Rebalance Recommendation" => {
            Parsed::Notice(Notice::RebalanceRecommendation, instance()?)
        }
        "EC2 Instance State-change Notification" => {
            let state = detail["state"]
                .as_str()
                .ok_or("state-change notification without `detail.state`")?;
            match state {
                "stopping" | "stopped" | "shutting-down" | "terminated" => {
                    Parsed::Notice(Notice::Stopping(state.to_string()), instance()?)
                }
                other => Parsed::Ignored(format!("state {other}")),
            }
        }
        "AWS Health Event" => {
            if detail["service"] != "EC2" || detail["eventTypeCategory"] != "scheduledChange" {
                return Ok(Parsed::Ignored(format!(
                    "health event {} {}",
                    detail["service"].as_str().unwrap_or("?"),
                    detail["eventTypeCategory"].as_str().unwrap_or("?")
                )));
            }
            let ids: Vec<String> = detail["affectedEntities"]
                .as_array()
                .ok_or("health event without `detail.affectedEntities`")?
                .iter()
                .filter_map(|e| e["entityValue"].as_str().map(str::to_string))
                .collect();
            Parsed::Notice(Notice::ScheduledChange, ids)
        }
        other => Parsed::Ignored(format!("detail-type `{other}`")),
    })
}

/// Counters a user can read in the trace (and later as metrics).
#[derive(Debug, Default, Clone)]
pub struct QueueStats {
    pub received: u64,
    pub acted: u64,
    pub malformed: u64,
    pub ignored: u64,
    pub unknown_instance: u64,
}

fn claim_for_instance<'a>(
    claims: &'a BTreeMap<String, NodeClaim>,
    id: &str,
) -> Option<&'a NodeClaim> {
    claims
        .values()
        .find(|c| super::instance_id_of(c).as_deref() == Some(id))
}

impl AwsProvider {
    /// Drain the queue: act on each message, then delete it — malformed and unknown ones too, counted, so a
    /// bad message can never wedge the loop. Errors reaching SQS are returned and retried next poll.
    pub(crate) async fn poll_interruptions(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
    ) -> Result<(), ControllerError> {
        let Some(queue) = ctx.settings.interruption_queue.clone() else {
            return Ok(());
        };
        for _ in 0..RECEIVES_PER_POLL {
            let messages = self.cloud.receive_messages(&queue, 10, VISIBILITY).await?;
            let full = messages.len() == 10;
            for m in messages {
                self.queue_stats.received += 1;
                let parsed = parse(&m.body);
                let message_type = match &parsed {
                    Ok(Parsed::Notice(notice, _)) => notice.metric_label(),
                    Ok(Parsed::Ignored(_)) => "unknown",
                    Err(_) => "malformed",
                };
                ctx.metrics.inc(
                    crate::metrics::INTERRUPTION_RECEIVED,
                    &[("message_type", message_type)],
                );
                match parsed {
                    Ok(Parsed::Notice(notice, ids)) => {
                        for id in ids {
                            self.handle_notice(ctx, state, &notice, &id).await?;
                        }
                    }
                    Ok(Parsed::Ignored(_)) => self.queue_stats.ignored += 1,
                    Err(why) => {
                        self.queue_stats.malformed += 1;
                        ctx.journal.record(
                            "interruption",
                            format!(
                                "message {} deleted: {why} (malformed so far: {})",
                                m.message_id, self.queue_stats.malformed
                            ),
                        );
                    }
                }
                match self.cloud.delete_message(&queue, &m.receipt_handle).await {
                    Ok(()) => ctx.metrics.inc(crate::metrics::INTERRUPTION_DELETED, &[]),
                    // Redelivered after its visibility timeout ran out: handled twice, which is harmless.
                    Err(e) if e.code == "ReceiptHandleIsInvalid" => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// Why EC2 says an instance stopped, for the launch-death record; best effort.
    async fn state_reason(&self, id: &str) -> String {
        let request = super::cloud::DescribeInstancesRequest {
            instance_ids: vec![id.to_string()],
            ..Default::default()
        };
        match self.cloud.describe_instances(request).await {
            Ok(out) => out
                .instances
                .into_iter()
                .find_map(|i| i.state_reason.map(|r| r.code))
                .unwrap_or_else(|| "no reason given".into()),
            Err(e) => format!("reason unknown: {}", e.code),
        }
    }

    async fn handle_notice(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        notice: &Notice,
        id: &str,
    ) -> Result<(), ControllerError> {
        let Some(claim) = claim_for_instance(&state.nodeclaims, id).cloned() else {
            // Not ours, already gone, or a foreign instance: nothing to do.
            self.queue_stats.unknown_instance += 1;
            return Ok(());
        };
        let name = claim.metadata.name.clone().unwrap_or_default();
        let node = claim.status.as_ref().and_then(|s| s.node_name.clone());
        if *notice == Notice::RebalanceRecommendation {
            ctx.journal.record(
                "interruption",
                format!(
                    "{} for {id} (nodeclaim/{name}): recorded, no action",
                    notice.name()
                ),
            );
            if let Some(node) = node {
                crate::events::on_node(
                    ctx,
                    state,
                    &node,
                    EventType::Normal,
                    "RebalanceRecommendation",
                    "EC2 recommends moving off this spot instance; Dovetail keeps it until it is interrupted",
                )
                .await;
            }
            return Ok(());
        }
        if claim.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        self.queue_stats.acted += 1;
        if matches!(notice, Notice::Stopping(_)) {
            state.instance_gone.insert(name.clone());
            if !claim.condition_true(crate::crds::nodeclaim::conditions::REGISTERED) {
                // Died before its node registered: the same launch death GC would count (a broken KMS key
                // kills every launch this way), so the node class backs off instead of looping.
                let reason = self.state_reason(id).await;
                let now = ctx.now();
                self.health
                    .launch_died(ctx, state, &claim, id, &reason, now)
                    .await;
            }
        }
        if *notice == Notice::SpotInterruption {
            // The pool is being reclaimed: replacements go elsewhere for the next three minutes.
            let labels = claim.metadata.labels.clone().unwrap_or_default();
            if let (Some(t), Some(z)) = (
                labels.get(crate::crds::labels::INSTANCE_TYPE),
                labels.get(crate::crds::labels::ZONE),
            ) {
                let now = ctx.now();
                self.unavailable.mark(CapacityType::Spot, t, z, now);
                self.refresh_offering_availability(now);
            }
        }
        if *notice == Notice::CapacityReservationInterruption
            && let Some(id) = claim
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(crate::crds::labels::CAPACITY_RESERVATION_ID))
        {
            // The owner is taking the reservation back: its replacement goes elsewhere (Karpenter marks
            // the reservation unavailable until EC2 says otherwise).
            self.classes.availability.full(id);
        }
        crate::metrics::count_claim(
            &ctx.metrics,
            crate::metrics::NODECLAIMS_DISRUPTED,
            &claim,
            &[("reason", "interruption")],
        );
        let drain = node
            .as_deref()
            .map_or(String::new(), |n| format!("draining node/{n} and "));
        ctx.journal.record(
            "interruption",
            format!(
                "{} for {id}: {drain}replacing nodeclaim/{name}",
                notice.name()
            ),
        );
        if let Some(node) = &node {
            let reason = match notice {
                Notice::SpotInterruption => "SpotInterrupted",
                Notice::ScheduledChange => "InstanceScheduledChange",
                Notice::CapacityReservationInterruption => "CapacityReservationInterrupted",
                _ => "InstanceStopping",
            };
            crate::events::on_node(
                ctx,
                state,
                node,
                EventType::Warning,
                reason,
                &format!(
                    "{}: draining the node ahead of the interruption",
                    notice.name()
                ),
            )
            .await;
        }
        match ctx
            .kube
            .delete(Kind::NodeClaim, &ObjectKey::cluster(&name))
            .await
        {
            Ok(()) | Err(KubeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(detail_type: &str, detail: serde_json::Value) -> String {
        serde_json::json!({"version": "0", "detail-type": detail_type, "source": "aws.ec2", "detail": detail})
            .to_string()
    }

    #[test]
    fn a_reclaimed_reservation_is_an_interruption() {
        let body = event(
            "EC2 Capacity Reservation Instance Interruption Warning",
            serde_json::json!({"instance-id": "i-9", "instance-action": "terminate"}),
        );
        assert_eq!(
            parse(&body),
            Ok(Parsed::Notice(
                Notice::CapacityReservationInterruption,
                vec!["i-9".into()]
            ))
        );
        // The block's own warning needs nothing: its nodes are drained by the expiration check.
        let warning = event(
            "Capacity Block Expiration Warning",
            serde_json::json!({"capacity-reservation-id": "cr-1"}),
        );
        assert!(matches!(parse(&warning), Ok(Parsed::Ignored(_))));
    }

    #[test]
    fn each_kind_is_read() {
        assert_eq!(
            parse(&event(
                "EC2 Spot Instance Interruption Warning",
                serde_json::json!({"instance-id": "i-1", "instance-action": "terminate"})
            )),
            Ok(Parsed::Notice(Notice::SpotInterruption, vec!["i-1".into()]))
        );
        assert_eq!(
            parse(&event(
                "EC2 Instance State-change Notification",
                serde_json::json!({"instance-id": "i-2", "state": "stopping"})
            )),
            Ok(Parsed::Notice(
                Notice::Stopping("stopping".into()),
                vec!["i-2".into()]
            ))
        );
        assert!(matches!(
            parse(&event(
                "EC2 Instance State-change Notification",
                serde_json::json!({"instance-id": "i-2", "state": "running"})
            )),
            Ok(Parsed::Ignored(_))
        ));
        assert_eq!(
            parse(&event(
                "AWS Health Event",
                serde_json::json!({"service": "EC2", "eventTypeCategory": "scheduledChange", "affectedEntities": [{"entityValue": "i-3"}, {"entityValue": "i-4"}]})
            )),
            Ok(Parsed::Notice(
                Notice::ScheduledChange,
                vec!["i-3".into(), "i-4".into()]
            ))
        );
        assert_eq!(
            parse(&event(
                "EC2 Instance Rebalance Recommendation",
                serde_json::json!({"instance-id": "i-5"})
            )),
            Ok(Parsed::Notice(
                Notice::RebalanceRecommendation,
                vec!["i-5".into()]
            ))
        );
        assert!(matches!(
            parse(&event("Something Else", serde_json::json!({}))),
            Ok(Parsed::Ignored(_))
        ));
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        assert!(parse("not json").unwrap_err().contains("not JSON"));
        assert!(parse("{}").unwrap_err().contains("detail-type"));
        let no_id = event(
            "EC2 Spot Instance Interruption Warning",
            serde_json::json!({}),
        );
        assert!(parse(&no_id).unwrap_err().contains("detail.instance-id"));
    }
}
