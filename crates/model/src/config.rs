//! Model hyper-parameters, read from a Hugging Face `config.json` or from GGUF metadata.

use serde_json::Value;

use candle_core::quantized::gguf_file;

use crate::names::Weight;
use crate::ModelError;

/// The member of the Llama family: what differs is biases on the query/key/value projections
/// and how GGUF files lay out the rotary dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// Llama-2, CodeLlama, Mistral (`llama` in GGUF; Q/K rows permuted for adjacent rotary
    /// pairs by llama.cpp's converter).
    Llama,
    /// Qwen2 / Qwen2.5: biases on q, k and v; rotary halves (NeoX) in GGUF too.
    Qwen2,
}

impl Architecture {
    /// Whether q, k and v projections have biases.
    pub fn qkv_bias(self) -> bool {
        self == Architecture::Qwen2
    }

    /// Whether a GGUF file of this architecture stores Q and K rows permuted so that rotary
    /// pairs are adjacent (llama.cpp's `LLM_ARCH_LLAMA`); otherwise they rotate halves as in
    /// Hugging Face checkpoints.
    pub fn gguf_rope_interleaved(self) -> bool {
        self == Architecture::Llama
    }

    /// The GGUF `general.architecture` name (also the prefix of its hyper-parameter keys).
    pub fn gguf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
        }
    }
}

/// What the forward pass needs to know about a Llama-family model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Key/value heads (fewer than `num_heads`: grouped-query attention).
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    /// 1e4 for Llama-2, 1e6 for CodeLlama.
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint declares (`float32`, `bfloat16`, `float16`).
    pub declared_dtype: Option<String>,
}

fn usize_field(v: &Value, key: &str) -> Result<usize, ModelError> {
    v[key]
        .as_u64()
        .map(|n| n as usize)
        .ok_or_else(|| ModelError::Config(format!("config.json: missing or invalid {key:?}")))
}

fn ids(v: &Value) -> Vec<u32> {
    match v {
        Value::Number(n) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Value::Array(a) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn meta<'a>(ct: &'a gguf_file::Content, key: &str) -> Option<&'a gguf_file::Value> {
    ct.metadata.get(key)
}

fn meta_usize(ct: &gguf_file::Content, key: &str) -> Result<usize, ModelError> {
    meta(ct, key)
        .and_then(|v| v.to_u64().ok().or_else(|| v.to_u32().ok().map(u64::from)))
        .map(|n| n as usize)
        .ok_or_else(|| ModelError::Load(format!("GGUF metadata {key} is missing")))
}

fn meta_f64(ct: &gguf_file::Content, key: &str) -> Option<f64> {
    meta(ct, key).and_then(|v| v.to_f32().ok().map(f64::from).or_else(|| v.to_f64().ok()))
}

fn meta_u32(ct: &gguf_file::Content, key: &str) -> Option<u32> {
    meta(ct, key).and_then(|v| v.to_u32().ok())
}

impl ModelConfig {
    /// Reads a Hugging Face `config.json` (transformers 4.x and 5.x spellings).
    pub fn from_hf_json(text: &str) -> Result<ModelConfig, ModelError> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| ModelError::Config(format!("config.json: {e}")))?;
        let model_type = v["model_type"].as_str().unwrap_or("llama");
        let architecture = match model_type {
            "llama" | "codellama" | "mistral" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            _ => {
                return Err(ModelError::Config(format!(
                    "config.json: model_type {model_type:?} is not a Llama-family model (llama, mistral, qwen2)"
                )))
            }
        };
        if architecture == Architecture::Llama && v["attention_bias"].as_bool() == Some(true) {
            return Err(ModelError::Config(
                "config.json: attention_bias (biases on q/k/v/o) is not supported".into(),
            ));
        }
        if v["mlp_bias"].as_bool() == Some(true) {
            return Err(ModelError::Config(
                "config.json: mlp_bias is not supported".into(),
            ));
        }
        let hidden_size = usize_field(&v, "hidden_size")?;
        let num_heads = usize_field(&v, "num_attention_heads")?;
        let num_kv_heads = v["num_key_value_heads"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(num_heads);
        let head_dim = v["head_dim"]
            .as_u64()
            .map(|n| n as usize)
            .unwrap_or(hidden_size / num_heads.max(1));
        // transformers 5 writes {"rope_parameters": {"rope_theta": ...}}; 4.x a top-level field.
        let rope_theta = v["rope_theta"]
            .as_f64()
            .or_else(|| v["rope_parameters"]["rope_theta"].as_f64())
            .unwrap_or(10_000.0);
        let scaling = &v["rope_scaling"];
        if !scaling.is_null() {
            let kind = scaling["rope_type"]
                .as_str()
                .or(scaling["type"].as_str())
                .unwrap_or("");
            if kind != "default" {
                return Err(ModelError::Config(format!(
                    "config.json: rope_scaling {kind:?} is not supported"
                )));
            }
        }
        let rope_kind = v["rope_parameters"]["rope_type"]
            .as_str()
            .unwrap_or("default");
        if rope_kind != "default" {
            return Err(ModelError::Config(format!(
                "config.json: rope_type {rope_kind:?} is not supported"
            )));
        }
        let mut max_position_embeddings =
            v["max_position_embeddings"].as_u64().unwrap_or(4096) as usize;
        // Sliding-window attention (Mistral 7B v0.1, Qwen2 with use_sliding_window) equals full
        // attention up to the window: the context is limited to it.
        let window = v["sliding_window"].as_u64().map(|w| w as usize);
        let uses_window = match architecture {
            Architecture::Qwen2 => v["use_sliding_window"].as_bool().unwrap_or(false),
            Architecture::Llama => true,
        };
        if let Some(w) = window.filter(|w| uses_window && *w > 0) {
            max_position_embeddings = max_position_embeddings.min(w);
        }
        let c = ModelConfig {
            architecture,
            vocab_size: usize_field(&v, "vocab_size")?,
            hidden_size,
            intermediate_size: usize_field(&v, "intermediate_size")?,
            num_layers: usize_field(&v, "num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: v["rms_norm_eps"].as_f64().unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings,
            tie_word_embeddings: v["tie_word_embeddings"].as_bool().unwrap_or(false),
            bos_token_id: ids(&v["bos_token_id"]).first().copied(),
            eos_token_ids: ids(&v["eos_token_id"]),
            declared_dtype: v["torch_dtype"]
                .as_str()
                .or(v["dtype"].as_str())
                .map(String::from),
        };
        c.check()?;
        Ok(c)
    }

    /// Reads the model hyper-parameters from GGUF metadata (`llama.*`, `qwen2.*`).
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<ModelConfig, ModelError> {
        let arch = meta(ct, "general.architecture")
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        let architecture = match arch.as_str() {
            "llama" => Architecture::Llama,
            "qwen2" => Architecture::Qwen2,
            _ => {
                return Err(ModelError::Load(format!(
                    "GGUF architecture {arch:?} is not supported (llama, qwen2)"
                )))
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let scaling = meta(ct, &key("rope.scaling.type"))
            .and_then(|v| v.to_string().ok().cloned())
            .unwrap_or_default();
        if !matches!(scaling.as_str(), "" | "none") {
            return Err(ModelError::Load(format!(
                "GGUF rope scaling {scaling:?} is not supported"
            )));
        }
        let hidden = meta_usize(ct, &key("embedding_length"))?;
        let heads = meta_usize(ct, &key("attention.head_count"))?;
        let kv = meta_usize(ct, &key("attention.head_count_kv")).unwrap_or(heads);
        let head_dim =
            meta_usize(ct, &key("attention.key_length")).unwrap_or(hidden / heads.max(1));
        let embed = Weight::Embed.gguf_name();
        let vocab = ct
            .tensor_infos
            .get(&embed)
            .and_then(|t| t.shape.dims().first().copied())
            .ok_or_else(|| ModelError::Load(format!("GGUF tensor {embed} is missing")))?;
        let c = ModelConfig {
            architecture,
            vocab_size: vocab,
            hidden_size: hidden,
            intermediate_size: meta_usize(ct, &key("feed_forward_length"))?,
            num_layers: meta_usize(ct, &key("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim,
            rms_norm_eps: meta_f64(ct, &key("attention.layer_norm_rms_epsilon")).unwrap_or(1e-5),
            rope_theta: meta_f64(ct, &key("rope.freq_base")).unwrap_or(10_000.0),
            max_position_embeddings: meta_usize(ct, &key("context_length")).unwrap_or(4096),
            tie_word_embeddings: !ct.tensor_infos.contains_key(&Weight::LmHead.gguf_name()),
            bos_token_id: meta_u32(ct, "tokenizer.ggml.bos_token_id"),
            eos_token_ids: meta_u32(ct, "tokenizer.ggml.eos_token_id")
                .into_iter()
                .collect(),
            declared_dtype: None,
        };
        c.check()?;
        Ok(c)
    }

    /// A Hugging Face `config.json` for this model (what a GGUF file becomes when it is
    /// converted to a checkpoint directory); [`ModelConfig::from_hf_json`] reads it back equal.
    pub fn to_hf_json(&self) -> Value {
        let (model_type, arch) = match self.architecture {
            Architecture::Llama => ("llama", "LlamaForCausalLM"),
            Architecture::Qwen2 => ("qwen2", "Qwen2ForCausalLM"),
        };
        let mut v = serde_json::json!({
            "architectures": [arch],
            "model_type": model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu",
            "torch_dtype": self.declared_dtype.as_deref().unwrap_or("float32"),
        });
        if self.architecture == Architecture::Llama {
            v["attention_bias"] = false.into();
            v["mlp_bias"] = false.into();
        }
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => v["eos_token_id"] = (*e).into(),
            many => v["eos_token_id"] = many.into(),
        }
        v
    }

    /// Consistency checks that would otherwise surface as shape errors deep in the forward pass.
    pub fn check(&self) -> Result<(), ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if self.num_heads == 0 || self.num_kv_heads == 0 || self.num_layers == 0 {
            return bad("heads and layers must be positive".into());
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return bad(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.num_heads, self.num_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!("head_dim {} must be even for RoPE", self.head_dim));
        }
        if self.vocab_size == 0 || self.hidden_size == 0 {
            return bad("vocab_size and hidden_size must be positive".into());
        }
        Ok(())
    }

    /// Bytes of weights read per generated token at `bytes_per_weight` (for bandwidth figures).
    pub fn parameters(&self) -> u64 {
        let h = self.hidden_size as u64;
        let kv = (self.num_kv_heads * self.head_dim) as u64;
        let q = (self.num_heads * self.head_dim) as u64;
        let layer = h * q + 2 * h * kv + q * h + 3 * h * self.intermediate_size as u64 + 2 * h;
        let emb = self.vocab_size as u64 * h;
        emb * if self.tie_word_embeddings { 1 } else { 2 } + layer * self.num_layers as u64 + h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hf_json_round_trips() {
        for arch in [Architecture::Llama, Architecture::Qwen2] {
            let c = ModelConfig {
                architecture: arch,
                vocab_size: 49_160,
                hidden_size: 576,
                intermediate_size: 1536,
                num_layers: 30,
                num_heads: 9,
                num_kv_heads: 3,
                head_dim: 64,
                rms_norm_eps: 1e-5,
                rope_theta: 100_000.0,
                max_position_embeddings: 8192,
                tie_word_embeddings: true,
                bos_token_id: Some(1),
                eos_token_ids: vec![2],
                declared_dtype: Some("float32".into()),
            };
            let back = ModelConfig::from_hf_json(&c.to_hf_json().to_string()).unwrap();
            assert_eq!(back, c);
        }
    }

    #[test]
    fn hf_spellings() {
        let c = ModelConfig::from_hf_json(
            r#"{"model_type":"llama","vocab_size":32016,"hidden_size":64,"intermediate_size":172,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rms_norm_eps":1e-5,
            "rope_theta":1000000.0,"tie_word_embeddings":false,"bos_token_id":1,"eos_token_id":2,
            "torch_dtype":"bfloat16"}"#,
        )
        .unwrap();
        assert_eq!((c.num_kv_heads, c.head_dim, c.rope_theta), (2, 16, 1e6));
        assert_eq!(c.declared_dtype.as_deref(), Some("bfloat16"));
        let c = ModelConfig::from_hf_json(
            r#"{"vocab_size":300,"hidden_size":64,"intermediate_size":172,"num_hidden_layers":2,
            "num_attention_heads":4,"rope_parameters":{"rope_theta":500000.0,"rope_type":"default"},
            "eos_token_id":[2,7],"dtype":"float32"}"#,
        )
        .unwrap();
        assert_eq!(c.rope_theta, 5e5);
        assert_eq!(c.num_kv_heads, 4);
        assert_eq!(c.eos_token_ids, vec![2, 7]);
        assert!(ModelConfig::from_hf_json(r#"{"model_type":"bert"}"#).is_err());
        let q = ModelConfig::from_hf_json(
            r#"{"model_type":"qwen2","vocab_size":300,"hidden_size":64,"intermediate_size":172,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"rope_theta":1000000.0,
            "max_position_embeddings":32768,"sliding_window":4096,"use_sliding_window":false,"tie_word_embeddings":true}"#,
        )
        .unwrap();
        assert_eq!(q.architecture, Architecture::Qwen2);
        assert!(q.architecture.qkv_bias() && !q.architecture.gguf_rope_interleaved());
        assert_eq!(q.max_position_embeddings, 32768);
        let m = ModelConfig::from_hf_json(
            r#"{"model_type":"mistral","vocab_size":300,"hidden_size":64,"intermediate_size":172,
            "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
            "max_position_embeddings":32768,"sliding_window":4096}"#,
        )
        .unwrap();
        assert_eq!(
            (m.architecture, m.max_position_embeddings),
            (Architecture::Llama, 4096)
        );
        assert!(ModelConfig::from_hf_json(
            r#"{"vocab_size":300,"hidden_size":64,"intermediate_size":172,"num_hidden_layers":2,"num_attention_heads":4,"attention_bias":true}"#
        )
        .is_err());
        assert!(ModelConfig::from_hf_json(
            r#"{"vocab_size":300,"hidden_size":64,"intermediate_size":172,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":3}"#
        )
        .is_err());
        assert!(ModelConfig::from_hf_json(
            r#"{"vocab_size":300,"hidden_size":64,"intermediate_size":172,"num_hidden_layers":2,"num_attention_heads":4,"rope_scaling":{"type":"linear","factor":2.0}}"#
        )
        .is_err());
    }
}
