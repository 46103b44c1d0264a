//! Rotary embeddings for the few rows of a decode step, on the calling thread.
//!
//! candle's `rope`/`rope_i` split their work over rayon's pool; called from the engine's own
//! thread, that hands every small op to the pool and waits for it, which for one new token
//! costs more than the rotation. Below [`SERIAL_ELEMS`] values this op computes the same
//! expressions (bit for bit) in place; above, candle's run.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};

use crate::model::RopeLayout;

/// Inputs below this many values are rotated here.
const SERIAL_ELEMS: usize = 1 << 15;

/// `x` (`[b, h, t, d]`) rotated by the angles whose cosines and sines are `cos`, `sin`
/// (`[t, d/2]`), pairing dimensions as `layout` says.
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, layout: RopeLayout) -> Result<Tensor> {
    let small = x.elem_count() < SERIAL_ELEMS
        && x.device().is_cpu()
        && [x, cos, sin].iter().all(|t| t.dtype() == DType::F32);
    match (small, layout) {
        (true, _) => x.contiguous()?.apply_op3_no_bwd(
            &cos.contiguous()?,
            &sin.contiguous()?,
            &Rope { layout },
        ),
        (false, RopeLayout::Halves) => candle_nn::rotary_emb::rope(x, cos, sin),
        (false, RopeLayout::Interleaved) => candle_nn::rotary_emb::rope_i(x, cos, sin),
    }
}

struct Rope {
    layout: RopeLayout,
}

/// Rotates one head's values `x` (`d`) in place by the angles whose cosines and sines are `c`,
/// `s` (`d/2`), pairing dimensions as `layout` says.
#[inline]
pub(crate) fn rotate(x: &mut [f32], c: &[f32], s: &[f32], layout: RopeLayout) {
    let half = c.len();
    for i in 0..half {
        let (i1, i2) = match layout {
            RopeLayout::Halves => (i, i + half),
            RopeLayout::Interleaved => (2 * i, 2 * i + 1),
        };
        let (x1, x2) = (x[i1], x[i2]);
        x[i1] = x1 * c[i] - x2 * s[i];
        x[i2] = x1 * s[i] + x2 * c[i];
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("rope: {what} must be contiguous f32"),
    }
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rope-serial"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        cs: &CpuStorage,
        cl: &Layout,
        ss: &CpuStorage,
        sl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (
            slice(xs, xl, "x")?,
            slice(cs, cl, "cos")?,
            slice(ss, sl, "sin")?,
        );
        let &[b, h, t, d] = xl.dims() else {
            candle_core::bail!("rope: x is {:?}, not [b, h, t, d]", xl.dims());
        };
        let half = d / 2;
        if d % 2 != 0 || cl.dims() != [t, half] || sl.dims() != [t, half] {
            candle_core::bail!(
                "rope: x {:?} with cos {:?} and sin {:?}",
                xl.dims(),
                cl.dims(),
                sl.dims()
            );
        }
        let mut out = x.to_vec();
        if d > 0 {
            for (r, dst) in out.chunks_exact_mut(d).enumerate() {
                let p = r % t;
                rotate(
                    dst,
                    &cos[p * half..(p + 1) * half],
                    &sin[p * half..(p + 1) * half],
                    self.layout,
                );
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, h, t, d))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_candles_rope_bit_for_bit() {
        let dev = Device::Cpu;
        let (b, h, t, d) = (1, 3, 5, 8);
        let x = Tensor::randn(0f32, 1.0, (b, h, t, d), &dev).unwrap();
        let angles = Tensor::randn(0f32, 3.0, (t, d / 2), &dev).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        for (layout, theirs) in [
            (
                RopeLayout::Halves,
                candle_nn::rotary_emb::rope(&x, &cos, &sin),
            ),
            (
                RopeLayout::Interleaved,
                candle_nn::rotary_emb::rope_i(&x, &cos, &sin),
            ),
        ] {
            let ours = rope(&x, &cos, &sin, layout).unwrap();
            let (a, b) = (
                ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                theirs
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
            assert_eq!(a, b, "{layout:?}");
        }
        let bad = Tensor::zeros((t, d / 2 + 1), DType::F32, &dev).unwrap();
        assert!(rope(&x, &bad, &bad, RopeLayout::Halves).is_err());
    }
}
