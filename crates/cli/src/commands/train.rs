//! `mathcoder train` and `mathcoder export`: argument parsing and progress only; the work is
//! `mathcoder_train`'s.

use anyhow::{bail, Result};
use mathcoder_cli::args::TrainDataArgs;
use mathcoder_train::export::{
    first_epoch, write_axolotl, write_dataset_info, write_llama_factory, write_trl,
};
use mathcoder_train::tokenize::{Dataset, TrainTokenizer};
use mathcoder_train::trainer::prepare;
use mathcoder_train::{LoraConfig, TrainConfig, Trainer};
use std::path::PathBuf;

fn defaults() -> TrainConfig {
    TrainConfig::default()
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: TrainDataArgs,
    /// Where log.jsonl and the checkpoints go.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
    /// Peak learning rate.
    #[arg(long, default_value_t = defaults().lr)]
    lr: f64,
    #[arg(long, default_value_t = defaults().warmup_steps)]
    warmup_steps: u64,
    #[arg(long, default_value_t = defaults().epochs)]
    epochs: u64,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = defaults().global_batch)]
    global_batch: usize,
    /// Sequences per forward/backward pass (gradients are accumulated to --global-batch).
    #[arg(long, default_value_t = defaults().micro_batch)]
    micro_batch: usize,
    /// Optimizer steps (the schedule's length); default: --epochs over the data.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Gradient-norm clipping.
    #[arg(long, default_value_t = defaults().max_grad_norm)]
    max_grad_norm: f64,
    #[arg(long, default_value_t = defaults().adamw.weight_decay)]
    weight_decay: f64,
    /// Write a checkpoint every N steps (OUT/checkpoint-N).
    #[arg(long)]
    save_every: Option<u64>,
    /// Stop after step N with a checkpoint, as an interrupted run (the schedule stays the whole run's).
    #[arg(long)]
    stop_after: Option<u64>,
    /// Continue the run a checkpoint of it was written by (weights, optimizer, data position).
    #[arg(long, value_name = "CHECKPOINT")]
    resume: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Train a LoRA adapter of this rank on the frozen model (plus MathCoder's token rows)
    /// instead of every weight; checkpoints hold the adapter (PEFT layout), OUT/merged the
    /// merged model at the end.
    #[arg(long, value_name = "N")]
    lora_rank: Option<usize>,
    /// LoRA scaling numerator (scale = alpha / rank); PEFT's default.
    #[arg(long, value_name = "F", default_value_t = mathcoder_train::lora::DEFAULT_ALPHA, requires = "lora_rank")]
    lora_alpha: f64,
    /// Projections LoRA adapts, comma-separated (q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,
    /// down_proj) or all-linear; default PEFT's for Llama.
    #[arg(long, value_name = "LIST", default_value_t = default_lora_targets(), requires = "lora_rank")]
    lora_targets: String,
}

fn default_lora_targets() -> String {
    mathcoder_train::lora::DEFAULT_TARGETS
        .map(mathcoder_train::lora::module_name)
        .join(",")
}

fn report(d: &Dataset, rows: usize, efficiency: f64, seq_len: usize) {
    eprintln!(
        "{} records -> {} instances ({} over {seq_len} tokens dropped, {} truncated, {} without targets dropped) -> {rows} rows, {:.1}% non-padding",
        d.records,
        d.instances.len(),
        d.dropped_overlong,
        d.truncated,
        d.dropped_no_target,
        100.0 * efficiency
    );
}

pub fn train(a: TrainArgs) -> Result<i32> {
    mathcoder_train::keep_freed_memory();
    if let Some(n) = a.threads {
        // candle's CPU kernels read this when they first run.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let d = defaults();
    let lora = match a.lora_rank {
        Some(rank) => Some(LoraConfig {
            rank,
            alpha: a.lora_alpha,
            targets: mathcoder_train::lora::parse_targets(&a.lora_targets)?,
        }),
        None => None,
    };
    let cfg = a.data.apply(TrainConfig {
        lr: a.lr,
        warmup_steps: a.warmup_steps,
        epochs: a.epochs,
        global_batch: a.global_batch,
        micro_batch: a.micro_batch,
        max_steps: a.max_steps,
        max_grad_norm: a.max_grad_norm,
        adamw: mathcoder_train::optim::AdamWParams {
            weight_decay: a.weight_decay,
            ..d.adamw
        },
        save_every: a.save_every,
        stop_after: a.stop_after,
        lora,
        ..d
    });
    let mut t = Trainer::new(&a.data.model, &a.data.data, cfg, a.resume.as_deref())?;
    if t.added_tokens > 0 {
        eprintln!(
            "added {} MathCoder tokens to the tokenizer; embedding rows initialised to the mean",
            t.added_tokens
        );
    }
    report(
        &t.data.dataset,
        t.data.rows.len(),
        t.data.efficiency(t.cfg.seq_len),
        t.cfg.seq_len,
    );
    if let (Some(l), Some(ad)) = (&t.cfg.lora, &t.adapter) {
        let n: usize = ad.vars.iter().map(|(_, v)| v.elem_count()).sum();
        eprintln!(
            "LoRA {}: {n} trainable parameters (adapters and {} token rows), base frozen",
            l.describe(),
            ad.token_ids.len()
        );
    }
    let pb = mathcoder_cli::progress::bar(t.total_steps, "train");
    pb.set_position(t.step);
    let (mut tokens, mut seconds) = (0usize, 0f64);
    let last = t.run(&a.out, |l| {
        tokens += l.tokens;
        seconds += l.seconds;
        pb.set_message(format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            l.loss,
            l.lr,
            tokens as f64 / seconds.max(1e-9)
        ));
        pb.inc(1);
    })?;
    pb.finish_and_clear();
    let Some(l) = t.log.last() else {
        bail!("no step was taken");
    };
    eprintln!(
        "step {}/{}: loss {:.4}; {:.0} tokens/s over this session; checkpoint {}; loss curve {}",
        l.step,
        t.total_steps,
        l.loss,
        tokens as f64 / seconds.max(1e-9),
        last.display(),
        a.out.join(mathcoder_train::trainer::LOSS_SVG).display()
    );
    if t.adapter.is_some() && t.step == t.total_steps {
        eprintln!(
            "merged model (base + adapter): {}",
            a.out.join(mathcoder_train::trainer::MERGED_DIR).display()
        );
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct PrepareModelArgs {
    /// The base model (a Hugging Face directory).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    /// A LoRA checkpoint of a `train --lora-rank` run on this base, to merge in.
    #[arg(long, value_name = "CHECKPOINT")]
    adapter: Option<PathBuf>,
    /// The directory to write (config.json, model.safetensors in f32, tokenizer files).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

pub fn prepare_model(a: PrepareModelArgs) -> Result<i32> {
    let added =
        mathcoder_train::trainer::write_prepared_model(&a.model, a.adapter.as_deref(), &a.out)?;
    eprintln!(
        "wrote {}: {}{}",
        a.out.display(),
        if added > 0 {
            format!("{added} MathCoder tokens added (embedding rows = mean)")
        } else {
            "the tokenizer already had MathCoder's tokens".into()
        },
        match &a.adapter {
            Some(d) => format!(", LoRA adapter {} merged", d.display()),
            None => String::new(),
        }
    );
    Ok(0)
}

/// Trainers the packed data can be written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One packed sequence a line: input_ids, labels (-100: no loss), position_ids.
    Trl,
    /// axolotl's `input_output`: one conversation a line, segments with `label: false` on the
    /// prompt and executions (axolotl packs and filters by length itself).
    Axolotl,
    /// LLaMA-Factory's sharegpt: the prompt a `human` turn, the model's blocks `gpt` turns, the
    /// executions `observation` turns (masked); its `dataset_info.json` entry is written beside.
    LlamaFactory,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    data: TrainDataArgs,
    #[arg(long, value_enum)]
    format: ExportFormat,
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// With `--format trl`: also write a ready cluster launch into DIR (accelerate + DeepSpeed
    /// ZeRO-3 config, TRL SFT config, launch.sh) with the schedule below.
    #[arg(long, value_name = "DIR")]
    launch: Option<PathBuf>,
    /// GPUs the launch assumes (launch.sh reads NUM_GPUS to change it).
    #[arg(long, default_value_t = 8)]
    gpus: usize,
    /// Peak learning rate of the launch.
    #[arg(long, default_value_t = defaults().lr)]
    lr: f64,
    #[arg(long, default_value_t = defaults().warmup_steps)]
    warmup_steps: u64,
    #[arg(long, default_value_t = defaults().epochs)]
    epochs: u64,
    /// Sequences per optimizer step in the launch.
    #[arg(long, default_value_t = defaults().global_batch)]
    global_batch: usize,
}

fn absolute(p: &std::path::Path) -> Result<PathBuf> {
    Ok(std::path::absolute(p)?)
}

/// The launch files for the TRL rows at `a.out`.
fn write_launch(a: &ExportArgs, dir: &std::path::Path, cfg: &TrainConfig) -> Result<()> {
    let data_dir = absolute(a.out.parent().unwrap_or(std::path::Path::new(".")))?;
    let others: Vec<String> = std::fs::read_dir(&data_dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name() != a.out.file_name()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("json" | "jsonl" | "gz")
                )
        })
        .map(|p| p.display().to_string())
        .collect();
    if !others.is_empty() {
        eprintln!(
            "warning: {} holds other data files ({}); TRL's `datasets` loads every JSON file of the folder given as dataset_name: keep the TRL export alone in its folder",
            data_dir.display(),
            others.join(", ")
        );
    }
    let files = mathcoder_train::launch::write_launch(
        dir,
        &mathcoder_train::launch::LaunchSettings {
            model: absolute(&a.data.model)?,
            data_dir,
            output_dir: absolute(dir)?.join("checkpoints"),
            lr: a.lr,
            warmup_steps: a.warmup_steps,
            epochs: a.epochs,
            global_batch: a.global_batch,
            seq_len: cfg.seq_len,
            max_grad_norm: cfg.max_grad_norm,
            weight_decay: cfg.adamw.weight_decay,
            seed: cfg.seed,
            gpus: a.gpus,
        },
    )?;
    for f in files {
        eprintln!("wrote {}", f.display());
    }
    Ok(())
}

pub fn export(a: ExportArgs) -> Result<i32> {
    let cfg = a.data.apply(defaults());
    if a.launch.is_some() && a.format != ExportFormat::Trl {
        bail!("--launch writes a TRL launch: use it with --format trl");
    }
    match a.format {
        ExportFormat::Trl => {
            let (tok, added) = TrainTokenizer::load(&a.data.model)?;
            if added > 0 {
                eprintln!("added {added} MathCoder tokens to the tokenizer");
            }
            let p = prepare(&tok, &a.data.data, &cfg)?;
            report(
                &p.dataset,
                p.rows.len(),
                p.efficiency(cfg.seq_len),
                cfg.seq_len,
            );
            write_trl(&first_epoch(&p.rows, cfg.seed), &a.out)?;
            eprintln!("wrote {} rows to {}", p.rows.len(), a.out.display());
            if added > 0 && a.launch.is_some() {
                eprintln!("warning: the launch's model needs MathCoder's tokens in its tokenizer and embeddings (they were added here for tokenising only)");
            }
            if let Some(dir) = &a.launch {
                write_launch(&a, dir, &cfg)?;
            }
        }
        ExportFormat::Axolotl => {
            let convs = mathcoder_train::read_conversations(&a.data.data)?;
            write_axolotl(&convs, cfg.mask, &a.out)?;
            eprintln!("wrote {} conversations to {}", convs.len(), a.out.display());
        }
        ExportFormat::LlamaFactory => {
            let convs = mathcoder_train::read_conversations(&a.data.data)?;
            let n = write_llama_factory(&convs, cfg.mask, &a.out)?;
            let (Some(file), Some(stem)) = (
                a.out.file_name().and_then(|f| f.to_str()),
                a.out.file_stem().and_then(|f| f.to_str()),
            ) else {
                bail!("--out {} has no UTF-8 file name", a.out.display());
            };
            let info = a
                .out
                .parent()
                .unwrap_or(std::path::Path::new("."))
                .join("dataset_info.json");
            write_dataset_info(&info, stem, file)?;
            eprintln!(
                "wrote {n} conversations to {} and the dataset \"{stem}\" to {}",
                a.out.display(),
                info.display()
            );
        }
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct InspectArgs {
    /// The model whose tokenizer to use (MathCoder's tokens are added when it lacks them).
    #[arg(long, value_name = "DIR")]
    model: PathBuf,
    #[arg(long, value_name = "FILE.jsonl")]
    data: PathBuf,
    /// Which conversation (0-based, in file order).
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// Put loss on execution blocks too.
    #[arg(long)]
    loss_on_execution: bool,
    /// Put loss on the prompt too.
    #[arg(long)]
    loss_on_prompt: bool,
}

pub fn inspect(a: InspectArgs) -> Result<i32> {
    use std::io::IsTerminal;
    let (tok, _) = TrainTokenizer::load(&a.model)?;
    let convs = mathcoder_train::read_conversations(&a.data)?;
    let Some(c) = convs.get(a.index) else {
        bail!(
            "--index {} is out of range: {} holds {} conversations",
            a.index,
            a.data.display(),
            convs.len()
        );
    };
    let mask = mathcoder_train::MaskOptions {
        loss_on_execution: a.loss_on_execution,
        loss_on_prompt: a.loss_on_prompt,
    };
    let inst = tok.tokenize(&c.render(), mask, c.line)?;
    let color = std::io::stdout().is_terminal();
    let s = mathcoder_train::inspect::show(&tok, &inst, color)?;
    println!("{}", s.text);
    println!(
        "line {}: {} tokens, {} trained, {} masked ({})",
        c.line,
        s.tokens,
        s.trained,
        s.masked,
        if color {
            "masked dimmed"
        } else {
            "masked in [[...]]"
        }
    );
    Ok(0)
}
