//! The native engine end to end through the binary, on the committed fixtures: `generate`, and
//! `solve`/`eval --backend native` with a rigged checkpoint (`lce-bigram`) whose greedy output
//! is a MathCoder text block and then `print(6*7)` code blocks, executed in the real sandbox.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

mod common;

use common::bin;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../engine/tests/fixtures")
}

fn native(cmd: &mut Command) -> &mut Command {
    cmd.args(["--backend", "native", "--model"])
        .arg(fixtures().join("lce-bigram"))
        .arg("--tokenizer")
        .arg(fixtures().join("llama2-tiny/tokenizer.json"))
}

fn run_json(cmd: &mut Command) -> Value {
    serde_json::from_str(&common::stdout_of(cmd)).unwrap()
}

#[test]
fn generate_prints_ids_and_text() {
    let v = run_json(
        bin()
            .args(["generate", "--model"])
            .arg(fixtures().join("lce-bigram"))
            .arg("--tokenizer")
            .arg(fixtures().join("llama2-tiny/tokenizer.json"))
            .args([
                "--prompt",
                "<|assistant|>",
                "--max-new-tokens",
                "20",
                "--stop",
                "<|endofblock|>",
                "--format",
                "json",
            ]),
    );
    assert_eq!(v["prompt_tokens"], serde_json::json!([1, 32002]));
    assert_eq!(v["text"], "<|text|>Compute it.<|endofblock|>");
    assert_eq!(v["finish"], "stop");
    assert_eq!(v["tokens"].as_array().unwrap().last().unwrap(), 32007);
}

#[test]
fn a_model_repeating_its_code_block_stops_at_the_third_copy() {
    let v = run_json(native(bin().args(["solve", "What is 6*7?", "--json"])));
    let o = &v["outcome"];
    assert_eq!(o["stop"]["kind"], "repetition");
    assert_eq!(o["blocks"].as_array().unwrap().len(), 1 + 3 * 2);
    assert_eq!(v["answer"], "42");
}

/// `data distill --teacher lce --model DIR` (no `--backend`): the local checkpoint runs on the
/// native engine, as for `solve` and `eval` (it used to be sent to a TGI server at the default
/// endpoint); its three greedy samples agree on 42.
#[test]
fn distill_with_a_local_model_runs_it_natively() {
    let dir = tempfile::tempdir().unwrap();
    let text = common::stdout_of(
        bin()
            .args(["data", "distill", "--problems", "svamp", "--limit", "1"])
            .args(["--teacher", "lce", "--samples", "3", "--model"])
            .arg(fixtures().join("lce-bigram"))
            .arg("--tokenizer")
            .arg(fixtures().join("llama2-tiny/tokenizer.json"))
            .arg("--out")
            .arg(dir.path()),
    );
    assert!(text.contains("3 of 3 answers agree on 1"), "{text}");
    let data = std::fs::read_to_string(dir.path().join("data.jsonl")).unwrap();
    assert_eq!(data.lines().count(), 1);
    assert!(data.contains("print(6*7)"), "{data}");
}

#[test]
fn solve_runs_text_code_execution_rounds_on_the_kv_cache() {
    let v = run_json(native(bin().args([
        "solve",
        "What is 6*7?",
        "--json",
        "--max-blocks",
        "5",
        // The fixture repeats its code block: let it run to the block limit.
        "--no-repetition-stop",
    ])));
    let o = &v["outcome"];
    let blocks: Vec<(String, String)> = o["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap().to_string(),
                b["content"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let mut want = vec![("text".to_string(), "Compute it.".to_string())];
    for _ in 0..4 {
        want.push(("code".into(), "print(6*7)".into()));
        want.push(("execution".into(), "42".into()));
    }
    assert_eq!(blocks, want);
    assert_eq!(o["stop"]["kind"], "block_limit");
    assert_eq!(v["answer"], "42");
    let rounds = o["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 5);
    // Every round after the first continues the kept session: the previous prompt and all
    // but the last generated token (never computed yet) are cached, and nothing is computed
    // twice.
    let n = |r: &Value, k: &str| r[k].as_u64().unwrap();
    assert_eq!(n(&rounds[0], "cached_prompt_tokens"), 0);
    for i in 1..rounds.len() {
        let (p, r) = (&rounds[i - 1], &rounds[i]);
        assert_eq!(n(r, "recomputed_prompt_tokens"), 0, "round {i}");
        assert_eq!(
            n(r, "cached_prompt_tokens"),
            n(p, "prompt_tokens") + n(p, "generated_tokens") - 1,
            "round {i}"
        );
    }
}

#[test]
fn token_limits_and_eval_work_with_the_native_backend() {
    // 3 new tokens per call: the text block is cut and continued in the next call.
    let v = run_json(native(bin().args([
        "solve",
        "What is 6*7?",
        "--json",
        "--max-blocks",
        "2",
        "--max-new-tokens",
        "3",
    ])));
    let rounds = v["outcome"]["rounds"].as_array().unwrap();
    assert_eq!(rounds[0]["finish"], "length");
    // The continuation keeps the space that starts its first word.
    let b = &v["outcome"]["blocks"];
    assert_eq!(
        format!(
            "{}{}",
            b[0]["content"].as_str().unwrap(),
            b[1]["content"].as_str().unwrap()
        ),
        "Compute it."
    );
    assert!(rounds.iter().all(|r| r["recomputed_prompt_tokens"] == 0));
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = bin();
    cmd.arg("eval");
    let out = native(&mut cmd)
        .args([
            "--dataset",
            "gsm8k",
            "--limit",
            "3",
            "--max-blocks",
            "3",
            "--concurrency",
            "3",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = std::fs::read_to_string(dir.path().join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["mathcoder"]["stop"], "block_limit");
        assert_eq!(l["completion"], "42");
        assert!(l["mathcoder"]["backend"]
            .as_str()
            .unwrap()
            .starts_with("native lce-bigram"));
    }
}

#[test]
fn chat_mode_needs_a_chat_template() {
    // The rigged checkpoint has MathCoder's tokens (so `lce` by default) and no chat template.
    let out = native(bin().args(["solve", "What is 6*7?", "--mode", "chat"]))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no chat template") && err.contains("--chat-template chatml|llama2"),
        "{err}"
    );
}

/// A real instruct model (Qwen2.5-Coder-0.5B-Instruct, `Q4_K_M`; see
/// `../shared/docs/small-models.md`) in chat mode: its own chat template from the GGUF, a
/// ```python fence run in the sandbox, the output fed back, a final `\boxed{}` answer. Skipped
/// when the model is absent; minutes in a debug build, so run it as
/// `cargo test --release -p mathcoder --test native -- --ignored qwen`.
#[test]
#[ignore = "needs the real model; slow in a debug build (see the doc comment)"]
fn qwen_solves_a_gsm8k_problem_in_chat_mode() {
    let model = mathcoder_engine::models_dir().join("qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf");
    if !model.exists() {
        eprintln!("skipped: {} is absent", model.display());
        return;
    }
    let v = run_json(
        bin()
            .args([
                "solve",
                "Natalia sold clips to 48 of her friends in April, and then she sold half as many \
                 clips in May. How many clips did Natalia sell altogether in April and May?",
                "--json",
                "--backend",
                "native",
                "--model",
            ])
            .arg(&model),
    );
    assert_eq!(v["outcome"]["stop"]["kind"], "end_of_message", "{v}");
    let blocks = v["outcome"]["blocks"].as_array().unwrap();
    let kind = |k: &str| blocks.iter().filter(|b| b["kind"] == k).count();
    assert!(
        kind("code") >= 1 && kind("execution") == kind("code"),
        "{v}"
    );
    let answer = v["answer"].as_str().unwrap();
    assert!(answer == "72" || answer == "72.0", "{v}");
}
