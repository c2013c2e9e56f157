//! The public images AWS publishes for EKS nodes and the SSM parameters that name them: AL2023 (standard,
//! NVIDIA and Neuron variants), AL2 (to Kubernetes 1.32), Bottlerocket (and its NVIDIA flavour) and Windows
//! Server, for every Kubernetes version EKS supports, each family with a previous and a current release.

use std::collections::BTreeMap;

use dovetail::aws::cloud::Image;

/// The Kubernetes versions images are published for.
pub const KUBERNETES_VERSIONS: [&str; 6] = ["1.30", "1.31", "1.32", "1.33", "1.34", "1.35"];
/// The account that owns EKS-optimized images (shown with the owner alias `amazon`).
pub const EKS_ACCOUNT: &str = "602401143452";
/// The releases of each family present when the simulation starts: (release, creation date).
const AL_RELEASES: [(&str, &str); 2] = [
    ("v20251101", "2025-11-01T00:00:00Z"),
    ("v20251201", "2025-12-01T00:00:00Z"),
];
const BOTTLEROCKET_RELEASES: [(&str, &str); 2] = [
    ("1.49.0", "2025-11-04T00:00:00Z"),
    ("1.50.0", "2025-12-02T00:00:00Z"),
];
const WINDOWS_RELEASE: (&str, &str) = ("2025.12.10", "2025-12-10T00:00:00Z");

/// What AWS has published: images, and SSM parameter name -> image id.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub images: Vec<Image>,
    pub parameters: BTreeMap<String, String>,
}

/// An image id derived from its name: the same in every run and every seed, as a published AMI's is.
pub fn id_for(name: &str) -> String {
    // FNV-1a, 64 bits.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("ami-{:017x}", h >> 4)
}

/// EC2 sets a public image's deprecation two years after its creation.
fn two_years_after(created: &str) -> Option<String> {
    let year: i32 = created.get(..4)?.parse().ok()?;
    Some(format!("{}{}", year + 2, created.get(4..)?))
}

impl Published {
    fn publish(
        &mut self,
        name: String,
        arch: &str,
        created: &str,
        parameters: &[String],
    ) -> String {
        let id = id_for(&name);
        self.images.push(Image {
            id: id.clone(),
            name,
            arch: arch.to_string(),
            creation_date: created.to_string(),
            deprecation_time: two_years_after(created),
            owner_id: EKS_ACCOUNT.to_string(),
            owner_alias: Some("amazon".to_string()),
            tags: BTreeMap::new(),
        });
        for p in parameters {
            self.parameters.insert(p.clone(), id.clone());
        }
        id
    }

    /// One AL2023 release of a variant: its image, its pinned parameter, and `recommended` pointing to it.
    pub fn al2023(
        &mut self,
        k8s: &str,
        arch: &str,
        variant: &str,
        release: &str,
        created: &str,
    ) -> String {
        let name = format!("amazon-eks-node-al2023-{arch}-{variant}-{k8s}-{release}");
        let base =
            format!("/aws/service/eks/optimized-ami/{k8s}/amazon-linux-2023/{arch}/{variant}");
        let params = [
            format!("{base}/{name}/image_id"),
            format!("{base}/recommended/image_id"),
        ];
        self.publish(name, arch, created, &params)
    }

    fn al2(&mut self, k8s: &str, flavour: &str, release: &str, created: &str) {
        let (prefix, path, arch) = match flavour {
            "arm64" => ("amazon-eks-arm64-node", "amazon-linux-2-arm64", "arm64"),
            "gpu" => ("amazon-eks-gpu-node", "amazon-linux-2-gpu", "x86_64"),
            _ => ("amazon-eks-node", "amazon-linux-2", "x86_64"),
        };
        let name = format!("{prefix}-{k8s}-{release}");
        let base = format!("/aws/service/eks/optimized-ami/{k8s}/{path}");
        let params = [
            format!("{base}/{name}/image_id"),
            format!("{base}/recommended/image_id"),
        ];
        self.publish(name, arch, created, &params);
    }

    fn bottlerocket(&mut self, k8s: &str, nvidia: bool, arch: &str, release: &str, created: &str) {
        let flavour = if nvidia { "-nvidia" } else { "" };
        let name = format!("bottlerocket-aws-k8s-{k8s}{flavour}-{arch}-v{release}");
        let base = format!("/aws/service/bottlerocket/aws-k8s-{k8s}{flavour}/{arch}");
        let params = [
            format!("{base}/{release}/image_id"),
            format!("{base}/latest/image_id"),
        ];
        self.publish(name, arch, created, &params);
    }

    fn windows(&mut self, k8s: &str, year: &str) {
        let (release, created) = WINDOWS_RELEASE;
        let name = format!("Windows_Server-{year}-English-Core-EKS_Optimized-{k8s}-{release}");
        let params = [format!(
            "/aws/service/ami-windows-latest/Windows_Server-{year}-English-Core-EKS_Optimized-{k8s}/image_id"
        )];
        self.publish(name, "x86_64", created, &params);
    }

    /// Everything published before the simulation starts (2026-01-01), oldest release first so that the
    /// `recommended` / `latest` parameters end on the current one.
    pub fn eks() -> Published {
        let mut p = Published::default();
        for k8s in KUBERNETES_VERSIONS {
            let minor: u32 = k8s[2..].parse().unwrap_or(0);
            for (release, created) in AL_RELEASES {
                for (arch, variants) in [
                    ("x86_64", &["standard", "nvidia", "neuron"][..]),
                    ("arm64", &["standard", "nvidia"][..]),
                ] {
                    for variant in variants {
                        p.al2023(k8s, arch, variant, release, created);
                    }
                }
                // AWS stopped publishing AL2 images with Kubernetes 1.33.
                if minor <= 32 {
                    for flavour in ["x86_64", "arm64", "gpu"] {
                        p.al2(k8s, flavour, release, created);
                    }
                }
            }
            for (release, created) in BOTTLEROCKET_RELEASES {
                for (nvidia, arch) in [
                    (false, "x86_64"),
                    (false, "arm64"),
                    (true, "x86_64"),
                    (true, "arm64"),
                ] {
                    p.bottlerocket(k8s, nvidia, arch, release, created);
                }
            }
            for year in ["2019", "2022"] {
                p.windows(k8s, year);
            }
            if minor >= 35 {
                p.windows(k8s, "2025");
            }
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommended_names_the_current_release() {
        let p = Published::eks();
        let rec = &p.parameters["/aws/service/eks/optimized-ami/1.33/amazon-linux-2023/x86_64/standard/recommended/image_id"];
        let image = p
            .images
            .iter()
            .find(|i| &i.id == rec)
            .map(|i| i.name.as_str());
        assert_eq!(
            image,
            Some("amazon-eks-node-al2023-x86_64-standard-1.33-v20251201")
        );
        assert!(
            !p.parameters.contains_key(
                "/aws/service/eks/optimized-ami/1.33/amazon-linux-2/recommended/image_id"
            ),
            "no AL2 from 1.33"
        );
        let ids: std::collections::BTreeSet<&str> =
            p.images.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids.len(), p.images.len(), "ids are unique");
    }
}
