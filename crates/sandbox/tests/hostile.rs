//! Hostile cells, each in a session next to a healthy one that must keep working. No escape, no
//! hang past the timeout plus a margin, nothing left behind, and the pool keeps serving.

mod common;

use common::{sandbox, wait_gone, TIMEOUT};
use mathcoder_sandbox::{ExecutionKind, ExecutionResult, Session};
use std::time::Duration;

const MARGIN: Duration = Duration::from_secs(4);

struct Outcome {
    results: Vec<ExecutionResult>,
    hostile: Session,
}

/// Runs `cells` in a hostile session while a healthy session holds state; checks the healthy
/// one afterwards, bounds every cell's time, and returns the results.
async fn with_neighbour(cells: &[&str]) -> Outcome {
    let sb = sandbox();
    let mut healthy = sb.session().await.expect("healthy session");
    assert_eq!(healthy.execute("x = 41").await.kind, ExecutionKind::Ok);
    let mut hostile = sb.session().await.expect("hostile session");
    let mut results = Vec::new();
    for c in cells {
        let t = std::time::Instant::now();
        let r = hostile.execute(c).await;
        assert!(
            t.elapsed() < TIMEOUT + MARGIN,
            "cell took {:?}: {c}",
            t.elapsed()
        );
        results.push(r);
    }
    let r = healthy.execute("x + 1").await;
    assert_eq!(r.text, "42", "the healthy neighbour broke: {:?}", r);
    assert!(sb.session().await.is_ok(), "the pool stopped serving");
    Outcome { results, hostile }
}

/// Closes a session and checks that its process and working directory are gone.
async fn close_and_check(s: Session) {
    let pid = s.pid();
    let dir = s.workdir().map(|d| d.to_path_buf());
    s.close();
    if let Some(pid) = pid {
        assert!(wait_gone(pid).await, "session process {pid} survived");
    }
    if let Some(d) = dir {
        assert!(!d.exists(), "working directory {} left behind", d.display());
    }
}

fn denied(r: &ExecutionResult) -> bool {
    r.kind == ExecutionKind::Error
        && (r.text.contains("PermissionError")
            || r.text.contains("Operation not permitted")
            || r.text.contains("Permission denied"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infinite_loop_is_interrupted_and_state_kept() {
    let o = with_neighbour(&["y = 7", "while True: pass", "y * 6"]).await;
    assert_eq!(o.results[1].kind, ExecutionKind::Timeout);
    assert!(o.results[1].text.contains("Timeout waiting for reply"));
    assert_eq!(
        o.results[2].text, "42",
        "state survives an interrupted cell"
    );
    assert!(!o.results[2].restarted);
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_thread_replaces_the_process() {
    let o = with_neighbour(&["import threading\nthreading.Thread(target=lambda: [0 for _ in iter(int, 1)], daemon=True).start()\nwhile True: pass", "1 + 1"]).await;
    assert_eq!(o.results[0].kind, ExecutionKind::Timeout);
    assert_eq!(o.results[1].text, "2");
    assert!(
        o.results[1].restarted,
        "a session whose thread cannot be stopped is replaced"
    );
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignored_interrupt_is_killed() {
    let o = with_neighbour(&[
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
        "1 + 1",
    ])
    .await;
    assert_eq!(o.results[0].kind, ExecutionKind::Timeout);
    assert_eq!(o.results[1].text, "2");
    assert!(o.results[1].restarted);
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bombs_fail_inside_the_session() {
    let o = with_neighbour(&[
        "b = bytearray(16 * 1024**3)",
        "import mmap\nm = []\nwhile True:\n    m.append(mmap.mmap(-1, 256 * 1024**2))",
        "del m\na = []\nwhile True:\n    a.append(bytearray(512 * 1024**2))",
        "a = None\n1 + 1",
    ])
    .await;
    assert!(
        o.results[0].text.contains("MemoryError"),
        "{}",
        o.results[0].text
    );
    assert!(
        o.results[1].text.contains("Cannot allocate memory")
            || o.results[1].text.contains("MemoryError"),
        "{}",
        o.results[1].text
    );
    // Zero-filling 512 MiB chunks is slow: running out of memory or out of time are both fine.
    assert!(
        o.results[2].text.contains("MemoryError") || o.results[2].kind == ExecutionKind::Timeout,
        "{}",
        o.results[2].text
    );
    assert_eq!(o.results[3].text, "2");
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_new_processes() {
    let o = with_neighbour(&[
        "import os\nwhile True:\n    os.fork()",
        "import os\nos.system('touch escaped')",
        "import subprocess\nsubprocess.run(['ls'])",
        "import os\nos.path.exists('escaped')",
        "import os\nos.execv('/bin/sh', ['sh'])",
    ])
    .await;
    assert!(denied(&o.results[0]), "{}", o.results[0].text);
    assert_ne!(o.results[1].text, "0", "os.system must not run a command");
    assert!(denied(&o.results[2]), "{}", o.results[2].text);
    assert_eq!(o.results[3].text, "False");
    assert!(denied(&o.results[4]), "{}", o.results[4].text);
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_network() {
    let o = with_neighbour(&[
        "import socket\ns = socket.socket()\ns.connect(('127.0.0.1', 22))",
        "import socket\nsocket.create_connection(('93.184.216.34', 80), timeout=1)",
        "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('8.8.8.8', 53))",
        "import socket\nsocket.socket(socket.AF_UNIX).connect('/run/systemd/private')",
    ])
    .await;
    for r in &o.results {
        assert!(denied(r), "{}", r.text);
    }
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_outside_the_working_directory_fail() {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let sb = sandbox();
    let probe = sb.session().await.unwrap();
    let landlock = probe.isolation().landlock > 0;
    drop(probe);
    let cells = [
        "open('/mathcoder-escape', 'w').write('x')".to_string(),
        "open('/tmp/mathcoder-escape', 'w').write('x')".to_string(),
        format!(
            "open({:?}, 'w').write('x')",
            format!("{home}/mathcoder-escape")
        ),
        "open('inside.txt', 'w').write('fine')".to_string(),
    ];
    let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
    let o = with_neighbour(&refs).await;
    if landlock {
        for r in &o.results[..3] {
            assert!(denied(r), "{}", r.text);
        }
    }
    assert_eq!(o.results[3].text, "4");
    for p in ["/mathcoder-escape", "/tmp/mathcoder-escape"] {
        assert!(!std::path::Path::new(p).exists(), "{p} was written");
    }
    assert!(!std::path::Path::new(&format!("{home}/mathcoder-escape")).exists());
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_cannot_read_each_other() {
    let sb = sandbox();
    let mut a = sb.session().await.unwrap();
    if a.isolation().landlock == 0 {
        eprintln!("SKIP: Landlock is not available on this kernel");
        return;
    }
    assert_eq!(
        a.execute("open('secret.txt', 'w').write('s3cret')")
            .await
            .text,
        "6"
    );
    let secret = a.workdir().unwrap().join("secret.txt");
    let o = with_neighbour(&[
        &format!("open({:?}).read()", secret.display().to_string()),
        "import os\nos.listdir('..')",
    ])
    .await;
    assert!(denied(&o.results[0]), "{}", o.results[0].text);
    assert!(denied(&o.results[1]), "{}", o.results[1].text);
    close_and_check(o.hostile).await;
    close_and_check(a).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cannot_kill_the_supervisor_or_the_zygote() {
    let sb = sandbox();
    sb.warm_up().await.unwrap();
    let zygote = sb.zygote_pid().await.expect("zygote running");
    let me = std::process::id();
    let cells = [
        format!("import os, signal\nos.kill({me}, signal.SIGKILL)"),
        format!("import os, signal\nos.kill({zygote}, signal.SIGKILL)"),
        "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)".to_string(),
        "import os, signal\nos.kill(-1, signal.SIGKILL)".to_string(),
    ];
    let refs: Vec<&str> = cells.iter().map(String::as_str).collect();
    let o = with_neighbour(&refs).await;
    for r in &o.results {
        assert!(denied(r), "{}", r.text);
    }
    assert_eq!(sb.zygote_pid().await, Some(zygote), "the zygote survived");
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segfault_and_exit_are_contained() {
    let o = with_neighbour(&[
        "import ctypes\nctypes.string_at(0)",
        "z = 1\nz",
        "import sys\nsys.exit(3)",
        "z + 1",
        "import os\nos._exit(0)",
        "5",
    ])
    .await;
    assert_eq!(o.results[0].kind, ExecutionKind::Crash);
    assert!(
        o.results[0].text.contains("signal 11"),
        "{}",
        o.results[0].text
    );
    assert_eq!(o.results[1].text, "1");
    assert!(o.results[1].restarted);
    assert!(
        o.results[2].text.contains("SystemExit: 3"),
        "{}",
        o.results[2].text
    );
    assert_eq!(
        o.results[3].text, "2",
        "sys.exit() keeps the session, as in Jupyter"
    );
    assert_eq!(o.results[4].kind, ExecutionKind::Crash);
    assert_eq!(o.results[5].text, "5");
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_output_and_descriptors() {
    let o = with_neighbour(&[
        "input('?')",
        "print('x' * 100_000_000)",
        "import os\nos.write(1, b'c-level\\n')\n7",
        "10**100000",
        "import os\nos.close(0); os.close(1); os.close(2)",
        "print('still here')\n1 + 1",
    ])
    .await;
    assert!(
        o.results[0].text.contains("StdinNotImplementedError"),
        "{}",
        o.results[0].text
    );
    assert!(o.results[1].truncated);
    assert!(o.results[1].text.len() < 200 * 1024, "output is capped");
    assert!(o.results[1].text.contains("output truncated"));
    assert_eq!(o.results[2].text, "c-level\n7");
    assert!(
        o.results[3].text.contains("ValueError") || o.results[3].truncated,
        "{}",
        &o.results[3].text[..200.min(o.results[3].text.len())]
    );
    assert_eq!(o.results[5].text, "still here\n2");
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursion_and_late_printing_thread() {
    let o = with_neighbour(&[
        "import sys\nsys.setrecursionlimit(400)\ndef f(n):\n    return f(n + 1)\nf(0)",
        "import threading, time, sys\ndef chatter():\n    while True:\n        print('tick'); time.sleep(0.01)\nthreading.Thread(target=chatter, daemon=True).start()\n'started'",
        "import time\ntime.sleep(0.2)\n'after'",
        "3",
    ])
    .await;
    assert!(
        o.results[0].text.contains("RecursionError"),
        "{}",
        o.results[0].text
    );
    assert_eq!(
        o.results[1].text.trim_end_matches(['\n']).lines().last(),
        Some("'started'")
    );
    assert!(
        o.results[2].text.ends_with("'after'"),
        "{}",
        o.results[2].text
    );
    assert!(o.results[3].text.ends_with('3'));
    close_and_check(o.hostile).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolation_is_reported() {
    let s = sandbox().session().await.unwrap();
    let i = s.isolation();
    eprintln!("isolation: {i:?}");
    // seccomp is built for x86_64/aarch64 and always applied there.
    if cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
        assert!(i.seccomp);
    }
    assert!(i.rlimits["address_space"].is_number());
}
