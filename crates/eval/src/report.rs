//! Aggregating graded files into reports, and rendering them.

use mathcoder_datasets::{math_levels, math_subject};
use mathcoder_grade::Dataset;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use crate::score::{AuthorsSplit, FileScore, SolutionStats};

/// Agreement of our verdicts with the authors' (known from their `-correct`/`-wrong` files).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Agreement {
    pub records: usize,
    pub agree: usize,
    /// We say correct, the authors said wrong.
    pub ours_only: usize,
    /// The authors said correct, we say wrong.
    pub authors_only: usize,
}

impl Agreement {
    pub fn rate(&self) -> f64 {
        ratio(self.agree, self.records)
    }
    pub fn add(&mut self, o: &Agreement) {
        self.records += o.records;
        self.agree += o.agree;
        self.ours_only += o.ours_only;
        self.authors_only += o.authors_only;
    }
}

/// Means of [`SolutionStats`] over a set of solutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct StatsSummary {
    pub blocks: f64,
    pub code_blocks: f64,
    pub errors_per_solution: f64,
    /// Share of solutions with at least one error.
    pub with_error: f64,
    pub chars: f64,
}

impl StatsSummary {
    fn of<'a>(it: impl Iterator<Item = &'a SolutionStats>) -> StatsSummary {
        let (mut n, mut b, mut c, mut e, mut we, mut ch) = (0usize, 0u64, 0u64, 0u64, 0usize, 0u64);
        for s in it {
            n += 1;
            b += s.blocks as u64;
            c += s.code_blocks as u64;
            e += s.errors as u64;
            we += (s.errors > 0) as usize;
            ch += s.chars as u64;
        }
        let d = n.max(1) as f64;
        StatsSummary {
            blocks: b as f64 / d,
            code_blocks: c as f64 / d,
            errors_per_solution: e as f64 / d,
            with_error: we as f64 / d,
            chars: ch as f64 / d,
        }
    }
}

/// MATH accuracy per subject and level.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct MathTable {
    /// (subject, level) -> (correct, total)
    pub cells: BTreeMap<(String, u8), (usize, usize)>,
}

impl MathTable {
    fn subjects(&self) -> Vec<String> {
        let mut v: Vec<String> = self.cells.keys().map(|(s, _)| s.clone()).collect();
        v.dedup();
        v
    }
    fn sum(&self, f: impl Fn(&str, u8) -> bool) -> (usize, usize) {
        self.cells
            .iter()
            .filter(|((s, l), _)| f(s, *l))
            .fold((0, 0), |(a, b), (_, (c, t))| (a + c, b + t))
    }
    /// Renders the table with accuracy in percent.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "  {:<32} {:>6} {:>6} {:>6} {:>6} {:>6} {:>6}",
            "subject (n)", "L1", "L2", "L3", "L4", "L5", "all"
        );
        let cell = |(c, t): (usize, usize)| {
            if t == 0 {
                "-".to_string()
            } else {
                format!("{:.1}", 100.0 * c as f64 / t as f64)
            }
        };
        for s in self.subjects() {
            let all = self.sum(|x, _| x == s);
            let mut line = format!("  {:<32}", format!("{} ({})", s, all.1));
            for l in 1..=5 {
                line.push_str(&format!(
                    " {:>6}",
                    cell(self.cells.get(&(s.clone(), l)).copied().unwrap_or((0, 0)))
                ));
            }
            line.push_str(&format!(" {:>6}", cell(all)));
            let _ = writeln!(out, "{line}");
        }
        let mut line = format!("  {:<32}", "all levels");
        for l in 1..=5 {
            line.push_str(&format!(" {:>6}", cell(self.sum(|_, x| x == l))));
        }
        line.push_str(&format!(" {:>6}", cell(self.sum(|_, _| true))));
        let _ = writeln!(out, "{line}");
        out
    }
}

/// One evaluated run: a single file, or an authors' `-correct`/`-wrong` pair read together.
#[derive(Clone, Debug, Serialize)]
pub struct RunReport {
    pub name: String,
    pub dataset: Dataset,
    pub files: Vec<PathBuf>,
    /// Records graded.
    pub total: usize,
    pub correct: usize,
    /// When the run is only an authors' `-correct` file of a known benchmark: the benchmark's
    /// size (the missing problems are the ones the authors graded wrong).
    pub benchmark_size: Option<usize>,
    pub agreement: Option<Agreement>,
    pub stats: StatsSummary,
    pub math_table: Option<MathTable>,
}

impl RunReport {
    /// Accuracy over the graded records.
    pub fn accuracy(&self) -> f64 {
        ratio(self.correct, self.total)
    }
    /// Accuracy over the whole benchmark (equal to [`Self::accuracy`] unless records are
    /// missing).
    pub fn benchmark_accuracy(&self) -> f64 {
        ratio(
            self.correct,
            self.benchmark_size.unwrap_or(self.total).max(self.total),
        )
    }
    /// The authors' accuracy on the same files, when known.
    pub fn authors_accuracy(&self, scores: &[&FileScore]) -> Option<f64> {
        let mut correct = 0;
        for s in scores {
            match s.split? {
                AuthorsSplit::Correct => correct += s.records.len(),
                AuthorsSplit::Wrong => {}
            }
        }
        Some(ratio(
            correct,
            self.benchmark_size.unwrap_or(self.total).max(self.total),
        ))
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

/// Size of a benchmark the grader knows, by its conventions name.
pub fn benchmark_size(d: Dataset) -> Option<usize> {
    mathcoder_datasets::Benchmark::for_conventions(d).map(|b| b.size())
}

/// Groups graded files into runs: an authors' `X-correct` and `X-wrong` pair in the same
/// directory becomes one run; every other file is its own run. Order follows the input.
pub fn group_runs(scores: &[FileScore]) -> Vec<(RunReport, Vec<usize>)> {
    let mut runs: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, s) in scores.iter().enumerate() {
        let key = match AuthorsSplit::from_path(&s.path) {
            Some((_, stem)) => format!(
                "{}/{}",
                s.path
                    .parent()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                stem
            ),
            None => format!("#{i}"),
        };
        match runs.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(i),
            None => runs.push((key, vec![i])),
        }
    }
    runs.into_iter()
        .map(|(_, idx)| {
            let files: Vec<&FileScore> = idx.iter().map(|&i| &scores[i]).collect();
            (build_run(&files), idx)
        })
        .collect()
}

fn build_run(files: &[&FileScore]) -> RunReport {
    let dataset = files[0].dataset;
    let total: usize = files.iter().map(|f| f.records.len()).sum();
    let correct: usize = files.iter().map(|f| f.correct()).sum();
    let splits: Vec<Option<AuthorsSplit>> = files.iter().map(|f| f.split).collect();
    let agreement = splits.iter().all(Option::is_some).then(|| {
        let mut a = Agreement::default();
        for f in files {
            let authors = f.split.expect("checked").is_correct();
            for r in &f.records {
                a.records += 1;
                if r.verdict.correct == authors {
                    a.agree += 1;
                } else if r.verdict.correct {
                    a.ours_only += 1;
                } else {
                    a.authors_only += 1;
                }
            }
        }
        a
    });
    let only_correct_split = splits.iter().all(|s| *s == Some(AuthorsSplit::Correct));
    let benchmark_size = if only_correct_split {
        benchmark_size(dataset)
    } else {
        None
    };
    let name = match AuthorsSplit::from_path(&files[0].path) {
        Some((_, stem)) if files.len() > 1 => format!("{stem} (correct+wrong)"),
        _ => files[0].path.display().to_string(),
    };
    let math_table = (dataset == Dataset::Math).then(|| {
        let mut t = MathTable::default();
        for f in files {
            for r in &f.records {
                if let (Some(s), Some(l)) = (&r.subject, r.level) {
                    let e = t.cells.entry((s.clone(), l)).or_insert((0, 0));
                    e.0 += r.verdict.correct as usize;
                    e.1 += 1;
                }
            }
        }
        if benchmark_size.is_some() {
            // Missing problems count as wrong: use the benchmark's cell sizes.
            for (id, level) in math_levels() {
                if let Some(s) = math_subject(id) {
                    t.cells.entry((s, *level)).or_insert((0, 0));
                }
            }
            let mut sizes: BTreeMap<(String, u8), usize> = BTreeMap::new();
            for (id, level) in math_levels() {
                if let Some(s) = math_subject(id) {
                    *sizes.entry((s, *level)).or_insert(0) += 1;
                }
            }
            for (k, v) in t.cells.iter_mut() {
                v.1 = sizes.get(k).copied().unwrap_or(v.1).max(v.1);
            }
        }
        t
    });
    RunReport {
        name,
        dataset,
        files: files.iter().map(|f| f.path.clone()).collect(),
        total,
        correct,
        benchmark_size,
        agreement,
        stats: StatsSummary::of(
            files
                .iter()
                .flat_map(|f| f.records.iter().map(|r| &r.stats)),
        ),
        math_table,
    }
}

/// Human-readable report of the runs.
pub fn render_text(runs: &[(RunReport, Vec<usize>)], scores: &[FileScore]) -> String {
    let mut out = String::new();
    for (run, idx) in runs {
        let _ = writeln!(
            out,
            "{}\n  dataset {}  records {}  correct {}  accuracy {:.2}%{}",
            run.name,
            run.dataset.name(),
            run.total,
            run.correct,
            100.0 * run.accuracy(),
            match crate::stats::wilson95(run.correct, run.total) {
                Some((lo, hi)) => format!(" (95% CI {:.1}-{:.1}%)", 100.0 * lo, 100.0 * hi),
                None => String::new(),
            }
        );
        if let Some(n) = run.benchmark_size.filter(|n| *n > run.total) {
            let _ = writeln!(
                out,
                "  only the authors' -correct records are here: {} of the {}-problem benchmark; counting the missing ones wrong, accuracy {:.2}%",
                run.total,
                n,
                100.0 * run.benchmark_accuracy()
            );
        }
        let files: Vec<&FileScore> = idx.iter().map(|&i| &scores[i]).collect();
        if let (Some(a), Some(auth)) = (&run.agreement, run.authors_accuracy(&files)) {
            let _ = writeln!(
                out,
                "  authors' accuracy {:.2}%  agreement with the authors' verdicts {:.2}% ({} of {}; {} we accept and they rejected, {} they accepted and we reject)",
                100.0 * auth,
                100.0 * a.rate(),
                a.agree,
                a.records,
                a.ours_only,
                a.authors_only
            );
        }
        let s = &run.stats;
        let _ = writeln!(
            out,
            "  per solution: {:.1} blocks, {:.1} code blocks, {:.2} errors ({:.1}% of solutions hit an error), {:.0} characters",
            s.blocks,
            s.code_blocks,
            s.errors_per_solution,
            100.0 * s.with_error,
            s.chars
        );
        if let Some(t) = &run.math_table {
            let _ = writeln!(out, "  MATH accuracy (%) by subject and level:");
            out.push_str(&t.render());
        }
    }
    out
}

/// One JSON object per input file: `{"file","dataset","total","correct","accuracy","accuracy_ci95"}`.
#[derive(Clone, Debug, Serialize)]
pub struct FileSummary {
    pub file: String,
    pub dataset: String,
    pub total: usize,
    pub correct: usize,
    pub accuracy: f64,
    /// The accuracy's 95% Wilson interval (absent with no records).
    pub accuracy_ci95: Option<(f64, f64)>,
}

impl FileSummary {
    pub fn of(s: &FileScore) -> FileSummary {
        FileSummary {
            file: s.path.display().to_string(),
            dataset: s.dataset.name().to_string(),
            total: s.records.len(),
            correct: s.correct(),
            accuracy: ratio(s.correct(), s.records.len()),
            accuracy_ci95: crate::stats::wilson95(s.correct(), s.records.len()),
        }
    }
}

/// One line of `--verdicts`: `{"file","line","id","gold","extracted","correct","reason"}`.
#[derive(Clone, Debug, Serialize)]
pub struct VerdictLine<'a> {
    pub file: String,
    pub line: usize,
    pub id: Option<&'a str>,
    pub gold: &'a str,
    pub extracted: Option<&'a str>,
    pub correct: bool,
    pub reason: &'a str,
}

impl<'a> VerdictLine<'a> {
    pub fn of(file: &FileScore, r: &'a crate::score::ScoredRecord) -> VerdictLine<'a> {
        VerdictLine {
            file: file.path.display().to_string(),
            line: r.line,
            id: r.id.as_deref(),
            gold: &r.verdict.gold,
            extracted: r.verdict.extracted.as_deref(),
            correct: r.verdict.correct,
            reason: &r.verdict.reason,
        }
    }
}
