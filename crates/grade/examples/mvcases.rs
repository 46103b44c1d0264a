//! Development helper: Math-Verify's test cases.
use mathcoder_grade::{Dataset, GradeOptions, Grader};
use serde_json::Value;

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    let (mut n, mut ok) = (0, 0);
    let only_math = std::env::var("ONLY_MATH").is_ok();
    for (i, line) in text.lines().enumerate() {
        let r: Value = serde_json::from_str(line).unwrap();
        let o = &r["options"];
        let opts = GradeOptions {
            float_rounding: o["float_rounding"].as_u64().map(|x| x as u32),
            strict_symbols: o["strict"].as_bool().unwrap_or(true),
            interval_matches_relation: o["allow_set_relation_comp"].as_bool().unwrap_or(false),
            ..GradeOptions::default()
        };
        let g = Grader::new(opts);
        let gold = r["gold"].as_str().unwrap();
        let pred = r["pred"].as_str().unwrap();
        let v = g.grade(Dataset::Generic, gold, pred, None);
        let expected = r["expected"].as_bool().unwrap();
        if only_math && r["expected_kind"].as_str() != Some("math") {
            println!(
                "POLICY {i} expected={expected} ours={} | {}",
                v.correct, v.reason
            );
            continue;
        }
        n += 1;
        if v.correct == expected {
            ok += 1;
        } else {
            println!(
                "FAIL {i} expected={expected} | gold={:?} | pred={:?} | {} | note={}",
                &gold[gold.len().saturating_sub(80)..],
                &pred[pred.len().saturating_sub(120)..],
                v.reason,
                r["note"].as_str().unwrap_or("")
            );
        }
    }
    println!("{ok}/{n} as expected");
}
