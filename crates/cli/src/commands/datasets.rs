//! `mathcoder datasets`

use anyhow::Result;
use mathcoder_datasets::Benchmark;
use serde::Serialize;
use std::io::Write;

use mathcoder_cli::args::Format;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

#[derive(Serialize)]
struct Row {
    name: &'static str,
    split: &'static str,
    size: usize,
    description: &'static str,
    source: &'static str,
}

pub fn run(a: Args) -> Result<i32> {
    let mut rows = Vec::new();
    for b in Benchmark::listed() {
        rows.push(Row {
            name: b.name(),
            split: b.split().name(),
            size: b.load()?.len(),
            description: b.description(),
            source: b.source(),
        });
    }
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            for r in &rows {
                serde_json::to_writer(&mut out, r)?;
                writeln!(out)?;
            }
        }
        Format::Text => {
            writeln!(
                out,
                "{:<12} {:<5} {:>6}  {:<58} source",
                "name", "split", "size", "description"
            )?;
            for r in &rows {
                writeln!(
                    out,
                    "{:<12} {:<5} {:>6}  {:<58} {}",
                    r.name, r.split, r.size, r.description, r.source
                )?;
            }
        }
    }
    Ok(0)
}
