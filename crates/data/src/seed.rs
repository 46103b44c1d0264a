//! D0: a teacher's solutions to train problems, kept when our grader judges the final answer
//! equal to the gold.
//!
//! Sampling follows ToRA: each problem gets a first greedy solution (sample 0, temperature 0),
//! then up to K sampled ones (samples 1..=K, temperature T, seed `seed + sample`), drawn one
//! after another and only while the problem is still unsolved (no kept solution yet), or always
//! with `sample_all`; drawing stops once `max_per_problem` solutions are kept. A correct
//! solution is kept unless an optional filter drops it ([`crate::quality::Filters`]) or it
//! duplicates one already kept for the problem ([`crate::quality::distinct`]).
//!
//! A run directory holds `run.json` (the run's identity, checked on resume), `data.jsonl` (the
//! kept solutions, one [`TrainRecord`] a line) and `attempts.jsonl` (one [`Attempt`] per
//! (problem, sample) drawn, kept or not). One writer appends both: a kept solution's data line
//! is written and fsynced before its attempt line, and a problem's attempts reach it in sample
//! order, so a crash at any moment loses at most the draws in flight. On resume, torn last lines
//! are cut, a (problem, sample) found in either file is done, a kept solution whose attempt line
//! was lost gets it back, and each problem continues from its first undone sample with the kept
//! solutions read back from `data.jsonl`: the same decisions as an uninterrupted run.

use mathcoder_datasets::Problem;
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{Acceptance, Block, BlockKind, Provenance, TrainRecord};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::work::Lines;

use crate::quality::{distinct, signature, Filters, Tokens};
use crate::{Draw, Teacher, TeacherError};

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
    /// K: sampled solutions after the greedy one (seeds `seed + sample`).
    pub samples: usize,
    /// Draw all K samples, not only for problems the greedy solution left unsolved.
    pub sample_all: bool,
    /// Temperature of the sampled draws (the greedy draw is at 0).
    pub temperature: f32,
    /// M: distinct solutions kept per problem at most.
    pub max_per_problem: usize,
    pub filters: Filters,
    /// The unit of `filters.max_tokens`.
    pub tokens: Tokens,
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
    sample_all: bool,
    temperature: f32,
    max_per_problem: usize,
    require_code: bool,
    drop_traceback: bool,
    max_tokens: Option<usize>,
    token_unit: String,
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
            sample_all: config.sample_all,
            temperature: config.temperature,
            max_per_problem: config.max_per_problem,
            require_code: config.filters.require_code,
            drop_traceback: config.filters.drop_traceback,
            max_tokens: config.filters.max_tokens,
            token_unit: config.tokens.describe(),
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
    /// Correct, but an optional filter dropped it (`detail` says which).
    Filtered,
    /// Correct, but the same or nearly the same as a solution kept for the problem.
    Duplicate,
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
    /// Distill: how many of the samples agree with the largest group of equivalent answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreeing: Option<usize>,
    /// Distill on problems with a gold answer: whether the largest group's answer equals it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gold_correct: Option<bool>,
}

/// Progress events, per problem.
#[derive(Clone, Debug)]
pub enum Event {
    /// Problems (already finished, to work on) at start.
    Start { done: usize, todo: usize },
    /// A problem is finished: `Kept` when it has a kept solution, else its last draw's outcome.
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

/// Appends lines to the data file (`data.jsonl`) and `apath` (`attempts.jsonl`), each written
/// and fsynced on its own, data first; with no data file, data lines are an error. Returns the
/// number of attempts written.
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
    Ok(load_run(out)?.0)
}

/// The (problem, sample) pairs done.
type Done = HashSet<(String, usize)>;

/// [`load_done`], and the kept records read back.
fn load_run(out: &Path) -> Result<(Done, Vec<TrainRecord>), DataError> {
    let data: Vec<TrainRecord> = load_keyed(&data_path(out), |r: &TrainRecord| {
        (r.provenance.problem_id.clone(), r.provenance.sample)
    })?;
    let attempts: Vec<Attempt> = load_keyed(&attempts_path(out), |a: &Attempt| {
        (a.problem_id.clone(), a.sample)
    })?;
    let mut done: Done = attempts
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
                agreeing: None,
                gold_correct: None,
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
    Ok((done, data))
}

/// Where a problem stands: its samples done, and its kept solutions' signatures in sample order.
#[derive(Default)]
struct ProblemState {
    done: HashSet<usize>,
    kept: Vec<Vec<String>>,
}

impl SeedConfig {
    /// Whether sample `s` is drawn, given the distinct solutions kept from samples before it.
    fn draws(&self, s: usize, kept: usize) -> bool {
        s == 0
            || (s <= self.samples && kept < self.max_per_problem && (self.sample_all || kept == 0))
    }

    fn draw(&self, s: usize) -> Draw {
        Draw {
            sample: s,
            seed: self.seed.map(|x| x + s as u64),
            temperature: Some(if s == 0 { 0.0 } else { self.temperature }),
        }
    }
}

impl ProblemState {
    /// The first sample still to draw, if any.
    fn next(&self, config: &SeedConfig) -> Option<usize> {
        (0..=config.samples)
            .find(|s| !self.done.contains(s))
            .filter(|s| config.draws(*s, self.kept.len()))
    }
}

/// Solves `problems` with `teacher` (a greedy draw, then sampled ones as the module docs say),
/// grades each solution once against the gold, and appends kept solutions to `data.jsonl` and
/// every draw to `attempts.jsonl`. Returns the number of attempts written by this call.
pub async fn seed<T: Teacher>(
    problems: &[Problem],
    teacher: Arc<T>,
    grader: Arc<Grader>,
    config: &SeedConfig,
    progress: Arc<dyn Fn(Event) + Send + Sync>,
) -> Result<usize, DataError> {
    if config.concurrency == 0 || config.max_per_problem == 0 {
        return Err(DataError::Invalid(
            "--concurrency and --max-per-problem must be at least 1".into(),
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
    let (done, data) = load_run(&config.out)?;
    let mut states: HashMap<String, ProblemState> = HashMap::new();
    for (id, s) in done {
        states.entry(id).or_default().done.insert(s);
    }
    let mut kept: Vec<&TrainRecord> = data.iter().collect();
    kept.sort_by_key(|r| r.provenance.sample);
    for r in kept {
        let blocks = r.blocks().unwrap_or_default();
        states
            .entry(r.provenance.problem_id.clone())
            .or_default()
            .kept
            .push(signature(&blocks));
    }
    let todo: Vec<(usize, ProblemState)> = problems
        .iter()
        .enumerate()
        .map(|(i, p)| (i, states.remove(&p.id).unwrap_or_default()))
        .filter(|(_, st)| st.next(config).is_some())
        .collect();
    progress(Event::Start {
        done: problems.len() - todo.len(),
        todo: todo.len(),
    });
    let problems: Arc<Vec<Problem>> = Arc::new(problems.to_vec());
    let teacher_name: Arc<str> = teacher_name.into();
    let config = config.clone();
    crate::work::run_units(
        Some(data_path(&config.out)),
        attempts_path(&config.out),
        todo,
        config.concurrency,
        move |(i, mut state): (usize, ProblemState), sink| {
            let (problems, teacher, grader, teacher_name, config) = (
                problems.clone(),
                teacher.clone(),
                grader.clone(),
                teacher_name.clone(),
                config.clone(),
            );
            async move {
                let p = &problems[i];
                let mut last = AttemptOutcome::Failed;
                // Draws of one problem go one after another, so the writer gets them in order.
                while let Some(s) = state.next(&config) {
                    let draw = config.draw(s);
                    let result = teacher.solve_draw(p, draw).await;
                    let (data, attempt) =
                        judge(p, draw, result, &grader, &config, &teacher_name, &mut state)?;
                    last = attempt.outcome;
                    state.done.insert(s);
                    if sink.send((data, line(&attempt)?)).await.is_err() {
                        break;
                    }
                }
                Ok(Event::Finished(if state.kept.is_empty() {
                    last
                } else {
                    AttemptOutcome::Kept
                }))
            }
        },
        progress,
    )
    .await
}

/// Grades one teacher result: the data line (when kept) and the attempt; a kept solution's
/// signature joins `state.kept`.
fn judge(
    p: &Problem,
    draw: Draw,
    result: Result<crate::TeacherSolution, TeacherError>,
    grader: &Grader,
    config: &SeedConfig,
    teacher: &str,
    state: &mut ProblemState,
) -> Result<(Option<String>, Attempt), DataError> {
    let (sample, seed) = (draw.sample, draw.seed);
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
        agreeing: None,
        gold_correct: None,
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
    attempt.code_blocks = count_code(&sol.blocks);
    attempt.teacher_tokens = sol.teacher_tokens;
    if !v.correct {
        return Ok((None, attempt));
    }
    if let Err(why) = config.filters.check(&sol.blocks, &config.tokens) {
        attempt.outcome = AttemptOutcome::Filtered;
        attempt.detail = why;
        return Ok((None, attempt));
    }
    let sig = signature(&sol.blocks);
    if let Err(why) = distinct(&sig, &state.kept) {
        attempt.outcome = AttemptOutcome::Duplicate;
        attempt.detail = why;
        return Ok((None, attempt));
    }
    state.kept.push(sig);
    let record = TrainRecord::new(
        &config.system,
        &p.question,
        &sol.blocks,
        Provenance {
            source: config.source.clone(),
            problem_id: p.id.clone(),
            parents: p.parents.clone(),
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

pub(crate) fn count_code(blocks: &[Block]) -> usize {
    blocks.iter().filter(|b| b.kind == BlockKind::Code).count()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TeacherSolution;

    /// Answers by problem: the question is a comma-separated script, one entry per sample:
    /// the final answer, `!` for a failure; `=` after an answer repeats sample 0's wording (a
    /// duplicate); `~` drops the code block. Records the temperature of every draw.
    struct Scripted(std::sync::Mutex<Vec<(String, usize, Option<f32>)>>);

    impl Teacher for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }
        async fn solve(
            &self,
            p: &Problem,
            sample: usize,
            seed: Option<u64>,
        ) -> Result<TeacherSolution, TeacherError> {
            self.solve_draw(
                p,
                Draw {
                    sample,
                    seed,
                    temperature: None,
                },
            )
            .await
        }
        async fn solve_draw(&self, p: &Problem, d: Draw) -> Result<TeacherSolution, TeacherError> {
            self.0
                .lock()
                .unwrap()
                .push((p.id.clone(), d.sample, d.temperature));
            let script: Vec<&str> = p.question.split(',').collect();
            let entry = script.get(d.sample).copied().unwrap_or("!");
            if entry == "!" {
                return Err(TeacherError::Fault("server error".into()));
            }
            let answer = entry.trim_end_matches(['=', '~']);
            let words = [
                "alpha beta gamma",
                "delta epsilon zeta",
                "eta theta iota",
                "kappa mu nu",
            ];
            let wording = if entry.ends_with('=') {
                words[0].to_string()
            } else {
                words[d.sample % words.len()].to_string()
            };
            let mut blocks = vec![Block::text(wording)];
            if !entry.ends_with('~') {
                blocks.push(Block::code(format!("x = {answer}\nx")));
                blocks.push(Block::execution(answer));
            }
            blocks.push(Block::text(format!("\\boxed{{{answer}}}")));
            Ok(TeacherSolution {
                blocks,
                teacher_tokens: 10,
            })
        }
    }

    fn problem(id: &str, script: &str, gold: &str) -> Problem {
        Problem {
            id: id.into(),
            dataset: "t".into(),
            split: Default::default(),
            question: script.into(),
            answer: Some(gold.into()),
            subject: None,
            level: None,
            solution: None,
            parents: Vec::new(),
        }
    }

    fn config(out: &Path, samples: usize, sample_all: bool) -> SeedConfig {
        SeedConfig {
            out: out.to_path_buf(),
            source: "t".into(),
            samples,
            sample_all,
            temperature: 0.7,
            max_per_problem: 2,
            filters: Filters {
                require_code: true,
                ..Filters::default()
            },
            tokens: Tokens::Words,
            seed: Some(10),
            concurrency: 3,
            conventions: Dataset::Generic,
            system: "s".into(),
        }
    }

    fn kept(out: &Path) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = load_keyed(&data_path(out), |r: &TrainRecord| {
            (r.provenance.problem_id.clone(), r.provenance.sample)
        })
        .unwrap()
        .into_iter()
        .map(|r: TrainRecord| (r.provenance.problem_id, r.provenance.sample))
        .collect();
        v.sort();
        v
    }

    async fn run(problems: &[Problem], c: &SeedConfig) -> Vec<(String, usize, Option<f32>)> {
        let t = Arc::new(Scripted(Default::default()));
        seed(
            problems,
            t.clone(),
            Arc::new(Grader::new(Default::default())),
            c,
            Arc::new(|_| {}),
        )
        .await
        .unwrap();
        let mut calls = t.0.lock().unwrap().clone();
        calls.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
        calls
    }

    #[tokio::test]
    async fn greedy_then_samples_while_unsolved() {
        let dir = tempfile::tempdir().unwrap();
        let problems = [
            problem("a", "4,4,4", "4"),   // solved greedily: no samples
            problem("b", "3,!,4,4", "4"), // wrong, failed, then solved at sample 2
            problem("c", "4~,4,4", "4"),  // correct without code: filtered, solved at 1
            problem("d", "1,2,3,5", "4"), // never solved: all 3 samples drawn
        ];
        let c = config(dir.path(), 3, false);
        let calls = run(&problems, &c).await;
        let drawn: Vec<(&str, usize)> = calls.iter().map(|(p, s, _)| (p.as_str(), *s)).collect();
        assert_eq!(
            drawn,
            [
                ("a", 0),
                ("b", 0),
                ("b", 1),
                ("b", 2),
                ("c", 0),
                ("c", 1),
                ("d", 0),
                ("d", 1),
                ("d", 2),
                ("d", 3)
            ]
        );
        assert!(calls
            .iter()
            .all(|(_, s, t)| *t == Some(if *s == 0 { 0.0 } else { 0.7 })));
        assert_eq!(
            kept(dir.path()),
            [("a".into(), 0), ("b".into(), 2), ("c".into(), 1)]
        );
        let s = stats(dir.path()).unwrap();
        assert_eq!(s.count(AttemptOutcome::Filtered), 1);
        assert_eq!(s.count(AttemptOutcome::Wrong), 5);
        assert_eq!(s.count(AttemptOutcome::Failed), 1);
        // Done: a second call draws nothing.
        assert!(run(&problems, &c).await.is_empty());
    }

    #[tokio::test]
    async fn sample_all_keeps_at_most_m_distinct_and_resumes_mid_chain() {
        let dir = tempfile::tempdir().unwrap();
        // Sample 1 repeats sample 0's wording (a duplicate); 2 and 3 are new: M = 2 stops at 2.
        let problems = [problem("e", "4=,4=,4,4", "4"), problem("f", "5,4,4,4", "4")];
        let c = config(dir.path(), 3, true);
        let uninterrupted = tempfile::tempdir().unwrap();
        let calls = run(
            &problems,
            &SeedConfig {
                out: uninterrupted.path().to_path_buf(),
                ..c.clone()
            },
        )
        .await;
        let drawn: Vec<(&str, usize)> = calls.iter().map(|(p, s, _)| (p.as_str(), *s)).collect();
        assert_eq!(
            drawn,
            [("e", 0), ("e", 1), ("e", 2), ("f", 0), ("f", 1), ("f", 2)]
        );
        assert_eq!(
            kept(uninterrupted.path()),
            [
                ("e".into(), 0),
                ("e".into(), 2),
                ("f".into(), 1),
                ("f".into(), 2)
            ]
        );
        // A crash after e's sample 1 and f's sample 0 (their lines written, nothing more): the
        // resumed run draws exactly what is left and ends where the uninterrupted one did.
        let all = std::fs::read_to_string(attempts_path(uninterrupted.path())).unwrap();
        let data = std::fs::read_to_string(data_path(uninterrupted.path())).unwrap();
        let keep = |l: &&str| {
            let a: Attempt = serde_json::from_str(l).unwrap_or_else(|_| {
                let r: TrainRecord = serde_json::from_str(l).unwrap();
                Attempt {
                    problem_id: r.provenance.problem_id,
                    sample: r.provenance.sample,
                    outcome: AttemptOutcome::Kept,
                    detail: String::new(),
                    extracted: None,
                    subject: None,
                    level: None,
                    blocks: 0,
                    code_blocks: 0,
                    teacher_tokens: 0,
                    agreeing: None,
                    gold_correct: None,
                }
            });
            (a.problem_id == "e" && a.sample <= 1) || (a.problem_id == "f" && a.sample == 0)
        };
        let part = |text: &str| -> String {
            text.lines()
                .filter(keep)
                .map(|l| format!("{l}\n"))
                .collect()
        };
        std::fs::write(attempts_path(dir.path()), part(&all)).unwrap();
        std::fs::write(data_path(dir.path()), part(&data)).unwrap();
        std::fs::write(
            dir.path().join("run.json"),
            std::fs::read(uninterrupted.path().join("run.json")).unwrap(),
        )
        .unwrap();
        let calls = run(&problems, &c).await;
        let drawn: Vec<(&str, usize)> = calls.iter().map(|(p, s, _)| (p.as_str(), *s)).collect();
        assert_eq!(drawn, [("e", 2), ("f", 1), ("f", 2)]);
        assert_eq!(kept(dir.path()), kept(uninterrupted.path()));
        let outcomes = |d: &Path| {
            let mut v: Vec<(String, usize, AttemptOutcome)> =
                load_keyed(&attempts_path(d), |a: &Attempt| {
                    (a.problem_id.clone(), a.sample)
                })
                .unwrap()
                .into_iter()
                .map(|a: Attempt| (a.problem_id, a.sample, a.outcome))
                .collect();
            v.sort();
            v
        };
        assert_eq!(outcomes(dir.path()), outcomes(uninterrupted.path()));
        assert!(outcomes(dir.path()).contains(&("e".into(), 1, AttemptOutcome::Duplicate)));
    }
}
