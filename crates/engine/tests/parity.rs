//! The engine against Hugging Face transformers on the committed fixtures (tiny random-weight
//! checkpoints written by transformers; references computed by it; see fixtures/README.md).

use candle_core::{DType, Device, Tensor};
use mathcoder_engine::engine::{Engine, GenParams, Job};
use mathcoder_engine::model::Step;
use mathcoder_engine::{load, LoadOptions, Session};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const ALL: [&str; 4] = ["llama2-tiny", "codellama-tiny", "gqa-sharded", "mha-bin"];

struct Expected {
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn expected(name: &str) -> Expected {
    let dir = fixture(name);
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    Expected { json, tensors }
}

fn engine(name: &str, dtype: Option<DType>) -> Engine {
    let dir = fixture(name);
    let opts = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    match load(&dir, None, &opts) {
        Ok(e) => e,
        // Fixtures without a tokenizer: use llama2-tiny's (ids only matter).
        Err(mathcoder_engine::EngineError::Model(mathcoder_engine::ModelError::Tokenizer(_))) => {
            load(&dir, Some(&fixture("llama2-tiny")), &opts)
                .or_else(|_| {
                    let model = mathcoder_engine::load_model(&dir, &opts)?;
                    let tok = mathcoder_engine::Tok::from_path(&fixture("llama2-tiny"))?;
                    Ok::<_, mathcoder_engine::EngineError>(Engine { model, tok })
                })
                .unwrap()
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// max |a - b| / max |b|
fn rel(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
    let m = b.abs().unwrap().max_all().unwrap();
    d.to_scalar::<f32>().unwrap() / m.to_scalar::<f32>().unwrap().max(1e-12)
}

fn all_logits(e: &Engine, seq: &[u32]) -> Tensor {
    let mut s = e.session();
    s.append(seq);
    e.prefill_all(&mut s).unwrap()
}

#[test]
fn logits_match_transformers_within_1e_4() {
    for name in ALL {
        let e = engine(name, None);
        let x = expected(name);
        let probe = x.tensors["probe_ids"].to_dtype(DType::U32).unwrap();
        for (i, s) in x.json["sequences"].as_array().unwrap().iter().enumerate() {
            let seq = ids(&s["ids"]);
            let ours = all_logits(&e, &seq);
            let last = ours.get(seq.len() - 1).unwrap();
            let r_last = rel(&last, &x.tensors[&format!("seq{i}_last")]);
            let ours_probe = ours.index_select(&probe, 1).unwrap();
            let r_probe = rel(&ours_probe, &x.tensors[&format!("seq{i}_probe")]);
            eprintln!(
                "{name} seq{i} ({} tokens): last-position rel {r_last:.2e}, all positions (probe) rel {r_probe:.2e}",
                seq.len()
            );
            assert!(r_last < 1e-4, "{name} seq{i}: {r_last}");
            assert!(r_probe < 1e-4, "{name} seq{i}: {r_probe}");
        }
    }
}

fn greedy(e: &Engine, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = e.session();
    s.append(prompt);
    let (out, _) = e
        .generate(
            s,
            GenParams {
                max_new_tokens: n,
                ..GenParams::default()
            },
        )
        .unwrap();
    out.tokens
}

#[test]
fn greedy_continuations_of_64_tokens_are_identical() {
    for name in ALL {
        let e = engine(name, None);
        let x = expected(name);
        for s in x.json["sequences"].as_array().unwrap() {
            let want = ids(&s["greedy64"]);
            assert_eq!(greedy(&e, &ids(&s["ids"]), 64), want, "{name}");
        }
    }
}

#[test]
fn mathcoder_prompts_tokenize_like_the_reference() {
    for name in ["llama2-tiny", "codellama-tiny"] {
        let e = engine(name, None);
        let x = expected(name);
        let lce = e.tok.lce_ids().unwrap();
        let base = if name == "llama2-tiny" { 32000 } else { 32016 };
        assert_eq!(lce, (base..base + 8).collect::<Vec<u32>>(), "{name}");
        for t in x.json["tokenization"].as_array().unwrap() {
            let text = t["text"].as_str().unwrap();
            let got = e.tok.encode(text, true).unwrap();
            assert_eq!(got, ids(&t["ids"]), "{name}: {text:?}");
            // Decoding (special tokens kept, runs decoded on their own) round-trips.
            assert_eq!(
                e.tok
                    .encode(&e.tok.decode(&got[1..]).unwrap(), true)
                    .unwrap(),
                got
            );
        }
    }
}

#[test]
fn an_appended_execution_block_continues_the_cache_exactly() {
    let e = engine("llama2-tiny", None);
    let prompt = "<|system|><|text|>Below is a math problem. Please solve it step by step.<|endofblock|><|endofmessage|><|user|><|text|>What is 6*7?<|endofblock|><|endofmessage|><|assistant|><|code|>print(6*7)<|endofblock|>";
    let p = e.tok.encode(prompt, true).unwrap();
    let mut s = e.session();
    s.append(&p);
    e.prefill_all(&mut s).unwrap();
    let exec = e
        .tok
        .encode("<|execution|>42<|endofblock|>", false)
        .unwrap();
    s.append(&exec);
    let cached_before = s.tokens.len();
    let inc = e.prefill_all(&mut s).unwrap();
    // Only the new tokens were computed.
    assert_eq!(inc.dim(0).unwrap(), exec.len());
    assert_eq!(s.tokens.len(), cached_before + exec.len());
    let mut all = p.clone();
    all.extend(&exec);
    let full = all_logits(&e, &all);
    let tail = full.narrow(0, p.len(), exec.len()).unwrap();
    let r = rel(&inc, &tail);
    eprintln!("KV continuation vs recompute: rel {r:.2e}");
    assert!(r < 1e-5, "{r}");
    // And the whole sequence tokenises the same way when re-sent as text.
    assert_eq!(
        e.tok
            .encode(&format!("{prompt}<|execution|>42<|endofblock|>"), true)
            .unwrap(),
        all
    );
}

#[test]
fn forks_rollbacks_and_left_truncation() {
    let e = engine("gqa-sharded", None);
    let x = expected("gqa-sharded");
    let seq = ids(&x.json["sequences"][0]["ids"]);
    let mut s = e.session();
    s.append(&seq[..30]);
    e.prefill_all(&mut s).unwrap();
    let f = s.fork().unwrap();
    let g = |s: Session| {
        e.generate(
            s,
            GenParams {
                max_new_tokens: 10,
                ..GenParams::default()
            },
        )
        .unwrap()
        .0
        .tokens
    };
    let a = g(s);
    let b = g(f);
    assert_eq!(a, b);
    assert_eq!(a, greedy(&e, &seq[..30], 10));
    // Roll back to 20 tokens and continue with the original tokens: same as fresh.
    let mut s = e.session();
    s.append(&seq);
    e.prefill_all(&mut s).unwrap();
    s.rollback(20);
    s.append(&seq[20..25]);
    let l = e.prefill_all(&mut s).unwrap();
    let fresh = all_logits(&e, &seq[..25]).narrow(0, 20, 5).unwrap();
    assert!(rel(&l, &fresh) < 1e-5);
    // Left truncation rebuilds the cache from the last tokens.
    let mut s = e.session();
    s.append(&seq);
    e.prefill_all(&mut s).unwrap();
    let recomputed = s.truncate_left(16);
    assert_eq!(recomputed, 16);
    let l = e.prefill_all(&mut s).unwrap();
    let fresh = all_logits(&e, &seq[seq.len() - 16..]);
    assert!(rel(&l, &fresh) < 1e-6);
    // TGI-style truncation in a job.
    let mut s = e.session();
    s.append(&seq);
    let job_out = e
        .generate(
            s,
            GenParams {
                max_new_tokens: 5,
                truncate: Some(16),
                ..GenParams::default()
            },
        )
        .unwrap()
        .0;
    assert_eq!(job_out.tokens, greedy(&e, &seq[seq.len() - 16..], 5));
}

#[test]
fn batched_steps_equal_single_sequences() {
    let e = engine("gqa-sharded", None);
    let x = expected("gqa-sharded");
    let seq = ids(&x.json["sequences"][0]["ids"]);
    let prompts: Vec<Vec<u32>> = vec![seq[..7].to_vec(), seq[..40].to_vec(), seq[3..19].to_vec()];
    let singles: Vec<Vec<u32>> = prompts.iter().map(|p| greedy(&e, p, 12)).collect();
    let mut jobs: Vec<Job> = prompts
        .iter()
        .map(|p| {
            let mut s = e.session();
            s.append(p);
            Job::new(
                s,
                GenParams {
                    max_new_tokens: 12,
                    ..GenParams::default()
                },
            )
            .unwrap()
        })
        .collect();
    while jobs.iter().any(|j| !j.is_done()) {
        let mut refs: Vec<&mut Job> = jobs.iter_mut().collect();
        e.step(&mut refs).unwrap();
    }
    let batched: Vec<Vec<u32>> = jobs.into_iter().map(|j| j.finish().0.tokens).collect();
    assert_eq!(batched, singles);
}

#[test]
fn half_precision_compute_is_close() {
    for (name, dt) in [("llama2-tiny", DType::BF16), ("codellama-tiny", DType::F16)] {
        let e32 = engine(name, None);
        let e16 = engine(name, Some(dt));
        let x = expected(name);
        let seq = ids(&x.json["sequences"][0]["ids"]);
        let a = all_logits(&e32, &seq);
        let b = all_logits(&e16, &seq);
        let r = rel(&b, &a);
        eprintln!("{name} computed in {dt:?}: rel {r:.2e} vs f32");
        assert!(r < 5e-2, "{name}: {r}");
    }
}

#[test]
fn a_half_precision_kv_cache_is_close_and_half_the_size() {
    let name = "llama2-tiny";
    let e32 = engine(name, None);
    let opts = LoadOptions {
        kv_dtype: Some(DType::F16),
        ..LoadOptions::default()
    };
    let e16 = load(&fixture(name), None, &opts).unwrap();
    let x = expected(name);
    let seq = ids(&x.json["sequences"][0]["ids"]);
    // Logits of every position, with the cache filled one token at a time.
    let stepwise = |e: &Engine| -> (Tensor, usize) {
        let mut cache = e.model.new_cache();
        let rows: Vec<Tensor> = seq
            .iter()
            .map(|t| {
                let mut steps = [Step {
                    cache: &mut cache,
                    tokens: std::slice::from_ref(t),
                    all_logits: false,
                }];
                e.model.forward(&mut steps).unwrap().remove(0)
            })
            .collect();
        (Tensor::stack(&rows, 0).unwrap(), cache.bytes())
    };
    let (a, bytes32) = stepwise(&e32);
    let (b, bytes16) = stepwise(&e16);
    let r = rel(&b, &a);
    eprintln!("f16 KV cache: rel {r:.2e} vs f32");
    assert!(r < 1e-2, "{r}");
    assert!(r > 0.0, "the cache was not stored in f16");
    assert_eq!(bytes16 * 2, bytes32);
    // And the reference logits, as with an f32 cache.
    assert!(rel(&a, &all_logits(&e32, &seq)) < 1e-4);
}

#[test]
fn loading_errors_are_clear() {
    let err = |p: &Path| {
        load(p, None, &LoadOptions::default())
            .err()
            .unwrap()
            .to_string()
    };
    assert!(err(Path::new("/nonexistent/model")).contains("no such directory"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(err(d).contains("config.json"));
    for f in std::fs::read_dir(fixture("gqa-sharded")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, d.join(f.file_name().unwrap())).unwrap();
    }
    let cfg = std::fs::read_to_string(d.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"intermediate_size\": 172", "\"intermediate_size\": 100"),
    )
    .unwrap();
    let e = mathcoder_engine::load_model(d, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("has shape") && e.contains("gate_proj"), "{e}");
    std::fs::remove_file(d.join("model-00002-of-00003.safetensors")).unwrap();
    let e = mathcoder_engine::load_model(d, &LoadOptions::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    // Token ids outside the vocabulary.
    let eng = engine("gqa-sharded", None);
    let mut s = eng.session();
    s.append(&[1, 5000]);
    assert!(eng.prefill_all(&mut s).is_err());
}

#[test]
fn the_rigged_protocol_fixture_decodes_as_transformers_does() {
    let x: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("lce-bigram").join("expected.json")).unwrap(),
    )
    .unwrap();
    let e = load(
        &fixture("lce-bigram"),
        Some(&fixture("llama2-tiny").join("tokenizer.json")),
        &LoadOptions::default(),
    )
    .unwrap();
    let prompt = ids(&x["ids"]);
    assert_eq!(
        e.tok.encode(x["prompt"].as_str().unwrap(), true).unwrap(),
        prompt
    );
    let got = greedy(&e, &prompt, 40);
    assert_eq!(got, ids(&x["greedy40"]));
    assert!(e
        .tok
        .decode(&got)
        .unwrap()
        .starts_with("<|text|>Compute it.<|endofblock|><|code|>print(6*7)<|endofblock|>"));
}

/// `LoadOptions::quantize`: a dense checkpoint's matrices quantized at load run on the
/// quantized kernels (the model says so) and stay close to the dense logits (Q8_0 within 3%,
/// Q4_0 within 25% of the largest logit; this fixture's bigram weights quantize almost
/// exactly); a width that does not fill whole blocks is refused.
#[test]
fn dense_checkpoints_quantized_at_load_stay_close() {
    use candle_core::quantized::GgmlDType;
    let opts = |q| LoadOptions {
        quantize: Some(q),
        ..LoadOptions::default()
    };
    // llama2-tiny: intermediate 88, so down_proj's rows do not fill blocks of 32.
    let err = load(&fixture("llama2-tiny"), None, &opts(GgmlDType::Q8_0))
        .err()
        .expect("88-wide rows cannot be quantized in blocks of 32");
    assert!(err.to_string().contains("do not fill"), "{err}");

    // lce-bigram (hidden 32, intermediate 32) fills whole blocks everywhere.
    let name = "lce-bigram";
    let dense = engine(name, None);
    let seq: Vec<u32> = (1..40).collect();
    let want = all_logits(&dense, &seq);
    for (q, bound) in [(GgmlDType::Q8_0, 0.03), (GgmlDType::Q4_0, 0.25)] {
        let e = load(&fixture(name), Some(&fixture("llama2-tiny")), &opts(q)).unwrap();
        assert!(
            e.model.weight_format.contains("quantized to"),
            "{}",
            e.model.weight_format
        );
        let got = all_logits(&e, &seq);
        let r = rel(&got, &want);
        eprintln!("{name} quantized to {q:?}: rel {r:.2e}");
        assert!(r < bound, "{q:?}: {r}");
    }
}
