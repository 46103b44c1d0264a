//! `mathcoder eval` killed with SIGKILL at random moments, then resumed: every problem ends up in
//! results.jsonl exactly once, with the same results as an uninterrupted run. Uses
//! `mathcoder-bench replay-server` (MathCoder-L-7B's vendored SimulEq outputs) and the real sandbox.

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mathcoder"))
}

/// `mathcoder-bench` (where the replay server lives), built beside `mathcoder` by
/// `cargo test --workspace`.
fn bench_bin() -> Command {
    let path = Path::new(env!("CARGO_BIN_EXE_mathcoder"))
        .with_file_name(format!("mathcoder-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds mathcoder-bench)",
        path.display()
    );
    Command::new(path)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const N: usize = 40;

fn replay_server() -> (Killed, String) {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs/MathCoder-L-7b/simuleq"
    );
    let mut child = bench_bin()
        .args([
            "replay-server",
            data,
            "--addr",
            "127.0.0.1:0",
            "--latency-ms",
            "0.3",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("http://"), "{line:?}");
    (Killed(child), line.trim().to_string())
}

fn eval(url: &str, out: &Path) -> Command {
    let mut c = bin();
    c.args(["eval", "--dataset", "simuleq", "--limit", &N.to_string()])
        .args(["--concurrency", "4", "--retries", "1", "--endpoint", url])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

fn lines(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn results(out: &Path) -> BTreeMap<String, (Value, Value, Value)> {
    let mut m = BTreeMap::new();
    for r in lines(out) {
        let id = r["id"].as_str().unwrap().to_string();
        let v = (
            r["debug_result"].clone(),
            r["completion"].clone(),
            r["mathcoder"]["correct"].clone(),
        );
        assert!(m.insert(id.clone(), v).is_none(), "{id} appears twice");
    }
    m
}

#[test]
fn kill_9_at_random_moments_then_resume() {
    let (_server, url) = replay_server();
    let dir = tempfile::tempdir().unwrap();
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    let t = Instant::now();
    assert!(eval(&url, &clean).status().unwrap().success());
    let uninterrupted = t.elapsed();
    assert_eq!(results(&clean).len(), N);

    // Kill at pseudo-random points within the uninterrupted run's duration.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {seed}, uninterrupted run {uninterrupted:?}");
    let (mut kills, mut mid_run) = (0, 0);
    let finished = loop {
        assert!(kills < 30, "the run never finished");
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let frac = (seed >> 33) as f64 / (1u64 << 31) as f64;
        let delay = uninterrupted.mul_f64(0.1 + 0.5 * frac);
        let before = lines(&killed).len();
        let mut child = eval(&url, &killed).spawn().unwrap();
        std::thread::sleep(delay);
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let after = lines(&killed).len();
        if after > before && after < N {
            mid_run += 1;
        }
        // Stop killing once a few kills landed mid-run.
        if mid_run >= 3 {
            break eval(&url, &killed).status().unwrap();
        }
    };
    assert!(finished.success());
    eprintln!("{kills} kills, {mid_run} while records were being written");
    assert!(mid_run >= 1, "no kill landed mid-run");
    assert_eq!(results(&killed), results(&clean));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(killed.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["records"], N);
}
