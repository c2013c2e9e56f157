//! Scale-down: nodes under half requested whose pods fit elsewhere become unneeded; after 10 minutes empty
//! ones go in bulk and non-empty ones are drained one at a time through the eviction API.

use std::collections::BTreeSet;
use std::time::Duration;

use dovetail::kube::{Kind, ObjectKey};
use serde_json::json;

use super::view::{NodeView, PodView, TO_BE_DELETED, first_fit};
use super::{
    Baseline, Drain, GROUP_TAG, MAX_EMPTY_BULK_DELETE, MAX_POD_EVICTION_TIME,
    SCALE_DOWN_DELAY_AFTER_ADD, SCALE_DOWN_UNNEEDED_TIME, SCALE_DOWN_UTILIZATION,
};

fn movable<'a>(pods: &'a [PodView], node: &str) -> Vec<&'a PodView> {
    pods.iter()
        .filter(|p| p.node.as_deref() == Some(node) && !p.daemon && !p.deleting)
        .collect()
}

/// Group nodes under half requested whose pods could all move to the other nodes, each candidate taking the
/// room it uses from the ones after it (the Cluster Autoscaler's removal simulation).
fn unneeded_now(nodes: &[NodeView], pods: &[PodView]) -> Vec<usize> {
    let usable = |n: &NodeView| n.ready && !n.marked_for_deletion();
    let mut free: Vec<_> = nodes.iter().map(NodeView::free).collect();
    let mut removed: BTreeSet<usize> = BTreeSet::new();
    // A node that takes a candidate's pods is no candidate itself in this pass.
    let mut received: BTreeSet<usize> = BTreeSet::new();
    let mut out = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if received.contains(&i)
            || !n.labels.contains_key(GROUP_TAG)
            || !usable(n)
            || n.utilization() >= SCALE_DOWN_UTILIZATION
        {
            continue;
        }
        let on_it = movable(pods, &n.name);
        if on_it.iter().any(|p| p.pinned) {
            continue;
        }
        let targets: Vec<usize> = (0..nodes.len())
            .filter(|&j| j != i && !removed.contains(&j) && usable(&nodes[j]))
            .collect();
        let mut bins: Vec<_> = targets.iter().map(|&j| free[j].clone()).collect();
        let placed = first_fit(&on_it, &mut bins, |p, b| {
            let t = &nodes[targets[b]];
            p.admits(&t.labels, &t.taints)
        });
        if placed.iter().all(Option::is_some) {
            for (b, &j) in targets.iter().enumerate() {
                free[j] = bins[b].clone();
            }
            received.extend(placed.iter().flatten().map(|&b| targets[b]));
            removed.insert(i);
            out.push(i);
        }
    }
    out
}

impl Baseline {
    pub(super) async fn scale_down(&mut self, nodes: &[NodeView], pods: &[PodView], now: Duration) {
        self.continue_drain(nodes, pods, now).await;
        let unneeded = unneeded_now(nodes, pods);
        let names: BTreeSet<&str> = unneeded.iter().map(|&i| nodes[i].name.as_str()).collect();
        self.unneeded.retain(|n, _| names.contains(n.as_str()));
        for n in &names {
            self.unneeded.entry(n.to_string()).or_insert(now);
        }
        let cooling = !self.upcoming.is_empty()
            || self
                .last_scale_up
                .is_some_and(|t| now < t + SCALE_DOWN_DELAY_AFTER_ADD);
        if cooling || self.drain.is_some() {
            return;
        }
        let ripe: Vec<&NodeView> = unneeded
            .iter()
            .map(|&i| &nodes[i])
            .filter(|n| {
                self.unneeded
                    .get(&n.name)
                    .is_some_and(|t| now >= *t + SCALE_DOWN_UNNEEDED_TIME)
            })
            .collect();
        let (empty, busy): (Vec<&NodeView>, Vec<&NodeView>) = ripe
            .into_iter()
            .partition(|n| movable(pods, &n.name).is_empty());
        if !empty.is_empty() {
            let empty: Vec<&NodeView> = empty.into_iter().take(MAX_EMPTY_BULK_DELETE).collect();
            self.say(format!(
                "scale-down empty {}",
                empty
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
            for n in empty {
                self.taint(n).await;
                self.remove(&n.name, &n.instance_id).await;
            }
            return;
        }
        if let Some(n) = busy.first() {
            self.say(format!(
                "scale-down drain {} (utilization {:.2}, {} pods)",
                n.name,
                n.utilization(),
                movable(pods, &n.name).len()
            ));
            self.taint(n).await;
            self.drain = Some(Drain {
                node: n.name.clone(),
                instance_id: n.instance_id.clone(),
                since: now,
            });
            self.continue_drain(nodes, pods, now).await;
        }
    }

    async fn taint(&self, n: &NodeView) {
        if n.taints.iter().any(|(k, _)| k == TO_BE_DELETED) {
            return;
        }
        let mut taints = n.raw_taints.clone();
        taints.push(json!({"key": TO_BE_DELETED, "value": "ca-baseline", "effect": "NoSchedule"}));
        let _ = self
            .kube
            .patch(
                Kind::Node,
                &ObjectKey::cluster(&n.name),
                json!({"spec": {"taints": taints}}),
            )
            .await;
    }

    /// Terminate the instance and delete the Node (the cloud node lifecycle controller's part).
    async fn remove(&mut self, node: &str, instance_id: &str) {
        let _ = self
            .cloud
            .terminate_instances(vec![instance_id.to_string()])
            .await;
        let _ = self
            .kube
            .delete(Kind::Node, &ObjectKey::cluster(node))
            .await;
        self.unneeded.remove(node);
    }

    async fn continue_drain(&mut self, nodes: &[NodeView], pods: &[PodView], now: Duration) {
        let Some(d) = self.drain.clone() else {
            return;
        };
        let Some(node) = nodes.iter().find(|n| n.name == d.node) else {
            self.drain = None;
            return;
        };
        let left: Vec<&PodView> = pods
            .iter()
            .filter(|p| p.node.as_deref() == Some(d.node.as_str()) && !p.daemon && !p.headroom)
            .collect();
        if left.is_empty() {
            self.say(format!("scale-down removed {}", d.node));
            self.remove(&d.node, &d.instance_id).await;
            self.drain = None;
            return;
        }
        let refused: Vec<&&PodView> = left.iter().filter(|p| !p.deleting).collect();
        if refused.is_empty() {
            return;
        }
        if now >= d.since + MAX_POD_EVICTION_TIME {
            // Give the node back to the scheduler, as the Cluster Autoscaler does after a failed drain.
            let taints: Vec<_> = node
                .raw_taints
                .iter()
                .filter(|t| t["key"] != TO_BE_DELETED)
                .cloned()
                .collect();
            let _ = self
                .kube
                .patch(
                    Kind::Node,
                    &ObjectKey::cluster(&d.node),
                    json!({"spec": {"taints": taints}}),
                )
                .await;
            self.say(format!(
                "scale-down of {} failed: {} pods not evicted in 2m",
                d.node,
                refused.len()
            ));
            self.unneeded.remove(&d.node);
            self.drain = None;
            return;
        }
        for p in refused {
            let _ = self
                .kube
                .evict(&ObjectKey::namespaced(&p.namespace, &p.name))
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cpu: &str) -> NodeView {
        NodeView::of(&json!({
            "metadata": {"name": name, "labels": {GROUP_TAG: "g"}},
            "spec": {"providerID": format!("aws:///z/i-{name}")},
            "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "29"},
                       "conditions": [{"type": "Ready", "status": "True"}]},
        }))
        .unwrap()
    }

    fn pod(name: &str, node: &str, cpu: &str) -> PodView {
        PodView::of(&json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]},
        }))
        .unwrap()
    }

    fn with_pods(mut nodes: Vec<NodeView>, pods: &[PodView]) -> Vec<NodeView> {
        for n in &mut nodes {
            for p in pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(n.name.as_str()))
            {
                n.used.add(&p.requests);
            }
        }
        nodes
    }

    #[test]
    fn a_half_empty_node_whose_pods_fit_elsewhere_is_unneeded_once() {
        // a and b are each 25% used, c 50%. a's pod moves onto b; b then holds it and is no candidate in
        // this pass (else a's pod would have nowhere to go once b went too).
        let pods = [
            pod("p1", "a", "500m"),
            pod("p2", "b", "500m"),
            pod("p3", "c", "1"),
        ];
        let nodes = with_pods(vec![node("a", "2"), node("b", "2"), node("c", "2")], &pods);
        let out = unneeded_now(&nodes, &pods);
        assert_eq!(out, vec![0], "{out:?}");
    }

    #[test]
    fn busy_pinned_and_unroomed_nodes_stay() {
        let mut pinned = pod("p1", "a", "500m");
        pinned.pinned = true;
        let pods = [pinned, pod("p2", "b", "1500m")];
        let nodes = with_pods(vec![node("a", "2"), node("b", "2")], &pods);
        // a is pinned by safe-to-evict=false; b is 75% used.
        assert!(unneeded_now(&nodes, &pods).is_empty());
        // A lone node has nowhere to send its pod.
        let pods = [pod("p1", "a", "500m")];
        let nodes = with_pods(vec![node("a", "2")], &pods);
        assert!(unneeded_now(&nodes, &pods).is_empty());
    }

    fn chunk(name: &str, cpu: &str) -> PodView {
        let mut p = pod(name, "", cpu);
        p.node = None;
        p.headroom = true;
        p.unschedulable = true;
        p
    }

    #[test]
    fn a_node_holding_headroom_goes_only_when_the_headroom_fits_elsewhere() {
        let pods = [pod("p1", "b", "1")];
        let nodes = with_pods(vec![node("a", "2"), node("b", "2")], &pods);
        // Empty, a would go.
        assert_eq!(unneeded_now(&nodes, &pods), vec![0]);
        // A 1.5-cpu chunk sits on a (first fit) and fits nowhere else: a stays.
        let (n, p) =
            super::super::headroom::placed(nodes.clone(), pods.to_vec(), &[chunk("h1", "1500m")]);
        assert_eq!(p.last().and_then(|c| c.node.as_deref()), Some("a"));
        assert!(unneeded_now(&n, &p).is_empty());
        // A half-cpu chunk fits beside p1 on b: a goes, the chunk with it moving to b.
        let (n, p) = super::super::headroom::placed(nodes, pods.to_vec(), &[chunk("h1", "500m")]);
        assert_eq!(unneeded_now(&n, &p), vec![0]);
    }

    #[test]
    fn real_pods_take_room_before_headroom_whatever_their_size() {
        let real = pod("small", "", "1");
        let big = chunk("big", "1500m");
        let mut bins = vec![node("a", "2").free()];
        let at = first_fit(&[&big, &real], &mut bins, |_, _| true);
        assert_eq!(at, vec![None, Some(0)]);
    }
}
