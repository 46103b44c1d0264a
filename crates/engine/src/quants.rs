//! ggml's block formats decoded to one common form, the scalar reference of our kernels.
//!
//! Every format we run is, per block of 32 weights, unsigned integers `q` and a value
//! `d·(q − z) + m`: a scale `d` (two, one per 16 weights, for `Q6_K`), a zero point `z` fixed by
//! the format and an optional offset `m`. The super-block formats (`Q4_K`, `Q5_K`, `Q6_K`, 256
//! weights) carry 6- or 8-bit sub-block scales times an f16 super-scale; their products are
//! exact in f32 (11 × 8 bits), so the decoded form loses nothing, and blocks keep the two
//! factors too ([`Factors`]), which is how the kernels store them. Layouts as in ggml's
//! `ggml-common.h` / `dequantize_row_*`.

use candle_core::quantized::GgmlDType;
use half::f16;

/// Weights per decoded block.
pub(crate) const QK: usize = 32;

/// How a format's decoded blocks are stored and multiplied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Spec {
    /// Bits per value: 4 (stored as nibbles), 5 or 6 (nibbles and one or two planes of the
    /// bits above).
    pub bits: u8,
    /// The zero point `z`.
    pub zero: i32,
    /// Two scales per block, for weights 0..16 and 16..32.
    pub halves: bool,
    /// Whether blocks have an offset `m`.
    pub offset: bool,
    /// Scales (and offsets) are an f16 super-block factor per 256 weights times 8-bit
    /// sub-block factors (the K formats, whose blocks carry [`Factors`]); otherwise they are
    /// f16 values.
    pub super_scales: bool,
}

/// One block of 32 weights: `w[l] = d[l/16]·(q[l] − zero) + m`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Block {
    pub q: [u8; QK],
    pub d: [f32; 2],
    pub m: f32,
    /// The K formats: the factors of `d` and `m`.
    pub factors: Option<Factors>,
}

/// `d[h] = sup_d · sub[h]` and `m = sup_m · sub_m`: an f16 factor of the 256-weight super-block
/// times an 8-bit one of the block (or half block). Both products are exact in f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Factors {
    pub sup_d: f16,
    pub sub: [i8; 2],
    pub sup_m: f16,
    pub sub_m: i8,
}

/// The ggml formats we decode, with their block sizes in weights and bytes.
pub(crate) fn spec(t: GgmlDType) -> Option<(Spec, usize, usize)> {
    let s = |bits, zero, halves, offset, super_scales| Spec {
        bits,
        zero,
        halves,
        offset,
        super_scales,
    };
    Some(match t {
        GgmlDType::Q4_0 => (s(4, 8, false, false, false), 32, 18),
        GgmlDType::Q4_1 => (s(4, 0, false, true, false), 32, 20),
        GgmlDType::Q5_0 => (s(5, 16, false, false, false), 32, 22),
        GgmlDType::Q5_1 => (s(5, 0, false, true, false), 32, 24),
        GgmlDType::Q4K => (s(4, 0, false, true, true), 256, 144),
        GgmlDType::Q5K => (s(5, 0, false, true, true), 256, 176),
        GgmlDType::Q6K => (s(6, 32, true, false, true), 256, 210),
        _ => return None,
    })
}

fn h(b: &[u8], at: usize) -> f32 {
    hh(b, at).to_f32()
}

fn hh(b: &[u8], at: usize) -> f16 {
    f16::from_le_bytes([b[at], b[at + 1]])
}

/// `get_scale_min_k4`: the 6-bit scale and min of sub-block `j` (0..8) of a `Q4_K`/`Q5_K`
/// super-block.
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

fn block(q: [u8; QK], d0: f32, d1: f32, m: f32) -> Block {
    Block {
        q,
        d: [d0, d1],
        m,
        factors: None,
    }
}

/// A K-format block from its factors.
fn factored(q: [u8; QK], f: Factors) -> Block {
    let (d, m) = (f.sup_d.to_f32(), f.sup_m.to_f32());
    Block {
        q,
        d: [d * f.sub[0] as f32, d * f.sub[1] as f32],
        m: m * f.sub_m as f32,
        factors: Some(f),
    }
}

/// Decodes one ggml block (`bytes` is exactly one block of format `t`) into 32-weight blocks.
pub(crate) fn decode(t: GgmlDType, b: &[u8], out: &mut Vec<Block>) {
    match t {
        GgmlDType::Q4_0 | GgmlDType::Q4_1 => {
            let (d, m, qs) = if t == GgmlDType::Q4_0 {
                (h(b, 0), 0.0, &b[2..18])
            } else {
                (h(b, 0), h(b, 2), &b[4..20])
            };
            let mut q = [0u8; QK];
            for j in 0..16 {
                q[j] = qs[j] & 15;
                q[j + 16] = qs[j] >> 4;
            }
            out.push(block(q, d, d, m));
        }
        GgmlDType::Q5_0 | GgmlDType::Q5_1 => {
            let (d, m, o) = if t == GgmlDType::Q5_0 {
                (h(b, 0), 0.0, 2)
            } else {
                (h(b, 0), h(b, 2), 4)
            };
            let qh = u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
            let qs = &b[o + 4..o + 20];
            let mut q = [0u8; QK];
            for j in 0..16 {
                let h0 = (((qh >> j) << 4) & 0x10) as u8;
                let h1 = ((qh >> (j + 12)) & 0x10) as u8;
                q[j] = (qs[j] & 15) | h0;
                q[j + 16] = (qs[j] >> 4) | h1;
            }
            out.push(block(q, d, d, m));
        }
        GgmlDType::Q4K | GgmlDType::Q5K => {
            let (d, dmin) = (hh(b, 0), hh(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if t == GgmlDType::Q4K {
                (None, &b[16..144])
            } else {
                (Some(&b[16..48]), &b[48..176])
            };
            for c in 0..4 {
                let ql = &qs[32 * c..32 * c + 32];
                for half in 0..2 {
                    let (sc, mn) = scale_min_k4(2 * c + half, scales);
                    let mut q = [0u8; QK];
                    for l in 0..32 {
                        let v = if half == 0 { ql[l] & 15 } else { ql[l] >> 4 };
                        let hi = qh.map_or(0, |qh| {
                            if qh[l] & (1 << (2 * c + half)) != 0 {
                                16
                            } else {
                                0
                            }
                        });
                        q[l] = v | hi;
                    }
                    // 6-bit factors: they fit an i8.
                    let (sc, mn) = (sc as i8, mn as i8);
                    out.push(factored(
                        q,
                        Factors {
                            sup_d: d,
                            sub: [sc, sc],
                            sup_m: -dmin,
                            sub_m: mn,
                        },
                    ));
                }
            }
        }
        GgmlDType::Q6K => {
            let (ql, qh, sc) = (&b[0..128], &b[128..192], &b[192..208]);
            let d = hh(b, 208);
            // Weight e of the super-block: half n = e/128, quarter k = (e%128)/32, l = e%32.
            let mut all = [0u8; 256];
            for n in 0..2 {
                let (ql, qh) = (&ql[64 * n..64 * n + 64], &qh[32 * n..32 * n + 32]);
                for l in 0..32 {
                    let base = 128 * n + l;
                    all[base] = (ql[l] & 15) | ((qh[l] & 3) << 4);
                    all[base + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
                    all[base + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
                    all[base + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
                }
            }
            for blk in 0..8 {
                let mut q = [0u8; QK];
                q.copy_from_slice(&all[32 * blk..32 * blk + 32]);
                let f = Factors {
                    sup_d: d,
                    sub: [sc[2 * blk] as i8, sc[2 * blk + 1] as i8],
                    sup_m: f16::ZERO,
                    sub_m: 0,
                };
                out.push(factored(q, f));
            }
        }
        _ => {}
    }
}

/// The weights of a decoded block (the scalar dequantization).
#[cfg(test)]
pub(crate) fn weights(b: &Block, zero: i32) -> [f32; QK] {
    let mut w = [0f32; QK];
    for (l, x) in w.iter_mut().enumerate() {
        *x = b.d[l / 16] * (b.q[l] as i32 - zero) as f32 + b.m;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// Our decoding of every format equals candle's dequantization (an independent
    /// implementation of ggml's layouts), weight for weight.
    #[test]
    fn decoding_equals_candle_dequantize() {
        let dev = Device::Cpu;
        let (n, k) = (4, 512);
        let v: Vec<f32> = (0..n * k)
            .map(|i| ((i as f32 * 0.731).sin() * 3.0) + if i % 53 == 0 { 9.0 } else { 0.0 })
            .collect();
        let w = Tensor::from_vec(v, (n, k), &dev).unwrap();
        for t in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let q = QTensor::quantize(&w, t).unwrap();
            let theirs = q
                .dequantize(&dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let (s, bw, bb) = spec(t).unwrap();
            let data = q.data().unwrap();
            assert_eq!(data.len(), n * k / bw * bb, "{t:?} block size");
            let mut blocks = Vec::new();
            for chunk in data.chunks_exact(bb) {
                decode(t, chunk, &mut blocks);
            }
            let ours: Vec<f32> = blocks.iter().flat_map(|b| weights(b, s.zero)).collect();
            assert_eq!(ours.len(), theirs.len());
            for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                    "{t:?} weight {i}: {a} vs candle {b}"
                );
            }
            let max_q = blocks.iter().flat_map(|b| b.q).max().unwrap();
            assert!(max_q < 1 << s.bits, "{t:?}: q {max_q}");
        }
    }
}
