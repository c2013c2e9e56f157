//! Whether a consolidation is worth its disruption (pure): Karpenter's `Balanced` score — the share of the
//! pool's cost a move saves over the share of the pool's disruption cost it causes — which is also
//! Dovetail's anti-churn rule for every other pool, with its own threshold.
//!
//! A node's disruption cost is 1 plus, for each pod that would move, its eviction cost: 1, raised or
//! lowered by `controller.kubernetes.io/pod-deletion-cost` (÷ 2^27) and the pod's priority (÷ 2^25),
//! clamped to [-10, 10], counted at least 0 (Karpenter v1.14's figures).

use k8s_openapi::api::core::v1::Pod;

/// The annotation the ReplicaSet controller reads to choose which pods to delete first.
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// What evicting this pod costs.
pub fn eviction_cost(pod: &Pod) -> f64 {
    let mut cost = 1.0;
    if let Some(v) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POD_DELETION_COST))
        .and_then(|v| v.trim().parse::<f64>().ok())
    {
        cost += v / 2f64.powi(27);
    }
    if let Some(p) = pod.spec.as_ref().and_then(|s| s.priority) {
        cost += f64::from(p) / 2f64.powi(25);
    }
    cost.clamp(-10.0, 10.0)
}

/// A node's disruption cost given the pods that would move off it.
pub fn node_cost<'a>(moving: impl IntoIterator<Item = &'a Pod>) -> f64 {
    1.0 + moving
        .into_iter()
        .map(|p| eviction_cost(p).max(0.0))
        .sum::<f64>()
}

/// A move's score against its pool: (savings / pool cost) / (disruption / pool disruption).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub savings_share: f64,
    pub disruption_share: f64,
}

impl Score {
    pub fn new(
        savings: f64,
        disruption: f64,
        pool_cost: f64,
        pool_disruption: f64,
    ) -> Option<Score> {
        (pool_cost > 0.0 && pool_disruption > 0.0).then(|| Score {
            savings_share: savings / pool_cost,
            disruption_share: disruption / pool_disruption,
        })
    }

    /// Savings share over disruption share: 0 when nothing is saved, infinite when nothing is disrupted.
    pub fn value(&self) -> f64 {
        if self.savings_share <= 0.0 {
            0.0
        } else if self.disruption_share == 0.0 {
            f64::INFINITY
        } else {
            self.savings_share / self.disruption_share
        }
    }

    /// `saves 12.0% of nodepool/x's cost for 8.3% of its disruption (score 1.45 ≥ 0.50)`.
    pub fn describe(&self, pool: &str, threshold: f64) -> String {
        let op = if self.value() >= threshold {
            "≥"
        } else {
            "<"
        };
        format!(
            "saves {:.1}% of nodepool/{pool}'s cost for {:.1}% of its disruption (score {:.2} {op} {threshold:.2})",
            100.0 * self.savings_share,
            100.0 * self.disruption_share,
            self.value()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(deletion_cost: Option<&str>, priority: Option<i32>) -> Pod {
        let mut p = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        if let Some(c) = deletion_cost {
            p["metadata"]["annotations"] = json!({POD_DELETION_COST: c});
        }
        if let Some(pr) = priority {
            p["spec"]["priority"] = json!(pr);
        }
        serde_json::from_value(p).unwrap_or_default()
    }

    #[test]
    fn eviction_cost_follows_deletion_cost_and_priority_within_bounds() {
        assert_eq!(eviction_cost(&pod(None, None)), 1.0);
        assert_eq!(eviction_cost(&pod(Some("134217728"), None)), 2.0);
        assert_eq!(eviction_cost(&pod(None, Some(1_000_000_000))), 10.0);
        assert_eq!(eviction_cost(&pod(Some("-2147483647"), None)), -10.0);
        assert_eq!(eviction_cost(&pod(Some("not a number"), None)), 1.0);
        // A negative cost never makes a node cheaper to disrupt than an empty one.
        assert_eq!(
            node_cost([&pod(Some("-2147483647"), None), &pod(None, None)]),
            2.0
        );
    }

    #[test]
    fn a_move_scores_its_savings_share_over_its_disruption_share() {
        // Karpenter's worked example: a node that is 10% of the cost and 25% of the disruption scores 0.4,
        // under the Balanced threshold of 1/2.
        let s = Score::new(1.0, 2.5, 10.0, 10.0);
        assert!(s.is_some_and(|s| (s.value() - 0.4).abs() < 1e-9 && s.value() < 0.5));
        assert_eq!(
            s.map(|s| s.describe("web", 0.5)).as_deref(),
            Some(
                "saves 10.0% of nodepool/web's cost for 25.0% of its disruption (score 0.40 < 0.50)"
            )
        );
        assert_eq!(
            Score::new(0.0, 1.0, 10.0, 10.0).map(|s| s.value()),
            Some(0.0)
        );
        assert_eq!(
            Score::new(1.0, 0.0, 10.0, 10.0).map(|s| s.value()),
            Some(f64::INFINITY)
        );
        assert!(Score::new(1.0, 1.0, 0.0, 10.0).is_none());
    }
}
