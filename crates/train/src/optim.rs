//! AdamW with PyTorch's semantics (`torch.optim.AdamW`, the Hugging Face Trainer's default) and
//! the Hugging Face cosine schedule with linear warm-up.

use candle_core::{Tensor, Var};
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
        let m = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<Result<Vec<_>, _>>()?;
        let v = m.clone();
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
        let p = &self.params;
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - p.beta1.powi(t);
        let bc2 = 1.0 - p.beta2.powi(t);
        for (i, ((_, var), g)) in self.vars.iter().zip(grads).enumerate() {
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

/// `clip_grad_norm_`: the global L2 norm of `grads` (returned), and the grads scaled by
/// `max_norm / (norm + 1e-6)` when that is below one.
pub fn clip_grad_norm(grads: &mut [Tensor], max_norm: f64) -> Result<f64, TrainError> {
    // Summed in f64: an f32 running sum over a large embedding gradient is off by ~1e-5.
    let mut sq = 0f64;
    for g in grads.iter() {
        sq += g
            .to_dtype(candle_core::DType::F64)?
            .sqr()?
            .sum_all()?
            .to_scalar::<f64>()?;
    }
    let norm = sq.sqrt();
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
