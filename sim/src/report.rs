//! What the observer measures and the summary block printed after the trace.

use std::fmt::Write as _;
use std::time::Duration;

use dovetail::aws::cloud::InstanceState;
use fakecloud::FakeCloud;
use fakekube::FakeKube;
use fakekube::scheduler::Binding;

use crate::duration::human;
use crate::scenario::Scenario;

/// One look at the world.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    pub at: Duration,
    pub instances: usize,
    pub nodes: usize,
    pub pods: usize,
    pub pods_pending: usize,
    /// Live pods not running (pending, or bound and starting): what availability counts.
    pub pods_not_running: usize,
    pub cost_per_hour: f64,
    /// Billed instances by capacity type.
    pub spot: usize,
    pub on_demand: usize,
    /// Evictions so far.
    pub evictions: u64,
    /// The fluid lower bound on cost per hour at this moment ([`crate::bound`]).
    pub lower_bound_per_hour: f64,
}

/// The store's counts at a resourceVersion: the observer looks every simulated second, the store changes
/// far less often.
#[derive(Debug, Default)]
pub struct Counts {
    at_rv: Option<u64>,
    nodes: usize,
    pods: usize,
    pending: usize,
    not_running: usize,
}

impl Counts {
    fn read(&mut self, kube: &FakeKube) -> (usize, usize, usize, usize) {
        let st = kube.store();
        if self.at_rv != Some(st.resource_version()) {
            self.nodes = st.iter("Node").count();
            // One pass over the pods for all three counts: the observer looks every simulated second.
            (self.pods, self.pending, self.not_running) = (0, 0, 0);
            for p in st.iter("Pod") {
                self.pods += 1;
                if p["spec"]["nodeName"].is_null() {
                    self.pending += 1;
                }
                if p["metadata"]["deletionTimestamp"].is_null()
                    && !matches!(
                        p["status"]["phase"].as_str(),
                        Some("Running" | "Succeeded" | "Failed")
                    )
                {
                    self.not_running += 1;
                }
            }
            self.at_rv = Some(st.resource_version());
        }
        (self.nodes, self.pods, self.pending, self.not_running)
    }
}

impl Sample {
    pub fn take(kube: &FakeKube, cloud: &FakeCloud, at: Duration, counts: &mut Counts) -> Sample {
        let billed: Vec<(f64, bool)> = cloud.with_instances(|all| {
            all.filter(|r| {
                !r.foreign
                    && matches!(
                        r.instance.state,
                        InstanceState::Pending | InstanceState::Running
                    )
            })
            .map(|r| {
                (
                    r.price,
                    r.instance.capacity_type == dovetail::aws::cloud::CapacityType::Spot,
                )
            })
            .collect()
        });
        let spot = billed.iter().filter(|b| b.1).count();
        let evictions = kube.audit().evictions;
        let (nodes, pods, pods_pending, pods_not_running) = counts.read(kube);
        Sample {
            at,
            spot,
            on_demand: billed.len() - spot,
            evictions,
            instances: billed.len(),
            nodes,
            pods,
            pods_pending,
            pods_not_running,
            // Reservations are paid whole while active; instances in them cost nothing more.
            cost_per_hour: billed.iter().fold(0.0, |a, b| a + b.0)
                + cloud.reservation_cost_per_hour(),
            lower_bound_per_hour: 0.0,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "instances={} nodes={} pods={} pending={} cost={:.4}/h",
            self.instances, self.nodes, self.pods, self.pods_pending, self.cost_per_hour
        )
    }
}

/// One launched instance, as `expect:` checks it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub instance_type: String,
    pub zone: String,
    pub capacity_type: String,
}

#[derive(Debug, Clone, Default)]
pub struct Observations {
    /// Events in the API server at the end, counted by `Kind/Reason` of the object they are about.
    pub events: std::collections::BTreeMap<String, u32>,
    /// Karpenter's objects as the API server holds them at the end (`kubectl get nodepools,nodeclaims,
    /// ec2nodeclasses -o json`), by kind.
    pub objects: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
    pub samples: usize,
    pub cost_total: f64,
    /// The lower bound integrated over the run.
    pub lower_bound_total: f64,
    pub instance_seconds: f64,
    /// Pod-seconds of live pods not running, summed over the samples.
    pub unavailable_pod_seconds: f64,
    /// Every instance the simulated EC2 launched for the cluster.
    pub launched: Vec<Launched>,
    pub max_instances: usize,
    /// The most Nodes seen at once (the cluster's own included, which no instance here backs).
    pub max_nodes: usize,
    pub max_cost_per_hour: f64,
    pub last: Sample,
    pub bindings: Vec<Binding>,
    /// Pods still unbound at the end, with how long they had waited and their labels.
    pub still_pending: Vec<(Duration, serde_json::Value)>,
    /// How many of those carry a FailedScheduling Event from the controller explaining why.
    pub explained_pending: usize,
    pub launches: u64,
    pub fleet_errors: std::collections::BTreeMap<String, u64>,
    pub violations: Vec<String>,
    /// Pods evicted through the eviction API, evictions a budget refused, and budget overrides a
    /// terminationGracePeriod allowed.
    pub evictions: u64,
    pub evictions_refused: u64,
    pub forced_deletions: u64,
    pub duration: Duration,
    /// Samples kept for charts: one per [`SERIES_STEP`].
    pub series: Vec<Sample>,
}

/// Chart resolution: one kept sample per this much sim time.
pub const SERIES_STEP: Duration = Duration::from_secs(30);

impl Observations {
    pub fn add(&mut self, s: Sample, dt: Duration) {
        self.samples += 1;
        if self
            .series
            .last()
            .is_none_or(|l| s.at >= l.at + SERIES_STEP)
        {
            self.series.push(s.clone());
        }
        self.cost_total += s.cost_per_hour * dt.as_secs_f64() / 3600.0;
        self.lower_bound_total += s.lower_bound_per_hour * dt.as_secs_f64() / 3600.0;
        self.instance_seconds += s.instances as f64 * dt.as_secs_f64();
        self.unavailable_pod_seconds += s.pods_not_running as f64 * dt.as_secs_f64();
        self.max_instances = self.max_instances.max(s.instances);
        self.max_nodes = self.max_nodes.max(s.nodes);
        self.max_cost_per_hour = self.max_cost_per_hour.max(s.cost_per_hour);
        self.last = s;
    }

    pub fn finish(
        &mut self,
        kube: &FakeKube,
        cloud: &FakeCloud,
        duration: Duration,
        epoch: jiff::Timestamp,
    ) {
        self.duration = duration;
        let (launches, errors) = cloud.launch_stats();
        self.launched = cloud.with_instances(|all| {
            all.filter(|r| !r.foreign)
                .map(|r| Launched {
                    instance_type: r.instance.instance_type.clone(),
                    zone: r.instance.zone.clone(),
                    // A launch that targeted a reservation is `reserved`, as its node is labelled (one an
                    // open reservation absorbed stays `on-demand`).
                    capacity_type: if r.instance.capacity_reservation_preference.as_deref()
                        == Some("capacity-reservations-only")
                    {
                        "reserved".to_string()
                    } else {
                        r.instance.capacity_type.as_str().to_string()
                    },
                })
                .collect()
        });
        self.launches = launches;
        self.fleet_errors = errors;
        self.violations = cloud.violations();
        let audit = kube.audit();
        self.evictions = audit.evictions;
        self.evictions_refused = audit.refused;
        self.forced_deletions = audit.forced;
        self.violations.extend(audit.violations);
        let end = epoch.checked_add(duration).unwrap_or(epoch);
        for kind in [
            "NodePool",
            "NodeClaim",
            "EC2NodeClass",
            "NodeOverlay",
            "CapacityBuffer",
            "Node",
            "Pod",
            "StatefulSet",
            "PersistentVolumeClaim",
            "PersistentVolume",
            "Event",
        ] {
            self.objects
                .insert(kind.to_string(), kube.store().list(kind));
        }
        let events = kube.store().list("Event");
        for e in &events {
            let key = format!(
                "{}/{}",
                e["involvedObject"]["kind"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default()
            );
            *self.events.entry(key).or_default() += 1;
        }
        for p in kube.store().list("Pod") {
            if !p["spec"]["nodeName"].is_null() {
                continue;
            }
            let name = &p["metadata"]["name"];
            if events
                .iter()
                .any(|e| e["involvedObject"]["name"] == *name && e["reason"] == "FailedScheduling")
            {
                self.explained_pending += 1;
            }
            let created: jiff::Timestamp = p["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(end);
            self.still_pending.push((
                Duration::try_from(end.duration_since(created)).unwrap_or(Duration::ZERO),
                p["metadata"]["labels"].clone(),
            ));
        }
    }

    /// Waits of every pod that was pending at some point, bound or not.
    fn waits(&self) -> Vec<Duration> {
        self.waits_of(None)
    }

    /// Waits of the pods a selector matches (all when None), bound or not, shortest first.
    pub fn waits_of(&self, selector: Option<&crate::expect::Selector>) -> Vec<Duration> {
        let picked = |labels: &serde_json::Value| selector.is_none_or(|s| s.matches(labels));
        let mut w: Vec<Duration> = self
            .bindings
            .iter()
            .filter(|b| picked(&b.labels))
            .map(|b| b.waited)
            .chain(
                self.still_pending
                    .iter()
                    .filter(|(_, l)| picked(l))
                    .map(|(d, _)| *d),
            )
            .collect();
        w.sort();
        w
    }

    /// The nearest-rank 99th percentile wait of the pods a selector matches.
    pub fn pending_p99_of(&self, selector: Option<&crate::expect::Selector>) -> Duration {
        percentile(&self.waits_of(selector), 99.0)
    }

    pub fn pending_max(&self) -> Duration {
        self.waits().last().copied().unwrap_or(Duration::ZERO)
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest-rank percentile.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The figures a seed sweep compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Metrics {
    pub cost_total: f64,
    pub lower_bound_total: f64,
    pub pending_p50: Duration,
    pub pending_p99: Duration,
    pub pending_max: Duration,
    pub evictions: u64,
    pub launches: u64,
    pub violations: usize,
    pub passed: bool,
}

impl Metrics {
    pub fn of(o: &Observations, passed: bool) -> Metrics {
        let waits = o.waits();
        Metrics {
            cost_total: o.cost_total,
            lower_bound_total: o.lower_bound_total,
            pending_p50: percentile(&waits, 50.0),
            pending_p99: percentile(&waits, 99.0),
            pending_max: o.pending_max(),
            evictions: o.evictions,
            launches: o.launches,
            violations: o.violations.len(),
            passed,
        }
    }
}

pub use crate::expect::Verdict;

/// The invariants broken, then every expectation written, checked.
pub fn verdicts(
    scenario: &Scenario,
    o: &Observations,
    trace: &str,
    metrics: &dovetail::metrics::Metrics,
) -> Vec<Verdict> {
    let mut out: Vec<Verdict> = o
        .violations
        .iter()
        .map(|v| Verdict {
            what: format!("invariant: {v}"),
            ok: false,
        })
        .collect();
    out.extend(scenario.expect.check(&crate::expect::Ended {
        trace,
        observations: o,
        metrics,
    }));
    out
}

pub fn summary(
    scenario: &Scenario,
    seed: u64,
    autoscaler: crate::Autoscaler,
    o: &Observations,
    verdicts: &[Verdict],
) -> String {
    let waits = o.waits();
    let mut s = String::new();
    let _ = writeln!(s, "summary");
    let _ = writeln!(
        s,
        "  scenario         {} (seed {seed}, {} simulated{})",
        scenario.name,
        human(o.duration),
        match autoscaler {
            crate::Autoscaler::Dovetail => String::new(),
            other => format!(", autoscaler {}", other.name()),
        }
    );
    let _ = writeln!(s, "  total cost       ${:.4}", o.cost_total);
    let ratio = if o.lower_bound_total > 0.0 {
        format!("cost / bound {:.2}", o.cost_total / o.lower_bound_total)
    } else {
        "nothing to place".to_string()
    };
    let _ = writeln!(
        s,
        "  lower bound      ${:.4} ({ratio}; fluid LP over the NodePools' offerings)",
        o.lower_bound_total
    );
    let _ = writeln!(
        s,
        "  cost per hour    end {:.4}, max {:.4}",
        o.last.cost_per_hour, o.max_cost_per_hour
    );
    let _ = writeln!(s, "  node-hours       {:.2}", o.instance_seconds / 3600.0);
    let _ = writeln!(
        s,
        "  nodes            end {}, max {}",
        o.last.nodes, o.max_nodes
    );
    let errors: Vec<String> = o
        .fleet_errors
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let errors = if errors.is_empty() {
        "none".to_string()
    } else {
        errors.join(" ")
    };
    let _ = writeln!(
        s,
        "  launches         {} (fleet errors: {errors})",
        o.launches
    );
    let _ = writeln!(
        s,
        "  pods             {} at end, {} pending at end ({} explained), {} bindings",
        o.last.pods,
        o.still_pending.len(),
        o.explained_pending,
        o.bindings.len()
    );
    let _ = writeln!(
        s,
        "  pod pending      p50 {}  p99 {}  max {}",
        human(percentile(&waits, 50.0)),
        human(percentile(&waits, 99.0)),
        human(waits.last().copied().unwrap_or(Duration::ZERO))
    );
    let _ = writeln!(
        s,
        "  availability     {:.1} pod-minutes not running (pending or starting)",
        o.unavailable_pod_seconds / 60.0
    );
    let _ = writeln!(
        s,
        "  evictions        {} (refused by budgets {}, forced at terminationGracePeriod {})",
        o.evictions, o.evictions_refused, o.forced_deletions
    );
    for v in verdicts {
        let _ = writeln!(
            s,
            "  expect           {}: {}",
            v.what,
            if v.ok { "ok" } else { "FAILED" }
        );
    }
    for v in &o.violations {
        let _ = writeln!(s, "  VIOLATION        {v}");
    }
    let pass = verdicts.iter().all(|v| v.ok) && o.violations.is_empty();
    let _ = writeln!(
        s,
        "  verdict          {}",
        if pass { "PASS" } else { "FAIL" }
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_secs).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_secs(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_secs(99));
        assert_eq!(percentile(&[], 99.0), Duration::ZERO);
    }
}
