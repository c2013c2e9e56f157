//! Helpers shared by the integration tests: paths into the repository and scenario runs.

use std::path::PathBuf;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repository")
        .to_path_buf()
}

/// Run a scenario file of `scenarios/` with a seed; returns trace + summary as one text.
pub fn run_scenario(name: &str, seed: u64) -> String {
    run_scenario_with(name, seed, dovetail_sim::Autoscaler::Dovetail)
}

/// [`run_scenario`] with another autoscaler in the controller's place.
pub fn run_scenario_with(name: &str, seed: u64, autoscaler: dovetail_sim::Autoscaler) -> String {
    let out = simulate_scenario(name, seed, autoscaler);
    format!("{}{}", out.trace, out.summary)
}

/// Run a scenario a test built (with its own seed); its invariants and expectations must hold.
pub fn simulate_passing(scenario: &dovetail_sim::Scenario) -> dovetail_sim::Outcome {
    let out =
        dovetail_sim::simulate(scenario, &Default::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(out.passed, "invariants broke:\n{}", out.summary);
    out
}

/// How a test-built scenario ended: nodes and pending pods at the last sample, and the trace.
pub struct End {
    pub nodes: usize,
    pub pending: usize,
    pub trace: String,
}

/// [`simulate_passing`], reduced to how it ended.
pub fn run_to_end(scenario: &dovetail_sim::Scenario) -> End {
    let out = simulate_passing(scenario);
    let last = out.series.last().expect("samples");
    End {
        nodes: last.nodes,
        pending: last.pods_pending,
        trace: out.trace,
    }
}

/// The whole outcome of a scenario file of `scenarios/` run with a seed (Events, metrics, samples too).
pub fn simulate_scenario(
    name: &str,
    seed: u64,
    autoscaler: dovetail_sim::Autoscaler,
) -> dovetail_sim::Outcome {
    let path = root().join("scenarios").join(name);
    let scenario = dovetail_sim::Scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let options = dovetail_sim::RunOptions {
        seed: Some(seed),
        autoscaler,
        ..Default::default()
    };
    dovetail_sim::simulate(&scenario, &options).unwrap_or_else(|e| panic!("{e}"))
}

/// The sim time of a trace line (`+HH:MM:SS.mmm source text`) in seconds.
pub fn at(line: &str) -> Option<f64> {
    let t = line.get(1..13)?;
    let mut parts = t.split(':');
    let h: f64 = parts.next()?.parse().ok()?;
    let m: f64 = parts.next()?.parse().ok()?;
    let s: f64 = parts.next()?.parse().ok()?;
    Some(h * 3600.0 + m * 60.0 + s)
}

/// The first trace line containing `needle`, with its time.
pub fn first(text: &str, needle: &str) -> Option<(f64, String)> {
    text.lines()
        .find(|l| l.contains(needle))
        .and_then(|l| Some((at(l)?, l.to_string())))
}

/// The manifests most test scenarios start from, as list items: the `default` EC2NodeClass (AL2023,
/// `karpenter.sh/discovery: sim`) and a `default` NodePool up to its `requirements:` key, whose items the
/// test writes next (a macro, so that it can be `concat!`ed into a `const`).
#[macro_export]
macro_rules! default_node_class_and_pool_head {
    () => {
        "  - apiVersion: karpenter.k8s.aws/v1
    kind: EC2NodeClass
    metadata: {name: default}
    spec:
      amiSelectorTerms: [{alias: al2023@latest}]
      role: KarpenterNodeRole-sim
      subnetSelectorTerms: [{tags: {karpenter.sh/discovery: sim}}]
      securityGroupSelectorTerms: [{tags: {karpenter.sh/discovery: sim}}]
  - apiVersion: karpenter.sh/v1
    kind: NodePool
    metadata: {name: default}
    spec:
      template:
        spec:
          nodeClassRef: {group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}
          requirements:
"
    };
}

/// A scenario run with `--serve` in a thread of its own: where it is served, the flag that ends it, and
/// the run (join it for the outcome).
pub struct ServedRun {
    pub serving: dovetail_sim::serve::Serving,
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub run: std::thread::JoinHandle<Result<dovetail_sim::Outcome, dovetail_sim::SimError>>,
}

/// Start `scenario` served at `speed` times real time (any free ports; the kubeconfig in `dir`) and wait
/// until its endpoints listen.
pub fn serve_scenario(
    scenario: dovetail_sim::Scenario,
    speed: f64,
    dir: &std::path::Path,
) -> ServedRun {
    use dovetail_sim::serve::{Serve, Serving};
    let (tx, rx) = std::sync::mpsc::channel::<Serving>();
    let tx = std::sync::Mutex::new(tx);
    let serve = Serve {
        speed,
        kubeconfig: Some(dir.join("kubeconfig")),
        ready: Some(std::sync::Arc::new(move |s: &Serving| {
            let _ = tx.lock().map(|tx| tx.send(s.clone()));
        })),
        ..Serve::default()
    };
    let stop = serve.stop.clone();
    let run = std::thread::spawn(move || {
        dovetail_sim::simulate(
            &scenario,
            &dovetail_sim::RunOptions {
                serve: Some(serve),
                ..dovetail_sim::RunOptions::default()
            },
        )
    });
    let serving = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the endpoints are served");
    ServedRun { serving, stop, run }
}
