//! The AWS JSON protocols: SQS (`AmazonSQS.*`, JSON 1.0, query-compatible error codes) for the interruption
//! queue and SSM (`AmazonSSM.*`, JSON 1.1) for image parameters.

use std::time::Duration;

use dovetail::aws::cloud::{Cloud, CloudError};
use md5::{Digest, Md5};
use serde_json::{Value, json};

use crate::FakeCloud;

/// The SQS and SSM operations served.
pub const OPERATIONS: &[&str] = &[
    "AmazonSQS.GetQueueUrl",
    "AmazonSQS.ReceiveMessage",
    "AmazonSQS.DeleteMessage",
    "AmazonSQS.SendMessage",
    "AmazonSSM.GetParameter",
];

/// SQS's default visibility timeout for a queue created with no attributes.
const DEFAULT_VISIBILITY: Duration = Duration::from_secs(30);

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn string<'a>(body: &'a Value, field: &str) -> Result<&'a str, CloudError> {
    body.get(field).and_then(Value::as_str).ok_or_else(|| {
        CloudError::new(
            "MissingParameter",
            format!("The request must contain the parameter {field}."),
        )
    })
}

fn number(body: &Value, field: &str) -> Result<Option<i64>, CloudError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_i64().map(Some).ok_or_else(|| {
            CloudError::new(
                "InvalidParameterValue",
                format!("Value {v} for parameter {field} is invalid: a number is expected."),
            )
        }),
    }
}

fn queue_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

/// One call: the JSON answer, or the service's error.
pub async fn call(cloud: &FakeCloud, target: &str, body: &Value) -> Result<Value, CloudError> {
    let queue = &cloud.config().queue_url;
    match target {
        "AmazonSQS.GetQueueUrl" => {
            let name = string(body, "QueueName")?;
            if name != queue_name(queue) {
                return Err(CloudError::new(
                    "AWS.SimpleQueueService.NonExistentQueue",
                    "The specified queue does not exist.",
                ));
            }
            Ok(json!({ "QueueUrl": queue }))
        }
        "AmazonSQS.ReceiveMessage" => {
            let url = string(body, "QueueUrl")?;
            let max = number(body, "MaxNumberOfMessages")?.unwrap_or(1);
            let visibility = number(body, "VisibilityTimeout")?
                .map_or(DEFAULT_VISIBILITY, |s| Duration::from_secs(s.max(0) as u64));
            // Long polling is not modelled: the answer comes at once, empty or not.
            let messages = cloud
                .receive_messages(url, max.clamp(0, i64::from(u32::MAX)) as u32, visibility)
                .await?;
            let messages: Vec<Value> = messages
                .iter()
                .map(|m| {
                    json!({
                        "MessageId": m.message_id,
                        "ReceiptHandle": m.receipt_handle,
                        "MD5OfBody": md5_hex(&m.body),
                        "Body": m.body,
                    })
                })
                .collect();
            Ok(if messages.is_empty() {
                json!({})
            } else {
                json!({ "Messages": messages })
            })
        }
        "AmazonSQS.DeleteMessage" => {
            let url = string(body, "QueueUrl")?;
            let receipt = string(body, "ReceiptHandle")?;
            cloud.delete_message(url, receipt).await?;
            Ok(json!({}))
        }
        "AmazonSQS.SendMessage" => {
            let url = string(body, "QueueUrl")?;
            let text = string(body, "MessageBody")?;
            let id = cloud.send_message(url, text.to_string())?;
            Ok(json!({ "MessageId": id, "MD5OfMessageBody": md5_hex(text) }))
        }
        "AmazonSSM.GetParameter" => {
            let name = string(body, "Name")?;
            let value = cloud.get_parameter(name).await?;
            Ok(json!({
                "Parameter": {
                    "Name": name,
                    "Type": "String",
                    "Value": value,
                    "Version": 1,
                    "DataType": if value.starts_with("ami-") { "aws:ec2:image" } else { "text" },
                    "ARN": format!("arn:aws:ssm:{}::parameter{name}", cloud.config().region),
                }
            }))
        }
        other => Err(CloudError::new(
            "UnknownOperationException",
            format!(
                "{other} is not an operation this fake serves ({}).",
                OPERATIONS.join(", ")
            ),
        )),
    }
}

/// How a JSON service names an error: its `__type` and, for SQS, the query-compatible code the SDKs read
/// from `x-amzn-query-error`.
pub fn error_type(target: &str, code: &str) -> (String, Option<String>) {
    if target.starts_with("AmazonSQS.") {
        let shape = match code {
            "AWS.SimpleQueueService.NonExistentQueue" => "QueueDoesNotExist",
            "ReceiptHandleIsInvalid" => "ReceiptHandleIsInvalid",
            "MissingParameter" => "MissingParameter",
            "UnknownOperationException" => "UnsupportedOperation",
            other => other,
        };
        (
            format!("com.amazonaws.sqs#{shape}"),
            Some(format!("{code};Sender")),
        )
    } else {
        (code.to_string(), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_is_the_hex_digest_sqs_sends() {
        assert_eq!(md5_hex(""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex("hello"), "5d41402abc4b2a76b9719d911017c592");
    }

    #[test]
    fn sqs_errors_carry_the_query_compatible_code() {
        let (t, q) = error_type(
            "AmazonSQS.ReceiveMessage",
            "AWS.SimpleQueueService.NonExistentQueue",
        );
        assert_eq!(t, "com.amazonaws.sqs#QueueDoesNotExist");
        assert_eq!(
            q.as_deref(),
            Some("AWS.SimpleQueueService.NonExistentQueue;Sender")
        );
        assert_eq!(
            error_type("AmazonSSM.GetParameter", "ParameterNotFound").0,
            "ParameterNotFound"
        );
    }
}
