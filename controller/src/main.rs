//! The in-cluster `dovetail` binary.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!("dovetail {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    eprintln!(
        "dovetail {}: this build has no Kubernetes or AWS adapters yet (they arrive with the in-cluster \
         work). Try the simulator: cargo xtask sim scenarios/steady-web.yaml",
        env!("CARGO_PKG_VERSION")
    );
    ExitCode::from(2)
}
