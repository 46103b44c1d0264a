//! No panics and bounded work on arbitrary input.

use mathcoder_grade::{Dataset, Grader};
use proptest::prelude::*;
use std::time::{Duration, Instant};

// A sanity ceiling (debug build, loaded machine), not a speed target: speed is measured by
// `mathcoder bench grade`.
const CEILING: Duration = Duration::from_secs(2);

fn cases() -> u32 {
    std::env::var("MATHCODER_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn check(gold: &str, answer: &str) {
    let g = Grader::default();
    for d in [
        Dataset::Math,
        Dataset::SimulEq,
        Dataset::Mathematics,
        Dataset::Generic,
    ] {
        let t = Instant::now();
        let v = g.grade(d, gold, answer, Some(answer));
        assert!(
            t.elapsed() < CEILING,
            "{:?} took {:?} on {gold:?} / {answer:?}",
            d,
            t.elapsed()
        );
        assert!(!v.reason.is_empty());
    }
}

proptest! {
    // More cases: MATHCODER_PROPTEST_CASES=100000 cargo test --release --test robustness
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings(gold in ".{0,60}", answer in ".{0,120}") {
        check(&gold, &answer);
    }

    #[test]
    fn latex_like_strings(
        gold in r"(\\frac\{|\\sqrt\[|\\boxed\{|\^\{|_\{|\\left\(|\\right\)|[0-9]{1,4}|[xyz]|[+\-*/=<>,.!%]|\{|\}|\(|\)|\[|\]|\\pi|\\infty|\\pm|\\cup|\\text\{ab\}|\\begin\{pmatrix\}|\\end\{pmatrix\}|&|\\\\| ){0,40}",
        answer in r"(\\frac\{|\\sqrt\[|\\boxed\{|\^\{|_\{|\\left\(|\\right\)|[0-9]{1,4}|[xyz]|[+\-*/=<>,.!%]|\{|\}|\(|\)|\[|\]|\\pi|\\infty|\\pm|\\cup|\\text\{ab\}|\\begin\{pmatrix\}|\\end\{pmatrix\}|&|\\\\| ){0,40}",
    ) {
        check(&gold, &answer);
    }
}

#[test]
fn adversarial_inputs_are_bounded() {
    let cases = [
        "10^{10^{10}}".to_string(),
        "(10^{6})!".to_string(),
        "\\frac{1}{2006!}".to_string(),
        "2^{2^{2^{2^{2^{2^{2}}}}}}".to_string(),
        format!("{}1{}", "\\frac{1}{".repeat(300), "}".repeat(300)),
        "(".repeat(5000),
        "{".repeat(5000),
        "\\boxed{".repeat(2000),
        (0..600)
            .map(|i| format!("{i}x^{{{i}}}"))
            .collect::<Vec<_>>()
            .join("+"),
        "9".repeat(5000),
        "1,".repeat(3000),
        "x".repeat(4000),
        "\\sqrt{".repeat(1000),
    ];
    for c in &cases {
        check(c, c);
        check("\\frac{1}{2004!}", c);
    }
}
