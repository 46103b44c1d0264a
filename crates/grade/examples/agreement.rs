//! Development helper: agreement with the authors' verdicts on released outputs.
//! `cargo run --release -p mathcoder-grade --example agreement -- ../shared/data/released-outputs`
use mathcoder_grade::{Dataset, Grader};
use serde_json::Value;
use std::path::Path;

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.to_string_lossy().ends_with(".jsonl") {
            out.push(p);
        }
    }
}

fn main() {
    let root = std::env::args()
        .nth(1)
        .unwrap_or("../shared/data/released-outputs".into());
    let filter = std::env::args().nth(2).unwrap_or_default();
    let mut files = Vec::new();
    walk(Path::new(&root), &mut files);
    files.sort();
    let proto = std::env::var("PROTO").unwrap_or_default();
    let g = Grader::new(
        mathcoder_grade::Protocol::from_name(&proto)
            .unwrap_or_default()
            .options(),
    );
    let (mut total, mut agree) = (0, 0);
    for f in files {
        let fs = f.to_string_lossy().to_string();
        let ds = Dataset::from_path(&fs).unwrap();
        let authors = fs.contains("-correct");
        let text = std::fs::read_to_string(&f).unwrap();
        let (mut n, mut a) = (0, 0);
        for (i, line) in text.lines().enumerate() {
            let r: Value = serde_json::from_str(line).unwrap();
            let gold = match &r["ground_truth"]["answer"] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let q = r["messages"][1]["content"][0]["content"]
                .as_str()
                .unwrap_or("");
            let comp = r["completion"].as_str().unwrap();
            let v = g.grade(ds, &gold, comp, Some(q));
            n += 1;
            if v.correct == authors {
                a += 1;
            } else if filter.is_empty() || fs.contains(&filter) {
                println!(
                    "DIS {} {}:{} authors={} ours={} | {}",
                    ds.name(),
                    f.file_name().unwrap().to_string_lossy(),
                    i + 1,
                    authors,
                    v.correct,
                    v.reason.replace('\n', "\\n")
                );
            }
        }
        println!("FILE {fs} {a}/{n}");
        total += n;
        agree += a;
    }
    println!(
        "TOTAL agreement {agree}/{total} = {:.3}%",
        100.0 * agree as f64 / total as f64
    );
}
