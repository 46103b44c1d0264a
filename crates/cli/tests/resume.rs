//! `mathcoder eval` killed with SIGKILL at random moments, then resumed: every problem ends up in
//! results.jsonl exactly once, with the same results as an uninterrupted run. Uses
//! `mathcoder-bench replay-server` (MathCoder-L-7B's vendored SimulEq outputs) and the real sandbox.
//!
//! Kills are scheduled on observed progress, not on wall-clock time, so that the test holds on
//! a loaded machine: one kill lands during start-up, the others after a random number (1-3) of
//! new records plus a random few milliseconds. Each of those rounds writes at least one record,
//! so the number of rounds is bounded; the only time limit is a stall detector (no new record
//! for [`STALL`]), which fails with the round, the record counts and the run's stderr.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{bin, replay_server};

const N: usize = 40;
/// Kills after records were written (and before the last one) before the run may finish.
const MID_RUN_KILLS: usize = 3;
/// A run that writes no record for this long is stuck: a hang detector, not a speed target (a
/// healthy run writes one every few hundred milliseconds, its start-up takes a few seconds).
const STALL: Duration = Duration::from_secs(120);

/// `mathcoder eval` into `out`, its stderr into `log`.
fn eval(url: &str, out: &Path, log: &Path) -> Command {
    let mut c = bin();
    c.args(["eval", "--dataset", "simuleq", "--limit", &N.to_string()])
        .args(["--concurrency", "4", "--retries", "1", "--endpoint", url])
        .arg("--out")
        .arg(out)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    c
}

/// Complete (newline-terminated) lines in results.jsonl; a torn last line does not count.
fn record_count(out: &Path) -> usize {
    std::fs::read(out.join("results.jsonl"))
        .map(|b| b.iter().filter(|&&c| c == b'\n').count())
        .unwrap_or(0)
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

fn tail(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// How a watched run ended.
enum Ended {
    /// It exited by itself.
    Exited(ExitStatus),
    /// It reached the record count it was watched for (and is still running).
    Reached(Child),
}

/// Runs `cmd` until it exits or results.jsonl holds `until` records; fails with a clear message
/// if no new record appears for [`STALL`].
fn watch(mut cmd: Command, out: &Path, until: Option<usize>, what: &str, log: &Path) -> Ended {
    let mut child = cmd.spawn().unwrap();
    let (mut seen, mut since) = (record_count(out), Instant::now());
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Ended::Exited(status);
        }
        let n = record_count(out);
        if until.is_some_and(|u| n >= u) {
            return Ended::Reached(child);
        }
        if n > seen {
            (seen, since) = (n, Instant::now());
        }
        if since.elapsed() > STALL {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: no new record for {STALL:?} ({n} of {N} written{}); stderr:\n{}",
                until
                    .map(|u| format!(", waiting for {u}"))
                    .unwrap_or_default(),
                tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `eval` into `out` to its end, which must be a success.
fn finish(url: &str, out: &Path, what: &str, log: &Path) {
    match watch(eval(url, out, log), out, None, what, log) {
        Ended::Exited(s) => assert!(s.success(), "{what}: {s}\n{}", tail(log)),
        Ended::Reached(_) => unreachable!("no record count to reach"),
    }
}

fn sigkill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// A small deterministic generator (printed seed; `MATHCODER_RESUME_SEED` replays one).
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn kill_9_at_random_moments_then_resume() {
    let t = Instant::now();
    let (_server, url) = replay_server(0.3);
    let dir = tempfile::tempdir().unwrap();
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    let log = |name: &str| -> PathBuf { dir.path().join(format!("{name}.stderr")) };
    let l = log("clean");
    finish(&url, &clean, "the uninterrupted run", &l);
    assert_eq!(results(&clean).len(), N);
    let uninterrupted = t.elapsed();

    let seed = std::env::var("MATHCODER_RESUME_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("seed {seed} (MATHCODER_RESUME_SEED), uninterrupted run {uninterrupted:?}");
    let mut rng = Rng(seed);

    // During start-up: before the first record can have been written.
    let l = log("startup");
    let mut child = eval(&url, &killed, &l).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(rng.below(300)));
    let startup_records = record_count(&killed);
    if let Some(s) = child.try_wait().unwrap() {
        panic!("the run exited during start-up: {s}\n{}", tail(&l));
    }
    sigkill(child);
    eprintln!("kill during start-up: {startup_records} records");

    // After observed progress.
    let mut mid_run = 0;
    let mut rounds = Vec::new();
    while mid_run < MID_RUN_KILLS {
        let before = record_count(&killed);
        if before + 1 >= N {
            break;
        }
        let target = (before + 1 + rng.below(3) as usize).min(N - 1);
        let name = format!("round{}", rounds.len() + 1);
        let l = log(&name);
        let what = format!("{name} (resumed at {before} records, to be killed at {target})");
        match watch(eval(&url, &killed, &l), &killed, Some(target), &what, &l) {
            Ended::Exited(s) => {
                // Finished before the kill: nothing more to interrupt.
                assert!(s.success(), "{what}: {s}\n{}", tail(&l));
                break;
            }
            Ended::Reached(child) => {
                std::thread::sleep(Duration::from_millis(rng.below(30)));
                sigkill(child);
            }
        }
        let after = record_count(&killed);
        rounds.push((before, target, after));
        if after > before && after < N {
            mid_run += 1;
        }
    }
    let l = log("final");
    finish(&url, &killed, "the final resumed run", &l);
    eprintln!(
        "{} kills after progress, {mid_run} while records were being written \
         (records before, target, at the kill: {rounds:?}); {:?} in all",
        rounds.len(),
        t.elapsed()
    );
    assert!(mid_run >= 1, "no kill landed mid-run: {rounds:?}");
    assert_eq!(results(&killed), results(&clean));
    let summary: Value =
        serde_json::from_slice(&std::fs::read(killed.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["records"], N);
}
