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
    // Unsolved problems get two more draws (the offline teacher draws the same again).
    .args(["--samples", "2"])
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
    assert!(clean_data.len() > N / 2, "kept {}", clean_data.len());
    // A greedy draw for every problem, two more for each one it left unsolved.
    let tried = attempts(&clean);
    assert_eq!(tried.len(), N + 2 * (N - clean_data.len()));
    assert!(clean_data.keys().all(|k| k.ends_with("#0")));
    for (k, a) in &tried {
        let sample: usize = k.rsplit('#').next().unwrap().parse().unwrap();
        let problem = k.rsplit_once('#').unwrap().0;
        assert!(
            sample == 0 || !clean_data.contains_key(&format!("{problem}#0")),
            "{k}: {a}"
        );
    }
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

    eprintln!("uninterrupted run {uninterrupted:?}");
    kill_9_until_done(|| seed(&killed), &killed, attempts(&clean).len());
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
        .args(["--max-per-problem", "3"])
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

/// Runs `command` (a resumable data run writing `out`/attempts.jsonl, `total` lines when done)
/// and kills it with SIGKILL on observed progress, again and again, until it finishes.
fn kill_9_until_done(command: impl Fn() -> Command, out: &Path, total: usize) {
    let mut rng = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill schedule seed {rng}");
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
        let before = lines(out);
        let mut child = command().spawn().unwrap();
        let started = Instant::now();
        let mut done = None;
        while lines(out) < before + wanted {
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
        let after = lines(out);
        if after > before && after < total {
            mid_run += 1;
        }
        if mid_run >= 3 {
            break command().status().unwrap();
        }
    };
    assert!(finished.success());
    eprintln!("{kills} kills, {mid_run} while records were being written");
    assert!(mid_run >= 1, "no kill landed mid-run");
}

fn distill(out: &Path) -> Command {
    let mut c = bin();
    c.args([
        "data",
        "distill",
        "--problems",
        "gsm8k-train",
        "--teacher",
        "annotations",
    ])
    .args(["--limit", "60", "--samples", "3", "--keep-all"])
    .args(["--concurrency", "4", "--seed", "5", "--out"])
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

/// `data distill` killed with SIGKILL on observed progress and resumed: the same kept solutions
/// and attempts as an uninterrupted run, nothing lost or duplicated.
#[test]
fn distill_kill_9_then_resume() {
    let dir = tempfile::tempdir().unwrap();
    let (clean, killed) = (dir.path().join("clean"), dir.path().join("killed"));
    let out = distill(&clean).stdout(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let problem_key = |v: &Value| v["problem_id"].as_str().unwrap().to_string();
    let clean_attempts = keyed(&clean.join("attempts.jsonl"), problem_key);
    let clean_data = data(&clean);
    assert_eq!(clean_attempts.len(), 60);
    let kept: Vec<&Value> = clean_attempts
        .values()
        .filter(|a| a["outcome"] == "kept")
        .collect();
    assert!(kept.len() > 30, "kept {}", kept.len());
    // --keep-all: the three agreeing solutions of each kept problem, seeds 5, 6, 7.
    assert_eq!(clean_data.len(), 3 * kept.len());
    assert!(clean_data
        .values()
        .all(|v| v["provenance"]["acceptance"]["agreeing"] == 3
            && v["provenance"]["seed"].as_u64().unwrap()
                == 5 + v["provenance"]["sample"].as_u64().unwrap()));

    kill_9_until_done(|| distill(&killed), &killed, 60);
    assert_eq!(data(&killed), clean_data);
    let strip = |m: BTreeMap<String, Value>| -> BTreeMap<String, Value> {
        m.into_iter()
            .map(|(k, mut v)| {
                v.as_object_mut().unwrap().remove("detail");
                (k, v)
            })
            .collect()
    };
    assert_eq!(
        strip(keyed(&killed.join("attempts.jsonl"), problem_key)),
        strip(clean_attempts)
    );
}

/// The three-model agreement filter on real outputs: MathCoder-L-7B, L-13B and CL-13B's released
/// SVAMP solutions served as samples 0, 1 and 2 (a replay server choosing the model by seed), on
/// the first 30 SVAMP problems. Kept = exactly the problems whose three recorded final answers
/// our grader judges equivalent; the run reports how many of those equal the gold.
#[test]
fn distill_three_released_models_on_svamp() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../data/released-outputs");
    let models = ["MathCoder-L-7b", "MathCoder-L-13b", "MathCoder-CL-13b"];
    let dirs: Vec<String> = models.iter().map(|m| format!("{root}/{m}/SVAMP")).collect();
    let mut server = common::bench_bin();
    server.arg("replay-server").args(&dirs).arg("--per-seed");
    let (_server, url) = common::replay_server_with(server, 0.0);
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["data", "distill", "--problems", "svamp", "--teacher", "lce"])
        .args([
            "--samples",
            "3",
            "--seed",
            "0",
            "--limit",
            "30",
            "--keep-all",
        ])
        .args(["--concurrency", "8", "--endpoint", &url, "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    eprintln!("{text}");

    // The oracle: each model's recorded last block, by question.
    let grader = mathcoder_grade::Grader::new(Default::default());
    let conv = mathcoder_grade::Dataset::Svamp;
    let last_blocks: Vec<std::collections::HashMap<String, String>> = dirs
        .iter()
        .map(|d| {
            let mut m = std::collections::HashMap::new();
            for f in mathcoder_lce::record_files(&[d.as_str()]).unwrap() {
                for n in
                    mathcoder_lce::record::read_jsonl::<mathcoder_lce::OutputRecord>(&f).unwrap()
                {
                    let last = n
                        .record
                        .blocks()
                        .last()
                        .map(|b| b.content.clone())
                        .unwrap_or_default();
                    m.insert(n.record.question(), last);
                }
            }
            m
        })
        .collect();
    let problems = mathcoder_datasets::Benchmark::Svamp.load().unwrap();
    let (mut expected, mut correct) = (std::collections::BTreeSet::new(), 0);
    for p in &problems[..30] {
        let answers: Vec<Option<String>> = last_blocks
            .iter()
            .map(|m| {
                m.get(&p.question)
                    .and_then(|b| mathcoder_grade::extract(b).ok())
                    .map(|e| e.answer)
            })
            .collect();
        let Some(first) = answers[0].clone() else {
            continue;
        };
        if answers.iter().all(|a| {
            a.as_deref()
                .is_some_and(|a| grader.equivalent(conv, &first, a).correct)
        }) {
            expected.insert(p.id.clone());
            correct += grader
                .grade(
                    conv,
                    p.gold(),
                    &last_blocks[0][&p.question],
                    Some(&p.question),
                )
                .correct as usize;
        }
    }
    let tried = keyed(&dir.path().join("attempts.jsonl"), |v| {
        v["problem_id"].as_str().unwrap().to_string()
    });
    assert_eq!(tried.len(), 30);
    let kept: std::collections::BTreeSet<String> = tried
        .iter()
        .filter(|(_, a)| a["outcome"] == "kept")
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(kept, expected);
    assert!(kept.len() >= 10, "kept {}", kept.len());
    // Three solutions per kept problem, one from each model (sample = model).
    assert_eq!(data(dir.path()).len(), 3 * kept.len());
    let line = format!(
        ">= 3 agree: {} problems; agreed answer = gold on {correct}/{}",
        kept.len(),
        kept.len()
    );
    assert!(text.contains(&line), "{line:?} not in {text}");
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
