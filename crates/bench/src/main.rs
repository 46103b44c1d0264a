//! `mathcoder-bench`: speed figures (what `mathcoder bench ...` runs), and the replay server.

use clap::{Parser, Subcommand};
use mathcoder_bench::{data, engine, grade, replay, runtime, sandbox, train, view};
use mathcoder_cli::args::{GradeArgs, SandboxArgs};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "mathcoder bench",
    version,
    about = "MathCoder in Rust: speed figures"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Sandbox latency: session start and cell round trips (p50/p99), cells per second.
    Sandbox {
        /// Sessions to start (sequentially).
        #[arg(long, default_value_t = 200)]
        sessions: usize,
        /// Trivial cells per session.
        #[arg(long, default_value_t = 5)]
        cells: usize,
        /// Also measure a real Jupyter kernel the same way (installs jupyter_client and ipykernel
        /// into a separate benchmark environment).
        #[arg(long)]
        jupyter: bool,
        #[command(flatten)]
        sandbox: SandboxArgs,
    },
    /// The generate/execute loop against a replay server: concurrency without serialisation
    /// (per-token latency) and rounds per second (zero latency) vs the authors' 4 workers.
    Runtime(runtime::RuntimeArgs),
    /// A data run (`data distill`, the LCE teacher) against a replay server with per-token
    /// latency, many problems at once: wall time vs the slowest teacher call chain alone.
    Data(data::DataBenchArgs),
    /// The native engine: load time, prefill/decode tokens/s, batched decode, peak memory, next
    /// to transformers and llama.cpp on the same weights (`--reference-python`).
    Engine(engine::EngineBenchArgs),
    /// Training tokens/s (forward, backward, clipping, AdamW) and peak memory on a small Llama
    /// and the SmolLM2-135M shape, next to PyTorch on the same shape, batch and threads
    /// (`--python`).
    Train(train::TrainBenchArgs),
    /// Grading throughput on one core over released outputs, and worst-case inputs.
    Grade {
        /// Directory of output files (default: the vendored released outputs).
        dir: Option<PathBuf>,
        /// Passes over the data.
        #[arg(long, default_value_t = 3)]
        passes: usize,
        #[command(flatten)]
        grading: GradeArgs,
    },
    /// The results browser (`mathcoder view`) in headless Chromium: opening and filtering a
    /// run (MathCoder-L-7B's MATH outputs, and them repeated to 5,000 records).
    View(view::ViewBenchArgs),
    /// Serve recorded MathCoder blocks over the TGI and OpenAI protocols (tests, benchmarks).
    ReplayServer(replay::ReplayArgs),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Bench::Sandbox {
            sessions,
            cells,
            jupyter,
            sandbox: s,
        } => sandbox::bench(sessions, cells, jupyter, s),
        Bench::Runtime(a) => runtime::runtime(a),
        Bench::Data(a) => data::data(a),
        Bench::Engine(a) => engine::engine(a),
        Bench::Train(a) => train::train(a),
        Bench::Grade {
            dir,
            passes,
            grading,
        } => grade::grade(dir, passes, grading),
        Bench::ReplayServer(a) => replay::replay(a),
        Bench::View(a) => view::view(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
