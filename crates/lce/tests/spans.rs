//! Spans on every released-output record: the rendered SFT text is covered exactly by
//! contiguous, non-overlapping spans; the prompt span is the inference prompt; each model span is
//! exactly a text/code block with its tokens (or the final `<|endofmessage|>`), each execution
//! span exactly an execution block.

use mathcoder_lce::record::{read_jsonl, OutputRecord};
use mathcoder_lce::{BlockKind, SpanKind, SpecialToken};
use std::path::{Path, PathBuf};

fn files() -> Vec<PathBuf> {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs"
    ));
    mathcoder_lce::record_files(&[root]).expect("vendored released outputs")
}

#[test]
fn every_released_record_renders_with_exact_spans() {
    let files = files();
    assert_eq!(files.len(), 29);
    let (mut records, mut model_spans, mut execution_spans) = (0usize, 0usize, 0usize);
    for f in &files {
        for n in read_jsonl::<OutputRecord>(f).unwrap() {
            let at = format!("{}:{}", f.display(), n.line);
            let rec = &n.record;
            let r = rec.render_with_spans();
            let blocks = rec.blocks();
            let template = rec.template();
            // The text is the finished conversation of the one template.
            assert_eq!(
                r.text,
                template.render_finished(&rec.question(), &blocks),
                "{at}"
            );
            // Contiguous, non-overlapping, covering the text exactly.
            let mut pos = 0;
            for s in &r.spans {
                assert_eq!(s.range.start, pos, "{at}: gap or overlap");
                assert!(s.range.end > s.range.start, "{at}: empty span");
                pos = s.range.end;
            }
            assert_eq!(pos, r.text.len(), "{at}: spans do not reach the end");
            // The prompt: what the loop sends first, through `<|assistant|>`.
            let first = &r.spans[0];
            assert_eq!(first.kind, SpanKind::Prompt, "{at}");
            assert_eq!(r.span_text(first), template.render(&rec.question()), "{at}");
            assert!(r
                .span_text(first)
                .ends_with(SpecialToken::Assistant.as_str()));
            assert_eq!(
                r.spans
                    .iter()
                    .filter(|s| s.kind == SpanKind::Prompt)
                    .count(),
                1
            );
            // One span per block, in order, each exactly the block with its tokens.
            let body = &r.spans[1..r.spans.len() - 1];
            assert_eq!(body.len(), blocks.len(), "{at}");
            for (i, (s, b)) in body.iter().zip(&blocks).enumerate() {
                assert_eq!(s.block, Some(i), "{at}");
                assert_eq!(r.span_text(s), b.render(), "{at}: block {i}");
                match b.kind {
                    BlockKind::Text | BlockKind::Code => {
                        assert_eq!(s.kind, SpanKind::Model, "{at}: block {i}");
                        model_spans += 1;
                    }
                    BlockKind::Execution => {
                        assert_eq!(s.kind, SpanKind::Execution, "{at}: block {i}");
                        assert!(r.span_text(s).starts_with(SpecialToken::Execution.as_str()));
                        assert!(r.span_text(s).ends_with(SpecialToken::EndOfBlock.as_str()));
                        execution_spans += 1;
                    }
                }
            }
            // The model closes the message.
            let last = r.spans.last().unwrap();
            assert_eq!(
                (last.kind, last.block, r.span_text(last)),
                (SpanKind::Model, None, SpecialToken::EndOfMessage.as_str()),
                "{at}"
            );
            // Targets: everything after the prompt except executions.
            let targets: String = r.target_ranges().into_iter().map(|g| &r.text[g]).collect();
            let expected: String = blocks
                .iter()
                .filter(|b| b.kind != BlockKind::Execution)
                .map(|b| b.render())
                .chain([SpecialToken::EndOfMessage.as_str().to_string()])
                .collect();
            assert_eq!(targets, expected, "{at}");
            records += 1;
        }
    }
    assert_eq!(records, 13873);
    eprintln!(
        "spans checked on {records} records: {model_spans} model blocks, {execution_spans} executions"
    );
}
