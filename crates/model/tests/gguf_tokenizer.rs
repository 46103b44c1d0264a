//! Token ids of real GGUF BPE vocabularies (SmolLM2, Qwen2.5-Coder) against llama.cpp's, on a
//! fixed corpus (`fixtures/gguf-bpe-ids.json`, made by `scripts/gguf-tokenizer-ids.py`). The
//! models are looked for in [`mathcoder_model::models_dir`]; the test skips those that are absent.

use candle_core::quantized::gguf_file;
use mathcoder_model::Tok;
use serde_json::Value;
use std::path::Path;

#[test]
fn gguf_bpe_ids_equal_llama_cpp() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf-bpe-ids.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let dir = mathcoder_model::models_dir();
    let mut ran = 0;
    for (name, m) in v["models"].as_object().unwrap() {
        let path = dir.join(name);
        if !path.exists() {
            eprintln!("skipped {name}: not in {}", dir.display());
            continue;
        }
        let mut f = std::fs::File::open(&path).unwrap();
        let ct = gguf_file::Content::read(&mut f).unwrap();
        let tok = Tok::from_gguf(&ct).unwrap();
        for case in m["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tok.encode(text, false).unwrap();
            assert_eq!(got, want, "{name}: {text:?}");
            // Decoding gives the text back (special tokens shown as themselves).
            assert_eq!(tok.decode(&got).unwrap(), text, "{name}: decode");
        }
        ran += 1;
    }
    eprintln!("{ran} model(s) checked");
}
