//! The eight special tokens MathCoder adds to the Llama vocabulary.

use std::fmt;

/// One of MathCoder's added special tokens.
///
/// [`SpecialToken::ALL`] lists them in the order of the released checkpoints'
/// `special_tokens_map.json`, which is also the order of their ids
/// (32000-32007 on Llama-2, 32016-32023 on CodeLlama).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SpecialToken {
    System,
    User,
    Assistant,
    EndOfMessage,
    Text,
    Code,
    Execution,
    EndOfBlock,
}

impl SpecialToken {
    /// All tokens, in vocabulary order.
    pub const ALL: [SpecialToken; 8] = [
        SpecialToken::System,
        SpecialToken::User,
        SpecialToken::Assistant,
        SpecialToken::EndOfMessage,
        SpecialToken::Text,
        SpecialToken::Code,
        SpecialToken::Execution,
        SpecialToken::EndOfBlock,
    ];

    /// The literal text of the token, e.g. `<|endofblock|>`.
    pub const fn as_str(self) -> &'static str {
        match self {
            SpecialToken::System => "<|system|>",
            SpecialToken::User => "<|user|>",
            SpecialToken::Assistant => "<|assistant|>",
            SpecialToken::EndOfMessage => "<|endofmessage|>",
            SpecialToken::Text => "<|text|>",
            SpecialToken::Code => "<|code|>",
            SpecialToken::Execution => "<|execution|>",
            SpecialToken::EndOfBlock => "<|endofblock|>",
        }
    }

    /// Parses the literal text of a token.
    pub fn from_literal(s: &str) -> Option<SpecialToken> {
        SpecialToken::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// The position of this token among the added tokens (0..8); its id is
    /// `base_vocab_size + offset()`.
    pub fn offset(self) -> u32 {
        SpecialToken::ALL
            .iter()
            .position(|t| *t == self)
            .unwrap_or(0) as u32
    }

    /// Finds the special token (if any) starting at byte `i` of `s`.
    pub fn at(s: &str, i: usize) -> Option<SpecialToken> {
        let rest = s.get(i..)?;
        if !rest.starts_with("<|") {
            return None;
        }
        SpecialToken::ALL
            .into_iter()
            .find(|t| rest.starts_with(t.as_str()))
    }
}

impl fmt::Display for SpecialToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The literal texts of all eight tokens, in vocabulary order.
pub fn all_literals() -> [&'static str; 8] {
    SpecialToken::ALL.map(SpecialToken::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_round_trip_and_order() {
        for (i, t) in SpecialToken::ALL.iter().enumerate() {
            assert_eq!(SpecialToken::from_literal(t.as_str()), Some(*t));
            assert_eq!(t.offset() as usize, i);
        }
        assert_eq!(
            all_literals(),
            [
                "<|system|>",
                "<|user|>",
                "<|assistant|>",
                "<|endofmessage|>",
                "<|text|>",
                "<|code|>",
                "<|execution|>",
                "<|endofblock|>"
            ]
        );
        assert_eq!(SpecialToken::from_literal("<|foo|>"), None);
        assert_eq!(SpecialToken::at("ab<|code|>x", 2), Some(SpecialToken::Code));
        assert_eq!(SpecialToken::at("ab<|code|>x", 1), None);
    }
}
