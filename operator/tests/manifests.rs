//! The install manifests and the binary agree: every environment variable the Deployment sets is a
//! setting the binary reads, and the ports it probes are the binary's defaults.

use clap::{CommandFactory, Parser};
use dovetail_operator::config::Config;
use serde_json::Value;

#[test]
fn the_deployment_sets_only_settings_the_binary_reads() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("deploy/deployment.yaml")).unwrap();
    let deployment: Value = serde_saphyr::from_str(&text).unwrap();
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let command = Config::command();
    let known: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().to_string())
        .collect();
    let set: Vec<&str> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert!(set.contains(&"CLUSTER_NAME") && set.contains(&"POD_NAME"));
    for name in &set {
        assert!(
            known.iter().any(|k| k == name),
            "deploy/deployment.yaml sets {name}, which the binary does not read (it reads {known:?})"
        );
    }
    let defaults = Config::try_parse_from(["dovetail", "--cluster-name", "x"]).unwrap();
    let port = |name: &str| {
        container["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap()
    };
    assert_eq!(port("http-metrics"), u64::from(defaults.metrics_port));
    assert_eq!(port("http"), u64::from(defaults.health_probe_port));
}
