//! D = D0 ∪ D1: training files merged, with duplicate problems and test-set problems removed.
//!
//! Texts are compared normalised ([`normalise`]: lower case, every run of characters that are
//! not letters or digits a single separator). The contamination rule starts from Qwen2.5-Math's
//! (13-gram matching after normalisation, with a normalised similarity as a second condition
//! against false positives) and is tightened against what it wrongly flagged among the 14,973
//! GSM8K and MATH train problems (980, 6.5%, with a single LCS-ratio threshold of 0.6):
//!
//! - **Figures apart.** Asymptote code (`[asy]...[/asy]`) is not compared as words: drawing
//!   boilerplate (axes, ticks, grids) made unrelated problems share dozens of 13-grams and most
//!   of their tokens. The words are compared without it; when either problem has a figure, the
//!   figures (numbers masked) must also be similar ([`MergeConfig::figure_similarity`]), so two
//!   "In the diagram, what is x?" problems with different diagrams are different problems.
//! - **Numbers masked.** In the 13-grams every digit run is one placeholder (`4x` -> `#x`), so a
//!   test problem with its numbers changed still shares its n-grams.
//! - **Three ways to be the same problem**, each strict: the LCS ratio of the real tokens
//!   (`2·LCS / (len_a + len_b)`) at least [`MergeConfig::contamination_similarity`] (0.8; 0.6
//!   flagged problems that share a stem and ask something else); or the LCS ratio of the masked
//!   tokens at least [`MergeConfig::renumbered_similarity`] (0.95: the same problem with other
//!   numbers) for problems of at least [`MergeConfig::renumbered_min_tokens`] tokens that are not
//!   numbers (6: "Compute $\cos 240^\circ$" and "Compute $\cos 45^\circ$", or "What is the
//!   value of $525^2 - 475^2$?" and "What is the value of -4 - 5 - -12 - -5?", are not the same
//!   problem); or the same
//!   tokens in another order, token-multiset ratio at least [`MergeConfig::reordered_similarity`]
//!   (0.97: sentences moved around).
//! - **Candidates**: test problems sharing a masked 13-gram, and, for reorderings whose sentences
//!   are shorter than 13 tokens, test problems with the same token multiset; problems shorter
//!   than 13 tokens are compared with the test problems whose masked text equals theirs.
//!
//! MATH's train and test splits share templated problems (the same problem with other numbers,
//! or another question about the same object): what the rule still flags is mostly those.
//!
//! A problem that equals (normalised) or nearly equals (a shared 13-gram and similarity at least
//! 0.9, the larger of the LCS ratio and the multiset ratio less 0.2) a problem kept earlier from
//! another (source, problem id) is a **duplicate**. Several solutions of the same (source,
//! problem id) are all kept, except identical ones.

use mathcoder_datasets::{Benchmark, DatasetError, Problem};
use mathcoder_lce::train_format::read_train_records;
use mathcoder_lce::TrainRecord;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use regex::Regex;

use crate::seed::{io, DataError};

/// The thresholds of the rules (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct MergeConfig {
    /// n of the n-grams (13).
    pub ngram: usize,
    /// LCS ratio of the real tokens from which a candidate test problem is the same problem.
    pub contamination_similarity: f64,
    /// LCS ratio of the masked tokens from which it is the same problem with other numbers...
    pub renumbered_similarity: f64,
    /// ...for problems of at least this many tokens that are not numbers.
    pub renumbered_min_tokens: usize,
    /// Token-multiset ratio from which it is the same problem reordered.
    pub reordered_similarity: f64,
    /// LCS ratio of the figures' masked tokens needed when either problem has a figure.
    pub figure_similarity: f64,
    /// Similarity from which a problem sharing an n-gram with a kept one is a duplicate.
    pub duplicate_similarity: f64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            ngram: 13,
            contamination_similarity: 0.8,
            renumbered_similarity: 0.95,
            renumbered_min_tokens: 6,
            reordered_similarity: 0.97,
            figure_similarity: 0.8,
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

fn digits() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\d+").expect("valid regex"))
}

fn figure() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"(?s)\[asy\](.*?)\[/asy\]").expect("valid regex"))
}

/// Every run of ASCII digits in each token one placeholder (`4x` -> `#x`).
pub fn mask_numbers(tokens: &[String]) -> Vec<String> {
    tokens
        .iter()
        .map(|t| digits().replace_all(t, "#").into_owned())
        .collect()
}

fn gram_hashes(tokens: &[String], n: usize) -> Vec<u64> {
    if tokens.len() < n || n == 0 {
        return Vec::new();
    }
    tokens
        .windows(n)
        .map(|w| {
            let mut h = DefaultHasher::new();
            w.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// A problem as the rules see it: its words (figures left out), the words with numbers masked,
/// and its figures' tokens with numbers masked.
struct Text {
    tokens: Vec<String>,
    masked: Vec<String>,
    figure: Vec<String>,
}

impl Text {
    /// `split_figures`: Asymptote code apart from the words (the contamination rule); otherwise
    /// the whole text is words (the duplicate rule).
    fn of(question: &str, split_figures: bool) -> Text {
        let (words, figure) = if split_figures {
            let figs: Vec<&str> = figure()
                .captures_iter(question)
                .filter_map(|c| c.get(1).map(|m| m.as_str()))
                .collect();
            (
                figure().replace_all(question, " ").into_owned(),
                mask_numbers(&normalise(&figs.join(" "))),
            )
        } else {
            (question.to_string(), Vec::new())
        };
        let tokens = normalise(&words);
        Text {
            masked: mask_numbers(&tokens),
            tokens,
            figure,
        }
    }

    fn multiset_key(&self) -> String {
        let mut t: Vec<&str> = self.tokens.iter().map(String::as_str).collect();
        t.sort_unstable();
        t.join(" ")
    }
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
    text: Text,
}

/// How an index decides that two problems are the same.
#[derive(Clone, Debug, PartialEq)]
enum Rule {
    /// Test-set contamination (module docs): masked n-grams, figures apart.
    Contamination(MergeConfig),
    /// Duplicates among training problems: real n-grams, `max(LCS, multiset - 0.2)` at least
    /// the threshold.
    Duplicate(f64),
}

/// An n-gram index of problems (the test sets, or the problems kept so far).
struct Index {
    n: usize,
    rule: Rule,
    entries: Vec<Entry>,
    grams: HashMap<u64, Vec<u32>>,
    short: HashMap<String, Vec<u32>>,
    multisets: HashMap<String, Vec<u32>>,
}

/// A match in an index.
#[derive(Clone, Debug, PartialEq)]
pub struct Match {
    pub benchmark: String,
    pub id: String,
    pub similarity: f64,
}

impl Index {
    fn new(n: usize, rule: Rule) -> Index {
        Index {
            n,
            rule,
            entries: Vec::new(),
            grams: HashMap::new(),
            short: HashMap::new(),
            multisets: HashMap::new(),
        }
    }

    fn contamination(&self) -> bool {
        matches!(self.rule, Rule::Contamination(_))
    }

    fn text(&self, question: &str) -> Text {
        Text::of(question, self.contamination())
    }

    /// The tokens n-grams are taken from: masked for contamination, real for duplicates.
    fn gram_tokens<'t>(&self, t: &'t Text) -> &'t [String] {
        if self.contamination() {
            &t.masked
        } else {
            &t.tokens
        }
    }

    fn add(&mut self, benchmark: &str, id: &str, text: Text) {
        let k = self.entries.len() as u32;
        let mut hs = gram_hashes(self.gram_tokens(&text), self.n);
        hs.sort_unstable();
        hs.dedup();
        for h in hs {
            self.grams.entry(h).or_default().push(k);
        }
        if text.tokens.len() < self.n {
            self.short.entry(text.masked.join(" ")).or_default().push(k);
        }
        if self.contamination() {
            self.multisets
                .entry(text.multiset_key())
                .or_default()
                .push(k);
        }
        self.entries.push(Entry {
            benchmark: benchmark.to_string(),
            id: id.to_string(),
            text,
        });
    }

    /// The similarity by which `a` is the same problem as `b` under the index's rule, if it is.
    fn same(&self, a: &Text, b: &Text) -> Option<f64> {
        match &self.rule {
            Rule::Duplicate(threshold) => {
                let s = similarity(&a.tokens, &b.tokens)
                    .max(bag_similarity(&a.tokens, &b.tokens) - BAG_DISCOUNT);
                (s >= *threshold).then_some(s)
            }
            Rule::Contamination(c) => {
                if (!a.figure.is_empty() || !b.figure.is_empty())
                    && similarity(&a.figure, &b.figure) < c.figure_similarity
                {
                    return None;
                }
                let real = similarity(&a.tokens, &b.tokens);
                let words = a.masked.iter().filter(|t| t.as_str() != "#").count();
                let renumbered = if words >= c.renumbered_min_tokens {
                    similarity(&a.masked, &b.masked)
                } else {
                    0.0
                };
                let reordered = bag_similarity(&a.tokens, &b.tokens);
                [
                    (real, c.contamination_similarity),
                    (renumbered, c.renumbered_similarity),
                    (reordered, c.reordered_similarity),
                ]
                .into_iter()
                .filter(|(s, t)| s >= t)
                .map(|(s, _)| s)
                .max_by(f64::total_cmp)
            }
        }
    }

    /// The most similar entry that is the same problem as `text` by the index's rule, among the
    /// candidates (those sharing most n-grams, same short text, same token multiset).
    fn best(&self, text: &Text) -> Option<Match> {
        let mut counts: HashMap<u32, u32> = HashMap::new();
        for h in gram_hashes(self.gram_tokens(text), self.n) {
            if let Some(ks) = self.grams.get(&h) {
                for k in ks {
                    *counts.entry(*k).or_default() += 1;
                }
            }
        }
        if text.tokens.len() < self.n {
            // Short texts: every text with the same masked tokens is a candidate.
            for k in self.short.get(&text.masked.join(" ")).into_iter().flatten() {
                counts.insert(*k, u32::MAX);
            }
        }
        if self.contamination() {
            for k in self
                .multisets
                .get(&text.multiset_key())
                .into_iter()
                .flatten()
            {
                counts.insert(*k, u32::MAX);
            }
        }
        let mut cands: Vec<(u32, u32)> = counts.into_iter().collect();
        cands.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        cands
            .into_iter()
            .take(16)
            .filter_map(|(k, _)| {
                let e = &self.entries[k as usize];
                self.same(text, &e.text).map(|similarity| Match {
                    benchmark: e.benchmark.clone(),
                    id: e.id.clone(),
                    similarity,
                })
            })
            .max_by(|a, b| a.similarity.total_cmp(&b.similarity))
    }
}

/// The bundled test sets, indexed for the contamination check.
pub struct TestSets {
    index: Index,
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
        let mut index = Index::new(config.ngram, Rule::Contamination(config.clone()));
        for p in problems {
            let text = index.text(&p.question);
            index.add(&p.dataset, &p.id, text);
        }
        TestSets { index }
    }

    /// The test problem `question` is contaminated by, if any.
    pub fn contaminated(&self, question: &str) -> Option<Match> {
        self.index.best(&self.index.text(question))
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
            kept: Index::new(config.ngram, Rule::Duplicate(config.duplicate_similarity)),
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
        let text = self.kept.text(question);
        let exact = text.tokens.join(" ");
        if let Some((s, id)) = self.exact.get(&exact) {
            return Some(Reason::DuplicateProblem(Match {
                benchmark: s.clone(),
                id: id.clone(),
                similarity: 1.0,
            }));
        }
        if let Some(m) = self.kept.best(&text) {
            return Some(Reason::DuplicateProblem(m));
        }
        self.exact.insert(exact, key.clone());
        self.kept.add(&key.0, &key.1, text);
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
            parents: Vec::new(),
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
        // Short: other numbers are another problem.
        assert!(tests.contaminated("What is 1+2?").is_none());
        assert!(tests.contaminated("What is the sum of the first ten positive odd integers that are prime numbers and less than fifty?").is_none());
        // Sentences reordered.
        let reordered = "She eats three of them for breakfast each morning with friends. Janet has 16 ducks that lay eggs every single day and.";
        assert!(tests.contaminated(reordered).is_some());
    }

    #[test]
    fn figures_are_compared_apart() {
        let axes = "[asy] size(150); real ticklen=3; real tickspace=2; real ticklength=0.1cm; real axisarrowsize=0.14cm; pen axispen=black+1.3bp; draw((0,0)--(4,4)); [/asy]";
        let other_axes = "[asy] size(150); real ticklen=3; real tickspace=2; real ticklength=0.1cm; real axisarrowsize=0.14cm; pen axispen=black+1.3bp; draw((0,0)--(4,4)); label(\"$A$\",(1,2)); [/asy]";
        let tests = TestSets::from_problems(
            &[
                problem("t1", &format!("The red parabola shown is the graph of the equation $x = ay^2 + by + c$. Find $a+b+c$. {axes}")),
                problem("t2", "In the diagram, what is the value of $x$? [asy] draw((0,0)--(1,0)--(1,1)--cycle); label(\"$x$\",(0.5,0.5)); label(\"$30^\\circ$\",(1,0)); [/asy]"),
            ],
            &MergeConfig::default(),
        );
        // The same drawing boilerplate, another problem.
        assert!(tests
            .contaminated(&format!("A portion of the graph of a quadratic function $f(x)$ is shown below. Let $g(x)=-f(x)$. What is $10a+b$? {other_axes}"))
            .is_none());
        // The same words, another diagram.
        assert!(tests
            .contaminated("In the diagram, what is the value of $x$? [asy] draw((0,0)--(3,0)--(0,5)--cycle); draw(circle((1,1),1)); dot((2,2)); [/asy]")
            .is_none());
        // The same problem, figure and all.
        assert!(tests
            .contaminated(&format!("The red parabola shown is the graph of the equation $x = ay^2 + by + c$.  Find $a+b+c$. {axes}"))
            .is_some());
    }
}
