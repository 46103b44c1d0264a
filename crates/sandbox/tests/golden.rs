//! IPython semantics against the text a real Jupyter kernel produced (`../shared/data/sandbox-golden`,
//! recorded with Python 3.9 / IPython 8.15 / ipykernel 6.25). Skips when the files are absent.

mod common;

use mathcoder_sandbox::audit::normalize;
use serde_json::Value;
use std::path::PathBuf;

fn probes(name: &str) -> Option<Vec<(String, String)>> {
    let dir = std::env::var("MATHCODER_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    let path = dir.join("data/sandbox-golden").join(name);
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!(
            "SKIP: {} not found (needs ../shared beside the clone)",
            path.display()
        );
        return None;
    };
    let v: Vec<Value> = serde_json::from_str(&text).expect("golden json");
    Some(
        v.into_iter()
            .map(|p| {
                (
                    p["code"].as_str().unwrap().to_string(),
                    p["out"].as_str().unwrap().to_string(),
                )
            })
            .collect(),
    )
}

/// Probes whose recorded text cannot match by design, with the reason. `python` is the
/// session's Python version (the recordings are from 3.9).
fn expected_difference(code: &str, recorded: &str, python: &str) -> Option<&'static str> {
    let py39 = python.starts_with("3.9.");
    if code.starts_with("%time") {
        return Some("timings differ from run to run");
    }
    if code.starts_with('!') {
        return Some("shell escapes need a new process, which the sandbox forbids");
    }
    if code.starts_with("input(") {
        return Some("the StdinNotImplementedError frame is ipykernel's in the recording");
    }
    if recorded.contains("Timeout waiting for reply") && code == "1+1" {
        return Some("the recording harness timed out on this probe");
    }
    if code.contains("time.sleep(0.5)") {
        return Some(
            "ipykernel flushes streams every 0.2 s; the sandbox returns stdout then stderr",
        );
    }
    if !py39 && (code == "str(10**5000)" || code.contains("sp.Integral(x**2, x)")) {
        return Some("Python 3.10+ words this error differently from 3.9");
    }
    if !py39 && code.contains("setrecursionlimit(200)") {
        return Some("Python 3.11 counts the skipped recursion frames differently");
    }
    if !py39 && code == "print" {
        return Some("Python 3.10+ gives builtins a text signature that IPython shows");
    }
    None
}

async fn run(name: &str) -> Option<(usize, usize, Vec<String>)> {
    let probes = probes(name)?;
    let python = common::patient_sandbox()
        .warm_up()
        .await
        .expect("zygote")
        .python;
    let mut s = common::patient_sandbox().session().await.expect("session");
    let (mut same, mut compared) = (0, 0);
    let mut diffs = Vec::new();
    for (code, recorded) in &probes {
        let r = s.execute(code).await;
        if expected_difference(code, recorded, &python).is_some() {
            continue;
        }
        compared += 1;
        if normalize(&r.text) == normalize(recorded) {
            same += 1;
        } else {
            diffs.push(format!(
                "{code:?}\n  ours:     {:?}\n  recorded: {:?}",
                r.text, recorded
            ));
        }
    }
    Some((same, compared, diffs))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe1_matches_the_real_kernel() {
    let Some((same, compared, diffs)) = run("probe1_py39_ipython8.15.json").await else {
        return;
    };
    eprintln!("probe1: {same}/{compared}");
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe2_matches_the_real_kernel() {
    let Some((same, compared, diffs)) = run("probe2_py39_ipython8.15.json").await else {
        return;
    };
    eprintln!("probe2: {same}/{compared}");
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}
