//! How sure an accuracy is: Wilson score intervals for one run, and the exact McNemar test for
//! two runs on the same problems (the test for paired binary outcomes: only the problems that
//! one run gets right and the other wrong carry information).

use serde::Serialize;
use std::collections::HashMap;

use crate::score::ScoredRecord;

/// The standard normal quantile for a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The 95% Wilson score interval of `k` successes in `n` trials, as fractions; `None` when
/// `n == 0`. Unlike the normal approximation it stays inside [0, 1] and is honest at 0 of n.
pub fn wilson95(k: usize, n: usize) -> Option<(f64, f64)> {
    if n == 0 {
        return None;
    }
    let (k, n, z2) = (k.min(n) as f64, n as f64, Z95 * Z95);
    let p = k / n;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = Z95 / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((centre - half).max(0.0), (centre + half).min(1.0)))
}

/// The exact two-sided McNemar p-value for `b` and `c` discordant pairs: twice the probability
/// of a split at least as uneven under Binomial(b + c, 1/2), capped at 1.
pub fn mcnemar_exact(b: usize, c: usize) -> f64 {
    let n = b + c;
    if n == 0 {
        return 1.0;
    }
    let k = b.min(c);
    // Terms in log space: C(n, 0) / 2^n underflows f64 beyond n = 1074.
    let mut ln_term = -(n as f64) * std::f64::consts::LN_2;
    let mut tail = 0.0;
    for i in 0..=k {
        tail += ln_term.exp();
        ln_term += ((n - i) as f64).ln() - ((i + 1) as f64).ln();
    }
    (2.0 * tail).min(1.0)
}

/// Two runs compared problem by problem.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Paired {
    pub first: String,
    pub second: String,
    /// Problems (ids) in both runs; the counts below are over these.
    pub common: usize,
    pub both_right: usize,
    pub first_only: usize,
    pub second_only: usize,
    pub both_wrong: usize,
    /// Exact McNemar p-value of `first_only` vs `second_only`.
    pub p_value: f64,
}

/// Why two runs cannot be paired.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("{run}: a record without an id (line {line}); pairing needs problem ids")]
    NoId { run: String, line: usize },
    #[error("{run}: several records for {id}; pairing needs one record per problem (runs with --samples > 1 are not paired)")]
    Repeated { run: String, id: String },
}

fn verdicts<'a>(
    run: &str,
    records: impl Iterator<Item = &'a ScoredRecord>,
) -> Result<HashMap<&'a str, bool>, PairError> {
    let mut out = HashMap::new();
    for r in records {
        let id = r.id.as_deref().ok_or_else(|| PairError::NoId {
            run: run.to_string(),
            line: r.line,
        })?;
        if out.insert(id, r.verdict.correct).is_some() {
            return Err(PairError::Repeated {
                run: run.to_string(),
                id: id.to_string(),
            });
        }
    }
    Ok(out)
}

/// Pairs two runs' records by problem id. Problems in only one run are left out (`common` says
/// how many remain).
pub fn paired<'a>(
    first: (&str, impl Iterator<Item = &'a ScoredRecord>),
    second: (&str, impl Iterator<Item = &'a ScoredRecord>),
) -> Result<Paired, PairError> {
    let a = verdicts(first.0, first.1)?;
    let b = verdicts(second.0, second.1)?;
    let (mut both_right, mut first_only, mut second_only, mut both_wrong) = (0, 0, 0, 0);
    for (id, &x) in &a {
        let Some(&y) = b.get(id) else { continue };
        match (x, y) {
            (true, true) => both_right += 1,
            (true, false) => first_only += 1,
            (false, true) => second_only += 1,
            (false, false) => both_wrong += 1,
        }
    }
    Ok(Paired {
        first: first.0.to_string(),
        second: second.0.to_string(),
        common: both_right + first_only + second_only + both_wrong,
        both_right,
        first_only,
        second_only,
        both_wrong,
        p_value: mcnemar_exact(first_only, second_only),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mathcoder_grade::Verdict;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() < tol
    }

    #[test]
    fn wilson_matches_published_values() {
        // Newcombe (1998), Table I: 81/263 -> 0.2553-0.3662; 15/148 -> 0.0624-0.1605.
        let (lo, hi) = wilson95(81, 263).unwrap();
        assert!(
            close(lo, 0.2553, 5e-5) && close(hi, 0.3662, 5e-5),
            "{lo} {hi}"
        );
        let (lo, hi) = wilson95(15, 148).unwrap();
        assert!(
            close(lo, 0.0624, 5e-5) && close(hi, 0.1605, 5e-5),
            "{lo} {hi}"
        );
        // 0 of n: the lower end is 0 and the upper end is z^2 / (n + z^2).
        let (lo, hi) = wilson95(0, 20).unwrap();
        assert_eq!(lo, 0.0);
        assert!(close(hi, 0.1611, 5e-5), "{hi}");
        let (lo, hi) = wilson95(20, 20).unwrap();
        assert!(
            close(lo, 1.0 - 0.1611, 5e-5) && close(hi, 1.0, 1e-12),
            "{lo} {hi}"
        );
        assert_eq!(wilson95(0, 0), None);
    }

    #[test]
    fn mcnemar_is_the_two_sided_binomial_tail() {
        // 10 vs 1: 2 * (1 + 11) / 2^11.
        assert!(close(mcnemar_exact(10, 1), 24.0 / 2048.0, 1e-15));
        assert!(close(mcnemar_exact(1, 10), 24.0 / 2048.0, 1e-15));
        // 5 vs 1: 2 * (1 + 6) / 64.
        assert!(close(mcnemar_exact(5, 1), 14.0 / 64.0, 1e-15));
        assert_eq!(mcnemar_exact(0, 0), 1.0);
        assert_eq!(mcnemar_exact(3, 3), 1.0);
        // 0 vs 2000 (terms beyond f64's range of 2^-n): p is tiny but not NaN.
        let p = mcnemar_exact(0, 2000);
        assert!((0.0..1e-300).contains(&p), "{p}");
        let p = mcnemar_exact(900, 1100);
        assert!(p > 0.0 && p < 1e-4, "{p}");
    }

    fn rec(line: usize, id: Option<&str>, correct: bool) -> ScoredRecord {
        ScoredRecord {
            line,
            id: id.map(str::to_string),
            subject: None,
            level: None,
            verdict: Verdict {
                correct,
                gold: "1".into(),
                extracted: None,
                extraction: None,
                rule: None,
                reason: String::new(),
            },
            stats: Default::default(),
        }
    }

    #[test]
    fn pairing_counts_the_common_problems_only() {
        let a = [
            rec(1, Some("p1"), true),
            rec(2, Some("p2"), true),
            rec(3, Some("p3"), false),
            rec(4, Some("p4"), false),
            rec(5, Some("only-a"), true),
        ];
        let b = [
            rec(1, Some("p4"), true),
            rec(2, Some("p3"), false),
            rec(3, Some("p2"), false),
            rec(4, Some("p1"), true),
            rec(5, Some("only-b"), false),
        ];
        let p = paired(("a", a.iter()), ("b", b.iter())).unwrap();
        assert_eq!(
            (
                p.common,
                p.both_right,
                p.first_only,
                p.second_only,
                p.both_wrong
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(p.p_value, 1.0);
    }

    #[test]
    fn pairing_refuses_repeated_or_missing_ids() {
        let a = [rec(1, Some("p1"), true), rec(2, Some("p1"), false)];
        let b = [rec(1, Some("p1"), true)];
        let e = paired(("a", a.iter()), ("b", b.iter())).unwrap_err();
        assert!(e.to_string().contains("several records for p1"), "{e}");
        let a = [rec(7, None, true)];
        let e = paired(("a", a.iter()), ("b", b.iter())).unwrap_err();
        assert!(e.to_string().contains("line 7"), "{e}");
    }
}
