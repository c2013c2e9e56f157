//! What a node boots with, per image family, as Karpenter writes it: AL2023 a nodeadm `NodeConfig` (MIME
//! part before the class's own `userData`), AL2 a `bootstrap.sh` call with the kubelet settings as
//! flags (after the class's own part), Bottlerocket the class's TOML with `settings.kubernetes` merged in,
//! Windows a `Start-EKSBootstrap.ps1` call. `Custom` gets the class's `userData` alone.

use std::collections::BTreeMap;

use crate::crds::EC2NodeClass;
use crate::crds::ec2nodeclass::KubeletConfiguration;

/// What a node must know of its cluster to join it; unknown parts are left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cluster {
    pub name: String,
    pub endpoint: Option<String>,
    /// The cluster's CA bundle, base64 PEM.
    pub ca_bundle: Option<String>,
    /// The service CIDR (nodeadm's `cidr`).
    pub cidr: Option<String>,
}

impl Cluster {
    /// What the settings tell nodes of their cluster.
    pub fn of(settings: &crate::context::Settings) -> Cluster {
        Cluster {
            name: settings.cluster_name.clone(),
            endpoint: settings.cluster_endpoint.clone(),
            ca_bundle: settings.cluster_ca_bundle.clone(),
            cidr: settings.cluster_cidr.clone(),
        }
    }
}

/// The boundary of Karpenter's MIME multi-part user data.
const BOUNDARY: &str = "//";

fn mime(parts: &[(&str, String)]) -> String {
    let mut out =
        format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{BOUNDARY}\"\n");
    for (kind, body) in parts {
        out.push_str(&format!("\n--{BOUNDARY}\nContent-Type: {kind}\n\n{body}"));
        if !body.ends_with('\n') {
            out.push('\n');
        }
    }
    out.push_str(&format!("--{BOUNDARY}--\n"));
    out
}

const SHELL: &str = "text/x-shellscript; charset=\"us-ascii\"";
const NODEADM: &str = "application/node.eks.aws";

/// A map as `k=v,k=v` (kubelet flag form), in key order.
fn pairs(map: &BTreeMap<String, String>, sep: &str) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}{sep}{v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The kubelet flags AL2's bootstrap passes on (`--kubelet-extra-args`) and Windows' takes.
fn kubelet_flags(k: &KubeletConfiguration) -> Vec<String> {
    let mut flags = Vec::new();
    if let Some(n) = k.max_pods {
        flags.push(format!("--max-pods={n}"));
    }
    if let Some(n) = k.pods_per_core {
        flags.push(format!("--pods-per-core={n}"));
    }
    if !k.system_reserved.is_empty() {
        flags.push(format!(
            "--system-reserved={}",
            pairs(&k.system_reserved, "=")
        ));
    }
    if !k.kube_reserved.is_empty() {
        flags.push(format!("--kube-reserved={}", pairs(&k.kube_reserved, "=")));
    }
    if !k.eviction_hard.is_empty() {
        flags.push(format!(
            "--eviction-hard=\"{}\"",
            pairs(&k.eviction_hard, "<")
        ));
    }
    if !k.eviction_soft.is_empty() {
        flags.push(format!(
            "--eviction-soft=\"{}\"",
            pairs(&k.eviction_soft, "<")
        ));
    }
    if !k.eviction_soft_grace_period.is_empty() {
        flags.push(format!(
            "--eviction-soft-grace-period=\"{}\"",
            pairs(&k.eviction_soft_grace_period, "=")
        ));
    }
    if let Some(n) = k.eviction_max_pod_grace_period {
        flags.push(format!("--eviction-max-pod-grace-period={n}"));
    }
    if let Some(n) = k.image_gc_high_threshold_percent {
        flags.push(format!("--image-gc-high-threshold={n}"));
    }
    if let Some(n) = k.image_gc_low_threshold_percent {
        flags.push(format!("--image-gc-low-threshold={n}"));
    }
    if let Some(b) = k.cpu_cfs_quota {
        flags.push(format!("--cpu-cfs-quota={b}"));
    }
    flags
}

fn al2023(class: &EC2NodeClass, cluster: &Cluster, own: &str) -> String {
    let mut spec = serde_json::Map::new();
    let mut c = serde_json::Map::new();
    c.insert("name".into(), cluster.name.clone().into());
    if let Some(e) = &cluster.endpoint {
        c.insert("apiServerEndpoint".into(), e.clone().into());
    }
    if let Some(ca) = &cluster.ca_bundle {
        c.insert("certificateAuthority".into(), ca.clone().into());
    }
    if let Some(cidr) = &cluster.cidr {
        c.insert("cidr".into(), cidr.clone().into());
    }
    spec.insert("cluster".into(), c.into());
    if let Some(k) = &class.spec.kubelet {
        spec.insert("kubelet".into(), serde_json::json!({ "config": k }));
    }
    let config = serde_json::json!({
        "apiVersion": "node.eks.aws/v1alpha1",
        "kind": "NodeConfig",
        "spec": spec,
    });
    let mut parts = vec![(
        NODEADM,
        serde_saphyr::to_string(&config).unwrap_or_default(),
    )];
    if !own.trim().is_empty() {
        let kind = if own.trim_start().starts_with("apiVersion: node.eks.aws") {
            NODEADM
        } else {
            SHELL
        };
        parts.push((kind, own.to_string()));
    }
    mime(&parts)
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn al2(class: &EC2NodeClass, cluster: &Cluster, own: &str) -> String {
    let mut script = String::from(
        "#!/bin/bash -xe\nexec > >(tee /var/log/user-data.log|logger -t user-data -s 2>/dev/console) 2>&1\n",
    );
    script.push_str(&format!("/etc/eks/bootstrap.sh {}", quote(&cluster.name)));
    if let Some(e) = &cluster.endpoint {
        script.push_str(&format!(" --apiserver-endpoint {}", quote(e)));
    }
    if let Some(ca) = &cluster.ca_bundle {
        script.push_str(&format!(" --b64-cluster-ca {}", quote(ca)));
    }
    let kubelet = class.spec.kubelet.clone().unwrap_or_default();
    if let Some(dns) = kubelet.cluster_dns.first() {
        script.push_str(&format!(" \\\n--dns-cluster-ip {}", quote(dns)));
    }
    let flags = kubelet_flags(&kubelet);
    if kubelet.max_pods.is_some() {
        // The bootstrap's own max pods would override the flag.
        script.push_str(" \\\n--use-max-pods false");
    }
    if !flags.is_empty() {
        script.push_str(&format!(
            " \\\n--kubelet-extra-args {}",
            quote(&flags.join(" "))
        ));
    }
    script.push('\n');
    let mut parts = Vec::new();
    if !own.trim().is_empty() {
        parts.push((SHELL, own.to_string()));
    }
    parts.push((SHELL, script));
    mime(&parts)
}

fn bottlerocket(class: &EC2NodeClass, cluster: &Cluster, own: &str) -> String {
    use toml_edit::{DocumentMut, Item, Table, value};
    // The class's TOML is the base; Karpenter's `settings.kubernetes` keys win. A class whose TOML does
    // not parse is refused by validation before it gets here; this keeps the settings regardless.
    let mut doc: DocumentMut = own.parse().unwrap_or_default();
    let settings = doc.entry("settings").or_insert(Item::Table(Table::new()));
    let Some(settings) = settings.as_table_mut() else {
        return doc.to_string();
    };
    let k8s = settings
        .entry("kubernetes")
        .or_insert(Item::Table(Table::new()));
    let Some(k8s) = k8s.as_table_mut() else {
        return doc.to_string();
    };
    k8s.insert("cluster-name", value(cluster.name.clone()));
    if let Some(e) = &cluster.endpoint {
        k8s.insert("api-server", value(e.clone()));
    }
    if let Some(ca) = &cluster.ca_bundle {
        k8s.insert("cluster-certificate", value(ca.clone()));
    }
    if let Some(k) = &class.spec.kubelet {
        if let Some(dns) = k.cluster_dns.first() {
            k8s.insert("cluster-dns-ip", value(dns.clone()));
        }
        if let Some(n) = k.max_pods {
            k8s.insert("max-pods", value(i64::from(n)));
        }
        for (key, map) in [
            ("kube-reserved", &k.kube_reserved),
            ("system-reserved", &k.system_reserved),
            ("eviction-hard", &k.eviction_hard),
            ("eviction-soft", &k.eviction_soft),
            ("eviction-soft-grace-period", &k.eviction_soft_grace_period),
        ] {
            if map.is_empty() {
                continue;
            }
            let mut t = Table::new();
            for (name, v) in map {
                t.insert(name, value(v.clone()));
            }
            k8s.insert(key, Item::Table(t));
        }
        if let Some(n) = k.eviction_max_pod_grace_period {
            k8s.insert("eviction-max-pod-grace-period", value(i64::from(n)));
        }
        if let Some(n) = k.image_gc_high_threshold_percent {
            k8s.insert("image-gc-high-threshold-percent", value(i64::from(n)));
        }
        if let Some(n) = k.image_gc_low_threshold_percent {
            k8s.insert("image-gc-low-threshold-percent", value(i64::from(n)));
        }
        if let Some(b) = k.cpu_cfs_quota {
            k8s.insert("cpu-cfs-quota-enforced", value(b));
        }
    }
    doc.to_string()
}

fn windows(class: &EC2NodeClass, cluster: &Cluster, own: &str) -> String {
    let mut call = format!(
        "[string]$EKSBootstrapScriptFile = \"$env:ProgramFiles\\Amazon\\EKS\\Start-EKSBootstrap.ps1\"\n& $EKSBootstrapScriptFile -EKSClusterName {}",
        quote(&cluster.name)
    );
    if let Some(e) = &cluster.endpoint {
        call.push_str(&format!(" -APIServerEndpoint {}", quote(e)));
    }
    if let Some(ca) = &cluster.ca_bundle {
        call.push_str(&format!(" -Base64ClusterCA {}", quote(ca)));
    }
    let kubelet = class.spec.kubelet.clone().unwrap_or_default();
    let flags = kubelet_flags(&kubelet);
    if !flags.is_empty() {
        call.push_str(&format!(" -KubeletExtraArgs {}", quote(&flags.join(" "))));
    }
    if let Some(dns) = kubelet.cluster_dns.first() {
        call.push_str(&format!(" -DNSClusterIP {}", quote(dns)));
    }
    format!(
        "<powershell>\n{own}{}{call}\n</powershell>\n",
        if own.is_empty() || own.ends_with('\n') {
            ""
        } else {
            "\n"
        }
    )
}

/// The user data of a node of this class.
pub fn user_data(class: &EC2NodeClass, cluster: &Cluster) -> String {
    let own = class.spec.user_data.clone().unwrap_or_default();
    match class.spec.family() {
        Some("AL2023") => al2023(class, cluster, &own),
        Some("AL2") => al2(class, cluster, &own),
        Some("Bottlerocket") => bottlerocket(class, cluster, &own),
        Some(f) if f.starts_with("Windows") => windows(class, cluster, &own),
        // Custom: the user's own bootstrap, untouched.
        _ => own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(alias: &str, extra: &str) -> EC2NodeClass {
        let mut c = crate::crds::ec2nodeclass::test_class(&format!("  role: r\n{extra}"));
        c.spec.ami_selector_terms[0].alias = Some(alias.into());
        c
    }

    fn cluster() -> Cluster {
        Cluster {
            name: "prod".into(),
            endpoint: Some("https://ABC.gr7.us-east-1.eks.amazonaws.com".into()),
            ca_bundle: Some("Q0E=".into()),
            cidr: Some("10.100.0.0/16".into()),
        }
    }

    const KUBELET: &str =
        "  kubelet: {maxPods: 42, clusterDNS: [10.0.0.10], evictionHard: {memory.available: 5%}}\n";

    #[test]
    fn al2023_nodes_get_a_node_config_with_the_cluster_and_the_kubelet() {
        let data = user_data(&class("al2023@latest", "  userData: echo hi\n"), &cluster());
        assert!(data.starts_with("MIME-Version: 1.0\n"), "{data}");
        assert!(data.contains("Content-Type: application/node.eks.aws\n\napiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\n"), "{data}");
        assert!(
            data.contains("apiServerEndpoint: https://ABC.gr7.us-east-1.eks.amazonaws.com"),
            "{data}"
        );
        assert!(
            data.contains("cidr: 10.100.0.0/16") && data.contains("name: prod"),
            "{data}"
        );
        assert!(
            data.contains(
                "Content-Type: text/x-shellscript; charset=\"us-ascii\"\n\necho hi\n--//--\n"
            ),
            "{data}"
        );
        let with_kubelet = user_data(&class("al2023@latest", KUBELET), &cluster());
        assert!(with_kubelet.contains("maxPods: 42"), "{with_kubelet}");
    }

    #[test]
    fn al2_nodes_run_the_bootstrap_with_the_kubelet_settings_as_flags() {
        let data = user_data(&class("al2@latest", KUBELET), &cluster());
        assert!(data.contains("/etc/eks/bootstrap.sh 'prod' --apiserver-endpoint 'https://ABC.gr7.us-east-1.eks.amazonaws.com' --b64-cluster-ca 'Q0E='"), "{data}");
        assert!(data.contains("--dns-cluster-ip '10.0.0.10'"), "{data}");
        assert!(data.contains("--use-max-pods false"), "{data}");
        assert!(
            data.contains(
                "--kubelet-extra-args '--max-pods=42 --eviction-hard=\"memory.available<5%\"'"
            ),
            "{data}"
        );
    }

    #[test]
    fn bottlerocket_merges_the_settings_into_the_class_toml() {
        let own = "  userData: |\n    [settings.kubernetes]\n    cluster-name = 'wrong'\n    [settings.host-containers.admin]\n    enabled = true\n";
        let data = user_data(
            &class("bottlerocket@latest", &format!("{own}{KUBELET}")),
            &cluster(),
        );
        let doc: toml_edit::DocumentMut = data.parse().unwrap_or_default();
        let k8s = &doc["settings"]["kubernetes"];
        assert_eq!(
            k8s["cluster-name"].as_str(),
            Some("prod"),
            "Karpenter's keys win:\n{data}"
        );
        assert_eq!(k8s["max-pods"].as_integer(), Some(42));
        assert_eq!(k8s["cluster-dns-ip"].as_str(), Some("10.0.0.10"));
        assert_eq!(
            k8s["eviction-hard"]["memory.available"].as_str(),
            Some("5%")
        );
        assert_eq!(
            doc["settings"]["host-containers"]["admin"]["enabled"].as_bool(),
            Some(true),
            "the class's own settings stay"
        );
    }

    #[test]
    fn windows_and_custom() {
        let win = user_data(&class("windows2022@latest", KUBELET), &cluster());
        assert!(
            win.starts_with("<powershell>\n")
                && win.contains("-EKSClusterName 'prod'")
                && win.contains("-KubeletExtraArgs '--max-pods=42"),
            "{win}"
        );
        let mut custom = class("al2023@latest", "  userData: my-bootstrap\n");
        custom.spec.ami_selector_terms[0].alias = None;
        custom.spec.ami_selector_terms[0].id = Some("ami-1".into());
        custom.spec.ami_family = Some("Custom".into());
        assert_eq!(user_data(&custom, &cluster()), "my-bootstrap");
    }
}
