//! Secrets in the supervisor's environment never reach model-written code: sessions start from
//! the allow-listed environment (`policy::SANDBOX_ENV`), and hostile cells look for a secret
//! through every channel they have (the environment, `/proc/self/environ`, every ancestor's and
//! every other process's `/proc/<pid>/environ`, libc's `getenv`, a subprocess).
//!
//! `/proc/<pid>/environ` shows a process's environment as it was at exec, so the secret has to
//! be there from the start: the outer test runs this test binary again with the secret in its
//! environment, and the inner test (a no-op in a normal run) is the supervisor.

mod common;

use mathcoder_sandbox::policy::SANDBOX_ENV;
use mathcoder_sandbox::ExecutionKind;
use std::process::Command;

/// The secret's value: what no cell may print.
const SECRET: &str = "sk-mathcoder-test-4f9c2e7a1b";
/// Names the secret is stored under in the supervisor's environment.
const NAMES: [&str; 3] = ["OPENAI_API_KEY", "HF_TOKEN", "MATHCODER_TEST_SECRET"];
/// Set in the inner run only.
const INNER: &str = "MATHCODER_SECRETS_TEST_INNER";
const INNER_TEST: &str = "supervisor_with_secrets";

#[test]
fn secrets_in_the_supervisor_environment_stay_out_of_sessions() {
    if std::env::var_os(INNER).is_some() {
        return;
    }
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", INNER_TEST, "--nocapture", "--test-threads=1"])
        .env(INNER, "1");
    for n in NAMES {
        cmd.env(n, SECRET);
    }
    let out = cmd.output().expect("running the inner test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the inner test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

/// The supervisor, started with the secret in its environment by the test above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supervisor_with_secrets() {
    if std::env::var_os(INNER).is_none() {
        eprintln!("runs inside secrets_in_the_supervisor_environment_stay_out_of_sessions");
        return;
    }
    // The channel exists: the secret is in this process's environment, also as the kernel
    // shows it.
    assert_eq!(std::env::var(NAMES[0]).as_deref(), Ok(SECRET));
    let own = std::fs::read(format!("/proc/{}/environ", std::process::id())).unwrap();
    assert!(String::from_utf8_lossy(&own).contains(SECRET));

    let sb = common::patient_sandbox();
    sb.warm_up().await.unwrap();
    let zygote = sb.zygote_pid().await.expect("zygote running");
    let me = std::process::id();
    let mut s = sb.session().await.unwrap();
    let landlock = s.isolation().landlock > 0;
    eprintln!("isolation: {:?}", s.isolation());

    // 1. The session's environment is exactly the allow-list.
    let r = s
        .execute("import os, json\nprint(json.dumps(sorted(os.environ)))")
        .await;
    assert_eq!(r.kind, ExecutionKind::Ok, "{}", r.text);
    let names: Vec<String> = serde_json::from_str(r.text.trim()).expect(&r.text);
    eprintln!("session environment: {names:?}");
    for n in &names {
        assert!(
            SANDBOX_ENV.iter().any(|(a, _)| a == n),
            "{n} is in the session's environment but not in the allow-list"
        );
    }
    let r = s
        .execute("import os\nprint(os.environ['HOME'] == os.getcwd(), os.environ['PATH'])")
        .await;
    assert!(r.text.starts_with("True "), "{}", r.text);

    // 2. Every channel a cell has. Each cell prints what it finds; none may print the secret.
    let mut cells: Vec<String> = vec![
        "import os\nos.environ.get('OPENAI_API_KEY')".into(),
        "import os\nprint(os.getenv('HF_TOKEN'), os.getenv('MATHCODER_TEST_SECRET'))".into(),
        "import os\ndict(os.environ)".into(),
        "import os\nos.environb".into(),
        "open('/proc/self/environ', 'rb').read()".into(),
        "import ctypes\ng = ctypes.CDLL(None).getenv\ng.restype = ctypes.c_char_p\n\
         print([g(n) for n in (b'OPENAI_API_KEY', b'HF_TOKEN', b'MATHCODER_TEST_SECRET')])"
            .into(),
        "import subprocess\nsubprocess.run(['env'], capture_output=True).stdout".into(),
        "import os\nos.popen('cat /proc/$PPID/environ').read()".into(),
        "import os\nopen('/proc/%d/environ' % os.getppid(), 'rb').read()".into(),
    ];
    // The zygote, the supervisor (which has the secret), its parent, and every other process
    // there is: each one's environ as the kernel shows it. Closed by Landlock (no `/proc` but
    // the session's own); without it only the environment channels above are closed.
    let own = s.pid().unwrap() as u32;
    let outside: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|&p| p != own)
        .collect();
    assert!(outside.contains(&me));
    let mut scan = usize::MAX;
    if landlock {
        for pid in [zygote as u32, me, std::os::unix::process::parent_id()] {
            cells.push(format!("open('/proc/{pid}/environ', 'rb').read()"));
        }
        scan = cells.len();
        cells.push(format!(
            "read, denied = [], 0\n\
         for p in {outside:?}:\n    \
             try:\n        \
                 read.append(open('/proc/%d/environ' % p, 'rb').read())\n    \
             except OSError:\n        \
                 denied += 1\n\
         print(denied, 'denied', read)"
        ));
    } else {
        eprintln!(
            "SKIP: no Landlock on this kernel, so a session can read other processes' \
             /proc/<pid>/environ; only the environment channels are checked"
        );
    }
    for (i, c) in cells.iter().enumerate() {
        let r = s.execute(c).await;
        let shown: String = r.text.chars().take(300).collect();
        eprintln!(
            "--- {}\n{:?}: {shown}",
            c.lines().last().unwrap_or(""),
            r.kind
        );
        assert!(
            !r.text.contains(SECRET),
            "a cell read the secret:\n{c}\n->\n{}",
            r.text
        );
        if c.contains(&format!("/proc/{me}/")) {
            assert!(r.text.contains("PermissionError"), "{}", r.text);
        }
        if i == scan {
            assert_eq!(r.text, format!("{} denied []", outside.len()));
        }
    }
    s.close();
}
