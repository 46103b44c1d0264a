//! `mathcoder bench ...`: the benchmark harnesses live in the `mathcoder-bench` binary (crate
//! `mathcoder-bench`), so that this one links no test server; this command runs it.

use anyhow::{bail, Context, Result};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Command;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The benchmark and its options (see `mathcoder bench --help`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<OsString>,
}

/// `mathcoder-bench` beside this executable (where cargo builds both).
fn bench_binary() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating this executable")?;
    let name = format!("mathcoder-bench{}", std::env::consts::EXE_SUFFIX);
    let beside = me.with_file_name(&name);
    if beside.is_file() {
        // `cargo build --bin mathcoder` leaves the other binary as it was: figures from a stale
        // one would silently measure old code. One build links the two a moment apart, in
        // either order, hence the minute of slack.
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        if let (Some(bench), Some(this)) = (modified(&beside), modified(&me)) {
            if bench + std::time::Duration::from_secs(60) < this {
                eprintln!(
                    "warning: {} is older than {}: it may not contain the latest changes \
                     (`cargo build --bins` builds both)",
                    beside.display(),
                    me.display()
                );
            }
        }
        return Ok(beside);
    }
    bail!(
        "the benchmarks are in a separate binary, {name}, not found beside {}; build it with \
         `cargo build --release -p mathcoder-bench`",
        me.display()
    )
}

pub fn run(a: Args) -> Result<i32> {
    let bin = bench_binary()?;
    let status = Command::new(&bin)
        .args(&a.args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok(status.code().unwrap_or(2))
}
