//! The packed rows for trainers people run on clusters.
//!
//! `trl`: one packed sequence a line, `{"input_ids": [...], "labels": [...], "position_ids":
//! [...]}`, labels -100 where there is no loss, position ids restarting at 0 at each instance
//! (isolated packing; TRL's padding-free collator and flash-attention's varlen kernels read the
//! boundaries from them). Rows come in the order a `train` run with the same flags and seed
//! visits them in its first epoch, without padding.
//!
//! `axolotl`: its `input_output` format, one conversation a line, `{"segments": [{"label":
//! bool, "text": ...}, ...]}`: the rendered text cut at the span borders, `label: false` on the
//! prompt and the executions (as the mask options say), `<s>` written at the start (the format
//! adds no special tokens of its own). Every conversation is written, in file order; axolotl
//! applies its own length filter and packing (`sample_packing` isolates instances with flash
//! attention).

use serde::Serialize;
use std::io::Write;
use std::path::Path;

use crate::data::Conversation;
use crate::pack::{epoch_order, Row};
use crate::tokenize::MaskOptions;
use crate::{io_err, TrainError};

#[derive(Serialize)]
struct TrlLine<'a> {
    input_ids: &'a [u32],
    labels: &'a [i64],
    position_ids: &'a [u32],
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
}
