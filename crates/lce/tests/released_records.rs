//! Reading then writing every released-output record gives back equal JSON (and, with the
//! Python-compatible writer, the same bytes).

use mathcoder_lce::record::{read_jsonl, read_to_string_maybe_gz, OutputRecord};
use mathcoder_lce::{parse_blocks, pyjson, render_blocks};
use serde_json::Value;
use std::path::{Path, PathBuf};

fn files() -> Vec<PathBuf> {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs"
    ));
    mathcoder_lce::record_files(&[root]).expect("vendored released outputs")
}

#[test]
fn every_record_round_trips() {
    let files = files();
    assert_eq!(files.len(), 29);
    let mut n = 0;
    for f in &files {
        let text = read_to_string_maybe_gz(f).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let records = read_jsonl::<OutputRecord>(f).unwrap();
        assert_eq!(records.len(), lines.len());
        for (line, r) in lines.iter().zip(&records) {
            let original: Value = serde_json::from_str(line).unwrap();
            let again = serde_json::to_value(&r.record).unwrap();
            assert_eq!(original, again, "{}:{}", f.display(), r.line);
            assert_eq!(
                pyjson::to_string(&r.record).unwrap(),
                *line,
                "{}:{}",
                f.display(),
                r.line
            );
            // The solution's blocks survive rendering to token text and parsing back.
            let blocks = r.record.blocks();
            let parsed = parse_blocks(&render_blocks(&blocks));
            let kept: Vec<_> = blocks
                .iter()
                .filter(|b| !b.content.trim().is_empty())
                .cloned()
                .collect();
            assert_eq!(parsed.blocks, kept, "{}:{}", f.display(), r.line);
            n += 1;
        }
    }
    assert_eq!(n, 13873);
}
