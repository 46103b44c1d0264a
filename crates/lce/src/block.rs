//! Blocks: the text / code / execution components of an LCE solution.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::tokens::SpecialToken;

/// What a block holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockKind {
    /// Natural-language reasoning (`<|text|>`).
    Text,
    /// Python code the model wants executed (`<|code|>`).
    Code,
    /// The output of executing the preceding code block (`<|execution|>`).
    Execution,
}

impl BlockKind {
    /// The special token that opens a block of this kind.
    pub fn opening_token(self) -> SpecialToken {
        match self {
            BlockKind::Text => SpecialToken::Text,
            BlockKind::Code => SpecialToken::Code,
            BlockKind::Execution => SpecialToken::Execution,
        }
    }

    /// The block kind a special token opens, if it opens one.
    pub fn from_token(t: SpecialToken) -> Option<BlockKind> {
        match t {
            SpecialToken::Text => Some(BlockKind::Text),
            SpecialToken::Code => Some(BlockKind::Code),
            SpecialToken::Execution => Some(BlockKind::Execution),
            _ => None,
        }
    }

    /// The role name the authors' `debug_result` uses for this kind.
    pub fn role_name(self) -> &'static str {
        match self {
            BlockKind::Text => "text",
            BlockKind::Code => "code",
            BlockKind::Execution => "execution",
        }
    }

    /// Parses a `debug_result` role name.
    pub fn from_role_name(s: &str) -> Option<BlockKind> {
        match s {
            "text" => Some(BlockKind::Text),
            "code" => Some(BlockKind::Code),
            "execution" => Some(BlockKind::Execution),
            _ => None,
        }
    }
}

impl fmt::Display for BlockKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.role_name())
    }
}

/// One component of an assistant message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    pub kind: BlockKind,
    pub content: String,
}

impl Block {
    pub fn new(kind: BlockKind, content: impl Into<String>) -> Block {
        Block {
            kind,
            content: content.into(),
        }
    }
    pub fn text(content: impl Into<String>) -> Block {
        Block::new(BlockKind::Text, content)
    }
    pub fn code(content: impl Into<String>) -> Block {
        Block::new(BlockKind::Code, content)
    }
    pub fn execution(content: impl Into<String>) -> Block {
        Block::new(BlockKind::Execution, content)
    }

    /// Appends the token form of the block, `<|kind|>content<|endofblock|>`, to `out`.
    pub fn render_into(&self, out: &mut String) {
        out.push_str(self.kind.opening_token().as_str());
        out.push_str(&self.content);
        out.push_str(SpecialToken::EndOfBlock.as_str());
    }

    /// The token form of the block, `<|kind|>content<|endofblock|>`.
    pub fn render(&self) -> String {
        let mut s = String::with_capacity(self.content.len() + 24);
        self.render_into(&mut s);
        s
    }
}

/// Renders a sequence of blocks back to token text (no message tokens).
pub fn render_blocks(blocks: &[Block]) -> String {
    let mut s = String::new();
    for b in blocks {
        b.render_into(&mut s);
    }
    s
}
