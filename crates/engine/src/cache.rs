//! A growable key/value cache for one sequence.
//!
//! Each layer keeps keys and values in preallocated `[kv_heads, capacity, head_dim]` buffers that
//! new rows are written into in place; capacity doubles when full. Rolling back (to reuse a
//! prefix) only moves the length; forking copies the used part.

use candle_core::{DType, Device, Tensor};

struct LayerKv {
    k: Tensor,
    v: Tensor,
}

pub struct KvCache {
    layers: Vec<Option<LayerKv>>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: DType,
    device: Device,
}

const MIN_CAPACITY: usize = 64;

impl KvCache {
    pub(crate) fn new(
        num_layers: usize,
        kv_heads: usize,
        head_dim: usize,
        dtype: DType,
        device: Device,
    ) -> KvCache {
        KvCache {
            layers: (0..num_layers).map(|_| None).collect(),
            len: 0,
            capacity: 0,
            kv_heads,
            head_dim,
            dtype,
            device,
        }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated.
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().count()
            * 2
            * self.kv_heads
            * self.capacity
            * self.head_dim
            * self.dtype.size_in_bytes()
    }

    /// Forgets every position from `len` on (the next append overwrites them).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Writes `n` new rows (`[kv, n, d]`) of layer `li` after the current length and returns the
    /// layer's keys and values up to and including them. [`KvCache::advance`] commits the length
    /// once every layer has been written.
    pub(crate) fn append(
        &mut self,
        li: usize,
        k: &Tensor,
        v: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        let need = self.len + n;
        self.fit(need)?;
        if self.layers[li].is_none() {
            self.layers[li] = Some(self.alloc(self.capacity)?);
        }
        let l = self.layers[li].as_ref().expect("allocated above");
        l.k.slice_set(&k.to_dtype(self.dtype)?.contiguous()?, 1, self.len)?;
        l.v.slice_set(&v.to_dtype(self.dtype)?.contiguous()?, 1, self.len)?;
        Ok((l.k.narrow(1, 0, need)?, l.v.narrow(1, 0, need)?))
    }

    /// Makes room for `n` more positions in every layer (for [`KvCache::write`]).
    pub(crate) fn reserve(&mut self, n: usize) -> candle_core::Result<()> {
        self.fit(self.len + n)?;
        for li in 0..self.layers.len() {
            if self.layers[li].is_none() {
                self.layers[li] = Some(self.alloc(self.capacity)?);
            }
        }
        Ok(())
    }

    /// Layer `li`'s key and value buffers (`[kv, capacity, d]`; positions from the length on
    /// are not yet committed), once allocated.
    pub(crate) fn layer(&self, li: usize) -> Option<(&Tensor, &Tensor)> {
        self.layers.get(li)?.as_ref().map(|l| (&l.k, &l.v))
    }

    /// Writes one position's keys and values (`[kv·d]` each, f32) of layer `li` at position
    /// `pos`, in place, converted to the cache's dtype. The layer must have room
    /// ([`KvCache::reserve`]).
    pub(crate) fn write(
        &self,
        li: usize,
        pos: usize,
        k: &[f32],
        v: &[f32],
    ) -> candle_core::Result<()> {
        let Some(l) = self.layers.get(li).and_then(Option::as_ref) else {
            candle_core::bail!("kv cache: layer {li} is not allocated");
        };
        if pos >= self.capacity || k.len() != self.kv_heads * self.head_dim || v.len() != k.len() {
            candle_core::bail!(
                "kv cache: position {pos} of {} with {} and {} values",
                self.capacity,
                k.len(),
                v.len()
            );
        }
        l.k.inplace_op1(&WriteRow { pos, src: k })?;
        l.v.inplace_op1(&WriteRow { pos, src: v })
    }

    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }

    /// Grows every allocated layer (doubling) until `need` positions fit.
    fn fit(&mut self, need: usize) -> candle_core::Result<()> {
        if need > self.capacity {
            self.grow(need.max(self.capacity * 2).max(MIN_CAPACITY))?;
        }
        Ok(())
    }

    fn alloc(&self, cap: usize) -> candle_core::Result<LayerKv> {
        let shape = (self.kv_heads, cap, self.head_dim);
        Ok(LayerKv {
            k: Tensor::zeros(shape, self.dtype, &self.device)?,
            v: Tensor::zeros(shape, self.dtype, &self.device)?,
        })
    }

    fn grow(&mut self, cap: usize) -> candle_core::Result<()> {
        for i in 0..self.layers.len() {
            if let Some(old) = self.layers[i].take() {
                let new = self.alloc(cap)?;
                if self.len > 0 {
                    new.k
                        .slice_set(&old.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    new.v
                        .slice_set(&old.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                }
                self.layers[i] = Some(new);
            }
        }
        self.capacity = cap;
        Ok(())
    }

    /// An independent copy (for sampling several continuations of one prefix).
    pub fn fork(&self) -> candle_core::Result<KvCache> {
        let mut c = KvCache::new(
            self.layers.len(),
            self.kv_heads,
            self.head_dim,
            self.dtype,
            self.device.clone(),
        );
        if self.len > 0 {
            c.grow((self.len * 2).max(MIN_CAPACITY))?;
            for (i, l) in self.layers.iter().enumerate() {
                if let Some(l) = l {
                    let new = c.alloc(c.capacity)?;
                    new.k
                        .slice_set(&l.k.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    new.v
                        .slice_set(&l.v.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    c.layers[i] = Some(new);
                }
            }
            c.len = self.len;
        }
        Ok(c)
    }
}

/// Writes `src` (`[kv·d]`) as position `pos` of a `[kv, capacity, d]` buffer.
struct WriteRow<'a> {
    pos: usize,
    src: &'a [f32],
}

impl candle_core::InplaceOp1 for WriteRow<'_> {
    fn name(&self) -> &'static str {
        "kv-write-row"
    }

    fn cpu_fwd(
        &self,
        s: &mut candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        use candle_core::backend::BackendStorage;
        use candle_core::CpuStorage;
        let (&[kv, _, d], &[s0, s1, _]) = (l.dims(), l.stride()) else {
            candle_core::bail!("kv-write-row: a {:?} buffer", l.dims());
        };
        for (kvh, src) in self.src.chunks_exact(d.max(1)).take(kv).enumerate() {
            let at = l.start_offset() + kvh * s0 + self.pos * s1;
            match s {
                CpuStorage::F32(b) => b[at..at + d].copy_from_slice(src),
                CpuStorage::F16(b) => {
                    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut b[at..at + d], src)
                }
                CpuStorage::BF16(b) => {
                    half::slice::HalfFloatSliceExt::convert_from_f32_slice(&mut b[at..at + d], src)
                }
                other => candle_core::bail!("kv-write-row: a {:?} cache", other.dtype()),
            }
        }
        Ok(())
    }
}
