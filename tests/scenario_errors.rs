//! Bad scenario files fail with file:line:column, the field, exit code 2, and no panic.

use std::path::{Path, PathBuf};

use dovetail_sim::cli::sim_command;

fn write(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dovetail-scenario-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn steady_web() -> String {
    std::fs::read_to_string(dovetail_tests::root().join("scenarios/steady-web.yaml")).unwrap()
}

fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle present")
        + 1
}

fn run(path: &Path) -> dovetail_sim::cli::CliOutput {
    sim_command(&[path.display().to_string(), "--until".into(), "1s".into()])
}

#[test]
fn a_misspelt_top_level_field_is_named_with_its_line() {
    let text = steady_web().replace("duration: 1h", "duration: 1h\ndurration: 2h");
    let p = write("top.yaml", &text);
    let out = run(&p);
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&text, "durration");
    assert!(
        out.stderr.contains(&format!("top.yaml:{line}:")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("durration"), "{}", out.stderr);
}

#[test]
fn a_misspelt_manifest_field_is_named_with_its_path() {
    let text = steady_web().replace("      replicas: 20", "      replica: 20");
    let p = write("manifest.yaml", &text);
    let out = run(&p);
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&text, "replica: 20");
    assert!(
        out.stderr.contains(&format!("manifest.yaml:{line}:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("manifests[2].spec.replica"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_bad_quantity_is_named_with_its_line_and_field() {
    let text = steady_web().replace("cpu: 500m", "cpu: 5OOm");
    let p = write("quantity.yaml", &text);
    let out = run(&p);
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&text, "5OOm");
    assert!(
        out.stderr.contains(&format!("quantity.yaml:{line}:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("manifests[2].spec.template.spec.containers[0].resources.requests.cpu"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("5OOm"), "{}", out.stderr);
}

#[test]
fn a_bad_duration_and_an_unknown_deployment_are_named() {
    let text = steady_web().replace("- at: 10m", "- at: 10 minutes");
    let out = run(&write("at.yaml", &text));
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("timeline[0].at"), "{}", out.stderr);

    let text = steady_web().replace("deployment: default/web", "deployment: default/api");
    let out = run(&write("deploy.yaml", &text));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("timeline[0].scale.deployment") && out.stderr.contains("default/api"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_arguments_and_missing_files_exit_2() {
    assert_eq!(sim_command(&[]).code, 2);
    assert_eq!(
        sim_command(&["x.yaml".into(), "--seed".into(), "abc".into()]).code,
        2
    );
    let out = sim_command(&["/nonexistent/scenario.yaml".into()]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("/nonexistent/scenario.yaml"));
}

#[test]
fn a_failed_expectation_exits_1() {
    let text = steady_web().replace("pods_pending_max: 3m", "pods_pending_max: 1s");
    let out = sim_command(&[
        write("expect.yaml", &text).display().to_string(),
        "--until".into(),
        "2m".into(),
        "--quiet".into(),
    ]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("FAILED"));
}

#[test]
fn queue_messages_are_checked_and_injected() {
    let text = steady_web().replace(
        "timeline:\n",
        "timeline:\n  - at: 1m\n    queue_message: {kind: raw, body: \"not json\"}\n  - at: 2m\n    queue_message: {kind: rebalance_recommendation}\n",
    );
    let p = write("queue.yaml", &text);
    let out = sim_command(&[p.display().to_string(), "--until".into(), "3m".into()]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("fault      queue-message raw"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("fault      queue-message rebalance-recommendation i-"),
        "{}",
        out.stdout
    );

    let bad = steady_web().replace(
        "timeline:\n",
        "timeline:\n  - at: 1m\n    queue_message: {kind: gossip}\n",
    );
    let out = run(&write("queue-bad.yaml", &bad));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("timeline[0].queue_message.kind") && out.stderr.contains("gossip"),
        "{}",
        out.stderr
    );
}

#[test]
fn new_actions_are_checked() {
    let cases = [
        (
            "    delete: {kind: CronJob, name: x}\n",
            "timeline[0].delete.kind",
            "CronJob",
        ),
        (
            "    delete_nodes: {count: 2, pick: random}\n",
            "timeline[0].delete_nodes.pick",
            "random",
        ),
        (
            "    controller_restart: {after: describe_instances}\n",
            "timeline[0].controller_restart.after",
            "create_fleet",
        ),
        (
            "    controller_down: {for: 5}\n",
            "timeline[0].controller_down.for",
            "unit",
        ),
        (
            "    node_fault: {fault: gpu_on_fire}\n",
            "timeline[0].node_fault.fault",
            "kubelet_stopped, kubelet_not_ready, accelerator_failed",
        ),
        (
            "    node_fault: {fault: kubelet_stopped, for: 10}\n",
            "timeline[0].node_fault.for",
            "unit",
        ),
        (
            "    node_fault: {fault: kubelet_stopped, pick: random}\n",
            "timeline[0].node_fault.pick",
            "oldest or newest",
        ),
        (
            "    capacity_reservation: {instance_type: m5.large, zone: us-east-9z, count: 1}\n",
            "timeline[0].capacity_reservation.zone",
            "not one of cloud.zones",
        ),
        (
            "    capacity_reservation: {instance_type: m5.huge, zone: us-east-1a, count: 1}\n",
            "timeline[0].capacity_reservation.instance_type",
            "not in the simulator's catalog",
        ),
        (
            "    capacity_reservation: {instance_type: m5.large, zone: us-east-1a, count: 1, reservation_type: capacity-block}\n",
            "timeline[0].capacity_reservation.lasts",
            "how long it `lasts`",
        ),
        (
            "    capacity_reservation: {instance_type: m5.large, zone: us-east-1a, count: 1, instance_match_criteria: sometimes}\n",
            "timeline[0].capacity_reservation.instance_match_criteria",
            "open or targeted",
        ),
        (
            "    capacity_reservation: {instance_type: m5.large, zone: us-east-1a, count: 1, reservation_type: capacity-block, lasts: 1h, interruptible: true}\n",
            "timeline[0].capacity_reservation.interruptible",
            "cannot be interruptible",
        ),
        (
            "    capacity_reservation: {id: CR-1, instance_type: m5.large, zone: us-east-1a, count: 1}\n",
            "timeline[0].capacity_reservation.id",
            "`cr-` then lowercase",
        ),
        (
            "    reclaim_capacity_reservation: {id: cr-1, count: 0}\n",
            "timeline[0].reclaim_capacity_reservation.count",
            "at least 1",
        ),
    ];
    for (i, (action, field, hint)) in cases.iter().enumerate() {
        let text = steady_web().replace("timeline:\n", &format!("timeline:\n  - at: 1m\n{action}"));
        let out = run(&write(&format!("action-{i}.yaml"), &text));
        assert_eq!(out.code, 2, "{action}: {out:?}");
        assert!(
            out.stderr.contains(field) && out.stderr.contains(hint),
            "{action}: {}",
            out.stderr
        );
        let line = line_of(&text, action.trim());
        assert!(
            out.stderr.contains(&format!(":{line}:")),
            "{action}: line {line} not named in {}",
            out.stderr
        );
    }
}

#[test]
fn a_controller_restart_and_a_delete_run() {
    let text = steady_web().replace(
        "timeline:\n",
        "timeline:\n  - at: 2m\n    controller_restart: {}\n  - at: 3m\n    delete: {kind: Deployment, name: web}\n",
    );
    let out = sim_command(&[
        write("restart.yaml", &text).display().to_string(),
        "--until".into(),
        "4m".into(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("fault      controller crashed; restarting in 10s")
    );
    assert!(out.stdout.contains("fault      controller restarted"));
    assert!(out.stdout.contains("workload   delete deployment web"));
}

#[test]
fn a_node_class_selecting_no_subnet_is_reported_and_launches_nothing() {
    let text = steady_web().replace(
        "karpenter.sh/discovery: sim\n      securityGroupSelectorTerms",
        "karpenter.sh/discovery: elsewhere\n      securityGroupSelectorTerms",
    );
    assert!(text.contains("discovery: elsewhere"));
    let out = sim_command(&[
        write("no-subnets.yaml", &text).display().to_string(),
        "--until".into(),
        "2m".into(),
    ]);
    assert!(
        out.stdout.contains(
            "ec2nodeclass/default not ready: spec.subnetSelectorTerms did not match any subnet"
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("skip nodepool/default: ec2nodeclass/default not ready")
    );
    assert!(
        !out.stdout.contains(" cloud      launch "),
        "{}",
        out.stdout
    );
}

#[test]
fn a_seed_sweep_prints_each_seed_and_the_worst() {
    let p = dovetail_tests::root().join("scenarios/steady-web.yaml");
    let out = sim_command(&[
        p.display().to_string(),
        "--seeds".into(),
        "3..5".into(),
        "--until".into(),
        "3m".into(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("seed     3  cost $") && out.stdout.contains("seed     4  cost $"));
    assert!(!out.stdout.contains("seed     5"));
    assert!(
        out.stdout.contains("worst of 2 seeds") && out.stdout.contains("failed           0 of 2")
    );
    let bad = sim_command(&[p.display().to_string(), "--seeds".into(), "5..5".into()]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr.contains("--seeds needs a range"),
        "{}",
        bad.stderr
    );
}

#[test]
fn a_sweep_reads_the_same_whatever_order_its_seeds_run_in() {
    use dovetail_sim::cli::{sequential, sim_command_with};
    let p = dovetail_tests::root().join("scenarios/steady-web.yaml");
    let args = [
        p.display().to_string(),
        "--seeds".into(),
        "0..3".into(),
        "--until".into(),
        "3m".into(),
    ];
    // A runner that computes the seeds backwards (as threads might finish them) but answers in order.
    let backwards = |s: &dovetail_sim::Scenario, o: &dovetail_sim::RunOptions, seeds: &[u64]| {
        let rev: Vec<u64> = seeds.iter().rev().copied().collect();
        let mut out = sequential(s, o, &rev);
        out.reverse();
        out
    };
    let a = sim_command_with(&args, &backwards, None);
    let b = sim_command(&args);
    assert_eq!(a, b);
    assert_eq!(a.code, 0, "{a:?}");
}

#[test]
fn progress_is_reported_and_changes_nothing() {
    use std::sync::{Arc, Mutex};
    let p = dovetail_tests::root().join("scenarios/steady-web.yaml");
    let args = [p.display().to_string(), "--until".into(), "5m".into()];
    let seen: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    let log = seen.clone();
    let progress = dovetail_sim::Progress(Arc::new(move |at, total| {
        log.lock().unwrap().push((at.as_secs(), total.as_secs()));
    }));
    let with =
        dovetail_sim::cli::sim_command_with(&args, &dovetail_sim::cli::sequential, Some(progress));
    assert_eq!(with, sim_command(&args));
    let seen = seen.lock().unwrap();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "not monotonic");
    assert!(seen.iter().all(|(at, total)| *total == 300 && at <= total));
}

#[test]
fn a_report_is_a_self_contained_page_with_four_charts() {
    let p = dovetail_tests::root().join("scenarios/spot-storm.yaml");
    let out_path =
        std::env::temp_dir().join(format!("dovetail-report-{}.html", std::process::id()));
    let out = sim_command(&[
        p.display().to_string(),
        "--until".into(),
        "15m".into(),
        "--quiet".into(),
        "--report".into(),
        out_path.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let html = std::fs::read_to_string(&out_path).expect("the report is written");
    assert!(html.starts_with("<!DOCTYPE html>") && html.contains("<h1>spot-storm</h1>"));
    assert_eq!(html.matches("<svg").count(), 4);
    for caption in [
        "Nodes by capacity type",
        "Pending pods",
        "Cost per hour (USD)",
        "Evictions (cumulative)",
    ] {
        assert!(html.contains(caption), "{caption}");
    }
    // Every line has a point per 30 s sample (15 minutes: about 30), and something was drawn above zero.
    for line in html.split("<polyline").skip(1) {
        let points = line
            .split("points=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        assert!(
            points.split(' ').count() >= 25,
            "a chart line with too few points"
        );
    }
    assert!(html.contains("stroke=\"#2ca02c\""));
    // Nothing is fetched: no script, no external stylesheet, image or font.
    assert!(!html.contains("<script") && !html.contains("src=") && !html.contains("<link"));
    let _ = std::fs::remove_file(&out_path);
}

/// steady-web with its inline manifests moved to a multi-document file beside it, referenced by `file:`.
fn steady_web_with_file(dir: &Path) -> PathBuf {
    let text = steady_web();
    let (head, rest) = text.split_once("manifests:\n").unwrap();
    let (block, tail) = rest.split_once("timeline:\n").unwrap();
    let mut docs = String::new();
    for line in block.lines() {
        match line.strip_prefix("  - ") {
            Some(first) => docs.push_str(&format!("---\n{first}\n")),
            None => docs.push_str(&format!("{}\n", line.get(4..).unwrap_or(""))),
        }
    }
    std::fs::create_dir_all(dir.join("manifests")).unwrap();
    std::fs::write(dir.join("manifests/web.yaml"), docs).unwrap();
    let scenario = dir.join("scenario.yaml");
    std::fs::write(
        &scenario,
        format!("{head}manifests:\n  - file: manifests/web.yaml\ntimeline:\n{tail}"),
    )
    .unwrap();
    scenario
}

#[test]
fn file_manifests_run_exactly_like_inline_ones() {
    let dir = std::env::temp_dir().join(format!("dovetail-file-manifests-{}", std::process::id()));
    let with_file = steady_web_with_file(&dir);
    let inline = dovetail_tests::root().join("scenarios/steady-web.yaml");
    let args = |p: &Path| vec![p.display().to_string(), "--until".into(), "12m".into()];
    let a = sim_command(&args(&with_file));
    let b = sim_command(&args(&inline));
    assert_eq!(a.code, 0, "{a:?}");
    assert!(a.stdout.contains("nodeclaim"), "the run launched capacity");
    assert_eq!(a.stdout, b.stdout);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_manifest_file_names_the_scenario_line_and_the_path() {
    let text = steady_web().replace(
        "manifests:\n",
        "manifests:\n  - file: manifests/nowhere.yaml\n",
    );
    let p = write("missing-file.yaml", &text);
    let out = run(&p);
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&text, "nowhere.yaml");
    assert!(
        out.stderr.contains(&format!("missing-file.yaml:{line}:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("manifests[0].file") && out.stderr.contains("nowhere.yaml"),
        "{}",
        out.stderr
    );
}

#[test]
fn an_error_inside_a_manifest_file_names_that_file_and_line() {
    let dir = std::env::temp_dir().join(format!("dovetail-file-error-{}", std::process::id()));
    let scenario = steady_web_with_file(&dir);
    let docs = std::fs::read_to_string(dir.join("manifests/web.yaml")).unwrap();
    let broken = docs.replace("  replicas: 20", "  replica: 20");
    std::fs::write(dir.join("manifests/web.yaml"), &broken).unwrap();
    let out = run(&scenario);
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&broken, "replica: 20");
    assert!(
        out.stderr.contains(&format!("web.yaml:{line}:")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("document[2].spec.replica"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs steady-web with one text replacement for two minutes; returns the trace and summary.
fn steady_web_with(name: &str, from: &str, to: &str) -> String {
    let text = steady_web().replacen(from, to, 1);
    assert!(text.contains(to), "the replacement applies");
    let out = sim_command(&[
        write(name, &text).display().to_string(),
        "--until".into(),
        "2m".into(),
    ]);
    format!("{}{}", out.stdout, out.stderr)
}

#[test]
fn a_nodepool_naming_a_missing_node_class_gets_a_condition_and_launches_nothing() {
    let out = steady_web_with(
        "missing-class.yaml",
        "            kind: EC2NodeClass\n            name: default",
        "            kind: EC2NodeClass\n            name: missing",
    );
    assert!(
        out.contains(
            "nodepool/default not ready (NodeClassNotFound): spec.template.spec.nodeClassRef: EC2NodeClass `missing` not found"
        ),
        "{out}"
    );
    assert!(!out.contains("create nodeclaim/"), "{out}");
    assert!(out.contains("20 pending at end"), "{out}");
}

#[test]
fn impossible_requirements_and_a_bad_budget_cron_are_conditions_not_launches() {
    let impossible = steady_web_with("impossible.yaml", "values: [c, m, r]", "values: [zz]");
    assert!(
        impossible.contains("nodepool/default not ready (NoInstanceTypes): spec.template.spec.requirements: no instance type in the catalog meets them"),
        "{impossible}"
    );
    assert!(!impossible.contains("create nodeclaim/"), "{impossible}");
    let bad_cron = steady_web_with(
        "bad-cron.yaml",
        "        consolidateAfter: 1m\n",
        "        consolidateAfter: 1m\n        budgets:\n          - nodes: \"0\"\n            schedule: \"0 25 * * *\"\n            duration: 8h\n",
    );
    assert!(
        bad_cron.contains(
            "nodepool/default not ready (InvalidBudget): spec.disruption.budgets[0].schedule"
        ),
        "{bad_cron}"
    );
    assert!(!bad_cron.contains("create nodeclaim/"), "{bad_cron}");
}

#[test]
fn what_kubernetes_refuses_in_a_built_in_kind_stops_the_load_with_its_line() {
    let text = steady_web().replace("      replicas: 20", "      replicas: -2");
    let p = write("replicas.yaml", &text);
    let out = run(&p);
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&text, "replicas: -2");
    assert!(
        out.stderr.contains(&format!("replicas.yaml:{line}:"))
            && out
                .stderr
                .contains("manifests[2].spec.replicas: Deployment web: Invalid value: -2"),
        "{}",
        out.stderr
    );
    let text = steady_web().replace(
        "            app: web\n        spec:",
        "            app: api\n        spec:",
    );
    let p = write("selector.yaml", &text);
    let out = run(&p);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("spec.template.metadata.labels: Deployment web: Invalid value: `selector` does not match template `labels`"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_wrong_shape_names_the_field_it_is_in() {
    let text = steady_web().replace("expect:\n", "expect:\n  pods_pending_at_end: 0\n");
    let out = run(&write("shape.yaml", &text));
    assert_eq!(out.code, 2, "{out:?}");
    let line = line_of(&text, "pods_pending_at_end: 0");
    assert!(
        out.stderr.contains(&format!(
            "shape.yaml:{line}:24: expect.pods_pending_at_end: "
        )),
        "{}",
        out.stderr
    );
    let text = steady_web().replace(
        "timeline:\n",
        "timeline:\n  - at: 1m\n    drain: {nodes: 3}\n",
    );
    let out = run(&write("unknown.yaml", &text));
    assert!(
        out.stderr.contains(": timeline[0].drain.nodes: ")
            && out.stderr.contains("unknown field `nodes`"),
        "{}",
        out.stderr
    );
}
