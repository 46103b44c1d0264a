//! The Python environment sessions run in: found, created and checked by the tool itself.
//!
//! A private virtual environment per (fidelity, Python version, pin set) lives under
//! `$MATHCODER_HOME/envs/` (default `$XDG_CACHE_HOME/mathcoder` or `~/.cache/mathcoder`). It is
//! created on first use, or by `mathcoder setup`, with pip installing the pinned versions below;
//! a marker file records what was installed, and every start checks it.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::SandboxError;

/// Which environment to provision.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Fidelity {
    /// Python 3.11 (or the closest 3.9-3.11 found) with the 2023 pins: the default.
    #[default]
    Default,
    /// Python 3.9, the recording environment of the released outputs, when present.
    Period,
}

impl Fidelity {
    pub fn name(self) -> &'static str {
        match self {
            Fidelity::Default => "default",
            Fidelity::Period => "period",
        }
    }
    pub fn from_name(s: &str) -> Option<Fidelity> {
        match s {
            "default" => Some(Fidelity::Default),
            "period" => Some(Fidelity::Period),
            _ => None,
        }
    }
}

/// Versions pinned for fidelity with the released outputs (recorded with Python 3.9, IPython
/// 8.12-8.14, sympy 1.12, numpy 1.25; see the sandbox notes). IPython's traceback text depends
/// on executing/stack_data/pygments, so those are pinned too; numpy stays below 2 (scalar reprs).
pub const PINS: &[&str] = &[
    "ipython==8.14.0",
    "sympy==1.12",
    "mpmath==1.3.0",
    "numpy==1.25.2",
    "scipy==1.11.2",
    "executing==1.2.0",
    "stack_data==0.6.2",
    "pure_eval==0.2.2",
    "asttokens==2.4.0",
    "pygments==2.16.1",
    "traitlets==5.10.0",
    "decorator==5.1.1",
    "jedi==0.19.0",
    "parso==0.8.3",
    "prompt_toolkit==3.0.39",
    "wcwidth==0.2.6",
    "backcall==0.2.0",
    "pickleshare==0.7.5",
    "matplotlib-inline==0.1.6",
    "pexpect==4.8.0",
    "ptyprocess==0.7.0",
    "six==1.16.0",
    "typing_extensions==4.7.1; python_version < '3.10'",
];

/// Oldest and newest Python minor versions the pins have wheels for.
const MINORS: std::ops::RangeInclusive<u32> = 9..=11;

/// The runner script, embedded in the binary and written into the environment.
pub const RUNNER_SOURCE: &str = include_str!("../python/mathcoder_runner.py");

/// What to provision.
#[derive(Clone, Debug, Default)]
pub struct EnvSpec {
    pub fidelity: Fidelity,
    /// A specific interpreter to build the environment from.
    pub python: Option<PathBuf>,
    /// Where environments live (default: see the module docs).
    pub home: Option<PathBuf>,
}

/// A ready environment.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PythonEnv {
    /// The environment's interpreter.
    pub python: PathBuf,
    /// The environment's directory.
    pub dir: PathBuf,
    /// The runner script inside it.
    pub runner: PathBuf,
    pub fidelity: Fidelity,
    /// `major.minor.patch` of the base interpreter.
    pub python_version: String,
    /// Directories sessions must be able to read (the interpreter's prefixes, the environment).
    pub read_paths: Vec<PathBuf>,
}

#[derive(Serialize, Deserialize, PartialEq, Debug)]
struct Marker {
    pins: Vec<String>,
    python_version: String,
    base_python: PathBuf,
    base_prefix: PathBuf,
    fidelity: Fidelity,
}

/// The default home for environments.
pub fn default_home() -> PathBuf {
    if let Ok(h) = std::env::var("MATHCODER_HOME") {
        return PathBuf::from(h);
    }
    if let Ok(x) = std::env::var("XDG_CACHE_HOME") {
        if !x.is_empty() {
            return PathBuf::from(x).join("mathcoder");
        }
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    PathBuf::from(home).join(".cache").join("mathcoder")
}

/// Facts about an interpreter.
#[derive(Clone, Debug, Deserialize)]
struct Probe {
    version: String,
    minor: u32,
    major: u32,
    prefix: PathBuf,
    base_prefix: PathBuf,
    has_venv: bool,
    executable: PathBuf,
}

fn probe(python: &Path) -> Option<Probe> {
    let out = Command::new(python)
        .args([
            "-I",
            "-c",
            "import sys, json, importlib.util as u; print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3], 'major': sys.version_info[0], 'minor': sys.version_info[1], 'prefix': sys.prefix, 'base_prefix': sys.base_prefix, 'has_venv': u.find_spec('venv') is not None and u.find_spec('ensurepip') is not None, 'executable': sys.executable}))",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Candidate interpreters, best first.
fn candidates(fidelity: Fidelity) -> Vec<PathBuf> {
    let mut names: Vec<String> = Vec::new();
    let order: Vec<u32> = match fidelity {
        Fidelity::Default => vec![11, 10, 9],
        Fidelity::Period => vec![9],
    };
    for m in &order {
        names.push(format!("python3.{m}"));
    }
    let mut out: Vec<PathBuf> = Vec::new();
    let path = std::env::var_os("PATH").unwrap_or_default();
    for n in &names {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(n);
            if p.is_file() {
                out.push(p);
            }
        }
        // pyenv installs are common on research machines.
        let home = std::env::var("HOME").unwrap_or_default();
        let pyenv = std::env::var("PYENV_ROOT").unwrap_or_else(|_| format!("{home}/.pyenv"));
        if let Ok(rd) = std::fs::read_dir(Path::new(&pyenv).join("versions")) {
            let mut vs: Vec<PathBuf> = rd.filter_map(|e| e.ok()).map(|e| e.path()).collect();
            vs.sort();
            for v in vs.into_iter().rev() {
                let p = v.join("bin").join(n);
                if p.is_file() {
                    out.push(p);
                }
            }
        }
    }
    if fidelity == Fidelity::Default {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("python3");
            if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

/// Chooses the base interpreter.
fn find_python(spec: &EnvSpec) -> Result<(PathBuf, Probe), SandboxError> {
    if let Some(p) = &spec.python {
        let pr = probe(p).ok_or_else(|| {
            SandboxError::Env(format!(
                "{} is not a working Python interpreter",
                p.display()
            ))
        })?;
        check_version(&pr, p)?;
        return Ok((p.clone(), pr));
    }
    let mut tried = Vec::new();
    for c in candidates(spec.fidelity) {
        match probe(&c) {
            Some(pr) if pr.major == 3 && MINORS.contains(&pr.minor) && pr.has_venv => {
                if spec.fidelity == Fidelity::Period && pr.minor != 9 {
                    tried.push(format!("{} ({})", c.display(), pr.version));
                    continue;
                }
                return Ok((c, pr));
            }
            Some(pr) => tried.push(format!(
                "{} ({}{})",
                c.display(),
                pr.version,
                if pr.has_venv { "" } else { ", no venv module" }
            )),
            None => tried.push(format!("{} (does not run)", c.display())),
        }
    }
    let want = match spec.fidelity {
        Fidelity::Default => {
            "Python 3.9, 3.10 or 3.11 (the pinned numpy 1.25 has no wheels for 3.12+)"
        }
        Fidelity::Period => "Python 3.9 (the released outputs' recording environment)",
    };
    Err(SandboxError::Env(format!(
        "no suitable interpreter found: need {want} with the venv module; tried: {}. Install one or pass --python PATH.",
        if tried.is_empty() { "none on PATH".to_string() } else { tried.join(", ") }
    )))
}

fn check_version(pr: &Probe, p: &Path) -> Result<(), SandboxError> {
    if pr.major != 3 || !MINORS.contains(&pr.minor) {
        return Err(SandboxError::Env(format!(
            "{} is Python {}; the sandbox needs 3.9-3.11 (its pinned numpy 1.25 has wheels only for those)",
            p.display(),
            pr.version
        )));
    }
    if !pr.has_venv {
        return Err(SandboxError::Env(format!(
            "{} has no venv/ensurepip module (on Debian: apt install python3-venv)",
            p.display()
        )));
    }
    Ok(())
}

fn pins_key(minor: u32, fidelity: Fidelity) -> String {
    // A short, stable hash of the pin list (FNV-1a).
    let mut h: u64 = 0xcbf29ce484222325;
    for p in PINS.iter().chain(std::iter::once(&RUNNER_VERSION)) {
        for b in p.bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x100000001b3);
        }
    }
    format!("{}-py3{}-{:08x}", fidelity.name(), minor, h as u32)
}

/// Bumped when the environment layout (not the runner script) changes.
const RUNNER_VERSION: &str = "layout-1";

/// Returns a ready environment, creating it if needed. `progress` receives one line per step.
pub fn ensure(spec: &EnvSpec, progress: &dyn Fn(&str)) -> Result<PythonEnv, SandboxError> {
    let (base, pr) = find_python(spec)?;
    let home = spec.home.clone().unwrap_or_else(default_home);
    let dir = home.join("envs").join(pins_key(pr.minor, spec.fidelity));
    let marker_path = dir.join("mathcoder-env.json");
    let want = Marker {
        pins: PINS.iter().map(|s| s.to_string()).collect(),
        python_version: pr.version.clone(),
        base_python: pr.executable.clone(),
        base_prefix: pr.base_prefix.clone(),
        fidelity: spec.fidelity,
    };
    let ready = std::fs::read(&marker_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Marker>(&b).ok())
        .is_some_and(|m| m == want)
        && dir.join("bin/python").exists();
    if !ready {
        create(&base, &dir, &want, progress)?;
    }
    let runner = dir.join("mathcoder_runner.py");
    let current = std::fs::read_to_string(&runner).unwrap_or_default();
    if current != RUNNER_SOURCE {
        // Written next to the environment; updated whenever the binary carries a new runner.
        let tmp = dir.join(format!(".runner.{}.tmp", std::process::id()));
        std::fs::write(&tmp, RUNNER_SOURCE)
            .map_err(|e| SandboxError::Env(format!("writing {}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, &runner)
            .map_err(|e| SandboxError::Env(format!("writing {}: {e}", runner.display())))?;
    }
    let mut read_paths = vec![dir.clone(), pr.base_prefix.clone(), pr.prefix.clone()];
    if let Ok(real) = std::fs::canonicalize(&pr.executable) {
        if let Some(p) = real.parent().and_then(Path::parent) {
            read_paths.push(p.to_path_buf());
        }
    }
    read_paths.sort();
    read_paths.dedup();
    Ok(PythonEnv {
        python: dir.join("bin/python"),
        dir,
        runner,
        fidelity: spec.fidelity,
        python_version: pr.version,
        read_paths,
    })
}

fn create(
    base: &Path,
    dir: &Path,
    marker: &Marker,
    progress: &dyn Fn(&str),
) -> Result<(), SandboxError> {
    let parent = dir
        .parent()
        .ok_or_else(|| SandboxError::Env("bad environment path".into()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| SandboxError::Env(format!("creating {}: {e}", parent.display())))?;
    // Build in a temporary directory next to the final one, then rename: an interrupted or
    // concurrent setup never leaves a half-built environment in place.
    let tmp = parent.join(format!(
        ".building-{}-{}",
        std::process::id(),
        dir.file_name().and_then(|s| s.to_str()).unwrap_or("env")
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    progress(&format!(
        "creating a virtual environment with {} ({})",
        base.display(),
        marker.python_version
    ));
    run_step(
        Command::new(base).args(["-m", "venv"]).arg(&tmp),
        "python -m venv",
        progress,
    )?;
    let py = tmp.join("bin/python");
    progress(&format!(
        "installing {} pinned packages (ipython 8.14, sympy 1.12, numpy 1.25, scipy 1.11)",
        PINS.len()
    ));
    let mut cmd = Command::new(&py);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--progress-bar",
        "off",
    ])
    .args(PINS);
    run_step(&mut cmd, "pip install", progress)?;
    progress("checking the environment");
    run_step(
        Command::new(&py).args([
            "-I",
            "-c",
            "import IPython, sympy, numpy, scipy, mpmath, stack_data, executing, pygments",
        ]),
        "import check",
        progress,
    )?;
    std::fs::write(
        tmp.join("mathcoder-env.json"),
        serde_json::to_vec_pretty(marker).unwrap_or_default(),
    )
    .map_err(|e| SandboxError::Env(format!("writing marker: {e}")))?;
    let _ = std::fs::remove_dir_all(dir);
    match std::fs::rename(&tmp, dir) {
        Ok(()) => {}
        Err(_) if dir.join("mathcoder-env.json").exists() => {
            // Another process finished first; use its environment.
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => {
            return Err(SandboxError::Env(format!(
                "moving the environment into place: {e}"
            )))
        }
    }
    // venv scripts hard-code the build path; the interpreter itself does not care.
    progress(&format!("environment ready at {}", dir.display()));
    Ok(())
}

fn run_step(cmd: &mut Command, what: &str, progress: &dyn Fn(&str)) -> Result<(), SandboxError> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SandboxError::Env(format!("{what}: cannot start: {e}")))?;
    let stderr = child.stderr.take();
    let err_thread = std::thread::spawn(move || {
        let mut tail: Vec<String> = Vec::new();
        if let Some(s) = stderr {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
        }
        tail
    });
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let l = line.trim();
            if l.starts_with("Collecting")
                || l.starts_with("Installing")
                || l.starts_with("Successfully")
                || l.starts_with("Downloading")
            {
                progress(l);
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| SandboxError::Env(format!("{what}: {e}")))?;
    let tail = err_thread.join().unwrap_or_default();
    if !status.success() {
        return Err(SandboxError::Env(format!(
            "{what} failed ({status}):\n{}",
            tail.join("\n")
        )));
    }
    Ok(())
}
