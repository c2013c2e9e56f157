//! `cargo xtask`: the project's commands — `sim` runs a scenario, `bench` measures, `migrate` converts old
//! Karpenter manifests, `image` builds the controller's container image, `ci` runs what CI runs.

mod bench;
mod consolidation;
mod crds;
mod e2e;
mod image;
mod table;

use std::io::Write;
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  sim FILE [--seed N | --seeds A..B] [--until T] [--trace PATH] [--report PATH.html] [--quiet]
           [--autoscaler dovetail|ca-baseline]
        run a scenario; print its trace and summary (exit 0 pass, 1 expectation failed, 2 bad input)
  bench [scheduling|consolidation]
        measure (release build) and write bench/results.md: Dovetail vs a Cluster-Autoscaler-style
        baseline vs the cost lower bound on four scenarios, scheduling pods/s at 1k / 5k / 20k pods,
        consolidation evaluation on 1000 nodes, simulator speed and memory on a 24 h 500-node day;
        `scheduling` or `consolidation` runs only that part
  migrate FILE...
        convert Karpenter v1alpha5 Provisioner + AWSNodeTemplate and v1beta1 NodePool + EC2NodeClass
        manifests to v1: the YAML to stdout, a line per field (converted, defaulted, no equivalent) to
        stderr (exit 0; 2 when a file cannot be read)
  e2e [--image]
        the dovetail binary against a real control plane (etcd, kube-apiserver, kube-controller-manager,
        kube-scheduler built from tools/controlplane with Go, cached in target/tools) and the fake AWS served
        on loopback, with fake kubelets: CRDs, refused and unusable NodePools, provisioning, a malformed
        queue message, a spot interruption through a PDB, leader failover, consolidation, /metrics, SIGTERM.
        With --image the image is built from the test build's binary (as `image --dev`) and the replica
        that takes over runs it under podman (--network host)
  image [--dev]
        build the controller's container image with podman (the release binary — with --dev the debug one —
        the libraries it links and the CA bundle on FROM scratch), tagged as deploy/ and the chart expect;
        prints its size
  crds  write the CRDs generated from the Rust types to deploy/crds/ (a test fails when they are stale)
  ci    run what CI runs: fmt check, clippy -D warnings, the test suite";

/// `migrate FILE...`: the v1 YAML on stdout, the report on stderr.
fn migrate(files: &[String]) -> ExitCode {
    match dovetail::crds::migrate::run(files) {
        Ok((yaml, report)) => {
            let _ = std::io::stdout().write_all(yaml.as_bytes());
            let _ = std::io::stderr().write_all(report.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("sim") => ExitCode::from(dovetail_sim::cli::main(&args[1..])),
        Some("ci") => ci(),
        Some("e2e") => {
            let root = table::root();
            let image = args.get(1).is_some_and(|a| a == "--image");
            let result = e2e::test_binary(&root).and_then(|bin| {
                let first = e2e::Launcher::Binary(bin.clone());
                let second = if image {
                    let (reference, size) = image::build(&root, true)?;
                    println!("built {reference} ({:.1} MB)", size as f64 / 1e6);
                    e2e::Launcher::Image {
                        root: root.clone(),
                        reference,
                    }
                } else {
                    e2e::Launcher::Binary(bin)
                };
                e2e::run(&root, first, second)
            });
            match result {
                Ok(report) => {
                    for (what, at) in report.steps {
                        println!("{:>7.1}s  {what}", at.as_secs_f64());
                    }
                    println!("e2e passed");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("e2e failed: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("image") => {
            match image::build(&table::root(), args.get(1).is_some_and(|a| a == "--dev")) {
                Ok((reference, size)) => {
                    println!("built {reference} ({:.1} MB)", size as f64 / 1e6);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("migrate") => migrate(&args[1..]),
        Some("crds") => match crds::write(&table::root()) {
            Ok(files) => {
                for f in files {
                    println!("wrote {f}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => {
            let which = args.get(1).map(String::as_str);
            if which.is_some_and(|a| a != "scheduling" && a != "consolidation") {
                eprintln!(
                    "error: unknown bench `{}` (known: scheduling, consolidation; none: everything)",
                    args[1]
                );
                return ExitCode::from(2);
            }
            // Figures from a debug build would mislead: measure with the release build.
            if cfg!(debug_assertions) && std::env::var_os("DOVETAIL_BENCH_DEBUG").is_none() {
                eprintln!("building and running the release build of xtask for measuring...");
                let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
                let ok = Command::new(cargo)
                    .args(["run", "--release", "--quiet", "--package", "xtask", "--"])
                    .args(&args)
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                return if ok {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
            match which {
                Some("scheduling") => {
                    println!(
                        "scheduling (reference mix, seed 42; 400 instance types in 3 zones, spot and on-demand; one NodePool):\n"
                    );
                    print!("{}", bench::run());
                }
                Some(_) => print!("{}", consolidation::run()),
                None => match table::run() {
                    Ok(report) => {
                        print!("{report}");
                        eprintln!("written to bench/results.md");
                    }
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::FAILURE;
                    }
                },
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
