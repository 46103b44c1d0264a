//! `mathcoder view PATH... [--port N] [--host H]`: the results browser (`mathcoder-view`).

use anyhow::Result;
use mathcoder_grade::Dataset;
use mathcoder_view::{Index, IndexOptions};
use std::io::Write;
use std::path::PathBuf;

use mathcoder_cli::args::GradeArgs;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Eval run directories, output files in the authors' format (`-correct`/`-wrong` pairs
    /// read as one run), training data files and `train` output directories (`log.jsonl`).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Port to listen on (default: a free one).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Address to listen on. The default is loopback only; anything else exposes the outputs
    /// to the network.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Dataset conventions to grade the authors' records with (default: detected from each path).
    #[arg(long, value_parser = mathcoder_cli::args::conventions)]
    dataset: Option<Dataset>,
    #[command(flatten)]
    grading: GradeArgs,
    /// A model directory whose tokenizer shows training records' trained and masked tokens.
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// With --model: execution blocks get loss too (as `train --loss-on-execution`).
    #[arg(long)]
    loss_on_execution: bool,
    /// With --model: the prompt gets loss too (as `train --loss-on-prompt`).
    #[arg(long)]
    loss_on_prompt: bool,
}

pub fn run(a: Args) -> Result<i32> {
    let started = std::time::Instant::now();
    let index = Index::build(
        &a.paths,
        &IndexOptions {
            dataset: a.dataset,
            grade: a.grading.options(),
            tokenizer: a.model.clone(),
            mask: mathcoder_train::MaskOptions {
                loss_on_execution: a.loss_on_execution,
                loss_on_prompt: a.loss_on_prompt,
            },
        },
    )?;
    let problems: usize = index.runs.iter().map(|r| r.problems.len()).sum();
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let (runs, training, logs, skipped) = (
            index.runs.len(),
            index.training.len(),
            index.logs.len(),
            index.skipped.len(),
        );
        let bound = mathcoder_view::Bound::bind(index, &a.host, a.port).await?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "{runs} runs ({problems} records), {training} training files, {logs} training logs read in {:.2} s{}",
            started.elapsed().as_secs_f64(),
            if skipped > 0 {
                format!(", {skipped} files skipped")
            } else {
                String::new()
            }
        )?;
        writeln!(out, "serving {} (Ctrl-C to stop)", bound.url())?;
        out.flush()?;
        drop(out);
        tokio::select! {
            r = bound.serve() => r?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(0)
}
