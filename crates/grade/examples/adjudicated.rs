//! Development helper: the hand-adjudicated released-output records.
use mathcoder_grade::{Dataset, Grader, Protocol};
use serde_json::Value;

fn main() {
    let path = std::env::args().nth(1).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    for proto in [Protocol::Default, Protocol::Paper] {
        let g = Grader::new(proto.options());
        for (i, line) in text.lines().enumerate() {
            let r: Value = serde_json::from_str(line).unwrap();
            let ds = Dataset::from_name(r["dataset"].as_str().unwrap()).unwrap();
            let gold = match &r["gold"] {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            let v = g.grade(
                ds,
                &gold,
                r["completion"].as_str().unwrap(),
                r["question"].as_str(),
            );
            println!(
                "{} {i:2} ours={:5} | {} | who={} | {}",
                proto.name(),
                v.correct,
                r["judgement"].as_str().unwrap(),
                r["who_is_right"].as_str().unwrap(),
                v.reason.chars().take(120).collect::<String>()
            );
        }
    }
}
