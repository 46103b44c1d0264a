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

/// The sum of 16 partial sums, as a tree (4 vector adds, not 15 dependent scalar ones).
#[inline(always)]
fn hsum16(acc: [f32; 16]) -> f32 {
    let a8: [f32; 8] = std::array::from_fn(|l| acc[l] + acc[l + 8]);
    let a4: [f32; 4] = std::array::from_fn(|l| a8[l] + a8[l + 4]);
    (a4[0] + a4[2]) + (a4[1] + a4[3])
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
    hsum16(acc) + tail
}

/// One work item: the `g` query heads `q` (`[g][d]`, `d > 0`) of one KV head against `count`
/// key and value rows (row `j` at `keys[j·ks..]`, `values[j·vs..]`). Writes, per head, the
/// softmax numerators' weighted sum of values into `acc` (`[g][d]`) and the scores' maximum and
/// the numerators' sum into `stats` (`[g][2]`), for [`merge_row`]; `scores` holds `g·count`
/// values. (Head widths 64 and 128 with AVX-512 take [`x86::heads`] instead.)
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
    softmax_stats(scores, count, stats);
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

/// The softmax statistics of each head's scores (`[g][count]`, turned into numerators).
#[inline(always)]
fn softmax_stats(scores: &mut [f32], count: usize, stats: &mut [f32]) {
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
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Chunks each of `base` items' positions (at most `total`) is split into, so that the items
/// divide evenly among `threads` (3 KV heads on 2 threads: 6 half items, not 2 + 1), and none
/// is shorter than 32 positions.
pub(crate) fn chunks_for(base: usize, threads: usize, total: usize) -> usize {
    (threads.max(1) / gcd(base, threads.max(1)))
        .min(total.div_ceil(32))
        .max(1)
}

/// Floats of one work item's partial result for `group` query heads of width `d`: the heads'
/// accumulators, then their (max, sum) pairs.
pub(crate) fn part_len(group: usize, d: usize) -> usize {
    group * d + 2 * group
}

/// One layer's keys or values in the cache, as work items read them.
pub(crate) struct Source<'a> {
    rows: Rows<'a>,
    view: View,
}

impl Source<'_> {
    pub(crate) fn new<'a>(
        s: &'a CpuStorage,
        l: &Layout,
        what: &str,
    ) -> candle_core::Result<Source<'a>> {
        Ok(Source {
            rows: Rows::new(s)?,
            view: View::of(l, what)?,
        })
    }
}

/// A thread's buffers for work items.
#[derive(Default)]
pub(crate) struct Scratch {
    scores: Vec<f32>,
    kbuf: Vec<f32>,
    vbuf: Vec<f32>,
}

/// One work item: the query heads `q` (`[group][d]`) of KV head `kvh` against chunk `c` (of
/// `chunks`) of the first `seen` positions of `k` and `v`; writes the partial result (see
/// [`part_len`]) into `dst`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn item(
    q: &[f32],
    k: &Source<'_>,
    v: &Source<'_>,
    kvh: usize,
    seen: usize,
    (chunks, c): (usize, usize),
    scale: f32,
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    let d = k.view.dims[2];
    let group = q.len() / d;
    let len = seen.div_ceil(chunks);
    let (from, to) = ((c * len).min(seen), ((c + 1) * len).min(seen));
    let count = to - from;
    scratch.scores.resize(group * count, 0.0);
    let first = |w: &View| w.offset + kvh * w.s0 + from * w.s1;
    let (kf, vf) = (first(&k.view), first(&v.view));
    let (acc, stats) = dst.split_at_mut(group * d);
    #[cfg(target_arch = "x86_64")]
    if x86::applies(d) {
        let rows = |r: &Rows<'_>, at: usize, stride: usize| match r {
            Rows::F32(v) => x86::Rows::of(&v[at.min(v.len())..], stride),
            Rows::F16(v) => x86::Rows::of(&v[at.min(v.len())..], stride),
            Rows::Bf16(v) => x86::Rows::of(&v[at.min(v.len())..], stride),
        };
        let (kr, vr) = (rows(&k.rows, kf, k.view.s1), rows(&v.rows, vf, v.view.s1));
        // SAFETY: AVX-512F is present (`applies`); the rows' bounds are checked inside.
        unsafe { x86::heads(q, d, kr, vr, count, scale, &mut scratch.scores, acc, stats) };
        return;
    }
    let keys = k.rows.rows(kf, k.view.s1, count, d, &mut scratch.kbuf);
    let values = v.rows.rows(vf, v.view.s1, count, d, &mut scratch.vbuf);
    attend_heads(
        q,
        d,
        keys,
        values,
        count,
        scale,
        &mut scratch.scores,
        acc,
        stats,
    );
}

/// The partial result (see [`part_len`]) of the query heads `q` against one key and value row
/// (`k`, `v`: `d` values each, f32).
pub(crate) fn single(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    scale: f32,
    scratch: &mut Scratch,
    dst: &mut [f32],
) {
    let d = k.len();
    let group = q.len() / d.max(1);
    scratch.scores.resize(group, 0.0);
    let (acc, stats) = dst.split_at_mut(group * d);
    #[cfg(target_arch = "x86_64")]
    if x86::applies(d) {
        let (kr, vr) = (x86::Rows::of(k, d), x86::Rows::of(v, d));
        // SAFETY: AVX-512F is present (`applies`); the rows' bounds are checked inside.
        unsafe { x86::heads(q, d, kr, vr, 1, scale, &mut scratch.scores, acc, stats) };
        return;
    }
    attend_heads(
        q,
        d,
        (k, d),
        (v, d),
        1,
        scale,
        &mut scratch.scores,
        acc,
        stats,
    );
}

/// [`attend_heads`] for head widths 64 and 128 with AVX-512, reading f32, f16 or bf16 cache
/// rows as they are stored: each dot product in registers with one horizontal sum, each head's
/// output accumulated in registers over the values.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use half::{bf16, f16};
    use std::arch::x86_64::*;

    pub(super) fn applies(d: usize) -> bool {
        (d == 64 || d == 128) && std::arch::is_x86_feature_detected!("avx512f")
    }

    const F32: u8 = 0;
    const F16: u8 = 1;
    const BF16: u8 = 2;

    /// Cache rows: element `j·stride + l` at `ptr`, `len` elements in all, of kind `kind`.
    #[derive(Clone, Copy)]
    pub(super) struct Rows {
        ptr: *const u8,
        len: usize,
        stride: usize,
        kind: u8,
    }

    pub(super) trait Elem {
        const KIND: u8;
    }
    impl Elem for f32 {
        const KIND: u8 = F32;
    }
    impl Elem for f16 {
        const KIND: u8 = F16;
    }
    impl Elem for bf16 {
        const KIND: u8 = BF16;
    }

    impl Rows {
        pub(super) fn of<T: Elem>(v: &[T], stride: usize) -> Rows {
            Rows {
                ptr: v.as_ptr() as *const u8,
                len: v.len(),
                stride,
                kind: T::KIND,
            }
        }

        fn fits(&self, count: usize, d: usize) -> bool {
            count == 0 || (count - 1) * self.stride + d <= self.len
        }
    }

    /// 16 values at element `at` of rows of kind `K`, as f32.
    #[inline(always)]
    unsafe fn load<const K: u8>(p: *const u8, at: usize) -> __m512 {
        unsafe {
            match K {
                F32 => _mm512_loadu_ps((p as *const f32).add(at)),
                F16 => _mm512_cvtph_ps(_mm256_loadu_si256((p as *const u16).add(at) as _)),
                _ => _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
                    _mm256_loadu_si256((p as *const u16).add(at) as _),
                ))),
            }
        }
    }

    /// The lane sums of four vectors, in order.
    #[inline(always)]
    unsafe fn sum4(a: [__m512; 4]) -> __m128 {
        // Pairs interleaved: lanes (a0, a1, a0, a1) and (a2, a3, a2, a3) per 4 lanes, then
        // (a0, a1, a2, a3) per 128-bit block, then the four blocks added.
        let s01 = _mm512_add_ps(
            _mm512_unpacklo_ps(a[0], a[1]),
            _mm512_unpackhi_ps(a[0], a[1]),
        );
        let s23 = _mm512_add_ps(
            _mm512_unpacklo_ps(a[2], a[3]),
            _mm512_unpackhi_ps(a[2], a[3]),
        );
        let s = _mm512_add_ps(
            _mm512_castpd_ps(_mm512_unpacklo_pd(
                _mm512_castps_pd(s01),
                _mm512_castps_pd(s23),
            )),
            _mm512_castpd_ps(_mm512_unpackhi_pd(
                _mm512_castps_pd(s01),
                _mm512_castps_pd(s23),
            )),
        );
        let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b01_00_11_10>(s, s));
        let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b10_11_00_01>(s, s));
        _mm512_castps512_ps128(s)
    }

    /// # Safety
    /// AVX-512F is available and `d` is 64 or 128.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn heads(
        q: &[f32],
        d: usize,
        k: Rows,
        v: Rows,
        count: usize,
        scale: f32,
        scores: &mut [f32],
        acc: &mut [f32],
        stats: &mut [f32],
    ) {
        let g = q.len() / d;
        assert!(
            k.fits(count, d)
                && v.fits(count, d)
                && k.kind == v.kind
                && scores.len() >= g * count
                && acc.len() >= g * d
                && stats.len() >= 2 * g,
            "attend: buffers do not fit {count} rows of {g} heads"
        );
        macro_rules! go {
            ($c:literal, $k:ident) => {
                unsafe { heads_of::<$c, $k>((q, k, v), count, scale, (scores, acc, stats)) }
            };
        }
        match (d, k.kind) {
            (64, F32) => go!(4, F32),
            (64, F16) => go!(4, F16),
            (64, _) => go!(4, BF16),
            (_, F32) => go!(8, F32),
            (_, F16) => go!(8, F16),
            _ => go!(8, BF16),
        }
    }

    /// [`heads`] for heads of `16·C` values and rows of kind `K`: the queries, keys and
    /// values in; the scores, accumulators and statistics out.
    ///
    /// # Safety
    /// As [`heads`], with the bounds checked there.
    #[target_feature(enable = "avx512f")]
    unsafe fn heads_of<const C: usize, const K: u8>(
        (q, k, v): (&[f32], Rows, Rows),
        count: usize,
        scale: f32,
        (scores, acc, stats): (&mut [f32], &mut [f32], &mut [f32]),
    ) {
        let d = 16 * C;
        let g = q.len() / d;
        let qp = q.as_ptr();
        let sp = scores.as_mut_ptr();
        // SAFETY (all loads and stores below): within the bounds `heads` checked.
        unsafe {
            // Four keys at a time: their four dot products are summed across lanes together
            // (13 instructions, against 4 horizontal sums of 8).
            let quads = count / 4 * 4;
            let vscale = _mm_set1_ps(scale);
            for j in (0..quads).step_by(4) {
                for gi in 0..g {
                    let qr = qp.add(gi * d);
                    let mut a = [_mm512_setzero_ps(); 4];
                    for c in 0..C {
                        let qc = _mm512_loadu_ps(qr.add(16 * c));
                        for (t, at) in a.iter_mut().enumerate() {
                            let kc = load::<K>(k.ptr, (j + t) * k.stride + 16 * c);
                            *at = _mm512_fmadd_ps(qc, kc, *at);
                        }
                    }
                    _mm_storeu_ps(sp.add(gi * count + j), _mm_mul_ps(sum4(a), vscale));
                }
            }
            for j in quads..count {
                for gi in 0..g {
                    let qr = qp.add(gi * d);
                    let mut a = _mm512_setzero_ps();
                    for c in 0..C {
                        let kc = load::<K>(k.ptr, j * k.stride + 16 * c);
                        a = _mm512_fmadd_ps(_mm512_loadu_ps(qr.add(16 * c)), kc, a);
                    }
                    *sp.add(gi * count + j) = _mm512_reduce_add_ps(a) * scale;
                }
            }
        }
        super::softmax_stats(scores, count, stats);
        let sp = scores.as_ptr();
        unsafe {
            for gi in 0..g {
                // Two sets of accumulators (even and odd rows), so that each chain of
                // dependent multiply-adds is half as long.
                let (mut o0, mut o1) = ([_mm512_setzero_ps(); C], [_mm512_setzero_ps(); C]);
                let s = sp.add(gi * count);
                let mut j = 0;
                while j + 1 < count {
                    let (p0, p1) = (_mm512_set1_ps(*s.add(j)), _mm512_set1_ps(*s.add(j + 1)));
                    for c in 0..C {
                        let x0 = load::<K>(v.ptr, j * v.stride + 16 * c);
                        let x1 = load::<K>(v.ptr, (j + 1) * v.stride + 16 * c);
                        o0[c] = _mm512_fmadd_ps(p0, x0, o0[c]);
                        o1[c] = _mm512_fmadd_ps(p1, x1, o1[c]);
                    }
                    j += 2;
                }
                if j < count {
                    let p0 = _mm512_set1_ps(*s.add(j));
                    for (c, o) in o0.iter_mut().enumerate() {
                        *o = _mm512_fmadd_ps(p0, load::<K>(v.ptr, j * v.stride + 16 * c), *o);
                    }
                }
                for c in 0..C {
                    _mm512_storeu_ps(
                        acc.as_mut_ptr().add(gi * d + 16 * c),
                        _mm512_add_ps(o0[c], o1[c]),
                    );
                }
            }
        }
    }
}

/// One query row's output (`[h·d]`, heads of width `d`) from its items' partial results
/// `parts` (`[kv][chunks]` of [`part_len`] floats): each head's chunk sums rescaled to the
/// overall maximum.
pub(crate) fn merge_row(parts: &[f32], group: usize, d: usize, chunks: usize, out: &mut [f32]) {
    let part = part_len(group, d);
    for (head, dst) in out.chunks_exact_mut(d).enumerate() {
        let (kvh, gi) = (head / group, head % group);
        let chunk = |c: usize| {
            let p = &parts[(kvh * chunks + c) * part..][..part];
            let st = [p[group * d + 2 * gi], p[group * d + 2 * gi + 1]];
            (&p[gi * d..(gi + 1) * d], st)
        };
        let max = (0..chunks).fold(f32::NEG_INFINITY, |m, c| m.max(chunk(c).1[0]));
        let weight = |st: [f32; 2]| {
            if st[1] == 0.0 {
                0.0
            } else {
                (st[0] - max).exp()
            }
        };
        let sum: f32 = (0..chunks)
            .map(|c| {
                let st = chunk(c).1;
                weight(st) * st[1]
            })
            .sum();
        dst.fill(0.0);
        for c in 0..chunks {
            let (acc, st) = chunk(c);
            let w = weight(st) / sum;
            for (o, a) in dst.iter_mut().zip(acc) {
                *o += w * a;
            }
        }
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
        let q = View::of(ql, "q")?;
        let (k, v) = (Source::new(ks, kl, "k")?, Source::new(vs, vl, "v")?);
        let [h, n, d] = q.dims;
        let [kv, total, kd] = k.view.dims;
        if kd != d
            || d == 0
            || v.view.dims != k.view.dims
            || kv == 0
            || h % kv != 0
            || total != self.past + n
        {
            candle_core::bail!(
                "attend: q {:?}, k {:?}, v {:?} with {} past positions do not fit",
                q.dims,
                k.view.dims,
                v.view.dims,
                self.past
            );
        }
        if ks.dtype() != vs.dtype() {
            candle_core::bail!("attend: k and v differ in dtype");
        }
        let group = h / kv;
        // Query heads `kvh·group..(kvh + 1)·group` share KV head `kvh`: a work item is (query
        // row i, KV head, chunk of positions), and computes partial results for those heads.
        let threads = candle_core::utils::get_num_threads().max(1);
        let base = n * kv;
        let chunks = self
            .chunks
            .unwrap_or_else(|| chunks_for(base, threads, total))
            .max(1);
        let items = base * chunks;
        let part = part_len(group, d);
        let mut parts = vec![0f32; items * part];
        let parts_ptr = SendPtr(parts.as_mut_ptr());
        let work = |range: std::ops::Range<usize>| {
            let parts_ptr = &parts_ptr;
            let mut scratch = Scratch::default();
            let mut qbuf = vec![0f32; group * d];
            for it in range {
                let (i, kvh, c) = (it / (kv * chunks), it / chunks % kv, it % chunks);
                for (gi, dst) in qbuf.chunks_exact_mut(d).enumerate() {
                    dst.copy_from_slice(&qd[q.row(kvh * group + gi, i)]);
                }
                // SAFETY: each item owns its `part` floats of `parts`.
                let dst =
                    unsafe { std::slice::from_raw_parts_mut(parts_ptr.0.add(it * part), part) };
                // Causal: row i sees positions 0..=past + i.
                let seen = self.past + i + 1;
                item(
                    &qbuf,
                    &k,
                    &v,
                    kvh,
                    seen,
                    (chunks, c),
                    self.scale,
                    &mut scratch,
                    dst,
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
        for (row, p) in out
            .chunks_exact_mut(h * d)
            .zip(parts.chunks_exact(kv * chunks * part))
        {
            merge_row(p, group, d, chunks, row);
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
            (4, 2, 128, 37, 2),
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
