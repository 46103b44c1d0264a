//! Summaries of a results file: accuracy, maj@k and pass@k over samples, stop reasons, timings.

use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{RunInfo, RunRecord};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

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
    /// Its 95% Wilson interval (absent with no records).
    pub accuracy_ci95: Option<(f64, f64)>,
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

/// Summarises the records of a run (as [`crate::read_results`] reads them), from the verdicts
/// stored in them: nothing is graded again.
pub fn summarize(
    records: &[RunRecord],
    dataset: &str,
    backend: &str,
    conventions: Dataset,
    grader: &Grader,
) -> Summary {
    let mut by_problem: HashMap<String, Vec<(Option<String>, bool)>> = HashMap::new();
    let mut order: Vec<String> = Vec::new();
    let (mut correct, mut failed) = (0usize, 0usize);
    let mut stops: BTreeMap<String, usize> = BTreeMap::new();
    let (mut blocks, mut total, mut gen, mut exec) = (0.0, 0.0, 0.0, 0.0);
    let records: Vec<(&RunRecord, &RunInfo)> = records
        .iter()
        .filter_map(|r| r.run.as_ref().map(|i| (r, i)))
        .collect();
    for (r, m) in &records {
        let ok = m.verdict.correct;
        correct += ok as usize;
        failed += m.failed() as usize;
        *stops.entry(m.stop.label().to_string()).or_insert(0) += 1;
        blocks += m.model_blocks as f64;
        total += m.total_ms;
        gen += m.generate_ms;
        exec += m.execute_ms;
        let id = r.id();
        if !by_problem.contains_key(&id) {
            order.push(id.clone());
        }
        by_problem
            .entry(id)
            .or_default()
            .push((m.verdict.extracted.clone(), ok));
    }
    let records = records.len();
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
    Summary {
        dataset: dataset.to_string(),
        backend: backend.to_string(),
        problems,
        samples,
        records,
        correct,
        accuracy: correct as f64 / d,
        accuracy_ci95: mathcoder_eval::wilson95(correct, records),
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
    }
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
        let records: Vec<RunRecord> = text
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                let o = v.as_object_mut().unwrap();
                o.insert("messages".into(), serde_json::json!([]));
                o.insert("ground_truth".into(), serde_json::json!({"answer": ""}));
                o.insert("debug_result".into(), serde_json::json!([]));
                o.insert("completion".into(), serde_json::json!(""));
                RunRecord::from_output(serde_json::from_value(v).unwrap()).unwrap()
            })
            .collect();
        let g = Grader::new(GradeOptions::default());
        let s = summarize(&records, "d", "b", Dataset::Generic, &g);
        assert_eq!((s.problems, s.samples, s.records, s.correct), (2, 3, 6, 3));
        assert_eq!(s.maj_at_k, Some(0.5));
        assert_eq!(s.pass_at_k, Some(1.0));
        assert_eq!(s.pass_at_1, Some(0.5));
        assert_eq!(s.mean_model_blocks, 4.0);
        assert_eq!(s.stop_reasons["end_of_message"], 6);
    }
}
