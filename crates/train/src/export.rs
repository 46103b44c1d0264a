//! The packed rows for trainers people run on clusters.
//!
//! `trl`: one packed sequence a line, `{"input_ids": [...], "labels": [...], "position_ids":
//! [...], "seq_lengths": [...]}`, labels -100 where there is no loss, position ids restarting at
//! 0 at each instance (isolated packing), `seq_lengths` the instances' lengths in the row (TRL's
//! padding-free collator builds its position ids, hence flash-attention's varlen boundaries,
//! from `seq_lengths`; other readers use `position_ids`). Rows come in the order a `train` run
//! with the same flags and seed visits them in its first epoch, without padding.
//!
//! `axolotl`: its `input_output` format, one conversation a line, `{"segments": [{"label":
//! bool, "text": ...}, ...]}`: the rendered text cut at the span borders, `label: false` on the
//! prompt and the executions (as the mask options say), `<s>` written at the start (the format
//! adds no special tokens of its own). Every conversation is written, in file order; axolotl
//! applies its own length filter and packing (`sample_packing` isolates instances with flash
//! attention).
//!
//! `llama-factory`: its `sharegpt` format, one conversation a line, `{"conversations": [{"from":
//! "human", "value": ...}, {"from": "gpt", ...}, {"from": "observation", ...}, ...]}`: the
//! rendered prompt (system, user and `<|assistant|>`) is the `human` turn, the runs of trained
//! spans are `gpt` turns and the masked spans after the prompt (the executions, unless
//! `--loss-on-execution` merges them into the `gpt` turns) are `observation` turns, which
//! LLaMA-Factory never trains on. A masked span at the very end (a record ending in an
//! execution) is left out, since sharegpt must end on a `gpt` turn and it would carry no loss.
//! Every conversation is written, in file order (as for axolotl); `dataset_info_entry` is the
//! entry naming the file and its tags, for a template that adds nothing (the values carry
//! MathCoder's tokens themselves).

use serde::Serialize;
use std::io::Write;
use std::path::Path;

use crate::data::Conversation;
use crate::pack::{epoch_order, Row};
use crate::tokenize::MaskOptions;
use crate::{io_err, TrainError};
use mathcoder_lce::SpanKind;

#[derive(Serialize)]
struct TrlLine<'a> {
    input_ids: &'a [u32],
    labels: &'a [i64],
    position_ids: &'a [u32],
    seq_lengths: Vec<usize>,
}

/// The lengths of the instances in a row, read from where its position ids restart at 0 (one
/// length for a `naive` row, whose positions run on).
fn seq_lengths(position_ids: &[u32]) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for &p in position_ids {
        match out.last_mut() {
            Some(n) if p != 0 => *n += 1,
            _ => out.push(1),
        }
    }
    out
}

/// The rows of the first epoch, in the order training visits them.
pub fn first_epoch(rows: &[Row], seed: u64) -> Vec<&Row> {
    epoch_order(rows.len(), seed, 0)
        .into_iter()
        .map(|i| &rows[i])
        .collect()
}

/// Writes `rows` (already in order) as TRL JSONL.
pub fn write_trl(rows: &[&Row], out: &Path) -> Result<(), TrainError> {
    let f = std::fs::File::create(out).map_err(io_err(out))?;
    let mut w = std::io::BufWriter::new(f);
    for r in rows {
        let line = TrlLine {
            input_ids: &r.ids,
            labels: &r.labels,
            position_ids: &r.position_ids,
            seq_lengths: seq_lengths(&r.position_ids),
        };
        serde_json::to_writer(&mut w, &line).map_err(|e| TrainError::Io {
            path: out.to_path_buf(),
            source: e.into(),
        })?;
        w.write_all(b"\n").map_err(io_err(out))?;
    }
    w.flush().map_err(io_err(out))
}

#[derive(Serialize)]
struct Segment {
    label: bool,
    text: String,
}

#[derive(Serialize)]
struct AxolotlLine {
    segments: Vec<Segment>,
}

/// The `input_output` segments of one conversation (adjacent spans with the same label merged).
fn segments(c: &Conversation, mask: MaskOptions) -> Vec<Segment> {
    let r = c.render();
    let mut out: Vec<Segment> = vec![Segment {
        label: false,
        text: "<s>".into(),
    }];
    for s in &r.spans {
        let label = mask.is_target(s.kind);
        let text = r.span_text(s);
        match out.last_mut() {
            Some(last) if last.label == label => last.text.push_str(text),
            _ => out.push(Segment {
                label,
                text: text.to_string(),
            }),
        }
    }
    out
}

/// Writes conversations in axolotl's `input_output` format.
pub fn write_axolotl(
    convs: &[Conversation],
    mask: MaskOptions,
    out: &Path,
) -> Result<(), TrainError> {
    let f = std::fs::File::create(out).map_err(io_err(out))?;
    let mut w = std::io::BufWriter::new(f);
    for c in convs {
        let line = AxolotlLine {
            segments: segments(c, mask),
        };
        serde_json::to_writer(&mut w, &line).map_err(|e| TrainError::Io {
            path: out.to_path_buf(),
            source: e.into(),
        })?;
        w.write_all(b"\n").map_err(io_err(out))?;
    }
    w.flush().map_err(io_err(out))
}

#[derive(Serialize)]
struct Turn {
    from: &'static str,
    value: String,
}

#[derive(Serialize)]
struct ShareGptLine {
    conversations: Vec<Turn>,
}

/// The sharegpt turns of one conversation. The prompt is always the `human` turn (LLaMA-Factory's
/// `train_on_prompt` is its switch for `--loss-on-prompt`).
fn sharegpt_turns(c: &Conversation, mask: MaskOptions) -> Vec<Turn> {
    let r = c.render();
    let mut out: Vec<Turn> = Vec::new();
    for s in &r.spans {
        let from = if s.kind == SpanKind::Prompt {
            "human"
        } else if mask.is_target(s.kind) {
            "gpt"
        } else {
            "observation"
        };
        let text = r.span_text(s);
        match out.last_mut() {
            Some(last) if last.from == from => last.value.push_str(text),
            _ => out.push(Turn {
                from,
                value: text.to_string(),
            }),
        }
    }
    if out.last().is_some_and(|t| t.from != "gpt") {
        out.pop();
    }
    out
}

/// Writes conversations in LLaMA-Factory's `sharegpt` format; returns how many were written (a
/// conversation without a trained turn is left out).
pub fn write_llama_factory(
    convs: &[Conversation],
    mask: MaskOptions,
    out: &Path,
) -> Result<usize, TrainError> {
    let f = std::fs::File::create(out).map_err(io_err(out))?;
    let mut w = std::io::BufWriter::new(f);
    let mut n = 0;
    for c in convs {
        let conversations = sharegpt_turns(c, mask);
        if conversations.len() < 2 {
            continue;
        }
        serde_json::to_writer(&mut w, &ShareGptLine { conversations }).map_err(|e| {
            TrainError::Io {
                path: out.to_path_buf(),
                source: e.into(),
            }
        })?;
        w.write_all(b"\n").map_err(io_err(out))?;
        n += 1;
    }
    w.flush().map_err(io_err(out))?;
    Ok(n)
}

/// LLaMA-Factory's `dataset_info.json` entry for a sharegpt file named `file_name`.
pub fn dataset_info_entry(file_name: &str) -> serde_json::Value {
    serde_json::json!({
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": { "messages": "conversations" },
        "tags": {
            "role_tag": "from",
            "content_tag": "value",
            "user_tag": "human",
            "assistant_tag": "gpt",
            "observation_tag": "observation",
        }
    })
}

/// Adds (or replaces) the entry `name` in the `dataset_info.json` at `path`, creating the file
/// when there is none; other entries are kept.
pub fn write_dataset_info(path: &Path, name: &str, file_name: &str) -> Result<(), TrainError> {
    let mut info = match std::fs::read_to_string(path) {
        Ok(s) => match serde_json::from_str::<serde_json::Value>(&s) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => {
                return Err(TrainError::Config(format!(
                    "{} is not a JSON object",
                    path.display()
                )))
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::Map::new(),
        Err(e) => return Err(io_err(path)(e)),
    };
    info.insert(name.to_string(), dataset_info_entry(file_name));
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(info)).map_err(|e| {
        TrainError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })?;
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mathcoder_lce::Block;

    #[test]
    fn axolotl_segments_follow_the_mask() {
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
        let s = segments(&c, MaskOptions::default());
        let labels: Vec<bool> = s.iter().map(|s| s.label).collect();
        assert_eq!(labels, [false, true, false, true]);
        assert!(s[0].text.starts_with("<s><|system|>") && s[0].text.ends_with("<|assistant|>"));
        assert_eq!(s[1].text, "<|text|>a<|endofblock|><|code|>1<|endofblock|>");
        assert_eq!(s[2].text, "<|execution|>1<|endofblock|>");
        assert_eq!(s[3].text, "<|text|>1<|endofblock|><|endofmessage|>");
        let all: String = s.iter().map(|s| s.text.as_str()).collect();
        assert_eq!(all, format!("<s>{}", c.render().text));
        let e = segments(
            &c,
            MaskOptions {
                loss_on_execution: true,
                loss_on_prompt: false,
            },
        );
        assert_eq!(e.len(), 2);
    }

    #[test]
    fn seq_lengths_from_position_restarts() {
        assert_eq!(seq_lengths(&[0, 1, 2, 0, 1, 0]), [3, 2, 1]);
        assert_eq!(seq_lengths(&[0, 1, 2, 3]), [4]);
        assert!(seq_lengths(&[]).is_empty());
    }

    #[test]
    fn sharegpt_turns_alternate_and_mask_executions() {
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
        let t = sharegpt_turns(&c, MaskOptions::default());
        let from: Vec<&str> = t.iter().map(|t| t.from).collect();
        assert_eq!(from, ["human", "gpt", "observation", "gpt"]);
        assert!(t[0].value.starts_with("<|system|>") && t[0].value.ends_with("<|assistant|>"));
        assert_eq!(t[2].value, "<|execution|>1<|endofblock|>");
        assert_eq!(t[3].value, "<|text|>1<|endofblock|><|endofmessage|>");
        let all: String = t.iter().map(|t| t.value.as_str()).collect();
        assert_eq!(all, c.render().text);
        let e = sharegpt_turns(
            &c,
            MaskOptions {
                loss_on_execution: true,
                loss_on_prompt: true,
            },
        );
        let from: Vec<&str> = e.iter().map(|t| t.from).collect();
        assert_eq!(from, ["human", "gpt"]);
    }

    #[test]
    fn dataset_info_keeps_other_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("dataset_info.json");
        std::fs::write(&p, r#"{"other": {"file_name": "o.json"}}"#).unwrap();
        write_dataset_info(&p, "mathcoder", "mc.jsonl").unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        assert_eq!(v["other"]["file_name"], "o.json");
        assert_eq!(v["mathcoder"]["file_name"], "mc.jsonl");
        assert_eq!(v["mathcoder"]["tags"]["observation_tag"], "observation");
        std::fs::write(&p, "[]").unwrap();
        assert!(write_dataset_info(&p, "m", "m.jsonl").is_err());
    }
}
