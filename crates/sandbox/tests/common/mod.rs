//! Shared set-up: one sandbox per test binary over the provisioned environment (created on
//! first use, as `mathcoder setup` would; needs network access to PyPI the first time).

use mathcoder_sandbox::{EnvSpec, Limits, Sandbox, SandboxConfig};
use std::sync::OnceLock;
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(2);

/// For tests of timeouts: cells are interrupted after [`TIMEOUT`].
#[allow(dead_code)]
pub fn sandbox() -> Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| make(TIMEOUT)).clone()
}

/// For tests where no cell should time out: a timeout long enough that a loaded machine does
/// not turn a slow cell (the first `import numpy` in a session) into a timeout.
#[allow(dead_code)]
pub fn patient_sandbox() -> Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| make(PATIENT_TIMEOUT)).clone()
}

#[allow(dead_code)]
pub const PATIENT_TIMEOUT: Duration = Duration::from_secs(60);

fn make(cell_timeout: Duration) -> Sandbox {
    let config = SandboxConfig {
        limits: Limits {
            cell_timeout,
            interrupt_grace: Duration::from_secs(1),
            address_space: 2 << 30,
            max_output: 64 * 1024,
            ..Limits::default()
        },
        ..SandboxConfig::default()
    };
    Sandbox::provision(&EnvSpec::default(), config, &|l| eprintln!("setup: {l}")).expect("sandbox")
}

/// Is a process gone (or a zombie about to be reaped)?
#[allow(dead_code)]
pub fn process_gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

#[allow(dead_code)]
pub async fn wait_gone(pid: i32) -> bool {
    for _ in 0..100 {
        if process_gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
