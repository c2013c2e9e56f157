//! fakecloud's HTTP front: EC2's Query protocol (form-encoded `Action=...`, XML answers and XML errors,
//! paging tokens) and the AWS JSON protocols of SQS and SSM, served with axum over the fake, so the AWS CLI
//! and aws-sdk-rust (Dovetail's own adapter) can be pointed at it with `AWS_ENDPOINT_URL`.
//!
//! Requests must be SigV4-signed, as AWS requires; the signature itself is not checked (any credentials
//! are accepted: the fake has one account).

pub mod ec2;
pub mod json;
pub mod query;
pub mod xml;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use dovetail::aws::cloud::CloudError;
use dovetail::journal::Journal;

use crate::FakeCloud;
use query::Params;
use xml::Xml;

/// The HTTP face of a [`FakeCloud`]. Clones share the cloud and the request counter.
#[derive(Clone)]
pub struct AwsFront {
    cloud: FakeCloud,
    requests: Arc<AtomicU64>,
    journal: Option<Arc<dyn Journal>>,
}

/// The HTTP status AWS answers an error code with.
fn status_of(code: &str) -> StatusCode {
    match code {
        "RequestLimitExceeded" | "Unavailable" | "ServiceUnavailable" => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        "InternalError" => StatusCode::INTERNAL_SERVER_ERROR,
        "MissingAuthenticationToken" | "MissingAuthenticationTokenException" => {
            StatusCode::FORBIDDEN
        }
        _ => StatusCode::BAD_REQUEST,
    }
}

impl AwsFront {
    pub fn new(cloud: FakeCloud) -> AwsFront {
        AwsFront {
            cloud,
            requests: Arc::default(),
            journal: None,
        }
    }

    /// Write every call that changes something to the journal as an `aws` line.
    pub fn with_journal(mut self, journal: Arc<dyn Journal>) -> AwsFront {
        self.journal = Some(journal);
        self
    }

    pub fn router(self) -> Router {
        Router::new().fallback(handle).with_state(self)
    }

    /// A request id shaped like AWS's (a UUID), from a counter so runs repeat.
    fn request_id(&self) -> String {
        let n = self.requests.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{:08x}-0000-4000-8000-{n:012x}", n >> 16)
    }

    fn record(&self, line: String) {
        if let Some(j) = &self.journal {
            j.record("aws", line);
        }
    }

    async fn ec2(&self, params: Params, request_id: &str) -> Response {
        let Some(action) = params.get("Action").map(str::to_string) else {
            return ec2_error(
                &CloudError::new(
                    "MissingAction",
                    "The request must contain the parameter Action",
                ),
                request_id,
            );
        };
        match ec2::call(&self.cloud, &action, &params, request_id).await {
            Ok(body) => {
                if ec2::writes(&action) {
                    self.record(format!("ec2 {action}"));
                }
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
                    body,
                )
                    .into_response()
            }
            Err(e) => ec2_error(&e, request_id),
        }
    }

    async fn json(&self, target: &str, body: &[u8], request_id: &str) -> Response {
        let content_type = if target.starts_with("AmazonSQS.") {
            "application/x-amz-json-1.0"
        } else {
            "application/x-amz-json-1.1"
        };
        let answer = match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(v) => json::call(&self.cloud, target, &v).await,
            Err(e) => Err(CloudError::new(
                "SerializationException",
                format!("The request body is not JSON: {e}"),
            )),
        };
        let (status, value, query_error) = match answer {
            Ok(v) => {
                if let Some(op @ ("SendMessage" | "DeleteMessage")) =
                    target.strip_prefix("AmazonSQS.")
                {
                    self.record(format!("sqs {op}"));
                }
                (StatusCode::OK, v, None)
            }
            Err(e) => {
                let (kind, query_error) = json::error_type(target, &e.code);
                (
                    status_of(&e.code),
                    serde_json::json!({ "__type": kind, "message": e.message }),
                    query_error,
                )
            }
        };
        json_response(status, content_type, &value, request_id, query_error)
    }
}

fn json_response(
    status: StatusCode,
    content_type: &'static str,
    value: &serde_json::Value,
    request_id: &str,
    query_error: Option<String>,
) -> Response {
    let mut response = (
        status,
        [(header::CONTENT_TYPE, content_type)],
        serde_json::to_vec(value).unwrap_or_default(),
    )
        .into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    if let Some(q) = query_error.and_then(|q| HeaderValue::from_str(&q).ok()) {
        headers.insert("x-amzn-query-error", q);
    }
    response
}

fn ec2_error(e: &CloudError, request_id: &str) -> Response {
    (
        status_of(&e.code),
        [(header::CONTENT_TYPE, "text/xml;charset=UTF-8")],
        Xml::error(&e.code, &e.message, request_id),
    )
        .into_response()
}

/// Whether the request carries a SigV4 signature (in the header, or presigned in the query).
fn signed(headers: &HeaderMap, uri: &Uri) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 "))
        || uri
            .query()
            .is_some_and(|q| q.contains("X-Amz-Algorithm=AWS4-HMAC-SHA256"))
}

async fn handle(
    State(front): State<AwsFront>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = front.request_id();
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if !signed(&headers, &uri) {
        let e = CloudError::new(
            "MissingAuthenticationToken",
            "Request is missing Authentication Token: sign it with SigV4 (any credentials will do here)",
        );
        return match target {
            Some(_) => json_response(
                StatusCode::FORBIDDEN,
                "application/x-amz-json-1.1",
                &serde_json::json!({"__type": "MissingAuthenticationTokenException", "message": e.message}),
                &request_id,
                None,
            ),
            None => ec2_error(&e, &request_id),
        };
    }
    if let Some(target) = target {
        return front.json(&target, &body, &request_id).await;
    }
    let params = match method {
        Method::POST => Params::parse(&body),
        Method::GET => Params::parse(uri.query().unwrap_or_default().as_bytes()),
        _ => {
            return ec2_error(
                &CloudError::new(
                    "InvalidHttpRequest",
                    format!("{method} is not supported: EC2 takes GET or POST"),
                ),
                &request_id,
            );
        }
    };
    front.ec2(params, &request_id).await
}

/// Serve on a listener until it fails.
pub async fn serve(listener: tokio::net::TcpListener, front: AwsFront) -> std::io::Result<()> {
    axum::serve(listener, front.router()).await
}
