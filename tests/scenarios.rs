//! Snapshot tests of scenario traces: a behaviour change shows up as a readable diff in review.

use dovetail_tests::{at, first, run_scenario, run_scenario_with, simulate_scenario};

#[test]
fn steady_web_seed_7() {
    let text = run_scenario("steady-web.yaml", 7);
    insta::assert_snapshot!("steady-web.seed-7", text);
}

#[test]
fn ice_fallback_seed_3() {
    let text = run_scenario("ice-fallback.yaml", 3);
    insta::assert_snapshot!("ice-fallback.seed-3", text);
}

#[test]
fn api_blips_seed_5() {
    let text = run_scenario("api-blips.yaml", 5);
    insta::assert_snapshot!("api-blips.seed-5", text);
}

#[test]
fn multi_nodepool_gpu_seed_11() {
    let text = run_scenario("multi-nodepool-gpu.yaml", 11);
    insta::assert_snapshot!("multi-nodepool-gpu.seed-11", text);
}

#[test]
fn topology_spread_zones_seed_7() {
    let text = run_scenario("topology-spread-zones.yaml", 7);
    insta::assert_snapshot!("topology-spread-zones.seed-7", text);
}

#[test]
fn kms_broken_key_seed_5() {
    let text = run_scenario("kms-broken-key.yaml", 5);
    // The cause is named, launches back off instead of looping, and the cluster recovers on its own.
    assert!(
        text.contains("ec2nodeclass/default launches failing")
            && text.contains("check that KMS key alias/ebs-nodes is enabled"),
        "no condition names the key"
    );
    let launches: Vec<u64> = text
        .lines()
        .filter(|l| l.contains(" cloud      launch "))
        .filter_map(|l| at(l).map(|t| t as u64))
        .collect();
    for (i, start) in launches.iter().enumerate() {
        let in_window = launches[i..]
            .iter()
            .take_while(|t| **t < start + 600)
            .count();
        assert!(
            in_window <= 6,
            "{in_window} launches in the 10 minutes from +{start}s"
        );
    }
    // After the third death the back-off only grows: no two launches slip through between pauses, and
    // at the cap a class launches at most once per 5 minutes.
    let gaps: Vec<u64> = launches.windows(2).map(|w| w[1] - w[0]).collect();
    for pair in gaps[2..].windows(2) {
        assert!(
            pair[1] + 5 >= pair[0],
            "the back-off shrank: gaps between launches {gaps:?}"
        );
    }
    assert!(
        gaps.iter().rev().take(2).all(|g| *g >= 295),
        "faster than one launch per 5 minutes at the cap: {gaps:?}"
    );
    // The waiting pods are told what they wait for.
    assert!(
        text.contains("wait: launches of ec2nodeclass/default are paused: 3 launches died before their nodes registered"),
        "the waiting pods are not told the class's problem"
    );
    assert!(text.contains("launches healthy again"), "never recovered");
    assert!(
        text.contains("0 pending at end"),
        "pods still pending at the end"
    );
    insta::assert_snapshot!("kms-broken-key.seed-5", text);
}

#[test]
fn pdb_drain_seed_42() {
    let text = run_scenario("pdb-drain.yaml", 42);
    let (deleted, _) = first(&text, "(kubectl delete node)").expect("a node is deleted");
    let (tainted, _) = first(&text, "tainted karpenter.sh/disrupted").expect("the node is tainted");
    assert!(tainted >= deleted);
    // Replacement capacity is asked for before the budget lets the web pods go.
    let replacement = text
        .lines()
        .filter(|l| l.contains("create nodeclaim/default-"))
        .filter_map(at)
        .find(|t| *t > deleted)
        .expect("a replacement claim");
    let (refused, _) = first(&text, "eviction refused for 5 pods").expect("the budget refuses");
    assert!(replacement > deleted && replacement < refused + 60.0);
    // After the refusal, web pods leave one per eviction, and the DaemonSet pod goes last.
    let evictions: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ip-") && l.contains(" evicted "))
        .filter(|l| at(l).is_some_and(|t| t > refused && t < 600.0))
        .collect();
    assert!(evictions.len() >= 5, "{evictions:?}");
    assert!(evictions.iter().all(|l| l.contains("evicted 1 pods")));
    assert!(
        evictions
            .last()
            .is_some_and(|l| l.contains("pod/kube-system/logs-"))
    );
    let (drained, _) = first(&text, "drained after").expect("the first node drains");
    let (ready, _) = text
        .lines()
        .filter(|l| l.contains(" ready m") && at(l).is_some_and(|t| t > deleted))
        .find_map(|l| Some((at(l)?, l)))
        .expect("a replacement node comes up");
    assert!(drained > ready, "drained before the replacement was Ready");
    // do-not-disrupt holds the batch pod until 30 s before the 3 minute terminationGracePeriod ends.
    let (second, _) = first(&text, "delete node ip-10-0-0-7").expect("the batch node is deleted");
    let (forced, _) = first(
        &text,
        "terminationGracePeriod: deleted 1 pods (pod/default/report-",
    )
    .expect("the held pod is deleted at the deadline");
    assert!(
        forced >= second + 149.0 && forced <= second + 152.0,
        "{forced}"
    );
    assert!(!text.contains("VIOLATION"));
    assert!(text.contains("evictions        11 "));
    insta::assert_snapshot!("pdb-drain.seed-42", text);
}

#[test]
fn orphans_seed_42() {
    let text = run_scenario("orphans.yaml", 42);
    // First crash: EC2 lists the instance too late, the claim launches again, GC ends the leak.
    let (crash, _) = first(&text, "controller crashed; restarting in 10s").expect("a crash");
    let leaked = text
        .lines()
        .rfind(|l| l.contains(" cloud      launch ") && at(l).is_some_and(|t| t <= crash))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_string))
        .expect("an instance launched just before the crash");
    let (orphaned, line) = first(&text, "terminate orphan").expect("the leak is terminated");
    assert!(line.contains(&leaked), "{line}");
    let (launched_at, _) = first(&text, &format!("launch {leaked}")).expect("leak launched");
    assert!(
        orphaned - launched_at <= 60.0 + 30.0 + 2.0,
        "took {}s",
        orphaned - launched_at
    );
    assert!(text.contains(&format!(
        "instance {leaked} is gone and no NodeClaim owns the node"
    )));
    // Second crash: a minute down, the instance is listed by then and adopted, not launched again.
    assert!(text.contains("adopts"), "no adoption");
    assert!(text.contains("launches         4 "));
    // Foreign instances untouched (an invariant), nothing pending.
    assert!(!text.contains("VIOLATION"));
    assert!(text.contains("verdict          PASS"));
    insta::assert_snapshot!("orphans.seed-42", text);
}

#[test]
fn spot_storm_seed_42() {
    let text = run_scenario("spot-storm.yaml", 42);
    let warnings: Vec<(f64, String, f64)> = text
        .lines()
        .filter(|l| l.contains("spot-interruption-warning i-"))
        .filter_map(|l| {
            let id = l.split_whitespace().nth(3)?.to_string();
            // `terminates at 2026-01-01T00:MM:SSZ`: the reclaim time since the epoch's midnight.
            let t = l.rsplit('T').next()?.trim_end_matches('Z');
            let mut p = t.split(':');
            let reclaim = p.next()?.parse::<f64>().ok()? * 3600.0
                + p.next()?.parse::<f64>().ok()? * 60.0
                + p.next()?.parse::<f64>().ok()?;
            Some((at(l)?, id, reclaim))
        })
        .collect();
    assert!(!warnings.is_empty(), "no interruption happened");
    for (warned, id, reclaim) in &warnings {
        let node = first(&text, &format!("running {id} "))
            .and_then(|(_, l)| l.split_whitespace().nth(4).map(str::to_string))
            .expect("the interrupted instance ran");
        let (drained, _) = first(&text, &format!("node/{node} drained after"))
            .unwrap_or_else(|| panic!("node {node} of {id} never drained"));
        assert!(
            drained > *warned && drained < *reclaim,
            "{node} drained at {drained}, reclaimed at {reclaim}"
        );
        // Replacements launched in the next three minutes avoid the interrupted spot pool.
        let (_, launch) = first(&text, &format!("launch {id} ")).expect("launch line");
        let pool: Vec<&str> = launch.split_whitespace().skip(4).take(3).collect();
        let reused = text
            .lines()
            .filter(|l| l.contains(" cloud      launch "))
            .filter(|l| at(l).is_some_and(|t| t > *warned && t < warned + 180.0))
            .any(|l| l.split_whitespace().skip(4).take(3).collect::<Vec<_>>() == pool);
        assert!(!reused, "a replacement used the reclaimed pool {pool:?}");
    }
    assert!(
        text.contains("rebalance-recommendation for i-") && text.contains("recorded, no action")
    );
    assert!(text.contains("deleted: not JSON") && text.contains("malformed so far: 1"));
    assert!(text.contains("verdict          PASS"));
    insta::assert_snapshot!("spot-storm.seed-42", text);
}

/// Times of the trace lines containing `needle`.
fn times(text: &str, needle: &str) -> Vec<f64> {
    text.lines()
        .filter(|l| l.contains(needle))
        .filter_map(at)
        .collect()
}

#[test]
fn diurnal_consolidation_seed_42() {
    let text = run_scenario("diurnal-consolidation.yaml", 42);
    let executed = times(&text, "disruption executed:");
    // After every fall of the load, capacity is given back within 15 minutes.
    for fall in [13.0, 17.0, 19.0, 21.0] {
        let at = fall * 3600.0;
        assert!(
            executed.iter().any(|t| *t > at && *t < at + 900.0),
            "nothing consolidated after the fall at {fall}h"
        );
    }
    let nodes = |t: &str| {
        first(&text, &format!("+{t}.000 observe"))
            .and_then(|(_, l)| {
                l.split("nodes=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse::<u32>()
                    .ok()
            })
            .expect("an observation")
    };
    assert!(
        nodes("23:55:00") < nodes("12:00:00"),
        "the fleet did not shrink at night"
    );
    assert!(text.contains("verdict          PASS"));
    assert!(!text.contains("VIOLATION"));
    insta::assert_snapshot!("diurnal-consolidation.seed-42", text);
}

#[test]
fn drift_ami_rollout_seed_42() {
    let text = run_scenario("drift-ami-rollout.yaml", 42);
    let drifted = text
        .lines()
        .filter(|l| l.contains("drifted: image ami-"))
        .count();
    assert_eq!(drifted, 6, "every node is replaced once");
    // Never more than the budget (one node) going at once: each node drains before the next is tainted
    // for drift, and each replacement is launched before its node drains.
    let mut going: Vec<String> = Vec::new();
    let mut most = 0;
    for l in text.lines() {
        if let Some(rest) = l.split("node/").nth(1) {
            let node = rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
            if l.contains("launching 1 replacement(s) for Drifted")
                || l.contains(" tainted karpenter.sh/disrupted")
            {
                if !going.contains(&node) {
                    going.push(node);
                }
            } else if l.contains(" drained after ") {
                going.retain(|n| *n != node);
            }
        }
        if l.contains("decided: Drifted") {
            let node = l
                .split("node/")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or_default();
            going.push(node.to_string());
            going.dedup();
        }
        most = most.max(going.len());
    }
    assert!(
        most <= 1,
        "{most} nodes disrupted at once with a budget of 1"
    );
    assert!(text.contains("verdict          PASS"));
    insta::assert_snapshot!("drift-ami-rollout.seed-42", text);
}

#[test]
fn budgets_schedule_seed_42() {
    let text = run_scenario("budgets-schedule.yaml", 42);
    let decided = times(&text, "disruption decided:");
    assert!(
        !decided.is_empty(),
        "nothing was consolidated in the window"
    );
    for t in &decided {
        assert!(
            (2.0 * 3600.0..6.0 * 3600.0).contains(t),
            "a voluntary disruption at +{t}s, outside the 02:00-06:00 window"
        );
    }
    assert!(text.contains("verdict          PASS"));
    no_same_type_replacements(&text);
    // Outside the window, nodes are told why they stay.
    assert!(text.contains(
        "not consolidated: node/ip-10-0-0-11.ec2.internal: nodepool/default's disruption budgets allow no more Underutilized disruptions now"
    ));
    insta::assert_snapshot!("budgets-schedule.seed-42", text);
}

/// Karpenter's `filterOutSameInstanceType`: several nodes are never replaced by one node of a type one of
/// them already is (deleting the others would move fewer pods for the same saving).
fn no_same_type_replacements(text: &str) {
    for l in text
        .lines()
        .filter(|l| l.contains("disruption decided: Underutilized replace with 1 ("))
    {
        let Some(rest) = l.split("replace with 1 (").nth(1) else {
            continue;
        };
        let replacement = rest.split(')').next().unwrap_or_default();
        let nodes: Vec<&str> = rest.split(" node/").skip(1).collect();
        if nodes.len() < 2 {
            continue;
        }
        for n in nodes {
            let node_type = n.split('(').nth(1).and_then(|t| t.split(' ').next());
            assert_ne!(node_type, Some(replacement), "{l}");
        }
    }
}

#[test]
fn unconsolidatable_and_blocked_nodes_are_told_why_once() {
    let out = simulate_scenario("pdb-drain.yaml", 42, dovetail_sim::Autoscaler::Dovetail);
    let text = &out.trace;
    assert!(
        text.contains("blocked: node/ip-10-0-0-7.ec2.internal: pod default/report-")
            && text.contains("has the karpenter.sh/do-not-disrupt annotation"),
        "no do-not-disrupt refusal"
    );
    assert!(
        text.contains("PodDisruptionBudget default/web allows no eviction of its pods here now")
    );
    // Once per node and reason.
    let mut seen = std::collections::BTreeSet::new();
    for l in text
        .lines()
        .filter(|l| l.contains("not consolidated: ") || l.contains(" blocked: node/"))
    {
        assert!(seen.insert(l[14..].to_string()), "told twice: {l}");
    }
    // And as Events on the Node and the NodeClaim, as Karpenter does.
    for key in [
        "Node/DisruptionBlocked",
        "NodeClaim/DisruptionBlocked",
        "Node/Unconsolidatable",
        "NodeClaim/Unconsolidatable",
    ] {
        assert!(
            out.events.get(key).copied().unwrap_or(0) > 0,
            "no {key} Event: {:?}",
            out.events
        );
    }
}

/// The number after `label` in the summary, e.g. `launches` -> 4.
fn figure(text: &str, label: &str) -> u64 {
    text.lines()
        .find(|l| l.trim_start().starts_with(label))
        .and_then(|l| {
            l.trim_start()[label.len()..]
                .split_whitespace()
                .next()?
                .trim_end_matches(',')
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no `{label}` in the summary"))
}

#[test]
fn burst_scale_up_seed_42() {
    let text = run_scenario("burst-scale-up.yaml", 42);
    // The burst's claims are launched together, within seconds, not one per batch over minutes.
    let launches: Vec<f64> = times(&text, " cloud      launch ")
        .into_iter()
        .filter(|t| (300.0..600.0).contains(t))
        .collect();
    assert!(launches.len() >= 2, "{launches:?}");
    assert!(
        launches.last().unwrap() - launches[0] < 15.0,
        "{launches:?}"
    );
    assert!(text.contains("verdict          PASS"));
    assert!(
        figure(&text, "nodes            end") < 2,
        "capacity not given back after the burst"
    );
    // The burst left 10 pods on a 96-vCPU spot node; spot-to-spot consolidation swaps it for a small one.
    let end_cost: f64 = text
        .lines()
        .find_map(|l| l.trim_start().strip_prefix("cost per hour    end "))
        .and_then(|r| r.split(',').next()?.parse().ok())
        .expect("cost per hour in the summary");
    assert!(end_cost < 0.5, "still paying {end_cost}/h for 10 pods");
    assert!(text.contains("Underutilized replace with 1"));
    insta::assert_snapshot!("burst-scale-up.seed-42", text);
}

#[test]
fn limits_hit_seed_42() {
    let text = run_scenario("limits-hit.yaml", 42);
    assert!(text.contains("every fitting instance type would exceed the NodePool's limits"));
    // Every pod left pending is told why.
    let line = text
        .lines()
        .find(|l| l.contains("pending at end ("))
        .expect("summary line");
    let pending: u64 = line
        .split(", ")
        .nth(1)
        .and_then(|s| s.split(' ').next()?.parse().ok())
        .unwrap();
    assert!(
        pending > 0 && line.contains(&format!("({pending} explained)")),
        "{line}"
    );
    insta::assert_snapshot!("limits-hit.seed-42", text);
}

#[test]
fn controller_crash_loop_seed_42() {
    let text = run_scenario("controller-crash-loop.yaml", 42);
    assert_eq!(text.matches("controller crashed").count(), 6);
    assert!(
        text.contains("adopts"),
        "the launch cut short by a crash was not adopted"
    );
    // One launch per claim: nothing doubled by the restarts.
    let claims = text.matches("provision  create nodeclaim/").count() as u64;
    assert_eq!(figure(&text, "launches"), claims);
    assert!(!text.contains("VIOLATION") && text.contains("verdict          PASS"));
    insta::assert_snapshot!("controller-crash-loop.seed-42", text);
}

#[test]
fn throttled_api_seed_42() {
    let text = run_scenario("throttled-api.yaml", 42);
    assert!(
        !text.contains("controller   exited"),
        "the controller gave up"
    );
    let claims = text.matches("provision  create nodeclaim/").count() as u64;
    assert_eq!(figure(&text, "launches"), claims, "a claim launched twice");
    assert!(text.contains("verdict          PASS"));
    insta::assert_snapshot!("throttled-api.seed-42", text);
}

#[test]
fn ca_baseline_burst_scale_up() {
    let text = run_scenario_with(
        "burst-scale-up.yaml",
        42,
        dovetail_sim::Autoscaler::CaBaseline,
    );
    // Only the fixed node groups launch, on-demand, in all three zones, and no NodeClaim is made.
    let launches: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" cloud      launch "))
        .collect();
    assert!(launches.len() > 10, "{}", launches.len());
    for l in &launches {
        assert!(
            (l.contains(" m5.large ") || l.contains(" m5.2xlarge ")) && l.contains(" on-demand "),
            "{l}"
        );
    }
    for z in ["us-east-1a", "us-east-1b", "us-east-1c"] {
        assert!(launches.iter().any(|l| l.contains(z)), "no node in {z}");
    }
    assert!(!text.contains("nodeclaim/"));
    // One scale-up for the burst (least waste picks the large type for 500 pods), then empty nodes go
    // in bulk, no earlier than 10 minutes after the burst ended at 30m.
    assert!(text.contains("x m5.2xlarge (least waste"));
    let down = first(&text, " ca         scale-down empty").expect("no scale-down");
    assert!(down.0 >= 40.0 * 60.0, "{down:?}");
    assert!(text.contains("autoscaler ca-baseline"));
    assert!(text.contains("verdict          PASS"));
    assert!(figure(&text, "nodes            end") <= 5);
}

#[test]
fn leader_failover_seed_42() {
    let text = run_scenario("leader-failover.yaml", 42);
    // One replica leads from the start; the other waits.
    let (t0, _) = first(&text, "leader     dovetail-0 acquired").expect("dovetail-0 leads");
    assert!(t0 < 1.0);
    assert!(text.contains(
        "dovetail-1 waits: lease/kube-system/dovetail-leader-election is held by dovetail-0"
    ));
    // The leader dies at 6m; the follower takes the Lease once it has gone 15 s without renewal, not before.
    let (crash, _) = first(&text, "fault      controller crashed").expect("the leader crashed");
    let (took, _) = first(&text, "leader     dovetail-1 acquired").expect("dovetail-1 took over");
    assert!(
        (crash + 12.0..crash + 20.0).contains(&took),
        "crash {crash} takeover {took}"
    );
    // Nobody acts in between: no decision lines from any controller while the Lease is orphaned.
    for l in text.lines() {
        let Some(t) = at(l) else { continue };
        if t > crash && t < took {
            assert!(
                !(l.contains(" provision ")
                    || l.contains(" lifecycle ")
                    || l.contains(" disruption ")),
                "acted without the lease: {l}"
            );
        }
    }
    // The new leader provisions for the pods created after the crash, and the old one stays a follower.
    let (grow, _) = first(&text, "scale deployment/default/web replicas=80").expect("second scale");
    let (claim, _) = text
        .lines()
        .filter_map(|l| Some((at(l)?, l)))
        .find(|(t, l)| *t > grow && l.contains("provision  create nodeclaim/"))
        .expect("the new leader provisions");
    assert!(claim - grow < 5.0, "{claim} {grow}");
    assert!(text.contains(
        "dovetail-0 waits: lease/kube-system/dovetail-leader-election is held by dovetail-1"
    ));
    assert!(text.contains("verdict          PASS"));
    insta::assert_snapshot!("leader-failover.seed-42", text);
}

#[test]
fn stuck_pod_seed_42() {
    let text = run_scenario("stuck-pod.yaml", 42);
    // A pod no pool can host does not freeze disruption: the nodes the web pods gave back at 20m go.
    let executed = times(&text, "disruption executed:");
    assert!(
        executed.iter().any(|t| *t > 1200.0 && *t < 1200.0 + 600.0),
        "nothing consolidated within 10 minutes of the scale-down"
    );
    assert!(
        text.contains("nodes            end 1,"),
        "the fleet did not shrink"
    );
    // And it is told why it waits, naming the pool that failed validation as well as the one that could
    // not take it.
    assert!(text.contains("1 pending at end (1 explained)"));
    let (_, why) = first(&text, "cannot place 1 pods (pod/default/stranded)").expect("explained");
    assert!(
        why.contains(
            "nodepool \"default\": requirement topology.kubernetes.io/zone In [eu-west-1a]"
        ) && why.contains(
            "nodepool \"batch\" cannot launch: spec.template.spec.requirements: no instance type"
        ),
        "{why}"
    );
    insta::assert_snapshot!("stuck-pod.seed-42", text);
}

#[test]
fn daemonset_grows_seed_42() {
    let out = simulate_scenario(
        "daemonset-grows.yaml",
        42,
        dovetail_sim::Autoscaler::Dovetail,
    );
    let text = format!("{}{}", out.trace, out.summary);
    // Every node the DaemonSet's pod did not fit on is replaced, one at a time (budget `nodes: "1"`), and
    // at the end every pod runs, the DaemonSet's included.
    let decided = times(&text, "disruption decided: DaemonSetUnfit");
    let executed = times(&text, "disruption executed: DaemonSetUnfit");
    assert_eq!(decided.len(), 4, "four full nodes to replace");
    for (next, done) in decided.iter().skip(1).zip(&executed) {
        assert!(next > done, "two replacements at once");
    }
    assert!(text.contains("0 pending at end"), "pods left pending");
    assert!(
        out.events
            .get("DaemonSet/DaemonSetUnfit")
            .copied()
            .unwrap_or(0)
            >= 4,
        "{:?}",
        out.events
    );
    insta::assert_snapshot!("daemonset-grows.seed-42", text);
}

/// Scores in `Balanced:` decisions and refusals, as (score, approved).
fn balanced_scores(text: &str) -> Vec<(f64, bool)> {
    text.lines()
        .filter(|l| {
            l.contains("disruption decided:")
                || l.contains("disruption skipped (not worth the churn)")
        })
        .filter_map(|l| {
            let tail = l.rsplit("(score ").next()?;
            let (score, rest) = tail.split_once(' ')?;
            Some((score.parse().ok()?, rest.starts_with('≥')))
        })
        .collect()
}

#[test]
fn balanced_consolidation_seed_42() {
    let out = simulate_scenario(
        "balanced-consolidation.yaml",
        42,
        dovetail_sim::Autoscaler::Dovetail,
    );
    let text = format!("{}{}", out.trace, out.summary);
    let scores = balanced_scores(&out.trace);
    // Moves are approved and refused by their score against 1/k = 0.5, and say so.
    assert!(scores.iter().any(|(_, ok)| *ok), "{text}");
    assert!(scores.iter().any(|(_, ok)| !*ok), "{text}");
    for (score, approved) in &scores {
        assert_eq!(*approved, *score >= 0.5, "{score}");
    }
    let metric = |decision: &str| {
        out.controller_metrics.get(
            dovetail::metrics::CONSOLIDATION_MOVES,
            &[
                ("decision", decision),
                ("nodepool", "default"),
                ("policy", "Balanced"),
            ],
        )
    };
    assert!(metric("approved").is_some_and(|n| n >= 1.0));
    assert!(metric("rejected").is_some_and(|n| n >= 1.0));
    assert!(out.passed, "{text}");

    // The same day under WhenEmptyOrUnderutilized (Dovetail's 0.25 threshold) deletes the cache's node
    // that Balanced keeps: the policy is what refused it.
    let path = dovetail_tests::root().join("scenarios/balanced-consolidation.yaml");
    let yaml = std::fs::read_to_string(path).unwrap().replace(
        "consolidationPolicy: Balanced",
        "consolidationPolicy: WhenEmptyOrUnderutilized",
    );
    let scenario = dovetail_sim::Scenario::parse("balanced-consolidation.yaml", &yaml).unwrap();
    let other = dovetail_sim::simulate(&scenario, &dovetail_sim::RunOptions::default()).unwrap();
    let deletes = |t: &str| {
        t.lines()
            .filter(|l| l.contains("disruption decided: Underutilized delete"))
            .count()
    };
    assert!(
        deletes(&other.trace) > deletes(&out.trace),
        "Balanced {} vs WhenEmptyOrUnderutilized {}",
        deletes(&out.trace),
        deletes(&other.trace)
    );
    insta::assert_snapshot!("balanced-consolidation.seed-42", text);
}

#[test]
fn cluster_dump_seed_42() {
    let out = simulate_scenario("cluster-dump.yaml", 42, dovetail_sim::Autoscaler::Dovetail);
    let text = format!("{}{}", out.trace, out.summary);
    assert!(out.passed, "{}", out.summary);
    // The Deployment's ReplicaSet is left to the Deployment, and said so.
    assert!(text.contains("replicaset shop/frontend-6d9c7b5f4 is made by its Deployment frontend"));
    let zone = |node: &str| {
        out.objects["Node"]
            .iter()
            .find(|n| n["metadata"]["name"] == node)
            .and_then(|n| n["metadata"]["labels"]["topology.kubernetes.io/zone"].as_str())
            .map(str::to_string)
    };
    let pod_zone = |ns: &str, name: &str| {
        out.objects["Pod"]
            .iter()
            .find(|p| p["metadata"]["namespace"] == ns && p["metadata"]["name"] == name)
            .and_then(|p| zone(p["spec"]["nodeName"].as_str()?))
    };
    // postgres' volumes were in us-east-1a and 1b before the run; its pods are there at the end, after
    // postgres-0's node was deleted at 20 minutes.
    assert_eq!(
        pod_zone("shop", "postgres-0").as_deref(),
        Some("us-east-1a")
    );
    assert_eq!(
        pod_zone("shop", "postgres-1").as_deref(),
        Some("us-east-1b")
    );
    // The managed node group holds only what tolerates its CriticalAddonsOnly taint.
    for p in &out.objects["Pod"] {
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
        if out.objects["Node"].iter().any(|n| {
            n["metadata"]["name"] == node
                && n["metadata"]["labels"]["eks.amazonaws.com/nodegroup"] == "system"
        }) {
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            assert!(
                name.starts_with("coredns")
                    || name.starts_with("aws-node")
                    || name.starts_with("ebs-csi-node"),
                "{name} on the node group"
            );
        }
    }
    insta::assert_snapshot!("cluster-dump.seed-42", text);
}

#[test]
fn legacy_migrated_seed_42() {
    let out = simulate_scenario(
        "legacy-migrated.yaml",
        42,
        dovetail_sim::Autoscaler::Dovetail,
    );
    let text = format!("{}{}", out.trace, out.summary);
    assert!(out.passed, "{}", out.summary);
    // ttlSecondsAfterEmpty 30 became WhenEmpty / 30s: the batch nodes go once the Job is done.
    assert!(text.contains("job/default/nightly-report complete (8 succeeded)"));
    let batch_gone = times(&text, "disruption executed: Empty delete");
    assert_eq!(batch_gone.len(), 2, "both batch nodes removed when empty");
    // do-not-evict became do-not-disrupt, which v1 honours.
    assert!(text.contains("has the karpenter.sh/do-not-disrupt annotation"));
    // The inline provider's Bottlerocket class and the template's AL2 class each got their image.
    assert_eq!(
        text.matches("lifecycle  created launch template").count(),
        2
    );
    insta::assert_snapshot!("legacy-migrated.seed-42", text);
}

/// The node a `node-fault` line names, and when the fault was injected.
fn fault_on(text: &str, fault: &str) -> Vec<(f64, String)> {
    text.lines()
        .filter(|l| l.contains(&format!("node-fault {fault} on node ")))
        .filter_map(|l| {
            let node = l.split("on node ").nth(1)?.split(' ').next()?.to_string();
            Some((at(l)?, node))
        })
        .collect()
}

#[test]
fn node_repair_seed_42() {
    let out = simulate_scenario("node-repair.yaml", 42, dovetail_sim::Autoscaler::Dovetail);
    let text = format!("{}{}", out.trace, out.summary);
    let repaired = |node: &str| {
        let prefix = format!("repair     node/{node} ");
        text.lines()
            .find(|l| l.contains(&prefix) && l.contains("replacing"))
            .and_then(|l| Some((at(l)?, l.to_string())))
    };
    // The hung kubelet: Ready=Unknown after the 50 s grace period, replaced 30 minutes after that.
    let [(hung_at, hung)] = &fault_on(&text, "kubelet_stopped")[..] else {
        panic!("one kubelet_stopped fault")
    };
    let (unknown, _) = first(&text, &format!("node {hung} Ready=Unknown")).expect("Unknown");
    assert!((unknown - hung_at - 50.0).abs() < 1.0, "{unknown}");
    let (at_, line) = repaired(hung).expect("the hung node is repaired");
    assert!(at_ >= unknown + 1800.0 && at_ < unknown + 1802.0, "{line}");
    assert!(
        line.contains("Ready=Unknown for 30m (tolerated 30m)"),
        "{line}"
    );
    // Its pod was evicted by the taint manager 5 minutes after the taint and placed on a new node at
    // once (the unreachable taint keeps the planner off the node).
    let (lost, _) = first(
        &text,
        &format!("node {hung} unreachable for 5m: 1 pods lost"),
    )
    .expect("evicted");
    assert!((lost - unknown - 300.0).abs() < 1.0);
    let provision = text
        .lines()
        .find(|l| l.contains("provision  batch") && at(l).is_some_and(|t| t > lost))
        .expect("a batch after the eviction");
    assert!(provision.contains("new-claims=1"), "{provision}");

    // The accelerator: replaced after 10 minutes, its pod deleted though the PDB allows no eviction.
    let [(_, gpu)] = &fault_on(&text, "accelerator_failed")[..] else {
        panic!("one accelerator fault")
    };
    let (failed, _) =
        first(&text, &format!("node {gpu} AcceleratedHardwareReady=False")).expect("shown");
    let (at_, _) = repaired(gpu).expect("the GPU node is repaired");
    assert!(at_ >= failed + 600.0 && at_ < failed + 602.0);
    let (deleted, line) = first(
        &text,
        &format!("node/{gpu} termination timestamp: deleted 1 pods"),
    )
    .expect("forced");
    assert!(deleted - at_ < 5.0, "{line}");
    assert!(!text.contains(&format!("node/{gpu} eviction refused")));

    // Two of three batch nodes NotReady: refused until one recovers, then the other is replaced.
    let broken = fault_on(&text, "kubelet_not_ready");
    assert_eq!(broken.len(), 2);
    let (healed, _) =
        first(&text, &format!("node {} recovered", broken[0].1)).expect("one recovers");
    let (blocked, line) = first(
        &text,
        "unhealthy: more than 20% of the nodes of nodepool/batch",
    )
    .expect("refused");
    assert!(
        blocked >= broken[0].0 + 1800.0 && blocked < healed,
        "{line}"
    );
    assert!(text.contains("NodeRepairBlocked: more than 20% of the nodes of nodepool/batch"));
    assert!(repaired(&broken[0].1).is_none(), "the recovered node stays");
    let (at_, _) =
        repaired(&broken[1].1).expect("the other is repaired once the pool is healthy enough");
    assert!(at_ >= healed && at_ < healed + 2.0);

    let m = &out.controller_metrics;
    let unhealthy = |condition: &str| {
        m.series(dovetail::metrics::NODECLAIMS_UNHEALTHY_DISRUPTED)
            .iter()
            .filter(|(l, _)| l.iter().any(|(k, v)| *k == "condition" && v == condition))
            .map(|(_, v)| v)
            .sum::<f64>()
    };
    assert_eq!(unhealthy("ready"), 2.0);
    assert_eq!(unhealthy("accelerated_hardware_ready"), 1.0);
    assert!(out.passed && !text.contains("VIOLATION"));
    // Every pool here labels its nodes (`pool: web`): the bound still finds their types.
    let m = &out.metrics;
    assert!(
        m.lower_bound_total > 0.0 && m.lower_bound_total < m.cost_total,
        "{m:?}"
    );
    insta::assert_snapshot!("node-repair.seed-42", text);
}

#[test]
fn node_repair_is_off_unless_its_gate_is_on() {
    let path = dovetail_tests::root().join("scenarios/node-repair.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = yaml.replace(
        "  FEATURE_GATES: NodeRepair=true\n",
        "  BATCH_IDLE_DURATION: 1s\n",
    );
    assert_ne!(yaml, without);
    let scenario = dovetail_sim::Scenario::parse("node-repair.yaml", &without).unwrap();
    let out = dovetail_sim::simulate(&scenario, &Default::default()).unwrap();
    assert!(!out.trace.contains("repair     "), "nothing is repaired");
    assert!(
        out.summary
            .contains("disruptions.unhealthy 3..3 (got 0): FAILED"),
        "{}",
        out.summary
    );
}

#[test]
fn static_pool_seed_42() {
    let text = run_scenario("static-pool.yaml", 42);
    let created: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("create nodeclaim/ingress-"))
        .filter_map(at)
        .collect();
    // Three before any pod asks, one replacing the deleted node, one for the fourth replica: no more,
    // though six were asked for (limits.nodes: 4); then one drift replacement per node left.
    assert_eq!(created.len(), 7, "{created:?}");
    assert!(created[5] > 1800.0, "{created:?}");
    assert!(created[..3].iter().all(|t| *t < 2.0));
    assert!(
        text.lines()
            .filter(|l| l.contains("create nodeclaim/ingress-"))
            .all(|l| l.contains("pool=ingress pods=0")),
        "static claims are made for no pod"
    );
    let (deleted, _) = first(&text, "(kubectl delete node)").expect("a node is deleted");
    assert!(created[3] > deleted && created[3] < deleted + 5.0);
    // Raised to 4 replicas at 15 minutes.
    assert!(created[4] >= 900.0 && created[4] < 905.0);
    // Lowered to 2, the two empty nodes go; to 1, the one with fewer pods, whose pod moves.
    let lowered: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('+') && l.contains("for 2 replicas: deleting"))
        .collect();
    assert_eq!(lowered.len(), 2);
    assert!(lowered.iter().all(|l| l.ends_with("(empty)")));
    // Drift: a replacement of the pool's own is launched before each old node drains, one at a time.
    let launched: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("launching 1 replacement(s) for Drifted: nodeclaim/ingress-"))
        .filter_map(at)
        .collect();
    let executed: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("executed: Drifted replace with 1 (m5.large)"))
        .filter_map(at)
        .collect();
    assert_eq!((launched.len(), executed.len()), (2, 2));
    assert!(launched[0] < executed[0] && executed[0] < launched[1] && launched[1] < executed[1]);
    let (last, line) = first(&text, "for 1 replicas: deleting").expect("lowered to 1");
    assert!(line.ends_with("(1 pods to move)"), "{line}");
    assert!(
        text.lines()
            .filter(|l| l.contains("bind pod/default/ingress-"))
            .filter_map(at)
            .any(|t| t > last && t < last + 10.0),
        "the ingress pod moves at once"
    );
    // Never consolidated, though empty for most of the run: drift is the only disruption they see.
    assert!(!text.lines().any(|l| {
        l.contains(" disruption ") && l.contains("ingress-") && !l.contains("Drifted")
    }));
    assert!(!text.contains("VIOLATION"));
    insta::assert_snapshot!("static-pool.seed-42", text);
}

#[test]
fn a_static_pool_needs_its_gate() {
    let path = dovetail_tests::root().join("scenarios/static-pool.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = yaml.replace(
        "  FEATURE_GATES: StaticCapacity=true\n",
        "  BATCH_IDLE_DURATION: 1s\n",
    );
    assert_ne!(yaml, without);
    let scenario = dovetail_sim::Scenario::parse("static-pool.yaml", &without).unwrap();
    let out = dovetail_sim::simulate(&scenario, &Default::default()).unwrap();
    assert!(!out.trace.contains("create nodeclaim/ingress-"));
    assert!(
        out.trace
            .contains("needs the StaticCapacity feature gate (FEATURE_GATES=StaticCapacity=true)"),
        "the pool says why it launches nothing"
    );
}

#[test]
fn reserved_first_seed_42() {
    let out = simulate_scenario(
        "reserved-first.yaml",
        42,
        dovetail_sim::Autoscaler::Dovetail,
    );
    assert!(out.passed, "{}", out.summary);
    let text = format!("{}{}", out.trace, out.summary);
    let web: Vec<(f64, bool)> = text
        .lines()
        .filter(|l| l.contains(" lifecycle  launched nodeclaim/web-"))
        .filter_map(|l| Some((at(l)?, l.contains(" reserved "))))
        .collect();
    // The sale: four reserved launches (the reservation's count), then on-demand; each reserved node
    // launched before any on-demand one of the same wave.
    let wave1: Vec<bool> = web.iter().filter(|w| w.0 < 1200.0).map(|w| w.1).collect();
    assert_eq!(wave1.iter().filter(|r| **r).count(), 4, "{web:?}");
    assert!(wave1.len() > 4, "the rest goes on-demand: {web:?}");
    let last_reserved = web.iter().filter(|w| w.0 < 1200.0 && w.1).map(|w| w.0);
    let first_od = web.iter().filter(|w| w.0 < 1200.0 && !w.1).map(|w| w.0);
    assert!(
        last_reserved.fold(0.0, f64::max) <= first_od.fold(f64::INFINITY, f64::min),
        "{web:?}"
    );
    // Reserved claims were filled only as far as an m6i.2xlarge holds: one type, pinned.
    assert!(
        text.lines()
            .filter(|l| l.contains("create nodeclaim/web-") && l.contains("pods=5"))
            .all(|l| l.ends_with("types=m6i.2xlarge")),
        "reserved claims carry the reserved type only"
    );
    // The open reservation no class selects took the batch pool's launches, billed nothing more.
    let absorbed = text
        .lines()
        .filter(|l| {
            l.starts_with('+')
                && l.contains("m5.xlarge us-east-1b on-demand 0.0000/h in cr-0open00000000001")
        })
        .count();
    assert_eq!(absorbed, 2);
    // Scale-down: the on-demand web node goes before any reserved one; nothing reserved is replaced.
    let deletes: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("disruption executed:") && l.contains("m6i."))
        .collect();
    assert!(
        deletes.first().is_some_and(|l| l.contains(" on-demand ")),
        "{deletes:?}"
    );
    assert!(
        !text.contains("decided: Underutilized replace"),
        "reserved nodes are not replaced"
    );
    // The second wave uses the room the scale-down gave back, before on-demand.
    let wave2: Vec<bool> = web.iter().filter(|w| w.0 >= 2100.0).map(|w| w.1).collect();
    assert!(wave2.iter().filter(|r| **r).count() >= 1, "{web:?}");
    // The node class reports its reservation while it is active (at 40m), and none once cancelled.
    let sale_class = |out: &dovetail_sim::Outcome| {
        out.objects["EC2NodeClass"]
            .iter()
            .find(|c| c["metadata"]["name"] == "sale")
            .cloned()
            .expect("the sale class")
    };
    let path = dovetail_tests::root().join("scenarios/reserved-first.yaml");
    let scenario = dovetail_sim::Scenario::load(&path).unwrap();
    let at_40m = dovetail_sim::simulate(
        &scenario,
        &dovetail_sim::RunOptions {
            until: Some(std::time::Duration::from_secs(2400)),
            ..Default::default()
        },
    )
    .unwrap();
    let sale = sale_class(&at_40m);
    let listed = &sale["status"]["capacityReservations"][0];
    assert_eq!(listed["id"], "cr-0sale00000000001");
    assert_eq!(
        (
            &listed["reservationType"],
            &listed["state"],
            &listed["instanceMatchCriteria"]
        ),
        (&"default".into(), &"active".into(), &"targeted".into())
    );
    assert!(sale["status"]["conditions"].as_array().is_some_and(|c| {
        c.iter()
            .any(|c| c["type"] == "CapacityReservationsReady" && c["status"] == "True")
    }));
    let labelled = at_40m.objects["NodeClaim"].iter().filter(|c| {
        c["metadata"]["labels"]["karpenter.sh/capacity-type"] == "reserved"
            && c["metadata"]["labels"]["karpenter.k8s.aws/capacity-reservation-id"]
                == "cr-0sale00000000001"
            && c["metadata"]["labels"]["karpenter.k8s.aws/capacity-reservation-type"] == "default"
    });
    assert_eq!(labelled.count(), 4);
    assert!(sale_class(&out)["status"]["capacityReservations"].is_null());
    // Reserved claims carried the reservation's labels (the launch line says so) until the reservation
    // was cancelled at 45m: then each claim and node left it and is on-demand, its labels gone.
    assert!(text.contains(" reserved 0.0000/h"));
    let left = text
        .lines()
        .filter(|l| {
            l.starts_with('+') && l.contains("left capacity reservation cr-0sale00000000001")
        })
        .count();
    assert_eq!(left, 4, "the four reserved nodes");
    for kind in ["NodeClaim", "Node"] {
        for o in &out.objects[kind] {
            let labels = &o["metadata"]["labels"];
            assert_ne!(
                labels["karpenter.sh/capacity-type"], "reserved",
                "{kind} {o}"
            );
            assert!(
                labels["karpenter.k8s.aws/capacity-reservation-id"].is_null(),
                "{kind} {o}"
            );
        }
    }
    insta::assert_snapshot!("reserved-first.seed-42", text);
}

#[test]
fn reserved_capacity_is_off_with_its_gate() {
    let path = dovetail_tests::root().join("scenarios/reserved-first.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = yaml.replace(
        "seed: 42\n",
        "seed: 42\nsettings:\n  FEATURE_GATES: ReservedCapacity=false\n",
    );
    assert_ne!(yaml, without);
    let scenario = dovetail_sim::Scenario::parse("reserved-first.yaml", &without).unwrap();
    let out = dovetail_sim::simulate(&scenario, &Default::default()).unwrap();
    // No launch targets the reservation; the selector is reported as not acted on.
    assert!(!out.trace.contains("in cr-0sale00000000001"));
    assert!(
        !out.trace.contains("launched nodeclaim/web-") || !out.trace.contains(" reserved 0.0000/h")
    );
    assert!(
        out.trace
            .contains("not acted on by Dovetail: spec.capacityReservationSelectorTerms"),
        "the class says its selector is not acted on"
    );
    // Open reservations still absorb on-demand launches: that is EC2's default, not the gate's.
    assert!(out.trace.contains("in cr-0open00000000001"));
}

#[test]
fn capacity_block_ends_seed_42() {
    let text = run_scenario("capacity-block-ends.yaml", 42);
    let (warned, _) = first(&text, "capacity block cr-0b10c0000000001 ends at").expect("warned");
    // The block's nodes drain 40 minutes before its end (20m), within a minute of the status saying so.
    let drained: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("draining nodeclaim/training-"))
        .filter_map(at)
        .collect();
    assert_eq!(drained.len(), 2, "both block nodes");
    assert!(
        drained
            .iter()
            .all(|t| *t >= 1200.0 && *t < 1260.0 && *t >= warned - 1.0)
    );
    // Both trainers are off the block before EC2 reclaims it (30m), one at a time within their PDB.
    let evicted: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("evicted 1 pods (pod/default/trainer-"))
        .filter_map(at)
        .collect();
    assert_eq!(evicted.len(), 2);
    assert!(evicted.iter().all(|t| *t < 1800.0), "{evicted:?}");
    assert!(text.contains("would violate the pod's disruption budget default/trainer"));
    assert!(
        !text.contains("Server.CapacityBlockExpiration"),
        "nothing left for EC2 to reclaim"
    );
    // Their replacements are on-demand p3.8xlarge: the block is expiring.
    assert_eq!(
        text.lines()
            .filter(|l| l.contains("launched nodeclaim/training-") && l.contains(" on-demand "))
            .count(),
        2
    );
    // The interruptible reservation's reclaim drains its node within the two-minute warning.
    let (reclaimed, _) = first(&text, "reclaims 1: i-").expect("a reclaim");
    let (drained, _) =
        first(&text, "capacity-reservation-interruption for i-").expect("the warning is acted on");
    assert!(drained - reclaimed < 5.0);
    insta::assert_snapshot!("capacity-block-ends.seed-42", text);
}

#[test]
fn overlay_prices_seed_42() {
    let out = simulate_scenario(
        "overlay-prices.yaml",
        42,
        dovetail_sim::Autoscaler::Dovetail,
    );
    assert!(out.passed, "{}", out.summary);
    let text = format!("{}{}", out.trace, out.summary);
    let launched: Vec<(f64, String)> = text
        .lines()
        .filter(|l| l.contains(" lifecycle  launched nodeclaim/web-"))
        .filter_map(|l| Some((at(l)?, l.split_whitespace().nth(5)?.to_string())))
        .collect();
    // Before the overlay: the cheapest list price, m6g. After: m7g, both the consolidation replacement and
    // the burst's new node (the fleet's priorities follow the overlaid price, not EC2's list price).
    assert!(
        launched
            .first()
            .is_some_and(|(t, ty)| *t < 600.0 && ty.starts_with("m6g.")),
        "{launched:?}"
    );
    let after: Vec<&String> = launched
        .iter()
        .filter(|(t, _)| *t > 600.0)
        .map(|(_, ty)| ty)
        .collect();
    assert_eq!(after.len(), 2, "{launched:?}");
    assert!(
        after.iter().all(|ty| ty.starts_with("m7g.")),
        "{launched:?}"
    );
    assert!(text.contains("decided: Underutilized replace with 1 (m7g."));
    // The equal-weight rival is refused whole, and its status says so.
    let overlays = &out.objects["NodeOverlay"];
    let status = |name: &str| {
        overlays
            .iter()
            .find(|o| o["metadata"]["name"] == name)
            .and_then(|o| {
                o["status"]["conditions"]
                    .as_array()?
                    .iter()
                    .find(|c| c["type"] == "ValidationSucceeded")
                    .map(|c| (c["status"].clone(), c["reason"].clone()))
            })
    };
    assert_eq!(
        status("finance-estimate"),
        Some(("False".into(), "Conflict".into()))
    );
    assert_eq!(
        status("savings-plan"),
        Some(("True".into(), "ValidationSucceeded".into()))
    );
    insta::assert_snapshot!("overlay-prices.seed-42", text);
}

#[test]
fn node_overlays_are_ignored_without_their_gate() {
    let path = dovetail_tests::root().join("scenarios/overlay-prices.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = yaml.replace(
        "  FEATURE_GATES: NodeOverlay=true\n",
        "  BATCH_IDLE_DURATION: 1s\n",
    );
    assert_ne!(yaml, without);
    let scenario = dovetail_sim::Scenario::parse("overlay-prices.yaml", &without).unwrap();
    let out = dovetail_sim::simulate(&scenario, &Default::default()).unwrap();
    assert!(
        out.trace
            .lines()
            .filter(|l| l.contains(" lifecycle  launched "))
            .all(|l| !l.contains(" m7g.")),
        "list prices keep m6g"
    );
    assert!(!out.trace.contains("nodeoverlay/"));
}

/// Waits of the bursty checkout pods, from the scheduler's bind lines.
fn checkout_waits(trace: &str) -> Vec<f64> {
    trace
        .lines()
        .filter(|l| l.contains(" bind pod/default/checkout-"))
        .filter_map(|l| {
            l.rsplit_once("waited=")?
                .1
                .trim_end_matches('s')
                .parse()
                .ok()
        })
        .collect()
}

/// A CapacityBuffer's condition of one type: (status, reason).
fn buffer_condition(
    out: &dovetail_sim::Outcome,
    name: &str,
    type_: &str,
) -> Option<(String, String)> {
    out.objects["CapacityBuffer"]
        .iter()
        .find(|b| b["metadata"]["name"] == name)?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

#[test]
fn buffer_burst_seed_42() {
    let out = simulate_scenario("buffer-burst.yaml", 42, dovetail_sim::Autoscaler::Dovetail);
    assert!(out.passed, "{}", out.summary);
    let text = format!("{}{}", out.trace, out.summary);
    // Both bursts land on headroom: no checkout pod waits anything like a node boot (40 s at the least).
    let waits = checkout_waits(&text);
    assert_eq!(waits.len(), 24, "two bursts of 12");
    assert!(waits.iter().all(|w| *w < 10.0), "{waits:?}");
    // The headroom a burst used is launched again behind it, before the burst ends.
    let (burst, _) = first(&text, "scale deployment/default/checkout replicas=12").unwrap();
    let (refill, line) = first(&text, "(headroom ").unwrap();
    assert!(
        refill < burst,
        "the first headroom comes with web's node: {line}"
    );
    assert!(
        text.lines()
            .filter(|l| l.contains(" provision  create nodeclaim/") && l.contains("(headroom "))
            .filter_map(at)
            .any(|t| t > burst && t < burst + 10.0),
        "the used headroom is replaced at once"
    );
    // When the sale ends, the spare node goes; the node the headroom needs stays.
    assert!(text.contains("decided: Empty delete node/"));
    assert!(text.contains("its room is CapacityBuffer headroom that fits nowhere else"));
    // Chunks are never pods: nothing was created for them, no Event names one.
    assert!(out.objects["Pod"].iter().all(|p| {
        !p["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .contains("capacitybuffer")
    }));
    assert!(!text.contains("pod/default/capacitybuffer/"));
    // Statuses: resolved shapes and counts, and the headroom in place at the end.
    let buffers = &out.objects["CapacityBuffer"];
    let replicas = |name: &str| {
        buffers
            .iter()
            .find(|b| b["metadata"]["name"] == name)
            .map(|b| b["status"]["replicas"].clone())
    };
    assert_eq!(replicas("checkout-headroom"), Some(12.into()));
    assert_eq!(replicas("web-headroom"), Some(2.into()), "20% of web's 10");
    for name in ["checkout-headroom", "web-headroom"] {
        assert_eq!(
            buffer_condition(&out, name, "ReadyForProvisioning"),
            Some(("True".into(), "Resolved".into()))
        );
    }
    assert_eq!(
        buffer_condition(&out, "checkout-headroom", "Provisioning"),
        Some(("True".into(), "FitsExistingCapacity".into()))
    );
    insta::assert_snapshot!("buffer-burst.seed-42", text);
}

#[test]
fn without_the_gate_a_burst_waits_for_a_node_boot() {
    let path = dovetail_tests::root().join("scenarios/buffer-burst.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = yaml.replace(
        "FEATURE_GATES: CapacityBuffer=true",
        "FEATURE_GATES: CapacityBuffer=false",
    );
    assert_ne!(yaml, without);
    let scenario = dovetail_sim::Scenario::parse("buffer-burst.yaml", &without).unwrap();
    let out = dovetail_sim::simulate(&scenario, &Default::default()).unwrap();
    let waits = checkout_waits(&out.trace);
    assert_eq!(waits.len(), 24);
    // Bar the odd pod that fits beside web, the burst waits for a launch and a boot (40 s at the least):
    // its p99 is over one node boot, where the buffer's was a few seconds.
    let mut sorted = waits.clone();
    sorted.sort_by(f64::total_cmp);
    assert!(sorted[sorted.len() - 1] >= 40.0, "{waits:?}");
    assert!(sorted[sorted.len() / 2] >= 40.0, "{waits:?}");
    assert!(!out.trace.contains("capacitybuffer/"));
    assert!(
        out.objects["CapacityBuffer"]
            .iter()
            .all(|b| b["status"].is_null()),
        "buffers are left alone without the gate"
    );
}

#[test]
fn the_ca_baseline_keeps_the_same_buffers_so_the_comparison_is_fair() {
    // The buffers are the Cluster Autoscaler's own API: with the gate on, the baseline injects the same
    // chunks as fake pods, so the burst lands without waiting there too.
    let on = dovetail_tests::simulate_scenario(
        "buffer-burst.yaml",
        42,
        dovetail_sim::Autoscaler::CaBaseline,
    );
    let waits = checkout_waits(&on.trace);
    assert_eq!(waits.len(), 24);
    assert!(waits.iter().all(|w| *w < 20.0), "{waits:?}");
    assert!(
        on.trace.contains("scale-up 24 pods (14 headroom)"),
        "the first scale-up holds every chunk"
    );
    assert!(!on.trace.contains("nodeclaim/"));

    // Without the gate the baseline ignores them, and pods of the burst wait for a node group to grow.
    let path = dovetail_tests::root().join("scenarios/buffer-burst.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let without = yaml.replace(
        "FEATURE_GATES: CapacityBuffer=true",
        "FEATURE_GATES: CapacityBuffer=false",
    );
    let scenario = dovetail_sim::Scenario::parse("buffer-burst.yaml", &without).unwrap();
    let options = dovetail_sim::RunOptions {
        seed: Some(42),
        autoscaler: dovetail_sim::Autoscaler::CaBaseline,
        ..Default::default()
    };
    let off = dovetail_sim::simulate(&scenario, &options).unwrap();
    assert!(!off.trace.contains(" headroom)"), "no scale-up for chunks");
    // Some of the burst lands on room a node group left; the rest waits for a boot.
    let waits = checkout_waits(&off.trace);
    assert!(waits.iter().any(|w| *w >= 40.0), "{waits:?}");
    assert!(
        on.metrics.cost_total > off.metrics.cost_total,
        "the headroom is paid for"
    );
}

#[test]
fn a_pod_template_grown_under_a_buffer_is_seen_at_once() {
    // At 5m10s the checkout chunk doubles: 12 chunks of 2 cpu no longer fit the room kept for 1-cpu
    // chunks. The PodTemplate is watched (as Karpenter watches it), so the headroom is planned again
    // within the batch window, not at the next 30 s resolve (due near 5m31s in this run).
    let path = dovetail_tests::root().join("scenarios/buffer-burst.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let grown = yaml.replace(
        "timeline:\n",
        r#"timeline:
  - at: 5m10s
    apply:
      - apiVersion: v1
        kind: PodTemplate
        metadata: {name: checkout-chunk, namespace: default}
        template:
          metadata: {labels: {buffer: checkout}}
          spec:
            containers:
              - name: chunk
                image: registry.k8s.io/pause:3.10
                resources: {requests: {cpu: "2", memory: 4Gi}}
"#,
    );
    assert_ne!(yaml, grown);
    let scenario = dovetail_sim::Scenario::parse("buffer-burst.yaml", &grown).unwrap();
    let options = dovetail_sim::RunOptions {
        until: Some(std::time::Duration::from_secs(7 * 60)),
        ..Default::default()
    };
    let out = dovetail_sim::simulate(&scenario, &options).unwrap();
    let created: Vec<f64> = out
        .trace
        .lines()
        .filter(|l| l.contains("create nodeclaim/") && l.contains("(headroom "))
        .filter_map(dovetail_tests::at)
        .filter(|t| *t >= 310.0)
        .collect();
    let first = created.first().copied();
    assert!(
        first.is_some_and(|t| t < 315.0),
        "headroom for the grown chunks planned at {first:?}\n{}",
        out.trace
    );
}

#[test]
fn a_buffer_that_cannot_be_resolved_says_why_and_keeps_no_headroom() {
    let path = dovetail_tests::root().join("scenarios/buffer-burst.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let broken = yaml
        .replace(
            "    name: checkout-chunk\n      replicas: 12",
            "    name: no-such-template\n      replicas: 12",
        )
        .replace(
            "      percentage: 20\n",
            "      percentage: 20\n      provisioningStrategy: example.com/standby\n",
        );
    assert_ne!(yaml, broken);
    let mut scenario = dovetail_sim::Scenario::parse("buffer-burst.yaml", &broken).unwrap();
    scenario.duration = std::time::Duration::from_secs(300);
    scenario.timeline.clear();
    scenario.expect = Default::default();
    let out = dovetail_sim::simulate(&scenario, &Default::default()).unwrap();
    assert_eq!(
        buffer_condition(&out, "checkout-headroom", "ReadyForProvisioning"),
        Some(("False".into(), "PodTemplateNotFound".into()))
    );
    assert_eq!(
        buffer_condition(&out, "web-headroom", "ReadyForProvisioning"),
        Some(("False".into(), "UnsupportedProvisioningStrategy".into()))
    );
    assert_eq!(
        buffer_condition(&out, "checkout-headroom", "Provisioning"),
        Some(("False".into(), "NotReadyForProvisioning".into()))
    );
    assert!(out.trace.contains(
        "capacitybuffer/default/checkout-headroom: not acted on (PodTemplateNotFound): podtemplate default/no-such-template not found"
    ));
    // Only web's pods are planned for: one small node, no headroom.
    assert!(!out.trace.contains("(headroom "));
    assert!(!out.trace.contains("headroom="));
}
