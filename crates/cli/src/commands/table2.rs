//! `mathcoder table2 [DIR]`: the paper's Table 2 next to ours.

use anyhow::{bail, Result};
use mathcoder_eval::table2;
use mathcoder_grade::Grader;
use std::io::Write;
use std::path::PathBuf;

use mathcoder_cli::args::{data_dir, Format, GradeArgs};
use mathcoder_cli::progress;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Directory of released outputs (`<model>/<dataset>/*.jsonl[.gz]`); default: the vendored
    /// `data/released-outputs`.
    dir: Option<PathBuf>,
    /// Grading options (default protocol here: `paper`).
    #[command(flatten)]
    grading: GradeArgs,
    /// Exit with status 1 if any cell differs from the paper by more than this many points.
    #[arg(long)]
    check: Option<f64>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn run(mut a: Args) -> Result<i32> {
    let dir = match a.dir.take() {
        Some(d) => d,
        None => match data_dir() {
            Some(d) => d.join("released-outputs"),
            None => bail!("no released outputs found (looked in $MATHCODER_DATA, ./data and the source tree); pass a directory"),
        },
    };
    // Table 2 is reproduced with the paper's conventions unless asked otherwise.
    if !std::env::args().any(|x| x == "--protocol" || x.starts_with("--protocol=")) {
        a.grading.protocol = mathcoder_grade::Protocol::Paper;
    }
    let grader = Grader::new(a.grading.options());
    let files = table2::find_output_files(&dir)?;
    let mut total = 0u64;
    for f in &files {
        total += mathcoder_eval::score::count_records(f)? as u64;
    }
    let pb = progress::bar(total, "grading released outputs");
    let cells = table2::reproduce(&dir, &grader, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &cells)?;
            writeln!(out)?;
        }
        Format::Text => write!(out, "{}", table2::render(&cells, a.grading.protocol.name()))?,
    }
    if let Some(tol) = a.check {
        let bad: Vec<String> = cells
            .iter()
            .filter(|c| c.delta().is_some_and(|d| d.abs() > tol))
            .map(|c| {
                format!(
                    "{} {} ({:+.1})",
                    c.model,
                    c.dataset,
                    c.delta().unwrap_or(0.0)
                )
            })
            .collect();
        if !bad.is_empty() {
            eprintln!("cells off by more than {tol} points: {}", bad.join(", "));
            return Ok(1);
        }
    }
    Ok(0)
}
