//! MathCoder's eight special tokens in a tokenizer and a model that lack them.
//!
//! As the authors' recipe (Alpaca's `smart_tokenizer_and_embedding_resize`): the tokens are
//! added as special tokens in `lce`'s order, and the embedding matrix (and an untied output
//! matrix) gets one new row per new id, each set to the mean of the existing rows.

use candle_core::{Tensor, Var};
use candle_nn::VarMap;
use mathcoder_lce::SpecialToken;
use mathcoder_model::{ModelConfig, Weight};
use tokenizers::{AddedToken, Tokenizer};

use crate::TrainError;

/// Adds those of the eight tokens `tok` lacks (as special tokens, in vocabulary order);
/// returns how many were added.
pub fn add_lce_tokens(tok: &mut Tokenizer) -> Result<usize, TrainError> {
    let missing: Vec<AddedToken> = SpecialToken::ALL
        .iter()
        .filter(|t| tok.token_to_id(t.as_str()).is_none())
        .map(|t| AddedToken::from(t.as_str(), true))
        .collect();
    if missing.is_empty() {
        return Ok(0);
    }
    let n = missing.len();
    tok.add_special_tokens(missing)
        .map_err(|e| TrainError::Tokenizer(format!("adding MathCoder's tokens: {e}")))?;
    Ok(n)
}

/// Grows the embedding (and untied output) rows of `vars` to `vocab` rows, the new rows the
/// mean of the existing ones, and sets `config.vocab_size`. Does nothing when the model is
/// already that large; a model larger than the tokenizer keeps its rows.
pub fn resize_embeddings(
    vars: &VarMap,
    config: &mut ModelConfig,
    vocab: usize,
) -> Result<usize, TrainError> {
    if vocab <= config.vocab_size {
        return Ok(0);
    }
    let new = vocab - config.vocab_size;
    let mut data = vars
        .data()
        .lock()
        .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?;
    let mut names = vec![Weight::Embed.hf_name()];
    if !config.tie_word_embeddings {
        names.push(Weight::LmHead.hf_name());
    }
    for name in names {
        let old = data
            .get(&name)
            .ok_or_else(|| TrainError::Config(format!("the model has no {name}")))?
            .as_tensor()
            .clone();
        let (_, h) = old.dims2()?;
        let mean = old.mean_keepdim(0)?; // [1, h]
        let rows = mean.broadcast_as((new, h))?.contiguous()?;
        let grown = Tensor::cat(&[&old, &rows], 0)?;
        data.insert(name, Var::from_tensor(&grown)?);
    }
    config.vocab_size = vocab;
    Ok(new)
}
