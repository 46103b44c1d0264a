//! Snapshots of what the binary prints (insta): reports, listings and error messages, so that
//! a change of presentation shows up in review. Also the exit code of every command when it
//! cannot do its job, and that a run's records are graded once.
//!
//! Update after an intended change with `INSTA_UPDATE=always cargo test -p mathcoder --test
//! snapshots` (or `cargo insta review`), then read the diff.

use std::path::Path;
use std::process::{Command, Output};

mod common;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mathcoder"));
    c.env("NO_COLOR", "1").env_remove("MATHCODER_DATA");
    c
}

fn data(rel: &str) -> String {
    format!("{}/../../data/{rel}", env!("CARGO_MANIFEST_DIR"))
}

/// stdout and stderr with this machine's paths replaced.
fn shown(out: &Output, dir: Option<&Path>) -> String {
    let mut s = format!(
        "exit: {:?}\n--- stdout\n{}--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(d) = dir {
        s = s.replace(&d.display().to_string(), "[DIR]");
    }
    let port = regex_lite_port(&s);
    if let Some(p) = port {
        s = s.replace(&p, "127.0.0.1:[PORT]");
    }
    s.replace(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .display()
            .to_string(),
        "[REPO]",
    )
}

/// The first `127.0.0.1:NNNN` in `s`.
fn regex_lite_port(s: &str) -> Option<String> {
    let i = s.find("127.0.0.1:")?;
    let rest = &s[i + 10..];
    let n = rest.chars().take_while(|c| c.is_ascii_digit()).count();
    (n > 0).then(|| s[i..i + 10 + n].to_string())
}

#[test]
fn datasets_listing() {
    let out = bin().arg("datasets").output().unwrap();
    insta::assert_snapshot!(shown(&out, None));
}

#[test]
fn grade_report_on_released_outputs() {
    let out = bin()
        .arg("grade")
        .arg(data(
            "released-outputs/MathCoder-L-7b/simuleq/simuleq_test_result-20230918-0012-correct.jsonl.gz",
        ))
        .arg(data(
            "released-outputs/MathCoder-L-7b/simuleq/simuleq_test_result-20230918-0012-wrong.jsonl.gz",
        ))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    insta::assert_snapshot!(shown(&out, None));
}

#[test]
fn table2_reproduction() {
    let out = bin()
        .arg("table2")
        .arg(data("released-outputs"))
        .output()
        .unwrap();
    insta::assert_snapshot!(shown(&out, None));
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Each cause is said once, and the exit status is 2 when the command could not run.
#[test]
fn error_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<String>)> = vec![
        (
            "grade_missing_file",
            vec!["grade".into(), "/nonexistent.jsonl".into()],
        ),
        (
            "eval_unknown_dataset",
            vec![
                "eval".into(),
                "--dataset".into(),
                "no-such-benchmark".into(),
                "--out".into(),
                dir.path().join("o").display().to_string(),
            ],
        ),
        (
            "native_without_model",
            vec![
                "solve".into(),
                "2+2".into(),
                "--backend".into(),
                "native".into(),
            ],
        ),
        (
            "tgi_with_model",
            vec!["solve".into(), "2+2".into(), "--model".into(), "m".into()],
        ),
        (
            "compare_unknown_dataset",
            vec![
                "compare".into(),
                "1".into(),
                "1".into(),
                "--dataset".into(),
                "nope".into(),
            ],
        ),
        (
            "generate_missing_model",
            vec![
                "generate".into(),
                "--model".into(),
                "/nonexistent-model".into(),
                "--prompt".into(),
                "x".into(),
            ],
        ),
        (
            "table2_missing_dir",
            vec!["table2".into(), "/nonexistent-dir".into()],
        ),
        (
            "solve_without_server",
            vec![
                "solve".into(),
                "What is 2+2?".into(),
                "--endpoint".into(),
                format!("http://127.0.0.1:{}", closed_port()),
            ],
        ),
    ];
    let mut all = String::new();
    for (name, args) in cases {
        let out = bin().args(&args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(2),
            "{name}: {}",
            shown(&out, Some(dir.path()))
        );
        all.push_str(&format!("## {name}\n{}\n", shown(&out, Some(dir.path()))));
    }
    insta::assert_snapshot!(all);
}

/// Usage errors (clap) exit with 2 as well; a comparison that fails exits with 1.
#[test]
fn exit_codes() {
    let code = |args: &[&str]| bin().args(args).output().unwrap().status.code();
    assert_eq!(code(&["no-such-command"]), Some(2));
    assert_eq!(code(&["grade"]), Some(2));
    assert_eq!(code(&["eval", "--dataset", "gsm8k"]), Some(2));
    assert_eq!(code(&["solve", "x", "--backend", "nope"]), Some(2));
    assert_eq!(code(&["compare", "1", "2"]), Some(1));
    assert_eq!(code(&["compare", "1", "1.0"]), Some(0));
    assert_eq!(code(&["datasets"]), Some(0));
    assert_eq!(code(&["--version"]), Some(0));
    assert_eq!(code(&["audit", "/nonexistent-dir"]), Some(2));
    assert_eq!(
        code(&["exec", "--python", "/nonexistent/python3", "--cells", "[]"]),
        Some(2)
    );
    // `bench` runs mathcoder-bench, whose usage errors exit with 2 too.
    assert_eq!(code(&["bench", "no-such-benchmark"]), Some(2));
    assert_eq!(code(&["bench", "--help"]), Some(0));
}

/// A run record carries its verdict; `grade` reports it as stored (the file is not graded
/// again) unless `--regrade` is given. The record below was tampered with: its stored verdict
/// says correct for a wrong answer.
#[test]
fn run_records_are_reported_from_their_stored_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("results.jsonl");
    std::fs::write(
        &f,
        concat!(
            r#"{"id": "gsm8k-1", "messages": [{"role": "system", "content": [{"type": "text", "content": "S"}]}, {"role": "user", "content": [{"type": "text", "content": "What is 2+2?"}]}], "ground_truth": {"answer": "4"}, "debug_result": [{"role": "system", "content": "S"}, {"role": "user", "content": "What is 2+2?"}, {"role": "text", "content": "5"}], "completion": "5", "mathcoder": {"sample": 0, "dataset": "gsm8k", "subject": null, "level": null, "stop": "end_of_message", "stop_detail": {"kind": "end_of_message"}, "failed": false, "model_blocks": 1, "rounds": 1, "generated_tokens": 3, "total_ms": 1.0, "generate_ms": 1.0, "execute_ms": 0.0, "backend": "tgi x", "extracted": "5", "correct": true, "reason": "tampered"}}"#,
            "\n"
        ),
    )
    .unwrap();
    let json = |extra: &[&str]| -> serde_json::Value {
        let out = bin()
            .args(["grade", "--format", "json"])
            .args(extra)
            .arg(&f)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let stored = json(&[]);
    assert_eq!(stored["dataset"], "gsm8k");
    assert_eq!(stored["correct"], 1);
    let regraded = json(&["--regrade"]);
    assert_eq!(regraded["correct"], 0);
}

/// `eval`'s report on 30 SimulEq problems replayed from MathCoder-L-7B's recorded outputs (with
/// real execution in the sandbox), and the same report when the finished run is resumed.
#[test]
fn eval_report_on_a_replayed_run() {
    let (_server, url) = common::replay_server(0.0);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let eval = || {
        bin()
            .args([
                "eval",
                "--dataset",
                "simuleq",
                "--limit",
                "30",
                "--concurrency",
                "4",
                // The recorded solutions come from the authors' loop, which went on through
                // repeated blocks.
                "--no-repetition-stop",
            ])
            .args(["--endpoint", &url, "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = eval();
    assert_eq!(
        first.status.code(),
        Some(0),
        "{}",
        shown(&first, Some(dir.path()))
    );
    let again = eval();
    assert_eq!(
        first.stdout, again.stdout,
        "a resumed finished run reports the same"
    );
    insta::assert_snapshot!(
        String::from_utf8_lossy(&first.stdout).replace(&dir.path().display().to_string(), "[DIR]")
    );
}
