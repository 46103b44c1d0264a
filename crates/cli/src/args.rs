//! Flags shared by several commands (and by `mathcoder-bench`), each defined once. Defaults come
//! from the libraries' `Default`s, so a default lives in one place.

use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use mathcoder_grade::{ApproxPolicy, GradeOptions, MultiAnswer, Protocol};
use mathcoder_lce::PromptTemplate;
use mathcoder_llm::http::HttpConfig;
use mathcoder_llm::{BackendKind, BackendSpec, NativeDtype, NativeQuant, NativeSpec};
use mathcoder_sandbox::{env, EnvSpec, Fidelity, Limits, Sandbox, SandboxConfig};
use mathcoder_solve::SolveConfig;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

/// Grading options shared by commands.
#[derive(clap::Args, Debug, Clone)]
pub struct GradeArgs {
    /// Grading protocol: `default` (our rules) or `paper` (the paper's conventions, e.g. a
    /// multi-value SimulEq answer counts wrong; needed to reproduce Table 2).
    #[arg(long, value_enum, default_value_t)]
    pub protocol: Protocol,
    /// How a decimal answer compares with an exact gold: `precision` (accept a correct rounding
    /// to the decimal's own places) or `exact` (MATH convention: never). Default: the protocol's.
    #[arg(long, value_enum)]
    pub approx: Option<ApproxPolicy>,
    /// SimulEq multi-value answers: `first` (compare the first value) or `reject`. Default: the
    /// protocol's.
    #[arg(long, value_enum)]
    pub multi_answer: Option<MultiAnswer>,
}

impl GradeArgs {
    pub fn options(&self) -> GradeOptions {
        let mut o = self.protocol.options();
        if let Some(a) = self.approx {
            o.approx = a;
        }
        if let Some(m) = self.multi_answer {
            o.multi_answer = m;
        }
        o
    }
}

fn limits() -> Limits {
    Limits::default()
}

/// Options choosing and limiting the Python environment (shared by commands that execute code).
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Build the environment from this interpreter.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// `default` (Python 3.11-era pins) or `period` (Python 3.9, the recording environment).
    #[arg(long, value_enum, default_value_t)]
    pub fidelity: Fidelity,
    /// Seconds a cell may run before it is interrupted.
    #[arg(long, default_value_t = limits().cell_timeout.as_secs_f64())]
    pub timeout: f64,
    /// Characters of output kept per cell.
    #[arg(long, default_value_t = limits().max_output)]
    pub max_output: usize,
    /// Address-space limit per session, in MiB.
    #[arg(long, default_value_t = limits().address_space >> 20)]
    pub memory_mb: u64,
}

impl SandboxArgs {
    pub fn spec(&self) -> EnvSpec {
        EnvSpec {
            fidelity: self.fidelity,
            python: self.python.clone(),
            home: None,
        }
    }

    pub fn config(&self) -> Result<SandboxConfig> {
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            bail!("--timeout must be a positive number of seconds");
        }
        Ok(SandboxConfig {
            limits: Limits {
                cell_timeout: Duration::from_secs_f64(self.timeout),
                max_output: self.max_output,
                address_space: self.memory_mb << 20,
                ..Limits::default()
            },
            ..SandboxConfig::default()
        })
    }

    /// Provisions the environment (with progress on stderr) and creates a sandbox.
    pub fn sandbox(&self) -> Result<Sandbox> {
        let env = ensure_env(&self.spec())?;
        Ok(Sandbox::new(env, self.config()?)?)
    }
}

/// MathCoder-S, merged and in place (see `mathcoder_zoo::mathcoder_s`), with progress on stderr.
pub fn default_model(adapter: &std::path::Path, sandbox: &SandboxArgs) -> Result<PathBuf> {
    let env = ensure_env(&sandbox.spec())?;
    with_spinner("models", |say| {
        mathcoder_zoo::mathcoder_s::merged(adapter, &env.python, say)
            .context("preparing the default model (MathCoder-S)")
    })
}

/// Runs `f` with a spinner on stderr that shows the lines `f` reports (printed as
/// `PREFIX: line` when stderr is not a terminal).
pub fn with_spinner<T>(prefix: &str, f: impl FnOnce(&dyn Fn(&str)) -> T) -> T {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    let r = f(&|line: &str| {
        pb.set_message(line.to_string());
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("{prefix}: {line}");
        }
    });
    pb.finish_and_clear();
    r
}

/// Provisions (or checks) the Python environment, showing progress on stderr.
pub fn ensure_env(spec: &EnvSpec) -> Result<env::PythonEnv> {
    with_spinner("setup", |say| env::ensure(spec, say)).context("preparing the Python environment")
}

fn native() -> NativeSpec {
    NativeSpec::default()
}

fn http() -> HttpConfig {
    HttpConfig::default()
}

/// Options of the native engine (the model itself is `--model`).
#[derive(clap::Args, Debug, Clone)]
pub struct NativeArgs {
    /// tokenizer.json to use instead of the checkpoint's (or a GGUF file's embedded vocabulary).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Compute dtype of dense weights on the CPU (default: f32).
    #[arg(long, value_enum)]
    pub dtype: Option<NativeDtype>,
    /// Quantize a Hugging Face checkpoint's matrices at load, to run an f32 fine-tune on the
    /// quantized kernels (GGUF files keep their own types).
    #[arg(long, value_enum)]
    pub quantize: Option<NativeQuant>,
    /// CPU threads for matrix multiplies (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Dtype of the KV cache (default: the compute dtype): f16 or bf16 halve its memory, so
    /// that --kv-cache-mb holds twice the positions.
    #[arg(long, value_enum)]
    pub kv_cache_dtype: Option<NativeDtype>,
}

impl NativeArgs {
    pub fn spec(&self) -> NativeSpec {
        NativeSpec {
            tokenizer: self.tokenizer.clone(),
            dtype: self.dtype,
            quantize: self.quantize,
            kv_dtype: self.kv_cache_dtype,
            threads: self.threads,
            ..NativeSpec::default()
        }
    }

    /// The engine at `model` with these options (for commands that drive it directly).
    pub fn load(&self, model: &std::path::Path) -> Result<(mathcoder_engine::Engine, String)> {
        let spec = BackendSpec {
            kind: BackendKind::Native,
            model: Some(model.display().to_string()),
            native: self.spec(),
            ..BackendSpec::default()
        };
        Ok(mathcoder_engine::load_native(&spec)?)
    }
}

/// Which model to talk to.
#[derive(clap::Args, Debug, Clone)]
pub struct BackendArgs {
    /// `tgi` (text-generation-inference), `openai` (vLLM, SGLang, llama.cpp's llama-server,
    /// OpenAI), or `native` (this program's own engine; needs --model).
    /// Without --backend, --model and --endpoint: the native engine with MathCoder-S when this
    /// checkout ships its adapter (models/mathcoder-s/adapter; the base is fetched and merged on
    /// first use), else tgi. With only --model PATH
    /// naming a local directory or .gguf file: the native engine on it.
    #[arg(long, value_enum)]
    pub backend: Option<BackendKind>,
    /// The server's base URL.
    #[arg(long, default_value = mathcoder_llm::spec::DEFAULT_ENDPOINT)]
    pub endpoint: String,
    /// OpenAI-compatible servers: the served model's name (default: mathcoder). Native: the
    /// checkpoint directory (config.json + safetensors or .bin) or .gguf file.
    #[arg(long)]
    pub model: Option<String>,
    /// API key (default: $OPENAI_API_KEY for the openai backend).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Seconds before a request counts as hung.
    #[arg(long, default_value_t = http().timeout.as_secs_f64())]
    pub request_timeout: f64,
    /// Retries of a failed request (5xx, connection errors, timeouts, malformed replies).
    #[arg(long, default_value_t = http().retries)]
    pub retries: u32,
    /// First retry delay in seconds (doubles each time).
    #[arg(long, default_value_t = http().backoff.as_secs_f64())]
    pub retry_backoff: f64,
    #[command(flatten)]
    pub native: NativeArgs,
    /// Native engine: most sequences decoded together.
    #[arg(long, default_value_t = native().max_batch)]
    pub max_batch: usize,
    /// Native engine: KV cache kept between rounds, in MiB.
    #[arg(long, default_value_t = native().kv_cache_mb)]
    pub kv_cache_mb: usize,
}

impl BackendArgs {
    /// The backend these flags name, for at most `max_concurrency` requests in flight.
    pub fn spec(&self, max_concurrency: usize) -> BackendSpec {
        BackendSpec {
            kind: self.backend.unwrap_or_default(),
            endpoint: self.endpoint.clone(),
            model: self.model.clone(),
            http: HttpConfig {
                timeout: Duration::from_secs_f64(self.request_timeout.max(0.001)),
                retries: self.retries,
                backoff: Duration::from_secs_f64(self.retry_backoff.max(0.0)),
                max_concurrency: max_concurrency.max(1),
                api_key: self.api_key.clone(),
                ..HttpConfig::default()
            },
            native: NativeSpec {
                max_batch: self.max_batch,
                kv_cache_mb: self.kv_cache_mb,
                ..self.native.spec()
            },
        }
    }

    /// These flags with the implicit choices made: no backend, model or endpoint given means
    /// MathCoder-S on the native engine when its adapter is shipped (else a TGI server at the
    /// default endpoint, as before) (built on first use, its matrices quantized to Q8_0 at
    /// load unless --quantize says otherwise); a local path as the only --model means the
    /// native engine on it.
    pub fn resolve(&self, sandbox: &SandboxArgs) -> Result<BackendArgs> {
        let mut a = self.clone();
        if a.backend.is_some() || a.endpoint != mathcoder_llm::spec::DEFAULT_ENDPOINT {
            return Ok(a);
        }
        match &a.model {
            Some(m) if std::path::Path::new(m).exists() => {
                a.backend = Some(BackendKind::Native);
            }
            Some(_) => {}
            // Until a MathCoder-S adapter ships, the default stays a TGI server at the
            // default endpoint (whose absence `check_listening` reports).
            None => {
                let Ok(adapter) = mathcoder_zoo::mathcoder_s::shipped_adapter() else {
                    return Ok(a);
                };
                let dir = default_model(&adapter, sandbox)?;
                a.backend = Some(BackendKind::Native);
                a.model = Some(dir.display().to_string());
                a.native.quantize = a.native.quantize.or(Some(NativeQuant::Q8_0));
            }
        }
        Ok(a)
    }

    /// Builds the backend.
    pub fn build(&self, max_concurrency: usize) -> Result<Arc<dyn mathcoder_llm::Backend>> {
        Ok(mathcoder_engine::backend(&self.spec(max_concurrency))?)
    }
}

fn solve_defaults() -> SolveConfig {
    SolveConfig::default()
}

/// The loop's settings.
#[derive(clap::Args, Debug, Clone)]
pub struct LoopArgs {
    /// Most model blocks per solution (the paper: 32; the authors' public script: 16 calls).
    #[arg(long, default_value_t = solve_defaults().max_blocks)]
    pub max_blocks: usize,
    /// Most new tokens per block.
    #[arg(long, default_value_t = solve_defaults().max_new_tokens)]
    pub max_new_tokens: u32,
    /// Prompt tokens kept (from the end) by the server; 0 for no truncation.
    #[arg(long, default_value_t = solve_defaults().truncate.unwrap_or(0))]
    pub truncate: u32,
    /// Sampling temperature (0: greedy).
    #[arg(long, default_value_t = solve_defaults().temperature)]
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
    /// Do not run the code: the model writes each execution block itself (the paper's Table 5,
    /// row 1, "the model predicts the outputs").
    #[arg(long)]
    pub model_predicts_execution: bool,
    /// Go on after a block that was cut at --max-new-tokens while repeating itself, or after the
    /// same 1-3 blocks (numbers aside) a third time in a row (the authors' loop did: a greedy model then repeats
    /// them until --max-blocks). By default the loop stops there with stop reason `repetition`.
    #[arg(long)]
    pub no_repetition_stop: bool,
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
            execute: !self.model_predicts_execution,
            stop_on_repetition: !self.no_repetition_stop,
        }
    }
}

/// The vendored data directory: `$MATHCODER_DATA`, `./data`, or the one next to the sources
/// this binary was built from.
pub fn data_dir() -> Option<PathBuf> {
    if let Ok(d) = std::env::var("MATHCODER_DATA") {
        return Some(PathBuf::from(d));
    }
    let local = PathBuf::from("data");
    if local.join("released-outputs").is_dir() {
        return Some(local);
    }
    let built = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../data"));
    built.join("released-outputs").is_dir().then_some(built)
}

/// Parses a dataset's grading conventions with the grader's own names and aliases (for
/// `value_parser`).
pub fn conventions(s: &str) -> std::result::Result<mathcoder_grade::Dataset, String> {
    mathcoder_grade::Dataset::from_name(s).ok_or_else(|| {
        format!(
            "unknown dataset {s:?}; one of: {}",
            mathcoder_grade::Dataset::ALL.map(|d| d.name()).join(", ")
        )
    })
}

/// How a model solves problems.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// MathCoder's LCE blocks through the generate/execute loop (a model with its 8 tokens).
    Lce,
    /// A code-interpreter conversation (an instruct model: ```python fences run in the
    /// sandbox, outputs back as user messages), written down as LCE blocks.
    Chat,
}

/// What every command that runs the generate/execute loop takes: the model, the loop's settings
/// and the sandbox.
#[derive(clap::Args, Debug, Clone)]
pub struct LoopRunArgs {
    #[command(flatten)]
    pub backend: BackendArgs,
    /// `lce` (MathCoder's blocks) or `chat` (a code-interpreter conversation in the `fences`
    /// style: the model's chat template natively, /v1/chat/completions over HTTP). Default:
    /// native, `lce` when the vocabulary has MathCoder's 8 tokens, else `chat` when the model
    /// has a recognised chat template; HTTP, `lce`.
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Chat mode on the native backend: the chat template family, instead of the one the
    /// model's metadata names (or when it names none or one not recognised).
    #[arg(long, value_enum)]
    pub chat_template: Option<mathcoder_llm::template::TemplateFamily>,
    #[command(flatten)]
    pub looping: LoopArgs,
    #[command(flatten)]
    pub sandbox: SandboxArgs,
}

impl LoopRunArgs {
    /// Checks that the backend answers (at once, before anything slow), builds it for
    /// `concurrency` requests in flight, provisions the sandbox, and returns them with the
    /// loop's settings, with the solver the mode names: the LCE backend, or a
    /// chat model (the native engine through its chat template, or the server's chat
    /// completions) with the loop's limits (`--max-blocks` requests of `--max-new-tokens`
    /// tokens each).
    pub fn prepare_solver(
        &self,
        concurrency: usize,
    ) -> Result<(mathcoder_runner::Solver, Sandbox, SolveConfig)> {
        use mathcoder_runner::Solver;
        let backend = self.backend.resolve(&self.sandbox)?;
        let spec = backend.spec(concurrency);
        let looping = self.looping.config();
        let chat_config = mathcoder_solve::chat::ChatConfig {
            style: mathcoder_lce::chat::ChatStyle::Fences,
            max_rounds: looping.max_blocks,
            max_tokens: looping.max_new_tokens,
            temperature: looping.temperature,
            top_p: looping.top_p,
            stop_on_repetition: looping.stop_on_repetition,
        };
        if self.chat_template.is_some() && spec.kind != BackendKind::Native {
            bail!("--chat-template is for the native backend (a chat server applies its own)");
        }
        let solver = if spec.kind == BackendKind::Native {
            let model = mathcoder_engine::load_native_model(&spec, self.chat_template)?;
            let mode = match self.mode {
                Some(m) => m,
                None if model.lce_tokens => Mode::Lce,
                None => match &model.template {
                    Ok(_) => Mode::Chat,
                    Err(e) => bail!(
                        "{} cannot solve problems: {}, so it cannot write MathCoder's blocks, and \
                         it cannot converse either: {e}",
                        backend.model.as_deref().unwrap_or("the model"),
                        model.lce_missing().unwrap_or_default()
                    ),
                },
            };
            match mode {
                Mode::Lce => Solver::Lce(model.backend.clone()),
                Mode::Chat => Solver::Chat {
                    model: Arc::new(model.chat()?),
                    config: chat_config,
                },
            }
        } else {
            match self.mode.unwrap_or(Mode::Lce) {
                Mode::Lce => {
                    spec.check_listening()?;
                    Solver::Lce(backend.build(concurrency)?)
                }
                Mode::Chat => {
                    spec.check_chat_listening()?;
                    Solver::Chat {
                        model: Arc::new(spec.build_chat()?),
                        config: chat_config,
                    }
                }
            }
        };
        let sandbox = self.sandbox.sandbox()?;
        Ok((solver, sandbox, looping))
    }
}

fn train_defaults() -> mathcoder_train::TrainConfig {
    mathcoder_train::TrainConfig::default()
}

/// What training data is and how it is tokenised, masked and packed (shared by `train` and
/// `export`, so that both see the same rows in the same order).
#[derive(clap::Args, Debug, Clone)]
pub struct TrainDataArgs {
    /// The base model: a Hugging Face checkpoint directory (config.json, safetensors or .bin,
    /// tokenizer.json). MathCoder's eight tokens are added when its tokenizer lacks them.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Training records (JSONL, optionally .gz): the authors' training format (`messages` with
    /// text/code/execution parts) or their released outputs (`debug_result`).
    #[arg(long, value_name = "FILE.jsonl")]
    pub data: PathBuf,
    /// Tokens per packed sequence.
    #[arg(long, default_value_t = train_defaults().seq_len)]
    pub seq_len: usize,
    /// `isolated` (block-diagonal attention, positions restart: the paper), `naive` (the same
    /// rows, plain causal: the authors' released script), `none` (one instance per row).
    #[arg(long, value_enum, default_value_t = train_defaults().packing)]
    pub packing: mathcoder_train::Packing,
    /// Put loss on execution blocks too (Table 5, rows 1-2).
    #[arg(long)]
    pub loss_on_execution: bool,
    /// Put loss on the prompt (system and user messages) too.
    #[arg(long)]
    pub loss_on_prompt: bool,
    /// Instances longer than --seq-len: `drop` them or `truncate` them to it (counted either way).
    #[arg(long, value_enum, default_value_t = train_defaults().overlong)]
    pub overlong: mathcoder_train::Overlong,
    /// Seeds the packing and the data order.
    #[arg(long, default_value_t = train_defaults().seed)]
    pub seed: u64,
}

impl TrainDataArgs {
    /// These settings over `base`.
    pub fn apply(&self, base: mathcoder_train::TrainConfig) -> mathcoder_train::TrainConfig {
        mathcoder_train::TrainConfig {
            seq_len: self.seq_len,
            packing: self.packing,
            mask: mathcoder_train::MaskOptions {
                loss_on_execution: self.loss_on_execution,
                loss_on_prompt: self.loss_on_prompt,
            },
            overlong: self.overlong,
            seed: self.seed,
            ..base
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        backend: BackendArgs,
        #[command(flatten)]
        sandbox: SandboxArgs,
    }

    fn resolved(args: &[&str]) -> BackendArgs {
        let cli = Cli::parse_from(std::iter::once("x").chain(args.iter().copied()));
        cli.backend.resolve(&cli.sandbox).unwrap()
    }

    #[test]
    fn a_local_model_path_alone_means_the_native_engine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().display().to_string();
        assert_eq!(
            resolved(&["--model", &path]).backend,
            Some(BackendKind::Native)
        );
        // A served model's name, an explicit backend or an endpoint are left as given.
        assert_eq!(resolved(&["--model", "mathcoder"]).backend, None);
        let a = resolved(&["--model", &path, "--backend", "openai"]);
        assert_eq!(a.backend, Some(BackendKind::Openai));
        let a = resolved(&["--model", &path, "--endpoint", "http://h:1"]);
        assert_eq!(a.backend, None);
        assert_eq!(a.spec(1).kind, BackendKind::default());
    }
}
