//! `mathcoder bench ...`: speed figures.

use anyhow::{bail, Context, Result};
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::record::{read_jsonl, OutputRecord};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::{data_dir, GradeArgs};

#[derive(clap::Subcommand, Debug)]
pub enum Bench {
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
        sandbox: super::sandbox::SandboxArgs,
    },
    /// The generate/execute loop against a replay server: concurrency without serialisation
    /// (per-token latency) and rounds per second (zero latency) vs the authors' 4 workers.
    Runtime(super::bench_runtime::RuntimeArgs),
    /// The native engine: load time, prefill/decode tokens/s, batched decode, peak memory, next
    /// to transformers and llama.cpp on the same weights (`--reference-python`).
    Engine(super::bench_engine::EngineBenchArgs),
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
}

pub fn run(b: Bench) -> Result<i32> {
    match b {
        Bench::Sandbox {
            sessions,
            cells,
            jupyter,
            sandbox,
        } => super::sandbox::bench(sessions, cells, jupyter, sandbox),
        Bench::Runtime(a) => super::bench_runtime::runtime(a),
        Bench::Engine(a) => super::bench_engine::engine(a),
        Bench::Grade {
            dir,
            passes,
            grading,
        } => grade(dir, passes, grading),
    }
}

fn grade(dir: Option<PathBuf>, passes: usize, grading: GradeArgs) -> Result<i32> {
    let dir = match dir {
        Some(d) => d,
        None => data_dir()
            .context("no vendored data found; pass a directory")?
            .join("released-outputs"),
    };
    let files = mathcoder_eval::table2::find_output_files(&dir)?;
    // Load everything first: the benchmark times grading only.
    let mut pairs: Vec<(Dataset, String, String, String)> = Vec::new();
    for f in &files {
        let d = Dataset::from_path(&f.to_string_lossy())
            .with_context(|| format!("dataset of {}", f.display()))?;
        for n in read_jsonl::<OutputRecord>(f)? {
            let r = n.record;
            pairs.push((
                d,
                r.ground_truth.answer_text(),
                r.completion.clone(),
                r.question(),
            ));
        }
    }
    if pairs.is_empty() {
        bail!("no records under {}", dir.display());
    }
    let grader = Grader::new(grading.options());
    let mut times: Vec<Duration> = Vec::with_capacity(pairs.len() * passes);
    let start = Instant::now();
    let mut correct = 0usize;
    for _ in 0..passes.max(1) {
        for (d, gold, resp, q) in &pairs {
            let t = Instant::now();
            let v = grader.grade(*d, gold, resp, Some(q));
            times.push(t.elapsed());
            correct += v.correct as usize;
        }
    }
    let wall = start.elapsed();
    times.sort_unstable();
    let n = times.len();
    let pct = |p: f64| times[((n as f64 - 1.0) * p) as usize];
    println!(
        "grading throughput, one thread, {} pairs x {} passes ({} correct per pass)",
        pairs.len(),
        passes,
        correct / passes.max(1)
    );
    println!("  pairs/s          {:.0}", n as f64 / wall.as_secs_f64());
    println!("  per pair median  {:.1} us", pct(0.5).as_secs_f64() * 1e6);
    println!("  per pair p99     {:.1} us", pct(0.99).as_secs_f64() * 1e6);
    println!(
        "  per pair max     {:.1} us",
        times[n - 1].as_secs_f64() * 1e6
    );
    // Adversarial inputs: bounded cost.
    let nasty: Vec<(&str, String)> = vec![
        ("10^{10^{10}}", "10^{10^{10}}".to_string()),
        ("huge factorial", "(10^{6})! + 1".to_string()),
        ("2006! vs 2004!", "\\frac{1}{2006!}".to_string()),
        (
            "deep nesting",
            format!("{}1{}", "\\frac{1}{".repeat(200), "}".repeat(200)),
        ),
        ("power tower", "2^{2^{2^{2^{2^{2^{2}}}}}}".to_string()),
        (
            "long sum",
            (0..400)
                .map(|i| format!("{i}x^{{{i}}}"))
                .collect::<Vec<_>>()
                .join("+"),
        ),
        ("many parens", "(".repeat(3000)),
        ("long prose", "The answer is unclear. ".repeat(2000)),
    ];
    println!("worst-case inputs (gold vs answer), one pair each:");
    let mut worst = Duration::ZERO;
    for (name, s) in &nasty {
        let t = Instant::now();
        let _ = grader.grade(Dataset::Math, "\\frac{1}{2004!}", s, None);
        let _ = grader.grade(Dataset::Math, s, s, None);
        let _ = grader.grade(Dataset::Generic, s, "x+1", None);
        let e = t.elapsed() / 3;
        worst = worst.max(e);
        println!("  {:<16} {:>9.1} us", name, e.as_secs_f64() * 1e6);
    }
    println!("  max              {:>9.1} us", worst.as_secs_f64() * 1e6);
    Ok(0)
}
