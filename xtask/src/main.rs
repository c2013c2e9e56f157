//! `cargo xtask`: the project's commands — `sim` runs a scenario, `bench` measures, `ci` runs what CI runs.

mod bench;
mod consolidation;

use std::io::Write;
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  sim FILE [--seed N] [--until T] [--trace PATH] [--quiet]
        run a scenario; print its trace and summary (exit 0 pass, 1 expectation failed, 2 bad input)
  bench [scheduling|consolidation]
        print speed figures: scheduling pods/s at 1k / 5k / 20k pods; consolidation evaluation time on a
        1000-node, 20k-pod cluster
  ci    run what CI runs: fmt check, clippy -D warnings, the test suite";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => {
            let out = dovetail_sim::cli::sim_command(&args[1..]);
            let _ = std::io::stdout().write_all(out.stdout.as_bytes());
            let _ = std::io::stderr().write_all(out.stderr.as_bytes());
            ExitCode::from(out.code)
        }
        Some("ci") => ci(),
        Some("bench") => {
            let which = args.get(1).map(String::as_str);
            if which.is_some_and(|a| a != "scheduling" && a != "consolidation") {
                eprintln!(
                    "error: unknown bench `{}` (known: scheduling, consolidation)",
                    args[1]
                );
                return ExitCode::from(2);
            }
            if which != Some("consolidation") {
                println!(
                    "scheduling (reference mix, seed 42; 400 instance types in 3 zones, spot and on-demand; one NodePool):\n"
                );
                print!("{}", bench::run());
            }
            if which != Some("scheduling") {
                println!();
                print!("{}", consolidation::run());
            }
            ExitCode::SUCCESS
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("error: unknown command `{other}`\n\n{USAGE}");
            ExitCode::from(2)
        }
        None => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn ci() -> ExitCode {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let steps: [&[&str]; 3] = [
        &["fmt", "--all", "--check"],
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &["test", "--workspace"],
    ];
    for step in steps {
        eprintln!("$ cargo {}", step.join(" "));
        let ok = Command::new(&cargo)
            .args(step)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
