//! One stateful Python session.

use serde::Serialize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UnixStream;

use crate::protocol::{read_frame, write_frame, RawReply};
use crate::zygote::{Exit, Spawned, Zygote};
use crate::{render, Inner, SandboxError};

/// How a cell ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionKind {
    Ok,
    /// The cell raised (the text holds the traceback).
    Error,
    /// The cell ran past the time limit and was interrupted (or killed).
    Timeout,
    /// The session process died (the next cell runs in a fresh process).
    Crash,
}

/// The outcome of one cell.
#[derive(Clone, Debug, Serialize)]
pub struct ExecutionResult {
    /// What the model sees, by MathCoder's collection rule.
    pub text: String,
    pub kind: ExecutionKind,
    #[serde(serialize_with = "ser_ms")]
    pub duration: Duration,
    /// Output was cut at the output limit.
    pub truncated: bool,
    /// The session's process was replaced before this cell (earlier state is gone).
    pub restarted: bool,
    /// The parts the session reported (absent after a crash or a kill).
    pub raw: Option<RawReply>,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// What isolation a session actually got.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Isolation {
    /// Landlock ABI version applied (0: none).
    pub landlock: u32,
    pub seccomp: bool,
    pub network_namespace: bool,
    pub rlimits: serde_json::Value,
}

struct Live {
    pid: i32,
    stream: UnixStream,
    zygote: Arc<Zygote>,
    workdir: PathBuf,
}

/// A stateful Python session. Dropping it kills the process and removes its working directory.
pub struct Session {
    inner: Arc<Inner>,
    live: Option<Live>,
    pending_restart: bool,
    isolation: Isolation,
    cells: u64,
}

impl Session {
    pub(crate) async fn start(inner: Arc<Inner>) -> Result<Session, SandboxError> {
        let mut s = Session {
            inner,
            live: None,
            pending_restart: false,
            isolation: Isolation::default(),
            cells: 0,
        };
        s.spawn().await?;
        Ok(s)
    }

    async fn spawn(&mut self) -> Result<(), SandboxError> {
        let zygote = self.inner.zygote().await?;
        let (zygote, spawned) = match zygote.spawn().await {
            Ok(x) => (zygote, x),
            Err(SandboxError::ZygoteDied) => {
                // Restart the zygote once, transparently.
                let z = self.inner.restart_zygote(&zygote).await?;
                let x = z.spawn().await?;
                (z, x)
            }
            Err(e) => return Err(e),
        };
        self.take_over(zygote, spawned).await
    }

    /// Takes over a prepared session process: its first frame (already written when it finished
    /// preparing) reports the isolation it applied.
    async fn take_over(
        &mut self,
        zygote: Arc<Zygote>,
        spawned: Spawned,
    ) -> Result<(), SandboxError> {
        let Spawned { pid, fd, dir } = spawned;
        let std_stream = std::os::unix::net::UnixStream::from(fd);
        std_stream
            .set_nonblocking(true)
            .map_err(|e| SandboxError::Start(e.to_string()))?;
        let mut stream =
            UnixStream::from_std(std_stream).map_err(|e| SandboxError::Start(e.to_string()))?;
        let io = |e: std::io::Error| SandboxError::Start(format!("session {pid}: {e}"));
        let ready = tokio::time::timeout(Duration::from_secs(30), read_frame(&mut stream))
            .await
            .map_err(|_| SandboxError::Start(format!("session {pid} did not become ready")))?
            .map_err(io)?
            .ok_or_else(|| SandboxError::Start(format!("session {pid} exited during setup")))?;
        if self.inner.config.require_isolation {
            let failed = (zygote.landlock_abi > 0 && ready["landlock"].as_u64().unwrap_or(0) == 0)
                || (zygote.seccomp && ready["seccomp"] != true);
            if failed {
                kill(pid);
                self.inner.remove_workdir(dir);
                return Err(SandboxError::Start(format!(
                    "session isolation could not be applied (Landlock: {}, seccomp: {}{})",
                    ready["landlock"],
                    ready["seccomp"],
                    ready
                        .get("error")
                        .map(|e| format!(", {e}"))
                        .unwrap_or_default()
                )));
            }
        }
        self.isolation = Isolation {
            landlock: ready["landlock"].as_u64().unwrap_or(0) as u32,
            seccomp: ready["seccomp"] == true,
            network_namespace: zygote.network_namespace,
            rlimits: ready["rlimits"].clone(),
        };
        self.live = Some(Live {
            pid,
            stream,
            zygote,
            workdir: dir,
        });
        Ok(())
    }

    /// The isolation this session runs under.
    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    /// The session process's pid, while it is alive.
    pub fn pid(&self) -> Option<i32> {
        self.live.as_ref().map(|l| l.pid)
    }

    /// Its working directory, while it is alive.
    pub fn workdir(&self) -> Option<&std::path::Path> {
        self.live.as_ref().map(|l| l.workdir.as_path())
    }

    /// Cells executed so far.
    pub fn cells(&self) -> u64 {
        self.cells
    }

    /// Runs one cell. Never fails: timeouts and crashes are results; a session whose process
    /// died is replaced by a fresh one before the next cell (and that result says so).
    pub async fn execute(&mut self, code: &str) -> ExecutionResult {
        let start = Instant::now();
        let mut restarted = std::mem::take(&mut self.pending_restart);
        if self.live.is_none() {
            if let Err(e) = self.spawn().await {
                return ExecutionResult {
                    text: render::crash_text(&format!(
                        "the sandbox could not start a session: {e}"
                    )),
                    kind: ExecutionKind::Crash,
                    duration: start.elapsed(),
                    truncated: false,
                    restarted: true,
                    raw: None,
                };
            }
            restarted = true;
        }
        self.cells += 1;
        let limits = self.inner.config.limits.clone();
        let live = self.live.as_mut().expect("spawned above");
        let req = serde_json::json!({"op": "exec", "code": code, "max_output": limits.max_output});
        if write_frame(&mut live.stream, &req).await.is_err() {
            return self.crashed(start, restarted).await;
        }
        match tokio::time::timeout(limits.cell_timeout, read_frame(&mut live.stream)).await {
            Ok(Ok(Some(v))) => self.finish(v, start, restarted, false),
            Ok(_) => self.crashed(start, restarted).await,
            Err(_) => {
                // Interrupt (KeyboardInterrupt inside the cell, state kept), then give it a grace
                // period before killing the process.
                let pid = live.pid;
                signal(pid, libc::SIGINT);
                match tokio::time::timeout(limits.interrupt_grace, read_frame(&mut live.stream))
                    .await
                {
                    Ok(Ok(Some(v))) => self.finish(v, start, restarted, true),
                    _ => {
                        self.discard();
                        self.pending_restart = true;
                        ExecutionResult {
                            text: render::timeout_text(),
                            kind: ExecutionKind::Timeout,
                            duration: start.elapsed(),
                            truncated: false,
                            restarted,
                            raw: None,
                        }
                    }
                }
            }
        }
    }

    fn finish(
        &mut self,
        v: serde_json::Value,
        start: Instant,
        restarted: bool,
        interrupted: bool,
    ) -> ExecutionResult {
        let raw: RawReply = match serde_json::from_value(v) {
            Ok(r) => r,
            Err(e) => {
                self.discard();
                self.pending_restart = true;
                return ExecutionResult {
                    text: render::crash_text(&format!("the session sent a malformed reply: {e}")),
                    kind: ExecutionKind::Crash,
                    duration: start.elapsed(),
                    truncated: false,
                    restarted,
                    raw: None,
                };
            }
        };
        let limit = self.inner.config.limits.cell_timeout.as_secs_f64();
        let timed_out = interrupted && (raw.interrupted || raw.elapsed >= limit);
        if timed_out && raw.threads > 0 {
            // A thread the interrupt cannot reach is still running: replace the process.
            self.discard();
            self.pending_restart = true;
        }
        let (text, kind) = if timed_out {
            (render::timeout_text(), ExecutionKind::Timeout)
        } else if raw.error.is_some() {
            (render::mathcoder(&raw), ExecutionKind::Error)
        } else {
            (render::mathcoder(&raw), ExecutionKind::Ok)
        };
        ExecutionResult {
            text,
            kind,
            duration: start.elapsed(),
            truncated: raw.dropped > 0,
            restarted,
            raw: Some(raw),
        }
    }

    async fn crashed(&mut self, start: Instant, restarted: bool) -> ExecutionResult {
        let live = self.live.take().expect("live session");
        let mut reason = "the Python process died".to_string();
        for _ in 0..200 {
            if let Some(e) = live.zygote.exit_of(live.pid) {
                reason = match e {
                    Exit::Signal(s) => {
                        format!("the Python process died (signal {s}{})", signal_name(s))
                    }
                    Exit::Code(c) => format!("the Python process exited (status {c})"),
                };
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.cleanup(live);
        self.pending_restart = true;
        ExecutionResult {
            text: render::crash_text(&reason),
            kind: ExecutionKind::Crash,
            duration: start.elapsed(),
            truncated: false,
            restarted,
            raw: None,
        }
    }

    /// Kills the process (if any) and forgets it.
    fn discard(&mut self) {
        if let Some(l) = self.live.take() {
            self.cleanup(l);
        }
    }

    fn cleanup(&self, l: Live) {
        kill(l.pid);
        drop(l.stream);
        self.inner.remove_workdir(l.workdir);
    }

    /// Ends the session now (also done on drop).
    pub fn close(mut self) {
        self.discard();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.discard();
    }
}

fn signal(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Kills a session's whole process group (it is a group leader).
fn kill(pid: i32) {
    if pid > 1 {
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

fn signal_name(s: i32) -> &'static str {
    match s {
        libc::SIGSEGV => ": SIGSEGV",
        libc::SIGKILL => ": SIGKILL",
        libc::SIGABRT => ": SIGABRT",
        libc::SIGXCPU => ": SIGXCPU, CPU limit",
        libc::SIGXFSZ => ": SIGXFSZ, file size limit",
        libc::SIGBUS => ": SIGBUS",
        libc::SIGSYS => ": SIGSYS",
        _ => "",
    }
}
