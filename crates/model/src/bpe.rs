//! A byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`) built from a GGUF file's own
//! vocabulary, merges and pre-tokeniser type, as a `tokenizers::Tokenizer`.
//!
//! llama.cpp names the pre-tokeniser (`tokenizer.ggml.pre`) instead of storing it; the split
//! expressions below are llama.cpp's for each name (`llama-vocab.cpp`), which are those of the
//! model's own `tokenizer.json`. Control tokens (`<|im_start|>`, ...) are matched in the text
//! as llama.cpp does with `parse_special`, and shown as their text when decoding.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::ModelError;

/// GPT-2's split expression (llama.cpp's default for BPE vocabularies).
const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// StarCoder / SmolLM: digits one by one, then GPT-2's expression.
const STARCODER: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";
/// Qwen2: single digits, letters with one leading non-letter.
const QWEN2: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Llama-3: numbers in groups of up to three.
const LLAMA3: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF token types (llama.cpp's `llama_token_type`).
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// How llama.cpp pre-tokenises for a `tokenizer.ggml.pre` name: the split expression, whether
/// digits are split one by one first, whether whole words in the vocabulary skip merging.
fn pre_tokenizer(pre: &str) -> Result<(&'static str, bool, bool), ModelError> {
    Ok(match pre {
        "" | "default" | "gpt-2" | "gpt2" => (GPT2, false, false),
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => {
            (STARCODER, true, false)
        }
        "qwen2" | "deepseek-r1-qwen" => (QWEN2, false, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => (LLAMA3, false, true),
        other => {
            return Err(ModelError::Tokenizer(format!(
                "GGUF pre-tokenizer {other:?} is not supported (gpt2, smollm/starcoder, qwen2, llama-bpe)"
            )))
        }
    })
}

fn terr(what: &'static str) -> impl FnOnce(tokenizers::Error) -> ModelError {
    move |e| ModelError::Tokenizer(format!("GGUF BPE vocabulary: {what}: {e}"))
}

fn strings(ct: &gguf_file::Content, key: &str) -> Result<Vec<String>, ModelError> {
    let v = ct
        .metadata
        .get(key)
        .ok_or_else(|| ModelError::Tokenizer(format!("GGUF has no {key}")))?
        .to_vec()
        .map_err(|e| ModelError::Tokenizer(format!("GGUF {key}: {e}")))?;
    v.iter()
        .map(|s| {
            s.to_string()
                .cloned()
                .map_err(|e| ModelError::Tokenizer(format!("GGUF {key}: {e}")))
        })
        .collect()
}

/// The tokenizer, its control tokens (id, text), and its beginning-of-sequence token when the
/// file asks for one to be added.
pub struct GgufBpe {
    pub tokenizer: Tokenizer,
    pub control: Vec<(u32, String)>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// Builds the tokenizer of a GGUF file whose `tokenizer.ggml.model` is `gpt2`.
pub fn from_gguf(ct: &gguf_file::Content) -> Result<GgufBpe, ModelError> {
    let get = |k: &str| ct.metadata.get(k);
    let tokens = strings(ct, "tokenizer.ggml.tokens")?;
    let merges = strings(ct, "tokenizer.ggml.merges")?;
    let types: Vec<i32> = get("tokenizer.ggml.token_type")
        .and_then(|v| v.to_vec().ok())
        .map(|a| a.iter().map(|v| v.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let pre = get("tokenizer.ggml.pre")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    let (pattern, digits, ignore_merges) = pre_tokenizer(&pre)?;
    let id = |k: &str| get(k).and_then(|v| v.to_u32().ok());
    let n = tokens.len() as u32;
    let valid = |i: Option<u32>| i.filter(|i| *i < n);
    let (bos, eos) = (
        valid(id("tokenizer.ggml.bos_token_id")),
        valid(id("tokenizer.ggml.eos_token_id")),
    );
    let add_bos = get("tokenizer.ggml.add_bos_token")
        .and_then(|v| v.to_bool().ok())
        .unwrap_or(false);

    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(ModelError::Tokenizer(
            "GGUF BPE vocabulary has duplicate tokens".into(),
        ));
    }
    let merges = merges
        .iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| ModelError::Tokenizer(format!("GGUF BPE merge {m:?} has no space")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(terr("merges"))?;
    let mut tokenizer = Tokenizer::new(bpe);

    let split = Split::new(
        SplitPattern::Regex(pattern.to_string()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(terr("split expression"))?;
    let mut pres: Vec<PreTokenizerWrapper> = Vec::new();
    if digits {
        pres.push(Digits::new(true).into());
    }
    pres.push(split.into());
    pres.push(ByteLevel::new(false, false, false).into());
    tokenizer.with_pre_tokenizer(Some(Sequence::new(pres)));
    tokenizer.with_decoder(Some(ByteLevelDecoder::default()));

    let mut control = Vec::new();
    let mut added = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        match types.get(i).copied() {
            Some(CONTROL) => {
                control.push((i as u32, t.clone()));
                added.push(AddedToken::from(t.clone(), true));
            }
            Some(USER_DEFINED) => added.push(AddedToken::from(t.clone(), false).normalized(false)),
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(added)
        .map_err(terr("control tokens"))?;
    if let (true, Some(b)) = (add_bos, bos) {
        let text = tokens[b as usize].clone();
        let post = TemplateProcessing::builder()
            .try_single(format!("{text}:0 $A:0"))
            .map_err(|e| ModelError::Tokenizer(format!("GGUF BPE template: {e}")))?
            .special_tokens(vec![(text, b)])
            .build()
            .map_err(|e| ModelError::Tokenizer(format!("GGUF BPE template: {e}")))?;
        tokenizer.with_post_processor(Some(post));
    }
    Ok(GgufBpe {
        tokenizer,
        control,
        bos,
        eos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_pre_tokenizers() {
        assert!(pre_tokenizer("smollm").unwrap().1);
        assert_eq!(pre_tokenizer("qwen2").unwrap().0, QWEN2);
        let e = pre_tokenizer("jais").unwrap_err().to_string();
        assert!(e.contains("jais"), "{e}");
        for p in [GPT2, STARCODER, QWEN2, LLAMA3] {
            Split::new(
                SplitPattern::Regex(p.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .unwrap();
        }
    }
}
