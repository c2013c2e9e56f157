//! The controller's main loop: list + watch into the cache, then batch, provision and follow NodeClaims.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use rand_chacha::ChaCha8Rng;

use crate::clock::Clock;
use crate::cloud::Cloud;
use crate::error::ControllerError;
use crate::instancetype::{self, InstanceType};
use crate::journal::Journal;
use crate::kube::{Kind, Kube, WatchEvent};
use crate::launch::{KnownTemplates, UnavailableOfferings};
use crate::provisioning::Batcher;
use crate::state::{Change, ClusterState, is_provisionable};

/// How long after a failed batch the next one closes.
const BATCH_RETRY: Duration = Duration::from_secs(5);

/// Tunables, with Karpenter's defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_name: String,
    /// Close a provisioning batch after this long without a new pending pod (Karpenter: 1 s).
    pub batch_idle: Duration,
    /// ... or this long after it opened (Karpenter: 10 s).
    pub batch_max: Duration,
    /// How often NodeClaims are checked for progress (launch, registration, initialization).
    pub lifecycle_interval: Duration,
    /// How often instance types, offerings and prices are read again.
    pub catalog_refresh: Duration,
    /// The SQS queue (URL) EventBridge sends interruption events to (Karpenter: INTERRUPTION_QUEUE);
    /// None turns interruption handling off.
    pub interruption_queue: Option<String>,
    /// Dovetail's anti-churn rule for consolidation that moves pods: the share of the pool's cost saved
    /// divided by the share of its pods moved must reach this (None: off, Karpenter's behaviour).
    pub consolidation_balance: Option<f64>,
    /// Replace a spot node with a cheaper spot node (Karpenter's `SpotToSpotConsolidation` feature gate,
    /// off there by default, on here): a single node only when at least 15 cheaper types can take its
    /// pods, and the replacement may launch only the 15 cheapest, so it does not race to the most
    /// interrupted type.
    pub spot_to_spot: bool,
    /// Act only while holding this Lease (None: a single replica acts alone).
    pub leader_election: Option<crate::leader::LeaderElection>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            cluster_name: "dovetail".to_string(),
            batch_idle: Duration::from_secs(1),
            batch_max: Duration::from_secs(10),
            lifecycle_interval: Duration::from_secs(1),
            catalog_refresh: Duration::from_secs(300),
            interruption_queue: None,
            consolidation_balance: Some(0.25),
            spot_to_spot: true,
            leader_election: None,
        }
    }
}

/// Everything the controller is handed: the three seams, the journal, the seeded RNG and its settings.
pub struct Context {
    pub clock: Arc<dyn Clock>,
    pub kube: Arc<dyn Kube>,
    pub cloud: Arc<dyn Cloud>,
    pub journal: Arc<dyn Journal>,
    /// Counters and gauges about the controller's work (served on /metrics in a cluster).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub rng: ChaCha8Rng,
    pub settings: Settings,
}

pub(crate) struct Controller {
    pub(crate) ctx: Context,
    pub(crate) state: ClusterState,
    pub(crate) instance_types: Vec<InstanceType>,
    pub(crate) batcher: Batcher,
    pub(crate) unavailable: UnavailableOfferings,
    pub(crate) known_templates: KnownTemplates,
    /// Pods already given an explanation Event, with the reason it gave.
    pub(crate) explained: std::collections::BTreeMap<crate::kube::ObjectKey, String>,
    pub(crate) launch_health: crate::gc::LaunchHealth,
    pub(crate) eviction_retries: crate::termination::EvictionRetries,
    /// Claims deleted because their instance is gone: their nodes have nothing left to drain.
    pub(crate) instance_gone: std::collections::BTreeSet<String>,
    /// Claims older than this process that it has already looked for a predecessor's instance for.
    pub(crate) adoption_checked: std::collections::BTreeSet<String>,
    pub(crate) class_cache: crate::nodeclass::ClassCache,
    pub(crate) queue_stats: crate::interruption::QueueStats,
    pub(crate) disruption: Option<crate::disruption::Command>,
    next_disruption: Duration,
    /// When a pod last arrived on or left each node (consolidateAfter counts from then).
    pub(crate) pod_changes: std::collections::BTreeMap<String, Duration>,
    /// Consolidations already reported as not worth their churn.
    pub(crate) churn_noted: std::collections::BTreeSet<String>,
    next_interruption: Duration,
    next_nodeclass: Duration,
    /// When this process started: claims created before it may have been launched by a predecessor.
    pub(crate) started_at: jiff::Timestamp,
    pub(crate) catalog_loaded_at: Option<Duration>,
    pub(crate) elector: crate::leader::Elector,
    next_lease: Duration,
    lost_lease: bool,
    /// The inputs of the last disruption decision that found nothing to do (a fingerprint).
    pub(crate) nothing_to_disrupt: Option<u64>,
    /// When the cluster-state gauges are next published (they ride on other timers, never wake alone).
    next_metrics: Duration,
    next_lifecycle: Duration,
    next_gc: Duration,
}

impl Controller {
    pub(crate) fn new(ctx: Context) -> Self {
        let batcher = Batcher::new(ctx.settings.batch_idle, ctx.settings.batch_max);
        let started_at = ctx.clock.now();
        let started = Duration::try_from(started_at.as_duration()).unwrap_or(Duration::ZERO);
        Controller {
            ctx,
            state: ClusterState::default(),
            instance_types: Vec::new(),
            batcher,
            unavailable: UnavailableOfferings::default(),
            known_templates: KnownTemplates::default(),
            explained: Default::default(),
            launch_health: Default::default(),
            eviction_retries: Default::default(),
            instance_gone: Default::default(),
            adoption_checked: Default::default(),
            started_at,
            class_cache: Default::default(),
            queue_stats: Default::default(),
            disruption: None,
            // The first pass waits for the catalog and the node classes to be read.
            next_disruption: started + crate::disruption::DISRUPTION_INTERVAL * 3,
            pod_changes: Default::default(),
            churn_noted: Default::default(),
            next_interruption: Duration::ZERO,
            next_nodeclass: Duration::ZERO,
            catalog_loaded_at: None,
            nothing_to_disrupt: None,
            next_metrics: Duration::ZERO,
            elector: crate::leader::Elector::default(),
            next_lease: started,
            lost_lease: false,
            next_lifecycle: Duration::ZERO,
            // The first pass waits a period: a restarted controller needs its cache filled first.
            next_gc: Duration::ZERO,
        }
    }

    /// Delete an object; one already gone counts as deleted.
    pub(crate) async fn delete_if_present(
        &self,
        kind: Kind,
        key: &crate::kube::ObjectKey,
    ) -> Result<(), ControllerError> {
        match self.ctx.kube.delete(kind, key).await {
            Ok(()) | Err(crate::kube::KubeError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Monotonic time for timers: the clock's time since the Unix epoch.
    pub(crate) fn now(&self) -> Duration {
        Duration::try_from(self.ctx.clock.now().as_duration()).unwrap_or(Duration::ZERO)
    }

    async fn refresh_catalog(&mut self) -> Result<(), ControllerError> {
        let cloud = &self.ctx.cloud;
        let infos = cloud.describe_instance_types().await?;
        let offerings = cloud.describe_instance_type_offerings().await?;
        let on_demand = cloud.on_demand_prices().await?;
        let spot = cloud.describe_spot_price_history().await?;
        self.instance_types = instancetype::build(&infos, &offerings, &on_demand, &spot);
        self.catalog_loaded_at = Some(self.now());
        self.refresh_offering_availability(self.now());
        Ok(())
    }

    /// Mark offerings that recently failed as unavailable (and the rest as available again).
    pub(crate) fn refresh_offering_availability(&mut self, now: Duration) {
        self.unavailable.expire(now);
        for it in &mut self.instance_types {
            for o in &mut it.offerings {
                o.available =
                    !self
                        .unavailable
                        .is_unavailable(o.capacity_type, &it.name, &o.zone, now);
            }
        }
    }

    async fn open_watches(
        &mut self,
    ) -> Result<Vec<(Kind, BoxStream<'static, WatchEvent>)>, ControllerError> {
        let mut streams = Vec::new();
        for kind in ClusterState::WATCHED {
            let list = self.ctx.kube.list(kind).await?;
            self.state.reset(kind, list.items)?;
            streams.push((kind, self.ctx.kube.watch(kind, &list.resource_version)));
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
                for node in [before, after].into_iter().flatten() {
                    self.pod_changes.insert(node, now);
                }
            }
        }
        let provisionable_changed = match (kind, change) {
            (Kind::Pod, Change::Upsert) => self.state.pods.get(&key).is_some_and(is_provisionable),
            // Capacity went away: pods counted against it must be planned again.
            (Kind::NodeClaim | Kind::Node, Change::Delete) => {
                self.state.pods.values().any(is_provisionable)
            }
            // A node starting to leave: plan for its pods before they are evicted.
            (Kind::Node, Change::Upsert) => self
                .state
                .nodes
                .get(&key.name)
                .is_some_and(|n| n.metadata.deletion_timestamp.is_some()),
            // A changed node class is resolved again at once (its spec fingerprint invalidates the cache).
            (Kind::EC2NodeClass, Change::Upsert) => {
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
            self.batcher.trigger(now);
        }
        Ok(true)
    }

    fn next_wake(&self) -> Duration {
        let mut wake = self
            .next_lifecycle
            .min(self.next_gc)
            .min(self.next_nodeclass)
            .min(self.next_disruption);
        if self.ctx.settings.interruption_queue.is_some() {
            wake = wake.min(self.next_interruption);
        }
        if let Some(d) = self.batcher.deadline() {
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
            self.publish_state_metrics();
            self.next_metrics = now + crate::metrics::STATE_INTERVAL;
        }
        if self
            .catalog_loaded_at
            .is_none_or(|t| now >= t + self.ctx.settings.catalog_refresh)
            && let Err(e) = self.refresh_catalog().await
        {
            // Keep the catalog we have; try again in 15 s.
            self.ctx.journal.record(
                "catalog",
                format!("refresh failed: {e}; keeping the previous catalog"),
            );
            let retry =
                (now + Duration::from_secs(15)).saturating_sub(self.ctx.settings.catalog_refresh);
            self.catalog_loaded_at = Some(retry);
        }
        if self.ctx.settings.interruption_queue.is_some() && now >= self.next_interruption {
            if let Err(e) = self.poll_interruptions().await {
                self.ctx
                    .journal
                    .record("interruption", format!("queue poll failed: {e}; retrying"));
            }
            self.next_interruption = self.now() + crate::interruption::POLL_INTERVAL;
        }
        if now >= self.next_disruption {
            if let Err(e) = self.reconcile_disruption().await {
                self.ctx
                    .journal
                    .record("disruption", format!("pass failed: {e}; retrying"));
            }
            self.next_disruption = self.now() + crate::disruption::DISRUPTION_INTERVAL;
        }
        if now >= self.next_nodeclass {
            self.reconcile_nodeclasses().await;
            self.reconcile_nodepool_status().await;
            self.next_nodeclass = self.now() + crate::nodeclass::RESOLVE_TTL;
        }
        if let Some(window) = self.batcher.close_if_due(now)
            && let Err(e) = self.provision(window).await
        {
            // The pods stay pending; try again in 5 s rather than hammering a failing API every second.
            self.ctx
                .journal
                .record("provision", format!("batch failed: {e}; retrying in 5s"));
            self.batcher
                .trigger(now + BATCH_RETRY.saturating_sub(self.ctx.settings.batch_idle));
        }
        if now >= self.next_lifecycle {
            if let Err(e) = self.reconcile_nodeclaims().await {
                self.ctx
                    .journal
                    .record("lifecycle", format!("reconcile failed: {e}"));
            }
            if let Err(e) = self.reconcile_node_terminations().await {
                self.ctx
                    .journal
                    .record("termination", format!("pass failed: {e}"));
            }
            self.next_lifecycle = self.now() + self.ctx.settings.lifecycle_interval;
        }
        if now >= self.next_gc {
            if self.next_gc > Duration::ZERO
                && let Err(e) = self.collect_garbage().await
            {
                self.ctx
                    .journal
                    .record("gc", format!("pass failed: {e}; retrying next period"));
            }
            self.next_gc = self.now() + crate::gc::GC_INTERVAL;
        }
    }
}

/// Run the controller until a watch ends or the API fails in a way it cannot retry.
///
/// The same entry point runs in a cluster (real clock, kube-rs, aws-sdk) and in the simulator.
pub async fn run(ctx: Context) -> Result<(), ControllerError> {
    let mut elector = crate::leader::Elector::default();
    if let Some(le) = &ctx.settings.leader_election {
        elector.acquire(&ctx, le).await;
        ctx.metrics
            .set(crate::metrics::LEADER, &[("name", &le.name)], 1.0);
    }
    let mut c = Controller::new(ctx);
    c.elector = elector;
    while let Err(e) = c.refresh_catalog().await {
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
        let [pods, nodes, claims, pools, classes, daemonsets] = streams else {
            unreachable!("ClusterState::WATCHED has six kinds")
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
