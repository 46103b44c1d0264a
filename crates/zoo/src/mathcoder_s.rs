//! MathCoder-S, the model `solve` and `eval` use when none is given: the pinned
//! SmolLM2-135M-Instruct ([`crate::SMOLLM2_135M`]) with MathCoder's tokens added and the LoRA
//! adapter this repository ships (`models/mathcoder-s/adapter/`, trained by `mathcoder train`;
//! its model card is `models/mathcoder-s/README.md`) merged in.
//!
//! The merged checkpoint is built once per adapter (its directory name carries the adapter's
//! hash), in a temporary directory renamed into place, under [`mathcoder_model::models_dir`].

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

use crate::ZooError;

/// The model's name in messages and run records.
pub const NAME: &str = "mathcoder-s";

/// Where the shipped adapter is: `$MATHCODER_ADAPTER`, `./models/mathcoder-s/adapter`, or the
/// one in the source tree this binary was built from.
pub fn shipped_adapter() -> Result<PathBuf, ZooError> {
    let mut tried = Vec::new();
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("MATHCODER_ADAPTER").filter(|p| !p.is_empty()) {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from("models/mathcoder-s/adapter"));
    candidates.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/mathcoder-s/adapter"));
    for c in candidates {
        if c.join(mathcoder_train::lora::ADAPTER_FILE).is_file() {
            return Ok(c);
        }
        tried.push(c.display().to_string());
    }
    Err(ZooError::Io(format!(
        "the MathCoder-S adapter was not found (looked in {}); run from the repository or set $MATHCODER_ADAPTER",
        tried.join(", ")
    )))
}

/// First 12 hex digits of the sha256 of the adapter's weights and config.
pub fn adapter_id(adapter: &Path) -> Result<String, ZooError> {
    let mut h = Sha256::new();
    for f in [
        mathcoder_train::lora::ADAPTER_CONFIG,
        mathcoder_train::lora::ADAPTER_FILE,
    ] {
        let p = adapter.join(f);
        h.update(std::fs::read(&p).map_err(|e| ZooError::Io(format!("{}: {e}", p.display())))?);
    }
    Ok(crate::hex(&h.finalize())[..12].to_string())
}

/// The merged MathCoder-S checkpoint directory (an f32 Hugging Face directory), built on first
/// use from the pinned base (fetched with `python`'s pip when absent) and `adapter`.
pub fn merged(adapter: &Path, python: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, ZooError> {
    let root = mathcoder_model::models_dir();
    let dir = root.join(format!("{NAME}-{}", adapter_id(adapter)?));
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        return Ok(dir);
    }
    let base = crate::fetch(&crate::SMOLLM2_135M, python, progress)?;
    progress(&format!(
        "merging the {NAME} adapter into {}",
        crate::SMOLLM2_135M.name
    ));
    let tmp = root.join(format!(".building-{NAME}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let built = mathcoder_train::trainer::write_prepared_model(&base, Some(adapter), &tmp)
        .map_err(|e| ZooError::Io(format!("building {NAME}: {e}")));
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another process built it first.
        Err(_) if dir.join("model.safetensors").is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(ZooError::Io(format!("{}: {e}", dir.display()))),
    }
    progress(&format!("{NAME} ready at {}", dir.display()));
    Ok(dir)
}

/// Copies a LoRA checkpoint's adapter (config and weights, not the optimizer state) to `out`
/// for shipping, its weights stored as bf16 (half the bytes; merging adds them to f32 weights,
/// so the rounding is 2^-9 of each adapter delta). Returns the bytes written.
pub fn pack_adapter(checkpoint: &Path, out: &Path) -> Result<u64, ZooError> {
    use mathcoder_train::lora::{ADAPTER_CONFIG, ADAPTER_FILE};
    let err = |e: String| ZooError::Io(format!("packing {}: {e}", checkpoint.display()));
    std::fs::create_dir_all(out).map_err(|e| err(e.to_string()))?;
    let tensors =
        candle_core::safetensors::load(checkpoint.join(ADAPTER_FILE), &candle_core::Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
    let half: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| t.to_dtype(candle_core::DType::BF16).map(|t| (k, t)))
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    candle_core::safetensors::save(&half, out.join(ADAPTER_FILE))
        .map_err(|e| err(e.to_string()))?;
    std::fs::copy(checkpoint.join(ADAPTER_CONFIG), out.join(ADAPTER_CONFIG))
        .map_err(|e| err(e.to_string()))?;
    let size = |f: &str| std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
    Ok(size(ADAPTER_FILE) + size(ADAPTER_CONFIG))
}
