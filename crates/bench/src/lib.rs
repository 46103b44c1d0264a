//! Benchmark harnesses behind `mathcoder bench ...` (the `mathcoder-bench` binary), and the
//! replay server command. Each measures against a reference in the same run: a real Jupyter
//! kernel, the authors' 4-worker scheme, transformers and llama.cpp, PyTorch training.

pub mod data;
pub mod engine;
pub mod grade;
pub mod replay;
pub mod runtime;
pub mod sandbox;
pub mod train;
pub mod view;
