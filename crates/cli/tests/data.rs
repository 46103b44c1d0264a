//! `mathcoder data seed` (the offline annotations teacher, real sandbox) killed with SIGKILL at
//! random moments, then resumed: every attempt is in attempts.jsonl exactly once, every kept
//! solution in data.jsonl exactly once, and both equal an uninterrupted run's. And `data merge`
//! removing a planted test problem and a duplicate.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

mod common;
use common::{bin, replay_server_of};

const N: usize = 150;

fn seed(out: &Path) -> Command {
    let mut c = bin();
    c.args([
        "data",
        "seed",
        "--source",
        "gsm8k-train",
        "--teacher",
        "annotations",
    ])
    .args(["--limit", &N.to_string(), "--concurrency", "4", "--out"])
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

fn keyed(path: &Path, key: impl Fn(&Value) -> String) -> BTreeMap<String, Value> {
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let v: Value = serde_json::from_str(l).unwrap();
        let k = key(&v);
        assert!(m.insert(k.clone(), v).is_none(), "{k} appears twice");
    }
    m
}

fn data(out: &Path) -> BTreeMap<String, Value> {
    keyed(&out.join("data.jsonl"), |v| {
        format!(
            "{}#{}",
            v["provenance"]["problem_id"].as_str().unwrap(),
            v["provenance"]["sample"]
        )
    })
}

fn attempts(out: &Path) -> BTreeMap<String, Value> {
    keyed(&out.join("attempts.jsonl"), |v| {
        format!("{}#{}", v["problem_id"].as_str().unwrap(), v["sample"])
    })
}

fn lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("attempts.jsonl"))
        .map(|s| s.lines().count())
        .unwrap_or(0)
}

#[test]
fn seed_kill_9_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    let t = Instant::now();
    let out = seed(&clean).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let uninterrupted = t.elapsed();
    let clean_data = data(&clean);
    assert_eq!(attempts(&clean).len(), N);
    assert!(clean_data.len() > N / 2, "kept {}", clean_data.len());
    // Every kept line is the authors' format with a verdict.
    for v in clean_data.values() {
        let roles: Vec<&str> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant"]);
        assert_eq!(v["provenance"]["acceptance"]["correct"], true);
        assert_eq!(v["provenance"]["teacher"], "annotations");
    }

    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("seed {rng}, uninterrupted run {uninterrupted:?}");
    let (mut kills, mut mid_run) = (0, 0);
    let finished = loop {
        assert!(kills < 40, "the run never finished");
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        // Kill on observed progress, not on a share of a timed run, so that the test holds on
        // a loaded machine: after 1-3 new lines, or at once on the first round (start-up).
        let wanted = if kills == 0 {
            0
        } else {
            1 + (rng >> 33) as usize % 3
        };
        let before = lines(&killed);
        let mut child = seed(&killed).spawn().unwrap();
        let started = Instant::now();
        let mut done = None;
        while lines(&killed) < before + wanted {
            if let Some(status) = child.try_wait().unwrap() {
                done = Some(status);
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(120),
                "no new line for 120 s (round {kills})"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(status) = done.or_else(|| child.try_wait().unwrap()) {
            break status;
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        kills += 1;
        let after = lines(&killed);
        if after > before && after < N {
            mid_run += 1;
        }
        if mid_run >= 3 {
            break seed(&killed).status().unwrap();
        }
    };
    assert!(finished.success());
    eprintln!("{kills} kills, {mid_run} while records were being written");
    assert!(mid_run >= 1, "no kill landed mid-run");
    assert_eq!(data(&killed), clean_data);
    let strip = |m: BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        m.into_iter()
            .map(|(k, mut v)| {
                v.as_object_mut().unwrap().remove("detail");
                (k, v)
            })
            .collect()
    };
    assert_eq!(strip(attempts(&killed)), strip(attempts(&clean)));

    // A second run with other settings in the same directory is refused.
    let out = seed(&killed)
        .args(["--samples", "2"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("different settings"));

    // Merge: the seed data, plus a planted GSM8K test problem and a duplicate of a kept one.
    let mut planted: Value = clean_data.values().next().unwrap().clone();
    let test = &mathcoder_test_problem();
    planted["messages"][1]["content"][0]["content"] = Value::from(test.as_str());
    planted["provenance"]["problem_id"] = Value::from("planted-1");
    let mut dup: Value = clean_data.values().nth(1).unwrap().clone();
    dup["provenance"]["source"] = Value::from("elsewhere");
    let extra = dir.path().join("extra.jsonl");
    std::fs::write(&extra, format!("{planted}\n{dup}\n")).unwrap();
    let merged = dir.path().join("merged.jsonl");
    let out = bin()
        .args(["data", "merge"])
        .arg(clean.join("data.jsonl"))
        .arg(&extra)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("planted-1): test-set problem: gsm8k"),
        "{text}"
    );
    assert!(text.contains("duplicate of gsm8k-train"), "{text}");
    // Train problems of the seed data may be removed too (gsm8k-train-21 is GSM-Hard's 459 with
    // other numbers); nothing else is.
    let from_seed = text.matches("clean/data.jsonl:").count();
    let kept = std::fs::read_to_string(&merged).unwrap().lines().count();
    assert_eq!(kept, clean_data.len() - from_seed, "{text}");
    assert!(from_seed <= 2, "{text}");
}

/// The first GSM8K test problem (Janet's ducks), as vendored.
fn mathcoder_test_problem() -> String {
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at the farmers' market?".to_string()
}

/// The LCE teacher: MathCoder-L-7B's released GSM8K outputs replayed as the model, on the first
/// 20 GSM8K test problems. Kept solutions are exactly the problems whose replayed final answer
/// our grader judges equal to the gold, with the LCE teacher's provenance.
#[test]
fn seed_with_the_lce_teacher_on_replayed_outputs() {
    let data_dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs/MathCoder-L-7b/GSM8K"
    );
    let (_server, url) = replay_server_of(data_dir, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "data",
            "seed",
            "--source",
            "gsm8k",
            "--teacher",
            "lce",
            "--limit",
            "20",
        ])
        .args(["--concurrency", "4", "--endpoint", url.trim(), "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let kept = data(dir.path());
    let tried = attempts(dir.path());
    assert_eq!(tried.len(), 20);
    let kept_attempts = tried.values().filter(|a| a["outcome"] == "kept").count();
    assert_eq!(kept.len(), kept_attempts);
    // The authors judged the same problems correct: kept = those in their `-correct` file.
    let mut correct = std::collections::HashSet::new();
    for f in std::fs::read_dir(data_dir).unwrap() {
        let f = f.unwrap().path();
        if f.to_string_lossy().contains("-correct") {
            for n in mathcoder_lce::record::read_jsonl::<mathcoder_lce::OutputRecord>(&f).unwrap() {
                correct.insert(n.record.question());
            }
        }
    }
    let first: Vec<_> = mathcoder_datasets::Benchmark::Gsm8k.load().unwrap()[..20].to_vec();
    let expected: std::collections::BTreeSet<String> = first
        .iter()
        .filter(|p| correct.contains(&p.question))
        .map(|p| format!("{}#0", p.id))
        .collect();
    assert_eq!(
        kept.keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        expected
    );
    for v in kept.values() {
        assert!(v["provenance"]["teacher"]
            .as_str()
            .unwrap()
            .starts_with("lce:"));
        assert_eq!(v["provenance"]["acceptance"]["correct"], true);
        let blocks = v["messages"][2]["content"].as_array().unwrap();
        assert!(blocks.iter().any(|b| b["type"] == "execution"));
    }
    eprintln!(
        "lce teacher on 20 replayed GSM8K problems: kept {}, {}",
        kept.len(),
        String::from_utf8_lossy(&out.stdout)
    );
}
