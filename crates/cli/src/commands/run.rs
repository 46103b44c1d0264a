//! `mathcoder solve`, `mathcoder eval`, and the hidden `replay-server`.

use anyhow::{bail, Context, Result};
use mathcoder_datasets::{load_file, Benchmark, Problem};
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::{Block, BlockKind, PromptTemplate};
use mathcoder_llm::http::HttpConfig;
use mathcoder_llm::{openai::OpenAi, tgi::Tgi, Backend};
use mathcoder_runner::{aggregate, Event, RunConfig, RunIdentity};
use mathcoder_solve::{Observer, SolveConfig};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::sandbox::SandboxArgs;
use super::{data_dir, GradeArgs};

/// Which model to talk to.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// `tgi` (text-generation-inference), `openai` (vLLM, SGLang, llama.cpp, OpenAI), or
    /// `native` (this program's own engine; needs --model).
    #[arg(long, default_value = "tgi", value_parser = ["tgi", "openai", "native"])]
    pub backend: String,
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub endpoint: String,
    /// OpenAI-compatible servers: the served model's name (default: mathcoder). Native: the
    /// checkpoint directory (config.json + safetensors or .bin) or .gguf file.
    #[arg(long)]
    pub model: Option<String>,
    /// API key (default: $OPENAI_API_KEY for the openai backend).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds before a request counts as hung.
    #[arg(long, default_value_t = 300.0)]
    pub request_timeout: f64,
    /// Retries of a failed request (5xx, connection errors, timeouts, malformed replies).
    #[arg(long, default_value_t = 4)]
    pub retries: u32,
    /// First retry delay in seconds (doubles each time).
    #[arg(long, default_value_t = 0.5)]
    pub retry_backoff: f64,
    #[command(flatten)]
    pub native: super::engine::NativeArgs,
    /// Native engine: most sequences decoded together.
    #[arg(long, default_value_t = 32)]
    pub max_batch: usize,
    /// Native engine: KV cache kept between rounds, in MiB.
    #[arg(long, default_value_t = 4096)]
    pub kv_cache_mb: usize,
}

impl BackendArgs {
    pub fn build(&self, max_concurrency: usize) -> Result<Arc<dyn Backend>> {
        let http = HttpConfig {
            timeout: Duration::from_secs_f64(self.request_timeout.max(0.001)),
            retries: self.retries,
            backoff: Duration::from_secs_f64(self.retry_backoff.max(0.0)),
            max_concurrency: max_concurrency.max(1),
            api_key: self.api_key.clone().or_else(|| {
                (self.backend == "openai")
                    .then(|| std::env::var("OPENAI_API_KEY").ok())
                    .flatten()
            }),
            ..HttpConfig::default()
        };
        if self.backend == "tgi" && self.model.is_some() {
            bail!("--model names an OpenAI-compatible server's model or the native engine's checkpoint; TGI serves one model");
        }
        Ok(match self.backend.as_str() {
            "native" => {
                let Some(path) = &self.model else {
                    bail!("the native backend needs --model DIR|FILE.gguf");
                };
                Arc::new(self.native.backend(
                    std::path::Path::new(path),
                    self.max_batch,
                    self.kv_cache_mb,
                )?)
            }
            "tgi" => Arc::new(Tgi::new(&self.endpoint, http)?),
            "openai" => Arc::new(OpenAi::new(
                &self.endpoint,
                self.model.as_deref().unwrap_or("mathcoder"),
                http,
            )?),
            other => bail!("unknown backend {other:?}"),
        })
    }
}

/// The loop's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct LoopArgs {
    /// Most model blocks per solution (the paper: 32; the authors' public script: 16 calls).
    #[arg(long, default_value_t = 32)]
    pub max_blocks: usize,
    /// Most new tokens per block.
    #[arg(long, default_value_t = 512)]
    pub max_new_tokens: u32,
    /// Prompt tokens kept (from the end) by the server; 0 for no truncation.
    #[arg(long, default_value_t = 1536)]
    pub truncate: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long)]
    pub top_p: Option<f32>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// The system prompt.
    #[arg(long, default_value = mathcoder_lce::DEFAULT_SYSTEM_PROMPT)]
    pub system_prompt: String,
    /// Appended to each question (the authors' public script appended "\n").
    #[arg(long, default_value = "")]
    pub question_suffix: String,
    /// Keep long decimals in generated blocks (the authors rounded them to 6 places).
    #[arg(long)]
    pub no_truncate_decimals: bool,
}

impl LoopArgs {
    pub fn config(&self) -> SolveConfig {
        SolveConfig {
            template: PromptTemplate {
                system: self.system_prompt.clone(),
                question_suffix: self.question_suffix.clone(),
            },
            max_blocks: self.max_blocks,
            max_new_tokens: self.max_new_tokens,
            truncate: (self.truncate > 0).then_some(self.truncate),
            temperature: self.temperature,
            top_p: self.top_p,
            seed: self.seed,
            truncate_decimals: !self.no_truncate_decimals,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct SolveArgs {
    /// The problem (or use --file).
    question: Option<String>,
    /// Read the problem from a file.
    #[arg(long)]
    file: Option<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    looping: LoopArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
    /// Print the outcome as JSON instead of streaming it.
    #[arg(long)]
    json: bool,
}

struct Terminal {
    color: bool,
}

impl Observer for Terminal {
    fn block(&mut self, b: &Block) {
        let mut out = std::io::stdout().lock();
        let (label, color) = match b.kind {
            BlockKind::Text => ("text", "\x1b[0m"),
            BlockKind::Code => ("code", "\x1b[36m"),
            BlockKind::Execution => ("execution", "\x1b[2m"),
        };
        if self.color {
            let _ = writeln!(
                out,
                "\x1b[1m── {label} ──\x1b[0m\n{color}{}\x1b[0m",
                b.content
            );
        } else {
            let _ = writeln!(out, "── {label} ──\n{}", b.content);
        }
        let _ = out.flush();
    }
}

pub fn solve(a: SolveArgs) -> Result<i32> {
    let question = match (&a.question, &a.file) {
        (Some(q), None) => q.clone(),
        (None, Some(f)) => {
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
        }
        (Some(_), Some(_)) => bail!("give the question or --file, not both"),
        (None, None) => bail!("give a question, or --file PATH"),
    };
    let backend = a.backend.build(1)?;
    let sandbox = a.sandbox.sandbox()?;
    let config = a.looping.config();
    let rt = tokio::runtime::Runtime::new()?;
    let mut term = Terminal {
        color: std::io::stdout().is_terminal(),
    };
    let outcome = rt.block_on(async {
        if a.json {
            mathcoder_solve::solve(&question, backend.as_ref(), &sandbox, &config, &mut ()).await
        } else {
            mathcoder_solve::solve(&question, backend.as_ref(), &sandbox, &config, &mut term).await
        }
    });
    let extracted = mathcoder_grade::extract(outcome.completion())
        .ok()
        .map(|e| e.answer);
    let mut out = std::io::stdout().lock();
    if a.json {
        let v = serde_json::json!({"question": question, "outcome": outcome, "answer": extracted});
        serde_json::to_writer(&mut out, &v)?;
        writeln!(out)?;
    } else {
        writeln!(
            out,
            "\nanswer: {}\nstopped: {} after {} model blocks ({:.1} s: {:.1} s generating, {:.1} s executing)",
            extracted.as_deref().unwrap_or("(none found)"),
            match &outcome.stop {
                mathcoder_solve::StopReason::BackendError(e) | mathcoder_solve::StopReason::ExecutionFault(e) => format!("{} ({e})", outcome.stop.label()),
                s => s.label().to_string(),
            },
            outcome.model_blocks(),
            outcome.total_ms / 1000.0,
            outcome.generate_ms / 1000.0,
            outcome.execute_ms / 1000.0
        )?;
    }
    Ok(if outcome.stop.is_failure() { 1 } else { 0 })
}

#[derive(clap::Args, Debug)]
pub struct EvalArgs {
    /// A benchmark name (see `mathcoder datasets`) or a JSONL file of problems.
    #[arg(long)]
    dataset: String,
    /// Answer conventions for a dataset file (default: from the name or path).
    #[arg(long)]
    conventions: Option<String>,
    /// Output directory (results.jsonl, summary.json, run.json); an existing run there resumes.
    #[arg(long)]
    out: PathBuf,
    /// Problems solved at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Only the first K problems.
    #[arg(long)]
    limit: Option<usize>,
    /// Samples per problem (seeds seed, seed+1, ...); reports maj@k and pass@k.
    #[arg(long, default_value_t = 1)]
    samples: usize,
    /// Run again the problems recorded as failed (backend or sandbox errors).
    #[arg(long)]
    retry_failed: bool,
    /// Recorded outputs of the same model (files or directories) to compare final answers with.
    #[arg(long, num_args = 1..)]
    reference: Vec<PathBuf>,
    #[command(flatten)]
    backend: BackendArgs,
    #[command(flatten)]
    looping: LoopArgs,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[command(flatten)]
    grading: GradeArgs,
}

fn load_problems(spec: &str) -> Result<(String, Vec<Problem>, Option<Dataset>)> {
    if let Some(b) = Benchmark::from_name(spec) {
        return Ok((
            b.name().to_string(),
            b.load()?,
            Dataset::from_name(b.grading_conventions()),
        ));
    }
    let path = PathBuf::from(spec);
    if !path.exists() {
        bail!(
            "{spec:?} is neither a benchmark ({}) nor a file",
            Benchmark::ALL.map(|b| b.name()).join(", ")
        );
    }
    let name = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("dataset")
        .split('.')
        .next()
        .unwrap_or("dataset")
        .to_string();
    let conventions = Dataset::from_path(&path.to_string_lossy());
    Ok((name.clone(), load_file(&path, &name)?, conventions))
}

pub fn eval(a: EvalArgs) -> Result<i32> {
    let (name, mut problems, detected) = load_problems(&a.dataset)?;
    let conventions = match &a.conventions {
        Some(c) => Dataset::from_name(c).with_context(|| format!("unknown conventions {c:?}"))?,
        None => detected.unwrap_or(Dataset::Generic),
    };
    if let Some(k) = a.limit {
        problems.truncate(k);
    }
    if problems.is_empty() {
        bail!("no problems to run");
    }
    let backend = a.backend.build(a.concurrency)?;
    let sandbox = a.sandbox.sandbox()?;
    let grader = Arc::new(Grader::new(a.grading.options()));
    let solve = a.looping.config();
    let identity = RunIdentity {
        dataset: name.clone(),
        samples: a.samples,
        backend: backend.describe(),
        max_blocks: solve.max_blocks,
        max_new_tokens: solve.max_new_tokens,
        temperature: solve.temperature,
        system: solve.template.system.clone(),
    };
    let config = RunConfig {
        out: a.out.clone(),
        concurrency: a.concurrency,
        samples: a.samples,
        solve,
        conventions,
        retry_failed: a.retry_failed,
    };
    let pb = crate::progress::bar(0, "solving");
    let (correct, finished, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let (pbc, c2, f2, x2) = (
        pb.clone(),
        correct.clone(),
        finished.clone(),
        failed.clone(),
    );
    let progress: Arc<dyn Fn(Event) + Send + Sync> = Arc::new(move |e| match e {
        Event::Start { done, todo } => {
            pbc.set_length(todo as u64);
            if done > 0 {
                pbc.println(format!(
                    "resuming: {done} records already in results.jsonl, {todo} to go"
                ));
            }
        }
        Event::Finished { correct, failed } => {
            let n = f2.fetch_add(1, Ordering::SeqCst) + 1;
            let c = c2.fetch_add(correct as usize, Ordering::SeqCst) + correct as usize;
            let x = x2.fetch_add(failed as usize, Ordering::SeqCst) + failed as usize;
            pbc.set_message(format!(
                "solving, accuracy {:.1}% ({c}/{n}){}",
                100.0 * c as f64 / n as f64,
                if x > 0 {
                    format!(", {x} failed")
                } else {
                    String::new()
                }
            ));
            pbc.inc(1);
        }
    });
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(mathcoder_runner::run(
        &problems,
        &identity,
        backend.clone(),
        sandbox,
        grader.clone(),
        &config,
        progress,
    ))?;
    pb.finish_and_clear();
    let results = mathcoder_runner::results_path(&a.out);
    let mut summary =
        aggregate::summarize(&results, &name, &identity.backend, conventions, &grader)?;
    if !a.reference.is_empty() {
        let files = mathcoder_sandbox::audit::expand_inputs(&a.reference)?;
        summary.reference = Some(mathcoder_runner::reference::compare(
            &results,
            &files,
            conventions,
            &grader,
        )?);
    }
    std::fs::write(
        a.out.join("summary.json"),
        serde_json::to_vec_pretty(&summary)?,
    )
    .context("writing summary.json")?;
    let score = mathcoder_eval::score_file(&results, Some(conventions), &grader, &|_| {})?;
    let runs = mathcoder_eval::group_runs(std::slice::from_ref(&score));
    let mut out = std::io::stdout().lock();
    write!(
        out,
        "{}",
        mathcoder_eval::render_text(&runs, std::slice::from_ref(&score))
    )?;
    if let (Some(m), Some(p)) = (summary.maj_at_k, summary.pass_at_k) {
        writeln!(
            out,
            "  samples per problem {}: maj@{} {:.2}%  pass@{} {:.2}%  pass@1 {:.2}%",
            summary.samples,
            summary.samples,
            100.0 * m,
            summary.samples,
            100.0 * p,
            100.0 * summary.pass_at_1.unwrap_or(0.0)
        )?;
    }
    writeln!(out, "  stop reasons: {:?}", summary.stop_reasons)?;
    if let Some(c) = &summary.reference {
        writeln!(
            out,
            "  vs reference: same final answer {}/{} ({:.2}%), equivalent but differently written {}, identical solutions {}, not in reference {}",
            c.same_answer,
            c.matched,
            100.0 * c.same_answer_rate(),
            c.equivalent_answer,
            c.same_solution,
            c.unmatched
        )?;
        for (id, ours, theirs) in c.differing.iter().take(10) {
            writeln!(
                out,
                "    {id}: {} here, {} recorded",
                ours.as_deref().unwrap_or("(none)"),
                theirs.as_deref().unwrap_or("(none)")
            )?;
        }
    }
    if summary.failed > 0 {
        writeln!(out, "  {} records failed (backend or sandbox errors); rerun with --retry-failed to try them again", summary.failed)?;
    }
    writeln!(
        out,
        "  results: {}  summary: {}",
        results.display(),
        a.out.join("summary.json").display()
    )?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Output files or directories (default: the vendored released outputs).
    inputs: Vec<PathBuf>,
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Delay per generated token, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Generations served at once.
    #[arg(long)]
    slots: Option<usize>,
    /// Inject a fault: 500, hang, malformed, close.
    #[arg(long)]
    fault: Option<String>,
    /// Every N-th request gets the fault.
    #[arg(long, default_value_t = 1)]
    fault_every: u64,
    /// Only this many faults (0: unlimited).
    #[arg(long, default_value_t = 0)]
    fault_limit: u64,
    /// Reject vLLM's extension fields with a 400, as OpenAI's API does.
    #[arg(long)]
    openai_strict: bool,
}

pub fn replay(a: ReplayArgs) -> Result<i32> {
    use mathcoder_replay::{serve, Fault, Recordings, ReplayConfig};
    let inputs = if a.inputs.is_empty() {
        vec![data_dir()
            .context("no vendored data; pass output files")?
            .join("released-outputs")]
    } else {
        a.inputs.clone()
    };
    let files = mathcoder_sandbox::audit::expand_inputs(&inputs)?;
    let rec = Recordings::from_files(&files)?;
    let fault = match a.fault.as_deref() {
        None => None,
        Some("500") => Some(Fault::ServerError),
        Some("hang") => Some(Fault::Hang),
        Some("malformed") => Some(Fault::Malformed),
        Some("close") => Some(Fault::Close),
        Some(f) => bail!("unknown fault {f:?} (500, hang, malformed, close)"),
    };
    let config = ReplayConfig {
        per_token_latency: Duration::from_secs_f64(a.latency_ms.max(0.0) / 1000.0),
        slots: a.slots,
        fault,
        fault_every: a.fault_every,
        fault_limit: a.fault_limit,
        openai_strict: a.openai_strict,
        ..ReplayConfig::default()
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let n = rec.len();
        let server = serve(rec, config, a.addr).await?;
        eprintln!(
            "replaying {n} recorded solutions on {} (TGI: /generate, OpenAI: /v1/completions)",
            server.url()
        );
        println!("{}", server.url());
        tokio::signal::ctrl_c().await?;
        server.stop();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}
