//! Finding record files: every `*.jsonl` / `*.jsonl.gz` under some files and directories.
//!
//! The one walker for output and test-record trees (`mathcoder eval DIR`, the fidelity audit,
//! Table 2). Its order is defined: the result is sorted by path (component-wise, as
//! [`Path`]'s `Ord`), without duplicates, so runs over the same tree see the same files in the
//! same order on every file system.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// Errors finding record files.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    /// A path that was asked for does not exist.
    #[error("{0}: no such file or directory")]
    NotFound(PathBuf),
    /// A directory (or an entry in it) could not be read.
    #[error("cannot read directory {path}")]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Is `path` named like a record file (`*.jsonl` or `*.jsonl.gz`)?
pub fn is_record_file(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")
}

/// Every record file under `inputs`: a directory contributes each `*.jsonl` / `*.jsonl.gz` file
/// below it (recursively, following links, each directory once); a file is taken as it is,
/// whatever its name. Sorted, without duplicates; possibly empty. A path that does not exist is
/// [`FilesError::NotFound`].
pub fn record_files<P: AsRef<Path>>(inputs: &[P]) -> Result<Vec<PathBuf>, FilesError> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in inputs {
        let p = p.as_ref();
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => walk(p, &mut out, &mut seen)?,
            Ok(_) => out.push(p.to_path_buf()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(FilesError::NotFound(p.to_path_buf()))
            }
            Err(source) => {
                return Err(FilesError::ReadDir {
                    path: p.to_path_buf(),
                    source,
                })
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Every record file below the directory `dir` (see [`record_files`]).
pub fn record_files_under(dir: &Path) -> Result<Vec<PathBuf>, FilesError> {
    record_files(&[dir])
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<(), FilesError> {
    let err = |source| FilesError::ReadDir {
        path: dir.to_path_buf(),
        source,
    };
    // A link back up the tree would otherwise be walked forever.
    let real = std::fs::canonicalize(dir).map_err(err)?;
    if !seen.insert(real) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let p = entry.map_err(err)?.path();
        if p.is_dir() {
            walk(&p, out, seen)?;
        } else if is_record_file(&p) {
            out.push(p);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let p = std::env::temp_dir().join(format!(
                "mathcoder-lce-files-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn touch(p: &Path) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, b"").unwrap();
    }

    #[test]
    fn sorted_recursive_deduplicated() {
        let t = TempDir::new();
        let r = t.path();
        for f in [
            "b/x.jsonl.gz",
            "a/z.jsonl",
            "a/y.jsonl",
            "a/notes.txt",
            "c.jsonl",
            "d.json",
        ] {
            touch(&r.join(f));
        }
        let got = record_files(&[r.to_path_buf(), r.join("a/y.jsonl")]).unwrap();
        let want: Vec<PathBuf> = ["a/y.jsonl", "a/z.jsonl", "b/x.jsonl.gz", "c.jsonl"]
            .iter()
            .map(|f| r.join(f))
            .collect();
        assert_eq!(got, want);
        assert_eq!(record_files_under(r).unwrap(), want);
        // A file named explicitly is taken whatever its name.
        assert_eq!(
            record_files(&[r.join("d.json")]).unwrap(),
            vec![r.join("d.json")]
        );
        // An empty directory is no error.
        std::fs::create_dir(r.join("empty")).unwrap();
        assert!(record_files_under(&r.join("empty")).unwrap().is_empty());
    }

    #[test]
    fn missing_path_is_a_typed_error() {
        let t = TempDir::new();
        let missing = t.path().join("nope");
        match record_files(std::slice::from_ref(&missing)) {
            Err(FilesError::NotFound(p)) => assert_eq!(p, missing),
            other => panic!("{other:?}"),
        }
        let e = record_files_under(&missing).unwrap_err();
        assert!(e.to_string().contains("no such file or directory"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn link_cycles_end() {
        let t = TempDir::new();
        let r = t.path();
        touch(&r.join("a/one.jsonl"));
        std::os::unix::fs::symlink(r, r.join("a/up")).unwrap();
        assert_eq!(record_files_under(r).unwrap(), vec![r.join("a/one.jsonl")]);
    }
}
