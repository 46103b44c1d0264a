//! `mathcoder bench view`: how fast the results browser opens and filters a run, measured in a
//! real headless Chromium (`performance.now()` around fetch + render + the next frame, as the
//! page records it in `window.viewTimings`), with the index build time on the server.

use anyhow::{bail, Context, Result};
use mathcoder_view::browser::{unavailable, Browser};
use mathcoder_view::{Bound, Index, IndexOptions};
use std::path::PathBuf;
use std::time::Instant;

use mathcoder_cli::args::{data_dir, GradeArgs};

#[derive(clap::Args, Debug)]
pub struct ViewBenchArgs {
    /// The run to open (default: MathCoder-L-7B's released MATH outputs, vendored).
    path: Option<PathBuf>,
    /// Also time a run of this many records made by repeating the input's records (the
    /// 5,000-record MATH target); 0: only the input.
    #[arg(long, default_value_t = 5000)]
    records: usize,
    /// Repetitions of each measurement (medians and maxima are reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    #[command(flatten)]
    grading: GradeArgs,
}

/// The filters timed, as the page's query strings.
const FILTERS: &[(&str, &str)] = &[
    ("wrong", "verdict=wrong"),
    ("geometry L5", "subject=geometry&level=5"),
    (
        "wrong geometry L5",
        "verdict=wrong&subject=geometry&level=5",
    ),
    ("3+ code blocks", "code=3%2B"),
    ("text 'circle'", "q=circle"),
    ("none (all rows)", ""),
];

pub fn view(a: ViewBenchArgs) -> Result<i32> {
    if let Some(why) = unavailable() {
        bail!("{why}");
    }
    let path = match a.path {
        Some(p) => p,
        None => data_dir()
            .context("no vendored data found; pass a file")?
            .join("released-outputs/MathCoder-L-7b/MATH"),
    };
    let scratch = tempfile::tempdir()?;
    let mut inputs = vec![(path.display().to_string(), path.clone())];
    if a.records > 0 {
        let files = mathcoder_lce::record_files(&[&path])?;
        let mut lines: Vec<String> = Vec::new();
        for f in &files {
            let text = mathcoder_lce::record::read_to_string_maybe_gz(f)?;
            lines.extend(
                text.lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(String::from),
            );
        }
        if lines.is_empty() {
            bail!("no records in {}", path.display());
        }
        let big = scratch
            .path()
            .join(format!("MATH-repeated-{}.jsonl", a.records));
        let mut out = String::new();
        for l in lines.iter().cycle().take(a.records) {
            out.push_str(l);
            out.push('\n');
        }
        std::fs::write(&big, out)?;
        inputs.push((
            format!("{} records repeated to {}", lines.len(), a.records),
            big,
        ));
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        println!(
            "mathcoder view in headless Chromium ({}), {} repetitions; ms = fetch + render + next frame (median / max)",
            mathcoder_view::browser::CHROMIUM,
            a.repeat
        );
        for (label, input) in &inputs {
            let t = Instant::now();
            let index = Index::build(
                std::slice::from_ref(input),
                &IndexOptions {
                    grade: a.grading.options(),
                    ..IndexOptions::default()
                },
            )?;
            let build = t.elapsed().as_secs_f64();
            let records = index.runs.first().map_or(0, |r| r.problems.len());
            let bound = Bound::bind(index, "127.0.0.1", 0).await?;
            let url = bound.url();
            let server = tokio::spawn(bound.serve());
            let b = Browser::start(scratch.path()).await?;
            println!("\n{label}: {records} records; index built (read + grade) in {:.2} s", build);
            // Opening: a fresh page load each time.
            let (mut open, mut nav) = (Vec::new(), Vec::new());
            for _ in 0..a.repeat.max(1) {
                b.client.goto("about:blank").await?;
                let (ms, _) = b.goto_and_time(&format!("{url}#/run/0"), 1).await?;
                open.push(ms);
                let at = b
                    .client
                    .execute("return window.lastTiming.at;", vec![])
                    .await?;
                nav.push(at.as_f64().unwrap_or(f64::NAN));
            }
            row("open run (fetch + render the list)", &mut open);
            row("open run (navigation start -> list rendered)", &mut nav);
            for (name, q) in FILTERS {
                let mut times = Vec::new();
                let mut rows = String::new();
                for _ in 0..a.repeat.max(1) {
                    // From the unfiltered list each time (the page stays; only the list changes).
                    let before = b.client.execute("return window.viewTimings.length;", vec![]).await?;
                    let n = before.as_u64().unwrap_or(0) as usize;
                    b.client
                        .execute(
                            "location.hash = arguments[0];",
                            vec![serde_json::json!(format!("#/run/0?{q}&_={}", n))],
                        )
                        .await?;
                    let (ms, label) = b.last_timing(n + 1).await?;
                    if label != "filter" {
                        bail!("expected a filter, the page did {label}");
                    }
                    times.push(ms);
                    rows = b
                        .client
                        .execute("return window.lastTiming.detail;", vec![])
                        .await?
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                }
                row(&format!("filter: {name} ({rows})"), &mut times);
            }
            b.close().await;
            server.abort();
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(0)
}

fn row(label: &str, v: &mut [f64]) {
    v.sort_by(|a, b| a.total_cmp(b));
    let med = v[v.len() / 2];
    let max = v[v.len() - 1];
    println!("  {label:<58} {med:>7.1} / {max:>7.1} ms");
}
