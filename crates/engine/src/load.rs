//! Loading checkpoints as they are published: a Hugging Face directory (`config.json` +
//! `model.safetensors`, sharded safetensors with their index, or PyTorch `.bin` shards), or a GGUF
//! file as llama.cpp writes it.

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::ModelConfig;
use crate::model::{Embedding, Layer, Linear, Model, RopeLayout, Weights};
use crate::qmatmul::Packed;
use crate::st::SafetensorsFiles;
use crate::EngineError;

/// How to load.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Dtype of dense weights and activations. Default: f32 on CPU (bf16/f16 checkpoints are
    /// converted; candle's CPU kernels also compute in f16 and bf16, more slowly).
    pub dtype: Option<DType>,
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            dtype: None,
            device: Device::Cpu,
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |e| EngineError::Load(format!("{}: {e}", path.display()))
}

fn ce(what: &str) -> impl FnOnce(candle_core::Error) -> EngineError + '_ {
    move |e| EngineError::Load(format!("{what}: {e}"))
}

/// Loads a checkpoint directory or a `.gguf` file.
pub fn load_model(path: &Path, opts: &LoadOptions) -> Result<Model, EngineError> {
    if path.is_file() {
        if path.extension().is_some_and(|e| e == "gguf") {
            return load_gguf(path, opts).map(|(m, _)| m);
        }
        return Err(EngineError::Load(format!(
            "{}: expected a checkpoint directory or a .gguf file",
            path.display()
        )));
    }
    if !path.is_dir() {
        return Err(EngineError::Load(format!(
            "{}: no such directory or file",
            path.display()
        )));
    }
    let cfg_path = path.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
    let config = ModelConfig::from_hf_json(&text)?;
    let source = WeightSource::open(path)?;
    load_hf(config, &source, opts)
}

/// Where a directory's tensors are.
enum WeightSource {
    Safetensors(SafetensorsFiles),
    Pth(Vec<candle_core::pickle::PthTensors>),
}

fn index_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, EngineError> {
    let text = std::fs::read_to_string(index).map_err(io(index))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| EngineError::Load(format!("{}: {e}", index.display())))?;
    let files: BTreeSet<String> = v["weight_map"]
        .as_object()
        .ok_or_else(|| EngineError::Load(format!("{}: no weight_map", index.display())))?
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    let paths: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        return Err(EngineError::Load(format!(
            "{} names {}, which is missing",
            index.display(),
            missing.display()
        )));
    }
    Ok(paths)
}

impl WeightSource {
    fn open(dir: &Path) -> Result<WeightSource, EngineError> {
        let st_index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let st_files = if st_index.exists() {
            index_files(dir, &st_index)?
        } else if single.exists() {
            vec![single]
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "safetensors")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("model"))
                })
                .collect();
            v.sort();
            v
        };
        if !st_files.is_empty() {
            return Ok(WeightSource::Safetensors(SafetensorsFiles::open(
                &st_files,
            )?));
        }
        let bin_index = dir.join("pytorch_model.bin.index.json");
        let bins = if bin_index.exists() {
            index_files(dir, &bin_index)?
        } else if dir.join("pytorch_model.bin").exists() {
            vec![dir.join("pytorch_model.bin")]
        } else {
            return Err(EngineError::Load(format!(
                "{}: no model.safetensors, sharded safetensors or pytorch_model.bin",
                dir.display()
            )));
        };
        let pth = bins
            .iter()
            .map(|p| {
                candle_core::pickle::PthTensors::new(p, None)
                    .map_err(|e| EngineError::Load(format!("{}: {e}", p.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WeightSource::Pth(pth))
    }

    fn get(&self, name: &str, device: &Device) -> Result<Option<Tensor>, EngineError> {
        match self {
            WeightSource::Safetensors(st) => st.get(name, device),
            WeightSource::Pth(files) => {
                for f in files {
                    if let Some(t) = f.get(name).map_err(ce(name))? {
                        return Ok(Some(t.to_device(device).map_err(ce(name))?));
                    }
                }
                Ok(None)
            }
        }
    }

    fn dtype(&self) -> Option<DType> {
        match self {
            WeightSource::Safetensors(st) => st.dtype("model.embed_tokens.weight"),
            WeightSource::Pth(_) => None,
        }
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

fn load_hf(
    config: ModelConfig,
    src: &WeightSource,
    opts: &LoadOptions,
) -> Result<Model, EngineError> {
    let dev = &opts.device;
    let stored = src.dtype().unwrap_or(DType::F32);
    let dtype = opts
        .dtype
        .unwrap_or(if dev.is_cpu() { DType::F32 } else { stored });
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(EngineError::Load(format!(
            "unsupported compute dtype {dtype:?}"
        )));
    }
    let get = |name: &str, shape: &[usize]| -> Result<Tensor, EngineError> {
        let t = src
            .get(name, dev)?
            .ok_or_else(|| EngineError::Load(format!("tensor {name} is missing")))?;
        if t.dims() != shape {
            return Err(EngineError::Load(format!(
                "tensor {name} has shape {:?}, config.json implies {shape:?}",
                t.dims()
            )));
        }
        t.to_dtype(dtype).map_err(ce(name))
    };
    let c = &config;
    let (h, q, kv, ff) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    let embed = get("model.embed_tokens.weight", &[c.vocab_size, h])?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let dense = |n: &str, s: &[usize]| get(&format!("{p}.{n}"), s).map(Linear::Dense);
        layers.push(Layer {
            attn_norm: get(&format!("{p}.input_layernorm.weight"), &[h])?,
            q: dense("self_attn.q_proj.weight", &[q, h])?,
            k: dense("self_attn.k_proj.weight", &[kv, h])?,
            v: dense("self_attn.v_proj.weight", &[kv, h])?,
            o: dense("self_attn.o_proj.weight", &[h, q])?,
            mlp_norm: get(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
            gate: dense("mlp.gate_proj.weight", &[ff, h])?,
            up: dense("mlp.up_proj.weight", &[ff, h])?,
            down: dense("mlp.down_proj.weight", &[h, ff])?,
        });
    }
    let norm = get("model.norm.weight", &[h])?;
    let lm_head = match src.get("lm_head.weight", dev)? {
        Some(_) if !c.tie_word_embeddings => get("lm_head.weight", &[c.vocab_size, h])?,
        _ => embed.clone(),
    };
    Model::assemble(
        config,
        Weights {
            embed: Embedding::Dense(embed),
            layers,
            norm,
            lm_head: Linear::Dense(lm_head),
        },
        RopeLayout::Halves,
        dtype,
        dev.clone(),
        format_name(stored).to_string(),
    )
}

/// Metadata of a GGUF file, as read.
pub struct GgufInfo {
    pub content: gguf_file::Content,
}

fn meta<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

fn meta_usize(ct: &gguf_file::Content, key: &str) -> Result<usize, EngineError> {
    meta(ct, key)
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|n| n as usize)
        .ok_or_else(|| EngineError::Load(format!("GGUF metadata {key} is missing")))
}

fn meta_f64(ct: &gguf_file::Content, key: &str) -> Option<f64> {
    meta(ct, key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    meta(ct, key).and_then(|v| v.to_u32().ok())
}

/// Reads the model hyper-parameters from GGUF metadata (`llama.*`).
pub fn gguf_config(ct: &gguf_file::Content) -> Result<ModelConfig, EngineError> {
    let arch = meta(ct, "general.architecture")
        .and_then(|v| v.to_string().ok().cloned())
        .unwrap_or_default();
    if arch != "llama" {
        return Err(EngineError::Load(format!(
            "GGUF architecture {arch:?} is not supported (llama only)"
        )));
    }
    let hidden = meta_usize(ct, "llama.embedding_length")?;
    let heads = meta_usize(ct, "llama.attention.head_count")?;
    let kv = meta_usize(ct, "llama.attention.head_count_kv").unwrap_or(heads);
    let head_dim = meta_usize(ct, "llama.attention.key_length").unwrap_or(hidden / heads.max(1));
    let vocab = ct
        .tensor_infos
        .get("token_embd.weight")
        .map(|t| t.shape.dims()[0])
        .ok_or_else(|| EngineError::Load("GGUF tensor token_embd.weight is missing".into()))?;
    let c = ModelConfig {
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: meta_usize(ct, "llama.feed_forward_length")?,
        num_layers: meta_usize(ct, "llama.block_count")?,
        num_heads: heads,
        num_kv_heads: kv,
        head_dim,
        rms_norm_eps: meta_f64(ct, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: meta_f64(ct, "llama.rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: meta_usize(ct, "llama.context_length").unwrap_or(4096),
        tie_word_embeddings: !ct.tensor_infos.contains_key("output.weight"),
        bos_token_id: meta_u32(ct, "tokenizer.ggml.bos_token_id"),
        eos_token_ids: meta_u32(ct, "tokenizer.ggml.eos_token_id")
            .into_iter()
            .collect(),
        declared_dtype: None,
    };
    c.check()?;
    Ok(c)
}

/// Loads a GGUF file: quantized matrices stay quantized (candle's CPU kernels), norms and f32/f16
/// tensors are dense.
pub fn load_gguf(path: &Path, opts: &LoadOptions) -> Result<(Model, GgufInfo), EngineError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let ct = gguf_file::Content::read(&mut f)
        .map_err(|e| EngineError::Load(format!("{}: {e}", path.display())))?;
    let config = gguf_config(&ct)?;
    let dev = &opts.device;
    let mut qt = |name: &str| -> Result<QTensor, EngineError> {
        ct.tensor(&mut f, name, dev)
            .map_err(|e| EngineError::Load(format!("GGUF tensor {name}: {e}")))
    };
    let c = &config;
    let dtype = opts.dtype.unwrap_or(DType::F32);
    let dense = |t: QTensor, name: &str| -> Result<Tensor, EngineError> {
        t.dequantize(dev)
            .and_then(|t| t.to_dtype(dtype))
            .map_err(ce(name))
    };
    let check = |t: &QTensor, name: &str, shape: &[usize]| -> Result<(), EngineError> {
        if t.shape().dims() != shape {
            return Err(EngineError::Load(format!(
                "GGUF tensor {name} has shape {:?}, metadata implies {shape:?}",
                t.shape().dims()
            )));
        }
        Ok(())
    };
    let (h, q, kv, ff) = (
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.num_kv_heads * c.head_dim,
        c.intermediate_size,
    );
    let embed_q = qt("token_embd.weight")?;
    check(&embed_q, "token_embd.weight", &[c.vocab_size, h])?;
    let format = format!("{:?}", embed_q.dtype()).to_lowercase();
    let embed_q = Arc::new(embed_q);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("blk.{i}");
        let mut mat = |n: &str, shape: &[usize]| -> Result<Linear, EngineError> {
            let name = format!("{p}.{n}.weight");
            let t = qt(&name)?;
            check(&t, &name, shape)?;
            Linear::quantized(t).map_err(ce(&name))
        };
        let layer = Layer {
            q: mat("attn_q", &[q, h])?,
            k: mat("attn_k", &[kv, h])?,
            v: mat("attn_v", &[kv, h])?,
            o: mat("attn_output", &[h, q])?,
            gate: mat("ffn_gate", &[ff, h])?,
            up: mat("ffn_up", &[ff, h])?,
            down: mat("ffn_down", &[h, ff])?,
            attn_norm: Tensor::zeros(1, DType::F32, dev).map_err(ce("norm"))?,
            mlp_norm: Tensor::zeros(1, DType::F32, dev).map_err(ce("norm"))?,
        };
        let an = format!("{p}.attn_norm.weight");
        let fnn = format!("{p}.ffn_norm.weight");
        let attn_norm = dense(qt(&an)?, &an)?;
        let mlp_norm = dense(qt(&fnn)?, &fnn)?;
        layers.push(Layer {
            attn_norm,
            mlp_norm,
            ..layer
        });
    }
    let norm = dense(qt("output_norm.weight")?, "output_norm.weight")?;
    let lm_head = if c.tie_word_embeddings {
        match Packed::from_qtensor(&embed_q).map_err(ce("token_embd.weight"))? {
            Some(p) => Linear::Packed(Box::new(p)),
            None => {
                Linear::Quant(QMatMul::from_arc(embed_q.clone()).map_err(ce("token_embd.weight"))?)
            }
        }
    } else {
        let t = qt("output.weight")?;
        check(&t, "output.weight", &[c.vocab_size, h])?;
        Linear::quantized(t).map_err(ce("output.weight"))?
    };
    let embed = match embed_q.dtype() {
        GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
            Embedding::Dense(embed_q.dequantize(dev).map_err(ce("token_embd.weight"))?)
        }
        _ => Embedding::Quant(embed_q),
    };
    let model = Model::assemble(
        config,
        Weights {
            embed,
            layers,
            norm,
            lm_head,
        },
        RopeLayout::Interleaved,
        dtype,
        dev.clone(),
        format,
    )?;
    Ok((model, GgufInfo { content: ct }))
}
