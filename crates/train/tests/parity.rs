//! Parity with PyTorch: the loss and every parameter's gradient of a packed, isolated, masked
//! global batch (2 rows accumulated one at a time), and the weights after 3 AdamW steps with
//! warm-up and clipping, against transformers' `LlamaForCausalLM` running each instance alone
//! (`scripts/train-parity.py`, run by hand; its JSON output is committed). The same for a LoRA
//! run against PEFT (`--lora 4 8`): the adapter's and the token rows' gradients and updates.

use candle_core::{DType, Tensor};
use mathcoder_train::lora::parse_targets;
use mathcoder_train::{LoraConfig, Packing, TrainConfig, Trainer};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

fn stats(t: &Tensor) -> (f64, f64, f64) {
    let v: Vec<f64> = t
        .flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let sum = v.iter().sum::<f64>();
    let proj = v
        .iter()
        .enumerate()
        .map(|(i, x)| x * (0.7 * i as f64).sin())
        .sum::<f64>();
    (norm, sum, proj)
}

/// Relative differences of (norm, sum, projection); sum and projection relative to the norm
/// times the length of the vector they are taken against.
fn compare(ours: (f64, f64, f64), theirs: &Value, n: usize) -> f64 {
    let (tn, ts, tp) = (
        theirs["norm"].as_f64().unwrap(),
        theirs["sum"].as_f64().unwrap(),
        theirs["proj"].as_f64().unwrap(),
    );
    let scale = tn.max(1e-30);
    let sq = (n as f64).sqrt();
    let a = (ours.0 - tn).abs() / scale;
    let b = (ours.1 - ts).abs() / (scale * sq);
    let c = (ours.2 - tp).abs() / (scale * sq / std::f64::consts::SQRT_2);
    a.max(b).max(c)
}

/// The trained tensors by name (copies).
fn trained(t: &Trainer) -> HashMap<String, Tensor> {
    let copy = |(k, v): (&String, &candle_core::Var)| (k.clone(), v.as_tensor().copy().unwrap());
    match &t.adapter {
        Some(a) => a.vars.iter().map(|(k, v)| copy((k, v))).collect(),
        None => t.vars.data().lock().unwrap().iter().map(copy).collect(),
    }
}

#[test]
fn loss_gradients_and_three_adamw_steps_match_pytorch() {
    check("parity-llama2-tiny.json", None);
}

#[test]
fn lora_loss_gradients_and_three_adamw_steps_match_peft() {
    check(
        "parity-lora-llama2-tiny.json",
        Some(LoraConfig {
            rank: 4,
            alpha: 8.0,
            targets: parse_targets("all-linear").unwrap(),
        }),
    );
}

fn check(fixture: &str, lora: Option<LoraConfig>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let want: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("tests/fixtures").join(fixture)).unwrap(),
    )
    .unwrap();
    let cfg = TrainConfig {
        seq_len: 512,
        packing: Packing::Isolated,
        lr: 1e-3,
        warmup_steps: 2,
        global_batch: 2,
        micro_batch: 1,
        max_steps: Some(3),
        seed: 7,
        lora,
        ..TrainConfig::default()
    };
    let model = root.join("../engine/tests/fixtures/llama2-tiny");
    let data = root.join("tests/fixtures/svamp-16.jsonl");
    let mut t = Trainer::new(&model, &data, cfg, None).unwrap();
    let names = t.var_names();
    if let Some(a) = &t.adapter {
        // The script's deterministic LoRA matrices (see scripts/train-parity.py).
        for (k, (name, var)) in a.vars.iter().enumerate() {
            if name.contains(".lora_") {
                let n = var.elem_count();
                let v: Vec<f32> = (0..n)
                    .map(|f| (0.02 * (0.7 * f as f64 + k as f64).sin()) as f32)
                    .collect();
                var.set(&Tensor::from_vec(v, var.dims(), var.device()).unwrap())
                    .unwrap();
            }
        }
    }
    let rows = t.step_rows(1);
    let (loss, grads, _) = t.loss_and_grads(&rows).unwrap();
    let want_loss = want["steps"][0]["loss"].as_f64().unwrap();
    let rel = (loss - want_loss).abs() / want_loss;
    eprintln!("step-1 loss: ours {loss:.8}, PyTorch {want_loss:.8} (rel {rel:.2e})");
    assert!(rel < 1e-5);
    let wg = want["step1_grads"].as_object().unwrap();
    assert_eq!(wg.len(), names.len(), "same parameters");
    let mut worst = (0f64, String::new());
    for (name, g) in names.iter().zip(&grads) {
        let d = compare(stats(g), &wg[name], g.elem_count());
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!(
        "step-1 gradients of all {} parameters: worst relative difference {:.2e} ({})",
        names.len(),
        worst.0,
        worst.1
    );
    assert!(worst.0 < 1e-5);

    let before = trained(&t);
    for s in 0..3 {
        let l = t.train_step().unwrap();
        let w = &want["steps"][s];
        eprintln!(
            "step {}: loss {:.8} / {:.8}, lr {:e} / {:e}, grad_norm {:.8} / {:.8} (exact; clip_grad_norm_ says {:.8})",
            l.step,
            l.loss,
            w["loss"].as_f64().unwrap(),
            l.lr,
            w["lr"].as_f64().unwrap(),
            l.grad_norm,
            w["grad_norm_f64"].as_f64().unwrap(),
            w["grad_norm"].as_f64().unwrap()
        );
        assert!((l.loss - w["loss"].as_f64().unwrap()).abs() / l.loss < 1e-5);
        assert!((l.lr - w["lr"].as_f64().unwrap()).abs() < 1e-12);
        assert!((l.grad_norm - w["grad_norm_f64"].as_f64().unwrap()).abs() / l.grad_norm < 1e-5);
    }
    let wd = want["delta_after_3"].as_object().unwrap();
    let after = trained(&t);
    let mut worst = (0f64, String::new());
    for name in &names {
        let delta = (&after[name] - &before[name]).unwrap();
        let d = compare(stats(&delta), &wd[name], delta.elem_count());
        if d > worst.0 {
            worst = (d, name.clone());
        }
    }
    eprintln!(
        "weight changes after 3 AdamW steps: worst relative difference {:.2e} ({})",
        worst.0, worst.1
    );
    assert!(worst.0 < 1e-5);
}
