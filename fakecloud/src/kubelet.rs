//! What the kubelet of an instance reports as capacity and allocatable: from its type (the catalog) and its
//! user data, read as each image family reads it — nodeadm an AL2023 node's `NodeConfig`, AL2's
//! `bootstrap.sh` its `--kubelet-extra-args`, Bottlerocket its TOML `settings.kubernetes` — for `maxPods`,
//! `podsPerCore` (not on Bottlerocket), `kubeReserved`, `systemReserved`, `evictionHard`.
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

/// How a node's OS reads its kubelet settings (and sizes its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Os {
    /// AL2023 (nodeadm) and AL2 (bootstrap.sh): kube-reserved memory from the ENI-limited pod count.
    AmazonLinux,
    /// Bottlerocket: kube-reserved memory from max pods; no pods-per-core.
    Bottlerocket,
}

/// The kubelet configuration in user data, as camelCase keys (`maxPods`, `kubeReserved`, ...), and how the
/// node reads it.
fn kubelet_config(user_data: &str) -> (Os, serde_json::Map<String, Value>) {
    if user_data.contains("[settings.kubernetes") {
        return (Os::Bottlerocket, bottlerocket_config(user_data));
    }
    let mut config = serde_json::Map::new();
    let mut parts: Vec<(String, &str)> = Vec::new();
    if let Some(boundary) = user_data
        .lines()
        .find_map(|l| l.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    {
        for part in user_data.split(&format!("--{boundary}")) {
            if let Some((headers, body)) = part.split_once("\n\n") {
                parts.push((headers.to_string(), body));
            }
        }
    } else {
        parts.push((String::new(), user_data));
    }
    for (headers, body) in parts {
        if headers.contains("application/node.eks.aws") || body.contains("kind: NodeConfig") {
            let parsed: Value = serde_saphyr::from_str(body).unwrap_or(Value::Null);
            if let Some(c) = parsed
                .pointer("/spec/kubelet/config")
                .and_then(Value::as_object)
            {
                for (k, v) in c {
                    config.insert(k.clone(), v.clone());
                }
            }
        } else if body.contains("/etc/eks/bootstrap.sh") {
            for (k, v) in bootstrap_flags(body) {
                config.insert(k, v);
            }
        }
    }
    (Os::AmazonLinux, config)
}

/// The kubelet flags in a `bootstrap.sh ... --kubelet-extra-args '...'` line, as config keys.
fn bootstrap_flags(script: &str) -> Vec<(String, Value)> {
    let Some(args) = script
        .split("--kubelet-extra-args '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
    else {
        return Vec::new();
    };
    let map = |v: &str, sep: char| -> Value {
        let m: serde_json::Map<String, Value> = v
            .trim_matches('"')
            .split(',')
            .filter_map(|kv| kv.split_once(sep))
            .map(|(k, v)| (k.to_string(), Value::from(v)))
            .collect();
        Value::Object(m)
    };
    let mut out = Vec::new();
    for flag in args.split_whitespace() {
        let Some((name, v)) = flag.trim_start_matches("--").split_once('=') else {
            continue;
        };
        match name {
            "max-pods" => out.push((
                "maxPods".into(),
                v.parse::<u64>().map_or(Value::Null, Value::from),
            )),
            "pods-per-core" => out.push((
                "podsPerCore".into(),
                v.parse::<u64>().map_or(Value::Null, Value::from),
            )),
            "kube-reserved" => out.push(("kubeReserved".into(), map(v, '='))),
            "system-reserved" => out.push(("systemReserved".into(), map(v, '='))),
            "eviction-hard" => out.push(("evictionHard".into(), map(v, '<'))),
            _ => {}
        }
    }
    out
}

/// Bottlerocket's `settings.kubernetes` table, as config keys.
fn bottlerocket_config(user_data: &str) -> serde_json::Map<String, Value> {
    let mut config = serde_json::Map::new();
    let Ok(doc) = user_data.parse::<toml_edit::DocumentMut>() else {
        return config;
    };
    let Some(k8s) = doc
        .get("settings")
        .and_then(|s| s.get("kubernetes"))
        .and_then(|k| k.as_table_like())
    else {
        return config;
    };
    if let Some(n) = k8s.get("max-pods").and_then(|v| v.as_integer()) {
        config.insert("maxPods".into(), Value::from(n));
    }
    for (key, name) in [
        ("kube-reserved", "kubeReserved"),
        ("system-reserved", "systemReserved"),
        ("eviction-hard", "evictionHard"),
    ] {
        if let Some(t) = k8s.get(key).and_then(|v| v.as_table_like()) {
            let m: serde_json::Map<String, Value> = t
                .iter()
                .filter_map(|(k, v)| Some((k.to_string(), Value::from(v.as_str()?))))
                .collect();
            config.insert(name.into(), Value::Object(m));
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

/// The attachment count the EBS CSI node plugin publishes in the node's CSINode: it reads the instance
/// type from instance metadata and, unless the type's limit is dedicated, gives up a slot for each
/// attached network interface (one at boot) and NVMe instance-store disk; the root volume always takes one.
pub fn csi_ebs_volume_limit(e: &CatalogEntry) -> u32 {
    let (limit, dedicated) = e.ebs_attachments();
    let nitro = e.hypervisor != "xen";
    let shared_slots = if dedicated || !nitro {
        0
    } else {
        let interfaces_at_boot = 1;
        interfaces_at_boot + e.nvme_disks()
    };
    let ceiling = if nitro && !dedicated {
        limit.min(28)
    } else {
        limit
    };
    let root_volume = 1;
    ceiling.saturating_sub(shared_slots + root_volume)
}

/// (capacity, allocatable) as Kubernetes quantities for an instance of this type booted with `user_data`.
pub fn resources(
    e: &CatalogEntry,
    user_data: &str,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let (os, config) = kubelet_config(user_data);
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
    if let Some(per_core) = int("podsPerCore").filter(|p| *p > 0 && os == Os::AmazonLinux) {
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
    // Amazon Linux reserves by the pods the ENIs can address; Bottlerocket by the pods it will run.
    let reserved_for = match os {
        Os::AmazonLinux => eni_pods,
        Os::Bottlerocket => max_pods,
    };
    let memory_reserved = reserve("memory", (255 + 11 * reserved_for) * MIB, bytes);
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

    #[test]
    fn al2_and_bottlerocket_nodes_read_their_own_formats() {
        let c = Catalog::builtin();
        let m5 = &c.types["m5.large"];
        let al2 = "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"//\"\n\n--//\nContent-Type: text/x-shellscript; charset=\"us-ascii\"\n\n#!/bin/bash -xe\n/etc/eks/bootstrap.sh 'prod' --apiserver-endpoint 'https://x' \\\n--use-max-pods false \\\n--kubelet-extra-args '--max-pods=20 --system-reserved=cpu=100m,memory=100Mi --eviction-hard=\"memory.available<5%\"'\n--//--\n";
        let (_, a) = resources(m5, al2);
        assert_eq!(a["pods"], "20");
        assert_eq!(a["cpu"], "1830m");
        let memory = 7577u64 * MIB;
        let expected =
            memory - (255 + 11 * 29) * MIB - 100 * MIB - (memory as f64 * 0.05).ceil() as u64;
        assert_eq!(a["memory"], format!("{}Ki", expected / 1024));

        let toml = "[settings.kubernetes]\ncluster-name = 'prod'\nmax-pods = 20\n[settings.kubernetes.kube-reserved]\ncpu = '200m'\n";
        let (_, a) = resources(m5, toml);
        assert_eq!(a["pods"], "20");
        assert_eq!(a["cpu"], "1800m");
        // Bottlerocket keeps memory by the pods it runs: 11 MiB x 20 + 255.
        assert_eq!(
            a["memory"],
            format!("{}Ki", (7577 - (255 + 11 * 20) - 100) * 1024)
        );
        // Max pods beyond the ENI limit are taken as given.
        let (_, a) = resources(m5, "[settings.kubernetes]\nmax-pods = 110\n");
        assert_eq!(a["pods"], "110");
    }
}
