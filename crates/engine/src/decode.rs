//! A decode step (one new token for each of a few sequences) as one parallel region.
//!
//! The general forward pass ([`Model::forward`]) runs about twenty candle ops per layer: each
//! allocates its output, checks layouts, and the four matrix products each wake the thread
//! pool and wait for it. On a small model that overhead is as long as the products: SmolLM2-135M
//! `Q4_1` decoded at 67% of its memory-bandwidth bound, its second thread idle 28% of the time.
//!
//! Here every thread of candle's pool runs the whole step, layer by layer, in one region. Each
//! matrix product's work items are split between the threads (most in even shares, the rest
//! through a shared cursor); between phases a spinning barrier (five per layer: q/k/v,
//! attention, o, gate/up, down) stands where the general path returns to the engine thread.
//! What is cheap (RMSNorm, quantizing activations, residual adds, SwiGLU, merging attention's
//! partial results) every thread computes for itself, identically, into its own buffers, so
//! that only the products and the attention items (with the rotation of queries and new keys)
//! are shared out; the new keys and values go into the caches after attention. Only f32
//! activations on the CPU with our own kernels (or dense f32 weights) take this path; anything
//! else keeps the general one.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use candle_core::{CpuStorage, DType, Storage, Tensor};

use crate::attention::{self, Scratch, Source};
use crate::cache::KvCache;
use crate::config::ModelConfig;
use crate::model::{Block, Embedding, Linear, Model, Stack, Step};
use crate::qmatmul::{self, Act, Packed};
use crate::rope;

/// Sequences up to which a decode step takes this path (each thread repeats the elementwise
/// work of every row; at 32 rows this path still decoded SmolLM2 `Q4_1` at 1,330 tok/s against
/// the general path's 870-1,040).
pub(crate) const MAX_ROWS: usize = 32;

/// f32 copies of the small vectors the step reads, made at load when the model can take this
/// path at all.
pub(crate) struct Plan {
    layers: Vec<Vectors>,
    norm: Vec<f32>,
}

struct Vectors {
    attn_norm: Vec<f32>,
    mlp_norm: Vec<f32>,
    /// Biases of q, k and v, concatenated.
    bias: Option<Vec<f32>>,
}

fn f32s(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1()
}

/// `[n, k]` of a matrix this path multiplies (ours, quantized, or dense f32 in memory), or
/// `None`.
fn shape(l: &Linear) -> Option<(usize, usize)> {
    match l {
        Linear::Packed(p) => Some((p.rows(), p.cols())),
        Linear::Dense(w) if w.dtype() == DType::F32 && w.device().is_cpu() && w.is_contiguous() => {
            w.dims2().ok()
        }
        _ => None,
    }
}

/// Whether projections reading a `k`-wide input have these output widths.
fn stack_fits<const N: usize>(s: &Stack<N>, widths: [usize; N], k: usize) -> bool {
    match s {
        Stack::One { w, widths: w2 } => *w2 == widths && shape(w) == Some((widths.iter().sum(), k)),
        Stack::Apart(parts) => parts
            .iter()
            .zip(widths)
            .all(|(p, n)| shape(p) == Some((n, k))),
    }
}

impl Plan {
    /// The plan for a model, or `None` when its dtype, device or weights keep it on the
    /// general path. Every matrix's shape is checked against the configuration here (the
    /// region's kernels trust them; the general path's ops check them each step).
    pub(crate) fn new(
        c: &ModelConfig,
        layers: &[Block],
        norm: &Tensor,
        lm_head: &Linear,
        dtype: DType,
    ) -> candle_core::Result<Option<Plan>> {
        let (hd, f, h, kv, d) = (
            c.hidden_size,
            c.intermediate_size,
            c.num_heads,
            c.num_kv_heads,
            c.head_dim,
        );
        let heads_fit = kv > 0 && h % kv == 0 && d % 2 == 0 && d > 0;
        let fits = |b: &Block| {
            stack_fits(&b.qkv, [h * d, kv * d, kv * d], hd)
                && shape(&b.o) == Some((hd, h * d))
                && stack_fits(&b.gate_up, [f, f], hd)
                && shape(&b.down) == Some((hd, f))
                && [&b.attn_norm, &b.mlp_norm]
                    .iter()
                    .all(|n| n.elem_count() == hd)
                && b.qkv_bias.as_ref().is_none_or(|[q, k, v]| {
                    q.elem_count() == h * d && k.elem_count() == kv * d && v.elem_count() == kv * d
                })
        };
        if dtype != DType::F32
            || !norm.device().is_cpu()
            || norm.elem_count() != hd
            || !heads_fit
            || layers.len() != c.num_layers
            || !layers.iter().all(fits)
            || shape(lm_head).is_none_or(|(_, k)| k != hd)
        {
            return Ok(None);
        }
        let layers = layers
            .iter()
            .map(|b| {
                Ok(Vectors {
                    attn_norm: f32s(&b.attn_norm)?,
                    mlp_norm: f32s(&b.mlp_norm)?,
                    bias: match &b.qkv_bias {
                        Some(bs) => Some(
                            bs.iter()
                                .map(f32s)
                                .collect::<candle_core::Result<Vec<_>>>()?
                                .concat(),
                        ),
                        None => None,
                    },
                })
            })
            .collect::<candle_core::Result<_>>()?;
        Ok(Some(Plan {
            layers,
            norm: f32s(norm)?,
        }))
    }
}

/// A matrix as the threads read it: ours, or dense f32 weights (whose storage each product
/// read-locks while it reads them).
enum Mat<'a> {
    Packed(&'a Packed),
    Dense { w: &'a Tensor, n: usize, k: usize },
}

impl<'a> Mat<'a> {
    fn of(l: &'a Linear) -> candle_core::Result<Mat<'a>> {
        Ok(match l {
            Linear::Packed(p) => Mat::Packed(p),
            Linear::Dense(w) => {
                let (n, k) = w.dims2()?;
                Mat::Dense { w, n, k }
            }
            Linear::Quant(_) => {
                candle_core::bail!("decode: candle's quantized matrices are not taken")
            }
        })
    }

    fn n(&self) -> usize {
        match self {
            Mat::Packed(p) => p.rows(),
            Mat::Dense { n, .. } => *n,
        }
    }

    fn items(&self, rows: usize, vnni: bool) -> usize {
        match self {
            Mat::Packed(p) => p.items(rows, vnni),
            Mat::Dense { n, .. } => *n,
        }
    }
}

/// A matrix ready to multiply.
#[derive(Clone, Copy)]
enum Kernel<'a> {
    Packed(&'a Packed),
    Dense(&'a [f32], usize, usize),
}

/// Projections reading one input, as laid out in their output buffer: stacked (`[rows, Σ n]`,
/// part `p` at column offset `Σ_{<p} n`) or apart (part `p` a `[rows, n_p]` block after the
/// earlier parts' blocks).
struct Parts<'a> {
    mats: Vec<Mat<'a>>,
    widths: Vec<usize>,
    stacked: bool,
}

impl<'a> Parts<'a> {
    fn of<const N: usize>(s: &'a Stack<N>) -> candle_core::Result<Parts<'a>> {
        Ok(match s {
            Stack::One { w, widths } => Parts {
                mats: vec![Mat::of(w)?],
                widths: widths.to_vec(),
                stacked: true,
            },
            Stack::Apart(parts) => {
                let mats = parts
                    .iter()
                    .map(Mat::of)
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Parts {
                    widths: mats.iter().map(Mat::n).collect(),
                    mats,
                    stacked: false,
                }
            }
        })
    }

    fn total(&self) -> usize {
        self.widths.iter().sum()
    }

    /// Where part `p` of activation row `r` starts in the output buffer.
    fn at(&self, p: usize, r: usize, rows: usize) -> usize {
        let before: usize = self.widths[..p].iter().sum();
        if self.stacked {
            r * self.total() + before
        } else {
            rows * before + r * self.widths[p]
        }
    }

    /// Each matrix with the offset of its output block.
    fn blocks(&self, rows: usize) -> Vec<(&Mat<'a>, usize)> {
        let mut at = 0;
        self.mats
            .iter()
            .map(|m| {
                let b = (m, at);
                at += rows * m.n();
                b
            })
            .collect()
    }
}

struct LayerMats<'a> {
    qkv: Parts<'a>,
    o: Mat<'a>,
    gate_up: Parts<'a>,
    down: Mat<'a>,
}

/// A buffer that the threads write in disjoint parts between barriers and read after them.
struct Shared {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: access goes through `get`/`get_mut`/`ptr`, whose callers keep writes disjoint
// between two barriers and reads after them.
unsafe impl Sync for Shared {}

impl Shared {
    fn new(v: &mut [f32]) -> Shared {
        Shared {
            ptr: v.as_mut_ptr(),
            len: v.len(),
        }
    }

    /// # Safety
    /// No thread writes `at..at + len` while the slice lives.
    unsafe fn get(&self, at: usize, len: usize) -> &[f32] {
        assert!(at + len <= self.len, "decode: read past a shared buffer");
        unsafe { std::slice::from_raw_parts(self.ptr.add(at), len) }
    }

    /// # Safety
    /// No other thread reads or writes `at..at + len` while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get_mut(&self, at: usize, len: usize) -> &mut [f32] {
        assert!(at + len <= self.len, "decode: write past a shared buffer");
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), len) }
    }

    /// Pointer to `at..at + len`, for the kernels.
    fn ptr(&self, at: usize, len: usize) -> *mut f32 {
        assert!(
            at + len <= self.len,
            "decode: a product past a shared buffer"
        );
        self.ptr.wrapping_add(at)
    }
}

/// A spinning barrier for the region's threads, which a failing thread poisons so that the
/// others leave instead of waiting for it forever.
struct Barrier {
    threads: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<candle_core::Error>>,
}

/// Spins a barrier waits before it yields its core at each further check (about a
/// microsecond). When the threads do not each have a core (more threads than free cores:
/// another process, the sandbox running code) a waiting thread must let the late one run: with
/// 3 threads on 2 cores this module's tests took 13.6 s at 65,536 spins and 4.8 s at 256 (the
/// rest is candle's own pool spinning; 0.3 s with `CANDLE_BARRIER_POOL_SPIN_LIMIT=256` too).
const SPINS: u32 = 1 << 8;

/// The region was abandoned (another thread failed).
struct Stop;

impl Barrier {
    fn new(threads: usize) -> Barrier {
        Barrier {
            threads,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    fn wait(&self) -> Result<(), Stop> {
        if self.failed.load(Ordering::Acquire) {
            return Err(Stop);
        }
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return Ok(());
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            if self.failed.load(Ordering::Acquire) {
                return Err(Stop);
            }
            spins += 1;
            if spins < SPINS {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        Ok(())
    }

    fn fail(&self, e: candle_core::Error) {
        if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        self.failed.store(true, Ordering::Release);
    }
}

/// Poisons the barrier if its thread unwinds (the pool re-raises the panic on the engine
/// thread once every thread has left).
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Release);
        }
    }
}

/// `out = x / sqrt(mean(x²) + eps) · w` per row of `w.len()` values, summing the squares in
/// order as candle's `rms_norm` (the general path's) does, so that the two paths agree bit for
/// bit where they can (the trainer's `fused::rms_norm_rows` sums in 8 lanes: on Qwen2.5-Coder
/// `Q4_K_M` that moved this path's decode logits from 0.39 to 0.45 off the f32 weights' where
/// the general path's are 0.36, one realisation of quantization noise for another).
fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    let k = w.len();
    for (xr, or) in x.chunks_exact(k).zip(out.chunks_exact_mut(k)) {
        let ss: f32 = xr.iter().map(|v| v * v).sum();
        let inv = 1.0 / (ss / k as f32 + eps).sqrt();
        for ((o, v), g) in or.iter_mut().zip(xr).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// `x` rounded to `dtype`'s precision (f16, bf16; f32 as is).
fn round_to(dtype: DType, x: &mut [f32]) {
    match dtype {
        DType::F16 => x
            .iter_mut()
            .for_each(|v| *v = half::f16::from_f32(*v).to_f32()),
        DType::BF16 => x
            .iter_mut()
            .for_each(|v| *v = half::bf16::from_f32(*v).to_f32()),
        _ => {}
    }
}

fn add(x: &mut [f32], y: &[f32]) {
    for (a, b) in x.iter_mut().zip(y) {
        *a += b;
    }
}

/// Everything the threads share for one step.
struct Region<'a> {
    m: &'a Model,
    plan: &'a Plan,
    mats: Vec<LayerMats<'a>>,
    lm_head: Mat<'a>,
    caches: Vec<&'a KvCache>,
    /// Embeddings of the new tokens, `[rows, hidden]`.
    x0: Vec<f32>,
    /// Rotary cosines and sines per row, `[rows, d/2]`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    rows: usize,
    threads: usize,
    vnni: bool,
    chunks: usize,
    sync: Barrier,
    /// One cursor per (layer, slot) and one for the output projection.
    cursors: Vec<AtomicUsize>,
    qkv: Shared,
    parts: Shared,
    /// The new keys and values, rotated, `[rows][2][kv·d]`.
    fresh: Shared,
    o: Shared,
    gate_up: Shared,
    down: Shared,
    logits: Shared,
}

/// Cursor slots per layer: q, k, v (apart), attention, o, gate, up, down.
const SLOTS: usize = 8;

impl Region<'_> {
    /// This thread's share of the products of `x` (rows of `k`) with `blocks`' matrices,
    /// written into `out` at each block's offset; `act` is quantized here if one needs it.
    ///
    /// Seven eighths of each matrix's items are split evenly by thread beforehand; the rest
    /// go to whichever thread asks first (a shared cursor), which evens out a late start
    /// without an atomic operation on a shared line per few items.
    fn product(
        &self,
        tid: usize,
        blocks: &[(&Mat<'_>, usize)],
        x: &[f32],
        act: &mut Act,
        out: &Shared,
        cursors: &[AtomicUsize],
    ) -> candle_core::Result<()> {
        let rows = self.rows;
        if blocks.iter().any(|(m, _)| matches!(m, Mat::Packed(_))) {
            act.set(x, x.len() / rows);
        }
        for ((mat, at), cursor) in blocks.iter().zip(cursors) {
            let items = mat.items(rows, self.vnni);
            let dst = out.ptr(*at, rows * mat.n());
            // Dense weights are read under their storage's read lock, held for this product.
            let guard;
            let kernel = match mat {
                Mat::Packed(p) => Kernel::Packed(p),
                Mat::Dense { w, n, k } => {
                    guard = w.storage_and_layout();
                    match (&*guard.0, guard.1.contiguous_offsets()) {
                        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => {
                            Kernel::Dense(&v[a..b], *n, *k)
                        }
                        _ => candle_core::bail!(
                            "decode: dense weights must be contiguous f32 in CPU memory"
                        ),
                    }
                }
            };
            let run = |range: std::ops::Range<usize>| match kernel {
                // SAFETY: `act` holds `rows` rows of the matrix's width; `dst` has `rows·n`
                // floats of which these items' tiles are this thread's alone.
                Kernel::Packed(p) => unsafe { p.run(act, rows, range, dst, self.vnni) },
                // SAFETY: likewise for these columns.
                Kernel::Dense(w, n, k) => unsafe { crate::gemv::columns(x, w, n, k, range, dst) },
            };
            let shared = items / 8;
            let split = items - shared;
            run(tid * split / self.threads..(tid + 1) * split / self.threads);
            let grab = (shared / (self.threads * 2)).max(1);
            loop {
                let start = split + cursor.fetch_add(grab, Ordering::Relaxed);
                if start >= items {
                    break;
                }
                run(start..(start + grab).min(items));
            }
        }
        Ok(())
    }

    /// What one thread does for the whole step.
    fn run(&self, tid: usize) -> Result<(), Stop> {
        let c = &self.m.config;
        let (rows, hidden) = (self.rows, c.hidden_size);
        let (h, kv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
        let group = h / kv;
        let eps = c.rms_norm_eps as f32;
        let scale = 1.0 / (d as f32).sqrt();
        let half = d / 2;
        let part = attention::part_len(group, d);
        let chunks = self.chunks;
        let mut x = self.x0.clone();
        let mut xn = vec![0f32; rows * hidden];
        let mut attn = vec![0f32; rows * h * d];
        let mut mlp = Vec::new();
        let mut act = Act::default();
        let mut scratch = Scratch::default();
        let mut qbuf = vec![0f32; group * d];
        let fail = |e: candle_core::Error| {
            self.sync.fail(e);
            Stop
        };
        for (li, (mats, vec)) in self.mats.iter().zip(&self.plan.layers).enumerate() {
            let cur = &self.cursors[li * SLOTS..(li + 1) * SLOTS];
            // q, k, v.
            rms_norm(&x, &vec.attn_norm, eps, &mut xn);
            self.product(
                tid,
                &mats.qkv.blocks(rows),
                &xn,
                &mut act,
                &self.qkv,
                &cur[0..3],
            )
            .map_err(fail)?;
            self.sync.wait()?;
            // Attention items: (row, KV head, chunk of the cached positions). Each rotates its
            // own copy of its query heads; the last chunk's item also rotates the new key,
            // attends to the new position (from `fresh`, not the cache: no thread writes the
            // caches while others read them) and leaves the new key and value for the caches.
            let items = rows * kv * chunks;
            let fresh_len = 2 * kv * d;
            loop {
                let it = cur[3].fetch_add(1, Ordering::Relaxed);
                if it >= items {
                    break;
                }
                let (r, kvh, ch) = (it / (kv * chunks), it / chunks % kv, it % chunks);
                let (cs, sn) = (
                    &self.cos[r * half..(r + 1) * half],
                    &self.sin[r * half..(r + 1) * half],
                );
                let qkv = &mats.qkv;
                let heads = kvh * group * d..(kvh + 1) * group * d;
                // SAFETY: q, k and v were written before the last barrier and are only read
                // in this phase.
                qbuf.copy_from_slice(unsafe {
                    self.qkv.get(qkv.at(0, r, rows) + heads.start, group * d)
                });
                if let Some(b) = &vec.bias {
                    add(&mut qbuf, &b[heads.clone()]);
                }
                for head in qbuf.chunks_exact_mut(d) {
                    rope::rotate(head, cs, sn, self.m.rope);
                }
                let slot = |c: usize| ((r * kv + kvh) * (chunks + 1) + c) * part;
                if ch + 1 == chunks {
                    // SAFETY: as above; this item alone writes (r, kvh)'s part of `fresh`.
                    let (k, v, fresh) = unsafe {
                        (
                            self.qkv.get(qkv.at(1, r, rows) + kvh * d, d),
                            self.qkv.get(qkv.at(2, r, rows) + kvh * d, d),
                            (
                                self.fresh.get_mut(r * fresh_len + kvh * d, d),
                                self.fresh.get_mut(r * fresh_len + (kv + kvh) * d, d),
                            ),
                        )
                    };
                    let (fk, fv) = fresh;
                    fk.copy_from_slice(k);
                    fv.copy_from_slice(v);
                    if let Some(b) = &vec.bias {
                        add(fk, &b[(h + kvh) * d..(h + kvh + 1) * d]);
                        add(fv, &b[(h + kv + kvh) * d..(h + kv + kvh + 1) * d]);
                    }
                    rope::rotate(fk, cs, sn, self.m.rope);
                    // Attend to the new position as the cache will hold it.
                    round_to(self.m.kv_dtype, fk);
                    round_to(self.m.kv_dtype, fv);
                    // SAFETY: this item owns the slot.
                    let dst = unsafe { self.parts.get_mut(slot(chunks), part) };
                    attention::single(&qbuf, fk, fv, scale, &mut scratch, dst);
                }
                let cache = self.caches[r];
                let Some((kt, vt)) = cache.layer(li) else {
                    return Err(fail(candle_core::Error::Msg(
                        "decode: a cache layer is missing".into(),
                    )));
                };
                let (kg, kl) = kt.storage_and_layout();
                let (vg, vl) = vt.storage_and_layout();
                let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*kg, &*vg) else {
                    return Err(fail(candle_core::Error::Msg(
                        "decode: the cache is not in CPU memory".into(),
                    )));
                };
                let ksrc = Source::new(ks, kl, "k").map_err(fail)?;
                let vsrc = Source::new(vs, vl, "v").map_err(fail)?;
                // SAFETY: this item owns the slot.
                let dst = unsafe { self.parts.get_mut(slot(ch), part) };
                let past = cache.len();
                attention::item(
                    &qbuf,
                    &ksrc,
                    &vsrc,
                    kvh,
                    past,
                    (chunks, ch),
                    scale,
                    &mut scratch,
                    dst,
                );
            }
            self.sync.wait()?;
            // The new keys and values into the caches (no one reads them until the next
            // step), and the output projection of the merged heads.
            for r in (tid..rows).step_by(self.threads) {
                // SAFETY: written before the last barrier.
                let fresh = unsafe { self.fresh.get(r * fresh_len, fresh_len) };
                let cache = self.caches[r];
                let (k, v) = fresh.split_at(kv * d);
                cache.write(li, cache.len(), k, v).map_err(fail)?;
            }
            for (r, out) in attn.chunks_exact_mut(h * d).enumerate() {
                let per_row = kv * (chunks + 1) * part;
                // SAFETY: the items were written before the last barrier.
                let p = unsafe { self.parts.get(r * per_row, per_row) };
                attention::merge_row(p, group, d, chunks + 1, out);
            }
            self.product(tid, &[(&mats.o, 0)], &attn, &mut act, &self.o, &cur[4..5])
                .map_err(fail)?;
            self.sync.wait()?;
            // SAFETY: written before the last barrier.
            add(&mut x, unsafe { self.o.get(0, rows * hidden) });
            rms_norm(&x, &vec.mlp_norm, eps, &mut xn);
            self.product(
                tid,
                &mats.gate_up.blocks(rows),
                &xn,
                &mut act,
                &self.gate_up,
                &cur[5..7],
            )
            .map_err(fail)?;
            self.sync.wait()?;
            let f = mats.gate_up.widths[0];
            mlp.resize(rows * f, 0.0);
            for (r, out) in mlp.chunks_exact_mut(f).enumerate() {
                let gu = &mats.gate_up;
                // SAFETY: written before the last barrier.
                let (gate, up) = unsafe {
                    (
                        self.gate_up.get(gu.at(0, r, rows), f),
                        self.gate_up.get(gu.at(1, r, rows), f),
                    )
                };
                mathcoder_model::vmath::silu_mul(out, gate, up);
            }
            self.product(
                tid,
                &[(&mats.down, 0)],
                &mlp,
                &mut act,
                &self.down,
                &cur[7..8],
            )
            .map_err(fail)?;
            self.sync.wait()?;
            // SAFETY: written before the last barrier.
            add(&mut x, unsafe { self.down.get(0, rows * hidden) });
        }
        rms_norm(&x, &self.plan.norm, eps, &mut xn);
        let last = &self.cursors[self.mats.len() * SLOTS..];
        self.product(
            tid,
            &[(&self.lm_head, 0)],
            &xn,
            &mut act,
            &self.logits,
            last,
        )
        .map_err(fail)?;
        Ok(())
    }
}

/// Runs a decode step on this path, or returns `None` when it does not apply (not every
/// sequence adds one token, too many sequences, or the model has no [`Plan`]).
pub(crate) fn forward(
    m: &Model,
    steps: &mut [Step<'_>],
) -> Option<candle_core::Result<Vec<Tensor>>> {
    let plan = m.decode.as_ref()?;
    let rows = steps.len();
    if rows == 0 || rows > MAX_ROWS || steps.iter().any(|s| s.tokens.len() != 1) {
        return None;
    }
    Some(step(m, plan, steps))
}

fn step(m: &Model, plan: &Plan, steps: &mut [Step<'_>]) -> candle_core::Result<Vec<Tensor>> {
    let c = &m.config;
    let rows = steps.len();
    for s in steps.iter_mut() {
        s.cache.reserve(1)?;
    }
    let ids: Vec<u32> = steps.iter().map(|s| s.tokens[0]).collect();
    let positions: Vec<u32> = steps.iter().map(|s| s.cache.len() as u32).collect();
    let ids_t = Tensor::from_vec(ids, rows, &m.device)?;
    let x0 = match &m.embed {
        Embedding::Dense(e) => e.index_select(&ids_t, 0)?,
        Embedding::Quant(q) => q.embedding(&ids_t)?,
    };
    let x0: Vec<f32> = x0.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let (cos, sin) = crate::model::angles(&m.inv_freq, &positions);
    let mats = m
        .layers
        .iter()
        .map(|b| {
            Ok(LayerMats {
                qkv: Parts::of(&b.qkv)?,
                o: Mat::of(&b.o)?,
                gate_up: Parts::of(&b.gate_up)?,
                down: Mat::of(&b.down)?,
            })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let lm_head = Mat::of(&m.lm_head)?;
    let (h, kv, d) = (c.num_heads, c.num_kv_heads, c.head_dim);
    let threads = candle_core::utils::barrier_pool().n_workers() + 1;
    let shortest = steps.iter().map(|s| s.cache.len()).min().unwrap_or(0);
    let chunks = attention::chunks_for(rows * kv, threads, shortest);
    let widest = |f: fn(&LayerMats<'_>) -> usize| mats.iter().map(f).max().unwrap_or(0);
    let mut bufs: Vec<Vec<f32>> = [
        rows * widest(|l| l.qkv.total()),
        rows * kv * (chunks + 1) * attention::part_len(h / kv, d),
        rows * 2 * kv * d,
        rows * c.hidden_size,
        rows * widest(|l| l.gate_up.total()),
        rows * c.hidden_size,
        rows * lm_head.n(),
    ]
    .iter()
    .map(|&n| vec![0f32; n])
    .collect();
    let [qkv, parts, fresh, o, gate_up, down, logits] = &mut bufs[..] else {
        unreachable!("seven buffers")
    };
    let caches: Vec<&KvCache> = steps.iter().map(|s| &*s.cache).collect();
    let region = Region {
        m,
        plan,
        lm_head,
        caches,
        x0,
        cos,
        sin,
        rows,
        threads,
        vnni: qmatmul::vnni(),
        chunks,
        sync: Barrier::new(threads),
        cursors: (0..mats.len() * SLOTS + 1)
            .map(|_| AtomicUsize::new(0))
            .collect(),
        mats,
        qkv: Shared::new(qkv),
        parts: Shared::new(parts),
        fresh: Shared::new(fresh),
        o: Shared::new(o),
        gate_up: Shared::new(gate_up),
        down: Shared::new(down),
        logits: Shared::new(logits),
    };
    candle_core::utils::barrier_pool().execute(|tid| {
        let _poison = PoisonOnPanic(&region.sync);
        let _ = region.run(tid);
    });
    if let Some(e) = region.sync.error.lock().ok().and_then(|mut e| e.take()) {
        return Err(e);
    }
    drop(region);
    let vocab = logits.len() / rows;
    let logits = Tensor::from_vec(std::mem::take(logits), (rows, vocab), &m.device)?;
    for s in steps.iter_mut() {
        s.cache.advance(1);
    }
    steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let l = logits.narrow(0, i, 1)?;
            if s.all_logits {
                Ok(l)
            } else {
                l.squeeze(0)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::KvCache;
    use crate::config::{Architecture, ModelConfig};
    use crate::model::{Layer, RopeLayout, Weights};
    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    fn config(hidden: usize, heads: usize, kv: usize, layers: usize) -> ModelConfig {
        ModelConfig {
            architecture: Architecture::Llama,
            vocab_size: 264,
            hidden_size: hidden,
            intermediate_size: 2 * hidden,
            num_layers: layers,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: hidden / heads,
            rms_norm_eps: 1e-5,
            rope_theta: 1e4,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_ids: vec![],
            declared_dtype: None,
        }
    }

    /// A random model whose matrices are `format` (`None`: dense f32).
    fn model(c: &ModelConfig, format: Option<GgmlDType>, bias: bool, kv_dtype: DType) -> Model {
        let dev = Device::Cpu;
        let seed = std::cell::Cell::new(0u64);
        let values = |n: usize, scale: f32| -> Vec<f32> {
            seed.set(seed.get() + 1);
            crate::test_util::random(n, seed.get())
                .into_iter()
                .map(|v| v * scale)
                .collect()
        };
        let t = |r: usize, k: usize| Tensor::from_vec(values(r * k, 0.2), (r, k), &dev).unwrap();
        let lin = |r: usize, k: usize| match format {
            None => Linear::Dense(t(r, k)),
            Some(f) => Linear::quantized(QTensor::quantize(&t(r, k), f).unwrap()).unwrap(),
        };
        let (hd, f, d) = (c.hidden_size, c.intermediate_size, c.head_dim);
        let norm = || (Tensor::from_vec(values(hd, 0.1), hd, &dev).unwrap() + 1.0).unwrap();
        let layers = (0..c.num_layers)
            .map(|_| Layer {
                attn_norm: norm(),
                q: lin(c.num_heads * d, hd),
                k: lin(c.num_kv_heads * d, hd),
                v: lin(c.num_kv_heads * d, hd),
                qkv_bias: bias.then(|| {
                    [c.num_heads, c.num_kv_heads, c.num_kv_heads]
                        .map(|n| Tensor::from_vec(values(n * d, 0.5), n * d, &dev).unwrap())
                }),
                o: lin(hd, c.num_heads * d),
                mlp_norm: norm(),
                gate: lin(f, hd),
                up: lin(f, hd),
                down: lin(hd, f),
            })
            .collect();
        let w = Weights {
            embed: Embedding::Dense(t(c.vocab_size, hd)),
            layers,
            norm: norm(),
            lm_head: lin(c.vocab_size, hd),
        };
        let fmt = format!("{format:?}");
        Model::assemble(
            c.clone(),
            w,
            RopeLayout::Interleaved,
            DType::F32,
            kv_dtype,
            dev,
            fmt,
        )
        .unwrap()
    }

    /// Logits of `n` decode steps of sequences with the given prompts, stepped together.
    fn decode(m: &Model, prompts: &[Vec<u32>], n: usize) -> Vec<Vec<f32>> {
        let mut caches: Vec<KvCache> = prompts.iter().map(|_| m.new_cache()).collect();
        for (cache, p) in caches.iter_mut().zip(prompts) {
            let mut steps = [Step {
                cache,
                tokens: p,
                all_logits: false,
            }];
            m.forward(&mut steps).unwrap();
        }
        let mut out = Vec::new();
        for i in 0..n {
            let toks: Vec<u32> = (0..prompts.len())
                .map(|s| ((i * 7 + s * 13) % m.config.vocab_size) as u32)
                .collect();
            let mut steps: Vec<Step<'_>> = caches
                .iter_mut()
                .zip(&toks)
                .map(|(cache, t)| Step {
                    cache,
                    tokens: std::slice::from_ref(t),
                    all_logits: false,
                })
                .collect();
            for l in m.forward(&mut steps).unwrap() {
                out.push(l.to_vec1::<f32>().unwrap());
            }
        }
        out
    }

    fn rel(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
        let diff = a
            .iter()
            .flatten()
            .zip(b.iter().flatten())
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        diff / b.iter().flatten().map(|x| x.abs()).fold(0f32, f32::max)
    }

    /// The fused step gives the general path's logits: head widths 64 and 128 (the AVX-512
    /// attention) and 32, grouped heads, biases, dense and quantized matrices (stacked or not),
    /// f32 and f16 caches, one sequence and several of different lengths, contexts long enough
    /// to split attention into chunks.
    #[test]
    fn fused_decode_equals_the_general_path() {
        let (q4_1, q8_0, q4_k) = (
            Some(GgmlDType::Q4_1),
            Some(GgmlDType::Q8_0),
            Some(GgmlDType::Q4K),
        );
        let (f32, f16, bf16) = (DType::F32, DType::F16, DType::BF16);
        let cases = [
            (config(256, 4, 2, 2), q4_1, false, f32),
            (config(256, 2, 1, 2), q8_0, true, f32),
            (config(256, 2, 1, 2), q8_0, false, f16),
            (config(256, 4, 4, 1), q4_k, false, f32),
            (config(128, 4, 2, 2), None, true, f32),
            (config(128, 2, 2, 1), None, false, bf16),
            (config(128, 2, 2, 1), None, false, f16),
            (config(256, 2, 1, 2), q8_0, false, bf16),
            (config(256, 4, 2, 2), q4_1, false, f16),
            (config(256, 8, 2, 2), q4_1, false, f16),
        ];
        for (c, format, bias, kv) in cases {
            let mut m = model(&c, format, bias, kv);
            assert!(m.fused_decode(), "{format:?} takes the fused path");
            let prompts: [Vec<u32>; 3] = [vec![1, 2, 3], (0..40).collect(), vec![5]];
            for p in [&prompts[..1], &prompts[..]] {
                let fused = decode(&m, p, 30);
                m.set_fused_decode(false).unwrap();
                let general = decode(&m, p, 30);
                m.set_fused_decode(true).unwrap();
                let r = rel(&fused, &general);
                // Most cases agree exactly. Attention's partial sums are split differently
                // (so float order differs), which can move a value across an f16 rounding
                // step (dense, f16 cache: up to 4e-5) or an activation across a quantization
                // step (quantized: up to 1e-2); a wrong bias, rotation or position is O(1).
                let tol = if format.is_some() { 3e-2 } else { 2e-4 };
                eprintln!("{format:?} bias {bias} kv {kv:?} {} rows: {r:.1e}", p.len());
                assert!(
                    r < tol,
                    "{format:?} bias {bias} kv {kv:?} {} rows: {r}",
                    p.len()
                );
            }
        }
    }

    #[test]
    fn candles_quantized_matrices_keep_the_general_path() {
        let c = config(256, 4, 2, 1);
        // Q2_K has no kernel of ours.
        let m = model(&c, Some(GgmlDType::Q2K), false, DType::F32);
        assert!(!m.fused_decode());
    }
}
