//! The model's tokenizer: `tokenizer.json` (with the added tokens of `tokenizer_config.json`,
//! `special_tokens_map.json` and `added_tokens.json` when the file lacks them), or the
//! SentencePiece vocabulary embedded in a GGUF file ([`crate::spm`]).
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

use crate::spm::Spm;

use crate::ModelError;

enum Inner {
    /// A Hugging Face `tokenizer.json`.
    Hf(Box<Tokenizer>),
    /// A GGUF vocabulary, tokenised as llama.cpp does.
    Spm(Spm),
}

pub struct Tok {
    inner: Inner,
    /// Ids of the special tokens (MathCoder's eight, `<s>`, `</s>`, ...), shown as their text.
    special: HashMap<u32, String>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

fn terr(what: &str) -> impl FnOnce(tokenizers::Error) -> ModelError + '_ {
    move |e| ModelError::Tokenizer(format!("{what}: {e}"))
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

/// The chat template a checkpoint names, as Jinja source: a GGUF file's
/// `tokenizer.chat_template`, or the `chat_template` of a checkpoint directory's
/// `tokenizer_config.json` (a string, or a list of named templates: the one named `default`).
/// `None` when it names none.
pub fn chat_template(path: &Path) -> Result<Option<String>, ModelError> {
    if crate::checkpoint::is_gguf(path) {
        let mut file = std::fs::File::open(path)
            .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| ModelError::Load(format!("{}: {e}", path.display())))?;
        return Ok(content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok().cloned()));
    }
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let file = dir.join("tokenizer_config.json");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", file.display())))?;
    Ok(match &v["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(a) => a
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    })
}

impl Tok {
    /// Loads `dir/tokenizer.json` (or a `tokenizer.json` path).
    pub fn from_path(path: &Path) -> Result<Tok, ModelError> {
        let (file, dir) = if path.is_dir() {
            (path.join("tokenizer.json"), path.to_path_buf())
        } else {
            (
                path.to_path_buf(),
                path.parent().map(Path::to_path_buf).unwrap_or_default(),
            )
        };
        if !file.exists() {
            return Err(ModelError::Tokenizer(format!(
                "{} not found (a tokenizer.json is needed)",
                file.display()
            )));
        }
        let mut inner = Tokenizer::from_file(&file)
            .map_err(|e| ModelError::Tokenizer(format!("{}: {e}", file.display())))?;
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
        let special: HashMap<u32, String> = inner
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, t)| t.special)
            .map(|(id, t)| (id, t.content))
            .collect();
        let bos = inner.token_to_id("<s>");
        let eos = inner.token_to_id("</s>");
        Ok(Tok {
            inner: Inner::Hf(Box::new(inner)),
            special,
            bos,
            eos,
        })
    }

    /// The vocabulary embedded in a GGUF file, tokenised as llama.cpp does: SentencePiece
    /// (`tokenizer.ggml.model == "llama"`, [`crate::spm`]) or byte-level BPE (`gpt2`,
    /// [`crate::bpe`]).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Tok, ModelError> {
        let get = |k: &str| ct.metadata.get(k);
        let model = get("tokenizer.ggml.model")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if model == "gpt2" {
            let b = crate::bpe::from_gguf(ct)?;
            return Ok(Tok {
                inner: Inner::Hf(Box::new(b.tokenizer)),
                special: b.control.into_iter().collect(),
                bos: b.bos,
                eos: b.eos,
            });
        }
        if model != "llama" {
            return Err(ModelError::Tokenizer(format!(
                "GGUF tokenizer model {model:?} is not supported (llama, gpt2); pass a tokenizer.json"
            )));
        }
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok())
            .ok_or_else(|| ModelError::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?
            .iter()
            .map(|v| v.to_string().cloned().unwrap_or_default())
            .collect();
        let scores: Vec<f32> = get("tokenizer.ggml.scores")
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.iter().map(|v| v.to_f32().unwrap_or(0.0)).collect())
            .unwrap_or_else(|| vec![0.0; tokens.len()]);
        let types: Vec<i32> = get("tokenizer.ggml.token_type")
            .and_then(|v| v.to_vec().ok())
            .map(|a| a.iter().map(|v| v.to_i32().unwrap_or(1)).collect())
            .unwrap_or_else(|| vec![1; tokens.len()]);
        let id = |k: &str| get(k).and_then(|v| v.to_u32().ok());
        let add_bos = get("tokenizer.ggml.add_bos_token")
            .and_then(|v| v.to_bool().ok())
            .unwrap_or(true);
        let spm = Spm::new(
            tokens,
            scores,
            types,
            id("tokenizer.ggml.unknown_token_id").unwrap_or(0),
            id("tokenizer.ggml.bos_token_id"),
            id("tokenizer.ggml.eos_token_id"),
            add_bos,
        );
        let special: HashMap<u32, String> =
            spm.special_ids().map(|(i, s)| (i, s.to_string())).collect();
        Ok(Tok {
            bos: spm.bos,
            eos: spm.eos,
            special,
            inner: Inner::Spm(spm),
        })
    }

    /// The `tokenizers` tokenizer underneath: a `tokenizer.json`, or a GGUF byte-level BPE
    /// vocabulary turned into one (`None` for a GGUF SentencePiece vocabulary).
    pub fn hf_tokenizer(&self) -> Option<&Tokenizer> {
        match &self.inner {
            Inner::Hf(t) => Some(t),
            Inner::Spm(_) => None,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Inner::Hf(t) => t.get_vocab_size(true),
            Inner::Spm(s) => s.vocab_size(),
        }
    }

    pub fn token_id(&self, token: &str) -> Option<u32> {
        match &self.inner {
            Inner::Hf(t) => t.token_to_id(token),
            Inner::Spm(s) => s.token_id(token),
        }
    }

    /// Ids of `text`; `bos` adds the beginning-of-sequence token as the tokenizer's template
    /// says (TGI and the authors' prompts have it).
    pub fn encode(&self, text: &str, bos: bool) -> Result<Vec<u32>, ModelError> {
        match &self.inner {
            Inner::Hf(t) => Ok(t
                .encode_fast(text, bos)
                .map_err(terr("encoding"))?
                .get_ids()
                .to_vec()),
            Inner::Spm(s) => Ok(s.encode(text, bos)),
        }
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains_key(&id)
    }

    fn decode_run(&self, run: &[u32]) -> Result<String, ModelError> {
        match &self.inner {
            Inner::Hf(t) => t.decode(run, false).map_err(terr("decoding")),
            Inner::Spm(s) => Ok(s.decode_run(run)),
        }
    }

    /// Text of generated ids: special tokens as themselves, runs of ordinary tokens decoded
    /// separately.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.decode_after(None, ids)
    }

    /// Text of ids generated after `prev`: when `prev` is an ordinary token, the first run
    /// continues its word, so its leading space is kept (decoded together with `prev`, minus
    /// `prev`'s own text).
    pub fn decode_after(&self, prev: Option<u32>, ids: &[u32]) -> Result<String, ModelError> {
        let split = ids
            .iter()
            .position(|id| self.special.contains_key(id))
            .unwrap_or(ids.len());
        if let Some(p) = prev.filter(|p| !self.is_special(*p) && split > 0) {
            let alone = self.decode_run(&[p])?;
            let mut with: Vec<u32> = vec![p];
            with.extend_from_slice(&ids[..split]);
            let joined = self.decode_run(&with)?;
            if let Some(first) = joined.strip_prefix(alone.as_str()) {
                let mut out = first.to_string();
                out.push_str(&self.decode_plain(&ids[split..])?);
                return Ok(out);
            }
        }
        self.decode_plain(ids)
    }

    fn decode_plain(&self, ids: &[u32]) -> Result<String, ModelError> {
        let mut out = String::new();
        let mut run: Vec<u32> = Vec::new();
        for &id in ids {
            if let Some(s) = self.special.get(&id) {
                if !run.is_empty() {
                    out.push_str(&self.decode_run(&run)?);
                    run.clear();
                }
                out.push_str(s);
            } else {
                run.push(id);
            }
        }
        if !run.is_empty() {
            out.push_str(&self.decode_run(&run)?);
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
