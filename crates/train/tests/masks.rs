//! Loss masks on every released-output record (vendored under `data/released-outputs`): the
//! trained tokens decode to exactly the text and code blocks (with their block tokens) and the
//! final `<|endofmessage|>`, and nothing of the prompt or the executions; tokenising span by
//! span gives the ids of the whole text.

use mathcoder_lce::record::{read_jsonl, OutputRecord};
use mathcoder_lce::SpanKind;
use mathcoder_model::Tok;
use mathcoder_train::tokenize::{MaskOptions, TrainTokenizer};
use std::path::{Path, PathBuf};

fn files() -> Vec<PathBuf> {
    let root = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs"
    ));
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("vendored released outputs") {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.to_string_lossy().ends_with(".jsonl.gz") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

fn tokenizer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures/llama2-tiny")
}

/// Maximal runs of consecutive target tokens.
fn runs(ids: &[u32], targets: &[bool]) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut prev = false;
    for (id, t) in ids.iter().zip(targets) {
        if *t {
            if !prev {
                out.push(Vec::new());
            }
            out.last_mut().unwrap().push(*id);
        }
        prev = *t;
    }
    out
}

#[test]
fn trained_tokens_are_exactly_the_models_blocks_on_every_released_record() {
    let (tok, added) = TrainTokenizer::load(&tokenizer_dir()).unwrap();
    assert_eq!(added, 0, "the fixture tokenizer has MathCoder's tokens");
    let dec = Tok::from_path(&tokenizer_dir()).unwrap();
    let files = files();
    assert_eq!(files.len(), 29);
    let (mut records, mut trained, mut total, mut exec_checked) = (0usize, 0usize, 0usize, 0usize);
    for f in &files {
        for n in read_jsonl::<OutputRecord>(f).unwrap() {
            let at = format!("{}:{}", f.display(), n.line);
            let r = n.record.render_with_spans();
            let inst = tok.tokenize(&r, MaskOptions::default(), n.line).unwrap();
            // Span by span = the whole text at once.
            let mut whole = vec![tok.bos.unwrap()];
            whole.extend(tok.encode(&r.text).unwrap());
            assert_eq!(inst.ids, whole, "{at}");
            let want: Vec<&str> = r.target_ranges().into_iter().map(|g| &r.text[g]).collect();
            let got: Vec<String> = runs(&inst.ids, &inst.targets)
                .iter()
                .map(|run| dec.decode(run).unwrap())
                .collect();
            assert_eq!(got, want, "{at}");
            // Nothing of the prompt or an execution: the untrained tokens decode to exactly them.
            let untrained: Vec<u32> = inst
                .ids
                .iter()
                .zip(&inst.targets)
                .skip(1)
                .filter(|(_, t)| !**t)
                .map(|(i, _)| *i)
                .collect();
            let masked_text: String = r
                .spans
                .iter()
                .filter(|s| s.kind != SpanKind::Model)
                .map(|s| r.span_text(s))
                .collect();
            // Decoding the concatenated untrained ids joins runs across span borders only at
            // special tokens, which every span starts and ends with.
            assert_eq!(dec.decode(&untrained).unwrap(), masked_text, "{at}");
            records += 1;
            trained += inst.target_count();
            total += inst.len();
            // With --loss-on-execution everything after the prompt is trained.
            if records % 50 == 0 {
                let e = tok
                    .tokenize(
                        &r,
                        MaskOptions {
                            loss_on_execution: true,
                            loss_on_prompt: false,
                        },
                        n.line,
                    )
                    .unwrap();
                let prompt = 1 + tok.encode(r.prompt()).unwrap().len();
                assert!(e.targets[..prompt].iter().all(|t| !t), "{at}");
                assert!(e.targets[prompt..].iter().all(|t| *t), "{at}");
                exec_checked += 1;
            }
        }
    }
    eprintln!(
        "{records} records: {trained} of {total} tokens trained ({:.1}%); --loss-on-execution checked on {exec_checked}",
        100.0 * trained as f64 / total as f64
    );
    assert!(records > 10_000);
}
