//! A platform team's CI, as they would run it: a repository holding only scenarios (no Rust), the shipped
//! `dovetail` binary snapshot-testing them — written, unchanged, changed by a NodePool edit (exit 1, a diff
//! naming the launches and the cost), accepted with `--update` — with a JUnit file CI systems read.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A throwaway "infrastructure repository": `scenarios/web.yaml` (Dovetail's steady-web) and nothing else.
fn user_repo(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dovetail-user-ci-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("scenarios")).unwrap();
    std::fs::copy(
        repo_root().join("scenarios/steady-web.yaml"),
        dir.join("scenarios/web.yaml"),
    )
    .unwrap();
    dir
}

/// `dovetail sim ...` run in `dir`, as a CI job would (not a terminal: no progress bar).
fn dovetail_sim(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dovetail"))
        .arg("sim")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// (test cases, failures, failure messages) of a JUnit file, read with an XML parser.
fn junit(path: &Path) -> (usize, usize, Vec<String>) {
    use quick_xml::events::Event;
    let xml = std::fs::read_to_string(path).unwrap();
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut cases, mut failures, mut messages) = (0, 0, Vec::new());
    loop {
        match reader.read_event().unwrap() {
            Event::Start(e) | Event::Empty(e) => match e.name().as_ref() {
                b"testcase" => cases += 1,
                b"failure" => {
                    failures += 1;
                    let message = e
                        .try_get_attribute("message")
                        .unwrap()
                        .unwrap()
                        .unescape_value()
                        .unwrap()
                        .into_owned();
                    messages.push(message);
                }
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    (cases, failures, messages)
}

const ARGS: [&str; 6] = [
    "scenarios/web.yaml",
    "--snapshot",
    "snapshots",
    "--until",
    "20m",
    "--junit",
];

#[test]
fn a_nodepool_change_fails_with_a_readable_diff_until_accepted() {
    let dir = user_repo("full");
    let args = |extra: &[&'static str]| -> Vec<&'static str> {
        ARGS.iter()
            .copied()
            .chain(["report.xml"])
            .chain(extra.iter().copied())
            .collect()
    };
    let snap = dir.join("snapshots/web.seed-42.snap");

    // First run: the snapshot is written; exit 0.
    let first = dovetail_sim(&dir, &args(&[]));
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let recorded = std::fs::read_to_string(&snap).unwrap();
    assert!(
        recorded.starts_with(&format!(
            "# dovetail snapshot format 1; dovetail {}; scenario steady-web; seed 42; level full\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{recorded}"
    );
    assert!(recorded.contains(" cloud      launch i-"), "{recorded}");
    assert!(text(&first).contains("(new)"), "{}", text(&first));
    assert_eq!(junit(&dir.join("report.xml")).0, 1);

    // Again: the same file, exit 0.
    let again = dovetail_sim(&dir, &args(&[]));
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));
    assert!(text(&again).contains("unchanged"), "{}", text(&again));
    assert_eq!(std::fs::read_to_string(&snap).unwrap(), recorded);
    assert_eq!(junit(&dir.join("report.xml")), (1, 0, vec![]));

    // The NodePool loses spot: exit 1, the diff shows the launches change, the line names the cost.
    let scenario = dir.join("scenarios/web.yaml");
    let yaml = std::fs::read_to_string(&scenario).unwrap();
    let on_demand = yaml.replace("values: [spot, on-demand]", "values: [on-demand]");
    assert_ne!(yaml, on_demand);
    std::fs::write(&scenario, on_demand).unwrap();
    let changed = dovetail_sim(&dir, &args(&[]));
    let out = text(&changed);
    assert_eq!(changed.status.code(), Some(1), "{out}");
    assert!(out.contains("CHANGED: total cost $"), "{out}");
    assert!(out.contains("--- web.seed-42.snap (recorded)"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with('-') && l.contains(" launch ") && l.contains(" spot ")),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with('+') && l.contains(" launch ") && l.contains(" on-demand ")),
        "{out}"
    );
    assert!(out.contains("--update"), "{out}");
    assert_eq!(
        std::fs::read_to_string(&snap).unwrap(),
        recorded,
        "not rewritten without --update"
    );
    let (cases, failures, messages) = junit(&dir.join("report.xml"));
    assert_eq!((cases, failures), (1, 1));
    assert!(messages[0].contains("total cost"), "{messages:?}");

    // Accepted: exit 0, the file rewritten; then unchanged again.
    let update = dovetail_sim(&dir, &args(&["--update"]));
    assert_eq!(update.status.code(), Some(0), "{}", text(&update));
    assert!(text(&update).contains("updated"), "{}", text(&update));
    assert_ne!(std::fs::read_to_string(&snap).unwrap(), recorded);
    let settled = dovetail_sim(&dir, &args(&[]));
    assert_eq!(settled.status.code(), Some(0), "{}", text(&settled));

    // A snapshot from another Dovetail version says so instead of a wall of diff.
    let current = std::fs::read_to_string(&snap).unwrap();
    std::fs::write(
        &snap,
        current.replacen(
            &format!("dovetail {};", env!("CARGO_PKG_VERSION")),
            "dovetail 0.0.9;",
            1,
        ),
    )
    .unwrap();
    let other = dovetail_sim(&dir, &args(&[]));
    let out = text(&other);
    assert_eq!(other.status.code(), Some(1), "{out}");
    assert!(
        out.contains("recorded by another version") && out.contains("dovetail 0.0.9"),
        "{out}"
    );
    assert!(
        !out.contains("(recorded)\n+++"),
        "no diff for another version: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn decision_snapshots_and_json_figures() {
    let dir = user_repo("decisions");
    let args = [
        "scenarios/web.yaml",
        "--snapshot",
        "snaps",
        "--snapshot-level",
        "decisions",
        "--until",
        "20m",
    ];
    let first = dovetail_sim(&dir, &args);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    let snap = std::fs::read_to_string(dir.join("snaps/web.seed-42.snap")).unwrap();
    assert!(
        snap.lines().next().unwrap().ends_with("; level decisions"),
        "{snap}"
    );
    // Minutes, no generated names, no per-pod binding lines, and the summary's decision rows.
    assert!(
        snap.lines()
            .any(|l| l.starts_with("+00:0") && l.contains("launch i-* ")),
        "{snap}"
    );
    assert!(
        !snap.contains("ip-10-") && !snap.contains(" bind "),
        "{snap}"
    );
    assert!(
        snap.contains("\n  launches ") && !snap.contains("pod pending"),
        "{snap}"
    );

    let json = dovetail_sim(
        &dir,
        &["scenarios/web.yaml", "--until", "5m", "--format", "json"],
    );
    assert_eq!(json.status.code(), Some(0), "{}", text(&json));
    let runs: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(runs[0]["scenario"], "steady-web");
    assert_eq!(runs[0]["seed"], 42);
    assert_eq!(runs[0]["passed"], true);
    assert!(runs[0]["launches"].as_u64().unwrap() >= 1, "{runs}");

    // Bad input names the flag.
    let bad = dovetail_sim(&dir, &["scenarios/web.yaml", "--update"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(
        text(&bad).contains("--update and --snapshot-level go with --snapshot DIR"),
        "{}",
        text(&bad)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
