//! The scheduling simulations behind each disruption method: could these nodes' pods run elsewhere, on
//! what, and what would it save. Methods are tried in Karpenter's order: drift, emptiness, multi-node
//! consolidation, single-node consolidation.

use std::collections::BTreeMap;

use crate::cloudprovider::{CapacityType, CloudProvider};
use crate::context::Context;
use crate::crds::labels;
use crate::error::ControllerError;
use crate::provisioning::inputs;
use crate::scheduling::planner::cheapest_price;
use crate::scheduling::requirements::Requirement;
use crate::scheduling::{ExistingCapacity, PendingPod, Plan, PoolOptions, plan_on};
use crate::state::ClusterState;

use super::{Action, Candidate, Command, Disruption, Reason, Refusal, RefusalKind, Stage, View};

/// Multi-node consolidation looks at no more than this many candidates at once (Karpenter: 100).
const MULTI_NODE_MAX: usize = 100;
/// Spot-to-spot replacement of a single node needs this many cheaper types and launches only the
/// cheapest this many (Karpenter's figure).
pub const SPOT_TO_SPOT_TYPES: usize = 15;

/// Karpenter's `filterOutSameInstanceType`: when the replacement could be of a type one of the nodes
/// already is, it must cost less than the cheapest node of such a type — else keeping that node and
/// deleting the others disrupts less for the same result. The price ceiling that leaves (infinity when no
/// replacement type is a candidate's).
fn same_type_ceiling(cands: &[&Candidate], replacement_types: &[String]) -> f64 {
    cands
        .iter()
        .filter(|c| replacement_types.contains(&c.instance_type))
        .map(|c| c.price)
        .fold(f64::INFINITY, f64::min)
}

/// Why an empty node holding CapacityBuffer headroom stays.
const HOLDS_HEADROOM: &str = "its room is CapacityBuffer headroom that fits nowhere else (a new node would be launched for it)";

/// What every simulation of one pass shares, read from the cache once: capacity as it stands (less nodes
/// already leaving), the pools, and each candidate's pods as the planner sees them. A simulation then only
/// leaves its candidates out — the incremental part that keeps a 1000-node pass cheap.
pub(crate) struct Snapshot<'a> {
    existing: Vec<ExistingCapacity>,
    pools: Vec<PoolOptions<'a>>,
    /// Static pools: only their own drift replacements come from them.
    statics: Vec<PoolOptions<'a>>,
    pods: BTreeMap<String, Vec<PendingPod>>,
    /// Each pool's cost per hour and disruption cost, for the consolidation score.
    pool_totals: BTreeMap<String, (f64, f64)>,
    /// CapacityBuffers' chunks: every simulation places them too, so no disruption takes the headroom
    /// away (a node holding it goes only when the chunks fit elsewhere or on its replacement).
    headroom: Vec<PendingPod>,
}

impl View<'_> {
    pub(crate) fn snapshot(&self, cands: &[Candidate]) -> Snapshot<'_> {
        let leaving = self.state.leaving_nodes();
        let pods = cands
            .iter()
            .map(|c| {
                let pending =
                    c.pods
                        .iter()
                        .filter_map(|k| {
                            self.state.pods.get(k).and_then(|p| {
                                inputs::pending_pod_or_log(self.ctx, self.state, k, p)
                            })
                        })
                        .collect();
                (c.node.clone(), pending)
            })
            .collect();
        let options = inputs::pool_options(self.state, self.provider, &self.ctx.settings);
        Snapshot {
            existing: inputs::existing_capacity(
                self.ctx,
                self.state,
                &leaving,
                self.provider.instance_types(),
            ),
            pools: options.usable,
            statics: options.statics,
            pods,
            pool_totals: self.pool_totals(),
            headroom: inputs::headroom_pods(self.state),
        }
    }

    /// Whether pending pods (or CapacityBuffer headroom) would get a new node from a pool that can launch
    /// now: capacity genuinely on its way (pods that fit nodes already there are the kube-scheduler's to
    /// bind).
    fn awaiting_launch(&self) -> bool {
        let pending: Vec<PendingPod> = self
            .state
            .pods
            .iter()
            .filter(|(_, p)| crate::state::is_provisionable(p))
            .filter_map(|(k, p)| inputs::pending_pod_in(self.state, k, p).ok())
            .chain(inputs::headroom_pods(self.state))
            .collect();
        if pending.is_empty() {
            return false;
        }
        let leaving = self.state.leaving_nodes();
        let existing = inputs::existing_capacity(
            self.ctx,
            self.state,
            &leaving,
            self.provider.instance_types(),
        );
        let pools: Vec<PoolOptions<'_>> =
            inputs::pool_options(self.state, self.provider, &self.ctx.settings)
                .usable
                .into_iter()
                .filter(|p| {
                    self.state.nodepools.get(&p.name).is_none_or(|pool| {
                        self.provider
                            .launch_problem(&pool.spec.template.spec.node_class_ref.name)
                            .is_none()
                    })
                })
                .collect();
        !crate::scheduling::plan(&pending, &existing, &pools)
            .claims
            .is_empty()
    }

    /// Cost per hour and disruption cost of every pool's nodes (a node not yet registered counts 1).
    fn pool_totals(&self) -> BTreeMap<String, (f64, f64)> {
        let mut per_node: BTreeMap<&str, Vec<&k8s_openapi::api::core::v1::Pod>> = BTreeMap::new();
        for p in self.state.pods.values() {
            if let Some(n) = p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                && super::candidates::moves(p)
            {
                per_node.entry(n).or_default().push(p);
            }
        }
        let mut out: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for claim in self.state.nodeclaims.values() {
            let l = claim.metadata.labels.clone().unwrap_or_default();
            let Some(pool) = l.get(labels::NODEPOOL) else {
                continue;
            };
            let entry = out.entry(pool.clone()).or_default();
            entry.0 += self.claim_price(&l);
            let node = claim.status.as_ref().and_then(|s| s.node_name.as_deref());
            entry.1 += super::balance::node_cost(
                node.and_then(|n| per_node.get(n))
                    .into_iter()
                    .flatten()
                    .copied(),
            );
        }
        out
    }

    /// Whether the buffers' chunks still fit capacity already there or on its way without these nodes (as
    /// well as with them).
    fn headroom_fits_without(&self, snap: &Snapshot<'_>, cands: &[&Candidate]) -> bool {
        if snap.headroom.is_empty() {
            return true;
        }
        // Chunks already short of room with every node in place (a launch not yet made, a pool at its
        // limits) are not this removal's doing.
        let short = |plan: Plan| {
            plan.headroom_unschedulable.len()
                + plan
                    .claims
                    .iter()
                    .flat_map(|c| &c.pods)
                    .filter(|k| crate::provisioning::buffers::is_virtual(k))
                    .count()
        };
        short(self.simulate(snap, cands)) <= short(self.simulate(snap, &[]))
    }

    /// Where the pods of `cands` would go if those nodes left.
    fn simulate(&self, snap: &Snapshot<'_>, cands: &[&Candidate]) -> Plan {
        let gone: Vec<String> = cands
            .iter()
            .flat_map(|c| [format!("node/{}", c.node), format!("nodeclaim/{}", c.claim)])
            .collect();
        let existing: Vec<&ExistingCapacity> = snap
            .existing
            .iter()
            .filter(|e| !gone.contains(&e.name))
            .collect();
        let pending: Vec<PendingPod> = cands
            .iter()
            .flat_map(|c| snap.pods.get(&c.node).into_iter().flatten().cloned())
            .chain(snap.headroom.iter().cloned())
            .collect();
        plan_on(&pending, &existing, &snap.pools)
    }

    /// The cheapest allowed price of one type by name as a pool's node class offers it (its capacity
    /// reservations included); infinity when unknown or not offered.
    fn type_price(&self, pool: &str, name: &str, reqs: &crate::scheduling::Requirements) -> f64 {
        let Some(it) = self
            .provider
            .instance_types()
            .iter()
            .find(|t| t.name == name)
        else {
            return f64::INFINITY;
        };
        match self.state.nodepools.get(pool) {
            Some(p) => {
                let class = crate::cloudprovider::class_type(
                    self.provider,
                    self.state,
                    &p.spec.template.spec.node_class_ref.name,
                    it,
                );
                cheapest_price(&self.overlaid(pool, &class), reqs)
            }
            None => cheapest_price(it, reqs),
        }
    }

    /// The cheapest price of a planned claim's types under its requirements.
    fn plan_price(&self, plan: &crate::scheduling::ClaimPlan) -> f64 {
        plan.instance_types
            .iter()
            .map(|n| self.type_price(&plan.pool, n, &plan.requirements))
            .fold(f64::INFINITY, f64::min)
    }

    /// Consolidation's verdict on a simulation: delete when every pod fits elsewhere; replace with one
    /// strictly cheaper node otherwise (spot nodes only by spot, under [`SPOT_TO_SPOT_TYPES`]'s rule, and
    /// not at all with the `SpotToSpotConsolidation` gate off, Karpenter's default); anything else is no action.
    /// Returns the action and the saving per hour, or why there is none (Karpenter's `Unconsolidatable`
    /// messages, in substance). Several nodes replaced by one never get a type one of them already is when
    /// deleting the others would do (Karpenter's `filterOutSameInstanceType`).
    fn consolidation_action(
        &self,
        cands: &[&Candidate],
        plan: Plan,
    ) -> Result<(Action, f64), String> {
        if let Some((_, why)) = plan.unschedulable.first() {
            return Err(format!("not all pods would schedule elsewhere: {why}"));
        }
        let total: f64 = cands.iter().map(|c| c.price).sum();
        match plan.claims.len() {
            0 => Ok((Action::Delete, total)),
            1 => {
                let spot = cands
                    .iter()
                    .filter(|c| c.capacity_type == CapacityType::Spot)
                    .count();
                let mut claim = plan
                    .claims
                    .into_iter()
                    .next()
                    .ok_or("no replacement planned")?;
                if spot > 0 {
                    let allows_spot = claim
                        .requirements
                        .get(labels::CAPACITY_TYPE)
                        .is_none_or(|r| r.has(CapacityType::Spot.as_str()));
                    if !self.ctx.settings.feature_gates.spot_to_spot_consolidation {
                        return Err("spot-to-spot consolidation is disabled: a spot node is not replaced by another spot node".into());
                    }
                    if spot < cands.len() {
                        return Err(
                            "spot and on-demand nodes are not replaced together by one spot node"
                                .into(),
                        );
                    }
                    if !allows_spot {
                        return Err("the replacement's requirements do not allow spot".into());
                    }
                    claim.requirements.add(Requirement::in_values(
                        labels::CAPACITY_TYPE,
                        [CapacityType::Spot.as_str()],
                    ));
                }
                let reqs = claim.requirements.clone();
                // Only types that make it cheaper may be launched.
                claim
                    .instance_types
                    .retain(|t| self.type_price(&claim.pool, t, &reqs) < total);
                if claim.instance_types.is_empty() {
                    return Err("no cheaper instance type can take its pods".into());
                }
                if cands.len() > 1 {
                    let max = same_type_ceiling(cands, &claim.instance_types);
                    claim
                        .instance_types
                        .retain(|t| self.type_price(&claim.pool, t, &reqs) < max);
                    if claim.instance_types.is_empty() {
                        return Err("the one replacement would be of a type these nodes already are; deleting the others does as well".into());
                    }
                }
                if spot > 0 {
                    if cands.len() == 1 && claim.instance_types.len() < SPOT_TO_SPOT_TYPES {
                        return Err(format!(
                            "only {} cheaper spot instance types, fewer than the {SPOT_TO_SPOT_TYPES} spot-to-spot consolidation needs",
                            claim.instance_types.len()
                        ));
                    }
                    let mut by_price: Vec<(f64, String)> = claim
                        .instance_types
                        .iter()
                        .map(|t| (self.type_price(&claim.pool, t, &reqs), t.clone()))
                        .collect();
                    by_price.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
                    by_price.truncate(SPOT_TO_SPOT_TYPES);
                    claim.instance_types = by_price.into_iter().map(|(_, t)| t).collect();
                }
                let cheapest = self.plan_price(&claim);
                Ok((Action::Replace(vec![claim], Some(total)), total - cheapest))
            }
            n => Err(format!("its pods would need {n} new nodes")),
        }
    }

    /// Whether a consolidation is worth its disruption (`balance`): in a `Balanced` pool the score must
    /// reach 1/k (`Settings::balanced_k`, Karpenter's 2); elsewhere Dovetail's anti-churn threshold
    /// (`Settings::consolidation_balance`; off is Karpenter's behaviour). Moving no pod always passes.
    /// A `Balanced` pool's approved score comes back for the trace.
    fn worth_it(
        &self,
        snap: &Snapshot<'_>,
        cands: &[&Candidate],
        savings: f64,
    ) -> Result<Option<String>, String> {
        let balanced = cands[0].balanced;
        let threshold = if balanced {
            1.0 / f64::from(self.ctx.settings.balanced_k.max(1))
        } else {
            match self.ctx.settings.consolidation_balance {
                Some(t) => t,
                None => return Ok(None),
            }
        };
        if cands.iter().all(|c| c.pods.is_empty()) {
            return Ok(None);
        }
        let pool = &cands[0].pool;
        // Moving pods to save nothing is churn, whatever the pool costs (reserved nodes are all but free:
        // a pool of them costs nothing to score against).
        if savings <= 0.0 {
            return Err(format!(
                "moves pods to save nothing on nodepool/{pool} (its nodes cost nothing more to keep)"
            ));
        }
        let (cost, pool_disruption) = snap.pool_totals.get(pool).copied().unwrap_or_default();
        let disruption: f64 = cands.iter().map(|c| c.disruption).sum();
        let Some(score) = super::balance::Score::new(savings, disruption, cost, pool_disruption)
        else {
            return Ok(None);
        };
        let text = score.describe(pool, threshold);
        let approved = score.value() >= threshold;
        self.ctx
            .metrics
            .consolidation_scored(pool, balanced, approved, score.value());
        match (approved, balanced) {
            (true, true) => Ok(Some(text)),
            (true, false) => Ok(None),
            (false, _) => Err(text),
        }
    }

    fn command(
        &self,
        reason: Reason,
        cands: &[&Candidate],
        action: Action,
        savings: f64,
    ) -> Command {
        Command {
            reason,
            candidates: cands.iter().map(|c| (*c).clone()).collect(),
            action,
            savings,
            stage: Stage::Validating(self.ctx.now()),
            score: None,
        }
    }

    /// Evaluate one method on a fixed set of nodes (used to decide, and again to validate).
    pub(super) fn evaluate(
        &self,
        snap: &Snapshot<'_>,
        reason: Reason,
        cands: &[&Candidate],
    ) -> Option<Command> {
        self.evaluate_why(snap, reason, cands).ok()
    }

    /// [`Self::evaluate`], saying why when there is no command.
    fn evaluate_why(
        &self,
        snap: &Snapshot<'_>,
        reason: Reason,
        cands: &[&Candidate],
    ) -> Result<Command, String> {
        match reason {
            Reason::Drifted if cands.iter().any(|c| c.static_pool) => match cands {
                [c] => self.static_drift(snap, c),
                _ => Err("static nodes are replaced one at a time".into()),
            },
            Reason::Drifted | Reason::DaemonSetUnfit => {
                let plan = self.simulate(snap, cands);
                if let Some((_, why)) = plan.unschedulable.first() {
                    return Err(format!("not all pods would schedule elsewhere: {why}"));
                }
                let added: f64 = plan.claims.iter().map(|c| self.plan_price(c)).sum();
                let total: f64 = cands.iter().map(|c| c.price).sum();
                let action = if plan.claims.is_empty() {
                    Action::Delete
                } else {
                    Action::Replace(plan.claims, None)
                };
                Ok(self.command(reason, cands, action, total - added))
            }
            Reason::Empty => {
                let total: f64 = cands.iter().map(|c| c.price).sum();
                if !cands.iter().all(|c| c.pods.is_empty()) {
                    return Err("pods run on it".into());
                }
                if !self.headroom_fits_without(snap, cands) {
                    return Err(HOLDS_HEADROOM.into());
                }
                Ok(self.command(reason, cands, Action::Delete, total))
            }
            Reason::Underutilized => {
                let (action, savings) =
                    self.consolidation_action(cands, self.simulate(snap, cands))?;
                Ok(self.command(reason, cands, action, savings))
            }
        }
    }

    /// Karpenter's static drift: a drifted node of a static pool is replaced by a claim of the pool's own
    /// (its pods follow once it is up), not while the pool is above its replica count, and only where
    /// `limits.nodes` leaves room for the replacement beside it.
    fn static_drift(&self, snap: &Snapshot<'_>, c: &Candidate) -> Result<Command, String> {
        let pool = self
            .state
            .nodepools
            .get(&c.pool)
            .ok_or("its NodePool is gone")?;
        let replicas = usize::try_from(pool.spec.replicas.unwrap_or(0)).unwrap_or(0);
        let live = crate::provisioning::static_capacity::live_claims(self.state, &c.pool).len();
        if live > replicas {
            return Err(format!(
                "nodepool/{} is scaling down ({live} nodeclaims for {replicas} replicas)",
                c.pool
            ));
        }
        if crate::provisioning::static_capacity::nodes_left(pool, live) == Some(0) {
            return Err(format!(
                "nodepool/{}'s limits.nodes leaves no room for a replacement",
                c.pool
            ));
        }
        let options = snap
            .statics
            .iter()
            .find(|p| p.name == c.pool)
            .ok_or("its NodePool cannot launch now")?;
        let plan = crate::scheduling::planner::static_claim(options)?;
        let savings = c.price - self.plan_price(&plan);
        Ok(self.command(
            Reason::Drifted,
            &[c],
            Action::Replace(vec![plan], None),
            savings,
        ))
    }

    /// A fingerprint of everything [`Self::choose`] reads: the cluster, the candidates, the budgets left
    /// now (cron windows move them), the catalog and prices, unavailable offerings and node class
    /// resolutions.
    fn decision_inputs(&self, cands: &[Candidate]) -> u64 {
        let budgets: Vec<_> = [Reason::Empty, Reason::Drifted, Reason::Underutilized]
            .into_iter()
            .map(|r| self.budget_left(r))
            .collect();
        crate::names::fnv1a(&format!(
            "{}|{cands:?}|{budgets:?}|{}",
            self.state.revision,
            self.provider.decision_inputs()
        ))
    }

    /// The methods in order over one snapshot: the first command found, and the consolidations skipped as
    /// not worth their churn on the way.
    pub(crate) fn choose(
        &self,
        snap: &Snapshot<'_>,
        cands: &[Candidate],
        refused: &mut Vec<Refusal>,
    ) -> (Option<Command>, Vec<(Command, String)>) {
        let mut skipped = Vec::new();
        let mut refuse = |c: &Candidate, kind: RefusalKind, message: String| {
            refused.push(Refusal {
                node: c.node.clone(),
                claim: c.claim.clone(),
                kind,
                message,
            })
        };
        let over_budget = |c: &Candidate, reason: Reason| {
            format!(
                "nodepool/{}'s disruption budgets allow no more {} disruptions now",
                c.pool,
                reason.as_str()
            )
        };
        // Drift: one node at a time; replacements may cost more (the point is to move off the old spec).
        let left = self.budget_left(Reason::Drifted);
        for c in cands.iter().filter(|c| c.drifted.is_some()) {
            if left.get(&c.pool).copied().unwrap_or(0) == 0 {
                continue;
            }
            if let Some(cmd) = self.evaluate(snap, Reason::Drifted, &[c]) {
                self.ctx.journal.record(
                    "disruption",
                    format!(
                        "node/{} drifted: {}",
                        c.node,
                        c.drifted.clone().map(|d| d.1).unwrap_or_default()
                    ),
                );
                return (Some(cmd), skipped);
            }
        }
        // Beyond Karpenter: a node one of whose DaemonSet pods does not fit is replaced by one that fits
        // everything (its pods and every DaemonSet), one node at a time within the Drifted budgets.
        let left = self.budget_left(Reason::DaemonSetUnfit);
        for c in cands.iter().filter(|c| !c.daemon_unfit.is_empty()) {
            let unfit = |why: String| {
                format!(
                    "the pod of DaemonSet {} does not fit; the node cannot be replaced yet: {why}",
                    c.daemon_unfit.join(", ")
                )
            };
            if left.get(&c.pool).copied().unwrap_or(0) == 0 {
                refuse(
                    c,
                    RefusalKind::DaemonSetUnfit,
                    unfit(over_budget(c, Reason::Drifted)),
                );
                continue;
            }
            match self.evaluate_why(snap, Reason::DaemonSetUnfit, &[c]) {
                Ok(cmd) => {
                    self.ctx.journal.record(
                        "disruption",
                        format!(
                            "node/{}: the pod of DaemonSet {} does not fit",
                            c.node,
                            c.daemon_unfit.join(", ")
                        ),
                    );
                    return (Some(cmd), skipped);
                }
                Err(why) => refuse(c, RefusalKind::DaemonSetUnfit, unfit(why)),
            }
        }
        // Emptiness: every empty node the budgets allow, at once.
        let mut left = self.budget_left(Reason::Empty);
        let empty: Vec<&Candidate> = cands
            .iter()
            .filter(|c| c.pods.is_empty() && c.consolidatable)
            .filter(|c| match left.get_mut(&c.pool) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => {
                    refuse(
                        c,
                        RefusalKind::Unconsolidatable,
                        over_budget(c, Reason::Empty),
                    );
                    false
                }
            })
            .collect();
        // Empty nodes holding headroom that fits nowhere else stay (Karpenter keeps any node its last
        // plan put a buffer's chunk on; here only those the headroom needs).
        let empty = if snap.headroom.is_empty() {
            empty
        } else {
            let mut kept: Vec<&Candidate> = Vec::new();
            for c in empty {
                kept.push(c);
                if !self.headroom_fits_without(snap, &kept) {
                    kept.pop();
                    refuse(c, RefusalKind::Unconsolidatable, HOLDS_HEADROOM.into());
                }
            }
            kept
        };
        if !empty.is_empty() {
            return (self.evaluate(snap, Reason::Empty, &empty), skipped);
        }
        // Underutilized: the longest prefix (up to 100) that can go together within the budgets, then one
        // node at a time — any node whose pool's budget allows one more, as Karpenter's single-node pass.
        let budget = self.budget_left(Reason::Underutilized);
        let mut left = budget.clone();
        let underutilized: Vec<&Candidate> = cands
            .iter()
            .filter(|c| c.consolidatable && !c.only_when_empty && !c.pods.is_empty())
            .collect();
        let eligible: Vec<&Candidate> = underutilized
            .iter()
            .copied()
            .filter(|c| match left.get_mut(&c.pool) {
                Some(n) if *n > 0 => {
                    *n -= 1;
                    true
                }
                _ => false,
            })
            .take(MULTI_NODE_MAX)
            .collect();
        if eligible.len() >= 2 {
            let (mut lo, mut hi) = (2, eligible.len());
            let mut best = None;
            while lo <= hi {
                let mid = (lo + hi) / 2;
                match self.evaluate(snap, Reason::Underutilized, &eligible[..mid]) {
                    Some(cmd) => {
                        best = Some(cmd);
                        lo = mid + 1;
                    }
                    None => hi = mid - 1,
                }
            }
            if let Some(cmd) = best
                && cmd
                    .candidates
                    .iter()
                    .all(|c| c.pool == cmd.candidates[0].pool)
            {
                let refs: Vec<&Candidate> = cmd.candidates.iter().collect();
                match self.worth_it(snap, &refs, cmd.savings) {
                    Ok(score) => return (Some(Command { score, ..cmd }), skipped),
                    Err(why) => skipped.push((cmd, why)),
                }
            }
        }
        for c in underutilized {
            if budget.get(&c.pool).copied().unwrap_or(0) == 0 {
                refuse(
                    c,
                    RefusalKind::Unconsolidatable,
                    over_budget(c, Reason::Underutilized),
                );
                continue;
            }
            match self.evaluate_why(snap, Reason::Underutilized, &[c]) {
                Ok(cmd) => match self.worth_it(snap, &[c], cmd.savings) {
                    Ok(score) => return (Some(Command { score, ..cmd }), skipped),
                    Err(why) => {
                        refuse(
                            c,
                            RefusalKind::Unconsolidatable,
                            format!("not worth the churn: {why}"),
                        );
                        skipped.push((cmd, why));
                    }
                },
                Err(why) => refuse(c, RefusalKind::Unconsolidatable, why),
            }
        }
        (None, skipped)
    }
}

impl Disruption {
    /// Find the next command, methods in Karpenter's order, within each pool's budget.
    pub(super) async fn decide(
        &mut self,
        ctx: &Context,
        state: &ClusterState,
        provider: &dyn CloudProvider,
    ) -> Result<Option<Command>, ControllerError> {
        let view = View {
            ctx,
            state,
            provider,
            overlays: Default::default(),
        };
        if provider.instance_types().is_empty() {
            return Ok(None);
        }
        // Like Karpenter, voluntary disruption waits while the cluster is still settling: pods whose
        // capacity is about to be launched, or capacity still on its way (it could not be counted on yet).
        // Pods no pool can host, and claims of a node class whose launches keep dying, are not on their
        // way: waiting for them would stop all disruption for as long as one pod is stuck.
        if view.awaiting_launch() {
            return Ok(None);
        }
        let settling = state.nodeclaims.values().any(|c| {
            c.metadata.deletion_timestamp.is_none()
                && !c.condition_true(crate::crds::nodeclaim::conditions::INITIALIZED)
                && provider
                    .launch_problem(&c.spec.node_class_ref.name)
                    .is_none()
        });
        if settling {
            return Ok(None);
        }
        let blocked = view.budget_blocked_pods().await?;
        let mut refused = Vec::new();
        let cands = view.candidates(&blocked, &mut refused);
        if cands.is_empty() {
            self.tell(ctx, state, refused).await;
            return Ok(None);
        }
        // Like Karpenter's consolidation state: the same inputs as a pass that found nothing find nothing
        // again, so a settled cluster is not simulated every 10 seconds.
        let inputs = view.decision_inputs(&cands);
        if self.nothing_to_disrupt == Some(inputs) {
            self.tell(ctx, state, refused).await;
            return Ok(None);
        }
        let (chosen, skipped) = {
            let snap = view.snapshot(&cands);
            view.choose(&snap, &cands, &mut refused)
        };
        // A node about to be disrupted is not told it will not be.
        if let Some(cmd) = &chosen {
            refused.retain(|r| !cmd.candidates.iter().any(|c| c.node == r.node));
            if cmd.reason == Reason::DaemonSetUnfit {
                for c in &cmd.candidates {
                    for ds in &c.daemon_unfit {
                        let (ns, name) = ds.split_once('/').unwrap_or(("", ds));
                        let key = crate::kube::ObjectKey::namespaced(ns, name);
                        let uid = state
                            .daemonsets
                            .get(&key)
                            .and_then(|d| d.metadata.uid.clone());
                        crate::events::emit(
                            ctx,
                            crate::kube::Kind::DaemonSet,
                            &key,
                            uid,
                            crate::events::EventType::Warning,
                            "DaemonSetUnfit",
                            &format!(
                                "its pod does not fit on node {}; Dovetail replaces the node with one that fits every DaemonSet",
                                c.node
                            ),
                        )
                        .await;
                    }
                }
            }
        }
        self.tell(ctx, state, refused).await;
        for (cmd, why) in skipped {
            self.note_not_worth_it(ctx, &cmd, &why);
        }
        self.nothing_to_disrupt = chosen.is_none().then_some(inputs);
        Ok(chosen)
    }

    fn note_not_worth_it(&mut self, ctx: &Context, cmd: &Command, why: &str) {
        let key = cmd
            .candidates
            .iter()
            .map(|c| c.node.as_str())
            .collect::<Vec<_>>()
            .join(",");
        // Once per node set and reason, not every pass.
        if self.churn_noted.insert(format!("{key}:{why}")) {
            ctx.journal.record(
                "disruption",
                format!("skipped (not worth the churn): {} — {why}", cmd.describe()),
            );
        }
    }

    /// The command's nodes are still candidates and the same decision still holds: the fresh command.
    pub(super) async fn revalidate(
        &mut self,
        ctx: &Context,
        state: &ClusterState,
        provider: &dyn CloudProvider,
        command: &Command,
    ) -> Result<Option<Command>, ControllerError> {
        let view = View {
            ctx,
            state,
            provider,
            overlays: Default::default(),
        };
        let blocked = view.budget_blocked_pods().await?;
        let cands = view.candidates(&blocked, &mut Vec::new());
        let mut same = Vec::new();
        for old in &command.candidates {
            match cands.iter().find(|c| c.claim == old.claim) {
                Some(c) => same.push(c),
                None => return Ok(None),
            }
        }
        let snap = view.snapshot(&cands);
        let fresh = view.evaluate(&snap, command.reason, &same);
        Ok(fresh.filter(|f| {
            matches!(
                (&f.action, &command.action),
                (Action::Delete, Action::Delete) | (Action::Replace(..), Action::Replace(..))
            )
        }))
    }
}
