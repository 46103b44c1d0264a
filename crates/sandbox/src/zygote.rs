//! The zygote: one Python process that has imported everything and forks a session on request.

use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::env::PythonEnv;
use crate::protocol::encode;
use crate::{policy, SandboxError};

/// How a session process ended, as the zygote (its parent) saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// Versions the zygote reports.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    pub python: String,
    pub ipython: String,
    pub sympy: String,
    #[serde(default)]
    pub numpy: Option<String>,
    #[serde(default)]
    pub scipy: Option<String>,
}

/// A session process handed over by the zygote.
pub(crate) struct Spawned {
    pub pid: i32,
    pub fd: OwnedFd,
    pub dir: std::path::PathBuf,
}

type SpawnReply = Result<Spawned, SandboxError>;

/// What every session child applies to itself before it waits for cells.
pub(crate) struct SessionSetup {
    pub root: std::path::PathBuf,
    pub limits: serde_json::Value,
    pub landlock_read: Vec<std::path::PathBuf>,
    pub spares: usize,
}

pub(crate) struct Zygote {
    pub pid: i32,
    child: Mutex<Child>,
    control: Mutex<UnixStream>,
    pending: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<SpawnReply>>>>,
    exits: Arc<Mutex<HashMap<i32, Exit>>>,
    alive: Arc<AtomicBool>,
    next_id: AtomicU64,
    pub versions: Versions,
    pub landlock_abi: u32,
    pub network_namespace: bool,
    pub seccomp: bool,
}

/// Moves `fd` to `target` in a pre-exec hook (async-signal-safe calls only).
unsafe fn place_fd(fd: RawFd, target: RawFd) -> std::io::Result<()> {
    if libc::dup2(fd, target) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl Zygote {
    /// Starts a zygote and waits until it is ready.
    pub fn start(
        env: &PythonEnv,
        lifeline_read: RawFd,
        want_netns: bool,
        setup: &SessionSetup,
    ) -> Result<Zygote, SandboxError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| SandboxError::Start(format!("socketpair: {e}")))?;
        // The zygote's private HOME/TMPDIR; each session re-points them at its working directory.
        let home = setup.root.join("home");
        std::fs::create_dir_all(&home)
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| SandboxError::Start(format!("creating {}: {e}", home.display())))?;
        let filter = policy::zygote_filter().ok();
        let seccomp = filter.is_some();
        let theirs_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&env.python);
        cmd.arg("-I")
            .arg("-u")
            .arg(&env.runner)
            .arg("zygote")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Nothing of the supervisor's environment but the allow-list (secrets stay out).
            .env_clear()
            .envs(policy::sandbox_env(&env.dir.join("bin"), &home, |k| {
                std::env::var_os(k)
            }));
        // SAFETY: only async-signal-safe libc calls run between fork and exec; the filter was
        // compiled before forking.
        unsafe {
            cmd.pre_exec(move || {
                // Move the descriptors above the targets first, so that dup2 cannot clobber one
                // with the other.
                let a = libc::fcntl(theirs_fd, libc::F_DUPFD, 10);
                let b = libc::fcntl(lifeline_read, libc::F_DUPFD, 10);
                if a < 0 || b < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                place_fd(a, 3)?;
                place_fd(b, 4)?;
                libc::close(a);
                libc::close(b);
                libc::setsid();
                if want_netns {
                    // Without privileges this fails; seccomp and Landlock still block sockets.
                    let _ = libc::unshare(libc::CLONE_NEWNET);
                }
                if let Some(f) = &filter {
                    seccompiler::apply_filter(f)
                        .map_err(|e| std::io::Error::other(e.to_string()))?;
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| SandboxError::Start(format!("starting {}: {e}", env.python.display())))?;
        drop(theirs);
        let pid = child.id() as i32;
        // Keep the tail of the zygote's stderr for error messages.
        let stderr_tail = Arc::new(Mutex::new(Vec::<String>::new()));
        if let Some(mut err) = child.stderr.take() {
            let tail = stderr_tail.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut line = String::new();
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    line.push_str(&String::from_utf8_lossy(&buf[..n]));
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend(line.lines().map(str::to_string));
                    let excess = t.len().saturating_sub(30);
                    t.drain(..excess);
                    line.clear();
                }
            });
        }
        let network_namespace = want_netns && different_netns(pid);
        let pending: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<SpawnReply>>>> =
            Arc::default();
        let exits: Arc<Mutex<HashMap<i32, Exit>>> = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let (ready_tx, ready_rx) = mpsc::channel::<Value>();
        {
            let reader = ours
                .try_clone()
                .map_err(|e| SandboxError::Start(e.to_string()))?;
            let (pending, exits, alive) = (pending.clone(), exits.clone(), alive.clone());
            std::thread::Builder::new()
                .name("mathcoder-zygote-reader".into())
                .spawn(move || read_loop(reader, ready_tx, pending, exits, alive))
                .map_err(|e| SandboxError::Start(e.to_string()))?;
        }
        let ready = ready_rx
            .recv_timeout(Duration::from_secs(120))
            .map_err(|_| {
                let _ = child.kill();
                let _ = child.wait();
                let tail = stderr_tail.lock().map(|t| t.join("\n")).unwrap_or_default();
                SandboxError::Start(format!(
                    "the Python zygote did not start (no ready message){}",
                    if tail.is_empty() {
                        String::new()
                    } else {
                        format!(":\n{tail}")
                    }
                ))
            })?;
        if ready["op"] != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SandboxError::Start(format!(
                "the Python zygote failed: {} (the environment may be broken: run `mathcoder setup`)",
                ready["message"].as_str().unwrap_or("unknown error")
            )));
        }
        let versions: Versions =
            serde_json::from_value(ready["versions"].clone()).unwrap_or_default();
        let landlock_abi = ready["landlock_abi"].as_u64().unwrap_or(0) as u32;
        let seccomp_templates: Vec<serde_json::Value> = if seccomp {
            policy::session_filter_templates()
                .map_err(|e| SandboxError::Start(format!("building seccomp filters: {e}")))?
                .iter()
                .map(|(p, slots)| serde_json::json!({"program": policy::program_json(p), "pid_slots": slots}))
                .collect()
        } else {
            Vec::new()
        };
        let configure = serde_json::json!({
            "op": "configure",
            "root": setup.root,
            "limits": setup.limits,
            "landlock": (landlock_abi > 0).then(|| serde_json::json!({"read": setup.landlock_read, "write": ["/dev/null"]})),
            "seccomp": seccomp_templates,
            "spares": setup.spares,
            "private_dir_env": policy::private_dir_vars(),
        });
        let mut control = ours;
        control
            .write_all(&encode(&configure))
            .map_err(|e| SandboxError::Start(format!("configuring the zygote: {e}")))?;
        Ok(Zygote {
            pid,
            child: Mutex::new(child),
            control: Mutex::new(control),
            pending,
            exits,
            alive,
            next_id: AtomicU64::new(1),
            versions,
            landlock_abi,
            network_namespace,
            seccomp,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }

    /// Hands over a session process (a waiting spare, or a new fork).
    pub async fn spawn(&self) -> Result<Spawned, SandboxError> {
        if !self.is_alive() {
            return Err(SandboxError::ZygoteDied);
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let msg = encode(&serde_json::json!({"op": "spawn", "id": id}));
        {
            let mut c = self.control.lock().unwrap_or_else(|p| p.into_inner());
            if let Err(e) = c.write_all(&msg) {
                self.alive.store(false, Ordering::SeqCst);
                return Err(SandboxError::Start(format!("zygote control channel: {e}")));
            }
        }
        match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(SandboxError::ZygoteDied),
            Err(_) => {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(SandboxError::Start(
                    "the zygote did not fork a session within 30 s".into(),
                ))
            }
        }
    }

    /// The exit status of a session, if the zygote has reported it.
    pub fn exit_of(&self, pid: i32) -> Option<Exit> {
        self.exits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pid)
    }

    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let mut c = self.child.lock().unwrap_or_else(|p| p.into_inner());
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        self.kill();
    }
}

fn different_netns(pid: i32) -> bool {
    let mine = std::fs::read_link("/proc/self/ns/net").ok();
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok();
    matches!((mine, theirs), (Some(a), Some(b)) if a != b)
}

fn read_loop(
    sock: UnixStream,
    ready: mpsc::Sender<Value>,
    pending: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<SpawnReply>>>>,
    exits: Arc<Mutex<HashMap<i32, Exit>>>,
    alive: Arc<AtomicBool>,
) {
    let fd = sock.as_raw_fd();
    let mut bytes: Vec<u8> = Vec::new();
    let mut fds: std::collections::VecDeque<OwnedFd> = std::collections::VecDeque::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([RawFd; 8]);
    'outer: loop {
        let n = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(fd, &mut iov, Some(&mut cmsg), MsgFlags::MSG_CMSG_CLOEXEC) {
                Ok(m) => {
                    if let Ok(cms) = m.cmsgs() {
                        for c in cms {
                            if let ControlMessageOwned::ScmRights(v) = c {
                                // SAFETY: the kernel just gave us these descriptors.
                                fds.extend(
                                    v.into_iter().map(|f| unsafe { OwnedFd::from_raw_fd(f) }),
                                );
                            }
                        }
                    }
                    m.bytes
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => 0,
            }
        };
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n]);
        while bytes.len() >= 4 {
            let len = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
            if bytes.len() < 4 + len {
                break;
            }
            let frame: Value = match serde_json::from_slice(&bytes[4..4 + len]) {
                Ok(v) => v,
                Err(_) => break 'outer,
            };
            bytes.drain(..4 + len);
            match frame["op"].as_str() {
                Some("ready") | Some("error") => {
                    let _ = ready.send(frame);
                }
                Some("spawned") => {
                    let id = frame["id"].as_u64().unwrap_or(0);
                    let pid = frame["pid"].as_i64().unwrap_or(0) as i32;
                    let dir = std::path::PathBuf::from(frame["dir"].as_str().unwrap_or(""));
                    let reply = match fds.pop_front() {
                        Some(fd) => Ok(Spawned { pid, fd, dir }),
                        None => Err(SandboxError::Start(
                            "the zygote sent no session socket".into(),
                        )),
                    };
                    if let Some(tx) = pending
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&id)
                    {
                        let _ = tx.send(reply);
                    }
                }
                Some("exited") => {
                    let pid = frame["pid"].as_i64().unwrap_or(0) as i32;
                    let e = match frame["signal"].as_i64() {
                        Some(s) => Exit::Signal(s as i32),
                        None => Exit::Code(frame["code"].as_i64().unwrap_or(0) as i32),
                    };
                    let mut m = exits.lock().unwrap_or_else(|p| p.into_inner());
                    if m.len() > 10_000 {
                        m.clear();
                    }
                    m.insert(pid, e);
                }
                _ => {}
            }
        }
    }
    alive.store(false, Ordering::SeqCst);
    for (_, tx) in pending.lock().unwrap_or_else(|p| p.into_inner()).drain() {
        let _ = tx.send(Err(SandboxError::ZygoteDied));
    }
}
