//! `mathcoder grade FILE...`

use anyhow::{Context, Result};
use mathcoder_eval::{group_runs, render_text, score_file, FileScore, FileSummary, VerdictLine};
use mathcoder_grade::{Dataset, Grader};
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use mathcoder_cli::args::{Format, GradeArgs};
use mathcoder_cli::progress;
use mathcoder_eval::Grading;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output files in the authors' format (`.jsonl` or `.jsonl.gz`).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Dataset conventions to grade with (default: detected from each path).
    #[arg(long, value_parser = mathcoder_cli::args::conventions)]
    dataset: Option<Dataset>,
    #[command(flatten)]
    grading: GradeArgs,
    /// Write one JSON line per record, in input order, to this file.
    #[arg(long)]
    verdicts: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
    /// Grade every record again, also our run records that carry the verdict they were given
    /// when written (by default those are reported as stored).
    #[arg(long)]
    regrade: bool,
    /// Compare the runs problem by problem (by id), each pair in turn: problems both get right,
    /// only one gets right, neither; and the exact McNemar p-value of the difference.
    #[arg(long)]
    paired: bool,
}

pub fn run(a: Args) -> Result<i32> {
    let dataset = a.dataset;
    let grader = Grader::new(a.grading.options());
    let mut total = 0u64;
    for f in &a.files {
        total += mathcoder_eval::score::count_records(f)? as u64;
    }
    let pb = progress::bar(total, "grading");
    if total < 2000 {
        pb.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut scores: Vec<FileScore> = Vec::new();
    for f in &a.files {
        let grading = if a.regrade {
            Grading::Regrade
        } else {
            Grading::Stored
        };
        scores.push(score_file(f, dataset, &grader, grading, &|n| pb.inc(n))?);
    }
    pb.finish_and_clear();
    if let Some(path) = &a.verdicts {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(file);
        for s in &scores {
            for r in &s.records {
                serde_json::to_writer(&mut w, &VerdictLine::of(s, r))?;
                w.write_all(b"\n")?;
            }
        }
        w.flush()?;
    }
    let runs = group_runs(&scores);
    let mut pairs = Vec::new();
    if a.paired {
        if runs.len() < 2 {
            anyhow::bail!("--paired needs at least two runs (got {})", runs.len());
        }
        for (i, (x, xi)) in runs.iter().enumerate() {
            for (y, yi) in &runs[i + 1..] {
                pairs.push(mathcoder_eval::paired(
                    (&x.name, run_records(&scores, xi)),
                    (&y.name, run_records(&scores, yi)),
                )?);
            }
        }
    }
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            for s in &scores {
                serde_json::to_writer(&mut out, &FileSummary::of(s))?;
                writeln!(out)?;
            }
            for p in &pairs {
                serde_json::to_writer(&mut out, &serde_json::json!({ "paired": p }))?;
                writeln!(out)?;
            }
        }
        Format::Text => {
            write!(out, "{}", render_text(&runs, &scores))?;
            for p in &pairs {
                writeln!(
                    out,
                    "{} vs {}\n  {} problems in both: both right {}, only the first {}, only the second {}, both wrong {}; exact McNemar p = {:.3}",
                    p.first, p.second, p.common, p.both_right, p.first_only, p.second_only, p.both_wrong, p.p_value
                )?;
            }
        }
    }
    Ok(0)
}

/// A run's records: those of its files (an authors' `-correct`/`-wrong` pair is one run).
fn run_records<'a>(
    scores: &'a [FileScore],
    files: &'a [usize],
) -> impl Iterator<Item = &'a mathcoder_eval::ScoredRecord> {
    files.iter().flat_map(|&k| scores[k].records.iter())
}
