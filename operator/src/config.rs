//! Flags and environment variables, under Karpenter's names where Karpenter has the setting.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dovetail::context::FeatureGates;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line (what log pipelines parse).
    Json,
    /// Human-readable lines.
    Text,
}

/// The in-cluster controller. Every flag can also be set by the environment variable shown.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dovetail",
    version,
    about,
    after_help = "Other commands:\n  dovetail sim FILE... [flags]   run scenarios in the simulator; snapshot-test them in CI (dovetail sim --help)\n  dovetail migrate FILE...       convert v1alpha5 / v1beta1 Karpenter manifests to v1"
)]
pub struct Config {
    /// The EKS cluster's name; instances and launch templates are tagged with it (Karpenter: CLUSTER_NAME).
    #[arg(long, env = "CLUSTER_NAME")]
    pub cluster_name: String,

    /// The API server endpoint nodes join (Karpenter: CLUSTER_ENDPOINT); left out of node user data when
    /// empty (Karpenter would ask EKS; Dovetail does not yet).
    #[arg(long, env = "CLUSTER_ENDPOINT", default_value = "")]
    pub cluster_endpoint: String,

    /// The cluster CA bundle nodes trust, base64 PEM; when empty, the service account's `ca.crt` (which on
    /// EKS is the cluster CA).
    #[arg(long, env = "CLUSTER_CA_BUNDLE", default_value = "")]
    pub cluster_ca_bundle: String,

    /// The cluster's service CIDR for AL2023 nodes' `NodeConfig` (Karpenter reads it from EKS); left out
    /// when empty.
    #[arg(long, env = "CLUSTER_CIDR", default_value = "")]
    pub cluster_cidr: String,

    /// The SQS queue EventBridge sends interruption events to: its name or URL (Karpenter:
    /// INTERRUPTION_QUEUE). Empty turns interruption handling off.
    #[arg(long, env = "INTERRUPTION_QUEUE", default_value = "")]
    pub interruption_queue: String,

    /// The AWS region; otherwise the SDK's default chain (AWS_REGION, the instance metadata).
    #[arg(long, env = "AWS_REGION")]
    pub region: Option<String>,

    /// Close a provisioning batch this long after the last pending pod arrived (Karpenter: BATCH_IDLE_DURATION).
    #[arg(long, env = "BATCH_IDLE_DURATION", default_value = "1s", value_parser = duration)]
    pub batch_idle_duration: Duration,

    /// ... or this long after it opened (Karpenter: BATCH_MAX_DURATION).
    #[arg(long, env = "BATCH_MAX_DURATION", default_value = "10s", value_parser = duration)]
    pub batch_max_duration: Duration,

    /// error, warn, info, debug or trace; or a tracing filter such as `info,dovetail=debug` (Karpenter: LOG_LEVEL).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// json or text.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "json")]
    pub log_format: LogFormat,

    /// Port of `/metrics` (Karpenter: METRICS_PORT).
    #[arg(long, env = "METRICS_PORT", default_value_t = 8080)]
    pub metrics_port: u16,

    /// Port of `/healthz` and `/readyz` (Karpenter: HEALTH_PROBE_PORT).
    #[arg(long, env = "HEALTH_PROBE_PORT", default_value_t = 8081)]
    pub health_probe_port: u16,

    /// Act without a leader Lease; only for a single replica (Karpenter: DISABLE_LEADER_ELECTION).
    #[arg(long, env = "DISABLE_LEADER_ELECTION", default_value_t = false)]
    pub disable_leader_election: bool,

    /// The Lease replicas elect a leader over.
    #[arg(
        long,
        env = "LEADER_ELECTION_NAME",
        default_value = "dovetail-leader-election"
    )]
    pub leader_election_name: String,

    /// The namespace the controller runs in (and its Lease lives in) (Karpenter: SYSTEM_NAMESPACE).
    #[arg(long, env = "SYSTEM_NAMESPACE", default_value = "kube-system")]
    pub system_namespace: String,

    /// This replica's identity in the Lease; the pod name from the downward API.
    #[arg(long, env = "POD_NAME", default_value = "dovetail")]
    pub pod_name: String,

    /// Feature gates, Karpenter's syntax: `SpotToSpotConsolidation=true`.
    #[arg(long, env = "FEATURE_GATES", default_value = "SpotToSpotConsolidation=true", value_parser = feature_gates)]
    pub feature_gates: FeatureGates,

    /// Dovetail's anti-churn rule: a consolidation that moves pods must save this share of the pool's cost
    /// per share of its disruption cost; 0 turns it off (Karpenter's behaviour). Pools whose
    /// consolidationPolicy is Balanced use 1/k instead.
    #[arg(long, env = "CONSOLIDATION_BALANCE", default_value_t = 0.25)]
    pub consolidation_balance: f64,

    /// The Balanced consolidation policy's k: a move in such a pool must score at least 1/k (Karpenter: 2).
    #[arg(long, env = "BALANCED_K", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub balanced_k: u32,

    /// What to do when a NodePool's `minValues` cannot be met: `Strict` (pods wait) or `BestEffort` (launch
    /// with the types there are, relax the NodeClaim's minValues and annotate it), Karpenter's setting.
    #[arg(long, env = "MIN_VALUES_POLICY", default_value = "Strict", value_parser = ["Strict", "BestEffort"])]
    pub min_values_policy: String,
}

fn feature_gates(s: &str) -> Result<FeatureGates, String> {
    dovetail::context::parse_feature_gates(s)
}

fn duration(s: &str) -> Result<Duration, String> {
    dovetail::duration::parse(s)
}

impl Config {
    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.metrics_port)
    }

    pub fn health_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.health_probe_port)
    }

    /// The controller's settings; `queue_url` is the interruption queue resolved to its URL, `ca_bundle`
    /// the cluster CA found when `CLUSTER_CA_BUNDLE` is empty.
    pub fn settings(
        &self,
        queue_url: Option<String>,
        ca_bundle: Option<String>,
    ) -> dovetail::Settings {
        let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
        dovetail::Settings {
            cluster_name: self.cluster_name.clone(),
            cluster_endpoint: given(&self.cluster_endpoint),
            cluster_ca_bundle: given(&self.cluster_ca_bundle).or(ca_bundle),
            cluster_cidr: given(&self.cluster_cidr),
            batch_idle: self.batch_idle_duration,
            batch_max: self.batch_max_duration,
            interruption_queue: queue_url,
            consolidation_balance: (self.consolidation_balance > 0.0)
                .then_some(self.consolidation_balance),
            balanced_k: self.balanced_k,
            min_values_best_effort: self.min_values_policy == "BestEffort",
            feature_gates: self.feature_gates,
            leader_election: (!self.disable_leader_election).then(|| {
                let mut le =
                    dovetail::leader::LeaderElection::new(&self.system_namespace, &self.pod_name);
                le.name = self.leader_election_name.clone();
                le
            }),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("dovetail").chain(args.iter().copied()))
    }

    #[test]
    fn karpenter_defaults() {
        let c = parse(&["--cluster-name", "prod"]).unwrap();
        assert_eq!(c.batch_idle_duration, Duration::from_secs(1));
        assert_eq!(c.batch_max_duration, Duration::from_secs(10));
        assert_eq!((c.metrics_port, c.health_probe_port), (8080, 8081));
        assert_eq!(c.log_format, LogFormat::Json);
        let s = c.settings(None, None);
        assert_eq!(s.cluster_name, "prod");
        // Unknown cluster facts stay out of node user data rather than going in empty.
        assert_eq!(
            (s.cluster_endpoint, s.cluster_ca_bundle, s.cluster_cidr),
            (None, None, None)
        );
        assert!(s.feature_gates.spot_to_spot_consolidation && !s.feature_gates.node_repair);
        let le = s.leader_election.expect("leader election is on by default");
        assert_eq!(
            (le.namespace.as_str(), le.name.as_str()),
            ("kube-system", "dovetail-leader-election")
        );
    }

    #[test]
    fn flags_override_and_bad_values_are_named() {
        let c = parse(&[
            "--cluster-name",
            "prod",
            "--batch-max-duration",
            "30s",
            "--feature-gates",
            "SpotToSpotConsolidation=false",
            "--disable-leader-election",
            "--consolidation-balance",
            "0",
            "--cluster-endpoint",
            "https://ABC.eks.amazonaws.com",
            "--cluster-cidr",
            "10.100.0.0/16",
        ])
        .unwrap();
        let s = c.settings(Some("https://sqs/q".into()), Some("Q0E=".into()));
        assert_eq!(
            s.cluster_endpoint.as_deref(),
            Some("https://ABC.eks.amazonaws.com")
        );
        assert_eq!(
            s.cluster_ca_bundle.as_deref(),
            Some("Q0E="),
            "the service account's CA"
        );
        assert_eq!(s.cluster_cidr.as_deref(), Some("10.100.0.0/16"));
        assert_eq!(s.batch_max, Duration::from_secs(30));
        assert!(!s.feature_gates.spot_to_spot_consolidation && s.leader_election.is_none());
        assert_eq!(s.consolidation_balance, None);
        let e = parse(&["--cluster-name", "x", "--batch-idle-duration", "soon"]).unwrap_err();
        assert!(e.to_string().contains("--batch-idle-duration"), "{e}");
        let e = parse(&["--cluster-name", "x", "--feature-gates", "Warp=true"]).unwrap_err();
        assert!(e.to_string().contains("unknown feature gate `Warp`"), "{e}");
        let e = parse(&[]).unwrap_err();
        assert!(e.to_string().contains("--cluster-name"), "{e}");
    }
}
