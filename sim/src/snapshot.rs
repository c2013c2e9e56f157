//! Snapshots for a user's CI: a scenario's run at one seed as a committed text file, compared on the next
//! run with a unified diff and one line saying which figures changed.
//!
//! Determinism makes the comparison exact: the same Dovetail version, scenario and seed give the same file.
//! The `decisions` level keeps only what the autoscaler decided (claims, launches, disruptions, evictions,
//! terminations, with the inputs that caused them), times rounded to the minute and generated names
//! (instance ids, node and NodeClaim names, pod suffixes) blanked, so a harmless change of timing or of the
//! random stream does not churn the file.

use std::path::Path;
use std::sync::LazyLock;

use regex::Regex;

/// The snapshot format; a file of another format (or another Dovetail version) is re-recorded, not diffed.
pub const FORMAT: u32 = 1;

/// How much of a run a snapshot keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Level {
    /// The whole trace and summary.
    #[default]
    Full,
    /// The decisions, rounded and with generated names blanked, and the summary's decision figures.
    Decisions,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "full" => Some(Level::Full),
            "decisions" => Some(Level::Decisions),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Level::Full => "full",
            Level::Decisions => "decisions",
        }
    }
}

/// The file a scenario's run at `seed` is kept in: `<scenario file stem>.seed-<seed>.snap`.
pub fn file_name(scenario_file: &Path, seed: u64) -> String {
    let stem = scenario_file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "scenario".into());
    format!("{stem}.seed-{seed}.snap")
}

fn header(scenario: &str, seed: u64, level: Level) -> String {
    format!(
        "# dovetail snapshot format {FORMAT}; dovetail {}; scenario {scenario}; seed {seed}; level {}\n",
        env!("CARGO_PKG_VERSION"),
        level.name()
    )
}

/// The snapshot of one run: a header line naming the format and version, then the trace (or its decisions)
/// and the summary.
pub fn render(scenario: &str, seed: u64, level: Level, trace: &str, summary: &str) -> String {
    let mut out = header(scenario, seed, level);
    match level {
        Level::Full => {
            out.push_str(trace);
            out.push_str(summary);
        }
        Level::Decisions => {
            out.push_str(&decisions(trace));
            out.push_str(&decision_summary(summary));
        }
    }
    out
}

/// (category, message prefixes kept; empty: every line of the category).
const DECISIONS: [(&str, &[&str]); 8] = [
    ("workload", &[]),
    ("fault", &[]),
    ("interruption", &[]),
    ("provision", &["create ", "cannot "]),
    ("cloud", &["launch ", "terminated ", "create-fleet "]),
    (
        "disruption",
        &["decided:", "executed:", "launching ", "rolled "],
    ),
    ("termination", &[]),
    ("nodepool", &[]),
];

/// Generated names: instance ids, node names, NodeClaim name suffixes, pod name suffixes.
static GENERATED: LazyLock<[(Regex, &'static str); 4]> = LazyLock::new(|| {
    let re = |s: &str| Regex::new(s).unwrap_or_else(|e| unreachable!("a fixed pattern: {e}"));
    [
        (re(r"\bi-[0-9a-f]{8,17}\b"), "i-*"),
        (
            re(r"\bip-[0-9]+-[0-9]+-[0-9]+-[0-9]+\.[a-z0-9.-]*internal\b"),
            "ip-*",
        ),
        (re(r"(nodeclaim/[a-z0-9.-]+?)-[a-z0-9]{5}\b"), "$1-*"),
        (
            re(r"(pod/[a-z0-9.-]+/[a-z0-9.-]+?)-[a-z0-9]{5,10}(-[a-z0-9]{5})?\b"),
            "$1-*",
        ),
    ]
});

/// The trace's decision lines, at minute resolution and with generated names blanked.
pub fn decisions(trace: &str) -> String {
    let mut out = String::new();
    for line in trace.lines() {
        // "+00:00:01.818 provision  create nodeclaim/...": time, category, message.
        let Some((time, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let (category, message) = rest.split_once(' ').unwrap_or((rest, ""));
        let message = message.trim_start();
        let kept = DECISIONS.iter().any(|(c, prefixes)| {
            *c == category
                && (prefixes.is_empty() || prefixes.iter().any(|p| message.starts_with(p)))
        });
        if !kept {
            continue;
        }
        let minute = time.get(..6).unwrap_or(time);
        let mut message = message.to_string();
        for (pattern, with) in GENERATED.iter() {
            message = pattern.replace_all(&message, *with).into_owned();
        }
        out.push_str(&format!("{minute} {category:<12} {message}\n"));
    }
    out
}

/// Summary rows a decisions snapshot keeps (the rest are timing).
const DECISION_ROWS: [&str; 6] = [
    "scenario",
    "nodes",
    "launches",
    "evictions",
    "expect",
    "verdict",
];

/// The summary's decision figures, the total cost to the cent.
fn decision_summary(summary: &str) -> String {
    let mut out = String::new();
    for line in summary.lines() {
        let key = row_key(line);
        if line == "summary" || DECISION_ROWS.contains(&key.as_str()) {
            out.push_str(line);
            out.push('\n');
        } else if key == "total cost" {
            let cents = line
                .split('$')
                .nth(1)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map_or_else(
                    || line.to_string(),
                    |v| format!("  total cost       ${v:.2}"),
                );
            out.push_str(&cents);
            out.push('\n');
        }
    }
    out
}

/// "  total cost       $0.4715" → "total cost".
fn row_key(line: &str) -> String {
    let line = line.trim_start();
    line.split("  ")
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The summary's rows (after the `summary` line), key → value, in order.
fn summary_rows(snapshot: &str) -> Vec<(String, String)> {
    snapshot
        .lines()
        .skip_while(|l| *l != "summary")
        .skip(1)
        .filter_map(|l| {
            let key = row_key(l);
            let value = l.trim_start().get(key.len()..)?.trim().to_string();
            (!key.is_empty()).then_some((key, value))
        })
        .collect()
}

/// What a later run found against the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    /// No file yet.
    New,
    Same,
    /// A unified diff (old → new) and one line naming the figures that changed.
    Changed {
        diff: String,
        figures: String,
    },
    /// Recorded by another Dovetail version or format: what the file says it is.
    OtherVersion {
        recorded: String,
    },
}

/// Compare the file's text (`None`: no file) with this run's snapshot; `label` names the file in the diff.
pub fn compare(old: Option<&str>, new: &str, label: &str) -> Comparison {
    let Some(old) = old else {
        return Comparison::New;
    };
    if old == new {
        return Comparison::Same;
    }
    let old_header = old.lines().next().unwrap_or_default();
    let new_header = new.lines().next().unwrap_or_default();
    let version = |h: &str| {
        h.split("; ")
            .take(2)
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    if version(old_header) != version(new_header) {
        let recorded = old_header.trim_start_matches("# ").to_string();
        return Comparison::OtherVersion {
            recorded: if recorded.starts_with("dovetail snapshot") {
                recorded
            } else {
                "not a dovetail snapshot".into()
            },
        };
    }
    let diff = similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(
            &format!("{label} (recorded)"),
            &format!("{label} (this run)"),
        )
        .to_string();
    Comparison::Changed {
        diff,
        figures: figures_changed(old, new),
    }
}

/// "total cost $0.47 → $0.52; launches 3 → 4": the summary rows that differ, or what else did.
fn figures_changed(old: &str, new: &str) -> String {
    let before = summary_rows(old);
    let after = summary_rows(new);
    let mut changed = Vec::new();
    // "3 (fleet errors: none)" → "3": the line names figures; the details are in the diff.
    let short = |v: &str| v.split(" (").next().unwrap_or(v).to_string();
    for (key, value) in &after {
        if key == "scenario" || key == "expect" {
            continue;
        }
        let value = &short(value);
        match before
            .iter()
            .find(|(k, _)| k == key)
            .map(|(k, v)| (k, short(v)))
        {
            Some((_, was)) if &was != value => changed.push(format!("{key} {was} → {value}")),
            None => changed.push(format!("{key} → {value}")),
            _ => {}
        }
    }
    let expectations = |rows: &[(String, String)]| -> Vec<String> {
        rows.iter()
            .filter(|(k, _)| k == "expect")
            .map(|(_, v)| v.clone())
            .collect()
    };
    if expectations(&before) != expectations(&after) {
        changed.push("expectations changed".into());
    }
    if changed.is_empty() {
        let lines = similar::TextDiff::from_lines(old, new)
            .iter_all_changes()
            .filter(|c| c.tag() != similar::ChangeTag::Equal)
            .count();
        return format!("same figures; {lines} trace line(s) differ");
    }
    changed.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "\
+00:00:01.813 provision  batch pods=20 window=1.00s existing=0 new-claims=1 unschedulable=0
+00:00:01.818 provision  create nodeclaim/default-27b8n pool=default pods=20 cpu=10 mem=20.0Gi types=c5.4xlarge
+00:00:01.965 cloud      launch i-00f3f0c8b9cd6e6de c5.4xlarge us-east-1b spot 0.2085/h for nodeclaim/default-27b8n
+00:00:06.200 cloud      running i-00f3f0c8b9cd6e6de ip-10-0-16-4.ec2.internal
+00:05:00.555 termination node/ip-10-0-0-8.ec2.internal evicted 5 pods (pod/default/web-smwmp4smx2-47wl4 +4 more)
";
    const SUMMARY: &str = "summary
  scenario         steady-web (seed 7, 1h00m00s simulated)
  total cost       $0.4715
  cost per hour    end 0.5134, max 0.7219
  nodes            end 2, max 3
  launches         3 (fleet errors: none)
  pod pending      p50 50.5s  p99 1m15s  max 1m15s
  evictions        26 (refused by budgets 0, forced at terminationGracePeriod 0)
  expect           pods_pending_max 3m00s (got 1m15s): ok
  verdict          PASS
";

    #[test]
    fn decisions_keep_what_was_decided_rounded_and_without_generated_names() {
        let d = decisions(TRACE);
        assert_eq!(
            d,
            "+00:00 provision    create nodeclaim/default-* pool=default pods=20 cpu=10 mem=20.0Gi types=c5.4xlarge\n\
             +00:00 cloud        launch i-* c5.4xlarge us-east-1b spot 0.2085/h for nodeclaim/default-*\n\
             +00:05 termination  node/ip-* evicted 5 pods (pod/default/web-* +4 more)\n"
        );
        let s = render("steady-web", 7, Level::Decisions, TRACE, SUMMARY);
        assert!(s.contains("  total cost       $0.47\n"), "{s}");
        assert!(!s.contains("pod pending"), "{s}");
        assert!(
            s.contains("  launches         3 (fleet errors: none)\n"),
            "{s}"
        );
    }

    #[test]
    fn a_changed_run_names_its_figures_and_shows_a_diff() {
        let old = render("web", 7, Level::Full, TRACE, SUMMARY);
        assert_eq!(
            compare(Some(&old), &old, "web.seed-7.snap"),
            Comparison::Same
        );
        assert_eq!(compare(None, &old, "web.seed-7.snap"), Comparison::New);
        let new = render(
            "web",
            7,
            Level::Full,
            &TRACE.replace("c5.4xlarge us-east-1b", "m5.4xlarge us-east-1b"),
            &SUMMARY
                .replace("$0.4715", "$0.5200")
                .replace("launches         3", "launches         4"),
        );
        match compare(Some(&old), &new, "web.seed-7.snap") {
            Comparison::Changed { diff, figures } => {
                assert_eq!(figures, "total cost $0.4715 → $0.5200; launches 3 → 4");
                assert!(diff.contains("--- web.seed-7.snap (recorded)"), "{diff}");
                assert!(
                    diff.contains(
                        "-+00:00:01.965 cloud      launch i-00f3f0c8b9cd6e6de c5.4xlarge"
                    ),
                    "{diff}"
                );
                assert!(
                    diff.contains(
                        "++00:00:01.965 cloud      launch i-00f3f0c8b9cd6e6de m5.4xlarge"
                    ),
                    "{diff}"
                );
            }
            other => panic!("expected a change, got {other:?}"),
        }
    }

    #[test]
    fn another_version_is_named_not_diffed() {
        let new = render("web", 7, Level::Full, TRACE, SUMMARY);
        let old = new.replacen(
            &format!("dovetail {}", env!("CARGO_PKG_VERSION")),
            "dovetail 0.0.1",
            1,
        );
        match compare(Some(&old), &new, "web.seed-7.snap") {
            Comparison::OtherVersion { recorded } => {
                assert!(recorded.contains("dovetail 0.0.1"), "{recorded}")
            }
            other => panic!("expected another version, got {other:?}"),
        }
        assert_eq!(
            compare(Some("hello\n"), &new, "x"),
            Comparison::OtherVersion {
                recorded: "not a dovetail snapshot".into()
            }
        );
    }
}
