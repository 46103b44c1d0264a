//! The reference forward against transformers (the engine's committed fixtures, read in place),
//! its gradients, and packed sequences.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use mathcoder_model::llama::{packed_mask, packed_positions};
use mathcoder_model::{Checkpoint, Llama, ModelConfig, Weight};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The transformers-built fixtures live with the engine's tests (see their README).
fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../engine/tests/fixtures")
        .join(name)
}

const HF: [&str; 4] = ["llama2-tiny", "codellama-tiny", "gqa-sharded", "mha-bin"];

fn load(name: &str) -> (Llama, VarMap) {
    let ckpt = Checkpoint::open(&fixture(name)).unwrap();
    Llama::from_checkpoint(&ckpt, DType::F32, &Device::Cpu).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// (max |a - b|, max |a - b| / max |b|)
fn diff(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let d = max_abs(&(a - b).unwrap());
    (d, d / max_abs(b).max(1e-12))
}

fn run(m: &Llama, seq: &[u32]) -> Tensor {
    let x = Tensor::new(seq, &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    m.forward(&x, None, None).unwrap().squeeze(0).unwrap()
}

#[test]
fn logits_at_every_position_match_transformers() {
    for name in HF {
        let (m, _) = load(name);
        let dir = fixture(name);
        let json: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap())
                .unwrap();
        let want: HashMap<String, Tensor> =
            candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
        let probe = want["probe_ids"].to_dtype(DType::U32).unwrap();
        for (i, s) in json["sequences"].as_array().unwrap().iter().enumerate() {
            let seq = ids(&s["ids"]);
            let ours = run(&m, &seq);
            let (d_last, r_last) = diff(
                &ours.get(seq.len() - 1).unwrap(),
                &want[&format!("seq{i}_last")],
            );
            let (d_all, r_all) = diff(
                &ours.index_select(&probe, 1).unwrap(),
                &want[&format!("seq{i}_probe")],
            );
            eprintln!(
                "{name} seq{i} ({} tokens): last position max|Δ| {d_last:.2e} (rel {r_last:.2e}); all positions at probe ids max|Δ| {d_all:.2e} (rel {r_all:.2e})",
                seq.len()
            );
            assert!(r_last < 1e-4 && r_all < 1e-4, "{name} seq{i}");
        }
    }
}

/// Cross-entropy of next-token prediction over every position.
fn loss(logits: &Tensor, ids: &Tensor) -> Tensor {
    let (b, t, v) = logits.dims3().unwrap();
    let pred = logits
        .narrow(1, 0, t - 1)
        .unwrap()
        .reshape((b * (t - 1), v))
        .unwrap();
    let target = ids.narrow(1, 1, t - 1).unwrap().flatten_all().unwrap();
    candle_nn::loss::cross_entropy(&pred, &target).unwrap()
}

/// Every variable gets a non-zero gradient: no op on the way cuts the graph.
fn assert_all_grads(m: &Llama, vars: &VarMap, ids: &Tensor, packed: Option<&[Vec<u32>]>) -> usize {
    let dev = Device::Cpu;
    let (pos, mask) = match packed {
        Some(s) => (
            Some(packed_positions(s, &dev).unwrap()),
            Some(packed_mask(s, &dev).unwrap()),
        ),
        None => (None, None),
    };
    let logits = m.forward(ids, pos.as_ref(), mask.as_ref()).unwrap();
    let l = loss(&logits, ids);
    assert!(l.to_scalar::<f32>().unwrap().is_finite());
    let grads = l.backward().unwrap();
    let data = vars.data().lock().unwrap();
    let expected: Vec<String> = Weight::all(m.config())
        .iter()
        .map(|w| w.hf_name())
        .collect();
    assert_eq!(data.len(), expected.len());
    for name in &expected {
        let var = &data[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name}: no gradient"));
        assert_eq!(g.dims(), var.dims(), "{name}");
        let n = max_abs(g);
        assert!(n > 0.0 && n.is_finite(), "{name}: gradient max |g| = {n}");
    }
    expected.len()
}

#[test]
fn every_weight_gets_a_gradient() {
    let dev = Device::Cpu;
    // Checkpoints: GQA untied (sharded safetensors) and MHA tied (.bin).
    for name in ["gqa-sharded", "mha-bin"] {
        let (m, vars) = load(name);
        let ids = Tensor::new(
            &[
                [1u32, 5, 17, 42, 99, 7, 250, 3],
                [2, 9, 9, 31, 64, 128, 4, 11],
            ],
            &dev,
        )
        .unwrap();
        let n = assert_all_grads(&m, &vars, &ids, None);
        let packed = [vec![0, 0, 0, 1, 1, 1, 1, 1], vec![0, 0, 0, 0, 0, 0, 0, 0]];
        assert_all_grads(&m, &vars, &ids, Some(&packed));
        eprintln!("{name}: all {n} weight tensors have non-zero gradients (plain and packed)");
    }
    // The gradients are the loss's derivative: along the gradient direction G, the central
    // difference (L(θ + hG) - L(θ - hG)) / 2h equals |G|².
    let (m, vars) = load("gqa-sharded");
    let ids = Tensor::new(&[[1u32, 5, 17, 42, 99, 7, 250, 3, 8, 8, 64, 2]], &dev).unwrap();
    let segments = [vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1]];
    let (pos, mask) = (
        packed_positions(&segments, &dev).unwrap(),
        packed_mask(&segments, &dev).unwrap(),
    );
    let l = |m: &Llama| loss(&m.forward(&ids, Some(&pos), Some(&mask)).unwrap(), &ids);
    let grads = l(&m).backward().unwrap();
    let all: Vec<(candle_core::Var, Tensor, Tensor)> = vars
        .all_vars()
        .into_iter()
        .map(|v| {
            let g = grads.get(v.as_tensor()).unwrap().clone();
            let t = v.as_tensor().copy().unwrap();
            (v, t, g)
        })
        .collect();
    let norm2: f64 = all
        .iter()
        .map(|(_, _, g)| {
            g.sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap() as f64
        })
        .sum();
    let h = 1e-3 / norm2.sqrt();
    let at = |sign: f64| -> f64 {
        for (v, t, g) in &all {
            v.set(&(t + (g * (sign * h)).unwrap()).unwrap()).unwrap();
        }
        l(&m).to_scalar::<f32>().unwrap() as f64
    };
    let fd = (at(1.0) - at(-1.0)) / (2.0 * h);
    let rel = (fd - norm2).abs() / norm2;
    eprintln!("gqa-sharded: directional derivative {fd:.6} vs |G|² {norm2:.6} (rel {rel:.1e})");
    assert!(rel < 2e-3, "{fd} vs {norm2}");

    // A freshly initialised model (a trainer's starting point), GQA with a tied head.
    let cfg = ModelConfig::from_hf_json(
        r#"{"vocab_size":50,"hidden_size":32,"intermediate_size":48,"num_hidden_layers":2,
        "num_attention_heads":4,"num_key_value_heads":2,"tie_word_embeddings":true}"#,
    )
    .unwrap();
    let vars = VarMap::new();
    let m = Llama::new(&cfg, VarBuilder::from_varmap(&vars, DType::F32, &dev)).unwrap();
    let ids = Tensor::new(&[[1u32, 5, 17, 42, 9, 7, 49, 3]], &dev).unwrap();
    let n = assert_all_grads(&m, &vars, &ids, None);
    eprintln!("fresh model: all {n} weight tensors have non-zero gradients");
}

#[test]
fn packed_rows_equal_each_instance_alone() {
    let dev = Device::Cpu;
    for name in ["gqa-sharded", "llama2-tiny"] {
        let (m, _) = load(name);
        let json: Value = serde_json::from_str(
            &std::fs::read_to_string(fixture(name).join("expected.json")).unwrap(),
        )
        .unwrap();
        let seq = ids(&json["sequences"][0]["ids"]);
        // Row 0 packs instances of 5, 7 and 4 tokens; row 1 packs 10 and 6.
        let rows: [Vec<&[u32]>; 2] = [
            vec![&seq[0..5], &seq[5..12], &seq[20..24]],
            vec![&seq[2..12], &seq[12..18]],
        ];
        let t = 16;
        let mut flat = Vec::new();
        let mut segments = Vec::new();
        for r in &rows {
            let mut s = Vec::new();
            for (k, inst) in r.iter().enumerate() {
                flat.extend_from_slice(inst);
                s.extend(std::iter::repeat_n(k as u32, inst.len()));
            }
            assert_eq!(s.len(), t);
            segments.push(s);
        }
        let x = Tensor::from_vec(flat, (2, t), &dev).unwrap();
        let logits = m
            .forward(
                &x,
                Some(&packed_positions(&segments, &dev).unwrap()),
                Some(&packed_mask(&segments, &dev).unwrap()),
            )
            .unwrap();
        let mut worst = 0f32;
        for (ri, r) in rows.iter().enumerate() {
            let mut at = 0;
            for inst in r {
                let alone = run(&m, inst);
                let packed = logits.get(ri).unwrap().narrow(0, at, inst.len()).unwrap();
                let (d, rel) = diff(&packed, &alone);
                worst = worst.max(d);
                assert!(rel < 1e-5, "{name} row {ri} at {at}: max|Δ| {d} rel {rel}");
                at += inst.len();
            }
        }
        eprintln!("{name}: packed rows vs instances alone, max|Δ| {worst:.2e}");
        // Without the mask and positions the packed row is one sequence, and differs.
        let plain = m.forward(&x, None, None).unwrap();
        let (d, _) = diff(
            &plain.get(0).unwrap().narrow(0, 5, 7).unwrap(),
            &run(&m, rows[0][1]),
        );
        assert!(d > 1e-3, "{name}: packing made no difference ({d})");
    }
}

#[test]
fn bad_inputs_are_errors() {
    let dev = Device::Cpu;
    let (m, _) = load("gqa-sharded");
    let f = |ids: &Tensor, p: Option<&Tensor>, k: Option<&Tensor>| m.forward(ids, p, k).is_err();
    let ok = Tensor::new(&[[1u32, 2, 3]], &dev).unwrap();
    assert!(!f(&ok, None, None));
    assert!(f(&Tensor::new(&[1u32, 2, 3], &dev).unwrap(), None, None));
    assert!(f(&Tensor::new(&[[1i64, 2, 3]], &dev).unwrap(), None, None));
    assert!(f(
        &Tensor::new(&[[1u32, 2, 320]], &dev).unwrap(),
        None,
        None
    ));
    assert!(f(
        &ok,
        Some(&Tensor::new(&[[0u32, 1]], &dev).unwrap()),
        None
    ));
    let bad_mask = Tensor::zeros((1, 1, 2, 2), DType::F32, &dev).unwrap();
    assert!(f(&ok, None, Some(&bad_mask)));
    // A checkpoint with a wrong shape is a load error, not a panic.
    assert!(Checkpoint::open(Path::new("/nonexistent")).is_err());
}
