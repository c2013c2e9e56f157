//! The in-cluster `dovetail` binary.

use std::process::ExitCode;

use clap::Parser;
use dovetail_operator::config::Config;

fn main() -> ExitCode {
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
