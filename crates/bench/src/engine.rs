//! `mathcoder bench engine`: load time, prefill and decode tokens/s, batched decode and peak
//! memory of the native engine, next to transformers and llama.cpp on the same weights and
//! thread count (through `scripts/bench-engine-references.py`), with the memory-bandwidth bound.

use anyhow::{bail, Context, Result};
use mathcoder_engine::engine::{GenParams, Job};
use mathcoder_engine::Engine;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args, Debug)]
pub struct EngineBenchArgs {
    /// Checkpoint directories or .gguf files (each measured in its own process).
    #[arg(long, required = true, num_args = 1..)]
    model: Vec<PathBuf>,
    #[command(flatten)]
    native: mathcoder_cli::args::NativeArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 256)]
    prompt_tokens: usize,
    /// Tokens decoded for the decode measurement.
    #[arg(long, default_value_t = 32)]
    decode_tokens: usize,
    /// Times prefill and decode are each measured (from a fresh sequence); the fastest counts,
    /// here and in the references: on a shared machine a single pass varies by a third.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    repeats: u32,
    /// Sequences decoded together for the batched measurements, one measurement per count
    /// (`--batch 8 32`; 0: none).
    #[arg(long, num_args = 1.., default_values_t = [8])]
    batch: Vec<usize>,
    /// Python with torch/transformers and llama-cpp-python: also measure the references.
    #[arg(long)]
    reference_python: Option<PathBuf>,
    /// The reference driver.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/bench-engine-references.py"))]
    reference_script: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Internal: measure one model in this process.
    #[arg(long, hide = true)]
    child: bool,
}

/// The same deterministic prompt as the reference script.
fn prompt_ids(n: usize, vocab: usize) -> Vec<u32> {
    let mut ids = vec![1u32];
    let mut x: u64 = 12345;
    for _ in 1..n {
        x = (x * 1_103_515_245 + 12345) % (1 << 31);
        ids.push(3 + (x % (vocab as u64 - 100)) as u32);
    }
    ids
}

fn status_kb(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Sequential read bandwidth over a 1 GiB buffer, all threads, GB/s (best of 3).
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let n = (1usize << 30) / 8;
    let buf: Vec<u64> = (0..n as u64).collect();
    let mut best = 0f64;
    for _ in 0..3 {
        let t = Instant::now();
        let s: u64 = buf
            .par_chunks(1 << 16)
            .map(|c| c.iter().fold(0u64, |a, b| a.wrapping_add(*b)))
            .reduce(|| 0, |a, b| a.wrapping_add(b));
        std::hint::black_box(s);
        best = best.max((n * 8) as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn measure(engine: &Engine, load_s: f64, a: &EngineBenchArgs) -> Result<Value> {
    let vocab = engine.model.config.vocab_size;
    let params = |n: usize| GenParams {
        max_new_tokens: n,
        ..GenParams::default()
    };
    // Warm-up (thread pools, page faults).
    let mut s = engine.session();
    s.append(&prompt_ids(8, vocab));
    engine.generate(s, params(2))?;
    // Prefill (the prompt, up to its first token), then decode, `repeats` times.
    let prompt = prompt_ids(a.prompt_tokens.max(2), vocab);
    let (mut prefill_s, mut decode_s, mut decoded) = (f64::INFINITY, f64::INFINITY, 0);
    for _ in 0..a.repeats {
        let mut s = engine.session();
        s.append(&prompt);
        let t = Instant::now();
        let mut job = Job::new(s, params(a.decode_tokens + 1))?;
        engine.step(&mut [&mut job])?;
        while job.session.tokens.len() < prompt.len() {
            engine.step(&mut [&mut job])?;
        }
        prefill_s = prefill_s.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        while !job.is_done() {
            engine.step(&mut [&mut job])?;
        }
        decode_s = decode_s.min(t.elapsed().as_secs_f64());
        decoded = job.finish().0.tokens.len().saturating_sub(1);
    }
    // Batched decode: `n` sequences with 32-token prompts, stepped together.
    let mut batched = Vec::new();
    for &n in a.batch.iter().filter(|&&n| n > 0) {
        let mut jobs: Vec<Job> = (0..n)
            .map(|i| {
                let mut s = engine.session();
                let mut p = prompt_ids(32 + i, vocab);
                p.drain(1..1 + i);
                s.append(&p);
                Job::new(s, params(a.decode_tokens + 1))
            })
            .collect::<Result<_, _>>()?;
        {
            let mut refs: Vec<&mut Job> = jobs.iter_mut().collect();
            engine.step(&mut refs)?; // prefill + first token
        }
        let t = Instant::now();
        let mut steps = 0;
        while jobs.iter().any(|j| !j.is_done()) {
            let mut refs: Vec<&mut Job> = jobs.iter_mut().collect();
            engine.step(&mut refs)?;
            steps += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        let tokens: usize = jobs
            .into_iter()
            .map(|j| j.finish().0.tokens.len().saturating_sub(1))
            .sum();
        batched.push(json!({"sequences": n, "steps": steps, "tokens": tokens, "seconds": secs, "tok_s": tokens as f64 / secs}));
    }
    let bytes = engine.model.weight_bytes();
    Ok(json!({
        "engine": "mathcoder native (candle 0.11)",
        "hidden_size": engine.model.config.hidden_size,
        "weights": engine.model.weight_format,
        "compute_dtype": format!("{:?}", engine.model.dtype).to_lowercase(),
        "kv_cache_dtype": format!("{:?}", engine.model.kv_dtype).to_lowercase(),
        "parameters": engine.model.config.parameters(),
        "weight_bytes_per_token": bytes,
        "resident_weight_bytes_per_token": engine.model.resident_weight_bytes(),
        "load_s": load_s,
        "prefill_tok_s": prompt.len() as f64 / prefill_s,
        "decode_tok_s": decoded as f64 / decode_s,
        "batched_decode": batched,
        "rss_after_load_mb": Value::Null,
        "peak_rss_mb": status_kb("VmHWM:").map(|k| k / 1024.0),
    }))
}

fn child(a: &EngineBenchArgs) -> Result<i32> {
    let path = &a.model[0];
    // The bound's bandwidth is measured in the same process just before the model loads and
    // again after the measurements, and the two averaged: on a shared machine it drifts by a
    // quarter between rows, and within a row (one probe alone put the same decode speed at 62%
    // and 110% of its bound in two runs). The first probe's 1 GiB buffer is gone before the
    // load, and the peak-memory mark is reset so that it does not count (`clear_refs` 5); the
    // second comes after the peak is read.
    let before = read_bandwidth();
    if std::fs::write("/proc/self/clear_refs", "5").is_err() {
        eprintln!("warning: could not reset the peak-memory mark: peak MB includes 1 GiB");
    }
    let t = Instant::now();
    let (engine, _) = a.native.load(path)?;
    let load_s = t.elapsed().as_secs_f64();
    let rss = status_kb("VmRSS:").map(|k| k / 1024.0);
    let mut v = measure(&engine, load_s, a)?;
    let after = read_bandwidth();
    v["read_bandwidth_gb_s"] = json!((before + after) / 2.0);
    v["read_bandwidth_probes_gb_s"] = json!([before, after]);
    v["rss_after_load_mb"] = json!(rss);
    v["path"] = json!(path);
    println!("{}", serde_json::to_string(&v)?);
    Ok(0)
}

fn run_child(a: &EngineBenchArgs, path: &std::path::Path) -> Result<Value> {
    let exe = std::env::current_exe()?;
    let mut c = std::process::Command::new(exe);
    c.args(["engine", "--child", "--model"])
        .arg(path)
        .args(["--prompt-tokens", &a.prompt_tokens.to_string()])
        .args(["--decode-tokens", &a.decode_tokens.to_string()])
        .args(["--repeats", &a.repeats.to_string()])
        .arg("--batch")
        .args(a.batch.iter().map(|n| n.to_string()));
    if let Some(t) = &a.native.tokenizer {
        c.arg("--tokenizer").arg(t);
    }
    // The child parses the same native options.
    fn flag<T: clap::ValueEnum>(c: &mut std::process::Command, name: &str, v: Option<T>) {
        if let Some(v) = v.as_ref().and_then(|v| v.to_possible_value()) {
            c.args([name, v.get_name()]);
        }
    }
    flag(&mut c, "--dtype", a.native.dtype);
    flag(&mut c, "--quantize", a.native.quantize);
    flag(&mut c, "--kv-cache-dtype", a.native.kv_cache_dtype);
    if let Some(n) = a.native.threads {
        c.args(["--threads", &n.to_string()]);
    }
    let out = c.stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        bail!("measuring {} failed", path.display());
    }
    serde_json::from_slice(&out.stdout).context("reading the measurement")
}

fn run_reference(
    py: &std::path::Path,
    kind: &str,
    path: &std::path::Path,
    threads: usize,
    a: &EngineBenchArgs,
) -> Result<Value> {
    let out = std::process::Command::new(py)
        .arg(&a.reference_script)
        .arg(kind)
        .arg(path)
        .args([
            threads.to_string(),
            a.prompt_tokens.max(2).to_string(),
            a.decode_tokens.to_string(),
            a.repeats.to_string(),
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!("the {kind} reference failed on {}", path.display());
    }
    serde_json::from_slice(&out.stdout).context("reading the reference measurement")
}

/// `tok/s (sequences)` per batched measurement, or `-`.
fn batched_cell(v: &Value) -> String {
    let cells: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| Some(format!("{:.1} ({})", b["tok_s"].as_f64()?, b["sequences"])))
        .collect();
    if cells.is_empty() {
        "-".into()
    } else {
        cells.join(" ")
    }
}

pub fn engine(a: EngineBenchArgs) -> Result<i32> {
    if a.child {
        return child(&a);
    }
    let threads = a.native.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    let mut rows: Vec<Value> = Vec::new();
    for m in &a.model {
        let mut ours = run_child(&a, m)?;
        let bytes = ours["weight_bytes_per_token"].as_f64().unwrap_or(0.0);
        let bw = ours["read_bandwidth_gb_s"].as_f64().unwrap_or(f64::NAN);
        ours["bandwidth_bound_tok_s"] = json!(bw * 1e9 / bytes.max(1.0));
        rows.push(ours);
        if let Some(py) = &a.reference_python {
            let is_gguf = m.extension().is_some_and(|e| e == "gguf");
            let kind = if is_gguf { "llama.cpp" } else { "transformers" };
            match run_reference(py, kind, m, threads, &a) {
                Ok(mut r) => {
                    r["path"] = json!(m);
                    rows.push(r);
                }
                Err(e) => eprintln!("reference skipped: {e:#}"),
            }
        }
    }
    let report = json!({
        "threads": threads,
        "prompt_tokens": a.prompt_tokens,
        "decode_tokens": a.decode_tokens,
        "repeats": a.repeats,
        "rows": rows,
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(0);
    }
    println!(
        "{threads} threads; prompt {} tokens, {} decoded; fastest of {}",
        a.prompt_tokens, a.decode_tokens, a.repeats
    );
    println!(
        "{:<44} {:>8} {:>9} {:>11} {:>10} {:>24} {:>10} {:>9}",
        "engine / weights", "load s", "prefill", "decode", "bound", "batched", "peak MB", "model"
    );
    for r in &rows {
        let f = |k: &str| r[k].as_f64();
        println!(
            "{:<44} {:>8.2} {:>9.1} {:>11.2} {:>10} {:>24} {:>10.0} {:>9}",
            format!(
                "{} / {}",
                r["engine"].as_str().unwrap_or("?"),
                r["weights"].as_str().unwrap_or("?")
            ),
            f("load_s").unwrap_or(f64::NAN),
            f("prefill_tok_s").unwrap_or(f64::NAN),
            f("decode_tok_s").unwrap_or(f64::NAN),
            f("bandwidth_bound_tok_s").map_or("-".into(), |b| format!("{b:.2}")),
            batched_cell(&r["batched_decode"]),
            f("peak_rss_mb").unwrap_or(f64::NAN),
            r["path"]
                .as_str()
                .and_then(|p| p.rsplit('/').next())
                .unwrap_or("")
        );
    }
    println!(
        "prefill and decode in tokens/s; bound = read bandwidth (mean of probes before and after each of our rows) \
         / weight bytes per token as the checkpoint stores them"
    );
    Ok(0)
}
