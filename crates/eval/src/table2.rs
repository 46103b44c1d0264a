//! The paper's Table 2 and its reproduction from released outputs.

use mathcoder_grade::{Dataset, Grader};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::report::{group_runs, Agreement};
use crate::score::{score_file, FileScore, Grading};
use crate::EvalError;

/// Datasets of Table 2, in column order.
pub const COLUMNS: [Dataset; 5] = [
    Dataset::Gsm8k,
    Dataset::Math,
    Dataset::Svamp,
    Dataset::Mathematics,
    Dataset::SimulEq,
];

/// Table 2 of the paper (accuracy %): MathCoder rows, columns as [`COLUMNS`].
pub const PAPER: [(&str, [f64; 5]); 6] = [
    ("MathCoder-L-7B", [64.2, 23.3, 71.5, 46.9, 47.5]),
    ("MathCoder-L-13B", [72.6, 29.9, 76.9, 54.7, 62.3]),
    ("MathCoder-L-70B", [83.9, 45.1, 84.9, 74.4, 77.0]),
    ("MathCoder-CL-7B", [67.8, 30.2, 70.7, 55.8, 49.6]),
    ("MathCoder-CL-13B", [74.1, 35.9, 78.0, 62.5, 60.7]),
    ("MathCoder-CL-34B", [81.7, 45.2, 82.5, 75.9, 65.8]),
];

/// The paper's number for a model and dataset.
pub fn paper_value(model: &str, d: Dataset) -> Option<f64> {
    let col = COLUMNS.iter().position(|c| *c == d)?;
    PAPER.iter().find(|(m, _)| *m == model).map(|(_, v)| v[col])
}

fn column_label(d: Dataset) -> &'static str {
    match d {
        Dataset::Gsm8k => "GSM8K",
        Dataset::Math => "MATH",
        Dataset::Svamp => "SVAMP",
        Dataset::Mathematics => "Mathematics",
        Dataset::SimulEq => "SimulEq",
        _ => "other",
    }
}

/// The canonical model name in a path (`.../MathCoder-L-7b/...` -> `MathCoder-L-7B`).
pub fn model_from_path(path: &Path) -> Option<String> {
    for comp in path.components().rev() {
        let s = comp.as_os_str().to_string_lossy();
        let l = s.to_ascii_lowercase();
        if let Some(rest) = l.strip_prefix("mathcoder-") {
            let (family, size) = rest.split_once('-')?;
            let size = size.trim_end_matches('b');
            if (family == "l" || family == "cl")
                && !size.is_empty()
                && size.chars().all(|c| c.is_ascii_digit())
            {
                return Some(format!("MathCoder-{}-{}B", family.to_uppercase(), size));
            }
        }
    }
    None
}

/// Every `*.jsonl` / `*.jsonl.gz` file under `dir`, sorted ([`mathcoder_lce::files`]); none
/// is an error.
pub fn find_output_files(dir: &Path) -> Result<Vec<PathBuf>, EvalError> {
    let out = mathcoder_lce::files::record_files_under(dir)?;
    if out.is_empty() {
        return Err(EvalError::NoFiles(dir.to_path_buf()));
    }
    Ok(out)
}

/// One reproduced cell.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub model: String,
    pub dataset: String,
    pub paper: Option<f64>,
    /// The authors' accuracy from their correct/wrong split of these outputs.
    pub authors: Option<f64>,
    pub ours: f64,
    pub records: usize,
    pub benchmark_size: usize,
    pub agreement: Option<Agreement>,
}

impl Cell {
    /// Ours minus the paper, in points.
    pub fn delta(&self) -> Option<f64> {
        self.paper.map(|p| self.ours - p)
    }
}

/// Grades every output file under `dir` and returns one cell per (model, dataset), in the
/// paper's row and column order.
pub fn reproduce(
    dir: &Path,
    grader: &Grader,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Vec<Cell>, EvalError> {
    let files = find_output_files(dir)?;
    let mut scores: Vec<FileScore> = Vec::new();
    for f in &files {
        scores.push(score_file(f, None, grader, Grading::Stored, progress)?);
    }
    let mut cells = Vec::new();
    for (run, idx) in group_runs(&scores) {
        let model = model_from_path(&run.files[0]).unwrap_or_else(|| "unknown".into());
        let files: Vec<&FileScore> = idx.iter().map(|&i| &scores[i]).collect();
        let size = run.benchmark_size.unwrap_or(run.total).max(run.total);
        cells.push(Cell {
            paper: paper_value(&model, run.dataset),
            authors: run.authors_accuracy(&files).map(|a| 100.0 * a),
            ours: 100.0 * run.benchmark_accuracy(),
            records: run.total,
            benchmark_size: size,
            agreement: run.agreement,
            dataset: column_label(run.dataset).to_string(),
            model,
        });
    }
    let row = |m: &str| {
        PAPER
            .iter()
            .position(|(p, _)| *p == m)
            .unwrap_or(usize::MAX)
    };
    let col = |d: &str| {
        COLUMNS
            .iter()
            .position(|c| column_label(*c) == d)
            .unwrap_or(usize::MAX)
    };
    cells.sort_by_key(|c| (row(&c.model), col(&c.dataset)));
    Ok(cells)
}

/// Renders the cells as a table.
pub fn render(cells: &[Cell], protocol: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "MathCoder Table 2, reproduced from released outputs (accuracy %, grading protocol: {protocol})");
    let _ = writeln!(
        out,
        "{:<18} {:<12} {:>7} {:>9} {:>7} {:>8} {:>10} {:>11}",
        "model", "dataset", "paper", "authors", "ours", "Δ paper", "agreement", "records"
    );
    let fmt = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut total = Agreement::default();
    let mut worst: f64 = 0.0;
    for c in cells {
        if let Some(a) = &c.agreement {
            total.add(a);
        }
        if let Some(d) = c.delta() {
            worst = worst.max(d.abs());
        }
        let _ = writeln!(
            out,
            "{:<18} {:<12} {:>7} {:>9} {:>7.1} {:>8} {:>10} {:>11}",
            c.model,
            c.dataset,
            fmt(c.paper),
            fmt(c.authors),
            c.ours,
            c.delta().map_or("-".into(), |d| format!("{d:+.1}")),
            c.agreement
                .map_or("-".into(), |a| format!("{:.2}%", 100.0 * a.rate())),
            if c.records == c.benchmark_size {
                format!("{}", c.records)
            } else {
                format!("{}/{}", c.records, c.benchmark_size)
            }
        );
    }
    let _ = writeln!(
        out,
        "\nlargest |ours - paper|: {worst:.1} points over {} cells; agreement with the authors' verdicts: {:.2}% ({} of {} records)",
        cells.iter().filter(|c| c.paper.is_some()).count(),
        100.0 * total.rate(),
        total.agree,
        total.records
    );
    if cells.iter().any(|c| c.records < c.benchmark_size) {
        let _ = writeln!(out, "records a/b: only the authors' -correct file is available; the b-a missing problems count as wrong.");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names() {
        assert_eq!(
            model_from_path(Path::new(
                "data/released-outputs/MathCoder-CL-13b/SVAMP/x.jsonl.gz"
            ))
            .as_deref(),
            Some("MathCoder-CL-13B")
        );
        assert_eq!(model_from_path(Path::new("a/b/c.jsonl")), None);
        assert_eq!(paper_value("MathCoder-L-7B", Dataset::Math), Some(23.3));
    }
}
