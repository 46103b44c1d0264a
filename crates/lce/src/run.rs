//! Our run records: an authors'-format output record plus the `mathcoder` object that says how
//! the solution was produced and graded.
//!
//! `results.jsonl` (written by `mathcoder eval`) holds one [`RunRecord`] a line. Everything that
//! reads or writes those records goes through this type, so a renamed field is a compile error,
//! not a silent zero. The wire form is the one earlier releases wrote (`stop` as a label next to
//! `stop_detail`), and records written by them load unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

use crate::record::{read_jsonl, DebugEntry, Numbered, OutputRecord, RecordError};

/// The key of our extension object in an output record.
pub const EXTENSION_KEY: &str = "mathcoder";

/// Why a solution ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum StopReason {
    /// The model ended its message.
    EndOfMessage,
    /// `max_blocks` model blocks were written.
    BlockLimit,
    /// The model produced nothing usable (an empty generation or end of sequence).
    Length,
    /// The model went into a loop: a block cut at the per-block token limit while repeating
    /// itself, or the same blocks (numbers aside) written three times in a row (the loop's runaway guard; greedy
    /// decoding would only repeat them until the block limit).
    Repetition,
    /// The backend failed (after its retries).
    BackendError(String),
    /// The sandbox could not run code at all.
    ExecutionFault(String),
}

impl StopReason {
    pub fn label(&self) -> &'static str {
        match self {
            StopReason::EndOfMessage => "end_of_message",
            StopReason::BlockLimit => "block_limit",
            StopReason::Length => "length",
            StopReason::Repetition => "repetition",
            StopReason::BackendError(_) => "backend_error",
            StopReason::ExecutionFault(_) => "execution_fault",
        }
    }
    /// Whether the problem failed for a reason outside the model.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            StopReason::BackendError(_) | StopReason::ExecutionFault(_)
        )
    }
}

/// The grader's verdict as stored in a record.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct StoredVerdict {
    /// The answer extracted from the solution, if one was found.
    pub extracted: Option<String>,
    pub correct: bool,
    /// One line for people: what was compared and what decided.
    pub reason: String,
}

/// The `mathcoder` object of a run record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(into = "Wire", from = "Wire")]
pub struct RunInfo {
    /// Which sample of the problem (0-based; seeds `seed + sample`).
    pub sample: usize,
    pub dataset: String,
    pub subject: Option<String>,
    pub level: Option<u8>,
    pub stop: StopReason,
    /// Model blocks (text + code) written.
    pub model_blocks: usize,
    /// Generation calls.
    pub rounds: usize,
    /// Tokens generated over all rounds (as the backend counted them).
    pub generated_tokens: u64,
    pub total_ms: f64,
    pub generate_ms: f64,
    pub execute_ms: f64,
    /// The backend, as `Backend::describe` names it.
    pub backend: String,
    pub verdict: StoredVerdict,
}

impl RunInfo {
    /// Whether the problem failed for a reason outside the model (backend or sandbox).
    pub fn failed(&self) -> bool {
        self.stop.is_failure()
    }
}

/// The wire form: flat, with the stop reason both as a label and in full.
#[derive(Serialize, Deserialize)]
struct Wire {
    #[serde(default)]
    sample: usize,
    #[serde(default)]
    dataset: String,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    level: Option<u8>,
    #[serde(default)]
    stop: String,
    #[serde(default)]
    stop_detail: Option<StopReason>,
    #[serde(default)]
    failed: bool,
    #[serde(default)]
    model_blocks: usize,
    #[serde(default)]
    rounds: usize,
    #[serde(default)]
    generated_tokens: u64,
    #[serde(default)]
    total_ms: f64,
    #[serde(default)]
    generate_ms: f64,
    #[serde(default)]
    execute_ms: f64,
    #[serde(default)]
    backend: String,
    #[serde(default)]
    extracted: Option<String>,
    #[serde(default)]
    correct: bool,
    #[serde(default)]
    reason: String,
}

impl From<RunInfo> for Wire {
    fn from(r: RunInfo) -> Wire {
        Wire {
            sample: r.sample,
            dataset: r.dataset,
            subject: r.subject,
            level: r.level,
            stop: r.stop.label().to_string(),
            failed: r.stop.is_failure(),
            stop_detail: Some(r.stop),
            model_blocks: r.model_blocks,
            rounds: r.rounds,
            generated_tokens: r.generated_tokens,
            total_ms: r.total_ms,
            generate_ms: r.generate_ms,
            execute_ms: r.execute_ms,
            backend: r.backend,
            extracted: r.verdict.extracted,
            correct: r.verdict.correct,
            reason: r.verdict.reason,
        }
    }
}

impl From<Wire> for RunInfo {
    fn from(w: Wire) -> RunInfo {
        // `stop_detail` is the full reason; a record without it (hand-written, or cut down)
        // falls back to its label, and a failure flag without either to a backend error.
        let stop = w.stop_detail.unwrap_or_else(|| match w.stop.as_str() {
            "end_of_message" => StopReason::EndOfMessage,
            "block_limit" => StopReason::BlockLimit,
            "length" => StopReason::Length,
            "repetition" => StopReason::Repetition,
            "execution_fault" => StopReason::ExecutionFault(String::new()),
            "backend_error" => StopReason::BackendError(String::new()),
            _ if w.failed => StopReason::BackendError(String::new()),
            _ => StopReason::EndOfMessage,
        });
        RunInfo {
            sample: w.sample,
            dataset: w.dataset,
            subject: w.subject,
            level: w.level,
            stop,
            model_blocks: w.model_blocks,
            rounds: w.rounds,
            generated_tokens: w.generated_tokens,
            total_ms: w.total_ms,
            generate_ms: w.generate_ms,
            execute_ms: w.execute_ms,
            backend: w.backend,
            verdict: StoredVerdict {
                extracted: w.extracted,
                correct: w.correct,
                reason: w.reason,
            },
        }
    }
}

/// An output record with our extension taken out and typed. Authors' records (no extension)
/// have `run: None`.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRecord {
    pub record: OutputRecord,
    pub run: Option<RunInfo>,
}

impl RunRecord {
    /// Splits the extension out of an output record. A malformed extension is an error (it names
    /// the field), not a silent default.
    pub fn from_output(mut record: OutputRecord) -> Result<RunRecord, serde_json::Error> {
        let run = match record.extra.shift_remove(EXTENSION_KEY) {
            None | Some(Value::Null) => None,
            Some(v) => Some(serde_json::from_value(v)?),
        };
        Ok(RunRecord { record, run })
    }

    /// The output record with the extension put back (as the last field, where it is written).
    pub fn into_output(self) -> OutputRecord {
        let mut record = self.record;
        if let Some(run) = self.run {
            let v = serde_json::to_value(run).unwrap_or(Value::Null);
            record.extra.insert(EXTENSION_KEY.to_string(), v);
        }
        record
    }

    /// The one-line JSON form written to `results.jsonl` (the authors' `json.dumps` layout),
    /// newline included.
    pub fn to_line(&self) -> Result<String, serde_json::Error> {
        let mut line = crate::pyjson::to_string(&self.clone().into_output())?;
        line.push('\n');
        Ok(line)
    }

    /// Which sample of its problem this record is (0 for the authors' records).
    pub fn sample(&self) -> usize {
        self.run.as_ref().map_or(0, |r| r.sample)
    }

    /// The problem id as text (empty when the record has none).
    pub fn id(&self) -> String {
        self.record.id_text().unwrap_or_default()
    }

    /// The stored verdict, if the record was graded when written.
    pub fn verdict(&self) -> Option<&StoredVerdict> {
        self.run.as_ref().map(|r| &r.verdict)
    }
}

/// Builds the authors' `messages`/`debug_result` layout for a solved problem.
pub fn output_record(
    id: &str,
    system: &str,
    question: &str,
    gold: Value,
    solution: Option<String>,
    blocks: &[crate::Block],
) -> OutputRecord {
    use crate::record::{ContentPart, GroundTruth, Message};
    let message = |role: &str, s: &str| Message {
        role: role.to_string(),
        content: vec![ContentPart {
            kind: "text".into(),
            content: s.to_string(),
            extra: Map::new(),
        }],
        extra: Map::new(),
    };
    let entry = |role: &str, s: &str| DebugEntry {
        role: role.to_string(),
        content: s.to_string(),
        extra: Map::new(),
    };
    let mut debug = vec![entry("system", system), entry("user", question)];
    debug.extend(blocks.iter().map(DebugEntry::from_block));
    OutputRecord {
        id: Some(Value::String(id.to_string())),
        messages: vec![message("system", system), message("user", question)],
        ground_truth: GroundTruth {
            solution,
            answer: gold,
            extra: Map::new(),
        },
        debug_result: debug,
        completion: blocks.last().map(|b| b.content.clone()).unwrap_or_default(),
        model_answer: None,
        extra: Map::new(),
    }
}

/// Errors reading run records.
#[derive(Debug, thiserror::Error)]
pub enum RunRecordError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error("{path}:{line}: bad `mathcoder` object")]
    Extension {
        path: std::path::PathBuf,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
}

/// Reads every record of an output file (ours or the authors'), with line numbers.
pub fn read_run_records(path: &Path) -> Result<Vec<Numbered<RunRecord>>, RunRecordError> {
    read_jsonl::<OutputRecord>(path)?
        .into_iter()
        .map(|n| {
            let line = n.line;
            RunRecord::from_output(n.record)
                .map(|record| Numbered { line, record })
                .map_err(|source| RunRecordError::Extension {
                    path: path.to_path_buf(),
                    line,
                    source,
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line as `mathcoder eval` of release 0.1 wrote it (field for field).
    const V01: &str = r#"{"id": "simuleq-1", "messages": [{"role": "system", "content": [{"type": "text", "content": "S"}]}, {"role": "user", "content": [{"type": "text", "content": "Q"}]}], "ground_truth": {"answer": "5"}, "debug_result": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "text", "content": "5"}], "completion": "5", "mathcoder": {"sample": 2, "dataset": "simuleq", "subject": null, "level": null, "stop": "backend_error", "stop_detail": {"kind": "backend_error", "detail": "down"}, "failed": true, "model_blocks": 1, "rounds": 3, "generated_tokens": 17, "total_ms": 12.5, "generate_ms": 10.0, "execute_ms": 2.5, "backend": "tgi http://x", "extracted": "5", "correct": true, "reason": "equal"}}"#;

    #[test]
    fn reads_and_rewrites_release_records_byte_for_byte() {
        let out: OutputRecord = serde_json::from_str(V01).unwrap();
        let r = RunRecord::from_output(out).unwrap();
        let run = r.run.as_ref().unwrap();
        assert_eq!(run.sample, 2);
        assert_eq!(run.stop, StopReason::BackendError("down".into()));
        assert!(run.failed());
        assert_eq!((run.rounds, run.generated_tokens), (3, 17));
        assert_eq!(run.verdict.extracted.as_deref(), Some("5"));
        assert!(run.verdict.correct);
        assert_eq!(r.to_line().unwrap(), format!("{V01}\n"));
    }

    #[test]
    fn authors_records_have_no_extension_and_bad_ones_are_errors() {
        let mut out: OutputRecord = serde_json::from_str(V01).unwrap();
        out.extra.shift_remove(EXTENSION_KEY);
        assert_eq!(RunRecord::from_output(out.clone()).unwrap().run, None);
        out.extra
            .insert(EXTENSION_KEY.into(), serde_json::json!({"sample": "two"}));
        assert!(RunRecord::from_output(out).is_err());
    }

    #[test]
    fn stop_label_alone_is_understood() {
        let info: RunInfo =
            serde_json::from_value(serde_json::json!({"stop": "block_limit"})).unwrap();
        assert_eq!(info.stop, StopReason::BlockLimit);
    }
}
