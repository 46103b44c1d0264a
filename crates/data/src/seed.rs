//! D0: a teacher's solutions to train problems, kept when our grader judges the final answer
//! equal to the gold.
//!
//! A run directory holds `run.json` (the run's identity, checked on resume), `data.jsonl` (the
//! kept solutions, one [`TrainRecord`] a line) and `attempts.jsonl` (one [`Attempt`] per
//! (problem, sample) tried, kept or not). One writer appends both: a kept solution's data line
//! is written and fsynced before its attempt line, so a crash at any moment loses at most the
//! attempts in flight. On resume, torn last lines are cut, a (problem, sample) found in either
//! file is done, and a kept solution whose attempt line was lost gets it back.

use mathcoder_datasets::Problem;
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{Acceptance, BlockKind, Provenance, TrainRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

use crate::{Teacher, TeacherError};

/// Errors of a data run (per-problem failures are attempts, not errors).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} already holds a run with different settings ({1}); use another --out directory")]
    Mismatch(PathBuf, String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Record(#[from] mathcoder_lce::RecordError),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A seed run's settings.
#[derive(Clone, Debug)]
pub struct SeedConfig {
    pub out: PathBuf,
    /// The problem set's name (provenance `source`).
    pub source: String,
    /// Solutions drawn per problem (seeds `seed + sample`).
    pub samples: usize,
    pub seed: Option<u64>,
    pub concurrency: usize,
    /// The grader's answer conventions for the source.
    pub conventions: Dataset,
    /// The system prompt written into every record.
    pub system: String,
}

/// What makes two seed runs the same run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SeedIdentity {
    source: String,
    teacher: String,
    samples: usize,
    seed: Option<u64>,
    conventions: String,
    system: String,
}

impl SeedIdentity {
    pub fn of(config: &SeedConfig, teacher: &str) -> SeedIdentity {
        SeedIdentity {
            source: config.source.clone(),
            teacher: teacher.to_string(),
            samples: config.samples,
            seed: config.seed,
            conventions: config.conventions.name().to_string(),
            system: config.system.clone(),
        }
    }
}

/// How one (problem, sample) ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptOutcome {
    /// Solved, and the final answer equals the gold: in `data.jsonl`.
    Kept,
    /// Solved, but the final answer is not the gold.
    Wrong,
    /// The teacher could not write a solution (the offline teacher: not convertible).
    Unconverted,
    /// The teacher failed (sandbox or backend).
    Failed,
}

/// One line of `attempts.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub problem_id: String,
    pub sample: usize,
    pub outcome: AttemptOutcome,
    /// The grader's reason, or why there is no solution.
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub extracted: Option<String>,
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub level: Option<u8>,
    #[serde(default)]
    pub blocks: usize,
    #[serde(default)]
    pub code_blocks: usize,
    #[serde(default)]
    pub teacher_tokens: u64,
}

/// Progress events.
#[derive(Clone, Debug)]
pub enum Event {
    /// (already done, to do) at start.
    Start {
        done: usize,
        todo: usize,
    },
    Finished(AttemptOutcome),
}

pub fn data_path(out: &Path) -> PathBuf {
    out.join("data.jsonl")
}

pub fn attempts_path(out: &Path) -> PathBuf {
    out.join("attempts.jsonl")
}

/// Reads a JSONL file we append to, cutting a torn last line and dropping lines that do not
/// parse or repeat an earlier key (the file is rewritten when anything was dropped).
pub(crate) fn load_keyed<T: for<'de> Deserialize<'de>, K: std::hash::Hash + Eq + Clone>(
    path: &Path,
    key: impl Fn(&T) -> K,
) -> Result<Vec<T>, DataError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(Vec::new());
    };
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut rewrite = false;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            rewrite = true;
            break;
        }
        match serde_json::from_slice::<T>(line) {
            Ok(r) if seen.insert(key(&r)) => {
                kept.push(line);
                out.push(r);
            }
            _ => rewrite = true,
        }
    }
    if rewrite {
        let tmp = path.with_extension("jsonl.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        for l in &kept {
            f.write_all(l).map_err(io(&tmp))?;
        }
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(io(path))?;
    }
    Ok(out)
}

/// Checks `run.json` in `out` against `identity` (writing it on a first run).
pub(crate) fn check_identity<I: Serialize + for<'de> Deserialize<'de> + PartialEq>(
    out: &Path,
    identity: &I,
) -> Result<(), DataError> {
    std::fs::create_dir_all(out).map_err(io(out))?;
    let path = out.join("run.json");
    let now = serde_json::to_value(identity).map_err(|e| DataError::Invalid(e.to_string()))?;
    match std::fs::read(&path) {
        Ok(b) => {
            let old: serde_json::Value = serde_json::from_slice(&b)
                .map_err(|e| DataError::Invalid(format!("{}: {e}", path.display())))?;
            if old != now {
                let mut diffs = Vec::new();
                if let (Some(a), Some(b)) = (old.as_object(), now.as_object()) {
                    for (k, x) in a {
                        if b.get(k) != Some(x) {
                            diffs.push(format!(
                                "{k}: {x} then, {} now",
                                b.get(k).cloned().unwrap_or_default()
                            ));
                        }
                    }
                }
                return Err(DataError::Mismatch(out.to_path_buf(), diffs.join("; ")));
            }
            Ok(())
        }
        Err(_) => std::fs::write(&path, serde_json::to_vec_pretty(&now).unwrap_or_default())
            .map_err(io(&path)),
    }
}

/// What a finished task hands the writer: the data line (kept solutions), then the attempt.
type Lines = (Option<String>, String);

/// Appends lines to `data.jsonl` and `attempts.jsonl`, each written and fsynced on its own, data
/// first. Returns the number of attempts written.
pub(crate) fn spawn_writer(
    out: &Path,
    rx: mpsc::Receiver<Lines>,
) -> tokio::task::JoinHandle<Result<usize, DataError>> {
    spawn_writer_to(Some(data_path(out)), attempts_path(out), rx)
}

/// [`spawn_writer`] with the files named (no data file: data lines are an error).
pub(crate) fn spawn_writer_to(
    dpath: Option<PathBuf>,
    apath: PathBuf,
    mut rx: mpsc::Receiver<Lines>,
) -> tokio::task::JoinHandle<Result<usize, DataError>> {
    tokio::task::spawn_blocking(move || {
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io(p))
        };
        let mut d = match &dpath {
            Some(p) => Some((open(p)?, p)),
            None => None,
        };
        let mut a = open(&apath)?;
        let mut n = 0;
        while let Some((data, attempt)) = rx.blocking_recv() {
            if let Some(line) = data {
                let Some((d, dpath)) = &mut d else {
                    return Err(DataError::Invalid("a data line without a data file".into()));
                };
                d.write_all(line.as_bytes()).map_err(io(dpath))?;
                d.sync_data().map_err(io(dpath))?;
            }
            a.write_all(attempt.as_bytes()).map_err(io(&apath))?;
            a.sync_data().map_err(io(&apath))?;
            n += 1;
        }
        Ok(n)
    })
}

pub(crate) fn line<T: Serialize>(v: &T) -> Result<String, DataError> {
    let mut s = serde_json::to_string(v).map_err(|e| DataError::Invalid(e.to_string()))?;
    s.push('\n');
    Ok(s)
}

/// The (problem, sample) pairs already done in `out`, repairing the files first (torn lines cut;
/// a kept solution whose attempt line is missing gets one).
pub fn load_done(out: &Path) -> Result<HashSet<(String, usize)>, DataError> {
    let data: Vec<TrainRecord> = load_keyed(&data_path(out), |r: &TrainRecord| {
        (r.provenance.problem_id.clone(), r.provenance.sample)
    })?;
    let attempts: Vec<Attempt> = load_keyed(&attempts_path(out), |a: &Attempt| {
        (a.problem_id.clone(), a.sample)
    })?;
    let mut done: HashSet<(String, usize)> = attempts
        .iter()
        .map(|a| (a.problem_id.clone(), a.sample))
        .collect();
    let mut missing = String::new();
    for r in &data {
        let key = (r.provenance.problem_id.clone(), r.provenance.sample);
        if done.insert(key) {
            let blocks = r.blocks().unwrap_or_default();
            missing.push_str(&line(&Attempt {
                problem_id: r.provenance.problem_id.clone(),
                sample: r.provenance.sample,
                outcome: AttemptOutcome::Kept,
                detail: "attempt line recovered from data.jsonl".into(),
                extracted: match &r.provenance.acceptance {
                    Acceptance::Verdict { extracted, .. } => extracted.clone(),
                    Acceptance::Agreement { .. } => None,
                },
                subject: r.provenance.subject.clone(),
                level: r.provenance.level,
                blocks: blocks.len(),
                code_blocks: blocks.iter().filter(|b| b.kind == BlockKind::Code).count(),
                teacher_tokens: 0,
            })?);
        }
    }
    if !missing.is_empty() {
        let p = attempts_path(out);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(io(&p))?;
        f.write_all(missing.as_bytes()).map_err(io(&p))?;
        f.sync_data().map_err(io(&p))?;
    }
    Ok(done)
}

/// Solves `problems` (each `config.samples` times) with `teacher`, grades each solution once
/// against the gold, and appends kept solutions to `data.jsonl` and every attempt to
/// `attempts.jsonl`. Returns the number of attempts written by this call.
pub async fn seed<T: Teacher>(
    problems: &[Problem],
    teacher: Arc<T>,
    grader: Arc<Grader>,
    config: &SeedConfig,
    progress: Arc<dyn Fn(Event) + Send + Sync>,
) -> Result<usize, DataError> {
    if config.samples == 0 || config.concurrency == 0 {
        return Err(DataError::Invalid(
            "--samples and --concurrency must be at least 1".into(),
        ));
    }
    let mut ids = HashSet::new();
    for p in problems {
        if !ids.insert(p.id.as_str()) {
            return Err(DataError::Invalid(format!(
                "problem id {:?} appears twice; ids must be unique to resume a run",
                p.id
            )));
        }
        if p.answer.is_none() {
            return Err(DataError::Invalid(format!(
                "problem {:?} has no gold answer; seed keeps solutions that match the gold (problems without one are for distill)",
                p.id
            )));
        }
    }
    let teacher_name = teacher.describe();
    check_identity(&config.out, &SeedIdentity::of(config, &teacher_name))?;
    let done = load_done(&config.out)?;
    let todo: Vec<(usize, usize)> = problems
        .iter()
        .enumerate()
        .flat_map(|(i, _)| (0..config.samples).map(move |s| (i, s)))
        .filter(|(i, s)| !done.contains(&(problems[*i].id.clone(), *s)))
        .collect();
    progress(Event::Start {
        done: done.len(),
        todo: todo.len(),
    });
    let (tx, rx) = mpsc::channel::<Lines>(256);
    let writer = spawn_writer(&config.out, rx);
    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let problems: Arc<Vec<Problem>> = Arc::new(problems.to_vec());
    let teacher_name: Arc<str> = teacher_name.into();
    for (i, s) in todo {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| DataError::Invalid("closed".into()))?;
        let (problems, teacher, grader, tx, progress, teacher_name, config) = (
            problems.clone(),
            teacher.clone(),
            grader.clone(),
            tx.clone(),
            progress.clone(),
            teacher_name.clone(),
            config.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let p = &problems[i];
            let seed = config.seed.map(|x| x + s as u64);
            let result = teacher.solve(p, s, seed).await;
            let (data, attempt) = judge(p, s, seed, result, &grader, &config, &teacher_name)?;
            let outcome = attempt.outcome;
            let _ = tx.send((data, line(&attempt)?)).await;
            progress(Event::Finished(outcome));
            Ok::<(), DataError>(())
        });
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| DataError::Invalid(format!("task: {e}")))??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| DataError::Invalid(format!("task: {e}")))??;
    }
    drop(tx);
    writer
        .await
        .map_err(|e| DataError::Invalid(format!("writer: {e}")))?
}

/// Grades one teacher result: the data line (when kept) and the attempt.
fn judge(
    p: &Problem,
    sample: usize,
    seed: Option<u64>,
    result: Result<crate::TeacherSolution, TeacherError>,
    grader: &Grader,
    config: &SeedConfig,
    teacher: &str,
) -> Result<(Option<String>, Attempt), DataError> {
    let mut attempt = Attempt {
        problem_id: p.id.clone(),
        sample,
        outcome: AttemptOutcome::Failed,
        detail: String::new(),
        extracted: None,
        subject: p.subject.clone(),
        level: p.level,
        blocks: 0,
        code_blocks: 0,
        teacher_tokens: 0,
    };
    let sol = match result {
        Ok(sol) => sol,
        Err(e) => {
            attempt.outcome = match e {
                TeacherError::Unconvertible(_) => AttemptOutcome::Unconverted,
                TeacherError::Fault(_) => AttemptOutcome::Failed,
            };
            attempt.detail = e.to_string();
            return Ok((None, attempt));
        }
    };
    let gold = p.gold();
    let v = grader.grade(
        config.conventions,
        gold,
        sol.completion(),
        Some(&p.question),
    );
    attempt.outcome = if v.correct {
        AttemptOutcome::Kept
    } else {
        AttemptOutcome::Wrong
    };
    attempt.detail = v.reason.clone();
    attempt.extracted = v.extracted.clone();
    attempt.blocks = sol.blocks.len();
    attempt.code_blocks = sol
        .blocks
        .iter()
        .filter(|b| b.kind == BlockKind::Code)
        .count();
    attempt.teacher_tokens = sol.teacher_tokens;
    if !v.correct {
        return Ok((None, attempt));
    }
    let record = TrainRecord::new(
        &config.system,
        &p.question,
        &sol.blocks,
        Provenance {
            source: config.source.clone(),
            problem_id: p.id.clone(),
            parents: Vec::new(),
            teacher: teacher.to_string(),
            sample,
            seed,
            subject: p.subject.clone(),
            level: p.level,
            acceptance: Acceptance::Verdict {
                gold: gold.to_string(),
                extracted: v.extracted,
                correct: v.correct,
                reason: v.reason,
            },
            extra: Default::default(),
        },
    );
    let data = record
        .to_line()
        .map_err(|e| DataError::Invalid(format!("serializing a record: {e}")))?;
    Ok((Some(data), attempt))
}

/// Counts of a run directory's attempts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SeedStats {
    pub attempts: usize,
    /// Problems with at least one attempt / at least one kept solution.
    pub problems: usize,
    pub problems_solved: usize,
    pub outcomes: BTreeMap<AttemptOutcome, usize>,
    /// Mean blocks and code blocks per kept solution.
    pub mean_blocks: f64,
    pub mean_code_blocks: f64,
}

impl SeedStats {
    pub fn count(&self, o: AttemptOutcome) -> usize {
        self.outcomes.get(&o).copied().unwrap_or(0)
    }
}

/// Reads `attempts.jsonl` of a run directory and counts it.
pub fn stats(out: &Path) -> Result<SeedStats, DataError> {
    let attempts: Vec<Attempt> = load_keyed(&attempts_path(out), |a: &Attempt| {
        (a.problem_id.clone(), a.sample)
    })?;
    let mut s = SeedStats {
        attempts: attempts.len(),
        ..SeedStats::default()
    };
    let mut problems = HashSet::new();
    let mut solved = HashSet::new();
    let (mut blocks, mut code) = (0usize, 0usize);
    for a in &attempts {
        problems.insert(a.problem_id.as_str());
        *s.outcomes.entry(a.outcome).or_default() += 1;
        if a.outcome == AttemptOutcome::Kept {
            solved.insert(a.problem_id.as_str());
            blocks += a.blocks;
            code += a.code_blocks;
        }
    }
    s.problems = problems.len();
    s.problems_solved = solved.len();
    let kept = s.count(AttemptOutcome::Kept).max(1) as f64;
    s.mean_blocks = blocks as f64 / kept;
    s.mean_code_blocks = code as f64 / kept;
    Ok(s)
}
