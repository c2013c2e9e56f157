//! The simulated world: a scenario becomes a turmoil simulation with controller, cloud, cluster, workload and
//! observer hosts sharing the fake cloud and API server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use dovetail::aws::cloud::InstanceState;
use fakecloud::{Catalog, CloudConfig, FakeCloud};
use fakekube::scheduler::Scheduler;
use fakekube::workloads::Workloads;
use fakekube::{FakeKube, Kubelets, Machine, Store};
use jiff::Timestamp;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{Rng, SeedableRng};
use serde_json::json;

use crate::Autoscaler;
use crate::clock::{EPOCH_SECONDS, SimClock};
use crate::error::SimError;
use crate::report::{Observations, Sample};
use crate::scenario::{Action, Manifest, QueueMessageKind, Scenario};
use crate::trace::Trace;

/// How often the observer samples the world (cost is integrated at this step).
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How often the observer writes a line to the trace.
const REPORT_EVERY: Duration = Duration::from_secs(300);
/// How many simulation steps pass between progress reports.
const PROGRESS_EVERY: u64 = 2_000;
/// How long a crashed controller stays down before it is started again (as a pod restart would).
const RESTART_DELAY: Duration = Duration::from_secs(10);

/// Everything a run produced.
pub struct Run {
    pub trace: Trace,
    pub observations: Observations,
    /// When and why an invariant stopped the run early.
    pub stopped: Option<(Duration, String)>,
    /// The controllers' metrics: one registry for all replicas and restarts, as a dashboard summing
    /// `increase()` over pods would show them.
    pub controller_metrics: Arc<dovetail::metrics::Metrics>,
}

/// What the kubelets see of the cloud, rebuilt only when an instance appears, changes state or gains tags
/// (most steps of a large cluster change none).
#[derive(Default)]
struct MachineCache {
    fingerprint: u64,
    machines: Vec<Machine>,
}

impl MachineCache {
    fn get(&mut self, cloud: &FakeCloud) -> &[Machine] {
        let fingerprint = cloud.with_instances(|all| {
            all.fold(0xcbf29ce484222325u64, |h, r| {
                let x = (r.instance.state as u64) << 32 | r.instance.tags.len() as u64;
                (h ^ x).wrapping_mul(0x100000001b3).rotate_left(5)
            })
        });
        if fingerprint != self.fingerprint || self.machines.is_empty() {
            self.machines = machines(cloud);
            self.fingerprint = fingerprint;
        }
        &self.machines
    }
}

/// The machines whose kubelets run, as each kubelet sees its machine: every instance past `pending` that
/// boots into this cluster — a node group's, or one launched with user data (the bootstrap that joins it).
/// Another owner's instance, or one launched bare (say with the AWS CLI against a served run), never joins.
pub fn machines(cloud: &FakeCloud) -> Vec<Machine> {
    cloud.with_instances(|all| {
        all.filter(|r| {
            r.instance.state != InstanceState::Pending
                && !r.foreign
                && (r.node_group || !r.user_data.trim().is_empty())
        })
        .filter_map(|r| {
            let entry = cloud.entry(&r.instance.instance_type)?;
            let (capacity, allocatable) = fakecloud::kubelet::resources(entry, &r.user_data);
            Some(Machine {
                instance_id: r.instance.id.clone(),
                node_name: r.instance.private_dns_name.clone(),
                zone: r.instance.zone.clone(),
                region: cloud.config().region.clone(),
                instance_type: r.instance.instance_type.clone(),
                capacity_type: r.instance.capacity_type.as_str().to_string(),
                arch: entry.arch.clone(),
                running: r.instance.state == InstanceState::Running,
                capacity,
                allocatable,
                tags: r.instance.tags.clone(),
                ebs_volume_limit: Some(fakecloud::kubelet::csi_ebs_volume_limit(entry)),
            })
        })
        .collect()
    })
}

/// The simulated cluster's API server endpoint, as nodes' user data carries it.
pub const SIM_ENDPOINT: &str = "https://sim.gr7.us-east-1.eks.amazonaws.com";

/// The simulated API server's store with Dovetail's CRDs installed, as `kubectl apply -f deploy/crds` does
/// in a real cluster: NodePools, NodeClaims and EC2NodeClasses are defaulted and validated by their schemas.
pub fn api_server_store(seed: u64) -> Store {
    let mut store = Store::new(ChaCha8Rng::seed_from_u64(seed));
    for (file, crd) in dovetail::crds::definitions() {
        let crd = serde_json::to_value(&crd).expect("a CRD serialises");
        if let Err(e) = store.install_crd(&crd) {
            panic!("the generated CRD {file} does not install: {e}");
        }
    }
    store
}

fn apply(kube: &FakeKube, trace: &Trace, manifests: &[Manifest], now: jiff::Timestamp) {
    for m in manifests {
        let kind = m.kind.clone();
        let ns = m.object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("default")
            .to_string();
        let name = m.object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // Cluster-scoped objects are keyed without a namespace.
        let key_ns = if fakekube::store::is_namespaced(&kind) {
            ns.as_str()
        } else {
            ""
        };
        let exists = kube.store().get(&kind, key_ns, &name).is_some();
        let result = if exists {
            kube.store()
                .patch(&kind, key_ns, &name, &m.object, false)
                .map(|_| ())
        } else {
            kube.store()
                .create(&kind, m.object.clone(), now)
                .map(|_| ())
        };
        match result {
            Ok(()) => trace.push(
                "workload",
                format!("apply {} {}", kind.to_lowercase(), name),
            ),
            Err(e) => trace.push(
                "workload",
                format!("apply {} {} failed: {e}", kind.to_lowercase(), name),
            ),
        }
    }
}

/// Requests from the timeline to the loop that drives the simulation, which alone can crash and restart
/// the controller host.
#[derive(Debug, Default)]
struct ControllerFaults {
    /// Crash now and stay down this long.
    crash_for: Option<Duration>,
    /// Down time for the crash armed inside the next successful CreateFleet.
    crash_after_fleet: Option<Duration>,
}

/// `kubectl delete node` of the oldest (or newest) nodes, optionally of one NodePool.
/// The nodes a timeline action picks: `count` of a NodePool (or any), oldest or newest first.
fn pick_nodes(
    kube: &FakeKube,
    count: u32,
    nodepool: Option<&str>,
    newest_first: bool,
) -> Vec<String> {
    let mut nodes: Vec<(String, String)> = kube
        .store()
        .iter("Node")
        .filter(|n| n["metadata"]["deletionTimestamp"].is_null())
        .filter(|n| nodepool.is_none_or(|p| n["metadata"]["labels"]["karpenter.sh/nodepool"] == p))
        .map(|n| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (
                text(&n["metadata"]["creationTimestamp"]),
                text(&n["metadata"]["name"]),
            )
        })
        .collect();
    nodes.sort();
    if newest_first {
        nodes.reverse();
    }
    nodes
        .into_iter()
        .take(count as usize)
        .map(|(_, n)| n)
        .collect()
}

/// `kubectl delete node` of the oldest (or newest) nodes, optionally of one NodePool.
fn delete_nodes(
    kube: &FakeKube,
    trace: &Trace,
    count: u32,
    nodepool: Option<&str>,
    newest_first: bool,
    now: Timestamp,
) {
    let picked = pick_nodes(kube, count, nodepool, newest_first);
    if picked.is_empty() {
        trace.push("workload", "delete nodes: no node matches".to_string());
        return;
    }
    let mut st = kube.store();
    for name in &picked {
        let _ = st.delete("Node", "", name, now);
    }
    drop(st);
    trace.push(
        "workload",
        format!("delete node {} (kubectl delete node)", picked.join(" ")),
    );
}

/// `kubectl delete pods` of the live pods a selector picks (in a namespace and zone when given), by name,
/// at most `count`.
fn delete_pods(kube: &FakeKube, trace: &Trace, pick: &crate::scenario::PodPick, now: Timestamp) {
    let mut st = kube.store();
    let zone_of = |node: &str| {
        st.get("Node", "", node)
            .and_then(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str())
            .map(str::to_string)
    };
    let mut picked: Vec<(String, String)> = st
        .iter("Pod")
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .filter(|p| pick.selector.matches(&p["metadata"]["labels"]))
        .filter(|p| {
            pick.namespace
                .as_ref()
                .is_none_or(|ns| p["metadata"]["namespace"] == ns.as_str())
        })
        .filter(|p| {
            pick.zone.as_ref().is_none_or(|z| {
                p["spec"]["nodeName"]
                    .as_str()
                    .and_then(zone_of)
                    .is_some_and(|pz| pz == *z)
            })
        })
        .map(fakekube::store::ns_name)
        .collect();
    picked.truncate(pick.count.map_or(usize::MAX, |c| c as usize));
    for (ns, name) in &picked {
        let _ = st.delete("Pod", ns, name, now);
    }
    drop(st);
    let names: Vec<String> = picked.iter().map(|(ns, n)| format!("{ns}/{n}")).collect();
    trace.push(
        "workload",
        if names.is_empty() {
            format!("delete pods `{}`: none match", pick.selector.text)
        } else {
            format!("delete pods `{}`: {}", pick.selector.text, names.join(", "))
        },
    );
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What one controller replica's host runs with.
#[derive(Clone)]
struct ControllerParts {
    kube: FakeKube,
    cloud: FakeCloud,
    trace: Trace,
    /// How many times this replica has started (shared across host restarts).
    restarts: Arc<Mutex<u64>>,
    seed: u64,
    clock: SimClock,
    autoscaler: Autoscaler,
    /// The replica's Lease identity when replicas elect a leader.
    identity: Option<String>,
    metrics: Arc<dovetail::metrics::Metrics>,
    /// The scenario's settings and those the timeline rolled out since, read at every (re)start.
    settings: Arc<Mutex<Vec<(String, String)>>>,
    /// Whether the cluster has an interruption queue.
    queue: bool,
    /// Wire mode: reach the API server over the simulated network with the real kube-rs adapter.
    wire: bool,
}

/// The Kube seam a controller replica uses: the in-memory API server, or in wire mode the production
/// kube-rs adapter over the simulated network.
fn kube_seam(kube: &FakeKube, wire: bool) -> Result<Arc<dyn dovetail::kube::Kube>, SimError> {
    if !wire {
        return Ok(Arc::new(kube.clone()));
    }
    #[cfg(feature = "wire")]
    {
        crate::wire::client()
    }
    #[cfg(not(feature = "wire"))]
    {
        Err(SimError::Run(
            "wire mode needs the simulator built with its `wire` feature (cargo xtask has it)"
                .into(),
        ))
    }
}

/// The settings a controller replica starts with: Dovetail's defaults, what the simulated cluster is
/// (its name, endpoint, CIDR, queue, Lease), then the scenario's `settings` in order.
fn controller_settings(
    overrides: &[(String, String)],
    queue_url: Option<String>,
    identity: Option<&str>,
) -> dovetail::Settings {
    let mut settings = dovetail::Settings {
        cluster_name: "sim".into(),
        // What nodes of the simulated EKS cluster are told (user data).
        cluster_endpoint: Some(SIM_ENDPOINT.into()),
        cluster_cidr: Some("10.100.0.0/16".into()),
        interruption_queue: queue_url,
        leader_election: identity
            .map(|id| dovetail::leader::LeaderElection::new("kube-system", id)),
        ..Default::default()
    };
    for (name, value) in overrides {
        if name == "INTERRUPTION_QUEUE" {
            // Any name is the simulated queue; empty turns interruption handling off.
            if value.is_empty() {
                settings.interruption_queue = None;
            }
            continue;
        }
        // Checked when the scenario was loaded; the names only the simulation owns are skipped.
        let _ = settings.set(name, value);
    }
    settings
}

async fn controller_host(p: ControllerParts) -> turmoil::Result {
    let ControllerParts {
        kube,
        cloud,
        trace,
        restarts,
        seed: controller_seed,
        clock,
        autoscaler,
        identity,
        metrics,
        settings,
        queue,
        wire,
    } = p;
    if autoscaler == Autoscaler::CaBaseline {
        let buffers = controller_settings(&lock(&settings), None, None)
            .feature_gates
            .capacity_buffer;
        crate::baseline::run(
            Arc::new(clock),
            Arc::new(kube),
            Arc::new(cloud),
            Arc::new(trace),
            buffers,
        )
        .await;
        return Ok(());
    }
    loop {
        let generation = {
            let mut r = lock(&restarts);
            *r += 1;
            *r
        };
        let seam = match kube_seam(&kube, wire) {
            Ok(seam) => seam,
            Err(e) => {
                trace.push("controller", format!("cannot start: {e}"));
                return Ok(());
            }
        };
        let ctx = dovetail::Context {
            clock: Arc::new(clock),
            kube: seam,
            journal: Arc::new(trace.clone()),
            metrics: metrics.clone(),
            // A restarted controller must not replay its predecessor's names.
            rng: ChaCha8Rng::seed_from_u64(controller_seed.wrapping_add(generation)),
            settings: controller_settings(
                &lock(&settings),
                queue.then(|| cloud.config().queue_url.clone()),
                identity.as_deref(),
            ),
        };
        if let Err(e) = dovetail::run(ctx, Arc::new(cloud.clone())).await {
            trace.push(
                "controller",
                format!("exited: {e}; restarting in {}s", RESTART_DELAY.as_secs()),
            );
        }
        tokio::time::sleep(RESTART_DELAY).await;
    }
}

async fn cloud_host(cloud: FakeCloud) -> turmoil::Result {
    loop {
        cloud.step();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

struct ClusterParts {
    kube: FakeKube,
    cloud: FakeCloud,
    scheduler: Arc<Mutex<Scheduler>>,
    kubelets: Arc<Mutex<Kubelets>>,
    workloads: Arc<Mutex<Workloads>>,
    observations: Arc<Mutex<Observations>>,
    machines: Arc<Mutex<MachineCache>>,
    interval: Duration,
    clock: SimClock,
    drains: Arc<Mutex<crate::drain::Drains>>,
    trace: Trace,
}

/// Events as trace lines: each one the controller writes, once, from a watch (reopened after a
/// disconnect from the last one seen).
struct EventTrace {
    rx: Option<tokio::sync::mpsc::UnboundedReceiver<dovetail::kube::WatchEvent>>,
    rv: u64,
}

impl EventTrace {
    fn drain(&mut self, kube: &FakeKube, trace: &Trace, epoch: Timestamp) {
        use tokio::sync::mpsc::error::TryRecvError;
        loop {
            let rx = self
                .rx
                .get_or_insert_with(|| kube.store().watch("Event", self.rv));
            match rx.try_recv() {
                Ok(dovetail::kube::WatchEvent::Added(e)) => {
                    self.rv = e["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(self.rv);
                    let o = &e["involvedObject"];
                    let name = match o["namespace"].as_str() {
                        Some(ns) => format!("{ns}/{}", o["name"].as_str().unwrap_or_default()),
                        None => o["name"].as_str().unwrap_or_default().to_string(),
                    };
                    // Stamped when it was written, not when this loop saw it.
                    let at = e["metadata"]["creationTimestamp"]
                        .as_str()
                        .and_then(|t| t.parse::<Timestamp>().ok())
                        .and_then(|t| Duration::try_from(t.duration_since(epoch)).ok())
                        .unwrap_or_else(|| trace.now());
                    trace.push_at(
                        at,
                        "event",
                        format!(
                            "{} {}/{name} {}: {}",
                            e["type"].as_str().unwrap_or_default(),
                            o["kind"].as_str().unwrap_or_default().to_lowercase(),
                            e["reason"].as_str().unwrap_or_default(),
                            e["message"].as_str().unwrap_or_default()
                        ),
                    );
                }
                Ok(_) => {}
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => self.rx = None,
            }
        }
    }
}

async fn cluster_host(p: ClusterParts) -> turmoil::Result {
    let mut events = EventTrace {
        rx: None,
        rv: p.kube.store().resource_version(),
    };
    loop {
        events.drain(&p.kube, &p.trace, p.clock.epoch());
        let now = dovetail::clock::Clock::now(&p.clock);
        let elapsed = p.clock.elapsed();
        let due = lock(&p.drains).due(elapsed);
        for node in due {
            let finished = crate::drain::round(&p.kube, &p.trace, &node).await;
            let mut d = lock(&p.drains);
            if finished {
                d.done(&node);
            } else {
                d.retry_later(&node, elapsed);
            }
        }
        lock(&p.workloads).step(&p.kube, now);
        let bound = {
            let mut s = lock(&p.scheduler);
            s.schedule(&p.kube, now);
            std::mem::take(&mut s.bindings)
        };
        lock(&p.observations).bindings.extend(bound);
        lock(&p.kubelets).step(&p.kube, lock(&p.machines).get(&p.cloud), now);
        tokio::time::sleep(p.interval).await;
    }
}

fn later(now: Timestamp, d: Duration) -> Timestamp {
    now.checked_add(d).unwrap_or(now)
}

struct WorkloadParts {
    kube: FakeKube,
    cloud: FakeCloud,
    trace: Trace,
    manifests: Vec<Manifest>,
    notes: Vec<String>,
    timeline: Vec<crate::scenario::Event>,
    clock: SimClock,
    faults: Arc<Mutex<ControllerFaults>>,
    settings: Arc<Mutex<Vec<(String, String)>>>,
    drains: Arc<Mutex<crate::drain::Drains>>,
    kubelets: Arc<Mutex<Kubelets>>,
}

/// How long a settings rollout keeps the controller down (a Deployment's pod replaced).
const SETTINGS_ROLLOUT: Duration = Duration::from_secs(10);

/// Kinds other objects lean on at admission (a pod's priority and runtime classes, a claim's default
/// storage class) or at scheduling (volumes, nodes): applied first, whatever the order written, as Helm
/// orders an install.
const APPLIED_FIRST: [&str; 7] = [
    "Namespace",
    "PriorityClass",
    "RuntimeClass",
    "StorageClass",
    "PersistentVolume",
    "Node",
    "CSINode",
];

async fn workload_host(p: WorkloadParts) -> turmoil::Result {
    let WorkloadParts {
        kube,
        cloud,
        trace,
        mut manifests,
        notes,
        timeline,
        clock,
        faults,
        settings,
        drains,
        kubelets,
    } = p;
    for note in notes {
        trace.push("load", note);
    }
    manifests.sort_by_key(|m| {
        APPLIED_FIRST
            .iter()
            .position(|k| *k == m.kind)
            .unwrap_or(APPLIED_FIRST.len())
    });
    apply(
        &kube,
        &trace,
        &manifests,
        dovetail::clock::Clock::now(&clock),
    );
    for ev in timeline {
        tokio::time::sleep(ev.at.saturating_sub(clock.elapsed())).await;
        let now = dovetail::clock::Clock::now(&clock);
        match ev.action {
            Action::Scale {
                kind,
                namespace,
                name,
                replicas,
            } => {
                let r = kube.store().patch(
                    &kind,
                    &namespace,
                    &name,
                    &json!({"spec": {"replicas": replicas}}),
                    false,
                );
                let what = format!("{}/{namespace}/{name}", kind.to_lowercase());
                match r {
                    Ok(_) => trace.push("workload", format!("scale {what} replicas={replicas}")),
                    Err(e) => trace.push("workload", format!("scale {what} failed: {e}")),
                }
            }
            Action::Apply(ms) => apply(&kube, &trace, &ms, now),
            Action::SpotInterruption { zone, fraction } => {
                cloud.spot_interruption(zone.as_deref(), fraction);
            }
            Action::CreateReservation(spec) => {
                cloud.create_capacity_reservation(&spec);
            }
            Action::CancelReservation(id) => {
                if !cloud.cancel_capacity_reservation(&id) {
                    trace.push(
                        "cloud",
                        format!("cancel capacity reservation {id}: no such active reservation"),
                    );
                }
            }
            Action::ReclaimReservation { id, count } => {
                cloud.reclaim_capacity_reservation(&id, count);
            }
            Action::CapacityShortage {
                instance_types,
                zones,
                capacity_type,
                for_,
            } => {
                cloud.capacity_shortage(&instance_types, &zones, capacity_type, later(now, for_));
            }
            Action::KmsKeyDisabled { key, for_ } => cloud.disable_kms_key(&key, later(now, for_)),
            Action::ApiThrottle { rate, for_ } => cloud.throttle(rate, later(now, for_)),
            Action::ApiOutage { for_ } => cloud.outage(later(now, for_)),
            Action::VcpuQuota {
                capacity_type,
                vcpus,
            } => cloud.set_vcpu_quota(capacity_type, vcpus),
            Action::AmiRelease {
                arch,
                version,
                deprecate_previous,
            } => {
                cloud.release_ami(&arch, &version, deprecate_previous);
            }
            Action::KubeOutage { for_ } => {
                kube.set_unavailable(later(now, for_));
                trace.push(
                    "fault",
                    format!("kube-apiserver-outage until {}", later(now, for_)),
                );
            }
            Action::WatchDisconnect => {
                kube.disconnect_watches();
                trace.push("fault", "watch-disconnect".to_string());
            }
            Action::QueueMessage { kind, zone } => {
                let target = cloud
                    .instances()
                    .into_iter()
                    .filter(|r| !r.foreign && r.instance.state == InstanceState::Running)
                    .find(|r| zone.as_ref().is_none_or(|z| &r.instance.zone == z))
                    .map(|r| r.instance.id);
                match (kind, target) {
                    (QueueMessageKind::Raw(body), _) => {
                        cloud.inject_message(body);
                        trace.push("fault", "queue-message raw".to_string());
                    }
                    (QueueMessageKind::RebalanceRecommendation, Some(id)) => {
                        cloud.rebalance_recommendation(&id);
                        trace.push(
                            "fault",
                            format!("queue-message rebalance-recommendation {id}"),
                        );
                    }
                    (QueueMessageKind::ScheduledChange, Some(id)) => {
                        cloud.health_event(&id);
                        trace.push("fault", format!("queue-message scheduled-change {id}"));
                    }
                    (_, None) => trace.push(
                        "fault",
                        "queue-message skipped: no running instance".to_string(),
                    ),
                }
            }
            Action::Delete {
                kind,
                namespace,
                name,
            } => {
                let r = kube.store().delete(&kind, &namespace, &name, now);
                let what = format!("{} {}", kind.to_lowercase(), name);
                match r {
                    Ok(()) => trace.push("workload", format!("delete {what}")),
                    Err(e) => trace.push("workload", format!("delete {what} failed: {e}")),
                }
            }
            Action::DeleteNodes {
                count,
                nodepool,
                newest_first,
            } => delete_nodes(&kube, &trace, count, nodepool.as_deref(), newest_first, now),
            Action::ControllerRestart {
                after_create_fleet,
                down_for,
            } => {
                let mut f = lock(&faults);
                if after_create_fleet {
                    f.crash_after_fleet = Some(down_for);
                    cloud.arm_crash_after_create_fleet();
                    trace.push(
                        "fault",
                        "controller-restart armed: after the next CreateFleet".to_string(),
                    );
                } else {
                    f.crash_for = Some(down_for);
                }
            }
            Action::ControllerDown { for_ } => lock(&faults).crash_for = Some(for_),
            Action::DeletePods(pick) => delete_pods(&kube, &trace, &pick, now),
            Action::Drain {
                node,
                count,
                nodepool,
                newest_first,
            } => {
                let picked = match node {
                    Some(n) => vec![n],
                    None => pick_nodes(&kube, count, nodepool.as_deref(), newest_first),
                };
                if picked.is_empty() {
                    trace.push("workload", "drain: no node matches".to_string());
                }
                for n in picked {
                    trace.push(
                        "workload",
                        format!("drain node {n}: cordoned (kubectl drain)"),
                    );
                    lock(&drains).start(&kube, &n, clock.elapsed());
                }
            }
            Action::NodeFault {
                fault,
                node,
                count,
                nodepool,
                newest_first,
                for_,
            } => {
                let picked = match node {
                    Some(n) => vec![n],
                    None => pick_nodes(&kube, count, nodepool.as_deref(), newest_first),
                };
                if picked.is_empty() {
                    trace.push(
                        "fault",
                        format!("node-fault {}: no node matches", fault.name()),
                    );
                }
                let lasting = for_
                    .map(|d| format!(" for {}s", d.as_secs()))
                    .unwrap_or_default();
                for n in picked {
                    trace.push(
                        "fault",
                        format!("node-fault {} on node {n}{lasting}", fault.name()),
                    );
                    lock(&kubelets).fault(&n, fault, now, for_);
                }
            }
            Action::Settings(changed) => {
                let shown: Vec<String> = changed.iter().map(|(k, v)| format!("{k}={v}")).collect();
                trace.push(
                    "workload",
                    format!(
                        "settings {} rolled out: the controller restarts",
                        shown.join(" ")
                    ),
                );
                lock(&settings).extend(changed);
                lock(&faults).crash_for = Some(SETTINGS_ROLLOUT);
            }
        }
    }
    std::future::pending::<()>().await;
    Ok(())
}

/// Step the simulation to its end, crashing and restarting the controller host when the timeline asks.
/// Crashes happen between steps, so they land at the same point of every run with the same seed.
/// Stops at the first step after which an invariant is violated, returning when and which.
fn drive(
    sim: &mut turmoil::Sim<'_>,
    faults: &Mutex<ControllerFaults>,
    cloud: &FakeCloud,
    kube: &FakeKube,
    trace: &Trace,
    progress: Option<(&crate::Progress, Duration)>,
    front: Option<&crate::serve::Front>,
) -> Result<Option<(Duration, String)>, SimError> {
    let mut back_at: Option<Duration> = None;
    let mut steps: u64 = 0;
    loop {
        if sim.step().map_err(|e| SimError::Run(e.to_string()))? {
            return Ok(None);
        }
        let now = sim.elapsed();
        if let Some(front) = front
            && front.after_step(now)
        {
            trace.push_at(
                now,
                "serve",
                "stopped from outside; the summary covers the run so far".to_string(),
            );
            return Ok(None);
        }
        steps += 1;
        if let Some((p, total)) = progress
            && steps.is_multiple_of(PROGRESS_EVERY)
        {
            (p.0)(now.min(total), total);
        }
        if let Some(v) = cloud
            .violations()
            .into_iter()
            .chain(kube.audit().violations)
            .next()
        {
            trace.push_at(now, "invariant", format!("VIOLATED: {v}"));
            return Ok(Some((now, v)));
        }
        let crash_for = {
            let mut f = lock(faults);
            if cloud.take_crash_signal() {
                f.crash_after_fleet.take()
            } else {
                f.crash_for.take()
            }
        };
        if let Some(down) = crash_for {
            sim.crash("controller");
            trace.push_at(
                now,
                "fault",
                format!("controller crashed; restarting in {}s", down.as_secs()),
            );
            back_at = Some(now + down);
        }
        if back_at.is_some_and(|t| now >= t) {
            back_at = None;
            sim.bounce("controller");
            trace.push_at(now, "fault", "controller restarted".to_string());
        }
    }
}

/// Run a scenario to its end (or `until`), with `seed` overriding the scenario's own.
pub fn run(
    scenario: &Scenario,
    seed: u64,
    until: Option<Duration>,
    autoscaler: Autoscaler,
    progress: Option<&crate::Progress>,
    serve: Option<&crate::serve::Serve>,
    wire: bool,
) -> Result<Run, SimError> {
    let duration = until.map_or(scenario.duration, |u| u.min(scenario.duration));
    let clock = SimClock::default();
    let trace = Trace::new(clock);
    // One master RNG; each component gets its own stream, drawn in a fixed order.
    let mut master = ChaCha8Rng::seed_from_u64(seed);
    let cloud_seed = master.next_u64();
    let store_seed = master.next_u64();
    let kubelet_seed = master.next_u64();
    let controller_seed = master.next_u64();
    let turmoil_seed = master.next_u64();

    let cloud = FakeCloud::new(
        CloudConfig {
            region: scenario.cloud.region.clone(),
            zones: scenario.cloud.zones.clone(),
            launch_latency: scenario.cloud.launch_latency,
            api_latency: scenario.cloud.api_latency,
            foreign_instances: scenario.cloud.foreign_instances,
            spot_depth: scenario.cloud.spot_depth,
            on_demand_vcpu_quota: scenario.cloud.on_demand_vcpu_quota,
            spot_vcpu_quota: scenario.cloud.spot_vcpu_quota,
            visibility_lag: scenario.cloud.visibility_lag,
            subnets: scenario.cloud.subnets.clone(),
            security_groups: scenario.cloud.security_groups.clone(),
            images: scenario.cloud.images.clone(),
            offerings: scenario.cloud.offerings.clone(),
            existing_instances: scenario.cloud.existing_instances.clone(),
            capacity_reservations: scenario.cloud.capacity_reservations.clone(),
            // Subnets and security groups are tagged for the cluster the controller is told it runs.
            cluster_name: scenario
                .settings
                .iter()
                .rev()
                .find(|(k, _)| k == "CLUSTER_NAME")
                .map_or_else(|| "sim".to_string(), |(_, v)| v.clone()),
            ..CloudConfig::default()
        },
        Catalog::builtin(),
        cloud_seed,
        Arc::new(clock),
        Arc::new(trace.clone()),
    );
    let mut store = api_server_store(store_seed);
    store.set_kubernetes_version(&scenario.kubernetes_version);
    let kube = FakeKube::new(store, Arc::new(clock), scenario.api_latency);
    let observations = Arc::new(Mutex::new(Observations::default()));
    let faults = Arc::new(Mutex::new(ControllerFaults::default()));

    let wire = scenario.wire || wire;
    if wire && !cfg!(feature = "wire") {
        return Err(SimError::Run(
            "wire mode needs the simulator built with its `wire` feature (cargo xtask has it)"
                .into(),
        ));
    }
    let mut builder = turmoil::Builder::new();
    builder
        .rng_seed(turmoil_seed)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECONDS as u64))
        .simulation_duration(duration + Duration::from_secs(60))
        .tick_duration(scenario.tick);
    if wire {
        // The scenario's API latency, half each way, instead of the in-memory server's sleep.
        let one_way = scenario.api_latency / 2;
        builder
            .min_message_latency(one_way)
            .max_message_latency(one_way);
    }
    let mut sim = builder.build();
    #[cfg(feature = "wire")]
    if wire {
        let server = fakekube::http::ApiServer::new(kube.clone(), Arc::new(clock));
        sim.host(crate::wire::HOST, move || {
            crate::wire::serve(server.clone())
        });
    }

    // Replica 0 is the host the timeline crashes; with more than one, every replica elects over a Lease.
    let settings = Arc::new(Mutex::new(scenario.settings.clone()));
    let drains = Arc::new(Mutex::new(crate::drain::Drains::default()));
    // The cluster host steps the kubelets; the timeline's node faults reach them too.
    let kubelets = Arc::new(Mutex::new(Kubelets::new(
        ChaCha8Rng::seed_from_u64(kubelet_seed),
        scenario.cloud.boot_to_ready,
        Arc::new(trace.clone()),
    )));
    let replicas = if autoscaler == Autoscaler::Dovetail {
        scenario.controller_replicas.max(1)
    } else {
        1
    };
    let controller_metrics = Arc::new(dovetail::metrics::Metrics::default());
    for i in 0..replicas {
        let host = if i == 0 {
            "controller".to_string()
        } else {
            format!("controller-{i}")
        };
        let parts = ControllerParts {
            kube: kube.clone(),
            cloud: cloud.clone(),
            trace: trace.clone(),
            restarts: Arc::new(Mutex::new(0u64)),
            // Each replica draws its own names.
            seed: controller_seed.wrapping_add(u64::from(i) << 32),
            clock,
            autoscaler,
            identity: (replicas > 1).then(|| format!("dovetail-{i}")),
            metrics: controller_metrics.clone(),
            settings: settings.clone(),
            queue: scenario.cloud.interruption_queue,
            wire,
        };
        sim.host(host, move || controller_host(parts.clone()));
    }
    {
        let cloud = cloud.clone();
        sim.host("cloud", move || cloud_host(cloud.clone()));
    }
    {
        let (kube, cloud, trace) = (kube.clone(), cloud.clone(), trace.clone());
        let interval = scenario.scheduler_interval;
        let scheduler = Arc::new(Mutex::new(Scheduler::new(Arc::new(trace.clone()))));
        let kubelets = kubelets.clone();
        let workloads = Arc::new(Mutex::new(Workloads::new(Arc::new(trace.clone()))));
        let obs = observations.clone();
        let machines = Arc::new(Mutex::new(MachineCache::default()));
        let drains = drains.clone();
        sim.host("cluster", move || {
            let parts = ClusterParts {
                kube: kube.clone(),
                cloud: cloud.clone(),
                scheduler: scheduler.clone(),
                kubelets: kubelets.clone(),
                workloads: workloads.clone(),
                observations: obs.clone(),
                machines: machines.clone(),
                interval,
                clock,
                drains: drains.clone(),
                trace: trace.clone(),
            };
            cluster_host(parts)
        });
    }
    {
        let (kube, cloud, trace) = (kube.clone(), cloud.clone(), trace.clone());
        let manifests = scenario.manifests.clone();
        let notes = scenario.notes.clone();
        let timeline = scenario.timeline.clone();
        let faults = faults.clone();
        let settings = settings.clone();
        let drains = drains.clone();
        let kubelets = kubelets.clone();
        sim.host("workload", move || {
            workload_host(WorkloadParts {
                kube: kube.clone(),
                cloud: cloud.clone(),
                trace: trace.clone(),
                manifests: manifests.clone(),
                notes: notes.clone(),
                timeline: timeline.clone(),
                clock,
                faults: faults.clone(),
                settings: settings.clone(),
                drains: drains.clone(),
                kubelets: kubelets.clone(),
            })
        });
    }
    {
        let (kube, cloud, trace, obs) = (
            kube.clone(),
            cloud.clone(),
            trace.clone(),
            observations.clone(),
        );
        sim.client("observer", async move {
            let mut next_report = Duration::ZERO;
            let mut bounder = crate::bound::Bounder::default();
            let mut counts = crate::report::Counts::default();
            loop {
                let elapsed = clock.elapsed();
                let mut sample = Sample::take(&kube, &cloud, elapsed, &mut counts);
                sample.lower_bound_per_hour = bounder.sample(&kube, &cloud, elapsed);
                if elapsed >= next_report {
                    trace.push("observe", sample.line());
                    next_report += REPORT_EVERY;
                }
                lock(&obs).add(sample, SAMPLE_EVERY);
                if elapsed >= duration {
                    break;
                }
                tokio::time::sleep(SAMPLE_EVERY.min(duration - elapsed)).await;
            }
            Ok(())
        });
    }
    let front = serve
        .map(|s| crate::serve::Front::start(s, kube.clone(), &cloud, trace.clone(), clock.epoch()))
        .transpose()?;
    let stopped = drive(
        &mut sim,
        &faults,
        &cloud,
        &kube,
        &trace,
        progress.map(|p| (p, duration)),
        front.as_ref(),
    )?;
    drop(front);
    let mut observations = std::mem::take(&mut *lock(&observations));
    let end = stopped
        .as_ref()
        .map_or(sim.elapsed().min(duration), |(at, _)| *at);
    if let Some(p) = progress {
        (p.0)(duration, duration);
    }
    observations.finish(&kube, &cloud, end, clock.epoch());
    Ok(Run {
        controller_metrics,
        trace,
        observations,
        stopped,
    })
}
