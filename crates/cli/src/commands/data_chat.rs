//! The chat side of `mathcoder data`: the chat teacher's flags, `data interpolate` and
//! `data judge` (argument parsing and progress only; the work is `mathcoder-data`'s).

use anyhow::{bail, Result};
use mathcoder_data::interpolate::{
    Comparison, InterpolateConfig, JudgeConfig, PromptConfig, Rejection,
};
use mathcoder_data::{ChatConfig, ChatTeacher};
use mathcoder_lce::chat::ChatStyle;
use mathcoder_sandbox::Sandbox;
use mathcoder_solve::SolveConfig;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use mathcoder_cli::args::BackendArgs;

fn chat_defaults() -> ChatConfig {
    ChatConfig::default()
}

/// The chat teacher's flags (`--teacher chat`; the server is `--endpoint`, the model `--model`,
/// sampling `--temperature`, `--top-p`, `--seed`).
#[derive(clap::Args, Debug, Clone)]
pub struct ChatArgs {
    /// How the chat model runs code: `tools` (OpenAI function calling with a `python` tool) or
    /// `fences` (```python fences, for models without tool calling; outputs go back as user
    /// messages).
    #[arg(long, value_enum, default_value_t)]
    pub chat_style: ChatStyle,
    /// Most requests per chat solution.
    #[arg(long, default_value_t = chat_defaults().max_rounds)]
    pub chat_max_rounds: usize,
    /// Most tokens per chat reply.
    #[arg(long, default_value_t = chat_defaults().max_tokens)]
    pub chat_max_tokens: u32,
}

impl ChatArgs {
    /// Checks that the server listens and builds the chat teacher.
    pub fn teacher(
        &self,
        backend: &BackendArgs,
        concurrency: usize,
        sandbox: Sandbox,
        looping: &SolveConfig,
    ) -> Result<ChatTeacher> {
        if backend.backend == Some(mathcoder_llm::BackendKind::Native)
            && self.chat_style == ChatStyle::Tools
        {
            bail!(
                "the native chat teacher runs the model through its chat template, which has no \
                 tool calling: add --chat-style fences"
            );
        }
        let client = chat_client(backend, concurrency)?;
        Ok(ChatTeacher::new(
            client,
            sandbox,
            ChatConfig {
                style: self.chat_style,
                max_rounds: self.chat_max_rounds,
                max_tokens: self.chat_max_tokens,
                temperature: looping.temperature,
                top_p: looping.top_p,
                ..ChatConfig::default()
            },
        ))
    }
}

/// The chat model the backend flags name: a chat server (checked to be listening first), or the
/// native engine through the model's chat template.
pub fn chat_client(
    backend: &BackendArgs,
    concurrency: usize,
) -> Result<Arc<dyn mathcoder_llm::chat::ChatModel>> {
    let spec = backend.spec(concurrency);
    if spec.kind == mathcoder_llm::BackendKind::Native {
        let model = mathcoder_engine::load_native_model(&spec, None)?;
        return Ok(Arc::new(model.chat()?));
    }
    spec.check_chat_listening()?;
    Ok(Arc::new(spec.build_chat()?))
}

#[derive(clap::Args, Debug)]
pub struct InterpolateArgs {
    /// (GSM8K, MATH) pairs to try.
    #[arg(long)]
    count: usize,
    /// Output directory (problems.jsonl, attempts.jsonl, run.json); an existing run resumes.
    #[arg(long)]
    out: PathBuf,
    /// Seeds the pair draws (pair k is the k-th draw) and each request (seed + k).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The easy problems ("Example 1").
    #[arg(long, default_value = "gsm8k-train")]
    easy: String,
    /// The hard problems ("Example 2").
    #[arg(long, default_value = "math-train")]
    hard: String,
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    #[arg(long)]
    top_p: Option<f32>,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// Requests at once.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

#[derive(clap::Args, Debug)]
pub struct JudgeArgs {
    /// Interpolated problems (`problems.jsonl` of `data interpolate`).
    #[arg(long)]
    problems: PathBuf,
    /// Output directory (judgments.jsonl, run.json); an existing run resumes.
    #[arg(long)]
    out: PathBuf,
    /// The sets the parents were drawn from (as given to `interpolate`).
    #[arg(long, default_value = "gsm8k-train")]
    easy: String,
    #[arg(long, default_value = "math-train")]
    hard: String,
    /// Only the first N problems.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Most tokens per reply.
    #[arg(long, default_value_t = 256)]
    max_tokens: u32,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    #[command(flatten)]
    backend: BackendArgs,
}

fn counter_bar(
    what: &'static str,
    len: usize,
) -> (indicatif::ProgressBar, Arc<dyn Fn(bool) + Send + Sync>) {
    let pb = mathcoder_cli::progress::bar(len as u64, what);
    let (ok, all) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let pbc = pb.clone();
    let f: Arc<dyn Fn(bool) + Send + Sync> = Arc::new(move |good| {
        let n = all.fetch_add(1, Ordering::SeqCst) + 1;
        let k = ok.fetch_add(good as usize, Ordering::SeqCst) + good as usize;
        pbc.set_message(format!("{what}, {k}/{n}"));
        pbc.inc(1);
    });
    (pb, f)
}

pub fn interpolate(a: InterpolateArgs) -> Result<i32> {
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    let easy = mathcoder_datasets::resolve(&a.easy)?.problems;
    let hard = mathcoder_datasets::resolve(&a.hard)?.problems;
    let client = chat_client(&a.backend, a.concurrency)?;
    let config = InterpolateConfig {
        out: a.out.clone(),
        count: a.count,
        seed: a.seed,
        concurrency: a.concurrency,
        prompt: PromptConfig {
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_p: a.top_p,
        },
    };
    let (pb, progress) = counter_bar("interpolating", a.count);
    let start = std::time::Instant::now();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(mathcoder_data::interpolate::interpolate(
        &easy, &hard, client, &config, progress,
    ))?;
    pb.finish_and_clear();
    let s = mathcoder_data::interpolate::interpolate_stats(&a.out)?;
    let mut out = std::io::stdout().lock();
    let rejected: usize = s.rejected.values().sum();
    writeln!(
        out,
        "{} pairs in {:.1} s: {} new problems, {} rejected, {} failed",
        s.pairs,
        start.elapsed().as_secs_f64(),
        s.accepted,
        rejected,
        s.failed
    )?;
    for r in [
        Rejection::Empty,
        Rejection::EchoedParent,
        Rejection::MultipleProblems,
        Rejection::Truncated,
    ] {
        writeln!(
            out,
            "  rejected {:<18} {}",
            format!("{r:?}"),
            s.rejected.get(&r).copied().unwrap_or(0)
        )?;
    }
    writeln!(
        out,
        "  problems: {}",
        mathcoder_data::interpolate::problems_path(&a.out).display()
    )?;
    Ok(0)
}

pub fn judge(a: JudgeArgs) -> Result<i32> {
    let mut problems = mathcoder_data::interpolate::read_interpolated(&a.problems)?;
    if let Some(k) = a.limit {
        problems.truncate(k);
    }
    if problems.is_empty() {
        bail!("no problems in {}", a.problems.display());
    }
    let mut parents: HashMap<String, String> = HashMap::new();
    for set in [&a.easy, &a.hard] {
        for p in mathcoder_datasets::resolve(set)?.problems {
            parents.insert(p.id, p.question);
        }
    }
    let client = chat_client(&a.backend, a.concurrency)?;
    let config = JudgeConfig {
        out: a.out.clone(),
        concurrency: a.concurrency,
        prompt: PromptConfig {
            max_tokens: a.max_tokens,
            temperature: a.temperature,
            top_p: None,
        },
    };
    let (pb, progress) = counter_bar("judging", problems.len());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(mathcoder_data::interpolate::judge(
        &problems,
        &a.problems.display().to_string(),
        &parents,
        client,
        &config,
        progress,
    ))?;
    pb.finish_and_clear();
    let r = mathcoder_data::interpolate::judge_report(&a.out)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "{} problems judged, each against both parents in both orders (a verdict counts only when both orders agree)",
        r.judged
    )?;
    writeln!(
        out,
        "  {:<14} {:>16} {:>16}",
        "", "vs GSM8K parent", "vs MATH parent"
    )?;
    for c in [
        Comparison::Harder,
        Comparison::Easier,
        Comparison::Tie,
        Comparison::Inconsistent,
        Comparison::Unparsed,
        Comparison::Failed,
    ] {
        let (e, h) = (r.easy(c), r.hard(c));
        writeln!(
            out,
            "  {:<14} {:>7} {:>7.1}% {:>7} {:>7.1}%",
            format!("{c:?}").to_lowercase(),
            e,
            r.share(e),
            h,
            r.share(h)
        )?;
    }
    writeln!(
        out,
        "harder than the GSM8K parent: {:.1}% (paper 83.2%); easier than the MATH parent: {:.1}% (paper 95.6%)",
        r.share(r.easy(Comparison::Harder)),
        r.share(r.hard(Comparison::Easier))
    )?;
    std::fs::write(a.out.join("report.json"), serde_json::to_vec_pretty(&r)?)?;
    Ok(0)
}
