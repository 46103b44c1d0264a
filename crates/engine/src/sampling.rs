//! Choosing the next token: greedy, or temperature / top-k / top-p sampling with a seed, with an
//! optional repetition penalty (as transformers applies it).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 (or below): greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// > 1 discourages tokens already in the sequence.
    pub repetition_penalty: Option<f32>,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: None,
            seed: 0,
        }
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Sampler {
        Sampler {
            rng: StdRng::seed_from_u64(params.seed),
            params,
        }
    }

    /// The next token given the last position's logits (overwritten) and the sequence so far.
    pub fn sample(&mut self, logits: &mut [f32], context: &[u32]) -> u32 {
        if let Some(p) = self
            .params
            .repetition_penalty
            .filter(|p| *p != 1.0 && *p > 0.0)
        {
            let mut seen = std::collections::HashSet::new();
            for &t in context {
                if seen.insert(t) {
                    if let Some(l) = logits.get_mut(t as usize) {
                        *l = if *l < 0.0 { *l * p } else { *l / p };
                    }
                }
            }
        }
        if self.params.temperature <= 0.0 || logits.is_empty() {
            return argmax(logits);
        }
        // The softmax's numerators e^((l − max)/t), in place.
        let inv_t = 1.0 / self.params.temperature;
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &l| m.max(l));
        for l in logits.iter_mut() {
            *l = (*l - max) * inv_t;
        }
        let total = mathcoder_model::vmath::exp_in_place(logits, 0.0) as f64;
        let w = &*logits;
        let n = w.len();
        let top_k = self.params.top_k.filter(|k| *k > 0 && *k < n);
        let top_p = self.params.top_p.filter(|p| *p > 0.0 && *p < 1.0);
        let Some((top_k, top_p)) = (top_k.is_some() || top_p.is_some()).then_some((top_k, top_p))
        else {
            // Plain temperature sampling: no order needed (a vocabulary-sized sort per token
            // once cost more than the model's step for a 0.5B model).
            return draw(&mut self.rng, (0..n).map(|i| (i, w[i])), total);
        };
        // Candidates: the largest weights (ties: the lower id first), found by selection, not a
        // full sort: the k of top-k, or for top-p alone a growing k until its mass suffices.
        let desc = |a: &usize, b: &usize| w[*b].total_cmp(&w[*a]).then(a.cmp(b));
        let mut idx: Vec<usize> = (0..n).collect();
        let mut k = top_k.unwrap_or(64.min(n));
        loop {
            if k < n {
                idx.select_nth_unstable_by(k - 1, desc);
            }
            let mass: f64 = idx[..k].iter().map(|&i| w[i] as f64).sum();
            match top_p {
                Some(p) if top_k.is_none() && k < n && mass < p as f64 * total => {
                    k = (k * 4).min(n);
                }
                _ => break,
            }
        }
        idx.truncate(k);
        idx.sort_unstable_by(desc);
        let mut mass: f64 = idx.iter().map(|&i| w[i] as f64).sum();
        if let Some(p) = top_p {
            // The smallest prefix whose share of the mass (of the top k, or of all) reaches p.
            let target = p as f64 * if top_k.is_some() { mass } else { total };
            let mut acc = 0.0;
            let keep = idx
                .iter()
                .position(|&i| {
                    acc += w[i] as f64;
                    acc >= target
                })
                .map_or(idx.len(), |j| j + 1);
            idx.truncate(keep);
            mass = idx.iter().map(|&i| w[i] as f64).sum();
        }
        draw(&mut self.rng, idx.iter().map(|&i| (i, w[i])), mass)
    }
}

/// Token `i` of `(i, weight)` with probability `weight / total` (inverse CDF).
fn draw(rng: &mut StdRng, items: impl Iterator<Item = (usize, f32)>, total: f64) -> u32 {
    let r = rng.random::<f64>() * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, w) in items {
        acc += w as f64;
        last = i;
        if r < acc {
            return i as u32;
        }
    }
    last as u32
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_and_penalty() {
        let mut s = Sampler::new(SamplingParams::default());
        assert_eq!(s.sample(&mut [0.1, 3.0, 3.0, -1.0], &[]), 1);
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: Some(2.0),
            ..SamplingParams::default()
        });
        // 3.0 -> 1.5 for the seen token 1: token 2 wins.
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0, -1.0], &[1, 1]), 2);
    }

    #[test]
    fn sampling_is_seeded_and_respects_top_k() {
        let p = SamplingParams {
            temperature: 1.0,
            top_k: Some(2),
            seed: 7,
            ..SamplingParams::default()
        };
        let draw = |p: &SamplingParams| {
            let mut s = Sampler::new(p.clone());
            (0..200)
                .map(|_| s.sample(&mut [1.0, 1.1, 0.9, 5.0], &[]))
                .collect::<Vec<_>>()
        };
        let a = draw(&p);
        assert_eq!(a, draw(&p));
        assert!(a.iter().all(|t| *t == 3 || *t == 1));
        assert!(a.contains(&1));
        let nucleus = SamplingParams {
            top_k: None,
            top_p: Some(0.5),
            ..p
        };
        assert!(draw(&nucleus).iter().all(|t| *t == 3));
    }

    /// The frequencies follow the softmax at the temperature, with and without top-k/top-p,
    /// over a vocabulary large enough for top-p's growing candidate set.
    #[test]
    fn frequencies_follow_the_distribution() {
        let n = 1000;
        // Token i: logit −i/100, except tokens 0..4 (1.0 down to 0.4): a long tail.
        let logits: Vec<f32> = (0..n)
            .map(|i| {
                if i < 4 {
                    1.0 - i as f32 * 0.2
                } else {
                    -(i as f32) / 100.0
                }
            })
            .collect();
        let t = 0.8f32;
        let weights: Vec<f64> = logits
            .iter()
            .map(|l| ((l - 1.0) / t) as f64)
            .map(f64::exp)
            .collect();
        let expect = |keep: usize| {
            let s: f64 = weights[..keep].iter().sum();
            weights[..keep].iter().map(|w| w / s).collect::<Vec<_>>()
        };
        let total: f64 = weights.iter().sum();
        // The nucleus for top-p 0.9: the fewest top tokens with 90% of the mass.
        let mut acc = 0.0;
        let nucleus = weights
            .iter()
            .position(|w| {
                acc += w / total;
                acc >= 0.9
            })
            .unwrap()
            + 1;
        assert!(
            nucleus > 64,
            "the test should make top-p grow its candidates: {nucleus}"
        );
        for (top_k, top_p, keep) in [
            (None, None, n),
            (Some(3), None, 3),
            (None, Some(0.9), nucleus),
        ] {
            let mut s = Sampler::new(SamplingParams {
                temperature: t,
                top_k,
                top_p,
                seed: 3,
                ..SamplingParams::default()
            });
            let draws = 40_000;
            let mut counts = vec![0usize; n];
            for _ in 0..draws {
                counts[s.sample(&mut logits.clone(), &[]) as usize] += 1;
            }
            assert!(
                counts[keep..].iter().all(|c| *c == 0),
                "{top_k:?} {top_p:?}"
            );
            for (i, p) in expect(keep).iter().enumerate().take(4) {
                let f = counts[i] as f64 / draws as f64;
                // Six standard deviations of the frequency.
                assert!(
                    (f - p).abs() < 6.0 * (p * (1.0 - p) / draws as f64).sqrt(),
                    "{top_k:?} {top_p:?} token {i}: {f} vs {p}"
                );
            }
        }
    }
}
