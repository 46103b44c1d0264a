//! Real GGUF models (SmolLM2-135M-Instruct `Q4_1`, Qwen2.5-Coder-0.5B-Instruct `Q4_K_M`) against
//! llama.cpp (`fixtures/real-gguf-logits.json`, made by `scripts/gguf-logits-reference.py`).
//!
//! The models are looked for in [`mathcoder_model::models_dir`] (see
//! `../shared/docs/small-models.md` for where they come from) and each is skipped when absent.
//! On the quantized file, our logits must be as close to llama.cpp's f32 reference (the same
//! weights dequantized) as llama.cpp's own quantized computation is. When the f32 copy
//! (`NAME.f32.gguf`, `llama-quantize --allow-requantize IN OUT F32`) is there too, our f32
//! logits must equal llama.cpp's closely, which checks the architecture itself.
//!
//! A few minutes in a debug build, so not part of `cargo test`:
//! `cargo test --release -p mathcoder-engine --test real_models -- --ignored --nocapture`.

use mathcoder_engine::{load, LoadOptions};
use serde_json::Value;
use std::path::Path;

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
#[ignore = "minutes in a debug build; needs the real models (see the module doc)"]
fn real_gguf_logits_within_llama_cpp_error() {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/real-gguf-logits.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let prompt = v["prompt"].as_str().unwrap();
    let dir = mathcoder_model::models_dir();
    for (name, m) in v["models"].as_object().unwrap() {
        let path = dir.join(name);
        if !path.exists() {
            eprintln!("skipped {name}: not in {}", dir.display());
            continue;
        }
        let f32_path = dir.join(format!("{}.f32.gguf", &name[..name.find(".Q").unwrap()]));
        let want_ids: Vec<u32> = m["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        for (file, quantized) in [(path.clone(), true), (f32_path, false)] {
            if !file.exists() {
                eprintln!("skipped {}: absent", file.display());
                continue;
            }
            let e = load(&file, None, &LoadOptions::default()).unwrap();
            let ids = e.tok.encode(prompt, false).unwrap();
            assert_eq!(ids, want_ids, "{name}: prompt ids");
            let mut s = e.session();
            s.append(&ids);
            let all = e.prefill_all(&mut s).unwrap();
            for row in m["rows"].as_array().unwrap() {
                let p = row["position"].as_u64().unwrap() as usize;
                let logits: Vec<f32> = all.get(p).unwrap().to_vec1().unwrap();
                let top: Vec<usize> = row["top_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect();
                let ours: Vec<f32> = top.iter().map(|&i| logits[i]).collect();
                let (f32_ref, cpp_q) = (f32s(&row["f32"]), f32s(&row["quantized"]));
                let (d_ours, d_cpp) = (max_abs(&ours, &f32_ref), max_abs(&cpp_q, &f32_ref));
                eprintln!(
                    "{} position {p}: top-{} logits vs llama.cpp f32: ours max |d| {d_ours:.4}, llama.cpp quantized {d_cpp:.4}",
                    file.file_name().unwrap().to_string_lossy(),
                    top.len()
                );
                if quantized {
                    assert!(d_ours <= 1.25 * d_cpp, "{name} position {p}");
                } else {
                    assert!(
                        d_ours <= 2e-3 * f32_ref[0].abs().max(1.0),
                        "{name} f32 position {p}"
                    );
                }
            }
        }
    }
}
