//! CapacityBuffers as the Cluster Autoscaler takes them: each buffer's chunks are fake pods, planned after
//! the real pending pods at scale-up and holding room on the nodes they fit at scale-down.

use dovetail::crds::CapacityBuffer;
use dovetail::kube::{Kind, ObjectKey};
use dovetail::provisioning::buffers::headroom_of;

use super::Baseline;
use super::view::{NodeView, PodView, first_fit};

impl Baseline {
    /// Every buffer's chunks, buffers in name order. The count and shape are resolved as Dovetail resolves
    /// them (the same API, the same rules); a buffer that is not acted on is said once.
    pub(super) async fn headroom(&mut self) -> Vec<PodView> {
        let Ok(list) = self.kube.list(Kind::CapacityBuffer).await else {
            return Vec::new();
        };
        let mut buffers: Vec<(ObjectKey, CapacityBuffer)> = list
            .items
            .into_iter()
            .filter_map(|v| {
                let key = ObjectKey::namespaced(
                    v["metadata"]["namespace"].as_str()?,
                    v["metadata"]["name"].as_str()?,
                );
                Some((key, serde_json::from_value(v).ok()?))
            })
            .collect();
        buffers.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut notes = std::collections::BTreeMap::new();
        for (key, buffer) in &buffers {
            let pods = match headroom_of(self.kube.as_ref(), key, buffer).await {
                Ok(Ok(pods)) => pods,
                Ok(Err(why)) => {
                    notes.insert(key.to_string(), why);
                    continue;
                }
                // The API failed this scan; the next one tries again.
                Err(_) => continue,
            };
            for (_, pod) in pods {
                let Some(mut view) = serde_json::to_value(&pod)
                    .ok()
                    .as_ref()
                    .and_then(PodView::of)
                else {
                    continue;
                };
                view.headroom = true;
                view.unschedulable = true;
                out.push(view);
            }
        }
        for (key, why) in &notes {
            if self.buffer_notes.get(key) != Some(why) {
                self.say(format!("capacitybuffer/{key} not acted on: {why}"));
            }
        }
        self.buffer_notes = notes;
        out
    }
}

/// Scale-down's picture with the chunks in it: each chunk that fits a ready node not being removed (first
/// fit, after the node's real pods) is put there and uses its room.
pub(super) fn placed(
    mut nodes: Vec<NodeView>,
    mut pods: Vec<PodView>,
    headroom: &[PodView],
) -> (Vec<NodeView>, Vec<PodView>) {
    if headroom.is_empty() {
        return (nodes, pods);
    }
    let usable: Vec<usize> = (0..nodes.len())
        .filter(|&i| nodes[i].ready && !nodes[i].marked_for_deletion())
        .collect();
    let mut bins: Vec<_> = usable.iter().map(|&i| nodes[i].free()).collect();
    let chunks: Vec<&PodView> = headroom.iter().collect();
    let at = first_fit(&chunks, &mut bins, |p, b| {
        let n = &nodes[usable[b]];
        p.admits(&n.labels, &n.taints)
    });
    for (chunk, b) in headroom.iter().zip(at) {
        let Some(b) = b else { continue };
        let n = &mut nodes[usable[b]];
        n.used.add(&chunk.requests);
        let mut chunk = chunk.clone();
        chunk.node = Some(n.name.clone());
        chunk.unschedulable = false;
        pods.push(chunk);
    }
    (nodes, pods)
}
