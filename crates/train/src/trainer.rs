//! The trainer: the paper's recipe on the reference Llama.
//!
//! One optimizer step takes `global_batch` rows (sequences) from the seeded data stream (every
//! row once per epoch, a new permutation each epoch), runs them `micro_batch` rows at a time,
//! and accumulates gradients of `sum of target-token cross-entropies / target tokens in the
//! whole global batch`, so the step's loss (logged, computed before the step's update) is the
//! token mean over the global batch however it is split. Then the global gradient norm is
//! clipped (1.0), AdamW takes a step at the cosine-with-warm-up rate, and a line goes to
//! `OUT/log.jsonl`.
//!
//! A checkpoint is a Hugging Face directory (`config.json`, `model.safetensors`,
//! `tokenizer.json` with MathCoder's tokens, `special_tokens_map.json`) that the engine and
//! transformers load, plus `optimizer.safetensors` (AdamW moments) and `trainer_state.json`
//! (step, data position, settings, a fingerprint of the packed data, the log so far). Resuming
//! from it continues the same run: same data order, same schedule, same log lines.
//!
//! A LoRA run ([`crate::lora`]) trains an adapter on the frozen base: its checkpoints hold the
//! adapter in PEFT's layout (`adapter_model.safetensors`, `adapter_config.json`), the
//! tokenizer files, the optimizer state and `trainer_state.json`; resuming reads the base from
//! `--model` again. At its last step it also writes the merged full model (`OUT/merged`).
//! Every run ends with `OUT/loss.svg`, the loss and learning-rate curve of its whole log.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mathcoder_lce::SpecialToken;
use mathcoder_model::llama::{nll, packed_mask};
use mathcoder_model::{Checkpoint, Llama, ModelConfig, Weight};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::data::read_conversations;
use crate::lora::{token_ids, Adapter, LoraConfig};
use crate::optim::{cosine_lr, AdamW, AdamWParams};
use crate::pack::{efficiency, pack, stream_row, Packing, Row};
use crate::tokenize::{tokenize_all, Dataset, MaskOptions, Overlong, TrainTokenizer};
use crate::vocab::resize_embeddings;
use crate::{io_err, TrainError};

/// What a run does. The defaults are the paper's recipe (§4): lr 2e-5, cosine, 50 warm-up
/// steps, 3 epochs, global batch 128 sequences of 2,048 tokens, isolated packing, loss on
/// text and code only; clipping at 1.0 and AdamW's settings are the Hugging Face Trainer's.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    pub seq_len: usize,
    pub packing: Packing,
    pub mask: MaskOptions,
    pub overlong: Overlong,
    pub lr: f64,
    pub warmup_steps: u64,
    pub epochs: u64,
    /// Rows (packed sequences) per optimizer step.
    pub global_batch: usize,
    /// Rows per forward/backward pass.
    pub micro_batch: usize,
    /// Stop after this many optimizer steps (the schedule's length); default: the epochs'.
    pub max_steps: Option<u64>,
    pub max_grad_norm: f64,
    pub seed: u64,
    pub adamw: AdamWParams,
    /// Write a checkpoint every this many steps.
    pub save_every: Option<u64>,
    /// Stop (with a checkpoint) after this step, as an interrupted run would; the schedule is
    /// still that of the whole run.
    pub stop_after: Option<u64>,
    /// Train a LoRA adapter (and MathCoder's token rows) on the frozen model instead of every
    /// weight.
    pub lora: Option<LoraConfig>,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            seq_len: 2048,
            packing: Packing::Isolated,
            mask: MaskOptions::default(),
            overlong: Overlong::Drop,
            lr: 2e-5,
            warmup_steps: 50,
            epochs: 3,
            global_batch: 128,
            micro_batch: 1,
            max_steps: None,
            max_grad_norm: 1.0,
            seed: 42,
            adamw: AdamWParams::default(),
            save_every: None,
            stop_after: None,
            lora: None,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::Config(m.to_string()));
        if self.seq_len < 2 {
            return bad("--seq-len must be at least 2");
        }
        if self.global_batch == 0 || self.micro_batch == 0 {
            return bad("--global-batch and --micro-batch must be positive");
        }
        if !self.global_batch.is_multiple_of(self.micro_batch) {
            return bad("--global-batch must be a multiple of --micro-batch");
        }
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("--lr must be a non-negative number");
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return bad("--epochs must be positive");
        }
        if let Some(l) = &self.lora {
            l.check()?;
        }
        Ok(())
    }
}

/// Tokenised, masked and packed training data.
pub struct Prepared {
    pub dataset: Dataset,
    pub rows: Vec<Row>,
}

impl Prepared {
    /// Non-padding share of the rows padded to `seq_len`.
    pub fn efficiency(&self, seq_len: usize) -> f64 {
        efficiency(&self.rows, seq_len)
    }
}

/// Reads, tokenises, masks and packs `data` as a run with `cfg` does.
pub fn prepare(
    tok: &TrainTokenizer,
    data: &Path,
    cfg: &TrainConfig,
) -> Result<Prepared, TrainError> {
    cfg.check()?;
    let convs = read_conversations(data)?;
    let dataset = tokenize_all(tok, &convs, cfg.mask, cfg.seq_len, cfg.overlong)?;
    if dataset.instances.is_empty() {
        return Err(TrainError::Config(format!(
            "{}: no instance left to train on ({} records, {} over --seq-len {})",
            data.display(),
            dataset.records,
            dataset.dropped_overlong,
            cfg.seq_len
        )));
    }
    let rows = pack(&dataset.instances, cfg.seq_len, cfg.packing, cfg.seed);
    Ok(Prepared { dataset, rows })
}

/// One line of `OUT/log.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    pub step: u64,
    /// Mean cross-entropy over the global batch's target tokens, before this step's update.
    pub loss: f64,
    /// The learning rate this step was taken with.
    pub lr: f64,
    /// Non-padding tokens in the global batch.
    pub tokens: usize,
    /// Tokens with loss.
    pub target_tokens: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Wall-clock seconds of the step.
    pub seconds: f64,
}

/// `trainer_state.json` of a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct TrainerState {
    step: u64,
    /// Rows of the data stream consumed.
    data_position: u64,
    total_steps: u64,
    seq_len: usize,
    packing: String,
    global_batch: usize,
    micro_batch: usize,
    lr: f64,
    warmup_steps: u64,
    seed: u64,
    loss_on_execution: bool,
    loss_on_prompt: bool,
    rows: usize,
    data_fingerprint: String,
    /// The LoRA settings of a LoRA run.
    #[serde(default)]
    lora: Option<String>,
    log: Vec<StepLog>,
}

/// FNV-1a over the rows' ids and labels.
fn fingerprint(rows: &[Row]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    for r in rows {
        eat(r.len() as u64);
        for (id, l) in r.ids.iter().zip(&r.labels) {
            eat(u64::from(*id));
            eat(*l as u64);
        }
    }
    format!("{h:016x}")
}

/// A training run in progress.
pub struct Trainer {
    pub cfg: TrainConfig,
    pub model: Llama,
    pub vars: VarMap,
    pub config: ModelConfig,
    pub tok: TrainTokenizer,
    /// Tokens added to the tokenizer (and rows to the embeddings).
    pub added_tokens: usize,
    pub data: Prepared,
    /// The trained adapter of a LoRA run (the model's own weights are frozen).
    pub adapter: Option<Adapter>,
    model_dir: PathBuf,
    opt: AdamW,
    /// Optimizer steps taken.
    pub step: u64,
    pub total_steps: u64,
    pub log: Vec<StepLog>,
    source_config: serde_json::Value,
    orders: Vec<Vec<usize>>,
    device: Device,
}

fn device() -> Device {
    #[cfg(feature = "cuda")]
    {
        Device::cuda_if_available(0).unwrap_or(Device::Cpu)
    }
    #[cfg(not(feature = "cuda"))]
    {
        Device::Cpu
    }
}

impl Trainer {
    /// Loads the model (a Hugging Face directory; with `resume`, the checkpoint's), adds
    /// MathCoder's tokens where missing, and prepares `data`.
    pub fn new(
        model_dir: &Path,
        data: &Path,
        cfg: TrainConfig,
        resume: Option<&Path>,
    ) -> Result<Trainer, TrainError> {
        cfg.check()?;
        if let Some(r) = resume {
            let lora_ckpt = r.join(crate::lora::ADAPTER_CONFIG).exists();
            if lora_ckpt != cfg.lora.is_some() {
                let kind = |lora: bool| {
                    if lora {
                        "a LoRA run"
                    } else {
                        "a full fine-tuning run"
                    }
                };
                return Err(TrainError::Resume(format!(
                    "{} was written by a different run: {} (now {})",
                    r.display(),
                    kind(lora_ckpt),
                    kind(cfg.lora.is_some())
                )));
            }
        }
        // A full run's checkpoint holds the weights; a LoRA run's holds the adapter only.
        let dir = match resume {
            Some(r) if cfg.lora.is_none() => r,
            _ => model_dir,
        };
        let device = device();
        let (vars, config, source_config, tok, added_tokens) = load_base(dir, &device)?;
        let mut model = Llama::new(&config, VarBuilder::from_varmap(&vars, DType::F32, &device))?;
        let adapter = match &cfg.lora {
            Some(l) => {
                let a = Adapter::new(
                    l.clone(),
                    &config,
                    token_ids(&tok)?,
                    &vars,
                    cfg.seed,
                    &device,
                )?;
                a.attach(&mut model)?;
                Some(a)
            }
            None => None,
        };
        let prepared = prepare(&tok, data, &cfg)?;
        let n = prepared.rows.len() as u64;
        let total_steps = cfg
            .max_steps
            .unwrap_or_else(|| (cfg.epochs * n).div_ceil(cfg.global_batch as u64));
        let named: Vec<(String, Var)> = match &adapter {
            Some(a) => a.vars.clone(),
            None => {
                let mut named: Vec<(String, Var)> = vars
                    .data()
                    .lock()
                    .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                named.sort_by(|a, b| a.0.cmp(&b.0));
                named
            }
        };
        let opt = AdamW::new(named, cfg.adamw.clone())?;
        let mut t = Trainer {
            cfg,
            model,
            vars,
            config,
            tok,
            added_tokens,
            data: prepared,
            adapter,
            model_dir: model_dir.to_path_buf(),
            opt,
            step: 0,
            total_steps,
            log: Vec::new(),
            source_config,
            orders: Vec::new(),
            device,
        };
        if let Some(r) = resume {
            t.restore(r)?;
        }
        Ok(t)
    }

    fn state(&self) -> TrainerState {
        let c = &self.cfg;
        TrainerState {
            step: self.step,
            data_position: self.step * c.global_batch as u64,
            total_steps: self.total_steps,
            seq_len: c.seq_len,
            packing: c.packing.name().into(),
            global_batch: c.global_batch,
            micro_batch: c.micro_batch,
            lr: c.lr,
            warmup_steps: c.warmup_steps,
            seed: c.seed,
            loss_on_execution: c.mask.loss_on_execution,
            loss_on_prompt: c.mask.loss_on_prompt,
            rows: self.data.rows.len(),
            data_fingerprint: fingerprint(&self.data.rows),
            lora: c.lora.as_ref().map(LoraConfig::describe),
            log: self.log.clone(),
        }
    }

    fn restore(&mut self, dir: &Path) -> Result<(), TrainError> {
        let p = dir.join("trainer_state.json");
        let saved: TrainerState =
            serde_json::from_str(&std::fs::read_to_string(&p).map_err(io_err(&p))?)
                .map_err(|e| TrainError::Resume(format!("{}: {e}", p.display())))?;
        let now = self.state();
        let mut differs = Vec::new();
        macro_rules! same {
            ($($f:ident),*) => {$(
                if saved.$f != now.$f {
                    differs.push(format!("{} {:?} (now {:?})", stringify!($f), saved.$f, now.$f));
                }
            )*};
        }
        same!(
            total_steps,
            seq_len,
            packing,
            global_batch,
            micro_batch,
            lr,
            warmup_steps,
            seed,
            loss_on_execution,
            loss_on_prompt,
            rows,
            data_fingerprint,
            lora
        );
        if !differs.is_empty() {
            return Err(TrainError::Resume(format!(
                "{} was written by a different run: {}",
                dir.display(),
                differs.join(", ")
            )));
        }
        if saved.data_position != saved.step * saved.global_batch as u64 {
            return Err(TrainError::Resume(format!(
                "{}: data position {} does not follow step {}",
                p.display(),
                saved.data_position,
                saved.step
            )));
        }
        if let Some(a) = &self.adapter {
            a.load(dir, &self.device)?;
        }
        let op = dir.join("optimizer.safetensors");
        let state = candle_core::safetensors::load(&op, &self.device)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", op.display())))?;
        self.opt.load_state(state, saved.step)?;
        self.step = saved.step;
        self.log = saved.log;
        Ok(())
    }

    /// Names of the trained variables, in the order of [`Trainer::loss_and_grads`]'s gradients.
    pub fn var_names(&self) -> Vec<String> {
        self.opt.vars.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The rows of optimizer step `step` (1-based), in stream order.
    pub fn step_rows(&mut self, step: u64) -> Vec<usize> {
        let g = self.cfg.global_batch;
        let n = self.data.rows.len();
        let start = (step as usize - 1) * g;
        (start..start + g)
            .map(|p| stream_row(&mut self.orders, n, self.cfg.seed, p))
            .collect()
    }

    /// Inputs of a micro-batch, padded to its longest row: ids, position ids, attention mask
    /// (`None`: plain causal), and the flat logit positions with their target ids.
    #[allow(clippy::type_complexity)]
    fn batch(
        &self,
        rows: &[&Row],
    ) -> Result<(Tensor, Option<Tensor>, Option<Tensor>, Vec<u32>, Vec<u32>), TrainError> {
        let t = rows.iter().map(|r| r.len()).max().unwrap_or(1);
        let (mut ids, mut pos, mut segs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut at, mut target) = (Vec::new(), Vec::new());
        for (b, r) in rows.iter().enumerate() {
            let pad = t - r.len();
            ids.extend(&r.ids);
            ids.extend(std::iter::repeat_n(self.tok.pad, pad));
            pos.extend(&r.position_ids);
            let last = r.position_ids.last().map_or(0, |p| p + 1);
            pos.extend((0..pad as u32).map(|k| last + k));
            let mut s = r.segments.clone();
            s.extend(std::iter::repeat_n(u32::MAX, pad));
            segs.push(s);
            for (i, l) in r.labels.iter().enumerate() {
                if *l >= 0 && i > 0 {
                    at.push((b * t + i - 1) as u32);
                    target.push(*l as u32);
                }
            }
        }
        let dev = &self.device;
        let ids = Tensor::from_vec(ids, (rows.len(), t), dev)?;
        let (pos, mask) = match self.cfg.packing {
            Packing::Isolated => (
                Some(Tensor::from_vec(pos, (rows.len(), t), dev)?),
                Some(packed_mask(&segs, dev)?),
            ),
            Packing::Naive | Packing::None => (None, None),
        };
        Ok((ids, pos, mask, at, target))
    }

    /// Sum of the target tokens' cross-entropies of a micro-batch, as a differentiable scalar
    /// (`None` when it has no target).
    pub fn loss_sum(&self, rows: &[&Row]) -> Result<Option<Tensor>, TrainError> {
        let (ids, pos, mask, at, target) = self.batch(rows)?;
        if at.is_empty() {
            return Ok(None);
        }
        // The output projection only where there is a target: no [b, t, vocab] logits.
        let hidden = self
            .model
            .hidden_states(&ids, pos.as_ref(), mask.as_ref())?;
        let (b, t, h) = hidden.dims3()?;
        let n = at.len();
        let at = Tensor::from_vec(at, n, &self.device)?;
        let target = Tensor::from_vec(target, n, &self.device)?;
        let sel = hidden.reshape((b * t, h))?.index_select(&at, 0)?;
        let logits = self.model.logits(&sel)?;
        Ok(Some(nll(&logits, &target)?.sum_all()?))
    }

    /// Loss (token mean) and gradients (one per optimizer variable, in its order) of a set of
    /// rows, accumulated over micro-batches.
    pub fn loss_and_grads(&self, rows: &[usize]) -> Result<(f64, Vec<Tensor>, usize), TrainError> {
        let n_target: usize = rows.iter().map(|&r| self.data.rows[r].target_count()).sum();
        let mut grads: Vec<Option<Tensor>> = vec![None; self.opt.vars.len()];
        let mut total = 0f64;
        // On the CPU in f32 the hand-written pass (the same kernels, without candle's autograd
        // bookkeeping); autograd elsewhere.
        let hand = self.model.hand_backward_applies();
        let slot_of: HashMap<_, usize> = self
            .opt
            .vars
            .iter()
            .enumerate()
            .map(|(i, (_, v))| (v.as_tensor().id(), i))
            .collect();
        for chunk in rows.chunks(self.cfg.micro_batch) {
            let rs: Vec<&Row> = chunk.iter().map(|&r| &self.data.rows[r]).collect();
            // The micro-batch's loss sum and its gradients, in the optimizer's order.
            let (sum, chunk_grads): (f64, Vec<Option<Tensor>>) = if hand {
                let (ids, pos, mask, at, target) = self.batch(&rs)?;
                if at.is_empty() {
                    continue;
                }
                let scale = 1.0 / n_target as f32;
                let (sum, g) = self.model.loss_and_grads(
                    &ids,
                    pos.as_ref(),
                    mask.as_ref(),
                    &at,
                    &target,
                    scale,
                )?;
                let mut ordered = vec![None; grads.len()];
                for (w, gw) in g {
                    if let Some(&i) = slot_of.get(&w.id()) {
                        ordered[i] = Some(gw);
                    }
                }
                (f64::from(sum), ordered)
            } else {
                let Some(sum) = self.loss_sum(&rs)? else {
                    continue;
                };
                let value = f64::from(sum.to_scalar::<f32>()?);
                let g = (sum / n_target as f64)?.backward()?;
                let ordered = self
                    .opt
                    .vars
                    .iter()
                    .map(|(_, v)| g.get(v.as_tensor()).cloned())
                    .collect();
                (value, ordered)
            };
            total += sum;
            for (slot, gv) in grads.iter_mut().zip(chunk_grads) {
                if let Some(gv) = gv {
                    *slot = Some(match slot.take() {
                        Some(acc) => (acc + gv)?,
                        None => gv,
                    });
                }
            }
        }
        let grads = grads
            .into_iter()
            .zip(&self.opt.vars)
            .map(|(g, (name, _))| {
                g.ok_or_else(|| TrainError::Config(format!("{name} got no gradient")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((total / n_target.max(1) as f64, grads, n_target))
    }

    /// Takes the next optimizer step.
    pub fn train_step(&mut self) -> Result<StepLog, TrainError> {
        let t0 = Instant::now();
        let step = self.step + 1;
        let rows = self.step_rows(step);
        let tokens: usize = rows.iter().map(|&r| self.data.rows[r].len()).sum();
        let (loss, grads, target_tokens) = self.loss_and_grads(&rows)?;
        let lr = cosine_lr(self.cfg.lr, step, self.cfg.warmup_steps, self.total_steps);
        let grad_norm = self.opt.clip_and_step(&grads, self.cfg.max_grad_norm, lr)?;
        self.step = step;
        let l = StepLog {
            step,
            loss,
            lr,
            tokens,
            target_tokens,
            grad_norm,
            seconds: t0.elapsed().as_secs_f64(),
        };
        self.log.push(l.clone());
        Ok(l)
    }

    /// Runs to the end (or to `stop_after`), writing `out/log.jsonl` (the resumed run's earlier
    /// lines first), checkpoints every `save_every` steps and one at the end, and `out/loss.svg`
    /// of the whole log; a LoRA run that reaches its last step also writes the merged model to
    /// `out/merged`. Returns the last checkpoint's directory.
    pub fn run(
        &mut self,
        out: &Path,
        mut on_step: impl FnMut(&StepLog),
    ) -> Result<PathBuf, TrainError> {
        std::fs::create_dir_all(out).map_err(io_err(out))?;
        let lp = out.join("log.jsonl");
        let mut log = std::fs::File::create(&lp).map_err(io_err(&lp))?;
        let line = |l: &StepLog| serde_json::to_string(l).unwrap_or_default() + "\n";
        for l in &self.log {
            log.write_all(line(l).as_bytes()).map_err(io_err(&lp))?;
        }
        let end = self
            .cfg
            .stop_after
            .map_or(self.total_steps, |s| s.min(self.total_steps));
        while self.step < end {
            let l = self.train_step()?;
            log.write_all(line(&l).as_bytes()).map_err(io_err(&lp))?;
            log.flush().map_err(io_err(&lp))?;
            on_step(&l);
            if self
                .cfg
                .save_every
                .is_some_and(|k| k > 0 && self.step.is_multiple_of(k))
                && self.step < end
            {
                self.save(&out.join(format!("checkpoint-{}", self.step)))?;
            }
        }
        let last = out.join(format!("checkpoint-{}", self.step));
        self.save(&last)?;
        crate::plot::write_loss_svg(&self.log, &out.join(LOSS_SVG))?;
        if self.adapter.is_some() && self.step == self.total_steps {
            self.save_merged(&out.join(MERGED_DIR))?;
        }
        Ok(last)
    }

    /// Full weights by Hugging Face name: the model's, or with LoRA the base with the adapter
    /// merged in.
    pub fn weights(&self) -> Result<HashMap<String, Tensor>, TrainError> {
        match &self.adapter {
            Some(a) => a.merged(&self.vars, &self.config),
            None => Ok(self
                .vars
                .data()
                .lock()
                .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
                .collect()),
        }
    }

    /// Writes the full model (a LoRA run's merged into its base) as a Hugging Face directory,
    /// without training state.
    pub fn save_merged(&self, dir: &Path) -> Result<(), TrainError> {
        write_model_dir(
            dir,
            &self.source_config,
            &self.config,
            &self.weights()?,
            &self.tok,
        )
    }

    /// Writes a checkpoint directory (see the module docs).
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        match &self.adapter {
            None => self.save_merged(dir)?,
            Some(a) => {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                let base = std::path::absolute(&self.model_dir).map_err(io_err(&self.model_dir))?;
                a.save(dir, &base, self.config.tie_word_embeddings)?;
                write_tokenizer(dir, &self.tok)?;
            }
        }
        let write = |name: &str, text: String| -> Result<(), TrainError> {
            let p = dir.join(name);
            std::fs::write(&p, text).map_err(io_err(&p))
        };
        candle_core::safetensors::save(&self.opt.state(), dir.join("optimizer.safetensors"))?;
        write(
            "trainer_state.json",
            serde_json::to_string_pretty(&self.state()).unwrap_or_default(),
        )?;
        Ok(())
    }
}

/// The loss curve of a run (`OUT/loss.svg`).
pub const LOSS_SVG: &str = "loss.svg";

/// Where a LoRA run writes its merged model at the end (`OUT/merged`).
pub const MERGED_DIR: &str = "merged";

/// `tokenizer.json` (with MathCoder's tokens) and `special_tokens_map.json` into `dir`.
/// `special_tokens_map.json`: Llama-2's `<s>`/`</s>`/`<unk>` when the vocabulary has them,
/// else the begin/end tokens other vocabularies name (SmolLM2's `<|im_start|>`/`<|im_end|>`),
/// never a token the vocabulary lacks (transformers would add it).
fn special_tokens_map(tok: &TrainTokenizer, specials: &[&str]) -> serde_json::Value {
    let has = |t: &str| tok.inner.token_to_id(t).is_some();
    let first =
        |cands: &[&'static str]| -> Option<&'static str> { cands.iter().copied().find(|t| has(t)) };
    let mut m = serde_json::json!({ "additional_special_tokens": specials });
    if let Some(b) = first(&["<s>", "<|im_start|>", "<|endoftext|>"]) {
        m["bos_token"] = b.into();
    }
    if let Some(e) = first(&["</s>", "<|im_end|>", "<|endoftext|>"]) {
        m["eos_token"] = e.into();
    }
    if let Some(u) = first(&["<unk>", "<|endoftext|>"]) {
        m["unk_token"] = u.into();
    }
    if let Some(p) = first(&["</s>", "<|endoftext|>"]) {
        m["pad_token"] = p.into();
    }
    m
}

fn write_tokenizer(dir: &Path, tok: &TrainTokenizer) -> Result<(), TrainError> {
    let tp = dir.join("tokenizer.json");
    tok.inner
        .save(&tp, false)
        .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", tp.display())))?;
    let specials: Vec<&str> = SpecialToken::ALL.iter().map(|t| t.as_str()).collect();
    let p = dir.join("special_tokens_map.json");
    std::fs::write(
        &p,
        serde_json::to_string_pretty(&special_tokens_map(tok, &specials)).unwrap_or_default(),
    )
    .map_err(io_err(&p))
}

/// A Hugging Face model directory that the engine and transformers load: `config.json` (the
/// source's, with `vocab_size` and the f32 dtype), `model.safetensors` (`weights` by Hugging
/// Face name), the tokenizer files.
pub fn write_model_dir(
    dir: &Path,
    source_config: &serde_json::Value,
    config: &ModelConfig,
    weights: &HashMap<String, Tensor>,
    tok: &TrainTokenizer,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let mut cfg = source_config.clone();
    if let Some(o) = cfg.as_object_mut() {
        o.insert("vocab_size".into(), config.vocab_size.into());
        o.insert("dtype".into(), "float32".into());
        if o.contains_key("torch_dtype") {
            o.insert("torch_dtype".into(), "float32".into());
        }
    }
    let p = dir.join("config.json");
    std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap_or_default())
        .map_err(io_err(&p))?;
    candle_core::safetensors::save(weights, dir.join("model.safetensors"))?;
    write_tokenizer(dir, tok)
}

/// Reads a Hugging Face checkpoint into f32 variables with MathCoder's tokens added (rows =
/// mean): the base a run starts from. Returns the variables, the config (vocabulary grown),
/// the source `config.json`, the tokenizer and how many tokens were added.
pub fn load_base(
    dir: &Path,
    device: &Device,
) -> Result<
    (
        VarMap,
        ModelConfig,
        serde_json::Value,
        TrainTokenizer,
        usize,
    ),
    TrainError,
> {
    let ckpt = Checkpoint::open(dir)?;
    let mut config = ckpt.config().clone();
    // A GGUF file (dequantised to f32) has no config.json: its metadata is written as one.
    let source_config: serde_json::Value = if mathcoder_model::checkpoint::is_gguf(dir) {
        config.to_hf_json()
    } else {
        let cfg_path = dir.join("config.json");
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).map_err(io_err(&cfg_path))?)
            .map_err(|e| TrainError::Config(format!("{}: {e}", cfg_path.display())))?
    };
    let vars = VarMap::new();
    {
        let mut data = vars
            .data()
            .lock()
            .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?;
        for w in Weight::all(&config) {
            let t = ckpt.dense(w, DType::F32, device)?;
            data.insert(w.hf_name(), Var::from_tensor(&t)?);
        }
    }
    drop(ckpt);
    let (tok, added) = TrainTokenizer::load(dir)?;
    resize_embeddings(&vars, &mut config, tok.vocab_size())?;
    Ok((vars, config, source_config, tok, added))
}

/// Writes `model_dir` with MathCoder's tokens added (tokenizer and mean rows; an f32
/// Hugging Face directory) to `out`, or with `adapter` (a LoRA run's checkpoint) that
/// adapter merged in. Returns how many tokens were added to the base.
pub fn write_prepared_model(
    model_dir: &Path,
    adapter: Option<&Path>,
    out: &Path,
) -> Result<usize, TrainError> {
    let device = device();
    let (vars, config, source_config, tok, added) = load_base(model_dir, &device)?;
    let weights = match adapter {
        None => vars
            .data()
            .lock()
            .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().detach()))
            .collect(),
        Some(dir) => {
            let (lc, ids) = Adapter::read_config(dir)?;
            let a = Adapter::new(lc, &config, ids, &vars, 0, &device)?;
            a.load(dir, &device)?;
            a.merged(&vars, &config)?
        }
    };
    write_model_dir(out, &source_config, &config, &weights, &tok)?;
    Ok(added)
}
