//! Random scenarios for property tests: a small space of workload shapes and fault schedules, rendered as
//! scenario YAML, and shrinking — a failing case is cut down (faults dropped, workloads removed or
//! shrunk) while it still fails, so the YAML written out is a small reproduction.

use std::fmt::Write as _;

use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::Rng;

use crate::{RunOptions, Scenario, simulate};

/// One Deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub replicas: u32,
    pub millicpu: u32,
    pub memory_mib: u32,
    /// A PodDisruptionBudget with maxUnavailable 1.
    pub budget: bool,
    /// A zone topology spread (maxSkew 1, DoNotSchedule).
    pub spread: bool,
    /// A host port each pod holds (one pod per node), possibly the DaemonSet's.
    pub host_port: Option<u16>,
}

/// A DaemonSet on every node.
#[derive(Debug, Clone, PartialEq)]
pub struct Daemon {
    pub millicpu: u32,
    /// A host port it holds on every node.
    pub host_port: Option<u16>,
}

/// One timeline event, at a minute mark.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    Scale { workload: usize, replicas: u32 },
    SpotInterruption { percent: u32 },
    CapacityShortage { zone: usize, minutes: u32 },
    ControllerRestart { after_create_fleet: bool },
    DeleteNode,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub spot: bool,
    pub workloads: Vec<Workload>,
    pub daemon: Option<Daemon>,
    pub faults: Vec<(u32, Fault)>,
    pub minutes: u32,
}

const ZONES: [&str; 3] = ["us-east-1a", "us-east-1b", "us-east-1c"];

fn pick(rng: &mut ChaCha8Rng, n: u32) -> u32 {
    rng.next_u32() % n.max(1)
}

impl Shape {
    pub fn random(rng: &mut ChaCha8Rng) -> Shape {
        let workloads: Vec<Workload> = (0..1 + pick(rng, 2))
            .map(|i| Workload {
                replicas: 1 + pick(rng, 30),
                millicpu: [250, 500, 1000, 2000][pick(rng, 4) as usize],
                memory_mib: [512, 1024, 2048, 4096][pick(rng, 4) as usize],
                budget: pick(rng, 2) == 0,
                spread: pick(rng, 3) == 0,
                host_port: [None, None, None, Some(8080 + i as u16), Some(9100)]
                    [pick(rng, 5) as usize],
            })
            .collect();
        let daemon = (pick(rng, 2) == 0).then(|| Daemon {
            millicpu: [100, 250, 500][pick(rng, 3) as usize],
            host_port: (pick(rng, 2) == 0).then_some(9100),
        });
        let minutes = 20;
        let faults = (0..pick(rng, 5))
            .map(|_| {
                let at = 2 + pick(rng, minutes - 6);
                let f = match pick(rng, 5) {
                    0 => Fault::Scale {
                        workload: pick(rng, workloads.len() as u32) as usize,
                        replicas: pick(rng, 40),
                    },
                    1 => Fault::SpotInterruption {
                        percent: 20 + pick(rng, 81),
                    },
                    2 => Fault::CapacityShortage {
                        zone: pick(rng, 3) as usize,
                        minutes: 1 + pick(rng, 10),
                    },
                    3 => Fault::ControllerRestart {
                        after_create_fleet: pick(rng, 2) == 0,
                    },
                    _ => Fault::DeleteNode,
                };
                (at, f)
            })
            .collect::<Vec<_>>();
        let mut faults = faults;
        faults.sort_by_key(|(at, _)| *at);
        Shape {
            spot: pick(rng, 2) == 0,
            workloads,
            daemon,
            faults,
            minutes,
        }
    }

    pub fn to_yaml(&self, seed: u64) -> String {
        let mut y = String::new();
        let capacity = if self.spot {
            "[spot, on-demand]"
        } else {
            "[on-demand]"
        };
        let _ = write!(
            y,
            "name: random\ndescription: a generated case\nseed: {seed}\nduration: {}m\ntick: 1s\n\
             cloud:\n  region: us-east-1\n  zones: [us-east-1a, us-east-1b, us-east-1c]\n\
             manifests:\n\
             \x20 - apiVersion: karpenter.k8s.aws/v1\n    kind: EC2NodeClass\n    metadata: {{name: default}}\n\
             \x20   spec:\n      amiSelectorTerms: [{{alias: al2023@latest}}]\n      role: KarpenterNodeRole-sim\n\
             \x20     subnetSelectorTerms: [{{tags: {{karpenter.sh/discovery: sim}}}}]\n\
             \x20     securityGroupSelectorTerms: [{{tags: {{karpenter.sh/discovery: sim}}}}]\n\
             \x20 - apiVersion: karpenter.sh/v1\n    kind: NodePool\n    metadata: {{name: default}}\n\
             \x20   spec:\n      template:\n        spec:\n\
             \x20         nodeClassRef: {{group: karpenter.k8s.aws, kind: EC2NodeClass, name: default}}\n\
             \x20         requirements:\n\
             \x20           - {{key: karpenter.sh/capacity-type, operator: In, values: {capacity}}}\n\
             \x20           - {{key: kubernetes.io/arch, operator: In, values: [amd64]}}\n\
             \x20     disruption: {{consolidationPolicy: WhenEmptyOrUnderutilized, consolidateAfter: 1m}}\n",
            self.minutes
        );
        for (i, w) in self.workloads.iter().enumerate() {
            let spread = if w.spread {
                format!(
                    "\n          topologySpreadConstraints:\n            - {{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, \
                     whenUnsatisfiable: DoNotSchedule, labelSelector: {{matchLabels: {{app: w{i}}}}}}}"
                )
            } else {
                String::new()
            };
            let ports = w.host_port.map_or(String::new(), |p| {
                format!("\n              ports: [{{containerPort: {p}, hostPort: {p}}}]")
            });
            let _ = write!(
                y,
                "  - apiVersion: apps/v1\n    kind: Deployment\n    metadata: {{name: w{i}, namespace: default}}\n\
                 \x20   spec:\n      replicas: {}\n      selector: {{matchLabels: {{app: w{i}}}}}\n\
                 \x20     template:\n        metadata: {{labels: {{app: w{i}}}}}\n        spec:{spread}\n\
                 \x20         containers:\n            - name: c\n              image: app{ports}\n\
                 \x20             resources: {{requests: {{cpu: {}m, memory: {}Mi}}}}\n",
                w.replicas, w.millicpu, w.memory_mib
            );
            if w.budget {
                let _ = write!(
                    y,
                    "  - apiVersion: policy/v1\n    kind: PodDisruptionBudget\n    metadata: {{name: w{i}, namespace: default}}\n\
                     \x20   spec: {{maxUnavailable: 1, selector: {{matchLabels: {{app: w{i}}}}}}}\n"
                );
            }
        }
        if let Some(d) = &self.daemon {
            let ports = d.host_port.map_or(String::new(), |p| {
                format!("\n              ports: [{{containerPort: {p}, hostPort: {p}}}]")
            });
            let _ = write!(
                y,
                "  - apiVersion: apps/v1\n    kind: DaemonSet\n    metadata: {{name: agent, namespace: kube-system}}\n\
                 \x20   spec:\n      selector: {{matchLabels: {{app: agent}}}}\n\
                 \x20     template:\n        metadata: {{labels: {{app: agent}}}}\n        spec:\n\
                 \x20         containers:\n            - name: agent\n              image: agent{ports}\n\
                 \x20             resources: {{requests: {{cpu: {}m, memory: 128Mi}}}}\n",
                d.millicpu
            );
        }
        y.push_str("timeline:\n");
        if self.faults.is_empty() {
            y.push_str("  []\n");
        }
        for (at, f) in &self.faults {
            let action = match f {
                Fault::Scale { workload, replicas } => {
                    format!("scale: {{deployment: default/w{workload}, replicas: {replicas}}}")
                }
                Fault::SpotInterruption { percent } => {
                    format!(
                        "spot_interruption: {{fraction: {}}}",
                        *percent as f64 / 100.0
                    )
                }
                Fault::CapacityShortage { zone, minutes } => format!(
                    "capacity_shortage: {{instance_types: [], zones: [{}], for: {minutes}m}}",
                    ZONES[*zone]
                ),
                Fault::ControllerRestart { after_create_fleet } => {
                    if *after_create_fleet {
                        "controller_restart: {after: create_fleet}".to_string()
                    } else {
                        "controller_restart: {}".to_string()
                    }
                }
                Fault::DeleteNode => "delete_nodes: {count: 1}".to_string(),
            };
            let _ = writeln!(y, "  - at: {at}m\n    {action}");
        }
        y
    }

    /// Smaller variants, most aggressive first.
    pub fn shrinks(&self) -> Vec<Shape> {
        let mut out = Vec::new();
        for i in 0..self.faults.len() {
            let mut s = self.clone();
            s.faults.remove(i);
            out.push(s);
        }
        if self.workloads.len() > 1 {
            for i in 0..self.workloads.len() {
                let mut s = self.clone();
                s.workloads.remove(i);
                // Scale events of later workloads move down one index; those of the removed one go.
                s.faults.retain_mut(|(_, f)| match f {
                    Fault::Scale { workload, .. } if *workload == i => false,
                    Fault::Scale { workload, .. } if *workload > i => {
                        *workload -= 1;
                        true
                    }
                    _ => true,
                });
                out.push(s);
            }
        }
        if self.daemon.is_some() {
            let mut s = self.clone();
            s.daemon = None;
            out.push(s);
        }
        for i in 0..self.workloads.len() {
            let w = &self.workloads[i];
            if w.host_port.is_some() {
                let mut s = self.clone();
                s.workloads[i].host_port = None;
                out.push(s);
            }
            if w.replicas > 1 {
                let mut s = self.clone();
                s.workloads[i].replicas = w.replicas.div_ceil(2);
                out.push(s);
            }
            if w.budget || w.spread {
                let mut s = self.clone();
                s.workloads[i].budget = false;
                s.workloads[i].spread = false;
                out.push(s);
            }
        }
        out
    }
}

/// Run one case; Err names what broke (an invariant, or a scenario that does not load).
pub fn check(shape: &Shape, seed: u64) -> Result<(), String> {
    let scenario =
        Scenario::parse("random.yaml", &shape.to_yaml(seed)).map_err(|e| e.to_string())?;
    let out = simulate(&scenario, &RunOptions::default()).map_err(|e| e.to_string())?;
    if out.metrics.violations > 0 || out.summary.contains("STOPPED") {
        let why: Vec<&str> = out
            .summary
            .lines()
            .filter(|l| l.contains("VIOLATION") || l.contains("STOPPED"))
            .collect();
        return Err(why.join("\n"));
    }
    Ok(())
}

/// The smallest variant of a failing case that still fails (greedy: take the first shrink that fails,
/// repeat until none does).
pub fn minimize(shape: Shape, seed: u64) -> Shape {
    minimize_by(shape, |s| check(s, seed).is_err())
}

pub fn minimize_by(mut shape: Shape, fails: impl Fn(&Shape) -> bool) -> Shape {
    'outer: loop {
        for s in shape.shrinks() {
            if fails(&s) {
                shape = s;
                continue 'outer;
            }
        }
        return shape;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn generated_cases_load_as_scenarios() {
        for seed in 0..50 {
            let shape = Shape::random(&mut ChaCha8Rng::seed_from_u64(seed));
            let yaml = shape.to_yaml(seed);
            Scenario::parse("random.yaml", &yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        }
    }

    #[test]
    fn shrinking_keeps_only_what_the_failure_needs() {
        // A made-up failure: a node deletion with at least five replicas of some workload.
        let fails = |s: &Shape| {
            s.faults.iter().any(|(_, f)| *f == Fault::DeleteNode)
                && s.workloads.iter().any(|w| w.replicas >= 5)
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let shape = (0..)
            .map(|_| Shape::random(&mut rng))
            .find(|s| fails(s) && s.faults.len() > 1)
            .expect("some case fails");
        let small = minimize_by(shape, fails);
        assert!(fails(&small));
        assert_eq!(small.faults.len(), 1, "{small:?}");
        assert_eq!(small.workloads.len(), 1, "{small:?}");
        assert!((5..10).contains(&small.workloads[0].replicas), "{small:?}");
        assert!(!small.workloads[0].budget && !small.workloads[0].spread);
        assert!(small.daemon.is_none() && small.workloads[0].host_port.is_none());
    }
}
