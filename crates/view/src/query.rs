//! Filtering a run's problems and pairing two runs (pure functions over the index).

use serde::{Deserialize, Serialize};
use std::collections::HashMap;

use crate::index::{is_timeout, is_traceback, Problem, Run};
use mathcoder_lce::Block;

/// A list filter; every field that is set must match. Query-string form, e.g.
/// `?verdict=wrong&subject=Geometry&level=5&q=circle`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Filter {
    /// `correct` or `wrong`.
    pub verdict: Option<String>,
    /// A stop-reason label (`end_of_message`, ...); `none` for records that do not say.
    pub stop: Option<String>,
    pub dataset: Option<String>,
    pub subject: Option<String>,
    pub level: Option<u8>,
    /// `yes`/`no`: an execution ended in an error.
    pub traceback: Option<String>,
    /// `yes`/`no`: an execution timed out.
    pub timeout: Option<String>,
    /// Number of code blocks: `N` exactly or `N+` at least.
    pub code: Option<String>,
    /// Case-insensitive text search in the question and the solution.
    pub q: Option<String>,
    /// Rows to skip and to return (a page of the matches; default: all).
    pub offset: Option<usize>,
    pub limit: Option<usize>,
}

fn yes_no(v: &Option<String>) -> Option<bool> {
    match v.as_deref() {
        Some("yes") | Some("true") | Some("1") => Some(true),
        Some("no") | Some("false") | Some("0") => Some(false),
        _ => None,
    }
}

impl Filter {
    /// Whether `p` passes.
    pub fn matches(&self, p: &Problem, needle: Option<&str>) -> bool {
        let nonempty =
            |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
        if let Some(v) = nonempty(&self.verdict) {
            if (v == "correct") != p.correct {
                return false;
            }
        }
        if let Some(s) = nonempty(&self.stop) {
            match &p.stop {
                Some(l) if *l == s => {}
                None if s == "none" => {}
                _ => return false,
            }
        }
        if let Some(d) = nonempty(&self.dataset) {
            if p.dataset != d {
                return false;
            }
        }
        if let Some(s) = nonempty(&self.subject) {
            if p.subject.as_deref() != Some(s.as_str()) {
                return false;
            }
        }
        if let Some(l) = self.level {
            if p.level != Some(l) {
                return false;
            }
        }
        if let Some(t) = yes_no(&self.traceback) {
            if (p.stats.errors > 0) != t {
                return false;
            }
        }
        if let Some(t) = yes_no(&self.timeout) {
            if p.timed_out != t {
                return false;
            }
        }
        if let Some(c) = nonempty(&self.code) {
            let n = p.stats.code_blocks;
            let ok = match c.strip_suffix('+') {
                Some(min) => min.trim().parse::<u32>().is_ok_and(|m| n >= m),
                None => c.trim().parse::<u32>().is_ok_and(|m| n == m),
            };
            if !ok {
                return false;
            }
        }
        if let Some(q) = needle {
            if !p.haystack.contains(q) {
                return false;
            }
        }
        true
    }

    /// The lower-cased search text, if any.
    pub fn needle(&self) -> Option<String> {
        self.q
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_lowercase)
    }
}

/// One row of a problem list.
#[derive(Clone, Debug, Serialize)]
pub struct Row<'a> {
    pub n: usize,
    pub id: &'a str,
    pub sample: usize,
    pub question: &'a str,
    pub correct: bool,
    pub authors: Option<bool>,
    pub stop: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub level: Option<u8>,
    pub code_blocks: u32,
    pub traceback: bool,
    pub timed_out: bool,
    pub extracted: Option<&'a str>,
    pub gold: &'a str,
}

impl<'a> Row<'a> {
    pub fn of(p: &'a Problem) -> Row<'a> {
        Row {
            n: p.n,
            id: &p.id,
            sample: p.sample,
            question: &p.question,
            correct: p.correct,
            authors: p.authors,
            stop: p.stop.as_deref(),
            subject: p.subject.as_deref(),
            level: p.level,
            code_blocks: p.stats.code_blocks,
            traceback: p.stats.errors > 0,
            timed_out: p.timed_out,
            extracted: p.extracted.as_deref(),
            gold: &p.gold,
        }
    }
}

/// A filtered list: counts over all matches, and the page of rows asked for.
#[derive(Clone, Debug, Serialize)]
pub struct List<'a> {
    pub total: usize,
    pub matched: usize,
    pub matched_correct: usize,
    pub offset: usize,
    pub rows: Vec<Row<'a>>,
}

/// The problems of `run` that pass `f`, in run order.
pub fn list<'a>(run: &'a Run, f: &Filter) -> List<'a> {
    let needle = f.needle();
    let matched: Vec<&Problem> = run
        .problems
        .iter()
        .filter(|p| f.matches(p, needle.as_deref()))
        .collect();
    let offset = f.offset.unwrap_or(0).min(matched.len());
    let end = offset
        .saturating_add(f.limit.unwrap_or(usize::MAX))
        .min(matched.len());
    List {
        total: run.problems.len(),
        matched: matched.len(),
        matched_correct: matched.iter().filter(|p| p.correct).count(),
        offset,
        rows: matched[offset..end].iter().map(|p| Row::of(p)).collect(),
    }
}

/// One block as the page shows it.
#[derive(Clone, Debug, Serialize)]
pub struct BlockView<'a> {
    pub kind: &'static str,
    pub content: &'a str,
    pub traceback: bool,
    pub timed_out: bool,
}

impl<'a> BlockView<'a> {
    pub fn of(b: &'a Block) -> BlockView<'a> {
        BlockView {
            kind: b.kind.role_name(),
            content: &b.content,
            traceback: is_traceback(b),
            timed_out: is_timeout(b),
        }
    }
}

/// A pair of problems of two runs with the same key.
#[derive(Clone, Debug, Serialize)]
pub struct Pair<'a> {
    pub key: String,
    pub id: &'a str,
    pub question: &'a str,
    pub subject: Option<&'a str>,
    pub level: Option<u8>,
    pub a: usize,
    pub b: usize,
    pub a_correct: bool,
    pub b_correct: bool,
}

/// Two runs matched on [`Problem::key`].
#[derive(Clone, Debug, Serialize)]
pub struct Comparison<'a> {
    pub a_name: &'a str,
    pub b_name: &'a str,
    /// Problems in both runs.
    pub common: usize,
    pub both_correct: usize,
    pub only_a: usize,
    pub only_b: usize,
    pub neither: usize,
    /// Problems of one run that the other lacks.
    pub a_unmatched: usize,
    pub b_unmatched: usize,
    /// The pairs shown (all, or those whose verdicts differ).
    pub pairs: Vec<Pair<'a>>,
}

/// Pairs the problems of `a` and `b`; with `differ`, lists only pairs whose verdicts differ.
pub fn compare<'a>(a: &'a Run, b: &'a Run, differ: bool) -> Comparison<'a> {
    let mut in_b: HashMap<String, usize> = HashMap::with_capacity(b.problems.len());
    for p in &b.problems {
        in_b.entry(p.key()).or_insert(p.n);
    }
    let mut c = Comparison {
        a_name: &a.name,
        b_name: &b.name,
        common: 0,
        both_correct: 0,
        only_a: 0,
        only_b: 0,
        neither: 0,
        a_unmatched: 0,
        b_unmatched: 0,
        pairs: Vec::new(),
    };
    for pa in &a.problems {
        let key = pa.key();
        let Some(&nb) = in_b.get(&key) else {
            c.a_unmatched += 1;
            continue;
        };
        let pb = &b.problems[nb];
        c.common += 1;
        match (pa.correct, pb.correct) {
            (true, true) => c.both_correct += 1,
            (true, false) => c.only_a += 1,
            (false, true) => c.only_b += 1,
            (false, false) => c.neither += 1,
        }
        if !differ || pa.correct != pb.correct {
            c.pairs.push(Pair {
                key,
                id: &pa.id,
                question: &pa.question,
                subject: pa.subject.as_deref(),
                level: pa.level,
                a: pa.n,
                b: nb,
                a_correct: pa.correct,
                b_correct: pb.correct,
            });
        }
    }
    c.b_unmatched = b.problems.len().saturating_sub(c.common);
    c
}

/// The first block index where two solutions differ (kind, or content up to surrounding white
/// space); `None` when they are the same.
pub fn first_divergence(a: &[Block], b: &[Block]) -> Option<usize> {
    let same = |x: &Block, y: &Block| x.kind == y.kind && x.content.trim() == y.content.trim();
    match a.iter().zip(b).position(|(x, y)| !same(x, y)) {
        Some(i) => Some(i),
        None if a.len() != b.len() => Some(a.len().min(b.len())),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divergence_is_the_first_differing_block() {
        let a = [Block::text("x"), Block::code("1"), Block::execution("1")];
        let b = [Block::text("x "), Block::code("2"), Block::execution("2")];
        assert_eq!(first_divergence(&a, &b), Some(1));
        assert_eq!(first_divergence(&a, &a[..2]), Some(2));
        assert_eq!(first_divergence(&a, &a), None);
        let c = [Block::code("x")];
        assert_eq!(first_divergence(&a, &c), Some(0));
    }
}
