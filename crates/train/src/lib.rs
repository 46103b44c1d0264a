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

/// Makes glibc's allocator keep the memory a training step frees for the next step, instead of
/// returning it to the kernel: a step allocates and frees every activation and gradient, and by
/// default blocks from 128 KiB up are fresh `mmap`s, so each step paid page faults, page
/// zeroing and cross-thread TLB shoot-downs for all of them again (about 15% of a step in a
/// profile of the SmolLM2-135M shape). Blocks up to 32 MiB (glibc's ceiling) now come from
/// the heap, and the heap is not trimmed. Call once, before training; it affects the whole
/// process and only glibc targets (elsewhere it does nothing).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; both values are in range.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

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
