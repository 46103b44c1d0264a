//! Llama-family models as data, shared by inference (`mathcoder-engine`) and training.
//!
//! * [`config::ModelConfig`]: hyper-parameters from a Hugging Face `config.json` (transformers
//!   4.x and 5.x spellings) or GGUF metadata.
//! * [`names`]: the tensors of a model — Hugging Face names, GGUF names and shapes — defined once.
//! * [`checkpoint::Checkpoint`]: a checkpoint as published (a Hugging Face directory with single
//!   or sharded safetensors or PyTorch `.bin` shards, or a GGUF file), read tensor by tensor.
//! * [`tokenizer::Tok`]: `tokenizer.json` with its side files' special tokens, or a GGUF's own
//!   vocabulary tokenised as llama.cpp does ([`spm`] for SentencePiece, [`bpe`] for byte-level
//!   BPE).
//! * [`llama::Llama`]: a plain, differentiable Llama forward on candle ops that all have a
//!   backward pass (logits at every position; position ids and attention masks for packed
//!   sequences), with weights held as [`candle_nn::VarMap`] variables.
//!
//! * [`fused`]: fused CPU training kernels (RMSNorm, rotary heads, masked softmax, SwiGLU,
//!   cross-entropy) with hand-written backward passes, used by [`llama::Llama`] in f32 on the CPU.
//!
//! No generation, no KV cache: those live in the engine.

mod backward;
pub mod bpe;
pub mod checkpoint;
pub mod config;
pub mod fused;
pub mod llama;
pub mod names;
pub mod spm;
mod st;
pub mod tokenizer;
pub mod vmath;

#[cfg(test)]
pub(crate) mod test_util {
    use candle_core::Tensor;

    /// The largest absolute value of a tensor.
    pub(crate) fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// The largest absolute difference between two tensors of one shape.
    pub(crate) fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }
}

pub use checkpoint::{Checkpoint, GgufCheckpoint, HfCheckpoint};
pub use config::{Architecture, ModelConfig};
pub use llama::Llama;
pub use names::{LayerWeight, Weight};
pub use tokenizer::Tok;

/// Where real model files are looked for by the tests and benchmarks that need them:
/// `$MATHCODER_MODELS`, else `~/.cache/mathcoder/models`. Such tests skip when a file is absent.
pub fn models_dir() -> std::path::PathBuf {
    if let Some(d) = std::env::var_os("MATHCODER_MODELS").filter(|d| !d.is_empty()) {
        return d.into();
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    std::path::Path::new(&home).join(".cache/mathcoder/models")
}

/// Why a model, checkpoint or tokenizer could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model config: {0}")]
    Config(String),
    #[error("loading the model: {0}")]
    Load(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid input: {0}")]
    Input(String),
    #[error("tensor computation: {0}")]
    Compute(#[from] candle_core::Error),
}
