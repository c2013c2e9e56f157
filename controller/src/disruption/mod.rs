//! Disruption: expiration (forceful), then drift, emptiness, multi-node and single-node consolidation in
//! Karpenter's order, one command at a time and within NodePool budgets. A command is checked again after
//! 15 s, its replacements are launched and Initialized before any node goes, and it is rolled back if a
//! replacement fails.

pub mod budgets;
mod candidates;
pub mod cron;
mod simulate;

use std::time::Duration;

use serde_json::json;

use crate::crds::NodePool;
use crate::error::ControllerError;
use crate::events::EventType;
use crate::kube::{Kind, KubeError, ObjectKey};
use crate::run::Controller;
use crate::scheduling::ClaimPlan;

pub use budgets::Reason;
pub(crate) use candidates::Candidate;

/// Annotation on a NodeClaim: the hash of its NodePool's template when it was created.
pub const POOL_HASH: &str = "karpenter.sh/nodepool-hash";
/// Annotation on a consolidation replacement: the hourly price it must stay under (what it replaces).
pub const MAX_PRICE: &str = "dovetail.dev/max-price";
/// How often disruption looks for work.
pub const DISRUPTION_INTERVAL: Duration = Duration::from_secs(10);
/// A decision is simulated again this long after it was made, and only then carried out.
pub const VALIDATION_DELAY: Duration = Duration::from_secs(15);
/// Replacements that are not Initialized by then are given up and the command rolled back.
pub const REPLACEMENT_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// The hash of the parts of a NodePool's template whose change makes its nodes drifted.
pub fn pool_hash(pool: &NodePool) -> String {
    let t = &pool.spec.template;
    let text = serde_json::to_string(&json!({
        "metadata": t.metadata,
        "nodeClassRef": t.spec.node_class_ref,
        "taints": t.spec.taints,
        "startupTaints": t.spec.startup_taints,
        "expireAfter": t.spec.expire_after,
        "terminationGracePeriod": t.spec.termination_grace_period,
    }))
    .unwrap_or_default();
    format!("{:016x}", crate::names::fnv1a(&text))
}

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
        format!(
            "{} {action} {}; moves {pods} pods; saves {:.4}/h",
            self.reason.as_str(),
            nodes.join(" "),
            self.savings
        )
    }
}

impl Controller {
    /// One disruption pass: expire, then advance the command in flight, or look for a new one.
    pub(crate) async fn reconcile_disruption(&mut self) -> Result<(), ControllerError> {
        self.expire_claims().await?;
        if let Some(command) = self.disruption.take() {
            return self.advance(command).await;
        }
        let Some(command) = self.decide().await? else {
            return Ok(());
        };
        self.ctx
            .journal
            .record("disruption", format!("decided: {}", command.describe()));
        self.disruption = Some(command);
        Ok(())
    }

    /// Claims past their `expireAfter` are deleted at once: forceful, budget-free (Karpenter's expiration).
    async fn expire_claims(&mut self) -> Result<(), ControllerError> {
        let now = self.ctx.clock.now();
        let expired: Vec<(String, String)> = self
            .state
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
            self.ctx.journal.record(
                "disruption",
                format!("Expired nodeclaim/{name}: older than expireAfter {after}; deleting"),
            );
            self.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&name))
                .await?;
        }
        Ok(())
    }

    async fn advance(&mut self, command: Command) -> Result<(), ControllerError> {
        let now = self.now();
        match command.stage.clone() {
            Stage::Validating(at) => {
                if now < at + VALIDATION_DELAY {
                    self.disruption = Some(command);
                    return Ok(());
                }
                match self.revalidate(&command).await? {
                    Some(fresh) => self.execute(fresh).await,
                    None => {
                        self.ctx.journal.record(
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
                    match self.state.nodeclaims.get(name) {
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
                    return self.roll_back(&command, &claims, &why).await;
                }
                if !ready {
                    self.disruption = Some(command);
                    return Ok(());
                }
                self.delete_candidates(&command).await
            }
        }
    }

    /// Carry out a validated command: launch replacements (then wait) or delete at once.
    async fn execute(&mut self, mut command: Command) -> Result<(), ControllerError> {
        match command.action.clone() {
            Action::Delete => self.delete_candidates(&command).await,
            Action::Replace(plans, max_price) => {
                let mut created = Vec::new();
                for plan in plans {
                    let annotations = max_price
                        .map(|p| [(MAX_PRICE.to_string(), format!("{p:.6}"))].into())
                        .unwrap_or_default();
                    if let Some(name) = self.create_nodeclaim(plan, annotations).await? {
                        created.push(name);
                    }
                }
                // Tainted only once the replacements exist, so the provisioner counts pods that are about to
                // move against them instead of launching capacity of its own.
                for c in &command.candidates {
                    self.set_disrupted_taint(&c.node, true).await?;
                }
                self.ctx.journal.record(
                    "disruption",
                    format!(
                        "launching {} replacement(s) for {}: nodeclaim/{}",
                        created.len(),
                        command.reason.as_str(),
                        created.join(" nodeclaim/")
                    ),
                );
                command.stage = Stage::Replacing(created, self.now());
                self.disruption = Some(command);
                Ok(())
            }
        }
    }

    async fn delete_candidates(&mut self, command: &Command) -> Result<(), ControllerError> {
        for c in &command.candidates {
            let uid = self
                .state
                .nodes
                .get(&c.node)
                .and_then(|n| n.metadata.uid.clone());
            let message = format!("Disrupting: {}", command.describe());
            self.emit_event(
                Kind::Node,
                &ObjectKey::cluster(&c.node),
                uid,
                EventType::Normal,
                &format!("Disrupted{}", command.reason.as_str()),
                &message,
            )
            .await;
            self.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&c.claim))
                .await?;
        }
        let decision = match command.action {
            Action::Delete => "delete",
            Action::Replace(..) => "replace",
        };
        let reason = command.reason.as_str().to_lowercase();
        self.ctx.metrics.inc(
            crate::metrics::DISRUPTION_DECISIONS,
            &[("decision", decision), ("reason", &reason)],
        );
        for c in &command.candidates {
            self.ctx.metrics.inc(
                crate::metrics::NODECLAIMS_DISRUPTED,
                &[("nodepool", &c.pool), ("reason", &reason)],
            );
        }
        self.ctx
            .journal
            .record("disruption", format!("executed: {}", command.describe()));
        Ok(())
    }

    async fn roll_back(
        &mut self,
        command: &Command,
        claims: &[String],
        why: &str,
    ) -> Result<(), ControllerError> {
        for name in claims {
            if self.state.nodeclaims.contains_key(name) {
                self.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(name))
                    .await?;
            }
        }
        for c in &command.candidates {
            self.set_disrupted_taint(&c.node, false).await?;
        }
        self.ctx.journal.record(
            "disruption",
            format!("rolled back ({why}): {}", command.describe()),
        );
        Ok(())
    }

    /// Add or remove `karpenter.sh/disrupted:NoSchedule` on a node (not on one already being deleted).
    async fn set_disrupted_taint(&mut self, node: &str, on: bool) -> Result<(), ControllerError> {
        let Some(n) = self.state.nodes.get(node).cloned() else {
            return Ok(());
        };
        if n.metadata.deletion_timestamp.is_some() {
            return Ok(());
        }
        match self.write_disrupted_taint(&n, on).await {
            Err(ControllerError::Kube(KubeError::NotFound { .. })) => Ok(()),
            other => other,
        }
    }
}

/// Consolidation evaluated over a prepared cluster state with no API calls: what
/// `cargo xtask bench consolidation` times. The same code paths as the controller's disruption pass.
pub struct Evaluator(Controller);

impl Evaluator {
    pub fn new(
        ctx: crate::Context,
        state: crate::state::ClusterState,
        instance_types: Vec<crate::instancetype::InstanceType>,
    ) -> Self {
        let mut c = Controller::new(ctx);
        c.state = state;
        c.instance_types = instance_types;
        Evaluator(c)
    }

    /// Gather the candidates and evaluate each on its own: (candidates, how many could go alone).
    pub fn single_node_pass(&self) -> (usize, usize) {
        let cands = self.0.candidates(&Default::default());
        let snap = self.0.snapshot(&cands);
        let valid = cands
            .iter()
            .filter(|c| {
                self.0
                    .evaluate(&snap, Reason::Underutilized, &[c])
                    .is_some()
            })
            .count();
        (cands.len(), valid)
    }

    /// One decision pass as the controller makes it (multi-node first): how many nodes the command covers.
    pub fn decision_pass(&self) -> usize {
        let cands = self.0.candidates(&Default::default());
        let snap = self.0.snapshot(&cands);
        self.0
            .choose(&snap, &cands)
            .0
            .map_or(0, |c| c.candidates.len())
    }
}
