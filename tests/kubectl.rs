//! Real kubectl against a served simulation (`--serve`): it lists the fleet with Karpenter's columns, streams
//! changes with `-w`, and its writes — scale, apply, delete node — act on the running run and show in the
//! trace. Skipped, loudly, where kubectl is not installed.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dovetail_sim::Scenario;

const SCENARIO: &str = concat!(
    "name: kubectl
seed: 3
duration: 4h
cloud:
  zones: [us-east-1a, us-east-1b]
  launch_latency: 2s..4s
  boot_to_ready: 20s..30s
manifests:
",
    dovetail_tests::default_node_class_and_pool_head!(),
    "            - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
            - {key: node.kubernetes.io/instance-type, operator: In, values: [m5.large, m5.xlarge]}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web, namespace: default}
    spec:
      replicas: 2
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers:
            - name: web
              image: nginx
              resources: {requests: {cpu: 500m, memory: 512Mi}}
"
);

const EXTRA_POOL: &str = "apiVersion: karpenter.sh/v1
kind: NodePool
metadata:
  name: extra
spec:
  weight: 50
  template:
    spec:
      nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
      requirements:
        - {key: karpenter.sh/capacity-type, operator: In, values: [on-demand]}
        - {key: node.kubernetes.io/instance-type, operator: In, values: [c5.xlarge]}
";

fn kubectl_installed() -> bool {
    Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

struct Kubectl {
    kubeconfig: PathBuf,
}

impl Kubectl {
    /// Run kubectl; (success, stdout, stderr).
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .output()
            .expect("kubectl runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.run(args);
        assert!(ok, "kubectl {args:?} failed:\n{err}");
        out
    }

    /// Poll `kubectl args` until its output satisfies `done` (60 s of wall time at most).
    fn wait_for(&self, args: &[&str], what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.ok(args);
            if done(&out) {
                return out;
            }
            assert!(Instant::now() < deadline, "waited for {what}; last:\n{out}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn rows(out: &str) -> Vec<&str> {
    out.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn kubectl_watches_and_drives_a_served_simulation() {
    if !kubectl_installed() {
        eprintln!(
            "SKIPPED kubectl_watches_and_drives_a_served_simulation: kubectl is not installed"
        );
        return;
    }
    let scenario = Scenario::parse("kubectl.yaml", SCENARIO).unwrap();
    let dir = std::env::temp_dir().join(format!("dovetail-kubectl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let dovetail_tests::ServedRun { serving, stop, run } =
        dovetail_tests::serve_scenario(scenario, 40.0, &dir);
    let k = Kubectl {
        kubeconfig: serving.kubeconfig.clone(),
    };

    // The fleet, with Karpenter's printer columns.
    k.wait_for(&["get", "nodeclaims"], "the first claim to be ready", |o| {
        rows(o).iter().any(|r| r.contains(" True "))
    });
    let wide = k.ok(&["get", "nodes,nodeclaims,nodepools", "-o", "wide"]);
    for header in [
        "TYPE",
        "CAPACITY",
        "ZONE",
        "NODE",
        "READY",
        "NODECLASS",
        "NODES",
        "WEIGHT",
    ] {
        assert!(wide.contains(header), "no {header} column:\n{wide}");
    }
    assert!(wide.contains("m5."), "{wide}");
    // Nodes show their kubelet version and private IP; running pods count their ready containers.
    assert!(wide.contains("v1.33.0-eks"), "{wide}");
    assert!(wide.contains(" 10.0."), "no InternalIP:\n{wide}");
    let pods = k.ok(&["get", "pods"]);
    assert!(pods.contains(" 1/1 ") && pods.contains("Running"), "{pods}");
    assert!(wide.contains("nodepool.karpenter.sh/default"), "{wide}");

    // `get -w` streams changes: start watching, then cause one.
    let mut watch = Command::new("kubectl")
        .args(["get", "nodeclaims", "-w", "--no-headers"])
        .env("KUBECONFIG", &k.kubeconfig)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = mpsc::channel::<String>();
    let stdout = watch.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_tx.send(l).is_err() {
                break;
            }
        }
    });
    let claims_before = k.ok(&["get", "nodeclaims", "-o", "name"]).lines().count();

    // Scaling the Deployment makes pods the controller provisions for.
    assert!(
        k.ok(&["scale", "deployment", "web", "--replicas", "12"])
            .contains("scaled")
    );
    k.wait_for(
        &["get", "nodeclaims", "-o", "name"],
        "claims for the new pods",
        |o| o.lines().count() > claims_before,
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut streamed = Vec::new();
    while Instant::now() < deadline && streamed.len() <= claims_before {
        if let Ok(l) = lines.recv_timeout(Duration::from_millis(500)) {
            streamed.push(l);
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        streamed.len() > claims_before,
        "the watch streamed only {streamed:?}"
    );

    // A NodePool applied with kubectl is used by the next batch (it weighs more than `default`).
    let pool = write(&dir, "extra.yaml", EXTRA_POOL);
    assert!(
        k.ok(&["apply", "-f", pool.to_str().unwrap()])
            .contains("nodepool.karpenter.sh/extra created")
    );
    k.ok(&["scale", "deployment", "web", "--replicas", "20"]);
    k.wait_for(
        &[
            "get",
            "nodeclaims",
            "-l",
            "karpenter.sh/nodepool=extra",
            "-o",
            "name",
        ],
        "a claim from the applied NodePool",
        |o| !o.trim().is_empty(),
    );

    // A bad apply gets the API server's 422, naming the field.
    let bad = write(
        &dir,
        "bad.yaml",
        &EXTRA_POOL.replace("weight: 50", "weight: 500"),
    );
    let (ok, _, err) = k.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("is invalid") && err.contains("spec.weight"),
        "{err}"
    );

    // A field a built-in kind does not have is refused by name (kubectl asks for strict validation).
    let typo = write(
        &dir,
        "typo.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: typo}\nspec:\n  replicass: 2\n  selector: {matchLabels: {app: typo}}\n  template:\n    metadata: {labels: {app: typo}}\n    spec: {containers: [{name: c, image: nginx}]}\n",
    );
    let (ok, _, err) = k.run(&["apply", "-f", typo.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("unknown field \"spec.replicass\""), "{err}");

    // `explain` reads the published schema.
    let explain = k.ok(&["explain", "nodepool.spec"]);
    assert!(
        explain.contains("template") && explain.contains("disruption"),
        "{explain}"
    );

    // Deleting a node hands it to the controller, which drains it and terminates its claim.
    let node = k
        .ok(&[
            "get",
            "nodes",
            "-l",
            "karpenter.sh/nodepool=default",
            "-o",
            "name",
        ])
        .lines()
        .next()
        .expect("a default node")
        .trim_start_matches("node/")
        .to_string();
    k.ok(&["delete", "node", &node, "--wait=false"]);
    k.wait_for(&["get", "nodes", "-o", "name"], "the node to go", |o| {
        !o.lines().any(|l| l == format!("node/{node}"))
    });

    stop.store(true, Ordering::Relaxed);
    let outcome = run.join().unwrap().unwrap();
    let trace = &outcome.trace;
    // kubectl's writes are in the trace, and the controller answered each.
    let scaled = trace
        .lines()
        .find(|l| {
            l.contains("kubectl") && l.contains("scale Deployment default/web replicas 2 -> 12")
        })
        .unwrap_or_else(|| panic!("no kubectl scale line in\n{trace}"));
    let scaled_at = dovetail_tests::at(scaled).unwrap();
    let provisioned = trace
        .lines()
        .filter(|l| l.contains("new-claims="))
        .filter_map(dovetail_tests::at)
        .find(|t| *t >= scaled_at)
        .expect("a batch after the scale");
    assert!(
        provisioned - scaled_at <= 12.0,
        "provisioned {provisioned}s after a scale at {scaled_at}s: more than the batch window"
    );
    assert!(trace.contains("create NodePool extra"), "{trace}");
    assert!(trace.contains(&format!("delete Node {node}")), "{trace}");
    let _ = std::fs::remove_dir_all(&dir);
}
