//! AMI selection as Karpenter does it: an alias reads its family's EKS-optimized SSM parameters, the other
//! terms query DescribeImages; per requirement set the newest image wins, non-deprecated before deprecated;
//! an instance type launches with the first image (newest first) whose requirements its labels meet.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;

use super::cloud::{Cloud, CloudError, Image, ImageQuery, TagFilter};
use crate::crds::{EC2NodeClass, labels};
use crate::scheduling::requirements::{Requirement, Requirements};

/// How long an SSM parameter's value is trusted (Karpenter's cache: a new `@latest` image reaches a cluster
/// within a day, never in a thundering herd on release day).
pub const SSM_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long a user's own `ssmParameter` value is trusted.
pub const CUSTOM_SSM_TTL: Duration = Duration::from_secs(5 * 60);
/// How often cached `@latest` values are checked for images AWS has since deprecated (then dropped, so a
/// withdrawn image is replaced within this period rather than a day).
pub const INVALIDATION_PERIOD: Duration = Duration::from_secs(30 * 60);

/// The EKS-optimized image variants an alias resolves, and the instance types each runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// Neither GPUs nor Neuron accelerators.
    Standard,
    Nvidia,
    Neuron,
}

impl Variant {
    fn requirements(self) -> Requirements {
        let mut r = Requirements::default();
        let none = |key| Requirement::parse(key, "DoesNotExist", &[], None);
        let some = |key| Requirement::parse(key, "Exists", &[], None);
        let parts = match self {
            Variant::Standard => vec![
                none(labels::INSTANCE_ACCELERATOR_COUNT),
                none(labels::INSTANCE_GPU_COUNT),
            ],
            Variant::Nvidia => vec![some(labels::INSTANCE_GPU_COUNT)],
            Variant::Neuron => vec![some(labels::INSTANCE_ACCELERATOR_COUNT)],
        };
        for p in parts.into_iter().flatten() {
            r.add(p);
        }
        r
    }
}

/// One SSM parameter an alias reads and the requirement sets of the image it names.
#[derive(Debug, Clone, PartialEq)]
pub struct AliasParameter {
    pub path: String,
    /// `@latest`: the value changes with every release.
    pub mutable: bool,
    pub requirements: Vec<Requirements>,
}

/// `family@version` split; the version keeps what the user wrote.
fn split_alias(alias: &str) -> (&str, &str) {
    alias.split_once('@').unwrap_or((alias, "latest"))
}

fn minor(k8s: &str) -> u32 {
    k8s.split('.')
        .nth(1)
        .and_then(|m| m.trim_end_matches('+').parse().ok())
        .unwrap_or(0)
}

/// The SSM parameters an alias reads for a Kubernetes version (`1.33`), or why it cannot be used there.
pub fn alias_parameters(alias: &str, k8s: &str) -> Result<Vec<AliasParameter>, String> {
    let (family, version) = split_alias(alias);
    let latest = version == "latest";
    let param = |path: String, variants: &[Variant]| AliasParameter {
        path,
        mutable: latest,
        requirements: variants.iter().map(|v| v.requirements()).collect(),
    };
    let eks = format!("/aws/service/eks/optimized-ami/{k8s}");
    use Variant::*;
    match family {
        "al2023" => {
            let mut out = Vec::new();
            for (arch, variants) in [
                ("x86_64", &[Standard, Nvidia, Neuron][..]),
                ("arm64", &[Standard, Nvidia][..]),
            ] {
                for v in variants {
                    let variant = match v {
                        Standard => "standard",
                        Nvidia => "nvidia",
                        Neuron => "neuron",
                    };
                    let leaf = if latest {
                        "recommended".to_string()
                    } else {
                        format!("amazon-eks-node-al2023-{arch}-{variant}-{k8s}-{version}")
                    };
                    out.push(param(
                        format!("{eks}/amazon-linux-2023/{arch}/{variant}/{leaf}/image_id"),
                        &[*v],
                    ));
                }
            }
            Ok(out)
        }
        "al2" => {
            if minor(k8s) >= 33 {
                return Err(format!(
                    "alias {alias}: AL2 images are not published for Kubernetes 1.33 and later (cluster runs {k8s}); use al2023 or bottlerocket"
                ));
            }
            let leaf = |name: &str| {
                if latest {
                    "recommended".to_string()
                } else {
                    format!("{name}-{k8s}-{version}")
                }
            };
            Ok(vec![
                param(
                    format!("{eks}/amazon-linux-2/{}/image_id", leaf("amazon-eks-node")),
                    &[Standard],
                ),
                param(
                    format!(
                        "{eks}/amazon-linux-2-arm64/{}/image_id",
                        leaf("amazon-eks-arm64-node")
                    ),
                    &[Standard],
                ),
                param(
                    format!(
                        "{eks}/amazon-linux-2-gpu/{}/image_id",
                        leaf("amazon-eks-gpu-node")
                    ),
                    &[Neuron, Nvidia],
                ),
            ])
        }
        "bottlerocket" => {
            // Bottlerocket's releases are tagged `v1.2.3` but its SSM paths say `1.2.3`: accept both.
            let v = version.trim_start_matches('v');
            let br = |flavour: &str, arch: &str| {
                format!("/aws/service/bottlerocket/aws-k8s-{k8s}{flavour}/{arch}/{v}/image_id")
            };
            Ok(vec![
                param(br("", "x86_64"), &[Standard, Neuron]),
                param(br("", "arm64"), &[Standard]),
                param(br("-nvidia", "x86_64"), &[Nvidia]),
                param(br("-nvidia", "arm64"), &[Nvidia]),
            ])
        }
        "windows2019" | "windows2022" | "windows2025" => {
            let year = &family["windows".len()..];
            if year == "2025" && minor(k8s) < 35 {
                return Err(format!(
                    "alias {alias}: Windows Server 2025 images need Kubernetes 1.35 or later (cluster runs {k8s})"
                ));
            }
            let build = match year {
                "2019" => "10.0.17763",
                "2022" => "10.0.20348",
                _ => "10.0.26100",
            };
            let mut r = Requirements::default();
            r.add(Requirement::in_values(labels::OS, ["windows"]));
            r.add(Requirement::in_values(labels::WINDOWS_BUILD, [build]));
            Ok(vec![AliasParameter {
                path: format!(
                    "/aws/service/ami-windows-latest/Windows_Server-{year}-English-Core-EKS_Optimized-{k8s}/image_id"
                ),
                mutable: true,
                requirements: vec![r],
            }])
        }
        _ => Err(format!("alias {alias}: unknown image family `{family}`")),
    }
}

/// SSM parameter values as read, each until it expires.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SsmCache(BTreeMap<String, SsmEntry>);

#[derive(Debug, Clone, PartialEq)]
struct SsmEntry {
    value: String,
    expires: Duration,
    mutable: bool,
}

impl SsmCache {
    /// A parameter's value (`None` when SSM has no such parameter; not-found is not cached, as in
    /// Karpenter). `now` is the clock's offset.
    pub async fn get(
        &mut self,
        cloud: &dyn Cloud,
        now: Duration,
        name: &str,
        ttl: Duration,
        mutable: bool,
    ) -> Result<Option<String>, CloudError> {
        if let Some(e) = self.0.get(name).filter(|e| now < e.expires) {
            return Ok(Some(e.value.clone()));
        }
        match cloud.get_parameter(name).await {
            Ok(value) => {
                self.0.insert(
                    name.to_string(),
                    SsmEntry {
                        value: value.clone(),
                        expires: now + ttl,
                        mutable,
                    },
                );
                Ok(Some(value))
            }
            Err(e) if e.code == "ParameterNotFound" => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Forget every `@latest` value that names an image AWS has deprecated, so the next resolution reads
    /// the parameter again. Returns the parameters dropped.
    pub async fn invalidate_deprecated(
        &mut self,
        cloud: &dyn Cloud,
        now: Timestamp,
    ) -> Result<Vec<String>, CloudError> {
        let ids: Vec<String> = self
            .0
            .values()
            .filter(|e| e.mutable)
            .map(|e| e.value.clone())
            .collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let images = cloud
            .describe_images(ImageQuery {
                filter: TagFilter {
                    ids,
                    ..Default::default()
                },
                owners: Vec::new(),
            })
            .await?;
        let deprecated: Vec<&str> = images
            .iter()
            .filter(|i| is_deprecated(i, now))
            .map(|i| i.id.as_str())
            .collect();
        let dropped: Vec<String> = self
            .0
            .iter()
            .filter(|(_, e)| e.mutable && deprecated.contains(&e.value.as_str()))
            .map(|(k, _)| k.clone())
            .collect();
        for k in &dropped {
            self.0.remove(k);
        }
        Ok(dropped)
    }
}

/// An image a node class may launch, and the instance types it suits.
#[derive(Debug, Clone, PartialEq)]
pub struct Ami {
    pub id: String,
    pub name: String,
    pub creation_date: String,
    pub deprecated: bool,
    pub requirements: Requirements,
}

impl Ami {
    /// Does an instance type with these labels run this image?
    pub fn suits(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.matches_labels(labels)
    }
}

/// The images a node class selects now, or why none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// Newest first (ties by id).
    pub amis: Vec<Ami>,
    /// What the user must fix when `amis` is empty (or an alias cannot be used at all).
    pub problem: Option<String>,
}

fn is_deprecated(image: &Image, now: Timestamp) -> bool {
    image
        .deprecation_time
        .as_deref()
        .and_then(|t| t.parse::<Timestamp>().ok())
        .is_some_and(|t| t.as_second() <= now.as_second())
}

fn created(ami: &Ami) -> i64 {
    ami.creation_date
        .parse::<Timestamp>()
        .map(|t| t.as_second())
        .unwrap_or(i64::MIN)
}

/// Kubernetes' name for an EC2 architecture (images of other architectures are never used).
fn kube_arch(ec2: &str) -> Option<&'static str> {
    match ec2 {
        "x86_64" => Some("amd64"),
        "arm64" => Some("arm64"),
        _ => None,
    }
}

/// Which of two images for the same requirements to keep: non-deprecated, then newer, then the greater
/// name (Karpenter's order).
fn better(candidate: &Ami, kept: &Ami) -> bool {
    if candidate.deprecated != kept.deprecated {
        return !candidate.deprecated;
    }
    let (c, k) = (created(candidate), created(kept));
    if c != k {
        return c > k;
    }
    candidate.name > kept.name
}

/// The best image per requirement set among those found; `known` gives the requirement sets an alias's
/// SSM parameters tell about an image id (the architecture always comes from the image itself).
pub fn select(
    images: &[Image],
    known: &BTreeMap<String, Vec<Requirements>>,
    now: Timestamp,
) -> Vec<Ami> {
    let mut best: Vec<Ami> = Vec::new();
    for image in images {
        let Some(arch) = kube_arch(&image.arch) else {
            continue;
        };
        let sets = known
            .get(&image.id)
            .cloned()
            .unwrap_or_else(|| vec![Requirements::default()]);
        for mut requirements in sets {
            requirements.add(Requirement::in_values(labels::ARCH, [arch]));
            let ami = Ami {
                id: image.id.clone(),
                name: image.name.clone(),
                creation_date: image.creation_date.clone(),
                deprecated: is_deprecated(image, now),
                requirements,
            };
            match best.iter_mut().find(|b| b.requirements == ami.requirements) {
                Some(kept) if better(&ami, kept) => *kept = ami,
                Some(_) => {}
                None => best.push(ami),
            }
        }
    }
    best.sort_by(|a, b| created(b).cmp(&created(a)).then_with(|| a.id.cmp(&b.id)));
    best
}

/// The image an instance type with these labels launches with: the first that suits it.
pub fn for_instance_type<'a>(
    amis: &'a [Ami],
    labels: &BTreeMap<String, String>,
) -> Option<&'a Ami> {
    amis.iter().find(|a| a.suits(labels))
}

/// Resolve a node class's `amiSelectorTerms` for a cluster of Kubernetes version `k8s`: SSM through `ssm`,
/// then DescribeImages. API failures other than a missing parameter are errors (the caller retries).
pub async fn resolve(
    cloud: &dyn Cloud,
    ssm: &mut SsmCache,
    now: Duration,
    wall: Timestamp,
    class: &EC2NodeClass,
    k8s: &str,
) -> Result<Selection, CloudError> {
    let terms = &class.spec.ami_selector_terms;
    let mut queries = Vec::new();
    let mut known: BTreeMap<String, Vec<Requirements>> = BTreeMap::new();
    // An alias is the only term when present (a CEL rule); Karpenter reads the first.
    if let Some(alias) = terms.iter().find_map(|t| t.alias.as_deref()) {
        let params = match alias_parameters(alias, k8s) {
            Ok(p) => p,
            Err(problem) => {
                return Ok(Selection {
                    amis: Vec::new(),
                    problem: Some(format!("spec.amiSelectorTerms: {problem}")),
                });
            }
        };
        for p in params {
            if let Some(id) = ssm.get(cloud, now, &p.path, SSM_TTL, p.mutable).await?
                && id.starts_with("ami-")
            {
                known.entry(id).or_default().extend(p.requirements);
            }
        }
        if known.is_empty() {
            return Ok(Selection {
                amis: Vec::new(),
                problem: Some(format!(
                    "spec.amiSelectorTerms: alias {alias} names no image for Kubernetes {k8s} (no SSM parameter under /aws/service for that version)"
                )),
            });
        }
        queries.push(ImageQuery {
            filter: TagFilter {
                ids: known.keys().cloned().collect(),
                ..Default::default()
            },
            owners: Vec::new(),
        });
    } else {
        let mut ids = Vec::new();
        for t in terms {
            if let Some(id) = &t.id {
                ids.push(id.clone());
            } else if let Some(name) = &t.ssm_parameter {
                if let Some(id) = ssm.get(cloud, now, name, CUSTOM_SSM_TTL, false).await?
                    && id.starts_with("ami-")
                {
                    ids.push(id);
                }
            } else {
                // A name alone would match every public image of that name: Karpenter limits it to the
                // account's own and Amazon's unless an owner is given.
                let owners = match (&t.owner, &t.name) {
                    (Some(o), _) => vec![o.clone()],
                    (None, Some(_)) => vec!["self".to_string(), "amazon".to_string()],
                    (None, None) => Vec::new(),
                };
                queries.push(ImageQuery {
                    filter: TagFilter {
                        tags: t.tags.clone(),
                        ids: Vec::new(),
                        names: t.name.iter().cloned().collect(),
                    },
                    owners,
                });
            }
        }
        if !ids.is_empty() {
            queries.push(ImageQuery {
                filter: TagFilter {
                    ids,
                    ..Default::default()
                },
                owners: Vec::new(),
            });
        }
    }
    let mut images = Vec::new();
    for q in queries {
        images.extend(cloud.describe_images(q).await?);
    }
    let amis = select(&images, &known, wall);
    let problem = amis
        .is_empty()
        .then(|| "spec.amiSelectorTerms did not match any image".to_string());
    Ok(Selection { amis, problem })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: &str, arch: &str, created: &str, deprecated: Option<&str>) -> Image {
        Image {
            id: id.into(),
            name: format!("name-{id}"),
            arch: arch.into(),
            creation_date: created.into(),
            deprecation_time: deprecated.map(String::from),
            ..Default::default()
        }
    }

    fn now() -> Timestamp {
        "2026-06-01T00:00:00Z".parse().unwrap_or_default()
    }

    fn type_labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_newest_image_per_architecture_wins() {
        let images = [
            image("ami-old", "x86_64", "2026-01-01T00:00:00Z", None),
            image("ami-new", "x86_64", "2026-03-01T00:00:00Z", None),
            image("ami-arm", "arm64", "2026-02-01T00:00:00Z", None),
            image("ami-mac", "x86_64_mac", "2026-05-01T00:00:00Z", None),
        ];
        let amis = select(&images, &BTreeMap::new(), now());
        let ids: Vec<&str> = amis.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(
            ids,
            ["ami-new", "ami-arm"],
            "newest first, mac images never"
        );
        let amd = type_labels(&[(labels::ARCH, "amd64")]);
        assert_eq!(
            for_instance_type(&amis, &amd).map(|a| a.id.as_str()),
            Some("ami-new")
        );
    }

    #[test]
    fn a_deprecated_image_is_used_only_when_nothing_else_matches() {
        let newer_but_deprecated = [
            image("ami-a", "x86_64", "2026-01-01T00:00:00Z", None),
            image(
                "ami-b",
                "x86_64",
                "2026-03-01T00:00:00Z",
                Some("2026-05-01T00:00:00Z"),
            ),
        ];
        let amis = select(&newer_but_deprecated, &BTreeMap::new(), now());
        assert_eq!(amis.len(), 1);
        assert_eq!((amis[0].id.as_str(), amis[0].deprecated), ("ami-a", false));
        let only_deprecated = [image(
            "ami-b",
            "x86_64",
            "2026-03-01T00:00:00Z",
            Some("2026-05-01T00:00:00Z"),
        )];
        let amis = select(&only_deprecated, &BTreeMap::new(), now());
        assert_eq!((amis[0].id.as_str(), amis[0].deprecated), ("ami-b", true));
        // Deprecation in the future does not count yet.
        let later = [image(
            "ami-c",
            "x86_64",
            "2026-03-01T00:00:00Z",
            Some("2027-01-01T00:00:00Z"),
        )];
        assert!(!select(&later, &BTreeMap::new(), now())[0].deprecated);
    }

    #[test]
    fn equal_dates_are_broken_by_name() {
        let mut a = image("ami-1", "x86_64", "2026-01-01T00:00:00Z", None);
        a.name = "a".into();
        let mut b = image("ami-2", "x86_64", "2026-01-01T00:00:00Z", None);
        b.name = "b".into();
        let amis = select(&[a, b], &BTreeMap::new(), now());
        assert_eq!(amis[0].id, "ami-2");
    }

    #[test]
    fn variants_go_to_the_instance_types_they_are_built_for() {
        let params = alias_parameters("al2023@latest", "1.33").unwrap_or_default();
        assert_eq!(
            params.len(),
            5,
            "x86 standard/nvidia/neuron, arm standard/nvidia"
        );
        assert!(params.iter().all(|p| p.mutable));
        assert_eq!(
            params[0].path,
            "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id"
        );
        let known: BTreeMap<String, Vec<Requirements>> = [
            ("ami-std".to_string(), params[0].requirements.clone()),
            ("ami-gpu".to_string(), params[1].requirements.clone()),
        ]
        .into();
        let images = [
            image("ami-std", "x86_64", "2026-01-01T00:00:00Z", None),
            image("ami-gpu", "x86_64", "2026-01-01T00:00:00Z", None),
        ];
        let amis = select(&images, &known, now());
        let plain = type_labels(&[(labels::ARCH, "amd64")]);
        let gpu = type_labels(&[(labels::ARCH, "amd64"), (labels::INSTANCE_GPU_COUNT, "1")]);
        let arm = type_labels(&[(labels::ARCH, "arm64")]);
        assert_eq!(
            for_instance_type(&amis, &plain).map(|a| a.id.as_str()),
            Some("ami-std")
        );
        assert_eq!(
            for_instance_type(&amis, &gpu).map(|a| a.id.as_str()),
            Some("ami-gpu")
        );
        assert_eq!(for_instance_type(&amis, &arm), None);
    }

    #[test]
    fn pinned_versions_name_their_release_and_never_change() {
        let p = alias_parameters("al2023@v20251201", "1.33").unwrap_or_default();
        assert_eq!(
            p[0].path,
            "/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/amazon-eks-node-al2023-x86_64-standard-1.33-v20251201/image_id"
        );
        assert!(p.iter().all(|p| !p.mutable));
        let br = alias_parameters("bottlerocket@v1.50.0", "1.33").unwrap_or_default();
        assert_eq!(
            br[0].path,
            "/aws/service/bottlerocket/aws-k8s-1.33/x86_64/1.50.0/image_id"
        );
        let al2 = alias_parameters("al2@latest", "1.32").unwrap_or_default();
        assert_eq!(
            al2[2].path,
            "/aws/service/eks/optimized-ami/1.32/amazon-linux-2-gpu/recommended/image_id"
        );
        assert_eq!(
            al2[2].requirements.len(),
            2,
            "the AL2 GPU image serves Neuron and NVIDIA"
        );
    }

    #[test]
    fn families_refuse_kubernetes_versions_aws_does_not_publish_for() {
        let al2 = alias_parameters("al2@latest", "1.33").unwrap_err();
        assert!(al2.contains("1.33") && al2.contains("al2023"), "{al2}");
        assert!(alias_parameters("al2@latest", "1.32").is_ok());
        let win = alias_parameters("windows2025@latest", "1.34").unwrap_err();
        assert!(win.contains("1.35"), "{win}");
        assert!(alias_parameters("windows2025@latest", "1.35").is_ok());
        let w = alias_parameters("windows2022@latest", "1.33").unwrap_or_default();
        let windows = type_labels(&[
            (labels::OS, "windows"),
            (labels::WINDOWS_BUILD, "10.0.20348"),
        ]);
        assert!(w[0].requirements[0].matches_labels(&windows));
        assert!(!w[0].requirements[0].matches_labels(&type_labels(&[(labels::OS, "linux")])));
    }
}
