//! NodePool disruption budgets: how many of a pool's nodes may be voluntarily disrupted now, per reason.

use jiff::Timestamp;

use super::cron::Cron;
use crate::crds::nodepool::Budget;

/// Why a node is disrupted voluntarily (budgets may name these; expiration and interruption ignore budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    Empty,
    Drifted,
    Underutilized,
    /// Beyond Karpenter: a DaemonSet's pod does not fit on the node (a DaemonSet added or grown), so the
    /// node is replaced by one that fits everything. Budgets count it as `Drifted`.
    DaemonSetUnfit,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Empty => "Empty",
            Reason::Drifted => "Drifted",
            Reason::Underutilized => "Underutilized",
            Reason::DaemonSetUnfit => "DaemonSetUnfit",
        }
    }

    /// The reason a budget's `reasons` list names this by.
    pub fn budget_name(self) -> &'static str {
        match self {
            Reason::DaemonSetUnfit => Reason::Drifted.as_str(),
            other => other.as_str(),
        }
    }
}

/// A pool's nodes, and how many of them are already going (being deleted, tainted for disruption, or
/// NotReady) — those count against every budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    pub total: u32,
    pub disrupting: u32,
}

fn nodes(text: &str, total: u32, at: usize) -> Result<u32, String> {
    let bad = || {
        format!(
            "spec.disruption.budgets[{at}].nodes: `{text}` is not a count or a percentage such as 10%"
        )
    };
    match text.trim().strip_suffix('%') {
        Some(p) => {
            let p: u32 = p.parse().map_err(|_| bad())?;
            if p > 100 {
                return Err(bad());
            }
            // Rounded up, as Karpenter does.
            Ok((total * p).div_ceil(100))
        }
        None => text.trim().parse().map_err(|_| bad()),
    }
}

/// How many more nodes of the pool may be disrupted for `reason` right now: the minimum over the budgets
/// that apply to the reason and are active, less the nodes already going. No budgets means Karpenter's
/// default, `nodes: 10%`. An invalid budget is an error naming its field (the caller then disrupts nothing).
pub fn allowed(
    budgets: &[Budget],
    reason: Reason,
    counts: PoolCounts,
    now: Timestamp,
) -> Result<u32, String> {
    let default = [Budget {
        nodes: "10%".to_string(),
        schedule: None,
        duration: None,
        reasons: Vec::new(),
    }];
    let budgets = if budgets.is_empty() {
        &default[..]
    } else {
        budgets
    };
    let mut out = u32::MAX;
    for (i, b) in budgets.iter().enumerate() {
        for r in &b.reasons {
            if !["Empty", "Drifted", "Underutilized"].contains(&r.as_str()) {
                return Err(format!(
                    "spec.disruption.budgets[{i}].reasons: unknown reason `{r}`; use Empty, Drifted or Underutilized"
                ));
            }
        }
        let limit = nodes(&b.nodes, counts.total, i)?;
        let active = match (&b.schedule, &b.duration) {
            (None, None) => true,
            (Some(s), Some(d)) => {
                let cron = Cron::parse(s)
                    .map_err(|e| format!("spec.disruption.budgets[{i}].schedule: {e}"))?;
                let d = crate::duration::parse(d)
                    .map_err(|e| format!("spec.disruption.budgets[{i}].duration: {e}"))?;
                cron.active(now, (d.as_secs() / 60) as u32)
            }
            _ => {
                return Err(format!(
                    "spec.disruption.budgets[{i}]: schedule and duration go together; set both or neither"
                ));
            }
        };
        let applies = b.reasons.is_empty() || b.reasons.iter().any(|r| r == reason.budget_name());
        if active && applies {
            out = out.min(limit);
        }
    }
    Ok(out.saturating_sub(counts.disrupting))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(nodes: &str, schedule: Option<&str>, duration: Option<&str>, reasons: &[&str]) -> Budget {
        Budget {
            nodes: nodes.into(),
            schedule: schedule.map(Into::into),
            duration: duration.map(Into::into),
            reasons: reasons.iter().map(|r| r.to_string()).collect(),
        }
    }

    const NOON: &str = "2026-01-05T12:00:00Z";

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn percentages_round_up_and_going_nodes_count() {
        let c = PoolCounts {
            total: 19,
            disrupting: 0,
        };
        assert_eq!(
            allowed(&[b("20%", None, None, &[])], Reason::Empty, c, at(NOON)),
            Ok(4)
        );
        // The default is 10%.
        assert_eq!(allowed(&[], Reason::Underutilized, c, at(NOON)), Ok(2));
        let busy = PoolCounts {
            total: 19,
            disrupting: 3,
        };
        assert_eq!(
            allowed(&[b("20%", None, None, &[])], Reason::Empty, busy, at(NOON)),
            Ok(1)
        );
        assert_eq!(
            allowed(&[b("2", None, None, &[])], Reason::Empty, busy, at(NOON)),
            Ok(0)
        );
    }

    #[test]
    fn the_tightest_applicable_active_budget_wins() {
        let c = PoolCounts {
            total: 30,
            disrupting: 0,
        };
        let budgets = [
            b("20%", None, None, &["Empty", "Drifted"]),
            b("5", None, None, &[]),
            b("0", Some("0 9 * * *"), Some("8h"), &["Underutilized"]),
        ];
        assert_eq!(allowed(&budgets, Reason::Empty, c, at(NOON)), Ok(5));
        assert_eq!(allowed(&budgets, Reason::Underutilized, c, at(NOON)), Ok(0));
        // Outside 09:00-17:00 the zero budget is inactive.
        assert_eq!(
            allowed(
                &budgets,
                Reason::Underutilized,
                c,
                at("2026-01-05T18:00:00Z")
            ),
            Ok(5)
        );
    }

    #[test]
    fn a_daemonset_that_no_longer_fits_counts_as_drift() {
        let c = PoolCounts {
            total: 10,
            disrupting: 0,
        };
        let budgets = [b("0", None, None, &["Drifted"]), b("3", None, None, &[])];
        assert_eq!(
            allowed(&budgets, Reason::DaemonSetUnfit, c, at(NOON)),
            Ok(0)
        );
        assert_eq!(allowed(&budgets, Reason::Underutilized, c, at(NOON)), Ok(3));
    }

    #[test]
    fn bad_budgets_name_the_field() {
        let c = PoolCounts::default();
        let e = allowed(&[b("lots", None, None, &[])], Reason::Empty, c, at(NOON)).unwrap_err();
        assert!(e.contains("budgets[0].nodes"), "{e}");
        let e = allowed(
            &[b("1", Some("@daily"), None, &[])],
            Reason::Empty,
            c,
            at(NOON),
        )
        .unwrap_err();
        assert!(e.contains("schedule and duration"), "{e}");
        let e = allowed(
            &[b("1", Some("0 25 * * *"), Some("1h"), &[])],
            Reason::Empty,
            c,
            at(NOON),
        )
        .unwrap_err();
        assert!(e.contains("budgets[0].schedule: hour"), "{e}");
        let e = allowed(
            &[b("1", None, None, &["Bored"])],
            Reason::Empty,
            c,
            at(NOON),
        )
        .unwrap_err();
        assert!(e.contains("unknown reason `Bored`"), "{e}");
    }
}
