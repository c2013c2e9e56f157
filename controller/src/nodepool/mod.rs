//! NodePools: validation the API server cannot do, the status controller, disruption budgets and their
//! cron schedules, and the template hash that makes nodes drifted.

pub mod budgets;
pub mod cron;
pub mod overlay;
pub(crate) mod registration;
pub(crate) mod status;
pub mod validation;

use serde_json::json;

use crate::crds::NodePool;

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
