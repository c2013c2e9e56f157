//! The kube-rs adapter against a mock API server (tower-test): the requests it sends for list, watch,
//! get, patch and evict, and how it maps the answers (paging, bookmarks, an expired version, 404, 409,
//! 429) onto the Kube seam.
#![cfg(feature = "kube-client")]

use std::sync::{Arc, Mutex};

use dovetail::kube::{Kind, Kube, KubeError, ObjectKey, WatchEvent};
use dovetail_operator::kubeclient::KubeRs;
use futures::StreamExt;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock;

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    uri: String,
    content_type: String,
    body: Value,
}

type Answer = Box<dyn Fn(&Seen) -> (StatusCode, String) + Send + Sync>;

/// A client whose every request is answered by `answer`; the requests are kept for the test to read.
fn mock_client(answer: Answer) -> (KubeRs, Arc<Mutex<Vec<Seen>>>) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        let mut handle = std::pin::pin!(handle);
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let s = Seen {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                content_type: parts
                    .headers
                    .get(http::header::CONTENT_TYPE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string(),
                body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            };
            let (status, text) = answer(&s);
            log.lock().unwrap().push(s);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(text.into_bytes()))
                .unwrap();
            send.send_response(response);
        }
    });
    (KubeRs::new(kube::Client::new(service, "default")), seen)
}

fn status(code: u16, reason: &str, message: &str) -> String {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": message}).to_string()
}

fn pod(name: &str, rv: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": "default", "resourceVersion": rv}, "spec": {"containers": []}})
}

#[tokio::test]
async fn list_follows_continue_tokens_and_fills_in_kind() {
    let (kube, seen) = mock_client(Box::new(|s| {
        let page = if s.uri.contains("continue=") {
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "20"}, "items": [pod("b", "12")]})
        } else {
            json!({"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "19", "continue": "next-page"}, "items": [pod("a", "11")]})
        };
        (StatusCode::OK, page.to_string())
    }));
    let list = kube.list(Kind::Pod).await.unwrap();
    let names: Vec<&str> = list
        .items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(list.resource_version, "20");
    // List items come without apiVersion and kind; the seam carries them.
    assert_eq!(list.items[0]["kind"], "Pod");
    assert_eq!(list.items[0]["apiVersion"], "v1");
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "GET");
    assert!(seen[0].uri.starts_with("/api/v1/pods?"), "{}", seen[0].uri);
    assert!(seen[0].uri.contains("limit=500"), "{}", seen[0].uri);
    assert!(
        seen[1].uri.contains("continue=next-page"),
        "{}",
        seen[1].uri
    );
}

#[tokio::test]
async fn watch_resumes_after_bookmarks_and_timeouts_and_reports_expiry() {
    let calls = Arc::new(Mutex::new(0));
    let counter = calls.clone();
    let (kube, seen) = mock_client(Box::new(move |s| {
        let mut n = counter.lock().unwrap();
        *n += 1;
        assert!(s.uri.contains("watch=true"), "{}", s.uri);
        let lines = match *n {
            // The first request: an added NodeClaim, a bookmark, then the server's timeout ends it.
            1 => vec![
                json!({"type": "ADDED", "object": {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c1", "resourceVersion": "31"}}}),
                json!({"type": "BOOKMARK", "object": {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"resourceVersion": "40"}}}),
            ],
            // Reopened from the bookmark's version: a deletion, then the version is gone.
            _ => vec![
                json!({"type": "DELETED", "object": {"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c1", "resourceVersion": "41"}}}),
                json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}}),
            ],
        };
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        (StatusCode::OK, text)
    }));
    let events: Vec<WatchEvent> = kube.watch(Kind::NodeClaim, "30").collect().await;
    assert_eq!(events.len(), 3, "{events:?}");
    assert!(matches!(&events[0], WatchEvent::Added(o) if o["metadata"]["name"] == "c1"));
    assert!(
        matches!(&events[1], WatchEvent::Deleted(o) if o["metadata"]["resourceVersion"] == "41")
    );
    assert_eq!(events[2], WatchEvent::Expired);
    let seen = seen.lock().unwrap();
    assert!(
        seen[0].uri.starts_with("/apis/karpenter.sh/v1/nodeclaims?"),
        "{}",
        seen[0].uri
    );
    assert!(
        seen[0].uri.contains("resourceVersion=30"),
        "{}",
        seen[0].uri
    );
    assert!(
        seen[0].uri.contains("allowWatchBookmarks=true"),
        "{}",
        seen[0].uri
    );
    assert!(
        seen[1].uri.contains("resourceVersion=40"),
        "resumed from the bookmark: {}",
        seen[1].uri
    );
}

#[tokio::test]
async fn get_patch_and_their_errors() {
    let (kube, seen) = mock_client(Box::new(|s| {
        match (s.method.as_str(), s.uri.as_str()) {
        ("GET", u) if u.ends_with("/nodes/missing") => {
            (StatusCode::NOT_FOUND, status(404, "NotFound", "nodes \"missing\" not found"))
        }
        ("PATCH", u) if u.contains("/nodeclaims/c1/status") => (
            StatusCode::OK,
            json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c1"}, "status": s.body["status"]}).to_string(),
        ),
        ("PATCH", u) if u.contains("/leases/") => (
            StatusCode::CONFLICT,
            status(409, "Conflict", "the object has been modified"),
        ),
        ("POST", _) => (
            StatusCode::CONFLICT,
            status(409, "AlreadyExists", "already exists"),
        ),
        other => panic!("unexpected request {other:?}"),
    }
    }));
    assert_eq!(
        kube.get(Kind::Node, &ObjectKey::cluster("missing")).await,
        Ok(None)
    );
    let patched = kube
        .patch_status(
            Kind::NodeClaim,
            &ObjectKey::cluster("c1"),
            json!({"status": {"providerID": "aws:///us-east-1a/i-1"}}),
        )
        .await
        .unwrap();
    assert_eq!(patched["status"]["providerID"], "aws:///us-east-1a/i-1");
    let lease = ObjectKey::namespaced("kube-system", "dovetail-leader-election");
    assert!(matches!(
        kube.patch(Kind::Lease, &lease, json!({"spec": {}})).await,
        Err(KubeError::Conflict { .. })
    ));
    assert!(matches!(
        kube.create(Kind::NodeClaim, json!({"apiVersion": "karpenter.sh/v1", "kind": "NodeClaim", "metadata": {"name": "c1"}})).await,
        Err(KubeError::AlreadyExists { .. })
    ));
    let seen = seen.lock().unwrap();
    let patch = &seen[1];
    assert_eq!(patch.content_type, "application/merge-patch+json");
    assert_eq!(patch.uri, "/apis/karpenter.sh/v1/nodeclaims/c1/status?");
    assert_eq!(
        seen[2].uri,
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/dovetail-leader-election?"
    );
}

#[tokio::test]
async fn eviction_posts_to_the_subresource_and_a_pdb_refusal_is_named() {
    let (kube, seen) = mock_client(Box::new(|s| {
        if s.uri.contains("/pods/busy/") {
            (
                StatusCode::TOO_MANY_REQUESTS,
                status(
                    429,
                    "TooManyRequests",
                    "Cannot evict pod as it would violate the pod's disruption budget.",
                ),
            )
        } else {
            (
                StatusCode::CREATED,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}).to_string(),
            )
        }
    }));
    kube.evict(&ObjectKey::namespaced("web", "free"))
        .await
        .unwrap();
    match kube.evict(&ObjectKey::namespaced("web", "busy")).await {
        Err(KubeError::EvictionRefused { key, reason }) => {
            assert_eq!(key.name, "busy");
            assert!(reason.contains("disruption budget"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0].method, "POST");
    assert!(
        seen[0]
            .uri
            .starts_with("/api/v1/namespaces/web/pods/free/eviction"),
        "{}",
        seen[0].uri
    );
    assert_eq!(seen[0].body["metadata"]["name"], "free");
}
