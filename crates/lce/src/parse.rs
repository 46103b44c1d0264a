//! Parsing raw model text (as generated, or as TGI/vLLM return it) into blocks.
//!
//! The parser is total: any input gives a [`ParsedOutput`]; irregularities are reported as
//! [`ParseWarning`]s instead of errors, because model output is data, not a contract.

use crate::block::{Block, BlockKind};
use crate::tokens::SpecialToken;

/// Something irregular the parser tolerated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseWarning {
    /// Block `index` was not closed by `<|endofblock|>` before the next block or the end.
    MissingEndOfBlock { index: usize },
    /// A token that has no meaning at this place (e.g. `<|user|>` inside an answer, or an
    /// `<|endofblock|>` with no open block); it was ignored.
    StrayToken { token: String, byte: usize },
    /// A block with only whitespace content; it was dropped.
    EmptyBlock { kind: BlockKind, byte: usize },
    /// Non-blank text outside any block; it was kept as a text block.
    UnmarkedText { byte: usize },
    /// Non-blank text after `<|endofmessage|>`; it was ignored.
    TextAfterEndOfMessage { byte: usize },
}

/// The blocks found in some model text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ParsedOutput {
    pub blocks: Vec<Block>,
    /// Whether `<|endofmessage|>` was seen.
    pub end_of_message: bool,
    pub warnings: Vec<ParseWarning>,
}

/// Sequence markers that can end generated text; dropped there.
const EOS_MARKERS: [&str; 2] = ["</s>", "<s>"];

enum Piece<'a> {
    Text(&'a str, usize),
    Token(SpecialToken, usize),
    Marker(&'static str, usize),
}

fn pieces(raw: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let bytes = raw.as_bytes();
    let (mut i, mut text_start) = (0usize, 0usize);
    while i < bytes.len() {
        if bytes[i] == b'<' {
            let found: Option<(Piece<'_>, usize)> = if let Some(t) = SpecialToken::at(raw, i) {
                Some((Piece::Token(t, i), t.as_str().len()))
            } else {
                // `</s>` / `<s>` only as the very last thing (an end-of-sequence marker a server
                // left in); elsewhere they are text (models do write `</s>` inside code).
                EOS_MARKERS
                    .iter()
                    .find(|m| raw[i..].starts_with(**m) && raw[i + m.len()..].trim().is_empty())
                    .map(|m| (Piece::Marker(m, i), m.len()))
            };
            if let Some((p, len)) = found {
                if text_start < i {
                    out.push(Piece::Text(&raw[text_start..i], text_start));
                }
                out.push(p);
                i += len;
                text_start = i;
                continue;
            }
        }
        i += 1;
    }
    if text_start < raw.len() {
        out.push(Piece::Text(&raw[text_start..], text_start));
    }
    out
}

struct OpenBlock {
    kind: BlockKind,
    content: String,
    byte: usize,
}

/// Parses text made of `<|kind|>content<|endofblock|>` blocks, optionally ending with
/// `<|endofmessage|>`.
pub fn parse_blocks(raw: &str) -> ParsedOutput {
    let mut out = ParsedOutput::default();
    let mut open: Option<OpenBlock> = None;
    for piece in pieces(raw) {
        match piece {
            Piece::Text(s, byte) => match open.as_mut() {
                Some(b) => b.content.push_str(s),
                None => {
                    if out.end_of_message {
                        if !s.trim().is_empty() {
                            out.warnings
                                .push(ParseWarning::TextAfterEndOfMessage { byte });
                        }
                    } else if !s.trim().is_empty() {
                        out.warnings.push(ParseWarning::UnmarkedText { byte });
                        out.blocks.push(Block::text(s));
                    }
                }
            },
            Piece::Marker(m, byte) => {
                if !out.end_of_message {
                    out.warnings.push(ParseWarning::StrayToken {
                        token: m.to_string(),
                        byte,
                    });
                }
            }
            Piece::Token(t, byte) => {
                if out.end_of_message {
                    out.warnings
                        .push(ParseWarning::TextAfterEndOfMessage { byte });
                    continue;
                }
                match t {
                    SpecialToken::Text | SpecialToken::Code | SpecialToken::Execution => {
                        if let Some(b) = open.take() {
                            finish(&mut out, b, true);
                        }
                        open = Some(OpenBlock {
                            kind: BlockKind::from_token(t).expect("block token"),
                            content: String::new(),
                            byte,
                        });
                    }
                    SpecialToken::EndOfBlock => match open.take() {
                        Some(b) => finish(&mut out, b, false),
                        None => out.warnings.push(ParseWarning::StrayToken {
                            token: t.as_str().to_string(),
                            byte,
                        }),
                    },
                    SpecialToken::EndOfMessage => {
                        if let Some(b) = open.take() {
                            finish(&mut out, b, true);
                        }
                        out.end_of_message = true;
                    }
                    SpecialToken::System | SpecialToken::User | SpecialToken::Assistant => {
                        // Meaningless inside an answer: drop the token, keep the block going.
                        out.warnings.push(ParseWarning::StrayToken {
                            token: t.as_str().to_string(),
                            byte,
                        });
                    }
                }
            }
        }
    }
    if let Some(b) = open.take() {
        finish(&mut out, b, true);
    }
    out
}

fn finish(out: &mut ParsedOutput, b: OpenBlock, missing_end: bool) {
    if missing_end {
        out.warnings.push(ParseWarning::MissingEndOfBlock {
            index: out.blocks.len(),
        });
    }
    if b.content.trim().is_empty() {
        out.warnings.push(ParseWarning::EmptyBlock {
            kind: b.kind,
            byte: b.byte,
        });
        return;
    }
    out.blocks.push(Block {
        kind: b.kind,
        content: b.content,
    });
}

/// Parses one generation round (the text between two stops) into at most one block:
/// the first block found, or `None` if the text holds no block content.
/// Also reports whether the round ended the message.
pub fn parse_round(raw: &str) -> (Option<Block>, bool) {
    let p = parse_blocks(raw);
    let ended = p.end_of_message;
    (p.blocks.into_iter().next(), ended)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::render_blocks;
    use proptest::prelude::*;

    #[test]
    fn parses_a_full_solution() {
        let raw = "<|text|>Let's compute.<|endofblock|><|code|>x = 2\nx*3<|endofblock|><|execution|>6<|endofblock|><|text|>The answer is 6.<|endofblock|><|text|>6<|endofblock|><|endofmessage|>";
        let p = parse_blocks(raw);
        assert!(p.end_of_message);
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert_eq!(
            p.blocks,
            vec![
                Block::text("Let's compute."),
                Block::code("x = 2\nx*3"),
                Block::execution("6"),
                Block::text("The answer is 6."),
                Block::text("6"),
            ]
        );
        assert_eq!(render_blocks(&p.blocks) + "<|endofmessage|>", raw);
    }

    #[test]
    fn tolerates_missing_endofblock() {
        let p = parse_blocks("<|text|>a<|code|>b<|endofblock|><|text|>c");
        assert_eq!(
            p.blocks,
            vec![Block::text("a"), Block::code("b"), Block::text("c")]
        );
        assert!(!p.end_of_message);
        assert_eq!(
            p.warnings,
            vec![
                ParseWarning::MissingEndOfBlock { index: 0 },
                ParseWarning::MissingEndOfBlock { index: 2 }
            ]
        );
    }

    #[test]
    fn tolerates_stray_tokens_and_empty_blocks() {
        let p = parse_blocks(
            "<|assistant|><|text|><|endofblock|><|endofblock|><|code|>print(1)<|user|>\nprint(2)<|endofblock|></s>\n",
        );
        assert_eq!(p.blocks, vec![Block::code("print(1)\nprint(2)")]);
        assert!(p
            .warnings
            .iter()
            .any(|w| matches!(w, ParseWarning::EmptyBlock { .. })));
        assert!(p
            .warnings
            .iter()
            .any(|w| matches!(w, ParseWarning::StrayToken { token, .. } if token == "<|user|>")));
        assert!(p
            .warnings
            .iter()
            .any(|w| matches!(w, ParseWarning::StrayToken { token, .. } if token == "</s>")));
    }

    #[test]
    fn end_of_sequence_text_inside_a_block_is_kept() {
        // Seen in the released outputs: the model wrote `</s>` into code that was executed.
        let p = parse_blocks("<|code|>x = (</s>\ny<|endofblock|>");
        assert_eq!(p.blocks, vec![Block::code("x = (</s>\ny")]);
    }

    #[test]
    fn unmarked_text_becomes_a_text_block() {
        // TGI strips special tokens; a client that forgot to re-attach them sends bare text.
        let p = parse_blocks("The answer is 4");
        assert_eq!(p.blocks, vec![Block::text("The answer is 4")]);
        assert_eq!(p.warnings, vec![ParseWarning::UnmarkedText { byte: 0 }]);
        assert_eq!(parse_blocks("").blocks, vec![]);
        assert_eq!(parse_blocks("   \n").blocks, vec![]);
    }

    #[test]
    fn rounds() {
        assert_eq!(
            parse_round("<|code|>1+1<|endofblock|>"),
            (Some(Block::code("1+1")), false)
        );
        assert_eq!(
            parse_round("<|text|>2<|endofblock|><|endofmessage|>"),
            (Some(Block::text("2")), true)
        );
        assert_eq!(parse_round("<|endofmessage|>"), (None, true));
    }

    #[test]
    fn text_after_end_of_message_is_reported() {
        let p = parse_blocks("<|text|>1<|endofblock|><|endofmessage|>junk");
        assert_eq!(p.blocks, vec![Block::text("1")]);
        assert_eq!(
            p.warnings,
            vec![ParseWarning::TextAfterEndOfMessage { byte: 39 }]
        );
    }

    fn block_strategy() -> impl Strategy<Value = Block> {
        (
            prop_oneof![
                Just(BlockKind::Text),
                Just(BlockKind::Code),
                Just(BlockKind::Execution)
            ],
            "[a-z0-9 =+\\n<>|]{1,20}",
        )
            .prop_filter("no tokens inside, not blank", |(_, c)| {
                !c.trim().is_empty()
                    && !c.contains("<|")
                    && !c.contains("<s>")
                    && !c.contains("</s>")
            })
            .prop_map(|(k, c)| Block::new(k, c))
    }

    proptest! {
        #[test]
        fn render_parse_round_trip(blocks in proptest::collection::vec(block_strategy(), 0..8)) {
            let text = render_blocks(&blocks);
            let p = parse_blocks(&text);
            prop_assert_eq!(&p.blocks, &blocks);
            prop_assert!(p.warnings.is_empty());
        }

        #[test]
        fn never_panics(s in "(<\\|(text|code|execution|endofblock|endofmessage|user)\\|>|</s>|[a-z <|>])*") {
            let _ = parse_blocks(&s);
        }
    }
}
