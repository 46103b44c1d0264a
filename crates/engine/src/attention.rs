//! Attention of a few new query rows against one sequence's KV cache, in one pass (decode).
//!
//! The general path (`model::attend`) is a dozen candle ops: two GEMMs, a scale, a softmax, a
//! mask, copies to make views contiguous and dtype conversions of the whole cache when it is
//! kept in f16. For one new token per sequence that overhead, paid per layer and per sequence,
//! outweighs the arithmetic. Here each (query row, head) is a worker item that reads its KV
//! head's keys and values straight from the cache buffers (f32, f16 or bf16, converted a row at
//! a time), with the causal mask implied by the row's position.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Shape};
use half::{bf16, f16};

/// Query rows up to which [`Attend`] is used instead of the general path.
pub(crate) const MAX_ROWS: usize = 4;

/// `softmax(q·Kᵀ·scale + causal mask)·V` for `q [h, n, d]` (f32) against `k`, `v`
/// `[kv, past + n, d]` (f32, f16 or bf16; any strides with a unit last one), giving `[n, h·d]`.
pub(crate) struct Attend {
    pub past: usize,
    pub scale: f32,
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

    /// Row `r` as f32: borrowed, or converted into `buf`.
    fn get<'b>(&'b self, r: std::ops::Range<usize>, buf: &'b mut [f32]) -> &'b [f32] {
        use half::slice::HalfFloatSliceExt;
        match self {
            Rows::F32(v) => &v[r],
            Rows::F16(v) => {
                v[r].convert_to_f32_slice(buf);
                buf
            }
            Rows::Bf16(v) => {
                v[r].convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

struct SendPtr(*mut f32);
// SAFETY: every work item writes its own (row, head) slice of the output.
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
        if kd != d || v.dims != k.dims || kv == 0 || h % kv != 0 || total != self.past + n {
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
        let mut out = vec![0f32; n * h * d];
        let out_ptr = SendPtr(out.as_mut_ptr());
        let work = |items: std::ops::Range<usize>| {
            let out_ptr = &out_ptr;
            let mut scores = Vec::new();
            let mut buf = vec![0f32; d];
            let mut acc = vec![0f32; d];
            for item in items {
                let (i, head) = (item / h, item % h);
                let kvh = head / group;
                let qrow = &qd[q.row(head, i)];
                // Causal: row i sees positions 0..=past + i.
                let seen = self.past + i + 1;
                scores.clear();
                let mut max = f32::NEG_INFINITY;
                for j in 0..seen {
                    let s = dot(qrow, kr.get(k.row(kvh, j), &mut buf)) * self.scale;
                    max = max.max(s);
                    scores.push(s);
                }
                let sum = mathcoder_model::vmath::exp_in_place(&mut scores, max);
                acc.fill(0.0);
                for (j, p) in scores.iter().enumerate() {
                    let vrow = vr.get(v.row(kvh, j), &mut buf);
                    for (a, x) in acc.iter_mut().zip(vrow) {
                        *a += p * x;
                    }
                }
                // SAFETY: item (i, head) owns out[i, head·d .. head·d + d], inside n·h·d.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(out_ptr.0.add((i * h + head) * d), d) };
                for (o, a) in dst.iter_mut().zip(&acc) {
                    *o = a / sum;
                }
            }
        };
        // Each item reads `seen` rows of keys and values: split when that is worth waking the
        // pool for.
        if n * h * total * d < 1 << 15 {
            work(0..n * h);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(n * h, work);
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
                let op = Attend {
                    past,
                    scale: scale as f32,
                };
                let ours = q.apply_op3_no_bwd(&k, &v, &op).unwrap();
                let general = crate::model::attend(&q, &k, &v, past, h, kv, d, scale).unwrap();
                assert_eq!(ours.dims(), &[n, h * d]);
                let diff = crate::test_util::max_abs_diff(&ours, &general);
                assert!(
                    diff < 1e-5,
                    "h={h} kv={kv} d={d} past={past} n={n} {dt:?}: {diff}"
                );
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
        let k16 = Tensor::zeros((2, 6, 8), DType::F16, &dev).unwrap();
        let k32 = Tensor::zeros((2, 6, 8), DType::F32, &dev).unwrap();
        assert!(
            q.apply_op3_no_bwd(&k16, &k32, &op).is_err(),
            "k and v dtypes"
        );
    }
}
