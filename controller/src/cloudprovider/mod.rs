//! The provider-neutral controllers' one interface to a cloud (the analogue of Karpenter's CloudProvider):
//! instance types, launch, terminate, list, drift, node class readiness and launch health. `aws/` is the
//! implementation; nothing outside it knows EC2 or SQS exist.

pub mod instancetype;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::context::Context;
use crate::crds::NodeClaim;
pub use crate::error::CloudError;
use crate::error::ControllerError;
use crate::state::ClusterState;

pub use instancetype::{InstanceType, Offering, ReservedOffering};

/// `on-demand`, `spot` or `reserved` (capacity bought ahead: a capacity reservation), as the
/// `karpenter.sh/capacity-type` label spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CapacityType {
    OnDemand,
    Spot,
    Reserved,
}

impl CapacityType {
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::OnDemand => "on-demand",
            CapacityType::Spot => "spot",
            CapacityType::Reserved => "reserved",
        }
    }

    pub fn parse(s: &str) -> Option<CapacityType> {
        match s {
            "on-demand" => Some(CapacityType::OnDemand),
            "spot" => Some(CapacityType::Spot),
            "reserved" => Some(CapacityType::Reserved),
            _ => None,
        }
    }
}

impl fmt::Display for CapacityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Instance states (EC2's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Terminated,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Pending => "pending",
            InstanceState::Running => "running",
            InstanceState::ShuttingDown => "shutting-down",
            InstanceState::Terminated => "terminated",
        }
    }
}

/// An instance as the provider-neutral controllers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// The provider's own id (`i-...` on AWS), as the trace names it.
    pub id: String,
    /// The Kubernetes providerID its node will carry.
    pub provider_id: String,
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: CapacityType,
    pub image_id: String,
    pub state: InstanceState,
    /// Why the instance is in its state (e.g. `Client.InternalError`), when the cloud says.
    pub state_reason: Option<String>,
    pub launch_time: jiff::Timestamp,
    /// The NodeClaim the instance was launched for, as tagged on it.
    pub nodeclaim: Option<String>,
    /// Labels the offering gives its node beyond type, zone and capacity type (a reservation's id, type,
    /// interruptibility).
    pub offering_labels: BTreeMap<String, String>,
}

/// What one launch attempt for a NodeClaim came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Launch {
    /// Nothing was tried now (its node class is missing or has no image, or its launches are paused).
    Waiting,
    /// An instance a previous controller process launched for this claim and never recorded.
    Adopted(Instance),
    Launched(Instance),
    /// No offering the claim allows is available: the claim goes, and its pods are planned again.
    NoOffering,
    /// The cloud launched nothing.
    Failed(LaunchFailure),
}

/// Why a launch produced no instance.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchFailure {
    /// The distinct error codes, sorted.
    pub codes: Vec<String>,
    /// What the cloud said, for the claim's Event.
    pub message: String,
    /// Every error was a capacity shortage (the claim should be re-planned elsewhere).
    pub capacity: bool,
    /// Offerings now remembered as unavailable.
    pub unavailable_marked: usize,
}

/// Whether a node class can launch, as far as the provider knows.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeClassReadiness {
    /// No such node class object.
    Missing,
    /// Not resolved yet.
    Unknown,
    /// Resolved to nothing usable, with why.
    NotReady(String),
    /// Ready, launching in these zones.
    Ready(BTreeSet<String>),
}

/// A node condition that makes a node unhealthy once it has held `toleration` (Karpenter's RepairPolicy):
/// node repair replaces such a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepairPolicy {
    /// The Node condition's type (`Ready`, `AcceleratedHardwareReady`, ...).
    pub condition: &'static str,
    /// The status that is unhealthy (`False` or `Unknown`).
    pub status: &'static str,
    pub toleration: Duration,
}

/// The cloud as the provider-neutral controllers use it. Methods that take the `Context` may call the
/// cloud's API; the others answer from what the provider already knows.
#[async_trait]
pub trait CloudProvider: Send + Sync {
    /// The node class kind NodePools refer to (`EC2NodeClass`), for messages.
    fn node_class_kind(&self) -> &'static str;

    /// The instance types with their offerings, sorted by name (empty until first read).
    fn instance_types(&self) -> &[InstanceType];

    /// What a node of this type holds when launched from the named node class, if the class changes it
    /// (its kubelet settings): `(capacity, allocatable)`. `None`: as the catalog says.
    fn sized_for(
        &self,
        _state: &ClusterState,
        _class: &str,
        _it: &InstanceType,
    ) -> Option<(crate::resources::Resources, crate::resources::Resources)> {
        None
    }

    /// Whether the named node class can launch, and where.
    fn node_class(&self, state: &ClusterState, name: &str) -> NodeClassReadiness;

    /// Offerings a node class adds to an instance type beyond the catalog's (AWS: the `reserved` ones of
    /// the capacity reservations it selects, with their room).
    fn class_offerings(
        &self,
        _state: &ClusterState,
        _class: &str,
        _it: &InstanceType,
    ) -> Vec<Offering> {
        Vec::new()
    }

    /// Launch (or adopt) the instance for a NodeClaim. `ctx` is mutable for the seeded RNG (client tokens).
    async fn create(
        &mut self,
        ctx: &mut Context,
        state: &ClusterState,
        claim: &NodeClaim,
    ) -> Result<Launch, ControllerError>;

    /// The provider's instance id in a claim's providerID, if it has one.
    fn instance_id(&self, provider_id: &str) -> Option<String>;

    /// Terminate one instance; false when the cloud does not know it.
    async fn delete(&mut self, instance_id: &str) -> Result<bool, ControllerError>;

    /// Terminate instances no NodeClaim owns.
    async fn delete_orphans(&mut self, instance_ids: Vec<String>) -> Result<(), ControllerError>;

    /// Every instance of this cluster by id, recently terminated ones included.
    async fn list(&self, ctx: &Context) -> Result<BTreeMap<String, Instance>, ControllerError>;

    /// Why a claim's instance no longer matches its node class, if it does not: the `Drifted` condition's
    /// reason (`AMIDrift`, ...) and a message.
    fn is_drifted(&self, claim: &NodeClaim) -> Option<(&'static str, String)>;

    /// Launches of this claim's node class are held back now (after repeated launch deaths).
    fn launch_paused(&self, claim: &NodeClaim, now: Duration) -> bool;

    /// Why launches of the named node class keep failing, while they do (the class condition's message).
    fn launch_problem(&self, class: &str) -> Option<String>;

    /// A launch died before its node registered.
    async fn launch_died(
        &mut self,
        ctx: &Context,
        state: &mut ClusterState,
        claim: &NodeClaim,
        instance_id: &str,
        reason: &str,
        now: Duration,
    );

    /// A claim's node registered: its node class launches healthily.
    async fn registered(&mut self, ctx: &Context, state: &mut ClusterState, claim: &NodeClaim);

    /// The node conditions that make a node unhealthy, and for how long each is tolerated (empty: this
    /// cloud repairs nothing).
    fn repair_policies(&self) -> &'static [RepairPolicy] {
        &[]
    }

    /// What disruption decisions read from the provider (catalog, unavailable offerings, node class
    /// resolutions), as text: equal text, equal decisions.
    fn decision_inputs(&self) -> String;
}

/// An instance type as nodes of a class would be: sized by the class's kubelet settings, with the
/// offerings the class adds (its capacity reservations).
pub fn class_type<'a>(
    provider: &(impl CloudProvider + ?Sized),
    state: &ClusterState,
    class: &str,
    it: &'a InstanceType,
) -> std::borrow::Cow<'a, InstanceType> {
    let sized = provider.sized_for(state, class, it);
    let extra = provider.class_offerings(state, class, it);
    if sized.is_none() && extra.is_empty() {
        return std::borrow::Cow::Borrowed(it);
    }
    let mut t = it.clone();
    if let Some((capacity, allocatable)) = sized {
        t.capacity = capacity;
        t.allocatable = allocatable;
    }
    t.offerings.extend(extra);
    std::borrow::Cow::Owned(t)
}
