//! The authors' training format (MathCodeInstruct): one JSON line per solution,
//!
//! ```text
//! {"messages": [
//!    {"role": "system",    "content": [{"type": "text", "content": "Below is a math problem. ..."}]},
//!    {"role": "user",      "content": [{"type": "text", "content": "<question>"}]},
//!    {"role": "assistant", "content": [{"type": "text"|"code"|"execution", "content": "..."}, ...]}],
//!  "provenance": {...}}
//! ```
//!
//! The `messages` are what the authors' fine-tuning chat template consumes: the system and user
//! messages are one text part each, the assistant message is the LCE solution, one part per
//! block, in order (executions included; the final answer-only text block last, as the released
//! outputs have it). `provenance` is ours: where the solution came from and why it was kept
//! ([`Provenance`]). Unknown fields, in the record and in its provenance, are kept, so reading
//! then writing a record gives back the same JSON.
//!
//! [`TrainRecord::to_line`] and [`read_train_records`] are the only writer and reader; an SFT
//! trainer renders a record with [`TrainRecord::render_with_spans`] and trains on the `Model`
//! spans.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

use crate::block::{Block, BlockKind};
use crate::prompt::PromptTemplate;
use crate::record::{read_jsonl, ContentPart, Message, Numbered, RecordError};
use crate::span::Rendered;

/// Errors reading a training record's content.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TrainFormatError {
    #[error("no {0} message")]
    MissingMessage(&'static str),
    #[error("assistant content part {index} has type {kind:?} (expected text, code or execution)")]
    BadPart { index: usize, kind: String },
}

/// Why a solution was kept: checked against a gold answer, or agreed on by several samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Acceptance {
    /// The solution's final answer was graded against the problem's gold answer.
    Verdict {
        gold: String,
        /// The answer extracted from the solution's last block.
        extracted: Option<String>,
        correct: bool,
        /// The grader's one-line reason.
        reason: String,
    },
    /// `samples` solutions were drawn and `agreeing` of them had equivalent final answers.
    Agreement {
        samples: usize,
        agreeing: usize,
        /// Each sample's extracted final answer, in sample order.
        answers: Vec<Option<String>>,
    },
}

/// Where a training solution came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The problem set (`gsm8k-train`, `math-train`, a file's stem, `interpolated`, ...).
    pub source: String,
    /// The problem's id within its source.
    pub problem_id: String,
    /// The problems this one was made from (interpolation: the GSM8K and MATH parents).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
    /// The teacher, as it describes itself (`annotations`, `lce:<backend>`, ...).
    pub teacher: String,
    /// Which sample of the problem (0-based).
    #[serde(default)]
    pub sample: usize,
    /// The sampling seed, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// MATH subject and level, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// Why the solution was kept.
    pub acceptance: Acceptance,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One training solution in the authors' format, with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainRecord {
    pub messages: Vec<Message>,
    pub provenance: Provenance,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn part(kind: &str, content: &str) -> ContentPart {
    ContentPart {
        kind: kind.to_string(),
        content: content.to_string(),
        extra: Map::new(),
    }
}

fn message(role: &str, content: Vec<ContentPart>) -> Message {
    Message {
        role: role.to_string(),
        content,
        extra: Map::new(),
    }
}

impl TrainRecord {
    /// A record for `blocks` solving `question` under the system prompt `system`.
    pub fn new(
        system: &str,
        question: &str,
        blocks: &[Block],
        provenance: Provenance,
    ) -> TrainRecord {
        TrainRecord {
            messages: vec![
                message("system", vec![part("text", system)]),
                message("user", vec![part("text", question)]),
                message(
                    "assistant",
                    blocks
                        .iter()
                        .map(|b| part(b.kind.role_name(), &b.content))
                        .collect(),
                ),
            ],
            provenance,
            extra: Map::new(),
        }
    }

    fn message(&self, role: &'static str) -> Result<&Message, TrainFormatError> {
        self.messages
            .iter()
            .find(|m| m.role == role)
            .ok_or(TrainFormatError::MissingMessage(role))
    }

    /// The system prompt (the system message's text).
    pub fn system(&self) -> Result<String, TrainFormatError> {
        Ok(self.message("system")?.text())
    }

    /// The problem (the user message's text).
    pub fn question(&self) -> Result<String, TrainFormatError> {
        Ok(self.message("user")?.text())
    }

    /// The solution's blocks, in order.
    pub fn blocks(&self) -> Result<Vec<Block>, TrainFormatError> {
        self.message("assistant")?
            .content
            .iter()
            .enumerate()
            .map(|(index, p)| {
                BlockKind::from_role_name(&p.kind)
                    .map(|k| Block::new(k, p.content.clone()))
                    .ok_or_else(|| TrainFormatError::BadPart {
                        index,
                        kind: p.kind.clone(),
                    })
            })
            .collect()
    }

    /// The last block's content (the final answer block).
    pub fn completion(&self) -> Result<String, TrainFormatError> {
        Ok(self
            .blocks()?
            .last()
            .map(|b| b.content.clone())
            .unwrap_or_default())
    }

    /// The training instance: the prompt template with this record's system prompt, rendered
    /// with the spans that say which bytes the model writes.
    pub fn render_with_spans(&self) -> Result<Rendered, TrainFormatError> {
        let template = PromptTemplate {
            system: self.system()?,
            ..PromptTemplate::mathcoder()
        };
        Ok(template.render_with_spans(&self.question()?, &self.blocks()?, true))
    }

    /// One JSONL line (with the trailing newline).
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut s = serde_json::to_string(self)?;
        s.push('\n');
        Ok(s)
    }
}

/// Reads every record of a training file (plain or `.gz`), in file order.
pub fn read_train_records(path: &Path) -> Result<Vec<Numbered<TrainRecord>>, RecordError> {
    read_jsonl(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::SpanKind;

    fn record() -> TrainRecord {
        TrainRecord::new(
            crate::DEFAULT_SYSTEM_PROMPT,
            "What is 2+2?",
            &[
                Block::text("Add them."),
                Block::code("x = 2 + 2\nx"),
                Block::execution("4"),
                Block::text("The answer is \\(\\boxed{4}\\)."),
                Block::text("4"),
            ],
            Provenance {
                source: "gsm8k-train".into(),
                problem_id: "gsm8k-train-1".into(),
                parents: vec![],
                teacher: "annotations".into(),
                sample: 0,
                seed: None,
                subject: None,
                level: None,
                acceptance: Acceptance::Verdict {
                    gold: "4".into(),
                    extracted: Some("4".into()),
                    correct: true,
                    reason: "equal".into(),
                },
                extra: Map::new(),
            },
        )
    }

    #[test]
    fn wire_form_is_the_authors_messages() {
        let line = record().to_line().unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["messages"][0]["role"], "system");
        assert_eq!(v["messages"][0]["content"][0]["type"], "text");
        assert_eq!(v["messages"][1]["content"][0]["content"], "What is 2+2?");
        let a = &v["messages"][2];
        assert_eq!(a["role"], "assistant");
        let kinds: Vec<&str> = a["content"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap())
            .collect();
        assert_eq!(kinds, ["text", "code", "execution", "text", "text"]);
        assert_eq!(v["provenance"]["acceptance"]["kind"], "verdict");
        assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    }

    #[test]
    fn round_trips_and_keeps_unknown_fields() {
        let mut v: Value = serde_json::from_str(&record().to_line().unwrap()).unwrap();
        v["provenance"]["note"] = Value::from("kept");
        v["weight"] = Value::from(2);
        let text = serde_json::to_string(&v).unwrap();
        let r: TrainRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(r.provenance.extra["note"], "kept");
        assert_eq!(serde_json::to_string(&r).unwrap(), text);
        assert_eq!(r.question().unwrap(), "What is 2+2?");
        assert_eq!(r.blocks().unwrap().len(), 5);
        assert_eq!(r.completion().unwrap(), "4");
    }

    #[test]
    fn bad_parts_are_errors() {
        let mut r = record();
        r.messages[2].content[1].kind = "image".into();
        assert_eq!(
            r.blocks().unwrap_err(),
            TrainFormatError::BadPart {
                index: 1,
                kind: "image".into()
            }
        );
        r.messages.remove(1);
        assert_eq!(
            r.question().unwrap_err(),
            TrainFormatError::MissingMessage("user")
        );
    }

    #[test]
    fn renders_with_model_spans() {
        let r = record().render_with_spans().unwrap();
        assert!(r
            .text
            .starts_with("<|system|><|text|>Below is a math problem."));
        let model: String = r
            .spans
            .iter()
            .filter(|s| s.kind == SpanKind::Model)
            .map(|s| &r.text[s.range.clone()])
            .collect();
        assert!(model.contains("<|code|>x = 2 + 2\nx<|endofblock|>"));
        assert!(!model.contains("<|execution|>"));
    }
}
