//! Isolation policy: limits, seccomp programs and Landlock paths. Everything the sandbox
//! enforces is decided here, in Rust; the Python side only applies it.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Limits of one session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Wall-clock time per cell before it is interrupted.
    pub cell_timeout: Duration,
    /// After an interrupt, how long a cell may take to stop before the session is killed.
    pub interrupt_grace: Duration,
    /// CPU seconds for the whole session (RLIMIT_CPU).
    pub cpu_seconds: u64,
    /// Address space in bytes (RLIMIT_AS); also bounds threads (each reserves a stack).
    pub address_space: u64,
    /// Largest file a session may write (RLIMIT_FSIZE).
    pub file_size: u64,
    /// Open file descriptors (RLIMIT_NOFILE).
    pub open_files: u64,
    /// Characters of output kept per cell (per stream, value and traceback); the rest is cut and
    /// marked.
    pub max_output: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            cell_timeout: Duration::from_secs(6),
            interrupt_grace: Duration::from_secs(1),
            cpu_seconds: 300,
            address_space: 4 << 30,
            file_size: 64 << 20,
            open_files: 256,
            max_output: 256 * 1024,
        }
    }
}

impl Limits {
    /// The rlimits the session applies to itself.
    pub fn rlimits(&self) -> serde_json::Value {
        serde_json::json!({
            "address_space": self.address_space,
            "cpu_seconds": self.cpu_seconds,
            "file_size": self.file_size,
            "open_files": self.open_files,
            "core": 0,
        })
    }
}

/// System directories (and files) every session may read (and execute from).
///
/// Of `/proc` only the session's own directory and a few system-wide files: another process's
/// `/proc/<pid>/environ` holds that process's environment as it was started, secrets included
/// (the supervisor's, the shell's that started it), and Landlock's ptrace scoping does not cover
/// it on every kernel. `/proc/self` is opened by the session itself when it applies the rules,
/// so it names the session's own `/proc/<pid>`.
pub const SYSTEM_READ: &[&str] = &[
    "/usr",
    "/lib",
    "/lib64",
    "/lib32",
    "/bin",
    "/sbin",
    "/etc",
    "/opt",
    "/proc/self",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/sys",
    "/dev",
    "/run/systemd/resolve",
];

/// Everything a session may read: system directories and the Python environment. (It may also
/// read and write its own working directory, and write `/dev/null`.)
pub fn landlock_read_paths(env_paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut read: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
    read.extend(env_paths.iter().cloned());
    read
}

/// Where the value of a variable in [`SANDBOX_ENV`] comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvSource {
    /// The supervisor's value, when it has one (otherwise the variable stays unset).
    Inherit,
    /// This value, whatever the supervisor has.
    Fixed(&'static str),
    /// A private directory: the zygote's own under the sandbox root, then, in each session, the
    /// session's working directory (the runner re-points these before the first cell).
    PrivateDir,
    /// The environment's `bin` directory, then the system's (`/usr/local/bin:/usr/bin:/bin`).
    SearchPath,
}

/// The environment allow-list: the only variables sandbox processes (the zygote and so every
/// session) start with. Model-written code can read its whole environment (`os.environ`,
/// `/proc/self/environ`), so anything else the supervisor has — API keys, tokens, cloud
/// credentials, proxies, `PYTHONPATH`, `LD_PRELOAD`, `COLUMNS` — is dropped, never passed on.
///
/// * locale (`LANG`, `LANGUAGE`, `LC_*` by name) and `TZ`: inherited, as text formatting may
///   depend on them;
/// * BLAS/OpenMP threads: one per session (a session is one worker on one core);
///   `OPENBLAS_CORETYPE` and `OPENBLAS_L2_SIZE` are inherited, as OpenBLAS needs them to start
///   on some CPUs;
/// * `PATH`: the environment and system directories only;
/// * `HOME`, `TMPDIR`, `MPLCONFIGDIR`: private (IPython creates its profile under `HOME`);
/// * `PYTHONHASHSEED`, `PYTHONDONTWRITEBYTECODE`: kept as before for tools that read them; the
///   interpreter runs with `-I`, which ignores `PYTHON*` variables.
pub const SANDBOX_ENV: &[(&str, EnvSource)] = &[
    ("PATH", EnvSource::SearchPath),
    ("HOME", EnvSource::PrivateDir),
    ("TMPDIR", EnvSource::PrivateDir),
    ("MPLCONFIGDIR", EnvSource::PrivateDir),
    ("LANG", EnvSource::Inherit),
    ("LANGUAGE", EnvSource::Inherit),
    ("LC_ALL", EnvSource::Inherit),
    ("LC_CTYPE", EnvSource::Inherit),
    ("LC_NUMERIC", EnvSource::Inherit),
    ("LC_TIME", EnvSource::Inherit),
    ("LC_COLLATE", EnvSource::Inherit),
    ("LC_MONETARY", EnvSource::Inherit),
    ("LC_MESSAGES", EnvSource::Inherit),
    ("LC_PAPER", EnvSource::Inherit),
    ("LC_NAME", EnvSource::Inherit),
    ("LC_ADDRESS", EnvSource::Inherit),
    ("LC_TELEPHONE", EnvSource::Inherit),
    ("LC_MEASUREMENT", EnvSource::Inherit),
    ("LC_IDENTIFICATION", EnvSource::Inherit),
    ("TZ", EnvSource::Inherit),
    ("OMP_NUM_THREADS", EnvSource::Fixed("1")),
    ("OPENBLAS_NUM_THREADS", EnvSource::Fixed("1")),
    ("MKL_NUM_THREADS", EnvSource::Fixed("1")),
    ("OPENBLAS_CORETYPE", EnvSource::Inherit),
    ("OPENBLAS_L2_SIZE", EnvSource::Inherit),
    ("PYTHONHASHSEED", EnvSource::Fixed("0")),
    ("PYTHONDONTWRITEBYTECODE", EnvSource::Fixed("1")),
];

/// The system part of a sandbox `PATH`.
const SYSTEM_PATH: &[&str] = &["/usr/local/bin", "/usr/bin", "/bin"];

/// The complete environment of the zygote, from [`SANDBOX_ENV`]: `venv_bin` is the Python
/// environment's `bin` directory, `private_dir` the zygote's private directory, `inherited`
/// looks up the supervisor's value of a variable.
pub fn sandbox_env(
    venv_bin: &Path,
    private_dir: &Path,
    inherited: impl Fn(&str) -> Option<OsString>,
) -> Vec<(&'static str, OsString)> {
    let mut out = Vec::new();
    for &(name, source) in SANDBOX_ENV {
        let value = match source {
            EnvSource::Inherit => match inherited(name) {
                Some(v) => v,
                None => continue,
            },
            EnvSource::Fixed(v) => OsString::from(v),
            EnvSource::PrivateDir => private_dir.as_os_str().to_owned(),
            EnvSource::SearchPath => {
                let mut p = venv_bin.as_os_str().to_owned();
                for d in SYSTEM_PATH {
                    p.push(":");
                    p.push(d);
                }
                p
            }
        };
        out.push((name, value));
    }
    out
}

/// The variables a session points at its own working directory.
pub fn private_dir_vars() -> Vec<&'static str> {
    SANDBOX_ENV
        .iter()
        .filter(|(_, s)| *s == EnvSource::PrivateDir)
        .map(|(n, _)| *n)
        .collect()
}

fn arch() -> Result<TargetArch, String> {
    if cfg!(target_arch = "x86_64") {
        Ok(TargetArch::x86_64)
    } else if cfg!(target_arch = "aarch64") {
        Ok(TargetArch::aarch64)
    } else {
        Err("seccomp filters are built for x86_64 and aarch64 only".into())
    }
}

/// Syscalls no session or zygote ever needs: namespaces, mounts, tracing, kernel modules,
/// clocks, keyrings, io_uring (which bypasses seccomp for its operations), BPF.
fn dangerous() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_mount_setattr,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_quotactl,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        libc::SYS_vhangup,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_lookup_dcookie]);
    v
}

fn cond(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompCondition, String> {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).map_err(|e| e.to_string())
}

fn compile(
    rules: BTreeMap<i64, Vec<SeccompRule>>,
    action: SeccompAction,
) -> Result<BpfProgram, String> {
    let f = SeccompFilter::new(rules, SeccompAction::Allow, action, arch()?)
        .map_err(|e| e.to_string())?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// The zygote's filter, installed before it executes Python: no network sockets and none of
/// the dangerous syscalls. It still forks and creates socket pairs for its sessions.
pub fn zygote_filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in dangerous() {
        rules.insert(s, vec![]);
    }
    // socket(): only AF_UNIX.
    rules.insert(
        libc::SYS_socket,
        vec![
            SeccompRule::new(vec![cond(0, SeccompCmpOp::Ne, libc::AF_UNIX as u64)?])
                .map_err(|e| e.to_string())?,
        ],
    );
    compile(rules, SeccompAction::Errno(libc::EPERM as u32))
}

/// A session's filters, built for its pid: no sockets at all, no new processes (threads are
/// allowed), no exec, signals only to itself, and none of the dangerous syscalls. The second
/// program makes `clone3` report ENOSYS so that libc falls back to `clone`, whose flags the
/// first program can inspect.
pub fn session_filters(pid: i32) -> Result<Vec<BpfProgram>, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for s in dangerous() {
        rules.insert(s, vec![]);
    }
    for s in [
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_execve,
        libc::SYS_execveat,
        libc::SYS_pidfd_open,
        libc::SYS_pidfd_send_signal,
    ] {
        rules.insert(s, vec![]);
    }
    #[cfg(target_arch = "x86_64")]
    for s in [libc::SYS_fork, libc::SYS_vfork] {
        rules.insert(s, vec![]);
    }
    // clone() without CLONE_THREAD creates a process.
    rules.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
            0,
        )?])
        .map_err(|e| e.to_string())?],
    );
    // Signals: only to itself (kill(0, ...) addresses its own process group, which is itself).
    let not_self = |arg: u8| -> Result<SeccompRule, String> {
        SeccompRule::new(vec![
            cond(arg, SeccompCmpOp::Ne, pid as u32 as u64)?,
            cond(arg, SeccompCmpOp::Ne, 0)?,
        ])
        .map_err(|e| e.to_string())
    };
    rules.insert(libc::SYS_kill, vec![not_self(0)?]);
    rules.insert(libc::SYS_tgkill, vec![not_self(0)?]);
    rules.insert(libc::SYS_rt_sigqueueinfo, vec![not_self(0)?]);
    rules.insert(libc::SYS_rt_tgsigqueueinfo, vec![not_self(0)?]);
    // tkill is obsolete (libc uses tgkill); it could address another process's thread.
    rules.insert(libc::SYS_tkill, vec![]);
    let main = compile(rules, SeccompAction::Errno(libc::EPERM as u32))?;
    let mut clone3: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    clone3.insert(libc::SYS_clone3, vec![]);
    let second = compile(clone3, SeccompAction::Errno(libc::ENOSYS as u32))?;
    Ok(vec![main, second])
}

/// The session filters as templates: each program with the instruction indices that hold the
/// session's pid. The pid is only known after the zygote forks, so the child writes its own pid
/// into those slots before installing the programs. The slots are found by compiling with two
/// different sentinel pids and comparing.
pub fn session_filter_templates() -> Result<Vec<(BpfProgram, Vec<usize>)>, String> {
    const A: i32 = 0x7fff_fff0;
    const B: i32 = 0x7fff_ffe1;
    let pa = session_filters(A)?;
    let pb = session_filters(B)?;
    let mut out = Vec::new();
    for (x, y) in pa.into_iter().zip(pb) {
        if x.len() != y.len() {
            return Err("seccomp templates differ in length".into());
        }
        let slots: Vec<usize> = x
            .iter()
            .zip(&y)
            .enumerate()
            .filter(|(_, (a, b))| a.k != b.k)
            .map(|(i, (a, b))| {
                debug_assert!(a.k == A as u32 && b.k == B as u32);
                i
            })
            .collect();
        out.push((x, slots));
    }
    Ok(out)
}

/// A program as the base64 of its `struct sock_filter` array (native endianness), for the
/// runner.
pub fn program_json(p: &BpfProgram) -> serde_json::Value {
    let mut raw = Vec::with_capacity(p.len() * 8);
    for f in p {
        raw.extend_from_slice(&f.code.to_ne_bytes());
        raw.push(f.jt);
        raw.push(f.jf);
        raw.extend_from_slice(&f.k.to_ne_bytes());
    }
    serde_json::Value::String(base64(&raw))
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let z = zygote_filter().unwrap();
        assert!(!z.is_empty());
        let s = session_filters(12345).unwrap();
        assert_eq!(s.len(), 2);
        assert!(program_json(&s[0]).as_str().unwrap().len() > 100);
        let t = session_filter_templates().unwrap();
        // kill, tgkill, rt_sigqueueinfo, rt_tgsigqueueinfo compare against the pid.
        assert_eq!(t[0].1.len(), 4, "{:?}", t[0].1);
        assert!(t[1].1.is_empty());
        let real = session_filters(4242).unwrap();
        let mut patched = t[0].0.clone();
        for &i in &t[0].1 {
            patched[i].k = 4242;
        }
        assert_eq!(patched, real[0]);
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b"hi!"), "aGkh");
    }

    #[test]
    fn sandbox_env_is_the_allow_list() {
        let parent = |k: &str| -> Option<OsString> {
            match k {
                "OPENAI_API_KEY" | "AWS_SECRET_ACCESS_KEY" => Some("sk-secret".into()),
                "LANG" => Some("C.UTF-8".into()),
                "OPENBLAS_CORETYPE" => Some("Haswell".into()),
                "OMP_NUM_THREADS" => Some("64".into()),
                "PATH" => Some("/home/me/bin:/usr/bin".into()),
                "HOME" => Some("/home/me".into()),
                _ => None,
            }
        };
        let env = sandbox_env(Path::new("/venv/bin"), Path::new("/private"), parent);
        let get = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
        for (name, _) in &env {
            assert!(SANDBOX_ENV.iter().any(|(n, _)| n == name), "{name}");
        }
        assert!(!env
            .iter()
            .any(|(_, v)| v.to_string_lossy().contains("secret")));
        assert_eq!(
            get("PATH").unwrap(),
            "/venv/bin:/usr/local/bin:/usr/bin:/bin"
        );
        assert_eq!(get("HOME").unwrap(), "/private");
        assert_eq!(get("TMPDIR").unwrap(), "/private");
        assert_eq!(get("LANG").unwrap(), "C.UTF-8");
        assert_eq!(get("OPENBLAS_CORETYPE").unwrap(), "Haswell");
        assert_eq!(get("OMP_NUM_THREADS").unwrap(), "1");
        assert_eq!(get("TZ"), None, "unset stays unset");
        assert_eq!(private_dir_vars(), ["HOME", "TMPDIR", "MPLCONFIGDIR"]);
    }
}

#[cfg(test)]
mod timing {
    #[test]
    #[ignore]
    fn build_time() {
        let t = std::time::Instant::now();
        for i in 0..100 {
            let _ = super::session_filters(1000 + i).unwrap();
        }
        eprintln!("session_filters: {:?} each", t.elapsed() / 100);
    }
}
