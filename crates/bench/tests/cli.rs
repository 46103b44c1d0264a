//! The `mathcoder-bench` binary end to end: the replay server answers a TGI request with a
//! recorded block, and `mathcoder bench` forwards to this binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

fn bench() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mathcoder-bench"))
}

#[test]
fn replay_server_serves_a_recorded_block() {
    let data = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs/MathCoder-L-7b/simuleq"
    );
    let mut child = bench()
        .args(["replay-server", data, "--addr", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut url = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut url)
        .unwrap();
    let addr = url.trim().trim_start_matches("http://").to_string();
    let body = r#"{"inputs":"no such problem","parameters":{"max_new_tokens":8}}"#;
    let mut s = TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /generate HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(reply.starts_with("HTTP/1.1 "), "{reply}");
}

#[test]
fn unknown_benchmark_is_a_usage_error() {
    let out = bench().arg("no-such-bench").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn engine_bench_measures_each_batch_size() {
    let model = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../engine/tests/fixtures/llama2-tiny"
    );
    let out = bench()
        .args(["engine", "--model", model, "--threads", "1"])
        .args(["--prompt-tokens", "8", "--decode-tokens", "3"])
        .args(["--batch", "2", "3", "--repeats", "2", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repeats"], 2);
    let row = &v["rows"][0];
    assert!(row["decode_tok_s"].as_f64().unwrap() > 0.0, "{row}");
    // The bound comes from a bandwidth measured in the row's own process.
    assert!(row["read_bandwidth_gb_s"].as_f64().unwrap() > 0.0, "{row}");
    assert!(
        row["bandwidth_bound_tok_s"].as_f64().unwrap() > 0.0,
        "{row}"
    );
    assert!(
        row["resident_weight_bytes_per_token"].as_f64().unwrap()
            >= row["weight_bytes_per_token"].as_f64().unwrap(),
        "{row}"
    );
    let batched = row["batched_decode"].as_array().unwrap();
    let seqs: Vec<u64> = batched
        .iter()
        .map(|b| b["sequences"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 3]);
    // Each sequence decodes at most its --decode-tokens after the first token (fewer if the
    // random-weight model writes a stop token).
    for (b, n) in batched.iter().zip([2, 3]) {
        let tokens = b["tokens"].as_u64().unwrap();
        assert!(tokens > 0 && tokens <= n * 3, "{b}");
    }
}
