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
const ALLOWED: [(&str, &str, &str); 5] = [
    (
        "controller/src/clock.rs",
        "SystemTime::now",
        "the real clock adapter is the one place that reads system time",
    ),
    (
        "sim/src/serve.rs",
        "thread::spawn",
        "--serve answers kubectl from a thread outside the simulation, on purpose",
    ),
    (
        "sim/src/serve.rs",
        "Instant::now",
        "--serve paces the run to the wall clock, on purpose",
    ),
    (
        "sim/src/cli.rs",
        "Instant::now",
        "JUnit's `time` is a run's wall time, measured outside the run",
    ),
    (
        "sim/src/parallel.rs",
        "Instant::now",
        "a sweep's progress line shows wall time, outside any run",
    ),
];

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
        "dovetail::cloudprovider::instancetype",
        "dovetail::aws::instancetype",
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

/// The controller's top-level modules (`controller/src/<m>.rs` or `controller/src/<m>/`), each with the
/// set of other top-level modules its non-test code names through `crate::`.
fn controller_imports() -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let root = dovetail_tests::root().join("controller/src");
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let mut graph: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for p in paths {
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&p).unwrap();
        // Test modules may reach anywhere; the rule is about what the code itself depends on.
        let code = text.split("#[cfg(test)]").next().unwrap();
        let deps = graph.entry(top.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != top {
                deps.insert(name);
            }
        }
    }
    graph
}

/// A cycle in the import graph, if there is one.
fn find_cycle(
    graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &std::collections::BTreeMap<String, std::collections::BTreeSet<String>>,
        state: &mut std::collections::BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_string(), 1);
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()) {
                Some(1) => {
                    let at = stack.iter().position(|s| s == next).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Some(_) => {}
                None => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
            }
        }
        stack.pop();
        state.insert(node.to_string(), 2);
        None
    }
    let mut state: std::collections::BTreeMap<String, u8> = Default::default();
    for node in graph.keys() {
        if !state.contains_key(node)
            && let Some(c) = visit(node, graph, &mut state, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

#[test]
fn the_controllers_top_level_modules_import_no_circle() {
    let graph = controller_imports();
    assert!(graph.len() > 20, "found too few modules: {graph:?}");
    if let Some(cycle) = find_cycle(&graph) {
        panic!(
            "import circle between controller modules: {}",
            cycle.join(" -> ")
        );
    }
    // The check itself must notice a circle.
    let mut bad = graph.clone();
    bad.entry("state".into()).or_default().insert("run".into());
    assert!(find_cycle(&bad).is_some());
}

#[test]
fn only_aws_knows_ec2_and_sqs() {
    // The Cloud seam (EC2/SQS operations and their types) lives in controller/src/aws/; the
    // provider-neutral controllers reach the cloud only through cloudprovider::CloudProvider. `run.rs` is
    // the wiring: it may name the AWS provider and hand it the seam.
    let root = dovetail_tests::root();
    let mut paths = Vec::new();
    rust_files(&root.join("controller/src"), &mut paths);
    let banned = [
        "aws::cloud",
        "aws::launch",
        "aws::interruption",
        "aws::nodeclass",
        "Cloud>",
    ];
    let mut violations = Vec::new();
    let mut wiring_checked = false;
    for p in &paths {
        let rel = p.strip_prefix(&root).unwrap().display().to_string();
        if rel.starts_with("controller/src/aws/") {
            continue;
        }
        let text: String = std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        if rel == "controller/src/run.rs" {
            wiring_checked = text.contains("aws::cloud::Cloud");
            continue;
        }
        for b in banned {
            if text.contains(b) {
                violations.push(format!("{rel}: names `{b}`"));
            }
        }
        if text.contains("crate::aws") {
            violations.push(format!("{rel}: imports the AWS provider"));
        }
    }
    assert!(
        wiring_checked,
        "run.rs no longer hands the Cloud seam to the provider: update this test"
    );
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}

#[test]
fn the_scheduling_core_is_pure() {
    // No async, no I/O, no seams: plain data in, plain data out.
    let root = dovetail_tests::root();
    let mut paths = Vec::new();
    rust_files(&root.join("controller/src/scheduling"), &mut paths);
    assert!(paths.len() >= 5, "found too few scheduling files");
    let banned = [
        "async ",
        ".await",
        "tokio",
        "futures",
        "kube::Kube",
        "kube::WatchEvent",
        "crate::context",
        "crate::aws",
        "crate::state",
        "crate::journal",
        "crate::clock",
        "std::fs",
        "std::net",
    ];
    let mut violations = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p).unwrap();
        for b in banned {
            if text.contains(b) {
                violations.push(format!(
                    "{}: `{b}`",
                    p.strip_prefix(&root).unwrap().display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "\n{}", violations.join("\n"));
}
