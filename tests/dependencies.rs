//! The core builds without the heavy real-world clients: no aws-sdk, no kube client, no hyper.

use std::process::Command;

fn assert_no_clients(package: &str, forbidden: &[&str]) {
    assert_no_clients_with(package, "--no-default-features", forbidden);
}

fn assert_no_clients_with(package: &str, features: &str, forbidden: &[&str]) {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree", "-p", package, features, "-e", "normal", "--prefix", "none",
        ])
        .current_dir(dovetail_tests::root())
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        tree.lines().any(|l| l.starts_with(&format!("{package} "))),
        "unexpected cargo tree output:\n{tree}"
    );
    for line in tree.lines() {
        let krate = line.split_whitespace().next().unwrap_or_default();
        assert!(
            !(krate.starts_with("aws-sdk-") || forbidden.contains(&krate)),
            "{package} depends on `{krate}` without features; keep it behind a cargo feature"
        );
    }
}

#[test]
fn core_has_no_cloud_or_kube_clients() {
    assert_no_clients("dovetail", &["kube", "kube-client", "hyper", "aws-config"]);
}

#[test]
fn the_binary_has_its_clients_only_behind_features() {
    // The binary serves /metrics over hyper whatever its features; the clients are what stay optional.
    assert_no_clients("dovetail-operator", &["kube", "kube-client", "aws-config"]);
}

#[test]
fn wire_mode_brings_the_kube_client_but_not_the_aws_sdk() {
    // The simulator's wire mode runs the binary's kube-rs adapter; the AWS SDK stays with the binary
    // (linking it into every test binary filled the disk once).
    assert_no_clients_with("dovetail-sim", "--features=wire", &["aws-config"]);
}
