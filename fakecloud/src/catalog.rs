//! The built-in instance catalog: 114 real EC2 types (data/ec2-instance-types.csv), and what a kubelet on
//! each would report as capacity and allocatable.

use std::collections::BTreeMap;

const CSV: &str = include_str!("../../data/ec2-instance-types.csv");

/// One row of the catalog.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogEntry {
    pub name: String,
    pub family: String,
    pub category: String,
    pub generation: u32,
    pub size: String,
    pub arch: String,
    pub vcpu: u32,
    pub memory_mib: u64,
    pub hypervisor: String,
    pub max_enis: u32,
    pub ipv4_per_eni: u32,
    pub branch_enis: u32,
    pub gpu_count: u32,
    pub gpu_name: String,
    pub gpu_memory_mib: u64,
    pub network_bandwidth_mbps: u64,
    pub on_demand_price: f64,
}

/// Families whose EBS limit is dedicated (not shared with network interfaces), by size (AWS's
/// "Amazon EBS volume limits for Amazon EC2 instances").
const DEDICATED_EBS_FAMILIES: [&str; 7] = ["m7i", "m7a", "c7i", "c7a", "r7a", "r7i", "r7iz"];

impl CatalogEntry {
    /// DescribeInstanceTypes' EbsInfo: (MaximumEbsAttachments, dedicated?). Nitro types share 28
    /// attachment slots with ENIs and instance-store disks (bare metal 31), Xen types attach 39; the
    /// seventh-generation Intel and AMD families have a limit of their own, growing with size.
    pub fn ebs_attachments(&self) -> (u32, bool) {
        if DEDICATED_EBS_FAMILIES.contains(&self.family.as_str()) {
            let limit = match self.size.as_str() {
                "16xlarge" => 48,
                "24xlarge" => 64,
                "32xlarge" => 88,
                "48xlarge" => 128,
                s if s.starts_with("metal") => 31,
                _ => 32,
            };
            return (limit, true);
        }
        match (self.hypervisor.as_str(), self.size.as_str()) {
            ("xen", _) => (39, false),
            (_, "metal") => (31, false),
            _ => (28, false),
        }
    }

    /// NVMe instance-store disks (InstanceStorageInfo): one on every g4dn and g5 size in the catalog.
    pub fn nvme_disks(&self) -> u32 {
        u32::from(matches!(self.family.as_str(), "g4dn" | "g5"))
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("data/ec2-instance-types.csv line {line}: column `{column}`: {message}")]
pub struct CatalogError {
    pub line: usize,
    pub column: &'static str,
    pub message: String,
}

/// All instance types, by name.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub types: BTreeMap<String, CatalogEntry>,
}

fn field<T: std::str::FromStr>(
    cols: &[&str],
    idx: usize,
    line: usize,
    column: &'static str,
) -> Result<T, CatalogError> {
    let raw = cols.get(idx).copied().unwrap_or("");
    raw.parse().map_err(|_| CatalogError {
        line,
        column,
        message: format!("cannot parse `{raw}`"),
    })
}

fn optional<T: std::str::FromStr + Default>(
    cols: &[&str],
    idx: usize,
    line: usize,
    column: &'static str,
) -> Result<T, CatalogError> {
    if cols.get(idx).is_none_or(|s| s.is_empty()) {
        Ok(T::default())
    } else {
        field(cols, idx, line, column)
    }
}

impl Catalog {
    /// The catalog shipped with Dovetail.
    pub fn builtin() -> Catalog {
        Catalog::parse(CSV).expect("the shipped catalog parses; a unit test guards it")
    }

    pub fn parse(csv: &str) -> Result<Catalog, CatalogError> {
        let mut types = BTreeMap::new();
        for (i, row) in csv.lines().enumerate().skip(1) {
            let line = i + 1;
            if row.trim().is_empty() {
                continue;
            }
            let c: Vec<&str> = row.split(',').collect();
            let e = CatalogEntry {
                name: field(&c, 0, line, "name")?,
                family: field(&c, 1, line, "family")?,
                category: field(&c, 2, line, "category")?,
                generation: field(&c, 3, line, "generation")?,
                size: field(&c, 4, line, "size")?,
                arch: field(&c, 5, line, "arch")?,
                vcpu: field(&c, 6, line, "vcpu")?,
                memory_mib: field(&c, 7, line, "memory_mib")?,
                hypervisor: optional(&c, 8, line, "hypervisor")?,
                max_enis: field(&c, 9, line, "max_enis")?,
                ipv4_per_eni: field(&c, 10, line, "ipv4_per_eni")?,
                branch_enis: field(&c, 11, line, "branch_enis")?,
                gpu_count: optional(&c, 12, line, "gpu_count")?,
                gpu_name: optional(&c, 13, line, "gpu_name")?,
                gpu_memory_mib: optional(&c, 14, line, "gpu_memory_mib")?,
                network_bandwidth_mbps: field(&c, 15, line, "network_bandwidth_mbps")?,
                on_demand_price: field(&c, 16, line, "od_price_usd_per_hour_us_east_1")?,
            };
            types.insert(e.name.clone(), e);
        }
        Ok(Catalog { types })
    }
}

impl Catalog {
    /// The catalog as DescribeInstanceTypes answers it.
    pub fn describe_instance_types(&self) -> Vec<dovetail::aws::cloud::InstanceTypeInfo> {
        use dovetail::aws::cloud::CapacityType;
        self.types
            .values()
            .map(|e| dovetail::aws::cloud::InstanceTypeInfo {
                name: e.name.clone(),
                arch: e.arch.clone(),
                vcpu: e.vcpu,
                memory_mib: e.memory_mib,
                hypervisor: e.hypervisor.clone(),
                max_enis: e.max_enis,
                ipv4_per_eni: e.ipv4_per_eni,
                gpu_count: e.gpu_count,
                gpu_name: e.gpu_name.clone(),
                supported_usage_classes: vec![CapacityType::OnDemand, CapacityType::Spot],
                branch_interfaces: e.branch_enis,
                ebs_attachments: Some(dovetail::aws::cloud::EbsAttachments {
                    maximum: e.ebs_attachments().0,
                    dedicated: e.ebs_attachments().1,
                }),
                instance_store_disks: e.nvme_disks(),
            })
            .collect()
    }
}

/// What the kubelet of a node of this type reports with no kubelet settings in its user data.
pub fn kubelet_resources(e: &CatalogEntry) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    crate::kubelet::resources(e, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_catalog_parses_completely() {
        let c = Catalog::parse(CSV).unwrap();
        assert_eq!(c.types.len(), 114);
        let m5 = &c.types["m5.large"];
        assert_eq!(
            (m5.vcpu, m5.memory_mib, m5.max_enis, m5.ipv4_per_eni),
            (2, 8192, 3, 10)
        );
    }

    #[test]
    fn a_broken_row_names_line_and_column() {
        let err = Catalog::parse(
            "header\nm5.large,m5,m,5,large,amd64,two,8192,nitro,3,10,9,,,,750,0.096\n",
        )
        .unwrap_err();
        assert_eq!((err.line, err.column), (2, "vcpu"));
    }
}
