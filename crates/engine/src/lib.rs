//! Native inference for MathCoder's Llama-family models on candle.
//!
//! * [`load`]: a Hugging Face checkpoint directory as published (`config.json`, single or
//!   sharded safetensors, or PyTorch `.bin` shards; f32, bf16 or f16) or a GGUF file as
//!   llama.cpp writes it (quantized matrices stay quantized).
//! * [`model::Model`]: Llama-2 / CodeLlama (RoPE theta, grouped-query attention, tied or untied
//!   embeddings), whose forward pass stacks the rows of many sequences into one matrix multiply.
//! * [`engine`]: sessions with a persistent KV cache (append tokens that did not come from the
//!   model without recomputing anything, fork, roll back, truncate from the left), generation
//!   with stop ids and strings, greedy or seeded sampling, batched stepping of many sessions.
//! * [`native::NativeBackend`]: the engine behind the runtime's `Backend` trait, on its own
//!   thread, with a prefix cache so that each round of the generate/execute loop prefills only
//!   the new execution block.
//!
//! CPU by default; the `cuda` feature builds candle's CUDA backend (never in CI).

pub mod cache;
pub mod config;
pub mod engine;
pub mod factory;
mod gemv;
pub mod load;
pub mod model;
pub mod native;
mod qmatmul;
pub mod sampling;
pub mod spm;
mod st;
pub mod tokenizer;

pub use config::ModelConfig;
pub use engine::{Engine, Finish, GenOutput, GenParams, Job, Session};
pub use factory::{backend, load_native, BuildError};
pub use load::{load_model, LoadOptions};
pub use sampling::SamplingParams;
pub use tokenizer::Tok;

/// Why the engine could not do something.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("model config: {0}")]
    Config(String),
    #[error("loading the model: {0}")]
    Load(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("the sequence needs {needed} positions, the model has {limit}")]
    ContextFull { needed: usize, limit: usize },
    #[error("tensor computation: {0}")]
    Compute(#[from] candle_core::Error),
    #[error("the engine thread has stopped")]
    Stopped,
}

/// Loads a model and its tokenizer from a checkpoint directory or a GGUF file. A GGUF file's
/// tokenizer comes from `tokenizer` if given, else a `tokenizer.json` beside it, else its own
/// metadata.
pub fn load(
    path: &std::path::Path,
    tokenizer: Option<&std::path::Path>,
    opts: &LoadOptions,
) -> Result<Engine, EngineError> {
    if path.is_file() && path.extension().is_some_and(|e| e == "gguf") {
        let (model, info) = load::load_gguf(path, opts)?;
        let beside = path.with_file_name("tokenizer.json");
        let tok = match tokenizer {
            Some(t) => Tok::from_path(t)?,
            None if beside.exists() => Tok::from_path(&beside)?,
            None => Tok::from_gguf(&info.content)?,
        };
        return Engine::new(model, tok);
    }
    let model = load_model(path, opts)?;
    let tok = Tok::from_path(tokenizer.unwrap_or(path))?;
    Engine::new(model, tok)
}
