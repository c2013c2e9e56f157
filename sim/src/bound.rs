//! The fluid lower bound on cost: the cheapest mix of fractional nodes, over the NodePools' allowed
//! offerings, whose summed allocatable covers the summed requests of every pod, per resource — a small LP.
//!
//! No autoscaler can pay less at that moment (whole nodes, DaemonSets and bin-packing only add), so the
//! bound integrated over a run is the yardstick `cost / lower bound` is measured against.

use std::collections::BTreeMap;

use dovetail::aws::cloud::CapacityType;
use dovetail::crds::NodePool;
use dovetail::crds::labels;
use dovetail::resources::{CPU, MEMORY, PODS, pod_requests};
use dovetail::scheduling::requirements::Requirements;
use fakecloud::FakeCloud;
use fakekube::FakeKube;
use k8s_openapi::api::core::v1::Pod;

/// The resources the bound covers.
pub const RESOURCES: [&str; 4] = [CPU, MEMORY, PODS, "nvidia.com/gpu"];

/// One instance type at its cheapest allowed offering.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub instance_type: String,
    pub price: f64,
    /// Allocatable per [`RESOURCES`] entry.
    pub supply: [f64; 4],
}

/// The cheapest offering of every instance type some NodePool allows (requirements and template labels
/// against the type's labels, zone and capacity type), at the cloud's current prices.
pub fn columns(cloud: &FakeCloud, kube: &FakeKube) -> Vec<Column> {
    let pools: Vec<Requirements> = kube
        .store()
        .iter("NodePool")
        .filter_map(|p| serde_json::from_value::<NodePool>(p.clone()).ok())
        .filter_map(|p| {
            let mut r =
                Requirements::from_node_selector(&p.spec.template.spec.requirements).ok()?;
            if let Some(m) = &p.spec.template.metadata {
                r = r.merged(&Requirements::from_labels(&m.labels));
            }
            Some(r)
        })
        .collect();
    let (offerings, on_demand, spot) = cloud.market();
    let types = dovetail::aws::instancetype::build(
        &cloud.catalog().describe_instance_types(),
        &offerings,
        &on_demand,
        &spot,
    );
    let mut out = Vec::new();
    for t in &types {
        let allowed = |zone: &str, ct: CapacityType| {
            let mut l = t.labels.clone();
            l.insert(labels::ZONE.into(), zone.into());
            l.insert(labels::CAPACITY_TYPE.into(), ct.as_str().into());
            // A label the type does not carry (a template's `team: web`) is the node's, given by the
            // pool: it neither allows nor rules out the type.
            pools
                .iter()
                .any(|p| p.0.values().all(|r| l.get(&r.key).is_none_or(|v| r.has(v))))
        };
        let Some(best) = t
            .offerings
            .iter()
            .filter(|o| allowed(&o.zone, o.capacity_type))
            .min_by(|a, b| a.price.total_cmp(&b.price))
        else {
            continue;
        };
        let mut supply = [0.0; 4];
        for (i, r) in RESOURCES.iter().enumerate() {
            supply[i] = t.allocatable.get(r).0 as f64 / 1000.0;
        }
        out.push(Column {
            instance_type: t.name.clone(),
            price: best.price,
            supply,
        });
    }
    out
}

/// The LP's answer: its cost per hour and the fractional node counts of the types it uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Bound {
    pub cost_per_hour: f64,
    pub mix: BTreeMap<String, f64>,
    /// Per resource, what one more unit of demand would cost (the dual prices; zero where slack).
    pub shadow_prices: [f64; 4],
}

const EPS: f64 = 1e-9;

/// min Σ price·x subject to Σ supply·x ≥ demand per resource, x ≥ 0, by a two-phase simplex on the (at most
/// four-row) tableau. A resource no column supplies is left out: the bound then covers the rest.
pub fn lower_bound(columns: &[Column], demand: &[f64; 4]) -> Bound {
    let rows: Vec<usize> = (0..4)
        .filter(|&r| demand[r] > EPS && columns.iter().any(|c| c.supply[r] > EPS))
        .collect();
    let m = rows.len();
    let n = columns.len();
    if m == 0 {
        return Bound {
            cost_per_hour: 0.0,
            mix: BTreeMap::new(),
            shadow_prices: [0.0; 4],
        };
    }
    // Columns: x (n), surplus (m), artificial (m). Rows scaled so every demand is 1.
    let width = n + 2 * m;
    let mut t = vec![vec![0.0; width]; m];
    let mut rhs = vec![1.0; m];
    for (i, &r) in rows.iter().enumerate() {
        for (j, c) in columns.iter().enumerate() {
            t[i][j] = c.supply[r] / demand[r];
        }
        t[i][n + i] = -1.0;
        t[i][n + m + i] = 1.0;
    }
    let mut basis: Vec<usize> = (0..m).map(|i| n + m + i).collect();
    let phase1: Vec<f64> = (0..width)
        .map(|j| if j >= n + m { 1.0 } else { 0.0 })
        .collect();
    simplex(&mut t, &mut rhs, &mut basis, &phase1, width);
    // Drive any artificial left in the basis (at level zero) out, then forbid artificials.
    for i in 0..m {
        if basis[i] >= n + m
            && let Some(j) = (0..n + m).find(|&j| t[i][j].abs() > EPS)
        {
            pivot(&mut t, &mut rhs, &mut basis, i, j);
        }
    }
    let phase2: Vec<f64> = (0..width)
        .map(|j| if j < n { columns[j].price } else { 0.0 })
        .collect();
    simplex(&mut t, &mut rhs, &mut basis, &phase2, n + m);
    let mut mix = BTreeMap::new();
    let mut cost = 0.0;
    for (i, &b) in basis.iter().enumerate() {
        if b < n && rhs[i] > EPS {
            cost += columns[b].price * rhs[i];
            *mix.entry(columns[b].instance_type.clone()).or_insert(0.0) += rhs[i];
        }
    }
    // The dual price of row i is the reduced cost of its surplus column, rescaled to the resource's unit.
    let mut shadow_prices = [0.0; 4];
    for (i, &r) in rows.iter().enumerate() {
        let d = reduced_cost(&t, &basis, &phase2, n + i);
        shadow_prices[r] = d / demand[r];
    }
    Bound {
        cost_per_hour: cost,
        mix,
        shadow_prices,
    }
}

fn reduced_cost(t: &[Vec<f64>], basis: &[usize], cost: &[f64], j: usize) -> f64 {
    cost[j]
        - basis
            .iter()
            .enumerate()
            .map(|(i, &b)| cost[b] * t[i][j])
            .sum::<f64>()
}

fn pivot(t: &mut [Vec<f64>], rhs: &mut [f64], basis: &mut [usize], row: usize, col: usize) {
    let p = t[row][col];
    for v in t[row].iter_mut() {
        *v /= p;
    }
    rhs[row] /= p;
    let pivot_row = t[row].clone();
    for i in 0..t.len() {
        if i != row {
            let f = t[i][col];
            if f.abs() > 0.0 {
                for (v, pv) in t[i].iter_mut().zip(&pivot_row) {
                    *v -= f * pv;
                }
                rhs[i] -= f * rhs[row];
            }
        }
    }
    basis[row] = col;
}

/// Minimise `cost` over the columns below `enter_below`, from a feasible canonical tableau. Bland's rule
/// (lowest index enters, lowest basis index leaves on ties) cannot cycle.
fn simplex(
    t: &mut [Vec<f64>],
    rhs: &mut [f64],
    basis: &mut [usize],
    cost: &[f64],
    enter_below: usize,
) {
    loop {
        let Some(col) = (0..enter_below)
            .filter(|j| !basis.contains(j))
            .find(|&j| reduced_cost(t, basis, cost, j) < -EPS)
        else {
            return;
        };
        let leave = (0..t.len()).filter(|&i| t[i][col] > EPS).min_by(|&a, &b| {
            (rhs[a] / t[a][col])
                .total_cmp(&(rhs[b] / t[b][col]))
                .then(basis[a].cmp(&basis[b]))
        });
        // Unbounded cannot happen with positive prices; stop rather than loop.
        let Some(row) = leave else { return };
        pivot(t, rhs, basis, row, col);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, price: f64, supply: [f64; 4]) -> Column {
        Column {
            instance_type: name.into(),
            price,
            supply,
        }
    }

    #[test]
    fn single_resource_takes_the_cheapest_per_unit() {
        let cols = [
            col("a", 1.0, [2.0, 0.0, 0.0, 0.0]),
            col("b", 3.0, [8.0, 0.0, 0.0, 0.0]),
        ];
        let b = lower_bound(&cols, &[16.0, 0.0, 0.0, 0.0]);
        // b: 3/8 per cpu beats a: 1/2.
        assert!((b.cost_per_hour - 6.0).abs() < 1e-9, "{b:?}");
        assert!((b.mix["b"] - 2.0).abs() < 1e-9);
        assert!((b.shadow_prices[0] - 0.375).abs() < 1e-9);
    }

    #[test]
    fn two_resources_mix_a_cpu_type_and_a_memory_type() {
        // cpu-heavy c: 4 cpu 8 mem for 1; memory-heavy r: 1 cpu 16 mem for 1. Need 8 cpu, 32 mem.
        // Corner: 4x + y = 8, 8x + 16y = 32 -> x = 12/7, y = 8/7, cost 20/7.
        let cols = [
            col("c", 1.0, [4.0, 8.0, 0.0, 0.0]),
            col("r", 1.0, [1.0, 16.0, 0.0, 0.0]),
        ];
        let b = lower_bound(&cols, &[8.0, 32.0, 0.0, 0.0]);
        assert!((b.cost_per_hour - 20.0 / 7.0).abs() < 1e-9, "{b:?}");
    }

    #[test]
    fn an_unsupplied_resource_is_left_out_and_nothing_demanded_costs_nothing() {
        let cols = [col("a", 2.0, [4.0, 4.0, 10.0, 0.0])];
        let b = lower_bound(&cols, &[4.0, 0.0, 0.0, 1.0]);
        assert!((b.cost_per_hour - 2.0).abs() < 1e-9);
        assert_eq!(lower_bound(&cols, &[0.0; 4]).cost_per_hour, 0.0);
    }

    /// A tiny deterministic generator for the property test (no RNG crate needed in the assertion).
    fn lcg(state: &mut u64) -> f64 {
        *state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*state >> 33) % 1000) as f64 / 100.0
    }

    #[test]
    fn optimal_by_duality_on_random_instances() {
        let mut s = 7u64;
        for case in 0..300 {
            let n = 1 + case % 12;
            let cols: Vec<Column> = (0..n)
                .map(|j| {
                    col(
                        &format!("t{j}"),
                        0.1 + lcg(&mut s),
                        [lcg(&mut s), lcg(&mut s), lcg(&mut s), lcg(&mut s)],
                    )
                })
                .collect();
            let demand = [
                lcg(&mut s) * 10.0,
                lcg(&mut s) * 10.0,
                lcg(&mut s),
                lcg(&mut s),
            ];
            let b = lower_bound(&cols, &demand);
            let supplied: Vec<usize> = (0..4)
                .filter(|&r| demand[r] > EPS && cols.iter().any(|c| c.supply[r] > EPS))
                .collect();
            // Primal feasible: the mix covers every supplied resource.
            for &r in &supplied {
                let got: f64 = cols
                    .iter()
                    .map(|c| c.supply[r] * b.mix.get(&c.instance_type).copied().unwrap_or(0.0))
                    .sum();
                assert!(
                    got >= demand[r] * (1.0 - 1e-7),
                    "case {case}: resource {r} short"
                );
            }
            // Dual feasible: no column is worth more than its price at the shadow prices.
            for c in &cols {
                let worth: f64 = (0..4).map(|r| c.supply[r] * b.shadow_prices[r]).sum();
                assert!(
                    worth <= c.price + 1e-7,
                    "case {case}: {} under-priced",
                    c.instance_type
                );
            }
            assert!(b.shadow_prices.iter().all(|y| *y >= -1e-9));
            // Equal objectives: optimal.
            let dual: f64 = (0..4).map(|r| demand[r] * b.shadow_prices[r]).sum();
            assert!(
                (dual - b.cost_per_hour).abs() <= 1e-7 * (1.0 + b.cost_per_hour),
                "case {case}: primal {} dual {dual}",
                b.cost_per_hour
            );
        }
    }
}

/// How often the observer solves the bound again (demand and spot prices move slowly against this).
pub const BOUND_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How often the offerings and their prices are read again.
const COLUMNS_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Samples the bound through a run, remembering each pod's requests by uid (requests never change) so a
/// large cluster is not decoded again every minute.
#[derive(Debug, Default)]
pub struct Bounder {
    requests: BTreeMap<String, [f64; 4]>,
    columns: Vec<Column>,
    columns_at: Option<std::time::Duration>,
    next: std::time::Duration,
    /// The bound's cost per hour at the last solve.
    pub last: f64,
}

impl Bounder {
    /// The current bound per hour, solved again when [`BOUND_EVERY`] has passed.
    pub fn sample(&mut self, kube: &FakeKube, cloud: &FakeCloud, at: std::time::Duration) -> f64 {
        if at < self.next {
            return self.last;
        }
        self.next = at + BOUND_EVERY;
        if self.columns_at.is_none_or(|t| at >= t + COLUMNS_EVERY) {
            self.columns = columns(cloud, kube);
            self.columns_at = Some(at);
        }
        let total = self.demand(kube);
        self.last = lower_bound(&self.columns, &total).cost_per_hour;
        self.last
    }

    fn demand(&mut self, kube: &FakeKube) -> [f64; 4] {
        let mut total = [0.0; 4];
        let st = kube.store();
        for v in st.iter("Pod") {
            if matches!(v["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) {
                continue;
            }
            let uid = v["metadata"]["uid"].as_str().unwrap_or_default();
            let req = match self.requests.get(uid) {
                Some(r) => *r,
                None => {
                    let r = pod_demand(v);
                    self.requests.insert(uid.to_string(), r);
                    r
                }
            };
            // A pod bigger than every allowed type in some resource can never run anywhere: it is no
            // demand any fleet could meet.
            let fits_somewhere = (0..RESOURCES.len())
                .all(|i| req[i] <= EPS || self.columns.iter().any(|c| c.supply[i] + EPS >= req[i]));
            if !fits_somewhere {
                continue;
            }
            for (t, r) in total.iter_mut().zip(req) {
                *t += r;
            }
        }
        total
    }
}

/// What one pod asks of the fleet: its requests, or nothing for a DaemonSet pod (those come with every
/// node, so they are not demand to place) or one that cannot be read.
fn pod_demand(v: &serde_json::Value) -> [f64; 4] {
    let mut out = [0.0; 4];
    if v["metadata"]["ownerReferences"]
        .as_array()
        .is_some_and(|r| r.iter().any(|o| o["kind"] == "DaemonSet"))
    {
        return out;
    }
    let Some(req) = serde_json::from_value::<Pod>(v.clone())
        .ok()
        .and_then(|p| pod_requests(&p).ok())
    else {
        return out;
    };
    for (i, r) in RESOURCES.iter().enumerate() {
        out[i] = req.get(r).0 as f64 / 1000.0;
    }
    out
}
