//! What the trainer's integration tests share: the fixtures, a small run's settings, logs, a
//! model without MathCoder's tokens, and the engine's logits on a checkpoint.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use mathcoder_engine::{load_model, LoadOptions};
use mathcoder_lce::SpecialToken;
use mathcoder_model::{Llama, Weight};
use mathcoder_train::{Packing, StepLog, TrainConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures")
        .join(name)
}

pub fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/svamp-16.jsonl")
}

pub fn small(packing: Packing) -> TrainConfig {
    TrainConfig {
        seq_len: 512,
        packing,
        lr: 5e-3,
        warmup_steps: 2,
        global_batch: 2,
        micro_batch: 1,
        max_steps: Some(6),
        seed: 7,
        ..TrainConfig::default()
    }
}

pub fn without_seconds(log: &[StepLog]) -> Vec<StepLog> {
    log.iter()
        .map(|l| StepLog {
            seconds: 0.0,
            ..l.clone()
        })
        .collect()
}

pub fn read_log(path: &Path) -> Vec<StepLog> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes `src` into `dir` with MathCoder's eight tokens taken out of its tokenizer and
/// weights; returns the vocabulary size without them.
pub fn without_mathcoder_tokens(src: &Path, dir: &Path) -> usize {
    let mut tj: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer.json")).unwrap())
            .unwrap();
    let specials: Vec<&str> = SpecialToken::ALL.iter().map(|t| t.as_str()).collect();
    tj["added_tokens"]
        .as_array_mut()
        .unwrap()
        .retain(|t| !specials.contains(&t["content"].as_str().unwrap()));
    std::fs::write(dir.join("tokenizer.json"), tj.to_string()).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let old_vocab = cfg["vocab_size"].as_u64().unwrap() as usize - 8;
    cfg["vocab_size"] = old_vocab.into();
    let tied = cfg["tie_word_embeddings"].as_bool().unwrap_or(false);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut w: HashMap<String, Tensor> =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names = vec![Weight::Embed.hf_name()];
    if !tied {
        names.push(Weight::LmHead.hf_name());
    }
    for name in names {
        let t = w[&name].narrow(0, 0, old_vocab).unwrap();
        w.insert(name, t);
    }
    candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
    old_vocab
}

/// The engine's logits `[t, vocab]` on `seq` with the checkpoint at `dir`.
pub fn engine_logits(dir: &Path, seq: &[u32]) -> Tensor {
    let engine = load_model(dir, &LoadOptions::default()).unwrap();
    let mut cache = engine.new_cache();
    let mut steps = [mathcoder_engine::model::Step {
        cache: &mut cache,
        tokens: seq,
        all_logits: true,
    }];
    engine.forward(&mut steps).unwrap().remove(0)
}

/// Max |Δ| / max |logit| between `model`'s logits on `seq` and the engine's on the checkpoint
/// at `dir`.
pub fn engine_vs(dir: &Path, model: &Llama, seq: &[u32]) -> f32 {
    let ids = Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let ours = model.forward(&ids, None, None).unwrap().squeeze(0).unwrap();
    let theirs = engine_logits(dir, seq);
    let max = |t: &Tensor| {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let d = max(&(&ours - &theirs).unwrap());
    let rel = d / max(&ours);
    eprintln!(
        "engine on {} vs the trainer's forward: max|Δ| {d:.2e} (rel {rel:.2e})",
        dir.display()
    );
    rel
}
