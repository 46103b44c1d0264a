//! D = D0 ∪ D1: training files merged, with duplicate problems and test-set problems removed.
//!
//! Texts are compared normalised ([`normalise`]: lower case, every run of characters that are
//! not letters or digits a single separator). A training problem is **contaminated** when it
//! shares a 13-gram with a bundled test problem *and* their normalised similarity (longest
//! common subsequence of tokens, `2·LCS / (len_a + len_b)`) is at least 0.6: Qwen2.5-Math's
//! rule as its report describes it (13-gram matching after normalisation, with the LCS ratio
//! above 0.6 as a second condition against false positives). One change, on purpose: in the
//! 13-grams every number is one placeholder, so a test problem with its numbers changed still
//! shares its n-grams (the similarity is computed on the real tokens); and the similarity is the
//! larger of the LCS ratio and the order-blind token-multiset ratio less 0.2
//! ([`bag_similarity`]), so a test problem with its sentences reordered is caught too. Problems
//! shorter than 13 tokens are compared with the test problems whose masked text equals theirs.
//!
//! A problem that equals (normalised) or nearly equals (a shared 13-gram and similarity at least
//! 0.9) a problem kept earlier from another (source, problem id) is a **duplicate**. Several
//! solutions of the same (source, problem id) are all kept, except identical ones.

use mathcoder_datasets::{Benchmark, DatasetError, Problem};
use mathcoder_lce::train_format::read_train_records;
use mathcoder_lce::TrainRecord;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::seed::{io, DataError};

/// The thresholds of the rules.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeConfig {
    /// n of the n-grams (13).
    pub ngram: usize,
    /// Similarity from which a problem sharing an n-gram with a test problem is contaminated.
    pub contamination_similarity: f64,
    /// Similarity from which a problem sharing an n-gram with a kept one is a duplicate.
    pub duplicate_similarity: f64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            ngram: 13,
            contamination_similarity: 0.6,
            duplicate_similarity: 0.9,
        }
    }
}

/// Lower-cased tokens: maximal runs of letters or digits.
pub fn normalise(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn masked(t: &str) -> &str {
    if t.chars().all(|c| c.is_ascii_digit()) {
        "#"
    } else {
        t
    }
}

fn gram_hashes(tokens: &[String], n: usize, mask: bool) -> Vec<u64> {
    if tokens.len() < n || n == 0 {
        return Vec::new();
    }
    tokens
        .windows(n)
        .map(|w| {
            let mut h = DefaultHasher::new();
            for t in w {
                if mask { masked(t) } else { t.as_str() }.hash(&mut h);
            }
            h.finish()
        })
        .collect()
}

fn masked_key(tokens: &[String]) -> String {
    tokens
        .iter()
        .map(|t| masked(t))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `2·LCS / (len_a + len_b)` over tokens (1.0 for two empty texts).
pub fn similarity(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let (a, b) = if a.len() < b.len() { (b, a) } else { (a, b) };
    let mut prev = vec![0u32; b.len() + 1];
    let mut cur = vec![0u32; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = if x == y {
                prev[j] + 1
            } else {
                cur[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    2.0 * f64::from(prev[b.len()]) / (a.len() + b.len()) as f64
}

/// What the order-blind similarity gives away to the ordered one: a reordered text must share
/// 0.8 of its tokens to reach 0.6.
const BAG_DISCOUNT: f64 = 0.2;

/// `2·|A ∩ B| / (|A| + |B|)` over token multisets: blind to order, so sentences moved around
/// still match.
pub fn bag_similarity(a: &[String], b: &[String]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in a {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in b {
        if let Some(c) = counts.get_mut(t.as_str()).filter(|c| **c > 0) {
            *c -= 1;
            common += 1;
        }
    }
    2.0 * common as f64 / (a.len() + b.len()) as f64
}

struct Entry {
    benchmark: String,
    id: String,
    tokens: Vec<String>,
}

/// An n-gram index of problems (the test sets, or the problems kept so far).
struct Index {
    n: usize,
    mask: bool,
    entries: Vec<Entry>,
    grams: HashMap<u64, Vec<u32>>,
    short: HashMap<String, Vec<u32>>,
}

/// A match in an index.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub benchmark: String,
    pub id: String,
    pub similarity: f64,
}

impl Index {
    fn new(n: usize, mask: bool) -> Index {
        Index {
            n,
            mask,
            entries: Vec::new(),
            grams: HashMap::new(),
            short: HashMap::new(),
        }
    }

    fn add(&mut self, benchmark: &str, id: &str, tokens: Vec<String>) {
        let k = self.entries.len() as u32;
        let mut hs = gram_hashes(&tokens, self.n, self.mask);
        hs.sort_unstable();
        hs.dedup();
        for h in hs {
            self.grams.entry(h).or_default().push(k);
        }
        if tokens.len() < self.n {
            self.short.entry(masked_key(&tokens)).or_default().push(k);
        }
        self.entries.push(Entry {
            benchmark: benchmark.to_string(),
            id: id.to_string(),
            tokens,
        });
    }

    /// The most similar entry sharing an n-gram with `tokens` (the ones sharing most n-grams
    /// are compared), if its similarity is at least `threshold`.
    fn best(&self, tokens: &[String], threshold: f64) -> Option<Match> {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for h in gram_hashes(tokens, self.n, self.mask) {
            if let Some(ks) = self.grams.get(&h) {
                for k in ks {
                    *counts.entry(*k).or_default() += 1;
                }
            }
        }
        if tokens.len() < self.n {
            // Short texts: every test text with the same masked tokens is a candidate.
            for k in self.short.get(&masked_key(tokens)).into_iter().flatten() {
                counts.insert(*k, u32::MAX);
            }
        }
        let mut cands: Vec<(u32, u32)> = counts.into_iter().collect();
        cands.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        cands
            .into_iter()
            .take(16)
            .map(|(k, _)| {
                let e = &self.entries[k as usize];
                Match {
                    benchmark: e.benchmark.clone(),
                    id: e.id.clone(),
                    similarity: similarity(tokens, &e.tokens)
                        .max(bag_similarity(tokens, &e.tokens) - BAG_DISCOUNT),
                }
            })
            .filter(|m| m.similarity >= threshold)
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
    }
}

/// The bundled test sets, indexed for the contamination check.
pub struct TestSets {
    index: Index,
    threshold: f64,
}

impl TestSets {
    /// Every test set this build ships ([`Benchmark::ALL`]).
    pub fn bundled(config: &MergeConfig) -> Result<TestSets, DatasetError> {
        let mut all = Vec::new();
        for b in Benchmark::ALL {
            all.extend(b.load()?);
        }
        Ok(TestSets::from_problems(&all, config))
    }

    /// An index over `problems` (named by their dataset and id).
    pub fn from_problems(problems: &[Problem], config: &MergeConfig) -> TestSets {
        let mut index = Index::new(config.ngram, true);
        for p in problems {
            index.add(&p.dataset, &p.id, normalise(&p.question));
        }
        TestSets {
            index,
            threshold: config.contamination_similarity,
        }
    }

    /// The test problem `question` is contaminated by, if any.
    pub fn contaminated(&self, question: &str) -> Option<Match> {
        self.index.best(&normalise(question), self.threshold)
    }

    pub fn len(&self) -> usize {
        self.index.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.entries.is_empty()
    }
}

/// Why a record was left out.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// Too similar to a test problem.
    Contaminated(Match),
    /// The same or nearly the same problem as one kept earlier from another source or id.
    DuplicateProblem(Match),
    /// The same problem with the same solution as a record kept earlier.
    DuplicateSolution,
    /// The record has no problem or no readable solution.
    Malformed(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Contaminated(m) => write!(
                f,
                "test-set problem: {} {} (similarity {:.2})",
                m.benchmark, m.id, m.similarity
            ),
            Reason::DuplicateProblem(m) if m.similarity >= 1.0 => {
                write!(f, "duplicate of {} {}", m.benchmark, m.id)
            }
            Reason::DuplicateProblem(m) => write!(
                f,
                "near-duplicate of {} {} (similarity {:.2})",
                m.benchmark, m.id, m.similarity
            ),
            Reason::DuplicateSolution => f.write_str("duplicate solution"),
            Reason::Malformed(e) => write!(f, "malformed record: {e}"),
        }
    }
}

/// A record left out.
#[derive(Clone, Debug, PartialEq)]
pub struct Removal {
    pub file: PathBuf,
    pub line: usize,
    pub source: String,
    pub problem_id: String,
    pub reason: Reason,
}

/// What a merge read, kept and removed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MergeReport {
    pub read: usize,
    pub kept: usize,
    pub removed: Vec<Removal>,
}

impl MergeReport {
    /// Removals per kind: (contaminated, duplicate problems, duplicate solutions, malformed).
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for r in &self.removed {
            match r.reason {
                Reason::Contaminated(_) => c.0 += 1,
                Reason::DuplicateProblem(_) => c.1 += 1,
                Reason::DuplicateSolution => c.2 += 1,
                Reason::Malformed(_) => c.3 += 1,
            }
        }
        c
    }
}

/// The merge rules over a stream of records, in order: the first of duplicates is kept.
pub struct Merger<'a> {
    tests: &'a TestSets,
    config: MergeConfig,
    kept: Index,
    exact: HashMap<String, (String, String)>,
    /// Decision per (source, problem id): `None` kept, `Some(reason)` removed.
    decided: HashMap<(String, String), Option<Reason>>,
    solutions: HashSet<(String, String, u64)>,
}

impl<'a> Merger<'a> {
    pub fn new(tests: &'a TestSets, config: MergeConfig) -> Merger<'a> {
        Merger {
            tests,
            kept: Index::new(config.ngram, false),
            config,
            exact: HashMap::new(),
            decided: HashMap::new(),
            solutions: HashSet::new(),
        }
    }

    /// Whether to keep `record`; `Err` says why not.
    pub fn admit(&mut self, record: &TrainRecord) -> Result<(), Reason> {
        let question = record
            .question()
            .map_err(|e| Reason::Malformed(e.to_string()))?;
        let blocks = record
            .blocks()
            .map_err(|e| Reason::Malformed(e.to_string()))?;
        let key = (
            record.provenance.source.clone(),
            record.provenance.problem_id.clone(),
        );
        let decision = match self.decided.get(&key) {
            Some(d) => d.clone(),
            None => {
                let d = self.decide(&key, &question);
                self.decided.insert(key.clone(), d.clone());
                d
            }
        };
        if let Some(reason) = decision {
            return Err(reason);
        }
        let mut h = DefaultHasher::new();
        for b in &blocks {
            b.kind.hash(&mut h);
            b.content.hash(&mut h);
        }
        if !self.solutions.insert((key.0, key.1, h.finish())) {
            return Err(Reason::DuplicateSolution);
        }
        Ok(())
    }

    fn decide(&mut self, key: &(String, String), question: &str) -> Option<Reason> {
        if let Some(m) = self.tests.contaminated(question) {
            return Some(Reason::Contaminated(m));
        }
        let tokens = normalise(question);
        let exact = tokens.join(" ");
        if let Some((s, id)) = self.exact.get(&exact) {
            return Some(Reason::DuplicateProblem(Match {
                benchmark: s.clone(),
                id: id.clone(),
                similarity: 1.0,
            }));
        }
        if let Some(m) = self.kept.best(&tokens, self.config.duplicate_similarity) {
            return Some(Reason::DuplicateProblem(m));
        }
        self.exact.insert(exact, key.clone());
        self.kept.add(&key.0, &key.1, tokens);
        None
    }
}

/// Merges training files into `out`: every record of every input, in order, less the ones the
/// rules remove. The output is written to a temporary file and renamed into place.
pub fn merge(
    inputs: &[PathBuf],
    out: &Path,
    tests: &TestSets,
    config: &MergeConfig,
) -> Result<MergeReport, DataError> {
    let mut merger = Merger::new(tests, config.clone());
    let mut report = MergeReport::default();
    let mut text = String::new();
    for file in inputs {
        for n in read_train_records(file)? {
            report.read += 1;
            let r = n.record;
            match merger.admit(&r) {
                Ok(()) => {
                    report.kept += 1;
                    text.push_str(
                        &r.to_line()
                            .map_err(|e| DataError::Invalid(format!("serializing: {e}")))?,
                    );
                }
                Err(reason) => report.removed.push(Removal {
                    file: file.clone(),
                    line: n.line,
                    source: r.provenance.source.clone(),
                    problem_id: r.provenance.problem_id.clone(),
                    reason,
                }),
            }
        }
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    let tmp = out.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(text.as_bytes()).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<String> {
        normalise(s)
    }

    #[test]
    fn normalisation_and_similarity() {
        assert_eq!(
            toks("What's 2+2?  Find $x$."),
            ["what", "s", "2", "2", "find", "x"]
        );
        assert_eq!(similarity(&toks("a b c d"), &toks("a b c d")), 1.0);
        assert_eq!(similarity(&toks("a b c d"), &toks("e f")), 0.0);
        assert!((similarity(&toks("a b c d"), &toks("a x c d")) - 0.75).abs() < 1e-9);
        assert_eq!(similarity(&[], &[]), 1.0);
    }

    fn problem(id: &str, q: &str) -> Problem {
        Problem {
            id: id.into(),
            dataset: "t".into(),
            split: Default::default(),
            question: q.into(),
            answer: Some("1".into()),
            subject: None,
            level: None,
            solution: None,
        }
    }

    #[test]
    fn contamination_rule() {
        let q = "Janet has 16 ducks that lay eggs every single day and she eats three of them for breakfast each morning with friends.";
        let tests = TestSets::from_problems(
            &[problem("t1", q), problem("t2", "What is 1+1?")],
            &MergeConfig::default(),
        );
        assert_eq!(tests.contaminated(q).unwrap().id, "t1");
        // Numbers changed: the masked 13-grams still match.
        let reworded = q.replace("16", "17").replace("three", "four");
        assert!(tests.contaminated(&reworded).is_some());
        assert!(tests.contaminated("what is 1 + 1").is_some());
        assert!(tests.contaminated("What is 1+2?").is_some());
        assert!(tests.contaminated("What is the sum of the first ten positive odd integers that are prime numbers and less than fifty?").is_none());
    }
}
