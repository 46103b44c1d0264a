//! `mathcoder view`: a local, read-only results browser.
//!
//! [`Index::build`] reads eval runs, the authors' output files (`-correct`/`-wrong` pairs as one
//! run), MathCodeInstruct training files and `train`'s `log.jsonl` once, grades the authors'
//! records once with `eval` (our run records keep their stored verdicts), and keeps them in
//! memory; [`router`] serves JSON over that index (list and filter problems, one problem, two
//! runs side by side, training records with their loss mask, training curves), server-drawn SVG
//! charts ([`svg`]) and a page embedded in the binary (plain HTML/JS with KaTeX and
//! highlight.js, vendored under `assets/vendor` with their licences; nothing is fetched from
//! the network).
//!
//! Safety: every model-written string is escaped where it is written (the page sets
//! `textContent`, KaTeX runs with `trust: false`, the server-rendered first page and the SVGs
//! escape with `html-escape`), pages are sent with a Content-Security-Policy that allows no
//! inline script, and every route is a `GET`.

pub mod api;
pub mod assets;
#[cfg(feature = "browser")]
pub mod browser;
pub mod index;
pub mod query;
pub mod svg;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

pub use api::router;
pub use index::{Index, IndexOptions};

/// Errors building the index or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(transparent)]
    Files(#[from] mathcoder_lce::FilesError),
    #[error(transparent)]
    Record(#[from] mathcoder_lce::RecordError),
    #[error(transparent)]
    RunRecord(#[from] mathcoder_lce::run::RunRecordError),
    #[error(transparent)]
    Eval(#[from] mathcoder_eval::EvalError),
    #[error(transparent)]
    Train(#[from] mathcoder_train::TrainError),
    #[error(transparent)]
    Data(#[from] mathcoder_data::seed::DataError),
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nothing to show: no *.jsonl or *.jsonl.gz files under {0}")]
    Empty(PathBuf),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bound server: its address, and the future that serves until dropped.
pub struct Bound {
    pub addr: SocketAddr,
    listener: tokio::net::TcpListener,
    index: Arc<Index>,
}

impl Bound {
    /// Binds `host:port` (port 0: a free port).
    pub async fn bind(index: Index, host: &str, port: u16) -> Result<Bound, ViewError> {
        let addr = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .map_err(|source| ViewError::Bind {
                addr: addr.clone(),
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| ViewError::Bind { addr, source })?;
        Ok(Bound {
            addr,
            listener,
            index: Arc::new(index),
        })
    }

    /// The URL of the first page.
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Serves until the process ends (or the future is dropped).
    pub async fn serve(self) -> Result<(), ViewError> {
        let addr = self.addr.to_string();
        axum::serve(self.listener, router(self.index))
            .await
            .map_err(|source| ViewError::Bind { addr, source })
    }
}
