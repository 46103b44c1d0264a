//! The MathCoder prompt template (paper Fig. 3, authors' `inference.py`).
//!
//! ```text
//! <|system|><|text|>{system}<|endofblock|><|endofmessage|><|user|><|text|>{question}<|endofblock|><|endofmessage|><|assistant|>
//! ```
//! followed by the assistant's blocks and, once the solution is finished, `<|endofmessage|>`.
//! There are no newlines between tokens.

use crate::block::Block;
use crate::parse::{parse_blocks, ParsedOutput};
use crate::span::{Rendered, Span, SpanKind};
use crate::tokens::SpecialToken;

/// The system prompt of the paper's evaluation (and of every released output file).
pub const DEFAULT_SYSTEM_PROMPT: &str = "Below is a math problem. Please solve it step by step.";

/// The system prompt of the authors' public script with `--syspt`.
pub const BOXED_SYSTEM_PROMPT: &str =
    "Below is a math problem. Please solve it step by step and put your answer in \"\\boxed{}\".";

/// How a problem is turned into the text the model continues.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PromptTemplate {
    /// The system message (default: [`DEFAULT_SYSTEM_PROMPT`]).
    pub system: String,
    /// Appended to the question. The paper's template (Fig. 3) appends nothing; the authors'
    /// public `inference.py` appends `"\n"`.
    pub question_suffix: String,
}

impl Default for PromptTemplate {
    fn default() -> Self {
        PromptTemplate::mathcoder()
    }
}

impl PromptTemplate {
    /// The template the paper's numbers were produced with.
    pub fn mathcoder() -> PromptTemplate {
        PromptTemplate {
            system: DEFAULT_SYSTEM_PROMPT.to_string(),
            question_suffix: String::new(),
        }
    }

    /// The prompt up to and including `<|assistant|>`.
    pub fn render(&self, question: &str) -> String {
        self.render_with_spans(question, &[], false).text
    }

    /// The prompt followed by the assistant blocks written so far (what the model continues).
    pub fn render_partial(&self, question: &str, blocks: &[Block]) -> String {
        self.render_with_spans(question, blocks, false).text
    }

    /// A whole finished conversation (the SFT training text).
    pub fn render_finished(&self, question: &str, blocks: &[Block]) -> String {
        self.render_with_spans(question, blocks, true).text
    }

    /// Renders the prompt, the assistant's `blocks` and, when `finished`, the closing
    /// `<|endofmessage|>`, and says who writes each byte (see [`crate::span`]).
    ///
    /// This is the one definition of the template: [`PromptTemplate::render`],
    /// [`PromptTemplate::render_partial`] and [`PromptTemplate::render_finished`] are its text.
    pub fn render_with_spans(&self, question: &str, blocks: &[Block], finished: bool) -> Rendered {
        let content: usize = blocks.iter().map(|b| b.content.len() + 24).sum();
        let mut s = String::with_capacity(
            question.len() + self.question_suffix.len() + self.system.len() + 128 + content,
        );
        push_message(&mut s, SpecialToken::System, &self.system);
        s.push_str(SpecialToken::User.as_str());
        s.push_str(SpecialToken::Text.as_str());
        s.push_str(question);
        s.push_str(&self.question_suffix);
        s.push_str(SpecialToken::EndOfBlock.as_str());
        s.push_str(SpecialToken::EndOfMessage.as_str());
        s.push_str(SpecialToken::Assistant.as_str());
        let mut spans = Vec::with_capacity(blocks.len() + 2);
        spans.push(Span {
            range: 0..s.len(),
            kind: SpanKind::Prompt,
            block: None,
        });
        for (i, b) in blocks.iter().enumerate() {
            let start = s.len();
            b.render_into(&mut s);
            spans.push(Span {
                range: start..s.len(),
                kind: SpanKind::of_block(b.kind),
                block: Some(i),
            });
        }
        if finished {
            let start = s.len();
            s.push_str(SpecialToken::EndOfMessage.as_str());
            spans.push(Span {
                range: start..s.len(),
                kind: SpanKind::Model,
                block: None,
            });
        }
        Rendered { text: s, spans }
    }
}

fn push_message(s: &mut String, role: SpecialToken, content: &str) {
    s.push_str(role.as_str());
    s.push_str(SpecialToken::Text.as_str());
    s.push_str(content);
    s.push_str(SpecialToken::EndOfBlock.as_str());
    s.push_str(SpecialToken::EndOfMessage.as_str());
}

/// A conversation recovered from token text in MathCoder's template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversation {
    pub system: String,
    pub user: String,
    /// The assistant's blocks so far, with any parse warnings.
    pub assistant: ParsedOutput,
}

/// Splits a rendered prompt (possibly with assistant blocks after it) back into its parts.
/// Returns `None` when the text does not follow the template.
pub fn parse_conversation(text: &str) -> Option<Conversation> {
    let text = text.strip_prefix("<s>").unwrap_or(text);
    let system = message_body(text, SpecialToken::System)?;
    let after_system = text.find(SpecialToken::User.as_str())?;
    let user_part = &text[after_system..];
    let user = message_body(user_part, SpecialToken::User)?;
    let assistant_at = user_part.find(SpecialToken::Assistant.as_str())?;
    let rest = &user_part[assistant_at + SpecialToken::Assistant.as_str().len()..];
    Some(Conversation {
        system,
        user,
        assistant: parse_blocks(rest),
    })
}

fn message_body(text: &str, role: SpecialToken) -> Option<String> {
    let rest = text.strip_prefix(role.as_str())?;
    let rest = rest
        .strip_prefix(SpecialToken::Text.as_str())
        .unwrap_or(rest);
    let end = rest.find(SpecialToken::EndOfBlock.as_str())?;
    Some(rest[..end].to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_paper_template_exactly() {
        let t = PromptTemplate::mathcoder();
        assert_eq!(
            t.render("What is 1+1?"),
            "<|system|><|text|>Below is a math problem. Please solve it step by step.<|endofblock|><|endofmessage|><|user|><|text|>What is 1+1?<|endofblock|><|endofmessage|><|assistant|>"
        );
        let blocks = [
            Block::text("Add."),
            Block::code("1+1"),
            Block::execution("2"),
            Block::text("2"),
        ];
        assert_eq!(
            t.render_finished("Q", &blocks),
            "<|system|><|text|>Below is a math problem. Please solve it step by step.<|endofblock|><|endofmessage|><|user|><|text|>Q<|endofblock|><|endofmessage|><|assistant|><|text|>Add.<|endofblock|><|code|>1+1<|endofblock|><|execution|>2<|endofblock|><|text|>2<|endofblock|><|endofmessage|>"
        );
    }

    #[test]
    fn public_script_variant_appends_newline() {
        let t = PromptTemplate {
            system: String::new(),
            question_suffix: "\n".into(),
        };
        assert!(t.render("Q").starts_with(
            "<|system|><|text|><|endofblock|><|endofmessage|><|user|><|text|>Q\n<|endofblock|>"
        ));
    }

    #[test]
    fn conversation_round_trip() {
        let t = PromptTemplate::mathcoder();
        let blocks = vec![
            Block::text("a"),
            Block::code("print(1)"),
            Block::execution("1"),
        ];
        let text = t.render_partial("How many?", &blocks);
        let c = parse_conversation(&text).unwrap();
        assert_eq!(c.system, DEFAULT_SYSTEM_PROMPT);
        assert_eq!(c.user, "How many?");
        assert_eq!(c.assistant.blocks, blocks);
        assert!(!c.assistant.end_of_message);
        assert!(parse_conversation("no template here").is_none());
    }
}
