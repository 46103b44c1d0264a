//! Building the engine's [`Model`] from a checkpoint read by `mathcoder-model`
//! ([`Checkpoint`]: a Hugging Face directory or a GGUF file). Dense weights are converted to the
//! compute dtype; GGUF matrices stay quantized and go to our kernels where they apply.

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use mathcoder_model::checkpoint::{Checkpoint, GgufCheckpoint, HfCheckpoint};
use mathcoder_model::names::{LayerWeight as L, Weight};
use std::path::Path;
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::model::{Embedding, Layer, Linear, Model, RopeLayout, Weights};
use crate::qmatmul::Packed;
use crate::EngineError;

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Dtype of dense weights and activations. Default: f32 on CPU (bf16/f16 checkpoints are
    /// converted; candle's CPU kernels also compute in f16 and bf16, more slowly).
    pub dtype: Option<DType>,
    /// Quantize a dense checkpoint's matrices (projections and the output head; not the
    /// embedding, which is a lookup) to this type at load, so that they run on the quantized
    /// kernels. Ignored for GGUF files, whose matrices keep their own types.
    pub quantize: Option<GgmlDType>,
    /// Dtype of the KV cache (default: `dtype`). Attention converts it to the compute dtype.
    pub kv_dtype: Option<DType>,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            quantize: None,
            kv_dtype: None,
            device: Device::Cpu,
        }
    }
}

/// The KV cache dtype the options ask for: f32, f16 or bf16 (default: the compute dtype).
fn kv_dtype(opts: &LoadOptions, dtype: DType) -> Result<DType, EngineError> {
    match opts.kv_dtype.unwrap_or(dtype) {
        d @ (DType::F32 | DType::F16 | DType::BF16) => Ok(d),
        d => Err(EngineError::load(format!(
            "unsupported KV cache dtype {d:?} (f32, f16 or bf16)"
        ))),
    }
}

fn ce(what: &str) -> impl FnOnce(candle_core::Error) -> EngineError + '_ {
    move |e| EngineError::load(format!("{what}: {e}"))
}

/// Loads a checkpoint directory or a `.gguf` file.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Model, EngineError> {
    match Checkpoint::open(path)? {
        Checkpoint::Hf(c) => load_hf(c, opts),
        Checkpoint::Gguf(c) => from_gguf(c, opts).map(|(m, _)| m),
    }
}

fn format_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "other",
    }
}

fn load_hf(ckpt: HfCheckpoint, opts: &LoadOptions) -> Result<Model, EngineError> {
    let dev = &opts.device;
    let stored = ckpt.stored_dtype().unwrap_or(DType::F32);
    let dtype = opts
        .dtype
        .unwrap_or(if dev.is_cpu() { DType::F32 } else { stored });
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(EngineError::load(format!(
            "unsupported compute dtype {dtype:?}"
        )));
    }
    let get = |w: Weight| -> Result<Tensor, EngineError> {
        ckpt.get(w, dev)?.to_dtype(dtype).map_err(ce(&w.hf_name()))
    };
    let c = &ckpt.config;
    if let Some(q) = opts.quantize {
        if dtype != DType::F32 || !dev.is_cpu() {
            return Err(EngineError::load(format!(
                "quantizing at load ({q:?}) needs f32 on the CPU"
            )));
        }
    }
    // A matrix as the options ask: dense, or quantized now (rows must fill whole blocks).
    let matrix = |w: Weight| -> Result<Linear, EngineError> {
        let t = get(w)?;
        match opts.quantize {
            None => Ok(Linear::Dense(t)),
            Some(q) => {
                let cols = t.dims().last().copied().unwrap_or(0);
                if cols % q.block_size() != 0 {
                    return Err(EngineError::load(format!(
                        "{}: rows of {cols} values do not fill {q:?} blocks of {}",
                        w.hf_name(),
                        q.block_size()
                    )));
                }
                let qt = QTensor::quantize(&t, q).map_err(ce(&w.hf_name()))?;
                Linear::quantized(qt).map_err(ce(&w.hf_name()))
            }
        }
    };
    let embed = get(Weight::Embed)?;
    let mut layers = Vec::new();
    for i in 0..c.num_layers {
        let dense = |w: L| matrix(Weight::Layer(i, w));
        let qkv_bias = if c.architecture.qkv_bias() {
            let b = |w: L| get(Weight::Layer(i, w));
            Some([b(L::QBias)?, b(L::KBias)?, b(L::VBias)?])
        } else {
            None
        };
        layers.push(Layer {
            attn_norm: get(Weight::Layer(i, L::AttnNorm))?,
            qkv_bias,
            q: dense(L::Q)?,
            k: dense(L::K)?,
            v: dense(L::V)?,
            o: dense(L::O)?,
            mlp_norm: get(Weight::Layer(i, L::MlpNorm))?,
            gate: dense(L::Gate)?,
            up: dense(L::Up)?,
            down: dense(L::Down)?,
        });
    }
    let norm = get(Weight::FinalNorm)?;
    let lm_head = if c.tie_word_embeddings {
        matrix(Weight::Embed)?
    } else {
        matrix(Weight::LmHead)?
    };
    Model::assemble(
        ckpt.config.clone(),
        Weights {
            embed: Embedding::Dense(embed),
            layers,
            norm,
            lm_head,
        },
        RopeLayout::Halves,
        dtype,
        kv_dtype(opts, dtype)?,
        dev.clone(),
        match opts.quantize {
            Some(q) => format!(
                "{} quantized to {}",
                format_name(stored),
                format!("{q:?}").to_lowercase()
            ),
            None => format_name(stored).to_string(),
        },
    )
}

/// Metadata of a GGUF file, as read.
pub struct GgufInfo {
    pub content: gguf_file::Content,
}

/// Reads the model hyper-parameters from GGUF metadata (`llama.*`, `qwen2.*`).
pub fn gguf_config(ct: &gguf_file::Content) -> Result<ModelConfig, EngineError> {
    Ok(ModelConfig::from_gguf(ct)?)
}

/// Loads a GGUF file: quantized matrices stay quantized (our kernels for `Q4_0`/`Q8_0`, else
/// candle's), norms and f32/f16 tensors are dense.
pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<(Model, GgufInfo), EngineError> {
    from_gguf(GgufCheckpoint::open(path)?, opts)
}

fn from_gguf(ckpt: GgufCheckpoint, opts: &LoadOptions) -> Result<(Model, GgufInfo), EngineError> {
    let dev = &opts.device;
    let c = &ckpt.config;
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let dense = |w: Weight| -> Result<Tensor, EngineError> {
        ckpt.qtensor(w, dev)?
            .dequantize(dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(ce(&w.gguf_name()))
    };
    let mat = |w: Weight| -> Result<Linear, EngineError> {
        Linear::quantized(ckpt.qtensor(w, dev)?).map_err(ce(&w.gguf_name()))
    };
    let embed_q = ckpt.qtensor(Weight::Embed, dev)?;
    let format = ckpt
        .content
        .metadata
        .get("general.file_type")
        .and_then(|v| v.to_u32().ok())
        .and_then(file_type_name)
        .map(String::from)
        .unwrap_or_else(|| format!("{:?}", embed_q.dtype()).to_lowercase());
    let embed_q = Arc::new(embed_q);
    let mut layers = Vec::new();
    for i in 0..c.num_layers {
        let w = |l: L| Weight::Layer(i, l);
        let qkv_bias = if c.architecture.qkv_bias() {
            Some([
                dense(w(L::QBias))?,
                dense(w(L::KBias))?,
                dense(w(L::VBias))?,
            ])
        } else {
            None
        };
        layers.push(Layer {
            qkv_bias,
            q: mat(w(L::Q))?,
            k: mat(w(L::K))?,
            v: mat(w(L::V))?,
            o: mat(w(L::O))?,
            gate: mat(w(L::Gate))?,
            up: mat(w(L::Up))?,
            down: mat(w(L::Down))?,
            attn_norm: dense(w(L::AttnNorm))?,
            mlp_norm: dense(w(L::MlpNorm))?,
        });
    }
    let norm = dense(Weight::FinalNorm)?;
    let embed_name = Weight::Embed.gguf_name();
    let lm_head = if c.tie_word_embeddings {
        match Packed::from_qtensor(&embed_q).map_err(ce(&embed_name))? {
            Some(p) => Linear::Packed(Box::new(p)),
            None => Linear::Quant(QMatMul::from_arc(embed_q.clone()).map_err(ce(&embed_name))?),
        }
    } else {
        mat(Weight::LmHead)?
    };
    let embed = match embed_q.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            Embedding::Dense(embed_q.dequantize(dev).map_err(ce(&embed_name))?)
        }
        _ => Embedding::Quant(embed_q),
    };
    let model = Model::assemble(
        ckpt.config.clone(),
        Weights {
            embed,
            layers,
            norm,
            lm_head,
        },
        if c.architecture.gguf_rope_interleaved() {
            RopeLayout::Interleaved
        } else {
            RopeLayout::Halves
        },
        dtype,
        kv_dtype(opts, dtype)?,
        dev.clone(),
        format,
    )?;
    Ok((
        model,
        GgufInfo {
            content: ckpt.into_content(),
        },
    ))
}

/// llama.cpp's name for a GGUF `general.file_type` (`llama_ftype`): the mix of quant types.
fn file_type_name(t: u32) -> Option<&'static str> {
    Some(match t {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        3 => "q4_1",
        7 => "q8_0",
        8 => "q5_0",
        9 => "q5_1",
        10 => "q2_k",
        11 => "q3_k_s",
        12 => "q3_k_m",
        13 => "q3_k_l",
        14 => "q4_k_s",
        15 => "q4_k_m",
        16 => "q5_k_s",
        17 => "q5_k_m",
        18 => "q6_k",
        32 => "bf16",
        _ => return None,
    })
}
