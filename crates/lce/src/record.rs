//! The authors' JSONL record formats.
//!
//! * Test records (`data/*_test_post.jsonl`):
//!   `{id?, messages: [system, user], ground_truth: {solution, answer}}`.
//! * Output records (`outs/<model>/<dataset>/*.jsonl`): a test record plus
//!   `debug_result` (the whole solution as `{role, content}` entries) and `completion`
//!   (the last entry's content); wrong records also carry `model_answer`.
//!
//! Unknown fields are kept (`extra`), so reading then writing a record gives back the same
//! JSON; with [`crate::pyjson`] it gives back the same bytes.

use flate2::read::MultiGzDecoder;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::block::{Block, BlockKind};
use crate::prompt::{PromptTemplate, DEFAULT_SYSTEM_PROMPT};
use crate::span::Rendered;

/// Errors reading record files.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}:{line}: not a valid record")]
    Json {
        path: PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// One piece of message content: `{"type": "text", "content": "..."}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A chat message of a test record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Vec<ContentPart>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    /// The concatenated text of the message's text parts.
    pub fn text(&self) -> String {
        self.content
            .iter()
            .filter(|p| p.kind == "text")
            .map(|p| p.content.as_str())
            .collect()
    }
}

/// The reference solution and answer of a problem. `answer` is a string in most files and a
/// number in SVAMP's, so it is kept as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solution: Option<String>,
    pub answer: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl GroundTruth {
    /// The gold answer as text (numbers as Python's `str()` prints them: `149.0`).
    pub fn answer_text(&self) -> String {
        value_as_text(&self.answer)
    }
}

/// Renders a JSON scalar as the text a Python `str()` of it gives.
pub fn value_as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                crate::pyjson::python_float_repr(f)
            } else {
                n.to_string()
            }
        }
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A problem as the authors' test files store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TestRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub messages: Vec<Message>,
    pub ground_truth: GroundTruth,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TestRecord {
    /// The text of the first message with `role`.
    pub fn message_text(&self, role: &str) -> Option<String> {
        self.messages
            .iter()
            .find(|m| m.role == role)
            .map(Message::text)
    }
    /// The problem statement (the user message).
    pub fn question(&self) -> Option<String> {
        self.message_text("user")
    }
    /// The id as text, if present.
    pub fn id_text(&self) -> Option<String> {
        self.id.as_ref().map(value_as_text)
    }
}

/// One entry of `debug_result`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DebugEntry {
    /// `system`, `user`, `text`, `code` or `execution`.
    pub role: String,
    pub content: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl DebugEntry {
    /// The entry as an assistant block (`None` for `system`/`user` entries).
    pub fn as_block(&self) -> Option<Block> {
        BlockKind::from_role_name(&self.role).map(|k| Block::new(k, self.content.clone()))
    }
    pub fn from_block(b: &Block) -> DebugEntry {
        DebugEntry {
            role: b.kind.role_name().to_string(),
            content: b.content.clone(),
            extra: Map::new(),
        }
    }
}

/// A model's solution as the authors' output files store it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    pub messages: Vec<Message>,
    pub ground_truth: GroundTruth,
    pub debug_result: Vec<DebugEntry>,
    pub completion: String,
    /// The authors' extracted answer; present in their `-wrong.jsonl` files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_answer: Option<Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl OutputRecord {
    /// The problem statement.
    pub fn question(&self) -> String {
        self.messages
            .iter()
            .find(|m| m.role == "user")
            .map(Message::text)
            .or_else(|| {
                self.debug_result
                    .iter()
                    .find(|e| e.role == "user")
                    .map(|e| e.content.clone())
            })
            .unwrap_or_default()
    }
    /// The assistant's blocks, in order.
    pub fn blocks(&self) -> Vec<Block> {
        self.debug_result
            .iter()
            .filter_map(DebugEntry::as_block)
            .collect()
    }
    /// The id as text, if present.
    pub fn id_text(&self) -> Option<String> {
        self.id.as_ref().map(value_as_text)
    }
    /// The template this solution was generated with: the record's own system message
    /// ([`DEFAULT_SYSTEM_PROMPT`] when it has none); the question is taken as stored, so no
    /// suffix.
    pub fn template(&self) -> PromptTemplate {
        let system = self
            .messages
            .iter()
            .find(|m| m.role == "system")
            .map(Message::text)
            .or_else(|| {
                self.debug_result
                    .iter()
                    .find(|e| e.role == "system")
                    .map(|e| e.content.clone())
            })
            .unwrap_or_else(|| DEFAULT_SYSTEM_PROMPT.to_string());
        PromptTemplate {
            system,
            question_suffix: String::new(),
        }
    }
    /// The whole finished conversation (the SFT text) with its spans: prompt, model-written
    /// blocks and `<|endofmessage|>`, executions (see [`crate::span`]).
    pub fn render_with_spans(&self) -> Rendered {
        self.template()
            .render_with_spans(&self.question(), &self.blocks(), true)
    }
}

/// Opens a file for reading, decompressing it if its name ends in `.gz`.
pub fn open_maybe_gz(path: &Path) -> Result<Box<dyn BufRead + Send>, RecordError> {
    let f = File::open(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_gz = path.extension().is_some_and(|e| e == "gz");
    Ok(if is_gz {
        Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(f)))
    } else {
        Box::new(BufReader::with_capacity(1 << 16, f))
    })
}

/// Reads a whole (possibly gzipped) file to a string.
pub fn read_to_string_maybe_gz(path: &Path) -> Result<String, RecordError> {
    let mut s = String::new();
    open_maybe_gz(path)?
        .read_to_string(&mut s)
        .map_err(|source| RecordError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(s)
}

/// A record with its 1-based line number.
#[derive(Clone, Debug)]
pub struct Numbered<T> {
    pub line: usize,
    pub record: T,
}

/// Reads every non-blank line of a JSONL file (plain or `.gz`) as `T`.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(
    path: &Path,
) -> Result<Vec<Numbered<T>>, RecordError> {
    let text = read_to_string_maybe_gz(path)?;
    parse_jsonl(&text, path)
}

/// Parses JSONL text; `path` is used in error messages.
pub fn parse_jsonl<T: for<'de> Deserialize<'de>>(
    text: &str,
    path: &Path,
) -> Result<Vec<Numbered<T>>, RecordError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = serde_json::from_str(line).map_err(|source| RecordError::Json {
            path: path.to_path_buf(),
            line: i + 1,
            source,
        })?;
        out.push(Numbered {
            line: i + 1,
            record,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pyjson;

    const OUT: &str = r#"{"id": "test/x/1.json", "messages": [{"role": "system", "content": [{"type": "text", "content": "Below is a math problem. Please solve it step by step."}]}, {"role": "user", "content": [{"type": "text", "content": "What is 2+2?"}]}], "ground_truth": {"solution": "", "answer": 4.0}, "debug_result": [{"role": "system", "content": "Below is a math problem. Please solve it step by step."}, {"role": "user", "content": "What is 2+2?"}, {"role": "code", "content": "2+2"}, {"role": "execution", "content": "4"}, {"role": "text", "content": "4"}], "completion": "4", "model_answer": "4", "extra_field": {"k": [1, "\u00e9"]}}"#;

    #[test]
    fn output_record_round_trips_bytes() {
        let r: OutputRecord = serde_json::from_str(OUT).unwrap();
        assert_eq!(r.question(), "What is 2+2?");
        assert_eq!(r.ground_truth.answer_text(), "4.0");
        assert_eq!(r.blocks().len(), 3);
        assert_eq!(r.extra.len(), 1);
        assert_eq!(pyjson::to_string(&r).unwrap(), OUT);
    }

    #[test]
    fn bad_line_reports_file_and_line() {
        let e =
            parse_jsonl::<TestRecord>("\n{\"messages\": 3}\n", Path::new("f.jsonl")).unwrap_err();
        assert!(
            e.to_string().starts_with("f.jsonl:2: not a valid record"),
            "{e}"
        );
    }
}
