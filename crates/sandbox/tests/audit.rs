//! Fidelity floor on a fixed subset of the vendored released outputs (MathCoder-L-7B, SimulEq:
//! 514 records, ~1,700 cells). `mathcoder audit` runs the full measurement.

mod common;

use mathcoder_sandbox::audit;
use std::path::PathBuf;
use std::sync::Arc;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simuleq_cells_reproduce_the_recorded_text() {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../data/released-outputs/MathCoder-L-7b/simuleq"
    ));
    let files = mathcoder_lce::record_files(&[dir]).unwrap();
    assert_eq!(files.len(), 2);
    let r = audit::run(&common::sandbox(), &files, 3, Arc::new(|_| {}))
        .await
        .unwrap();
    eprintln!("{}", audit::render_text(&r, 3));
    assert_eq!(r.records, 514);
    let exact = r.exact as f64 / r.cells as f64;
    let modulo = r.exact_modulo_paths as f64 / r.cells as f64;
    assert!(exact >= 0.96, "exact {exact}");
    assert!(modulo >= 0.98, "modulo paths {modulo}");
}
