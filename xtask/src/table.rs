//! `cargo xtask bench` with no argument: every figure in one markdown report, written to
//! `bench/results.md` — Dovetail against the Cluster-Autoscaler-style baseline and the cost lower bound
//! on four scenarios, then scheduling, consolidation and simulator speed.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use dovetail_sim::report::Metrics;
use dovetail_sim::{Autoscaler, RunOptions, Scenario, simulate};

/// The scenarios compared, from `scenarios/`.
const COMPARED: [&str; 4] = [
    "steady-web",
    "burst-scale-up",
    "diurnal-consolidation",
    "spot-storm",
];

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn load(path: &Path) -> Result<Scenario, String> {
    Scenario::load(path).map_err(|e| e.to_string())
}

/// Runs the jobs on every core, keeping the input order.
fn run_all(jobs: &[(String, Scenario, Autoscaler)]) -> Vec<Result<Metrics, String>> {
    dovetail_sim::parallel::map(jobs, |(name, scenario, autoscaler)| {
        let t = Instant::now();
        let options = RunOptions {
            autoscaler: *autoscaler,
            ..Default::default()
        };
        let r = simulate(scenario, &options)
            .map(|o| o.metrics)
            .map_err(|e| e.to_string());
        eprintln!(
            "  {name} ({}) in {:.1}s",
            autoscaler.name(),
            t.elapsed().as_secs_f64()
        );
        r
    })
}

fn secs(d: Duration) -> String {
    dovetail_sim::duration::human(d)
}

fn comparison(out: &mut String) -> Result<(), String> {
    let mut jobs = Vec::new();
    for name in COMPARED {
        let s = load(&root().join("scenarios").join(format!("{name}.yaml")))?;
        for a in [Autoscaler::Dovetail, Autoscaler::CaBaseline] {
            jobs.push((name.to_string(), s.clone(), a));
        }
    }
    let results = run_all(&jobs);
    let _ = writeln!(
        out,
        "## Dovetail vs a Cluster-Autoscaler-style baseline vs the lower bound\n\n\
         Each scenario's own seed, same simulated cloud, latencies and faults. The baseline has fixed \
         on-demand node groups (m5.large and m5.2xlarge, one per zone), least-waste scale-up, and \
         scale-down below 50% requested after 10 minutes. The lower bound is the fluid LP over the \
         NodePools' offerings, integrated over the run.\n\n\
         | scenario | autoscaler | total cost | lower bound | cost / bound | pending p50 | p99 | max | evictions | launches |\n\
         |--|--|--|--|--|--|--|--|--|--|"
    );
    let mut by: std::collections::BTreeMap<(String, &str), Metrics> = Default::default();
    for ((name, _, a), r) in jobs.iter().zip(results) {
        let m = r.map_err(|e| format!("{name} ({}): {e}", a.name()))?;
        let ratio = if m.lower_bound_total > 0.0 {
            format!("{:.2}", m.cost_total / m.lower_bound_total)
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "| {name} | {} | ${:.2} | ${:.2} | {ratio} | {} | {} | {} | {} | {} |",
            a.name(),
            m.cost_total,
            m.lower_bound_total,
            secs(m.pending_p50),
            secs(m.pending_p99),
            secs(m.pending_max),
            m.evictions,
            m.launches
        );
        by.insert((name.clone(), a.name()), m);
    }
    let _ = writeln!(out, "\nAgainst the targets:\n");
    for name in COMPARED {
        let (Some(d), Some(c)) = (
            by.get(&(name.to_string(), "dovetail")),
            by.get(&(name.to_string(), "ca-baseline")),
        ) else {
            continue;
        };
        let saving = 100.0 * (1.0 - d.cost_total / c.cost_total);
        let p99 = c.pending_p99.as_secs_f64() / d.pending_p99.as_secs_f64().max(0.001);
        let _ = writeln!(
            out,
            "- {name}: Dovetail costs {saving:.1}% less than ca-baseline; its pod pending p99 is {p99:.2}x lower; \
             cost / lower bound {:.2} (ca-baseline {:.2})",
            d.cost_total / d.lower_bound_total.max(1e-9),
            c.cost_total / c.lower_bound_total.max(1e-9)
        );
    }
    Ok(())
}

/// Peak resident memory of this process since the last reset, in MiB (Linux).
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024.0)
}

fn sim_speed(out: &mut String) -> Result<(), String> {
    let path = root().join("bench/scenarios/day-500.yaml");
    let scenario = load(&path)?;
    // Forget the peak of the comparison runs (writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let o = simulate(&scenario, &RunOptions::default()).map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    let simulated = scenario.duration.as_secs_f64();
    let max_nodes = o.series.iter().map(|s| s.nodes).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "## Simulator speed\n\n\
         `bench/scenarios/day-500.yaml` (24 h, up to {max_nodes} nodes and 1,500 pods, seed 42, verdict {}):\n\n\
         | simulated | wall | simulated seconds per wall second | peak memory (whole simulation: controller, fakes, trace) |\n\
         |--|--|--|--|\n\
         | {} | {:.1} s | {:.0} | {} |",
        if o.passed { "PASS" } else { "FAIL" },
        secs(scenario.duration),
        wall.as_secs_f64(),
        simulated / wall.as_secs_f64(),
        peak_rss_mib().map_or("unknown".into(), |m| format!("{m:.0} MiB"))
    );
    Ok(())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let kb: f64 = m.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_else(|| "unknown memory".into());
    format!("{cpu}, {cores} cores, {mem}")
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The whole report; also written to `bench/results.md`.
pub fn run() -> Result<String, String> {
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench` (release build) — never edited by hand. Machine: {}. Commit {}, {}.\n",
        machine(),
        command_line("git", &["rev-parse", "--short", "HEAD"]),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
    );
    eprintln!("comparing autoscalers on {} scenarios...", COMPARED.len());
    comparison(&mut out)?;
    eprintln!("scheduling...");
    let _ = writeln!(
        out,
        "\n## Scheduling\n\nReference mix, seed 42: 400 instance types in 3 zones, spot and on-demand, one NodePool; \
         pods split evenly into generic, zonal spread, hostname spread, zonal self-affinity and hostname \
         anti-affinity.\n\n{}",
        crate::bench::run()
    );
    eprintln!("consolidation...");
    let _ = writeln!(out, "## Consolidation\n\n{}", crate::consolidation::run());
    eprintln!("simulator speed (24 h, 500 nodes)...");
    sim_speed(&mut out)?;
    let _ = writeln!(
        out,
        "\nThe whole report took {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    let path = root().join("bench/results.md");
    std::fs::write(&path, &out).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(out)
}
