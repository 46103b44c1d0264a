//! `mathcoder data ...`: building MathCodeInstruct (argument parsing and progress only; the work
//! is `mathcoder-data`'s).

use anyhow::{bail, Result};
use mathcoder_data::distill::DistillConfig;
use mathcoder_data::merge::{MergeConfig, TestSets};
use mathcoder_data::quality::{Filters, Tokens};
use mathcoder_data::seed::{AttemptOutcome, Event, SeedConfig};
use mathcoder_data::{AnnotationsTeacher, LceTeacher, Teacher};
use mathcoder_grade::{Dataset, Grader};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mathcoder_cli::args::{BackendArgs, GradeArgs, LoopArgs, SandboxArgs};

#[derive(clap::Subcommand, Debug)]
pub enum DataCommand {
    /// D0: teacher solutions to train problems, kept when the final answer equals the gold
    /// (DIR/data.jsonl; resumable).
    Seed(Box<SeedArgs>),
    /// D1: n solutions per problem from a teacher, kept when all n final answers are
    /// mathematically equivalent (DIR/data.jsonl; resumable).
    Distill(Box<DistillArgs>),
    /// D = the union of training files, duplicate and test-set problems removed.
    Merge(MergeArgs),
    /// New problems between a GSM8K train problem and a MATH train problem, by the paper's
    /// interpolation prompt to a chat model (DIR/problems.jsonl, read by `distill --problems`;
    /// resumable).
    Interpolate(Box<super::data_chat::InterpolateArgs>),
    /// The paper's difficulty check of interpolated problems against their parents, asked in
    /// both orders (DIR/judgments.jsonl, DIR/report.json; resumable).
    Judge(Box<super::data_chat::JudgeArgs>),
    /// Per source and per MATH subject/level: problems attempted and solved, solutions kept,
    /// blocks, code blocks and tokens per solution, teacher tokens spent.
    Stats(StatsArgs),
}

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(subcommand)]
    command: DataCommand,
}

/// Who writes the solutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TeacherKind {
    /// GSM8K's calculator annotations as code, executed in the sandbox (no model).
    Annotations,
    /// An LCE (MathCoder-format) model through the solve loop (backend flags: `--endpoint`,
    /// `--backend`, `--model`; sampling: `--temperature`, `--seed`).
    Lce,
    /// A chat model with a code interpreter at an OpenAI-compatible `/v1/chat/completions`
    /// (`--endpoint`, `--model`; `--chat-style tools|fences`).
    Chat,
}

#[derive(clap::Args, Debug)]
pub struct SeedArgs {
    /// `gsm8k-train`, `math-train`, or a JSONL file of problems with gold answers.
    #[arg(long)]
    source: String,
    #[arg(long, value_enum)]
    teacher: TeacherKind,
    /// Answer conventions for a problem file (default: from the name or path).
    #[arg(long, value_parser = mathcoder_cli::args::conventions)]
    conventions: Option<Dataset>,
    /// Output directory (data.jsonl, attempts.jsonl, run.json); an existing run there resumes.
    #[arg(long)]
    out: PathBuf,
    /// Only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    /// K: after the greedy solution (sample 0), up to K sampled ones (samples 1..=K, seeds
    /// seed+1, ...; at `--temperature`), drawn while the problem is unsolved.
    #[arg(long, default_value_t = 0)]
    samples: usize,
    /// Draw all K samples even for problems already solved.
    #[arg(long)]
    sample_all: bool,
    /// M: at most this many distinct solutions kept per problem (exact and near-duplicate
    /// solutions are dropped; drawing stops at M).
    #[arg(long, default_value_t = 4)]
    max_per_problem: usize,
    /// Drop correct solutions without a code block.
    #[arg(long)]
    require_code: bool,
    /// Drop correct solutions whose last execution shows a traceback.
    #[arg(long)]
    drop_traceback: bool,
    /// Drop correct solutions longer than N tokens under `--tokenizer` (whitespace words
    /// without one).
    #[arg(long, value_name = "N")]
    max_tokens: Option<usize>,
    /// Problems worked on at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(flatten)]
    backend: BackendArgs,
    /// The loop's settings (`--seed`, `--temperature`; `--system-prompt` is written into every
    /// record, whichever the teacher).
    #[command(flatten)]
    looping: LoopArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    grading: GradeArgs,
    #[command(flatten)]
    chat: super::data_chat::ChatArgs,
}

#[derive(clap::Args, Debug)]
pub struct DistillArgs {
    /// A JSONL file of problems (gold answers not needed), or a dataset name.
    #[arg(long)]
    problems: String,
    #[arg(long, value_enum)]
    teacher: TeacherKind,
    /// Answer conventions for judging equivalence (default: from the name or path).
    #[arg(long, value_parser = mathcoder_cli::args::conventions)]
    conventions: Option<Dataset>,
    #[arg(long)]
    out: PathBuf,
    #[arg(long)]
    limit: Option<usize>,
    /// Solutions per problem that must agree (the paper: 3).
    #[arg(long, default_value_t = 3)]
    samples: usize,
    /// Keep all agreeing solutions of a problem (default: the first).
    #[arg(long)]
    keep_all: bool,
    /// Keep a problem when at least this many answers agree (default: all --samples).
    #[arg(long)]
    min_agree: Option<usize>,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    looping: LoopArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    grading: GradeArgs,
    #[command(flatten)]
    chat: super::data_chat::ChatArgs,
}

fn distill(mut a: DistillArgs) -> Result<i32> {
    let (name, problems, conventions) = super::load_problems(&a.problems, a.conventions, a.limit)?;
    a.backend = teacher_backend(a.teacher, &a.backend, &a.sandbox, a.concurrency)?;
    let sandbox = a.sandbox.sandbox()?;
    let grader = Arc::new(Grader::new(a.grading.options()));
    let solve = a.looping.config();
    let config = DistillConfig {
        out: a.out.clone(),
        source: name,
        samples: a.samples,
        seed: solve.seed,
        concurrency: a.concurrency,
        conventions,
        system: solve.template.system.clone(),
        keep_all: a.keep_all,
        min_agree: a.min_agree.unwrap_or(a.samples),
    };
    let (pb, progress) = bar("distilling");
    let start = std::time::Instant::now();
    let rt = tokio::runtime::Runtime::new()?;
    match a.teacher {
        TeacherKind::Annotations => {
            let teacher = Arc::new(AnnotationsTeacher::new(sandbox));
            rt.block_on(mathcoder_data::distill::distill(
                &problems, teacher, grader, &config, progress,
            ))?
        }
        TeacherKind::Lce => {
            // The samples of a problem are drawn at once.
            let backend = a.backend.build(a.concurrency * a.samples.max(1))?;
            let teacher = Arc::new(LceTeacher::new(backend, sandbox, solve));
            rt.block_on(mathcoder_data::distill::distill(
                &problems, teacher, grader, &config, progress,
            ))?
        }
        TeacherKind::Chat => {
            let teacher = Arc::new(a.chat.teacher(&a.backend, a.concurrency, sandbox, &solve)?);
            rt.block_on(mathcoder_data::distill::distill(
                &problems, teacher, grader, &config, progress,
            ))?
        }
    };
    pb.finish_and_clear();
    let s = mathcoder_data::seed::stats(&a.out)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{}: {} problems in {:.1} s; at least {} of {} answers agree on {} ({} disagree, {} failed); data: {}",
        config.source,
        s.problems,
        start.elapsed().as_secs_f64(),
        config.min_agree,
        config.samples,
        s.count(AttemptOutcome::Kept),
        s.count(AttemptOutcome::Wrong),
        s.count(AttemptOutcome::Failed) + s.count(AttemptOutcome::Unconverted),
        mathcoder_data::seed::data_path(&a.out).display()
    )?;
    for r in mathcoder_data::distill::agreement(&a.out, config.samples)? {
        if r.with_gold == 0 {
            writeln!(out, "  >= {} agree: {} problems", r.at_least, r.problems)?;
        } else {
            writeln!(
                out,
                "  >= {} agree: {} problems; agreed answer = gold on {}/{} ({:.1}%)",
                r.at_least,
                r.problems,
                r.correct,
                r.with_gold,
                100.0 * r.correct as f64 / r.with_gold as f64
            )?;
        }
    }
    Ok(0)
}

/// A progress bar and the callback that drives it.
fn bar(what: &'static str) -> (indicatif::ProgressBar, Arc<dyn Fn(Event) + Send + Sync>) {
    let pb = mathcoder_cli::progress::bar(0, what);
    let (kept, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pbc = pb.clone();
    let progress: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |e| match e {
        Event::Start { done, todo } => {
            pbc.set_length(todo as u64);
            if done > 0 {
                pbc.println(format!("resuming: {done} already done, {todo} to go"));
            }
        }
        Event::Finished(o) => {
            let k = (o == AttemptOutcome::Kept) as usize;
            let n = finished.fetch_add(1, Ordering::SeqCst) + 1;
            let k = kept.fetch_add(k, Ordering::SeqCst) + k;
            pbc.set_message(format!("{what}, kept {k}/{n}"));
            pbc.inc(1);
        }
    });
    (pb, progress)
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// Training files (the authors' format with provenance, e.g. DIR/data.jsonl of `seed`).
    #[arg(required = true, num_args = 1..)]
    files: Vec<PathBuf>,
    /// The merged file.
    #[arg(long)]
    out: PathBuf,
    /// Print every removal (default: the first 20 and the counts).
    #[arg(long)]
    verbose: bool,
}

pub fn run(a: Args) -> Result<i32> {
    match a.command {
        DataCommand::Seed(a) => seed(*a),
        DataCommand::Distill(a) => distill(*a),
        DataCommand::Merge(a) => merge(a),
        DataCommand::Interpolate(a) => super::data_chat::interpolate(*a),
        DataCommand::Judge(a) => super::data_chat::judge(*a),
        DataCommand::Stats(a) => stats(a),
    }
}

fn seed(mut a: SeedArgs) -> Result<i32> {
    let (name, problems, conventions) = super::load_problems(&a.source, a.conventions, a.limit)?;
    a.backend = teacher_backend(a.teacher, &a.backend, &a.sandbox, a.concurrency)?;
    let sandbox = a.sandbox.sandbox()?;
    let grader = Arc::new(Grader::new(a.grading.options()));
    let solve = a.looping.config();
    if a.samples > 0 && a.teacher == TeacherKind::Lce && solve.temperature <= 0.0 {
        bail!("--samples {} draws sampled solutions: give them a --temperature above 0 (the first solution is greedy)", a.samples);
    }
    let config = SeedConfig {
        out: a.out.clone(),
        source: name,
        samples: a.samples,
        sample_all: a.sample_all,
        temperature: solve.temperature,
        max_per_problem: a.max_per_problem,
        filters: Filters {
            require_code: a.require_code,
            drop_traceback: a.drop_traceback,
            max_tokens: a.max_tokens,
        },
        tokens: match a.max_tokens {
            Some(_) => token_unit(a.backend.native.tokenizer.as_deref())?,
            None => Tokens::Words,
        },
        seed: solve.seed,
        concurrency: a.concurrency,
        conventions,
        system: solve.template.system.clone(),
    };
    match a.teacher {
        TeacherKind::Annotations => {
            let teacher = Arc::new(AnnotationsTeacher::new(sandbox));
            run_seed(&a, &problems, teacher, grader, &config)
        }
        TeacherKind::Lce => {
            let backend = a.backend.build(a.concurrency)?;
            let teacher = Arc::new(LceTeacher::new(backend, sandbox, solve));
            run_seed(&a, &problems, teacher, grader, &config)
        }
        TeacherKind::Chat => {
            let teacher = Arc::new(a.chat.teacher(&a.backend, a.concurrency, sandbox, &solve)?);
            run_seed(&a, &problems, teacher, grader, &config)
        }
    }
}

fn run_seed<T: Teacher>(
    a: &SeedArgs,
    problems: &[mathcoder_datasets::Problem],
    teacher: Arc<T>,
    grader: Arc<Grader>,
    config: &SeedConfig,
) -> Result<i32> {
    let (pb, progress) = bar("seeding");
    let start = std::time::Instant::now();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(mathcoder_data::seed::seed(
        problems, teacher, grader, config, progress,
    ))?;
    pb.finish_and_clear();
    let s = mathcoder_data::seed::stats(&a.out)?;
    let mut out = std::io::stdout().lock();
    let pct = |x: usize| 100.0 * x as f64 / s.attempts.max(1) as f64;
    writeln!(
        out,
        "{}: {} attempts on {} problems in {:.1} s",
        config.source,
        s.attempts,
        s.problems,
        start.elapsed().as_secs_f64()
    )?;
    for o in [
        AttemptOutcome::Kept,
        AttemptOutcome::Wrong,
        AttemptOutcome::Filtered,
        AttemptOutcome::Duplicate,
        AttemptOutcome::Unconverted,
        AttemptOutcome::Failed,
    ] {
        let n = s.count(o);
        writeln!(
            out,
            "  {:<12} {n:>6} ({:.2}%)",
            format!("{o:?}").to_lowercase(),
            pct(n)
        )?;
    }
    writeln!(
        out,
        "  problems with a kept solution: {}/{}; per kept solution {:.2} blocks, {:.2} code blocks",
        s.problems_solved, s.problems, s.mean_blocks, s.mean_code_blocks
    )?;
    writeln!(
        out,
        "  data: {}  attempts: {}",
        mathcoder_data::seed::data_path(&a.out).display(),
        mathcoder_data::seed::attempts_path(&a.out).display()
    )?;
    Ok(0)
}

fn merge(a: MergeArgs) -> Result<i32> {
    let config = MergeConfig::default();
    let tests = TestSets::bundled(&config)?;
    let report = mathcoder_data::merge::merge(&a.files, &a.out, &tests, &config)?;
    let mut out = std::io::stdout().lock();
    let shown = if a.verbose { usize::MAX } else { 20 };
    for r in report.removed.iter().take(shown) {
        writeln!(
            out,
            "removed {}:{} ({} {}): {}",
            r.file.display(),
            r.line,
            r.source,
            r.problem_id,
            r.reason
        )?;
    }
    if report.removed.len() > shown {
        writeln!(
            out,
            "... and {} more (--verbose lists them all)",
            report.removed.len() - shown
        )?;
    }
    let (c, dp, ds, m) = report.counts();
    writeln!(
        out,
        "read {} records, kept {}, removed {} ({c} test-set problems against {} test problems, {dp} duplicate problems, {ds} duplicate solutions, {m} malformed) -> {}",
        report.read,
        report.kept,
        report.removed.len(),
        tests.len(),
        a.out.display()
    )?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct StatsArgs {
    /// A run directory of `seed` or `distill` (attempts and kept solutions), or a training file
    /// (kept solutions only).
    path: PathBuf,
    /// Count tokens with this tokenizer.json (default: whitespace words of the blocks).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Print the rows as JSON.
    #[arg(long)]
    json: bool,
}

/// Tokens under `tokenizer` (MathCoder's tokens added when it lacks them, so each counts one),
/// or whitespace words without one.
fn token_unit(tokenizer: Option<&std::path::Path>) -> Result<Tokens> {
    let Some(path) = tokenizer else {
        return Ok(Tokens::Words);
    };
    let (tok, _) = mathcoder_train::tokenize::TrainTokenizer::load(path)?;
    let tok = Arc::new(tok);
    Ok(Tokens::Tokenizer {
        name: path.display().to_string(),
        count: Arc::new(move |s: &str| tok.encode(s).map(|v| v.len()).map_err(|e| e.to_string())),
    })
}

fn stats(a: StatsArgs) -> Result<i32> {
    if !a.path.exists() {
        bail!("{} does not exist", a.path.display());
    }
    let tokens = token_unit(a.tokenizer.as_deref())?;
    let report = mathcoder_data::stats::stats(&a.path, &tokens)?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(0);
    }
    let opt = |x: Option<usize>| x.map_or("-".to_string(), |x| x.to_string());
    writeln!(
        out,
        "{:<16} {:<30} {:>9} {:>7} {:>7} {:>7} {:>7} {:>7} {:>9} {:>13}",
        "source",
        "group",
        "attempted",
        "draws",
        "solved",
        "kept",
        "blocks",
        "code",
        "tokens",
        "teacher tok"
    )?;
    for r in &report.rows {
        writeln!(
            out,
            "{:<16} {:<30} {:>9} {:>7} {:>7} {:>7} {:>7.2} {:>7.2} {:>9.1} {:>13}",
            r.source,
            if r.group.is_empty() { "all" } else { &r.group },
            opt(r.attempted),
            opt(r.draws),
            r.solved,
            r.kept,
            r.blocks_per_solution,
            r.code_blocks_per_solution,
            r.tokens_per_solution,
            r.teacher_tokens.map_or("-".to_string(), |t| t.to_string())
        )?;
    }
    writeln!(
        out,
        "blocks, code and tokens are per kept solution; tokens are {}",
        report.token_unit
    )?;
    Ok(0)
}

/// The teacher's backend flags with the implicit choices made (an LCE teacher given no
/// backend, model or endpoint is MathCoder-S on the native engine, as for `solve` and `eval`;
/// a chat teacher is never MathCoder-S, which is no chat model); and if nothing listens where
/// the teacher should be, the error at once, before the sandbox is prepared.
fn teacher_backend(
    teacher: TeacherKind,
    backend: &BackendArgs,
    sandbox: &SandboxArgs,
    concurrency: usize,
) -> Result<BackendArgs> {
    Ok(match teacher {
        TeacherKind::Lce => {
            let b = backend.resolve(sandbox)?;
            b.spec(concurrency).check_listening()?;
            b
        }
        TeacherKind::Chat => {
            backend.spec(concurrency).check_chat_listening()?;
            backend.clone()
        }
        TeacherKind::Annotations => backend.clone(),
    })
}
