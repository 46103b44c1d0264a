//! Our own CPU matrix multiply for GGUF `Q4_0` and `Q8_0` matrices (x86-64 with AVX2, FMA and
//! F16C; anything else keeps candle's kernels).
//!
//! candle's kernels compute one dot product per output row, unpacking the 4-bit weights of every
//! block and converting its f16 scale one row at a time. At load time we instead **repack** each
//! group of 8 output rows so that one 256-bit register holds the same 4 bytes of a block for all
//! 8 rows, and the 8 rows' scales sit together. One pass over a group then yields 8 results at
//! once, as 8 integer lanes, with a single scale multiply per block (`vcvtph2ps` converts the 8
//! scales in one instruction). The activations are quantized to 8 bits per 32-value block the
//! way llama.cpp does (scale `max|x|/127` rounded to f16, values rounded to nearest even), so
//! results are those of llama.cpp's `Q4_0 x Q8_0` / `Q8_0 x Q8_0` dot products up to float
//! summation order.
//!
//! * `Q4_0` (4-bit unsigned `q`, value `d·(q−8)`): `Σ d·(q−8)·y = d·(Σ q·y − 8·Σ y)`, so the
//!   nibbles go straight into `vpmaddubsw` (unsigned × signed) and the `8·Σ y` of each
//!   activation block is subtracted once.
//! * `Q8_0` (signed `q`): `vpmaddubsw(|q|, sign(y, q))`, the usual sign trick.
//!
//! Work is split over candle's own thread pool (the one its other CPU kernels use), by groups
//! of 8 rows; with several activation rows (prefill, batched decode) each group is applied to
//! up to 4 activation rows per pass and a worker walks all activation rows of one weight group
//! before the next, so that weights are read from memory once per matrix multiply.

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;

/// Values per quantization block (both formats).
const QK: usize = 32;
/// Output rows interleaved in one group.
const GROUP: usize = 8;
/// Activation rows applied to one weight group per pass.
const ROW_TILE: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    Q4_0,
    Q8_0,
}

impl Format {
    /// Bytes of quantized values per row per block.
    fn qbytes(self) -> usize {
        match self {
            Format::Q4_0 => QK / 2,
            Format::Q8_0 => QK,
        }
    }
}

/// A `[n, k]` matrix repacked in groups of 8 rows.
pub(crate) struct Packed {
    format: Format,
    n: usize,
    k: usize,
    /// `[n/8][k/32][8]` f16 scales.
    scales: Vec<f16>,
    /// `[n/8][k/32][qbytes/4][8][4]` quantized values.
    quants: Vec<u8>,
}

/// Whether this CPU runs our kernels.
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && std::arch::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Packed {
    /// Repacks a GGUF matrix, or `None` when its format or shape is not one we handle (or the
    /// CPU lacks AVX2): the caller keeps candle's kernels then.
    pub(crate) fn from_qtensor(t: &QTensor) -> candle_core::Result<Option<Packed>> {
        let format = match t.dtype() {
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q8_0 => Format::Q8_0,
            _ => return Ok(None),
        };
        let dims = t.shape().dims();
        let &[n, k] = dims else {
            return Ok(None);
        };
        if !supported() || n % GROUP != 0 || k % QK != 0 || n == 0 || k == 0 {
            return Ok(None);
        }
        let data = t.data()?;
        Ok(Packed::from_blocks(format, n, k, &data))
    }

    /// Repacks ggml blocks (`f16 d` then the quantized values, row-major): `None` if `data` is
    /// not `n·k/32` such blocks.
    fn from_blocks(format: Format, n: usize, k: usize, data: &[u8]) -> Option<Packed> {
        let kb = k / QK;
        let qb = format.qbytes();
        let block = 2 + qb;
        if data.len() != n * kb * block {
            return None;
        }
        let mut scales = vec![f16::ZERO; n * kb];
        let mut quants = vec![0u8; n * kb * qb];
        for g in 0..n / GROUP {
            for b in 0..kb {
                let gb = g * kb + b;
                for r in 0..GROUP {
                    let src = &data[((g * GROUP + r) * kb + b) * block..][..block];
                    scales[gb * GROUP + r] = f16::from_le_bytes([src[0], src[1]]);
                    for c in 0..qb / 4 {
                        let dst = gb * GROUP * qb + (c * GROUP + r) * 4;
                        quants[dst..dst + 4].copy_from_slice(&src[2 + 4 * c..2 + 4 * c + 4]);
                    }
                }
            }
        }
        Some(Packed {
            format,
            n,
            k,
            scales,
            quants,
        })
    }

    pub(crate) fn bytes(&self) -> usize {
        self.scales.len() * 2 + self.quants.len()
    }

    /// `out[i, j] = Σ_l x[i, l] · w[j, l]` for `x` of `m` rows of `k` values; `out` has `m·n`.
    pub(crate) fn matmul(&self, x: &[f32], out: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        let m = x.len() / k;
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(out.len(), m * n);
        let act = Act::quantize(x, k);
        let groups = n / GROUP;
        let tiles = m.div_ceil(ROW_TILE);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let pool = candle_core::utils::barrier_pool();
        pool.execute_chunked(groups * tiles, |items| {
            let out_ptr = &out_ptr;
            for item in items {
                let (g, t) = (item / tiles, item % tiles);
                let r0 = t * ROW_TILE;
                let rows = ROW_TILE.min(m - r0);
                // SAFETY: the CPU features were checked when the matrix was packed; every
                // (row, group) of `out` is written by exactly one work item, within bounds
                // (r0 + rows <= m, g < n/8).
                unsafe { self.group(g, r0, rows, &act, out_ptr.0) }
            }
        });
    }

    /// Output rows `8g..8g+8` for activation rows `r0..r0+rows`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C available; `out` points to `m·n` floats and no other thread writes
    /// this (rows, group) tile.
    #[cfg(target_arch = "x86_64")]
    unsafe fn group(&self, g: usize, r0: usize, rows: usize, act: &Act, out: *mut f32) {
        unsafe {
            match (self.format, rows) {
                (Format::Q4_0, 1) => x86::q4_0::<1>(self, g, r0, act, out),
                (Format::Q4_0, 2) => x86::q4_0::<2>(self, g, r0, act, out),
                (Format::Q4_0, 3) => x86::q4_0::<3>(self, g, r0, act, out),
                (Format::Q4_0, _) => x86::q4_0::<4>(self, g, r0, act, out),
                (Format::Q8_0, 1) => x86::q8_0::<1>(self, g, r0, act, out),
                (Format::Q8_0, 2) => x86::q8_0::<2>(self, g, r0, act, out),
                (Format::Q8_0, 3) => x86::q8_0::<3>(self, g, r0, act, out),
                (Format::Q8_0, _) => x86::q8_0::<4>(self, g, r0, act, out),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn group(&self, _: usize, _: usize, _: usize, _: &Act, _: *mut f32) {
        unreachable!("Packed is only built on x86-64")
    }
}

struct SendPtr(*mut f32);
// SAFETY: the workers write disjoint tiles (see `Packed::matmul`).
unsafe impl Sync for SendPtr {}

/// Activations quantized to 8 bits per block of 32, as llama.cpp's `quantize_row_q8_0`.
struct Act {
    /// `[m][k/32]` block scales (f16-rounded, as stored in a ggml `block_q8_0`).
    d: Vec<f32>,
    /// `[m][k/32]` sums of the block's quantized values.
    sums: Vec<i32>,
    /// `[m][k]` quantized values.
    qs: Vec<i8>,
    kb: usize,
}

impl Act {
    fn quantize(x: &[f32], k: usize) -> Act {
        let kb = k / QK;
        let blocks = x.len() / QK;
        let mut a = Act {
            d: vec![0.0; blocks],
            sums: vec![0; blocks],
            qs: vec![0; x.len()],
            kb,
        };
        #[cfg(target_arch = "x86_64")]
        if supported() {
            // SAFETY: the features are present; the same code, compiled with them, rounds
            // with one instruction instead of a libm call.
            unsafe { quantize_avx2(x, &mut a) };
            return a;
        }
        quantize_into(x, &mut a);
        a
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], a: &mut Act) {
    quantize_into(x, a)
}

#[inline(always)]
fn quantize_into(x: &[f32], a: &mut Act) {
    for (i, (xb, qb)) in x
        .chunks_exact(QK)
        .zip(a.qs.chunks_exact_mut(QK))
        .enumerate()
    {
        let amax = xb.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        a.d[i] = f16::from_f32(d).to_f32();
        let mut sum = 0i32;
        for (q, v) in qb.iter_mut().zip(xb) {
            let r = (v * id).round_ties_even() as i8;
            *q = r;
            sum += r as i32;
        }
        a.sums[i] = sum;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Act, Packed, GROUP, QK};
    use std::arch::x86_64::*;

    /// Sums of the 8 i32 lanes' worth of `f32` accumulators are already per row: store them.
    #[inline(always)]
    unsafe fn store(out: *mut f32, acc: __m256) {
        unsafe { _mm256_storeu_ps(out, acc) }
    }

    /// The 4 bytes of activation row `r`, block `b`, at byte offset `o`, in every lane.
    #[inline(always)]
    unsafe fn bcast(act: &Act, r: usize, b: usize, o: usize) -> __m256i {
        unsafe {
            let p = act.qs.as_ptr().add((r * act.kb + b) * QK + o) as *const i32;
            _mm256_set1_epi32(p.read_unaligned())
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q4_0<const R: usize>(
        p: &Packed,
        g: usize,
        r0: usize,
        act: &Act,
        out: *mut f32,
    ) {
        let kb = act.kb;
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        unsafe {
            let sc = p.scales.as_ptr().add(g * kb * GROUP) as *const __m128i;
            let qs = p.quants.as_ptr().add(g * kb * GROUP * 16) as *const __m256i;
            for b in 0..kb {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(b)));
                let mut isum = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    let v = _mm256_loadu_si256(qs.add(b * 4 + c));
                    let lo = _mm256_and_si256(v, low);
                    let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                    for (r, s) in isum.iter_mut().enumerate() {
                        let ylo = bcast(act, r0 + r, b, 4 * c);
                        let yhi = bcast(act, r0 + r, b, 16 + 4 * c);
                        // 8 products of at most 15·127 per i16 lane: no overflow.
                        *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(lo, ylo));
                        *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(hi, yhi));
                    }
                }
                for r in 0..R {
                    let i = r0 + r;
                    let dots = _mm256_sub_epi32(
                        _mm256_madd_epi16(isum[r], ones),
                        _mm256_set1_epi32(8 * act.sums[i * kb + b]),
                    );
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(act.d[i * kb + b]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dots), scale, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                store(out.add((r0 + r) * p.n + g * GROUP), *a);
            }
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn q8_0<const R: usize>(
        p: &Packed,
        g: usize,
        r0: usize,
        act: &Act,
        out: *mut f32,
    ) {
        let kb = act.kb;
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); R];
        unsafe {
            let sc = p.scales.as_ptr().add(g * kb * GROUP) as *const __m128i;
            let qs = p.quants.as_ptr().add(g * kb * GROUP * 32) as *const __m256i;
            for b in 0..kb {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(sc.add(b)));
                let mut isum = [_mm256_setzero_si256(); R];
                for c in 0..8 {
                    let v = _mm256_loadu_si256(qs.add(b * 8 + c));
                    let ax = _mm256_sign_epi8(v, v);
                    for (r, s) in isum.iter_mut().enumerate() {
                        let sy = _mm256_sign_epi8(bcast(act, r0 + r, b, 4 * c), v);
                        // Two products of at most 128·127 per i16 lane: no overflow.
                        let pairs = _mm256_maddubs_epi16(ax, sy);
                        *s = _mm256_add_epi32(*s, _mm256_madd_epi16(pairs, ones));
                    }
                }
                for r in 0..R {
                    let i = r0 + r;
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(act.d[i * kb + b]));
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r]), scale, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                store(out.add((r0 + r) * p.n + g * GROUP), *a);
            }
        }
    }
}

/// The matrix multiply as a candle op on `[.., k]` f32 activations, giving `[.., n]`.
impl CustomOp1 for Packed {
    fn name(&self) -> &'static str {
        "packed-qmatmul"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("packed-qmatmul takes f32 activations, got {:?}", s.dtype());
        };
        let dims = l.shape().dims();
        if dims.last() != Some(&self.k) {
            candle_core::bail!(
                "packed-qmatmul: activations {:?} do not end in k = {}",
                dims,
                self.k
            );
        }
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("packed-qmatmul takes contiguous activations");
        };
        let x = &data[start..end];
        let m = x.len() / self.k;
        let mut out = vec![0f32; m * self.n];
        self.matmul(x, &mut out);
        let mut shape = dims.to_vec();
        *shape.last_mut().expect("dims end in k") = self.n;
        Ok((CpuStorage::F32(out), Shape::from(shape)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    fn random(n: usize, seed: u64) -> Vec<f32> {
        // A small LCG: deterministic values in [-1, 1) with some large outliers.
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let v = ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
                if i % 97 == 0 {
                    v * 8.0
                } else {
                    v
                }
            })
            .collect()
    }

    /// The same quantized dot products, computed plainly in f64 from the ggml blocks.
    fn scalar_reference(format: Format, data: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
        let act = Act::quantize(x, k);
        let (kb, qb) = (k / QK, format.qbytes());
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for b in 0..kb {
                    let blk = &data[(j * kb + b) * (2 + qb)..][..2 + qb];
                    let d = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                    let y = &act.qs[(i * kb + b) * QK..][..QK];
                    let dot: i64 = (0..QK)
                        .map(|l| {
                            let q = match format {
                                Format::Q4_0 => {
                                    let byte = blk[2 + l % 16];
                                    (if l < 16 { byte & 15 } else { byte >> 4 }) as i64 - 8
                                }
                                Format::Q8_0 => blk[2 + l] as i8 as i64,
                            };
                            q * y[l] as i64
                        })
                        .sum();
                    sum += d * act.d[i * kb + b] as f64 * dot as f64;
                }
                out[i * n + j] = sum as f32;
            }
        }
        out
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
    }

    fn check(dtype: GgmlDType, n: usize, k: usize, m: usize) {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let dev = Device::Cpu;
        let (wv, xv) = (random(n * k, 1), random(m * k, 2));
        let w = Tensor::from_vec(wv, (n, k), &dev).unwrap();
        let x = Tensor::from_vec(xv.clone(), (m, k), &dev).unwrap();
        let q = QTensor::quantize(&w, dtype).unwrap();
        let packed = Packed::from_qtensor(&q).unwrap().expect("packable");
        let ours = x.apply_op1_no_bwd(&packed).unwrap();
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let reference = scalar_reference(packed.format, &q.data().unwrap(), n, k, &xv);
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        // The same integer dot products: only the float summation order differs.
        let worst = max_diff(&ours, &reference);
        assert!(
            worst <= 1e-5 * scale,
            "{dtype:?} {n}x{k} m={m}: max diff {worst} from the scalar reference (scale {scale})"
        );
        // And against the exact product with the dequantized weights, no worse than candle's
        // own kernel (the error is that of quantizing the activations to 8 bits).
        let exact = x
            .matmul(&q.dequantize(&dev).unwrap().t().unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let theirs = QMatMul::from_qtensor(q).unwrap().forward(&x).unwrap();
        let theirs = theirs.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (e_ours, e_theirs) = (max_diff(&ours, &exact), max_diff(&theirs, &exact));
        assert!(
            e_ours <= 1.05 * e_theirs + 1e-5 * scale,
            "{dtype:?} {n}x{k} m={m}: error {e_ours} vs candle's {e_theirs}"
        );
    }

    #[test]
    fn q4_0_matches_candle() {
        for m in [1, 2, 3, 4, 5, 9] {
            check(GgmlDType::Q4_0, 40, 96, m);
        }
        check(GgmlDType::Q4_0, 256, 2048, 1);
    }

    #[test]
    fn q8_0_matches_candle() {
        for m in [1, 2, 3, 4, 5, 9] {
            check(GgmlDType::Q8_0, 40, 96, m);
        }
        check(GgmlDType::Q8_0, 256, 2048, 1);
    }

    #[test]
    fn other_shapes_and_formats_are_left_to_candle() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(random(12 * 64, 3), (12, 64), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(Packed::from_qtensor(&q).unwrap().is_none(), "n % 8 != 0");
        let w = Tensor::from_vec(random(16 * 256, 3), (16, 256), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
        assert!(Packed::from_qtensor(&q).unwrap().is_none(), "Q4_K");
    }

    #[test]
    fn truncated_block_data_is_rejected() {
        assert!(Packed::from_blocks(Format::Q4_0, 8, 32, &[0u8; 8 * 18 - 1]).is_none());
        assert!(Packed::from_blocks(Format::Q8_0, 8, 32, &[0u8; 8 * 34]).is_some());
    }
}
