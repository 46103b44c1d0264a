//! `mathcoder train` and `mathcoder export` end to end on the engine's tiny checkpoint and the
//! train crate's record fixture.

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mathcoder"))
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn common(cmd: &mut Command) -> &mut Command {
    cmd.arg("--model")
        .arg(root().join("engine/tests/fixtures/llama2-tiny"))
        .arg("--data")
        .arg(root().join("train/tests/fixtures/svamp-16.jsonl"))
        .args(["--seq-len", "512", "--packing", "isolated", "--seed", "3"])
}

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    err
}

#[test]
fn export_trl_then_train_two_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let trl = tmp.path().join("trl.jsonl");
    let err = ok(common(
        bin().args(["export", "--format", "trl", "--out"]).arg(&trl),
    ));
    assert!(err.contains("16 records -> 16 instances"), "{err}");
    let lines: Vec<Value> = std::fs::read_to_string(&trl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!lines.is_empty() && lines.len() < 16);
    let mut instances = 0;
    for l in &lines {
        let ids = l["input_ids"].as_array().unwrap();
        let labels = l["labels"].as_array().unwrap();
        let pos = l["position_ids"].as_array().unwrap();
        assert!(ids.len() <= 512 && ids.len() == labels.len() && ids.len() == pos.len());
        for (i, p) in pos.iter().enumerate() {
            if p == 0 {
                instances += 1;
                assert_eq!(ids[i], 1, "an instance starts with <s>");
                assert_eq!(labels[i], -100);
            } else {
                assert_eq!(p.as_u64().unwrap(), pos[i - 1].as_u64().unwrap() + 1);
            }
            assert!(labels[i] == -100 || labels[i] == ids[i]);
        }
    }
    assert_eq!(instances, 16);

    let ax = tmp.path().join("axolotl.jsonl");
    ok(common(
        bin()
            .args(["export", "--format", "axolotl", "--out"])
            .arg(&ax),
    ));
    let convs: Vec<Value> = std::fs::read_to_string(&ax)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(convs.len(), 16);
    for c in &convs {
        let segs = c["segments"].as_array().unwrap();
        assert_eq!(segs[0]["label"], false);
        assert!(segs[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("<s><|system|>"));
        assert!(segs.iter().any(|s| s["label"] == true));
        for s in segs.iter().filter(|s| s["label"] == false).skip(1) {
            assert!(s["text"].as_str().unwrap().starts_with("<|execution|>"));
        }
    }

    let lf = tmp.path().join("mathcoder-sft.jsonl");
    ok(common(
        bin()
            .args(["export", "--format", "llama-factory", "--out"])
            .arg(&lf),
    ));
    let lf_convs: Vec<Value> = std::fs::read_to_string(&lf)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lf_convs.len(), 16);
    for (c, ax) in lf_convs.iter().zip(&convs) {
        let turns = c["conversations"].as_array().unwrap();
        assert_eq!(turns[0]["from"], "human");
        assert_eq!(turns.last().unwrap()["from"], "gpt");
        for (i, t) in turns.iter().enumerate().skip(1) {
            let expect = if i % 2 == 1 { "gpt" } else { "observation" };
            assert_eq!(t["from"], expect);
        }
        // The same text and the same trained spans as the axolotl export, without its `<s>`.
        let segs = ax["segments"].as_array().unwrap();
        assert_eq!(segs.len(), turns.len());
        for (s, t) in segs.iter().zip(turns) {
            assert_eq!(s["label"] == true, t["from"] == "gpt");
        }
        assert_eq!(
            format!("<s>{}", turns[0]["value"].as_str().unwrap()),
            segs[0]["text"].as_str().unwrap()
        );
    }
    let info: Value = serde_json::from_str(
        &std::fs::read_to_string(tmp.path().join("dataset_info.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(info["mathcoder-sft"]["file_name"], "mathcoder-sft.jsonl");
    assert_eq!(info["mathcoder-sft"]["formatting"], "sharegpt");

    // The TRL rows alone in their folder, with a launch beside.
    let trl_dir = tmp.path().join("trl");
    std::fs::create_dir(&trl_dir).unwrap();
    let launch = tmp.path().join("launch");
    let err = ok(common(
        bin()
            .args(["export", "--format", "trl", "--out"])
            .arg(trl_dir.join("rows.jsonl"))
            .arg("--launch")
            .arg(&launch)
            .args(["--gpus", "4"]),
    ));
    assert!(!err.contains("warning: "), "{err}");
    let sft = std::fs::read_to_string(launch.join("sft.yaml")).unwrap();
    let sft = mathcoder_train::launch::parse_simple_yaml(&sft).unwrap();
    let get = |k: &str| sft.iter().find(|(a, _)| a == k).unwrap().1.clone();
    assert_eq!(get("gradient_accumulation_steps"), "32");
    assert_eq!(get("max_length"), "512");
    assert_eq!(get("learning_rate"), "2.0e-5");
    assert_eq!(
        std::path::PathBuf::from(get("dataset_name")),
        std::path::absolute(&trl_dir).unwrap()
    );
    let ds: Value =
        serde_json::from_str(&std::fs::read_to_string(launch.join("ds_zero3.json")).unwrap())
            .unwrap();
    assert_eq!(ds["zero_optimization"]["stage"], 3);
    assert!(launch.join("launch.sh").exists() && launch.join("accelerate_zero3.yaml").exists());
    let row: Value = serde_json::from_str(
        std::fs::read_to_string(trl_dir.join("rows.jsonl"))
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let lens: u64 = row["seq_lengths"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(lens as usize, row["input_ids"].as_array().unwrap().len());

    let out = bin()
        .arg("inspect")
        .arg("--model")
        .arg(root().join("engine/tests/fixtures/llama2-tiny"))
        .arg("--data")
        .arg(root().join("train/tests/fixtures/svamp-16.jsonl"))
        .args(["--index", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert!(
        shown.starts_with("[[<s>") && !shown.contains('\x1b'),
        "{shown}"
    );
    assert!(shown.contains("<|assistant|>]]"), "{shown}");
    let counts = shown.lines().last().unwrap();
    assert!(
        counts.starts_with("line 3: ") && counts.contains(" trained, "),
        "{counts}"
    );

    let out = tmp.path().join("run");
    ok(common(bin().arg("train")).arg("--out").arg(&out).args([
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--global-batch",
        "2",
        "--micro-batch",
        "1",
        "--max-steps",
        "2",
        "--threads",
        "2",
    ]));
    let log: Vec<Value> = std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(log.len(), 2);
    for key in ["step", "loss", "lr", "tokens", "grad_norm", "seconds"] {
        assert!(log[1].get(key).is_some(), "{key}");
    }
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "trainer_state.json",
    ] {
        assert!(out.join("checkpoint-2").join(f).exists(), "{f}");
    }
}

#[test]
fn lora_train_then_prepare_model_merges_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("lora");
    let steps = [
        "--lr",
        "1e-2",
        "--warmup-steps",
        "1",
        "--global-batch",
        "2",
        "--max-steps",
        "2",
        "--threads",
        "2",
    ];
    let err = ok(common(bin().arg("train"))
        .arg("--out")
        .arg(&out)
        .args(steps)
        .args(["--lora-rank", "2", "--lora-targets", "q_proj,down_proj"]));
    assert!(
        err.contains("LoRA r=2 alpha=8 targets=q_proj,down_proj"),
        "{err}"
    );
    let ck = out.join("checkpoint-2");
    for f in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
        assert!(ck.join(f).exists(), "{f}");
    }
    assert!(out.join("merged/model.safetensors").exists());
    assert!(std::fs::read_to_string(out.join("loss.svg"))
        .unwrap()
        .contains("<polyline"));

    // prepare-model merges the checkpoint into the base: the same weights as OUT/merged.
    let merged = tmp.path().join("merged");
    let err = ok(bin()
        .arg("prepare-model")
        .arg("--model")
        .arg(root().join("engine/tests/fixtures/llama2-tiny"))
        .arg("--adapter")
        .arg(&ck)
        .arg("--out")
        .arg(&merged));
    assert!(err.contains("merged"), "{err}");
    assert_eq!(
        std::fs::read(merged.join("model.safetensors")).unwrap(),
        std::fs::read(out.join("merged/model.safetensors")).unwrap()
    );

    // Clear refusals.
    let bad = common(bin().arg("train"))
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .args(["--lora-rank", "2", "--lora-targets", "q_proj,norm"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown module \"norm\""));
    let bad = common(bin().arg("train"))
        .arg("--out")
        .arg(tmp.path().join("bad"))
        .args(["--lora-alpha", "4"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
