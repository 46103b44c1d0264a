//! The `mathcoder` binary, end to end.

mod common;

use common::bin;

const RECORDS: &str = concat!(
    r#"{"id": "test/algebra/1.json", "messages": [{"role": "system", "content": [{"type": "text", "content": "s"}]}, {"role": "user", "content": [{"type": "text", "content": "What is 1/2+1/3?"}]}], "ground_truth": {"solution": "", "answer": "\\frac{5}{6}"}, "debug_result": [{"role": "code", "content": "1/2+1/3"}, {"role": "execution", "content": "0.8333333333333333"}, {"role": "text", "content": "\\frac{5}{6}"}], "completion": "\\frac{5}{6}"}"#,
    "\n",
    r#"{"id": "test/algebra/2.json", "messages": [{"role": "user", "content": [{"type": "text", "content": "What is 2+2?"}]}], "ground_truth": {"solution": "", "answer": "4"}, "debug_result": [{"role": "code", "content": "x"}, {"role": "execution", "content": "Traceback (most recent call last) NameError"}, {"role": "text", "content": "5"}], "completion": "5"}"#,
    "\n"
);

#[test]
fn grade_json_and_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("MATH_test_result-x-correct.jsonl");
    std::fs::write(&f, RECORDS).unwrap();
    let verdicts = dir.path().join("v.jsonl");
    let out = bin()
        .args(["grade", "--format", "json", "--verdicts"])
        .arg(&verdicts)
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["dataset"], "math");
    assert_eq!(summary["total"], 2);
    assert_eq!(summary["correct"], 1);
    assert_eq!(summary["accuracy"], 0.5);
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&verdicts)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for k in [
        "file",
        "line",
        "id",
        "gold",
        "extracted",
        "correct",
        "reason",
    ] {
        assert!(lines[0].get(k).is_some(), "missing {k}");
    }
    assert_eq!(lines[1]["line"], 2);
    assert_eq!(lines[1]["correct"], false);

    let text = bin().arg("grade").arg(&f).output().unwrap();
    let s = String::from_utf8_lossy(&text.stdout);
    assert!(s.contains("accuracy 50.00%"), "{s}");
    assert!(s.contains("subject (n)"), "MATH table: {s}");
    assert!(s.contains("0.50 errors"), "{s}");
}

/// A GSM8K record in the authors' format whose completion is `answer` (gold 4).
fn gsm8k_record(id: &str, answer: &str) -> String {
    format!(
        r#"{{"id": "{id}", "messages": [{{"role": "user", "content": [{{"type": "text", "content": "What is 2+2?"}}]}}], "ground_truth": {{"solution": "", "answer": "4"}}, "debug_result": [{{"role": "text", "content": "{answer}"}}], "completion": "{answer}"}}"#
    ) + "\n"
}

#[test]
fn grade_paired_compares_runs_problem_by_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    // a is right on p0-p9 and p10; b is right on p10 and p11 only; p12 is only in b.
    let mut ra = String::new();
    let mut rb = String::new();
    for i in 0..12 {
        ra += &gsm8k_record(&format!("p{i}"), if i <= 10 { "4" } else { "5" });
        rb += &gsm8k_record(&format!("p{i}"), if i >= 10 { "4" } else { "5" });
    }
    rb += &gsm8k_record("p12", "4");
    std::fs::write(&a, ra).unwrap();
    std::fs::write(&b, rb).unwrap();
    let s = common::stdout_of(
        bin()
            .args(["grade", "--dataset", "gsm8k", "--paired"])
            .args([&a, &b]),
    );
    assert!(s.contains("accuracy 91.67% (95% CI 64.6-98.5%)"), "{s}");
    // 10 vs 1 discordant: p = 2 * 12 / 2^11.
    assert!(
        s.contains("12 problems in both: both right 1, only the first 10, only the second 1, both wrong 0; exact McNemar p = 0.012"),
        "{s}"
    );
    let json = common::stdout_of(
        bin()
            .args([
                "grade",
                "--dataset",
                "gsm8k",
                "--paired",
                "--format",
                "json",
            ])
            .args([&a, &b]),
    );
    let last: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(last["paired"]["first_only"], 10);
    assert_eq!(last["paired"]["common"], 12);
    // One run, or repeated ids: a clear error.
    let one = bin()
        .args(["grade", "--dataset", "gsm8k", "--paired"])
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(one.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&one.stderr).contains("at least two runs"));
    std::fs::write(&b, gsm8k_record("p1", "4").repeat(2)).unwrap();
    let rep = bin()
        .args(["grade", "--dataset", "gsm8k", "--paired"])
        .args([&a, &b])
        .output()
        .unwrap();
    assert_eq!(rep.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&rep.stderr).contains("several records for p1"));
}

#[test]
fn bad_inputs_give_clear_errors() {
    let out = bin()
        .args(["grade", "/nonexistent/x.jsonl"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.jsonl"));
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("unknown_thing.jsonl");
    std::fs::write(&f, RECORDS).unwrap();
    let out = bin().arg("grade").arg(&f).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--dataset"));
    std::fs::write(&f, "{not json\n").unwrap();
    let out = bin()
        .args(["grade", "--dataset", "gsm8k"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(":1: not a valid record"));
}

#[test]
fn compare_exit_codes() {
    let ok = bin()
        .args(["compare", "\\frac{10}{11}", "0.9091", "--dataset", "math"])
        .output()
        .unwrap();
    assert_eq!(ok.status.code(), Some(0));
    let exact = bin()
        .args([
            "compare",
            "\\frac{10}{11}",
            "0.9091",
            "--dataset",
            "math",
            "--approx",
            "exact",
        ])
        .output()
        .unwrap();
    assert_eq!(exact.status.code(), Some(1));
}

#[test]
fn datasets_lists_every_benchmark() {
    let out = bin()
        .args(["datasets", "--format", "json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "gsm8k",
            "math",
            "math500",
            "svamp",
            "mathematics",
            "simuleq",
            "asdiv",
            "gsm-hard",
            "mawps",
            "gsm8k-train",
            "math-train"
        ]
    );
    assert_eq!(rows[1]["size"], 5000);
    assert_eq!(rows[9]["split"], "train");
    assert_eq!(rows[9]["size"], 7473);
}

#[test]
fn table2_check_passes_on_vendored_outputs() {
    let out = bin().args(["table2", "--check", "1.0"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("MathCoder-L-7B"));
}

#[test]
fn exec_runs_cells_in_one_session() {
    let out = bin()
        .args([
            "exec",
            "--format",
            "json",
            "--cells",
            r#"["a = 20", "a + 22", "1/0", "print('x')"]"#,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.len(), 4);
    assert_eq!(v[0]["text"], "<empty_execution>");
    assert_eq!(v[1]["text"], "42");
    assert_eq!(v[1]["kind"], "ok");
    assert_eq!(v[2]["kind"], "error");
    assert!(v[2]["text"].as_str().unwrap().contains("ZeroDivisionError"));
    assert_eq!(v[3]["text"], "x");
    assert!(v[1]["duration_ms"].as_f64().unwrap() >= 0.0);
}

#[test]
fn exec_reports_a_bad_interpreter_clearly() {
    let out = bin()
        .args([
            "exec",
            "--python",
            "/nonexistent/python3",
            "--cells",
            "[\"1\"]",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("/nonexistent/python3") && err.contains("not a working Python"),
        "{err}"
    );
    let out = bin()
        .args(["exec", "--cells", "not json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("JSON array"));
}
