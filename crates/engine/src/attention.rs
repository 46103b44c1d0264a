//! Attention of new query rows against one sequence's KV cache, in one pass (decode, and
//! prefills whose score matrix is small: [`applies`]).
//!
//! The general path (`model::attend`) is a dozen candle ops: two GEMMs, a scale, a softmax, a
//! mask, copies to make views contiguous and dtype conversions of the whole cache when it is
//! kept in f16. For one new token per sequence that overhead, paid per layer and per sequence,
//! outweighs the arithmetic. Here each (query row, KV head) is a worker item that reads the KV
//! head's keys and values once for all the query heads grouped onto it, straight from the
//! cache buffer (f32) or converted once per item (f16, bf16), with the causal mask implied by
//! the row's position; the loops are compiled for AVX-512 and AVX2 and chosen at run time.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use half::{bf16, f16};
use multiversion::multiversion;

/// Whether [`Attend`] is used instead of the general path for `n` new rows after `past`
/// positions: always for decode (a few rows); for a prefill, while its score matrix is small
/// (prompt 128: 13% faster f32 prefill for SmolLM2 than the general path's dozen ops and its
/// `[heads, n, past + n]` scores; at prompt 1000 the general path's matrix products win).
pub(crate) fn applies(n: usize, past: usize) -> bool {
    n <= 4 || n.saturating_mul(past + n) <= 1 << 16
}

/// `softmax(q·Kᵀ·scale + causal mask)·V` for `q [h, n, d]` (f32) against `k`, `v`
/// `[kv, past + n, d]` (f32, f16 or bf16; any strides with a unit last one), giving `[n, h·d]`.
pub(crate) struct Attend {
    pub past: usize,
    pub scale: f32,
    /// Chunks each item's positions are split into (`None`: as the thread count asks).
    pub chunks: Option<usize>,
}

/// A `[a, b, d]` view: element `(i, j, l)` at `offset + i·s0 + j·s1 + l`.
#[derive(Clone, Copy)]
struct View {
    dims: [usize; 3],
    s0: usize,
    s1: usize,
    offset: usize,
}

impl View {
    fn of(l: &Layout, what: &str) -> candle_core::Result<View> {
        let (&[a, b, d], &[s0, s1, s2]) = (l.shape().dims(), l.stride()) else {
            candle_core::bail!("attend: {what} {:?} is not 3-dimensional", l.shape());
        };
        if s2 != 1 && d > 1 {
            candle_core::bail!("attend: {what} has a non-unit last stride");
        }
        Ok(View {
            dims: [a, b, d],
            s0,
            s1,
            offset: l.start_offset(),
        })
    }

    fn row(&self, i: usize, j: usize) -> std::ops::Range<usize> {
        let at = self.offset + i * self.s0 + j * self.s1;
        at..at + self.dims[2]
    }
}

/// Cache rows as f32.
enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

impl Rows<'_> {
    fn new(s: &CpuStorage) -> candle_core::Result<Rows<'_>> {
        Ok(match s {
            CpuStorage::F32(v) => Rows::F32(v),
            CpuStorage::F16(v) => Rows::F16(v),
            CpuStorage::BF16(v) => Rows::Bf16(v),
            other => candle_core::bail!("attend: a {:?} KV cache", other.dtype()),
        })
    }

    /// Rows `first + j·stride` (`j < count`, `d` values each) of the cache: the f32 buffer
    /// itself with its stride, or converted into `buf` (then with stride `d`).
    fn rows<'b>(
        &'b self,
        first: usize,
        stride: usize,
        count: usize,
        d: usize,
        buf: &'b mut Vec<f32>,
    ) -> (&'b [f32], usize) {
        if count == 0 {
            return (&[], d);
        }
        let end = first + (count - 1) * stride + d;
        if !matches!(self, Rows::F32(_)) {
            buf.resize(count * d, 0.0);
        }
        match self {
            Rows::F32(v) => (&v[first..end], stride),
            Rows::F16(v) => (gather(v, first, stride, d, buf), d),
            Rows::Bf16(v) => (gather(v, first, stride, d, buf), d),
        }
    }
}

/// `buf.len() / d` half-precision rows `first + j·stride` of `v`, converted into `buf`.
fn gather<'b, T>(v: &[T], first: usize, stride: usize, d: usize, buf: &'b mut [f32]) -> &'b [f32]
where
    [T]: half::slice::HalfFloatSliceExt,
{
    use half::slice::HalfFloatSliceExt;
    for (j, out) in buf.chunks_exact_mut(d).enumerate() {
        v[first + j * stride..][..d].convert_to_f32_slice(out);
    }
    buf
}

/// `Σ a·b` in 16 partial sums.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// One work item: the `g` query heads `q` (`[g][d]`, `d > 0`) of one KV head against `count`
/// key and value rows (row `j` at `keys[j·ks..]`, `values[j·vs..]`). Writes, per head, the
/// softmax numerators' weighted sum of values into `acc` (`[g][d]`) and the scores' maximum and
/// the numerators' sum into `stats` (`[g][2]`), for [`merge`]; `scores` holds `g·count` values.
#[allow(clippy::too_many_arguments)]
#[multiversion(targets("x86_64+avx512f+avx512vl", "x86_64+avx2+fma"))]
fn attend_heads(
    q: &[f32],
    d: usize,
    (keys, ks): (&[f32], usize),
    (values, vs): (&[f32], usize),
    count: usize,
    scale: f32,
    scores: &mut [f32],
    acc: &mut [f32],
    stats: &mut [f32],
) {
    for j in 0..count {
        let k = &keys[j * ks..j * ks + d];
        for (gi, qr) in q.chunks_exact(d).enumerate() {
            scores[gi * count + j] = dot(qr, k) * scale;
        }
    }
    for (gi, st) in stats.chunks_exact_mut(2).enumerate() {
        let s = &mut scores[gi * count..(gi + 1) * count];
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        st[0] = max;
        st[1] = if count == 0 {
            0.0
        } else {
            mathcoder_model::vmath::exp_in_place(s, max)
        };
    }
    acc.fill(0.0);
    for j in 0..count {
        let v = &values[j * vs..j * vs + d];
        for (gi, o) in acc.chunks_exact_mut(d).enumerate() {
            let p = scores[gi * count + j];
            for (o, x) in o.iter_mut().zip(v) {
                *o += p * x;
            }
        }
    }
}

/// One head's output from its position chunks' partial results (`accs[c]`, `stats[c]` as
/// [`attend_heads`] wrote them): the chunks' sums rescaled to the overall maximum.
fn merge(parts: &[(&[f32], [f32; 2])], out: &mut [f32]) {
    let max = parts
        .iter()
        .fold(f32::NEG_INFINITY, |m, (_, st)| m.max(st[0]));
    let weight = |st: &[f32; 2]| {
        if st[1] == 0.0 {
            0.0
        } else {
            (st[0] - max).exp()
        }
    };
    let sum: f32 = parts.iter().map(|(_, st)| weight(st) * st[1]).sum();
    out.fill(0.0);
    for (acc, st) in parts {
        let w = weight(st) / sum;
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o += w * a;
        }
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

struct SendPtr(*mut f32);
// SAFETY: every work item writes its own slice of the buffer.
unsafe impl Sync for SendPtr {}

impl CustomOp3 for Attend {
    fn name(&self) -> &'static str {
        "attend-cached"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(qd) = qs else {
            candle_core::bail!("attend: f32 queries expected, got {:?}", qs.dtype());
        };
        let (q, k, v) = (View::of(ql, "q")?, View::of(kl, "k")?, View::of(vl, "v")?);
        let [h, n, d] = q.dims;
        let [kv, total, kd] = k.dims;
        if kd != d || d == 0 || v.dims != k.dims || kv == 0 || h % kv != 0 || total != self.past + n
        {
            candle_core::bail!(
                "attend: q {:?}, k {:?}, v {:?} with {} past positions do not fit",
                q.dims,
                k.dims,
                v.dims,
                self.past
            );
        }
        if ks.dtype() != vs.dtype() {
            candle_core::bail!("attend: k and v differ in dtype");
        }
        let (kr, vr) = (Rows::new(ks)?, Rows::new(vs)?);
        let group = h / kv;
        // Query heads `kvh·group..(kvh + 1)·group` share KV head `kvh`: a work item is (query
        // row i, KV head, chunk of positions), and computes partial results for those heads.
        // Positions are split into chunks only so that items divide evenly among the threads
        // (3 KV heads on 2 threads: 6 half items, not 2 + 1).
        let threads = candle_core::utils::get_num_threads().max(1);
        let base = n * kv;
        let chunks = self
            .chunks
            .unwrap_or_else(|| (threads / gcd(base, threads)).min(total.div_ceil(32)))
            .max(1);
        let items = base * chunks;
        let part = group * d + 2 * group;
        let mut parts = vec![0f32; items * part];
        let parts_ptr = SendPtr(parts.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            let parts_ptr = &parts_ptr;
            let (mut scores, mut kbuf, mut vbuf) = (Vec::new(), Vec::new(), Vec::new());
            let mut qbuf = vec![0f32; group * d];
            for item in range {
                let (i, kvh, c) = (item / (kv * chunks), item / chunks % kv, item % chunks);
                for (gi, dst) in qbuf.chunks_exact_mut(d).enumerate() {
                    dst.copy_from_slice(&qd[q.row(kvh * group + gi, i)]);
                }
                // Causal: row i sees positions 0..=past + i; this chunk a share of them.
                let seen = self.past + i + 1;
                let len = seen.div_ceil(chunks);
                let (from, to) = ((c * len).min(seen), ((c + 1) * len).min(seen));
                let count = to - from;
                scores.resize(group * count, 0.0);
                let first = |w: &View| w.offset + kvh * w.s0 + from * w.s1;
                let keys = kr.rows(first(&k), k.s1, count, d, &mut kbuf);
                let values = vr.rows(first(&v), v.s1, count, d, &mut vbuf);
                // SAFETY: each item owns its `part` floats of `parts`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(parts_ptr.0.add(item * part), part) };
                let (acc, stats) = dst.split_at_mut(group * d);
                attend_heads(
                    &qbuf,
                    d,
                    keys,
                    values,
                    count,
                    self.scale,
                    &mut scores,
                    acc,
                    stats,
                );
            }
        };
        // Each item reads `seen` rows of keys and values: split when that is worth waking the
        // pool for.
        if n * h * total * d < 1 << 15 {
            work(0..items);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(items, work);
        }
        let mut out = vec![0f32; n * h * d];
        let mut heads = Vec::with_capacity(chunks);
        for (i, row) in out.chunks_exact_mut(h * d).enumerate() {
            for (head, dst) in row.chunks_exact_mut(d).enumerate() {
                let (kvh, gi) = (head / group, head % group);
                heads.clear();
                for c in 0..chunks {
                    let p = &parts[((i * kv + kvh) * chunks + c) * part..][..part];
                    let (acc, stats) = p.split_at(group * d);
                    heads.push((
                        &acc[gi * d..(gi + 1) * d],
                        [stats[2 * gi], stats[2 * gi + 1]],
                    ));
                }
                merge(&heads, dst);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, h * d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};

    /// The fused op equals the general path (`model::attend`) on views like the forward pass
    /// makes: queries narrowed out of a longer step, keys and values narrowed out of a cache
    /// with spare capacity, grouped heads, and f16/bf16 caches.
    #[test]
    fn matches_the_general_path() {
        let dev = Device::Cpu;
        for (h, kv, d, past, n) in [
            (4, 2, 16, 5, 1),
            (6, 3, 8, 0, 3),
            (2, 2, 20, 40, 4),
            (8, 2, 64, 100, 1),
            (6, 2, 16, 3, 40),
        ] {
            let rows = n + 2;
            let q = Tensor::randn(0f32, 1.0, (h, rows, d), &dev).unwrap();
            let q = q.narrow(1, 1, n).unwrap();
            let cap = past + n + 7;
            let kc = Tensor::randn(0f32, 1.0, (kv, cap, d), &dev).unwrap();
            let vc = Tensor::randn(0f32, 1.0, (kv, cap, d), &dev).unwrap();
            for dt in [DType::F32, DType::F16, DType::BF16] {
                let k = kc.to_dtype(dt).unwrap().narrow(1, 0, past + n).unwrap();
                let v = vc.to_dtype(dt).unwrap().narrow(1, 0, past + n).unwrap();
                let scale = 1.0 / (d as f64).sqrt();
                let general = crate::model::attend(&q, &k, &v, past, h, kv, d, scale).unwrap();
                // Positions split into chunks (more chunks than a row has positions too).
                for chunks in [None, Some(1), Some(2), Some(3), Some(past + n + 1)] {
                    let op = Attend {
                        past,
                        scale: scale as f32,
                        chunks,
                    };
                    let ours = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                    assert_eq!(ours.dims(), &[n, h * d]);
                    let diff = crate::test_util::max_abs_diff(&ours, &general);
                    assert!(
                        diff < 1e-5,
                        "h={h} kv={kv} d={d} past={past} n={n} {dt:?} {chunks:?}: {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((4, 1, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((3, 6, 8), DType::F32, &dev).unwrap();
        let op = Attend {
            past: 5,
            scale: 1.0,
            chunks: None,
        };
        assert!(
            q.apply_op3_no_bwd(&k, &k, &op).is_err(),
            "4 heads on 3 kv heads"
        );
        let k = Tensor::zeros((2, 5, 8), DType::F32, &dev).unwrap();
        assert!(
            q.apply_op3_no_bwd(&k, &k, &op).is_err(),
            "5 positions, past 5 + 1"
        );
        let empty = Tensor::zeros((4, 1, 0), DType::F32, &dev).unwrap();
        let k0 = Tensor::zeros((2, 6, 0), DType::F32, &dev).unwrap();
        assert!(
            empty.apply_op3_no_bwd(&k0, &k0, &op).is_err(),
            "zero-width heads"
        );
        let k16 = Tensor::zeros((2, 6, 8), DType::F16, &dev).unwrap();
        let k32 = Tensor::zeros((2, 6, 8), DType::F32, &dev).unwrap();
        assert!(
            q.apply_op3_no_bwd(&k16, &k32, &op).is_err(),
            "k and v dtypes"
        );
    }
}
