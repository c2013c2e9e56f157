//! Disruption: expiration (forceful), then drift, emptiness, multi-node and single-node consolidation in
//! Karpenter's order, one command at a time and within NodePool budgets. A command is checked again after
//! 15 s, its replacements are launched and Initialized before any node goes, and it is rolled back if a
//! replacement fails.

mod balance;
mod candidates;
mod simulate;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::cloudprovider::CloudProvider;
use crate::context::Context;
use crate::crds::labels::MAX_PRICE;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::scheduling::ClaimPlan;
use crate::state::ClusterState;

pub use crate::nodepool::budgets::Reason;
pub(crate) use candidates::{Candidate, Refusal, RefusalKind};
/// How often disruption looks for work.
pub const DISRUPTION_INTERVAL: Duration = Duration::from_secs(10);
/// A decision is simulated again this long after it was made, and only then carried out.
pub const VALIDATION_DELAY: Duration = Duration::from_secs(15);
/// Replacements that are not Initialized by then are given up and the command rolled back.
pub const REPLACEMENT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What a command does with its candidates.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    Delete,
    /// Launch these first (each under the price, if one is given), then delete.
    Replace(Vec<ClaimPlan>, Option<f64>),
}

#[derive(Debug, Clone)]
enum Stage {
    /// Decided at this time; re-simulated after [`VALIDATION_DELAY`].
    Validating(Duration),
    /// Replacement claims created at this time; waiting for them to be Initialized.
    Replacing(Vec<String>, Duration),
}

/// One disruption decision in flight.
#[derive(Debug, Clone)]
pub(crate) struct Command {
    reason: Reason,
    candidates: Vec<Candidate>,
    action: Action,
    /// Cost per hour saved (negative for drift replacements that cost more).
    savings: f64,
    stage: Stage,
    /// A `Balanced` pool's score of the move, as the trace shows it.
    score: Option<String>,
}

impl Command {
    fn describe(&self) -> String {
        let nodes: Vec<String> = self
            .candidates
            .iter()
            .map(|c| {
                format!(
                    "node/{} ({} {} {:.4}/h)",
                    c.node, c.instance_type, c.capacity_type, c.price
                )
            })
            .collect();
        let pods: usize = self.candidates.iter().map(|c| c.pods.len()).sum();
        let action = match &self.action {
            Action::Delete => "delete".to_string(),
            Action::Replace(plans, _) => {
                let types: Vec<String> = plans
                    .iter()
                    .map(|p| p.instance_types.first().cloned().unwrap_or_default())
                    .collect();
                format!("replace with {} ({})", plans.len(), types.join(","))
            }
        };
        let score = self
            .score
            .as_ref()
            .map(|s| format!("; Balanced: {s}"))
            .unwrap_or_default();
        format!(
            "{} {action} {}; moves {pods} pods; saves {:.4}/h{score}",
            self.reason.as_str(),
            nodes.join(" "),
            self.savings
        )
    }
}

/// What every method of one pass reads: the context, the cluster state and the provider.
#[derive(Clone)]
pub(crate) struct View<'a> {
    pub ctx: &'a Context,
    pub state: &'a ClusterState,
    pub provider: &'a dyn CloudProvider,
    /// The NodeOverlays over every pool's types, built on first use in a pass.
    pub overlays: std::sync::OnceLock<crate::nodepool::overlay::Applied>,
}

impl View<'_> {
    /// A type as a pool's simulation sees it under the NodeOverlays (the gate on), else as given.
    pub(crate) fn overlaid<'t>(
        &self,
        pool: &str,
        it: &'t crate::cloudprovider::InstanceType,
    ) -> std::borrow::Cow<'t, crate::cloudprovider::InstanceType> {
        if !self.ctx.settings.feature_gates.node_overlay {
            return std::borrow::Cow::Borrowed(it);
        }
        let applied = self
            .overlays
            .get_or_init(|| crate::nodepool::overlay::for_cluster(self.state, self.provider));
        applied
            .apply(pool, it)
            .map_or(std::borrow::Cow::Borrowed(it), std::borrow::Cow::Owned)
    }
}

/// The disruption controller: the command in flight and the memory that keeps it from repeating itself.
#[derive(Debug, Default)]
pub(crate) struct Disruption {
    /// The decision being validated or carried out (one at a time).
    command: Option<Command>,
    /// The inputs of the last decision pass that found nothing to do (a fingerprint).
    nothing_to_disrupt: Option<u64>,
    /// Consolidations already reported as not worth their churn.
    churn_noted: BTreeSet<String>,
    /// (node, message) of refusals already told, so each is told once while it holds.
    told: BTreeSet<(String, String)>,
}

impl Disruption {
    /// Say why nodes are left alone, once per node and reason for the node's life: a trace line and an
    /// Event on the Node and on its NodeClaim. (A refusal that comes and goes — a budget that allows and
    /// then refuses again — is not told each time.)
    async fn tell(&mut self, ctx: &Context, state: &ClusterState, refused: Vec<Refusal>) {
        self.told.retain(|(node, _)| state.nodes.contains_key(node));
        for r in refused {
            if !self.told.insert((r.node.clone(), r.message.clone())) {
                continue;
            }
            ctx.journal.record(
                "disruption",
                format!("{}: node/{}: {}", r.kind.verb(), r.node, r.message),
            );
            let node_uid = state
                .nodes
                .get(&r.node)
                .and_then(|n| n.metadata.uid.clone());
            let claim_uid = state
                .nodeclaims
                .get(&r.claim)
                .and_then(|c| c.metadata.uid.clone());
            for (kind, name, uid) in [
                (Kind::Node, &r.node, node_uid),
                (Kind::NodeClaim, &r.claim, claim_uid),
            ] {
                crate::events::emit(
                    ctx,
                    kind,
                    &ObjectKey::cluster(name.clone()),
                    uid,
                    EventType::Normal,
                    r.kind.event_reason(),
                    &r.message,
                )
                .await;
            }
        }
    }

    /// One disruption pass: expire, then advance the command in flight, or look for a new one.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        provider: &dyn CloudProvider,
    ) -> Result<(), ControllerError> {
        expire_claims(ctx, state).await?;
        mark_claims(ctx, state, provider).await?;
        if let Some(command) = self.command.take() {
            return self.advance(ctx, state, provider, command).await;
        }
        let Some(command) = self.decide(ctx, state, provider).await? else {
            return Ok(());
        };
        ctx.journal
            .record("disruption", format!("decided: {}", command.describe()));
        self.command = Some(command);
        Ok(())
    }
}

/// Karpenter's NodeClaim disruption conditions on every claim disruption may act on: `Drifted` (its reason
/// and why) while it has drifted, `Consolidatable` once its node has been stable for `consolidateAfter`;
/// each cleared when it stops holding. Written only when they change.
async fn mark_claims(
    ctx: &Context,
    state: &mut ClusterState,
    provider: &dyn CloudProvider,
) -> Result<(), ControllerError> {
    let candidates = View {
        ctx,
        state,
        provider,
        overlays: Default::default(),
    }
    .candidates(&Default::default(), &mut Vec::new());
    for c in candidates {
        let (claim, drifted, consolidatable) = (c.claim, c.drifted, c.consolidatable);
        let mut set = Vec::new();
        let mut clear = Vec::new();
        match drifted {
            Some((reason, message)) => set.push((DRIFTED, true, reason, message)),
            None => clear.push(DRIFTED),
        }
        if consolidatable {
            set.push((CONSOLIDATABLE, true, CONSOLIDATABLE, String::new()));
        } else {
            clear.push(CONSOLIDATABLE);
        }
        crate::nodeclaim::write_conditions(ctx, state, &claim, &set, &clear).await?;
    }
    Ok(())
}

const DRIFTED: &str = "Drifted";
const CONSOLIDATABLE: &str = "Consolidatable";
/// The condition a claim carries once disruption has chosen it, with the reason as its reason.
const DISRUPTION_REASON: &str = "DisruptionReason";

/// Claims past their `expireAfter` are deleted at once: forceful, budget-free (Karpenter's expiration).
async fn expire_claims(ctx: &Context, state: &ClusterState) -> Result<(), ControllerError> {
    let now = ctx.clock.now();
    let expired: Vec<(String, String)> = state
        .nodeclaims
        .values()
        .filter(|c| c.metadata.deletion_timestamp.is_none())
        .filter_map(|c| {
            let after = c.spec.expire_after.as_deref()?;
            let after = crate::duration::parse_or_never(after).ok()??;
            let created = c.metadata.creation_timestamp.as_ref()?.0;
            (crate::clock::since(now, created) >= after).then(|| {
                (
                    c.metadata.name.clone().unwrap_or_default(),
                    c.spec.expire_after.clone().unwrap_or_default(),
                )
            })
        })
        .collect();
    for (name, after) in expired {
        ctx.journal.record(
            "disruption",
            format!("Expired nodeclaim/{name}: older than expireAfter {after}; deleting"),
        );
        ctx.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&name))
            .await?;
    }
    Ok(())
}

impl Disruption {
    async fn advance(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        provider: &dyn CloudProvider,
        command: Command,
    ) -> Result<(), ControllerError> {
        let now = ctx.now();
        match command.stage.clone() {
            Stage::Validating(at) => {
                if now < at + VALIDATION_DELAY {
                    self.command = Some(command);
                    return Ok(());
                }
                match self.revalidate(ctx, state, provider, &command).await? {
                    Some(fresh) => self.execute(ctx, state, fresh).await,
                    None => {
                        ctx.journal.record(
                            "disruption",
                            format!("abandoned after validation: {}", command.describe()),
                        );
                        Ok(())
                    }
                }
            }
            Stage::Replacing(claims, since) => {
                let mut ready = true;
                let mut failed = None;
                for name in &claims {
                    match state.nodeclaims.get(name) {
                        Some(c) if c.metadata.deletion_timestamp.is_none() => {
                            ready &=
                                c.condition_true(crate::crds::nodeclaim::conditions::INITIALIZED);
                        }
                        _ => failed = Some(format!("replacement nodeclaim/{name} went away")),
                    }
                }
                if failed.is_none() && !ready && now >= since + REPLACEMENT_TIMEOUT {
                    failed = Some(format!(
                        "replacements not initialized after {}s",
                        REPLACEMENT_TIMEOUT.as_secs()
                    ));
                }
                if let Some(why) = failed {
                    return roll_back(ctx, state, &command, &claims, &why).await;
                }
                if !ready {
                    self.command = Some(command);
                    return Ok(());
                }
                delete_candidates(ctx, state, &command).await
            }
        }
    }

    /// Carry out a validated command: launch replacements (then wait) or delete at once.
    async fn execute(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        mut command: Command,
    ) -> Result<(), ControllerError> {
        match command.action.clone() {
            Action::Delete => delete_candidates(ctx, state, &command).await,
            Action::Replace(plans, max_price) => {
                let mut created = Vec::new();
                for plan in plans {
                    let annotations = max_price
                        .map(|p| [(MAX_PRICE.to_string(), format!("{p:.6}"))].into())
                        .unwrap_or_default();
                    if let Some(name) =
                        crate::provisioning::create_nodeclaim(ctx, state, plan, annotations).await?
                    {
                        created.push(name);
                    }
                }
                // Tainted only once the replacements exist, so the provisioner counts pods that are about to
                // move against them instead of launching capacity of its own.
                for c in &command.candidates {
                    mark_disrupted(ctx, state, &c.claim, &command).await?;
                    set_disrupted_taint(ctx, state, &c.node, true).await?;
                }
                ctx.journal.record(
                    "disruption",
                    format!(
                        "launching {} replacement(s) for {}: nodeclaim/{}",
                        created.len(),
                        command.reason.as_str(),
                        created.join(" nodeclaim/")
                    ),
                );
                command.stage = Stage::Replacing(created, ctx.now());
                self.command = Some(command);
                Ok(())
            }
        }
    }
}

/// `DisruptionReason=True` with the command's reason on a claim it disrupts.
async fn mark_disrupted(
    ctx: &Context,
    state: &mut ClusterState,
    claim: &str,
    command: &Command,
) -> Result<(), ControllerError> {
    let reason = command.reason.as_str();
    crate::nodeclaim::write_conditions(
        ctx,
        state,
        claim,
        &[(DISRUPTION_REASON, true, reason, command.describe())],
        &[],
    )
    .await
}

async fn delete_candidates(
    ctx: &Context,
    state: &mut ClusterState,
    command: &Command,
) -> Result<(), ControllerError> {
    for c in &command.candidates {
        if matches!(command.action, Action::Delete) {
            mark_disrupted(ctx, state, &c.claim, command).await?;
        }
        let uid = state
            .nodes
            .get(&c.node)
            .and_then(|n| n.metadata.uid.clone());
        let message = format!("Disrupting: {}", command.describe());
        crate::events::emit(
            ctx,
            Kind::Node,
            &ObjectKey::cluster(&c.node),
            uid,
            EventType::Normal,
            &format!("Disrupted{}", command.reason.as_str()),
            &message,
        )
        .await;
        ctx.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&c.claim))
            .await?;
    }
    let decision = match command.action {
        Action::Delete => "delete",
        Action::Replace(..) => "replace",
    };
    let reason = command.reason.as_str().to_lowercase();
    ctx.metrics.inc(
        crate::metrics::DISRUPTION_DECISIONS,
        &[("decision", decision), ("reason", &reason)],
    );
    for c in &command.candidates {
        ctx.metrics.inc(
            crate::metrics::NODECLAIMS_DISRUPTED,
            &[("nodepool", &c.pool), ("reason", &reason)],
        );
    }
    ctx.journal
        .record("disruption", format!("executed: {}", command.describe()));
    Ok(())
}

async fn roll_back(
    ctx: &Context,
    state: &mut ClusterState,
    command: &Command,
    claims: &[String],
    why: &str,
) -> Result<(), ControllerError> {
    for name in claims {
        if state.nodeclaims.contains_key(name) {
            ctx.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(name))
                .await?;
        }
    }
    for c in &command.candidates {
        set_disrupted_taint(ctx, state, &c.node, false).await?;
        crate::nodeclaim::write_conditions(ctx, state, &c.claim, &[], &[DISRUPTION_REASON]).await?;
    }
    ctx.journal.record(
        "disruption",
        format!("rolled back ({why}): {}", command.describe()),
    );
    Ok(())
}

/// Add or remove `karpenter.sh/disrupted:NoSchedule` on a node (not on one already being deleted).
async fn set_disrupted_taint(
    ctx: &Context,
    state: &mut ClusterState,
    node: &str,
    on: bool,
) -> Result<(), ControllerError> {
    let Some(n) = state.nodes.get(node).cloned() else {
        return Ok(());
    };
    if n.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    match crate::node::write_disrupted_taint(ctx, state, &n, on).await {
        Err(ControllerError::Kube(KubeError::NotFound { .. })) => Ok(()),
        other => other,
    }
}

/// Consolidation evaluated over a prepared cluster state with no API calls: what
/// `cargo xtask bench consolidation` times. The same code paths as the controller's disruption pass.
pub struct Evaluator {
    ctx: Context,
    state: ClusterState,
    provider: Box<dyn CloudProvider>,
}

impl Evaluator {
    pub fn new(ctx: Context, state: ClusterState, provider: Box<dyn CloudProvider>) -> Self {
        Evaluator {
            ctx,
            state,
            provider,
        }
    }

    fn view(&self) -> View<'_> {
        View {
            ctx: &self.ctx,
            state: &self.state,
            provider: self.provider.as_ref(),
            overlays: Default::default(),
        }
    }

    /// Gather the candidates and evaluate each on its own: (candidates, how many could go alone).
    pub fn single_node_pass(&self) -> (usize, usize) {
        let view = self.view();
        let cands = view.candidates(&Default::default(), &mut Vec::new());
        let snap = view.snapshot(&cands);
        let valid = cands
            .iter()
            .filter(|c| view.evaluate(&snap, Reason::Underutilized, &[c]).is_some())
            .count();
        (cands.len(), valid)
    }

    /// One decision pass as the controller makes it (multi-node first): how many nodes the command covers.
    pub fn decision_pass(&self) -> usize {
        let view = self.view();
        let cands = view.candidates(&Default::default(), &mut Vec::new());
        let snap = view.snapshot(&cands);
        view.choose(&snap, &cands, &mut Vec::new())
            .0
            .map_or(0, |c| c.candidates.len())
    }
}
