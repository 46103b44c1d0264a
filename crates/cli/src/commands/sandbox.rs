//! `mathcoder setup` and `mathcoder exec`.

use anyhow::{bail, Context, Result};
use mathcoder_cli::args::{data_dir, Format, SandboxArgs};
use std::io::{Read, Write};
use std::path::PathBuf;

#[derive(clap::Args, Debug)]
pub struct SetupArgs {
    #[command(flatten)]
    sandbox: SandboxArgs,
}

pub fn setup(a: SetupArgs) -> Result<i32> {
    let sandbox = a.sandbox.sandbox()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let versions = sandbox.warm_up().await?;
        let mut s = sandbox.session().await?;
        let r = s.execute("import sympy\nsympy.sqrt(8)").await;
        let env = sandbox.env();
        println!("environment  {}", env.dir.display());
        println!(
            "interpreter  {} (Python {}, fidelity {})",
            env.python.display(),
            env.python_version,
            env.fidelity.name()
        );
        println!(
            "packages     IPython {}, sympy {}, numpy {}, scipy {}",
            versions.ipython,
            versions.sympy,
            versions.numpy.as_deref().unwrap_or("-"),
            versions.scipy.as_deref().unwrap_or("-")
        );
        let iso = s.isolation();
        println!(
            "isolation    seccomp {}, Landlock {}, network namespace {}, rlimits {}",
            if iso.seccomp { "on" } else { "OFF" },
            if iso.landlock > 0 {
                format!("on (ABI {})", iso.landlock)
            } else {
                "OFF".into()
            },
            if iso.network_namespace {
                "on"
            } else {
                "off (sockets are still denied by seccomp/Landlock)"
            },
            iso.rlimits
        );
        println!("check        sympy.sqrt(8) -> {}", r.text);
        if r.text != "2*sqrt(2)" {
            bail!(
                "the environment does not work: expected 2*sqrt(2), got {:?}",
                r.text
            );
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct ExecArgs {
    /// Files whose contents are cells, in order (default: one cell from standard input).
    files: Vec<PathBuf>,
    /// A JSON array of cell sources (instead of files / stdin).
    #[arg(long)]
    cells: Option<String>,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn exec(a: ExecArgs) -> Result<i32> {
    let cells: Vec<String> = if let Some(j) = &a.cells {
        serde_json::from_str(j).context("--cells must be a JSON array of strings")?
    } else if !a.files.is_empty() {
        a.files
            .iter()
            .map(|f| std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display())))
            .collect::<Result<_>>()?
    } else {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        vec![s]
    };
    let sandbox = a.sandbox.sandbox()?;
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(async {
        let mut session = sandbox.session().await?;
        let mut out = Vec::new();
        for c in &cells {
            out.push(session.execute(c).await);
        }
        Ok::<_, anyhow::Error>(out)
    })?;
    let mut stdout = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            let v: Vec<serde_json::Value> = results
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "text": r.text,
                        "kind": r.kind,
                        "duration_ms": r.duration.as_secs_f64() * 1000.0,
                        "truncated": r.truncated,
                        "restarted": r.restarted,
                    })
                })
                .collect();
            serde_json::to_writer(&mut stdout, &v)?;
            writeln!(stdout)?;
        }
        Format::Text => {
            for (i, r) in results.iter().enumerate() {
                writeln!(
                    stdout,
                    "[{}] {:?} ({:.1} ms)",
                    i + 1,
                    r.kind,
                    r.duration.as_secs_f64() * 1000.0
                )?;
                writeln!(stdout, "{}", r.text)?;
            }
        }
    }
    Ok(0)
}

#[derive(clap::Args, Debug)]
pub struct AuditArgs {
    /// Output files or directories of them (default: the vendored released outputs).
    inputs: Vec<PathBuf>,
    /// Sessions run at once (default: one more than CPUs).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Write every differing cell (JSON lines) to this file.
    #[arg(long)]
    differences: Option<PathBuf>,
    /// Examples printed per difference class.
    #[arg(long, default_value_t = 2)]
    examples: usize,
    #[command(flatten)]
    sandbox: SandboxArgs,
    #[arg(long, value_enum, default_value_t)]
    format: Format,
}

pub fn audit(a: AuditArgs) -> Result<i32> {
    use mathcoder_sandbox::audit;
    let inputs = if a.inputs.is_empty() {
        vec![data_dir()
            .context("no vendored data found; pass files or directories")?
            .join("released-outputs")]
    } else {
        a.inputs.clone()
    };
    let files = mathcoder_lce::record_files(&inputs)?;
    if files.is_empty() {
        bail!("no output files (*.jsonl, *.jsonl.gz) in {:?}", inputs);
    }
    let total: usize = audit::load_sessions(&files)?
        .iter()
        .map(|s| s.cells.len())
        .sum();
    let sandbox = a.sandbox.sandbox()?;
    // One more session than cores: cells are CPU-bound, and more would stretch them past the
    // wall-clock timeout.
    let concurrency = a.concurrency.unwrap_or_else(|| {
        1 + std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let pb = mathcoder_cli::progress::bar(total as u64, "re-executing cells");
    let pbc = pb.clone();
    let rt = tokio::runtime::Runtime::new()?;
    let report = rt.block_on(audit::run(
        &sandbox,
        &files,
        concurrency,
        std::sync::Arc::new(move |n| pbc.inc(n)),
    ))?;
    pb.finish_and_clear();
    if let Some(p) = &a.differences {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        );
        for d in &report.differences {
            serde_json::to_writer(&mut w, d)?;
            writeln!(w)?;
        }
        w.flush()?;
    }
    let mut out = std::io::stdout().lock();
    match a.format {
        Format::Json => {
            serde_json::to_writer(&mut out, &report)?;
            writeln!(out)?;
        }
        Format::Text => write!(out, "{}", audit::render_text(&report, a.examples))?,
    }
    Ok(0)
}
