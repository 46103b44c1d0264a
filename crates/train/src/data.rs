//! Training records to conversations.
//!
//! Two formats are read, line by line, each recognised by its fields:
//!
//! * the authors' training format (MathCodeInstruct):
//!   `{"messages": [{"role": "system", "content": [{"type": "text", "content": ...}]},
//!   {"role": "user", ...}, {"role": "assistant", "content": [{"type": "text"|"code"|"execution",
//!   "content": ...}, ...]}]}`;
//! * the authors' released outputs ([`OutputRecord`], with `debug_result`), which are in the
//!   same block format.
//!
//! Both are rendered with `lce`'s template ([`PromptTemplate::render_with_spans`]), so training
//! sees exactly the text inference produces.

use mathcoder_lce::record::{read_to_string_maybe_gz, Message};
use mathcoder_lce::{
    Block, BlockKind, OutputRecord, PromptTemplate, Rendered, DEFAULT_SYSTEM_PROMPT,
};
use serde::Deserialize;
use std::path::Path;

use crate::TrainError;

/// One training conversation: a problem and the assistant's blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct Conversation {
    /// 1-based line in the source file.
    pub line: usize,
    pub system: String,
    pub question: String,
    pub blocks: Vec<Block>,
}

impl Conversation {
    /// The finished conversation with its spans (see `mathcoder_lce::span`).
    pub fn render(&self) -> Rendered {
        PromptTemplate {
            system: self.system.clone(),
            question_suffix: String::new(),
        }
        .render_with_spans(&self.question, &self.blocks, true)
    }
}

/// A record in the authors' training format.
#[derive(Deserialize)]
struct TrainingRecord {
    messages: Vec<Message>,
}

fn from_training(r: TrainingRecord, line: usize) -> Result<Conversation, String> {
    let text = |role: &str| {
        r.messages
            .iter()
            .find(|m| m.role == role)
            .map(Message::text)
    };
    let question = text("user").ok_or("no user message")?;
    let assistant = r
        .messages
        .iter()
        .find(|m| m.role == "assistant")
        .ok_or("no assistant message")?;
    let blocks = assistant
        .content
        .iter()
        .map(|p| {
            BlockKind::from_role_name(&p.kind)
                .map(|k| Block::new(k, p.content.clone()))
                .ok_or_else(|| {
                    format!(
                        "assistant content of type {:?} (text, code or execution expected)",
                        p.kind
                    )
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if blocks.is_empty() {
        return Err("the assistant message has no blocks".into());
    }
    Ok(Conversation {
        line,
        system: text("system").unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string()),
        question,
        blocks,
    })
}

fn from_output(r: OutputRecord, line: usize) -> Result<Conversation, String> {
    let blocks = r.blocks();
    if blocks.is_empty() {
        return Err("debug_result has no text, code or execution entries".into());
    }
    Ok(Conversation {
        line,
        system: r.template().system,
        question: r.question(),
        blocks,
    })
}

/// Parses one line (either format).
pub fn parse_line(text: &str, line: usize) -> Result<Conversation, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if v.get("debug_result").is_some() {
        let r: OutputRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
        from_output(r, line)
    } else {
        let r: TrainingRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
        from_training(r, line)
    }
}

/// Reads every non-blank line of a JSONL file (plain or `.gz`) in either format.
pub fn read_conversations(path: &Path) -> Result<Vec<Conversation>, TrainError> {
    let text = read_to_string_maybe_gz(path).map_err(|e| match e {
        mathcoder_lce::RecordError::Io { path, source } => TrainError::Io { path, source },
        other => TrainError::Record {
            path: path.to_path_buf(),
            line: 0,
            message: other.to_string(),
        },
    })?;
    let mut out = Vec::new();
    for (i, l) in text.lines().enumerate() {
        if l.trim().is_empty() {
            continue;
        }
        out.push(parse_line(l, i + 1).map_err(|message| TrainError::Record {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_render_the_same() {
        let train = r#"{"messages":[{"role":"system","content":[{"type":"text","content":"Sys."}]},{"role":"user","content":[{"type":"text","content":"Q?"}]},{"role":"assistant","content":[{"type":"text","content":"Add."},{"type":"code","content":"1+1"},{"type":"execution","content":"2"},{"type":"text","content":"2"}]}]}"#;
        let out = r#"{"messages":[{"role":"system","content":[{"type":"text","content":"Sys."}]},{"role":"user","content":[{"type":"text","content":"Q?"}]}],"ground_truth":{"answer":"2"},"debug_result":[{"role":"system","content":"Sys."},{"role":"user","content":"Q?"},{"role":"text","content":"Add."},{"role":"code","content":"1+1"},{"role":"execution","content":"2"},{"role":"text","content":"2"}],"completion":"2"}"#;
        let a = parse_line(train, 1).unwrap();
        let b = parse_line(out, 1).unwrap();
        assert_eq!(a, b);
        assert_eq!(
            a.render().text,
            "<|system|><|text|>Sys.<|endofblock|><|endofmessage|><|user|><|text|>Q?<|endofblock|><|endofmessage|><|assistant|><|text|>Add.<|endofblock|><|code|>1+1<|endofblock|><|execution|>2<|endofblock|><|text|>2<|endofblock|><|endofmessage|>"
        );
        assert!(
            parse_line(r#"{"messages":[{"role":"user","content":[]}]}"#, 3)
                .unwrap_err()
                .contains("assistant")
        );
        assert!(parse_line("{", 1).is_err());
    }
}
