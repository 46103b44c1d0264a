pub mod bench;
pub mod bench_engine;
pub mod bench_runtime;
pub mod compare;
pub mod datasets;
pub mod engine;
pub mod grade;
pub mod run;
pub mod sandbox;
pub mod table2;

use clap::ValueEnum;
use mathcoder_grade::{ApproxPolicy, GradeOptions, MultiAnswer, Protocol};
use std::path::PathBuf;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Grading options shared by commands.
#[derive(clap::Args, Debug, Clone)]
pub struct GradeArgs {
    /// Grading protocol: `default` (our rules) or `paper` (the paper's conventions, e.g. a
    /// multi-value SimulEq answer counts wrong; needed to reproduce Table 2).
    #[arg(long, default_value = "default", value_parser = ["default", "paper"])]
    pub protocol: String,
    /// How a decimal answer compares with an exact gold: `precision` (accept a correct rounding
    /// to the decimal's own places) or `exact` (MATH convention: never).
    #[arg(long, value_parser = ["precision", "exact"])]
    pub approx: Option<String>,
    /// SimulEq multi-value answers: `first` (compare the first value) or `reject`.
    #[arg(long, value_parser = ["first", "reject"])]
    pub multi_answer: Option<String>,
}

impl GradeArgs {
    pub fn options(&self) -> GradeOptions {
        let mut o = Protocol::from_name(&self.protocol)
            .unwrap_or_default()
            .options();
        if let Some(a) = &self.approx {
            o.approx = if a == "exact" {
                ApproxPolicy::Exact
            } else {
                ApproxPolicy::Precision
            };
        }
        if let Some(m) = &self.multi_answer {
            o.multi_answer = if m == "reject" {
                MultiAnswer::Reject
            } else {
                MultiAnswer::First
            };
        }
        o
    }
}

/// The vendored data directory: `$MATHCODER_DATA`, `./data`, or the one next to the sources
/// this binary was built from.
pub fn data_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("MATHCODER_DATA") {
        return Some(PathBuf::from(d));
    }
    let local = PathBuf::from("data");
    if local.join("released-outputs").is_dir() {
        return Some(local);
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data"));
    built.join("released-outputs").is_dir().then_some(built)
}
