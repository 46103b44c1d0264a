//! A Llama-family decoder (Llama-2, CodeLlama, Mistral, Qwen2 with its q/k/v biases;
//! multi-head or grouped-query attention) whose forward pass runs many sequences at once.
//!
//! The rows of every sequence in a step (a prefill chunk, one decode token, an appended
//! execution block) are stacked into one `[rows, hidden]` matrix, so that the projections and the
//! MLP — nearly all the work — are single matrix multiplies over the whole batch. Only attention
//! is computed per sequence, against that sequence's own KV cache.

use candle_core::quantized::{QMatMul, QTensor};
use candle_core::{DType, Device, Module, Tensor};

use crate::attention;
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::gemv;
use crate::qmatmul::Packed;
use crate::EngineError;

/// A projection: dense weights `[out, in]`, or a GGUF-quantized matrix.
pub(crate) enum Linear {
    Dense(Tensor),
    Quant(QMatMul),
    /// `Q4_0` / `Q8_0` repacked for our own kernels (see [`crate::qmatmul`]).
    Packed(Box<Packed>),
}

impl Linear {
    /// A GGUF matrix: our kernels where they apply, else candle's.
    pub(crate) fn quantized(t: QTensor) -> candle_core::Result<Linear> {
        Ok(match Packed::from_qtensor(&t)? {
            Some(p) => Linear::Packed(Box::new(p)),
            None => Linear::Quant(QMatMul::from_qtensor(t)?),
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Linear::Dense(w)
                if w.dtype() == DType::F32
                    && x.dtype() == DType::F32
                    && x.device().is_cpu()
                    && x.elem_count() / x.dim(candle_core::D::Minus1)? <= gemv::MAX_ROWS =>
            {
                x.contiguous()?.apply_op2_no_bwd(w, &gemv::Gemv)
            }
            Linear::Dense(w) => x.matmul(&w.t()?),
            Linear::Quant(q) => {
                // Quantized kernels take f32 activations.
                let dt = x.dtype();
                let y = q.forward(&x.to_dtype(DType::F32)?)?;
                y.to_dtype(dt)
            }
            Linear::Packed(p) => {
                let dt = x.dtype();
                let y = x
                    .to_dtype(DType::F32)?
                    .contiguous()?
                    .apply_op1_no_bwd(p.as_ref())?;
                y.to_dtype(dt)
            }
        }
    }

    /// Bytes of weight data (for bandwidth figures): as the checkpoint stores them, or
    /// (`resident`) as held in memory for the products.
    pub(crate) fn bytes(&self, resident: bool) -> usize {
        match self {
            Linear::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Linear::Quant(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Linear::Quant(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => {
                w.elem_count() * w.dtype().size_in_bytes()
            }
            Linear::Packed(p) if resident => p.bytes(),
            Linear::Packed(p) => p.source_bytes(),
        }
    }
}

/// Projections that read the same input (q, k, v; gate, up), stacked along their output rows
/// into one matrix where their storage allows it: one product, one quantization of the
/// activations and one dispatch instead of `N`. Otherwise they stay apart.
pub(crate) enum Stack<const N: usize> {
    One { w: Linear, widths: [usize; N] },
    Apart([Linear; N]),
}

impl<const N: usize> Stack<N> {
    pub(crate) fn new(parts: [Linear; N]) -> candle_core::Result<Stack<N>> {
        let dense: Option<Vec<&Tensor>> = parts
            .iter()
            .map(|p| match p {
                Linear::Dense(w) => Some(w),
                _ => None,
            })
            .collect();
        if let Some(ws) = dense {
            let stackable = ws.iter().all(|w| {
                w.dtype() == ws[0].dtype() && w.rank() == 2 && w.dim(1).ok() == ws[0].dim(1).ok()
            });
            if stackable {
                let widths = std::array::from_fn(|i| ws[i].dim(0).unwrap_or(0));
                let w = Tensor::cat(&ws, 0)?;
                return Ok(Stack::One {
                    w: Linear::Dense(w),
                    widths,
                });
            }
        }
        let packed: Option<Vec<&Packed>> = parts
            .iter()
            .map(|p| match p {
                Linear::Packed(p) => Some(p.as_ref()),
                _ => None,
            })
            .collect();
        if let Some(stacked) = packed.as_deref().and_then(Packed::stack) {
            let widths = std::array::from_fn(|i| packed.as_ref().map_or(0, |p| p[i].rows()));
            return Ok(Stack::One {
                w: Linear::Packed(Box::new(stacked)),
                widths,
            });
        }
        Ok(Stack::Apart(parts))
    }

    /// The stacked product `[rows, Σ widths]`, or `None` when the parts are apart.
    fn stacked(&self, x: &Tensor) -> candle_core::Result<Option<Tensor>> {
        match self {
            Stack::One { w, .. } => Ok(Some(w.forward(x)?)),
            Stack::Apart(_) => Ok(None),
        }
    }

    /// Each part's product (views into the stacked one where there is one).
    fn forward(&self, x: &Tensor) -> candle_core::Result<[Tensor; N]> {
        let outs: Vec<Tensor> = match self {
            Stack::One { w, widths } => {
                let y = w.forward(x)?;
                let mut at = 0;
                widths
                    .iter()
                    .map(|&n| {
                        let part = y.narrow(candle_core::D::Minus1, at, n);
                        at += n;
                        part
                    })
                    .collect::<candle_core::Result<_>>()?
            }
            Stack::Apart(parts) => parts
                .iter()
                .map(|p| p.forward(x))
                .collect::<candle_core::Result<_>>()?,
        };
        outs.try_into()
            .map_err(|_| candle_core::Error::Msg("stack: part count".into()))
    }

    fn bytes(&self, resident: bool) -> usize {
        match self {
            Stack::One { w, .. } => w.bytes(resident),
            Stack::Apart(parts) => parts.iter().map(|p| p.bytes(resident)).sum(),
        }
    }
}

/// SwiGLU over a stacked `[rows, 2F]` gate/up product: `silu(gate) · up`, `[rows, F]`, in one
/// pass (f32 on the CPU).
struct SwiGlu;

impl candle_core::CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu-stacked"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let candle_core::CpuStorage::F32(v) = s else {
            candle_core::bail!("swiglu: f32 expected")
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("swiglu: contiguous input expected")
        };
        let (rows, two_f) = l.shape().dims2()?;
        if two_f % 2 != 0 {
            candle_core::bail!("swiglu: odd width {two_f}")
        }
        let f = two_f / 2;
        let mut out = vec![0f32; rows * f];
        for (row, o) in v[a..b].chunks_exact(two_f).zip(out.chunks_exact_mut(f)) {
            let (gate, up) = row.split_at(f);
            mathcoder_model::vmath::silu_mul(o, gate, up);
        }
        Ok((candle_core::CpuStorage::F32(out), (rows, f).into()))
    }
}

/// `silu(gate) · up` for the MLP, from a stacked product where there is one.
fn swiglu(gate_up: &Stack<2>, x: &Tensor) -> candle_core::Result<Tensor> {
    if x.dtype() == DType::F32 && x.device().is_cpu() {
        if let Some(y) = gate_up.stacked(x)? {
            return y.contiguous()?.apply_op1_no_bwd(&SwiGlu);
        }
    }
    let [gate, up] = gate_up.forward(x)?;
    candle_nn::ops::silu(&gate)? * up
}

/// One decoder layer as the forward pass uses it.
pub(crate) struct Block {
    pub(crate) attn_norm: Tensor,
    pub(crate) qkv: Stack<3>,
    pub(crate) qkv_bias: Option<[Tensor; 3]>,
    pub(crate) o: Linear,
    pub(crate) mlp_norm: Tensor,
    pub(crate) gate_up: Stack<2>,
    pub(crate) down: Linear,
}

impl Block {
    fn new(l: Layer) -> candle_core::Result<Block> {
        Ok(Block {
            attn_norm: l.attn_norm,
            qkv: Stack::new([l.q, l.k, l.v])?,
            qkv_bias: l.qkv_bias,
            o: l.o,
            mlp_norm: l.mlp_norm,
            gate_up: Stack::new([l.gate, l.up])?,
            down: l.down,
        })
    }

    fn bytes(&self, resident: bool) -> usize {
        let r = resident;
        self.qkv.bytes(r) + self.o.bytes(r) + self.gate_up.bytes(r) + self.down.bytes(r)
    }
}

/// Token embeddings: a dense table or a quantized one (rows dequantized on lookup).
pub(crate) enum Embedding {
    Dense(Tensor),
    Quant(std::sync::Arc<candle_core::quantized::QTensor>),
}

pub(crate) struct Layer {
    pub attn_norm: Tensor,
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    /// Biases of q, k and v (Qwen2), in the activations' dtype.
    pub qkv_bias: Option<[Tensor; 3]>,
    pub o: Linear,
    pub mlp_norm: Tensor,
    pub gate: Linear,
    pub up: Linear,
    pub down: Linear,
}

/// How rotary embeddings pair dimensions: Hugging Face checkpoints rotate the two halves of a
/// head (`rotate_half`); llama.cpp's converter permutes Q and K so that GGUF files rotate
/// adjacent pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    Halves,
    Interleaved,
}

/// The tensors of a model, as loaded.
pub(crate) struct Weights {
    pub embed: Embedding,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    pub lm_head: Linear,
}

/// The weights and the rotary tables.
pub struct Model {
    pub config: ModelConfig,
    pub(crate) embed: Embedding,
    pub(crate) layers: Vec<Block>,
    pub(crate) norm: Tensor,
    pub(crate) lm_head: Linear,
    pub(crate) rope: RopeLayout,
    /// Rotary inverse frequencies `[head_dim/2]` (angles are computed per step for the
    /// positions in it, so that no table is sized by the declared context).
    pub(crate) inv_freq: Vec<f32>,
    /// The single-region decode step's f32 vectors, where the model can take it
    /// ([`crate::decode`]; `None`: every step takes the general path).
    pub(crate) decode: Option<crate::decode::Plan>,
    /// Activations dtype.
    pub dtype: DType,
    /// KV cache dtype (attention converts the cache to `dtype`).
    pub kv_dtype: DType,
    pub device: Device,
    /// What the weights are stored as (`f32`, `bf16`, `q4_0`, ...).
    pub weight_format: String,
}

/// One sequence's part of a step: the new tokens and the cache they extend.
pub struct Step<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
    /// Return logits for every new token (true) or only the last (false).
    pub all_logits: bool,
}

impl Model {
    pub(crate) fn assemble(
        config: ModelConfig,
        w: Weights,
        rope: RopeLayout,
        dtype: DType,
        kv_dtype: DType,
        device: Device,
        weight_format: String,
    ) -> Result<Model, EngineError> {
        let inv_freq = inv_freq(&config);
        let layers: Vec<Block> = w
            .layers
            .into_iter()
            .map(Block::new)
            .collect::<candle_core::Result<_>>()?;
        let decode = crate::decode::Plan::new(&config, &layers, &w.norm, &w.lm_head, dtype)?;
        Ok(Model {
            config,
            embed: w.embed,
            layers,
            norm: w.norm,
            lm_head: w.lm_head,
            rope,
            inv_freq,
            decode,
            dtype,
            kv_dtype,
            device,
            weight_format,
        })
    }

    /// A new, empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(
            self.config.num_layers,
            self.config.num_kv_heads,
            self.config.head_dim,
            self.kv_dtype,
            self.device.clone(),
        )
    }

    /// Bytes of weights a decoded token needs (every matrix once), as the checkpoint stores
    /// them: the least any engine reads, so the bandwidth bound's denominator.
    pub fn weight_bytes(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| l.bytes(false)).sum();
        layers + self.lm_head.bytes(false)
    }

    /// The same as our kernels hold and read them (the K formats' repacked scales are larger).
    pub fn resident_weight_bytes(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| l.bytes(true)).sum();
        layers + self.lm_head.bytes(true)
    }

    /// Runs one step over several sequences and returns, per sequence, its logits (`[vocab]` for
    /// the last new token, or `[n, vocab]` with `all_logits`) as f32. Each cache grows by its
    /// sequence's tokens.
    pub fn forward(&self, steps: &mut [Step<'_>]) -> Result<Vec<Tensor>, EngineError> {
        let max = self.config.max_position_embeddings;
        for s in steps.iter() {
            if s.tokens.is_empty() {
                return Err(EngineError::input("a step with no tokens"));
            }
            if s.cache.len() + s.tokens.len() > max {
                return Err(EngineError::ContextFull {
                    needed: s.cache.len() + s.tokens.len(),
                    limit: max,
                });
            }
            if let Some(t) = s
                .tokens
                .iter()
                .find(|t| **t as usize >= self.config.vocab_size)
            {
                return Err(EngineError::input(format!(
                    "token id {t} is outside the vocabulary ({})",
                    self.config.vocab_size
                )));
            }
        }
        if let Some(out) = crate::decode::forward(self, steps) {
            return Ok(out?);
        }
        Ok(self.forward_inner(steps)?)
    }

    /// Whether decode steps take the single-region path ([`crate::decode`]).
    pub fn fused_decode(&self) -> bool {
        self.decode.is_some()
    }

    /// Turns the single-region decode step off (`false`) or back on where the model can take
    /// it, e.g. to compare it with the general path.
    pub fn set_fused_decode(&mut self, on: bool) -> Result<(), EngineError> {
        self.decode = if on {
            crate::decode::Plan::new(
                &self.config,
                &self.layers,
                &self.norm,
                &self.lm_head,
                self.dtype,
            )?
        } else {
            None
        };
        Ok(())
    }

    fn forward_inner(&self, steps: &mut [Step<'_>]) -> candle_core::Result<Vec<Tensor>> {
        let c = &self.config;
        let ids: Vec<u32> = steps
            .iter()
            .flat_map(|s| s.tokens.iter().copied())
            .collect();
        let positions: Vec<u32> = steps
            .iter()
            .flat_map(|s| {
                let p = s.cache.len() as u32;
                (0..s.tokens.len() as u32).map(move |i| p + i)
            })
            .collect();
        let rows = ids.len();
        let ids_t = Tensor::from_vec(ids, rows, &self.device)?;
        let (cos, sin) = rope_angles(&self.inv_freq, &positions, &self.device)?;
        let (cos, sin) = (cos.to_dtype(self.dtype)?, sin.to_dtype(self.dtype)?);
        let mut x = match &self.embed {
            Embedding::Dense(e) => e.index_select(&ids_t, 0)?,
            Embedding::Quant(q) => q.embedding(&ids_t)?,
        }
        .to_dtype(self.dtype)?;
        let (h, kv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (d as f64).sqrt();
        for (li, layer) in self.layers.iter().enumerate() {
            let xn = candle_nn::ops::rms_norm(&x, &layer.attn_norm, eps)?;
            let [mut q, mut k, mut v] = layer.qkv.forward(&xn)?;
            if let Some([bq, bk, bv]) = &layer.qkv_bias {
                q = q.broadcast_add(bq)?;
                k = k.broadcast_add(bk)?;
                v = v.broadcast_add(bv)?;
            }
            // [rows, heads*d] -> [1, heads, rows, d], rotated at each row's own position.
            let q = q
                .reshape((rows, h, d))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?;
            let k = k
                .reshape((rows, kv, d))?
                .transpose(0, 1)?
                .contiguous()?
                .unsqueeze(0)?;
            let v = v.reshape((rows, kv, d))?.transpose(0, 1)?.contiguous()?;
            let (q, k) = (
                crate::rope::rope(&q, &cos, &sin, self.rope)?,
                crate::rope::rope(&k, &cos, &sin, self.rope)?,
            );
            let (q, k) = (q.squeeze(0)?, k.squeeze(0)?);
            // Attention per sequence, against its cache.
            let mut outs = Vec::with_capacity(steps.len());
            let mut start = 0;
            for s in steps.iter_mut() {
                let n = s.tokens.len();
                let qs = q.narrow(1, start, n)?;
                let ks = k.narrow(1, start, n)?.contiguous()?;
                let vs = v.narrow(1, start, n)?.contiguous()?;
                let past = s.cache.len();
                let (kc, vc) = s.cache.append(li, &ks, &vs)?;
                outs.push(
                    if attention::applies(n, past)
                        && qs.dtype() == DType::F32
                        && qs.device().is_cpu()
                    {
                        let op = attention::Attend {
                            past,
                            scale: scale as f32,
                            chunks: None,
                        };
                        qs.apply_op3_no_bwd(&kc, &vc, &op)?
                    } else {
                        attend(&qs, &kc, &vc, past, h, kv, d, scale)?
                    },
                );
                start += n;
            }
            let attn = Tensor::cat(&outs, 0)?;
            x = (x + layer.o.forward(&attn)?)?;
            let xn = candle_nn::ops::rms_norm(&x, &layer.mlp_norm, eps)?;
            x = (x + layer.down.forward(&swiglu(&layer.gate_up, &xn)?)?)?;
        }
        for s in steps.iter_mut() {
            s.cache.advance(s.tokens.len());
        }
        // Only the rows whose logits are wanted go through the (large) output projection.
        let mut wanted: Vec<u32> = Vec::new();
        let mut spans = Vec::with_capacity(steps.len());
        let mut start = 0u32;
        for s in steps.iter() {
            let n = s.tokens.len() as u32;
            if s.all_logits {
                spans.push((wanted.len(), n as usize));
                wanted.extend(start..start + n);
            } else {
                spans.push((wanted.len(), 1));
                wanted.push(start + n - 1);
            }
            start += n;
        }
        let idx = Tensor::from_vec(wanted.clone(), wanted.len(), &self.device)?;
        let x = x.index_select(&idx, 0)?;
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        let logits = self.lm_head.forward(&x)?.to_dtype(DType::F32)?;
        spans
            .into_iter()
            .zip(steps.iter())
            .map(|((at, n), s)| {
                let l = logits.narrow(0, at, n)?;
                if s.all_logits {
                    Ok(l)
                } else {
                    l.squeeze(0)
                }
            })
            .collect()
    }
}

/// Causal attention of `n` new queries (`[heads, n, d]`) at positions `past..past+n` over the
/// cache (`[kv, past+n, d]`). Query heads are grouped onto their key/value head without copying
/// the cache (grouped-query attention).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: usize,
    h: usize,
    kv: usize,
    d: usize,
    scale: f64,
) -> candle_core::Result<Tensor> {
    let n = q.dim(1)?;
    let g = h / kv;
    let total = past + n;
    // [h, n, d] -> [kv, g*n, d]: heads j*g..j*g+g share kv head j.
    let q = q.contiguous()?.reshape((kv, g * n, d))?;
    // A cache kept in another dtype (f16 to save memory) computes in the activations'.
    let (k, v) = (&k.to_dtype(q.dtype())?, &v.to_dtype(q.dtype())?);
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(DType::F32)?;
    let scores = if n > 1 {
        // Row r of the [g*n, total] block is query r % n at position past + r % n.
        let mask: Vec<f32> = (0..g * n)
            .flat_map(|r| {
                let pos = past + r % n;
                (0..total).map(move |j| if j > pos { f32::NEG_INFINITY } else { 0.0 })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (g * n, total), q.device())?;
        scores.broadcast_add(&mask)?
    } else {
        scores
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
    let out = probs.matmul(v)?; // [kv, g*n, d]
                                // -> [h, n, d] -> [n, h*d]
    out.reshape((h, n, d))?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, h * d))
}

/// Rotary inverse frequencies, as transformers computes them (in f32).
fn inv_freq(c: &ModelConfig) -> Vec<f32> {
    (0..c.head_dim / 2)
        .map(|i| 1.0f32 / (c.rope_theta.powf((2 * i) as f64 / c.head_dim as f64) as f32))
        .collect()
}

/// Rotary cos/sin `[positions, head_dim/2]` for the given positions (f32 angles, as
/// transformers computes them).
fn rope_angles(
    inv: &[f32],
    positions: &[u32],
    device: &Device,
) -> candle_core::Result<(Tensor, Tensor)> {
    let half = inv.len();
    let (cos, sin) = angles(inv, positions);
    Ok((
        Tensor::from_vec(cos, (positions.len(), half), device)?,
        Tensor::from_vec(sin, (positions.len(), half), device)?,
    ))
}

/// Rotary cosines and sines `[positions][head_dim/2]`, row-major.
pub(crate) fn angles(inv: &[f32], positions: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::with_capacity(positions.len() * inv.len());
    let mut sin = Vec::with_capacity(positions.len() * inv.len());
    for &p in positions {
        for f in inv {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// The attention output layout of Hugging Face's reference implementation, for tests.
#[cfg(test)]
pub(crate) fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    past: usize,
    h: usize,
    kv: usize,
) -> candle_core::Result<Tensor> {
    // Repeat kv heads (repeat_interleave), full masked attention.
    let (_, n, d) = q.dims3()?;
    let g = h / kv;
    let total = k.dim(1)?;
    let k = k
        .unsqueeze(1)?
        .expand((kv, g, total, d))?
        .reshape((h, total, d))?;
    let v = v
        .unsqueeze(1)?
        .expand((kv, g, total, d))?
        .reshape((h, total, d))?;
    let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (n, total), q.device())?;
    let p = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, candle_core::D::Minus1)?;
    p.matmul(&v)?
        .transpose(0, 1)?
        .contiguous()?
        .reshape((n, h * d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouped_attention_equals_repeated_heads() {
        let dev = Device::Cpu;
        let (h, kv, d, past, n) = (8, 2, 4, 5, 3);
        let q = Tensor::randn(0f32, 1.0, (h, n, d), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (kv, past + n, d), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (kv, past + n, d), &dev).unwrap();
        let a = attend(&q, &k, &v, past, h, kv, d, 1.0 / (d as f64).sqrt()).unwrap();
        let b = reference_attention(&q, &k, &v, past, h, kv).unwrap();
        let diff = crate::test_util::max_abs_diff(&a, &b);
        assert!(diff < 1e-5, "{diff}");
    }
}
