//! Our own CPU matrix multiply for GGUF matrices: `Q4_0`, `Q4_1`, `Q5_0`, `Q5_1`, `Q8_0`,
//! `Q4_K`, `Q5_K` and `Q6_K` (x86-64 with AVX2, FMA and F16C; anything else keeps candle's
//! kernels).
//!
//! candle's kernels compute one dot product per output row, unpacking the weights of every
//! block and converting its scale one row at a time. At load time we instead **repack** each
//! group of 8 output rows so that one 256-bit register holds the same 4 bytes of a block for all
//! 8 rows, and the 8 rows' scales sit together. One pass over a group then yields 8 results at
//! once, as 8 integer lanes, with one scale multiply per block. The activations are quantized
//! to 8 bits per 32-value block the way llama.cpp does (scale `max|x|/127` rounded to f16,
//! values rounded to nearest even), so results are those of llama.cpp's quantized dot products
//! up to float summation order (llama.cpp quantizes activations per 256 for the K formats).
//!
//! * `Q8_0` (signed `q`): `vpmaddubsw(|q|, sign(y, q))`, the usual sign trick.
//! * Every other format is decoded at load ([`crate::quants`]) to unsigned `q` with
//!   `w = d·(q − z) + m` per 32 weights: `Σ w·y = d·(Σ q·y − z·Σ y) + m·Σ y`, so `q` goes
//!   straight into `vpmaddubsw` (unsigned × signed), and the activation block sums are
//!   computed once. 4-bit formats stay nibbles (`Q4_0`, `Q4_1`, `Q4_K`); 5-bit ones (`Q5_0`,
//!   `Q5_1`, `Q5_K`) are nibbles plus a plane of fifth bits, spread back into bytes with one
//!   shuffle and a compare per 32 values; 6-bit `Q6_K` is nibbles plus two such planes (7 bits
//!   a weight with its scales, against 6.56 in the file). Scales are f16,
//!   the K formats' products of super-block and sub-block scales rounded to it (f32 only if
//!   one overflows f16); `Q6_K` has two scales per 32 weights.
//!
//! Work is split over candle's own thread pool (the one its other CPU kernels use), by groups
//! of 8 rows; with several activation rows (prefill, batched decode) each group is applied to
//! up to 4 activation rows per pass (8 with AVX-512 VNNI's 32 registers) and a worker walks
//! all activation rows of one weight group before the next, so that weights are read from
//! memory once per matrix multiply.

use candle_core::backend::BackendStorage;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{CpuStorage, CustomOp1, Layout, Shape};
use half::f16;

use crate::quants::{self, Spec, QK};

/// Output rows interleaved in one group.
const GROUP: usize = 8;
/// Activation rows applied to one weight group per pass (AVX2: 16 vector registers).
const ROW_TILE: usize = 4;
/// The same with AVX-512 VNNI's 32 registers (unsigned formats; `Q8_0`'s sign trick needs
/// more registers per row and runs two passes of 4).
const WIDE_TILE: usize = 8;
/// Multiply-adds below which a product runs on the calling thread only. Waking the pool's
/// workers costs a few microseconds; at 2^21 every projection of a SmolLM2-135M decode step ran
/// on one thread, with one core's share of the memory bandwidth (60 tok/s; 82-92 at 2^18,
/// 2 threads).
const SERIAL_MACS: usize = 1 << 18;

/// Activation rows per work item.
fn tile(vnni: bool) -> usize {
    if vnni {
        WIDE_TILE
    } else {
        ROW_TILE
    }
}

/// How a packed matrix is multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Signed bytes, one f16 scale per block.
    Q8_0,
    /// Unsigned values decoded from another ggml format.
    Unsigned(Spec),
}

impl Format {
    /// Bytes of quantized values per row per block.
    fn qbytes(self) -> usize {
        match self {
            Format::Unsigned(_) => QK / 2,
            Format::Q8_0 => QK,
        }
    }

    /// Scales per row per block.
    fn scales(self) -> usize {
        match self {
            Format::Unsigned(s) if s.halves => 2,
            _ => 1,
        }
    }
}

/// Block scales or offsets, `[n/8][k/32][per block][8]`.
enum Scales {
    /// f16 values.
    F16(Vec<f16>),
    /// The K formats: 8-bit factors `sub` (`[n/8][k/32][per block][8]`) times f16 super-block
    /// factors `sup` (`[n/8][k/256][8]`), multiplied in the kernel (exact in f32).
    Super { sup: Vec<f16>, sub: Vec<i8> },
}

impl Scales {
    /// `len` values; for super-block scales, with `supers` super-block factors.
    fn new(super_scales: bool, len: usize, supers: usize) -> Scales {
        if super_scales {
            Scales::Super {
                sup: vec![f16::ZERO; supers],
                sub: vec![0; len],
            }
        } else {
            Scales::F16(vec![f16::ZERO; len])
        }
    }

    /// Value `i` (f16 scales).
    fn set(&mut self, i: usize, v: f32) {
        if let Scales::F16(s) = self {
            s[i] = f16::from_f32(v);
        }
    }

    /// Factor `i` and its super-block factor `j` (super-block scales).
    fn set_factors(&mut self, i: usize, sub_factor: i8, j: usize, sup_factor: f16) {
        if let Scales::Super { sup, sub } = self {
            sub[i] = sub_factor;
            sup[j] = sup_factor;
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Scales::F16(s) => s.len() * 2,
            Scales::Super { sup, sub } => sup.len() * 2 + sub.len(),
        }
    }

    /// The kernels' view: the values (or sub-block factors) and the super-block factors.
    fn ptrs(&self) -> (*const u8, *const f16) {
        match self {
            Scales::F16(s) => (s.as_ptr() as *const u8, std::ptr::null()),
            Scales::Super { sup, sub } => (sub.as_ptr() as *const u8, sup.as_ptr()),
        }
    }

    /// The same scales of stacked matrices (`None` unless all are of one kind).
    fn stack(all: &[&Scales]) -> Option<Scales> {
        match all.first()? {
            Scales::F16(_) => {
                let parts: Option<Vec<&[f16]>> = all
                    .iter()
                    .map(|s| match s {
                        Scales::F16(v) => Some(v.as_slice()),
                        Scales::Super { .. } => None,
                    })
                    .collect();
                Some(Scales::F16(parts?.concat()))
            }
            Scales::Super { .. } => {
                let parts: Option<Vec<(&[f16], &[i8])>> = all
                    .iter()
                    .map(|s| match s {
                        Scales::Super { sup, sub } => Some((sup.as_slice(), sub.as_slice())),
                        Scales::F16(_) => None,
                    })
                    .collect();
                let parts = parts?;
                Some(Scales::Super {
                    sup: parts.iter().map(|p| p.0).collect::<Vec<_>>().concat(),
                    sub: parts.iter().map(|p| p.1).collect::<Vec<_>>().concat(),
                })
            }
        }
    }
}

/// A `[n, k]` matrix repacked in groups of 8 rows.
pub(crate) struct Packed {
    format: Format,
    n: usize,
    k: usize,
    scales: Scales,
    /// Block offsets (formats with `m`).
    offsets: Option<Scales>,
    /// `[n/8][k/32][qbytes/4][8][4]` quantized values (nibbles: byte `j` holds weights `j`
    /// and `j + 16`).
    quants: Vec<u8>,
    /// Bytes of the ggml blocks the matrix was repacked from.
    source_bytes: usize,
    /// 5- and 6-bit formats: `[n/8][k/32][bits − 4][8]` planes of the bits above the nibble
    /// (plane `p`: bit `4 + p`); byte `c` of a row's word holds those of quant bytes `4c..4c+4`
    /// (bits 0-3: their low nibbles' weights, bits 4-7: their high).
    high: Vec<u32>,
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

/// Whether this CPU also has AVX-512 VNNI (`vpdpbusd` on 256-bit registers), which the kernels
/// then use for their integer dot products: one instruction where AVX2 needs three.
pub(crate) fn vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        supported()
            && std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512vl")
            && std::arch::is_x86_feature_detected!("avx512vnni")
            && std::arch::is_x86_feature_detected!("avx512bw")
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
        let dims = t.shape().dims();
        let &[n, k] = dims else {
            return Ok(None);
        };
        if !supported() || n % GROUP != 0 || n == 0 || k == 0 {
            return Ok(None);
        }
        if t.dtype() != GgmlDType::Q8_0 && quants::spec(t.dtype()).is_none() {
            return Ok(None);
        }
        let data = t.data()?;
        Ok(Packed::from_blocks(t.dtype(), n, k, &data))
    }

    /// Repacks ggml blocks of format `t` (row-major): `None` if `t` is not one we handle or
    /// `data` is not the `[n, k]` matrix's blocks.
    fn from_blocks(t: GgmlDType, n: usize, k: usize, data: &[u8]) -> Option<Packed> {
        if t == GgmlDType::Q8_0 {
            return Packed::from_q8_0(n, k, data);
        }
        Packed::from_unsigned(t, n, k, data, true)
            .or_else(|| Packed::from_unsigned(t, n, k, data, false))
    }

    /// [`Packed::from_blocks`] for the formats decoded to unsigned values; `fold`: turn a zero
    /// point into block offsets (`None` if one does not fit an f16 scale).
    fn from_unsigned(t: GgmlDType, n: usize, k: usize, data: &[u8], fold: bool) -> Option<Packed> {
        let (spec, bw, bb) = quants::spec(t)?;
        if !n.is_multiple_of(GROUP) || !k.is_multiple_of(bw) || data.len() != n * (k / bw) * bb {
            return None;
        }
        // A zero point becomes a block offset: `d·(q − z) = d·q + (−z·d)`, which the kernels
        // apply with one multiply-add by the activations' `d·Σy` per block and row instead of
        // integer work on `z·Σy` (not for `HALVES`, whose offset would differ by half block).
        let fold = fold && spec.zero != 0 && !spec.halves && !spec.offset;
        let zero = spec.zero as f32;
        let mut spec = spec;
        if fold {
            spec.zero = 0;
            spec.offset = true;
        }
        let format = Format::Unsigned(spec);
        let (kb, qb, ns) = (k / QK, format.qbytes(), format.scales());
        // Super-block factors (K formats): one per 8 blocks and row.
        let supers = n * kb / 8;
        let mut scales = Scales::new(spec.super_scales, n * kb * ns, supers);
        let mut offsets = spec
            .offset
            .then(|| Scales::new(spec.super_scales, n * kb, supers));
        let mut quants = vec![0u8; n * kb * qb];
        let planes = spec.bits as usize - 4;
        let mut high = vec![0u32; n * kb * planes];
        let mut blocks = Vec::with_capacity(kb);
        for row in 0..n {
            let (g, r) = (row / GROUP, row % GROUP);
            blocks.clear();
            for src in data[row * (k / bw) * bb..(row + 1) * (k / bw) * bb].chunks_exact(bb) {
                quants::decode(t, src, &mut blocks);
            }
            for (b, blk) in blocks.iter().enumerate() {
                let gb = g * kb + b;
                // The super-block of 8 blocks this one belongs to (K formats).
                let sb = (gb / 8) * GROUP + r;
                match (spec.super_scales, blk.factors) {
                    (true, Some(f)) => {
                        for s in 0..ns {
                            scales.set_factors((gb * ns + s) * GROUP + r, f.sub[s], sb, f.sup_d);
                        }
                        if let Some(o) = offsets.as_mut() {
                            o.set_factors(gb * GROUP + r, f.sub_m, sb, f.sup_m);
                        }
                    }
                    (false, _) => {
                        for s in 0..ns {
                            scales.set((gb * ns + s) * GROUP + r, blk.d[s]);
                        }
                        if let Some(o) = offsets.as_mut() {
                            let m = if fold { -zero * blk.d[0] } else { blk.m };
                            if !f16::from_f32(m).is_finite() {
                                return None;
                            }
                            o.set(gb * GROUP + r, m);
                        }
                    }
                    (true, None) => return None,
                }
                let mut bytes = [0u8; QK / 2];
                let mut h = [0u32; 2];
                for (j, byte) in bytes.iter_mut().enumerate() {
                    let (a, b) = (blk.q[j], blk.q[j + QK / 2]);
                    *byte = (a & 15) | ((b & 15) << 4);
                    let (c, l) = (j / 4, j % 4);
                    for (p, h) in h.iter_mut().enumerate().take(planes) {
                        *h |= (((a >> (4 + p)) & 1) as u32) << (8 * c + l);
                        *h |= (((b >> (4 + p)) & 1) as u32) << (8 * c + 4 + l);
                    }
                }
                for (p, &h) in h.iter().enumerate().take(planes) {
                    high[(gb * planes + p) * GROUP + r] = h;
                }
                for c in 0..qb / 4 {
                    let dst = gb * GROUP * qb + (c * GROUP + r) * 4;
                    quants[dst..dst + 4].copy_from_slice(&bytes[4 * c..4 * c + 4]);
                }
            }
        }
        Some(Packed {
            format,
            n,
            k,
            scales,
            offsets,
            quants,
            source_bytes: data.len(),
            high,
        })
    }

    fn from_q8_0(n: usize, k: usize, data: &[u8]) -> Option<Packed> {
        let kb = k / QK;
        let block = 2 + QK;
        if !n.is_multiple_of(GROUP) || !k.is_multiple_of(QK) || data.len() != n * kb * block {
            return None;
        }
        let mut scales = vec![f16::ZERO; n * kb];
        let mut quants = vec![0u8; n * kb * QK];
        for g in 0..n / GROUP {
            for b in 0..kb {
                let gb = g * kb + b;
                for r in 0..GROUP {
                    let src = &data[((g * GROUP + r) * kb + b) * block..][..block];
                    scales[gb * GROUP + r] = f16::from_le_bytes([src[0], src[1]]);
                    for c in 0..QK / 4 {
                        let dst = gb * GROUP * QK + (c * GROUP + r) * 4;
                        quants[dst..dst + 4].copy_from_slice(&src[2 + 4 * c..2 + 4 * c + 4]);
                    }
                }
            }
        }
        Some(Packed {
            format: Format::Q8_0,
            n,
            k,
            scales: Scales::F16(scales),
            offsets: None,
            quants,
            source_bytes: data.len(),
            high: Vec::new(),
        })
    }

    /// The matrices stacked along their output rows (`[Σ n, k]`), as one product computes
    /// them: `None` unless they share the format, the scales' precision and `k`. The layout is
    /// group-major (`[n/8][...]`), so stacking concatenates each buffer.
    pub(crate) fn stack(parts: &[&Packed]) -> Option<Packed> {
        let first = parts.first()?;
        let same = |p: &&Packed| {
            p.format == first.format
                && p.k == first.k
                && p.offsets.is_some() == first.offsets.is_some()
        };
        if !parts.iter().all(same) {
            return None;
        }
        let scales: Vec<&Scales> = parts.iter().map(|p| &p.scales).collect();
        let offsets: Vec<&Scales> = parts.iter().filter_map(|p| p.offsets.as_ref()).collect();
        Some(Packed {
            format: first.format,
            n: parts.iter().map(|p| p.n).sum(),
            k: first.k,
            scales: Scales::stack(&scales)?,
            offsets: match offsets.is_empty() {
                true => None,
                false => Some(Scales::stack(&offsets)?),
            },
            quants: parts
                .iter()
                .map(|p| p.quants.as_slice())
                .collect::<Vec<_>>()
                .concat(),
            source_bytes: parts.iter().map(|p| p.source_bytes).sum(),
            high: parts
                .iter()
                .map(|p| p.high.as_slice())
                .collect::<Vec<_>>()
                .concat(),
        })
    }

    /// Output rows.
    pub(crate) fn rows(&self) -> usize {
        self.n
    }

    /// Input width.
    pub(crate) fn cols(&self) -> usize {
        self.k
    }

    /// Bytes of the repacked matrix (what a product reads; more than the file's blocks for the
    /// K formats, whose scales are stored per 32 weights, and `Q6_K`, stored as bytes).
    pub(crate) fn bytes(&self) -> usize {
        self.scales.bytes()
            + self.offsets.as_ref().map_or(0, Scales::bytes)
            + self.quants.len()
            + self.high.len() * 4
    }

    /// Bytes of the ggml blocks it was repacked from.
    pub(crate) fn source_bytes(&self) -> usize {
        self.source_bytes
    }

    /// `out[i, j] = Σ_l x[i, l] · w[j, l]` for `x` of `m` rows of `k` values; `out` has `m·n`.
    pub(crate) fn matmul(&self, x: &[f32], out: &mut [f32]) {
        self.matmul_with(x, out, vnni());
    }

    /// [`Packed::matmul`] with the AVX-512 VNNI kernels or not (`vnni` only where the CPU has
    /// them).
    fn matmul_with(&self, x: &[f32], out: &mut [f32], vnni: bool) {
        let (n, k) = (self.n, self.k);
        let m = x.len() / k;
        debug_assert_eq!(x.len(), m * k);
        debug_assert_eq!(out.len(), m * n);
        let act = Act::quantize(x, k);
        let out_ptr = SendPtr(out.as_mut_ptr());
        let work = |items: std::ops::Range<usize>| {
            let out_ptr = &out_ptr;
            // SAFETY: `act` holds `m` rows of `k`, `out` has `m·n` floats, and every work
            // item writes its own tiles.
            unsafe { self.run(&act, m, items, out_ptr.0, vnni) }
        };
        let items = self.items(m, vnni);
        // A tiny product costs less than waking the pool's workers: run it on this thread.
        if m * n * k < SERIAL_MACS {
            work(0..items);
        } else {
            candle_core::utils::barrier_pool().execute_chunked(items, work);
        }
    }

    /// Work items of a product with `m` activation rows: (group of 8 output rows, tile of
    /// activation rows) pairs, each written by one item.
    pub(crate) fn items(&self, m: usize, vnni: bool) -> usize {
        self.n / GROUP * m.div_ceil(tile(vnni))
    }

    /// Runs work `items` (of [`Packed::items`]) of the product of `act`'s `m` rows, writing
    /// `out[i·n + j]`.
    ///
    /// # Safety
    /// `act` was quantized from `m` rows of `k` values; `out` points to `m·n` writable floats
    /// that no other thread writes in these items' tiles; `vnni` only where [`vnni`] holds.
    pub(crate) unsafe fn run(
        &self,
        act: &Act,
        m: usize,
        items: std::ops::Range<usize>,
        out: *mut f32,
        vnni: bool,
    ) {
        let tile = tile(vnni);
        let tiles = m.div_ceil(tile);
        for item in items {
            let (g, t) = (item / tiles, item % tiles);
            let r0 = t * tile;
            let rows = tile.min(m - r0);
            // SAFETY: the CPU features were checked when the matrix was packed; (r0 + rows
            // <= m, g < n/8) is within bounds, and the caller owns this tile.
            unsafe { self.group(g, r0, rows, act, out, vnni) }
        }
    }

    /// Output rows `8g..8g+8` for activation rows `r0..r0+rows`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C available (and AVX-512 F, VL and VNNI if `vnni`); `out` points to
    /// `m·n` floats and no other thread writes this (rows, group) tile.
    #[cfg(target_arch = "x86_64")]
    unsafe fn group(&self, g: usize, r0: usize, rows: usize, act: &Act, out: *mut f32, vnni: bool) {
        // Tiles of 8 rows (VNNI, unsigned formats) run as one pass, anything else between 4
        // and 8 as two.
        let wide = vnni && self.format != Format::Q8_0;
        if rows > ROW_TILE && !(wide && rows == WIDE_TILE) {
            unsafe {
                self.group(g, r0, ROW_TILE, act, out, vnni);
                self.group(g, r0 + ROW_TILE, rows - ROW_TILE, act, out, vnni);
            }
            return;
        }
        macro_rules! rows {
            ($f:ident $(, $c:literal)*) => {
                match rows {
                    1 => x86::$f::<1 $(, $c)*>(self, g, r0, act, out),
                    2 => x86::$f::<2 $(, $c)*>(self, g, r0, act, out),
                    3 => x86::$f::<3 $(, $c)*>(self, g, r0, act, out),
                    _ => x86::$f::<4 $(, $c)*>(self, g, r0, act, out),
                }
            };
        }
        macro_rules! kernel {
            ($f:ident, $v:ident $(, $c:literal)*) => {
                if !vnni {
                    rows!($f $(, $c)*)
                } else if rows == WIDE_TILE {
                    x86::$v::<WIDE_TILE $(, $c)*>(self, g, r0, act, out)
                } else {
                    rows!($v $(, $c)*)
                }
            };
        }
        macro_rules! kernel4 {
            ($f:ident, $v:ident) => {
                if vnni {
                    rows!($v)
                } else {
                    rows!($f)
                }
            };
        }
        unsafe {
            match self.format {
                Format::Q8_0 => kernel4!(q8_0, q8_0_vnni),
                Format::Unsigned(s) => match (s.bits, s.halves, s.offset, s.super_scales) {
                    (4, false, false, false) => {
                        kernel!(unsigned, unsigned_vnni, 4, false, false, false)
                    }
                    (4, false, true, false) => {
                        kernel!(unsigned, unsigned_vnni, 4, false, true, false)
                    }
                    (4, false, true, true) => {
                        kernel!(unsigned, unsigned_vnni, 4, false, true, true)
                    }
                    (5, false, false, false) => {
                        kernel!(unsigned, unsigned_vnni, 5, false, false, false)
                    }
                    (5, false, true, false) => {
                        kernel!(unsigned, unsigned_vnni, 5, false, true, false)
                    }
                    (5, false, true, true) => {
                        kernel!(unsigned, unsigned_vnni, 5, false, true, true)
                    }
                    (6, true, false, true) => {
                        kernel!(unsigned, unsigned_vnni, 6, true, false, true)
                    }
                    other => unreachable!("no kernel for the layout {other:?}"),
                },
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn group(&self, _: usize, _: usize, _: usize, _: &Act, _: *mut f32, _: bool) {
        unreachable!("Packed is only built on x86-64")
    }
}

struct SendPtr(*mut f32);
// SAFETY: the workers write disjoint tiles (see `Packed::matmul`).
unsafe impl Sync for SendPtr {}

/// Activations quantized to 8 bits per block of 32, as llama.cpp's `quantize_row_q8_0`.
#[derive(Default)]
pub(crate) struct Act {
    /// `[m][k/32]` block scales (f16-rounded, as stored in a ggml `block_q8_0`).
    d: Vec<f32>,
    /// `[m][k/16]` sums of each half block's quantized values.
    half_sums: Vec<i32>,
    /// `[m][k/32]` each block's sum times its scale (what a block offset multiplies).
    dsums: Vec<f32>,
    /// `[m][k]` quantized values.
    qs: Vec<i8>,
    kb: usize,
}

impl Act {
    fn quantize(x: &[f32], k: usize) -> Act {
        let mut a = Act::default();
        a.set(x, k);
        a
    }

    /// Quantizes `x` (rows of `k` values, `k` a multiple of 32) into these buffers, reusing
    /// their allocations.
    pub(crate) fn set(&mut self, x: &[f32], k: usize) {
        self.kb = k / QK;
        let blocks = x.len() / QK;
        self.d.resize(blocks, 0.0);
        self.half_sums.resize(2 * blocks, 0);
        self.dsums.resize(blocks, 0.0);
        self.qs.resize(x.len(), 0);
        #[cfg(target_arch = "x86_64")]
        if supported() {
            // SAFETY: the features are present; the same code, compiled with them, rounds
            // with one instruction instead of a libm call.
            unsafe { quantize_avx2(x, self) };
            return;
        }
        quantize_into(x, self);
    }
}

/// [`quantize_into`] with AVX2: the same values (the scale's f16 rounding and the values'
/// rounding both to nearest even), 32 at a time.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn quantize_avx2(x: &[f32], a: &mut Act) {
    use std::arch::x86_64::*;
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let sign = _mm256_set1_ps(-0.0);
    // `packs` interleaves 128-bit lanes: this puts the 32 bytes back in order.
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let hsum = |v: __m256i| {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0b01));
        _mm_cvtsi128_si32(s)
    };
    for (i, (xb, qb)) in x
        .chunks_exact(QK)
        .zip(a.qs.chunks_exact_mut(QK))
        .enumerate()
    {
        let p = xb.as_ptr();
        let v: [__m256; 4] = std::array::from_fn(|j| _mm256_loadu_ps(p.add(8 * j)));
        let m = _mm256_max_ps(
            _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
            _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
        );
        let m = _mm_max_ps(_mm256_extractf128_ps(m, 1), _mm256_castps256_ps128(m));
        let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        a.d[i] = _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtps_ph(
            _mm_set_ss(d),
            _MM_FROUND_TO_NEAREST_INT,
        )));
        let q: [__m256i; 4] = std::array::from_fn(|j| {
            let r = _mm256_round_ps(_mm256_mul_ps(v[j], _mm256_set1_ps(id)), NEAREST);
            _mm256_cvtps_epi32(r)
        });
        let (s0, s1) = (
            hsum(_mm256_add_epi32(q[0], q[1])),
            hsum(_mm256_add_epi32(q[2], q[3])),
        );
        let bytes = _mm256_packs_epi16(
            _mm256_packs_epi32(q[0], q[1]),
            _mm256_packs_epi32(q[2], q[3]),
        );
        let bytes = _mm256_permutevar8x32_epi32(bytes, order);
        _mm256_storeu_si256(qb.as_mut_ptr() as *mut __m256i, bytes);
        a.half_sums[2 * i] = s0;
        a.half_sums[2 * i + 1] = s1;
        a.dsums[i] = a.d[i] * (s0 + s1) as f32;
    }
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
        let mut sums = [0i32; 2];
        for (l, (q, v)) in qb.iter_mut().zip(xb).enumerate() {
            let r = (v * id).round_ties_even() as i8;
            *q = r;
            sums[l / 16] += r as i32;
        }
        a.half_sums[2 * i] = sums[0];
        a.half_sums[2 * i + 1] = sums[1];
        a.dsums[i] = a.d[i] * (sums[0] + sums[1]) as f32;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Act, Packed, GROUP, QK};
    use std::arch::x86_64::*;

    /// Block `b` of activation rows `r0..r0 + R` as raw pointers, so that the inner loops
    /// address rows by base plus stride with no bounds checks and no index arithmetic (with
    /// checked indexing, scalar address and bounds work outnumbered the vector instructions).
    #[derive(Clone, Copy)]
    struct ActBlock {
        qs: *const u8,
        d: *const f32,
        half_sums: *const i32,
        dsums: *const f32,
        kb: usize,
    }

    impl ActBlock {
        /// # Safety
        /// `b < act.kb` and rows `r0..r0 + R` exist for every `r < R` the caller reads.
        #[inline(always)]
        unsafe fn new(act: &Act, r0: usize, b: usize) -> ActBlock {
            let at = r0 * act.kb + b;
            unsafe {
                ActBlock {
                    qs: (act.qs.as_ptr() as *const u8).add(at * QK),
                    d: act.d.as_ptr().add(at),
                    half_sums: act.half_sums.as_ptr().add(2 * at),
                    dsums: act.dsums.as_ptr().add(at),
                    kb: act.kb,
                }
            }
        }

        /// The 4 bytes of row `r` at byte offset `o` of the block, in every lane (one
        /// broadcast load).
        #[inline(always)]
        unsafe fn y(self, r: usize, o: usize) -> __m256i {
            unsafe { _mm256_broadcastd_epi32(_mm_loadu_si32(self.qs.add(r * self.kb * QK + o))) }
        }

        #[inline(always)]
        unsafe fn d(self, r: usize) -> f32 {
            unsafe { *self.d.add(r * self.kb) }
        }

        #[inline(always)]
        unsafe fn half_sum(self, r: usize, h: usize) -> i32 {
            unsafe { *self.half_sums.add(2 * r * self.kb + h) }
        }

        #[inline(always)]
        unsafe fn dsum(self, r: usize) -> f32 {
            unsafe { *self.dsums.add(r * self.kb) }
        }
    }

    /// `x + v` in the bytes where `hb` has the (one) bit of `mask` set, `x` in the others.
    /// With AVX-512 (`VNNI` kernels, which also have BW) a bit test into a mask register and
    /// a masked add; otherwise a compare, an and and an or.
    #[inline(always)]
    unsafe fn add_bits<const VNNI: bool>(
        x: __m256i,
        hb: __m256i,
        mask: __m256i,
        v: __m256i,
    ) -> __m256i {
        unsafe {
            if VNNI {
                _mm256_mask_add_epi8(x, _mm256_test_epi8_mask(hb, mask), x, v)
            } else {
                let set = _mm256_cmpeq_epi8(_mm256_and_si256(hb, mask), mask);
                _mm256_or_si256(x, _mm256_and_si256(set, v))
            }
        }
    }

    /// 8 scales (one per row of the group) at index `i` (in units of 8) of [`Scales::ptrs`]:
    /// f16 values, or (`SUPER`) 8-bit factors times the super-block factors at index `j`.
    #[inline(always)]
    unsafe fn scales8<const SUPER: bool>(
        p: (*const u8, *const half::f16),
        i: usize,
        j: usize,
    ) -> __m256 {
        unsafe {
            if SUPER {
                let sub = _mm_loadl_epi64(p.0.add(8 * i) as *const __m128i);
                let sup = _mm_loadu_si128((p.1 as *const __m128i).add(j));
                _mm256_mul_ps(
                    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sub)),
                    _mm256_cvtph_ps(sup),
                )
            } else {
                _mm256_cvtph_ps(_mm_loadu_si128((p.0 as *const __m128i).add(i)))
            }
        }
    }

    /// How far ahead of the block being read its weights are prefetched. A decode step streams
    /// each matrix once; on a machine with plenty of bandwidth per core (AMD EPYC, 2 threads:
    /// 45 GB/s) the hardware prefetcher alone left the loads waiting: TinyLlama-shaped `Q4_0`
    /// decoded 54-57 tok/s without, 59-61 at 1 KiB ahead, 63-70 at 2 KiB, 64-84 at 4 KiB.
    const PREFETCH_AHEAD: usize = 4096;

    /// Prefetches the `len` bytes (whole cache lines) that lie [`PREFETCH_AHEAD`] bytes after
    /// `at`. A prefetch never faults, so the address may lie past the matrix's end.
    #[inline(always)]
    unsafe fn prefetch(at: *const u8, len: usize) {
        let at = at.wrapping_add(PREFETCH_AHEAD);
        for line in (0..len).step_by(64) {
            unsafe { _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(line) as *const i8) };
        }
    }

    /// `acc + Σ u·s` over each 32-bit lane's 4 byte pairs (`u` unsigned, `s` signed).
    ///
    /// With `VNNI` one `vpdpbusd`; otherwise `vpmaddubsw` + `vpmaddwd`, whose i16 pair sums
    /// must not saturate (callers keep `2·max(u)·128 ≤ 32767`).
    #[inline(always)]
    unsafe fn dot4<const VNNI: bool>(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
        unsafe {
            if VNNI {
                _mm256_dpbusd_epi32(acc, u, s)
            } else {
                let pairs = _mm256_maddubs_epi16(u, s);
                _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
            }
        }
    }

    /// Byte `c` of each 32-bit lane copied to the lane's 4 bytes (for `vpshufb`).
    const SPREAD: [[u8; 32]; 4] = {
        let mut m = [[0u8; 32]; 4];
        let mut c = 0;
        while c < 4 {
            let mut p = 0;
            while p < 32 {
                m[c][p] = ((p % 16) / 4 * 4 + c) as u8;
                p += 1;
            }
            c += 1;
        }
        m
    };

    /// Formats decoded to unsigned values of `BITS` bits (4: nibbles, 5 and 6: nibbles and
    /// planes of the bits above), `HALVES` two scales per block, `OFF` block offsets, `SUPER`
    /// super-block scales (else f16); `VNNI`: integer dot products with `vpdpbusd`.
    ///
    /// Every row keeps two integer accumulators per block (the halves' for `HALVES`, else
    /// alternate steps'), so that no chain of dependent multiply-adds is longer than 4.
    #[inline(always)]
    unsafe fn unsigned_body<
        const R: usize,
        const BITS: u8,
        const HALVES: bool,
        const OFF: bool,
        const SUPER: bool,
        const VNNI: bool,
    >(
        p: &Packed,
        g: usize,
        r0: usize,
        act: &Act,
        out: *mut f32,
    ) {
        let super::Format::Unsigned(spec) = p.format else {
            unreachable!("unsigned kernel on a signed format")
        };
        let kb = act.kb;
        let ns = if HALVES { 2 } else { 1 };
        let qb = QK / 2;
        let low = _mm256_set1_epi8(0x0f);
        let ones = _mm256_set1_epi16(1);
        let zero = spec.zero;
        let mut acc = [_mm256_setzero_ps(); R];
        unsafe {
            let sc = p.scales.ptrs();
            let off = p
                .offsets
                .as_ref()
                .map_or((std::ptr::null(), std::ptr::null()), |o| o.ptrs());
            let qs = p.quants.as_ptr().add(g * kb * GROUP * qb) as *const __m256i;
            for b in 0..kb {
                prefetch(qs.add(b * 4) as *const u8, qb * GROUP);
                let gb = g * kb + b;
                let y = ActBlock::new(act, r0, b);
                // Integer dot products per row lane: [R][2].
                let mut dots = [[_mm256_setzero_si256(); 2]; R];
                if BITS >= 5 {
                    // The planes of bits 4 (and 5), one word per row; each spread over the
                    // bytes of its 4-value chunk and turned into 0x10 (0x20) per set bit.
                    let planes = BITS as usize - 4;
                    let hp = p.high.as_ptr().add(gb * planes * GROUP) as *const __m256i;
                    let hv = [
                        _mm256_loadu_si256(hp),
                        if BITS == 6 {
                            _mm256_loadu_si256(hp.add(1))
                        } else {
                            _mm256_setzero_si256()
                        },
                    ];
                    let (m_lo, m_hi) = (
                        _mm256_set1_epi32(0x0804_0201),
                        _mm256_set1_epi32(0x8040_2010u32 as i32),
                    );
                    let value = [_mm256_set1_epi8(0x10), _mm256_set1_epi8(0x20)];
                    for (c, spread) in SPREAD.iter().enumerate() {
                        let v = _mm256_loadu_si256(qs.add(b * 4 + c));
                        let spread = _mm256_loadu_si256(spread.as_ptr() as *const __m256i);
                        // Low nibbles are the block's weights 0..16, high ones 16..32: the two
                        // halves of `HALVES` formats.
                        let mut lo = _mm256_and_si256(v, low);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                        for (plane, value) in hv.iter().zip(value).take(planes) {
                            let hb = _mm256_shuffle_epi8(*plane, spread);
                            lo = add_bits::<VNNI>(lo, hb, m_lo, value);
                            hi = add_bits::<VNNI>(hi, hb, m_hi, value);
                        }
                        for (r, d) in dots.iter_mut().enumerate() {
                            let (ylo, yhi) = (y.y(r, 4 * c), y.y(r, 16 + 4 * c));
                            if VNNI {
                                d[0] = dot4::<true>(d[0], lo, ylo);
                                d[1] = dot4::<true>(d[1], hi, yhi);
                            } else if HALVES || BITS == 6 {
                                // Two products of at most 63·127 per i16 lane: no overflow.
                                d[0] = dot4::<false>(d[0], lo, ylo);
                                d[1] = dot4::<false>(d[1], hi, yhi);
                            } else {
                                // 4 products of at most 31·127 per i16 lane: no overflow.
                                let s = _mm256_add_epi16(
                                    _mm256_maddubs_epi16(lo, ylo),
                                    _mm256_maddubs_epi16(hi, yhi),
                                );
                                d[0] = _mm256_add_epi32(d[0], _mm256_madd_epi16(s, ones));
                            }
                        }
                    }
                } else if BITS == 4 && VNNI {
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(qs.add(b * 4 + c));
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                        for (r, d) in dots.iter_mut().enumerate() {
                            d[0] = dot4::<true>(d[0], lo, y.y(r, 4 * c));
                            d[1] = dot4::<true>(d[1], hi, y.y(r, 16 + 4 * c));
                        }
                    }
                } else if BITS == 4 {
                    let mut isum = [_mm256_setzero_si256(); R];
                    for c in 0..4 {
                        let v = _mm256_loadu_si256(qs.add(b * 4 + c));
                        let lo = _mm256_and_si256(v, low);
                        let hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
                        for (r, s) in isum.iter_mut().enumerate() {
                            let (ylo, yhi) = (y.y(r, 4 * c), y.y(r, 16 + 4 * c));
                            // 8 products of at most 15·127 per i16 lane: no overflow.
                            *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(lo, ylo));
                            *s = _mm256_add_epi16(*s, _mm256_maddubs_epi16(hi, yhi));
                        }
                    }
                    for r in 0..R {
                        dots[r][0] = _mm256_madd_epi16(isum[r], ones);
                    }
                }
                // The block's super-block (K formats: 8 blocks).
                let sb = gb / 8;
                let d0 = scales8::<SUPER>(sc, gb * ns, sb);
                let d1 = if HALVES {
                    scales8::<SUPER>(sc, gb * ns + 1, sb)
                } else {
                    d0
                };
                let m = if OFF {
                    scales8::<SUPER>(off, gb, sb)
                } else {
                    _mm256_setzero_ps()
                };
                for r in 0..R {
                    let ad = _mm256_set1_ps(y.d(r));
                    if HALVES {
                        let (s0, s1) = (y.half_sum(r, 0), y.half_sum(r, 1));
                        let x0 = _mm256_sub_epi32(dots[r][0], _mm256_set1_epi32(zero * s0));
                        let x1 = _mm256_sub_epi32(dots[r][1], _mm256_set1_epi32(zero * s1));
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(x0), _mm256_mul_ps(d0, ad), acc[r]);
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(x1), _mm256_mul_ps(d1, ad), acc[r]);
                    } else {
                        let dot = _mm256_add_epi32(dots[r][0], dots[r][1]);
                        let x = if zero != 0 {
                            let sum = y.half_sum(r, 0) + y.half_sum(r, 1);
                            _mm256_sub_epi32(dot, _mm256_set1_epi32(zero * sum))
                        } else {
                            dot
                        };
                        acc[r] =
                            _mm256_fmadd_ps(_mm256_cvtepi32_ps(x), _mm256_mul_ps(d0, ad), acc[r]);
                        if OFF {
                            acc[r] = _mm256_fmadd_ps(m, _mm256_set1_ps(y.dsum(r)), acc[r]);
                        }
                    }
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add((r0 + r) * p.n + g * GROUP), *a);
            }
        }
    }

    /// `Q8_0`: signed weights, `|w|·sign(y, w)` per byte pair.
    #[inline(always)]
    unsafe fn q8_0_body<const R: usize, const VNNI: bool>(
        p: &Packed,
        g: usize,
        r0: usize,
        act: &Act,
        out: *mut f32,
    ) {
        let kb = act.kb;
        let mut acc = [_mm256_setzero_ps(); R];
        unsafe {
            let sc = p.scales.ptrs();
            let qs = p.quants.as_ptr().add(g * kb * GROUP * 32) as *const __m256i;
            for b in 0..kb {
                prefetch(qs.add(b * 8) as *const u8, QK * GROUP);
                let y = ActBlock::new(act, r0, b);
                let d = scales8::<false>(sc, g * kb + b, 0);
                let mut isum = [[_mm256_setzero_si256(); 2]; R];
                for c in 0..8 {
                    let v = _mm256_loadu_si256(qs.add(b * 8 + c));
                    let ax = _mm256_sign_epi8(v, v);
                    for (r, s) in isum.iter_mut().enumerate() {
                        let sy = _mm256_sign_epi8(y.y(r, 4 * c), v);
                        // Two products of at most 128·127 per i16 lane: no overflow.
                        let h = if VNNI { c % 2 } else { 0 };
                        s[h] = dot4::<VNNI>(s[h], ax, sy);
                    }
                }
                for r in 0..R {
                    let scale = _mm256_mul_ps(d, _mm256_set1_ps(y.d(r)));
                    let dot = _mm256_add_epi32(isum[r][0], isum[r][1]);
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r]);
                }
            }
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add((r0 + r) * p.n + g * GROUP), *a);
            }
        }
    }

    /// The kernels compiled for AVX2 and for AVX-512 VNNI (256-bit, `vpdpbusd`).
    macro_rules! instances {
        ($features:literal, $vnni:literal, $unsigned:ident, $q8_0:ident) => {
            #[target_feature(enable = $features)]
            pub(super) unsafe fn $unsigned<
                const R: usize,
                const BITS: u8,
                const HALVES: bool,
                const OFF: bool,
                const SUPER: bool,
            >(
                p: &Packed,
                g: usize,
                r0: usize,
                act: &Act,
                out: *mut f32,
            ) {
                unsafe { unsigned_body::<R, BITS, HALVES, OFF, SUPER, $vnni>(p, g, r0, act, out) }
            }

            #[target_feature(enable = $features)]
            pub(super) unsafe fn $q8_0<const R: usize>(
                p: &Packed,
                g: usize,
                r0: usize,
                act: &Act,
                out: *mut f32,
            ) {
                unsafe { q8_0_body::<R, $vnni>(p, g, r0, act, out) }
            }
        };
    }

    instances!("avx2,fma,f16c", false, unsigned, q8_0);
    instances!(
        "avx2,fma,f16c,avx512f,avx512vl,avx512vnni,avx512bw",
        true,
        unsigned_vnni,
        q8_0_vnni
    );
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
    use crate::test_util::random;
    use candle_core::quantized::QMatMul;
    use candle_core::{Device, Module, Tensor};

    /// The same quantized dot products, computed plainly in f64 from the ggml blocks (decoded
    /// by the scalar reference, [`quants::decode`], for all but `Q8_0`).
    fn scalar_reference(t: GgmlDType, data: &[u8], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
        let act = Act::quantize(x, k);
        let kb = k / QK;
        // Weights as [n][kb] blocks of (q - z) with their scales and offset.
        type Row = Vec<([i64; QK], [f64; 2], f64)>;
        let rows: Vec<Row> = (0..n)
            .map(|j| {
                if t == GgmlDType::Q8_0 {
                    (0..kb)
                        .map(|b| {
                            let blk = &data[(j * kb + b) * 34..][..34];
                            let d = f16::from_le_bytes([blk[0], blk[1]]).to_f64();
                            let q: [i64; QK] = std::array::from_fn(|l| blk[2 + l] as i8 as i64);
                            (q, [d, d], 0.0)
                        })
                        .collect()
                } else {
                    let (s, bw, bb) = quants::spec(t).unwrap();
                    let row = &data[j * (k / bw) * bb..(j + 1) * (k / bw) * bb];
                    let mut blocks = Vec::new();
                    for c in row.chunks_exact(bb) {
                        quants::decode(t, c, &mut blocks);
                    }
                    blocks
                        .iter()
                        .map(|b| {
                            let q: [i64; QK] =
                                std::array::from_fn(|l| b.q[l] as i64 - s.zero as i64);
                            (q, [b.d[0] as f64, b.d[1] as f64], b.m as f64)
                        })
                        .collect()
                }
            })
            .collect();
        let m = x.len() / k;
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut sum = 0f64;
                for (b, (q, d, off)) in rows[j].iter().enumerate() {
                    let y = &act.qs[(i * kb + b) * QK..][..QK];
                    let ad = act.d[i * kb + b] as f64;
                    for l in 0..QK {
                        sum += ad * (d[l / 16] * q[l] as f64 + off) * y[l] as f64;
                    }
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
        // The bandwidth bound counts the file's bytes, not our (larger for K formats) repack.
        assert_eq!(packed.source_bytes(), q.data().unwrap().len());
        // And ours about as many: at most the f16 offsets a zero point is folded into (2 bytes
        // per 32 weights) and, for the K formats, 8-bit block scales instead of 6-bit ones.
        assert!(
            packed.bytes() >= packed.source_bytes()
                && packed.bytes() <= packed.source_bytes() + n * k / 16,
            "{dtype:?}: {} bytes from {}",
            packed.bytes(),
            packed.source_bytes()
        );
        let ours = x.apply_op1_no_bwd(&packed).unwrap();
        let ours = ours.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let reference = scalar_reference(dtype, &q.data().unwrap(), n, k, &xv);
        let scale = reference.iter().fold(0f32, |m, v| m.max(v.abs()));
        // The same integer dot products: only the float summation order differs. Both the
        // AVX2 kernels and, where the CPU has it, the VNNI ones.
        for vnni in [false, true].into_iter().filter(|v| !v || vnni()) {
            let mut out = vec![0f32; m * n];
            packed.matmul_with(&xv, &mut out, vnni);
            let worst = max_diff(&out, &reference);
            assert!(
                worst <= 2e-5 * scale,
                "{dtype:?} {n}x{k} m={m} vnni={vnni}: max diff {worst} from the scalar \
                 reference (scale {scale})"
            );
        }
        assert!(max_diff(&ours, &reference) <= 2e-5 * scale);
        // And against the exact product with the dequantized weights, close to candle's own
        // kernel (the error is that of quantizing the activations to 8 bits; candle quantizes
        // them per 256 for the K formats).
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
            e_ours <= 1.5 * e_theirs + 1e-4 * scale,
            "{dtype:?} {n}x{k} m={m}: error {e_ours} vs candle's {e_theirs}"
        );
    }

    const FORMATS: [GgmlDType; 8] = [
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];

    #[test]
    fn every_format_matches_the_scalar_reference_and_candle() {
        for t in FORMATS {
            for m in [1, 2, 3, 4, 5, 9, 13] {
                check(t, 40, 512, m);
            }
            check(t, 64, 2048, 1);
        }
    }

    #[test]
    fn stacked_matrices_give_their_parts_products_side_by_side() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let dev = Device::Cpu;
        let k = 256;
        let x = Tensor::from_vec(random(3 * k, 9), (3, k), &dev).unwrap();
        for t in FORMATS {
            let parts: Vec<Packed> = [(16, 4), (8, 5), (24, 6)]
                .iter()
                .map(|&(n, seed)| {
                    let w = Tensor::from_vec(random(n * k, seed), (n, k), &dev).unwrap();
                    Packed::from_qtensor(&QTensor::quantize(&w, t).unwrap())
                        .unwrap()
                        .unwrap()
                })
                .collect();
            let stacked = Packed::stack(&parts.iter().collect::<Vec<_>>()).expect("stackable");
            assert_eq!(stacked.rows(), 48);
            let alone: Vec<Tensor> = parts
                .iter()
                .map(|p| x.apply_op1_no_bwd(p).unwrap())
                .collect();
            let expected = Tensor::cat(&alone, 1).unwrap();
            let got = x.apply_op1_no_bwd(&stacked).unwrap();
            let (e, g) = (
                expected.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                got.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            assert_eq!(e, g, "{t:?}");
        }
        // Different formats (or k) stay apart.
        let w = Tensor::from_vec(random(8 * k, 1), (8, k), &dev).unwrap();
        let a = Packed::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q4K).unwrap())
            .unwrap()
            .unwrap();
        let b = Packed::from_qtensor(&QTensor::quantize(&w, GgmlDType::Q6K).unwrap())
            .unwrap()
            .unwrap();
        assert!(Packed::stack(&[&a, &b]).is_none());
    }

    #[test]
    fn other_shapes_and_formats_are_left_to_candle() {
        let dev = Device::Cpu;
        let w = Tensor::from_vec(random(12 * 64, 3), (12, 64), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_0).unwrap();
        assert!(Packed::from_qtensor(&q).unwrap().is_none(), "n % 8 != 0");
        let w = Tensor::from_vec(random(16 * 256, 3), (16, 256), &dev).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q2K).unwrap();
        assert!(Packed::from_qtensor(&q).unwrap().is_none(), "Q2_K");
    }

    #[test]
    fn vector_quantization_equals_the_scalar_one() {
        if !supported() {
            eprintln!("skipped: this CPU lacks AVX2/FMA/F16C");
            return;
        }
        let mut x = random(32 * 40, 11);
        // A zero block, a block of one repeated value, halves and ties.
        x[32..64].fill(0.0);
        x[64..96].fill(-3.5);
        for (i, v) in x[96..128].iter_mut().enumerate() {
            *v = (i as f32 - 16.0) * 0.5;
        }
        let k = 32 * 8;
        let vector = Act::quantize(&x, k);
        let mut scalar = Act::quantize(&x, k);
        quantize_into(&x, &mut scalar);
        assert_eq!(vector.qs, scalar.qs);
        assert_eq!(vector.d, scalar.d);
        assert_eq!(vector.half_sums, scalar.half_sums);
        assert_eq!(vector.dsums, scalar.dsums);
    }

    #[test]
    fn truncated_block_data_is_rejected() {
        assert!(Packed::from_blocks(GgmlDType::Q4_0, 8, 32, &[0u8; 8 * 18 - 1]).is_none());
        assert!(Packed::from_blocks(GgmlDType::Q8_0, 8, 32, &[0u8; 8 * 34]).is_some());
        assert!(Packed::from_blocks(GgmlDType::Q4K, 8, 256, &[0u8; 8 * 144 + 1]).is_none());
        assert!(Packed::from_blocks(GgmlDType::Q6K, 8, 128, &[0u8; 8 * 105]).is_none());
    }
}
