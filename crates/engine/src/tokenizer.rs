//! The model's tokenizer: `tokenizer.json` (with the added tokens of `tokenizer_config.json`,
//! `special_tokens_map.json` and `added_tokens.json` when the file lacks them), or the
//! SentencePiece vocabulary embedded in a GGUF file, rebuilt as the equivalent BPE tokenizer.
//!
//! Decoding follows what TGI returns and what the MathCoder authors' client re-assembled: special
//! tokens appear as their text, and each run of ordinary tokens is decoded on its own (so the
//! SentencePiece space that starts a run after a special token is not shown). Re-tokenising such
//! text gives the same ids, because the normalizer prepends that space to every segment between
//! special tokens.

use candle_core::quantized::gguf_file;
use mathcoder_lce::SpecialToken;
use std::collections::HashMap;
use std::path::Path;
use tokenizers::{AddedToken, Tokenizer};

use crate::EngineError;

pub struct Tok {
    inner: Tokenizer,
    /// Ids of the added special tokens (MathCoder's eight, `<s>`, `</s>`, ...).
    special: HashMap<u32, String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

fn terr(what: &str) -> impl FnOnce(tokenizers::Error) -> EngineError + '_ {
    move |e| EngineError::Tokenizer(format!("{what}: {e}"))
}

/// Added tokens named by the side files of a Hugging Face checkpoint.
fn side_file_tokens(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let read = |name: &str| -> Option<serde_json::Value> {
        serde_json::from_str(&std::fs::read_to_string(dir.join(name)).ok()?).ok()
    };
    if let Some(v) = read("special_tokens_map.json") {
        if let Some(a) = v["additional_special_tokens"].as_array() {
            for t in a {
                if let Some(s) = t.as_str().or(t["content"].as_str()) {
                    out.push(s.to_string());
                }
            }
        }
    }
    if let Some(v) = read("tokenizer_config.json") {
        if let Some(m) = v["added_tokens_decoder"].as_object() {
            let mut byid: Vec<(u64, String)> = m
                .iter()
                .filter_map(|(k, t)| Some((k.parse().ok()?, t["content"].as_str()?.to_string())))
                .collect();
            byid.sort();
            out.extend(byid.into_iter().map(|(_, s)| s));
        }
        if let Some(a) = v["additional_special_tokens"].as_array() {
            out.extend(a.iter().filter_map(|t| t.as_str().map(String::from)));
        }
    }
    if let Some(v) = read("added_tokens.json") {
        if let Some(m) = v.as_object() {
            let mut byid: Vec<(u64, String)> = m
                .iter()
                .filter_map(|(k, id)| Some((id.as_u64()?, k.clone())))
                .collect();
            byid.sort();
            out.extend(byid.into_iter().map(|(_, s)| s));
        }
    }
    out
}

impl Tok {
    /// Loads `dir/tokenizer.json` (or a `tokenizer.json` path).
    pub fn from_path(path: &Path) -> Result<Tok, EngineError> {
        let (file, dir) = if path.is_dir() {
            (path.join("tokenizer.json"), path.to_path_buf())
        } else {
            (
                path.to_path_buf(),
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            )
        };
        if !file.exists() {
            return Err(EngineError::Tokenizer(format!(
                "{} not found (a tokenizer.json is needed)",
                file.display()
            )));
        }
        let mut inner = Tokenizer::from_file(&file)
            .map_err(|e| EngineError::Tokenizer(format!("{}: {e}", file.display())))?;
        let missing: Vec<AddedToken> = side_file_tokens(&dir)
            .into_iter()
            .filter(|t| inner.token_to_id(t).is_none())
            .map(|t| AddedToken::from(t, true))
            .collect();
        if !missing.is_empty() {
            inner
                .add_special_tokens(missing)
                .map_err(terr("adding special tokens"))?;
        }
        Ok(Tok::wrap(inner))
    }

    fn wrap(inner: Tokenizer) -> Tok {
        let special: HashMap<u32, String> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        let bos = inner.token_to_id("<s>");
        let eos = inner.token_to_id("</s>");
        Tok {
            inner,
            special,
            bos,
            eos,
        }
    }

    /// Rebuilds a Llama (SentencePiece) tokenizer from GGUF metadata: the vocabulary and scores
    /// become a byte-fallback BPE whose merges are ordered by the merged piece's score, with the
    /// same normalizer and decoder as Hugging Face's Llama `tokenizer.json`.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Tok, EngineError> {
        let get = |k: &str| ct.metadata.get(k);
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if model != "llama" {
            return Err(EngineError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported (llama only); pass a tokenizer.json"
            )));
        }
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| EngineError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?
            .iter()
            .map(|v| v.to_string().cloned().unwrap_or_default())
            .collect();
        let scores: Vec<f32> = get("tokenizer.ggml.scores")
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect())
            .unwrap_or_else(|| (0..tokens.len()).map(|i| -(i as f32)).collect());
        let types: Vec<i32> = get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.iter().map(|v| v.to_i32().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let id = |k: &str| get(k).and_then(|v| v.to_u32().ok());
        let unk = id("tokenizer.ggml.unknown_token_id").unwrap_or(0);
        let bos = id("tokenizer.ggml.bos_token_id");
        let add_bos = get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
        let inner = spm_to_bpe(&tokens, &scores, &types, unk, bos.filter(|_| add_bos))?;
        Ok(Tok::wrap(inner))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Ids of `text`; `bos` adds the beginning-of-sequence token as the tokenizer's template
    /// says (TGI and the authors' prompts have it).
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>, EngineError> {
        Ok(self
            .inner
            .encode_fast(text, bos)
            .map_err(terr("encoding"))?
            .get_ids()
            .to_vec())
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains_key(&id)
    }

    /// Text of generated ids: special tokens as themselves, runs of ordinary tokens decoded
    /// separately.
    pub fn decode(&self, ids: &[u32]) -> Result<String, EngineError> {
        let mut out = String::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            if let Some(s) = self.special.get(&id) {
                if !run.is_empty() {
                    out.push_str(&self.inner.decode(&run, false).map_err(terr("decoding"))?);
                    run.clear();
                }
                out.push_str(s);
            } else {
                run.push(id);
            }
        }
        if !run.is_empty() {
            out.push_str(&self.inner.decode(&run, false).map_err(terr("decoding"))?);
        }
        Ok(out)
    }

    /// The ids of MathCoder's eight special tokens, in vocabulary order, if all are present.
    pub fn lce_ids(&self) -> Option<Vec<u32>> {
        SpecialToken::ALL
            .iter()
            .map(|t| self.token_id(t.as_str()))
            .collect()
    }
}

fn spm_to_bpe(
    tokens: &[String],
    scores: &[f32],
    types: &[i32],
    unk: u32,
    bos: Option<u32>,
) -> Result<Tokenizer, EngineError> {
    use tokenizers::decoders::{
        byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as DecSeq, strip::Strip,
        DecoderWrapper,
    };
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::{
        prepend::Prepend, replace::Replace, NormalizerWrapper, Sequence as NormSeq,
    };
    use tokenizers::processors::template::TemplateProcessing;
    // GGUF token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let mergeable = |i: usize| matches!(types.get(i).copied().unwrap_or(1), 1);
    let mut merges: Vec<(f32, u32, u32, String, String)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if !mergeable(i) {
            continue;
        }
        let score = scores.get(i).copied().unwrap_or(0.0);
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                if mergeable(li as usize) && mergeable(ri as usize) {
                    merges.push((score, li, ri, l.to_string(), r.to_string()));
                }
            }
        }
    }
    // Higher score merges first; ties by the ids of the parts.
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<(String, String)> = merges.into_iter().map(|m| (m.3, m.4)).collect();
    let unk_token = tokens
        .get(unk as usize)
        .cloned()
        .unwrap_or_else(|| "<unk>".into());
    let bpe = BPE::builder()
        .vocab_and_merges(vocab.clone(), merges)
        .unk_token(unk_token)
        .byte_fallback(true)
        .fuse_unk(true)
        .build()
        .map_err(terr("building the BPE model"))?;
    let mut t = Tokenizer::new(bpe);
    let norm: Vec<NormalizerWrapper> = vec![
        Prepend::new("\u{2581}".into()).into(),
        Replace::new(" ", "\u{2581}")
            .map_err(terr("normalizer"))?
            .into(),
    ];
    t.with_normalizer(Some(NormSeq::new(norm)))
        .map_err(terr("normalizer"))?;
    let dec: Vec<DecoderWrapper> = vec![
        DecoderWrapper::Replace(Replace::new("\u{2581}", " ").map_err(terr("decoder"))?),
        ByteFallback::new().into(),
        Fuse::new().into(),
        Strip::new(' ', 1, 0).into(),
    ];
    t.with_decoder(Some(DecSeq::new(dec)));
    let specials: Vec<AddedToken> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i).copied().unwrap_or(1), 2..=4))
        .map(|(_, s)| AddedToken::from(s.clone(), true))
        .collect();
    t.add_special_tokens(specials)
        .map_err(terr("adding special tokens"))?;
    if let Some(b) = bos {
        let bos_tok = tokens.get(b as usize).cloned().unwrap_or_default();
        let tp = TemplateProcessing::builder()
            .try_single(format!("{bos_tok} $A"))
            .map_err(|e| EngineError::Tokenizer(format!("template: {e}")))?
            .try_pair(format!("{bos_tok} $A {bos_tok}:1 $B:1"))
            .map_err(|e| EngineError::Tokenizer(format!("template: {e}")))?
            .special_tokens(vec![(bos_tok.clone(), b)])
            .build()
            .map_err(|e| EngineError::Tokenizer(format!("template: {e}")))?;
        t.with_post_processor(Some(tp));
    }
    Ok(t)
}
