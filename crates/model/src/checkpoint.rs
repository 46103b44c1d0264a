//! Reading checkpoints as they are published: a Hugging Face directory (`config.json` +
//! `model.safetensors`, sharded safetensors with their index, or PyTorch `.bin` shards), or a GGUF
//! file as llama.cpp writes it. Every tensor is named through [`crate::names`] and its shape is
//! checked against the config before anyone uses it.

use candle_core::quantized::{gguf_file, QTensor};
use candle_core::{DType, Device, Tensor};
use std::collections::BTreeSet;
use std::fs::File;
use std::path::{Path, PathBuf};

use crate::config::ModelConfig;
use crate::names::{LayerWeight, Weight};
use crate::st::SafetensorsFiles;
use crate::ModelError;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |e| ModelError::Load(format!("{}: {e}", path.display()))
}

fn ce(what: &str) -> impl FnOnce(candle_core::Error) -> ModelError + '_ {
    move |e| ModelError::Load(format!("{what}: {e}"))
}

/// A checkpoint directory or a GGUF file.
pub enum Checkpoint {
    Hf(HfCheckpoint),
    Gguf(GgufCheckpoint),
}

impl Checkpoint {
    /// Opens a checkpoint directory or a `.gguf` file (reads the config and the tensor index,
    /// no weights).
    pub fn open(path: &Path) -> Result<Checkpoint, ModelError> {
        if path.is_file() {
            if is_gguf(path) {
                return GgufCheckpoint::open(path).map(Checkpoint::Gguf);
            }
            return Err(ModelError::Load(format!(
                "{}: expected a checkpoint directory or a .gguf file",
                path.display()
            )));
        }
        HfCheckpoint::open(path).map(Checkpoint::Hf)
    }

    pub fn config(&self) -> &ModelConfig {
        match self {
            Checkpoint::Hf(c) => &c.config,
            Checkpoint::Gguf(c) => &c.config,
        }
    }

    /// A tensor in Hugging Face layout as a dense `dtype` tensor: a GGUF's quantized matrices
    /// are dequantized and its Q/K rows put back in Hugging Face's rotary order.
    pub fn dense(&self, w: Weight, dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        match self {
            Checkpoint::Hf(c) => {
                let name = w.hf_name();
                c.get(w, device)?.to_dtype(dtype).map_err(ce(&name))
            }
            Checkpoint::Gguf(c) => c.dense(w, dtype, device),
        }
    }
}

/// Whether `path` names a GGUF file (by its extension).
pub fn is_gguf(path: &Path) -> bool {
    path.is_file() && path.extension().is_some_and(|e| e == "gguf")
}

/// Where a directory's tensors are.
enum WeightSource {
    Safetensors(SafetensorsFiles),
    Pth(Vec<candle_core::pickle::PthTensors>),
}

/// A Hugging Face checkpoint directory.
pub struct HfCheckpoint {
    pub config: ModelConfig,
    source: WeightSource,
}

fn index_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(io(index))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Load(format!("{}: {e}", index.display())))?;
    let files: BTreeSet<String> = v["weight_map"]
        .as_object()
        .ok_or_else(|| ModelError::Load(format!("{}: no weight_map", index.display())))?
        .values()
        .filter_map(|f| f.as_str().map(String::from))
        .collect();
    let paths: Vec<PathBuf> = files.into_iter().map(|f| dir.join(f)).collect();
    if let Some(missing) = paths.iter().find(|p| !p.exists()) {
        return Err(ModelError::Load(format!(
            "{} names {}, which is missing",
            index.display(),
            missing.display()
        )));
    }
    Ok(paths)
}

impl WeightSource {
    fn open(dir: &Path) -> Result<WeightSource, ModelError> {
        let st_index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let st_files = if st_index.exists() {
            index_files(dir, &st_index)?
        } else if single.exists() {
            vec![single]
        } else {
            let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(io(dir))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|e| e == "safetensors")
                        && p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("model"))
                })
                .collect();
            v.sort();
            v
        };
        if !st_files.is_empty() {
            return Ok(WeightSource::Safetensors(SafetensorsFiles::open(
                &st_files,
            )?));
        }
        let bin_index = dir.join("pytorch_model.bin.index.json");
        let bins = if bin_index.exists() {
            index_files(dir, &bin_index)?
        } else if dir.join("pytorch_model.bin").exists() {
            vec![dir.join("pytorch_model.bin")]
        } else {
            return Err(ModelError::Load(format!(
                "{}: no model.safetensors, sharded safetensors or pytorch_model.bin",
                dir.display()
            )));
        };
        let pth = bins
            .iter()
            .map(|p| {
                candle_core::pickle::PthTensors::new(p, None)
                    .map_err(|e| ModelError::Load(format!("{}: {e}", p.display())))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(WeightSource::Pth(pth))
    }

    fn contains(&self, name: &str) -> bool {
        match self {
            WeightSource::Safetensors(st) => st.contains(name),
            WeightSource::Pth(files) => files.iter().any(|f| f.tensor_infos().contains_key(name)),
        }
    }

    fn get(&self, name: &str, device: &Device) -> Result<Option<Tensor>, ModelError> {
        match self {
            WeightSource::Safetensors(st) => st.get(name, device),
            WeightSource::Pth(files) => {
                for f in files {
                    if let Some(t) = f.get(name).map_err(ce(name))? {
                        return Ok(Some(t.to_device(device).map_err(ce(name))?));
                    }
                }
                Ok(None)
            }
        }
    }
}

impl HfCheckpoint {
    /// Reads `config.json` and indexes the weight files (safetensors, else PyTorch `.bin`).
    pub fn open(dir: &Path) -> Result<HfCheckpoint, ModelError> {
        if !dir.is_dir() {
            return Err(ModelError::Load(format!(
                "{}: no such directory or file",
                dir.display()
            )));
        }
        let cfg_path = dir.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(io(&cfg_path))?;
        let mut config = ModelConfig::from_hf_json(&text)?;
        let source = WeightSource::open(dir)?;
        // A checkpoint that declares an untied head but has none uses its embeddings.
        if !config.tie_word_embeddings && !source.contains(&Weight::LmHead.hf_name()) {
            config.tie_word_embeddings = true;
        }
        Ok(HfCheckpoint { config, source })
    }

    /// The dtype the weights are stored in (that of the embeddings), when the files say so
    /// without reading them (safetensors).
    pub fn stored_dtype(&self) -> Option<DType> {
        match &self.source {
            WeightSource::Safetensors(st) => st.dtype(&Weight::Embed.hf_name()),
            WeightSource::Pth(_) => None,
        }
    }

    /// Whether the checkpoint has this tensor (an untied `lm_head`, for instance).
    pub fn contains(&self, w: Weight) -> bool {
        self.source.contains(&w.hf_name())
    }

    /// Reads a tensor as stored, checking its shape against the config.
    pub fn get(&self, w: Weight, device: &Device) -> Result<Tensor, ModelError> {
        let name = w.hf_name();
        let shape = w.shape(&self.config);
        let t = self
            .source
            .get(&name, device)?
            .ok_or_else(|| ModelError::Load(format!("tensor {name} is missing")))?;
        if t.dims() != shape {
            return Err(ModelError::Load(format!(
                "tensor {name} has shape {:?}, config.json implies {shape:?}",
                t.dims()
            )));
        }
        Ok(t)
    }
}

/// A GGUF file (llama or qwen2 architecture).
pub struct GgufCheckpoint {
    pub config: ModelConfig,
    /// Metadata and tensor index (the tokenizer's vocabulary is in here too).
    pub content: gguf_file::Content,
    file: File,
}

impl GgufCheckpoint {
    /// Reads the metadata and the tensor index, and checks them before anything is allocated
    /// from them: every tensor's declared size lies within the file, and every tensor the
    /// config implies is there with its shape (a clear error for truncated or inconsistent
    /// files, never a panic or an allocation the size of a wrong count).
    pub fn open(path: &Path) -> Result<GgufCheckpoint, ModelError> {
        let mut file = File::open(path).map_err(io(path))?;
        let bad = |m: String| ModelError::Load(format!("{}: {m}", path.display()));
        let content = gguf_file::Content::read(&mut file).map_err(|e| bad(e.to_string()))?;
        let file_len = file.metadata().map_err(io(path))?.len();
        check_tensor_extents(&content, file_len).map_err(bad)?;
        let config = ModelConfig::from_gguf(&content)?;
        check_tensors_present(&content, &config).map_err(bad)?;
        Ok(GgufCheckpoint {
            config,
            content,
            file,
        })
    }

    /// Whether the file has this tensor.
    pub fn contains(&self, w: Weight) -> bool {
        self.content.tensor_infos.contains_key(&w.gguf_name())
    }

    /// Reads a tensor as stored (quantized or not), checking its shape against the metadata. Q
    /// and K rows are in llama.cpp's order (adjacent rotary pairs).
    pub fn qtensor(&self, w: Weight, device: &Device) -> Result<QTensor, ModelError> {
        let name = w.gguf_name();
        let mut reader = &self.file;
        let t = self
            .content
            .tensor(&mut reader, &name, device)
            .map_err(|e| ModelError::Load(format!("GGUF tensor {name}: {e}")))?;
        let shape = w.shape(&self.config);
        if t.shape().dims() != shape {
            return Err(ModelError::Load(format!(
                "GGUF tensor {name} has shape {:?}, metadata implies {shape:?}",
                t.shape().dims()
            )));
        }
        Ok(t)
    }

    /// A tensor dequantized to `dtype`, in Hugging Face layout: for `llama` files, llama.cpp's
    /// converter permutes the rows of Q and K so that rotary pairs are adjacent; this undoes it.
    pub fn dense(&self, w: Weight, dtype: DType, device: &Device) -> Result<Tensor, ModelError> {
        let name = w.gguf_name();
        let t = self
            .qtensor(w, device)?
            .dequantize(device)
            .map_err(ce(&name))?;
        let heads = match w {
            _ if !self.config.architecture.gguf_rope_interleaved() => None,
            Weight::Layer(_, LayerWeight::Q) => Some(self.config.num_heads),
            Weight::Layer(_, LayerWeight::K) => Some(self.config.num_kv_heads),
            _ => None,
        };
        let t = match heads {
            Some(n) => unpermute_rotary_rows(&t, n).map_err(ce(&name))?,
            None => t,
        };
        t.to_dtype(dtype).map_err(ce(&name))
    }

    /// Gives up the file, keeping the metadata.
    pub fn into_content(self) -> gguf_file::Content {
        self.content
    }
}

/// Every tensor's element count and byte size without overflow, whole blocks, and its data
/// within the file.
fn check_tensor_extents(ct: &gguf_file::Content, file_len: u64) -> Result<(), String> {
    for (name, t) in &ct.tensor_infos {
        let dims = t.shape.dims();
        let elems = dims
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or_else(|| format!("tensor {name}: element count of {dims:?} overflows"))?;
        let (block, size) = (
            t.ggml_dtype.block_size() as u64,
            t.ggml_dtype.type_size() as u64,
        );
        if elems % block != 0 {
            return Err(format!(
                "tensor {name}: {elems} elements are not whole {:?} blocks of {block}",
                t.ggml_dtype
            ));
        }
        let end = (elems / block)
            .checked_mul(size)
            .and_then(|b| b.checked_add(t.offset))
            .and_then(|b| b.checked_add(ct.tensor_data_offset));
        if end.is_none_or(|end| end > file_len) {
            return Err(format!(
                "tensor {name} ({:?} {dims:?} at offset {}) extends past the end of the file ({file_len} bytes): truncated or corrupt",
                t.ggml_dtype, t.offset
            ));
        }
    }
    Ok(())
}

/// Every tensor the config implies is in the file with that shape.
fn check_tensors_present(ct: &gguf_file::Content, c: &ModelConfig) -> Result<(), String> {
    // Each layer has at least 9 tensors: bounds the layer count before listing the names.
    if c.num_layers > ct.tensor_infos.len() / LayerWeight::ALL.len() {
        return Err(format!(
            "the metadata declares {} layers, the file has {} tensors",
            c.num_layers,
            ct.tensor_infos.len()
        ));
    }
    for w in Weight::all(c) {
        let name = w.gguf_name();
        let t = ct
            .tensor_infos
            .get(&name)
            .ok_or_else(|| format!("tensor {name} is missing"))?;
        let want = w.shape(c);
        // GGUF stores norms and biases as vectors and matrices as [out, in].
        if t.shape.dims() != want {
            return Err(format!(
                "tensor {name} has shape {:?}, the metadata implies {want:?}",
                t.shape.dims()
            ));
        }
    }
    Ok(())
}

/// Inverse of llama.cpp's `permute` for Q/K (`[heads, 2, d/2, in]` -> `[heads, d/2, 2, in]`):
/// row `h*d + 2*i + c` of the GGUF matrix is row `h*d + c*d/2 + i` of the Hugging Face one.
fn unpermute_rotary_rows(t: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = t.dims2()?;
    let d = out / heads;
    t.reshape((heads, d / 2, 2, inp))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // HF rows 0..8 of one head with d = 8: GGUF row 2i+c holds HF row c*4+i.
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let gguf: Vec<f32> = (0..8)
            .map(|r| {
                let (i, c) = (r / 2, r % 2);
                hf[c * 4 + i]
            })
            .collect();
        let g = Tensor::from_vec(gguf, (8, 1), &Device::Cpu).unwrap();
        let back = unpermute_rotary_rows(&g, 1).unwrap();
        assert_eq!(back.flatten_all().unwrap().to_vec1::<f32>().unwrap(), hf);
    }
}
