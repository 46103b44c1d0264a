//! One instance shown with its trained and masked tokens told apart (for an inspect command).
//!
//! Runs of tokens with the same mask are decoded together (every run begins and ends at a special
//! token, so the text is the rendered text); masked runs are dimmed with ANSI escapes when
//! `color`, else bracketed `[[...]]`; trained runs are plain.

use crate::tokenize::{Instance, TrainTokenizer};
use crate::TrainError;

/// An instance as text, with its counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub text: String,
    pub tokens: usize,
    pub trained: usize,
    pub masked: usize,
}

/// The instance as runs of tokens with the same mask, decoded: `(text, trained)`, in order
/// (their texts joined are the rendered text).
pub fn runs(tok: &TrainTokenizer, inst: &Instance) -> Result<Vec<(String, bool)>, TrainError> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < inst.ids.len() {
        let target = inst.targets.get(start).copied().unwrap_or(false);
        let mut end = start + 1;
        while end < inst.ids.len() && inst.targets.get(end).copied().unwrap_or(false) == target {
            end += 1;
        }
        out.push((tok.decode(&inst.ids[start..end])?, target));
        start = end;
    }
    Ok(out)
}

/// Shows `inst` (see the module docs).
pub fn show(tok: &TrainTokenizer, inst: &Instance, color: bool) -> Result<Shown, TrainError> {
    let mut text = String::new();
    for (run, target) in runs(tok, inst)? {
        match (target, color) {
            (true, _) => text.push_str(&run),
            (false, true) => {
                text.push_str("\x1b[2m");
                text.push_str(&run);
                text.push_str("\x1b[0m");
            }
            (false, false) => {
                text.push_str("[[");
                text.push_str(&run);
                text.push_str("]]");
            }
        }
    }
    let trained = inst.target_count();
    Ok(Shown {
        text,
        tokens: inst.len(),
        trained,
        masked: inst.len() - trained,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Conversation;
    use crate::tokenize::MaskOptions;
    use mathcoder_lce::Block;

    #[test]
    fn masked_runs_are_bracketed_or_dimmed() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../engine/tests/fixtures/llama2-tiny");
        let (tok, _) = TrainTokenizer::load(&dir).unwrap();
        let c = Conversation {
            line: 1,
            system: "S".into(),
            question: "Q".into(),
            blocks: vec![
                Block::text("a"),
                Block::code("1"),
                Block::execution("1"),
                Block::text("1"),
            ],
        };
        let inst = tok
            .tokenize(&c.render(), MaskOptions::default(), 1)
            .unwrap();
        let s = show(&tok, &inst, false).unwrap();
        assert_eq!(s.tokens, inst.len());
        assert_eq!(s.trained + s.masked, s.tokens);
        assert!(s.trained > 0 && s.masked > 0);
        assert!(s.text.starts_with("[[<s>"), "{}", s.text);
        assert!(s.text.contains("<|assistant|>]]<|text|>"), "{}", s.text);
        assert!(s.text.contains("[[<|execution|>"), "{}", s.text);
        assert!(s.text.ends_with("<|endofmessage|>"), "{}", s.text);
        let d = show(&tok, &inst, true).unwrap();
        assert!(d.text.starts_with("\x1b[2m<s>") && !d.text.contains("[["));
    }
}
