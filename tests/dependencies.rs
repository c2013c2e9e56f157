//! The core builds without the heavy real-world clients: no aws-sdk, no kube client, no hyper.

use std::process::Command;

#[test]
fn core_has_no_cloud_or_kube_clients() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-p",
            "dovetail",
            "--no-default-features",
            "-e",
            "normal",
            "--prefix",
            "none",
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
        tree.lines().any(|l| l.starts_with("dovetail ")),
        "unexpected cargo tree output:\n{tree}"
    );
    for line in tree.lines() {
        let krate = line.split_whitespace().next().unwrap_or_default();
        assert!(
            !(krate.starts_with("aws-sdk-")
                || krate == "kube"
                || krate == "kube-client"
                || krate == "hyper"
                || krate == "aws-config"),
            "the core depends on `{krate}`; keep it behind a cargo feature"
        );
    }
}
