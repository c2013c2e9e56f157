//! Topology groups for the planner: which pods count against which spread, affinity and anti-affinity
//! terms, their counts per domain, and the domains a pod may still go to.

use super::*;

/// Pods matching one term's selector, per domain of its key (hostname counts live on each candidate).
pub(super) struct Group {
    pub(super) term: TopologyTerm,
    pub(super) counts: BTreeMap<String, u32>,
    /// For anti-affinity: domains holding a pod that carries the term (they keep matching pods away).
    pub(super) owners: BTreeMap<String, u32>,
    pub(super) total: u32,
}

/// Quick noes for one pod, level and alternative (see [`Topology::open_domains`]).
#[derive(Default, Clone)]
pub(super) struct Quick<'t> {
    /// Per key, the domains a claim settled on one domain may be in.
    pub(super) settled: Vec<(&'t str, BTreeSet<&'t str>)>,
    /// Per spread group, how many unsettled matching pods a claim may already hold.
    pub(super) slack: Vec<(usize, i64)>,
}

/// Where a pod is being tried: a concrete node (labels known) or a claim (requirements, maybe many
/// domains per key).
pub(super) enum At<'x> {
    Node {
        labels: &'x BTreeMap<String, String>,
    },
    Claim {
        reqs: &'x Requirements,
        unrecorded: Option<&'x BTreeMap<usize, u32>>,
    },
}

/// Per pending pod, worked out once.
pub(super) struct PodInfo<'p> {
    pub(super) pod: &'p PendingPod,
    pub(super) shape: usize,
    pub(super) owned: Vec<(usize, Strength)>,
    /// Groups that count this pod.
    pub(super) matched_by: Vec<usize>,
    /// Anti-affinity groups whose selector matches this pod: their owners' domains are closed to it.
    pub(super) blocked_by: Vec<usize>,
    /// The pod's relaxation steps, in Karpenter's order.
    pub(super) steps: Vec<Step>,
}

/// One state of a pod's preferences: the topology level (which preferred terms still count), the node
/// requirement alternative, and whether PreferNoSchedule taints are tolerated yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Step {
    pub(super) level: u8,
    pub(super) alt: usize,
    pub(super) pns: bool,
}

/// Karpenter's relaxation order, one change per step: the pod's OR-ed required node-affinity terms in turn
/// (each with its heaviest preferred term), then without preferred pod affinity, then without preferred
/// anti-affinity, then the lighter preferred node-affinity terms one at a time (heaviest dropped first) and
/// none, then without ScheduleAnyway spreads, and last tolerating PreferNoSchedule taints.
pub(super) fn relaxation_steps(
    pod: &PendingPod,
    owned: &[(usize, Strength)],
    any_prefer_no_schedule: bool,
) -> Vec<Step> {
    let alts = pod.requirements.len().max(1);
    let required = pod.required_alternatives.clamp(1, alts);
    let has = |s: Strength| owned.iter().any(|(_, st)| *st == s);
    let mut steps: Vec<Step> = (0..required)
        .map(|alt| Step {
            level: 0,
            alt,
            pns: false,
        })
        .collect();
    let mut level = 0;
    let mut alt = required - 1;
    for s in [Strength::PreferredAffinity, Strength::PreferredAntiAffinity] {
        if has(s) {
            level = s as u8;
            steps.push(Step {
                level,
                alt,
                pns: false,
            });
        }
    }
    while alt + 1 < alts {
        alt += 1;
        steps.push(Step {
            level,
            alt,
            pns: false,
        });
    }
    if has(Strength::ScheduleAnyway) {
        level = Strength::ScheduleAnyway as u8;
        steps.push(Step {
            level,
            alt,
            pns: false,
        });
    }
    if any_prefer_no_schedule {
        steps.push(Step {
            level,
            alt,
            pns: true,
        });
    }
    steps
}

pub(super) fn active(strength: Strength, level: u8) -> bool {
    strength == Strength::Required || strength as u8 > level
}

pub(super) struct Topology {
    pub(super) groups: Vec<Group>,
    /// Every domain of each non-hostname key: the pools' offerings and requirements, and existing nodes.
    pub(super) universe: BTreeMap<String, BTreeSet<String>>,
}

impl Topology {
    pub(super) fn group_of(
        &mut self,
        index: &mut BTreeMap<TopologyTerm, usize>,
        term: &TopologyTerm,
    ) -> usize {
        *index.entry(term.clone()).or_insert_with(|| {
            self.groups.push(Group {
                term: term.clone(),
                counts: BTreeMap::new(),
                owners: BTreeMap::new(),
                total: 0,
            });
            self.groups.len() - 1
        })
    }

    /// The domains of `key` a candidate may be in, narrowed by `pins` already chosen for this pod.
    pub(super) fn domains(&self, at: &At, key: &str, pins: &Requirements) -> Vec<String> {
        let mut out: Vec<String> = match at {
            At::Node { labels, .. } => labels.get(key).cloned().into_iter().collect(),
            At::Claim { reqs, .. } => match reqs.get(key).and_then(|r| r.finite_values()) {
                Some(vals) => vals.iter().cloned().collect(),
                None => self
                    .universe
                    .get(key)
                    .into_iter()
                    .flatten()
                    .filter(|v| reqs.get(key).is_none_or(|r| r.has(v)))
                    .cloned()
                    .collect(),
            },
        };
        if let Some(p) = pins.get(key) {
            out.retain(|d| p.has(d));
        }
        out
    }

    /// The global minimum a spread compares against: the lowest count over the domains the pod could
    /// reach (its node affinity limits them unless the policy says Ignore), or zero when fewer than
    /// minDomains domains are eligible.
    pub(super) fn spread_min(
        &self,
        gid: usize,
        min_domains: u32,
        honor_node_affinity: bool,
        alt: &Requirements,
    ) -> u32 {
        let g = &self.groups[gid];
        let eligible: Vec<&String> = self
            .universe
            .get(&g.term.key)
            .into_iter()
            .flatten()
            .filter(|d| !honor_node_affinity || alt.get(&g.term.key).is_none_or(|r| r.has(d)))
            .collect();
        if (eligible.len() as u32) < min_domains {
            return 0;
        }
        eligible
            .iter()
            .map(|d| g.counts.get(*d).copied().unwrap_or(0))
            .min()
            .unwrap_or(0)
    }

    pub(super) fn count(&self, gid: usize, at: &At, domain: &str) -> u32 {
        let extra = match at {
            At::Claim {
                unrecorded: Some(u),
                ..
            } => u.get(&gid).copied().unwrap_or(0),
            _ => 0,
        };
        self.groups[gid].counts.get(domain).copied().unwrap_or(0) + extra
    }

    /// The extra requirements (domain pins) under which `info`'s pod may go `at`, or why it may not.
    pub(super) fn fit(
        &self,
        info: &PodInfo,
        level: u8,
        alt: &Requirements,
        at: &At,
        hc: &HostCounts,
    ) -> Result<Requirements, (Reject, String)> {
        let mut pins = Requirements::default();
        let pod = info.pod;
        for &(gid, strength) in &info.owned {
            if !active(strength, level) {
                continue;
            }
            let g = &self.groups[gid];
            let term = &g.term;
            let self_sel = term.selects(&pod.key.namespace, &pod.labels) as u32;
            // Hard hostname spread and anti-affinity only get harder on a candidate as it fills.
            let settles = strength == Strength::Required
                && !matches!(term.kind, TermKind::Affinity)
                && term.is_hostname();
            let no = |why: &str| {
                Err((
                    if settles {
                        Reject::Settled
                    } else {
                        Reject::ForNow
                    },
                    format!("{term}: {why}"),
                ))
            };
            if term.is_hostname() {
                let c = hc.counts.get(&gid).copied().unwrap_or(0);
                let ok = match term.kind {
                    // A new node can always be made, so the global minimum on hostname is zero.
                    TermKind::Spread { max_skew, .. } => c + self_sel <= max_skew,
                    TermKind::Affinity => c > 0 || (self_sel == 1 && g.total == 0),
                    TermKind::AntiAffinity => c == 0,
                };
                if !ok {
                    return no("not on this node");
                }
                continue;
            }
            let doms = self.domains(at, &term.key, &pins);
            if doms.is_empty() {
                return no("the node has no such topology label");
            }
            let chosen = match term.kind {
                TermKind::Spread {
                    max_skew,
                    min_domains,
                    honor_node_affinity,
                } => {
                    let min = self.spread_min(gid, min_domains, honor_node_affinity, alt);
                    doms.iter()
                        .map(|d| (self.count(gid, at, d), d))
                        .filter(|(c, _)| c + self_sel <= min + max_skew)
                        .min_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(b.1)))
                        .map(|(_, d)| d.clone())
                }
                TermKind::Affinity => doms
                    .iter()
                    .map(|d| (self.count(gid, at, d), d))
                    .filter(|(c, _)| *c > 0)
                    .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(a.1)))
                    .map(|(_, d)| d.clone())
                    // The first of a self-affine group may go anywhere; the rest follow it.
                    .or_else(|| (self_sel == 1 && g.total == 0).then(|| doms[0].clone())),
                TermKind::AntiAffinity => {
                    doms.iter().find(|d| self.count(gid, at, d) == 0).cloned()
                }
            };
            match chosen {
                Some(d) => pins.add(Requirement::in_values(&term.key, [d])),
                None => return no("no domain left"),
            }
        }
        for &gid in &info.blocked_by {
            let g = &self.groups[gid];
            if g.owners.is_empty() && hc.owners.is_empty() {
                continue;
            }
            let why = || format!("{} of a pod already placed", g.term);
            if g.term.is_hostname() {
                if hc.owners.contains_key(&gid) {
                    return Err((Reject::Settled, why()));
                }
                continue;
            }
            let doms = self.domains(at, &g.term.key, &pins);
            let open: Vec<String> = doms
                .iter()
                .filter(|d| !g.owners.contains_key(*d))
                .cloned()
                .collect();
            if open.is_empty() {
                return Err((Reject::ForNow, why()));
            }
            if open.len() < doms.len() {
                pins.add(Requirement::in_values(&g.term.key, open));
            }
        }
        Ok(pins)
    }

    /// Per label key, the domains each of the pod's active terms accepts for a claim already settled on
    /// one domain of that key (such a claim has no unsettled counts there, so this is exactly what `fit`
    /// decides): a quick no without building domain lists. Counts do not change while one pod is being
    /// placed, so this is worked out once per pod, level and node affinity alternative.
    pub(super) fn open_domains(&self, info: &PodInfo, level: u8, alt: &Requirements) -> Quick<'_> {
        let mut out = Quick::default();
        for &(gid, strength) in &info.owned {
            let g = &self.groups[gid];
            if !active(strength, level) || g.term.is_hostname() {
                continue;
            }
            let Some(all) = self.universe.get(&g.term.key) else {
                continue;
            };
            let self_sel = g.term.selects(&info.pod.key.namespace, &info.pod.labels) as u32;
            let count = |d: &String| g.counts.get(d).copied().unwrap_or(0);
            let open: BTreeSet<&str> = match g.term.kind {
                TermKind::Spread {
                    max_skew,
                    min_domains,
                    honor_node_affinity,
                } => {
                    let min = self.spread_min(gid, min_domains, honor_node_affinity, alt);
                    // An unsettled claim whose own matching pods exceed this slack everywhere cannot
                    // take the pod: settling it would break the skew.
                    let slack = all
                        .iter()
                        .map(|d| (min + max_skew) as i64 - (count(d) + self_sel) as i64)
                        .max()
                        .unwrap_or(0);
                    out.slack.push((gid, slack));
                    all.iter()
                        .filter(|d| count(d) + self_sel <= min + max_skew)
                        .map(String::as_str)
                        .collect()
                }
                TermKind::Affinity if self_sel == 1 && g.total == 0 => {
                    all.iter().map(String::as_str).collect()
                }
                TermKind::Affinity => all
                    .iter()
                    .filter(|d| count(d) > 0)
                    .map(String::as_str)
                    .collect(),
                TermKind::AntiAffinity => all
                    .iter()
                    .filter(|d| count(d) == 0)
                    .map(String::as_str)
                    .collect(),
            };
            out.settled.push((g.term.key.as_str(), open));
        }
        out
    }

    /// Count a placed pod in every group that cares, and its anti-affinity in the domains it closes.
    pub(super) fn record(
        &mut self,
        info: &PodInfo,
        at: &At,
        hc: &mut HostCounts,
    ) -> BTreeMap<usize, u32> {
        let mut unrecorded = BTreeMap::new();
        let none = Requirements::default();
        for &gid in &info.matched_by {
            if self.groups[gid].term.is_hostname() {
                self.groups[gid].total += 1;
                *hc.counts.entry(gid).or_default() += 1;
                continue;
            }
            let doms = self.domains(at, &self.groups[gid].term.key, &none);
            let anti = self.groups[gid].term.kind == TermKind::AntiAffinity;
            let g = &mut self.groups[gid];
            g.total += 1;
            match doms.len() {
                0 => {}
                1 => *g.counts.entry(doms[0].clone()).or_default() += 1,
                // Anti-affinity counts pessimistically in every domain the pod may land in; spread and
                // affinity wait until the claim settles on one (see `settle`).
                _ if anti => {
                    for d in doms {
                        *g.counts.entry(d).or_default() += 1;
                    }
                }
                _ => *unrecorded.entry(gid).or_default() += 1,
            }
        }
        // Only required anti-affinity keeps other pods away (the scheduler's symmetry rule).
        for &(gid, strength) in &info.owned {
            if strength != Strength::Required
                || self.groups[gid].term.kind != TermKind::AntiAffinity
            {
                continue;
            }
            if self.groups[gid].term.is_hostname() {
                *hc.owners.entry(gid).or_default() += 1;
                continue;
            }
            for d in self.domains(at, &self.groups[gid].term.key, &none) {
                *self.groups[gid].owners.entry(d).or_default() += 1;
            }
        }
        unrecorded
    }

    /// Move a claim's pending counts into the domain it has settled on, key by key.
    pub(super) fn settle(&mut self, claim: &mut OpenClaim) {
        let none = Requirements::default();
        let mut done = Vec::new();
        for (&gid, &n) in &claim.unrecorded {
            let at = At::Claim {
                reqs: &claim.requirements,
                unrecorded: None,
            };
            let doms = self.domains(&at, &self.groups[gid].term.key, &none);
            if doms.len() == 1 {
                *self.groups[gid].counts.entry(doms[0].clone()).or_default() += n;
                done.push(gid);
            }
        }
        for gid in done {
            claim.unrecorded.remove(&gid);
        }
    }
}

/// The groups counting a pod, and the anti-affinity groups among them.
type MatchLists = (Vec<usize>, Vec<usize>);

pub(super) fn build_topology<'p>(
    order: &[&'p PendingPod],
    existing: &[&ExistingCapacity],
    pools: &[&PoolOptions],
    any_prefer_no_schedule: bool,
) -> (Topology, Vec<PodInfo<'p>>, Vec<HostCounts>) {
    let mut topo = Topology {
        groups: Vec::new(),
        universe: BTreeMap::new(),
    };
    let mut index: BTreeMap<TopologyTerm, usize> = BTreeMap::new();
    for p in order {
        for t in &p.topology {
            topo.group_of(&mut index, &t.term);
        }
    }
    for cap in existing {
        for ep in &cap.pods {
            for t in &ep.anti_affinity {
                topo.group_of(&mut index, t);
            }
        }
    }
    let keys: BTreeSet<String> = topo
        .groups
        .iter()
        .filter(|g| !g.term.is_hostname())
        .map(|g| g.term.key.clone())
        .collect();
    for key in &keys {
        let mut doms: BTreeSet<String> = BTreeSet::new();
        for pool in pools {
            if key == labels::ZONE || key == labels::CAPACITY_TYPE {
                for it in &pool.instance_types {
                    for o in allowed_offerings(it, &pool.requirements) {
                        doms.insert(if key == labels::ZONE {
                            o.zone.clone()
                        } else {
                            o.capacity_type.as_str().to_string()
                        });
                    }
                }
            } else if let Some(vals) = pool.requirements.get(key).and_then(|r| r.finite_values()) {
                doms.extend(vals.iter().cloned());
            }
        }
        for cap in existing {
            if let Some(v) = cap.labels.get(key) {
                doms.insert(v.clone());
            }
        }
        topo.universe.insert(key.clone(), doms);
    }
    // Existing pods count where they run, and their anti-affinity closes their domains.
    let mut host_counts = Vec::with_capacity(existing.len());
    for cap in existing {
        let mut hc = HostCounts::default();
        for ep in &cap.pods {
            for (gid, g) in topo.groups.iter_mut().enumerate() {
                if !g.term.selects(&ep.namespace, &ep.labels) {
                    continue;
                }
                g.total += 1;
                if g.term.is_hostname() {
                    *hc.counts.entry(gid).or_default() += 1;
                } else if let Some(d) = cap.labels.get(&g.term.key) {
                    *g.counts.entry(d.clone()).or_default() += 1;
                }
            }
            for t in &ep.anti_affinity {
                let gid = index[t];
                if t.is_hostname() {
                    *hc.owners.entry(gid).or_default() += 1;
                } else if let Some(d) = cap.labels.get(&t.key) {
                    *topo.groups[gid].owners.entry(d.clone()).or_default() += 1;
                }
            }
        }
        host_counts.push(hc);
    }
    // Shapes: pods alike in everything the planner looks at share scan cursors.
    let mut shapes: BTreeMap<u64, Vec<(usize, &PendingPod)>> = BTreeMap::new();
    let mut next_shape = 0;
    let mut infos = Vec::with_capacity(order.len());
    // Which groups count a pod depends only on its namespace and labels: match each label set once.
    let mut matches: BTreeMap<(&str, &BTreeMap<String, String>), MatchLists> = BTreeMap::new();
    for p in order {
        let mut h = DefaultHasher::new();
        p.requests.hash(&mut h);
        p.requirements.hash(&mut h);
        p.required_alternatives.hash(&mut h);
        p.labels.hash(&mut h);
        p.topology.hash(&mut h);
        p.host_ports.hash(&mut h);
        p.key.namespace.hash(&mut h);
        for t in &p.tolerations {
            (
                &t.key,
                &t.operator,
                &t.value,
                &t.effect,
                &t.toleration_seconds,
            )
                .hash(&mut h);
        }
        let bucket = shapes.entry(h.finish()).or_default();
        let same = |q: &PendingPod| {
            q.requests == p.requests
                && q.requirements == p.requirements
                && q.required_alternatives == p.required_alternatives
                && q.labels == p.labels
                && q.topology == p.topology
                && q.host_ports == p.host_ports
                && q.tolerations == p.tolerations
                && q.key.namespace == p.key.namespace
        };
        let shape = match bucket.iter().find(|(_, q)| same(q)) {
            Some((s, _)) => *s,
            None => {
                bucket.push((next_shape, p));
                next_shape += 1;
                next_shape - 1
            }
        };
        let (matched_by, blocked_by) = matches
            .entry((p.key.namespace.as_str(), &p.labels))
            .or_insert_with(|| {
                let m: Vec<usize> = (0..topo.groups.len())
                    .filter(|&g| topo.groups[g].term.selects(&p.key.namespace, &p.labels))
                    .collect();
                let b = m
                    .iter()
                    .copied()
                    .filter(|&g| topo.groups[g].term.kind == TermKind::AntiAffinity)
                    .collect();
                (m, b)
            })
            .clone();
        let owned: Vec<(usize, Strength)> = p
            .topology
            .iter()
            .map(|t| (index[&t.term], t.strength))
            .collect();
        let steps = relaxation_steps(p, &owned, any_prefer_no_schedule);
        infos.push(PodInfo {
            pod: p,
            shape,
            owned,
            matched_by,
            blocked_by,
            steps,
        });
    }
    (topo, infos, host_counts)
}

// ---------------------------------------------------------------------------------------------------------
// Candidates.
