//! Matrix-vector products for dense f32 weights, used when only a few activation rows go
//! through a projection (decoding one token per sequence).
//!
//! Decoding reads every weight once per token, so it is bound by memory bandwidth; a general
//! GEMM (candle's `gemm` crate) packs its operands for reuse that a single row cannot have and
//! stays well below that bound. Here each worker of candle's thread pool streams a range of
//! weight rows once and takes the dot product with up to 4 activation rows at a time (AVX2 +
//! FMA where present, plain Rust otherwise).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Shape};

/// Activation rows up to which [`Gemv`] is used instead of a GEMM.
pub(crate) const MAX_ROWS: usize = 8;
/// Activation rows taken per pass over the weights.
const ROW_TILE: usize = 4;

/// `x [m, k] · wᵀ` for `w [n, k]`, both f32 and contiguous.
pub(crate) struct Gemv;

impl CustomOp2 for Gemv {
    fn name(&self) -> &'static str {
        "gemv-f32"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(xd), CpuStorage::F32(wd)) = (xs, ws) else {
            candle_core::bail!(
                "gemv-f32 takes f32 operands, got {:?} and {:?}",
                xs.dtype(),
                ws.dtype()
            );
        };
        let (Some((xa, xb)), Some((wa, wb))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("gemv-f32 takes contiguous operands");
        };
        let &[n, k] = wl.shape().dims() else {
            candle_core::bail!("gemv-f32: weights {:?} are not a matrix", wl.shape());
        };
        let dims = xl.shape().dims();
        if dims.last() != Some(&k) || k == 0 {
            candle_core::bail!("gemv-f32: activations {dims:?} do not end in k = {k}");
        }
        let (x, w) = (&xd[xa..xb], &wd[wa..wb]);
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        gemv(x, w, n, k, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("dims end in k") = n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

struct SendPtr(*mut f32);
// SAFETY: workers write disjoint (row, column-range) parts of the output.
unsafe impl Sync for SendPtr {}

fn gemv(x: &[f32], w: &[f32], n: usize, k: usize, out: &mut [f32]) {
    let out_ptr = SendPtr(out.as_mut_ptr());
    candle_core::utils::barrier_pool().execute_chunked(n, |cols| {
        let out_ptr = &out_ptr;
        // SAFETY: `out` has `m·n` floats and each worker gets its own columns.
        unsafe { columns(x, w, n, k, cols, out_ptr.0) }
    });
}

/// Output columns `cols` of `x [m, k] · wᵀ` (`w [n, k]`), written to `out[i·n + j]`.
///
/// # Safety
/// `out` points to `m·n` writable floats (`m = x.len() / k`), and no other thread writes these
/// columns meanwhile.
pub(crate) unsafe fn columns(
    x: &[f32],
    w: &[f32],
    n: usize,
    k: usize,
    cols: std::ops::Range<usize>,
    out: *mut f32,
) {
    let m = x.len() / k;
    #[cfg(target_arch = "x86_64")]
    let fast =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    for j in cols {
        let wr = &w[j * k..(j + 1) * k];
        for r0 in (0..m).step_by(ROW_TILE) {
            let rows = ROW_TILE.min(m - r0);
            let mut dots = [0f32; ROW_TILE];
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: AVX2 and FMA were detected above.
                unsafe { x86::dots(wr, x, r0, rows, k, &mut dots) };
            } else {
                portable_dots(wr, x, r0, rows, k, &mut dots);
            }
            #[cfg(not(target_arch = "x86_64"))]
            portable_dots(wr, x, r0, rows, k, &mut dots);
            for (r, d) in dots.iter().enumerate().take(rows) {
                // SAFETY: (r0 + r, j) is inside the m × n output, and column j belongs to
                // this caller only.
                unsafe { *out.add((r0 + r) * n + j) = *d };
            }
        }
    }
}

fn portable_dots(
    wr: &[f32],
    x: &[f32],
    r0: usize,
    rows: usize,
    k: usize,
    dots: &mut [f32; ROW_TILE],
) {
    for (r, d) in dots.iter_mut().enumerate().take(rows) {
        let xr = &x[(r0 + r) * k..(r0 + r + 1) * k];
        let mut acc = [0f32; 8];
        let (wc, xc) = (wr.chunks_exact(8), xr.chunks_exact(8));
        let (wt, xt) = (wc.remainder(), xc.remainder());
        for (a, b) in wc.zip(xc) {
            for l in 0..8 {
                acc[l] += a[l] * b[l];
            }
        }
        *d = acc.iter().sum::<f32>() + wt.iter().zip(xt).map(|(a, b)| a * b).sum::<f32>();
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::ROW_TILE;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// Dot products of one weight row with activation rows `r0..r0+rows`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn dots(
        wr: &[f32],
        x: &[f32],
        r0: usize,
        rows: usize,
        k: usize,
        out: &mut [f32; ROW_TILE],
    ) {
        let main = k - k % 16;
        let mut a0 = [_mm256_setzero_ps(); ROW_TILE];
        let mut a1 = [_mm256_setzero_ps(); ROW_TILE];
        let wp = wr.as_ptr();
        let mut l = 0;
        while l < main {
            // SAFETY: l + 16 <= k, within the weight row and every activation row.
            unsafe {
                let w0 = _mm256_loadu_ps(wp.add(l));
                let w1 = _mm256_loadu_ps(wp.add(l + 8));
                for r in 0..rows {
                    let xp = x.as_ptr().add((r0 + r) * k + l);
                    a0[r] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xp), a0[r]);
                    a1[r] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xp.add(8)), a1[r]);
                }
            }
            l += 16;
        }
        for r in 0..rows {
            let xr = &x[(r0 + r) * k..(r0 + r + 1) * k];
            let tail: f32 = wr[main..].iter().zip(&xr[main..]).map(|(a, b)| a * b).sum();
            out[r] = hsum(_mm256_add_ps(a0[r], a1[r])) + tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_candle_matmul() {
        let dev = Device::Cpu;
        for (m, n, k) in [(1, 37, 100), (3, 64, 2048), (5, 24, 16), (8, 9, 33)] {
            let x = Tensor::randn(0f32, 1.0, (m, k), &dev).unwrap();
            let w = Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap();
            let ours = x.apply_op2_no_bwd(&w, &Gemv).unwrap();
            let theirs = x.matmul(&w.t().unwrap()).unwrap();
            let diff = crate::test_util::max_abs_diff(&ours, &theirs);
            assert!(diff < 1e-3, "m={m} n={n} k={k}: {diff}");
        }
    }

    #[test]
    fn portable_path_agrees() {
        let (m, n, k) = (3, 5, 45);
        let x: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.11).cos()).collect();
        for j in 0..n {
            let mut d = [0f32; ROW_TILE];
            portable_dots(&w[j * k..(j + 1) * k], &x, 0, m, k, &mut d);
            for r in 0..m {
                let exact: f32 = (0..k).map(|l| x[r * k + l] * w[j * k + l]).sum();
                assert!((d[r] - exact).abs() < 1e-4, "{} vs {exact}", d[r]);
            }
        }
    }

    #[test]
    fn rejects_mismatched_shapes() {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 10), candle_core::DType::F32, &dev).unwrap();
        let w = Tensor::zeros((4, 12), candle_core::DType::F32, &dev).unwrap();
        assert!(x.apply_op2_no_bwd(&w, &Gemv).is_err());
        let w16 = Tensor::zeros((4, 10), candle_core::DType::F16, &dev).unwrap();
        assert!(x.apply_op2_no_bwd(&w16, &Gemv).is_err());
    }
}
