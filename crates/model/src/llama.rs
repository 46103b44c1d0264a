//! A plain Llama forward pass for training and as a reference for the engine.
//!
//! Every op used here has a backward pass, so gradients reach every weight. On the CPU in f32
//! (training) RMSNorm, the attention heads' transpose + rotary embedding + grouped-query
//! repetition, the masked softmax and SwiGLU are fused kernels with hand-written backward
//! passes ([`crate::fused`]); elsewhere (CUDA, other dtypes) they are composed from elementary
//! candle ops ([`composed`]), which the fused kernels are tested against. candle's own
//! `ops::rms_norm`, `rotary_emb::rope`/`rope_i` and `ops::softmax_last_dim` have no backward
//! and would silently cut the graph; they must not be used here.
//!
//! The forward takes a batch of token ids `[b, t]` and returns logits at every position
//! `[b, t, vocab]`. Optional position ids `[b, t]` and an additive attention mask
//! `[b, 1, t, t]` let a trainer pack several instances into one row: [`packed_positions`] and
//! [`packed_mask`] build both from per-position instance ids (positions restart at zero and
//! attention is causal within an instance only). [`nll`] is the per-token cross-entropy of
//! logits against targets (fused on the CPU too).
//!
//! For LoRA, [`Llama::freeze`] detaches the weights from their variables, [`Llama::set_lora`]
//! adds a low-rank adapter to a projection and [`Llama::set_token_rows`] makes some embedding
//! (and untied output) rows trainable tensors of their own.
//!
//! Weights are [`candle_nn::VarMap`] variables named by their Hugging Face names
//! ([`crate::names`]), so a `VarMap` saved with `save` is a `model.safetensors` that loads back.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::checkpoint::Checkpoint;
use crate::config::ModelConfig;
use crate::fused;
use crate::names::{LayerWeight, Weight};
use crate::ModelError;

/// A low-rank adapter on a projection (LoRA, Hu et al. 2021, as PEFT computes it):
/// `y = x W^T + scale * (x A^T) B^T`, `A` `[rank, in]`, `B` `[out, rank]`.
#[derive(Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
}

/// A projection `[out, in]`, with an optional adapter.
pub(crate) struct Proj {
    pub(crate) w: Tensor,
    pub(crate) lora: Option<LoraPair>,
}

impl From<Tensor> for Proj {
    fn from(w: Tensor) -> Proj {
        Proj { w, lora: None }
    }
}

/// Rows of the embedding (and untied output) matrix that replace the frozen ones: `ids`
/// ascending, row `k` of `embed`/`head` for token `ids[k]` (PEFT's trainable tokens).
#[derive(Clone)]
pub struct TokenRows {
    pub ids: Vec<u32>,
    pub embed: Tensor,
    /// For an untied output matrix.
    pub head: Option<Tensor>,
}

/// `base` with the rows `ids` replaced by those of `rows`, as one differentiable tensor.
pub fn replace_rows(base: &Tensor, ids: &[u32], rows: &Tensor) -> candle_core::Result<Tensor> {
    let n = base.dim(0)?;
    let mut pieces = Vec::new();
    let (mut at, mut k) = (0usize, 0usize);
    while k < ids.len() {
        // A run of consecutive ids takes a run of consecutive rows.
        let start = ids[k] as usize;
        let mut len = 1;
        while k + len < ids.len() && ids[k + len] as usize == start + len {
            len += 1;
        }
        if start > at {
            pieces.push(base.narrow(0, at, start - at)?);
        }
        pieces.push(rows.narrow(0, k, len)?);
        at = start + len;
        k += len;
    }
    if at < n {
        pieces.push(base.narrow(0, at, n - at)?);
    }
    Tensor::cat(&pieces, 0)
}

/// One decoder layer's weights (projections stored `[out, in]`).
pub(crate) struct Block {
    pub(crate) attn_norm: Tensor,
    pub(crate) q: Proj,
    pub(crate) k: Proj,
    pub(crate) v: Proj,
    pub(crate) o: Proj,
    pub(crate) mlp_norm: Tensor,
    pub(crate) gate: Proj,
    pub(crate) up: Proj,
    pub(crate) down: Proj,
}

impl Block {
    fn proj_mut(&mut self, w: LayerWeight) -> Option<&mut Proj> {
        match w {
            LayerWeight::Q => Some(&mut self.q),
            LayerWeight::K => Some(&mut self.k),
            LayerWeight::V => Some(&mut self.v),
            LayerWeight::O => Some(&mut self.o),
            LayerWeight::Gate => Some(&mut self.gate),
            LayerWeight::Up => Some(&mut self.up),
            LayerWeight::Down => Some(&mut self.down),
            LayerWeight::AttnNorm
            | LayerWeight::MlpNorm
            | LayerWeight::QBias
            | LayerWeight::KBias
            | LayerWeight::VBias => None,
        }
    }
}

/// A Llama-family decoder (multi-head or grouped-query attention, tied or untied output).
pub struct Llama {
    pub(crate) config: ModelConfig,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<Block>,
    pub(crate) norm: Tensor,
    /// `None` when tied to the embeddings.
    pub(crate) lm_head: Option<Tensor>,
    /// Trainable rows replacing some of `embed`'s (and `lm_head`'s).
    pub(crate) rows: Option<TokenRows>,
}

/// Hugging Face's initialisation: normal(0, 0.02) matrices, norms at one.
fn init(w: Weight) -> Init {
    if w.is_norm() {
        Init::Const(1.0)
    } else {
        Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        }
    }
}

impl Llama {
    /// Builds the model from `vb`. With [`VarBuilder::from_varmap`] every weight is a trainable
    /// variable of the map: taken from the map when present, else created with Hugging Face's
    /// initialisation. Any other backend (safetensors files, ...) only reads tensors.
    pub fn new(config: &ModelConfig, vb: VarBuilder) -> Result<Llama, ModelError> {
        config.check()?;
        if config.architecture.qkv_bias() {
            // The training forward has no projection biases: refuse rather than train a
            // different model silently.
            return Err(ModelError::Config(format!(
                "the differentiable model supports Llama-shaped configs only; {:?} has q/k/v biases",
                config.architecture
            )));
        }
        let get = |w: Weight| -> Result<Tensor, ModelError> {
            vb.get_with_hints(w.shape(config), &w.hf_name(), init(w))
                .map_err(|e| ModelError::Load(format!("{}: {e}", w.hf_name())))
        };
        let layers = (0..config.num_layers)
            .map(|i| {
                let l = |w: LayerWeight| get(Weight::Layer(i, w));
                Ok(Block {
                    attn_norm: l(LayerWeight::AttnNorm)?,
                    q: l(LayerWeight::Q)?.into(),
                    k: l(LayerWeight::K)?.into(),
                    v: l(LayerWeight::V)?.into(),
                    o: l(LayerWeight::O)?.into(),
                    mlp_norm: l(LayerWeight::MlpNorm)?,
                    gate: l(LayerWeight::Gate)?.into(),
                    up: l(LayerWeight::Up)?.into(),
                    down: l(LayerWeight::Down)?.into(),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Llama {
            config: config.clone(),
            embed: get(Weight::Embed)?,
            layers,
            norm: get(Weight::FinalNorm)?,
            lm_head: if config.tie_word_embeddings {
                None
            } else {
                Some(get(Weight::LmHead)?)
            },
            rows: None,
        })
    }

    /// Detaches every weight from its variable: gradients no longer reach them (the base of a
    /// LoRA run). Adapters and token rows set afterwards are what trains.
    pub fn freeze(&mut self) {
        self.embed = self.embed.detach();
        self.norm = self.norm.detach();
        self.lm_head = self.lm_head.as_ref().map(Tensor::detach);
        for l in &mut self.layers {
            l.attn_norm = l.attn_norm.detach();
            l.mlp_norm = l.mlp_norm.detach();
            for w in LayerWeight::ALL {
                if let Some(p) = l.proj_mut(w) {
                    p.w = p.w.detach();
                }
            }
        }
    }

    /// Puts a LoRA adapter on projection `which` of layer `layer` (replacing any).
    pub fn set_lora(
        &mut self,
        layer: usize,
        which: LayerWeight,
        lora: LoraPair,
    ) -> Result<(), ModelError> {
        let name = Weight::Layer(layer, which).hf_name();
        let p = self
            .layers
            .get_mut(layer)
            .and_then(|l| l.proj_mut(which))
            .ok_or_else(|| ModelError::Input(format!("{name} is not a projection of the model")))?;
        let (out, inp) = p.w.dims2()?;
        let (r, a_in) = lora.a.dims2()?;
        let (b_out, b_r) = lora.b.dims2()?;
        if a_in != inp || b_out != out || b_r != r {
            return Err(ModelError::Input(format!(
                "{name} is [{out}, {inp}]: a LoRA pair of A {:?} and B {:?} does not fit",
                lora.a.dims(),
                lora.b.dims()
            )));
        }
        p.lora = Some(lora);
        Ok(())
    }

    /// Replaces the embedding rows (and untied output rows) of `rows.ids` by `rows`' tensors.
    pub fn set_token_rows(&mut self, rows: TokenRows) -> Result<(), ModelError> {
        let h = self.config.hidden_size;
        let n = rows.ids.len();
        let sorted = rows.ids.windows(2).all(|w| w[0] < w[1]);
        let in_vocab = rows
            .ids
            .last()
            .is_none_or(|&i| (i as usize) < self.config.vocab_size);
        let shapes_ok = rows.embed.dims() == [n, h]
            && match (&self.lm_head, &rows.head) {
                (Some(_), Some(t)) => t.dims() == [n, h],
                (None, None) => true,
                _ => false,
            };
        if !(sorted && in_vocab && shapes_ok) {
            return Err(ModelError::Input(format!(
                "token rows must be ascending ids in the vocabulary with [{n}, {h}] rows for the embeddings{}",
                if self.lm_head.is_some() { " and the untied output" } else { " only (tied output)" }
            )));
        }
        self.rows = Some(rows);
        Ok(())
    }

    /// The embedding matrix as the forward uses it.
    fn embedding(&self) -> candle_core::Result<Tensor> {
        match &self.rows {
            Some(r) => replace_rows(&self.embed, &r.ids, &r.embed),
            None => Ok(self.embed.clone()),
        }
    }

    /// The trainable rows over a frozen embedding matrix (a LoRA run): the fused kernels then
    /// give the rows a gradient and never the matrix.
    fn frozen_rows(&self) -> Option<&TokenRows> {
        self.rows.as_ref().filter(|_| !self.embed.track_op())
    }

    /// The embeddings `[n, hidden]` of `ids` (`[n]`).
    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        match self.frozen_rows() {
            Some(r) if fused::applies(&self.embed) => {
                fused::embed_rows(&self.embed, &r.ids, &r.embed, ids)
            }
            _ => self.embedding()?.index_select(ids, 0),
        }
    }

    /// The output matrix as the forward uses it.
    fn output_weight(&self) -> candle_core::Result<Tensor> {
        match (&self.lm_head, &self.rows) {
            (
                Some(h),
                Some(TokenRows {
                    ids,
                    head: Some(rows),
                    ..
                }),
            ) => replace_rows(h, ids, rows),
            (Some(h), _) => Ok(h.clone()),
            (None, _) => self.embedding(),
        }
    }

    /// Reads a checkpoint (any format [`Checkpoint`] reads; GGUF matrices are dequantized) into
    /// a new `VarMap` of `dtype` variables and builds the model on it.
    pub fn from_checkpoint(
        ckpt: &Checkpoint,
        dtype: DType,
        device: &Device,
    ) -> Result<(Llama, VarMap), ModelError> {
        let config = ckpt.config();
        let varmap = VarMap::new();
        {
            let mut vars = varmap
                .data()
                .lock()
                .map_err(|_| ModelError::Load("the variable map's lock is poisoned".into()))?;
            for w in Weight::all(config) {
                let t = ckpt.dense(w, dtype, device)?;
                vars.insert(w.hf_name(), Var::from_tensor(&t)?);
            }
        }
        let model = Llama::new(config, VarBuilder::from_varmap(&varmap, dtype, device))?;
        Ok((model, varmap))
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Logits `[b, t, vocab]` (f32) at every position of `ids` (`[b, t]`, u32).
    ///
    /// `position_ids` (`[b, t]`, u32) default to `0..t` in every row. `mask` is added to the
    /// attention scores (`[b, 1, t, t]` or `[1, 1, t, t]`, 0 where a query may attend, -inf
    /// where not); it replaces the default causal mask, so it must be causal itself, and every
    /// row must allow at least one key (see [`packed_mask`]).
    pub fn forward(
        &self,
        ids: &Tensor,
        position_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let h = self.hidden_states(ids, position_ids, mask)?;
        self.logits(&h)
    }

    /// The output projection: f32 logits `[.., vocab]` of final hidden states `[.., hidden]`
    /// (from [`Llama::hidden_states`]). A trainer applies it only at the positions that have a
    /// target, which spares the `[b, t, vocab]` logits of the others.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor, ModelError> {
        let dims = hidden.dims().to_vec();
        let Some((&h, lead)) = dims.split_last() else {
            return Err(ModelError::Input(
                "hidden states must not be a scalar".into(),
            ));
        };
        if h != self.config.hidden_size {
            return Err(ModelError::Input(format!(
                "hidden states of width {h}, the model's is {}",
                self.config.hidden_size
            )));
        }
        let n: usize = lead.iter().product();
        let mut out = lead.to_vec();
        out.push(self.config.vocab_size);
        let x = hidden.reshape((n, h))?;
        // A LoRA run's frozen output matrix: the gradient reaches its trainable rows only.
        let frozen = match (&self.lm_head, self.frozen_rows()) {
            (None, Some(r)) => Some((&self.embed, &r.ids, &r.embed)),
            (Some(head), Some(r)) if !head.track_op() => {
                r.head.as_ref().map(|rows| (head, &r.ids, rows))
            }
            _ => None,
        };
        let y = match frozen {
            Some((base, ids, rows)) if fused::applies(&x) && fused::applies(base) => {
                fused::linear_rows(&x, base, ids, rows)?
            }
            _ => {
                let w = self.output_weight()?;
                if fused::applies(&x) && fused::applies(&w) {
                    fused::linear(&x, &w)?
                } else {
                    x.matmul(&w.t()?)?
                }
            }
        };
        Ok(y.reshape(out)?.to_dtype(DType::F32)?)
    }

    /// Final hidden states `[b, t, hidden]` (after the last RMSNorm) at every position; the
    /// arguments are those of [`Llama::forward`], which is this followed by [`Llama::logits`].
    pub fn hidden_states(
        &self,
        ids: &Tensor,
        position_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<Tensor, ModelError> {
        let (positions, mask) = self.checked_inputs(ids, position_ids, mask)?;
        Ok(self.forward_inner(ids, &positions, &mask)?)
    }

    /// The position ids and the (f32) attention mask of [`Llama::hidden_states`]'s arguments,
    /// defaults filled in, after checking every shape, type and token id.
    pub(crate) fn checked_inputs(
        &self,
        ids: &Tensor,
        position_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor), ModelError> {
        let c = &self.config;
        let (b, t) = ids.dims2().map_err(|_| {
            ModelError::Input(format!("ids must be [batch, seq], not {:?}", ids.dims()))
        })?;
        if ids.dtype() != DType::U32 {
            return Err(ModelError::Input(format!(
                "ids must be u32, not {:?}",
                ids.dtype()
            )));
        }
        if b == 0 || t == 0 {
            return Err(ModelError::Input("an empty batch".into()));
        }
        let max_id = ids.max_all()?.to_scalar::<u32>()?;
        if max_id as usize >= c.vocab_size {
            return Err(ModelError::Input(format!(
                "token id {max_id} is outside the vocabulary ({})",
                c.vocab_size
            )));
        }
        let device = ids.device();
        let positions = match position_ids {
            Some(p) => {
                if p.dims() != [b, t] || p.dtype() != DType::U32 {
                    return Err(ModelError::Input(format!(
                        "position_ids must be u32 [{b}, {t}], not {:?} {:?}",
                        p.dtype(),
                        p.dims()
                    )));
                }
                p.clone()
            }
            None => Tensor::arange(0u32, t as u32, device)?
                .unsqueeze(0)?
                .repeat((b, 1))?,
        };
        let mask = match mask {
            Some(m) => {
                let ok = m.rank() == 4
                    && (m.dim(0)? == b || m.dim(0)? == 1)
                    && m.dims()[1..] == [1, t, t];
                if !ok {
                    return Err(ModelError::Input(format!(
                        "the attention mask must be [{b}, 1, {t}, {t}], not {:?}",
                        m.dims()
                    )));
                }
                m.to_dtype(DType::F32)?
            }
            None => causal_mask(1, t, device)?,
        };
        Ok((positions, mask))
    }

    fn forward_inner(
        &self,
        ids: &Tensor,
        positions: &Tensor,
        mask: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let (nh, nkv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let eps = c.rms_norm_eps;
        let scale = 1.0 / (d as f64).sqrt();
        let (cos, sin) = rope_tables(positions, d, c.rope_theta)?; // [b, t, d/2]
        let mut x = self
            .embed(&ids.flatten_all()?)?
            .reshape((b, t, c.hidden_size))?;
        if fused::applies(&x) {
            let norm = |x: &Tensor, w: &Tensor| fused::rms_norm(x, w, eps);
            for l in &self.layers {
                let h = norm(&x, &l.attn_norm)?;
                // [b, t, heads*d] -> [b, heads, t, d] (rotated, repeated for GQA) in one pass.
                let proj = |w: &Proj, n: usize| linear(&h, w)?.reshape((b, t, n, d));
                let q = fused::heads(&proj(&l.q, nh)?, Some((&cos, &sin)), 1)?;
                let k = fused::heads(&proj(&l.k, nkv)?, Some((&cos, &sin)), nh / nkv)?;
                let v = fused::heads(&proj(&l.v, nkv)?, None, nh / nkv)?;
                let probs = fused::masked_softmax(&q.matmul(&k.t()?)?, mask, scale)?;
                let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * d))?;
                x = (x + linear(&attn, &l.o)?)?;
                let h = norm(&x, &l.mlp_norm)?;
                let mlp = fused::silu_mul(&linear(&h, &l.gate)?, &linear(&h, &l.up)?)?;
                x = (x + linear(&mlp, &l.down)?)?;
            }
            return norm(&x, &self.norm);
        }
        use composed::{full_table, repeat_kv, rms_norm, rope};
        let (cos, sin) = (full_table(&cos)?, full_table(&sin)?);
        for l in &self.layers {
            let h = rms_norm(&x, &l.attn_norm, eps)?;
            // [b, t, heads*d] -> [b, heads, t, d]
            let heads = |w: &Proj, n: usize| -> candle_core::Result<Tensor> {
                linear(&h, w)?
                    .reshape((b, t, n, d))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = rope(&heads(&l.q, nh)?, &cos, &sin)?;
            let k = repeat_kv(&rope(&heads(&l.k, nkv)?, &cos, &sin)?, nh / nkv)?;
            let v = repeat_kv(&heads(&l.v, nkv)?, nh / nkv)?;
            let scores = (q.matmul(&k.t()?)? * scale)?
                .to_dtype(DType::F32)?
                .broadcast_add(mask)?;
            let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(v.dtype())?;
            let attn = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, nh * d))?;
            x = (x + linear(&attn, &l.o)?)?;
            let h = rms_norm(&x, &l.mlp_norm, eps)?;
            let mlp = (linear(&h, &l.gate)?.silu()? * linear(&h, &l.up)?)?;
            x = (x + linear(&mlp, &l.down)?)?;
        }
        rms_norm(&x, &self.norm, eps)
    }
}

/// `x @ w.T` for `x` `[b, t, in]` and `w` `[out, in]`, plus the adapter's
/// `scale * (x @ A.T) @ B.T`.
fn linear(x: &Tensor, p: &Proj) -> candle_core::Result<Tensor> {
    let (b, t, i) = x.dims3()?;
    let o = p.w.dim(0)?;
    let x = x.reshape((b * t, i))?;
    // The fused kernel computes the weight's gradient only when it trains.
    let mut y = if fused::applies(&x) && fused::applies(&p.w) {
        fused::linear(&x, &p.w)?
    } else {
        x.matmul(&p.w.t()?)?
    };
    if let Some(l) = &p.lora {
        y = (y + (x.matmul(&l.a.t()?)?.matmul(&l.b.t()?)? * l.scale)?)?;
    }
    y.reshape((b, t, o))
}

/// Cos and sin of every position's rotary angles, `[b, t, head_dim / 2]` (one half; both
/// halves of a head rotate by the same angles), in f32 as transformers computes them.
pub(crate) fn rope_tables(
    positions: &Tensor,
    head_dim: usize,
    theta: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = head_dim / 2;
    let inv: Vec<f32> = (0..half)
        .map(|i| 1.0f32 / (theta.powf((2 * i) as f64 / head_dim as f64) as f32))
        .collect();
    let inv = Tensor::from_vec(inv, (1, 1, half), positions.device())?;
    let angles = positions
        .to_dtype(DType::F32)?
        .unsqueeze(2)?
        .broadcast_mul(&inv)?; // [b, t, half]
    Ok((angles.cos()?, angles.sin()?))
}

/// The ops of the forward pass composed from elementary candle ops (all with a backward pass):
/// the path for CUDA and dtypes other than f32, and the reference of the fused kernels' tests.
pub(crate) mod composed {
    use candle_core::{DType, Tensor, D};

    /// RMSNorm as transformers computes it: in f32, `x / sqrt(mean(x²) + eps)`, then scaled.
    pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
        let dt = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
        x.broadcast_div(&rms)?.to_dtype(dt)?.broadcast_mul(w)
    }

    /// Rotary embedding in Hugging Face's layout (the two halves of a head rotate together):
    /// `x * cos + rotate_half(x) * sin`, for `x` `[b, heads, t, d]` and cos/sin broadcast to it.
    pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
        let d = x.dim(D::Minus1)?;
        let x1 = x.narrow(D::Minus1, 0, d / 2)?;
        let x2 = x.narrow(D::Minus1, d / 2, d / 2)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        x.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?
    }

    /// A `[b, t, d/2]` table of [`super::rope_tables`] for both halves of a head, `[b, 1, t, d]`.
    pub fn full_table(half: &Tensor) -> candle_core::Result<Tensor> {
        Tensor::cat(&[half, half], D::Minus1)?.unsqueeze(1)
    }

    /// Grouped-query attention: key/value head `j` serves query heads `j*g .. j*g+g`.
    pub fn repeat_kv(x: &Tensor, g: usize) -> candle_core::Result<Tensor> {
        if g == 1 {
            return Ok(x.clone());
        }
        let (b, kv, t, d) = x.dims4()?;
        x.unsqueeze(2)?
            .expand((b, kv, g, t, d))?
            .reshape((b, kv * g, t, d))
    }
}

/// Per-row cross-entropy `[n]` (f32) of `logits` `[n, vocab]` against `targets` (`[n]`, u32):
/// `logsumexp(row) - row[target]`, differentiable in the logits. One fused kernel on the CPU
/// in f32, which never materialises the `[n, vocab]` log-probabilities.
pub fn nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor, ModelError> {
    let n = logits.dims2().map_err(|_| {
        ModelError::Input(format!(
            "logits must be [n, vocab], not {:?}",
            logits.dims()
        ))
    })?;
    if targets.dims() != [n.0] || targets.dtype() != DType::U32 {
        return Err(ModelError::Input(format!(
            "targets must be u32 [{}], not {:?} {:?}",
            n.0,
            targets.dtype(),
            targets.dims()
        )));
    }
    if fused::applies(logits) {
        return Ok(fused::nll(logits, targets)?);
    }
    let logp = candle_nn::ops::log_softmax(&logits.to_dtype(DType::F32)?, D::Minus1)?;
    Ok(logp.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?.neg()?)
}

/// The causal mask `[b, 1, t, t]`: 0 on and below the diagonal, -inf above.
pub fn causal_mask(b: usize, t: usize, device: &Device) -> candle_core::Result<Tensor> {
    let m: Vec<f32> = (0..t)
        .flat_map(|i| (0..t).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(m, (1, 1, t, t), device)?.repeat((b, 1, 1, 1))
}

fn check_segments(segments: &[Vec<u32>]) -> Result<(usize, usize), ModelError> {
    let b = segments.len();
    let t = segments.first().map_or(0, Vec::len);
    if b == 0 || t == 0 || segments.iter().any(|s| s.len() != t) {
        return Err(ModelError::Input(
            "segments must be non-empty rows of equal length".into(),
        ));
    }
    Ok((b, t))
}

/// The block-diagonal causal mask `[b, 1, t, t]` of packed rows: `segments[r][i]` says which
/// instance position `i` of row `r` belongs to; a position attends to itself and to earlier
/// positions of the same instance. (Padding can be given an instance of its own.)
pub fn packed_mask(segments: &[Vec<u32>], device: &Device) -> Result<Tensor, ModelError> {
    let (b, t) = check_segments(segments)?;
    let m: Vec<f32> = segments
        .iter()
        .flat_map(|s| {
            (0..t).flat_map(move |i| {
                (0..t).map(move |j| {
                    if j <= i && s[j] == s[i] {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
        })
        .collect();
    Ok(Tensor::from_vec(m, (b, 1, t, t), device)?)
}

/// Position ids `[b, t]` of packed rows: each instance (see [`packed_mask`]) counts its own
/// positions from zero.
pub fn packed_positions(segments: &[Vec<u32>], device: &Device) -> Result<Tensor, ModelError> {
    let (b, t) = check_segments(segments)?;
    let mut p = Vec::with_capacity(b * t);
    for s in segments {
        let mut seen = std::collections::HashMap::<u32, u32>::new();
        for id in s {
            let n = seen.entry(*id).or_insert(0);
            p.push(*n);
            *n += 1;
        }
    }
    Ok(Tensor::from_vec(p, (b, t), device)?)
}

#[cfg(test)]
pub(crate) mod tests {
    /// A tiny random Llama (vocabulary 40, hidden 16, FFN 24, 4 heads) with its variables.
    pub(crate) fn tiny(tied: bool, layers: usize, kv_heads: usize) -> (Llama, VarMap) {
        let config = ModelConfig::from_hf_json(
            &serde_json::json!({
                "model_type": "llama", "vocab_size": 40, "hidden_size": 16,
                "intermediate_size": 24, "num_hidden_layers": layers, "num_attention_heads": 4,
                "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                "max_position_embeddings": 64, "tie_word_embeddings": tied,
            })
            .to_string(),
        )
        .unwrap();
        let vars = VarMap::new();
        let model = Llama::new(
            &config,
            VarBuilder::from_varmap(&vars, DType::F32, &Device::Cpu),
        )
        .unwrap();
        (model, vars)
    }

    /// [`tiny`] (2 layers, 2 key/value heads) frozen, with a LoRA pair (rank 4, scale 2) on each
    /// of `adapters` and trainable rows for tokens 5 and 38 (and output rows when untied); the
    /// variables that train: each pair's A and B, the embedding rows, the output rows.
    pub(crate) fn lora_model(tied: bool, adapters: &[(usize, LayerWeight)]) -> (Llama, Vec<Var>) {
        let (mut model, _) = tiny(tied, 2, 2);
        model.freeze();
        let dev = Device::Cpu;
        let var = |shape: (usize, usize)| {
            Var::from_tensor(&Tensor::randn(0f32, 0.1, shape, &dev).unwrap()).unwrap()
        };
        let mut trained = Vec::new();
        for &(layer, which) in adapters {
            let p = model.layers[layer].proj_mut(which).unwrap();
            let (out, inp) = p.w.dims2().unwrap();
            let (a, b) = (var((4, inp)), var((out, 4)));
            let pair = LoraPair {
                a: a.as_tensor().clone(),
                b: b.as_tensor().clone(),
                scale: 2.0,
            };
            model.set_lora(layer, which, pair).unwrap();
            trained.extend([a, b]);
        }
        let (embed_rows, head_rows) = (var((2, 16)), var((2, 16)));
        model
            .set_token_rows(TokenRows {
                ids: vec![5, 38],
                embed: embed_rows.as_tensor().clone(),
                head: (!tied).then(|| head_rows.as_tensor().clone()),
            })
            .unwrap();
        trained.push(embed_rows);
        if !tied {
            trained.push(head_rows);
        }
        (model, trained)
    }

    use super::*;

    #[test]
    fn packing_helpers() {
        let seg = vec![vec![0, 0, 0, 1, 1], vec![4, 4, 4, 4, 4]];
        let p = packed_positions(&seg, &Device::Cpu).unwrap();
        assert_eq!(
            p.to_vec2::<u32>().unwrap(),
            vec![vec![0, 1, 2, 0, 1], vec![0, 1, 2, 3, 4]]
        );
        let m = packed_mask(&seg, &Device::Cpu)
            .unwrap()
            .get(0)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let allowed: Vec<Vec<bool>> = m
            .iter()
            .map(|r| r.iter().map(|x| *x == 0.0).collect())
            .collect();
        assert_eq!(allowed[4], vec![false, false, false, true, true]);
        assert_eq!(allowed[2], vec![true, true, true, false, false]);
        assert!(packed_mask(&[vec![0, 0], vec![0]], &Device::Cpu).is_err());
        assert!(packed_mask(&[], &Device::Cpu).is_err());
    }

    /// A LoRA forward and backward (adapters on some projections, trainable token rows, tied
    /// and untied outputs) gives gradients to the adapters and the rows and to no frozen tensor.
    #[test]
    fn frozen_weights_get_no_gradient() {
        for tied in [true, false] {
            let (model, trained) = lora_model(tied, &[(1, LayerWeight::Q)]);
            let dev = Device::Cpu;
            let ids = Tensor::new(&[[5u32, 1, 38, 7, 5, 2]], &dev).unwrap();
            let logits = model.forward(&ids, None, None).unwrap();
            let targets = Tensor::new(&[1u32, 38, 7, 5, 2, 3], &dev).unwrap();
            let loss = nll(&logits.squeeze(0).unwrap(), &targets)
                .unwrap()
                .sum_all()
                .unwrap();
            let g = loss.backward().unwrap();
            assert_eq!(trained.len(), 2 + 1 + usize::from(!tied));
            for v in &trained {
                assert!(g.get(v.as_tensor()).is_some());
            }
            let mut frozen = vec![&model.embed, &model.norm];
            frozen.extend(&model.lm_head);
            for l in &model.layers {
                frozen.extend([&l.attn_norm, &l.mlp_norm]);
                frozen.extend([&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].map(|p| &p.w));
            }
            assert_eq!(frozen.len(), 2 + usize::from(!tied) + 2 * 9);
            for t in frozen {
                assert!(g.get(t).is_none(), "a frozen {:?} got a gradient", t.dims());
            }
        }
    }

    #[test]
    fn replaced_rows_land_where_their_ids_say() {
        let base = Tensor::arange(0f32, 12.0, &Device::Cpu)
            .unwrap()
            .reshape((6, 2))
            .unwrap();
        let rows = Tensor::new(&[[-1f32, -1.0], [-3.0, -3.0], [-4.0, -4.0]], &Device::Cpu).unwrap();
        let out = replace_rows(&base, &[1, 3, 4], &rows)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let first: Vec<f32> = out.iter().map(|r| r[0]).collect();
        assert_eq!(first, vec![0.0, -1.0, 4.0, -3.0, -4.0, 10.0]);
        let out = replace_rows(&base, &[0, 5], &rows.narrow(0, 0, 2).unwrap())
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(out[0], vec![-1.0, -1.0]);
        assert_eq!(out[5], vec![-3.0, -3.0]);
        assert_eq!(out[2], vec![4.0, 5.0]);
    }
}
