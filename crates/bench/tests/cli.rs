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
