//! The AWS provider: everything that knows EC2 and SQS exist. `AwsProvider` implements the provider-neutral
//! [`CloudProvider`] over the `Cloud` seam (`cloud.rs`), and runs the AWS-only controllers: the instance
//! type catalog, EC2NodeClass resolution and status, the interruption queue and launch health.
//!
//! One concept a file, as in Karpenter's AWS provider: `cloud.rs` the EC2/SQS API seam, `instancetype.rs`
//! the catalog, `launch.rs` selectors, templates, fleet errors and unavailable offerings, `fleet.rs` the
//! launch itself, `nodeclass.rs` resolution and status, `interruption.rs` the queue, `health.rs` launch
//! deaths.

pub mod ami;
pub mod cloud;
mod fleet;
pub(crate) mod health;
pub mod instancetype;
pub mod interruption;
pub mod launch;
pub mod nodeclass;
pub mod reservation;
pub mod userdata;
pub mod validation;
pub mod vpclimits;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use self::cloud::{Cloud, DescribeInstancesRequest};
use self::health::LaunchHealth;
use self::launch::{KnownTemplates, UnavailableOfferings};
use self::nodeclass::ClassCache;
use crate::cloudprovider::{
    CloudProvider, Instance, InstanceType, Launch, NodeClassReadiness, Offering, RepairPolicy,
};
use crate::context::Context;
use crate::crds::{NodeClaim, labels};
use crate::error::ControllerError;
use crate::state::ClusterState;

pub use self::interruption::POLL_INTERVAL as INTERRUPTION_POLL_INTERVAL;
pub use self::nodeclass::RESOLVE_TTL as NODECLASS_RESOLVE_TTL;

/// The instance id in a claim's providerID (`aws:///<zone>/i-...`).
pub(crate) fn instance_id_of(claim: &NodeClaim) -> Option<String> {
    claim
        .status
        .as_ref()
        .and_then(|s| s.provider_id.as_deref())
        .and_then(parse_instance_id)
}

/// The instance id at the end of a providerID, if it is one.
fn parse_instance_id(provider_id: &str) -> Option<String> {
    provider_id
        .rsplit('/')
        .next()
        .filter(|s| s.starts_with("i-"))
        .map(str::to_string)
}

/// The AWS provider's own state: the catalog and what recently failed, node class resolutions, launch
/// templates known to exist, launch health and the interruption queue's counters.
pub struct AwsProvider {
    /// The EC2 and SQS APIs.
    cloud: Arc<dyn Cloud>,
    instance_types: Vec<InstanceType>,
    /// DescribeInstanceTypes as read, by name: what a node class's kubelet settings resize.
    infos: BTreeMap<String, cloud::InstanceTypeInfo>,
    /// When the catalog was last read (or, after a failure, when the next try is due less a period).
    catalog_loaded_at: Option<Duration>,
    unavailable: UnavailableOfferings,
    known_templates: KnownTemplates,
    classes: ClassCache,
    health: LaunchHealth,
    queue_stats: interruption::QueueStats,
    /// When this process started: claims created before it may have been launched by a predecessor.
    started_at: jiff::Timestamp,
    /// Claims older than this process that it has already looked for a predecessor's instance for.
    adoption_checked: BTreeSet<String>,
    /// Instances this process launched into a capacity reservation, by id: terminating one gives the
    /// reservation its room back at once (Karpenter's MarkTerminated), not at the next read from EC2.
    in_reservation: BTreeMap<String, String>,
}

impl AwsProvider {
    pub fn new(cloud: Arc<dyn Cloud>, started_at: jiff::Timestamp) -> Self {
        AwsProvider {
            cloud,
            instance_types: Vec::new(),
            infos: BTreeMap::new(),
            catalog_loaded_at: None,
            unavailable: UnavailableOfferings::default(),
            known_templates: KnownTemplates::default(),
            classes: ClassCache::default(),
            health: LaunchHealth::default(),
            queue_stats: Default::default(),
            started_at,
            adoption_checked: BTreeSet::new(),
            in_reservation: BTreeMap::new(),
        }
    }

    /// A provider that already holds a catalog (benchmarks: no API is called).
    pub fn with_catalog(
        cloud: Arc<dyn Cloud>,
        started_at: jiff::Timestamp,
        instance_types: Vec<InstanceType>,
    ) -> Self {
        AwsProvider {
            instance_types,
            ..AwsProvider::new(cloud, started_at)
        }
    }

    /// Read instance types, offerings and prices.
    pub(crate) async fn refresh_catalog(&mut self, ctx: &Context) -> Result<(), ControllerError> {
        let cloud = &self.cloud;
        let infos = cloud.describe_instance_types().await?;
        let offerings = cloud.describe_instance_type_offerings().await?;
        let on_demand = cloud.on_demand_prices().await?;
        let spot = cloud.describe_spot_price_history().await?;
        self.instance_types = instancetype::build(&infos, &offerings, &on_demand, &spot);
        self.infos = infos.into_iter().map(|i| (i.name.clone(), i)).collect();
        self.catalog_loaded_at = Some(ctx.now());
        self.refresh_offering_availability(ctx.now());
        Ok(())
    }

    /// Read the catalog again once `settings.catalog_refresh` has passed; on failure keep the catalog we
    /// have and try again in 15 s. `now` is when the timer fired.
    pub(crate) async fn refresh_catalog_when_due(&mut self, ctx: &Context, now: Duration) {
        if self
            .catalog_loaded_at
            .is_none_or(|t| now >= t + ctx.settings.catalog_refresh)
            && let Err(e) = self.refresh_catalog(ctx).await
        {
            ctx.journal.record(
                "catalog",
                format!("refresh failed: {e}; keeping the previous catalog"),
            );
            let retry =
                (now + Duration::from_secs(15)).saturating_sub(ctx.settings.catalog_refresh);
            self.catalog_loaded_at = Some(retry);
        }
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

    /// Resolve every EC2NodeClass and write what changed to its status.
    pub(crate) async fn reconcile_nodeclasses(&mut self, ctx: &Context, state: &mut ClusterState) {
        self.classes
            .reconcile(ctx, self.cloud.as_ref(), state)
            .await;
        self.reconcile_reservations(ctx, state).await;
    }
}

impl AwsProvider {
    /// The `reserved` offerings the class's reservations give a type, their room less what `pending`
    /// (read only when the type has a reservation) says claims not launched yet will take.
    pub(crate) fn reserved_offerings(
        &self,
        class: &str,
        it: &InstanceType,
        pending: impl FnOnce() -> BTreeMap<String, u32>,
    ) -> Vec<Offering> {
        let Some(resolved) = self.classes.get(class) else {
            return Vec::new();
        };
        let Some(reservations) = resolved
            .reservations
            .as_ref()
            .filter(|r| r.iter().any(|r| r.instance_type == it.name))
        else {
            return Vec::new();
        };
        reservation::offerings(
            reservations,
            &self.classes.availability,
            &pending(),
            it,
            &resolved.zones(),
        )
    }
}

/// Claims not launched yet that count on a reservation (pinned to one id), by reservation: room they will
/// take that EC2's count does not show yet.
fn reservations_pending(state: &ClusterState) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    for claim in state.nodeclaims.values() {
        let launched = claim
            .status
            .as_ref()
            .is_some_and(|s| s.provider_id.is_some());
        if launched || claim.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if let Some(r) = claim
            .spec
            .requirements
            .iter()
            .find(|r| r.key == labels::CAPACITY_RESERVATION_ID && r.operator == "In")
            && let [id] = r.values.as_slice()
        {
            *out.entry(id.clone()).or_insert(0) += 1;
        }
    }
    out
}

/// What makes an EC2 node unhealthy, as Karpenter's AWS provider says: the kubelet's Ready False or
/// Unknown for 30 minutes, and the EKS node monitoring agent's conditions (accelerated hardware for 10
/// minutes, the others 30).
const REPAIR_POLICIES: [RepairPolicy; 7] = {
    const fn policy(condition: &'static str, status: &'static str, minutes: u64) -> RepairPolicy {
        RepairPolicy {
            condition,
            status,
            toleration: Duration::from_secs(minutes * 60),
        }
    }
    [
        policy("Ready", "False", 30),
        policy("Ready", "Unknown", 30),
        policy("AcceleratedHardwareReady", "False", 10),
        policy("StorageReady", "False", 30),
        policy("NetworkingReady", "False", 30),
        policy("KernelReady", "False", 30),
        policy("ContainerRuntimeReady", "False", 30),
    ]
};

#[async_trait]
impl CloudProvider for AwsProvider {
    fn node_class_kind(&self) -> &'static str {
        "EC2NodeClass"
    }

    fn instance_types(&self) -> &[InstanceType] {
        &self.instance_types
    }

    fn sized_for(
        &self,
        state: &ClusterState,
        class: &str,
        it: &InstanceType,
    ) -> Option<(crate::resources::Resources, crate::resources::Resources)> {
        let class = state.nodeclasses.get(class)?;
        class.spec.kubelet.as_ref()?;
        let info = self.infos.get(&it.name)?;
        Some(instancetype::capacity_and_allocatable(info, Some(class)))
    }

    fn class_offerings(
        &self,
        state: &ClusterState,
        class: &str,
        it: &InstanceType,
    ) -> Vec<Offering> {
        self.reserved_offerings(class, it, || reservations_pending(state))
    }

    fn node_class(&self, state: &ClusterState, name: &str) -> NodeClassReadiness {
        if !state.nodeclasses.contains_key(name) {
            return NodeClassReadiness::Missing;
        }
        match self.classes.get(name) {
            None => NodeClassReadiness::Unknown,
            Some(resolved) => match resolved.not_ready() {
                Some(problem) => NodeClassReadiness::NotReady(problem),
                None => NodeClassReadiness::Ready(resolved.zones()),
            },
        }
    }

    async fn create(
        &mut self,
        ctx: &mut Context,
        state: &ClusterState,
        claim: &NodeClaim,
    ) -> Result<Launch, ControllerError> {
        self.launch(ctx, state, claim).await
    }

    fn instance_id(&self, provider_id: &str) -> Option<String> {
        parse_instance_id(provider_id)
    }

    async fn delete(&mut self, instance_id: &str) -> Result<bool, ControllerError> {
        match self
            .cloud
            .terminate_instances(vec![instance_id.to_string()])
            .await
        {
            Ok(()) => {
                if let Some(id) = self.in_reservation.remove(instance_id) {
                    self.classes.availability.terminated(&id);
                }
                Ok(true)
            }
            Err(e) if e.code == "InvalidInstanceID.NotFound" => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn delete_orphans(&mut self, instance_ids: Vec<String>) -> Result<(), ControllerError> {
        self.cloud.terminate_instances(instance_ids).await?;
        Ok(())
    }

    /// Every instance tagged for this cluster, all pages, terminated ones included (EC2 shows them for a
    /// while, with the reason they died). Untagged instances and other clusters' never appear here.
    async fn list(&self, ctx: &Context) -> Result<BTreeMap<String, Instance>, ControllerError> {
        let (key, value) = fleet::cluster_tag(ctx);
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = self
                .cloud
                .describe_instances(DescribeInstancesRequest {
                    tags: [(key.clone(), value.clone())].into(),
                    max_results: Some(1000),
                    next_token: token,
                    ..Default::default()
                })
                .await?;
            for i in page.instances {
                out.insert(
                    i.id.clone(),
                    fleet::neutral(&i, ctx.settings.feature_gates.reserved_capacity),
                );
            }
            token = page.next_token;
            if token.is_none() {
                return Ok(out);
            }
        }
    }

    /// Karpenter's AMI drift: the claim's image is no longer the one its instance type would launch with.
    fn is_drifted(&self, claim: &NodeClaim) -> Option<(&'static str, String)> {
        let image = claim.status.as_ref().and_then(|s| s.image_id.clone())?;
        let type_name = claim.metadata.labels.as_ref()?.get(labels::INSTANCE_TYPE)?;
        // The catalog is sorted by name.
        let it = self
            .instance_types
            .binary_search_by(|t| t.name.as_str().cmp(type_name))
            .ok()
            .map(|i| &self.instance_types[i])?;
        let amis = &self.classes.get(&claim.spec.node_class_ref.name)?.amis;
        // No image at all is a resolution problem (the class is not ready), not drift.
        if amis.is_empty() {
            return None;
        }
        match ami::for_instance_type(amis, &it.labels) {
            Some(now) if now.id == image => None,
            Some(now) => Some(("AMIDrift", format!("image {image} replaced by {}", now.id))),
            None => Some((
                "AMIDrift",
                format!("image {image}: no image the class selects suits {type_name} any more"),
            )),
        }
    }

    fn launch_paused(&self, claim: &NodeClaim, now: Duration) -> bool {
        self.health
            .paused_until(&claim.spec.node_class_ref.name, now)
            .is_some()
    }

    fn launch_problem(&self, class: &str) -> Option<String> {
        self.health.problem(class).map(String::from)
    }

    async fn launch_died(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        claim: &NodeClaim,
        instance_id: &str,
        reason: &str,
        now: Duration,
    ) {
        self.health
            .launch_died(ctx, state, claim, instance_id, reason, now)
            .await;
    }

    async fn registered(&mut self, ctx: &Context, state: &mut ClusterState, claim: &NodeClaim) {
        self.health.registered(ctx, state, claim).await;
    }

    fn repair_policies(&self) -> &'static [RepairPolicy] {
        &REPAIR_POLICIES
    }

    fn decision_inputs(&self) -> String {
        format!(
            "{:?}|{:?}|{:?}",
            self.catalog_loaded_at,
            self.unavailable,
            self.classes.contents()
        )
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_ids_name_their_instance() {
        assert_eq!(
            super::parse_instance_id("aws:///us-east-1a/i-0abc").as_deref(),
            Some("i-0abc")
        );
        assert_eq!(super::parse_instance_id("kind://docker/node"), None);
    }
}
