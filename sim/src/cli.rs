//! `cargo xtask sim`: argument parsing and output, as a function so tests can check exit codes and text.

use std::path::PathBuf;

use crate::{RunOptions, Scenario, duration, simulate};

pub const USAGE: &str = "\
usage: cargo xtask sim FILE [--seed N | --seeds A..B] [--until T] [--trace PATH] [--report PATH.html] [--quiet]
                            [--autoscaler dovetail|ca-baseline] [--wire]
                            [--serve [ADDR] [--speed N] [--kubeconfig PATH] [--aws-addr ADDR]]
  run a scenario and print its trace and summary (a progress bar on a terminal); with --seeds, run seeds
  A to B-1 (on every core) and print one line per seed and the worst seed per metric; with --serve, run it
  paced to the wall clock (N times real time, default 1) and serve its API to kubectl at ADDR (default
  127.0.0.1:6443), writing a kubeconfig, and its EC2 / SQS / SSM to the AWS CLI at --aws-addr (default
  127.0.0.1:4566); kubectl's and the CLI's writes act on the run and show in the trace; --wire runs
  the controller's real kube-rs client over the simulated network against the simulated API server
  exit codes: 0 all expectations and invariants held, 1 one failed or the run broke, 2 bad input";

/// What the command prints and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliOutput {
    pub code: u8,
    pub stdout: String,
    pub stderr: String,
}

fn fail(code: u8, message: String) -> CliOutput {
    CliOutput {
        code,
        stdout: String::new(),
        stderr: message,
    }
}

fn usage_error(message: &str) -> CliOutput {
    fail(2, format!("error: {message}\n\n{USAGE}\n"))
}

/// Runs a sweep's seeds and returns each seed's figures in the given order. The simulator runs them one
/// after another; `cargo xtask` hands in one that uses every core.
pub type SeedRunner<'a> = &'a dyn Fn(
    &Scenario,
    &RunOptions,
    &[u64],
) -> Vec<Result<crate::report::Metrics, crate::SimError>>;

/// The seeds of a sweep one after another.
pub fn sequential(
    scenario: &Scenario,
    options: &RunOptions,
    seeds: &[u64],
) -> Vec<Result<crate::report::Metrics, crate::SimError>> {
    seeds
        .iter()
        .map(|seed| {
            let opts = RunOptions {
                seed: Some(*seed),
                ..options.clone()
            };
            simulate(scenario, &opts).map(|o| o.metrics)
        })
        .collect()
}

pub fn sim_command(args: &[String]) -> CliOutput {
    sim_command_with(args, &sequential, None)
}

/// [`sim_command`] with a runner for sweeps and a progress callback for single runs.
pub fn sim_command_with(
    args: &[String],
    runner: SeedRunner<'_>,
    progress: Option<crate::Progress>,
) -> CliOutput {
    let mut file: Option<PathBuf> = None;
    let mut options = RunOptions::default();
    let mut trace_path: Option<PathBuf> = None;
    let mut quiet = false;
    let mut seeds: Option<(u64, u64)> = None;
    let mut report_path: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => match it.next().map(|s| s.parse::<u64>()) {
                Some(Ok(n)) => options.seed = Some(n),
                _ => return usage_error("--seed needs a whole number"),
            },
            "--seeds" => {
                let range = it.next().and_then(|s| {
                    let (a, b) = s.split_once("..")?;
                    Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
                });
                match range {
                    Some((a, b)) if a < b => seeds = Some((a, b)),
                    _ => {
                        return usage_error(
                            "--seeds needs a range such as 0..200 (the end is left out)",
                        );
                    }
                }
            }
            "--until" => match it.next().map(|s| duration::parse(s)) {
                Some(Ok(d)) => options.until = Some(d),
                Some(Err(e)) => return usage_error(&format!("--until: {e}")),
                None => return usage_error("--until needs a duration such as 30m"),
            },
            "--trace" => match it.next() {
                Some(p) => trace_path = Some(PathBuf::from(p)),
                None => return usage_error("--trace needs a path"),
            },
            "--quiet" => quiet = true,
            "--wire" => options.wire = true,
            "--serve" => {
                let mut serve = options.serve.take().unwrap_or_default();
                serve.addr = std::net::SocketAddr::from(([127, 0, 0, 1], 6443));
                if !args.iter().any(|a| a == "--aws-addr") {
                    serve.aws_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 4566));
                }
                if let Some(next) = it.clone().next()
                    && let Some(addr) = parse_addr(next)
                {
                    serve.addr = addr;
                    it.next();
                }
                options.serve = Some(serve);
            }
            "--speed" => match it.next().map(|s| s.trim_end_matches('x').parse::<f64>()) {
                Some(Ok(n)) if n > 0.0 && n.is_finite() => {
                    let mut serve = options.serve.take().unwrap_or_default();
                    serve.speed = n;
                    options.serve = Some(serve);
                }
                _ => {
                    return usage_error(
                        "--speed needs a positive number such as 10 (10x real time)",
                    );
                }
            },
            "--aws-addr" => match it.next().and_then(|a| parse_addr(a)) {
                Some(addr) => {
                    let mut serve = options.serve.take().unwrap_or_default();
                    serve.aws_addr = addr;
                    options.serve = Some(serve);
                }
                None => return usage_error("--aws-addr needs an address such as 127.0.0.1:4566"),
            },
            "--kubeconfig" => match it.next() {
                Some(p) => {
                    let mut serve = options.serve.take().unwrap_or_default();
                    serve.kubeconfig = Some(PathBuf::from(p));
                    options.serve = Some(serve);
                }
                None => return usage_error("--kubeconfig needs a path"),
            },
            "--autoscaler" => match it.next().map(|s| crate::Autoscaler::parse(s)) {
                Some(Some(a)) => options.autoscaler = a,
                _ => {
                    return usage_error(
                        "--autoscaler is `dovetail` (the default) or `ca-baseline`",
                    );
                }
            },
            "--report" => match it.next() {
                Some(p) => report_path = Some(PathBuf::from(p)),
                None => return usage_error("--report needs a path such as report.html"),
            },
            "-h" | "--help" => {
                return CliOutput {
                    code: 0,
                    stdout: format!("{USAGE}\n"),
                    stderr: String::new(),
                };
            }
            flag if flag.starts_with('-') => return usage_error(&format!("unknown flag `{flag}`")),
            path if file.is_none() => file = Some(PathBuf::from(path)),
            extra => return usage_error(&format!("unexpected argument `{extra}`")),
        }
    }
    let Some(file) = file else {
        return usage_error("sim needs a scenario file");
    };
    if let Some(serve) = &mut options.serve {
        if !args.iter().any(|a| a == "--serve") {
            return usage_error("--speed, --kubeconfig and --aws-addr go with --serve");
        }
        if seeds.is_some() {
            return usage_error("--serve runs one seed; leave out --seeds");
        }
        if serve.ready.is_none() {
            serve.ready = Some(std::sync::Arc::new(|s: &crate::serve::Serving| {
                eprint!("{}", s.instructions());
            }));
        }
    }
    let scenario = match Scenario::load(&file) {
        Ok(s) => s,
        Err(e) => return fail(e.exit_code(), format!("error: {e}\n")),
    };
    if let Some((a, b)) = seeds {
        return sweep(&scenario, &options, a, b, runner);
    }
    options.progress = progress;
    let outcome = match simulate(&scenario, &options) {
        Ok(o) => o,
        Err(e) => return fail(e.exit_code(), format!("error: {e}\n")),
    };
    if let Some(p) = &report_path
        && let Err(e) = std::fs::write(p, crate::html::render(&scenario, &outcome))
    {
        return fail(2, format!("error: cannot write {}: {e}\n", p.display()));
    }
    let mut stdout = String::new();
    match &trace_path {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &outcome.trace) {
                return fail(2, format!("error: cannot write {}: {e}\n", p.display()));
            }
        }
        None if !quiet => stdout.push_str(&outcome.trace),
        None => {}
    }
    stdout.push_str(&outcome.summary);
    CliOutput {
        code: if outcome.passed { 0 } else { 1 },
        stdout,
        stderr: String::new(),
    }
}

/// `127.0.0.1:8080`, `:8080` or `8080` (loopback).
fn parse_addr(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let port: u16 = s.trim_start_matches(':').parse().ok()?;
    Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Run seeds `a..b` of one scenario; one line each, then the worst seed per metric.
fn sweep(
    scenario: &Scenario,
    options: &RunOptions,
    a: u64,
    b: u64,
    runner: SeedRunner<'_>,
) -> CliOutput {
    let mut stdout = String::new();
    let mut results = Vec::new();
    let seeds: Vec<u64> = (a..b).collect();
    for (seed, r) in seeds.iter().copied().zip(runner(scenario, options, &seeds)) {
        let m = match r {
            Ok(m) => m,
            Err(e) => return fail(e.exit_code(), format!("error: seed {seed}: {e}\n")),
        };
        stdout.push_str(&format!(
            "seed {seed:>5}  cost ${:.4}  pending p99 {}  max {}  evictions {}  launches {}  {}\n",
            m.cost_total,
            duration::human(m.pending_p99),
            duration::human(m.pending_max),
            m.evictions,
            m.launches,
            if m.passed { "PASS" } else { "FAIL" }
        ));
        results.push((seed, m));
    }
    let worst = |name: &str,
                 key: &dyn Fn(&crate::report::Metrics) -> f64,
                 show: &dyn Fn(&crate::report::Metrics) -> String| {
        let (seed, m) = results
            .iter()
            .max_by(|x, y| key(&x.1).total_cmp(&key(&y.1)).then(y.0.cmp(&x.0)))
            .expect("at least one seed");
        format!("  {name:<16} seed {seed} ({})\n", show(m))
    };
    stdout.push_str(&format!("worst of {} seeds\n", results.len()));
    stdout.push_str(&worst("total cost", &|m| m.cost_total, &|m| {
        format!("${:.4}", m.cost_total)
    }));
    stdout.push_str(&worst(
        "pending p99",
        &|m| m.pending_p99.as_secs_f64(),
        &|m| duration::human(m.pending_p99),
    ));
    stdout.push_str(&worst(
        "pending max",
        &|m| m.pending_max.as_secs_f64(),
        &|m| duration::human(m.pending_max),
    ));
    stdout.push_str(&worst("evictions", &|m| m.evictions as f64, &|m| {
        m.evictions.to_string()
    }));
    let failed: Vec<String> = results
        .iter()
        .filter(|(_, m)| !m.passed)
        .map(|(s, _)| s.to_string())
        .collect();
    stdout.push_str(&format!(
        "  failed           {} of {}{}\n",
        failed.len(),
        results.len(),
        if failed.is_empty() {
            String::new()
        } else {
            format!(" (seeds {}; rerun one with --seed N)", failed.join(" "))
        }
    ));
    CliOutput {
        code: if failed.is_empty() { 0 } else { 1 },
        stdout,
        stderr: String::new(),
    }
}
