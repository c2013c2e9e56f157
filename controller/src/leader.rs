//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's rules: a replica acts only while
//! it holds the Lease; it renews every `retry_period`; a Lease whose record has not changed for
//! `lease_duration` (measured on the observer's own clock, so clock skew does not matter) may be taken; a
//! leader that cannot renew within `renew_deadline` stops, and its process starts again as a follower.

use std::time::Duration;

use jiff::Timestamp;
use serde_json::{Value, json};

use crate::context::Context;
use crate::kube::{Kind, KubeError, ObjectKey};

pub use crate::context::LeaderElection;

/// What a replica knows about the Lease between attempts.
#[derive(Debug, Default)]
pub struct Elector {
    /// The holder and renew time last seen, and when (this replica's clock) they were first seen so.
    observed: Option<((String, String), Timestamp)>,
    /// When this replica last renewed successfully.
    pub renewed_at: Option<Timestamp>,
    /// The holder last reported in the journal, so a follower says who leads once, not every attempt.
    told: Option<String>,
}

fn micro_time(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

impl Elector {
    /// One attempt to take or keep the Lease; true while this replica holds it.
    pub async fn try_acquire_or_renew(
        &mut self,
        ctx: &Context,
        le: &LeaderElection,
    ) -> Result<bool, KubeError> {
        let now = ctx.clock.now();
        let key = ObjectKey::namespaced(&le.namespace, &le.name);
        let secs = le.lease_duration.as_secs();
        let current = ctx.kube.get(Kind::Lease, &key).await?;
        let Some(lease) = current else {
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": le.name, "namespace": le.namespace},
                "spec": {
                    "holderIdentity": le.identity,
                    "leaseDurationSeconds": secs,
                    "acquireTime": micro_time(now),
                    "renewTime": micro_time(now),
                    "leaseTransitions": 0,
                },
            });
            return match ctx.kube.create(Kind::Lease, lease).await {
                Ok(_) => Ok(self.won(ctx, le, now)),
                Err(KubeError::AlreadyExists { .. } | KubeError::Conflict { .. }) => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = &lease["spec"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let holder = text(&spec["holderIdentity"]);
        let record = (holder.clone(), text(&spec["renewTime"]));
        let seen_at = match &self.observed {
            Some((r, at)) if *r == record => *at,
            _ => {
                self.observed = Some((record, now));
                now
            }
        };
        let duration = spec["leaseDurationSeconds"]
            .as_u64()
            .map_or(le.lease_duration, Duration::from_secs);
        let expired = crate::clock::since(now, seen_at) >= duration;
        if !holder.is_empty() && holder != le.identity && !expired {
            if self.told.as_deref() != Some(holder.as_str()) {
                ctx.journal.record(
                    "leader",
                    format!(
                        "{} waits: lease/{}/{} is held by {holder}",
                        le.identity, le.namespace, le.name
                    ),
                );
                self.told = Some(holder);
            }
            return Ok(false);
        }
        let transitions = spec["leaseTransitions"].as_i64().unwrap_or(0);
        let taking = holder != le.identity;
        let patch = json!({
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {
                "holderIdentity": le.identity,
                "leaseDurationSeconds": secs,
                "renewTime": micro_time(now),
                "acquireTime": if taking { json!(micro_time(now)) } else { spec["acquireTime"].clone() },
                "leaseTransitions": if taking { transitions + 1 } else { transitions },
            },
        });
        match ctx.kube.patch(Kind::Lease, &key, patch).await {
            Ok(_) => Ok(self.won(ctx, le, now)),
            Err(KubeError::Conflict { .. } | KubeError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn won(&mut self, ctx: &Context, le: &LeaderElection, now: Timestamp) -> bool {
        if self.renewed_at.is_none() {
            ctx.journal.record(
                "leader",
                format!(
                    "{} acquired lease/{}/{}",
                    le.identity, le.namespace, le.name
                ),
            );
        }
        self.renewed_at = Some(now);
        self.told = None;
        true
    }

    /// Wait until this replica holds the Lease.
    pub async fn acquire(&mut self, ctx: &Context, le: &LeaderElection) {
        loop {
            match self.try_acquire_or_renew(ctx, le).await {
                Ok(true) => return,
                Ok(false) => {}
                Err(e) => ctx
                    .journal
                    .record("leader", format!("lease unavailable: {e}; retrying")),
            }
            ctx.clock.sleep(le.retry_period).await;
        }
    }

    /// Renew; false once renewing has failed for longer than `renew_deadline` (or another replica holds
    /// the Lease): the leader must stop acting.
    pub async fn keep(&mut self, ctx: &Context, le: &LeaderElection) -> bool {
        let held = matches!(self.try_acquire_or_renew(ctx, le).await, Ok(true));
        if held {
            return true;
        }
        let since = self
            .renewed_at
            .map_or(Duration::MAX, |t| crate::clock::since(ctx.clock.now(), t));
        since < le.renew_deadline
    }
}

/// Give the Lease up on shutdown, as client-go's `ReleaseOnCancel` does: the holder is emptied and the
/// duration cut to 1 s, so another replica takes over at its next attempt instead of waiting out the
/// lease. Returns whether this replica held it.
pub async fn release(
    kube: &dyn crate::kube::Kube,
    clock: &dyn crate::clock::Clock,
    le: &LeaderElection,
) -> Result<bool, KubeError> {
    let key = ObjectKey::namespaced(&le.namespace, &le.name);
    let Some(lease) = kube.get(Kind::Lease, &key).await? else {
        return Ok(false);
    };
    if lease["spec"]["holderIdentity"].as_str() != Some(le.identity.as_str()) {
        return Ok(false);
    }
    let now = micro_time(clock.now());
    kube.patch(
        Kind::Lease,
        &key,
        json!({
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "renewTime": now, "acquireTime": now},
        }),
    )
    .await?;
    Ok(true)
}
