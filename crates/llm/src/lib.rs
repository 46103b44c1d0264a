//! Text generation backends.
//!
//! [`Backend`] is what the generate/execute loop needs from a model: continue a prompt until a
//! stop sequence or a token limit, and say why it stopped. Two HTTP implementations speak the
//! protocols people serve models with: [`tgi::Tgi`] (text-generation-inference's `/generate`, what
//! the MathCoder authors used) and [`openai::OpenAi`] (`/v1/completions` on vLLM, SGLang, the
//! llama.cpp server or OpenAI). Both return text with MathCoder's special tokens in place even when
//! the server strips them, retry transient failures with backoff, and bound their concurrency.
//!
//! This crate knows the LCE tokens (to re-attach them) but nothing about execution or grading.

pub mod chat;
pub mod http;
pub mod openai;
pub mod spec;
pub mod template;
pub mod tgi;

pub use spec::{BackendKind, BackendSpec, NativeDtype, NativeQuant, NativeSpec};

use async_trait::async_trait;
use mathcoder_lce::SpecialToken;
use serde::{Deserialize, Serialize};

/// One generation call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GenerateRequest {
    pub prompt: String,
    pub max_new_tokens: u32,
    /// Generation stops after any of these (the stop sequence is kept in the text).
    pub stop: Vec<String>,
    /// 0 means greedy.
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// Keep only the last this-many prompt tokens (TGI's `truncate`; the authors used 1536).
    pub truncate: Option<u32>,
}

impl GenerateRequest {
    /// MathCoder's defaults: greedy, 512 new tokens, stop at the end of a block or message,
    /// prompt truncated to its last 1536 tokens.
    pub fn mathcoder(prompt: impl Into<String>) -> GenerateRequest {
        GenerateRequest {
            prompt: prompt.into(),
            max_new_tokens: 512,
            stop: vec![
                SpecialToken::EndOfMessage.as_str().into(),
                SpecialToken::EndOfBlock.as_str().into(),
            ],
            temperature: 0.0,
            top_p: None,
            seed: None,
            truncate: Some(1536),
        }
    }
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A stop sequence was generated.
    Stop,
    /// `max_new_tokens` was reached.
    Length,
    /// The model's end-of-sequence token.
    EndOfSequence,
}

/// A generation result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    /// The generated text, with the block's special tokens in place and the stop sequence kept.
    pub text: String,
    pub finish: FinishReason,
    pub prompt_tokens: Option<u32>,
    pub generated_tokens: Option<u32>,
    /// Transient failures retried before this result.
    pub retries: u32,
    /// Prompt tokens served from a KV cache kept since an earlier call (engines that report it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_prompt_tokens: Option<u32>,
    /// Prompt tokens computed again although an earlier call had computed them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputed_prompt_tokens: Option<u32>,
}

/// Why a backend could not produce a generation.
///
/// Every variant's text is complete on its own (no `#[source]` chain): the causes a transport
/// error had are flattened into `message` once.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum BackendError {
    /// No connection. With `first_contact`, the endpoint refused the connection before it had
    /// ever answered: nothing listens there, and retrying would only delay the error, so it is
    /// reported at once with what to do. Later (a server that answered and then went away, or
    /// a network hiccup) it is transient and retried.
    #[error("cannot reach {url}: {message}{}", if *.first_contact { FIRST_CONTACT_HINT } else { "" })]
    Unreachable {
        url: String,
        message: String,
        first_contact: bool,
    },
    #[error("request to {url} timed out after {seconds:.0} s")]
    Timeout { url: String, seconds: f64 },
    /// A 4xx: the request is wrong (or too long); retrying will not help.
    #[error("{url} rejected the request (HTTP {status}): {body}")]
    Rejected {
        url: String,
        status: u16,
        body: String,
    },
    /// A 5xx after all retries.
    #[error("{url} failed (HTTP {status}): {body}")]
    Server {
        url: String,
        status: u16,
        body: String,
    },
    /// The response is not what the protocol says.
    #[error("{url} sent a response that is not valid for this protocol: {message}")]
    Protocol { url: String, message: String },
    /// An OpenAI-compatible server renders no special tokens and so never stops at
    /// `<|endofblock|>` (llama.cpp's `llama-server` without `--special`); see
    /// [`openai::drops_special_tokens`] for exactly when this is reported.
    #[error(
        "{url} does not return special tokens (it ignored `skip_special_tokens: false`), so \
         `<|endofblock|>` never stopped the generation: it ran on as one block until {until} \
         and no code would ever run. llama.cpp: restart llama-server with `--special`; \
         vLLM/SGLang: check that the served tokenizer has MathCoder's 8 added tokens"
    )]
    SpecialTokensDropped {
        url: String,
        /// Where the generation ended instead: `max_tokens` or `the end of the sequence`.
        until: String,
    },
    #[error("invalid backend configuration: {0}")]
    Config(String),
    /// A local engine could not serve the request (e.g. the prompt does not fit its context).
    #[error("{0}")]
    Engine(String),
}

/// What to do when nothing listens at the endpoint.
const FIRST_CONTACT_HINT: &str = " (nothing is listening there: start the model server, or \
     wait until it answers, and point --endpoint at it; or run the model on this machine with \
     --backend native --model PATH)";

impl BackendError {
    /// Whether the failure may go away on retry.
    pub fn is_transient(&self) -> bool {
        match self {
            BackendError::Unreachable { first_contact, .. } => !first_contact,
            BackendError::Timeout { .. }
            | BackendError::Server { .. }
            | BackendError::Protocol { .. } => true,
            _ => false,
        }
    }
}

/// A text generation backend. Implementations are shared across tasks.
#[async_trait]
pub trait Backend: Send + Sync {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError>;
    /// A short description (`tgi http://host:8080`).
    fn describe(&self) -> String;
}

#[async_trait]
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        (**self).generate(req).await
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

/// Truncates text at the first stop sequence it contains (keeping the stop sequence), for
/// servers that overshoot.
pub fn cut_at_stop(text: &str, stop: &[String]) -> Option<String> {
    let mut best: Option<usize> = None;
    for s in stop {
        if s.is_empty() {
            continue;
        }
        if let Some(p) = text.find(s.as_str()) {
            let end = p + s.len();
            if best.is_none_or(|b| end < b) {
                best = Some(end);
            }
        }
    }
    best.map(|e| text[..e].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutting() {
        let stop = vec!["<|endofmessage|>".to_string(), "<|endofblock|>".to_string()];
        assert_eq!(
            cut_at_stop("<|text|>a<|endofblock|><|code|>x", &stop).as_deref(),
            Some("<|text|>a<|endofblock|>")
        );
        assert_eq!(cut_at_stop("abc", &stop), None);
        let r = GenerateRequest::mathcoder("p");
        assert_eq!(r.max_new_tokens, 512);
        assert_eq!(r.truncate, Some(1536));
        assert_eq!(r.temperature, 0.0);
    }
}
