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

    /// The next token given the last position's logits and the sequence so far.
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
        if self.params.temperature <= 0.0 {
            return argmax(logits);
        }
        let t = self.params.temperature;
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_unstable_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
        if let Some(k) = self.params.top_k.filter(|k| *k > 0) {
            idx.truncate(k);
        }
        let max = logits[idx[0]] / t;
        let mut probs: Vec<f64> = idx
            .iter()
            .map(|&i| ((logits[i] / t - max) as f64).exp())
            .collect();
        let sum: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= sum);
        if let Some(top_p) = self.params.top_p.filter(|p| *p > 0.0 && *p < 1.0) {
            // Keep the smallest prefix whose mass reaches top_p.
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (j, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p as f64 {
                    keep = j + 1;
                    break;
                }
            }
            probs.truncate(keep);
            idx.truncate(keep);
            let s: f64 = probs.iter().sum();
            probs.iter_mut().for_each(|p| *p /= s);
        }
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for (j, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return idx[j] as u32;
            }
        }
        idx[idx.len() - 1] as u32
    }
}

/// Index of the largest logit (the first one on ties, as torch.argmax).
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
}
