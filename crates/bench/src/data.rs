//! `mathcoder bench data`: does a data run add anything to what its teacher makes it wait?
//!
//! Self-distillation (`data distill`, the LCE teacher, n samples per problem) runs N problems at
//! once against a replay server with per-token latency that serves one released model per sample
//! (set `seed mod n`, default MathCoder-L-7B, L-13B and CL-13B on SVAMP); every code block is
//! executed for real. The reference is the slowest teacher call chain alone: for each problem
//! the sum of the latencies of one sample's calls (the tokens the server answered for that
//! (model, question), times the per-token latency), the longest sample (a problem's samples run
//! at once), the longest problem. Target: wall time <= 1.05 x that chain.

use anyhow::{bail, Context, Result};
use mathcoder_data::distill::{distill, DistillConfig};
use mathcoder_data::LceTeacher;
use mathcoder_datasets::Problem;
use mathcoder_grade::Grader;
use mathcoder_llm::{BackendKind, BackendSpec};
use mathcoder_replay::{serve_sets, Recordings, ReplayConfig};
use mathcoder_solve::SolveConfig;
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mathcoder_cli::args::data_dir;

#[derive(clap::Args, Debug)]
pub struct DataBenchArgs {
    /// Problems, all in flight at once.
    #[arg(long, default_value_t = 64)]
    problems: usize,
    /// Per-token latency of the replay server, milliseconds.
    #[arg(long, default_value_t = 10.0)]
    latency_ms: f64,
    /// The benchmark whose recorded outputs are replayed.
    #[arg(long, default_value = "svamp")]
    dataset: String,
    /// Recorded outputs, one set (file or directory) per sample (default: the vendored
    /// MathCoder-L-7b, L-13b and CL-13b outputs of the dataset).
    #[arg(long)]
    outputs: Vec<PathBuf>,
    /// Wire protocol.
    #[arg(long, value_enum, default_value_t)]
    backend: BackendKind,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    sandbox: mathcoder_cli::args::SandboxArgs,
}

/// The vendored outputs of `dataset` for each of `models`.
fn vendored(dataset: &str, models: &[&str]) -> Result<Vec<PathBuf>> {
    let root = data_dir()
        .context("no vendored data; pass --outputs")?
        .join("released-outputs");
    models
        .iter()
        .map(|m| {
            let dir = root.join(m);
            std::fs::read_dir(&dir)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.eq_ignore_ascii_case(dataset))
                })
                .with_context(|| format!("no recorded {dataset} outputs in {}", dir.display()))
        })
        .collect()
}

pub fn data(a: DataBenchArgs) -> Result<i32> {
    let set = mathcoder_datasets::resolve(&a.dataset)?;
    let outputs = if a.outputs.is_empty() {
        vendored(
            &a.dataset,
            &["MathCoder-L-7b", "MathCoder-L-13b", "MathCoder-CL-13b"],
        )?
    } else {
        a.outputs.clone()
    };
    let mut sets: Vec<Recordings> = Vec::new();
    for o in &outputs {
        sets.push(Recordings::from_files(&mathcoder_lce::record_files(
            std::slice::from_ref(o),
        )?)?);
    }
    let problems: Vec<Problem> = set
        .problems
        .into_iter()
        .filter(|p| sets.iter().all(|r| r.has(&p.question)))
        .take(a.problems)
        .collect();
    if problems.is_empty() {
        bail!(
            "no problem of {} is recorded in every output set",
            a.dataset
        );
    }
    let samples = sets.len();
    let latency = Duration::from_secs_f64(a.latency_ms.max(0.0) / 1000.0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let sandbox = a.sandbox.sandbox()?;
    rt.block_on(sandbox.warm_up())?;
    let tmp = tempfile::tempdir()?;
    let config = |name: &str, n: usize| DistillConfig {
        out: tmp.path().join(name),
        source: a.dataset.clone(),
        samples,
        seed: Some(0),
        concurrency: n,
        conventions: set.conventions.unwrap_or(mathcoder_grade::Dataset::Generic),
        system: mathcoder_lce::DEFAULT_SYSTEM_PROMPT.into(),
        keep_all: true,
        min_agree: samples,
    };
    // One distill run over `ps`, all at once: its wall time and the tokens the server answered.
    let run = |ps: &[Problem], config: &DistillConfig| {
        rt.block_on(async {
            let server = serve_sets(
                sets.clone(),
                ReplayConfig {
                    per_token_latency: latency,
                    ..ReplayConfig::default()
                },
                "127.0.0.1:0".parse()?,
            )
            .await?;
            let mut spec = BackendSpec::http(a.backend, &server.url());
            spec.http.max_concurrency = ps.len() * samples;
            spec.http.retries = 0;
            if a.backend == BackendKind::Openai {
                spec.model = Some("replay".into());
            }
            let teacher = Arc::new(LceTeacher::new(
                spec.build_http()?,
                sandbox.clone(),
                SolveConfig::default(),
            ));
            let grader = Arc::new(Grader::new(Default::default()));
            let t = Instant::now();
            distill(ps, teacher, grader, config, Arc::new(|_| {})).await?;
            let wall = t.elapsed();
            let answered = server.answered_tokens();
            server.stop();
            Ok::<_, anyhow::Error>((wall, answered))
        })
    };
    let config_all = config("all", problems.len());
    let (wall, answered) = run(&problems, &config_all)?;
    // A problem's chain: its longest sample; the reference: the longest problem's.
    let (chain_tokens, slowest) = problems
        .iter()
        .map(|p| {
            let t = (0..samples)
                .map(|s| answered.get(&(s, p.question.clone())).copied().unwrap_or(0))
                .max()
                .unwrap_or(0);
            (t, p.id.clone())
        })
        .max()
        .unwrap_or_default();
    let chain = latency * chain_tokens as u32;
    let stats = mathcoder_data::seed::stats(&config_all.out)?;
    // The slowest problem run alone (its samples at once): the chain plus its own executions
    // and round trips.
    let alone = problems
        .iter()
        .find(|p| p.id == slowest)
        .map(|p| run(std::slice::from_ref(p), &config("alone", 1)))
        .transpose()?
        .map(|(w, _)| w)
        .unwrap_or_default();
    let failed = stats.count(mathcoder_data::seed::AttemptOutcome::Failed);
    let ratio = wall.as_secs_f64() / chain.as_secs_f64().max(1e-9);
    let report = json!({
        "dataset": a.dataset,
        "problems": problems.len(),
        "samples": samples,
        "concurrency": problems.len(),
        "latency_ms_per_token": a.latency_ms,
        "wall_s": wall.as_secs_f64(),
        "slowest_chain_s": chain.as_secs_f64(),
        "slowest_chain_tokens": chain_tokens,
        "slowest_problem": slowest,
        "ratio": ratio,
        "slowest_problem_alone_s": alone.as_secs_f64(),
        "ratio_vs_alone": wall.as_secs_f64() / alone.as_secs_f64().max(1e-9),
        "failed": failed,
        "kept": stats.count(mathcoder_data::seed::AttemptOutcome::Kept),
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "data distill: {} problems x {samples} samples at once, {} ms per token; wall {:.2} s; slowest teacher call chain alone ({slowest}, {chain_tokens} tokens) {:.2} s; ratio {:.3} (target <= 1.05); that problem run alone (with its executions) {:.2} s, ratio {:.3}; {} kept, {failed} failed",
            problems.len(),
            a.latency_ms,
            wall.as_secs_f64(),
            chain.as_secs_f64(),
            ratio,
            alone.as_secs_f64(),
            report["ratio_vs_alone"].as_f64().unwrap_or(0.0),
            report["kept"]
        );
    }
    if failed > 0 {
        bail!("{failed} problems failed: the figure is not comparable");
    }
    Ok(0)
}
