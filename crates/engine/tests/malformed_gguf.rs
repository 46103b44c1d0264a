//! Malformed GGUF files (truncated, corrupt headers, wrong tensor sizes, unknown types, huge
//! declared counts) are refused with an error naming the problem: never a panic, never an
//! allocation sized by a corrupt count. The files are made from the tiny `Q8_0` fixture.

use mathcoder_engine::{load, LoadOptions};
use std::path::{Path, PathBuf};

fn original() -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/llama2-tiny.q8_0.gguf"),
    )
    .unwrap()
}

fn try_load(dir: &Path, bytes: &[u8]) -> Result<(), String> {
    let path: PathBuf = dir.join("m.gguf");
    std::fs::write(&path, bytes).unwrap();
    load(&path, None, &LoadOptions::default())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Where a tensor's info record starts its dimension count (just after its name).
fn tensor_info(bytes: &[u8], name: &str) -> usize {
    let mut pat = (name.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(name.as_bytes());
    bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap()
        + pat.len()
}

#[test]
fn truncated_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = original();
    let mut cuts: Vec<usize> = (0..64).map(|i| i * 37).collect();
    cuts.extend((1..16).map(|i| b.len() * i / 16));
    cuts.push(b.len() - 1);
    for cut in cuts {
        let e = try_load(dir.path(), &b[..cut]).expect_err("a truncated file loaded");
        assert!(!e.is_empty(), "cut at {cut}");
    }
    try_load(dir.path(), &b).unwrap();
}

#[test]
fn corrupt_headers_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let b = original();
    let at = tensor_info(&b, "blk.0.attn_q.weight");
    let dims = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
    let ty = at + 4 + 8 * dims;
    let cases: Vec<(&str, usize, Vec<u8>, &str)> = vec![
        (
            "huge tensor count",
            8,
            u64::MAX.to_le_bytes().to_vec(),
            "tensor_count",
        ),
        (
            "huge metadata count",
            16,
            (1u64 << 40).to_le_bytes().to_vec(),
            "metadata",
        ),
        (
            "unknown tensor type",
            ty,
            99u32.to_le_bytes().to_vec(),
            "99",
        ),
        (
            "huge dimension",
            at + 4,
            (1u64 << 62).to_le_bytes().to_vec(),
            "attn_q",
        ),
        (
            "wrong dimension",
            at + 4,
            48u64.to_le_bytes().to_vec(),
            "attn_q",
        ),
        (
            "offset past the end",
            ty + 4,
            (1u64 << 40).to_le_bytes().to_vec(),
            "attn_q",
        ),
        (
            "too many dimensions",
            at,
            1000u32.to_le_bytes().to_vec(),
            "dimensions",
        ),
    ];
    for (what, offset, patch, mention) in cases {
        let mut c = b.clone();
        c[offset..offset + patch.len()].copy_from_slice(&patch);
        let e = try_load(dir.path(), &c).expect_err(what);
        assert!(e.contains(mention), "{what}: {e}");
    }
}

#[test]
fn random_header_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let b = original();
    // The header (metadata and tensor index) ends before the first tensor's data.
    let header = tensor_info(&b, "output_norm.weight").max(4096).min(b.len());
    let mut s: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (s >> 33) as usize
    };
    for _ in 0..150 {
        let mut c = b.clone();
        for _ in 0..1 + next() % 4 {
            let i = next() % header;
            c[i] = next() as u8;
        }
        // Either outcome is fine; a panic fails the test.
        let _ = try_load(dir.path(), &c);
    }
}
