//! A training pass written out by hand: the loss of a batch and the gradient of every tensor
//! that trains, on f32 CPU tensors, without candle's autograd.
//!
//! candle's `backward` gives every node of the graph a zero tensor and adds its gradient to it
//! (a fresh allocation, a memset and an add for every activation and every weight), and every
//! intermediate is a new tensor: on the SmolLM2 shape that bookkeeping took about as long as the
//! matrix products of the backward pass themselves. Here the forward keeps what the backward
//! needs, and the backward writes each gradient once, summing the residual stream's and the
//! projections' input gradients in place (the products add into their output). The kernels are
//! those of [`crate::fused`] (the same code the autograd path runs), so both paths agree to
//! float rounding; the trainer's parity tests against PyTorch (and PEFT) run through this one.
//!
//! Full fine-tunes and LoRA runs (frozen weights, which get no gradient; adapters on any
//! projection; trainable token rows over the frozen embedding and output matrices) both take
//! it; other devices or dtypes keep autograd ([`Llama::hand_backward_applies`] says which).

use candle_core::{CpuStorage, Device, Storage, Tensor};
use rayon::prelude::*;
use std::ops::Deref;

use crate::fused::{
    gemm_ex, gemm_new, linear_fwd, masked_softmax_rows, nll_and_grad_in_place, rms_norm_grad_w,
    rms_norm_grad_x, rms_norm_rows, silu_mul_elems, silu_mul_grad_elems, softmax_grad_rows, Heads,
};
use crate::llama::{rope_tables, Llama};
use crate::ModelError;

/// A weight's f32 data, read-locked for the pass.
struct Held<G> {
    guard: G,
    range: (usize, usize),
}

fn held(t: &Tensor) -> Option<Held<impl Deref<Target = Storage> + '_>> {
    let (guard, layout) = t.storage_and_layout();
    let range = layout.contiguous_offsets()?;
    matches!(&*guard, Storage::Cpu(CpuStorage::F32(_))).then_some(Held { guard, range })
}

fn hold(t: &Tensor) -> Result<Held<impl Deref<Target = Storage> + '_>, ModelError> {
    held(t).ok_or_else(|| ModelError::Input("a weight is not contiguous f32 on the CPU".into()))
}

impl<G: Deref<Target = Storage>> Held<G> {
    fn get(&self) -> &[f32] {
        match &*self.guard {
            Storage::Cpu(CpuStorage::F32(v)) => &v[self.range.0..self.range.1],
            // `new` admits f32 CPU storage only.
            _ => &[],
        }
    }
}

/// What the backward pass needs of one layer's forward.
struct Saved {
    x_in: Vec<f32>,
    h1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    p: Vec<f32>,
    attn: Vec<f32>,
    x_mid: Vec<f32>,
    h2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
}

/// `dst[r] = a[r] · b[r]` for `r` in `0..count` blocks of `[m, k] x [k, n]`, one block per task.
#[allow(clippy::too_many_arguments)]
fn batched(
    dst: &mut [f32],
    count: usize,
    (m, n, k): (usize, usize, usize),
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
) -> candle_core::Result<()> {
    let (sa, sb) = (a.len() / count.max(1), b.len() / count.max(1));
    dst.par_chunks_mut(m * n)
        .enumerate()
        .try_for_each(|(r, d)| {
            gemm_ex(
                d,
                (m, n, k),
                (&a[r * sa..(r + 1) * sa], a_strides),
                (&b[r * sb..(r + 1) * sb], b_strides),
                false,
                false,
            )
        })
}

/// `[b, t, h, d]` ↔ `[b, h, t, d]` (`b` from the length).
fn swap_heads(x: &[f32], (t, h, d): (usize, usize, usize), to_heads: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(d).enumerate().for_each(|(r, yr)| {
        // r indexes the output's rows.
        let src = if to_heads {
            let (bb, hh, tt) = (r / (h * t), (r / t) % h, r % t);
            (bb * t + tt) * h + hh
        } else {
            let (bb, tt, hh) = (r / (t * h), (r / h) % t, r % h);
            (bb * h + hh) * t + tt
        };
        yr.copy_from_slice(&x[src * d..][..d]);
    });
    y
}

fn add_in_place(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 14)
        .zip(src.par_chunks(1 << 14))
        .for_each(|(d, s)| d.iter_mut().zip(s).for_each(|(d, s)| *d += s));
}

/// A projection's data for the pass: `W` `[out, in]` and its LoRA pair (A `[r, in]`,
/// B `[out, r]`, rank, scale).
#[derive(Clone, Copy)]
struct ProjData<'a> {
    w: &'a [f32],
    lora: Option<(&'a [f32], &'a [f32], usize, f32)>,
}

/// `x · Wᵀ (+ scale · (x · Aᵀ) · Bᵀ)`, and `x · Aᵀ` (kept for the backward).
fn proj_fwd(
    x: &[f32],
    p: ProjData,
    (n, inp, out): (usize, usize, usize),
) -> candle_core::Result<(Vec<f32>, Option<Vec<f32>>)> {
    let mut y = linear_fwd(x, p.w, n, inp, out)?;
    let Some((a, b, r, s)) = p.lora else {
        return Ok((y, None));
    };
    let xa = linear_fwd(x, a, n, inp, r)?;
    let l = linear_fwd(&xa, b, n, r, out)?;
    y.par_chunks_mut(1 << 14)
        .zip(l.par_chunks(1 << 14))
        .for_each(|(y, l)| y.iter_mut().zip(l).for_each(|(y, l)| *y += l * s));
    Ok((y, Some(xa)))
}

/// A projection's gradients from its output's `g`: the input's into `dx` (added unless `dx` is
/// empty), `W`'s when `want_w`, and the LoRA pair's `(dA, dB)`.
#[allow(clippy::type_complexity)]
fn proj_bwd(
    dx: &mut Vec<f32>,
    g: &[f32],
    x: &[f32],
    xa: Option<&[f32]>,
    p: ProjData,
    (n, inp, out): (usize, usize, usize),
    want_w: bool,
) -> candle_core::Result<(Option<Vec<f32>>, Option<(Vec<f32>, Vec<f32>)>)> {
    let dims = (n, inp, out);
    if dx.is_empty() {
        *dx = gemm_new(dims, (g, (out, 1)), (p.w, (inp, 1)))?;
    } else {
        gemm_ex(dx, dims, (g, (out, 1)), (p.w, (inp, 1)), true, true)?;
    }
    let dw = if want_w {
        Some(gemm_new((out, inp, n), (g, (1, out)), (x, (inp, 1)))?)
    } else {
        None
    };
    let (Some((a, b, r, s)), Some(xa)) = (p.lora, xa) else {
        return Ok((dw, None));
    };
    let gs: Vec<f32> = g.par_iter().map(|v| v * s).collect();
    let db = gemm_new((out, r, n), (&gs, (1, out)), (xa, (r, 1)))?;
    let dxa = gemm_new((n, r, out), (&gs, (out, 1)), (b, (r, 1)))?;
    let da = gemm_new((r, inp, n), (&dxa, (1, r)), (x, (inp, 1)))?;
    gemm_ex(dx, (n, inp, r), (&dxa, (r, 1)), (a, (inp, 1)), true, true)?;
    Ok((dw, Some((da, db))))
}

/// A layer's held tensors: attention norm, q, k, v, o, MLP norm, gate, up, down; and the seven
/// projections' LoRA pairs (A, B, rank, scale).
type LayerHeld<G> = ([Held<G>; 9], Vec<Option<(Held<G>, Held<G>, usize, f32)>>);

/// Projection `k` (in [`projections`]' order) of a held layer.
fn proj_data<G: Deref<Target = Storage>>(lw: &LayerHeld<G>, k: usize) -> ProjData<'_> {
    let (base, lora) = lw;
    ProjData {
        // base: [attn_norm, q, k, v, o, mlp_norm, gate, up, down]
        w: base[k + 1 + usize::from(k >= 4)].get(),
        lora: lora[k]
            .as_ref()
            .map(|(a, b, r, s)| (a.get(), b.get(), *r, *s)),
    }
}

/// Records a projection's gradients (those of its tensors that train).
#[allow(clippy::type_complexity)]
fn push_proj(
    grads: &mut Vec<(Tensor, Vec<f32>)>,
    p: &crate::llama::Proj,
    r: (Option<Vec<f32>>, Option<(Vec<f32>, Vec<f32>)>),
) {
    if let Some(dw) = r.0 {
        grads.push((p.w.clone(), dw));
    }
    if let (Some((da, db)), Some(lp)) = (r.1, &p.lora) {
        if lp.a.track_op() {
            grads.push((lp.a.clone(), da));
        }
        if lp.b.track_op() {
            grads.push((lp.b.clone(), db));
        }
    }
}

/// The seven projections of a layer, in this order everywhere below.
fn projections(l: &crate::llama::Block) -> [&crate::llama::Proj; 7] {
    [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
}

impl Llama {
    /// Whether [`Llama::loss_and_grads`] can run: every tensor f32 on the CPU, and trainable
    /// token rows (if any) over a frozen embedding and output matrix, as in a LoRA run.
    /// Which tensors train (full fine-tune, frozen base with adapters and rows) is free.
    pub fn hand_backward_applies(&self) -> bool {
        let ok = |t: &Tensor| t.device().is_cpu() && held(t).is_some();
        let rows_ok = match &self.rows {
            None => true,
            Some(r) => {
                !self.embed.track_op()
                    && self.lm_head.as_ref().is_none_or(|h| !h.track_op())
                    && ok(&r.embed)
                    && r.head.as_ref().is_none_or(ok)
            }
        };
        rows_ok
            && ok(&self.embed)
            && ok(&self.norm)
            && self.lm_head.as_ref().is_none_or(ok)
            && self.layers.iter().all(|l| {
                projections(l)
                    .iter()
                    .all(|p| ok(&p.w) && p.lora.as_ref().is_none_or(|lp| ok(&lp.a) && ok(&lp.b)))
                    && ok(&l.attn_norm)
                    && ok(&l.mlp_norm)
            })
    }

    /// The sum of the cross-entropies of the logits at flat positions `at` (`b·t + i` of
    /// `ids`) against `targets`, and the gradient of `scale ·` that sum for every trainable
    /// tensor (weights that track a gradient, LoRA pairs, token rows), as `(tensor, gradient)`
    /// pairs. The other arguments are [`Llama::hidden_states`]'s. Needs
    /// [`Llama::hand_backward_applies`].
    pub fn loss_and_grads(
        &self,
        ids: &Tensor,
        position_ids: Option<&Tensor>,
        mask: Option<&Tensor>,
        at: &[u32],
        targets: &[u32],
        scale: f32,
    ) -> Result<(f32, Vec<(Tensor, Tensor)>), ModelError> {
        if !self.hand_backward_applies() {
            return Err(ModelError::Input(
                "the hand-written backward pass needs every tensor in f32 on the CPU, and token \
                 rows only over a frozen embedding"
                    .into(),
            ));
        }
        let (positions, mask) = self.checked_inputs(ids, position_ids, mask)?;
        let c = &self.config;
        let (b, t) = ids.dims2()?;
        let n = b * t;
        let (hd, nh, nkv, d, vocab) = (
            c.hidden_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
            c.vocab_size,
        );
        if at.len() != targets.len() {
            return Err(ModelError::Input(format!(
                "{} positions for {} targets",
                at.len(),
                targets.len()
            )));
        }
        if let Some(p) = at.iter().find(|&&p| p as usize >= n) {
            return Err(ModelError::Input(format!(
                "position {p} outside the batch ({n})"
            )));
        }
        if let Some(k) = targets.iter().find(|&&k| k as usize >= vocab) {
            return Err(ModelError::Input(format!(
                "target {k} outside the vocabulary ({vocab})"
            )));
        }
        let eps = c.rms_norm_eps as f32;
        let att_scale = 1.0 / (d as f32).sqrt();
        let ids_v: Vec<u32> = ids.flatten_all()?.to_vec1()?;
        let (cos, sin) = rope_tables(&positions, d, c.rope_theta)?;
        let cos: Vec<f32> = cos.flatten_all()?.to_vec1()?;
        let sin: Vec<f32> = sin.flatten_all()?.to_vec1()?;
        let rope = Some((cos.as_slice(), sin.as_slice()));
        let mb = mask.dim(0)?;
        let mask: Vec<f32> = mask.flatten_all()?.to_vec1()?;
        let embed = hold(&self.embed)?;
        let out_t = self.lm_head.as_ref().unwrap_or(&self.embed);
        let out_w = hold(out_t)?;
        let norm = hold(&self.norm)?;
        // Token rows: the embedding's, and the output matrix's (the same tensor when tied).
        let rows_embed = self.rows.as_ref().map(|r| hold(&r.embed)).transpose()?;
        let out_rows_t = match (&self.rows, &self.lm_head) {
            (Some(r), None) => Some(&r.embed),
            (Some(r), Some(_)) => r.head.as_ref(),
            (None, _) => None,
        };
        let out_rows = out_rows_t.map(hold).transpose()?;
        let row_ids: &[u32] = self.rows.as_ref().map_or(&[], |r| &r.ids);
        let row_of: std::collections::HashMap<u32, usize> =
            row_ids.iter().enumerate().map(|(k, &id)| (id, k)).collect();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let base = [
                    hold(&l.attn_norm)?,
                    hold(&l.q.w)?,
                    hold(&l.k.w)?,
                    hold(&l.v.w)?,
                    hold(&l.o.w)?,
                    hold(&l.mlp_norm)?,
                    hold(&l.gate.w)?,
                    hold(&l.up.w)?,
                    hold(&l.down.w)?,
                ];
                let lora = projections(l).map(|p| {
                    p.lora.as_ref().map(|lp| {
                        Ok::<_, ModelError>((
                            hold(&lp.a)?,
                            hold(&lp.b)?,
                            lp.a.dims()[0],
                            lp.scale as f32,
                        ))
                    })
                });
                let mut ls = Vec::with_capacity(7);
                for x in lora {
                    ls.push(x.transpose()?);
                }
                Ok((base, ls))
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let ffn = self.layers.first().map_or(0, |l| l.gate.w.dims()[0]);
        let hq = Heads {
            b,
            t,
            n: nh,
            d,
            groups: 1,
        };
        let hk = Heads {
            b,
            t,
            n: nkv,
            d,
            groups: nh / nkv,
        };
        let bh = b * nh;
        // Projection k of a layer: (its data, (in, out)).
        let proj_dims = [
            (hd, nh * d),
            (hd, nkv * d),
            (hd, nkv * d),
            (nh * d, hd),
            (hd, ffn),
            (hd, ffn),
            (ffn, hd),
        ];

        // Forward.
        let e = embed.get();
        let re = rows_embed.as_ref().map_or(&[][..], |h| h.get());
        let mut x = vec![0f32; n * hd];
        x.par_chunks_mut(hd)
            .zip(ids_v.par_iter())
            .for_each(|(r, &id)| {
                let src = match row_of.get(&id) {
                    Some(&k) => &re[k * hd..][..hd],
                    None => &e[id as usize * hd..][..hd],
                };
                r.copy_from_slice(src)
            });
        let mut saved = Vec::with_capacity(layers.len());
        for lw in &layers {
            let (an, mn) = (lw.0[0].get(), lw.0[5].get());
            let p = |k: usize| proj_data(lw, k);
            let dims = |k: usize| (n, proj_dims[k].0, proj_dims[k].1);
            let mut xa: Vec<Option<Vec<f32>>> = vec![None; 7];
            let x_in = x;
            let h1 = rms_norm_rows(&x_in, an, eps);
            let (qp, a0) = proj_fwd(&h1, p(0), dims(0))?;
            let (kp, a1) = proj_fwd(&h1, p(1), dims(1))?;
            let (vp, a2) = proj_fwd(&h1, p(2), dims(2))?;
            (xa[0], xa[1], xa[2]) = (a0, a1, a2);
            let q = hq.forward(&qp, rope);
            let k = hk.forward(&kp, rope);
            let v = hk.forward(&vp, None);
            drop((qp, kp, vp));
            let mut s = vec![0f32; bh * t * t];
            batched(&mut s, bh, (t, t, d), &q, (d, 1), &k, (1, d))?;
            let pr = masked_softmax_rows(&s, &mask, mb, (nh, t, t), att_scale);
            drop(s);
            let mut o = vec![0f32; bh * t * d];
            batched(&mut o, bh, (t, d, t), &pr, (t, 1), &v, (d, 1))?;
            let attn = swap_heads(&o, (t, nh, d), false);
            drop(o);
            let (mut x_mid, a3) = proj_fwd(&attn, p(3), dims(3))?;
            xa[3] = a3;
            add_in_place(&mut x_mid, &x_in);
            let h2 = rms_norm_rows(&x_mid, mn, eps);
            let (gate, a4) = proj_fwd(&h2, p(4), dims(4))?;
            let (up, a5) = proj_fwd(&h2, p(5), dims(5))?;
            let act = silu_mul_elems(&gate, &up);
            let (y, a6) = proj_fwd(&act, p(6), dims(6))?;
            (xa[4], xa[5], xa[6]) = (a4, a5, a6);
            x = y;
            add_in_place(&mut x, &x_mid);
            saved.push((
                Saved {
                    x_in,
                    h1,
                    q,
                    k,
                    v,
                    p: pr,
                    attn,
                    x_mid,
                    h2,
                    gate,
                    up,
                    act,
                },
                xa,
            ));
        }
        let xf = x;
        let hf = rms_norm_rows(&xf, norm.get(), eps);
        let m = at.len();
        let mut sel = vec![0f32; m * hd];
        sel.par_chunks_mut(hd)
            .zip(at.par_iter())
            .for_each(|(r, &p)| r.copy_from_slice(&hf[p as usize * hd..][..hd]));
        drop(hf);
        let w_out = out_w.get();
        let mut logits = linear_fwd(&sel, w_out, m, hd, vocab)?;
        // The trainable rows' columns of the logits.
        let k_rows = row_ids.len();
        if let Some(or) = &out_rows {
            let cols = linear_fwd(&sel, or.get(), m, hd, k_rows)?;
            for (lrow, crow) in logits.chunks_mut(vocab).zip(cols.chunks(k_rows.max(1))) {
                for (k, &id) in row_ids.iter().enumerate() {
                    lrow[id as usize] = crow[k];
                }
            }
        }
        let losses = nll_and_grad_in_place(&mut logits, targets, vocab, scale);
        let loss: f32 = losses.iter().sum();

        // Backward. `logits` now holds their gradient.
        let mut grads: Vec<(Tensor, Vec<f32>)> = Vec::new();
        let mut dsel = gemm_new((m, hd, vocab), (&logits, (vocab, 1)), (w_out, (hd, 1)))?;
        let d_out = if out_t.track_op() {
            Some(gemm_new(
                (vocab, hd, m),
                (&logits, (1, vocab)),
                (&sel, (hd, 1)),
            )?)
        } else {
            None
        };
        let d_out_rows = match &out_rows {
            Some(or) if k_rows > 0 => {
                // The rows' columns: [m, k]; their rows' gradient, and the input's correction
                // for the rows replacing the base rows (dsel used the base matrix).
                let mut gk = vec![0f32; m * k_rows];
                for (grow, lrow) in gk.chunks_mut(k_rows).zip(logits.chunks(vocab)) {
                    for (k, &id) in row_ids.iter().enumerate() {
                        grow[k] = lrow[id as usize];
                    }
                }
                let rows = or.get();
                let mut diff = rows.to_vec();
                for (k, &id) in row_ids.iter().enumerate() {
                    let base = &w_out[id as usize * hd..][..hd];
                    diff[k * hd..][..hd]
                        .iter_mut()
                        .zip(base)
                        .for_each(|(d, b)| *d -= b);
                }
                gemm_ex(
                    &mut dsel,
                    (m, hd, k_rows),
                    (&gk, (k_rows, 1)),
                    (&diff, (hd, 1)),
                    true,
                    true,
                )?;
                Some(gemm_new(
                    (k_rows, hd, m),
                    (&gk, (1, k_rows)),
                    (&sel, (hd, 1)),
                )?)
            }
            _ => None,
        };
        drop(logits);
        let mut dhf = vec![0f32; n * hd];
        for (k, &p) in at.iter().enumerate() {
            let (dst, src) = (&mut dhf[p as usize * hd..][..hd], &dsel[k * hd..][..hd]);
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        }
        let mut dx = vec![0f32; n * hd];
        rms_norm_grad_x(&mut dx, &xf, norm.get(), &dhf, eps);
        if self.norm.track_op() {
            grads.push((self.norm.clone(), rms_norm_grad_w(&xf, &dhf, hd, eps)));
        }
        drop(dhf);
        for ((lw, l), (s, xa)) in layers.iter().zip(&self.layers).zip(saved).rev() {
            let (an, mn) = (lw.0[0].get(), lw.0[5].get());
            let p = |k: usize| proj_data(lw, k);
            let dims = |k: usize| (n, proj_dims[k].0, proj_dims[k].1);
            let projs = projections(l);
            let want = |k: usize| projs[k].w.track_op();
            // x_out = x_mid + down(silu(gate) · up)
            let mut da = Vec::new();
            push_proj(
                &mut grads,
                projs[6],
                proj_bwd(
                    &mut da,
                    &dx,
                    &s.act,
                    xa[6].as_deref(),
                    p(6),
                    dims(6),
                    want(6),
                )?,
            );
            let dg = silu_mul_grad_elems(&s.gate, &s.up, &da);
            let du = silu_mul_elems(&s.gate, &da);
            drop(da);
            let mut dh2 = Vec::new();
            push_proj(
                &mut grads,
                projs[4],
                proj_bwd(
                    &mut dh2,
                    &dg,
                    &s.h2,
                    xa[4].as_deref(),
                    p(4),
                    dims(4),
                    want(4),
                )?,
            );
            push_proj(
                &mut grads,
                projs[5],
                proj_bwd(
                    &mut dh2,
                    &du,
                    &s.h2,
                    xa[5].as_deref(),
                    p(5),
                    dims(5),
                    want(5),
                )?,
            );
            rms_norm_grad_x(&mut dx, &s.x_mid, mn, &dh2, eps);
            if l.mlp_norm.track_op() {
                grads.push((l.mlp_norm.clone(), rms_norm_grad_w(&s.x_mid, &dh2, hd, eps)));
            }
            drop(dh2);
            // x_mid = x_in + o(attention)
            let mut dattn = Vec::new();
            push_proj(
                &mut grads,
                projs[3],
                proj_bwd(
                    &mut dattn,
                    &dx,
                    &s.attn,
                    xa[3].as_deref(),
                    p(3),
                    dims(3),
                    want(3),
                )?,
            );
            let d_o_heads = swap_heads(&dattn, (t, nh, d), true);
            drop(dattn);
            let mut dp = vec![0f32; bh * t * t];
            batched(&mut dp, bh, (t, t, d), &d_o_heads, (d, 1), &s.v, (1, d))?;
            let mut dv = vec![0f32; bh * t * d];
            batched(&mut dv, bh, (t, d, t), &s.p, (1, t), &d_o_heads, (d, 1))?;
            let ds = softmax_grad_rows(&s.p, &dp, t, att_scale);
            drop(dp);
            let mut dq = vec![0f32; bh * t * d];
            batched(&mut dq, bh, (t, d, t), &ds, (t, 1), &s.k, (d, 1))?;
            let mut dk = vec![0f32; bh * t * d];
            batched(&mut dk, bh, (t, d, t), &ds, (1, t), &s.q, (d, 1))?;
            drop(ds);
            let dqp = hq.backward(&dq, rope);
            let dkp = hk.backward(&dk, rope);
            let dvp = hk.backward(&dv, None);
            let mut dh1 = Vec::new();
            push_proj(
                &mut grads,
                projs[0],
                proj_bwd(
                    &mut dh1,
                    &dqp,
                    &s.h1,
                    xa[0].as_deref(),
                    p(0),
                    dims(0),
                    want(0),
                )?,
            );
            push_proj(
                &mut grads,
                projs[1],
                proj_bwd(
                    &mut dh1,
                    &dkp,
                    &s.h1,
                    xa[1].as_deref(),
                    p(1),
                    dims(1),
                    want(1),
                )?,
            );
            push_proj(
                &mut grads,
                projs[2],
                proj_bwd(
                    &mut dh1,
                    &dvp,
                    &s.h1,
                    xa[2].as_deref(),
                    p(2),
                    dims(2),
                    want(2),
                )?,
            );
            rms_norm_grad_x(&mut dx, &s.x_in, an, &dh1, eps);
            if l.attn_norm.track_op() {
                grads.push((l.attn_norm.clone(), rms_norm_grad_w(&s.x_in, &dh1, hd, eps)));
            }
        }
        // The embedding: the full matrix's gradient when it trains (with the output's, tied),
        // the token rows' otherwise.
        let (d_out_tied, d_head) = match &self.lm_head {
            None => (d_out, None),
            Some(_) => (None, d_out),
        };
        if self.embed.track_op() {
            let mut d_embed = d_out_tied.unwrap_or_else(|| vec![0f32; vocab * hd]);
            for (r, &id) in ids_v.iter().enumerate() {
                let (dst, src) = (&mut d_embed[id as usize * hd..][..hd], &dx[r * hd..][..hd]);
                dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
            }
            grads.push((self.embed.clone(), d_embed));
        }
        if let (Some(h), Some(g)) = (&self.lm_head, d_head) {
            grads.push((h.clone(), g));
        }
        if let Some(r) = &self.rows {
            let mut d_rows = match (&self.lm_head, &d_out_rows) {
                (None, Some(g)) => g.clone(),
                _ => vec![0f32; k_rows * hd],
            };
            for (i, &id) in ids_v.iter().enumerate() {
                if let Some(&k) = row_of.get(&id) {
                    let (dst, src) = (&mut d_rows[k * hd..][..hd], &dx[i * hd..][..hd]);
                    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
                }
            }
            if r.embed.track_op() {
                grads.push((r.embed.clone(), d_rows));
            }
            if let (Some(_), Some(h), Some(g)) = (&self.lm_head, &r.head, d_out_rows) {
                if h.track_op() {
                    grads.push((h.clone(), g));
                }
            }
        }
        drop((embed, out_w, norm, layers, rows_embed, out_rows));

        let dev = Device::Cpu;
        grads
            .into_iter()
            .map(|(w, g)| Ok((w.clone(), Tensor::from_vec(g, w.dims(), &dev)?)))
            .collect::<Result<Vec<_>, ModelError>>()
            .map(|g| (loss, g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::tests::{lora_model, tiny};
    use crate::llama::{nll, packed_mask, packed_positions};

    /// Loss and every gradient of the hand-written pass against candle's autograd through the
    /// fused ops, on a packed batch of two rows with targets at some positions; `grads` must
    /// cover exactly `trained`.
    fn check_against_autograd(model: &Llama, trained: &[Tensor]) {
        let dev = Device::Cpu;
        assert!(model.hand_backward_applies());
        let segments = vec![vec![0, 0, 0, 1, 1, 1, 1], vec![0, 0, 0, 0, 0, 1, 1]];
        let ids = Tensor::new(
            &[[5u32, 1, 38, 7, 5, 2, 9], [3, 3, 17, 22, 39, 0, 12]],
            &dev,
        )
        .unwrap();
        let pos = packed_positions(&segments, &dev).unwrap();
        let mask = packed_mask(&segments, &dev).unwrap();
        let at = [0u32, 1, 4, 5, 7, 8, 9, 12];
        let targets = [1u32, 38, 2, 9, 17, 22, 39, 12];
        let scale = 0.125f32;

        let (loss, grads) = model
            .loss_and_grads(&ids, Some(&pos), Some(&mask), &at, &targets, scale)
            .unwrap();

        let h = model.hidden_states(&ids, Some(&pos), Some(&mask)).unwrap();
        let sel = h
            .reshape((14, 16))
            .unwrap()
            .index_select(&Tensor::new(&at[..], &dev).unwrap(), 0)
            .unwrap();
        let sum = nll(
            &model.logits(&sel).unwrap(),
            &Tensor::new(&targets[..], &dev).unwrap(),
        )
        .unwrap()
        .sum_all()
        .unwrap();
        let want = sum.to_scalar::<f32>().unwrap();
        assert!((loss - want).abs() <= 1e-5 * want.abs(), "{loss} vs {want}");
        let g = (sum * scale as f64).unwrap().backward().unwrap();
        assert_eq!(grads.len(), trained.len());
        for w in trained {
            let got = &grads
                .iter()
                .find(|(t, _)| t.id() == w.id())
                .expect("a gradient for every trained tensor")
                .1;
            let want = g.get(w).expect("autograd gradient");
            let diff = crate::test_util::max_abs_diff(got, want);
            let size = crate::test_util::max_abs(want);
            assert!(
                diff <= 1e-5 * size.max(1e-3),
                "{:?}: {diff} of {size}",
                w.dims()
            );
        }
    }

    /// A full fine-tune: every weight trains (GQA; tied and untied output).
    #[test]
    fn hand_backward_matches_autograd() {
        for tied in [true, false] {
            let (model, vars) = tiny(tied, 2, 2);
            let trained: Vec<Tensor> = vars
                .all_vars()
                .iter()
                .map(|v| v.as_tensor().clone())
                .collect();
            check_against_autograd(&model, &trained);
        }
    }

    /// A LoRA run: frozen weights, adapters on two projections, trainable token rows (tied and
    /// untied output): gradients for exactly the adapters and the rows.
    #[test]
    fn hand_backward_matches_autograd_for_lora() {
        use crate::names::LayerWeight;
        for tied in [true, false] {
            let (model, trained) = lora_model(tied, &[(0, LayerWeight::Q), (1, LayerWeight::Down)]);
            let trained: Vec<Tensor> = trained.iter().map(|v| v.as_tensor().clone()).collect();
            check_against_autograd(&model, &trained);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let (model, _) = tiny(false, 1, 4);
        let dev = Device::Cpu;
        let ids = Tensor::new(&[[5u32, 1, 38]], &dev).unwrap();
        for (at, targets) in [(&[0u32, 1][..], &[1u32][..]), (&[3], &[1]), (&[0], &[40])] {
            assert!(model
                .loss_and_grads(&ids, None, None, at, targets, 1.0)
                .is_err());
        }
        let (mut rows_over_trained, _) = tiny(true, 1, 4);
        let rows = Tensor::zeros((1, 16), candle_core::DType::F32, &dev).unwrap();
        rows_over_trained
            .set_token_rows(crate::llama::TokenRows {
                ids: vec![3],
                embed: rows,
                head: None,
            })
            .unwrap();
        assert!(!rows_over_trained.hand_backward_applies());
        assert!(rows_over_trained
            .loss_and_grads(&ids, None, None, &[0], &[1], 1.0)
            .is_err());
    }
}
