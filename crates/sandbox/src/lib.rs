//! Stateful, isolated Python sessions with Jupyter-faithful output.
//!
//! A [`Sandbox`] owns one warm Python zygote (IPython, sympy, numpy, scipy imported and sympy
//! warmed) and forks a [`Session`] per problem, so a session costs a fork rather than an import.
//! Cells run through IPython's own `InteractiveShell`; the reply carries what ipykernel would
//! have sent (streams, text/plain, traceback list), and [`render`] turns it into the text the
//! model sees with MathCoder's collection rule.
//!
//! Isolation, per session: seccomp (no sockets, no new processes, no exec, signals only to
//! itself, no namespace/mount/trace/module syscalls), Landlock (writes only in its own
//! working directory, reads only system and Python directories and its own `/proc`; TCP denied;
//! signals scoped), an allow-listed environment ([`policy::SANDBOX_ENV`]: nothing of the
//! supervisor's secrets), a network namespace when the host allows one, rlimits (address
//! space, CPU, file size, open files, no core dumps), a per-cell wall-clock timeout with
//! interrupt-then-kill, an output cap, and a lifeline pipe that takes every sandbox process
//! down with the supervisor.
//! [`Isolation`] says which layers are active.
//!
//! Differences from the authors' Jupyter executor, on purpose: a timed-out cell is interrupted
//! and the session stays usable (theirs kept running and desynchronised later cells); shell
//! escapes (`!cmd`) and subprocesses fail (no new processes); `input()` raises
//! `StdinNotImplementedError` from this runner rather than from ipykernel; `display()` output is
//! dropped, as theirs was.

pub mod audit;
pub mod env;
pub mod policy;
pub mod protocol;
pub mod render;
mod session;
mod zygote;

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;

pub use env::{EnvSpec, Fidelity, PythonEnv};
pub use policy::Limits;
pub use session::{ExecutionKind, ExecutionResult, Isolation, Session};
pub use zygote::Versions;

/// Errors starting sandboxes and sessions (cell failures are results, not errors).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("Python environment: {0}")]
    Env(String),
    #[error("sandbox: {0}")]
    Start(String),
    #[error("the sandbox's zygote process died")]
    ZygoteDied,
}

/// How a sandbox is set up.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    pub limits: Limits,
    /// Put the zygote in its own network namespace when the host allows it.
    pub network_namespace: bool,
    /// Fail session start if seccomp or Landlock is available but could not be applied.
    pub require_isolation: bool,
    /// Where session working directories are created (default: the system temp dir).
    pub workdir_root: Option<PathBuf>,
    /// Sessions the zygote keeps forked and prepared, so that starting one is a hand-over.
    pub spare_sessions: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            limits: Limits::default(),
            network_namespace: true,
            require_isolation: true,
            workdir_root: None,
            spare_sessions: 2,
        }
    }
}

pub(crate) struct Inner {
    pub env: PythonEnv,
    pub config: SandboxConfig,
    zygote: tokio::sync::Mutex<Option<Arc<zygote::Zygote>>>,
    lifeline_read: OwnedFd,
    _lifeline_write: OwnedFd,
    root: PathBuf,
}

impl Inner {
    pub(crate) async fn zygote(self: &Arc<Self>) -> Result<Arc<zygote::Zygote>, SandboxError> {
        let mut g = self.zygote.lock().await;
        if let Some(z) = g.as_ref() {
            if z.is_alive() {
                return Ok(z.clone());
            }
        }
        let z = Arc::new(self.start_zygote().await?);
        *g = Some(z.clone());
        Ok(z)
    }

    pub(crate) async fn restart_zygote(
        self: &Arc<Self>,
        dead: &Arc<zygote::Zygote>,
    ) -> Result<Arc<zygote::Zygote>, SandboxError> {
        let mut g = self.zygote.lock().await;
        if let Some(z) = g.as_ref() {
            if !Arc::ptr_eq(z, dead) && z.is_alive() {
                return Ok(z.clone());
            }
        }
        let z = Arc::new(self.start_zygote().await?);
        *g = Some(z.clone());
        Ok(z)
    }

    async fn start_zygote(self: &Arc<Self>) -> Result<zygote::Zygote, SandboxError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let setup = zygote::SessionSetup {
                root: me.root.clone(),
                limits: me.config.limits.rlimits(),
                landlock_read: policy::landlock_read_paths(&me.env.read_paths),
                spares: me.config.spare_sessions,
            };
            zygote::Zygote::start(
                &me.env,
                me.lifeline_read.as_raw_fd(),
                me.config.network_namespace,
                &setup,
            )
        })
        .await
        .map_err(|e| SandboxError::Start(format!("zygote start task: {e}")))?
    }

    pub(crate) fn remove_workdir(&self, dir: PathBuf) {
        // Files may still be held by the dying process; removal is best effort and retried by
        // the sandbox's own cleanup.
        let _ = std::fs::remove_dir_all(&dir);
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut g) = self.zygote.try_lock() {
            if let Some(z) = g.take() {
                z.kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A pool of sessions sharing one warm zygote. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

impl Sandbox {
    /// Creates a sandbox over a provisioned environment. The zygote starts on first use (or
    /// with [`Sandbox::warm_up`]).
    pub fn new(env: PythonEnv, config: SandboxConfig) -> Result<Sandbox, SandboxError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| SandboxError::Start(format!("pipe: {e}")))?;
        let base = config
            .workdir_root
            .clone()
            .unwrap_or_else(std::env::temp_dir);
        remove_orphaned_roots(&base);
        let root = base.join(format!("{ROOT_PREFIX}{}-{:x}", std::process::id(), nanos()));
        std::fs::create_dir_all(&root)
            .map_err(|e| SandboxError::Start(format!("creating {}: {e}", root.display())))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700));
        Ok(Sandbox {
            inner: Arc::new(Inner {
                env,
                config,
                zygote: tokio::sync::Mutex::new(None),
                lifeline_read: r,
                _lifeline_write: w,
                root,
            }),
        })
    }

    /// Provisions (or checks) the environment `spec` describes, then creates a sandbox over it.
    pub fn provision(
        spec: &EnvSpec,
        config: SandboxConfig,
        progress: &dyn Fn(&str),
    ) -> Result<Sandbox, SandboxError> {
        Sandbox::new(env::ensure(spec, progress)?, config)
    }

    /// Starts the zygote now; returns the versions it runs.
    pub async fn warm_up(&self) -> Result<Versions, SandboxError> {
        Ok(self.inner.zygote().await?.versions.clone())
    }

    /// A new session.
    pub async fn session(&self) -> Result<Session, SandboxError> {
        Session::start(self.inner.clone()).await
    }

    /// The environment sessions run in.
    pub fn env(&self) -> &PythonEnv {
        &self.inner.env
    }

    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The zygote's pid, if it is running.
    pub async fn zygote_pid(&self) -> Option<i32> {
        self.inner
            .zygote
            .lock()
            .await
            .as_ref()
            .filter(|z| z.is_alive())
            .map(|z| z.pid)
    }

    /// Where session working directories are created.
    pub fn workdir_root(&self) -> &std::path::Path {
        &self.inner.root
    }
}

/// Sandbox roots are named `{ROOT_PREFIX}{pid}-{nanos:x}` after the supervisor that made them.
const ROOT_PREFIX: &str = "mathcoder-sandbox-";

/// Removes the roots that supervisors killed without unwinding (`kill -9`, a crash) left in
/// `base`: those whose pid is no longer a live process. A live process's roots are never
/// touched, whoever it is (a recycled pid only delays the sweep to a later start).
fn remove_orphaned_roots(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(ROOT_PREFIX))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 0 && !process_exists(pid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Whether `pid` names a process (signal 0: existence and permission check only; EPERM means
/// it exists under another user).
fn process_exists(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 sends nothing.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_of_dead_supervisors_are_removed_and_live_ones_kept() {
        let base = tempfile::tempdir().unwrap();
        // A pid that existed and is gone: a child that has exited and been reaped.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let dead_root = base.path().join(format!("{ROOT_PREFIX}{dead}-18ed0"));
        let live_root = base
            .path()
            .join(format!("{ROOT_PREFIX}{}-18ed1", std::process::id()));
        let unrelated = base.path().join("mathcoder-sandbox-notes");
        for dir in [&dead_root, &live_root, &unrelated] {
            std::fs::create_dir_all(dir.join("s1/home")).unwrap();
        }
        remove_orphaned_roots(base.path());
        assert!(!dead_root.exists(), "a dead supervisor's root stays");
        assert!(live_root.exists(), "a live supervisor's root was removed");
        assert!(
            unrelated.exists(),
            "a directory not named after a pid was removed"
        );
    }
}
