//! The one place a [`BackendSpec`] becomes a [`Backend`]: the native engine here, the HTTP
//! clients through `mathcoder-llm`.

use candle_core::quantized::GgmlDType;
use candle_core::DType;
use mathcoder_llm::{Backend, BackendKind, BackendSpec, NativeDtype, NativeQuant};
use std::path::Path;
use std::sync::Arc;

use crate::native::{NativeBackend, NativeConfig};
use crate::{Engine, EngineError, LoadOptions};

/// Why a backend could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Backend(#[from] mathcoder_llm::BackendError),
    /// The engine's error names the path.
    #[error(transparent)]
    Load(#[from] EngineError),
}

/// Loads the native engine a spec names (model path, tokenizer, dtype, threads). Returns the
/// engine and a short name for it (the file or directory name).
pub fn load_native(spec: &BackendSpec) -> Result<(Engine, String), BuildError> {
    spec.validate()?;
    let Some(path) = spec.model_path() else {
        return Err(mathcoder_llm::BackendError::Config(
            "the native backend needs --model DIR|FILE.gguf".into(),
        )
        .into());
    };
    if let Some(n) = spec.native.threads {
        // candle's CPU kernels read this when they first run.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let dtype = |d: NativeDtype| match d {
        NativeDtype::F32 => DType::F32,
        NativeDtype::Bf16 => DType::BF16,
        NativeDtype::F16 => DType::F16,
    };
    let opts = LoadOptions {
        dtype: spec.native.dtype.map(dtype),
        kv_dtype: spec.native.kv_dtype.map(dtype),
        quantize: spec.native.quantize.map(|q| match q {
            NativeQuant::Q8_0 => GgmlDType::Q8_0,
            NativeQuant::Q4_0 => GgmlDType::Q4_0,
            NativeQuant::Q4_1 => GgmlDType::Q4_1,
            NativeQuant::Q5_0 => GgmlDType::Q5_0,
            NativeQuant::Q5_1 => GgmlDType::Q5_1,
        }),
        ..LoadOptions::default()
    };
    let engine = crate::load(&path, spec.native.tokenizer.as_deref(), &opts)?;
    Ok((engine, short_name(&path)))
}

fn short_name(path: &Path) -> String {
    path.file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("model")
        .to_string()
}

/// Builds the backend a spec names: the native engine on its own thread, or an HTTP client.
pub fn backend(spec: &BackendSpec) -> Result<Arc<dyn Backend>, BuildError> {
    if spec.kind != BackendKind::Native {
        return Ok(spec.build_http()?);
    }
    let (engine, name) = load_native(spec)?;
    Ok(Arc::new(NativeBackend::start(
        engine,
        NativeConfig {
            max_batch: spec.native.max_batch.max(1),
            cache_bytes: spec.native.kv_cache_mb << 20,
        },
        &name,
    )))
}
