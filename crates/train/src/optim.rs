//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, the Hugging Face Trainer's default) and
//! the Hugging Face cosine schedule with linear warm-up.

use candle_core::{bail, CpuStorage, DType, InplaceOp1, Layout, Storage, Tensor, Var};
use multiversion::multiversion;
use rayon::prelude::*;
use std::cell::RefCell;
use std::collections::HashMap;

use crate::TrainError;

/// AdamW hyper-parameters (the Hugging Face Trainer's defaults; the paper states none).
#[derive(Clone, Debug, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// AdamW state: first and second moments per variable, and the step count.
pub struct AdamW {
    pub params: AdamWParams,
    pub vars: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub step: u64,
}

impl AdamW {
    pub fn new(vars: Vec<(String, Var)>, params: AdamWParams) -> Result<AdamW, TrainError> {
        // Two allocations each: the fused step updates the moments in place.
        let zeros = || {
            vars.iter()
                .map(|(_, v)| v.as_tensor().zeros_like())
                .collect::<Result<Vec<_>, _>>()
        };
        let (m, v) = (zeros()?, zeros()?);
        Ok(AdamW {
            params,
            vars,
            m,
            v,
            step: 0,
        })
    }

    /// One update with `grads` (one per variable, in order) at learning rate `lr`:
    /// `p -= lr*wd*p; m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g²;
    /// p -= lr * (m / (1-b1^t)) / (sqrt(v / (1-b2^t)) + eps)`.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<(), TrainError> {
        self.step_scaled(grads, lr, None)
    }

    /// `clip_grad_norm_(max_norm)` then [`AdamW::step`], the clipping folded into the update
    /// (one pass over the gradients for their norm, one over parameters, gradients and
    /// moments for the update, in place and in parallel on the CPU). Returns the gradients'
    /// norm before clipping. The same arithmetic as the two calls, to the bit.
    pub fn clip_and_step(
        &mut self,
        grads: &[Tensor],
        max_norm: f64,
        lr: f64,
    ) -> Result<f64, TrainError> {
        if grads.len() != self.vars.len() {
            return Err(TrainError::Config(format!(
                "{} gradients for {} variables",
                grads.len(),
                self.vars.len()
            )));
        }
        let norm = grad_norm(grads)?;
        let coef = max_norm / (norm + 1e-6);
        self.step_scaled(grads, lr, (coef < 1.0).then_some(coef))?;
        Ok(norm)
    }

    /// The update with every gradient multiplied by `scale` first (clipping).
    fn step_scaled(
        &mut self,
        grads: &[Tensor],
        lr: f64,
        scale: Option<f64>,
    ) -> Result<(), TrainError> {
        self.step += 1;
        let t = self.step as i32;
        let p = self.params.clone();
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for (i, ((_, var), g)) in self.vars.iter().zip(grads).enumerate() {
            let w = var.as_tensor();
            let (m, v) = (&self.m[i], &self.v[i]);
            if [w, g, m, v]
                .iter()
                .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
                && w.is_contiguous()
                && m.is_contiguous()
                && v.is_contiguous()
                && g.dims() == w.dims()
            {
                let k = Kernel {
                    b1: p.beta1 as f32,
                    c1: (1.0 - p.beta1) as f32,
                    b2: p.beta2 as f32,
                    c2: (1.0 - p.beta2) as f32,
                    inv_bc1: (1.0 / bc1) as f32,
                    inv_bc2: (1.0 / bc2) as f32,
                    eps: p.eps as f32,
                    lr: lr as f32,
                    decay: (p.weight_decay != 0.0).then_some((1.0 - lr * p.weight_decay) as f32),
                    scale: scale.map(|s| s as f32),
                };
                let g = g.contiguous()?;
                with_f32(&g, |gs| {
                    in_place(m, |ms| {
                        in_place(v, |vs| in_place(w, |ws| k.run(ws, ms, vs, gs)))
                    })
                })?;
                continue;
            }
            let g = match scale {
                Some(s) => (g * s)?,
                None => g.clone(),
            };
            let g = &g;
            let m = ((&self.m[i] * p.beta1)? + (g * (1.0 - p.beta1))?)?;
            let v = ((&self.v[i] * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let mut w = var.as_tensor().clone();
            if p.weight_decay != 0.0 {
                w = (&w * (1.0 - lr * p.weight_decay))?;
            }
            let denom = ((&v / bc2)?.sqrt()? + p.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            var.set(&(w - (upd * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Moments as named tensors (`m.NAME`, `v.NAME`), for a checkpoint.
    pub fn state(&self) -> HashMap<String, Tensor> {
        let mut out = HashMap::new();
        for (i, (name, _)) in self.vars.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
        }
        out
    }

    /// Restores moments written by [`AdamW::state`] and the step count.
    pub fn load_state(
        &mut self,
        mut state: HashMap<String, Tensor>,
        step: u64,
    ) -> Result<(), TrainError> {
        for (i, (name, var)) in self.vars.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let t = state.remove(&format!("{kind}.{name}")).ok_or_else(|| {
                    TrainError::Resume(format!("the optimizer state has no {kind}.{name}"))
                })?;
                if t.dims() != var.dims() {
                    return Err(TrainError::Resume(format!(
                        "{kind}.{name} has shape {:?}, the model {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                *slot = t.to_dtype(var.dtype())?.to_device(var.device())?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// The learning rate of optimizer step `step` (1-based) under Hugging Face's
/// `get_cosine_schedule_with_warmup`: the scheduler is at `step - 1` when the step is taken,
/// so the first step of a warm-up has rate 0.
pub fn cosine_lr(peak: f64, step: u64, warmup: u64, total: u64) -> f64 {
    let s = step.saturating_sub(1) as f64;
    let (w, n) = (warmup as f64, total as f64);
    if s < w {
        return peak * s / w.max(1.0);
    }
    let progress = (s - w) / (n - w).max(1.0);
    peak * (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
}

/// AdamW's update of one parameter, in f32 with the same operations in the same order as the
/// composed candle ops of [`AdamW::step`] (so both give the same bits).
struct Kernel {
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    inv_bc1: f32,
    inv_bc2: f32,
    eps: f32,
    lr: f32,
    decay: Option<f32>,
    scale: Option<f32>,
}

impl Kernel {
    fn run(
        &self,
        w: &mut [f32],
        m: &mut [f32],
        v: &mut [f32],
        g: &[f32],
    ) -> candle_core::Result<()> {
        if m.len() != w.len() || v.len() != w.len() || g.len() != w.len() {
            bail!("AdamW: parameter, gradient and moments differ in size")
        }
        const CHUNK: usize = 1 << 14;
        w.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((w, m), v), g)| adamw_chunk(self, w, m, v, g));
        Ok(())
    }
}

/// [`Kernel`]'s update over one chunk: zipped slices (no bounds checks), so the loop vectorises,
/// compiled for AVX-512 and AVX2 besides the baseline (no fused multiply-adds, same bits on
/// every version).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn adamw_chunk(k: &Kernel, w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
    let (scale, decay) = (k.scale.unwrap_or(1.0), k.decay.unwrap_or(1.0));
    let (has_scale, has_decay) = (k.scale.is_some(), k.decay.is_some());
    for (((w, m), v), &g) in w.iter_mut().zip(m).zip(v).zip(g) {
        let g = if has_scale { g * scale } else { g };
        let mi = *m * k.b1 + g * k.c1;
        let vi = *v * k.b2 + (g * g) * k.c2;
        let denom = (vi * k.inv_bc2).sqrt() + k.eps;
        let upd = (mi * k.inv_bc1) / denom;
        let wi = if has_decay { *w * decay } else { *w };
        *w = wi - upd * k.lr;
        *m = mi;
        *v = vi;
    }
}

/// Runs `f` on the contiguous f32 data of the CPU tensor `t`.
fn with_f32<R>(
    t: &Tensor,
    f: impl FnOnce(&[f32]) -> candle_core::Result<R>,
) -> candle_core::Result<R> {
    let (storage, layout) = t.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((a, b))) =
        (&*storage, layout.contiguous_offsets())
    else {
        bail!("a contiguous f32 CPU tensor expected")
    };
    f(&data[a..b])
}

/// `f` on the data of `t` in place (every tensor sharing its storage sees the change).
struct InPlace<F>(RefCell<Option<F>>);

impl<F: FnOnce(&mut [f32]) -> candle_core::Result<()>> InplaceOp1 for InPlace<F> {
    fn name(&self) -> &'static str {
        "adamw-in-place"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (CpuStorage::F32(data), Some((a, b))) = (s, l.contiguous_offsets()) else {
            bail!("{}: a contiguous f32 tensor expected", self.name())
        };
        let Some(f) = self.0.borrow_mut().take() else {
            bail!("{}: applied twice", self.name())
        };
        f(&mut data[a..b])
    }
}

fn in_place(
    t: &Tensor,
    f: impl FnOnce(&mut [f32]) -> candle_core::Result<()>,
) -> candle_core::Result<()> {
    t.inplace_op1(&InPlace(RefCell::new(Some(f))))
}

/// `Σ x²` in f64, in 8 interleaved partial sums (so that the loop vectorises).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
fn sum_sq_f64(x: &[f32]) -> f64 {
    let mut acc = [0f64; 8];
    let mut it = x.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] += f64::from(c[k]) * f64::from(c[k]);
        }
    }
    let tail: f64 = it
        .remainder()
        .iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum();
    acc.iter().sum::<f64>() + tail
}

/// The global L2 norm of `grads`, summed in f64 (an f32 running sum over a large embedding
/// gradient is off by ~1e-5); one parallel pass without copies on the CPU. The chunks' partial
/// sums are added in chunk order, so the norm does not depend on how the pool split the work (a
/// rayon `sum` does: its last bits changed from run to run, and a resumed run's log with them).
pub fn grad_norm(grads: &[Tensor]) -> Result<f64, TrainError> {
    let mut sq = 0f64;
    for g in grads {
        sq += if g.device().is_cpu() && g.dtype() == DType::F32 {
            with_f32(&g.contiguous()?, |x| {
                let partial: Vec<f64> = x.par_chunks(1 << 14).map(sum_sq_f64).collect();
                Ok(partial.iter().sum::<f64>())
            })?
        } else {
            g.to_dtype(DType::F64)?
                .sqr()?
                .sum_all()?
                .to_scalar::<f64>()?
        };
    }
    Ok(sq.sqrt())
}

/// `clip_grad_norm_`: the global L2 norm of `grads` (returned), and the grads scaled by
/// `max_norm / (norm + 1e-6)` when that is below one.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64, TrainError> {
    let norm = grad_norm(grads)?;
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for g in grads.iter_mut() {
            *g = (&*g * coef)?;
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_matches_hugging_face() {
        assert_eq!(cosine_lr(1.0, 1, 50, 100), 0.0);
        assert!((cosine_lr(1.0, 26, 50, 100) - 0.5).abs() < 1e-12);
        assert_eq!(cosine_lr(1.0, 51, 50, 100), 1.0);
        assert!((cosine_lr(1.0, 76, 50, 100) - 0.5).abs() < 1e-12);
        assert!(cosine_lr(1.0, 100, 50, 100) > 0.0);
        assert_eq!(cosine_lr(2.0, 1, 0, 10), 2.0);
    }

    /// The fused clip + AdamW gives the bits of `clip_grad_norm` and the update as composed
    /// candle ops (written out here), with and without clipping and weight decay.
    #[test]
    fn fused_step_equals_composed_ops() {
        let dev = Device::Cpu;
        let n = 70_000; // several parallel chunks
        let val = |seed: u32, scale: f32| -> Tensor {
            let v: Vec<f32> = (0..n as u32)
                .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
                .map(|x| x * scale)
                .collect();
            Tensor::from_vec(v, n, &dev).unwrap()
        };
        for (wd, gscale) in [(0.0, 1e-3f32), (0.1, 1.0)] {
            let params = AdamWParams {
                weight_decay: wd,
                ..AdamWParams::default()
            };
            let var = Var::from_tensor(&val(1, 1.0)).unwrap();
            let mut opt = AdamW::new(vec![("w".into(), var.clone())], params.clone()).unwrap();
            let (mut w, mut m, mut v) = (val(1, 1.0), val(0, 0.0), val(0, 0.0));
            for step in 1..=3 {
                let g = val(step + 7, gscale);
                let lr = 1e-3 * f64::from(step);
                let norm = opt
                    .clip_and_step(std::slice::from_ref(&g), 1.0, lr)
                    .unwrap();
                // Reference: clip_grad_norm_ then the update as composed candle ops.
                let mut gs = vec![g];
                let ref_norm = clip_grad_norm(&mut gs, 1.0).unwrap();
                assert!((norm - ref_norm).abs() <= 1e-12 * ref_norm);
                let g = &gs[0];
                let p = &params;
                let (bc1, bc2) = (
                    1.0 - p.beta1.powi(step as i32),
                    1.0 - p.beta2.powi(step as i32),
                );
                m = ((&m * p.beta1).unwrap() + (g * (1.0 - p.beta1)).unwrap()).unwrap();
                v = ((&v * p.beta2).unwrap() + (g.sqr().unwrap() * (1.0 - p.beta2)).unwrap())
                    .unwrap();
                if wd != 0.0 {
                    w = (&w * (1.0 - lr * wd)).unwrap();
                }
                let denom = ((&v / bc2).unwrap().sqrt().unwrap() + p.eps).unwrap();
                let upd = ((&m / bc1).unwrap() / denom).unwrap();
                w = (w - (upd * lr).unwrap()).unwrap();
                let same = |a: &Tensor, b: &Tensor| {
                    a.to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect::<Vec<_>>()
                        == b.to_vec1::<f32>()
                            .unwrap()
                            .iter()
                            .map(|x| x.to_bits())
                            .collect::<Vec<_>>()
                };
                assert!(same(var.as_tensor(), &w), "weights, step {step}, wd {wd}");
                let st = opt.state();
                assert!(
                    same(&st["m.w"], &m) && same(&st["v.w"], &v),
                    "moments, step {step}"
                );
            }
        }
    }

    #[test]
    fn adamw_first_step_moves_by_lr() {
        let dev = Device::Cpu;
        let var = Var::from_tensor(&Tensor::new(&[1.0f32, -2.0], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("w".into(), var.clone())], AdamWParams::default()).unwrap();
        let g = Tensor::new(&[0.5f32, -3.0], &dev).unwrap();
        opt.step(&[g], 0.1).unwrap();
        let w = var.as_tensor().to_vec1::<f32>().unwrap();
        // Bias-corrected first step: the update is lr * sign(g) (up to eps).
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.9).abs() < 1e-6,
            "{w:?}"
        );
        let mut gs = vec![Tensor::new(&[3.0f32, 4.0], &dev).unwrap()];
        let n = clip_grad_norm(&mut gs, 1.0).unwrap();
        assert!((n - 5.0).abs() < 1e-9);
        let c = gs[0].to_vec1::<f32>().unwrap();
        assert!((c[0] - 0.6).abs() < 1e-5 && (c[1] - 0.8).abs() < 1e-5);
    }
}
