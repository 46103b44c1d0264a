//! The tensors of a Llama-family model, named once: their Hugging Face names (as in
//! `model.safetensors` and `pytorch_model.bin`), their GGUF names (as llama.cpp's converter
//! writes them) and their shapes under a [`ModelConfig`].

use crate::config::ModelConfig;

/// A tensor of one decoder layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerWeight {
    AttnNorm,
    Q,
    K,
    V,
    O,
    MlpNorm,
    Gate,
    Up,
    Down,
    /// Biases of the q, k and v projections (Qwen2).
    QBias,
    KBias,
    VBias,
}

impl LayerWeight {
    pub const ALL: [LayerWeight; 9] = [
        LayerWeight::AttnNorm,
        LayerWeight::Q,
        LayerWeight::K,
        LayerWeight::V,
        LayerWeight::O,
        LayerWeight::MlpNorm,
        LayerWeight::Gate,
        LayerWeight::Up,
        LayerWeight::Down,
    ];

    /// The biases of architectures that have them ([`crate::config::Architecture::qkv_bias`]).
    pub const QKV_BIAS: [LayerWeight; 3] =
        [LayerWeight::QBias, LayerWeight::KBias, LayerWeight::VBias];

    fn hf(self) -> &'static str {
        match self {
            LayerWeight::AttnNorm => "input_layernorm.weight",
            LayerWeight::Q => "self_attn.q_proj.weight",
            LayerWeight::K => "self_attn.k_proj.weight",
            LayerWeight::V => "self_attn.v_proj.weight",
            LayerWeight::O => "self_attn.o_proj.weight",
            LayerWeight::MlpNorm => "post_attention_layernorm.weight",
            LayerWeight::Gate => "mlp.gate_proj.weight",
            LayerWeight::Up => "mlp.up_proj.weight",
            LayerWeight::Down => "mlp.down_proj.weight",
            LayerWeight::QBias => "self_attn.q_proj.bias",
            LayerWeight::KBias => "self_attn.k_proj.bias",
            LayerWeight::VBias => "self_attn.v_proj.bias",
        }
    }

    fn gguf(self) -> &'static str {
        match self {
            LayerWeight::AttnNorm => "attn_norm.weight",
            LayerWeight::Q => "attn_q.weight",
            LayerWeight::K => "attn_k.weight",
            LayerWeight::V => "attn_v.weight",
            LayerWeight::O => "attn_output.weight",
            LayerWeight::MlpNorm => "ffn_norm.weight",
            LayerWeight::Gate => "ffn_gate.weight",
            LayerWeight::Up => "ffn_up.weight",
            LayerWeight::Down => "ffn_down.weight",
            LayerWeight::QBias => "attn_q.bias",
            LayerWeight::KBias => "attn_k.bias",
            LayerWeight::VBias => "attn_v.bias",
        }
    }
}

/// A tensor of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Weight {
    /// Token embeddings `[vocab, hidden]`.
    Embed,
    Layer(usize, LayerWeight),
    /// The final RMSNorm `[hidden]`.
    FinalNorm,
    /// The output projection `[vocab, hidden]` (absent when tied to the embeddings).
    LmHead,
}

impl Weight {
    /// The Hugging Face name, e.g. `model.layers.3.self_attn.q_proj.weight`.
    pub fn hf_name(self) -> String {
        match self {
            Weight::Embed => "model.embed_tokens.weight".into(),
            Weight::Layer(i, w) => format!("model.layers.{i}.{}", w.hf()),
            Weight::FinalNorm => "model.norm.weight".into(),
            Weight::LmHead => "lm_head.weight".into(),
        }
    }

    /// The GGUF name, e.g. `blk.3.attn_q.weight`.
    pub fn gguf_name(self) -> String {
        match self {
            Weight::Embed => "token_embd.weight".into(),
            Weight::Layer(i, w) => format!("blk.{i}.{}", w.gguf()),
            Weight::FinalNorm => "output_norm.weight".into(),
            Weight::LmHead => "output.weight".into(),
        }
    }

    /// The shape the config implies (`[out, in]` for projections, as stored).
    pub fn shape(self, c: &ModelConfig) -> Vec<usize> {
        let (h, q, kv, ff) = (
            c.hidden_size,
            c.num_heads * c.head_dim,
            c.num_kv_heads * c.head_dim,
            c.intermediate_size,
        );
        match self {
            Weight::Embed | Weight::LmHead => vec![c.vocab_size, h],
            Weight::FinalNorm => vec![h],
            Weight::Layer(_, w) => match w {
                LayerWeight::AttnNorm | LayerWeight::MlpNorm => vec![h],
                LayerWeight::Q => vec![q, h],
                LayerWeight::K | LayerWeight::V => vec![kv, h],
                LayerWeight::O => vec![h, q],
                LayerWeight::Gate | LayerWeight::Up => vec![ff, h],
                LayerWeight::Down => vec![h, ff],
                LayerWeight::QBias => vec![q],
                LayerWeight::KBias | LayerWeight::VBias => vec![kv],
            },
        }
    }

    /// Whether this is a norm weight (a vector of scales, initialised to one).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            Weight::FinalNorm
                | Weight::Layer(_, LayerWeight::AttnNorm)
                | Weight::Layer(_, LayerWeight::MlpNorm)
        )
    }

    /// Every tensor of a model with this config, in checkpoint order (`lm_head` only when
    /// untied, q/k/v biases only for architectures that have them).
    pub fn all(c: &ModelConfig) -> Vec<Weight> {
        let mut v = vec![Weight::Embed];
        for i in 0..c.num_layers {
            v.extend(LayerWeight::ALL.iter().map(|w| Weight::Layer(i, *w)));
            if c.architecture.qkv_bias() {
                v.extend(LayerWeight::QKV_BIAS.iter().map(|w| Weight::Layer(i, *w)));
            }
        }
        v.push(Weight::FinalNorm);
        if !c.tie_word_embeddings {
            v.push(Weight::LmHead);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Weight::Embed.hf_name(), "model.embed_tokens.weight");
        assert_eq!(
            Weight::Layer(3, LayerWeight::Q).hf_name(),
            "model.layers.3.self_attn.q_proj.weight"
        );
        assert_eq!(
            Weight::Layer(0, LayerWeight::MlpNorm).gguf_name(),
            "blk.0.ffn_norm.weight"
        );
        assert_eq!(Weight::LmHead.gguf_name(), "output.weight");
    }
}
