//! Supervised fine-tuning in MathCoder's recipe (paper §4), on `mathcoder-model`'s
//! differentiable reference Llama.
//!
//! * [`data`]: training records (the authors' training format and their released outputs) to
//!   rendered conversations with `lce` spans.
//! * [`tokenize`]: spans to token ids and a loss mask (targets = what the model writes:
//!   text and code blocks with their tokens, and `<|endofmessage|>`; never the prompt or an
//!   execution unless asked), and over-long instances.
//! * [`vocab`]: MathCoder's eight tokens added to a tokenizer that lacks them, embedding rows
//!   initialised to the mean of the existing rows.
//! * [`pack`]: first-fit-decreasing packing into fixed-length rows (`isolated`, `naive`,
//!   `none`) and the seeded data order.
//! * [`lora`]: LoRA adapters (PEFT's layout, MathCoder's token rows trainable) and their merge
//!   into full weights.
//! * [`optim`]: AdamW with PyTorch's semantics, cosine schedule with linear warm-up.
//! * [`trainer`]: gradient accumulation to a global batch, clipping, the step log,
//!   checkpoints and exact resume.
//! * [`plot`]: the loss curve (`OUT/loss.svg`).
//! * [`export`]: the same packed rows for cluster trainers (TRL), and the conversations with
//!   their loss mask (axolotl, LLaMA-Factory).
//! * [`inspect`]: one instance with trained and masked tokens told apart.
//! * [`launch`]: accelerate + DeepSpeed ZeRO-3 and TRL SFT launch files with the paper's
//!   hyperparameters, for the TRL export.

pub mod data;
pub mod export;
pub mod inspect;
pub mod launch;
pub mod lora;
pub mod optim;
pub mod pack;
pub mod plot;
pub mod rng;
pub mod tokenize;
pub mod trainer;
pub mod vocab;

pub use data::{read_conversations, Conversation};
pub use lora::LoraConfig;
pub use pack::{Packing, Row};
pub use tokenize::{Instance, MaskOptions, Overlong};
pub use trainer::{StepLog, TrainConfig, Trainer};

use std::path::PathBuf;

/// Why training data could not be prepared or a run could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("cannot read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: {message}")]
    Record {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Model(#[from] mathcoder_model::ModelError),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("invalid settings: {0}")]
    Config(String),
    #[error("plotting {path}: {message}")]
    Plot { path: PathBuf, message: String },
    #[error("resuming: {0}")]
    Resume(String),
    #[error("tensor computation: {0}")]
    Compute(#[from] candle_core::Error),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io {
        path: path.to_path_buf(),
        source,
    }
}
