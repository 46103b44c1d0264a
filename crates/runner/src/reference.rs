//! Comparing a run with recorded outputs of the same model (the released MathCoder outputs, or an
//! earlier run): does each problem end with the same final answer, and with the same solution?

use mathcoder_grade::{extract, Dataset, Grader};
use mathcoder_lce::record::{read_jsonl, OutputRecord};
use mathcoder_lce::RunRecord;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;

/// How a run compares with its reference.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Comparison {
    /// Problems of the run found in the reference (by question text).
    pub matched: usize,
    /// Problems of the run not in the reference.
    pub unmatched: usize,
    /// Same extracted final answer (identical, or both without an answer).
    pub same_answer: usize,
    /// Different text but equivalent answers.
    pub equivalent_answer: usize,
    /// Every block identical (text, code and execution output).
    pub same_solution: usize,
    /// Problems whose answers differ: (id, ours, reference).
    pub differing: Vec<(String, Option<String>, Option<String>)>,
}

impl Comparison {
    pub fn same_answer_rate(&self) -> f64 {
        self.same_answer as f64 / self.matched.max(1) as f64
    }
}

fn normalize(q: &str) -> String {
    q.trim().to_string()
}

fn answer(completion: &str) -> Option<String> {
    extract(completion).ok().map(|e| e.answer)
}

/// Compares the run's records (first sample of each problem) with those of `reference`. Our
/// final answers are the ones stored in the records; the reference's are extracted.
pub fn compare(
    results: &[RunRecord],
    reference: &[PathBuf],
    conventions: Dataset,
    grader: &Grader,
) -> Result<Comparison, mathcoder_lce::RecordError> {
    let mut theirs: HashMap<String, OutputRecord> = HashMap::new();
    for f in reference {
        for n in read_jsonl::<OutputRecord>(f)? {
            theirs
                .entry(normalize(&n.record.question()))
                .or_insert(n.record);
        }
    }
    let mut c = Comparison::default();
    let mut seen = std::collections::HashSet::new();
    for r in results {
        let ours = &r.record;
        let q = normalize(&ours.question());
        if r.sample() != 0 || !seen.insert(q.clone()) {
            continue;
        }
        let Some(rec) = theirs.get(&q) else {
            c.unmatched += 1;
            continue;
        };
        c.matched += 1;
        let a = match r.verdict() {
            Some(v) => v.extracted.clone(),
            None => answer(&ours.completion),
        };
        let b = answer(&rec.completion);
        if a == b {
            c.same_answer += 1;
        } else {
            if let (Some(x), Some(y)) = (&a, &b) {
                if grader.equivalent(conventions, y, x).correct {
                    c.equivalent_answer += 1;
                }
            }
            c.differing.push((ours.id_text().unwrap_or_default(), a, b));
        }
        if ours.blocks() == rec.blocks() {
            c.same_solution += 1;
        }
    }
    Ok(c)
}
