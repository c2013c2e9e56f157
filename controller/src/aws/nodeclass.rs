//! EC2NodeClass resolution: subnets, security groups and images from the selector terms, cached per class
//! for a minute and reported in the class's status with Karpenter's readiness conditions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::ami::{self, Ami, SsmCache};
use super::cloud::{Cloud, SecurityGroup, Subnet};
use super::launch;
use super::reservation::{self, Reservation};
use crate::context::Context;
use crate::crds::EC2NodeClass;
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// How long a resolution is trusted before EC2 is asked again (Karpenter caches these for a minute).
pub const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// How often the cluster's Kubernetes version is read again (it picks the EKS images an alias means).
const VERSION_TTL: Duration = Duration::from_secs(3600);

/// What a node class's selector terms select right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub subnets: Vec<Subnet>,
    pub security_groups: Vec<SecurityGroup>,
    /// The images the class selects, newest first, each with the instance types it suits.
    pub amis: Vec<Ami>,
    /// Why no image is selected (or an alias cannot be used on this cluster's version).
    pub ami_problem: Option<String>,
    /// What is wrong with the spec itself (`aws::validation`); nothing launches from an invalid class.
    pub invalid: Option<String>,
    /// Fields set in the spec that Dovetail does not act on (`crds::unacted`).
    pub unacted: Vec<&'static str>,
    /// The capacity reservations the class selects (ReservedCapacity gate on), by id; None with the gate
    /// off (no `CapacityReservationsReady` condition then, as in Karpenter).
    pub reservations: Option<Vec<Reservation>>,
}

impl Resolved {
    /// Zones the class can launch in: those of its subnets.
    pub fn zones(&self) -> BTreeSet<String> {
        self.subnets.iter().map(|s| s.zone.clone()).collect()
    }

    /// Each readiness condition with its status, reason and message, `Ready` last.
    pub fn conditions(&self) -> Vec<(&'static str, bool, &'static str, String)> {
        let mut out = vec![
            (
                "ValidationSucceeded",
                self.invalid.is_none(),
                "Invalid",
                self.invalid
                    .clone()
                    .unwrap_or_else(|| crate::crds::unacted::sentence(&self.unacted)),
            ),
            (
                "SubnetsReady",
                !self.subnets.is_empty(),
                "SubnetsNotFound",
                "spec.subnetSelectorTerms did not match any subnet".to_string(),
            ),
            (
                "SecurityGroupsReady",
                !self.security_groups.is_empty(),
                "SecurityGroupsNotFound",
                "spec.securityGroupSelectorTerms did not match any security group".to_string(),
            ),
            (
                "AMIsReady",
                !self.amis.is_empty(),
                "AMINotFound",
                self.ami_problem
                    .clone()
                    .unwrap_or_else(|| "spec.amiSelectorTerms did not match any image".into()),
            ),
        ];
        if self.reservations.is_some() {
            // Listing them worked (a failure fails the whole resolution); none selected is fine.
            out.push((
                "CapacityReservationsReady",
                true,
                "CapacityReservationsNotFound",
                String::new(),
            ));
        }
        let failing: Vec<&str> = out.iter().filter(|c| !c.1).map(|c| c.0).collect();
        let ready = failing.is_empty();
        out.push((
            "Ready",
            ready,
            "NotReady",
            format!("not ready: {}", failing.join(", ")),
        ));
        // A True condition says nothing, but for the fields not acted on.
        for c in &mut out {
            if c.1 && c.0 != "ValidationSucceeded" {
                c.3.clear();
            }
        }
        out
    }

    /// Why nothing can launch from this class, if nothing can.
    pub fn not_ready(&self) -> Option<String> {
        let problems: Vec<String> = self
            .conditions()
            .into_iter()
            .filter(|c| !c.1 && c.0 != "Ready")
            .map(|c| c.3)
            .collect();
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The status fields Karpenter reports: subnets, security groups, images, capacity reservations.
    fn status_fields(&self) -> Value {
        let mut v = json!({
            "subnets": self.subnets.iter().map(|s| json!({"id": s.id, "zone": s.zone})).collect::<Vec<_>>(),
            "securityGroups": self.security_groups.iter().map(|g| json!({"id": g.id, "name": g.name})).collect::<Vec<_>>(),
            "amis": self.amis.iter().map(|a| {
                let mut ami = json!({
                    "id": a.id,
                    "name": a.name,
                    "requirements": a.requirements.to_node_selector(),
                });
                if a.deprecated {
                    ami["deprecated"] = json!(true);
                }
                ami
            }).collect::<Vec<_>>(),
        });
        if let Some(r) = &self.reservations {
            v["capacityReservations"] = reservation::status(r);
        }
        v
    }
}

/// Resolutions per class, with when they were made and the spec they were made for; the SSM values and
/// Kubernetes version they were made from.
#[derive(Debug, Default)]
pub struct ClassCache {
    resolved: BTreeMap<String, (Duration, String, Resolved)>,
    ssm: SsmCache,
    /// The API server's `major.minor`, and when it was read.
    k8s_version: Option<(Duration, String)>,
    /// When cached `@latest` values were last checked for deprecated images.
    invalidated_at: Option<Duration>,
    /// Room in each capacity reservation, as EC2 last said and our launches since.
    pub availability: reservation::Availability,
}

impl ClassCache {
    /// The last resolution of a class, however old (planning uses it; launching refreshes it).
    pub fn get(&self, class: &str) -> Option<&Resolved> {
        self.resolved.get(class).map(|(_, _, r)| r)
    }

    /// The resolutions without when they were made: what decisions depend on.
    pub fn contents(&self) -> String {
        let parts: Vec<String> = self
            .resolved
            .iter()
            .map(|(class, (_, _, r))| format!("{class}={r:?}"))
            .collect();
        parts.join(";")
    }
}

fn fingerprint(class: &EC2NodeClass) -> String {
    serde_json::to_string(&class.spec).unwrap_or_default()
}

impl ClassCache {
    /// The class's subnets, security groups and images: from the cache when it is under a minute old and
    /// made for the same spec, else from EC2.
    pub(crate) async fn resolve(
        &mut self,
        ctx: &Context,
        cloud: &dyn Cloud,
        class: &EC2NodeClass,
    ) -> Result<Resolved, ControllerError> {
        let name = class.metadata.name.clone().unwrap_or_default();
        let print = fingerprint(class);
        let now = ctx.now();
        if let Some((at, p, r)) = self.resolved.get(&name)
            && *p == print
            && now < *at + RESOLVE_TTL
        {
            return Ok(r.clone());
        }
        let k8s = self.kubernetes_version(ctx).await?;
        let subnets = launch::select_subnets(class, cloud.describe_subnets().await?);
        let mut groups: BTreeMap<String, SecurityGroup> = BTreeMap::new();
        for f in launch::security_group_filters(class) {
            for g in cloud.describe_security_groups(f).await? {
                groups.insert(g.id.clone(), g);
            }
        }
        let selection =
            ami::resolve(cloud, &mut self.ssm, now, ctx.clock.now(), class, &k8s).await?;
        let gated = ctx.settings.feature_gates.reserved_capacity;
        let reservations = if gated {
            Some(self.reservations(ctx, cloud, class).await?)
        } else {
            None
        };
        let mut unacted = crate::crds::unacted::ec2nodeclass(&class.spec);
        if gated {
            unacted.retain(|f| *f != "spec.capacityReservationSelectorTerms");
        }
        let resolved = Resolved {
            subnets,
            security_groups: groups.into_values().collect(),
            amis: selection.amis,
            ami_problem: selection.problem,
            invalid: super::validation::validate(class).err(),
            unacted,
            reservations,
        };
        self.resolved
            .insert(name, (ctx.now(), print, resolved.clone()));
        Ok(resolved)
    }

    /// The reservations the class's terms select, active and not past their end, by id; their room synced
    /// from EC2's count. One EC2 cannot parse is left out and said once per resolution.
    async fn reservations(
        &mut self,
        ctx: &Context,
        cloud: &dyn Cloud,
        class: &EC2NodeClass,
    ) -> Result<Vec<Reservation>, ControllerError> {
        let name = class.metadata.name.clone().unwrap_or_default();
        let now = ctx.clock.now();
        let mut found: BTreeMap<String, Reservation> = BTreeMap::new();
        for q in reservation::queries(&class.spec.capacity_reservation_selector_terms) {
            let listed = match cloud.describe_capacity_reservations(q).await {
                Ok(l) => l,
                // A reservation named by id that is gone selects nothing.
                Err(e) if e.code == "InvalidCapacityReservationId.NotFound" => Vec::new(),
                Err(e) => return Err(e.into()),
            };
            for r in listed {
                if r.end_date.is_some_and(|end| end <= now) {
                    continue;
                }
                match reservation::from_ec2(&r, now) {
                    Ok(parsed) => {
                        self.availability.sync(&r.id, r.available_instance_count);
                        found.insert(parsed.id.clone(), parsed);
                    }
                    Err(why) => ctx
                        .journal
                        .record("nodeclass", format!("ec2nodeclass/{name}: {why}")),
                }
            }
        }
        Ok(found.into_values().collect())
    }

    /// The cluster's Kubernetes version, read from the API server at most once an hour.
    async fn kubernetes_version(&mut self, ctx: &Context) -> Result<String, ControllerError> {
        let now = ctx.now();
        if let Some((at, v)) = &self.k8s_version
            && now < *at + VERSION_TTL
        {
            return Ok(v.clone());
        }
        let v = ctx.kube.server_version().await?;
        self.k8s_version = Some((now, v.clone()));
        Ok(v)
    }

    /// Karpenter's SSM invalidation: every half hour, drop cached `@latest` values whose image AWS has
    /// deprecated, so a withdrawn image is replaced without waiting out the day-long cache.
    async fn invalidate_deprecated_images(&mut self, ctx: &Context, cloud: &dyn Cloud) {
        let now = ctx.now();
        if self
            .invalidated_at
            .is_some_and(|t| now < t + ami::INVALIDATION_PERIOD)
        {
            return;
        }
        match self.ssm.invalidate_deprecated(cloud, ctx.clock.now()).await {
            Ok(dropped) => {
                self.invalidated_at = Some(now);
                if dropped.is_empty() {
                    return;
                }
                for p in dropped {
                    ctx.journal.record(
                        "nodeclass",
                        format!("ssm parameter {p} named a deprecated image; reading it again"),
                    );
                }
                // Resolutions made from a dropped value are stale too: forget the spec they were made for
                // (the last one stays readable until the next is made).
                for (_, print, _) in self.resolved.values_mut() {
                    print.clear();
                }
            }
            Err(e) => ctx.journal.record(
                "nodeclass",
                format!("checking cached images for deprecation failed: {e}; retrying"),
            ),
        }
    }

    /// Resolve every node class and write what changed to its status. Failures are logged per class and
    /// retried on the next pass.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Context,
        cloud: &dyn Cloud,
        state: &mut ClusterState,
    ) {
        self.invalidate_deprecated_images(ctx, cloud).await;
        let classes: Vec<EC2NodeClass> = state
            .nodeclasses
            .values()
            .filter(|c| c.metadata.deletion_timestamp.is_none())
            .cloned()
            .collect();
        for class in classes {
            let name = class.metadata.name.clone().unwrap_or_default();
            match self.resolve(ctx, cloud, &class).await {
                Ok(resolved) => write_class_status(ctx, state, &class, &resolved).await,
                Err(e) => ctx.journal.record(
                    "nodeclass",
                    format!("ec2nodeclass/{name}: resolution failed: {e}; retrying"),
                ),
            }
        }
    }
}

async fn write_class_status(
    ctx: &Context,
    state: &mut ClusterState,
    class: &EC2NodeClass,
    resolved: &Resolved,
) {
    let name = class.metadata.name.clone().unwrap_or_default();
    let current =
        serde_json::to_value(class.status.clone().unwrap_or_default()).unwrap_or_default();
    let now = ctx.clock.now().to_string();
    let old_conditions: Vec<Value> = current["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let wanted: Vec<crate::conditions::Desired> = resolved
        .conditions()
        .into_iter()
        .map(|(t, ok, reason, message)| (t, Some(ok), reason, message))
        .collect();
    let conditions = crate::conditions::merge(&old_conditions, &wanted, &now);
    let mut desired = resolved.status_fields();
    desired["conditions"] = json!(conditions);
    let unchanged = [
        "subnets",
        "securityGroups",
        "amis",
        "capacityReservations",
        "conditions",
    ]
    .iter()
    .all(|k| current[*k] == desired[*k] || (current[*k].is_null() && desired[*k] == json!([])));
    if unchanged {
        return;
    }
    let noted = |list: &[Value]| crate::conditions::true_message(list, "ValidationSucceeded");
    let note = noted(&conditions);
    if !note.is_empty() && note != noted(&old_conditions) {
        ctx.journal
            .record("nodeclass", format!("ec2nodeclass/{name}: fields {note}"));
    }
    if let Some(problem) = resolved.not_ready() {
        ctx.journal.record(
            "nodeclass",
            format!("ec2nodeclass/{name} not ready: {problem}"),
        );
    }
    patch_class_status(ctx, state, &name, desired, "nodeclass").await;
}

/// Merge-patch an EC2NodeClass's status and keep the cache in step. Best effort: a failure is
/// journalled under `source`, and the next pass writes it again.
pub(crate) async fn patch_class_status(
    ctx: &Context,
    state: &mut ClusterState,
    class: &str,
    status: Value,
    source: &'static str,
) {
    match ctx
        .kube
        .patch_status(
            Kind::EC2NodeClass,
            &ObjectKey::cluster(class),
            json!({ "status": status }),
        )
        .await
    {
        Ok(updated) => {
            let _ = state.apply_event(
                Kind::EC2NodeClass,
                crate::kube::WatchEvent::Modified(updated),
            );
        }
        Err(e) => ctx.journal.record(
            source,
            format!("ec2nodeclass/{class}: status not written: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_what_is_missing() {
        let mut r = Resolved::default();
        let problem = r.not_ready().expect("nothing resolved");
        assert!(problem.contains("subnetSelectorTerms") && problem.contains("amiSelectorTerms"));
        let ready = r.conditions().into_iter().find(|c| c.0 == "Ready").unwrap();
        assert!(
            !ready.1
                && ready
                    .3
                    .contains("SubnetsReady, SecurityGroupsReady, AMIsReady")
        );
        r.subnets.push(Subnet {
            id: "subnet-1".into(),
            zone: "us-east-1a".into(),
            available_ip_addresses: 10,
            tags: Default::default(),
        });
        r.security_groups.push(SecurityGroup {
            id: "sg-1".into(),
            name: "nodes".into(),
            tags: Default::default(),
        });
        r.amis.push(Ami {
            id: "ami-1".into(),
            name: "al2023".into(),
            creation_date: "2026-01-01T00:00:00Z".into(),
            deprecated: false,
            requirements: Default::default(),
        });
        assert_eq!(r.not_ready(), None);
        assert_eq!(r.zones(), BTreeSet::from(["us-east-1a".to_string()]));
        assert!(r.conditions().iter().all(|c| c.1));
    }
}
