//! Vectorised elementwise math for the fused kernels (training) and the engine's f32 paths:
//! `exp` and the row loops built on it (softmax, SiLU, cross-entropy).
//!
//! libm's `expf` is a scalar call: in a training step of the SmolLM2 shape it took ~5% of the
//! time (softmax, SwiGLU and the cross-entropy over 49k logits, forward and backward), and the
//! loops around it could not vectorise. [`exp`] is branch-free arithmetic, so the loops below
//! vectorise; each is compiled for AVX-512, AVX2 + FMA and the baseline and picked at run time
//! (`multiversion`). The arithmetic uses no fused multiply-adds and the reductions keep
//! [`LANES`] partial sums in a fixed order, so every version gives the same bits.

use multiversion::multiversion;

/// Partial sums (and maxima) a reduction keeps: one AVX-512 register, two AVX2 ones.
const LANES: usize = 16;

/// `e^x` within 2 ulp of the exact value for `x` in `[-87.3, 88.7]`; `0` below (where the exact
/// value is subnormal or zero), `inf` above, NaN for NaN.
///
/// `x = k·ln 2 + r` with `|r| ≤ ln 2 / 2` (Cody-Waite: `ln 2` split so that `k·LN2_HI` is
/// exact), `e^r` by its Taylor polynomial of degree 7 (truncation error below 6e-9 relative),
/// and `2^k` built from exponent bits.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 0.693359375: 9 significant bits, so k·LN2_HI is exact for |k| ≤ 2^15.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5·2^23: adding it rounds to an integer, kept in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.3;
    const HI: f32 = 88.72;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let k = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let kf = t - ROUND;
    let r = (xc - kf * LN2_HI) - kf * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k as 2^(k/2) · 2^(k - k/2): k runs over [-126, 128], one factor alone would not fit
    // the exponent field at both ends.
    let (k1, k2) = (k >> 1, k - (k >> 1));
    let pow2 = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
    let y = p * pow2(k1) * pow2(k2);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `x · σ(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x / (1.0 + exp(-x))
}

/// The largest element (`-inf` for an empty slice; NaNs are skipped unless all are NaN).
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn max(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            acc[k] = acc[k].max(c[k]);
        }
    }
    let m = it
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    acc.iter().fold(m, |m, &v| m.max(v))
}

/// `Σ e^(x - sub)`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn sum_exp(x: &[f32], sub: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for k in 0..LANES {
            acc[k] += exp(c[k] - sub);
        }
    }
    let tail: f32 = it.remainder().iter().map(|&v| exp(v - sub)).sum();
    acc.iter().sum::<f32>() + tail
}

/// `x ← e^(x - sub)`, returning the new `Σ x`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn exp_in_place(x: &mut [f32], sub: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut it = x.chunks_exact_mut(LANES);
    for c in &mut it {
        for k in 0..LANES {
            c[k] = exp(c[k] - sub);
            acc[k] += c[k];
        }
    }
    let mut tail = 0f32;
    for v in it.into_remainder() {
        *v = exp(*v - sub);
        tail += *v;
    }
    acc.iter().sum::<f32>() + tail
}

/// `out ← e^(x - sub) · k`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn exp_scaled(out: &mut [f32], x: &[f32], sub: f32, k: f32) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = exp(v - sub) * k;
    }
}

/// `x ← e^(x - sub) · k`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn exp_scaled_in_place(x: &mut [f32], sub: f32, k: f32) {
    for v in x {
        *v = exp(*v - sub) * k;
    }
}

/// `x ← x / d`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn div_in_place(x: &mut [f32], d: f32) {
    for v in x {
        *v /= d;
    }
}

/// SwiGLU: `out ← silu(gate) · up`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn silu_mul(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((o, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        *o = silu(a) * b;
    }
}

/// SwiGLU's gate gradient: `out ← g · up · σ(gate) · (1 + gate · (1 - σ(gate)))`.
#[multiversion(targets("x86_64+avx512f", "x86_64+avx2+fma"))]
pub fn silu_mul_grad(out: &mut [f32], gate: &[f32], up: &[f32], g: &[f32]) {
    for (((o, &x), &b), &g) in out.iter_mut().zip(gate).zip(up).zip(g) {
        let s = 1.0 / (1.0 + exp(-x));
        *o = g * b * s * (1.0 + x * (1.0 - s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place.
    fn ulps(a: f32, b: f32) -> u32 {
        (a.to_bits() as i32).abs_diff(b.to_bits() as i32)
    }

    #[test]
    fn exp_is_within_two_ulp_over_its_range() {
        let mut worst = (0u32, 0f32);
        let n = 2_000_000;
        for i in 0..=n {
            let x = -87.3 + (88.72 + 87.3) * i as f32 / n as f32;
            let e = (x as f64).exp() as f32;
            if e < f32::MIN_POSITIVE {
                continue;
            }
            let u = ulps(exp(x), e);
            if u > worst.0 {
                worst = (u, x);
            }
        }
        assert!(worst.0 <= 2, "{} ulp at x = {}", worst.0, worst.1);
        // Around 0, where softmax and SiLU live, every float of [-1, 1] spaced 2^-12 apart.
        for i in -4096..=4096 {
            let x = i as f32 / 4096.0;
            assert!(ulps(exp(x), (x as f64).exp() as f32) <= 2, "x = {x}");
        }
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(88.7).is_finite() && exp(88.7) > 3.0e38);
    }

    /// Slices with a remainder after the 16-lane chunks, against the scalar definitions.
    #[test]
    fn row_kernels_match_their_scalar_definitions() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 / 9.0 - 5.0)
            .collect();
        let y: Vec<f32> = (0..37)
            .map(|i| ((i * 104_729) % 53) as f32 / 7.0 - 3.0)
            .collect();
        let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        assert_eq!(max(&x), m);
        assert_eq!(max(&[]), f32::NEG_INFINITY);
        let close = |a: f32, b: f64| ((a as f64) - b).abs() <= 1e-6 * b.abs().max(1.0);
        let s: f64 = x.iter().map(|&v| ((v - m) as f64).exp()).sum();
        assert!(close(sum_exp(&x, m), s));
        let mut e = x.clone();
        assert!(close(exp_in_place(&mut e, m), s));
        let mut o = vec![0f32; x.len()];
        exp_scaled(&mut o, &x, m, 0.5);
        silu_mul(&mut e, &x, &y);
        let mut d = vec![0f32; x.len()];
        silu_mul_grad(&mut d, &x, &y, &y);
        for i in 0..x.len() {
            let (a, b) = (x[i] as f64, y[i] as f64);
            assert!(close(o[i], (a - m as f64).exp() * 0.5));
            let sg = 1.0 / (1.0 + (-a).exp());
            assert!(close(e[i], a * sg * b));
            assert!(close(d[i], b * b * sg * (1.0 + a * (1.0 - sg))));
        }
        let mut o2 = x.clone();
        exp_scaled_in_place(&mut o2, m, 0.5);
        assert_eq!(o, o2);
        div_in_place(&mut o, 0.5);
        assert!(close(o[3], (x[3] as f64 - m as f64).exp()));
    }
}
