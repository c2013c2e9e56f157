//! The main loop: list + watch into the cluster state, then a `biased` select over the watches and one
//! timer that dispatches to each controller in a fixed order. This is also where the provider-neutral
//! controllers are wired to the AWS provider; the loop itself decides nothing.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use crate::aws::cloud::Cloud;
use crate::aws::{self, AwsProvider};
use crate::context::Context;
use crate::disruption::{DISRUPTION_INTERVAL, Disruption};
use crate::error::ControllerError;
use crate::kube::{Kind, WatchEvent};
use crate::node::{NodeHealth, Terminator};
use crate::nodeclaim::{GarbageCollector, Lifecycle, gc};
use crate::nodepool::status::NodePoolStatus;
use crate::provisioning::static_capacity::StaticCapacity;
use crate::provisioning::{Batcher, Provisioner};
use crate::state::{Change, ClusterState, is_provisionable};

/// How long after a failed batch the next one closes.
const BATCH_RETRY: Duration = Duration::from_secs(5);

/// The controllers, each owning its state, and the timers that drive them.
pub(crate) struct Controller {
    ctx: Context,
    state: ClusterState,
    provider: AwsProvider,
    provisioner: Provisioner,
    lifecycle: Lifecycle,
    gc: GarbageCollector,
    terminator: Terminator,
    health: NodeHealth,
    disruption: Disruption,
    nodepools: NodePoolStatus,
    statics: StaticCapacity,
    buffers: crate::provisioning::buffers::Buffers,
    conditions: crate::condition_metrics::ConditionMetrics,
    elector: crate::leader::Elector,
    lost_lease: bool,
    next_disruption: Duration,
    next_interruption: Duration,
    next_nodeclass: Duration,
    next_lease: Duration,
    /// When the cluster-state gauges are next published (they ride on other timers, never wake alone).
    next_metrics: Duration,
    next_lifecycle: Duration,
    next_gc: Duration,
}

impl Controller {
    pub(crate) fn new(ctx: Context, cloud: Arc<dyn Cloud>) -> Self {
        let batcher = Batcher::new(ctx.settings.batch_idle, ctx.settings.batch_max);
        let started_at = ctx.clock.now();
        let started = Duration::try_from(started_at.as_duration()).unwrap_or(Duration::ZERO);
        Controller {
            ctx,
            state: ClusterState::default(),
            provider: AwsProvider::new(cloud, started_at),
            provisioner: Provisioner::new(batcher),
            lifecycle: Lifecycle,
            gc: GarbageCollector,
            terminator: Terminator::default(),
            health: NodeHealth::default(),
            disruption: Disruption::default(),
            nodepools: NodePoolStatus::default(),
            statics: StaticCapacity::default(),
            buffers: Default::default(),
            conditions: Default::default(),
            elector: crate::leader::Elector::default(),
            lost_lease: false,
            // The first pass waits for the catalog and the node classes to be read.
            next_disruption: started + DISRUPTION_INTERVAL * 3,
            next_interruption: Duration::ZERO,
            next_nodeclass: Duration::ZERO,
            next_lease: started,
            next_metrics: Duration::ZERO,
            next_lifecycle: Duration::ZERO,
            // The first pass waits a period: a restarted controller needs its cache filled first.
            next_gc: Duration::ZERO,
        }
    }

    fn now(&self) -> Duration {
        self.ctx.now()
    }

    async fn open_watches(
        &mut self,
    ) -> Result<Vec<(Kind, BoxStream<'static, WatchEvent>)>, ControllerError> {
        let mut streams = Vec::new();
        for kind in ClusterState::WATCHED {
            // NodeOverlays only with their gate on: a cluster without the gate may well lack the CRD.
            // CapacityBuffers likewise: their CRD is the Cluster Autoscaler's.
            let gated = match kind {
                Kind::NodeOverlay => !self.ctx.settings.feature_gates.node_overlay,
                Kind::CapacityBuffer | Kind::PodTemplate => {
                    !self.ctx.settings.feature_gates.capacity_buffer
                }
                _ => false,
            };
            if gated {
                self.state.reset(kind, Vec::new())?;
                streams.push((kind, futures::stream::pending().boxed()));
                continue;
            }
            let list = self.ctx.kube.list(kind).await?;
            self.state.reset(kind, list.items)?;
            streams.push((kind, self.ctx.kube.watch(kind, &list.resource_version)));
        }
        // Pods already pending when the controller starts (or lists again) arrive in the list, not as
        // watch events: they open a batch like any new pod would, as Karpenter's reconcile-all does.
        if self.state.pods.values().any(is_provisionable) {
            let now = self.now();
            self.provisioner.batcher.trigger(now);
        }
        Ok(streams)
    }

    fn observe(&mut self, kind: Kind, event: WatchEvent) -> Result<bool, ControllerError> {
        if event == WatchEvent::Expired {
            return Ok(false);
        }
        let before = match (&event, kind) {
            (
                WatchEvent::Added(v) | WatchEvent::Modified(v) | WatchEvent::Deleted(v),
                Kind::Pod,
            ) => self
                .state
                .pods
                .get(&crate::kube::ObjectKey::of(v))
                .and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone())),
            _ => None,
        };
        if kind == Kind::NodeClaim
            && let WatchEvent::Added(v) | WatchEvent::Modified(v) | WatchEvent::Deleted(v) = &event
            && let Ok(claim) = serde_json::from_value::<crate::crds::NodeClaim>(v.clone())
        {
            self.nodepools
                .observe_claim(&claim, matches!(event, WatchEvent::Deleted(_)));
        }
        let Some((change, key)) = self.state.apply_event(kind, event)? else {
            return Ok(true);
        };
        let now = self.now();
        if kind == Kind::Pod {
            // A pod arriving on or leaving a node restarts that node's consolidateAfter clock.
            let after = self
                .state
                .pods
                .get(&key)
                .and_then(|p| p.spec.as_ref().and_then(|s| s.node_name.clone()));
            if before != after || change == Change::Delete {
                // A pod bound where the last plan kept a buffer's headroom uses it: plan the buffer again.
                if before.is_none()
                    && let Some(node) = &after
                    && self.buffers.hosts(&self.state, node)
                {
                    self.provisioner.batcher.trigger(now);
                }
                for node in [before, after].into_iter().flatten() {
                    self.state.pod_changes.insert(node, now);
                }
            }
        }
        let provisionable_changed = match (kind, change) {
            (Kind::Pod, Change::Upsert) => self.state.pods.get(&key).is_some_and(is_provisionable),
            // Capacity went away: pods (and headroom) counted against it must be planned again.
            (Kind::NodeClaim | Kind::Node, Change::Delete) => {
                !self.state.headroom.is_empty() || self.state.pods.values().any(is_provisionable)
            }
            // A pod waiting for its volume claim or storage class may now be planned.
            (Kind::PersistentVolumeClaim | Kind::StorageClass, Change::Upsert) => {
                self.state.pods.values().any(is_provisionable)
            }
            // A buffer changed: resolve it now (its chunks are planned once resolved).
            (Kind::CapacityBuffer, _) => {
                self.buffers.observe(&self.state, &key);
                false
            }
            // A buffer's chunks take a PodTemplate's shape: resolve the buffers naming it now.
            (Kind::PodTemplate, _) => {
                self.buffers.template_changed(&self.state, &key);
                false
            }
            // A node starting to leave: plan for its pods before they are evicted.
            (Kind::Node, Change::Upsert) => self
                .state
                .nodes
                .get(&key.name)
                .is_some_and(|n| n.metadata.deletion_timestamp.is_some()),
            // A changed node class is resolved again at once (its spec fingerprint invalidates the cache);
            // a changed overlay has its status written at once.
            (Kind::EC2NodeClass | Kind::NodeOverlay, Change::Upsert) => {
                self.next_nodeclass = now;
                false
            }
            (Kind::NodeClaim, Change::Upsert) => self
                .state
                .nodeclaims
                .get(&key.name)
                .is_some_and(|c| c.metadata.deletion_timestamp.is_some()),
            _ => false,
        };
        if provisionable_changed {
            self.provisioner.batcher.trigger(now);
        }
        Ok(true)
    }

    fn next_wake(&self) -> Duration {
        let mut wake = self
            .next_lifecycle
            .min(self.next_gc)
            .min(self.next_nodeclass)
            .min(self.next_disruption);
        if self.ctx.settings.feature_gates.capacity_buffer {
            wake = wake.min(self.buffers.next_resolve());
        }
        if self.ctx.settings.interruption_queue.is_some() {
            wake = wake.min(self.next_interruption);
        }
        if let Some(d) = self.provisioner.batcher.deadline() {
            wake = wake.min(d);
        }
        if self.ctx.settings.leader_election.is_some() {
            wake = wake.min(self.next_lease);
        }
        wake
    }

    /// Timers: catalog refresh, batch close, NodeClaim reconcile. Failures are logged and retried next time.
    async fn on_timer(&mut self) {
        let now = self.now();
        if let Some(le) = self.ctx.settings.leader_election.clone()
            && now >= self.next_lease
        {
            // Renew before acting: a leader that cannot must not act on what it no longer owns.
            let held = self.elector.keep(&self.ctx, &le).await;
            self.next_lease = now + le.retry_period;
            self.ctx.metrics.set(
                crate::metrics::LEADER,
                &[("name", &le.name)],
                if held { 1.0 } else { 0.0 },
            );
            if !held {
                self.lost_lease = true;
                return;
            }
        }
        if now >= self.next_metrics {
            crate::metrics::publish_state(&self.ctx.metrics, &self.state);
            self.conditions
                .publish(&self.ctx.metrics, &self.state, self.ctx.clock.now());
            self.next_metrics = now + crate::metrics::STATE_INTERVAL;
        }
        self.provider.refresh_catalog_when_due(&self.ctx, now).await;
        if self.ctx.settings.interruption_queue.is_some() && now >= self.next_interruption {
            if let Err(e) = self
                .provider
                .poll_interruptions(&self.ctx, &mut self.state)
                .await
            {
                self.ctx
                    .journal
                    .record("interruption", format!("queue poll failed: {e}; retrying"));
            }
            self.next_interruption = self.now() + aws::INTERRUPTION_POLL_INTERVAL;
        }
        if now >= self.next_disruption {
            if let Err(e) = self
                .disruption
                .reconcile(&mut self.ctx, &mut self.state, &self.provider)
                .await
            {
                self.ctx
                    .journal
                    .record("disruption", format!("pass failed: {e}; retrying"));
            }
            self.next_disruption = self.now() + DISRUPTION_INTERVAL;
        }
        if now >= self.next_nodeclass {
            self.provider
                .reconcile_nodeclasses(&self.ctx, &mut self.state)
                .await;
            self.nodepools
                .reconcile(&self.ctx, &mut self.state, &self.provider)
                .await;
            crate::nodepool::overlay::write_statuses(&self.ctx, &mut self.state, &self.provider)
                .await;
            self.next_nodeclass = self.now() + aws::NODECLASS_RESOLVE_TTL;
        }
        if self.ctx.settings.feature_gates.capacity_buffer && now >= self.buffers.next_resolve() {
            let changed = self.buffers.reconcile(&self.ctx, &mut self.state).await;
            if changed || self.buffers.unsettled() {
                self.provisioner.batcher.trigger(now);
            }
        }
        if let Some(window) = self.provisioner.batcher.close_if_due(now)
            && let Err(e) = self
                .provisioner
                .provision(
                    &mut self.ctx,
                    &mut self.state,
                    &self.provider,
                    window,
                    &mut self.buffers,
                )
                .await
        {
            // The pods stay pending; try again in 5 s rather than hammering a failing API every second.
            self.ctx
                .journal
                .record("provision", format!("batch failed: {e}; retrying in 5s"));
            self.provisioner
                .batcher
                .trigger(now + BATCH_RETRY.saturating_sub(self.ctx.settings.batch_idle));
        }
        if now >= self.next_lifecycle {
            if let Err(e) = self
                .statics
                .reconcile(&mut self.ctx, &mut self.state, &self.provider)
                .await
            {
                self.ctx
                    .journal
                    .record("static", format!("pass failed: {e}; retrying"));
            }
            if let Err(e) = self
                .lifecycle
                .reconcile(&mut self.ctx, &mut self.state, &mut self.provider)
                .await
            {
                self.ctx
                    .journal
                    .record("lifecycle", format!("reconcile failed: {e}"));
            }
            if let Err(e) = self
                .terminator
                .reconcile(&self.ctx, &mut self.state, &mut self.provider)
                .await
            {
                self.ctx
                    .journal
                    .record("termination", format!("pass failed: {e}"));
            }
            // Node repair deletes claims the lifecycle finalizes on its next pass.
            if let Err(e) = self
                .health
                .reconcile(&self.ctx, &self.state, &self.provider)
                .await
            {
                self.ctx
                    .journal
                    .record("repair", format!("pass failed: {e}; retrying"));
            }
            self.nodepools.sync(&self.ctx, &mut self.state).await;
            self.next_lifecycle = self.now() + self.ctx.settings.lifecycle_interval;
        }
        if now >= self.next_gc {
            if self.next_gc > Duration::ZERO
                && let Err(e) = self
                    .gc
                    .reconcile(&self.ctx, &mut self.state, &mut self.provider)
                    .await
            {
                self.ctx
                    .journal
                    .record("gc", format!("pass failed: {e}; retrying next period"));
            }
            self.next_gc = self.now() + gc::GC_INTERVAL;
        }
    }
}

/// Run the controller until a watch ends or the API fails in a way it cannot retry.
///
/// The same entry point runs in a cluster (real clock, kube-rs, aws-sdk) and in the simulator. `cloud`
/// (the EC2 and SQS APIs) goes to the AWS provider alone; the other controllers get `ctx`.
pub async fn run(ctx: Context, cloud: Arc<dyn Cloud>) -> Result<(), ControllerError> {
    let mut elector = crate::leader::Elector::default();
    if let Some(le) = &ctx.settings.leader_election {
        elector.acquire(&ctx, le).await;
        ctx.metrics
            .set(crate::metrics::LEADER, &[("name", &le.name)], 1.0);
    }
    let mut c = Controller::new(ctx, cloud);
    c.elector = elector;
    while let Err(e) = c.provider.refresh_catalog(&c.ctx).await {
        c.ctx.journal.record(
            "catalog",
            format!("initial load failed: {e}; retrying in 5s"),
        );
        c.ctx.clock.sleep(Duration::from_secs(5)).await;
    }
    loop {
        let mut streams = match c.open_watches().await {
            Ok(s) => {
                c.ctx.metrics.set(crate::metrics::CLUSTER_SYNCED, &[], 1.0);
                s
            }
            Err(e) => {
                c.ctx
                    .journal
                    .record("watch", format!("list failed: {e}; retrying in 5s"));
                c.ctx.clock.sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        let followed = c.follow(&mut streams).await;
        c.ctx.metrics.set(crate::metrics::CLUSTER_SYNCED, &[], 0.0);
        let why = followed?;
        // A closed or expired watch loses nothing: list again, then watch from the new version.
        c.ctx
            .journal
            .record("watch", format!("{why}; listing again"));
    }
}

impl Controller {
    /// Handle watch events and timers until a watch ends or expires; returns why.
    async fn follow(
        &mut self,
        streams: &mut [(Kind, BoxStream<'static, WatchEvent>)],
    ) -> Result<String, ControllerError> {
        // Fixed polling order (biased select below) keeps event handling deterministic.
        let [
            pods,
            nodes,
            claims,
            pools,
            classes,
            daemonsets,
            pvcs,
            pvs,
            storage_classes,
            csinodes,
            overlays,
            buffers,
            templates,
        ] = streams
        else {
            unreachable!("ClusterState::WATCHED has thirteen kinds")
        };
        loop {
            let sleep_for = self.next_wake().saturating_sub(self.now());
            let clock = self.ctx.clock.clone();
            let (kind, event) = tokio::select! {
                biased;
                e = pods.1.next() => (pods.0, e),
                e = nodes.1.next() => (nodes.0, e),
                e = claims.1.next() => (claims.0, e),
                e = pools.1.next() => (pools.0, e),
                e = classes.1.next() => (classes.0, e),
                e = daemonsets.1.next() => (daemonsets.0, e),
                e = pvcs.1.next() => (pvcs.0, e),
                e = pvs.1.next() => (pvs.0, e),
                e = storage_classes.1.next() => (storage_classes.0, e),
                e = csinodes.1.next() => (csinodes.0, e),
                e = overlays.1.next() => (overlays.0, e),
                e = buffers.1.next() => (buffers.0, e),
                e = templates.1.next() => (templates.0, e),
                _ = clock.sleep(sleep_for) => {
                    self.on_timer().await;
                    if self.lost_lease {
                        return Err(ControllerError::LostLeadership);
                    }
                    continue;
                }
            };
            let Some(event) = event else {
                return Ok(format!("watch of {kind} closed"));
            };
            if !self.observe(kind, event)? {
                return Ok(format!("watch of {kind} expired"));
            }
            // A busy watch must not starve the timers.
            if self.now() >= self.next_wake() {
                self.on_timer().await;
                if self.lost_lease {
                    return Err(ControllerError::LostLeadership);
                }
            }
        }
    }
}
