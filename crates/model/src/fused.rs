//! Fused CPU training kernels (f32) with hand-written backward passes, for the reference Llama.
//!
//! Composed from elementary candle ops, RMSNorm, rotary embeddings, the attention softmax, SwiGLU
//! and the cross-entropy each make several full passes over their tensors in the forward pass
//! and more in the backward pass, each into a freshly allocated buffer, plus copies for the
//! head transposes; on CPU that, not the matrix multiplies, is what made candle training
//! 2-3x slower than PyTorch (`../shared/docs/rust-stack-notes.md`). Here each is one candle
//! `CustomOp` with a `cpu_fwd` and a `bwd` whose gradient is again one kernel:
//!
//! * [`rms_norm`]: `x / sqrt(mean(x²) + eps) * w` over the last dimension.
//! * [`heads`]: a projection's output `[b, t, n, d]` to attention heads `[b, n·g, t, d]` in
//!   one pass: the transpose, rotary embedding (Hugging Face's half-split layout, optional) and
//!   grouped-query repetition (`g` copies of each head) together; the backward pass rotates
//!   back, sums the copies and transposes in one pass too.
//! * [`masked_softmax`]: `softmax(scores · scale + mask)` over the last dimension, the mask
//!   broadcast over heads (a causal or packed block-diagonal mask).
//! * [`silu_mul`]: SwiGLU's `silu(gate) · up`.
//! * [`nll`]: per-row cross-entropy `logsumexp(logits) - logits[target]` without materialising
//!   the log-probabilities.
//! * [`linear`]: `x · wᵀ` whose backward pass computes the weight's gradient (`gᵀ · x`, straight
//!   in `w`'s `[out, in]` layout) only when `w` is tracked: a frozen weight (a LoRA run's base)
//!   costs the input's gradient only.
//! * [`linear_rows`] and [`embed_rows`]: the output projection and the embedding lookup of a
//!   frozen matrix some of whose rows are trainable (PEFT's trainable tokens): the gradient
//!   reaches those rows only, never the `[vocab, hidden]` matrix.
//!
//! The kernels need f32 tensors on the CPU ([`applies`]); elsewhere (CUDA, other dtypes) the
//! model uses the composed ops. Each has a test against the composed version, forward and
//! gradients.

use crate::vmath;
use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use rayon::prelude::*;

/// Whether the fused kernels can run on `t` (f32 on the CPU).
pub fn applies(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: f32 input expected")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: contiguous input expected"),
    }
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        bail!("{op}: u32 input expected")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: contiguous input expected"),
    }
}

/// Runs `f(row_index, row)` over the rows (of length `row`) of `out`, in parallel.
fn par_rows<F: Fn(usize, &mut [f32]) + Sync>(out: &mut [f32], row: usize, f: F) {
    if row == 0 || out.is_empty() {
        return;
    }
    let rows = out.len() / row;
    let per = (rows / (4 * rayon::current_num_threads())).max(1);
    out.par_chunks_mut(row * per)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (i, r) in chunk.chunks_mut(row).enumerate() {
                f(c * per + i, r)
            }
        });
}

/// Elementwise over equally long slices, in parallel chunks.
fn par_elems<F: Fn(usize, &mut [f32]) + Sync>(out: &mut [f32], f: F) {
    const CHUNK: usize = 1 << 14;
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(c, chunk)| f(c * CHUNK, chunk));
}

fn sum_sq(x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += c[k] * c[k];
        }
    }
    let tail: f32 = it.remainder().iter().map(|v| v * v).sum();
    acc.iter().sum::<f32>() + tail
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (sum_sq(x) / x.len() as f32 + eps).sqrt()
}

// ---------------------------------------------------------------------------------------------
// RMSNorm

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "fused-rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let h = w.len();
        if h == 0 || l1.dims().last() != Some(&h) {
            bail!("rms_norm: weight of {h} for input {:?}", l1.dims())
        }
        Ok((
            CpuStorage::F32(rms_norm_rows(x, w, self.eps)),
            l1.shape().clone(),
        ))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormGradX { eps: self.eps })?;
        // A frozen (detached) weight gets no gradient.
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(&g, &RmsNormGradW { eps: self.eps })?)
        } else {
            None
        };
        Ok((Some(dx), dw))
    }
}

/// `dx = inv · (g·w - x̂ · mean(g·w·x̂))` with `x̂ = x · inv`.
struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad-x"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        if g.len() != x.len() {
            bail!("rms_norm backward: gradient shape")
        }
        let mut dx = vec![0f32; x.len()];
        rms_norm_grad_x(&mut dx, x, w, g, self.eps);
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

/// `dw = Σ_rows g · x̂`.
struct RmsNormGradW {
    eps: f32,
}

impl CustomOp2 for RmsNormGradW {
    fn name(&self) -> &'static str {
        "fused-rms-norm-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let Some(&h) = l1.dims().last() else {
            bail!("rms_norm backward: scalar input")
        };
        if h == 0 || g.len() != x.len() {
            bail!("rms_norm backward: gradient shape")
        }
        Ok((
            CpuStorage::F32(rms_norm_grad_w(x, g, h, self.eps)),
            Shape::from(h),
        ))
    }
}

/// RMSNorm of the rows of `x` (width `w.len()`).
pub(crate) fn rms_norm_rows(x: &[f32], w: &[f32], eps: f32) -> Vec<f32> {
    let h = w.len();
    let mut y = vec![0f32; x.len()];
    par_rows(&mut y, h, |r, yr| {
        let xr = &x[r * h..(r + 1) * h];
        let inv = inv_rms(xr, eps);
        for i in 0..h {
            yr[i] = xr[i] * inv * w[i];
        }
    });
    y
}

/// `dx += inv · (g·w - x̂ · mean(g·w·x̂))` (`dx` zeroed for the op, the residual stream's
/// gradient in a hand-written backward pass).
pub(crate) fn rms_norm_grad_x(dx: &mut [f32], x: &[f32], w: &[f32], g: &[f32], eps: f32) {
    let h = w.len();
    par_rows(dx, h, |r, dr| {
        let xr = &x[r * h..(r + 1) * h];
        let gr = &g[r * h..(r + 1) * h];
        let inv = inv_rms(xr, eps);
        let mut c = 0f32;
        for i in 0..h {
            c += gr[i] * w[i] * xr[i];
        }
        let c = c * inv * inv / h as f32;
        for i in 0..h {
            dr[i] += inv * (gr[i] * w[i] - xr[i] * c);
        }
    });
}

/// `dw = Σ_rows g · x̂` (rows of width `h`), summed in f64.
pub(crate) fn rms_norm_grad_w(x: &[f32], g: &[f32], h: usize, eps: f32) -> Vec<f32> {
    let rows = x.len() / h;
    let blocks = (4 * rayon::current_num_threads()).min(rows).max(1);
    let per = rows.div_ceil(blocks);
    let partial: Vec<Vec<f64>> = (0..blocks)
        .into_par_iter()
        .map(|blk| {
            let mut acc = vec![0f64; h];
            for r in blk * per..((blk + 1) * per).min(rows) {
                let xr = &x[r * h..(r + 1) * h];
                let gr = &g[r * h..(r + 1) * h];
                let inv = inv_rms(xr, eps);
                for i in 0..h {
                    acc[i] += f64::from(gr[i] * (xr[i] * inv));
                }
            }
            acc
        })
        .collect();
    (0..h)
        .map(|i| partial.iter().map(|p| p[i]).sum::<f64>() as f32)
        .collect()
}

/// RMSNorm over the last dimension of `x` (f32, CPU) with weight `w` (`[hidden]`).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&w.contiguous()?, RmsNorm { eps: eps as f32 })
}

// ---------------------------------------------------------------------------------------------
// Heads: transpose + RoPE + GQA repetition

/// `[b, t, n, d]` projections as `[b, n·groups, t, d]` heads.
#[derive(Clone, Copy)]
pub(crate) struct Heads {
    pub b: usize,
    pub t: usize,
    pub n: usize,
    pub d: usize,
    pub groups: usize,
}

impl Heads {
    fn of(x: &Layout, groups: usize) -> Result<Heads> {
        let &[b, t, n, d] = x.dims() else {
            bail!("heads: [b, t, heads, d] expected, got {:?}", x.dims())
        };
        if d % 2 != 0 || groups == 0 {
            bail!("heads: even head_dim and positive groups expected")
        }
        Ok(Heads { b, t, n, d, groups })
    }

    fn out_shape(&self) -> Shape {
        Shape::from((self.b, self.n * self.groups, self.t, self.d))
    }

    fn in_shape(&self) -> Shape {
        Shape::from((self.b, self.t, self.n, self.d))
    }

    fn check_tables(&self, cos: &[f32], sin: &[f32]) -> Result<()> {
        let want = self.b * self.t * self.d / 2;
        if cos.len() != want || sin.len() != want {
            bail!("heads: cos/sin tables must be [b, t, head_dim/2]")
        }
        Ok(())
    }

    /// `[b, t, n, d]` → `[b, n·g, t, d]`, rotated by `tables` (cos, sin `[b, t, d/2]`).
    pub(crate) fn forward(&self, x: &[f32], tables: Option<(&[f32], &[f32])>) -> Vec<f32> {
        let Heads { b, t, n, d, groups } = *self;
        let half = d / 2;
        let mut y = vec![0f32; b * n * groups * t * d];
        // One output row per (batch, output head, position).
        par_rows(&mut y, d, |r, yr| {
            let tt = r % t;
            let ho = (r / t) % (n * groups);
            let bb = r / (t * n * groups);
            let j = ho / groups;
            let src = &x[((bb * t + tt) * n + j) * d..][..d];
            match tables {
                Some((cos, sin)) => {
                    let c = &cos[(bb * t + tt) * half..][..half];
                    let s = &sin[(bb * t + tt) * half..][..half];
                    let (x1, x2) = src.split_at(half);
                    let (y1, y2) = yr.split_at_mut(half);
                    for i in 0..half {
                        y1[i] = x1[i] * c[i] - x2[i] * s[i];
                        y2[i] = x2[i] * c[i] + x1[i] * s[i];
                    }
                }
                None => yr.copy_from_slice(src),
            }
        });
        y
    }

    /// The transpose of [`Heads::forward`]: `[b, n·g, t, d]` → `[b, t, n, d]`.
    pub(crate) fn backward(&self, g: &[f32], tables: Option<(&[f32], &[f32])>) -> Vec<f32> {
        let Heads { b, t, n, d, groups } = *self;
        let half = d / 2;
        let nh = n * groups;
        let mut dx = vec![0f32; b * t * n * d];
        // One input row per (batch, position, head).
        par_rows(&mut dx, d, |r, dr| {
            let j = r % n;
            let tt = (r / n) % t;
            let bb = r / (n * t);
            for k in 0..groups {
                let ho = j * groups + k;
                let gr = &g[((bb * nh + ho) * t + tt) * d..][..d];
                match tables {
                    Some((cos, sin)) => {
                        let c = &cos[(bb * t + tt) * half..][..half];
                        let s = &sin[(bb * t + tt) * half..][..half];
                        let (g1, g2) = gr.split_at(half);
                        let (d1, d2) = dr.split_at_mut(half);
                        for i in 0..half {
                            d1[i] += g1[i] * c[i] + g2[i] * s[i];
                            d2[i] += g2[i] * c[i] - g1[i] * s[i];
                        }
                    }
                    None => {
                        for i in 0..d {
                            dr[i] += gr[i];
                        }
                    }
                }
            }
        });
        dx
    }
}

/// The forward op: `x` alone (no rotation) or `x, cos, sin`.
struct HeadsOp {
    groups: usize,
}

impl CustomOp1 for HeadsOp {
    fn name(&self) -> &'static str {
        "fused-heads"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = Heads::of(l, self.groups)?;
        let y = h.forward(f32s(s, l, "fused-heads")?, None);
        Ok((CpuStorage::F32(y), h.out_shape()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let dims = x.dims4()?;
        let g = g.contiguous()?;
        Ok(Some(g.apply_op1_no_bwd(&HeadsGrad {
            dims,
            groups: self.groups,
        })?))
    }
}

impl CustomOp3 for HeadsOp {
    fn name(&self) -> &'static str {
        "fused-rope-heads"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = Heads::of(l1, self.groups)?;
        let (cos, sin) = (f32s(s2, l2, "fused-heads")?, f32s(s3, l3, "fused-heads")?);
        h.check_tables(cos, sin)?;
        let y = h.forward(f32s(s1, l1, "fused-heads")?, Some((cos, sin)));
        Ok((CpuStorage::F32(y), h.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = x.dims4()?;
        let g = g.contiguous()?;
        let dx = g.apply_op3_no_bwd(
            cos,
            sin,
            &HeadsGrad {
                dims,
                groups: self.groups,
            },
        )?;
        Ok((Some(dx), None, None))
    }
}

struct HeadsGrad {
    /// The forward input's `[b, t, n, d]`.
    dims: (usize, usize, usize, usize),
    groups: usize,
}

impl HeadsGrad {
    fn heads(&self, g: &Layout) -> Result<Heads> {
        let (b, t, n, d) = self.dims;
        let h = Heads {
            b,
            t,
            n,
            d,
            groups: self.groups,
        };
        if g.shape() != &h.out_shape() {
            bail!("heads backward: gradient of shape {:?}", g.dims())
        }
        Ok(h)
    }
}

impl CustomOp1 for HeadsGrad {
    fn name(&self) -> &'static str {
        "fused-heads-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = self.heads(l)?;
        let dx = h.backward(f32s(s, l, "fused-heads")?, None);
        Ok((CpuStorage::F32(dx), h.in_shape()))
    }
}

impl CustomOp3 for HeadsGrad {
    fn name(&self) -> &'static str {
        "fused-rope-heads-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let h = self.heads(l1)?;
        let (cos, sin) = (f32s(s2, l2, "fused-heads")?, f32s(s3, l3, "fused-heads")?);
        h.check_tables(cos, sin)?;
        let dx = h.backward(f32s(s1, l1, "fused-heads")?, Some((cos, sin)));
        Ok((CpuStorage::F32(dx), h.in_shape()))
    }
}

/// A projection's output `x` `[b, t, n, d]` as attention heads `[b, n·groups, t, d]`: head `j`
/// becomes heads `j·groups .. j·groups+groups`, each rotated by `rope` (cos and sin
/// `[b, t, d/2]`, Hugging Face's half-split layout) when given.
pub fn heads(x: &Tensor, rope: Option<(&Tensor, &Tensor)>, groups: usize) -> Result<Tensor> {
    let x = x.contiguous()?;
    match rope {
        Some((cos, sin)) => x.apply_op3(&cos.contiguous()?, &sin.contiguous()?, HeadsOp { groups }),
        None => x.apply_op1(HeadsOp { groups }),
    }
}

// ---------------------------------------------------------------------------------------------
// Masked, scaled softmax

struct MaskedSoftmax {
    scale: f32,
}

impl CustomOp2 for MaskedSoftmax {
    fn name(&self) -> &'static str {
        "fused-masked-softmax"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let s = f32s(s1, l1, self.name())?;
        let m = f32s(s2, l2, self.name())?;
        let &[b, h, tq, tk] = l1.dims() else {
            bail!("masked_softmax: scores must be [b, heads, t, t]")
        };
        let mb = l2.dims().first().copied().unwrap_or(0);
        if l2.dims().len() != 4 || l2.dims()[1..] != [1, tq, tk] || (mb != 1 && mb != b) {
            bail!("masked_softmax: mask of shape {:?}", l2.dims())
        }
        let _ = b;
        let p = masked_softmax_rows(s, m, mb, (h, tq, tk), self.scale);
        Ok((CpuStorage::F32(p), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _s: &Tensor,
        _m: &Tensor,
        p: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let ds = p.apply_op2_no_bwd(&g, &SoftmaxGrad { scale: self.scale })?;
        Ok((Some(ds), None))
    }
}

/// `ds = scale · p · (g - Σ g·p)`.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let p = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let Some(&tk) = l1.dims().last() else {
            bail!("softmax backward: scalar input")
        };
        if g.len() != p.len() {
            bail!("softmax backward: gradient shape")
        }
        Ok((
            CpuStorage::F32(softmax_grad_rows(p, g, tk, self.scale)),
            l1.shape().clone(),
        ))
    }
}

/// `softmax(s · scale + mask)` over rows of `tk`: `s` `[b, h, tq, tk]`, `mask` `[mb, 1, tq, tk]`
/// with `mb` 1 or `b`.
pub(crate) fn masked_softmax_rows(
    s: &[f32],
    m: &[f32],
    mb: usize,
    (h, tq, tk): (usize, usize, usize),
    scale: f32,
) -> Vec<f32> {
    let mut p = vec![0f32; s.len()];
    par_rows(&mut p, tk, |r, pr| {
        let q = r % tq;
        let bb = r / (h * tq);
        let mrow = &m[((if mb == 1 { 0 } else { bb }) * tq + q) * tk..][..tk];
        let srow = &s[r * tk..][..tk];
        for i in 0..tk {
            pr[i] = srow[i] * scale + mrow[i];
        }
        let max = vmath::max(pr);
        let sum = vmath::exp_in_place(pr, max);
        vmath::div_in_place(pr, sum);
    });
    p
}

/// `ds = scale · p · (g - Σ g·p)` over rows of `tk`.
pub(crate) fn softmax_grad_rows(p: &[f32], g: &[f32], tk: usize, scale: f32) -> Vec<f32> {
    let mut ds = vec![0f32; p.len()];
    par_rows(&mut ds, tk, |r, dr| {
        let pr = &p[r * tk..][..tk];
        let gr = &g[r * tk..][..tk];
        let c = dot(pr, gr);
        for i in 0..tk {
            dr[i] = scale * pr[i] * (gr[i] - c);
        }
    });
    ds
}

/// `softmax(scores · scale + mask)` over the last dimension: `scores` `[b, heads, t, t]`,
/// `mask` `[b or 1, 1, t, t]` (additive; no gradient).
pub fn masked_softmax(scores: &Tensor, mask: &Tensor, scale: f64) -> Result<Tensor> {
    scores.contiguous()?.apply_op2(
        &mask.contiguous()?,
        MaskedSoftmax {
            scale: scale as f32,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

struct SiluMul;

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "fused-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32s(s1, l1, self.name())?;
        let b = f32s(s2, l2, self.name())?;
        if l1.shape() != l2.shape() {
            bail!("silu_mul: shapes {:?} and {:?}", l1.dims(), l2.dims())
        }
        Ok((CpuStorage::F32(silu_mul_elems(a, b)), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dgate = gate.apply_op3_no_bwd(up, &g, &SiluMulGrad)?;
        // d up = g · silu(gate): the forward kernel itself.
        let dup = gate.apply_op2_no_bwd(&g, &SiluMul)?;
        Ok((Some(dgate), Some(dup)))
    }
}

/// `d gate = g · up · σ(gate) · (1 + gate · (1 - σ(gate)))`.
struct SiluMulGrad;

impl CustomOp3 for SiluMulGrad {
    fn name(&self) -> &'static str {
        "fused-silu-mul-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let a = f32s(s1, l1, self.name())?;
        let b = f32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        if b.len() != a.len() || g.len() != a.len() {
            bail!("silu_mul backward: shapes")
        }
        Ok((
            CpuStorage::F32(silu_mul_grad_elems(a, b, g)),
            l1.shape().clone(),
        ))
    }
}

/// `silu(a) · b`, elementwise.
pub(crate) fn silu_mul_elems(a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; a.len()];
    par_elems(&mut y, |o, c| {
        let n = c.len();
        vmath::silu_mul(c, &a[o..o + n], &b[o..o + n])
    });
    y
}

/// The gradient of `silu(a) · b` with respect to `a`, given the output's `g`.
pub(crate) fn silu_mul_grad_elems(a: &[f32], b: &[f32], g: &[f32]) -> Vec<f32> {
    let mut d = vec![0f32; a.len()];
    par_elems(&mut d, |o, c| {
        let n = c.len();
        vmath::silu_mul_grad(c, &a[o..o + n], &b[o..o + n], &g[o..o + n])
    });
    d
}

/// SwiGLU's `silu(gate) · up` (same shapes).
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul)
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// Max and `Σ exp(x - max)` of a row.
fn max_sum_exp(x: &[f32]) -> (f32, f32) {
    let max = vmath::max(x);
    (max, vmath::sum_exp(x, max))
}

struct Nll;

impl CustomOp2 for Nll {
    fn name(&self) -> &'static str {
        "fused-nll"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let t = u32s(s2, l2, self.name())?;
        let &[n, v] = l1.dims() else {
            bail!("nll: logits must be [n, vocab]")
        };
        if t.len() != n {
            bail!("nll: {} targets for {n} rows", t.len())
        }
        if let Some(bad) = t.iter().find(|&&k| k as usize >= v) {
            bail!("nll: target {bad} outside the vocabulary ({v})")
        }
        let mut out = vec![0f32; n];
        out.par_iter_mut().enumerate().for_each(|(r, o)| {
            let row = &x[r * v..][..v];
            let (max, sum) = max_sum_exp(row);
            *o = -((row[t[r] as usize] - max) - sum.ln());
        });
        Ok((CpuStorage::F32(out), Shape::from(n)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        Ok((Some(x.apply_op3_no_bwd(t, &g, &NllGrad)?), None))
    }
}

/// Cross-entropy of each row of `x` (`[n, v]` logits) against `t`, returned, and its gradient
/// scaled by `g` written over the logits (a hand-written backward pass needs no logits after).
pub(crate) fn nll_and_grad_in_place(x: &mut [f32], t: &[u32], v: usize, g: f32) -> Vec<f32> {
    let mut out = vec![0f32; t.len()];
    x.par_chunks_mut(v)
        .zip(out.par_iter_mut())
        .zip(t.par_iter())
        .for_each(|((row, o), &target)| {
            let (max, sum) = max_sum_exp(row);
            *o = -((row[target as usize] - max) - sum.ln());
            vmath::exp_scaled_in_place(row, max, g / sum);
            row[target as usize] -= g;
        });
    out
}

/// `d logits = g_row · (softmax(logits) - onehot(target))`.
struct NllGrad;

impl CustomOp3 for NllGrad {
    fn name(&self) -> &'static str {
        "fused-nll-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let t = u32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        let &[n, v] = l1.dims() else {
            bail!("nll backward: logits must be [n, vocab]")
        };
        if t.len() != n || g.len() != n {
            bail!("nll backward: shapes")
        }
        let mut d = vec![0f32; x.len()];
        par_rows(&mut d, v, |r, dr| {
            let row = &x[r * v..][..v];
            let (max, sum) = max_sum_exp(row);
            vmath::exp_scaled(dr, row, max, g[r] / sum);
            dr[t[r] as usize] -= g[r];
        });
        Ok((CpuStorage::F32(d), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------------------------------------
// Linear layers

/// `dst = a · b` (or `dst += a · b` when `accumulate`) for `a` `[m, k]` and `b` `[k, n]` given
/// as (row, column) element strides, `dst` row-major `[m, n]`, with the `gemm` crate (as
/// candle's own matmul) on candle's thread count, or on this thread alone unless `parallel`
/// (for many small products run side by side).
pub(crate) fn gemm_ex(
    dst: &mut [f32],
    mnk: (usize, usize, usize),
    a: (&[f32], (usize, usize)),
    b: (&[f32], (usize, usize)),
    accumulate: bool,
    parallel: bool,
) -> Result<()> {
    let (m, n, k) = mnk;
    check_gemm(dst.len(), mnk, a, b)?;
    if m * n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return Ok(());
    }
    // SAFETY: the operands fit their strides (checked), `dst` is an exclusively borrowed
    // row-major [m, n].
    unsafe { gemm_raw(dst.as_mut_ptr(), mnk, a, b, accumulate, parallel) };
    Ok(())
}

/// `a · b` as a new row-major `[m, n]` vector, written by the product alone (no zeroing
/// first).
pub(crate) fn gemm_new(
    mnk: (usize, usize, usize),
    a: (&[f32], (usize, usize)),
    b: (&[f32], (usize, usize)),
) -> Result<Vec<f32>> {
    let (m, n, k) = mnk;
    if m * n == 0 || k == 0 {
        let mut dst = vec![0f32; m * n];
        gemm_ex(&mut dst, mnk, a, b, false, true)?;
        return Ok(dst);
    }
    check_gemm(m * n, mnk, a, b)?;
    let mut dst = Vec::with_capacity(m * n);
    // SAFETY: the operands fit their strides (checked); with `read_dst` false and k > 0 the
    // product writes every element of the [m, n] buffer before its length is set.
    unsafe {
        gemm_raw(dst.as_mut_ptr(), mnk, a, b, false, true);
        dst.set_len(m * n);
    }
    Ok(dst)
}

fn check_gemm(
    dst_len: usize,
    (m, n, k): (usize, usize, usize),
    (a, (a_rs, a_cs)): (&[f32], (usize, usize)),
    (b, (b_rs, b_cs)): (&[f32], (usize, usize)),
) -> Result<()> {
    let last = |rows: usize, rs: usize, cols: usize, cs: usize| {
        (rows.max(1) - 1) * rs + (cols.max(1) - 1) * cs
    };
    if dst_len != m * n
        || (m * k > 0 && last(m, a_rs, k, a_cs) >= a.len())
        || (k * n > 0 && last(k, b_rs, n, b_cs) >= b.len())
    {
        bail!("linear: operand sizes do not fit [{m}, {k}] x [{k}, {n}]")
    }
    Ok(())
}

/// # Safety
/// `dst` must be valid for writes (and reads, when `accumulate`) of a row-major `[m, n]`, and
/// the operands must fit their strides ([`check_gemm`]); `k > 0`.
unsafe fn gemm_raw(
    dst: *mut f32,
    (m, n, k): (usize, usize, usize),
    (a, (a_rs, a_cs)): (&[f32], (usize, usize)),
    (b, (b_rs, b_cs)): (&[f32], (usize, usize)),
    accumulate: bool,
    parallel: bool,
) {
    let threads = candle_core::utils::get_num_threads();
    let par = if parallel && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the caller's contract; `dst` is read only when `accumulate`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs as isize,
            a_rs as isize,
            b.as_ptr(),
            b_cs as isize,
            b_rs as isize,
            if accumulate { 1.0 } else { 0.0 },
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// `x · wᵀ` for `x` `[n, in]` and `w` `[out, in]` (contiguous): `[n, out]`.
pub(crate) fn linear_fwd(
    x: &[f32],
    w: &[f32],
    n: usize,
    inp: usize,
    out: usize,
) -> Result<Vec<f32>> {
    gemm_new((n, out, inp), (x, (inp, 1)), (w, (1, inp)))
}

fn linear_dims(l1: &Layout, l2: &Layout, op: &str) -> Result<(usize, usize, usize)> {
    match (l1.dims(), l2.dims()) {
        (&[n, i], &[o, wi]) if i == wi => Ok((n, i, o)),
        (a, b) => bail!("{op}: [n, in] x [out, in] expected, not {a:?} x {b:?}"),
    }
}

/// `gᵀ · x`: the weight gradient `[out, in]` of `x · wᵀ` (`g` `[n, out]`, `x` `[n, in]`).
fn weight_grad(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    x.detach().apply_op2_no_bwd(g, &WeightGrad)
}

struct WeightGrad;

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "fused-linear-grad-w"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let ((n, inp), (gn, out)) = (l1.shape().dims2()?, l2.shape().dims2()?);
        if gn != n {
            bail!("linear backward: gradient shape")
        }
        // [out, n] (g transposed) x [n, in].
        let dw = gemm_new((out, inp, n), (g, (1, out)), (x, (inp, 1)))?;
        Ok((CpuStorage::F32(dw), Shape::from((out, inp))))
    }
}

struct Linear;

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, inp, out) = linear_dims(l1, l2, self.name())?;
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let y = linear_fwd(x, w, n, inp, out)?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = if x.track_op() {
            Some(g.matmul(&w.detach())?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(weight_grad(x, &g)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x · wᵀ` for `x` `[n, in]` and `w` `[out, in]` (f32, CPU). The weight's gradient is computed
/// only when `w` is tracked (a variable, or computed from one); a detached (frozen) weight
/// costs only the input's gradient.
pub fn linear(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&w.contiguous()?, Linear)
}

/// Token ids as a `u32` tensor for `index_select`.
fn ids_tensor(ids: &[u32], device: &candle_core::Device) -> Result<Tensor> {
    Tensor::new(ids, device)
}

/// `x · w'ᵀ` where `w'` is the frozen `w` with rows `ids` replaced by the trainable `rows`.
struct LinearRows {
    /// The merged matrix `[out, in]`, detached.
    merged: Tensor,
    ids: Vec<u32>,
}

impl CustomOp2 for LinearRows {
    fn name(&self) -> &'static str {
        "fused-linear-rows"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        _s2: &CpuStorage,
        _l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (storage, lw) = self.merged.storage_and_layout();
        let candle_core::Storage::Cpu(sw) = &*storage else {
            bail!("{}: CPU tensors expected", self.name())
        };
        let (n, inp, out) = linear_dims(l1, lw, self.name())?;
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(sw, lw, self.name())?;
        let y = linear_fwd(x, w, n, inp, out)?;
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        _rows: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = g.contiguous()?;
        let dx = if x.track_op() {
            Some(g.matmul(&self.merged)?)
        } else {
            None
        };
        // Only the rows' columns of the output gradient: [n, k].
        let gk = g.index_select(&ids_tensor(&self.ids, g.device())?, 1)?;
        Ok((dx, Some(weight_grad(x, &gk)?)))
    }
}

/// `x · w'ᵀ` (`x` `[n, in]`) where `w'` is the frozen `w` `[out, in]` with the rows `ids`
/// (ascending) replaced by `rows` `[ids.len(), in]`: PEFT's trainable tokens on an output
/// matrix. The gradient reaches `x` and `rows` only.
pub fn linear_rows(x: &Tensor, w: &Tensor, ids: &[u32], rows: &Tensor) -> Result<Tensor> {
    let merged = crate::llama::replace_rows(&w.detach(), ids, &rows.detach())?.contiguous()?;
    x.contiguous()?.apply_op2(
        rows,
        LinearRows {
            merged,
            ids: ids.to_vec(),
        },
    )
}

/// The embeddings of `tokens` from a frozen matrix whose rows `ids` are replaced by `rows`.
struct EmbedRows {
    merged: Tensor,
    tokens: Vec<u32>,
    ids: Vec<u32>,
}

impl CustomOp1 for EmbedRows {
    fn name(&self) -> &'static str {
        "fused-embed-rows"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (storage, lw) = self.merged.storage_and_layout();
        let candle_core::Storage::Cpu(sw) = &*storage else {
            bail!("{}: CPU tensors expected", self.name())
        };
        let w = f32s(sw, lw, self.name())?;
        let (vocab, h) = lw.shape().dims2()?;
        if let Some(t) = self.tokens.iter().find(|&&t| t as usize >= vocab) {
            bail!("embedding: token id {t} is outside the vocabulary ({vocab})")
        }
        let mut y = vec![0f32; self.tokens.len() * h];
        par_rows(&mut y, h, |p, yr| {
            let t = self.tokens[p] as usize;
            yr.copy_from_slice(&w[t * h..(t + 1) * h]);
        });
        Ok((CpuStorage::F32(y), Shape::from((self.tokens.len(), h))))
    }

    fn bwd(&self, rows: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        let g = g.contiguous()?;
        let (_, h) = rows.dims2()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        // Summed in position order from zero, as `index_add` into a zero matrix sums.
        let mut d = vec![0f32; self.ids.len() * h];
        for (p, t) in self.tokens.iter().enumerate() {
            if let Ok(k) = self.ids.binary_search(t) {
                for (a, b) in d[k * h..(k + 1) * h]
                    .iter_mut()
                    .zip(&gv[p * h..(p + 1) * h])
                {
                    *a += b;
                }
            }
        }
        Ok(Some(Tensor::from_vec(d, (self.ids.len(), h), g.device())?))
    }
}

/// Rows `tokens` (`[n]`) of the frozen `w` `[vocab, hidden]` whose rows `ids` (ascending) are
/// replaced by `rows`: `[n, hidden]`. The gradient reaches `rows` only.
pub fn embed_rows(w: &Tensor, ids: &[u32], rows: &Tensor, tokens: &Tensor) -> Result<Tensor> {
    let merged = crate::llama::replace_rows(&w.detach(), ids, &rows.detach())?.contiguous()?;
    rows.apply_op1(EmbedRows {
        merged,
        tokens: tokens.flatten_all()?.to_vec1::<u32>()?,
        ids: ids.to_vec(),
    })
}

/// Per-row cross-entropy `[n]` of `logits` `[n, vocab]` (f32) against `targets` `[n]` (u32):
/// `logsumexp(row) - row[target]`.
pub fn nll(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    logits.contiguous()?.apply_op2(&targets.contiguous()?, Nll)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    /// Largest |a - b| relative to the largest |b|.
    fn rel(a: &Tensor, b: &Tensor) -> f32 {
        crate::test_util::max_abs_diff(a, b) / crate::test_util::max_abs(b).max(1e-30)
    }

    fn randn(shape: &[usize], seed: u64) -> Var {
        // Deterministic values without depending on candle's RNG.
        let n: usize = shape.iter().product();
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.0
            })
            .collect();
        Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Forward outputs and the gradients of `vars` under a fixed random projection of the output
    /// agree between `fused` and `composed`.
    fn check(
        vars: &[&Var],
        fused: impl Fn() -> Result<Tensor>,
        composed: impl Fn() -> Result<Tensor>,
        tol: f32,
    ) {
        let (yf, yc) = (fused().unwrap(), composed().unwrap());
        assert_eq!(yf.dims(), yc.dims());
        assert!(rel(&yf, &yc) < tol, "forward: {}", rel(&yf, &yc));
        let w = randn(yf.dims(), 99);
        let lf = (yf * w.as_tensor()).unwrap().sum_all().unwrap();
        let lc = (yc * w.as_tensor()).unwrap().sum_all().unwrap();
        let (gf, gc) = (lf.backward().unwrap(), lc.backward().unwrap());
        for (i, v) in vars.iter().enumerate() {
            let (a, b) = (gf.get(v).unwrap(), gc.get(v).unwrap());
            assert!(rel(a, b) < tol, "gradient {i}: {}", rel(a, b));
        }
    }

    #[test]
    fn rms_norm_matches_composed() {
        let x = randn(&[2, 5, 24], 1);
        let w = randn(&[24], 2);
        check(
            &[&x, &w],
            || rms_norm(&x, &w, 1e-5),
            || crate::llama::composed::rms_norm(&x, &w, 1e-5),
            1e-5,
        );
    }

    #[test]
    fn rope_heads_match_composed() {
        use crate::llama::composed;
        let (b, t, n, d, g) = (2, 7, 2, 8, 3);
        let x = randn(&[b, t, n * d], 3);
        let pos = Tensor::from_vec(
            (0..(b * t) as u32).map(|i| i % 5).collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )
        .unwrap();
        let (cos, sin) = crate::llama::rope_tables(&pos, d, 10_000.0).unwrap();
        let fused = || heads(&x.as_tensor().reshape((b, t, n, d))?, Some((&cos, &sin)), g);
        let comp = || {
            let h = x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?;
            let (c, s) = (composed::full_table(&cos)?, composed::full_table(&sin)?);
            composed::repeat_kv(&composed::rope(&h, &c, &s)?, g)
        };
        check(&[&x], fused, comp, 1e-5);
        let plain = || heads(&x.as_tensor().reshape((b, t, n, d))?, None, g);
        let plain_c = || {
            let h = x.reshape((b, t, n, d))?.transpose(1, 2)?.contiguous()?;
            composed::repeat_kv(&h, g)
        };
        check(&[&x], plain, plain_c, 1e-6);
    }

    #[test]
    fn masked_softmax_matches_composed() {
        let s = randn(&[2, 3, 6, 6], 4);
        let seg = vec![vec![0, 0, 0, 1, 1, 1], vec![0, 0, 0, 0, 0, 9]];
        let mask = crate::llama::packed_mask(&seg, &Device::Cpu).unwrap();
        let causal = crate::llama::causal_mask(1, 6, &Device::Cpu).unwrap();
        for m in [&mask, &causal] {
            check(
                &[&s],
                || masked_softmax(&s, m, 0.35),
                || candle_nn::ops::softmax(&(s.as_tensor() * 0.35)?.broadcast_add(m)?, D::Minus1),
                1e-5,
            );
        }
    }

    #[test]
    fn silu_mul_matches_composed() {
        let a = randn(&[3, 40_000], 5);
        let b = randn(&[3, 40_000], 6);
        check(
            &[&a, &b],
            || silu_mul(&a, &b),
            || a.silu()? * b.as_tensor(),
            1e-5,
        );
    }

    #[test]
    fn linear_matches_matmul() {
        let x = randn(&[7, 24], 8);
        let w = randn(&[5, 24], 9);
        check(&[&x, &w], || linear(&x, &w), || x.matmul(&w.t()?), 1e-6);
    }

    /// The gradients of `y` under a fixed random projection.
    fn grads_of(y: &Tensor) -> candle_core::backprop::GradStore {
        let p = randn(y.dims(), 99);
        (y * p.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap()
    }

    #[test]
    fn frozen_weights_get_no_gradient() {
        let x = randn(&[7, 24], 10);
        let w = randn(&[5, 24], 11);
        let frozen = w.as_tensor().detach();
        let g = grads_of(&linear(&x, &frozen).unwrap());
        assert!(g.get(&frozen).is_none());
        let reference = grads_of(&linear(&x, &w).unwrap());
        assert!(reference.get(&w).is_some());
        assert_eq!(rel(g.get(&x).unwrap(), reference.get(&x).unwrap()), 0.0);

        let norm_w = randn(&[24], 12).as_tensor().detach();
        let g = grads_of(&rms_norm(&x, &norm_w, 1e-5).unwrap());
        assert!(g.get(&norm_w).is_none() && g.get(&x).is_some());
    }

    #[test]
    fn trainable_rows_match_replaced_rows() {
        use crate::llama::replace_rows;
        let (vocab, h, ids) = (11, 6, [3u32, 4, 9]);
        let base = randn(&[vocab, h], 13).as_tensor().detach();
        let rows = randn(&[3, h], 14);
        let x = randn(&[5, h], 15);
        // Output projection: against x · replace_rows(base, rows)ᵀ.
        check(
            &[&x, &rows],
            || linear_rows(&x, &base, &ids, &rows),
            || x.matmul(&replace_rows(&base, &ids, &rows)?.t()?),
            1e-6,
        );
        let g = grads_of(&linear_rows(&x, &base, &ids, &rows).unwrap());
        assert!(g.get(&base).is_none());
        // Embedding lookup (ids 4 and 9 twice, 3 never), against index_select: the same bits.
        let tokens = Tensor::new(&[4u32, 0, 9, 4, 10, 9, 1], &Device::Cpu).unwrap();
        let ours = embed_rows(&base, &ids, &rows, &tokens).unwrap();
        let theirs = replace_rows(&base, &ids, &rows)
            .unwrap()
            .index_select(&tokens, 0)
            .unwrap();
        assert_eq!(rel(&ours, &theirs), 0.0);
        let (go, gt) = (grads_of(&ours), grads_of(&theirs));
        assert_eq!(rel(go.get(&rows).unwrap(), gt.get(&rows).unwrap()), 0.0);
        assert!(go.get(&base).is_none());
        let out_of_vocab = Tensor::new(&[11u32], &Device::Cpu).unwrap();
        assert!(embed_rows(&base, &ids, &rows, &out_of_vocab).is_err());
    }

    #[test]
    fn nll_matches_log_softmax() {
        let x = randn(&[5, 300], 7);
        let t = Tensor::from_vec(vec![0u32, 17, 299, 3, 150], 5, &Device::Cpu).unwrap();
        check(
            &[&x],
            || nll(&x, &t),
            || {
                candle_nn::ops::log_softmax(&x, D::Minus1)?
                    .gather(&t.unsqueeze(1)?, 1)?
                    .squeeze(1)?
                    .neg()
            },
            1e-5,
        );
        let bad = Tensor::from_vec(vec![0u32, 17, 300, 3, 150], 5, &Device::Cpu).unwrap();
        assert!(nll(&x, &bad).is_err());
    }
}
