//! A ready cluster launch for the `trl` export: accelerate with DeepSpeed ZeRO-3 and TRL's SFT
//! script, with the paper's hyperparameters (§4: lr 2e-5, cosine, 50 warm-up steps, 3 epochs,
//! global batch 128 sequences, 2,048 tokens, bf16).
//!
//! Four text files in one folder: `ds_zero3.json` (DeepSpeed; `"auto"` values are filled in by
//! transformers' Trainer from the TRL arguments), `accelerate_zero3.yaml` (points at it),
//! `sft.yaml` (`trl.scripts.sft`'s arguments: the exported rows are pre-tokenised, so TRL skips
//! its own tokenisation; `padding_free` with flash attention keeps the packed instances apart
//! through the rows' `seq_lengths`) and `launch.sh` (sets gradient accumulation so that
//! GPUs x 1 row x accumulation = the global batch). The YAML files are flat `key: value` lines
//! (one nested block in the accelerate file) so that [`parse_simple_yaml`] reads them back.

use std::path::{Path, PathBuf};

use crate::{io_err, TrainError};

/// What the launch files say.
#[derive(Clone, Debug)]
pub struct LaunchSettings {
    /// The base checkpoint (with MathCoder's tokens in its tokenizer and embeddings).
    pub model: PathBuf,
    /// The folder holding the `trl` export (and no other data file: `datasets` loads every JSON
    /// file of a folder).
    pub data_dir: PathBuf,
    /// Where TRL writes its checkpoints.
    pub output_dir: PathBuf,
    pub lr: f64,
    pub warmup_steps: u64,
    pub epochs: u64,
    pub global_batch: usize,
    pub seq_len: usize,
    pub max_grad_norm: f64,
    pub weight_decay: f64,
    pub seed: u64,
    /// GPUs `launch.sh` assumes when `NUM_GPUS` is not set.
    pub gpus: usize,
}

pub const DEEPSPEED_FILE: &str = "ds_zero3.json";
pub const ACCELERATE_FILE: &str = "accelerate_zero3.yaml";
pub const SFT_FILE: &str = "sft.yaml";
pub const LAUNCH_FILE: &str = "launch.sh";

fn deepspeed_config() -> serde_json::Value {
    serde_json::json!({
        "bf16": { "enabled": "auto" },
        "zero_optimization": {
            "stage": 3,
            "overlap_comm": true,
            "contiguous_gradients": true,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": true
        },
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 1_000_000,
        "wall_clock_breakdown": false
    })
}

fn accelerate_config(gpus: usize) -> String {
    format!(
        "# accelerate + DeepSpeed ZeRO-3 (written by `mathcoder export --format trl --launch`)
compute_environment: LOCAL_MACHINE
distributed_type: DEEPSPEED
deepspeed_config:
  deepspeed_config_file: {DEEPSPEED_FILE}
  zero3_init_flag: true
machine_rank: 0
main_training_function: main
num_machines: 1
num_processes: {gpus}
rdzv_backend: static
same_network: true
use_cpu: false
"
    )
}

/// A YAML scalar for a path: double-quoted, with JSON escapes (a subset of YAML's).
fn quoted(p: &Path) -> Result<String, TrainError> {
    let s = p
        .to_str()
        .ok_or_else(|| TrainError::Config(format!("{} is not UTF-8", p.display())))?;
    Ok(serde_json::Value::String(s.to_string()).to_string())
}

/// A float as YAML 1.1 (PyYAML) reads it as a float: a dot in the mantissa and a signed
/// exponent (`2.0e-5`, `1.0`; it reads `2e-5` as a string).
fn yaml_float(x: f64) -> String {
    if x == x.trunc() && x.abs() < 1e15 {
        return format!("{x:.1}");
    }
    let s = format!("{x:e}");
    let Some((m, e)) = s.split_once('e') else {
        return s;
    };
    let m = if m.contains('.') {
        m.to_string()
    } else {
        format!("{m}.0")
    };
    let e = if e.starts_with('-') {
        e.to_string()
    } else {
        format!("+{e}")
    };
    format!("{m}e{e}")
}

fn sft_config(s: &LaunchSettings) -> Result<String, TrainError> {
    let accumulation = (s.global_batch / s.gpus.max(1)).max(1);
    Ok(format!(
        "# TRL SFT in MathCoder's recipe (paper section 4) on `mathcoder export --format trl` rows.
# Rows are pre-tokenised: input_ids, labels (-100 = no loss: prompt and executions),
# seq_lengths (the packed instances; padding_free + flash attention keep them apart).
model_name_or_path: {model}
attn_implementation: flash_attention_2
dataset_name: {data}
dataset_train_split: train
output_dir: {out}
learning_rate: {lr}
lr_scheduler_type: cosine
warmup_steps: {warmup}
num_train_epochs: {epochs}
per_device_train_batch_size: 1
gradient_accumulation_steps: {accumulation}
max_length: {seq_len}
packing: false
padding_free: true
completion_only_loss: false
assistant_only_loss: false
bf16: true
gradient_checkpointing: true
max_grad_norm: {clip}
weight_decay: {wd}
seed: {seed}
logging_steps: 1
save_strategy: epoch
report_to: none
",
        model = quoted(&s.model)?,
        data = quoted(&s.data_dir)?,
        out = quoted(&s.output_dir)?,
        lr = yaml_float(s.lr),
        warmup = s.warmup_steps,
        epochs = s.epochs,
        seq_len = s.seq_len,
        clip = yaml_float(s.max_grad_norm),
        wd = yaml_float(s.weight_decay),
        seed = s.seed,
    ))
}

fn launch_script(s: &LaunchSettings) -> String {
    format!(
        r#"#!/usr/bin/env bash
# MathCoder SFT with TRL on accelerate + DeepSpeed ZeRO-3 (written by `mathcoder export`).
# Needs: torch, transformers, trl, accelerate, deepspeed, flash-attn. NUM_GPUS defaults to {gpus}.
# Extra arguments go to TRL (e.g. --num_train_epochs 1).
set -euo pipefail
cd "$(dirname "$0")"
NUM_GPUS="${{NUM_GPUS:-{gpus}}}"
GLOBAL_BATCH={global}
if (( GLOBAL_BATCH % NUM_GPUS != 0 )); then
  echo "the global batch ($GLOBAL_BATCH sequences) must be a multiple of NUM_GPUS ($NUM_GPUS)" >&2
  exit 2
fi
exec accelerate launch --config_file {ACCELERATE_FILE} --num_processes "$NUM_GPUS" \
  -m trl.scripts.sft --config {SFT_FILE} \
  --gradient_accumulation_steps "$(( GLOBAL_BATCH / NUM_GPUS ))" "$@"
"#,
        gpus = s.gpus,
        global = s.global_batch,
    )
}

/// Writes the four launch files into `dir` (created if missing); returns their paths.
pub fn write_launch(dir: &Path, s: &LaunchSettings) -> Result<Vec<PathBuf>, TrainError> {
    if s.gpus == 0 || !s.global_batch.is_multiple_of(s.gpus) {
        return Err(TrainError::Config(format!(
            "the global batch ({}) must be a multiple of the GPU count ({})",
            s.global_batch, s.gpus
        )));
    }
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ds = serde_json::to_string_pretty(&deepspeed_config()).map_err(|e| TrainError::Io {
        path: dir.join(DEEPSPEED_FILE),
        source: e.into(),
    })? + "\n";
    let files = [
        (DEEPSPEED_FILE, ds),
        (ACCELERATE_FILE, accelerate_config(s.gpus)),
        (SFT_FILE, sft_config(s)?),
        (LAUNCH_FILE, launch_script(s)),
    ];
    let mut out = Vec::new();
    for (name, text) in files {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io_err(&p))?;
        out.push(p);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(LAUNCH_FILE);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).map_err(io_err(&p))?;
    }
    Ok(out)
}

/// Reads the flat YAML these files use: `key: value` lines, `#` comments, blank lines, and
/// one level of nesting (two-space indent under `key:`), as `parent.key`. Anything else is an
/// error. Values are returned as written (quoted ones unquoted as JSON strings).
pub fn parse_simple_yaml(text: &str) -> Result<Vec<(String, String)>, TrainError> {
    let mut out = Vec::new();
    let mut parent: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let bad = || TrainError::Config(format!("YAML line {}: {line:?}", i + 1));
        let trimmed = line.trim_end();
        if trimmed.trim_start().is_empty() || trimmed.trim_start().starts_with('#') {
            continue;
        }
        let (indented, body) = match trimmed.strip_prefix("  ") {
            Some(b) => (true, b),
            None => (false, trimmed),
        };
        if body.starts_with(' ') {
            return Err(bad());
        }
        let (key, value) = body.split_once(':').ok_or_else(bad)?;
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad());
        }
        let value = value.trim();
        let key = match (indented, &parent) {
            (true, Some(p)) => format!("{p}.{key}"),
            (true, None) => return Err(bad()),
            (false, _) => {
                parent = None;
                key.to_string()
            }
        };
        if value.is_empty() {
            if indented {
                return Err(bad());
            }
            parent = Some(key);
            continue;
        }
        let value = if value.starts_with('"') {
            serde_json::from_str::<String>(value).map_err(|_| bad())?
        } else {
            value.to_string()
        };
        out.push((key, value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LaunchSettings {
        LaunchSettings {
            model: "/models/llama-2-7b-mathcoder".into(),
            data_dir: "/data/trl \"x\"".into(),
            output_dir: "runs/trl".into(),
            lr: 2e-5,
            warmup_steps: 50,
            epochs: 3,
            global_batch: 128,
            seq_len: 2048,
            max_grad_norm: 1.0,
            weight_decay: 0.0,
            seed: 42,
            gpus: 8,
        }
    }

    #[test]
    fn launch_files_parse_and_carry_the_recipe() {
        let tmp = tempfile::tempdir().unwrap();
        let files = write_launch(tmp.path(), &settings()).unwrap();
        assert_eq!(files.len(), 4);
        let ds: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[0]).unwrap()).unwrap();
        assert_eq!(ds["zero_optimization"]["stage"], 3);
        let acc = parse_simple_yaml(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
        let get = |kv: &[(String, String)], k: &str| {
            kv.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone())
        };
        assert_eq!(get(&acc, "distributed_type").as_deref(), Some("DEEPSPEED"));
        assert_eq!(
            get(&acc, "deepspeed_config.deepspeed_config_file").as_deref(),
            Some(DEEPSPEED_FILE)
        );
        assert_eq!(get(&acc, "num_processes").as_deref(), Some("8"));
        let sft = parse_simple_yaml(&std::fs::read_to_string(&files[2]).unwrap()).unwrap();
        for (k, v) in [
            ("learning_rate", "2.0e-5"),
            ("lr_scheduler_type", "cosine"),
            ("warmup_steps", "50"),
            ("num_train_epochs", "3"),
            ("gradient_accumulation_steps", "16"),
            ("max_length", "2048"),
            ("padding_free", "true"),
            ("bf16", "true"),
            ("dataset_name", "/data/trl \"x\""),
        ] {
            assert_eq!(get(&sft, k).as_deref(), Some(v), "{k}");
        }
        let sh = std::fs::read_to_string(&files[3]).unwrap();
        assert!(sh.starts_with("#!/usr/bin/env bash") && sh.contains("GLOBAL_BATCH=128"));
        assert!(sh.contains(ACCELERATE_FILE) && sh.contains(SFT_FILE));
    }

    #[test]
    fn floats_have_a_dot() {
        assert_eq!(yaml_float(2e-5), "2.0e-5");
        assert_eq!(yaml_float(1.0), "1.0");
        assert_eq!(yaml_float(1.5e-5), "1.5e-5");
        assert_eq!(yaml_float(0.0), "0.0");
        assert_eq!(yaml_float(0.1), "1.0e-1");
    }

    #[test]
    fn a_batch_that_does_not_split_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let s = LaunchSettings {
            gpus: 3,
            ..settings()
        };
        assert!(matches!(
            write_launch(tmp.path(), &s),
            Err(TrainError::Config(_))
        ));
    }

    #[test]
    fn simple_yaml_refuses_what_it_cannot_read() {
        assert!(parse_simple_yaml("a: 1\n  b: 2\n").is_err());
        assert!(parse_simple_yaml("- a\n").is_err());
        assert!(parse_simple_yaml("a: \"x\n").is_err());
        assert_eq!(
            parse_simple_yaml("# c\na:\n  b: 1\nc: x\n").unwrap(),
            [
                ("a.b".to_string(), "1".to_string()),
                ("c".into(), "x".into())
            ]
        );
    }
}
