//! Fake kubelets for the end-to-end test: for each running instance of the fake EC2 a Node registers
//! through the real API server (the same Node fakekube's simulated kubelet would register) and renews its
//! Lease in `kube-node-lease` (the heartbeat the node lifecycle controller reads before it lifts the
//! `not-ready` taint), pods the real scheduler binds to it are reported Running, pods being deleted on it are
//! finished, and a node whose instance is gone stops being reported.

use std::collections::BTreeSet;

use fakecloud::FakeCloud;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use super::controlplane::KUBERNETES_VERSION;

/// One pass: register new nodes, start bound pods, finish deleted ones. Errors are returned as text (the
/// caller retries on its next tick).
pub async fn step(
    client: &kube::Client,
    cloud: &FakeCloud,
    registered: &mut BTreeSet<String>,
) -> Result<(), String> {
    let nodes: Api<Node> = Api::all(client.clone());
    let claims: Api<DynamicObject> = Api::all_with(
        client.clone(),
        &ApiResource::from_gvk(&GroupVersionKind::gvk("karpenter.sh", "v1", "NodeClaim")),
    );
    let version = KUBERNETES_VERSION
        .trim_start_matches('v')
        .rsplit_once('.')
        .map_or("1.34", |(minor, _)| minor);
    let running = dovetail_sim::world::machines(cloud);
    for m in running.iter().filter(|m| m.running) {
        if registered.contains(&m.node_name) {
            continue;
        }
        let claim = match m.tags.get("karpenter.sh/nodeclaim") {
            Some(name) => claims
                .get_opt(name)
                .await
                .map_err(|e| format!("get nodeclaim {name}: {e}"))?
                .and_then(|c| serde_json::to_value(c).ok()),
            None => None,
        };
        let node = fakekube::kubelet::node_object(m, claim.as_ref(), version);
        let status = node["status"].clone();
        let node: Node = serde_json::from_value(node).map_err(|e| format!("node object: {e}"))?;
        match nodes.create(&PostParams::default(), &node).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(format!("register node {}: {e}", m.node_name)),
        }
        // The API server keeps a new Node's status as given, but say it again as the kubelet does.
        nodes
            .patch_status(
                &m.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": status })),
            )
            .await
            .map_err(|e| format!("node {} status: {e}", m.node_name))?;
        eprintln!(
            "  kubelet: node {} registered ({} {})",
            m.node_name, m.instance_type, m.zone
        );
        registered.insert(m.node_name.clone());
    }
    // Instances that stopped running: their kubelets say nothing more.
    let alive: BTreeSet<&String> = running
        .iter()
        .filter(|m| m.running)
        .map(|m| &m.node_name)
        .collect();
    registered.retain(|n| alive.contains(n));
    // Heartbeats: each live kubelet renews its node's Lease.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renewed = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    for name in registered.iter() {
        let lease = json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": renewed},
        });
        leases
            .patch(
                name,
                &PatchParams::apply("fake-kubelet").force(),
                &Patch::Apply(lease),
            )
            .await
            .map_err(|e| format!("lease of {name}: {e}"))?;
    }

    let pods: Api<Pod> = Api::all(client.clone());
    for pod in pods
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("list pods: {e}"))?
    {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if !registered.contains(&node) {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let name = pod.metadata.name.clone().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        if pod.metadata.deletion_timestamp.is_some() {
            // The containers stopped: the kubelet removes the pod for good.
            let _ = api
                .delete(&name, &DeleteParams::default().grace_period(0))
                .await;
            continue;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Running") {
            continue;
        }
        let containers: Vec<serde_json::Value> = pod
            .spec
            .as_ref()
            .map(|s| {
                s.containers
                    .iter()
                    .map(|c| {
                        json!({"name": c.name, "image": c.image, "imageID": "", "ready": true,
                               "restartCount": 0, "started": true,
                               "state": {"running": {"startedAt": jiff::Timestamp::now().to_string()}}})
                    })
                    .collect()
            })
            .unwrap_or_default();
        let now = jiff::Timestamp::now().to_string();
        let conditions: Vec<serde_json::Value> =
            ["PodScheduled", "Initialized", "ContainersReady", "Ready"]
                .iter()
                .map(|t| json!({"type": t, "status": "True", "lastTransitionTime": now}))
                .collect();
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running",
                "startTime": now,
                "conditions": conditions,
                "containerStatuses": containers,
            }})),
        )
        .await
        .map_err(|e| format!("pod {ns}/{name} status: {e}"))?;
    }
    Ok(())
}
