//! NodeRegistrationHealthy as Karpenter keeps it: the last four registration outcomes of a NodePool's
//! NodeClaims (a node that registered, or a claim deleted for not launching in 5 minutes or not registering
//! in 15); half or more failures make the pool unhealthy. Changing the pool or its node class starts over.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::crds::nodeclaim::conditions;
use crate::crds::{NodeClaim, labels};
use crate::nodeclaim::gc::{LAUNCH_TTL, REGISTRATION_TTL};

/// Outcomes remembered per pool.
const BUFFER: usize = 4;

/// A pool's registration health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Nothing seen since the pool or its class last changed.
    Unknown,
    Healthy,
    /// Half or more of the last outcomes failed.
    Unhealthy,
}

/// Registration outcomes per pool, learned from NodeClaim watch events.
#[derive(Debug, Default)]
pub(crate) struct RegistrationHealth {
    outcomes: BTreeMap<String, VecDeque<bool>>,
    /// Claims whose outcome is counted (each counts once).
    counted: BTreeSet<String>,
    /// The last failure per pool: (reason, message) for the condition.
    last_failure: BTreeMap<String, (&'static str, String)>,
    /// (pool generation, node class generation) the outcomes were gathered under.
    observed: BTreeMap<String, (i64, i64)>,
}

fn age_at_deletion(claim: &NodeClaim) -> Option<std::time::Duration> {
    let created = claim.metadata.creation_timestamp.as_ref()?.0;
    let deleted = claim.metadata.deletion_timestamp.as_ref()?.0;
    Some(crate::clock::since(deleted, created))
}

impl RegistrationHealth {
    fn push(&mut self, pool: &str, ok: bool) {
        let q = self.outcomes.entry(pool.to_string()).or_default();
        q.push_back(ok);
        while q.len() > BUFFER {
            q.pop_front();
        }
    }

    /// Learn from a NodeClaim as the watch shows it (`deleted`: its final state): a first Registered is a
    /// success; a claim deleted unregistered past Karpenter's launch or registration timeout a failure.
    pub(crate) fn observe(&mut self, claim: &NodeClaim, deleted: bool) {
        let name = claim.metadata.name.clone().unwrap_or_default();
        let Some(pool) = claim
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::NODEPOOL))
            .cloned()
        else {
            return;
        };
        if self.counted.contains(&name) {
            if deleted {
                self.counted.remove(&name);
            }
            return;
        }
        if claim.condition_true(conditions::REGISTERED) {
            if !deleted {
                self.counted.insert(name);
            }
            self.push(&pool, true);
            return;
        }
        let launched = claim.condition_true(conditions::LAUNCHED);
        let timeout = if launched {
            REGISTRATION_TTL
        } else {
            LAUNCH_TTL
        };
        if age_at_deletion(claim).is_some_and(|age| age >= timeout) {
            if !deleted {
                self.counted.insert(name);
            }
            let failure = if launched {
                ("RegistrationFailed", "Failed to register node".to_string())
            } else {
                (
                    "LaunchFailed",
                    format!("NodeClaim not launched after {}s", LAUNCH_TTL.as_secs()),
                )
            };
            self.last_failure.insert(pool.clone(), failure);
            self.push(&pool, false);
        }
    }

    /// Start over when the pool's or its class's generation moved; on first sight (a restart) take the
    /// condition's last word, as Karpenter does.
    pub(crate) fn generations(
        &mut self,
        pool: &str,
        generations: (i64, i64),
        written: Option<bool>,
    ) {
        match self.observed.insert(pool.to_string(), generations) {
            Some(before) if before == generations => {}
            Some(_) => {
                self.outcomes.remove(pool);
            }
            None => {
                let q = self.outcomes.entry(pool.to_string()).or_default();
                if q.is_empty() {
                    match written {
                        Some(true) => q.push_back(true),
                        Some(false) => q.extend([false; BUFFER / 2]),
                        None => {}
                    }
                }
            }
        }
    }

    pub(crate) fn health(&self, pool: &str) -> Health {
        let Some(q) = self.outcomes.get(pool).filter(|q| !q.is_empty()) else {
            return Health::Unknown;
        };
        let failures = q.iter().filter(|ok| !**ok).count();
        if failures * 2 >= BUFFER {
            Health::Unhealthy
        } else {
            Health::Healthy
        }
    }

    /// The last failure's reason and message, for a False condition.
    pub(crate) fn failure(&self, pool: &str) -> (&'static str, String) {
        self.last_failure
            .get(pool)
            .cloned()
            .unwrap_or(("RegistrationFailed", "Failed to register node".to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim of pool `p`, deleted `age_min` minutes after creation (None if the fixture does not parse,
    /// which then observes nothing and fails the assertions on the pool).
    fn claim(name: &str, launched: bool, registered: bool, age_min: i64) -> Option<NodeClaim> {
        let mut conds = Vec::new();
        if launched {
            conds.push(
                serde_json::json!({"type": "Launched", "status": "True", "reason": "Launched"}),
            );
        }
        if registered {
            conds.push(
                serde_json::json!({"type": "Registered", "status": "True", "reason": "Registered"}),
            );
        }
        let deleted = format!("2026-01-01T00:{age_min:02}:00Z");
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {"karpenter.sh/nodepool": "p"},
                "creationTimestamp": "2026-01-01T00:00:00Z", "deletionTimestamp": deleted},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "c"}, "requirements": []},
            "status": {"conditions": conds},
        }))
        .ok()
    }

    fn see(h: &mut RegistrationHealth, claim: Option<NodeClaim>, deleted: bool) {
        if let Some(c) = claim {
            h.observe(&c, deleted);
        }
    }

    #[test]
    fn half_the_last_four_failing_makes_a_pool_unhealthy() {
        let mut h = RegistrationHealth::default();
        h.generations("p", (1, 1), None);
        assert_eq!(h.health("p"), Health::Unknown);
        see(&mut h, claim("a", true, true, 1), false);
        see(&mut h, claim("a", true, true, 1), false);
        see(&mut h, claim("a", true, true, 1), true);
        assert_eq!(
            h.outcomes.get("p").map(VecDeque::len),
            Some(1),
            "a claim counts once"
        );
        assert_eq!(h.health("p"), Health::Healthy);
        // Deleted young (consolidated, ICE): not a registration failure.
        see(&mut h, claim("b", true, false, 3), true);
        assert_eq!(h.health("p"), Health::Healthy);
        see(&mut h, claim("c", true, false, 16), true);
        assert_eq!(
            h.health("p"),
            Health::Healthy,
            "1 of 2 failed, under half of 4"
        );
        see(&mut h, claim("d", false, false, 6), true);
        assert_eq!(h.health("p"), Health::Unhealthy);
        assert_eq!(h.failure("p").0, "LaunchFailed");
        // Successes push the failures out of the window.
        for n in ["e", "f", "g"] {
            see(&mut h, claim(n, true, true, 1), false);
        }
        assert_eq!(h.health("p"), Health::Healthy);
        // A changed pool starts over.
        h.generations("p", (2, 1), Some(true));
        assert_eq!(h.health("p"), Health::Unknown);
    }

    #[test]
    fn a_restart_takes_the_written_condition_as_its_start() {
        let mut h = RegistrationHealth::default();
        h.generations("p", (1, 1), Some(false));
        assert_eq!(h.health("p"), Health::Unhealthy);
        let mut h = RegistrationHealth::default();
        h.generations("p", (1, 1), Some(true));
        assert_eq!(h.health("p"), Health::Healthy);
    }
}
