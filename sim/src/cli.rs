//! `cargo xtask sim`: argument parsing and output, as a function so tests can check exit codes and text.

use std::path::PathBuf;

use crate::{RunOptions, Scenario, duration, simulate};

pub const USAGE: &str = "\
usage: cargo xtask sim FILE [--seed N] [--until T] [--trace PATH] [--quiet]
  run a scenario and print its trace and summary
  exit codes: 0 all expectations held, 1 an expectation failed or the run broke, 2 bad input";

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

pub fn sim_command(args: &[String]) -> CliOutput {
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
    let scenario = match Scenario::load(&file) {
        Ok(s) => s,
        Err(e) => return fail(e.exit_code(), format!("error: {e}\n")),
    };
    let outcome = match simulate(&scenario, &options) {
        Ok(o) => o,
        Err(e) => return fail(e.exit_code(), format!("error: {e}\n")),
    };
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
