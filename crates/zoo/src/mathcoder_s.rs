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
/// so the rounding is 2^-9 of each adapter delta). `base`, when given, replaces the config's
/// `base_model_name_or_path` (the training machine's local path) with a name others can
/// resolve. Returns the bytes written.
pub fn pack_adapter(checkpoint: &Path, out: &Path, base: Option<&str>) -> Result<u64, ZooError> {
    use mathcoder_train::lora::{ADAPTER_CONFIG, ADAPTER_FILE};
    let err = |e: String| ZooError::Io(format!("packing {}: {e}", checkpoint.display()));
    // Both files are read and converted before anything is written, so a bad checkpoint
    // leaves an adapter already at `out` as it was.
    let config_path = checkpoint.join(ADAPTER_CONFIG);
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path).map_err(|e| err(e.to_string()))?,
    )
    .map_err(|e| err(format!("{}: {e}", config_path.display())))?;
    if let (Some(base), Some(obj)) = (base, config.as_object_mut()) {
        obj.insert("base_model_name_or_path".into(), base.into());
    }
    let text = serde_json::to_string_pretty(&config).map_err(|e| err(e.to_string()))?;
    let tensors =
        candle_core::safetensors::load(checkpoint.join(ADAPTER_FILE), &candle_core::Device::Cpu)
            .map_err(|e| err(e.to_string()))?;
    let half: std::collections::HashMap<String, candle_core::Tensor> = tensors
        .into_iter()
        .map(|(k, t)| t.to_dtype(candle_core::DType::BF16).map(|t| (k, t)))
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    std::fs::create_dir_all(out).map_err(|e| err(e.to_string()))?;
    candle_core::safetensors::save(&half, out.join(ADAPTER_FILE))
        .map_err(|e| err(e.to_string()))?;
    std::fs::write(out.join(ADAPTER_CONFIG), text + "\n").map_err(|e| err(e.to_string()))?;
    let size = |f: &str| std::fs::metadata(out.join(f)).map(|m| m.len()).unwrap_or(0);
    Ok(size(ADAPTER_FILE) + size(ADAPTER_CONFIG))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use mathcoder_train::lora::{ADAPTER_CONFIG, ADAPTER_FILE};

    /// The committed adapter fits the pinned base's shapes (SmolLM2-135M: hidden 576, 30
    /// layers, 3 KV heads of 64, FFN 1536) and MathCoder's 8 token ids after its 49,152-token
    /// vocabulary, so the default model can be built from it.
    #[test]
    fn shipped_adapter_fits_the_pinned_base() {
        let dir = shipped_adapter().unwrap();
        let (config, ids) = mathcoder_train::lora::Adapter::read_config(&dir).unwrap();
        assert_eq!(ids, (49152..49160).collect::<Vec<u32>>());
        let r = config.rank;
        let t = candle_core::safetensors::load(dir.join(ADAPTER_FILE), &Device::Cpu).unwrap();
        let (hidden, kv, ffn) = (576, 192, 1536);
        let mut lora = 0;
        for (name, w) in &t {
            assert_eq!(w.dtype(), DType::BF16, "{name}");
            if name.contains("token_adapter") {
                assert_eq!(w.dims(), [8, hidden], "{name}");
                continue;
            }
            let (inp, out) = match name.split('.').rev().nth(2).unwrap() {
                "q_proj" | "o_proj" => (hidden, hidden),
                "k_proj" | "v_proj" => (hidden, kv),
                "gate_proj" | "up_proj" => (hidden, ffn),
                "down_proj" => (ffn, hidden),
                other => panic!("unexpected module {other} in {name}"),
            };
            let want = if name.contains("lora_A") {
                [r, inp]
            } else {
                [out, r]
            };
            assert_eq!(w.dims(), want, "{name}");
            lora += 1;
        }
        assert_eq!(lora, 30 * config.targets.len() * 2);
        assert_eq!(adapter_id(&dir).unwrap().len(), 12);
    }

    #[test]
    fn packed_adapter_is_bf16_without_the_training_path() {
        let ckpt = tempfile::tempdir().unwrap();
        let a = Tensor::new(&[[0.5f32, -1.25], [3.0, 1e-3]], &Device::Cpu).unwrap();
        let tensors = std::collections::HashMap::from([("w.lora_A.weight".to_string(), a)]);
        candle_core::safetensors::save(&tensors, ckpt.path().join(ADAPTER_FILE)).unwrap();
        std::fs::write(
            ckpt.path().join(ADAPTER_CONFIG),
            r#"{"r": 2, "base_model_name_or_path": "/home/me/runs/base"}"#,
        )
        .unwrap();
        std::fs::write(ckpt.path().join("optimizer.safetensors"), b"state").unwrap();
        let out = tempfile::tempdir().unwrap();
        let dir = out.path().join("adapter");
        let bytes = pack_adapter(ckpt.path(), &dir, Some("org/base")).unwrap();
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [ADAPTER_CONFIG, ADAPTER_FILE]);
        let size = |f: &str| std::fs::metadata(dir.join(f)).unwrap().len();
        assert_eq!(bytes, size(ADAPTER_FILE) + size(ADAPTER_CONFIG));
        let t = candle_core::safetensors::load(dir.join(ADAPTER_FILE), &Device::Cpu).unwrap();
        let w = &t["w.lora_A.weight"];
        assert_eq!(w.dtype(), DType::BF16);
        let back: Vec<f32> = w
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(&back[..3], &[0.5, -1.25, 3.0]);
        assert!((back[3] - 1e-3).abs() < 1e-5);
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(cfg["base_model_name_or_path"], "org/base");
        assert_eq!(cfg["r"], 2);
        // Without a base name the config is kept as it was.
        let dir2 = out.path().join("kept");
        pack_adapter(ckpt.path(), &dir2, None).unwrap();
        let cfg: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir2.join(ADAPTER_CONFIG)).unwrap())
                .unwrap();
        assert_eq!(cfg["base_model_name_or_path"], "/home/me/runs/base");
    }
}
