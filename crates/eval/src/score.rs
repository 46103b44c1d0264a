//! Grading the records of output files.

use mathcoder_datasets::{math_levels, math_subject};
use mathcoder_grade::{Dataset, Grader, Verdict};
use mathcoder_lce::record::{read_jsonl, OutputRecord};
use mathcoder_lce::BlockKind;
use rayon::prelude::*;
use serde::Serialize;
use std::path::{Path, PathBuf};

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
                BlockKind::Execution
                    if b.content.contains("Traceback (most recent call last)")
                        || is_error_output(&b.content) =>
                {
                    s.errors += 1
                }
                _ => {}
            }
        }
        s
    }
}

/// IPython tracebacks of syntax errors have no "Traceback" header.
fn is_error_output(s: &str) -> bool {
    s.starts_with("Cell In[")
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
}

impl FileScore {
    pub fn correct(&self) -> usize {
        self.records.iter().filter(|r| r.verdict.correct).count()
    }
}

/// Reads and grades one output file. `dataset` overrides detection from the path.
/// `progress` is called with the number of records graded since the last call.
pub fn score_file(
    path: &Path,
    dataset: Option<Dataset>,
    grader: &Grader,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<FileScore, EvalError> {
    let dataset = match dataset {
        Some(d) => d,
        None => Dataset::from_path(&path.to_string_lossy())
            .ok_or_else(|| EvalError::UnknownDataset(path.to_path_buf()))?,
    };
    let records = read_jsonl::<OutputRecord>(path)?;
    let levels = (dataset == Dataset::Math).then(math_levels);
    let scored: Vec<ScoredRecord> = records
        .par_iter()
        .map(|n| {
            let r = &n.record;
            let question = r.question();
            let verdict = grader.grade(
                dataset,
                &r.ground_truth.answer_text(),
                &r.completion,
                Some(&question),
            );
            let id = r.id_text();
            let (subject, level) = match (&id, levels) {
                (Some(id), Some(levels)) => (math_subject(id), levels.get(id).copied()),
                _ => (None, None),
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
    })
}

/// Counts the records of a file without grading them (for progress totals).
pub fn count_records(path: &Path) -> Result<usize, EvalError> {
    let text = mathcoder_lce::record::read_to_string_maybe_gz(path)?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()).count())
}
