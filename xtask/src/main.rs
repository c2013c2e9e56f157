//! `cargo xtask`: the project's commands — `sim` runs a scenario, `ci` runs what CI runs.

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use dovetail_sim::{RunOptions, Scenario, duration};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  sim FILE [--seed N] [--until T] [--trace PATH] [--quiet]
        run a scenario; print its trace and summary (exit 0 pass, 1 expectation failed, 2 bad input)
  ci    run what CI runs: fmt check, clippy -D warnings, the test suite";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => sim(&args[1..]),
        Some("ci") => ci(),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}\n\n{USAGE}");
    ExitCode::from(2)
}

fn sim(args: &[String]) -> ExitCode {
    let mut file: Option<PathBuf> = None;
    let mut options = RunOptions::default();
    let mut trace_path: Option<PathBuf> = None;
    let mut quiet = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--seed" => match it.next().map(|s| s.parse::<u64>()) {
                Some(Ok(n)) => options.seed = Some(n),
                _ => return usage_error("--seed needs a whole number"),
            },
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
            flag if flag.starts_with('-') => return usage_error(&format!("unknown flag `{flag}`")),
            path if file.is_none() => file = Some(PathBuf::from(path)),
            extra => return usage_error(&format!("unexpected argument `{extra}`")),
        }
    }
    let Some(file) = file else { return usage_error("sim needs a scenario file") };
    let scenario = match Scenario::load(&file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let outcome = match dovetail_sim::simulate(&scenario, &options) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    match &trace_path {
        Some(p) => {
            if let Err(e) = std::fs::write(p, &outcome.trace) {
                eprintln!("error: cannot write {}: {e}", p.display());
                return ExitCode::from(2);
            }
        }
        None if !quiet => print!("{}", outcome.trace),
        None => {}
    }
    print!("{}", outcome.summary);
    if outcome.passed { ExitCode::SUCCESS } else { ExitCode::from(1) }
}

fn run(cmd: &mut Command) -> bool {
    eprintln!("$ {cmd:?}");
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

fn ci() -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--check"],
        &["clippy", "--workspace", "--all-targets", "--", "-D", "warnings"],
        &["test", "--workspace"],
    ];
    for step in steps {
        if !run(Command::new(&cargo).args(step)) {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
