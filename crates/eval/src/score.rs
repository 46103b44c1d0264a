//! Grading the records of output files.

use mathcoder_datasets::{math_levels, math_subject};
use mathcoder_grade::{Dataset, Grader, Verdict};
use mathcoder_lce::record::{Numbered, OutputRecord};
use mathcoder_lce::run::read_run_records;
use mathcoder_lce::{BlockKind, RunRecord};
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::EvalError;

/// What the authors' file name says about its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthorsSplit {
    /// `...-correct.jsonl`: the authors graded every record correct.
    Correct,
    /// `...-wrong.jsonl`: the authors graded every record wrong.
    Wrong,
}

impl AuthorsSplit {
    /// Reads the split from a file name, with the name's stem without the split suffix.
    pub fn from_path(path: &Path) -> Option<(AuthorsSplit, String)> {
        let name = path.file_name()?.to_str()?;
        let base = name.trim_end_matches(".gz").trim_end_matches(".jsonl");
        if let Some(stem) = base.strip_suffix("-correct") {
            return Some((AuthorsSplit::Correct, stem.to_string()));
        }
        if let Some(stem) = base.strip_suffix("-wrong") {
            return Some((AuthorsSplit::Wrong, stem.to_string()));
        }
        None
    }
    pub fn is_correct(self) -> bool {
        self == AuthorsSplit::Correct
    }
}

/// Per-solution statistics, as the authors' evaluation reported them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct SolutionStats {
    /// Assistant blocks (text + code + execution).
    pub blocks: u32,
    pub code_blocks: u32,
    /// Executions whose output is a Python traceback (the authors' error count).
    pub errors: u32,
    /// Characters of the assistant's blocks.
    pub chars: u32,
}

impl SolutionStats {
    pub fn of(r: &OutputRecord) -> SolutionStats {
        let mut s = SolutionStats::default();
        for b in r.blocks() {
            s.blocks += 1;
            s.chars += b.content.chars().count() as u32;
            match b.kind {
                BlockKind::Code => s.code_blocks += 1,
                BlockKind::Execution if is_error_execution(&b.content) => s.errors += 1,
                _ => {}
            }
        }
        s
    }
}

/// Whether an execution block's output is an error (the authors' error count): a Python
/// traceback, or IPython's form of one without the "Traceback" header (syntax errors).
pub fn is_error_execution(s: &str) -> bool {
    s.contains("Traceback (most recent call last)")
        || s.starts_with("Cell In[")
        || s.lines().last().is_some_and(|l| {
            let head = l.split(':').next().unwrap_or("");
            head.ends_with("Error") && !head.contains(' ')
        })
}

/// One graded record.
#[derive(Clone, Debug, Serialize)]
pub struct ScoredRecord {
    /// 1-based line in its file.
    pub line: usize,
    pub id: Option<String>,
    pub subject: Option<String>,
    pub level: Option<u8>,
    pub verdict: Verdict,
    pub stats: SolutionStats,
}

/// A graded output file.
#[derive(Clone, Debug)]
pub struct FileScore {
    pub path: PathBuf,
    pub dataset: Dataset,
    pub split: Option<AuthorsSplit>,
    pub records: Vec<ScoredRecord>,
    /// Records graded here (the others carried their verdict from the run that wrote them).
    pub graded: usize,
}

impl FileScore {
    pub fn correct(&self) -> usize {
        self.records.iter().filter(|r| r.verdict.correct).count()
    }
}

/// Where verdicts come from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Grading {
    /// A record graded when it was written (our run records) keeps its verdict; the others
    /// (the authors' files) are graded now.
    #[default]
    Stored,
    /// Every record is graded again.
    Regrade,
}

/// Reads and grades one output file. `dataset` overrides detection from the path (or, for our
/// run records, from the dataset they name). `progress` is called with the number of records
/// scored since the last call.
pub fn score_file(
    path: &Path,
    dataset: Option<Dataset>,
    grader: &Grader,
    grading: Grading,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FileScore, EvalError> {
    let records = read_run_records(path)?;
    score_records(path, records, dataset, grader, grading, progress)
}

/// Scores records already read from `path` (see [`score_file`]).
pub fn score_records(
    path: &Path,
    records: Vec<Numbered<RunRecord>>,
    dataset: Option<Dataset>,
    grader: &Grader,
    grading: Grading,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FileScore, EvalError> {
    let dataset = match dataset {
        Some(d) => d,
        None => Dataset::from_path(&path.to_string_lossy())
            .or_else(|| {
                let run = records.first()?.record.run.as_ref()?;
                Dataset::from_name(&run.dataset)
            })
            .ok_or_else(|| EvalError::UnknownDataset(path.to_path_buf()))?,
    };
    let levels = (dataset == Dataset::Math).then(math_levels);
    let graded = AtomicUsize::new(0);
    let scored: Vec<ScoredRecord> = records
        .par_iter()
        .map(|n| {
            let r = &n.record.record;
            let gold = r.ground_truth.answer_text();
            let verdict = match (grading, n.record.verdict()) {
                (Grading::Stored, Some(v)) => Verdict {
                    correct: v.correct,
                    gold,
                    extracted: v.extracted.clone(),
                    extraction: None,
                    rule: None,
                    reason: v.reason.clone(),
                },
                _ => {
                    graded.fetch_add(1, Ordering::Relaxed);
                    grader.grade(dataset, &gold, &r.completion, Some(&r.question()))
                }
            };
            let id = r.id_text();
            let run = n.record.run.as_ref();
            let (subject, level) = match (&id, levels) {
                (Some(id), Some(levels)) => (math_subject(id), levels.get(id).copied()),
                _ => (
                    run.and_then(|m| m.subject.clone()),
                    run.and_then(|m| m.level),
                ),
            };
            progress(1);
            ScoredRecord {
                line: n.line,
                id,
                subject,
                level,
                verdict,
                stats: SolutionStats::of(r),
            }
        })
        .collect();
    Ok(FileScore {
        path: path.to_path_buf(),
        dataset,
        split: AuthorsSplit::from_path(path).map(|(s, _)| s),
        records: scored,
        graded: graded.into_inner(),
    })
}

/// Counts the records of a file without grading them (for progress totals).
pub fn count_records(path: &Path) -> Result<usize, EvalError> {
    let text = mathcoder_lce::record::read_to_string_maybe_gz(path)?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}
