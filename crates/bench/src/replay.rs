//! `mathcoder-bench replay-server`: recorded MathCoder blocks served over the TGI and OpenAI
//! protocols (for tests and benchmarks; never on the inference path).

use anyhow::{Context, Result};
use mathcoder_cli::args::data_dir;
use std::path::PathBuf;
use std::time::Duration;

#[derive(clap::Args, Debug)]
pub struct ReplayArgs {
    /// Output files or directories (default: the vendored released outputs).
    inputs: Vec<PathBuf>,
    /// Serve each input as its own recording set, chosen by the request's seed (set
    /// `seed mod inputs`): samples with seeds s, s+1, s+2 get the 1st, 2nd, 3rd input's solutions.
    #[arg(long)]
    per_seed: bool,
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: std::net::SocketAddr,
    /// Delay per generated token, in milliseconds.
    #[arg(long, default_value_t = 0.0)]
    latency_ms: f64,
    /// Generations served at once.
    #[arg(long)]
    slots: Option<usize>,
    /// Inject a fault: 500, hang, malformed, close.
    #[arg(long, value_enum)]
    fault: Option<mathcoder_replay::Fault>,
    /// Every N-th request gets the fault.
    #[arg(long, default_value_t = 1)]
    fault_every: u64,
    /// Only this many faults (0: unlimited).
    #[arg(long, default_value_t = 0)]
    fault_limit: u64,
    /// Reject vLLM's extension fields with a 400, as OpenAI's API does.
    #[arg(long)]
    openai_strict: bool,
    /// Imitate llama.cpp's llama-server started without `--special`: special tokens neither
    /// rendered nor honoured as stops (OpenAI protocol).
    #[arg(long)]
    drops_special_tokens: bool,
}

pub fn replay(a: ReplayArgs) -> Result<i32> {
    use mathcoder_replay::{serve_sets, Recordings, ReplayConfig};
    let inputs = if a.inputs.is_empty() {
        vec![data_dir()
            .context("no vendored data; pass output files")?
            .join("released-outputs")]
    } else {
        a.inputs.clone()
    };
    let sets: Vec<Vec<PathBuf>> = if a.per_seed {
        inputs.iter().map(|i| vec![i.clone()]).collect()
    } else {
        vec![inputs]
    };
    let mut recs = Vec::new();
    for set in &sets {
        recs.push(Recordings::from_files(&mathcoder_lce::record_files(set)?)?);
    }
    let config = ReplayConfig {
        per_token_latency: Duration::from_secs_f64(a.latency_ms.max(0.0) / 1000.0),
        slots: a.slots,
        fault: a.fault,
        fault_every: a.fault_every,
        fault_limit: a.fault_limit,
        openai_strict: a.openai_strict,
        drops_special_tokens: a.drops_special_tokens,
    };
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let n: Vec<String> = recs.iter().map(|r| r.len().to_string()).collect();
        let server = serve_sets(recs, config, a.addr).await?;
        eprintln!(
            "replaying {} recorded solutions on {} (TGI: /generate, OpenAI: /v1/completions)",
            n.join(" + "),
            server.url()
        );
        println!("{}", server.url());
        tokio::signal::ctrl_c().await?;
        server.stop();
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}
