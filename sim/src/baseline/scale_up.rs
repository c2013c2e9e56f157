//! Scale-up: unschedulable pods that capacity on its way cannot take get new nodes from the group the
//! least-waste expander picks, balanced over the same instance type's groups in other zones.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dovetail::aws::cloud::{CapacityType, CreateFleetRequest, FleetOverride, OnDemandStrategy};
use dovetail::kube::ObjectKey;
use dovetail::provisioning::buffers::is_virtual;
use dovetail::resources::{CPU, MEMORY, Resources};

use super::view::{NodeView, PodView, first_fit, room};
use super::{Baseline, GROUP_TAG, INITIAL_BACKOFF, MAX_BACKOFF, MAX_NODE_PROVISION_TIME, Upcoming};

/// One way to help the pending pods: this many new nodes of a group.
#[derive(Debug, Clone)]
struct Option_ {
    group: usize,
    nodes: usize,
    pods: Vec<ObjectKey>,
    waste: f64,
}

impl Baseline {
    /// Forget instances whose node has registered; give up on those that did not within 15 minutes.
    pub(super) async fn forget_registered(&mut self, nodes: &[NodeView], now: Duration) {
        let registered: BTreeSet<&str> = nodes.iter().map(|n| n.instance_id.as_str()).collect();
        let mut failed = Vec::new();
        self.upcoming.retain(|id, u| {
            if registered.contains(id.as_str()) {
                return false;
            }
            if now >= u.since + MAX_NODE_PROVISION_TIME {
                failed.push((id.clone(), u.group));
                return false;
            }
            true
        });
        for (id, g) in failed {
            let _ = self.cloud.terminate_instances(vec![id.clone()]).await;
            self.back_off(
                g,
                now,
                &format!("instance {id} did not register within 15m"),
            );
        }
    }

    pub(super) fn back_off(&mut self, g: usize, now: Duration, why: &str) {
        let group = &mut self.groups[g];
        group.backoff = (group.backoff * 2).clamp(INITIAL_BACKOFF, MAX_BACKOFF);
        group.backoff_until = now + group.backoff;
        let line = format!(
            "back off group {} for {}s: {why}",
            group.name,
            group.backoff.as_secs()
        );
        self.say(line);
    }

    /// Millicores of capacity the groups' nodes and instances on their way add up to.
    fn cores_in_use(&self, nodes: &[NodeView]) -> i128 {
        let by_name: BTreeMap<&str, i128> = self
            .groups
            .iter()
            .map(|g| (g.name.as_str(), g.cores))
            .collect();
        let registered: i128 = nodes
            .iter()
            .filter_map(|n| n.labels.get(GROUP_TAG))
            .filter_map(|g| by_name.get(g.as_str()))
            .sum();
        registered
            + self
                .upcoming
                .values()
                .map(|u| self.groups[u.group].cores)
                .sum::<i128>()
    }

    /// The group's new nodes needed for the pods it can host (first-fit decreasing), and the waste.
    fn estimate(&self, g: usize, pods: &[&PodView], overhead: &Resources) -> Option<Option_> {
        let group = &self.groups[g];
        let fresh = room(&group.allocatable, overhead);
        let fits: Vec<&PodView> = pods
            .iter()
            .copied()
            .filter(|p| p.admits(&group.labels, &group.taints) && fresh.fits(&p.requests))
            .collect();
        if fits.is_empty() {
            return None;
        }
        let mut bins = vec![fresh; fits.len()];
        let placed = first_fit(&fits, &mut bins, |_, _| true);
        let nodes = placed.iter().flatten().max().map_or(0, |m| m + 1);
        let mut requested = Resources::default();
        for p in &fits {
            requested.add(&p.requests);
        }
        let waste = [CPU, MEMORY]
            .iter()
            .map(|r| {
                let total = group.allocatable.get(r).0 as f64 * nodes as f64;
                if total <= 0.0 {
                    0.0
                } else {
                    (total - requested.get(r).0 as f64) / total
                }
            })
            .sum();
        Some(Option_ {
            group: g,
            nodes,
            pods: fits
                .iter()
                .map(|p| ObjectKey::namespaced(&p.namespace, &p.name))
                .collect(),
            waste,
        })
    }

    /// Returns whether new nodes were asked for.
    pub(super) async fn scale_up(
        &mut self,
        nodes: &[NodeView],
        pods: &[PodView],
        headroom: &[PodView],
        overhead: &Resources,
        now: Duration,
    ) -> bool {
        let pending: Vec<&PodView> = pods
            .iter()
            .filter(|p| p.node.is_none() && p.unschedulable && !p.daemon && !p.deleting)
            .collect();
        if pending.is_empty() && headroom.is_empty() {
            return false;
        }
        // Pods that fit a ready node (the scheduler has not got to them yet) or capacity on its way are
        // left to it: the Cluster Autoscaler's filter-out-schedulable step.
        let ready: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.ready && !n.marked_for_deletion())
            .collect();
        let ups: Vec<usize> = self.upcoming.values().map(|u| u.group).collect();
        let mut bins: Vec<Resources> = ready
            .iter()
            .map(|n| n.free())
            .chain(
                ups.iter()
                    .map(|g| room(&self.groups[*g].allocatable, overhead)),
            )
            .collect();
        let fits = |p: &PodView, b: usize| match ready.get(b) {
            Some(n) => p.admits(&n.labels, &n.taints),
            None => {
                let g = &self.groups[ups[b - ready.len()]];
                p.admits(&g.labels, &g.taints)
            }
        };
        // CapacityBuffer chunks take the room the real pods leave (first_fit puts them last).
        let pending: Vec<&PodView> = pending.into_iter().chain(headroom).collect();
        let placed = first_fit(&pending, &mut bins, fits);
        let rest: Vec<&PodView> = pending
            .iter()
            .zip(&placed)
            .filter(|(_, b)| b.is_none())
            .map(|(p, _)| *p)
            .collect();
        if rest.is_empty() {
            return false;
        }
        let options: Vec<Option_> = (0..self.groups.len())
            .filter(|g| self.groups[*g].backoff_until <= now)
            .filter_map(|g| self.estimate(g, &rest, overhead))
            .collect();
        // Least waste; then the option that helps more pods; then the group order.
        let Some(best) = options.iter().min_by(|a, b| {
            a.waste
                .total_cmp(&b.waste)
                .then(b.pods.len().cmp(&a.pods.len()))
                .then(a.group.cmp(&b.group))
        }) else {
            let note = format!(
                "{} pending pods fit no node group that is not backed off",
                rest.len()
            );
            if note != self.last_note {
                self.say(note.clone());
                self.last_note = note;
            }
            return false;
        };
        let mut count = best.nodes;
        if let Some(max) = self.max_cores {
            let left = (max - self.cores_in_use(nodes)).max(0);
            count = count.min((left / self.groups[best.group].cores.max(1)) as usize);
            if count == 0 {
                let note = format!("{} pending pods: cores-total limit reached", rest.len());
                if note != self.last_note {
                    self.say(note.clone());
                    self.last_note = note;
                }
                return false;
            }
        }
        self.last_note.clear();
        // Balance over the same type's groups whose zone the helped pods accept.
        let helped: BTreeSet<&ObjectKey> = best.pods.iter().collect();
        let chosen = &self.groups[best.group];
        let similar: Vec<usize> = (0..self.groups.len())
            .filter(|&g| {
                let o = &self.groups[g];
                o.instance_type == chosen.instance_type
                    && o.backoff_until <= now
                    && rest
                        .iter()
                        .filter(|p| helped.contains(&ObjectKey::namespaced(&p.namespace, &p.name)))
                        .all(|p| p.admits(&o.labels, &o.taints))
            })
            .collect();
        let mut size: BTreeMap<usize, usize> = similar.iter().map(|g| (*g, 0)).collect();
        for n in nodes {
            if let Some(g) = n.labels.get(GROUP_TAG)
                && let Some(i) = similar.iter().find(|i| self.groups[**i].name == *g)
            {
                *size.entry(*i).or_default() += 1;
            }
        }
        for u in self.upcoming.values() {
            if let Some(s) = size.get_mut(&u.group) {
                *s += 1;
            }
        }
        let mut add: BTreeMap<usize, u32> = BTreeMap::new();
        for _ in 0..count {
            let Some((&g, _)) = size.iter().min_by_key(|(g, s)| (**s, **g)) else {
                break;
            };
            *size.entry(g).or_default() += 1;
            *add.entry(g).or_default() += 1;
        }
        let chunks = best.pods.iter().filter(|k| is_virtual(k)).count();
        self.say(format!(
            "scale-up {} pods{}: {} x {} (least waste {:.2}) over {}",
            best.pods.len(),
            if chunks > 0 {
                format!(" ({chunks} headroom)")
            } else {
                String::new()
            },
            count,
            chosen.instance_type,
            best.waste,
            add.iter()
                .map(|(g, n)| format!("{}+{n}", self.groups[*g].zone))
                .collect::<Vec<_>>()
                .join(",")
        ));
        self.last_scale_up = Some(now);
        for (g, n) in add {
            self.launch(g, n, now).await;
        }
        true
    }

    async fn launch(&mut self, g: usize, count: u32, now: Duration) {
        let group = &self.groups[g];
        let mut tags = BTreeMap::new();
        tags.insert(GROUP_TAG.to_string(), group.name.clone());
        for (k, v) in &group.labels {
            tags.insert(
                format!("{}{k}", fakekube::kubelet::NODE_TEMPLATE_LABEL),
                v.clone(),
            );
        }
        for (k, v) in &self.group_taint_values {
            tags.insert(
                format!("{}{k}", fakekube::kubelet::NODE_TEMPLATE_TAINT),
                v.clone(),
            );
        }
        let request = CreateFleetRequest {
            client_token: format!("ca-{}-{}", group.name, now.as_millis()),
            context: None,
            capacity_type: CapacityType::OnDemand,
            reservation: None,
            // An Auto Scaling group launches its one type: nothing to order.
            on_demand_strategy: OnDemandStrategy::LowestPrice,
            overrides: vec![FleetOverride {
                launch_template_name: self.template.clone(),
                instance_type: group.instance_type.clone(),
                subnet_id: group.subnet_id.clone(),
                zone: group.zone.clone(),
                priority: None,
            }],
            target_capacity: count,
            tags,
        };
        match self.cloud.create_fleet(request).await {
            Ok(out) => {
                for i in &out.instances {
                    self.upcoming.insert(
                        i.id.clone(),
                        Upcoming {
                            group: g,
                            since: now,
                        },
                    );
                }
                if (out.instances.len() as u32) < count {
                    let why = out
                        .errors
                        .first()
                        .map_or("fewer instances than asked".to_string(), |e| e.code.clone());
                    self.back_off(g, now, &why);
                } else {
                    self.groups[g].backoff = Duration::ZERO;
                }
            }
            Err(e) => self.back_off(g, now, &e.code),
        }
    }
}
