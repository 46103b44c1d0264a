//! `mathcoder bench train`: training tokens/s of the trainer's step (forward, backward, gradient
//! clipping, AdamW) on the reference Llama at a given thread count, next to PyTorch
//! (transformers' `LlamaForCausalLM`, `scripts/bench-train-reference.py`) on the same shape,
//! batch and threads, with peak memory.
//!
//! Every measurement runs in a process of its own (so that peak RSS is its own), and ours and
//! PyTorch's alternate in back-to-back pairs, first one then the other, then the other way
//! round: on a shared machine only the ratio within a pair means much.
//!
//! With `--lora-rank N` the step is a LoRA run's (`mathcoder train --lora-rank N`): the model
//! frozen, an adapter on `--lora-targets` plus MathCoder's eight token rows trained; the
//! reference is then PEFT's `LoraConfig` with `trainable_token_indices` on the same model.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mathcoder_model::llama::nll;
use mathcoder_model::{Llama, ModelConfig};
use mathcoder_train::lora::{parse_targets, Adapter, LoraConfig};
use mathcoder_train::optim::{AdamW, AdamWParams};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

/// A model shape to measure (random weights).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shape {
    /// llama2.c's stories15M (hidden 288, 6 layers, 6 heads, FFN 768) with Llama-2's vocabulary
    /// and MathCoder's 8 tokens (32,008), tied embeddings: 15.2 M parameters.
    Llama15m,
    /// SmolLM2-135M (hidden 576, 30 layers, 9 heads, 3 key/value heads, FFN 1536, vocabulary
    /// 49,152 + 8, tied embeddings).
    Smollm2_135m,
}

impl Shape {
    /// The shape as a Hugging Face `config.json` (read by us and by transformers alike).
    fn hf_config(self) -> Value {
        let (vocab, hidden, ffn, layers, heads, kv, theta) = match self {
            Shape::Llama15m => (32_008, 288, 768, 6, 6, 6, 10_000.0),
            Shape::Smollm2_135m => (49_160, 576, 1536, 30, 9, 3, 100_000.0),
        };
        json!({
            "model_type": "llama",
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": ffn,
            "num_hidden_layers": layers,
            "num_attention_heads": heads,
            "num_key_value_heads": kv,
            "rms_norm_eps": 1e-5,
            "rope_theta": theta,
            "max_position_embeddings": 8192,
            "tie_word_embeddings": true,
            "bos_token_id": 1,
            "eos_token_id": 2,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Shape::Llama15m => "llama-15m",
            Shape::Smollm2_135m => "smollm2-135m",
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct TrainBenchArgs {
    /// Model shapes to measure.
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Shape::Llama15m, Shape::Smollm2_135m])]
    model: Vec<Shape>,
    /// CPU threads (ours: RAYON_NUM_THREADS; PyTorch: torch.set_num_threads).
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Tokens per row.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Rows per step.
    #[arg(long, default_value_t = 4)]
    micro_batch: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed steps per measurement.
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Back-to-back (ours, PyTorch) pairs per model, alternating which runs first.
    #[arg(long, default_value_t = 2)]
    pairs: usize,
    /// A Python with torch and transformers: measure PyTorch too.
    #[arg(long)]
    python: Option<PathBuf>,
    /// The reference driver.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench-train-reference.py"))]
    reference_script: PathBuf,
    /// Measure a LoRA run's step with this rank (the frozen model, an adapter and MathCoder's
    /// eight token rows trained); PyTorch's is PEFT's (needs `peft`).
    #[arg(long)]
    lora_rank: Option<usize>,
    /// LoRA's alpha.
    #[arg(long, default_value_t = mathcoder_train::lora::DEFAULT_ALPHA)]
    lora_alpha: f64,
    /// LoRA's target modules (`q_proj,v_proj,...` or `all-linear`).
    #[arg(long, default_value = "q_proj,v_proj")]
    lora_targets: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Internal: measure one model in this process.
    #[arg(long, hide = true)]
    child: bool,
}

fn status_kb(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Seconds spent in the parts of a step.
#[derive(Default)]
struct Parts {
    /// The hand-written pass (`Llama::loss_and_grads`): loss and gradients in one, counted
    /// in `backward`.
    hand: bool,
    forward: f64,
    backward: f64,
    optimizer: f64,
}

/// The gradients of the optimizer's variables, in its order; an error names a variable that got
/// none.
fn in_var_order(opt: &AdamW, grad: impl Fn(&Tensor) -> Option<Tensor>) -> Result<Vec<Tensor>> {
    opt.vars
        .iter()
        .map(|(n, v)| grad(v.as_tensor()).with_context(|| format!("{n} got no gradient")))
        .collect()
}

/// One training step as the trainer takes it: loss on every next token (token mean), backward,
/// clipping at 1.0, AdamW.
fn step(
    model: &Llama,
    opt: &mut AdamW,
    ids: &Tensor,
    targets: &Tensor,
    parts: &mut Parts,
) -> Result<f64> {
    let (b, t) = ids.dims2()?;
    if model.hand_backward_applies() {
        // The trainer's path on the CPU (`Llama::loss_and_grads`).
        let t0 = Instant::now();
        let at: Vec<u32> = (0..b)
            .flat_map(|r| (0..t - 1).map(move |i| (r * t + i) as u32))
            .collect();
        let target: Vec<u32> = targets.to_vec1()?;
        let n = at.len();
        let (sum, g) = model.loss_and_grads(ids, None, None, &at, &target, 1.0 / n as f32)?;
        let by_id: std::collections::HashMap<_, _> =
            g.into_iter().map(|(w, g)| (w.id(), g)).collect();
        let g = in_var_order(opt, |v| by_id.get(&v.id()).cloned())?;
        let t1 = Instant::now();
        opt.clip_and_step(&g, 1.0, 1e-5)?;
        let t2 = Instant::now();
        // One pass computes the loss and the gradients: it counts as the backward.
        parts.hand = true;
        parts.backward += (t1 - t0).as_secs_f64();
        parts.optimizer += (t2 - t1).as_secs_f64();
        return Ok(f64::from(sum) / n as f64);
    }
    let t0 = Instant::now();
    let h = model.hidden_states(ids, None, None)?;
    let h = h.narrow(1, 0, t - 1)?.reshape((b * (t - 1), ()))?;
    let loss = (nll(&model.logits(&h)?, targets)?.sum_all()? / (b * (t - 1)) as f64)?;
    let value = f64::from(loss.to_scalar::<f32>()?);
    let t1 = Instant::now();
    let grads = loss.backward()?;
    let g = in_var_order(opt, |v| grads.get(v).cloned())?;
    let t2 = Instant::now();
    opt.clip_and_step(&g, 1.0, 1e-5)?;
    let t3 = Instant::now();
    parts.forward += (t1 - t0).as_secs_f64();
    parts.backward += (t2 - t1).as_secs_f64();
    parts.optimizer += (t3 - t2).as_secs_f64();
    Ok(value)
}

fn child(a: &TrainBenchArgs) -> Result<i32> {
    // As `mathcoder train` runs.
    mathcoder_train::keep_freed_memory();
    let shape = a.model[0];
    let config = ModelConfig::from_hf_json(&shape.hf_config().to_string())?;
    let device = Device::Cpu;
    let vars = VarMap::new();
    let mut model = Llama::new(&config, VarBuilder::from_varmap(&vars, DType::F32, &device))?;
    let named: Vec<(String, Var)> = match lora_config(a)? {
        Some(l) => {
            // MathCoder's eight tokens are the vocabulary's last ids, as after `train` adds them.
            let ids = (config.vocab_size as u32 - 8..config.vocab_size as u32).collect();
            let adapter = Adapter::new(l, &config, ids, &vars, 42, &device)?;
            adapter.attach(&mut model)?;
            adapter.vars
        }
        None => {
            let mut named: Vec<(String, Var)> = vars
                .data()
                .lock()
                .map_err(|_| anyhow::anyhow!("the variable map's lock is poisoned"))?
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            named.sort_by(|x, y| x.0.cmp(&y.0));
            named
        }
    };
    let parameters: usize = named.iter().map(|(_, v)| v.elem_count()).sum();
    let mut opt = AdamW::new(named, AdamWParams::default())?;
    let (b, t) = (a.micro_batch, a.seq_len);
    // A linear congruential walk over the vocabulary: speed does not depend on the ids.
    let mut x: u64 = 12345;
    let ids: Vec<u32> = (0..b * t)
        .map(|_| {
            x = (x * 1_103_515_245 + 12345) % (1 << 31);
            (x % config.vocab_size as u64) as u32
        })
        .collect();
    let targets: Vec<u32> = (0..b)
        .flat_map(|r| ids[r * t + 1..(r + 1) * t].to_vec())
        .collect();
    let ids = Tensor::from_vec(ids, (b, t), &device)?;
    let targets = Tensor::from_vec(targets, b * (t - 1), &device)?;
    for _ in 0..a.warmup {
        step(&model, &mut opt, &ids, &targets, &mut Parts::default())?;
    }
    let t0 = Instant::now();
    let mut loss = 0.0;
    let mut parts = Parts::default();
    for _ in 0..a.steps {
        loss = step(&model, &mut opt, &ids, &targets, &mut parts)?;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{}",
        json!({
            "engine": "mathcoder (candle 0.11)",
            "parameters": parameters,
            "tok_s": (b * t * a.steps) as f64 / secs,
            "step_s": secs / a.steps as f64,
            "loss": loss,
            "backward_pass": if parts.hand { "hand-written" } else { "autograd" },
            "forward_s": (!parts.hand).then(|| parts.forward / a.steps as f64),
            "backward_s": parts.backward / a.steps as f64,
            "optimizer_s": parts.optimizer / a.steps as f64,
            "peak_rss_mb": status_kb("VmHWM:").map(|k| k / 1024.0),
        })
    );
    Ok(0)
}

/// The LoRA settings of `--lora-rank` (none without it).
fn lora_config(a: &TrainBenchArgs) -> Result<Option<LoraConfig>> {
    let Some(rank) = a.lora_rank else {
        return Ok(None);
    };
    let l = LoraConfig {
        rank,
        alpha: a.lora_alpha,
        targets: parse_targets(&a.lora_targets)?,
    };
    l.check()?;
    Ok(Some(l))
}

/// `--lora-rank`, `--lora-alpha`, `--lora-targets` for the child process.
fn lora_args(a: &TrainBenchArgs) -> Vec<String> {
    match a.lora_rank {
        Some(r) => vec![
            "--lora-rank".into(),
            r.to_string(),
            "--lora-alpha".into(),
            a.lora_alpha.to_string(),
            "--lora-targets".into(),
            a.lora_targets.clone(),
        ],
        None => Vec::new(),
    }
}

fn common_args(a: &TrainBenchArgs) -> [String; 4] {
    [
        a.seq_len.to_string(),
        a.micro_batch.to_string(),
        a.warmup.to_string(),
        a.steps.to_string(),
    ]
}

fn run_ours(a: &TrainBenchArgs, shape: Shape) -> Result<Value> {
    use clap::ValueEnum;
    let exe = std::env::current_exe()?;
    let name = shape
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let [seq, mb, warm, steps] = common_args(a);
    let out = std::process::Command::new(exe)
        .args(["train", "--child", "--model", &name])
        .args(["--seq-len", &seq, "--micro-batch", &mb])
        .args(["--warmup", &warm, "--steps", &steps])
        .args(lora_args(a))
        .env("RAYON_NUM_THREADS", a.threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("measuring {name} failed");
    }
    serde_json::from_slice(&out.stdout).context("reading the measurement")
}

fn run_reference(py: &std::path::Path, a: &TrainBenchArgs, shape: Shape) -> Result<Value> {
    let lora = match lora_config(a)? {
        Some(l) => {
            let vocab = shape.hf_config()["vocab_size"].as_u64().unwrap_or(8);
            vec![json!({
                "r": l.rank,
                "alpha": l.alpha,
                "targets": l.targets.iter().map(|w| mathcoder_train::lora::module_name(*w)).collect::<Vec<_>>(),
                "token_ids": (vocab - 8..vocab).collect::<Vec<_>>(),
            })
            .to_string()]
        }
        None => Vec::new(),
    };
    let out = std::process::Command::new(py)
        .arg(&a.reference_script)
        .arg(shape.hf_config().to_string())
        .arg(a.threads.to_string())
        .args(common_args(a))
        .args(lora)
        .env("OMP_NUM_THREADS", a.threads.to_string())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!("the PyTorch reference failed on {}", shape.name());
    }
    serde_json::from_slice(&out.stdout).context("reading the reference measurement")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn train(a: TrainBenchArgs) -> Result<i32> {
    if a.child {
        return child(&a);
    }
    if a.seq_len < 2 || a.micro_batch == 0 || a.steps == 0 || a.threads == 0 {
        bail!("--seq-len must be at least 2 and --micro-batch, --steps, --threads positive");
    }
    let mut rows = Vec::new();
    for &shape in &a.model {
        let mut pairs = Vec::new();
        for p in 0..a.pairs.max(1) {
            let torch_first = p % 2 == 1;
            let mut theirs = Value::Null;
            if torch_first {
                if let Some(py) = &a.python {
                    theirs = run_reference(py, &a, shape)?;
                }
            }
            let ours = run_ours(&a, shape)?;
            if !torch_first {
                if let Some(py) = &a.python {
                    theirs = run_reference(py, &a, shape)?;
                }
            }
            let ratio = ours["tok_s"].as_f64().unwrap_or(f64::NAN)
                / theirs["tok_s"].as_f64().unwrap_or(f64::NAN);
            if !a.json {
                let f = |k: &str| ours[k].as_f64().unwrap_or(f64::NAN);
                eprintln!(
                    "{} pair {}: ours {:.1} tok/s (step: {}, clip+AdamW {:.2} s), PyTorch {} tok/s{}",
                    shape.name(),
                    p + 1,
                    f("tok_s"),
                    if ours["forward_s"].is_null() {
                        format!("forward and backward by hand {:.2} s", f("backward_s"))
                    } else {
                        format!(
                            "forward {:.2} s, backward {:.2} s",
                            f("forward_s"),
                            f("backward_s")
                        )
                    },
                    f("optimizer_s"),
                    theirs["tok_s"]
                        .as_f64()
                        .map_or("-".into(), |x| format!("{x:.1}")),
                    if ratio.is_finite() {
                        format!(", ratio {ratio:.3}")
                    } else {
                        String::new()
                    }
                );
            }
            pairs.push(json!({"ours": ours, "pytorch": theirs, "ratio": ratio}));
        }
        let col = |side: &str, key: &str| -> Vec<f64> {
            pairs.iter().filter_map(|p| p[side][key].as_f64()).collect()
        };
        let ratios: Vec<f64> = pairs
            .iter()
            .filter_map(|p| p["ratio"].as_f64().filter(|r| r.is_finite()))
            .collect();
        rows.push(json!({
            "model": shape.name(),
            "parameters": pairs[0]["ours"]["parameters"],
            "ours_tok_s": median(col("ours", "tok_s")),
            "pytorch_tok_s": if a.python.is_some() { json!(median(col("pytorch", "tok_s"))) } else { Value::Null },
            "ratio_median": if ratios.is_empty() { Value::Null } else { json!(median(ratios)) },
            "ours_peak_rss_mb": median(col("ours", "peak_rss_mb")),
            "pytorch_peak_rss_mb": if a.python.is_some() { json!(median(col("pytorch", "peak_rss_mb"))) } else { Value::Null },
            "pytorch": pairs[0]["pytorch"]["engine"],
            "pairs": pairs,
        }));
    }
    let report = json!({
        "lora": lora_config(&a)?.map(|l| l.describe()),
        "threads": a.threads,
        "seq_len": a.seq_len,
        "micro_batch": a.micro_batch,
        "steps": a.steps,
        "warmup": a.warmup,
        "rows": rows,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "training step (forward, backward, clip, AdamW{}), f32, {} threads, {} rows x {} tokens, {} timed steps after {} warm-up, medians of {} alternating pairs",
        lora_config(&a)?.map_or(String::new(), |l| format!("; LoRA {}", l.describe())),
        a.threads, a.micro_batch, a.seq_len, a.steps, a.warmup, a.pairs.max(1)
    );
    println!(
        "{:<14} {:>8} {:>11} {:>13} {:>7} {:>12} {:>14}",
        "model",
        "params",
        "ours tok/s",
        "PyTorch tok/s",
        "ratio",
        "ours peak MB",
        "PyTorch peak MB"
    );
    let num = |v: &Value, p: usize| v.as_f64().map_or("-".into(), |x| format!("{x:.p$}"));
    for r in &rows {
        println!(
            "{:<14} {:>7.1}M {:>11} {:>13} {:>7} {:>12} {:>14}",
            r["model"].as_str().unwrap_or("?"),
            r["parameters"].as_f64().unwrap_or(0.0) / 1e6,
            num(&r["ours_tok_s"], 1),
            num(&r["pytorch_tok_s"], 1),
            num(&r["ratio_median"], 3),
            num(&r["ours_peak_rss_mb"], 0),
            num(&r["pytorch_peak_rss_mb"], 0),
        );
    }
    if let Some(e) = rows.first().and_then(|r| r["pytorch"].as_str()) {
        println!("reference: {e}");
    }
    Ok(0)
}
