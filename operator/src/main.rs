//! The in-cluster `dovetail` binary.

use std::process::ExitCode;

use clap::Parser;
use dovetail_operator::config::Config;

fn main() -> ExitCode {
    // `dovetail sim FILE...` runs scenarios (the simulator, as `cargo xtask sim`); `dovetail migrate
    // FILE...` converts old Karpenter manifests; everything else runs the controller.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("sim") {
        return ExitCode::from(dovetail_sim::cli::main(&args[1..]));
    }
    if args.first().map(String::as_str) == Some("migrate") {
        return match dovetail::crds::migrate::run(&args[1..]) {
            Ok((yaml, report)) => {
                print!("{yaml}");
                eprint!("{report}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("dovetail migrate: {e}");
                ExitCode::from(2)
            }
        };
    }
    // clap prints a bad flag's message (naming it) and exits 2.
    let config = Config::parse();
    if let Err(e) = dovetail_operator::telemetry::init(&config.log_level, config.log_format) {
        eprintln!("dovetail: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("dovetail: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dovetail_operator::run::main(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "dovetail stopped");
            ExitCode::FAILURE
        }
    }
}
