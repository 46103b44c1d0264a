//! Real GGUF models (SmolLM2-135M-Instruct `Q4_1`, Qwen2.5-Coder-0.5B-Instruct `Q4_K_M`) against
//! llama.cpp (`fixtures/real-gguf-logits.json`, made by `scripts/gguf-logits-reference.py`).
//!
//! The models are looked for in [`mathcoder_model::models_dir`] (see
//! `../shared/docs/small-models.md` for where they come from) and each is skipped when absent.
//! On the quantized file, our logits must be as close to llama.cpp's f32 reference (the same
//! weights dequantized) as llama.cpp's own quantized computation is. When the f32 copy
//! (`NAME.f32.gguf`, `llama-quantize --allow-requantize IN OUT F32`) is there too, our f32
//! logits must equal llama.cpp's closely, which checks the architecture itself. The decode
//! step's single-region path is checked against the general one on the same models.
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

/// A decode step on the single-region path is as accurate as the general path on the real
/// models: against the same weights in f32 (`NAME.f32.gguf`, when present) its logits are no
/// further off than the general path's (both quantize activations; rounding steps fall
/// differently after float-order differences, so they do not agree bit for bit); on dense
/// MathCoder-S (merged at first use) the two agree to float noise.
#[test]
#[ignore = "needs the real models (see the module doc)"]
fn fused_decode_is_as_accurate_as_the_general_path_on_real_models() {
    use mathcoder_engine::model::Step;
    use mathcoder_engine::Engine;
    let dir = mathcoder_model::models_dir();
    let mut cases: Vec<(std::path::PathBuf, Option<std::path::PathBuf>)> = [
        (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct.f32.gguf",
        ),
        (
            "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
            "qwen2.5-coder-0.5b-instruct.f32.gguf",
        ),
    ]
    .iter()
    .map(|(q, f)| (dir.join(q), Some(dir.join(f)).filter(|p| p.exists())))
    .collect();
    if let Ok(rd) = std::fs::read_dir(&dir) {
        cases.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir() && p.join("config.json").exists())
                .map(|p| (p, None)),
        );
    }
    // Logits of 24 decode steps after a prompt, for `n` sequences stepped together.
    let run = |e: &Engine, prompts: &[Vec<u32>], n: usize| -> Vec<Vec<f32>> {
        let mut caches: Vec<_> = prompts[..n].iter().map(|_| e.model.new_cache()).collect();
        for (c, p) in caches.iter_mut().zip(prompts) {
            let mut s = [Step {
                cache: c,
                tokens: p,
                all_logits: false,
            }];
            e.model.forward(&mut s).unwrap();
        }
        let mut out = Vec::new();
        for i in 0..24u32 {
            let toks: Vec<u32> = (0..n as u32).map(|s| 100 + 37 * i + 11 * s).collect();
            let mut steps: Vec<Step<'_>> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(c, t)| Step {
                    cache: c,
                    tokens: std::slice::from_ref(t),
                    all_logits: false,
                })
                .collect();
            for l in e.model.forward(&mut steps).unwrap() {
                out.push(l.to_vec1::<f32>().unwrap());
            }
        }
        out
    };
    let worst = |a: &[Vec<f32>], b: &[Vec<f32>]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| max_abs(x, y))
            .fold(0f32, f32::max)
    };
    for (path, f32_copy) in cases {
        if !path.exists() {
            eprintln!("skipped {}: absent", path.display());
            continue;
        }
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let mut e = load(&path, None, &LoadOptions::default()).unwrap();
        assert!(e.model.fused_decode(), "{name}");
        let prompts: Vec<Vec<u32>> = [
            "What is 12 * 7? Let's write a program.",
            "A train travels 60 km in 1.5 hours. What is its speed?",
            "x",
        ]
        .iter()
        .map(|t| e.tok.encode(t, true).unwrap())
        .collect();
        let reference = f32_copy.map(|p| {
            let r = load(&p, None, &LoadOptions::default()).unwrap();
            [1, 3].map(|n| run(&r, &prompts, n))
        });
        for (i, n) in [1, 3].into_iter().enumerate() {
            let fused = run(&e, &prompts, n);
            e.model.set_fused_decode(false).unwrap();
            let general = run(&e, &prompts, n);
            e.model.set_fused_decode(true).unwrap();
            let apart = worst(&fused, &general);
            match &reference {
                Some(r) => {
                    let (f, g) = (worst(&fused, &r[i]), worst(&general, &r[i]));
                    eprintln!(
                        "{name}, {n} sequences: max |d| vs f32 weights: fused {f:.3}, general {g:.3} (apart {apart:.3})"
                    );
                    assert!(f <= 1.25 * g, "{name}, {n} sequences");
                }
                None => {
                    eprintln!("{name}, {n} sequences: fused vs general max |d| {apart:.2e}");
                    if !name.ends_with(".gguf") {
                        assert!(apart < 1e-3, "{name}, {n} sequences");
                    }
                }
            }
        }
    }
}
