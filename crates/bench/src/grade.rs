//! `mathcoder bench grade`: grading throughput on one core over released outputs, and
//! worst-case inputs.

use anyhow::{bail, Context, Result};
use mathcoder_grade::{Dataset, Grader};
use mathcoder_lce::record::{read_jsonl, OutputRecord};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mathcoder_cli::args::{data_dir, GradeArgs};

pub fn grade(dir: Option<PathBuf>, passes: usize, grading: GradeArgs) -> Result<i32> {
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
