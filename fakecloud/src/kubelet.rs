//! What the kubelet of an instance reports as capacity and allocatable: from its type (the catalog) and its
//! user data, read as nodeadm reads an AL2023 node's `NodeConfig` (`maxPods`, `podsPerCore`, `kubeReserved`,
//! `systemReserved`, `evictionHard`).
//!
//! Written from the node's point of view and independently of the controller's estimate, so that a
//! difference between the two shows up in simulation as it would in a real cluster. Where the kubelet and
//! Karpenter's estimate differ (an `evictionHard` map without `nodefs.available` leaves that threshold unset
//! on a real kubelet, while Karpenter keeps 10%), the kubelet's behaviour is what is modelled here.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::catalog::CatalogEntry;

const MIB: u64 = 1024 * 1024;
const ROOT_VOLUME: u64 = 20 * 1024 * MIB;

/// The kubelet configuration in user data: the `NodeConfig` parts of a MIME multi-part document (or the
/// document itself when it is a NodeConfig), later parts overriding earlier ones key by key.
fn kubelet_config(user_data: &str) -> serde_json::Map<String, Value> {
    let mut docs: Vec<&str> = Vec::new();
    if let Some(boundary) = user_data
        .lines()
        .find_map(|l| l.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    {
        for part in user_data.split(&format!("--{boundary}")) {
            let Some((headers, body)) = part.split_once("\n\n") else {
                continue;
            };
            if headers.contains("application/node.eks.aws") {
                docs.push(body);
            }
        }
    } else if user_data.contains("kind: NodeConfig") {
        docs.push(user_data);
    }
    let mut config = serde_json::Map::new();
    for doc in docs {
        let parsed: Value = serde_saphyr::from_str(doc).unwrap_or(Value::Null);
        if let Some(c) = parsed
            .pointer("/spec/kubelet/config")
            .and_then(Value::as_object)
        {
            for (k, v) in c {
                config.insert(k.clone(), v.clone());
            }
        }
    }
    config
}

/// Bytes (or millicores, for cpu) of a quantity; `None` if it does not read as one.
fn bytes(q: &str) -> Option<u64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let n: f64 = num.parse().ok()?;
    let factor: f64 = match unit {
        "" => 1.0,
        "m" => 0.001,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024f64.powi(4),
        _ => return None,
    };
    Some((n * factor).ceil() as u64)
}

fn millicores(q: &str) -> Option<u64> {
    match q.trim().strip_suffix('m') {
        Some(m) => m.parse().ok(),
        None => q
            .trim()
            .parse::<f64>()
            .ok()
            .map(|c| (c * 1000.0).round() as u64),
    }
}

/// A threshold against `capacity`: `5%` of it, or a quantity.
fn threshold(capacity: u64, v: &str) -> u64 {
    match v.trim().strip_suffix('%') {
        Some(p) => {
            let pct: f64 = p.parse().unwrap_or(0.0);
            if pct >= 100.0 {
                0
            } else {
                (capacity as f64 * pct / 100.0).ceil() as u64
            }
        }
        None => bytes(v).unwrap_or(0),
    }
}

/// (capacity, allocatable) as Kubernetes quantities for an instance of this type booted with `user_data`.
pub fn resources(
    e: &CatalogEntry,
    user_data: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let config = kubelet_config(user_data);
    let int = |k: &str| config.get(k).and_then(Value::as_u64);
    let map = |k: &str| -> BTreeMap<String, String> {
        config
            .get(k)
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str().map_or_else(|| v.to_string(), str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    // nodeadm's default max pods: what the VPC CNI can address.
    let eni_pods = u64::from(e.max_enis) * u64::from(e.ipv4_per_eni.saturating_sub(1)) + 2;
    let mut max_pods = int("maxPods").unwrap_or(eni_pods);
    if let Some(per_core) = int("podsPerCore").filter(|p| *p > 0) {
        max_pods = max_pods.min(per_core * u64::from(e.vcpu));
    }
    let usable_mib = if e.arch == "arm64" {
        e.memory_mib - 64
    } else {
        e.memory_mib
    };
    // The hypervisor keeps 7.5% of memory, rounded up to a whole MiB.
    let memory = (usable_mib - (usable_mib * 75).div_ceil(1000)) * MIB;

    // nodeadm's kube-reserved unless the config sets it: cpu by cores, 11 MiB per (ENI-limited) pod plus
    // 255 MiB, 1 GiB of disk.
    let mut reserved_cpu_m = 0u64;
    for core in 1..=u64::from(e.vcpu) {
        // Per-core reservation in hundredths of a millicore: 60 m, 10 m, 5 m, 5 m, then 2.5 m per core.
        reserved_cpu_m += match core {
            1 => 6000,
            2 => 1000,
            3 | 4 => 500,
            _ => 250,
        };
    }
    let kube = map("kubeReserved");
    let system = map("systemReserved");
    let reserve = |name: &str, default: u64, read: fn(&str) -> Option<u64>| {
        kube.get(name).and_then(|v| read(v)).unwrap_or(default)
            + system.get(name).and_then(|v| read(v)).unwrap_or(0)
    };
    let cpu_reserved = reserve("cpu", reserved_cpu_m / 100, millicores);
    let memory_reserved = reserve("memory", (255 + 11 * eni_pods) * MIB, bytes);
    let storage_reserved = reserve("ephemeral-storage", 1024 * MIB, bytes);
    // Hard eviction: the kubelet's defaults, or exactly the signals the config gives (a signal left out of
    // a given map is not enforced).
    let hard = map("evictionHard");
    let (memory_evict, storage_evict) = if hard.is_empty() {
        (100 * MIB, threshold(ROOT_VOLUME, "10%"))
    } else {
        (
            hard.get("memory.available")
                .map_or(0, |v| threshold(memory, v)),
            hard.get("nodefs.available")
                .map_or(0, |v| threshold(ROOT_VOLUME, v)),
        )
    };

    let mib = |b: u64| format!("{}Mi", b / MIB);
    let mut capacity = BTreeMap::new();
    capacity.insert("cpu".to_string(), e.vcpu.to_string());
    capacity.insert("memory".to_string(), mib(memory));
    capacity.insert("pods".to_string(), max_pods.to_string());
    capacity.insert("ephemeral-storage".to_string(), mib(ROOT_VOLUME));
    let mut allocatable = BTreeMap::new();
    allocatable.insert(
        "cpu".to_string(),
        format!(
            "{}m",
            (u64::from(e.vcpu) * 1000).saturating_sub(cpu_reserved)
        ),
    );
    // Memory and disk are reported in whole Ki, rounded down, as the kubelet does.
    let ki = |b: u64| format!("{}Ki", b / 1024);
    allocatable.insert(
        "memory".to_string(),
        ki(memory.saturating_sub(memory_reserved + memory_evict)),
    );
    allocatable.insert("pods".to_string(), max_pods.to_string());
    allocatable.insert(
        "ephemeral-storage".to_string(),
        ki(ROOT_VOLUME.saturating_sub(storage_reserved + storage_evict)),
    );
    for (name, count) in [
        ("nvidia.com/gpu", e.gpu_count),
        // The VPC resource controller advertises branch interfaces on trunking-capable nodes.
        ("vpc.amazonaws.com/pod-eni", e.branch_enis),
    ] {
        if count > 0 {
            capacity.insert(name.to_string(), count.to_string());
            allocatable.insert(name.to_string(), count.to_string());
        }
    }
    (capacity, allocatable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn node_config(config: &str) -> String {
        format!(
            "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"//\"\n\n--//\nContent-Type: application/node.eks.aws\n\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    config:\n{config}\n--//\nContent-Type: text/x-shellscript\n\necho hi\n--//--\n"
        )
    }

    #[test]
    fn without_settings_the_published_figures() {
        let c = Catalog::builtin();
        let (_, a) = resources(&c.types["m5.large"], "");
        assert_eq!(a["cpu"], "1930m");
        assert_eq!(a["memory"], format!("{}Ki", 6903 * 1024));
        assert_eq!(a["pods"], "29");
        assert_eq!(a["ephemeral-storage"], format!("{}Ki", 17 * 1024 * 1024));
        assert_eq!(a["vpc.amazonaws.com/pod-eni"], "9");
        assert_eq!(resources(&c.types["c5.xlarge"], "").1["pods"], "58");
        let (_, t3) = resources(&c.types["t3.medium"], "");
        assert_eq!(t3["pods"], "17");
        assert!(!t3.contains_key("vpc.amazonaws.com/pod-eni"));
    }

    #[test]
    fn node_config_settings_change_what_the_kubelet_reports() {
        let c = Catalog::builtin();
        let m5 = &c.types["m5.large"];
        let (_, a) = resources(
            m5,
            &node_config("      maxPods: 110\n      podsPerCore: 20"),
        );
        assert_eq!(a["pods"], "40");
        let (_, a) = resources(
            m5,
            &node_config(
                "      kubeReserved: {cpu: 500m, memory: 1Gi}\n      systemReserved: {cpu: 100m}",
            ),
        );
        assert_eq!(a["cpu"], "1400m");
        assert_eq!(a["memory"], format!("{}Ki", (6903 + 574 - 1024) * 1024));
        let (_, a) = resources(
            m5,
            &node_config("      evictionHard: {memory.available: 10%}"),
        );
        // 10% of the 7577 MiB the hypervisor leaves, and no nodefs threshold (none given).
        let memory = 7577u64 * MIB;
        let expected = memory - (255 + 11 * 29) * MIB - (memory as f64 * 0.1).ceil() as u64;
        assert_eq!(a["memory"], format!("{}Ki", expected / 1024));
        assert_eq!(a["ephemeral-storage"], format!("{}Ki", 19 * 1024 * 1024));
    }
}
