//! EC2NodeClass resolution: subnets, security groups and images from the selector terms, cached per class
//! for a minute and reported in the class's status with Karpenter's readiness conditions.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use super::cloud::{Cloud, Image, SecurityGroup, Subnet};
use super::launch;
use crate::context::Context;
use crate::crds::EC2NodeClass;
use crate::error::ControllerError;
use crate::kube::{Kind, ObjectKey};
use crate::state::ClusterState;

/// How long a resolution is trusted before EC2 is asked again (Karpenter caches these for a minute).
pub const RESOLVE_TTL: Duration = Duration::from_secs(60);
/// The architectures images are resolved for.
const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// What a node class's selector terms select right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    pub subnets: Vec<Subnet>,
    pub security_groups: Vec<SecurityGroup>,
    /// The newest matching image per Kubernetes architecture.
    pub images: BTreeMap<String, Image>,
    /// What is wrong with the spec itself (`aws::validation`); nothing launches from an invalid class.
    pub invalid: Option<String>,
    /// Fields set in the spec that Dovetail does not act on (`crds::unacted`).
    pub unacted: Vec<&'static str>,
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
                !self.images.is_empty(),
                "AMINotFound",
                "spec.amiSelectorTerms did not match any image".to_string(),
            ),
        ];
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

    /// The status fields Karpenter reports: subnets, security groups, images.
    fn status_fields(&self) -> Value {
        json!({
            "subnets": self.subnets.iter().map(|s| json!({"id": s.id, "zone": s.zone})).collect::<Vec<_>>(),
            "securityGroups": self.security_groups.iter().map(|g| json!({"id": g.id, "name": g.name})).collect::<Vec<_>>(),
            "amis": self.images.iter().map(|(arch, i)| json!({
                "id": i.id,
                "name": i.name,
                "requirements": [{"key": "kubernetes.io/arch", "operator": "In", "values": [arch]}],
            })).collect::<Vec<_>>(),
        })
    }
}

/// Resolutions per class, with when they were made and the spec they were made for.
#[derive(Debug, Default)]
pub struct ClassCache(BTreeMap<String, (Duration, String, Resolved)>);

impl ClassCache {
    /// The last resolution of a class, however old (planning uses it; launching refreshes it).
    pub fn get(&self, class: &str) -> Option<&Resolved> {
        self.0.get(class).map(|(_, _, r)| r)
    }

    /// The resolutions without when they were made: what decisions depend on.
    pub fn contents(&self) -> String {
        let parts: Vec<String> = self
            .0
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
        if let Some((at, p, r)) = self.0.get(&name)
            && *p == print
            && now < *at + RESOLVE_TTL
        {
            return Ok(r.clone());
        }
        let subnets = launch::select_subnets(class, cloud.describe_subnets().await?);
        let mut groups: BTreeMap<String, SecurityGroup> = BTreeMap::new();
        for f in launch::security_group_filters(class) {
            for g in cloud.describe_security_groups(f).await? {
                groups.insert(g.id.clone(), g);
            }
        }
        let mut images = BTreeMap::new();
        for arch in ARCHES {
            let mut found = Vec::new();
            for f in launch::image_filters(class, arch) {
                found.extend(cloud.describe_images(f).await?);
            }
            if let Some(image) = launch::newest_image(&found, arch) {
                images.insert(arch.to_string(), image);
            }
        }
        let resolved = Resolved {
            subnets,
            security_groups: groups.into_values().collect(),
            images,
            invalid: super::validation::validate(class).err(),
            unacted: crate::crds::unacted::ec2nodeclass(&class.spec),
        };
        self.0.insert(name, (ctx.now(), print, resolved.clone()));
        Ok(resolved)
    }

    /// Resolve every node class and write what changed to its status. Failures are logged per class and
    /// retried on the next pass.
    pub(crate) async fn reconcile(
        &mut self,
        ctx: &Context,
        cloud: &dyn Cloud,
        state: &mut ClusterState,
    ) {
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
    let unchanged = ["subnets", "securityGroups", "amis", "conditions"]
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
        r.images.insert(
            "amd64".into(),
            Image {
                id: "ami-1".into(),
                name: "al2023".into(),
                arch: "x86_64".into(),
                creation_date: "2026-01-01".into(),
                tags: Default::default(),
            },
        );
        assert_eq!(r.not_ready(), None);
        assert_eq!(r.zones(), BTreeSet::from(["us-east-1a".to_string()]));
        assert!(r.conditions().iter().all(|c| c.1));
    }
}
