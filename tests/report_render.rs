//! The HTML report renders in a real browser: headless Chromium takes a screenshot and the charts' line
//! colours are on it (a blank or broken page has none of them).

use std::path::Path;
use std::process::Command;

use dovetail_sim::cli::sim_command;

/// The series colours of the report's charts (sim/src/html.rs).
const SERIES: [(&str, [u8; 3]); 5] = [
    ("on-demand nodes", [0x1f, 0x77, 0xb4]),
    ("spot nodes", [0xff, 0x7f, 0x0e]),
    ("pending pods", [0xd6, 0x27, 0x28]),
    ("cost per hour", [0x2c, 0xa0, 0x2c]),
    ("evictions", [0x94, 0x67, 0xbd]),
];

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

fn screenshot(browser: &str, page: &Path, png: &Path, profile: &Path) {
    let out = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=900,1400",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("chromium runs");
    assert!(
        out.status.success() && png.exists(),
        "chromium took no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Pixels of each colour (within a small tolerance for anti-aliasing), and pixels that are not white.
fn census(png: &Path) -> (Vec<usize>, usize, usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png).expect("screenshot"),
    ));
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("a frame");
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "unexpected PNG colour type {:?}",
        info.color_type
    );
    let mut counts = vec![0; SERIES.len()];
    let mut ink = 0;
    let pixels = buf[..info.buffer_size()].chunks(channels);
    let total = pixels.len();
    for px in pixels {
        if px[..3].iter().any(|&c| c < 240) {
            ink += 1;
        }
        for (i, (_, rgb)) in SERIES.iter().enumerate() {
            if px[..3].iter().zip(rgb).all(|(a, b)| a.abs_diff(*b) <= 8) {
                counts[i] += 1;
            }
        }
    }
    (counts, ink, total)
}

#[test]
fn the_report_renders_with_visible_charts_in_headless_chromium() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is needed for the report check (.ci/run installs Debian's chromium)"
        );
        eprintln!(
            "SKIPPED: chromium is not installed here; CI runs this check (apt-get install chromium)"
        );
        return;
    };
    let dir = dovetail_tests::root().join("target/report-render");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let page = dir.join("spot-storm.html");
    let scenario = dovetail_tests::root().join("scenarios/spot-storm.yaml");
    let out = sim_command(&[
        scenario.display().to_string(),
        "--quiet".into(),
        "--report".into(),
        page.display().to_string(),
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let png = dir.join("spot-storm.png");
    screenshot(browser, &page, &png, &dir.join("profile"));
    let (counts, ink, total) = census(&png);
    // Text and axes alone cover a few percent of the page; a blank page has none.
    assert!(
        ink * 100 > total,
        "the page is blank: {ink} of {total} pixels drawn"
    );
    for ((what, _), n) in SERIES.iter().zip(&counts) {
        assert!(
            *n >= 40,
            "the {what} line is not visible ({n} pixels of its colour) in {}",
            png.display()
        );
    }
}
