//! `mathcoder solve` and `mathcoder eval`.

use anyhow::{bail, Context, Result};
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{Block, BlockKind};
use mathcoder_runner::{aggregate, Event, RunConfig};
use mathcoder_solve::Observer;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mathcoder_cli::args::{GradeArgs, LoopRunArgs};

#[derive(clap::Args, Debug)]
pub struct SolveArgs {
    /// The problem (or use --file).
    question: Option<String>,
    /// Read the problem from a file.
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    run: LoopRunArgs,
    /// Print the outcome as JSON instead of streaming it.
    #[arg(long)]
    json: bool,
}

struct Terminal {
    color: bool,
}

impl Observer for Terminal {
    fn block(&mut self, b: &Block) {
        let mut out = std::io::stdout().lock();
        let (label, color) = match b.kind {
            BlockKind::Text => ("text", "\x1b[0m"),
            BlockKind::Code => ("code", "\x1b[36m"),
            BlockKind::Execution => ("execution", "\x1b[2m"),
        };
        if self.color {
            let _ = writeln!(
                out,
                "\x1b[1m── {label} ──\x1b[0m\n{color}{}\x1b[0m",
                b.content
            );
        } else {
            let _ = writeln!(out, "── {label} ──\n{}", b.content);
        }
        let _ = out.flush();
    }
}

pub fn solve(a: SolveArgs) -> Result<i32> {
    let question = match (&a.question, &a.file) {
        (Some(q), None) => q.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (Some(_), Some(_)) => bail!("give the question or --file, not both"),
        (None, None) => bail!("give a question, or --file PATH"),
    };
    // Says at once when no server is running, before the sandbox is prepared.
    let (solver, sandbox, config) = a.run.prepare_solver(1)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut term = Terminal {
        color: std::io::stdout().is_terminal(),
    };
    let outcome = rt.block_on(async {
        if a.json {
            solver.solve(&question, &sandbox, &config, &mut ()).await
        } else {
            solver.solve(&question, &sandbox, &config, &mut term).await
        }
    });
    let extracted = mathcoder_grade::extract(outcome.completion())
        .ok()
        .map(|e| e.answer);
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({"question": question, "outcome": outcome, "answer": extracted});
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "\nanswer: {}\nstopped: {} after {} model blocks ({:.1} s: {:.1} s generating, {:.1} s executing)",
            extracted.as_deref().unwrap_or("(none found)"),
            match &outcome.stop {
                mathcoder_solve::StopReason::BackendError(e) | mathcoder_solve::StopReason::ExecutionFault(e) => format!("{} ({e})", outcome.stop.label()),
                s => s.label().to_string(),
            },
            outcome.model_blocks(),
            outcome.total_ms / 1000.0,
            outcome.generate_ms / 1000.0,
            outcome.execute_ms / 1000.0
        )?;
    }
    Ok(if outcome.stop.is_failure() { 1 } else { 0 })
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A benchmark name (see `mathcoder datasets`) or a JSONL file of problems.
    #[arg(long)]
    dataset: String,
    /// Answer conventions for a dataset file (default: from the name or path).
    #[arg(long, value_parser = mathcoder_cli::args::conventions)]
    conventions: Option<Dataset>,
    /// Output directory (results.jsonl, summary.json, run.json); an existing run there resumes.
    #[arg(long)]
    out: PathBuf,
    /// Problems solved at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Only the first K problems.
    #[arg(long)]
    limit: Option<usize>,
    /// Samples per problem (seeds seed, seed+1, ...); reports maj@k and pass@k.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Run again the problems recorded as failed (backend or sandbox errors).
    #[arg(long)]
    retry_failed: bool,
    /// Recorded outputs of the same model (files or directories) to compare final answers with.
    #[arg(long, num_args = 1..)]
    reference: Vec<PathBuf>,
    #[command(flatten)]
    run: LoopRunArgs,
    #[command(flatten)]
    grading: GradeArgs,
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let (name, problems, conventions) = super::load_problems(&a.dataset, a.conventions, a.limit)?;
    // Nothing listening at the start: say so at once, rather than failing every problem.
    let (solver, sandbox, solve) = a.run.prepare_solver(a.concurrency)?;
    let grader = Arc::new(Grader::new(a.grading.options()));
    let config = RunConfig {
        out: a.out.clone(),
        dataset: name.clone(),
        concurrency: a.concurrency,
        samples: a.samples,
        solve,
        conventions,
        retry_failed: a.retry_failed,
    };
    let pb = mathcoder_cli::progress::bar(0, "solving");
    let started = std::time::Instant::now();
    let resumed = Arc::new(AtomicUsize::new(0));
    let (correct, finished, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (pbc, c2, f2, x2, r2) = (
        pb.clone(),
        correct.clone(),
        finished.clone(),
        failed.clone(),
        resumed.clone(),
    );
    let progress: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |e| match e {
        Event::Start { done, todo } => {
            r2.store(done, Ordering::SeqCst);
            pbc.set_length(todo as u64);
            if done > 0 {
                pbc.println(format!(
                    "resuming: {done} records already in results.jsonl, {todo} to go"
                ));
            }
        }
        Event::Finished { correct, failed } => {
            let n = f2.fetch_add(1, Ordering::SeqCst) + 1;
            let c = c2.fetch_add(correct as usize, Ordering::SeqCst) + correct as usize;
            let x = x2.fetch_add(failed as usize, Ordering::SeqCst) + failed as usize;
            pbc.set_message(format!(
                "solving, accuracy {:.1}% ({c}/{n}){}",
                100.0 * c as f64 / n as f64,
                if x > 0 {
                    format!(", {x} failed")
                } else {
                    String::new()
                }
            ));
            pbc.inc(1);
        }
    });
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(mathcoder_runner::run(
        &problems,
        solver.clone(),
        sandbox,
        grader.clone(),
        &config,
        progress,
    ))?;
    pb.finish_and_clear();
    // The results file is read once; its records carry their verdicts, so nothing is graded
    // again (the runner graded each record as it finished).
    let results = mathcoder_runner::results_path(&a.out);
    let records = mathcoder_lce::run::read_run_records(&results)?;
    let plain: Vec<mathcoder_lce::RunRecord> = records.iter().map(|n| n.record.clone()).collect();
    let mut summary = aggregate::summarize(&plain, &name, &solver.describe(), conventions, &grader);
    if !a.reference.is_empty() {
        let files = mathcoder_lce::record_files(&a.reference)?;
        summary.reference = Some(mathcoder_runner::reference::compare(
            &plain,
            &files,
            conventions,
            &grader,
        )?);
    }
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )
    .context("writing summary.json")?;
    let score = mathcoder_eval::score_records(
        &results,
        records,
        Some(conventions),
        &grader,
        mathcoder_eval::Grading::Stored,
        &|_| {},
    )?;
    debug_assert_eq!(score.graded, 0, "eval re-graded stored verdicts");
    let runs = mathcoder_eval::group_runs(std::slice::from_ref(&score));
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "{}",
        mathcoder_eval::render_text(&runs, std::slice::from_ref(&score))
    )?;
    if let (Some(m), Some(p)) = (summary.maj_at_k, summary.pass_at_k) {
        writeln!(
            out,
            "  samples per problem {}: maj@{} {:.2}%  pass@{} {:.2}%  pass@1 {:.2}%",
            summary.samples,
            summary.samples,
            100.0 * m,
            summary.samples,
            100.0 * p,
            100.0 * summary.pass_at_1.unwrap_or(0.0)
        )?;
    }
    writeln!(out, "  stop reasons: {:?}", summary.stop_reasons)?;
    // Throughput of this invocation: the records it appended (after those it resumed from). On
    // stderr: stdout is the report of the results, the same however many runs made them.
    let new: Vec<&mathcoder_lce::run::RunInfo> = plain
        .iter()
        .skip(resumed.load(Ordering::SeqCst))
        .filter_map(|r| r.run.as_ref())
        .collect();
    if !new.is_empty() {
        let wall = started.elapsed().as_secs_f64();
        let tokens: u64 = new.iter().map(|r| r.generated_tokens).sum();
        let exec_s: f64 = new.iter().map(|r| r.execute_ms).sum::<f64>() / 1e3;
        eprintln!(
            "this run: {} solutions in {wall:.0} s, {tokens} tokens generated ({:.1} tok/s of \
             wall time), code execution {exec_s:.1} s in all",
            new.len(),
            tokens as f64 / wall.max(1e-9)
        );
    }
    if let Some(c) = &summary.reference {
        writeln!(
            out,
            "  vs reference: same final answer {}/{} ({:.2}%), equivalent but differently written {}, identical solutions {}, not in reference {}",
            c.same_answer,
            c.matched,
            100.0 * c.same_answer_rate(),
            c.equivalent_answer,
            c.same_solution,
            c.unmatched
        )?;
        for (id, ours, theirs) in c.differing.iter().take(10) {
            writeln!(
                out,
                "    {id}: {} here, {} recorded",
                ours.as_deref().unwrap_or("(none)"),
                theirs.as_deref().unwrap_or("(none)")
            )?;
        }
    }
    if summary.failed > 0 {
        writeln!(out, "  {} records failed (backend or sandbox errors); rerun with --retry-failed to try them again", summary.failed)?;
    }
    writeln!(
        out,
        "  results: {}  summary: {}",
        results.display(),
        a.out.join("summary.json").display()
    )?;
    Ok(0)
}
