//! The interruption queue: SQS semantics (at most 10 per receive, visibility timeout, redelivery until
//! deleted) carrying EventBridge-shaped EC2 and AWS Health events.

use std::time::Duration;

use dovetail::aws::cloud::{CloudError, QueueMessage};
use jiff::Timestamp;
use serde_json::json;

pub const ACCOUNT: &str = "123456789012";

#[derive(Debug, Clone)]
struct Stored {
    id: String,
    body: String,
    visible_at: Timestamp,
    receipt: Option<String>,
    receives: u32,
}

#[derive(Debug, Default)]
pub struct Queue {
    messages: Vec<Stored>,
    next_id: u64,
}

impl Queue {
    /// Queue a message; its id.
    pub fn send(&mut self, body: String, now: Timestamp) -> String {
        self.next_id += 1;
        let id = format!("{:08x}-0000-4000-8000-{:012x}", self.next_id, self.next_id);
        self.messages.push(Stored {
            id: id.clone(),
            body,
            visible_at: now,
            receipt: None,
            receives: 0,
        });
        id
    }

    pub fn receive(
        &mut self,
        max: u32,
        visibility: Duration,
        now: Timestamp,
    ) -> Result<Vec<QueueMessage>, CloudError> {
        if !(1..=10).contains(&max) {
            return Err(CloudError::new(
                "InvalidParameterValue",
                format!("MaxNumberOfMessages must be 1..10, got {max}"),
            ));
        }
        let hidden_until = now.checked_add(visibility).unwrap_or(now);
        let mut out = Vec::new();
        for m in self
            .messages
            .iter_mut()
            .filter(|m| m.visible_at <= now)
            .take(max as usize)
        {
            m.receives += 1;
            let receipt = format!("{}#{}", m.id, m.receives);
            m.receipt = Some(receipt.clone());
            m.visible_at = hidden_until;
            out.push(QueueMessage {
                message_id: m.id.clone(),
                receipt_handle: receipt,
                body: m.body.clone(),
            });
        }
        Ok(out)
    }

    pub fn delete(&mut self, receipt: &str) -> Result<(), CloudError> {
        match self
            .messages
            .iter()
            .position(|m| m.receipt.as_deref() == Some(receipt))
        {
            Some(i) => {
                self.messages.remove(i);
                Ok(())
            }
            None => Err(CloudError::new(
                "ReceiptHandleIsInvalid",
                format!("The receipt handle \"{receipt}\" is not valid."),
            )),
        }
    }
}

fn event(
    detail_type: &str,
    source: &str,
    region: &str,
    instance_id: &str,
    detail: serde_json::Value,
    now: Timestamp,
) -> String {
    json!({
        "version": "0",
        "id": format!("evt-{instance_id}-{}", now.as_second()),
        "detail-type": detail_type,
        "source": source,
        "account": ACCOUNT,
        "time": now.to_string(),
        "region": region,
        "resources": [format!("arn:aws:ec2:{region}:{ACCOUNT}:instance/{instance_id}")],
        "detail": detail,
    })
    .to_string()
}

pub fn spot_interruption_warning(region: &str, instance_id: &str, now: Timestamp) -> String {
    event(
        "EC2 Spot Instance Interruption Warning",
        "aws.ec2",
        region,
        instance_id,
        json!({"instance-id": instance_id, "instance-action": "terminate"}),
        now,
    )
}

pub fn rebalance_recommendation(region: &str, instance_id: &str, now: Timestamp) -> String {
    event(
        "EC2 Instance Rebalance Recommendation",
        "aws.ec2",
        region,
        instance_id,
        json!({"instance-id": instance_id}),
        now,
    )
}

pub fn state_change(region: &str, instance_id: &str, state: &str, now: Timestamp) -> String {
    event(
        "EC2 Instance State-change Notification",
        "aws.ec2",
        region,
        instance_id,
        json!({"instance-id": instance_id, "state": state}),
        now,
    )
}

pub fn scheduled_change(region: &str, instance_id: &str, now: Timestamp) -> String {
    event(
        "AWS Health Event",
        "aws.health",
        region,
        instance_id,
        json!({"service": "EC2", "eventTypeCategory": "scheduledChange", "eventTypeCode": "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED", "affectedEntities": [{"entityValue": instance_id}]}),
        now,
    )
}
