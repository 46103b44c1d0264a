//! Summaries of a results file: accuracy, maj@k and pass@k over samples, stop reasons, timings.

use mathcoder_grade::{Dataset, Grader};
use serde::Serialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `summary.json`.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub dataset: String,
    pub backend: String,
    pub problems: usize,
    pub samples: usize,
    pub records: usize,
    pub correct: usize,
    /// Accuracy over all records (= greedy accuracy with one sample).
    pub accuracy: f64,
    /// With several samples per problem: majority vote over extracted answers.
    pub maj_at_k: Option<f64>,
    /// With several samples: at least one correct sample.
    pub pass_at_k: Option<f64>,
    /// Unbiased pass@1 estimate (mean per-problem sample accuracy).
    pub pass_at_1: Option<f64>,
    pub failed: usize,
    pub stop_reasons: BTreeMap<String, usize>,
    pub mean_model_blocks: f64,
    pub mean_total_ms: f64,
    pub mean_generate_ms: f64,
    pub mean_execute_ms: f64,
    /// Agreement with recorded outputs (`--reference`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<crate::reference::Comparison>,
}

/// Summarises `results.jsonl`.
pub fn summarize(
    path: &Path,
    dataset: &str,
    backend: &str,
    conventions: Dataset,
    grader: &Grader,
) -> std::io::Result<Summary> {
    let text = std::fs::read_to_string(path)?;
    let mut by_problem: HashMap<String, Vec<(Option<String>, bool)>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let (mut records, mut correct, mut failed) = (0usize, 0usize, 0usize);
    let mut stops: BTreeMap<String, usize> = BTreeMap::new();
    let (mut blocks, mut total, mut gen, mut exec) = (0.0, 0.0, 0.0, 0.0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let m = &v["mathcoder"];
        records += 1;
        let ok = m["correct"].as_bool().unwrap_or(false);
        correct += ok as usize;
        failed += m["failed"].as_bool().unwrap_or(false) as usize;
        *stops
            .entry(m["stop"].as_str().unwrap_or("unknown").to_string())
            .or_insert(0) += 1;
        blocks += m["model_blocks"].as_f64().unwrap_or(0.0);
        total += m["total_ms"].as_f64().unwrap_or(0.0);
        gen += m["generate_ms"].as_f64().unwrap_or(0.0);
        exec += m["execute_ms"].as_f64().unwrap_or(0.0);
        let id = v["id"].as_str().unwrap_or("").to_string();
        if !by_problem.contains_key(&id) {
            order.push(id.clone());
        }
        by_problem
            .entry(id)
            .or_default()
            .push((m["extracted"].as_str().map(String::from), ok));
    }
    let problems = by_problem.len();
    let samples = by_problem.values().map(Vec::len).max().unwrap_or(0);
    let d = records.max(1) as f64;
    let (maj, pass, pass1) = if samples > 1 {
        let (mut maj_ok, mut pass_ok, mut p1) = (0usize, 0usize, 0.0);
        for id in &order {
            let s = &by_problem[id];
            pass_ok += s.iter().any(|(_, ok)| *ok) as usize;
            p1 += s.iter().filter(|(_, ok)| *ok).count() as f64 / s.len() as f64;
            maj_ok += majority_correct(s, conventions, grader) as usize;
        }
        let n = problems.max(1) as f64;
        (
            Some(maj_ok as f64 / n),
            Some(pass_ok as f64 / n),
            Some(p1 / n),
        )
    } else {
        (None, None, None)
    };
    Ok(Summary {
        dataset: dataset.to_string(),
        backend: backend.to_string(),
        problems,
        samples,
        records,
        correct,
        accuracy: correct as f64 / d,
        maj_at_k: maj,
        pass_at_k: pass,
        pass_at_1: pass1,
        failed,
        stop_reasons: stops,
        mean_model_blocks: blocks / d,
        mean_total_ms: total / d,
        mean_generate_ms: gen / d,
        mean_execute_ms: exec / d,
        reference: None,
    })
}

/// Majority vote: samples are grouped by equivalent extracted answers; the largest group (ties:
/// the earliest) decides, and it is correct if its members were graded correct.
fn majority_correct(
    samples: &[(Option<String>, bool)],
    conventions: Dataset,
    grader: &Grader,
) -> bool {
    let mut groups: Vec<(String, usize, bool)> = Vec::new();
    for (ans, ok) in samples {
        let Some(a) = ans else { continue };
        match groups
            .iter_mut()
            .find(|(rep, _, _)| rep == a || grader.equivalent(conventions, rep, a).correct)
        {
            Some(g) => g.1 += 1,
            None => groups.push((a.clone(), 1, *ok)),
        }
    }
    let mut best: Option<&(String, usize, bool)> = None;
    for g in &groups {
        if best.is_none_or(|b| g.1 > b.1) {
            best = Some(g);
        }
    }
    best.is_some_and(|b| b.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mathcoder_grade::GradeOptions;

    #[test]
    fn majority_and_pass_at_k() {
        let rows = [
            ("p1", 0, "5", true),
            ("p1", 1, "5.0", true),
            ("p1", 2, "6", false),
            ("p2", 0, "1", false),
            ("p2", 1, "2", false),
            ("p2", 2, "3", true),
        ];
        let mut text = String::new();
        for (id, s, ans, ok) in rows {
            text.push_str(
                &serde_json::json!({"id": id, "mathcoder": {"sample": s, "extracted": ans, "correct": ok, "failed": false, "stop": "end_of_message", "model_blocks": 4, "total_ms": 10.0}})
                    .to_string(),
            );
            text.push('\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.jsonl");
        std::fs::write(&path, text).unwrap();
        let g = Grader::new(GradeOptions::default());
        let s = summarize(&path, "d", "b", Dataset::Generic, &g).unwrap();
        assert_eq!((s.problems, s.samples, s.records, s.correct), (2, 3, 6, 3));
        assert_eq!(s.maj_at_k, Some(0.5));
        assert_eq!(s.pass_at_k, Some(1.0));
        assert_eq!(s.pass_at_1, Some(0.5));
        assert_eq!(s.mean_model_blocks, 4.0);
        assert_eq!(s.stop_reasons["end_of_message"], 6);
    }
}
