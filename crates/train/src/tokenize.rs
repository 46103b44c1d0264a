//! Token ids and loss masks from `lce` spans.
//!
//! An instance is `<s>` followed by the rendered conversation, tokenised span by span. Every
//! span starts and ends with a special token, and the tokenizer splits on special tokens before
//! it normalises, so tokenising span by span gives the ids of the whole text (tested on every
//! released record) and every token belongs to exactly one span. A token is a target (gets
//! loss) when its span is:
//!
//! * a `Model` span (text/code blocks with their opening token and `<|endofblock|>`, the final
//!   `<|endofmessage|>`): always, the paper's recipe;
//! * an `Execution` span: only with [`MaskOptions::loss_on_execution`] (Table 5, rows 1-2);
//! * the `Prompt` span: only with [`MaskOptions::loss_on_prompt`].
//!
//! `<s>` is never a target (nothing before it predicts it). No `</s>` is appended: the model
//! ends a solution with `<|endofmessage|>`, where the inference loop stops.

use mathcoder_lce::{Rendered, SpanKind};
use std::path::Path;
use tokenizers::Tokenizer;

use crate::data::Conversation;
use crate::TrainError;

/// Which spans get loss besides the model's own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskOptions {
    pub loss_on_execution: bool,
    pub loss_on_prompt: bool,
}

impl MaskOptions {
    /// Whether a span of `kind` gets loss.
    pub fn is_target(&self, kind: SpanKind) -> bool {
        match kind {
            SpanKind::Model => true,
            SpanKind::Execution => self.loss_on_execution,
            SpanKind::Prompt => self.loss_on_prompt,
        }
    }
}

/// What happens to an instance longer than the sequence length.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Overlong {
    /// Left out of training (counted).
    #[default]
    Drop,
    /// Its first `seq_len` tokens are kept (counted); dropped if no target token is left.
    Truncate,
}

/// One tokenised conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    pub ids: Vec<u32>,
    /// `targets[i]`: token `i` gets loss (it is predicted from the tokens before it).
    pub targets: Vec<bool>,
    /// The source line of the record.
    pub line: usize,
}

impl Instance {
    pub fn len(&self) -> usize {
        self.ids.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
    pub fn target_count(&self) -> usize {
        self.targets.iter().filter(|t| **t).count()
    }
}

/// The byte-level BPE vocabulary of a GGUF file as a `tokenizers` tokenizer (the one the engine
/// builds from the same metadata, so training and inference tokenise alike).
fn gguf_tokenizer(path: &Path) -> Result<Tokenizer, TrainError> {
    let bad = |e: String| TrainError::Tokenizer(format!("{}: {e}", path.display()));
    let mut f = std::fs::File::open(path).map_err(|e| bad(e.to_string()))?;
    let content =
        candle_core::quantized::gguf_file::Content::read(&mut f).map_err(|e| bad(e.to_string()))?;
    let tok = mathcoder_model::Tok::from_gguf(&content).map_err(|e| bad(e.to_string()))?;
    tok.hf_tokenizer().cloned().ok_or_else(|| {
        bad("its SentencePiece vocabulary cannot be written as a tokenizer.json; train from a Hugging Face directory".into())
    })
}

/// A tokenizer for training: `tokenizer.json` with MathCoder's tokens.
pub struct TrainTokenizer {
    pub inner: Tokenizer,
    pub bos: Option<u32>,
    /// The id used for padding (`</s>`, else 0); padding never gets loss.
    pub pad: u32,
}

impl TrainTokenizer {
    /// Loads `dir/tokenizer.json` (or a `tokenizer.json` path) and adds those of MathCoder's
    /// eight tokens it lacks (see [`crate::vocab::add_lce_tokens`]); returns how many were added.
    pub fn load(path: &Path) -> Result<(TrainTokenizer, usize), TrainError> {
        if mathcoder_model::checkpoint::is_gguf(path) {
            let mut inner = gguf_tokenizer(path)?;
            let added = crate::vocab::add_lce_tokens(&mut inner)?;
            return Ok((TrainTokenizer::new(inner), added));
        }
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let mut inner = Tokenizer::from_file(&file)
            .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", file.display())))?;
        let added = crate::vocab::add_lce_tokens(&mut inner)?;
        Ok((TrainTokenizer::new(inner), added))
    }

    pub fn new(inner: Tokenizer) -> TrainTokenizer {
        let bos = inner.token_to_id("<s>");
        let pad = inner.token_to_id("</s>").unwrap_or(0);
        TrainTokenizer { inner, bos, pad }
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Ids of `text` without `<s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TrainError> {
        Ok(self
            .inner
            .encode_fast(text, false)
            .map_err(|e| TrainError::Tokenizer(format!("encoding: {e}")))?
            .get_ids()
            .to_vec())
    }

    /// Text of ids, special tokens shown.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TrainError> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TrainError::Tokenizer(format!("decoding: {e}")))
    }

    /// `<s>` + the rendered text, with its loss mask.
    pub fn tokenize(
        &self,
        r: &Rendered,
        mask: MaskOptions,
        line: usize,
    ) -> Result<Instance, TrainError> {
        let mut ids = Vec::with_capacity(r.text.len() / 3);
        let mut targets = Vec::with_capacity(r.text.len() / 3);
        if let Some(b) = self.bos {
            ids.push(b);
            targets.push(false);
        }
        for s in &r.spans {
            let t = self.encode(r.span_text(s))?;
            let target = mask.is_target(s.kind);
            targets.extend(std::iter::repeat_n(target, t.len()));
            ids.extend(t);
        }
        Ok(Instance { ids, targets, line })
    }
}

/// Tokenised training data and what was left out.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub instances: Vec<Instance>,
    /// Conversations read.
    pub records: usize,
    /// Longer than the sequence length and dropped.
    pub dropped_overlong: usize,
    /// Longer than the sequence length and cut to it.
    pub truncated: usize,
    /// Without any target token (after truncation), dropped.
    pub dropped_no_target: usize,
}

/// Tokenises conversations and applies the over-long rule.
pub fn tokenize_all(
    tok: &TrainTokenizer,
    convs: &[Conversation],
    mask: MaskOptions,
    seq_len: usize,
    overlong: Overlong,
) -> Result<Dataset, TrainError> {
    let mut d = Dataset {
        records: convs.len(),
        ..Dataset::default()
    };
    for c in convs {
        let mut inst = tok.tokenize(&c.render(), mask, c.line)?;
        if inst.len() > seq_len {
            match overlong {
                Overlong::Drop => {
                    d.dropped_overlong += 1;
                    continue;
                }
                Overlong::Truncate => {
                    inst.ids.truncate(seq_len);
                    inst.targets.truncate(seq_len);
                    d.truncated += 1;
                }
            }
        }
        if inst.target_count() == 0 {
            d.dropped_no_target += 1;
            continue;
        }
        d.instances.push(inst);
    }
    Ok(d)
}
