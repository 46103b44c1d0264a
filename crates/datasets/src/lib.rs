//! Benchmarks: the test sets MathCoder is evaluated on, vendored (gzipped) into the binary, and
//! the [`Problem`] type every other stage consumes.
//!
//! This crate sits at the start of the data flow (problem -> prompt -> ...); it knows nothing of
//! generation, and of grading only the grader's name for a benchmark's answer conventions
//! ([`Benchmark::conventions`], a `mathcoder_grade::Dataset`).

use flate2::read::GzDecoder;
pub use mathcoder_grade::Dataset as Conventions;
use mathcoder_lce::record::{value_as_text, TestRecord};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::OnceLock;

/// Errors loading problems.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("unknown benchmark {0:?} (run `mathcoder datasets` for the list)")]
    Unknown(String),
    #[error("{source_name}: line {line}: {message}")]
    BadRecord {
        source_name: String,
        line: usize,
        message: String,
    },
    #[error(transparent)]
    Record(#[from] mathcoder_lce::RecordError),
    #[error("{spec:?} is neither a benchmark ({benchmarks}) nor a file")]
    NotFound { spec: String, benchmarks: String },
    #[error("corrupt embedded data for {0}")]
    Embedded(&'static str),
}

/// Which part of a dataset a problem comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Training problems (the sources of MathCodeInstruct).
    Train,
    /// Evaluation problems (what models are scored on).
    #[default]
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// A math problem with its reference answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// Stable identifier within the dataset (the file's id, or `<dataset>-<line>`).
    pub id: String,
    /// The dataset's name (`gsm8k`, `math`, ...).
    pub dataset: String,
    /// Train or test (files without the field are test problems).
    #[serde(default)]
    pub split: Split,
    pub question: String,
    /// The gold answer, as text; `None` for problems that have none (interpolated problems).
    #[serde(default)]
    pub answer: Option<String>,
    /// MATH subject (`algebra`, `number_theory`, ...).
    pub subject: Option<String>,
    /// MATH difficulty level, 1-5.
    pub level: Option<u8>,
    /// The reference solution, when the dataset has one.
    pub solution: Option<String>,
    /// The problems this one was made from (problem interpolation: the GSM8K train and MATH
    /// train parents' ids); empty for benchmark problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parents: Vec<String>,
}

impl Problem {
    /// The gold answer, or `""` when the problem has none (grades as wrong).
    pub fn gold(&self) -> &str {
        self.answer.as_deref().unwrap_or("")
    }
}

/// The benchmarks this project ships.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Benchmark {
    Gsm8k,
    Math,
    Math500,
    Svamp,
    Mathematics,
    SimulEq,
    Asdiv,
    GsmHard,
    Mawps,
    /// GSM8K train (7,473 problems with calculator-annotated solutions).
    Gsm8kTrain,
    /// MATH train (7,500 problems with subject, level and solution).
    MathTrain,
}

struct Embedded {
    name: &'static str,
    bytes: &'static [u8],
}

macro_rules! embed {
    ($file:literal) => {
        Embedded {
            name: $file,
            bytes: include_bytes!(concat!("../../../data/benchmarks/", $file)),
        }
    };
}

const GSM8K: &[Embedded] = &[embed!("GSM8K_test_post.jsonl.gz")];
const MATH: &[Embedded] = &[
    embed!("MATH_1_test_post.jsonl.gz"),
    embed!("MATH_2_test_post.jsonl.gz"),
    embed!("MATH_3_test_post.jsonl.gz"),
    embed!("MATH_4_test_post.jsonl.gz"),
    embed!("MATH_5_test_post.jsonl.gz"),
];
const MATH500: &[Embedded] = &[embed!("minival_test_post.jsonl.gz")];
const SVAMP: &[Embedded] = &[embed!("SVAMP_test_post.jsonl.gz")];
const MATHEMATICS: &[Embedded] = &[embed!("mathematics_test_post.jsonl.gz")];
const SIMULEQ: &[Embedded] = &[embed!("simuleq_test_post.jsonl.gz")];
const ASDIV: &[Embedded] = &[embed!("tora_asdiv_test.jsonl.gz")];
const GSM_HARD: &[Embedded] = &[embed!("tora_gsm-hard_test.jsonl.gz")];
const MAWPS: &[Embedded] = &[embed!("tora_mawps_test.jsonl.gz")];
const GSM8K_TRAIN: &[Embedded] = &[embed!("gsm8k_train.jsonl.gz")];
const MATH_TRAIN: &[Embedded] = &[embed!("MATH_train.jsonl.gz")];
const SUBJECT_LEVEL: Embedded = embed!("MATH_subject_level.jsonl.gz");

const MATHCODER_SOURCE: &str =
    "MathCoder authors' data/ (github.com/mathllm/MathCoder), Apache-2.0";
const TORA_SOURCE: &str = "microsoft/ToRA data/, MIT";
const GSM8K_SOURCE: &str = "openai/grade-school-math train.jsonl, MIT";
const MATH_TRAIN_SOURCE: &str = "hendrycks/math train split, MIT";

impl Benchmark {
    /// The test sets (what models are scored on, and what training data is decontaminated
    /// against).
    pub const ALL: [Benchmark; 9] = [
        Benchmark::Gsm8k,
        Benchmark::Math,
        Benchmark::Math500,
        Benchmark::Svamp,
        Benchmark::Mathematics,
        Benchmark::SimulEq,
        Benchmark::Asdiv,
        Benchmark::GsmHard,
        Benchmark::Mawps,
    ];

    /// The train sets (the sources of MathCodeInstruct).
    pub const TRAIN: [Benchmark; 2] = [Benchmark::Gsm8kTrain, Benchmark::MathTrain];

    /// Every dataset this build ships: the test sets, then the train sets.
    pub fn listed() -> impl Iterator<Item = Benchmark> {
        Benchmark::ALL.into_iter().chain(Benchmark::TRAIN)
    }

    /// Train or test.
    pub fn split(self) -> Split {
        match self {
            Benchmark::Gsm8kTrain | Benchmark::MathTrain => Split::Train,
            _ => Split::Test,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Benchmark::Gsm8k => "gsm8k",
            Benchmark::Math => "math",
            Benchmark::Math500 => "math500",
            Benchmark::Svamp => "svamp",
            Benchmark::Mathematics => "mathematics",
            Benchmark::SimulEq => "simuleq",
            Benchmark::Asdiv => "asdiv",
            Benchmark::GsmHard => "gsm-hard",
            Benchmark::Mawps => "mawps",
            Benchmark::Gsm8kTrain => "gsm8k-train",
            Benchmark::MathTrain => "math-train",
        }
    }

    /// Parses a benchmark name (case-insensitive). Aliases are the grader's names for the same
    /// conventions (`deepmind`, `gsmhard`, ...), except that MATH's 500-problem subset has its own
    /// names (`math500`, `minival`, `math-500`).
    pub fn from_name(s: &str) -> Option<Benchmark> {
        let l = s.to_ascii_lowercase().replace('_', "-");
        match l.as_str() {
            "math500" | "minival" | "math-500" => return Some(Benchmark::Math500),
            "gsm8k-train" => return Some(Benchmark::Gsm8kTrain),
            "math-train" => return Some(Benchmark::MathTrain),
            _ => {}
        }
        Conventions::from_name(&l).and_then(Benchmark::for_conventions)
    }

    /// One line on where the data come from.
    pub fn source(self) -> &'static str {
        match self {
            Benchmark::Asdiv | Benchmark::GsmHard | Benchmark::Mawps => TORA_SOURCE,
            Benchmark::Gsm8kTrain => GSM8K_SOURCE,
            Benchmark::MathTrain => MATH_TRAIN_SOURCE,
            _ => MATHCODER_SOURCE,
        }
    }

    /// A short description.
    pub fn description(self) -> &'static str {
        match self {
            Benchmark::Gsm8k => "GSM8K test (grade-school word problems)",
            Benchmark::Math => "MATH test, all 5,000 problems with subject and level",
            Benchmark::Math500 => "MATH500: the 500-problem MATH subset (authors' minival)",
            Benchmark::Svamp => "SVAMP (varied arithmetic word problems)",
            Benchmark::Mathematics => "DeepMind Mathematics, the MathCoder 1,000-problem subset",
            Benchmark::SimulEq => "SimulEq (simultaneous equations word problems)",
            Benchmark::Asdiv => "ASDiv (as shipped by ToRA)",
            Benchmark::GsmHard => "GSM-Hard (GSM8K with large numbers, as shipped by ToRA)",
            Benchmark::Mawps => "MAWPS (as shipped by ToRA)",
            Benchmark::Gsm8kTrain => "GSM8K train (solutions with calculator annotations)",
            Benchmark::MathTrain => "MATH train, 7,500 problems with subject, level, solution",
        }
    }

    /// The grader's answer conventions for this benchmark.
    pub fn conventions(self) -> Conventions {
        match self {
            Benchmark::Gsm8k | Benchmark::Gsm8kTrain => Conventions::Gsm8k,
            Benchmark::Math | Benchmark::Math500 | Benchmark::MathTrain => Conventions::Math,
            Benchmark::Svamp => Conventions::Svamp,
            Benchmark::Mathematics => Conventions::Mathematics,
            Benchmark::SimulEq => Conventions::SimulEq,
            Benchmark::Asdiv => Conventions::Asdiv,
            Benchmark::GsmHard => Conventions::GsmHard,
            Benchmark::Mawps => Conventions::Mawps,
        }
    }

    /// Problems in the benchmark (checked against the vendored files by a test).
    pub fn size(self) -> usize {
        match self {
            Benchmark::Gsm8k => 1319,
            Benchmark::Math => 5000,
            Benchmark::Math500 => 500,
            Benchmark::Svamp => 1000,
            Benchmark::Mathematics => 1000,
            Benchmark::SimulEq => 514,
            Benchmark::Asdiv => 2215,
            Benchmark::GsmHard => 1319,
            Benchmark::Mawps => 2065,
            Benchmark::Gsm8kTrain => 7473,
            Benchmark::MathTrain => 7500,
        }
    }

    /// The full benchmark whose answer conventions are `c` (MATH for MATH's conventions, not
    /// its 500-problem subset).
    pub fn for_conventions(c: Conventions) -> Option<Benchmark> {
        Benchmark::ALL.into_iter().find(|b| b.conventions() == c)
    }

    fn files(self) -> &'static [Embedded] {
        match self {
            Benchmark::Gsm8k => GSM8K,
            Benchmark::Math => MATH,
            Benchmark::Math500 => MATH500,
            Benchmark::Svamp => SVAMP,
            Benchmark::Mathematics => MATHEMATICS,
            Benchmark::SimulEq => SIMULEQ,
            Benchmark::Asdiv => ASDIV,
            Benchmark::GsmHard => GSM_HARD,
            Benchmark::Mawps => MAWPS,
            Benchmark::Gsm8kTrain => GSM8K_TRAIN,
            Benchmark::MathTrain => MATH_TRAIN,
        }
    }

    /// All problems, in file order.
    pub fn load(self) -> Result<Vec<Problem>, DatasetError> {
        let mut out = Vec::new();
        let mut line_base = 0;
        for f in self.files() {
            let text = gunzip(f)?;
            let n = parse_problems(&text, self.name(), f.name, line_base, &mut out)?;
            line_base += n;
        }
        for p in &mut out {
            p.split = self.split();
        }
        Ok(out)
    }
}

fn gunzip(e: &Embedded) -> Result<String, DatasetError> {
    let mut s = String::new();
    GzDecoder::new(e.bytes)
        .read_to_string(&mut s)
        .map_err(|_| DatasetError::Embedded(e.name))?;
    Ok(s)
}

/// MATH problem id -> level (1-5), for all 5,000 test problems.
pub fn math_levels() -> &'static HashMap<String, u8> {
    static LEVELS: OnceLock<HashMap<String, u8>> = OnceLock::new();
    LEVELS.get_or_init(|| {
        let text = gunzip(&SUBJECT_LEVEL).unwrap_or_default();
        let map: HashMap<String, u8> = serde_json::from_str(text.trim()).unwrap_or_default();
        map
    })
}

/// The MATH subject encoded in an id like `test/intermediate_algebra/1410.json`.
pub fn math_subject(id: &str) -> Option<String> {
    let mut parts = id.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(_split), Some(subject), Some(_file)) if !subject.is_empty() => {
            Some(subject.to_string())
        }
        _ => None,
    }
}

/// Problems named on a command line: a benchmark or a file, with its name and conventions.
#[derive(Clone, Debug)]
pub struct ProblemSet {
    /// The benchmark's name, or the file's stem.
    pub name: String,
    pub problems: Vec<Problem>,
    /// The answer conventions: the benchmark's, or guessed from the file's path.
    pub conventions: Option<Conventions>,
}

/// Resolves `spec`: a benchmark name (see [`Benchmark::from_name`]) or a path to a JSONL file of
/// problems (see [`load_file`]).
pub fn resolve(spec: &str) -> Result<ProblemSet, DatasetError> {
    if let Some(b) = Benchmark::from_name(spec) {
        return Ok(ProblemSet {
            name: b.name().to_string(),
            problems: b.load()?,
            conventions: Some(b.conventions()),
        });
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(DatasetError::NotFound {
            spec: spec.to_string(),
            benchmarks: Benchmark::listed()
                .map(|b| b.name())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let name = path
        .file_name()
        .and_then(|s| s.to_str())
        .unwrap_or("dataset")
        .split('.')
        .next()
        .unwrap_or("dataset")
        .to_string();
    Ok(ProblemSet {
        problems: load_file(path, &name)?,
        conventions: Conventions::from_path(&path.to_string_lossy()),
        name,
    })
}

/// Loads problems from a file: the authors' test format (`messages` + `ground_truth`), ToRA's
/// formats, `{question, answer}` (GSM8K's `#### ` answers included) or our [`Problem`] JSONL.
/// `.gz` files are read directly.
pub fn load_file(path: &Path, dataset: &str) -> Result<Vec<Problem>, DatasetError> {
    let text = mathcoder_lce::record::read_to_string_maybe_gz(path)?;
    let mut out = Vec::new();
    parse_problems(&text, dataset, &path.display().to_string(), 0, &mut out)?;
    Ok(out)
}

/// Parses JSONL problems in any known format; returns the number of lines read.
fn parse_problems(
    text: &str,
    dataset: &str,
    source_name: &str,
    line_base: usize,
    out: &mut Vec<Problem>,
) -> Result<usize, DatasetError> {
    let levels = (dataset == "math" || dataset == "math500").then(math_levels);
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        lines = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| DatasetError::BadRecord {
            source_name: source_name.to_string(),
            line: i + 1,
            message,
        };
        let v: Value = serde_json::from_str(line).map_err(|e| bad(e.to_string()))?;
        let index = line_base + i + 1;
        let mut p = problem_from_value(v, dataset, index).map_err(bad)?;
        if p.subject.is_none() {
            p.subject = math_subject(&p.id).filter(|_| levels.is_some());
        }
        if let Some(levels) = levels {
            if p.level.is_none() {
                p.level = levels.get(&p.id).copied();
            }
        }
        out.push(p);
    }
    Ok(lines)
}

fn text_of(v: &Value, key: &str) -> Option<String> {
    v.get(key).filter(|x| !x.is_null()).map(value_as_text)
}

fn problem_from_value(v: Value, dataset: &str, index: usize) -> Result<Problem, String> {
    let fallback_id = format!("{dataset}-{index}");
    if v.get("messages").is_some() {
        let r: TestRecord = serde_json::from_value(v).map_err(|e| e.to_string())?;
        let question = r.question().ok_or("record has no user message")?;
        return Ok(Problem {
            id: r.id_text().unwrap_or(fallback_id),
            dataset: dataset.to_string(),
            question,
            split: Split::Test,
            answer: Some(r.ground_truth.answer_text()),
            subject: None,
            level: None,
            solution: r.ground_truth.solution.filter(|s| !s.is_empty()),
            parents: Vec::new(),
        });
    }
    if v.get("dataset").is_some()
        && v.get("question").is_some()
        && v.get("answer").is_some()
        && v.get("id").is_some()
    {
        return serde_json::from_value(v).map_err(|e| e.to_string());
    }
    let id = text_of(&v, "idx")
        .or_else(|| text_of(&v, "id"))
        .map(|i| format!("{dataset}-{i}"))
        .unwrap_or(fallback_id);
    // ASDiv (`body`, `question`, `answer` "9 (apples)", `formula`) and ToRA's SVAMP (`Body`,
    // `Question`, `Answer`, `Equation`).
    for [body, question, answer, solution] in [
        ["body", "question", "answer", "formula"],
        ["Body", "Question", "Answer", "Equation"],
    ] {
        if let (Some(b), Some(q)) = (text_of(&v, body), text_of(&v, question)) {
            return Ok(Problem {
                id,
                dataset: dataset.to_string(),
                split: Split::Test,
                question: format!("{} {}", b.trim(), q.trim()),
                answer: Some(text_of(&v, answer).ok_or("no answer")?),
                subject: None,
                level: None,
                solution: text_of(&v, solution),
                parents: Vec::new(),
            });
        }
    }
    // MAWPS / GSM-Hard: input + target.
    if let (Some(q), Some(t)) = (text_of(&v, "input"), text_of(&v, "target")) {
        return Ok(Problem {
            id,
            dataset: dataset.to_string(),
            split: Split::Test,
            question: q,
            answer: Some(t),
            subject: None,
            level: None,
            solution: text_of(&v, "code"),
            parents: Vec::new(),
        });
    }
    // GSM8K original / generic: question + answer (with `#### `).
    // (MATH train: four problems have no `\boxed{}` answer, so `answer` is null or empty.)
    let answer = text_of(&v, "answer").filter(|a| !a.trim().is_empty());
    if let (Some(q), true) = (
        text_of(&v, "question").or_else(|| text_of(&v, "problem")),
        answer.is_some() || text_of(&v, "solution").is_some(),
    ) {
        let (solution, answer) = match answer.as_deref().and_then(|a| a.rsplit_once("####")) {
            Some((sol, ans)) => (
                Some(sol.trim().to_string()),
                Some(ans.trim().replace(',', "")),
            ),
            None => (text_of(&v, "solution"), answer),
        };
        // MATH train: `subject` (`algebra`, ...) and `level` ("Level 3"; two are "Level ?").
        let subject = text_of(&v, "subject")
            .or_else(|| text_of(&v, "type"))
            .filter(|_| dataset.starts_with("math"));
        let level = text_of(&v, "level").and_then(|l| {
            l.trim_start_matches("Level")
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|n| (1..=5).contains(n))
        });
        return Ok(Problem {
            id,
            dataset: dataset.to_string(),
            split: Split::Test,
            question: q,
            answer,
            subject,
            level,
            solution,
            parents: Vec::new(),
        });
    }
    Err("unrecognised record format (expected messages/ground_truth, question/answer, body/question, input/target)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_benchmark_loads_with_its_size() {
        for b in Benchmark::listed() {
            let n = b.size();
            let ps = b.load().unwrap();
            assert_eq!(ps.len(), n, "{}", b.name());
            let mut ids: Vec<&str> = ps.iter().map(|p| p.id.as_str()).collect();
            ids.sort();
            ids.dedup();
            assert_eq!(ids.len(), n, "ids of {} are unique", b.name());
            assert!(ps.iter().all(|p| p.split == b.split()), "{}", b.name());
            let golds = ps.iter().filter(|p| !p.gold().is_empty()).count();
            // MATH train: four problems have no `\boxed{}` answer.
            let missing = if b == Benchmark::MathTrain { 4 } else { 0 };
            assert_eq!(golds, n - missing, "{}", b.name());
            assert!(ps.iter().all(|p| !p.question.is_empty()), "{}", b.name());
        }
    }

    #[test]
    fn math_has_subject_and_level_for_every_problem() {
        let ps = Benchmark::Math.load().unwrap();
        assert!(ps
            .iter()
            .all(|p| p.subject.is_some() && matches!(p.level, Some(1..=5))));
        let mut subjects: Vec<&str> = ps.iter().filter_map(|p| p.subject.as_deref()).collect();
        subjects.sort();
        subjects.dedup();
        assert_eq!(subjects.len(), 7, "{subjects:?}");
        let algebra = ps
            .iter()
            .filter(|p| p.subject.as_deref() == Some("algebra"))
            .count();
        assert_eq!(algebra, 1187);
        assert!(Benchmark::Math500
            .load()
            .unwrap()
            .iter()
            .all(|p| p.level.is_some()));
    }

    #[test]
    fn names_round_trip() {
        for b in Benchmark::listed() {
            assert_eq!(Benchmark::from_name(b.name()), Some(b));
        }
        assert_eq!(Benchmark::from_name("minival"), Some(Benchmark::Math500));
        assert!(Benchmark::from_name("nope").is_none());
    }

    #[test]
    fn gsm8k_original_format() {
        let text = r#"{"question": "How many?", "answer": "2 + 2 = 4\n#### 1,004"}"#;
        let mut out = Vec::new();
        parse_problems(text, "gsm8k", "t", 0, &mut out).unwrap();
        assert_eq!(out[0].gold(), "1004");
        assert_eq!(out[0].id, "gsm8k-1");
        let err = parse_problems("{\"x\": 1}", "d", "t.jsonl", 0, &mut out).unwrap_err();
        assert!(err.to_string().contains("t.jsonl: line 1"), "{err}");
    }

    #[test]
    fn train_sets() {
        let g = Benchmark::Gsm8kTrain.load().unwrap();
        assert_eq!(g[0].id, "gsm8k-train-1");
        assert_eq!(g[0].gold(), "72");
        assert!(g[0].solution.as_deref().unwrap().contains("<<48/2=24>>"));
        assert_eq!(g[0].split, Split::Train);
        let m = Benchmark::MathTrain.load().unwrap();
        assert_eq!(m[0].id, "math-train-algebra/0");
        assert_eq!(m[0].subject.as_deref(), Some("algebra"));
        assert_eq!(m[0].level, Some(5));
        assert_eq!(m[0].gold(), "0");
        assert_eq!(m.iter().filter(|p| p.level.is_none()).count(), 2);
        assert_eq!(m.iter().filter(|p| p.answer.is_none()).count(), 4);
        assert_eq!(Benchmark::MathTrain.conventions(), Conventions::Math);
        assert_eq!(
            Benchmark::for_conventions(Conventions::Gsm8k),
            Some(Benchmark::Gsm8k)
        );
        assert!(!Benchmark::ALL.contains(&Benchmark::MathTrain));
        // A problem file without split or answer (an interpolated problem) loads.
        let mut out = Vec::new();
        let line = r#"{"id": "i1", "dataset": "interp", "question": "Q?", "answer": null}"#;
        parse_problems(line, "interp", "t", 0, &mut out).unwrap();
        assert_eq!(
            (out[0].answer.as_deref(), out[0].split),
            (None, Split::Test)
        );
    }
}
