//! `data stats`: what a run (or a training file) holds, per source and, for MATH, per subject and
//! per level: problems attempted and solved, solutions kept, blocks, code blocks and tokens per
//! kept solution, and the teacher tokens spent.
//!
//! A run directory gives all of it: attempts from `attempts.jsonl` (their source is `run.json`'s),
//! kept solutions from `data.jsonl`. A training file alone (e.g. a merged set) has no attempts:
//! problems attempted and teacher tokens are then unknown (`None`).

use mathcoder_lce::train_format::read_train_records;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use crate::quality::Tokens;
use crate::seed::{attempts_path, data_path, load_keyed, Attempt, DataError};

/// One row: a source, or a source's subject or level.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Row {
    pub source: String,
    /// `""` for the whole source, else `subject <name>` or `level <n>`.
    pub group: String,
    /// Problems with an attempt, and draws made (`None` without attempts).
    pub attempted: Option<usize>,
    pub draws: Option<usize>,
    /// Problems with a kept solution.
    pub solved: usize,
    pub kept: usize,
    pub blocks_per_solution: f64,
    pub code_blocks_per_solution: f64,
    pub tokens_per_solution: f64,
    /// Tokens the teacher generated over all draws (`None` without attempts).
    pub teacher_tokens: Option<u64>,
}

/// The rows of a run or file, and the unit tokens are counted in.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub token_unit: String,
    pub rows: Vec<Row>,
}

#[derive(Default)]
struct Acc {
    attempted: HashSet<String>,
    draws: usize,
    teacher_tokens: u64,
    solved: HashSet<String>,
    kept: usize,
    blocks: usize,
    code: usize,
    tokens: usize,
}

impl Acc {
    fn row(&self, source: &str, group: String, with_attempts: bool) -> Row {
        let k = self.kept.max(1) as f64;
        Row {
            source: source.to_string(),
            group,
            attempted: with_attempts.then_some(self.attempted.len()),
            draws: with_attempts.then_some(self.draws),
            solved: self.solved.len(),
            kept: self.kept,
            blocks_per_solution: self.blocks as f64 / k,
            code_blocks_per_solution: self.code as f64 / k,
            tokens_per_solution: self.tokens as f64 / k,
            teacher_tokens: with_attempts.then_some(self.teacher_tokens),
        }
    }
}

/// The groups a problem counts in: the whole source, its subject and its level.
fn groups(subject: Option<&str>, level: Option<u8>) -> Vec<String> {
    let mut g = vec![String::new()];
    if let Some(s) = subject {
        g.push(format!("subject {s}"));
    }
    if let Some(l) = level {
        g.push(format!("level {l}"));
    }
    g
}

/// Stats of a run directory or a training file, tokens counted in `tokens`' unit.
pub fn stats(path: &Path, tokens: &Tokens) -> Result<Report, DataError> {
    let (data_file, attempts) = if path.is_dir() {
        let a = attempts_path(path);
        let attempts: Option<Vec<Attempt>> = if a.exists() {
            Some(load_keyed(&a, |a: &Attempt| {
                (a.problem_id.clone(), a.sample)
            })?)
        } else {
            None
        };
        (data_path(path), attempts)
    } else {
        (path.to_path_buf(), None)
    };
    let run_source = path
        .is_dir()
        .then(|| std::fs::read(path.join("run.json")).ok())
        .flatten()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["source"].as_str().map(String::from));
    let mut acc: BTreeMap<(String, String), Acc> = BTreeMap::new();
    let records = if data_file.exists() {
        read_train_records(&data_file)?
    } else {
        Vec::new()
    };
    for n in &records {
        let r = &n.record;
        let pv = &r.provenance;
        let blocks = r
            .blocks()
            .map_err(|e| DataError::Invalid(format!("{}:{}: {e}", data_file.display(), n.line)))?;
        let t = tokens.count(&blocks).map_err(DataError::Invalid)?;
        for g in groups(pv.subject.as_deref(), pv.level) {
            let a = acc.entry((pv.source.clone(), g)).or_default();
            a.solved.insert(pv.problem_id.clone());
            a.kept += 1;
            a.blocks += blocks.len();
            a.code += crate::seed::count_code(&blocks);
            a.tokens += t;
        }
    }
    let with_attempts = attempts.is_some();
    if let Some(attempts) = &attempts {
        let source = run_source
            .clone()
            .or_else(|| records.first().map(|n| n.record.provenance.source.clone()))
            .unwrap_or_else(|| "run".into());
        for at in attempts {
            for g in groups(at.subject.as_deref(), at.level) {
                let a = acc.entry((source.clone(), g)).or_default();
                a.attempted.insert(at.problem_id.clone());
                a.draws += 1;
                a.teacher_tokens += at.teacher_tokens;
            }
        }
    }
    // Whole sources first, then subjects, then levels.
    let order = |g: &str| match g {
        "" => 0,
        g if g.starts_with("subject") => 1,
        _ => 2,
    };
    let mut keys: Vec<&(String, String)> = acc.keys().collect();
    keys.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(order(&a.1).cmp(&order(&b.1)))
            .then(a.1.cmp(&b.1))
    });
    Ok(Report {
        token_unit: tokens.describe(),
        rows: keys
            .into_iter()
            .map(|k| acc[k].row(&k.0, k.1.clone(), with_attempts))
            .collect(),
    })
}
