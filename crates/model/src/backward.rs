//! A training pass written out by hand: the loss of a batch and the gradient of every weight,
//! on f32 CPU weights that all train (a full fine-tune), without candle's autograd.
//!
//! candle's `backward` gives every node of the graph a zero tensor and adds its gradient to it
//! (a fresh allocation, a memset and an add for every activation and every weight), and every
//! intermediate is a new tensor: on the SmolLM2 shape that bookkeeping took about as long as the
//! matrix products of the backward pass themselves. Here the forward keeps what the backward
//! needs, and the backward writes each gradient once, summing the residual stream's and the
//! projections' input gradients in place (the products add into their output). The kernels are
//! those of [`crate::fused`] (the same code the autograd path runs), so both paths agree to
//! float rounding; the trainer's parity tests against PyTorch run through this one.
//!
//! LoRA runs (frozen weights, adapters, trainable token rows) and other devices or dtypes keep
//! the autograd path ([`Llama::hand_backward_applies`] says which).

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

/// `x · wᵀ`'s gradients: `dx = g · w` (`g` `[n, out]`, `w` `[out, in]`; added to `dx`
/// unless it is empty), and `gᵀ · x`, returned.
fn linear_grads(
    dx: &mut Vec<f32>,
    g: &[f32],
    x: &[f32],
    w: &[f32],
    (n, inp, out): (usize, usize, usize),
) -> candle_core::Result<Vec<f32>> {
    let dims = (n, inp, out);
    if dx.is_empty() {
        *dx = gemm_new(dims, (g, (out, 1)), (w, (inp, 1)))?;
    } else {
        gemm_ex(dx, dims, (g, (out, 1)), (w, (inp, 1)), true, true)?;
    }
    gemm_new((out, inp, n), (g, (1, out)), (x, (inp, 1)))
}

impl Llama {
    /// Whether [`Llama::loss_and_grads`] can run: every weight an f32 CPU variable (tracked),
    /// no adapter, no trainable token rows.
    pub fn hand_backward_applies(&self) -> bool {
        let ok = |t: &Tensor| t.track_op() && t.device().is_cpu() && held(t).is_some();
        self.rows.is_none()
            && ok(&self.embed)
            && ok(&self.norm)
            && self.lm_head.as_ref().is_none_or(ok)
            && self.layers.iter().all(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .all(|p| p.lora.is_none() && ok(&p.w))
                    && ok(&l.attn_norm)
                    && ok(&l.mlp_norm)
            })
    }

    /// The sum of the cross-entropies of the logits at flat positions `at` (`b·t + i` of
    /// `ids`) against `targets`, and the gradient of `scale ·` that sum for every weight, as
    /// `(weight, gradient)` pairs. The other arguments are [`Llama::hidden_states`]'s. Needs
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
                "the hand-written backward pass needs every weight as a trainable f32 CPU \
                 tensor, without adapters or token rows"
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
        let out_w = match &self.lm_head {
            Some(h) => hold(h)?,
            None => hold(&self.embed)?,
        };
        let norm = hold(&self.norm)?;
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok([
                    hold(&l.attn_norm)?,
                    hold(&l.q.w)?,
                    hold(&l.k.w)?,
                    hold(&l.v.w)?,
                    hold(&l.o.w)?,
                    hold(&l.mlp_norm)?,
                    hold(&l.gate.w)?,
                    hold(&l.up.w)?,
                    hold(&l.down.w)?,
                ])
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

        // Forward.
        let e = embed.get();
        let mut x = vec![0f32; n * hd];
        x.par_chunks_mut(hd)
            .zip(ids_v.par_iter())
            .for_each(|(r, &id)| r.copy_from_slice(&e[id as usize * hd..][..hd]));
        let mut saved = Vec::with_capacity(layers.len());
        for w in &layers {
            let [an, wq, wk, wv, wo, mn, wg, wu, wd] = w.each_ref().map(Held::get);
            let x_in = x;
            let h1 = rms_norm_rows(&x_in, an, eps);
            let q = hq.forward(&linear_fwd(&h1, wq, n, hd, nh * d)?, rope);
            let k = hk.forward(&linear_fwd(&h1, wk, n, hd, nkv * d)?, rope);
            let v = hk.forward(&linear_fwd(&h1, wv, n, hd, nkv * d)?, None);
            let mut s = vec![0f32; bh * t * t];
            batched(&mut s, bh, (t, t, d), &q, (d, 1), &k, (1, d))?;
            let p = masked_softmax_rows(&s, &mask, mb, (nh, t, t), att_scale);
            drop(s);
            let mut o = vec![0f32; bh * t * d];
            batched(&mut o, bh, (t, d, t), &p, (t, 1), &v, (d, 1))?;
            let attn = swap_heads(&o, (t, nh, d), false);
            drop(o);
            let mut x_mid = linear_fwd(&attn, wo, n, nh * d, hd)?;
            add_in_place(&mut x_mid, &x_in);
            let h2 = rms_norm_rows(&x_mid, mn, eps);
            let gate = linear_fwd(&h2, wg, n, hd, ffn)?;
            let up = linear_fwd(&h2, wu, n, hd, ffn)?;
            let act = silu_mul_elems(&gate, &up);
            x = linear_fwd(&act, wd, n, ffn, hd)?;
            add_in_place(&mut x, &x_mid);
            saved.push(Saved {
                x_in,
                h1,
                q,
                k,
                v,
                p,
                attn,
                x_mid,
                h2,
                gate,
                up,
                act,
            });
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
        let losses = nll_and_grad_in_place(&mut logits, targets, vocab, scale);
        let loss: f32 = losses.iter().sum();

        // Backward. `logits` now holds their gradient.
        let mut dsel = Vec::new();
        let d_out = linear_grads(&mut dsel, &logits, &sel, w_out, (m, hd, vocab))?;
        drop(logits);
        let mut dhf = vec![0f32; n * hd];
        for (k, &p) in at.iter().enumerate() {
            let (dst, src) = (&mut dhf[p as usize * hd..][..hd], &dsel[k * hd..][..hd]);
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        }
        let mut dx = vec![0f32; n * hd];
        rms_norm_grad_x(&mut dx, &xf, norm.get(), &dhf, eps);
        let d_norm = rms_norm_grad_w(&xf, &dhf, hd, eps);
        drop(dhf);
        let mut layer_grads = Vec::with_capacity(layers.len());
        for (w, s) in layers.iter().zip(saved).rev() {
            let [an, wq, wk, wv, wo, mn, wg, wu, wd] = w.each_ref().map(Held::get);
            // x_out = x_mid + down(silu(gate) · up)
            let mut da = Vec::new();
            let d_down = linear_grads(&mut da, &dx, &s.act, wd, (n, ffn, hd))?;
            let dg = silu_mul_grad_elems(&s.gate, &s.up, &da);
            let du = silu_mul_elems(&s.gate, &da);
            drop(da);
            let mut dh2 = Vec::new();
            let d_gate = linear_grads(&mut dh2, &dg, &s.h2, wg, (n, hd, ffn))?;
            let d_up = linear_grads(&mut dh2, &du, &s.h2, wu, (n, hd, ffn))?;
            rms_norm_grad_x(&mut dx, &s.x_mid, mn, &dh2, eps);
            let d_mlp_norm = rms_norm_grad_w(&s.x_mid, &dh2, hd, eps);
            drop(dh2);
            // x_mid = x_in + o(attention)
            let mut dattn = Vec::new();
            let d_o = linear_grads(&mut dattn, &dx, &s.attn, wo, (n, nh * d, hd))?;
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
            let d_q = linear_grads(&mut dh1, &dqp, &s.h1, wq, (n, hd, nh * d))?;
            let d_k = linear_grads(&mut dh1, &dkp, &s.h1, wk, (n, hd, nkv * d))?;
            let d_v = linear_grads(&mut dh1, &dvp, &s.h1, wv, (n, hd, nkv * d))?;
            rms_norm_grad_x(&mut dx, &s.x_in, an, &dh1, eps);
            let d_attn_norm = rms_norm_grad_w(&s.x_in, &dh1, hd, eps);
            layer_grads.push([
                d_attn_norm,
                d_q,
                d_k,
                d_v,
                d_o,
                d_mlp_norm,
                d_gate,
                d_up,
                d_down,
            ]);
        }
        layer_grads.reverse();
        let (mut d_embed, d_head) = match self.lm_head {
            Some(_) => (vec![0f32; vocab * hd], Some(d_out)),
            None => (d_out, None),
        };
        for (r, &id) in ids_v.iter().enumerate() {
            let (dst, src) = (&mut d_embed[id as usize * hd..][..hd], &dx[r * hd..][..hd]);
            dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
        }
        drop((embed, out_w, norm, layers));

        let dev = Device::Cpu;
        let grad = |w: &Tensor, g: Vec<f32>| -> Result<(Tensor, Tensor), ModelError> {
            Ok((w.clone(), Tensor::from_vec(g, w.dims(), &dev)?))
        };
        let mut out = vec![grad(&self.embed, d_embed)?, grad(&self.norm, d_norm)?];
        if let (Some(h), Some(g)) = (&self.lm_head, d_head) {
            out.push(grad(h, g)?);
        }
        for (l, g) in self.layers.iter().zip(layer_grads) {
            let ws = [
                &l.attn_norm,
                &l.q.w,
                &l.k.w,
                &l.v.w,
                &l.o.w,
                &l.mlp_norm,
                &l.gate.w,
                &l.up.w,
                &l.down.w,
            ];
            for (w, g) in ws.into_iter().zip(g) {
                out.push(grad(w, g)?);
            }
        }
        Ok((loss, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llama::tests::tiny;
    use crate::llama::{nll, packed_mask, packed_positions};

    /// Loss and every gradient equal those of candle's autograd through the fused ops, on a
    /// packed batch of two rows (GQA, tied and untied output), positions only where a target is.
    #[test]
    fn hand_backward_matches_autograd() {
        for tied in [true, false] {
            let (model, vars) = tiny(tied, 2, 2);
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
            let n_vars = vars.all_vars().len();
            assert_eq!(grads.len(), n_vars);
            for (w, got) in &grads {
                let want = g.get(w).expect("autograd gradient");
                let max = |t: &Tensor| t.abs().unwrap().max_all().unwrap().to_scalar::<f32>();
                let diff = max(&(got - want).unwrap()).unwrap();
                let size = max(want).unwrap();
                assert!(
                    diff <= 1e-5 * size.max(1e-3),
                    "{:?}: {diff} of {size}",
                    w.dims()
                );
            }
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
        let frozen = {
            let (mut m, _) = tiny(false, 1, 4);
            m.freeze();
            m
        };
        assert!(!frozen.hand_backward_applies());
        assert!(frozen
            .loss_and_grads(&ids, None, None, &[0], &[1], 1.0)
            .is_err());
    }
}
