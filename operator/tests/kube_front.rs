//! The kube-rs adapter against fakekube's HTTP front over loopback TCP: the same checks as the mock tests
//! in `kube_adapter.rs` (paging, watches with their expiry, get / create / patch / status and their errors,
//! eviction and budgets), now answered by a real HTTP server that holds the objects.
#![cfg(feature = "kube-client")]

use std::sync::Arc;
use std::time::Duration;

use dovetail::clock::{Clock, ManualClock};
use dovetail::kube::{Kind, Kube, KubeError, ObjectKey, WatchEvent};
use dovetail_operator::kubeclient::KubeRs;
use fakekube::http::ApiServer;
use fakekube::{FakeKube, Store};
use futures::StreamExt;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;
use serde_json::{Value, json};

/// A fake API server with Dovetail's CRDs, served on a free loopback port, and a kube-rs client for it.
async fn served() -> (FakeKube, KubeRs) {
    let mut store = Store::new(ChaCha8Rng::seed_from_u64(7));
    for (_, crd) in dovetail::crds::definitions() {
        store
            .install_crd(&serde_json::to_value(&crd).unwrap())
            .unwrap();
    }
    let clock: Arc<dyn Clock> = Arc::new(ManualClock::starting_at(jiff::Timestamp::UNIX_EPOCH));
    let kube = FakeKube::new(store, clock.clone(), Duration::ZERO);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(fakekube::http::serve(
        listener,
        ApiServer::new(kube.clone(), clock),
    ));
    let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
    let client = dovetail_operator::kubeclient::client(config).unwrap();
    (kube, KubeRs::new(client))
}

fn pod(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "web", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "web:1"}]},
    })
}

fn node_pool(name: &str) -> Value {
    json!({
        "apiVersion": "karpenter.sh/v1", "kind": "NodePool",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {
            "nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
            "requirements": [],
        }}},
    })
}

#[tokio::test]
async fn list_pages_through_continue_tokens_and_fills_in_kind() {
    let (_, kube) = served().await;
    // The adapter asks for pages of 500: 501 pods take two.
    for i in 0..501 {
        kube.create(Kind::Pod, pod(&format!("p{i:03}")))
            .await
            .unwrap();
    }
    let list = kube.list(Kind::Pod).await.unwrap();
    assert_eq!(list.items.len(), 501);
    assert_eq!(list.items[0]["kind"], "Pod");
    assert_eq!(list.items[500]["metadata"]["name"], "p500");
    assert!(!list.resource_version.is_empty());
}

#[tokio::test]
async fn watch_streams_changes_in_order_and_reports_an_expired_version() {
    let (fake, kube) = served().await;
    // (Version "0" would mean "from any point", as on a real API server: list after a first write.)
    kube.create(Kind::NodePool, node_pool("first"))
        .await
        .unwrap();
    let start = kube.list(Kind::NodePool).await.unwrap().resource_version;
    let mut events = kube.watch(Kind::NodePool, &start);
    kube.create(Kind::NodePool, node_pool("a")).await.unwrap();
    kube.patch(
        Kind::NodePool,
        &ObjectKey::cluster("a"),
        json!({"spec": {"weight": 5}}),
    )
    .await
    .unwrap();
    kube.delete(Kind::NodePool, &ObjectKey::cluster("a"))
        .await
        .unwrap();
    let first = events.next().await.unwrap();
    assert!(matches!(&first, WatchEvent::Added(o) if o["metadata"]["name"] == "a"));
    assert!(
        matches!(events.next().await.unwrap(), WatchEvent::Modified(o) if o["spec"]["weight"] == 5)
    );
    assert!(matches!(
        events.next().await.unwrap(),
        WatchEvent::Deleted(_)
    ));
    // Once the server's watch cache no longer holds a version, resuming from it says so (a 410 in the
    // stream), and the adapter reports Expired.
    kube.create(Kind::NodePool, node_pool("b")).await.unwrap();
    fake.store().compact(0);
    let mut stale = kube.watch(Kind::NodePool, &start);
    assert_eq!(stale.next().await, Some(WatchEvent::Expired));
}

#[tokio::test]
async fn get_create_patch_and_their_errors() {
    let (_, kube) = served().await;
    assert_eq!(kube.server_version().await.unwrap(), "1.33");
    assert_eq!(
        kube.get(Kind::Node, &ObjectKey::cluster("missing")).await,
        Ok(None)
    );
    kube.create(Kind::NodePool, node_pool("default"))
        .await
        .unwrap();
    assert!(matches!(
        kube.create(Kind::NodePool, node_pool("default")).await,
        Err(KubeError::AlreadyExists { .. })
    ));
    // A stale resourceVersion in a patch is a precondition that fails: 409 Conflict.
    let key = ObjectKey::cluster("default");
    let read = kube.get(Kind::NodePool, &key).await.unwrap().unwrap();
    let stale = read["metadata"]["resourceVersion"].clone();
    kube.patch(Kind::NodePool, &key, json!({"spec": {"weight": 2}}))
        .await
        .unwrap();
    assert!(matches!(
        kube.patch(
            Kind::NodePool,
            &key,
            json!({"metadata": {"resourceVersion": stale}, "spec": {"weight": 3}})
        )
        .await,
        Err(KubeError::Conflict { .. })
    ));
    // The CRD's schema refuses a bad value: 422, with the field named.
    match kube
        .patch(Kind::NodePool, &key, json!({"spec": {"weight": 500}}))
        .await
    {
        Err(KubeError::Invalid { message, .. }) => {
            assert!(message.contains("spec.weight"), "{message}")
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    // The status subresource changes only the status.
    let patched = kube
        .patch_status(
            Kind::NodePool,
            &key,
            json!({"spec": {"weight": 9}, "status": {"resources": {"nodes": "2"}}}),
        )
        .await
        .unwrap();
    assert_eq!(patched["status"]["resources"]["nodes"], "2");
    assert_eq!(
        patched["spec"]["weight"], 2,
        "a status write leaves the spec alone"
    );
    let got = kube.get(Kind::NodePool, &key).await.unwrap().unwrap();
    assert_eq!(got["status"]["resources"]["nodes"], "2");
}

#[tokio::test]
async fn eviction_honours_budgets_and_names_the_refusal() {
    let (fake, kube) = served().await;
    for name in ["busy", "free"] {
        let mut p = pod(name);
        if name == "free" {
            p["metadata"]["labels"]["app"] = json!("batch");
        }
        p["spec"]["nodeName"] = json!("n1");
        p["status"] =
            json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
        fake.store()
            .create("Pod", p, jiff::Timestamp::UNIX_EPOCH)
            .unwrap();
    }
    fake.store()
        .create(
            "PodDisruptionBudget",
            json!({"metadata": {"name": "web", "namespace": "web"},
                   "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "web"}}}}),
            jiff::Timestamp::UNIX_EPOCH,
        )
        .unwrap();
    kube.evict(&ObjectKey::namespaced("web", "free"))
        .await
        .unwrap();
    assert!(fake.store().get("Pod", "web", "free").is_none());
    match kube.evict(&ObjectKey::namespaced("web", "busy")).await {
        Err(KubeError::EvictionRefused { key, reason }) => {
            assert_eq!(key.name, "busy");
            assert!(reason.contains("disruption budget"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(fake.store().get("Pod", "web", "busy").is_some());
}
