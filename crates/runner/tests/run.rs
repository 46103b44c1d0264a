//! Runs against the replay server (MathCoder-L-7B's released SimulEq outputs, vendored under
//! `data/`) and a real sandbox (provisioned on first use, as `mathcoder setup` does).

use mathcoder_datasets::{Benchmark, Problem};
use mathcoder_grade::{Dataset, GradeOptions, Grader};
use mathcoder_llm::http::HttpConfig;
use mathcoder_llm::tgi::Tgi;
use mathcoder_llm::Backend;
use mathcoder_replay::{serve, Fault, Recordings, ReplayConfig, Server};
use mathcoder_runner::{aggregate, load_done, results_path, run, Event, RunConfig};
use mathcoder_sandbox::{EnvSpec, Sandbox, SandboxConfig};
use mathcoder_solve::SolveConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

fn sandbox() -> Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        Sandbox::provision(&EnvSpec::default(), SandboxConfig::default(), &|l| {
            eprintln!("setup: {l}")
        })
        .expect("sandbox")
    })
    .clone()
}

fn recorded() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/released-outputs/MathCoder-L-7b/simuleq");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn problems(n: usize) -> Vec<Problem> {
    let mut p = Benchmark::from_name("simuleq").unwrap().load().unwrap();
    p.truncate(n);
    p
}

async fn server(config: ReplayConfig) -> Server {
    let r = Recordings::from_files(&recorded()).unwrap();
    serve(r, config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn backend(s: &Server, retries: u32) -> Arc<dyn Backend> {
    backend_with_timeout(s, retries, Duration::from_secs(30))
}

/// A short timeout only where a test needs a hang to time out: elsewhere a slow but healthy
/// reply on a loaded machine must not count as a failure.
fn backend_with_timeout(s: &Server, retries: u32, timeout: Duration) -> Arc<dyn Backend> {
    Arc::new(
        Tgi::new(
            &s.url(),
            HttpConfig {
                timeout,
                retries,
                backoff: Duration::from_millis(5),
                ..HttpConfig::default()
            },
        )
        .unwrap(),
    )
}

fn config(out: &Path, concurrency: usize, retry_failed: bool) -> RunConfig {
    RunConfig {
        out: out.to_path_buf(),
        dataset: "simuleq".into(),
        concurrency,
        samples: 1,
        // Replays reproduce the authors' loop, which went on through repeated blocks.
        solve: SolveConfig {
            stop_on_repetition: false,
            ..SolveConfig::default()
        },
        conventions: Dataset::SimulEq,
        retry_failed,
    }
}

fn grader() -> Arc<Grader> {
    Arc::new(Grader::new(GradeOptions::default()))
}

async fn go(
    problems: &[Problem],
    b: Arc<dyn Backend>,
    out: &Path,
    concurrency: usize,
    retry_failed: bool,
) -> usize {
    run(
        problems,
        b,
        sandbox(),
        grader(),
        &config(out, concurrency, retry_failed),
        Arc::new(|_: Event| {}),
    )
    .await
    .unwrap()
}

fn records(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(results_path(out))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// id -> (debug_result, completion, correct, failed)
fn by_id(out: &Path) -> std::collections::BTreeMap<String, (Value, Value, Value, Value)> {
    let mut m = std::collections::BTreeMap::new();
    for r in records(out) {
        let id = r["id"].as_str().unwrap().to_string();
        let v = (
            r["debug_result"].clone(),
            r["completion"].clone(),
            r["mathcoder"]["correct"].clone(),
            r["mathcoder"]["failed"].clone(),
        );
        assert!(m.insert(id.clone(), v).is_none(), "{id} twice");
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_run_reproduces_the_recorded_solutions() {
    let s = server(ReplayConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ps = problems(40);
    assert_eq!(go(&ps, backend(&s, 2), dir.path(), 8, false).await, 40);
    let rs = records(dir.path());
    assert_eq!(rs.len(), 40);
    // The authors' fields are there, and our own.
    for r in &rs {
        assert!(r["debug_result"].as_array().unwrap().len() > 2);
        assert!(r["completion"].is_string());
        assert_eq!(r["messages"][0]["role"], "system");
        assert!(r["mathcoder"]["stop"].is_string());
    }
    let results = mathcoder_runner::read_results(&results_path(dir.path())).unwrap();
    let c =
        mathcoder_runner::reference::compare(&results, &recorded(), Dataset::SimulEq, &grader())
            .unwrap();
    assert_eq!(c.matched, 40);
    assert!(c.same_answer >= 39, "{c:?}");
    assert!(c.same_solution >= 38, "{c:?}");
    let sum = aggregate::summarize(&results, "simuleq", "replay", Dataset::SimulEq, &grader());
    assert_eq!(sum.records, 40);
    assert_eq!(sum.failed, 0);
    assert!(sum.maj_at_k.is_none());
    // Running again finds everything done.
    assert_eq!(go(&ps, backend(&s, 2), dir.path(), 8, false).await, 0);
    assert_eq!(records(dir.path()).len(), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_fail_problems_not_the_run_and_failed_problems_can_be_retried() {
    let ps = problems(6);
    let clean = tempfile::tempdir().unwrap();
    {
        let s = server(ReplayConfig::default()).await;
        go(&ps, backend(&s, 1), clean.path(), 1, false).await;
    }
    for fault in [
        Fault::ServerError,
        Fault::Hang,
        Fault::Close,
        Fault::Malformed,
    ] {
        // The first 4 requests fault; one retry each: the first two problems fail.
        let s = server(ReplayConfig {
            fault: Some(fault),
            fault_every: 1,
            fault_limit: 4,
            ..ReplayConfig::default()
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let timeout = if fault == Fault::Hang {
            Duration::from_millis(1500)
        } else {
            Duration::from_secs(30)
        };
        let b = backend_with_timeout(&s, 1, timeout);
        assert_eq!(go(&ps, b, dir.path(), 1, false).await, 6);
        let rs = records(dir.path());
        let failed: Vec<&Value> = rs
            .iter()
            .filter(|r| r["mathcoder"]["failed"] == true)
            .collect();
        assert_eq!(failed.len(), 2, "{fault:?}");
        for r in &failed {
            assert_eq!(r["mathcoder"]["stop"], "backend_error");
            let why = r["mathcoder"]["stop_detail"]["detail"].as_str().unwrap();
            let expected = match fault {
                Fault::ServerError => "HTTP 500",
                Fault::Hang => "timed out",
                Fault::Close | Fault::Malformed => "",
            };
            assert!(why.contains(expected), "{fault:?}: {why}");
        }
        // Retrying the failed ones on a healthy server (at the same address: the endpoint is
        // part of the run's identity) gives the clean run's results.
        let addr = s.addr;
        s.stop();
        let r = Recordings::from_files(&recorded()).unwrap();
        let mut tries = 0;
        let s = loop {
            // The aborted server's listener closes asynchronously.
            match serve(r.clone(), ReplayConfig::default(), addr).await {
                Ok(s) => break s,
                Err(e) if tries < 100 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot serve again at {addr}: {e}"),
            }
        };
        assert_eq!(go(&ps, backend(&s, 1), dir.path(), 2, true).await, 2);
        assert_eq!(by_id(dir.path()), by_id(clean.path()), "{fault:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_or_partial_results_file_resumes_without_loss_or_duplicates() {
    let s = server(ReplayConfig::default()).await;
    let ps = problems(12);
    let full = tempfile::tempdir().unwrap();
    go(&ps, backend(&s, 1), full.path(), 4, false).await;
    // An interrupted run: 5 records, then half of the sixth.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(full.path().join("run.json"), dir.path().join("run.json")).unwrap();
    let text = std::fs::read_to_string(results_path(full.path())).unwrap();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let mut torn = lines[..5].concat();
    torn.push_str(&lines[5][..lines[5].len() / 2]);
    std::fs::write(results_path(dir.path()), torn).unwrap();
    assert_eq!(
        load_done(&results_path(dir.path()), false).unwrap().len(),
        5
    );
    assert_eq!(go(&ps, backend(&s, 1), dir.path(), 4, false).await, 7);
    assert_eq!(by_id(dir.path()), by_id(full.path()));
    // Different settings in the same directory are refused.
    let mut other = config(dir.path(), 1, false);
    other.solve.max_blocks = 16;
    let e = run(
        &ps,
        backend(&s, 1),
        sandbox(),
        grader(),
        &other,
        Arc::new(|_: Event| {}),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("max_blocks: 32 then, 16 now"), "{e}");
}
