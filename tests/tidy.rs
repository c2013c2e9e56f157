//! Determinism and style rules that the compiler cannot check, enforced over the simulated crates.

use std::path::{Path, PathBuf};

/// Crates whose code runs inside the simulation.
const SIMULATED: [&str; 4] = ["controller/src", "fakecloud/src", "fakekube/src", "sim/src"];

/// (pattern, why it is banned)
const BANNED: [(&str, &str); 9] = [
    (
        "SystemTime::now",
        "wall time must come through the Clock seam",
    ),
    ("Instant::now", "time must come through the Clock seam"),
    (
        "thread_rng",
        "randomness must come from the seeded ChaCha RNG handed down",
    ),
    (
        "rand::random",
        "randomness must come from the seeded ChaCha RNG handed down",
    ),
    (
        "HashMap",
        "iteration order is random: use BTreeMap or IndexMap",
    ),
    (
        "HashSet",
        "iteration order is random: use BTreeSet or IndexSet",
    ),
    ("spawn_blocking", "blocks turmoil's simulated time"),
    (
        "thread::spawn",
        "threads escape the simulation's single-threaded schedule",
    ),
    (
        "rand::rng()",
        "randomness must come from the seeded ChaCha RNG handed down",
    ),
];

/// (file, pattern, reason) exceptions.
const ALLOWED: [(&str, &str, &str); 1] = [(
    "controller/src/clock.rs",
    "SystemTime::now",
    "the real clock adapter is the one place that reads system time",
)];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn files() -> Vec<(String, String)> {
    let root = dovetail_tests::root();
    let mut paths = Vec::new();
    for dir in SIMULATED {
        rust_files(&root.join(dir), &mut paths);
    }
    paths
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(&root).unwrap().display().to_string();
            (rel, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

#[test]
fn no_nondeterminism_in_simulated_code() {
    let mut violations = Vec::new();
    for (file, text) in files() {
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for (pattern, why) in BANNED {
                let allowed = ALLOWED.iter().any(|(f, p, _)| *f == file && *p == pattern);
                if line.contains(pattern) && !allowed {
                    violations.push(format!("{file}:{}: `{pattern}`: {why}", n + 1));
                }
            }
        }
    }
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}

#[test]
fn every_select_is_biased() {
    let mut violations = Vec::new();
    for (file, text) in files() {
        let lines: Vec<&str> = text.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            if line.contains("select!") && !line.trim_start().starts_with("//") {
                let next = lines.get(n + 1).map(|l| l.trim()).unwrap_or_default();
                if next != "biased;" {
                    violations.push(format!(
                        "{file}:{}: tokio::select! without `biased;` polls in random order",
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}

#[test]
fn every_module_says_what_it_is() {
    let root = dovetail_tests::root();
    let mut paths = Vec::new();
    for dir in [
        "controller/src",
        "fakecloud/src",
        "fakekube/src",
        "sim/src",
        "xtask/src",
        "operator/src",
    ] {
        rust_files(&root.join(dir), &mut paths);
    }
    let missing: Vec<String> = paths
        .iter()
        .filter(|p| !std::fs::read_to_string(p).unwrap().starts_with("//!"))
        .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a `//!` line: {missing:?}"
    );
}

#[test]
fn the_rules_catch_what_they_claim_to() {
    // Guard against a tidy test that silently matches nothing.
    let sample = "let m: std::collections::HashMap<u8, u8> = Default::default();";
    assert!(BANNED.iter().any(|(p, _)| sample.contains(p)));
    assert!(files().len() > 20, "the tidy scan found too few files");
}

#[test]
fn the_fake_scheduler_shares_no_code_with_the_controllers_planning() {
    // fakekube is the oracle: if it reused dovetail's packing, quantities or instance types, a bug there
    // would be invisible in simulation.
    let root = dovetail_tests::root();
    let mut paths = Vec::new();
    rust_files(&root.join("fakekube/src"), &mut paths);
    let forbidden = [
        "dovetail::provisioning",
        "dovetail::scheduling",
        "dovetail::resources",
        "dovetail::quantity",
        "dovetail::instancetype",
        "dovetail::state",
    ];
    let mut violations = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p).unwrap();
        for f in forbidden {
            if text.contains(f) {
                violations.push(format!(
                    "{}: uses `{f}`",
                    p.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    let scheduler = std::fs::read_to_string(root.join("fakekube/src/scheduler.rs")).unwrap();
    for line in scheduler
        .lines()
        .filter(|l| l.trim_start().starts_with("use dovetail"))
    {
        if line.trim() != "use dovetail::journal::Journal;" {
            violations.push(format!(
                "fakekube/src/scheduler.rs imports `{}`",
                line.trim()
            ));
        }
    }
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}
