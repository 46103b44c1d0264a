//! LoRA runs on the engine's tiny checkpoints: only the adapter and MathCoder's token rows get
//! gradients and change, every one of them gets a gradient, a resumed LoRA run repeats the
//! uninterrupted one line for line, and the merged checkpoint gives the base + adapter logits
//! in the engine (as does `write_prepared_model` from the saved adapter).

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use mathcoder_model::{LayerWeight, Weight};
use mathcoder_train::lora::{parse_targets, token_ids};
use mathcoder_train::trainer::write_prepared_model;
use mathcoder_train::{LoraConfig, Packing, TrainConfig, Trainer};
use std::collections::HashMap;
use std::path::Path;

fn lora_cfg() -> TrainConfig {
    TrainConfig {
        max_steps: Some(4),
        lr: 2e-2,
        lora: Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets("all-linear").unwrap(),
        }),
        ..small(Packing::Isolated)
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn load(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs(&(a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap())
}

#[test]
fn lora_trains_only_the_adapter_resumes_and_merges() {
    let tmp = tempfile::tempdir().unwrap();
    // codellama-tiny without MathCoder's tokens: they are added, and the untied head's rows
    // train too.
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let old_vocab = without_mathcoder_tokens(&fixture("codellama-tiny"), &base);
    let cfg = lora_cfg();
    let mut full = Trainer::new(&base, &data(), cfg.clone(), None).unwrap();
    assert_eq!(full.added_tokens, 8);
    let ids = token_ids(&full.tok).unwrap();
    assert_eq!(
        ids,
        ((old_vocab as u32)..(old_vocab as u32 + 8)).collect::<Vec<_>>()
    );

    // Every trainable parameter gets a gradient (loss_and_grads fails otherwise); at the start
    // B is zero, so A's gradient is zero and B's and the rows' are not.
    let names = full.var_names();
    let c = full.config.clone();
    assert_eq!(names.len(), c.num_layers * 7 * 2 + 2);
    assert!(names
        .iter()
        .all(|n| n.starts_with("base_model.model.") && !n.contains("norm")));
    let rows = full.step_rows(1);
    let (_, grads, _) = full.loss_and_grads(&rows).unwrap();
    for (n, g) in names.iter().zip(&grads) {
        let m = max_abs(g);
        if n.contains("lora_A") {
            assert_eq!(m, 0.0, "{n}");
        } else {
            assert!(m > 0.0, "{n} has a zero gradient");
        }
    }
    let before = full.weights().unwrap();

    let a = tmp.path().join("a");
    let last = full.run(&a, |_| {}).unwrap();
    let log_a = read_log(&a.join("log.jsonl"));
    assert_eq!(log_a.len(), 4);
    for l in &log_a {
        eprintln!("{}", serde_json::to_string(l).unwrap());
    }
    assert!(log_a[3].loss < log_a[0].loss, "{log_a:?}");
    // After training, A's gradients are non-zero too.
    let (_, grads, _) = full.loss_and_grads(&rows).unwrap();
    for (n, g) in names.iter().zip(&grads) {
        assert!(max_abs(g) > 0.0, "{n} has a zero gradient after training");
    }

    // The checkpoint holds the adapter in PEFT's layout, not the model.
    assert!(!last.join("model.safetensors").exists());
    let adapter = load(&last.join("adapter_model.safetensors"));
    assert!(adapter.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight"));
    assert_eq!(
        adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].dims(),
        [4, c.hidden_size]
    );
    assert_eq!(
        adapter["base_model.model.lm_head.token_adapter.trainable_tokens_delta"].dims(),
        [8, c.hidden_size]
    );
    let ac: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(last.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(ac["r"], 4);
    assert_eq!(ac["peft_type"], "LORA");
    assert_eq!(ac["target_modules"].as_array().unwrap().len(), 7);

    // The base stayed as it was; the merged weights moved by scale * B A, and only
    // MathCoder's rows of the embeddings and head changed.
    let after_base = full.vars.data().lock().unwrap()[&Weight::Layer(0, LayerWeight::Q).hf_name()]
        .as_tensor()
        .clone();
    assert_eq!(
        max_diff(
            &after_base,
            &before[&Weight::Layer(0, LayerWeight::Q).hf_name()]
        ),
        0.0
    );
    let merged = load(&a.join("merged/model.safetensors"));
    for w in [Weight::Embed, Weight::LmHead] {
        let (m, b) = (&merged[&w.hf_name()], &before[&w.hf_name()]);
        let n = old_vocab;
        assert_eq!(
            max_diff(&m.narrow(0, 0, n).unwrap(), &b.narrow(0, 0, n).unwrap()),
            0.0
        );
        assert!(max_diff(&m.narrow(0, n, 8).unwrap(), &b.narrow(0, n, 8).unwrap()) > 0.0);
    }
    for l in LayerWeight::ALL {
        let n = Weight::Layer(1, l).hf_name();
        let d = max_diff(&merged[&n], &before[&n]);
        assert_eq!(
            d > 0.0,
            !matches!(l, LayerWeight::AttnNorm | LayerWeight::MlpNorm),
            "{n}"
        );
    }

    // The merged model in the engine gives the base + adapter forward's logits.
    let row = &full.data.rows[0];
    let inst = &full.data.dataset.instances[row.instances[0]];
    let seq = &inst.ids[..inst.ids.len().min(64)];
    assert!(
        seq.iter().any(|t| ids.contains(t)),
        "the prompt uses a new token"
    );
    assert!(engine_vs(&a.join("merged"), &full.model, seq) < 1e-4);

    // Merging the saved adapter into the base again gives the same weights.
    let again = tmp.path().join("again");
    assert_eq!(write_prepared_model(&base, Some(&last), &again).unwrap(), 8);
    let again = load(&again.join("model.safetensors"));
    assert_eq!(again.len(), merged.len());
    for (n, t) in &merged {
        assert!(max_diff(t, &again[n]) < 1e-6, "{n}");
    }

    // Interrupted after step 2 and resumed: the same log line for line.
    let b = tmp.path().join("b");
    let mut first = Trainer::new(
        &base,
        &data(),
        TrainConfig {
            stop_after: Some(2),
            ..cfg.clone()
        },
        None,
    )
    .unwrap();
    let ck = first.run(&b, |_| {}).unwrap();
    assert!(!b.join("merged").exists(), "no merged model before the end");
    let cdir = tmp.path().join("c");
    let mut resumed = Trainer::new(&base, &data(), cfg.clone(), Some(&ck)).unwrap();
    assert_eq!(resumed.step, 2);
    resumed.run(&cdir, |_| {}).unwrap();
    assert_eq!(
        without_seconds(&read_log(&cdir.join("log.jsonl"))),
        without_seconds(&log_a)
    );
    // A full (non-LoRA) run refuses a LoRA checkpoint and the other way round.
    let e = Trainer::new(
        &base,
        &data(),
        TrainConfig {
            lora: None,
            ..cfg.clone()
        },
        Some(&ck),
    )
    .err()
    .expect("a full run from a LoRA checkpoint");
    assert!(e.to_string().contains("different run"), "{e}");
}

#[test]
fn prepared_base_has_the_tokens_with_mean_rows_and_loads_in_the_engine() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("base");
    std::fs::create_dir_all(&base).unwrap();
    let old_vocab = without_mathcoder_tokens(&fixture("llama2-tiny"), &base);
    let out = tmp.path().join("prepared");
    assert_eq!(write_prepared_model(&base, None, &out).unwrap(), 8);
    // It now has the tokens: preparing it again adds none and changes nothing.
    let again = tmp.path().join("again");
    assert_eq!(write_prepared_model(&out, None, &again).unwrap(), 0);
    let w = load(&out.join("model.safetensors"));
    let w2 = load(&again.join("model.safetensors"));
    let e = &w[&Weight::Embed.hf_name()];
    assert_eq!(e.dims()[0], old_vocab + 8);
    assert_eq!(max_diff(e, &w2[&Weight::Embed.hf_name()]), 0.0);
    let mean = e
        .narrow(0, 0, old_vocab)
        .unwrap()
        .mean_keepdim(0)
        .unwrap()
        .broadcast_as((8, e.dims()[1]))
        .unwrap();
    assert!(max_diff(&e.narrow(0, old_vocab, 8).unwrap(), &mean) < 1e-6);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["vocab_size"], old_vocab + 8);
    // The engine loads it (the tokens in its tokenizer) and a trainer starting from it adds
    // nothing.
    let t = Trainer::new(&out, &data(), small(Packing::Isolated), None).unwrap();
    assert_eq!(t.added_tokens, 0);
    let inst = &t.data.dataset.instances[0];
    assert!(engine_vs(&out, &t.model, &inst.ids[..inst.ids.len().min(48)]) < 1e-4);
}
