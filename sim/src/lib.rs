//! The simulator: scenario files run against fakecloud and fakekube in a seeded turmoil world.
//!
//! [`simulate`] is what `cargo xtask sim` and the tests call: it loads nothing itself, runs a parsed
//! [`Scenario`], and returns the trace and the summary as text, byte-identical for one seed.

pub mod baseline;
pub mod bound;
pub mod cli;
pub mod clock;
pub mod drain;
pub mod duration;
pub mod error;
pub mod expect;
pub mod html;
pub mod junit;
pub mod parallel;
pub mod random;
pub mod report;
pub mod scenario;
pub mod serve;
pub mod snapshot;
pub mod trace;
#[cfg(feature = "wire")]
pub mod wire;
pub mod world;
pub mod yaml;

use std::time::Duration;

pub use error::SimError;
pub use scenario::Scenario;

/// A finished run, rendered.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// One line per event, sim time first.
    pub trace: String,
    pub summary: String,
    /// Whether every `expect:` assertion and every invariant held.
    pub passed: bool,
    pub metrics: report::Metrics,
    /// Samples for charts (one per 30 s of sim time).
    pub series: Vec<report::Sample>,
    /// Kubernetes Events at the end of the run, counted by `Kind/Reason` (e.g. `Pod/FailedScheduling`).
    pub events: std::collections::BTreeMap<String, u32>,
    /// What the controllers counted (the in-cluster `/metrics`).
    pub controller_metrics: std::sync::Arc<dovetail::metrics::Metrics>,
    /// NodePools, NodeClaims, EC2NodeClasses, Nodes, Pods, StatefulSets and volumes (claims and
    /// PersistentVolumes) at the end of the run, by kind, as `kubectl get -o json` would show them.
    pub objects: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
}

/// Options of one run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Overrides the scenario's seed.
    pub seed: Option<u64>,
    /// Stop early at this simulated time.
    pub until: Option<Duration>,
    /// What scales the cluster.
    pub autoscaler: Autoscaler,
    /// Told now and then how far the run has got (simulated time so far, of the total).
    pub progress: Option<Progress>,
    /// Pace the run to the wall clock and serve its API to kubectl (`--serve`).
    pub serve: Option<serve::Serve>,
    /// Run the controller in wire mode whatever the scenario says (`--wire`).
    pub wire: bool,
}

/// A progress callback: (simulated so far, simulated in all). It only observes; runs are the same with or
/// without one.
#[derive(Clone)]
pub struct Progress(pub std::sync::Arc<dyn Fn(Duration, Duration) + Send + Sync>);

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Progress")
    }
}

/// What scales the simulated cluster: Dovetail's controller, or the comparison baseline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Autoscaler {
    #[default]
    Dovetail,
    /// A Cluster-Autoscaler-style strategy with fixed node groups ([`baseline`]).
    CaBaseline,
}

impl Autoscaler {
    pub fn parse(s: &str) -> Option<Autoscaler> {
        match s {
            "dovetail" => Some(Autoscaler::Dovetail),
            "ca-baseline" => Some(Autoscaler::CaBaseline),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Autoscaler::Dovetail => "dovetail",
            Autoscaler::CaBaseline => "ca-baseline",
        }
    }
}

pub fn simulate(scenario: &Scenario, options: &RunOptions) -> Result<Outcome, SimError> {
    let seed = options.seed.unwrap_or(scenario.seed);
    let run = world::run(
        scenario,
        seed,
        options.until,
        options.autoscaler,
        options.progress.as_ref(),
        options.serve.as_ref(),
        options.wire,
    )?;
    let mut trace = String::new();
    for e in run.trace.entries() {
        trace.push_str(&e.render());
        trace.push('\n');
    }
    let verdicts = report::verdicts(scenario, &run.observations, &trace, &run.controller_metrics);
    let mut summary = report::summary(
        scenario,
        seed,
        options.autoscaler,
        &run.observations,
        &verdicts,
    );
    if let Some((at, why)) = &run.stopped {
        // Where it broke and what led there, without scrolling the whole trace.
        summary.push_str(&format!(
            "  STOPPED          at {} by an invariant: {why}\n  last trace lines:\n",
            duration::stamp(*at)
        ));
        let lines: Vec<&str> = trace.lines().collect();
        for l in &lines[lines.len().saturating_sub(20)..] {
            summary.push_str(&format!("    {l}\n"));
        }
    }
    let metrics = report::Metrics::of(
        &run.observations,
        run.stopped.is_none() && verdicts.iter().all(|v| v.ok),
    );
    Ok(Outcome {
        trace,
        summary,
        passed: metrics.passed,
        metrics,
        series: run.observations.series.clone(),
        controller_metrics: run.controller_metrics.clone(),
        events: run.observations.events.clone(),
        objects: run.observations.objects.clone(),
    })
}
