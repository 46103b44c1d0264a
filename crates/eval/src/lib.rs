//! Scoring model outputs: accuracy per file, the MATH subject x level table, the authors' extra
//! statistics, agreement with the authors' own verdicts, and the paper's Table 2.
//!
//! This crate sits at the end of the data flow (answer -> grade -> report). It reads output
//! files in the authors' format and never generates or executes anything.

pub mod report;
pub mod score;
pub mod stats;
pub mod table2;

use std::path::PathBuf;

pub use report::{
    group_runs, render_text, Agreement, FileSummary, MathTable, RunReport, VerdictLine,
};
pub use score::{
    score_file, score_records, AuthorsSplit, FileScore, Grading, ScoredRecord, SolutionStats,
};
pub use stats::{mcnemar_exact, paired, wilson95, PairError, Paired};

/// Errors scoring files.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error(transparent)]
    Record(#[from] mathcoder_lce::RecordError),
    #[error(transparent)]
    RunRecord(#[from] mathcoder_lce::run::RunRecordError),
    #[error("cannot tell which dataset {0} is from its path; pass --dataset")]
    UnknownDataset(PathBuf),
    #[error("no output files (*.jsonl, *.jsonl.gz) under {0}")]
    NoFiles(PathBuf),
    #[error(transparent)]
    Files(#[from] mathcoder_lce::FilesError),
}
