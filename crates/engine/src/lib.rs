//! Native inference for MathCoder's Llama-family models on candle.
//!
//! * [`load`]: a Hugging Face checkpoint directory as published (`config.json`, single or
//!   sharded safetensors, or PyTorch `.bin` shards; f32, bf16 or f16) or a GGUF file as
//!   llama.cpp writes it (quantized matrices stay quantized), read through
//!   `mathcoder-model`'s checkpoint reader, which also owns the config, the tensor names and the
//!   tokenizers (re-exported here as [`config`], [`tokenizer`] and [`spm`]).
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

mod attention;
pub mod cache;
pub mod chat;
mod decode;
pub mod engine;
pub mod factory;
mod gemv;
pub mod load;
pub mod model;
pub mod native;
mod qmatmul;
mod quants;
mod rope;
pub mod sampling;

/// What the unit tests of several modules share.
#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// `n` deterministic values in [-1, 1) with some large outliers (a small LCG).
    pub(crate) fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                if i % 97 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }
}

pub use mathcoder_model::{config, models_dir, spm, tokenizer, ModelError};

pub use chat::{load_native_model, NativeModel};
pub use config::ModelConfig;
pub use engine::{Engine, Finish, GenOutput, GenParams, Job, Session};
pub use factory::{backend, load_native, BuildError};
pub use load::{load_model, LoadOptions};
pub use sampling::SamplingParams;
pub use tokenizer::Tok;

/// Why the engine could not do something: a model, checkpoint or tokenizer problem (the model
/// crate's error), or one of the engine's own.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the sequence needs {needed} positions, the model has {limit}")]
    ContextFull { needed: usize, limit: usize },
    #[error("the engine thread has stopped")]
    Stopped,
}

impl From<candle_core::Error> for EngineError {
    fn from(e: candle_core::Error) -> EngineError {
        EngineError::Model(ModelError::Compute(e))
    }
}

impl EngineError {
    /// Bad input (a token outside the vocabulary, an empty step, ...).
    pub fn input(message: impl Into<String>) -> EngineError {
        EngineError::Model(ModelError::Input(message.into()))
    }
    /// A model that cannot be loaded.
    pub fn load(message: impl Into<String>) -> EngineError {
        EngineError::Model(ModelError::Load(message.into()))
    }
}

/// Loads a model and its tokenizer from a checkpoint directory or a GGUF file. A GGUF file's
/// tokenizer comes from `tokenizer` if given, else a `tokenizer.json` beside it, else its own
/// metadata.
pub fn load(
    path: &std::path::Path,
    tokenizer: Option<&std::path::Path>,
    opts: &LoadOptions,
) -> Result<Engine, EngineError> {
    if mathcoder_model::checkpoint::is_gguf(path) {
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
