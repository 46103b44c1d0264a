//! `mathcoder bench sandbox`: session start and cell round-trip latency, optionally next to a
//! real Jupyter kernel measured the same way.

use anyhow::{bail, Context, Result};
use mathcoder_cli::args::SandboxArgs;
use mathcoder_sandbox::Sandbox;
use std::path::PathBuf;

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
