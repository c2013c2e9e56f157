//! Static NodePools (the `StaticCapacity` gate): a pool with `spec.replicas` keeps exactly that many
//! NodeClaims whatever the pods, within `limits.nodes`. Too few: claims are created from the pool's
//! template. Too many: the extra ones go — claims not launched yet first, then empty nodes, then the nodes
//! whose pods cost least to move — drained as any deleted node is.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::cloudprovider::CloudProvider;
use crate::context::Context;
use crate::crds::{NodeClaim, NodePool, labels};
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::node::drain::{Disposition, DrainGroup};
use crate::state::ClusterState;

/// A static pool's live claims: not being deleted, and not being replaced for drift (their node tainted
/// `karpenter.sh/disrupted`; the replacement counts instead).
pub(crate) fn live_claims<'a>(state: &'a ClusterState, pool: &str) -> Vec<&'a NodeClaim> {
    let leaving = |c: &NodeClaim| {
        c.status
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .and_then(|n| state.nodes.get(n))
            .and_then(|n| n.spec.as_ref()?.taints.as_ref())
            .is_some_and(|ts| ts.iter().any(|t| t.key == labels::DISRUPTED_TAINT))
    };
    state
        .nodeclaims
        .values()
        .filter(|c| c.metadata.deletion_timestamp.is_none() && !leaving(c))
        .filter(|c| {
            c.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::NODEPOOL))
                .is_some_and(|p| p == pool)
        })
        .collect()
}

/// The order extra claims go in: not launched, then empty, then by the pods that would have to move
/// (a `do-not-disrupt` pod counts as a thousand), then by name.
fn removal_order(state: &ClusterState, claims: &[&NodeClaim]) -> Vec<(String, String)> {
    let mut ranked: Vec<(u8, usize, String, String)> = claims
        .iter()
        .map(|c| {
            let name = c.metadata.name.clone().unwrap_or_default();
            let status = c.status.as_ref();
            if status.and_then(|s| s.provider_id.as_ref()).is_none() {
                return (0, 0, name, "not launched".to_string());
            }
            let node = status.and_then(|s| s.node_name.clone()).unwrap_or_default();
            let (moving, held) = state
                .pods
                .values()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&node))
                .filter(|p| p.metadata.deletion_timestamp.is_none() && moves(p))
                .fold((0usize, 0usize), |(m, h), p| {
                    (m + 1, h + usize::from(do_not_disrupt(p)))
                });
            if moving == 0 {
                (1, 0, name, "empty".to_string())
            } else {
                let why = format!("{moving} pods to move");
                (2, moving + held * 1000, name, why)
            }
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .map(|(_, _, name, why)| (name, why))
        .collect()
}

/// Whether a pod bound to a node would have to move if the node went: drained, and not a DaemonSet's.
fn moves(pod: &Pod) -> bool {
    matches!(
        crate::node::drain::disposition(pod),
        Disposition::Drain(g) if !matches!(g, DrainGroup::Daemon | DrainGroup::CriticalDaemon)
    )
}

/// A pod annotated `karpenter.sh/do-not-disrupt` (any value): its node goes last.
fn do_not_disrupt(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(labels::DO_NOT_DISRUPT))
}

/// How many claims `limits.nodes` still allows the pool (None: no such limit).
pub(crate) fn nodes_left(pool: &NodePool, live: usize) -> Option<usize> {
    let limit = pool.spec.limits.as_ref()?.get("nodes")?;
    let n = crate::quantity::parse(&limit.0).ok()?.units();
    Some(usize::try_from(n).unwrap_or(0).saturating_sub(live))
}

/// The static capacity controller: what it last said of each pool, so the trace says it once.
#[derive(Debug, Default)]
pub(crate) struct StaticCapacity {
    said: BTreeMap<String, String>,
}

impl StaticCapacity {
    /// Bring every static pool to its replica count. Does nothing with the `StaticCapacity` gate off.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &mut Context,
        state: &mut ClusterState,
        provider: &dyn CloudProvider,
    ) -> Result<(), ControllerError> {
        if !ctx.settings.feature_gates.static_capacity {
            return Ok(());
        }
        let statics: Vec<(String, NodePool, i64)> = state
            .nodepools
            .iter()
            .filter(|(_, p)| p.metadata.deletion_timestamp.is_none())
            .filter_map(|(n, p)| Some((n.clone(), p.clone(), p.spec.replicas?)))
            .collect();
        self.said
            .retain(|n, _| statics.iter().any(|(s, _, _)| s == n));
        let mut options = None;
        for (name, pool, replicas) in statics {
            let desired = usize::try_from(replicas).unwrap_or(0);
            let live = live_claims(state, &name);
            let have = live.len();
            if have > desired {
                let extra = removal_order(state, &live);
                for (claim, why) in extra.into_iter().take(have - desired) {
                    ctx.delete_if_present(Kind::NodeClaim, &ObjectKey::cluster(&claim))
                        .await?;
                    ctx.journal.record(
                        "static",
                        format!(
                            "nodepool/{name} has {have} nodeclaims for {desired} replicas: deleting nodeclaim/{claim} ({why})"
                        ),
                    );
                }
                continue;
            }
            if have == desired {
                self.said.remove(&name);
                continue;
            }
            let wanted = desired - have;
            let allowed = nodes_left(&pool, have).map_or(wanted, |left| wanted.min(left));
            // What the static pools can launch, read once per pass: nothing `static_claim` reads changes
            // as claims are created.
            let pools = options
                .get_or_insert_with(|| super::inputs::pool_options(state, provider, &ctx.settings));
            let plan = match pools.statics.iter().find(|p| p.name == name) {
                Some(opts) => crate::scheduling::planner::static_claim(opts),
                None => Err(pools
                    .skipped
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map_or_else(|| "the pool cannot launch".to_string(), |(_, w)| w.clone())),
            };
            let plan = match plan {
                Ok(plan) if allowed > 0 => plan,
                Ok(_) => {
                    self.say(
                        ctx,
                        &name,
                        format!(
                            "nodepool/{name} has {have} nodeclaims for {desired} replicas: limits.nodes reached"
                        ),
                    );
                    continue;
                }
                Err(why) => {
                    self.say(
                        ctx,
                        &name,
                        format!("nodepool/{name} cannot add nodeclaims for its replicas: {why}"),
                    );
                    continue;
                }
            };
            self.said.remove(&name);
            ctx.journal.record(
                "static",
                format!("nodepool/{name} has {have} nodeclaims for {desired} replicas: creating {allowed}"),
            );
            for _ in 0..allowed {
                super::create_nodeclaim(ctx, state, plan.clone(), BTreeMap::new()).await?;
            }
        }
        Ok(())
    }

    fn say(&mut self, ctx: &Context, pool: &str, message: String) {
        if self.said.get(pool) != Some(&message) {
            ctx.journal.record("static", message.clone());
            self.said.insert(pool.to_string(), message);
        }
    }
}
