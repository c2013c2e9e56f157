//! The self-contained HTML report of one run: the summary and four SVG charts (nodes by capacity type,
//! pending pods, cost per hour, evictions). No script, no stylesheet or font from the network.

use std::fmt::Write as _;

use crate::Outcome;
use crate::duration::human;
use crate::report::Sample;
use crate::scenario::Scenario;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 180.0;
const LEFT: f64 = 56.0;
const BOTTOM: f64 = 24.0;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line of a chart: colour, label, and the value it plots from a sample.
type Line<'a> = (&'a str, &'a str, &'a dyn Fn(&Sample) -> f64);

/// One line chart.
fn chart(title: &str, samples: &[Sample], series: &[Line<'_>]) -> String {
    let end = samples.last().map_or(1.0, |s| s.at.as_secs_f64()).max(1.0);
    let top = samples
        .iter()
        .flat_map(|s| series.iter().map(move |(_, _, f)| f(s)))
        .fold(0.0f64, f64::max);
    let top = if top <= 0.0 { 1.0 } else { top * 1.1 };
    let x = |t: f64| LEFT + (WIDTH - LEFT - 8.0) * t / end;
    let y = |v: f64| 8.0 + (HEIGHT - BOTTOM - 8.0) * (1.0 - v / top);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<figure><figcaption>{}</figcaption><svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"##,
        escape(title),
        escape(title)
    );
    let _ = write!(
        svg,
        r##"<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/><line x1="{LEFT}" y1="{}" x2="{}" y2="{}" stroke="#444"/><line x1="{LEFT}" y1="8" x2="{LEFT}" y2="{}" stroke="#444"/>"##,
        HEIGHT - BOTTOM,
        WIDTH - 8.0,
        HEIGHT - BOTTOM,
        HEIGHT - BOTTOM
    );
    let _ = write!(
        svg,
        r##"<text x="{}" y="14" font-size="11" text-anchor="end">{}</text><text x="{}" y="{}" font-size="11" text-anchor="end">0</text><text x="{}" y="{}" font-size="11" text-anchor="end">{}</text>"##,
        LEFT - 4.0,
        {
            let peak = top / 1.1;
            if (peak - peak.round()).abs() < 1e-9 {
                format!("{peak:.0}")
            } else {
                format!("{peak:.2}")
            }
        },
        LEFT - 4.0,
        HEIGHT - BOTTOM,
        WIDTH - 8.0,
        HEIGHT - 6.0,
        human(samples.last().map_or_else(Default::default, |s| s.at))
    );
    for (i, (colour, label, f)) in series.iter().enumerate() {
        let points: Vec<String> = samples
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.at.as_secs_f64()), y(f(s))))
            .collect();
        let _ = write!(
            svg,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="{}" font-size="11" fill="{colour}">{}</text>"##,
            points.join(" "),
            LEFT + 8.0 + 140.0 * i as f64,
            HEIGHT - 6.0,
            escape(label)
        );
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// The report page for a run.
pub fn render(scenario: &Scenario, outcome: &Outcome) -> String {
    let s = &outcome.series;
    let mut page = String::new();
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Dovetail: {name}</title>\
         <style>body{{font-family:sans-serif;margin:24px;color:#222}}figure{{margin:16px 0}}\
         figcaption{{font-weight:bold;margin-bottom:4px}}pre{{background:#f4f4f4;padding:12px}}</style></head><body>\n\
         <h1>{name}</h1><p>{description}</p>\n<h2>Verdict: {verdict}</h2>\n",
        name = escape(&scenario.name),
        description = escape(&scenario.description),
        verdict = if outcome.passed { "PASS" } else { "FAIL" },
    );
    page.push_str(&chart(
        "Nodes by capacity type",
        s,
        &[
            ("#1f77b4", "on-demand", &|x: &Sample| x.on_demand as f64),
            ("#ff7f0e", "spot", &|x: &Sample| x.spot as f64),
        ],
    ));
    page.push_str(&chart(
        "Pending pods",
        s,
        &[("#d62728", "pending", &|x: &Sample| x.pods_pending as f64)],
    ));
    page.push_str(&chart(
        "Cost per hour (USD)",
        s,
        &[("#2ca02c", "cost/h", &|x: &Sample| x.cost_per_hour)],
    ));
    page.push_str(&chart(
        "Evictions (cumulative)",
        s,
        &[("#9467bd", "evictions", &|x: &Sample| x.evictions as f64)],
    ));
    let _ = write!(
        page,
        "<h2>Summary</h2><pre>{}</pre>\n</body></html>\n",
        escape(&outcome.summary)
    );
    page
}
