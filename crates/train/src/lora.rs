//! LoRA (Hu et al. 2021) as PEFT does it, so that a small machine can adapt a real model.
//!
//! The base weights are frozen ([`Llama::freeze`]); each targeted projection `W` `[out, in]`
//! of every layer gets `A` `[rank, in]` (Kaiming-uniform with `a = sqrt(5)`, i.e.
//! `U(-1/sqrt(in), 1/sqrt(in))`, drawn from the run's seed) and `B` `[out, rank]` (zeros), and
//! computes `x W^T + alpha/rank * (x A^T) B^T`. MathCoder's eight tokens' rows of the
//! embeddings (and of an untied output matrix) are trainable too, as PEFT's
//! `trainable_token_indices`: the rows replace the frozen ones (they start as the base's rows,
//! the mean rows when the tokens were just added). No dropout: PEFT's default
//! (`lora_dropout = 0`) and what keeps a resumed run equal to the uninterrupted one.
//!
//! On disk, PEFT's layout: `adapter_model.safetensors` with
//! `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight`, ... and
//! `base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta` (and
//! `base_model.model.lm_head.token_adapter.trainable_tokens_delta`), plus
//! `adapter_config.json`. [`Adapter::merged`] folds it into full weights (`W + scale * B A`, the
//! rows written in), a checkpoint the engine loads.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use mathcoder_lce::SpecialToken;
use mathcoder_model::llama::{replace_rows, LoraPair, TokenRows};
use mathcoder_model::{LayerWeight, Llama, ModelConfig, Weight};
use serde_json::json;
use std::collections::HashMap;
use std::path::Path;

use crate::rng::SplitMix64;
use crate::tokenize::TrainTokenizer;
use crate::{io_err, TrainError};

/// PEFT's default `lora_alpha`.
pub const DEFAULT_ALPHA: f64 = 8.0;
/// PEFT's default target modules for Llama (`q_proj`, `v_proj`).
pub const DEFAULT_TARGETS: [LayerWeight; 2] = [LayerWeight::Q, LayerWeight::V];

pub const ADAPTER_FILE: &str = "adapter_model.safetensors";
pub const ADAPTER_CONFIG: &str = "adapter_config.json";

/// The projections LoRA can target, in the model's order.
const PROJECTIONS: [LayerWeight; 7] = [
    LayerWeight::Q,
    LayerWeight::K,
    LayerWeight::V,
    LayerWeight::O,
    LayerWeight::Gate,
    LayerWeight::Up,
    LayerWeight::Down,
];

/// A projection's module name as PEFT's `target_modules` spells it (`q_proj`, ...), read off
/// its Hugging Face tensor name.
pub fn module_name(w: LayerWeight) -> String {
    let name = Weight::Layer(0, w).hf_name();
    name.trim_end_matches(".weight")
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Parses `q_proj,v_proj,...` (or `all-linear`, as PEFT) into projections, in model order.
pub fn parse_targets(s: &str) -> Result<Vec<LayerWeight>, TrainError> {
    if s.trim() == "all-linear" {
        return Ok(PROJECTIONS.to_vec());
    }
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let w = PROJECTIONS
            .iter()
            .find(|w| module_name(**w) == part)
            .ok_or_else(|| {
                TrainError::Config(format!(
                    "--lora-targets: unknown module {part:?} (one of {}, or all-linear)",
                    PROJECTIONS.map(module_name).join(", ")
                ))
            })?;
        if !out.contains(w) {
            out.push(*w);
        }
    }
    if out.is_empty() {
        return Err(TrainError::Config("--lora-targets names no module".into()));
    }
    out.sort_by_key(|w| PROJECTIONS.iter().position(|p| p == w));
    Ok(out)
}

/// A LoRA run's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    pub rank: usize,
    pub alpha: f64,
    pub targets: Vec<LayerWeight>,
}

impl LoraConfig {
    pub fn new(rank: usize) -> LoraConfig {
        LoraConfig {
            rank,
            alpha: DEFAULT_ALPHA,
            targets: DEFAULT_TARGETS.to_vec(),
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }

    pub fn check(&self) -> Result<(), TrainError> {
        if self.rank == 0 {
            return Err(TrainError::Config("--lora-rank must be positive".into()));
        }
        if !(self.alpha.is_finite() && self.alpha > 0.0) {
            return Err(TrainError::Config("--lora-alpha must be positive".into()));
        }
        if self.targets.is_empty() {
            return Err(TrainError::Config("--lora-targets names no module".into()));
        }
        Ok(())
    }

    /// A one-line description (checked when resuming).
    pub fn describe(&self) -> String {
        format!(
            "r={} alpha={} targets={}",
            self.rank,
            self.alpha,
            self.targets
                .iter()
                .map(|w| module_name(*w))
                .collect::<Vec<_>>()
                .join(",")
        )
    }
}

/// PEFT's name of a LoRA matrix (`"A"` or `"B"`) on `w`.
fn lora_name(w: Weight, which: &str) -> String {
    format!(
        "base_model.model.{}.lora_{which}.weight",
        w.hf_name().trim_end_matches(".weight")
    )
}

/// PEFT's name of the trainable rows of the embeddings or of the output matrix.
fn rows_name(w: Weight) -> String {
    format!(
        "base_model.model.{}.token_adapter.trainable_tokens_delta",
        w.hf_name().trim_end_matches(".weight")
    )
}

/// The ids of MathCoder's eight tokens in `tok`, ascending.
pub fn token_ids(tok: &TrainTokenizer) -> Result<Vec<u32>, TrainError> {
    let mut ids = SpecialToken::ALL
        .iter()
        .map(|t| {
            tok.inner
                .token_to_id(t.as_str())
                .ok_or_else(|| TrainError::Tokenizer(format!("the tokenizer lacks {}", t.as_str())))
        })
        .collect::<Result<Vec<u32>, _>>()?;
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// The trainable tensors of a LoRA run.
pub struct Adapter {
    pub config: LoraConfig,
    /// Token ids whose embedding (and untied output) rows train.
    pub token_ids: Vec<u32>,
    /// PEFT names and variables, sorted by name.
    pub vars: Vec<(String, Var)>,
}

fn base_tensor(base: &VarMap, name: &str) -> Result<Tensor, TrainError> {
    let data = base
        .data()
        .lock()
        .map_err(|_| TrainError::Config("the variable map's lock is poisoned".into()))?;
    Ok(data
        .get(name)
        .ok_or_else(|| TrainError::Config(format!("the model has no {name}")))?
        .as_tensor()
        .detach())
}

impl Adapter {
    /// A fresh adapter on `base` (a model with `model_config`): `A` Kaiming-uniform from `seed`,
    /// `B` zero, the token rows copied from the base.
    pub fn new(
        config: LoraConfig,
        model_config: &ModelConfig,
        token_ids: Vec<u32>,
        base: &VarMap,
        seed: u64,
        device: &Device,
    ) -> Result<Adapter, TrainError> {
        config.check()?;
        let r = config.rank;
        let mut rng = SplitMix64::new(seed ^ 0x4c6f_5241); // "LoRA": apart from the data order's stream
        let mut vars = Vec::new();
        for i in 0..model_config.num_layers {
            for &w in &config.targets {
                let wt = Weight::Layer(i, w);
                let shape = wt.shape(model_config);
                let (out, inp) = (shape[0], shape[1]);
                let bound = 1.0 / (inp as f64).sqrt();
                let a: Vec<f32> = (0..r * inp)
                    .map(|_| {
                        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
                        ((2.0 * u - 1.0) * bound) as f32
                    })
                    .collect();
                let a = Tensor::from_vec(a, (r, inp), device)?;
                let b = Tensor::zeros((out, r), DType::F32, device)?;
                vars.push((lora_name(wt, "A"), Var::from_tensor(&a)?));
                vars.push((lora_name(wt, "B"), Var::from_tensor(&b)?));
            }
        }
        let idx = Tensor::new(token_ids.as_slice(), device)?;
        let mut matrices = vec![Weight::Embed];
        if !model_config.tie_word_embeddings {
            matrices.push(Weight::LmHead);
        }
        for w in matrices {
            let rows = base_tensor(base, &w.hf_name())?
                .to_dtype(DType::F32)?
                .index_select(&idx, 0)?;
            vars.push((rows_name(w), Var::from_tensor(&rows)?));
        }
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Adapter {
            config,
            token_ids,
            vars,
        })
    }

    fn get(&self, name: &str) -> Result<&Var, TrainError> {
        self.vars
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .ok_or_else(|| TrainError::Config(format!("the adapter has no {name}")))
    }

    /// Freezes `model`'s weights and puts the adapter on it.
    pub fn attach(&self, model: &mut Llama) -> Result<(), TrainError> {
        model.freeze();
        let c = model.config().clone();
        for i in 0..c.num_layers {
            for &w in &self.config.targets {
                let wt = Weight::Layer(i, w);
                model.set_lora(
                    i,
                    w,
                    LoraPair {
                        a: self.get(&lora_name(wt, "A"))?.as_tensor().clone(),
                        b: self.get(&lora_name(wt, "B"))?.as_tensor().clone(),
                        scale: self.config.scale(),
                    },
                )?;
            }
        }
        let head = if c.tie_word_embeddings {
            None
        } else {
            Some(self.get(&rows_name(Weight::LmHead))?.as_tensor().clone())
        };
        model.set_token_rows(TokenRows {
            ids: self.token_ids.clone(),
            embed: self.get(&rows_name(Weight::Embed))?.as_tensor().clone(),
            head,
        })?;
        Ok(())
    }

    /// The adapter's tensors by PEFT name.
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Writes `adapter_model.safetensors` and `adapter_config.json` into `dir`.
    pub fn save(&self, dir: &Path, base_model: &Path, tied: bool) -> Result<(), TrainError> {
        candle_core::safetensors::save(&self.tensors(), dir.join(ADAPTER_FILE))?;
        let mut indices = serde_json::Map::new();
        indices.insert("embed_tokens".into(), json!(self.token_ids));
        if !tied {
            indices.insert("lm_head".into(), json!(self.token_ids));
        }
        let cfg = json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base_model.display().to_string(),
            "r": self.config.rank,
            "lora_alpha": self.config.alpha,
            "lora_dropout": 0.0,
            "target_modules": self.config.targets.iter().map(|w| module_name(*w)).collect::<Vec<_>>(),
            "bias": "none",
            "fan_in_fan_out": false,
            "use_rslora": false,
            "init_lora_weights": true,
            "inference_mode": true,
            "modules_to_save": null,
            "trainable_token_indices": indices,
        });
        let p = dir.join(ADAPTER_CONFIG);
        std::fs::write(&p, serde_json::to_string_pretty(&cfg).unwrap_or_default())
            .map_err(io_err(&p))
    }

    /// Sets the variables to an `adapter_model.safetensors` of the same shapes.
    pub fn load(&self, dir: &Path, device: &Device) -> Result<(), TrainError> {
        let p = dir.join(ADAPTER_FILE);
        let mut saved = candle_core::safetensors::load(&p, device)
            .map_err(|e| TrainError::Resume(format!("{}: {e}", p.display())))?;
        for (name, var) in &self.vars {
            let t = saved
                .remove(name)
                .ok_or_else(|| TrainError::Resume(format!("{} has no {name}", p.display())))?;
            if t.dims() != var.dims() {
                return Err(TrainError::Resume(format!(
                    "{}: {name} has shape {:?}, the run's {:?}",
                    p.display(),
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    /// Reads `adapter_config.json`'s settings and token ids (for merging a saved adapter).
    pub fn read_config(dir: &Path) -> Result<(LoraConfig, Vec<u32>), TrainError> {
        let p = dir.join(ADAPTER_CONFIG);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&p).map_err(io_err(&p))?)
                .map_err(|e| TrainError::Config(format!("{}: {e}", p.display())))?;
        let bad = |what: &str| TrainError::Config(format!("{}: {what}", p.display()));
        let rank = v["r"].as_u64().ok_or_else(|| bad("no integer r"))? as usize;
        let alpha = v["lora_alpha"]
            .as_f64()
            .ok_or_else(|| bad("no lora_alpha"))?;
        let names = v["target_modules"]
            .as_array()
            .ok_or_else(|| bad("no target_modules list"))?
            .iter()
            .map(|m| m.as_str().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(",");
        let targets = parse_targets(&names)?;
        let ids = v["trainable_token_indices"]["embed_tokens"]
            .as_array()
            .ok_or_else(|| bad("no trainable_token_indices.embed_tokens"))?
            .iter()
            .map(|i| {
                i.as_u64()
                    .map(|i| i as u32)
                    .ok_or_else(|| bad("a token index"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((
            LoraConfig {
                rank,
                alpha,
                targets,
            },
            ids,
        ))
    }

    /// Full weights by Hugging Face name: the base (`base`, a model with `config`) with every
    /// adapted projection `W + scale * B A` and the token rows written in.
    pub fn merged(
        &self,
        base: &VarMap,
        config: &ModelConfig,
    ) -> Result<HashMap<String, Tensor>, TrainError> {
        let mut out = HashMap::new();
        let scale = self.config.scale();
        let idx_rows = |w: Weight, t: &Tensor| -> Result<Tensor, TrainError> {
            let rows = self.get(&rows_name(w))?.as_tensor().to_dtype(t.dtype())?;
            Ok(replace_rows(t, &self.token_ids, &rows)?)
        };
        for w in Weight::all(config) {
            let t = base_tensor(base, &w.hf_name())?;
            let merged = match w {
                Weight::Layer(_, lw) if self.config.targets.contains(&lw) => {
                    let a = self.get(&lora_name(w, "A"))?.as_tensor();
                    let b = self.get(&lora_name(w, "B"))?.as_tensor();
                    let delta = (b.matmul(a)? * scale)?.to_dtype(t.dtype())?;
                    (t + delta)?
                }
                Weight::Embed | Weight::LmHead => idx_rows(w, &t)?,
                _ => t,
            };
            out.insert(w.hf_name(), merged);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_and_names() {
        assert_eq!(module_name(LayerWeight::Gate), "gate_proj");
        assert_eq!(
            parse_targets("v_proj, q_proj").unwrap(),
            vec![LayerWeight::Q, LayerWeight::V]
        );
        assert_eq!(parse_targets("all-linear").unwrap().len(), 7);
        assert!(parse_targets("q_proj,input_layernorm").is_err());
        assert!(parse_targets("").is_err());
        assert_eq!(
            lora_name(Weight::Layer(3, LayerWeight::Q), "A"),
            "base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"
        );
        assert_eq!(
            rows_name(Weight::Embed),
            "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"
        );
        assert_eq!(LoraConfig::new(4).scale(), 2.0);
        assert!(LoraConfig::new(0).check().is_err());
    }
}
