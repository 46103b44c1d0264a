//! Reading safetensors files tensor by tensor with positioned reads, straight into the buffer the
//! tensor will keep.
//!
//! Memory-mapping the files and copying tensors out of the map (candle's `MmapedSafetensors`)
//! counts every weight twice in the process's resident memory while loading (the mapped file
//! pages and the copy) and faults the pages in one by one. Reading each tensor into its own
//! buffer keeps the peak at the size of the model plus nothing, and reads sequentially. The
//! header is parsed by the `safetensors` crate.

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::Metadata;
use safetensors::Dtype;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::ModelError;

/// Tensors from this size on are read by several threads.
const PARALLEL_READ_BYTES: usize = 16 << 20;
/// Header size limit (the format's own is 100 MB).
const MAX_HEADER: u64 = 100_000_000;

struct Shard {
    path: PathBuf,
    file: File,
    /// Offset of the data section.
    data_start: u64,
    meta: Metadata,
}

/// One or more safetensors files (the shards of a checkpoint).
pub(crate) struct SafetensorsFiles {
    shards: Vec<Shard>,
    /// Tensor name -> shard index.
    index: HashMap<String, usize>,
}

fn load_err(path: &Path, what: impl std::fmt::Display) -> ModelError {
    ModelError::Load(format!("{}: {what}", path.display()))
}

impl SafetensorsFiles {
    pub(crate) fn open(paths: &[PathBuf]) -> Result<SafetensorsFiles, ModelError> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut index = HashMap::new();
        for path in paths {
            let file = File::open(path).map_err(|e| load_err(path, e))?;
            let len = file.metadata().map_err(|e| load_err(path, e))?.len();
            let mut n = [0u8; 8];
            file.read_exact_at(&mut n, 0)
                .map_err(|e| load_err(path, format!("not a safetensors file ({e})")))?;
            let n = u64::from_le_bytes(n);
            if n > MAX_HEADER || 8 + n > len {
                return Err(load_err(
                    path,
                    format!("not a safetensors file (header of {n} bytes in a {len}-byte file)"),
                ));
            }
            let mut header = vec![0u8; n as usize];
            file.read_exact_at(&mut header, 8)
                .map_err(|e| load_err(path, e))?;
            let meta: Metadata = serde_json::from_slice(&header)
                .map_err(|e| load_err(path, format!("safetensors header: {e}")))?;
            let data_start = 8 + n;
            if data_start + meta.data_len() as u64 != len {
                return Err(load_err(
                    path,
                    format!(
                        "truncated or padded: the header describes {} bytes of data, the file has {}",
                        meta.data_len(),
                        len - data_start
                    ),
                ));
            }
            for name in meta.offset_keys() {
                index.insert(name, shards.len());
            }
            shards.push(Shard {
                path: path.clone(),
                file,
                data_start,
                meta,
            });
        }
        Ok(SafetensorsFiles { shards, index })
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The stored dtype of a tensor, if present and one candle handles.
    pub(crate) fn dtype(&self, name: &str) -> Option<DType> {
        let s = &self.shards[*self.index.get(name)?];
        to_dtype(s.meta.info(name)?.dtype)
    }

    /// Reads a tensor (`None` if no shard has it).
    pub(crate) fn get(&self, name: &str, device: &Device) -> Result<Option<Tensor>, ModelError> {
        let Some(&i) = self.index.get(name) else {
            return Ok(None);
        };
        let s = &self.shards[i];
        let info = s
            .meta
            .info(name)
            .ok_or_else(|| load_err(&s.path, format!("{name} is not in the header")))?;
        let (a, b) = info.data_offsets;
        let offset = s.data_start + a as u64;
        let shape = info.shape.clone();
        let n: usize = shape.iter().product();
        let t = match info.dtype {
            Dtype::F32 => Tensor::from_vec(read_vec::<f32>(s, offset, n, b - a)?, shape, device),
            Dtype::F16 => {
                Tensor::from_vec(read_vec::<half::f16>(s, offset, n, b - a)?, shape, device)
            }
            Dtype::BF16 => {
                Tensor::from_vec(read_vec::<half::bf16>(s, offset, n, b - a)?, shape, device)
            }
            other => {
                return Err(load_err(
                    &s.path,
                    format!("{name} is stored as {other:?}; f32, f16 and bf16 are supported"),
                ))
            }
        };
        t.map(Some)
            .map_err(|e| load_err(&s.path, format!("{name}: {e}")))
    }
}

fn to_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::F16 => Some(DType::F16),
        Dtype::BF16 => Some(DType::BF16),
        _ => None,
    }
}

/// Plain numbers that any bit pattern is a valid value of.
trait Pod: Copy + Default {}
impl Pod for f32 {}
impl Pod for half::f16 {}
impl Pod for half::bf16 {}

fn read_vec<T: Pod>(s: &Shard, offset: u64, n: usize, bytes: usize) -> Result<Vec<T>, ModelError> {
    let size = std::mem::size_of::<T>();
    if n * size != bytes {
        return Err(load_err(
            &s.path,
            format!("a tensor of {n} elements has {bytes} bytes"),
        ));
    }
    if cfg!(target_endian = "big") {
        return Err(load_err(&s.path, "big-endian hosts are not supported"));
    }
    let mut v = vec![T::default(); n];
    // SAFETY: `v` owns n·size initialised bytes, and every bit pattern is a valid T (Pod), so
    // viewing them as bytes and overwriting them is sound.
    let buf = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, bytes) };
    // Large tensors are read by several threads: most of the time goes into the kernel
    // faulting in and zeroing the fresh pages, which parallelises.
    let parts = if bytes >= PARALLEL_READ_BYTES {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    };
    let chunk = bytes.div_ceil(parts).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = buf
            .chunks_mut(chunk)
            .enumerate()
            .map(|(i, part)| {
                let at = offset + (i * chunk) as u64;
                scope.spawn(move || s.file.read_exact_at(part, at))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .unwrap_or_else(|_| Err(std::io::Error::other("a reader thread panicked")))
        })
    })
    .map_err(|e| load_err(&s.path, e))?;
    Ok(v)
}
