//! The packed rows for trainers people run on clusters.
//!
//! `trl`: one packed sequence a line, `{"input_ids": [...], "labels": [...], "position_ids":
//! [...]}`, labels -100 where there is no loss, position ids restarting at 0 at each instance
//! (isolated packing; TRL's padding-free collator and flash-attention's varlen kernels read the
//! boundaries from them). Rows come in the order a `train` run with the same flags and seed
//! visits them in its first epoch, without padding.

use serde::Serialize;
use std::io::Write;
use std::path::Path;

use crate::pack::{epoch_order, Row};
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
