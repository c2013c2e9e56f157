//! `dovetail sim` / `cargo xtask sim`: argument parsing and output, as a function so tests can check exit
//! codes and text; with `--snapshot`, the snapshot comparison a user's CI runs.

use std::path::{Path, PathBuf};

use crate::snapshot::{self, Comparison, Level};
use crate::{RunOptions, Scenario, duration, simulate};

pub const USAGE: &str = "\
usage: dovetail sim FILE... [--seed N | --seeds A..B] [--until T] [--trace PATH] [--report PATH.html] [--quiet]
                            [--autoscaler dovetail|ca-baseline] [--wire]
                            [--snapshot DIR [--snapshot-level full|decisions] [--update]]
                            [--junit PATH] [--format text|json]
                            [--serve [ADDR] [--speed N] [--kubeconfig PATH] [--aws-addr ADDR]]
       (cargo xtask sim ... in the Dovetail repository: the same command)
  run each scenario and print its trace and summary (a progress bar on a terminal); with --seeds, run seeds
  A to B-1 (on every core) and print one line per seed and the worst seed per metric; with --snapshot DIR,
  compare each scenario's run (at its own seed, --seed N, or each of --seeds) with DIR/<file>.seed-<N>.snap:
  a missing file is written, a changed one prints a unified diff and the figures that changed, --update
  rewrites changed files (full: the whole trace; decisions: what was decided, at minute resolution, without
  generated names); --junit writes one test case per scenario and seed; --format json prints each run's
  figures as a JSON array instead of text; with --serve, run it paced to the wall clock (N times real time,
  default 1) and serve its API to kubectl at ADDR (default 127.0.0.1:6443), writing a kubeconfig, and its
  EC2 / SQS / SSM to the AWS CLI at --aws-addr (default 127.0.0.1:4566); kubectl's and the CLI's writes act
  on the run and show in the trace; --wire runs the controller's real kube-rs client over the simulated
  network against the simulated API server
  exit codes: 0 all expectations and invariants held (and every snapshot matched or was written), 1 one
  failed, a snapshot differs or the run broke, 2 bad input (a flag, a scenario file, an unwritable path)";

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
/// after another; `cargo xtask` and `dovetail sim` hand in one that uses every core.
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

/// The command as a process runs it (`dovetail sim`, `cargo xtask sim`): sweeps on every core, a progress
/// line on a terminal, the output written (a closed pipe, as with `| head`, is no error); the exit code.
pub fn main(args: &[String]) -> u8 {
    use std::io::Write;
    let out = sim_command_with(
        args,
        &crate::parallel::seeds,
        crate::parallel::progress_line(),
    );
    let _ = std::io::stdout().write_all(out.stdout.as_bytes());
    let _ = std::io::stderr().write_all(out.stderr.as_bytes());
    out.code
}

pub fn sim_command(args: &[String]) -> CliOutput {
    sim_command_with(args, &sequential, None)
}

/// How the results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Text,
    Json,
}

/// The command line, parsed.
struct Args {
    files: Vec<PathBuf>,
    options: RunOptions,
    trace_path: Option<PathBuf>,
    report_path: Option<PathBuf>,
    quiet: bool,
    seeds: Option<(u64, u64)>,
    snapshot: Option<PathBuf>,
    level: Option<Level>,
    update: bool,
    junit: Option<PathBuf>,
    format: Format,
}

fn parse(args: &[String]) -> Result<Args, CliOutput> {
    let mut a = Args {
        files: Vec::new(),
        options: RunOptions::default(),
        trace_path: None,
        report_path: None,
        quiet: false,
        seeds: None,
        snapshot: None,
        level: None,
        update: false,
        junit: None,
        format: Format::Text,
    };
    let options = &mut a.options;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--seed" => match it.next().map(|s| s.parse::<u64>()) {
                Some(Ok(n)) => options.seed = Some(n),
                _ => return Err(usage_error("--seed needs a whole number")),
            },
            "--seeds" => {
                let range = it.next().and_then(|s| {
                    let (a, b) = s.split_once("..")?;
                    Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?))
                });
                match range {
                    Some((x, y)) if x < y => a.seeds = Some((x, y)),
                    _ => {
                        return Err(usage_error(
                            "--seeds needs a range such as 0..200 (the end is left out)",
                        ));
                    }
                }
            }
            "--until" => match it.next().map(|s| duration::parse(s)) {
                Some(Ok(d)) => options.until = Some(d),
                Some(Err(e)) => return Err(usage_error(&format!("--until: {e}"))),
                None => return Err(usage_error("--until needs a duration such as 30m")),
            },
            "--trace" => match it.next() {
                Some(p) => a.trace_path = Some(PathBuf::from(p)),
                None => return Err(usage_error("--trace needs a path")),
            },
            "--quiet" => a.quiet = true,
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
                    return Err(usage_error(
                        "--speed needs a positive number such as 10 (10x real time)",
                    ));
                }
            },
            "--aws-addr" => match it.next().and_then(|a| parse_addr(a)) {
                Some(addr) => {
                    let mut serve = options.serve.take().unwrap_or_default();
                    serve.aws_addr = addr;
                    options.serve = Some(serve);
                }
                None => {
                    return Err(usage_error(
                        "--aws-addr needs an address such as 127.0.0.1:4566",
                    ));
                }
            },
            "--kubeconfig" => match it.next() {
                Some(p) => {
                    let mut serve = options.serve.take().unwrap_or_default();
                    serve.kubeconfig = Some(PathBuf::from(p));
                    options.serve = Some(serve);
                }
                None => return Err(usage_error("--kubeconfig needs a path")),
            },
            "--autoscaler" => match it.next().map(|s| crate::Autoscaler::parse(s)) {
                Some(Some(x)) => options.autoscaler = x,
                _ => {
                    return Err(usage_error(
                        "--autoscaler is `dovetail` (the default) or `ca-baseline`",
                    ));
                }
            },
            "--report" => match it.next() {
                Some(p) => a.report_path = Some(PathBuf::from(p)),
                None => return Err(usage_error("--report needs a path such as report.html")),
            },
            "--snapshot" => match it.next() {
                Some(p) if !p.starts_with('-') => a.snapshot = Some(PathBuf::from(p)),
                _ => {
                    return Err(usage_error(
                        "--snapshot needs the directory the snapshots are kept in, such as snapshots/",
                    ));
                }
            },
            "--snapshot-level" => match it.next().map(|s| Level::parse(s)) {
                Some(Some(l)) => a.level = Some(l),
                _ => return Err(usage_error("--snapshot-level is `full` or `decisions`")),
            },
            "--update" => a.update = true,
            "--junit" => match it.next() {
                Some(p) if !p.starts_with('-') => a.junit = Some(PathBuf::from(p)),
                _ => return Err(usage_error("--junit needs a path such as dovetail.xml")),
            },
            "--format" => match it.next().map(String::as_str) {
                Some("text") => a.format = Format::Text,
                Some("json") => a.format = Format::Json,
                _ => return Err(usage_error("--format is `text` or `json`")),
            },
            "-h" | "--help" => {
                return Err(CliOutput {
                    code: 0,
                    stdout: format!("{USAGE}\n"),
                    stderr: String::new(),
                });
            }
            flag if flag.starts_with('-') => {
                return Err(usage_error(&format!("unknown flag `{flag}`")));
            }
            path => a.files.push(PathBuf::from(path)),
        }
    }
    if a.files.is_empty() {
        return Err(usage_error("sim needs a scenario file"));
    }
    let one = a.files.len() == 1;
    if let Some(serve) = &mut a.options.serve {
        if !args.iter().any(|a| a == "--serve") {
            return Err(usage_error(
                "--speed, --kubeconfig and --aws-addr go with --serve",
            ));
        }
        if a.seeds.is_some() {
            return Err(usage_error("--serve runs one seed; leave out --seeds"));
        }
        if !one || a.snapshot.is_some() || a.junit.is_some() {
            return Err(usage_error(
                "--serve runs one scenario for kubectl; leave out other files, --snapshot and --junit",
            ));
        }
        if serve.ready.is_none() {
            serve.ready = Some(std::sync::Arc::new(|s: &crate::serve::Serving| {
                eprint!("{}", s.instructions());
            }));
        }
    }
    if !one && (a.trace_path.is_some() || a.report_path.is_some()) {
        return Err(usage_error(
            "--trace and --report write one scenario's run: give one file",
        ));
    }
    if a.snapshot.is_none() && (a.update || a.level.is_some()) {
        return Err(usage_error(
            "--update and --snapshot-level go with --snapshot DIR",
        ));
    }
    Ok(a)
}

/// [`sim_command`] with a runner for sweeps and a progress callback for single runs.
pub fn sim_command_with(
    args: &[String],
    runner: SeedRunner<'_>,
    progress: Option<crate::Progress>,
) -> CliOutput {
    let mut a = match parse(args) {
        Ok(a) => a,
        Err(out) => return out,
    };
    let mut scenarios = Vec::new();
    for file in &a.files {
        match Scenario::load(file) {
            Ok(s) => scenarios.push(s),
            Err(e) => return fail(e.exit_code(), format!("error: {e}\n")),
        }
    }
    if let (Some((from, to)), None) = (a.seeds, &a.snapshot) {
        return sweeps(&a, &scenarios, from, to, runner);
    }
    a.options.progress = progress;
    let mut runs = Vec::new();
    for (file, scenario) in a.files.iter().zip(&scenarios) {
        let seeds: Vec<u64> = match a.seeds {
            Some((from, to)) => (from..to).collect(),
            None => vec![a.options.seed.unwrap_or(scenario.seed)],
        };
        for seed in seeds {
            match run_one(&a, file, scenario, seed) {
                Ok(r) => runs.push(r),
                Err(out) => return out,
            }
        }
    }
    report(&a, &runs)
}

/// One scenario at one seed, and what its snapshot comparison found.
struct Run {
    file: PathBuf,
    scenario: String,
    seed: u64,
    seconds: f64,
    outcome: crate::Outcome,
    /// The snapshot's path and the comparison, with `--snapshot`.
    snapshot: Option<(PathBuf, Comparison)>,
    /// Whether `--update` (or a first run) wrote the file.
    written: bool,
}

fn run_one(a: &Args, file: &Path, scenario: &Scenario, seed: u64) -> Result<Run, CliOutput> {
    let opts = RunOptions {
        seed: Some(seed),
        ..a.options.clone()
    };
    let started = std::time::Instant::now(); // allow-nondeterminism: JUnit's `time` is a run's wall time, measured outside it
    let outcome =
        simulate(scenario, &opts).map_err(|e| fail(e.exit_code(), format!("error: {e}\n")))?;
    let seconds = started.elapsed().as_secs_f64();
    if let Some(p) = &a.report_path {
        std::fs::write(p, crate::html::render(scenario, &outcome))
            .map_err(|e| fail(2, format!("error: cannot write {}: {e}\n", p.display())))?;
    }
    if let Some(p) = &a.trace_path {
        std::fs::write(p, &outcome.trace)
            .map_err(|e| fail(2, format!("error: cannot write {}: {e}\n", p.display())))?;
    }
    let mut run = Run {
        file: file.to_path_buf(),
        scenario: scenario.name.clone(),
        seed,
        seconds,
        outcome,
        snapshot: None,
        written: false,
    };
    if let Some(dir) = &a.snapshot {
        let name = snapshot::file_name(file, seed);
        let path = dir.join(&name);
        let level = a.level.unwrap_or_default();
        let text = snapshot::render(
            &run.scenario,
            seed,
            level,
            &run.outcome.trace,
            &run.outcome.summary,
        );
        let old = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(fail(
                    2,
                    format!("error: cannot read {}: {e}\n", path.display()),
                ));
            }
        };
        let comparison = snapshot::compare(old.as_deref(), &text, &name);
        let write = match comparison {
            Comparison::New => true,
            Comparison::Same => false,
            Comparison::Changed { .. } | Comparison::OtherVersion { .. } => a.update,
        };
        if write {
            std::fs::create_dir_all(dir)
                .and_then(|()| std::fs::write(&path, &text))
                .map_err(|e| fail(2, format!("error: cannot write {}: {e}\n", path.display())))?;
        }
        run.snapshot = Some((path, comparison));
        run.written = write;
    }
    Ok(run)
}

impl Run {
    /// A snapshot that differs and was not rewritten.
    fn differs(&self) -> bool {
        matches!(
            &self.snapshot,
            Some((
                _,
                Comparison::Changed { .. } | Comparison::OtherVersion { .. }
            ))
        ) && !self.written
    }

    fn failed(&self) -> bool {
        !self.outcome.passed || self.differs()
    }

    /// "unchanged", "new, written", "CHANGED: total cost ...", ...
    fn snapshot_status(&self) -> Option<String> {
        let (path, c) = self.snapshot.as_ref()?;
        let p = path.display();
        Some(match (c, self.written) {
            (Comparison::New, _) => format!("snapshot written to {p} (new)"),
            (Comparison::Same, _) => format!("snapshot {p} unchanged"),
            (Comparison::Changed { figures, .. }, true) => {
                format!("snapshot {p} updated: {figures}")
            }
            (Comparison::Changed { figures, .. }, false) => {
                format!("snapshot {p} CHANGED: {figures}")
            }
            (Comparison::OtherVersion { recorded }, true) => {
                format!("snapshot {p} re-recorded (it was {recorded})")
            }
            (Comparison::OtherVersion { recorded }, false) => format!(
                "snapshot {p} was recorded by another version ({recorded}); this is dovetail {} (format {}): check the scenario's figures, then --update",
                env!("CARGO_PKG_VERSION"),
                snapshot::FORMAT
            ),
        })
    }

    /// The failed expectations and invariants, from the summary.
    fn failures(&self) -> Vec<String> {
        self.outcome
            .summary
            .lines()
            .filter(|l| l.contains("FAILED") || l.trim_start().starts_with("violation"))
            .map(|l| l.trim().to_string())
            .collect()
    }

    fn json(&self) -> serde_json::Value {
        let m = &self.outcome.metrics;
        let snapshot = self.snapshot.as_ref().map(|(path, c)| {
            let (status, figures, diff) = match c {
                Comparison::New => ("new", String::new(), String::new()),
                Comparison::Same => ("unchanged", String::new(), String::new()),
                Comparison::Changed { figures, diff } => {
                    (if self.written { "updated" } else { "changed" }, figures.clone(), diff.clone())
                }
                Comparison::OtherVersion { recorded } => (
                    if self.written { "updated" } else { "other-version" },
                    recorded.clone(),
                    String::new(),
                ),
            };
            serde_json::json!({"path": path.display().to_string(), "status": status, "figures": figures, "diff": diff})
        });
        let mut out = run_json(&self.file, &self.scenario, self.seed, m);
        out["failures"] = self.failures().into();
        out["snapshot"] = snapshot.into();
        out
    }

    fn junit(&self) -> crate::junit::Case {
        let mut messages = self.failures();
        let mut details = self.outcome.summary.clone();
        if self.differs()
            && let Some(status) = self.snapshot_status()
        {
            messages.push(status);
            if let Some((_, Comparison::Changed { diff, .. })) = &self.snapshot {
                details = format!("{diff}\n{details}");
            }
        }
        crate::junit::Case {
            name: format!("{} seed {}", self.file.display(), self.seed),
            classname: self.file.display().to_string(),
            seconds: self.seconds,
            failure: (!messages.is_empty()).then(|| (messages.join("; "), details)),
        }
    }
}

/// One run's figures for `--format json` (single runs add their failures and snapshot).
fn run_json(
    file: &Path,
    scenario: &str,
    seed: u64,
    m: &crate::report::Metrics,
) -> serde_json::Value {
    serde_json::json!({
        "file": file.display().to_string(),
        "scenario": scenario,
        "seed": seed,
        "passed": m.passed,
        "cost_total": m.cost_total,
        "lower_bound_total": m.lower_bound_total,
        "pending_p50_seconds": m.pending_p50.as_secs_f64(),
        "pending_p99_seconds": m.pending_p99.as_secs_f64(),
        "pending_max_seconds": m.pending_max.as_secs_f64(),
        "evictions": m.evictions,
        "launches": m.launches,
        "violations": m.violations,
    })
}

/// Print the runs as asked, write the JUnit file, and exit 1 if any failed.
fn report(a: &Args, runs: &[Run]) -> CliOutput {
    let mut stdout = String::new();
    let many = runs.len() > 1;
    match a.format {
        Format::Json => {
            let all: Vec<serde_json::Value> = runs.iter().map(Run::json).collect();
            stdout = serde_json::to_string_pretty(&all).unwrap_or_default();
            stdout.push('\n');
        }
        Format::Text => {
            for r in runs {
                if many || r.snapshot.is_some() {
                    stdout.push_str(&format!("== {} seed {}\n", r.file.display(), r.seed));
                }
                // With snapshots, the diff is what to read; the trace is in the file.
                if !a.quiet && a.trace_path.is_none() && r.snapshot.is_none() {
                    stdout.push_str(&r.outcome.trace);
                }
                if let Some((_, Comparison::Changed { diff, .. })) = &r.snapshot {
                    stdout.push_str(diff);
                }
                stdout.push_str(&r.outcome.summary);
                if let Some(status) = r.snapshot_status() {
                    stdout.push_str(&format!("  snapshot         {status}\n"));
                }
            }
            if a.snapshot.is_some() {
                let count = |f: &dyn Fn(&Run) -> bool| runs.iter().filter(|r| f(r)).count();
                let changed = count(&|r| r.differs());
                stdout.push_str(&format!(
                    "{} run(s): {} unchanged, {} new, {} updated, {} differ, {} failed expectations{}\n",
                    runs.len(),
                    count(&|r| matches!(r.snapshot, Some((_, Comparison::Same)))),
                    count(&|r| matches!(r.snapshot, Some((_, Comparison::New)))),
                    count(&|r| r.written && !matches!(r.snapshot, Some((_, Comparison::New)))),
                    changed,
                    count(&|r| !r.outcome.passed),
                    if changed > 0 {
                        "; review each diff, then run again with --update and commit the files"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    if let Some(p) = &a.junit {
        let cases: Vec<crate::junit::Case> = runs.iter().map(Run::junit).collect();
        if let Err(e) = std::fs::write(p, crate::junit::render("dovetail sim", &cases)) {
            return fail(2, format!("error: cannot write {}: {e}\n", p.display()));
        }
    }
    CliOutput {
        code: if runs.iter().any(Run::failed) { 1 } else { 0 },
        stdout,
        stderr: String::new(),
    }
}

/// `--seeds` without snapshots: each scenario's sweep, one after another.
fn sweeps(
    a: &Args,
    scenarios: &[Scenario],
    from: u64,
    to: u64,
    runner: SeedRunner<'_>,
) -> CliOutput {
    let mut out = CliOutput {
        code: 0,
        stdout: String::new(),
        stderr: String::new(),
    };
    let mut cases = Vec::new();
    let mut json = Vec::new();
    for (file, scenario) in a.files.iter().zip(scenarios) {
        let seeds: Vec<u64> = (from..to).collect();
        let results = runner(scenario, &a.options, &seeds);
        let mut metrics = Vec::new();
        for (seed, r) in seeds.iter().copied().zip(results) {
            match r {
                Ok(m) => metrics.push((seed, m)),
                Err(e) => {
                    return fail(
                        e.exit_code(),
                        format!("error: {}: seed {seed}: {e}\n", file.display()),
                    );
                }
            }
        }
        for (seed, m) in &metrics {
            cases.push(crate::junit::Case {
                name: format!("{} seed {seed}", file.display()),
                classname: file.display().to_string(),
                seconds: 0.0,
                failure: (!m.passed).then(|| {
                    (
                        format!("an expectation or invariant failed; rerun with --seed {seed}"),
                        String::new(),
                    )
                }),
            });
            json.push(run_json(file, &scenario.name, *seed, m));
        }
        if a.files.len() > 1 {
            out.stdout.push_str(&format!("== {}\n", file.display()));
        }
        let one = sweep_table(&metrics);
        out.stdout.push_str(&one.stdout);
        out.code = out.code.max(one.code);
    }
    if a.format == Format::Json {
        out.stdout = serde_json::to_string_pretty(&json).unwrap_or_default();
        out.stdout.push('\n');
    }
    if let Some(p) = &a.junit
        && let Err(e) = std::fs::write(p, crate::junit::render("dovetail sim", &cases))
    {
        return fail(2, format!("error: cannot write {}: {e}\n", p.display()));
    }
    out
}

/// `127.0.0.1:8080`, `:8080` or `8080` (loopback).
fn parse_addr(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let port: u16 = s.trim_start_matches(':').parse().ok()?;
    Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
}

/// One scenario's sweep: a line per seed, then the worst seed per metric.
fn sweep_table(results: &[(u64, crate::report::Metrics)]) -> CliOutput {
    let mut stdout = String::new();
    for (seed, m) in results {
        stdout.push_str(&format!(
            "seed {seed:>5}  cost ${:.4}  pending p99 {}  max {}  evictions {}  launches {}  {}\n",
            m.cost_total,
            duration::human(m.pending_p99),
            duration::human(m.pending_max),
            m.evictions,
            m.launches,
            if m.passed { "PASS" } else { "FAIL" }
        ));
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
