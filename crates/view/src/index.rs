//! The server-side index: every input read once, graded once, kept in memory.
//!
//! Inputs are found with `lce`'s walker ([`mathcoder_lce::record_files`]) and told apart by the
//! fields of their first line: output records (`debug_result`: our run records and the authors'
//! released outputs, `-correct`/`-wrong` pairs read as one run through `eval`'s grouping),
//! training records (`messages` with an assistant message: MathCodeInstruct), training logs
//! (`step` and `loss`: `train`'s `log.jsonl`). Anything else is listed as skipped, with why.

use mathcoder_eval::score::is_error_execution;
use mathcoder_eval::{group_runs, score_records, FileScore, Grading, RunReport, SolutionStats};
use mathcoder_grade::{Dataset, GradeOptions, Grader};
use mathcoder_lce::record::{open_maybe_gz, Numbered};
use mathcoder_lce::run::read_run_records;
use mathcoder_lce::{Block, BlockKind, RunRecord};
use mathcoder_runner::aggregate::{summarize, Summary};
use mathcoder_sandbox::audit::Difference;
use mathcoder_sandbox::render::TIMEOUT_MESSAGE;
use mathcoder_train::tokenize::TrainTokenizer;
use mathcoder_train::{Conversation, MaskOptions, StepLog};
use serde::Serialize;
use std::io::BufRead;
use std::path::{Path, PathBuf};

use crate::ViewError;

/// How the index is built.
#[derive(Clone, Debug, Default)]
pub struct IndexOptions {
    /// Dataset conventions to grade with (default: detected from each path or record).
    pub dataset: Option<Dataset>,
    pub grade: GradeOptions,
    /// A model directory (or `tokenizer.json`) whose tokenizer shows training records' tokens
    /// with their loss mask.
    pub tokenizer: Option<PathBuf>,
    pub mask: MaskOptions,
}

/// What a file holds, from its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Outputs,
    Training,
    Log,
    /// `mathcoder audit --differences FILE`: differing cells.
    Audit,
    Unknown,
}

/// Reads the first non-blank line of `path` and names its kind.
pub fn classify(path: &Path) -> Result<FileKind, ViewError> {
    let mut r = open_maybe_gz(path)?;
    let mut line = String::new();
    loop {
        line.clear();
        let n = r.read_line(&mut line).map_err(|source| ViewError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if n == 0 {
            return Ok(FileKind::Unknown);
        }
        if !line.trim().is_empty() {
            break;
        }
    }
    let Ok(serde_json::Value::Object(o)) = serde_json::from_str::<serde_json::Value>(&line) else {
        return Ok(FileKind::Unknown);
    };
    Ok(if o.contains_key("debug_result") {
        FileKind::Outputs
    } else if o.contains_key("messages") {
        FileKind::Training
    } else if o.contains_key("step") && o.contains_key("loss") {
        FileKind::Log
    } else if ["cell", "class", "ours", "recorded"]
        .iter()
        .all(|k| o.contains_key(*k))
    {
        FileKind::Audit
    } else {
        FileKind::Unknown
    })
}

/// Timings of a run record (totals: records keep no per-round split).
#[derive(Clone, Debug, Serialize)]
pub struct Timings {
    pub rounds: usize,
    pub generated_tokens: u64,
    pub total_ms: f64,
    pub generate_ms: f64,
    pub execute_ms: f64,
    pub backend: String,
}

/// One solution of a run.
#[derive(Clone, Debug)]
pub struct Problem {
    /// Index in its run.
    pub n: usize,
    /// Index into the run's files, and 1-based line there.
    pub file: usize,
    pub line: usize,
    pub id: String,
    pub sample: usize,
    pub question: String,
    pub gold: String,
    pub extracted: Option<String>,
    pub correct: bool,
    pub reason: String,
    /// The authors' verdict, from their `-correct`/`-wrong` file name.
    pub authors: Option<bool>,
    /// Stop reason label (`None` for the authors' records, which do not say).
    pub stop: Option<String>,
    pub stop_detail: Option<String>,
    pub dataset: String,
    pub subject: Option<String>,
    pub level: Option<u8>,
    pub blocks: Vec<Block>,
    pub stats: SolutionStats,
    pub timed_out: bool,
    pub timings: Option<Timings>,
    /// Lower-cased question and block texts, for text search.
    pub haystack: String,
}

impl Problem {
    /// The key two runs are matched on: the id and sample, or the question when there is no id.
    pub fn key(&self) -> String {
        if self.id.is_empty() {
            format!("q:{}", self.question.trim())
        } else {
            format!("{}#{}", self.id, self.sample)
        }
    }
}

/// Whether an execution block is a timed-out execution.
pub fn is_timeout(b: &Block) -> bool {
    b.kind == BlockKind::Execution && b.content.contains(TIMEOUT_MESSAGE)
}

/// Whether a block is an execution whose output is an error (`eval`'s rule).
pub fn is_traceback(b: &Block) -> bool {
    b.kind == BlockKind::Execution && is_error_execution(&b.content)
}

/// One run: a file, or an authors' `-correct`/`-wrong` pair.
pub struct Run {
    pub name: String,
    pub files: Vec<PathBuf>,
    /// `eval`'s report (accuracy, statistics, the MATH subject x level table `grade` prints).
    pub report: RunReport,
    /// `runner`'s summary, for our run records (stop reasons, timings, maj@k).
    pub summary: Option<Summary>,
    pub problems: Vec<Problem>,
}

/// A training data file (MathCodeInstruct format, or released outputs used as training data).
pub struct TrainingFile {
    pub path: PathBuf,
    pub conversations: Vec<Conversation>,
    /// `mathcoder data stats` of the file, or of its `data seed`/`distill` run directory when
    /// the file is that run's `data.jsonl` (then with attempts, draws and teacher tokens).
    pub stats: mathcoder_data::stats::Report,
}

/// A training run's `log.jsonl`.
pub struct TrainLog {
    pub path: PathBuf,
    pub steps: Vec<StepLog>,
}

/// An audit's differing cells (`mathcoder audit --differences FILE`).
pub struct AuditFile {
    pub path: PathBuf,
    pub differences: Vec<Difference>,
}

/// Everything the server shows.
pub struct Index {
    pub runs: Vec<Run>,
    pub training: Vec<TrainingFile>,
    pub logs: Vec<TrainLog>,
    pub audits: Vec<AuditFile>,
    /// Files that were not recognised, with why.
    pub skipped: Vec<(PathBuf, String)>,
    pub tokenizer: Option<TrainTokenizer>,
    pub mask: MaskOptions,
}

impl Index {
    /// Reads and grades everything under `paths`; runs, training files and logs keep the order
    /// of `paths`.
    pub fn build<P: AsRef<Path>>(paths: &[P], opts: &IndexOptions) -> Result<Index, ViewError> {
        // In the order given (each path's files sorted), each file once.
        let mut files: Vec<PathBuf> = Vec::new();
        for p in paths {
            for f in mathcoder_lce::record_files(std::slice::from_ref(&p.as_ref()))? {
                if !files.contains(&f) {
                    files.push(f);
                }
            }
        }
        if files.is_empty() {
            let first = paths
                .first()
                .map(|p| p.as_ref().to_path_buf())
                .unwrap_or_default();
            return Err(ViewError::Empty(first));
        }
        let grader = Grader::new(opts.grade.clone());
        let mut scores: Vec<FileScore> = Vec::new();
        let mut records: Vec<Vec<Numbered<RunRecord>>> = Vec::new();
        let mut training = Vec::new();
        let mut logs = Vec::new();
        let mut audits = Vec::new();
        let mut skipped = Vec::new();
        for f in files {
            match classify(&f)? {
                FileKind::Outputs => {
                    let recs = read_run_records(&f)?;
                    let score = score_records(
                        &f,
                        recs.clone(),
                        opts.dataset,
                        &grader,
                        Grading::Stored,
                        &|_| {},
                    )?;
                    scores.push(score);
                    records.push(recs);
                }
                FileKind::Training => {
                    let conversations = mathcoder_train::read_conversations(&f)?;
                    let run_dir = f
                        .parent()
                        .filter(|d| mathcoder_data::seed::data_path(d) == f)
                        .filter(|d| mathcoder_data::seed::attempts_path(d).exists());
                    let stats = mathcoder_data::stats::stats(
                        run_dir.unwrap_or(&f),
                        &mathcoder_data::quality::Tokens::Words,
                    )?;
                    training.push(TrainingFile {
                        path: f,
                        conversations,
                        stats,
                    });
                }
                FileKind::Log => {
                    let steps = mathcoder_lce::record::read_jsonl::<StepLog>(&f)?
                        .into_iter()
                        .map(|n| n.record)
                        .collect();
                    logs.push(TrainLog { path: f, steps });
                }
                FileKind::Audit => {
                    let differences = mathcoder_lce::record::read_jsonl::<Difference>(&f)?
                        .into_iter()
                        .map(|n| n.record)
                        .collect();
                    audits.push(AuditFile {
                        path: f,
                        differences,
                    });
                }
                FileKind::Unknown
                    if f.parent().is_some_and(|d| {
                        mathcoder_data::seed::attempts_path(d) == f
                            && mathcoder_data::seed::data_path(d).exists()
                    }) =>
                {
                    skipped.push((
                        f,
                        "a data run's attempts: counted in its data.jsonl's report".to_string(),
                    ))
                }
                FileKind::Unknown => skipped.push((
                    f,
                    "not output records, training records, a training log or audit differences"
                        .to_string(),
                )),
            }
        }
        let mut runs = Vec::new();
        for (report, idx) in group_runs(&scores) {
            let mut problems = Vec::new();
            let mut run_records = Vec::new();
            for (fi, &i) in idx.iter().enumerate() {
                let score = &scores[i];
                let authors = score.split.map(|s| s.is_correct());
                for (scored, n) in score.records.iter().zip(&records[i]) {
                    problems.push(problem(
                        problems.len(),
                        fi,
                        scored,
                        &n.record,
                        authors,
                        score.dataset,
                    ));
                    run_records.push(n.record.clone());
                }
            }
            let summary = run_records.iter().find_map(|r| r.run.as_ref()).map(|info| {
                summarize(
                    &run_records,
                    &info.dataset,
                    &info.backend,
                    report.dataset,
                    &grader,
                )
            });
            runs.push(Run {
                name: report.name.clone(),
                files: idx.iter().map(|&i| scores[i].path.clone()).collect(),
                report,
                summary,
                problems,
            });
        }
        let tokenizer = match &opts.tokenizer {
            Some(p) => Some(TrainTokenizer::load(p)?.0),
            None => None,
        };
        Ok(Index {
            runs,
            training,
            logs,
            audits,
            skipped,
            tokenizer,
            mask: opts.mask,
        })
    }
}

fn problem(
    n: usize,
    file: usize,
    scored: &mathcoder_eval::ScoredRecord,
    rec: &RunRecord,
    authors: Option<bool>,
    dataset: Dataset,
) -> Problem {
    let r = &rec.record;
    let blocks = r.blocks();
    let question = r.question();
    let mut haystack = question.to_lowercase();
    for b in &blocks {
        haystack.push('\n');
        haystack.push_str(&b.content.to_lowercase());
    }
    let info = rec.run.as_ref();
    Problem {
        n,
        file,
        line: scored.line,
        id: rec.id(),
        sample: rec.sample(),
        question,
        gold: scored.verdict.gold.clone(),
        extracted: scored.verdict.extracted.clone(),
        correct: scored.verdict.correct,
        reason: scored.verdict.reason.clone(),
        authors,
        stop: info.map(|i| i.stop.label().to_string()),
        stop_detail: info.and_then(|i| match &i.stop {
            mathcoder_lce::StopReason::BackendError(d)
            | mathcoder_lce::StopReason::ExecutionFault(d) => Some(d.clone()),
            _ => None,
        }),
        dataset: info
            .map(|i| i.dataset.clone())
            .filter(|d| !d.is_empty())
            .unwrap_or_else(|| dataset.name().to_string()),
        subject: scored.subject.clone(),
        level: scored.level,
        timed_out: blocks.iter().any(is_timeout),
        stats: scored.stats,
        blocks,
        timings: info.map(|i| Timings {
            rounds: i.rounds,
            generated_tokens: i.generated_tokens,
            total_ms: i.total_ms,
            generate_ms: i.generate_ms,
            execute_ms: i.execute_ms,
            backend: i.backend.clone(),
        }),
        haystack,
    }
}
