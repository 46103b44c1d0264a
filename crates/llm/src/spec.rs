//! Which backend to use, as one value parsed from the command line (or a config) and turned into
//! a [`Backend`] in one place.
//!
//! The HTTP backends are built here ([`BackendSpec::build_http`]); the native engine lives in
//! `mathcoder-engine` (which depends on this crate), so its `backend(&BackendSpec)` builds every
//! kind, delegating the HTTP ones to this module.

use std::path::PathBuf;
use std::sync::Arc;

use crate::chat::ChatClient;
use crate::http::HttpConfig;
use crate::{openai::OpenAi, tgi::Tgi, Backend, BackendError};

/// The served model name sent to OpenAI-compatible servers when none is given.
pub const DEFAULT_OPENAI_MODEL: &str = "mathcoder";
/// The endpoint used when none is given (TGI's and most servers' local default).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

/// The kinds of backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum BackendKind {
    /// text-generation-inference (`POST /generate`), as the authors deployed it.
    #[default]
    Tgi,
    /// OpenAI-compatible completions (vLLM, SGLang, llama.cpp's llama-server, OpenAI).
    Openai,
    /// This program's own engine (needs a model path).
    Native,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Tgi => "tgi",
            BackendKind::Openai => "openai",
            BackendKind::Native => "native",
        }
    }
}

/// Dtype of the native engine's dense weights on the CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NativeDtype {
    F32,
    Bf16,
    F16,
}

/// A quantization the native engine applies at load to a dense (Hugging Face) checkpoint's
/// matrices, so that an f32 fine-tune runs on the same kernels as a GGUF file of that type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum NativeQuant {
    #[cfg_attr(feature = "clap", value(name = "q8_0"))]
    Q8_0,
    #[cfg_attr(feature = "clap", value(name = "q4_0"))]
    Q4_0,
    #[cfg_attr(feature = "clap", value(name = "q4_1"))]
    Q4_1,
    #[cfg_attr(feature = "clap", value(name = "q5_0"))]
    Q5_0,
    #[cfg_attr(feature = "clap", value(name = "q5_1"))]
    Q5_1,
}

/// Options of the native engine.
#[derive(Clone, Debug, PartialEq)]
pub struct NativeSpec {
    /// tokenizer.json to use instead of the checkpoint's (or a GGUF file's vocabulary).
    pub tokenizer: Option<PathBuf>,
    /// Compute dtype of dense weights (default: f32 on the CPU).
    pub dtype: Option<NativeDtype>,
    /// Quantize a dense checkpoint's matrices at load (none: keep them dense).
    pub quantize: Option<NativeQuant>,
    /// Dtype of the KV cache (default: the compute dtype); f16 halves its memory.
    pub kv_dtype: Option<NativeDtype>,
    /// CPU threads for matrix multiplies (default: all cores).
    pub threads: Option<usize>,
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// KV cache kept between rounds, in MiB.
    pub kv_cache_mb: usize,
}

impl Default for NativeSpec {
    fn default() -> Self {
        NativeSpec {
            tokenizer: None,
            dtype: None,
            quantize: None,
            kv_dtype: None,
            threads: None,
            max_batch: 32,
            kv_cache_mb: 4096,
        }
    }
}

/// Everything needed to build a backend.
#[derive(Clone, Debug)]
pub struct BackendSpec {
    pub kind: BackendKind,
    /// The server's base URL (HTTP kinds).
    pub endpoint: String,
    /// OpenAI-compatible servers: the served model's name. Native: the checkpoint directory or
    /// `.gguf` file.
    pub model: Option<String>,
    /// HTTP settings; `api_key` falls back to `$OPENAI_API_KEY` for the openai kind.
    pub http: HttpConfig,
    pub native: NativeSpec,
}

impl Default for BackendSpec {
    fn default() -> Self {
        BackendSpec {
            kind: BackendKind::default(),
            endpoint: DEFAULT_ENDPOINT.to_string(),
            model: None,
            http: HttpConfig::default(),
            native: NativeSpec::default(),
        }
    }
}

impl BackendSpec {
    /// An HTTP backend of `kind` at `endpoint` with default settings.
    pub fn http(kind: BackendKind, endpoint: &str) -> BackendSpec {
        BackendSpec {
            kind,
            endpoint: endpoint.to_string(),
            ..BackendSpec::default()
        }
    }

    /// Checks that the options fit the kind (e.g. TGI serves one model, native needs a path).
    pub fn validate(&self) -> Result<(), BackendError> {
        match (self.kind, &self.model) {
            (BackendKind::Tgi, Some(_)) => Err(BackendError::Config(
                "--model names an OpenAI-compatible server's model or the native engine's \
                 checkpoint; TGI serves one model"
                    .into(),
            )),
            (BackendKind::Native, None) => Err(BackendError::Config(
                "the native backend needs --model DIR|FILE.gguf".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The native checkpoint path (for the native kind).
    pub fn model_path(&self) -> Option<PathBuf> {
        self.model.as_ref().map(PathBuf::from)
    }

    /// For the HTTP kinds: whether anything listens at the endpoint, by a plain TCP connection
    /// (well under a second), so that a command can say at once that no server is running
    /// before it prepares anything else (the options are validated first). Only a refused connection is an error (the same
    /// first-contact [`BackendError::Unreachable`] the clients give); anything else (a slow
    /// network, a name that does not resolve here) is left to the clients and their retries.
    pub fn check_listening(&self) -> Result<(), BackendError> {
        self.validate()?;
        if self.kind == BackendKind::Native {
            return Ok(());
        }
        let Ok(url) = reqwest::Url::parse(&self.endpoint) else {
            return Ok(());
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(());
        };
        let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) else {
            return Ok(());
        };
        let mut refused = None;
        for addr in addrs {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused = Some(e),
                Err(_) => return Ok(()),
            }
        }
        match refused {
            Some(e) => Err(BackendError::Unreachable {
                url: self.endpoint.clone(),
                message: e.to_string(),
                first_contact: true,
            }),
            None => Ok(()),
        }
    }

    /// The OpenAI-compatible chat client at the endpoint (`/v1/chat/completions`, whatever
    /// `kind` says: chat is one protocol), for `model` (default [`DEFAULT_OPENAI_MODEL`]); the
    /// API key falls back to `$OPENAI_API_KEY`.
    pub fn build_chat(&self) -> Result<ChatClient, BackendError> {
        let mut http = self.http.clone();
        if http.api_key.is_none() {
            http.api_key = std::env::var("OPENAI_API_KEY").ok();
        }
        ChatClient::new(
            &self.endpoint,
            self.model.as_deref().unwrap_or(DEFAULT_OPENAI_MODEL),
            http,
        )
    }

    /// [`BackendSpec::check_listening`] for the chat client: every kind but native talks to
    /// `/v1/chat/completions` at the endpoint; native runs in this process, so nothing is
    /// checked but the spec itself.
    pub fn check_chat_listening(&self) -> Result<(), BackendError> {
        if self.kind == BackendKind::Native {
            return self.validate();
        }
        BackendSpec {
            kind: BackendKind::Openai,
            ..self.clone()
        }
        .check_listening()
    }

    /// Builds a TGI or OpenAI-compatible client. The native kind is built by
    /// `mathcoder_engine::backend`, which calls this for the others.
    pub fn build_http(&self) -> Result<Arc<dyn Backend>, BackendError> {
        self.validate()?;
        let mut http = self.http.clone();
        if self.kind == BackendKind::Openai && http.api_key.is_none() {
            http.api_key = std::env::var("OPENAI_API_KEY").ok();
        }
        Ok(match self.kind {
            BackendKind::Tgi => Arc::new(Tgi::new(&self.endpoint, http)?),
            BackendKind::Openai => Arc::new(OpenAi::new(
                &self.endpoint,
                self.model.as_deref().unwrap_or(DEFAULT_OPENAI_MODEL),
                http,
            )?),
            BackendKind::Native => {
                return Err(BackendError::Config(
                    "the native backend is built by the engine (mathcoder_engine::backend)".into(),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let mut s = BackendSpec::default();
        assert!(s.validate().is_ok());
        s.model = Some("x".into());
        assert!(s.validate().is_err());
        s.kind = BackendKind::Native;
        assert!(s.validate().is_ok());
        s.model = None;
        assert!(s.validate().unwrap_err().to_string().contains("--model"));
        assert!(BackendSpec::http(BackendKind::Native, "x")
            .build_http()
            .is_err());
    }

    #[test]
    fn a_closed_port_is_reported_at_once() {
        // Bind then drop a listener: nothing listens on that port afterwards.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let spec = BackendSpec::http(BackendKind::Tgi, &format!("http://127.0.0.1:{port}"));
        let t = std::time::Instant::now();
        let e = spec.check_listening().unwrap_err();
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(e.to_string().contains("--backend native"), "{e}");
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = BackendSpec::http(
            BackendKind::Openai,
            &format!("http://{}", open.local_addr().unwrap()),
        );
        assert!(spec.check_listening().is_ok());
        // The chat check: a chat server must listen too, but a native model runs in process
        // (`data distill --teacher chat --backend native` once failed here).
        let closed = format!("http://127.0.0.1:{port}");
        for kind in [BackendKind::Tgi, BackendKind::Openai] {
            assert!(BackendSpec::http(kind, &closed)
                .check_chat_listening()
                .is_err());
        }
        let mut native = BackendSpec::http(BackendKind::Native, &closed);
        assert!(native.check_chat_listening().is_err(), "no --model");
        native.model = Some("model.gguf".into());
        assert!(native.check_chat_listening().is_ok());
    }

    #[test]
    fn builds_http_clients() {
        let t = BackendSpec::http(BackendKind::Tgi, "http://127.0.0.1:9")
            .build_http()
            .unwrap();
        assert!(t.describe().starts_with("tgi"), "{}", t.describe());
        let o = BackendSpec::http(BackendKind::Openai, "http://127.0.0.1:9")
            .build_http()
            .unwrap();
        assert!(o.describe().contains("mathcoder"), "{}", o.describe());
    }
}
