//! Transformers loads what `train` writes: `scripts/check-hf-load.py` (run by hand) put
//! transformers' logits on a full run's checkpoint, a LoRA run's merged model and the base with
//! the LoRA checkpoint loaded by PEFT into `tests/fixtures/hf-load-llama2-tiny.json`. The same
//! runs here (deterministic) give checkpoints on which our engine's logits and our tokenizer's
//! ids equal theirs.

mod common;

use candle_core::DType;
use common::*;
use mathcoder_train::lora::parse_targets;
use mathcoder_train::tokenize::TrainTokenizer;
use mathcoder_train::{LoraConfig, Packing, TrainConfig, Trainer};
use serde_json::Value;
use std::path::Path;

/// Worst difference of per-position (norm, sum, projection) against the fixture's, relative
/// to the position's norm (sum and projection also over sqrt(vocab)).
fn worst(ours: &[Vec<f64>], theirs: &Value) -> f64 {
    let mut w = 0f64;
    for (i, row) in ours.iter().enumerate() {
        let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        let s: f64 = row.iter().sum();
        let p: f64 = row
            .iter()
            .enumerate()
            .map(|(j, x)| x * (0.7 * j as f64).sin())
            .sum();
        let tn = theirs["norm"][i].as_f64().unwrap();
        let sq = (row.len() as f64).sqrt();
        let d = [
            (n - tn).abs() / tn,
            (s - theirs["sum"][i].as_f64().unwrap()).abs() / (tn * sq),
            (p - theirs["proj"][i].as_f64().unwrap()).abs() / (tn * sq),
        ];
        w = d.into_iter().fold(w, f64::max);
    }
    w
}

fn top5(row: &[f64]) -> Vec<u64> {
    let mut idx: Vec<usize> = (0..row.len()).collect();
    idx.sort_by(|a, b| row[*b].total_cmp(&row[*a]));
    idx[..5].iter().map(|i| *i as u64).collect()
}

#[test]
fn transformers_logits_on_our_checkpoints_equal_the_engines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures/hf-load-llama2-tiny.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let model = fixture("llama2-tiny");
    let base = TrainConfig {
        max_steps: Some(2),
        ..small(Packing::Isolated)
    };
    let full_dir = Trainer::new(&model, &data(), base.clone(), None)
        .unwrap()
        .run(&tmp.path().join("full"), |_| {})
        .unwrap();
    let lora = TrainConfig {
        lr: 2e-2,
        lora: Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets("all-linear").unwrap(),
        }),
        ..base
    };
    Trainer::new(&model, &data(), lora, None)
        .unwrap()
        .run(&tmp.path().join("lora"), |_| {})
        .unwrap();
    let merged = tmp.path().join("lora/merged");

    let (tok, _) = TrainTokenizer::load(&full_dir).unwrap();
    let mut ids: Vec<u32> = tok.bos.into_iter().collect();
    ids.extend(tok.encode(want["prompt"].as_str().unwrap()).unwrap());
    let want_ids: Vec<u32> = want["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(
        ids, want_ids,
        "our tokenizer and transformers' on the checkpoint"
    );

    for (name, dir) in [
        ("full", &full_dir),
        ("lora_merged", &merged),
        ("lora_peft", &merged),
    ] {
        let ours: Vec<Vec<f64>> = engine_logits(dir, &ids)
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec2()
            .unwrap();
        let theirs = &want["models"][name];
        let d = worst(&ours, theirs);
        eprintln!(
            "{name}: engine vs transformers, {} positions: worst relative difference {d:.2e}",
            ours.len()
        );
        assert!(d < 1e-4, "{name}: {d}");
        let t5: Vec<u64> = theirs["last_top5"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(top5(ours.last().unwrap()), t5, "{name}");
    }
}
