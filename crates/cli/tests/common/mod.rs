//! What the binary's end-to-end tests share: the binaries, and a replay server serving
//! MathCoder-L-7B's vendored SimulEq outputs.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mathcoder"))
}

/// Runs the command, asserts that it succeeded (showing its output if not), returns its stdout.
pub fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// `mathcoder-bench` (where the replay server lives), built beside `mathcoder` by
/// `cargo test --workspace`.
pub fn bench_bin() -> Command {
    let path = Path::new(env!("CARGO_BIN_EXE_mathcoder"))
        .with_file_name(format!("mathcoder-bench{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (it builds mathcoder-bench)",
        path.display()
    );
    Command::new(path)
}

/// A child process killed when dropped.
pub struct Killed(pub Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a replay server on a free port (`latency_ms` per token) and returns it with its URL.
/// The one place that knows how the server is started (`mathcoder-bench replay-server`).
pub fn replay_server(latency_ms: f64) -> (Killed, String) {
    replay_server_of(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../data/released-outputs/MathCoder-L-7b/simuleq"
        ),
        latency_ms,
    )
}

/// A replay server over the recorded outputs in `data` (a file or directory).
pub fn replay_server_of(data: &str, latency_ms: f64) -> (Killed, String) {
    let mut c = bench_bin();
    c.args(["replay-server", data]);
    replay_server_with(c, latency_ms)
}

/// Starts `command` (`mathcoder-bench replay-server ...`) on a free port with `latency_ms` per
/// token, and returns it with its URL.
pub fn replay_server_with(mut command: Command, latency_ms: f64) -> (Killed, String) {
    let mut child = command
        .args(["--addr", "127.0.0.1:0", "--latency-ms"])
        .arg(latency_ms.to_string())
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
