//! Running a benchmark end to end: problems -> the generate/execute loop -> graded records in the
//! authors' output format -> report.
//!
//! Records are appended to `results.jsonl` as each problem finishes (one `write` and an `fsync`
//! per record), so a run killed at any moment loses only the problems in flight. Running the same
//! command again resumes: a torn last line is cut off, finished (problem, sample) pairs are
//! skipped, and `run.json` guards against resuming with different settings.

pub mod aggregate;
pub mod reference;

use mathcoder_datasets::Problem;
use mathcoder_grade::{Dataset, Grader, Verdict};
use mathcoder_lce::record::OutputRecord;
use mathcoder_lce::{RunInfo, RunRecord, StoredVerdict, DEFAULT_SYSTEM_PROMPT};
use mathcoder_llm::chat::ChatModel;
use mathcoder_llm::Backend;
use mathcoder_sandbox::Sandbox;
use mathcoder_solve::chat::ChatConfig;
use mathcoder_solve::{solve, Observer, Outcome, SolveConfig};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
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
    Records(#[from] mathcoder_lce::run::RunRecordError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RunError + '_ {
    move |source| RunError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What makes two runs the same run (checked on resume). Built only from a [`RunConfig`] and the
/// backend's description ([`RunIdentity::of`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunIdentity {
    dataset: String,
    samples: usize,
    backend: String,
    max_blocks: usize,
    max_new_tokens: u32,
    temperature: f32,
    system: String,
    /// Whether code ran in the sandbox (false: the model wrote its executions); runs recorded
    /// before the option existed executed.
    #[serde(default = "executed")]
    execute: bool,
}

fn executed() -> bool {
    true
}

impl RunIdentity {
    /// The identity of a run with `config` on the backend `backend` describes itself as (an
    /// LCE run).
    pub fn of(config: &RunConfig, backend: &str) -> RunIdentity {
        RunIdentity {
            dataset: config.dataset.clone(),
            samples: config.samples,
            backend: backend.to_string(),
            max_blocks: config.solve.max_blocks,
            max_new_tokens: config.solve.max_new_tokens,
            temperature: config.solve.temperature,
            system: config.solve.template.system.clone(),
            execute: config.solve.execute,
        }
    }

    /// The identity of a run with `config` by `solver` (its description and system prompt).
    pub fn of_solver(config: &RunConfig, solver: &Solver) -> RunIdentity {
        let mut id = RunIdentity::of(config, &solver.describe());
        id.system = solver.system(&config.solve).to_string();
        id
    }
    pub fn dataset(&self) -> &str {
        &self.dataset
    }
    pub fn backend(&self) -> &str {
        &self.backend
    }
}

/// Who writes the solutions: an LCE model through the generate/execute loop, or a chat model
/// through the code-interpreter conversation (`mathcoder_solve::chat`), whose transcript
/// becomes the same blocks.
#[derive(Clone)]
pub enum Solver {
    Lce(Arc<dyn Backend>),
    Chat {
        model: Arc<dyn ChatModel>,
        config: ChatConfig,
    },
}

impl From<Arc<dyn Backend>> for Solver {
    fn from(b: Arc<dyn Backend>) -> Solver {
        Solver::Lce(b)
    }
}

impl Solver {
    /// The backend's description; a chat solver's says so, with its style.
    pub fn describe(&self) -> String {
        match self {
            Solver::Lce(b) => b.describe(),
            Solver::Chat { model, config } => {
                format!("chat {}: {}", config.style.name(), model.describe())
            }
        }
    }

    /// The system prompt of the solutions (written into every record).
    pub fn system<'a>(&self, solve: &'a SolveConfig) -> &'a str {
        match self {
            Solver::Lce(_) => &solve.template.system,
            Solver::Chat { config, .. } => mathcoder_lce::chat::system_prompt(config.style),
        }
    }

    /// Solves one problem: the loop's outcome (a chat solver's conversation as one; its answer
    /// is what the grader extracts from the final message).
    pub async fn solve(
        &self,
        question: &str,
        sandbox: &Sandbox,
        solve_cfg: &SolveConfig,
        observer: &mut dyn Observer,
    ) -> Outcome {
        match self {
            Solver::Lce(b) => solve(question, b.as_ref(), sandbox, solve_cfg, observer).await,
            Solver::Chat { model, config } => {
                let config = ChatConfig {
                    temperature: solve_cfg.temperature,
                    top_p: solve_cfg.top_p,
                    ..config.clone()
                };
                let answer = |prose: &str| mathcoder_grade::extract(prose).ok().map(|e| e.answer);
                mathcoder_solve::chat::converse(
                    model.as_ref(),
                    sandbox,
                    &config,
                    question,
                    solve_cfg.seed,
                    &answer,
                    observer,
                )
                .await
                .outcome()
            }
        }
    }
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub out: PathBuf,
    /// The dataset's name (recorded in `run.json` and every record).
    pub dataset: String,
    pub concurrency: usize,
    /// Samples per problem (seeds `seed + i`).
    pub samples: usize,
    pub solve: SolveConfig,
    pub conventions: Dataset,
    pub retry_failed: bool,
}

/// Progress events.
#[derive(Clone, Debug)]
pub enum Event {
    /// (already done, to do) at start.
    Start { done: usize, todo: usize },
    /// One (problem, sample) finished.
    Finished { correct: bool, failed: bool },
}

/// The output files of a run.
pub fn results_path(out: &Path) -> PathBuf {
    out.join("results.jsonl")
}

/// Reads the finished (id, sample) keys of a results file, cutting off a torn last line.
/// Failed records are dropped from the file when `drop_failed` is set, so they run again.
pub fn load_done(path: &Path, drop_failed: bool) -> Result<HashSet<(String, usize)>, RunError> {
    let mut done = HashSet::new();
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(done);
    };
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut rewrite = false;
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !line.ends_with(b"\n") {
            // Torn write: drop it.
            rewrite = true;
            break;
        }
        let record = match serde_json::from_slice::<OutputRecord>(line)
            .map_err(|e| e.to_string())
            .and_then(|r| RunRecord::from_output(r).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(_) => {
                rewrite = true;
                continue;
            }
        };
        let failed = record.run.as_ref().is_some_and(RunInfo::failed);
        if drop_failed && failed {
            rewrite = true;
            continue;
        }
        if !done.insert((record.id(), record.sample())) {
            // A duplicate (should not happen): keep the first.
            rewrite = true;
            continue;
        }
        kept.push(line);
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
    Ok(done)
}

/// Builds the run record of one solved sample: the authors' format plus our `mathcoder` object.
pub fn run_record(
    p: &Problem,
    sample: usize,
    outcome: &Outcome,
    verdict: &Verdict,
    system: &str,
    backend: &str,
) -> RunRecord {
    let record = mathcoder_lce::run::output_record(
        &p.id,
        system,
        &p.question,
        p.answer.clone().map_or(Value::Null, Value::String),
        p.solution.clone(),
        &outcome.blocks,
    );
    let run = RunInfo {
        sample,
        dataset: p.dataset.clone(),
        subject: p.subject.clone(),
        level: p.level,
        stop: outcome.stop.clone(),
        model_blocks: outcome.model_blocks(),
        rounds: outcome.rounds.len(),
        generated_tokens: outcome
            .rounds
            .iter()
            .filter_map(|r| r.generated_tokens)
            .map(u64::from)
            .sum(),
        total_ms: outcome.total_ms,
        generate_ms: outcome.generate_ms,
        execute_ms: outcome.execute_ms,
        backend: backend.to_string(),
        verdict: StoredVerdict {
            extracted: verdict.extracted.clone(),
            correct: verdict.correct,
            reason: verdict.reason.clone(),
        },
    };
    RunRecord {
        record,
        run: Some(run),
    }
}

/// Runs `problems` (each `config.samples` times) by `solver` (an LCE backend or a chat model)
/// and appends the graded records to `out/results.jsonl`; each record is graded here, once.
/// Returns the number of records written by this call.
pub async fn run(
    problems: &[Problem],
    solver: impl Into<Solver>,
    sandbox: Sandbox,
    grader: Arc<Grader>,
    config: &RunConfig,
    progress: Arc<dyn Fn(Event) + Send + Sync>,
) -> Result<usize, RunError> {
    if config.samples == 0 || config.concurrency == 0 {
        return Err(RunError::Invalid(
            "--samples and --concurrency must be at least 1".into(),
        ));
    }
    let mut ids = HashSet::new();
    if let Some(p) = problems.iter().find(|p| !ids.insert(p.id.as_str())) {
        return Err(RunError::Invalid(format!(
            "problem id {:?} appears twice; ids must be unique to resume a run",
            p.id
        )));
    }
    let solver: Solver = solver.into();
    let identity = RunIdentity::of_solver(config, &solver);
    let system: Arc<str> = solver.system(&config.solve).into();
    std::fs::create_dir_all(&config.out).map_err(io(&config.out))?;
    let ident_path = config.out.join("run.json");
    match std::fs::read(&ident_path) {
        Ok(b) => {
            let old: RunIdentity = serde_json::from_slice(&b)
                .map_err(|e| RunError::Invalid(format!("{}: {e}", ident_path.display())))?;
            if old != identity {
                return Err(RunError::Mismatch(
                    config.out.clone(),
                    diff(&old, &identity),
                ));
            }
        }
        Err(_) => {
            std::fs::write(
                &ident_path,
                serde_json::to_vec_pretty(&identity).unwrap_or_default(),
            )
            .map_err(io(&ident_path))?;
        }
    }
    let path = results_path(&config.out);
    let done = load_done(&path, config.retry_failed)?;
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

    // One writer: each record is one write followed by fsync.
    let (tx, mut rx) = mpsc::channel::<String>(256);
    let wpath = path.clone();
    let writer = tokio::task::spawn_blocking(move || -> Result<usize, RunError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&wpath)
            .map_err(io(&wpath))?;
        let mut n = 0;
        while let Some(line) = rx.blocking_recv() {
            f.write_all(line.as_bytes()).map_err(io(&wpath))?;
            f.sync_data().map_err(io(&wpath))?;
            n += 1;
        }
        Ok(n)
    });

    let permits = Arc::new(Semaphore::new(config.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let problems: Arc<Vec<Problem>> = Arc::new(problems.to_vec());
    let backend_name: Arc<str> = identity.backend.as_str().into();
    for (i, s) in todo {
        let permit = permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RunError::Invalid("closed".into()))?;
        let (problems, solver, sandbox, grader, tx, progress, backend_name, system) = (
            problems.clone(),
            solver.clone(),
            sandbox.clone(),
            grader.clone(),
            tx.clone(),
            progress.clone(),
            backend_name.clone(),
            system.clone(),
        );
        let mut solve_cfg = config.solve.clone();
        if config.samples > 1 {
            solve_cfg.seed = Some(solve_cfg.seed.unwrap_or(0) + s as u64);
        }
        let conventions = config.conventions;
        tasks.spawn(async move {
            let _permit = permit;
            let p = &problems[i];
            let outcome = solver
                .solve(&p.question, &sandbox, &solve_cfg, &mut ())
                .await;
            let verdict = grader.grade(
                conventions,
                p.gold(),
                outcome.completion(),
                Some(&p.question),
            );
            let record = run_record(p, s, &outcome, &verdict, &system, &backend_name);
            let line = match record.to_line() {
                Ok(l) => l,
                Err(e) => return Err(RunError::Invalid(format!("serializing a record: {e}"))),
            };
            let failed = outcome.stop.is_failure();
            let _ = tx.send(line).await;
            progress(Event::Finished {
                correct: verdict.correct,
                failed,
            });
            Ok(())
        });
        // Reap finished tasks as we go, so the set does not grow without bound.
        while let Some(r) = tasks.try_join_next() {
            r.map_err(|e| RunError::Invalid(format!("task: {e}")))??;
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| RunError::Invalid(format!("task: {e}")))??;
    }
    drop(tx);
    writer
        .await
        .map_err(|e| RunError::Invalid(format!("writer: {e}")))?
}

/// Reads every record of a results file (ours), in file order.
pub fn read_results(path: &Path) -> Result<Vec<RunRecord>, RunError> {
    Ok(mathcoder_lce::run::read_run_records(path)?
        .into_iter()
        .map(|n| n.record)
        .collect())
}

fn diff(a: &RunIdentity, b: &RunIdentity) -> String {
    let (va, vb) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    if let (Value::Object(ma), Value::Object(mb)) = (va, vb) {
        for (k, x) in &ma {
            if mb.get(k) != Some(x) {
                out.push(format!(
                    "{k}: {x} then, {} now",
                    mb.get(k).cloned().unwrap_or(Value::Null)
                ));
            }
        }
    }
    out.join("; ")
}

/// The default system prompt (re-exported for callers building identities).
pub const SYSTEM: &str = DEFAULT_SYSTEM_PROMPT;
