//! Simulations on every core for `dovetail sim` and `cargo xtask` (each run is single-threaded and seeded, so
//! a result does not depend on the thread that computed it) and the progress line shown on a terminal. The
//! threads and the wall clock here are outside any run.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::report::Metrics;
use crate::{Progress, RunOptions, Scenario, SimError};

/// `f` over `items` on as many threads as there are cores, results in input order.
pub fn map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len().max(1));
    let next = AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<R>>> = items.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every item is run")
        })
        .collect()
}

/// A sweep's seeds on every core, counting finished seeds on a terminal.
pub fn seeds(
    scenario: &Scenario,
    options: &RunOptions,
    seeds: &[u64],
) -> Vec<Result<Metrics, SimError>> {
    let done = AtomicUsize::new(0);
    let started = Instant::now(); // allow-nondeterminism: the sweep's progress line shows wall time, outside any run
    let tty = std::io::stderr().is_terminal();
    let out = map(seeds, |seed| {
        let r = crate::cli::sequential(scenario, options, std::slice::from_ref(seed))
            .pop()
            .expect("one seed, one result");
        let n = done.fetch_add(1, Ordering::SeqCst) + 1;
        if tty {
            eprint!(
                "\r  {n}/{} seeds, {:.0}s ",
                seeds.len(),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stderr().flush();
        }
        r
    });
    if tty {
        eprintln!();
    }
    out
}

/// A progress line for one run on a terminal: simulated time, share done and speed; None elsewhere (a
/// pipe or CI log gets no carriage returns).
pub fn progress_line() -> Option<Progress> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let started = Instant::now(); // allow-nondeterminism: the progress line's speed is sim time over wall time
    let last = Mutex::new(Instant::now() - Duration::from_secs(1)); // allow-nondeterminism: redrawn at most every 200 ms of wall time
    Some(Progress(Arc::new(move |at: Duration, total: Duration| {
        let mut last = last.lock().unwrap_or_else(|p| p.into_inner());
        if last.elapsed() < Duration::from_millis(200) && at < total {
            return;
        }
        *last = Instant::now(); // allow-nondeterminism: redrawn at most every 200 ms of wall time
        let wall = started.elapsed().as_secs_f64().max(1e-3);
        let share = at.as_secs_f64() / total.as_secs_f64().max(1e-9);
        let width = 30;
        let filled = ((share * width as f64) as usize).min(width);
        eprint!(
            "\r  [{}{}] {} / {}  {:.0}x ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            crate::duration::human(at),
            crate::duration::human(total),
            at.as_secs_f64() / wall
        );
        if at >= total {
            eprint!("\r{}\r", " ".repeat(80));
        }
        let _ = std::io::stderr().flush();
    })))
}
