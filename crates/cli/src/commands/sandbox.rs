//! `mathcoder setup` and `mathcoder exec`.

use anyhow::{bail, Context, Result};
use mathcoder_sandbox::{env, EnvSpec, Fidelity, Limits, Sandbox, SandboxConfig};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use super::Format;

/// Options choosing and limiting the Python environment (shared by commands that execute code).
#[derive(clap::Args, Debug, Clone)]
pub struct SandboxArgs {
    /// Build the environment from this interpreter.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// `default` (Python 3.11-era pins) or `period` (Python 3.9, the recording environment).
    #[arg(long, default_value = "default", value_parser = ["default", "period"])]
    pub fidelity: String,
    /// Seconds a cell may run before it is interrupted.
    #[arg(long, default_value_t = 6.0)]
    pub timeout: f64,
    /// Characters of output kept per cell.
    #[arg(long, default_value_t = 256 * 1024)]
    pub max_output: usize,
    /// Address-space limit per session, in MiB.
    #[arg(long, default_value_t = 4096)]
    pub memory_mb: u64,
}

impl SandboxArgs {
    pub fn spec(&self) -> EnvSpec {
        EnvSpec {
            fidelity: Fidelity::from_name(&self.fidelity).unwrap_or_default(),
            python: self.python.clone(),
            home: None,
        }
    }

    pub fn config(&self) -> Result<SandboxConfig> {
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            bail!("--timeout must be a positive number of seconds");
        }
        Ok(SandboxConfig {
            limits: Limits {
                cell_timeout: Duration::from_secs_f64(self.timeout),
                max_output: self.max_output,
                address_space: self.memory_mb << 20,
                ..Limits::default()
            },
            ..SandboxConfig::default()
        })
    }

    /// Provisions the environment (with progress on stderr) and creates a sandbox.
    pub fn sandbox(&self) -> Result<Sandbox> {
        let env = ensure_env(&self.spec())?;
        Ok(Sandbox::new(env, self.config()?)?)
    }
}

pub fn ensure_env(spec: &EnvSpec) -> Result<env::PythonEnv> {
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    let r = env::ensure(spec, &|line| {
        pb.set_message(line.to_string());
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!("setup: {line}");
        }
    });
    pb.finish_and_clear();
    r.context("preparing the Python environment")
}

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
        vec![super::data_dir()
            .context("no vendored data found; pass files or directories")?
            .join("released-outputs")]
    } else {
        a.inputs.clone()
    };
    let files = audit::expand_inputs(&inputs)?;
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
    let pb = crate::progress::bar(total as u64, "re-executing cells");
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

fn quantiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (q(0.5), q(0.99), v.iter().sum::<f64>() / v.len() as f64)
}

pub fn bench(sessions: usize, cells: usize, jupyter: bool, args: SandboxArgs) -> Result<i32> {
    if sessions == 0 || cells == 0 {
        bail!("--sessions and --cells must be positive");
    }
    let sandbox = args.sandbox()?;
    // One thread: a session's round trip then needs no hop between runtime threads.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (start_ms, cell_ms, solve_ms) = rt.block_on(async {
        let t = std::time::Instant::now();
        sandbox.warm_up().await?;
        eprintln!(
            "zygote ready in {:.0} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
        // Warm caches with a few sessions first.
        for _ in 0..5 {
            let mut s = sandbox.session().await?;
            s.execute("1+1").await;
        }
        let (mut start_ms, mut cell_ms, mut solve_ms) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..sessions {
            let t = std::time::Instant::now();
            let mut s = sandbox.session().await?;
            start_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            for _ in 0..cells {
                let t = std::time::Instant::now();
                let r = s.execute("1+1").await;
                cell_ms.push(t.elapsed().as_secs_f64() * 1000.0);
                if r.text != "2" {
                    bail!("unexpected output {:?}", r.text);
                }
            }
            if i % 10 == 0 {
                let t = std::time::Instant::now();
                s.execute("import sympy\nx = sympy.symbols('x')\nsympy.solve(x**2 - 2, x)")
                    .await;
                solve_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        Ok::<_, anyhow::Error>((start_ms, cell_ms, solve_ms))
    })?;
    let (s50, s99, smean) = quantiles(start_ms);
    let (c50, c99, cmean) = quantiles(cell_ms);
    let (v50, v99, _) = quantiles(solve_ms);
    println!("mathcoder sandbox ({sessions} sessions x {cells} cells, sequential)");
    println!("  session start (ready for a cell)   p50 {s50:8.2} ms   p99 {s99:8.2} ms   mean {smean:.2} ms");
    println!("  trivial cell `1+1` round trip      p50 {c50:8.3} ms   p99 {c99:8.3} ms   mean {cmean:.3} ms");
    println!("  first sympy.solve in a session     p50 {v50:8.2} ms   p99 {v99:8.2} ms");
    if jupyter {
        jupyter_baseline(&sandbox, sessions.min(20), cells)?;
    }
    Ok(0)
}

/// The Python of a separate benchmark environment with a real Jupyter stack (ipykernel 6.25.2,
/// jupyter_client 8.3.1), derived from the sandbox's interpreter; created on first use.
pub(crate) fn jupyter_python(sandbox: &Sandbox) -> Result<PathBuf> {
    let env = sandbox.env();
    let dir = env.dir.with_file_name(format!(
        "{}-jupyter-bench",
        env.dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("env")
    ));
    let py = dir.join("bin/python");
    let marker = dir.join(".mathcoder-jupyter-ready");
    if !marker.exists() {
        eprintln!(
            "creating the Jupyter benchmark environment at {}",
            dir.display()
        );
        let st = std::process::Command::new(&env.python)
            .args(["-m", "venv", "--system-site-packages"])
            .arg(&dir)
            .status()?;
        if !st.success() {
            bail!("creating {} failed", dir.display());
        }
        let st = std::process::Command::new(&py)
            .args([
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "ipykernel==6.25.2",
                "jupyter_client==8.3.1",
            ])
            .status()?;
        if !st.success() {
            bail!("installing ipykernel/jupyter_client failed");
        }
        std::fs::write(&marker, "ipykernel==6.25.2 jupyter_client==8.3.1\n")?;
    }
    Ok(py)
}

/// The same measurements on a real Jupyter kernel (jupyter_client + ipykernel).
fn jupyter_baseline(sandbox: &Sandbox, sessions: usize, cells: usize) -> Result<()> {
    let py = jupyter_python(sandbox)?;
    let script = r#"
import sys, time, json, statistics
from jupyter_client.manager import start_new_kernel
sessions, cells = int(sys.argv[1]), int(sys.argv[2])
start, cell = [], []
def run(kc, code):
    kc.execute(code, allow_stdin=False, reply=False, stop_on_error=False)
    while True:
        msg = kc.get_iopub_msg(timeout=10)
        if msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'idle':
            return
for i in range(sessions):
    t = time.perf_counter()
    km, kc = start_new_kernel(kernel_name='python3')
    start.append((time.perf_counter() - t) * 1000)
    for _ in range(cells):
        t = time.perf_counter()
        run(kc, '1+1')
        cell.append((time.perf_counter() - t) * 1000)
    kc.stop_channels(); km.shutdown_kernel(now=True)
def q(v, p):
    v = sorted(v); return v[round((len(v) - 1) * p)]
print(json.dumps({"start": [q(start, .5), q(start, .99)], "cell": [q(cell, .5), q(cell, .99)]}))
"#;
    let out = std::process::Command::new(&py)
        .args(["-c", script, &sessions.to_string(), &cells.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("the Jupyter baseline failed");
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("reading the Jupyter baseline")?;
    println!("real Jupyter kernel (ipykernel 6.25.2, jupyter_client 8.3.1; {sessions} kernels x {cells} cells)");
    println!(
        "  kernel start (start_new_kernel)    p50 {:8.2} ms   p99 {:8.2} ms",
        v["start"][0].as_f64().unwrap_or(0.0),
        v["start"][1].as_f64().unwrap_or(0.0)
    );
    println!(
        "  trivial cell `1+1` round trip      p50 {:8.3} ms   p99 {:8.3} ms",
        v["cell"][0].as_f64().unwrap_or(0.0),
        v["cell"][1].as_f64().unwrap_or(0.0)
    );
    Ok(())
}
