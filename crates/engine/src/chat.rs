//! The native engine for instruct models: what a loaded model offers (MathCoder's LCE tokens,
//! a chat template from its metadata) and the engine as a `ChatModel` through that template
//! (`mathcoder_llm::chat::TemplateChat`), for the code-interpreter conversation.

use mathcoder_lce::SpecialToken;
use mathcoder_llm::chat::TemplateChat;
use mathcoder_llm::template::{ChatTemplate, TemplateError, TemplateFamily};
use mathcoder_llm::BackendSpec;
use std::sync::Arc;

use crate::factory::{load_native, BuildError};
use crate::native::{NativeBackend, NativeConfig};
use crate::Tok;

/// A native model, started, with what it can run.
pub struct NativeModel {
    pub backend: Arc<NativeBackend>,
    /// Whether the vocabulary has MathCoder's eight tokens (the LCE loop can run).
    pub lce_tokens: bool,
    /// Its chat template: the metadata's, recognised (or the family the user named), or why
    /// there is none.
    pub template: Result<ChatTemplate, TemplateError>,
    /// The text of the beginning-of-sequence token the tokenizer adds itself.
    bos_added: Option<String>,
}

impl NativeModel {
    /// The model as a chat model through its template.
    pub fn chat(&self) -> Result<TemplateChat, TemplateError> {
        Ok(TemplateChat::new(
            self.backend.clone(),
            self.template.clone()?,
            self.bos_added.clone(),
        ))
    }

    /// Why the model cannot run the LCE loop, when it cannot.
    pub fn lce_missing(&self) -> Option<String> {
        (!self.lce_tokens).then(|| {
            format!(
                "its vocabulary lacks MathCoder's special tokens ({})",
                SpecialToken::ALL.map(|t| t.as_str()).join(" ")
            )
        })
    }
}

/// Loads and starts the native model a spec names, reading its chat template (`family`, when
/// given, names it instead of or beside the metadata's).
pub fn load_native_model(
    spec: &BackendSpec,
    family: Option<TemplateFamily>,
) -> Result<NativeModel, BuildError> {
    let (engine, name) = load_native(spec)?;
    let path = spec.model_path().unwrap_or_default();
    let source =
        mathcoder_model::tokenizer::chat_template(&path).map_err(crate::EngineError::from)?;
    let tok = &engine.tok;
    let text = |id: Option<u32>| id.and_then(|i| tok.decode(&[i]).ok());
    let (bos, eos) = (text(tok.bos), text(tok.eos));
    let template = ChatTemplate::resolve(source.as_deref(), family, bos.as_deref(), eos.as_deref());
    let lce_tokens = tok.lce_ids().is_some();
    let bos_added = bos_added(tok).then_some(bos).flatten();
    let backend = Arc::new(NativeBackend::start(
        engine,
        NativeConfig {
            max_batch: spec.native.max_batch.max(1),
            cache_bytes: spec.native.kv_cache_mb << 20,
        },
        &name,
    ));
    Ok(NativeModel {
        backend,
        lce_tokens,
        template,
        bos_added,
    })
}

/// Whether encoding with `bos` puts the beginning-of-sequence token first.
fn bos_added(tok: &Tok) -> bool {
    match (tok.bos, tok.encode("a", true)) {
        (Some(b), Ok(ids)) => ids.first() == Some(&b),
        _ => false,
    }
}
