//! `mathcoder bench runtime`: does the generate/execute loop keep hundreds of problems in flight
//! without serialising, and how many rounds per second does it drive with real execution?
//!
//! Both phases replay recorded model blocks (the hidden replay server, in process) and execute
//! every code block for real in the sandbox.
//! 1. Per-token latency, no slot limit: N problems at concurrency N, compared with the slowest
//!    of them run alone (its generation latency plus its own executions). The target is
//!    wall time <= 1.1 x that.
//! 2. Zero latency: rounds (generation calls) per second at the chosen concurrency, and with the
//!    authors' scheme (4 workers, one problem at a time each).

use anyhow::{Context, Result};
use mathcoder_datasets::Problem;
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{BlockKind, RunInfo, RunRecord};
use mathcoder_llm::{BackendKind, BackendSpec};
use mathcoder_replay::{serve, Recordings, ReplayConfig};
use mathcoder_runner::{read_results, run, Event, RunConfig};
use mathcoder_sandbox::Sandbox;
use mathcoder_solve::SolveConfig;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mathcoder_cli::args::data_dir;

#[derive(clap::Args, Debug)]
pub struct RuntimeArgs {
    /// A benchmark whose recorded outputs are replayed.
    #[arg(long, default_value = "simuleq")]
    dataset: String,
    /// Recorded outputs (default: the vendored MathCoder-L-7B outputs of the dataset).
    #[arg(long)]
    outputs: Option<PathBuf>,
    /// Problems in the latency phase.
    #[arg(long, default_value_t = 200)]
    problems: usize,
    /// Per-token latency of the replay server in the latency phase, milliseconds.
    #[arg(long, default_value_t = 10.0)]
    latency_ms: f64,
    /// Problems run alone to find the slowest single problem (the most expensive by recorded
    /// tokens and execution time).
    #[arg(long, default_value_t = 2)]
    singles: usize,
    /// Problems in the zero-latency phase.
    #[arg(long, default_value_t = 200)]
    zero_latency_problems: usize,
    /// Concurrency of the zero-latency phase (the authors' scheme always uses 4).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Also run the authors' actual scheme at zero latency: 4 worker processes, a fresh Jupyter
    /// kernel per problem, TGI re-sent the whole prompt (a Python reference driver in a separate
    /// environment with ipykernel and jupyter_client, created on first use).
    #[arg(long)]
    jupyter: bool,
    /// Skip the latency phase.
    #[arg(long)]
    no_latency_phase: bool,
    /// Wire protocol.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendKind,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sandbox: mathcoder_cli::args::SandboxArgs,
}

struct Phase {
    wall: Duration,
    records: Vec<(RunRecord, RunInfo)>,
}

impl Phase {
    fn rounds(&self) -> u64 {
        self.records.iter().map(|(_, m)| m.rounds as u64).sum()
    }
    fn code_blocks(&self) -> usize {
        self.records
            .iter()
            .map(|(r, _)| {
                r.record
                    .blocks()
                    .iter()
                    .filter(|b| b.kind == BlockKind::Code)
                    .count()
            })
            .sum()
    }
    fn failed(&self) -> usize {
        self.records.iter().filter(|(_, m)| m.failed()).count()
    }
}

struct Bench {
    recordings: Recordings,
    backend: BackendKind,
    sandbox: Sandbox,
    grader: Arc<Grader>,
    conventions: Dataset,
    tmp: tempfile::TempDir,
    runs: usize,
}

impl Bench {
    async fn phase(
        &mut self,
        problems: &[Problem],
        latency_ms: f64,
        concurrency: usize,
    ) -> Result<Phase> {
        let server = serve(
            self.recordings.clone(),
            ReplayConfig {
                per_token_latency: Duration::from_secs_f64(latency_ms / 1000.0),
                ..ReplayConfig::default()
            },
            "127.0.0.1:0".parse()?,
        )
        .await?;
        let mut spec = BackendSpec::http(self.backend, &server.url());
        spec.http.max_concurrency = concurrency.max(1);
        spec.http.retries = 0;
        if self.backend == BackendKind::Openai {
            spec.model = Some("replay".into());
        }
        let backend = spec.build_http()?;
        self.runs += 1;
        let out = self.tmp.path().join(format!("run{}", self.runs));
        let config = RunConfig {
            out: out.clone(),
            dataset: "bench".into(),
            concurrency,
            samples: 1,
            solve: SolveConfig::default(),
            conventions: self.conventions,
            retry_failed: false,
        };
        let t = Instant::now();
        run(
            problems,
            backend,
            self.sandbox.clone(),
            self.grader.clone(),
            &config,
            Arc::new(|_: Event| {}),
        )
        .await?;
        let wall = t.elapsed();
        server.stop();
        Ok(Phase {
            wall,
            records: read_records(&mathcoder_runner::results_path(&out))?,
        })
    }
}

fn read_records(path: &Path) -> Result<Vec<(RunRecord, RunInfo)>> {
    Ok(read_results(path)?
        .into_iter()
        .filter_map(|r| r.run.clone().map(|m| (r, m)))
        .collect())
}

pub fn runtime(a: RuntimeArgs) -> Result<i32> {
    let bench = mathcoder_datasets::Benchmark::from_name(&a.dataset)
        .with_context(|| format!("unknown dataset {:?}", a.dataset))?;
    let outputs = match &a.outputs {
        Some(p) => p.clone(),
        None => {
            let dir = data_dir()
                .context("no vendored data; pass --outputs")?
                .join("released-outputs/MathCoder-L-7b");
            std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.eq_ignore_ascii_case(bench.name()))
                })
                .with_context(|| {
                    format!(
                        "no recorded outputs for {} in {}",
                        bench.name(),
                        dir.display()
                    )
                })?
        }
    };
    let files = mathcoder_lce::record_files(&[outputs])?;
    let recordings = Recordings::from_files(&files)?;
    let all: Vec<Problem> = bench
        .load()?
        .into_iter()
        .filter(|p| recordings.has(&p.question))
        .collect();
    if all.is_empty() {
        anyhow::bail!(
            "none of the {} problems has a recorded solution",
            bench.name()
        );
    }
    let take = |n: usize| -> Vec<Problem> {
        all.iter()
            .cycle()
            .take(n)
            .cloned()
            .enumerate()
            .map(|(i, mut p)| {
                if i >= all.len() {
                    p.id = format!("{}#{}", p.id, i / all.len());
                }
                p
            })
            .collect()
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sandbox = a.sandbox.sandbox()?;
    let versions = rt.block_on(sandbox.warm_up())?;
    let mut b = Bench {
        recordings,
        backend: a.backend,
        sandbox,
        grader: Arc::new(Grader::new(Default::default())),
        conventions: bench.conventions(),
        tmp: tempfile::tempdir()?,
        runs: 0,
    };
    let mut report = json!({
        "dataset": bench.name(),
        "backend": a.backend.name(),
        "python": versions.python,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
    });
    let say = |s: String| {
        if !a.json {
            println!("{s}");
        }
    };
    if !a.no_latency_phase {
        let problems = take(a.problems);
        say(format!(
            "latency phase: {} problems at concurrency {}, {} ms per token, no slot limit",
            problems.len(),
            problems.len(),
            a.latency_ms
        ));
        let together = rt.block_on(b.phase(&problems, a.latency_ms, problems.len()))?;
        // The most expensive problems by recorded tokens and execution time, run alone.
        let mut cost: Vec<(f64, usize)> = together
            .records
            .iter()
            .map(|(r, m)| {
                let est = m.generated_tokens as f64 * a.latency_ms + m.execute_ms;
                let id = r.id();
                (est, problems.iter().position(|p| p.id == id).unwrap_or(0))
            })
            .collect();
        let serial_s = cost.iter().map(|c| c.0).sum::<f64>() / 1000.0;
        cost.sort_by(|x, y| y.0.total_cmp(&x.0));
        let mut singles = Vec::new();
        for (_, i) in cost.iter().take(a.singles.max(1)) {
            let one = rt.block_on(b.phase(std::slice::from_ref(&problems[*i]), a.latency_ms, 1))?;
            let Some((_, rec)) = one.records.first() else {
                anyhow::bail!("the single run of {} wrote no record", problems[*i].id);
            };
            singles.push(json!({
                "id": problems[*i].id,
                "wall_s": one.wall.as_secs_f64(),
                "generate_s": rec.generate_ms / 1000.0,
                "execute_s": rec.execute_ms / 1000.0,
                "rounds": rec.rounds,
                "tokens": rec.generated_tokens,
            }));
            say(format!(
                "  alone: {} in {:.2} s ({} rounds, {} tokens, {:.2} s executing)",
                problems[*i].id,
                one.wall.as_secs_f64(),
                rec.rounds,
                rec.generated_tokens,
                rec.execute_ms / 1000.0
            ));
        }
        let slowest = singles
            .iter()
            .map(|s| s["wall_s"].as_f64().unwrap_or(0.0))
            .fold(0.0, f64::max);
        let ratio = together.wall.as_secs_f64() / slowest.max(1e-9);
        say(format!(
            "  all {} together: {:.2} s = {:.3} x the slowest single problem ({:.2} s); target <= 1.1: {}",
            problems.len(),
            together.wall.as_secs_f64(),
            ratio,
            slowest,
            if ratio <= 1.1 { "met" } else { "NOT met" }
        ));
        say(format!(
            "  one after another they would take about {serial_s:.0} s (recorded tokens x latency + executions)"
        ));
        if together.failed() > 0 {
            say(format!("  {} problems failed", together.failed()));
        }
        report["latency_phase"] = json!({
            "problems": problems.len(),
            "latency_ms_per_token": a.latency_ms,
            "wall_s": together.wall.as_secs_f64(),
            "rounds": together.rounds(),
            "failed": together.failed(),
            "singles": singles,
            "slowest_single_s": slowest,
            "serial_estimate_s": serial_s,
            "ratio": ratio,
            "target_met": ratio <= 1.1,
        });
    }
    let problems = take(a.zero_latency_problems);
    let mut zero = serde_json::Map::new();
    for (label, conc) in [("runtime", a.concurrency), ("authors_scheme_4_workers", 4)] {
        let p = rt.block_on(b.phase(&problems, 0.0, conc))?;
        let secs = p.wall.as_secs_f64();
        say(format!(
            "zero latency, {label} (concurrency {conc}): {} problems, {} rounds, {} code blocks in {:.2} s: {:.1} rounds/s, {:.1} problems/s{}",
            problems.len(),
            p.rounds(),
            p.code_blocks(),
            secs,
            p.rounds() as f64 / secs,
            problems.len() as f64 / secs,
            if p.failed() > 0 { format!(", {} failed", p.failed()) } else { String::new() }
        ));
        zero.insert(
            label.into(),
            json!({
                "concurrency": conc,
                "problems": problems.len(),
                "rounds": p.rounds(),
                "code_blocks": p.code_blocks(),
                "wall_s": secs,
                "rounds_per_s": p.rounds() as f64 / secs,
                "problems_per_s": problems.len() as f64 / secs,
                "failed": p.failed(),
            }),
        );
    }
    if a.jupyter {
        let py = crate::sandbox::jupyter_python(&b.sandbox)?;
        let script = b.tmp.path().join("authors_scheme.py");
        std::fs::write(&script, include_str!("../python/authors_scheme.py"))?;
        let questions = b.tmp.path().join("questions.json");
        std::fs::write(
            &questions,
            serde_json::to_vec(&problems.iter().map(|p| &p.question).collect::<Vec<_>>())?,
        )?;
        let v: Value = rt.block_on(async {
            let server = serve(
                b.recordings.clone(),
                ReplayConfig::default(),
                "127.0.0.1:0".parse()?,
            )
            .await?;
            let out = tokio::process::Command::new(&py)
                .arg(&script)
                .arg(server.url())
                .arg(&questions)
                .args(["4", "33"])
                .stderr(std::process::Stdio::inherit())
                .output()
                .await?;
            server.stop();
            if !out.status.success() {
                anyhow::bail!("the authors' scheme driver failed");
            }
            serde_json::from_slice::<Value>(&out.stdout).context("reading the driver's report")
        })?;
        let secs = v["wall_s"].as_f64().unwrap_or(f64::NAN);
        let rounds = v["rounds"].as_f64().unwrap_or(0.0);
        say(format!(
            "zero latency, authors' scheme with real Jupyter kernels (4 workers, ipykernel 6.25.2): {} problems, {} rounds, {} code blocks in {:.2} s: {:.1} rounds/s, {:.1} problems/s (kernel start {:.0} ms on average)",
            v["problems"], v["rounds"], v["code_blocks"], secs, rounds / secs,
            problems.len() as f64 / secs,
            v["kernel_start_s_mean"].as_f64().unwrap_or(0.0) * 1000.0
        ));
        let mut j = v.clone();
        j["rounds_per_s"] = json!(rounds / secs);
        j["problems_per_s"] = json!(problems.len() as f64 / secs);
        zero.insert("authors_scheme_jupyter".into(), j);
    }
    report["zero_latency"] = Value::Object(zero);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(0)
}
