//! Answer grading for math benchmarks: extraction and mathematical equivalence, in pure Rust.
//!
//! ```
//! use mathcoder_grade::{Dataset, Grader};
//! let grader = Grader::default();
//! let v = grader.grade(Dataset::Math, "\\frac{10}{11}", "The answer is $\\boxed{\\dfrac{10}{11}}$.", None);
//! assert!(v.correct);
//! assert_eq!(v.extracted.as_deref(), Some("\\dfrac{10}{11}"));
//! ```
//!
//! Every verdict carries its reason: the extracted strings, how they were extracted and which
//! rule decided. Work per pair is bounded ([`GradeOptions::fuel`], size limits on numbers and
//! inputs), nothing panics on input, and [`Grader`] is `Send + Sync`.
//!
//! # Numeric policy
//! Exact values (integers, fractions, radicals, `\pi`, ...) compare exactly. A *decimal literal*
//! may be rounded, so it gets the decimal-precision rule instead of an absolute tolerance:
//! * a decimal answer for an exact, non-decimal gold (`0.9091` for `\frac{10}{11}`) is accepted
//!   when it is the gold correctly rounded or truncated to the decimal's own places and has at
//!   least 3 significant digits ([`ApproxPolicy::Precision`], the default, matching how the
//!   paper's numbers were graded), or never ([`ApproxPolicy::Exact`], MATH's convention);
//!   a relative difference below 1e-6 is float noise and always accepted (`3.999999` for 4);
//! * a decimal gold is exact for most datasets: the answer must have at least as many places and
//!   round to it (`563.5123` for `563.51`, not `563.5`); for datasets whose golds are themselves
//!   rounded (SimulEq's `583.3333`, GSM-Hard's float artifacts) a difference of one unit in the
//!   last place of the coarser side is accepted (`15.63` for `15.62`);
//! * `float_rounding: Some(n)` replaces this with Math-Verify's rule (round both to `n` places).

mod equiv;
mod eval;
pub mod expr;
pub mod extract;
mod lexer;
pub mod number;
mod parser;
mod quirks;

use serde::Serialize;

pub use expr::Expr;
pub use extract::{extract, ExtractRule, Extracted, NoAnswer};
pub use lexer::Thousands;

/// Benchmarks whose answer conventions the grader knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dataset {
    Gsm8k,
    Math,
    Svamp,
    /// DeepMind Mathematics (the MathCoder 1,000-problem subset).
    Mathematics,
    SimulEq,
    Asdiv,
    GsmHard,
    Mawps,
    /// No dataset-specific rules.
    Generic,
}

impl Dataset {
    pub const ALL: [Dataset; 9] = [
        Dataset::Gsm8k,
        Dataset::Math,
        Dataset::Svamp,
        Dataset::Mathematics,
        Dataset::SimulEq,
        Dataset::Asdiv,
        Dataset::GsmHard,
        Dataset::Mawps,
        Dataset::Generic,
    ];

    /// Canonical lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Gsm8k => "gsm8k",
            Dataset::Math => "math",
            Dataset::Svamp => "svamp",
            Dataset::Mathematics => "mathematics",
            Dataset::SimulEq => "simuleq",
            Dataset::Asdiv => "asdiv",
            Dataset::GsmHard => "gsm-hard",
            Dataset::Mawps => "mawps",
            Dataset::Generic => "generic",
        }
    }

    /// Parses a dataset name (case-insensitive; `MATH`, `math500`/`minival` are MATH).
    pub fn from_name(s: &str) -> Option<Dataset> {
        let l = s.to_ascii_lowercase().replace('_', "-");
        Some(match l.as_str() {
            "gsm8k" | "gsm" => Dataset::Gsm8k,
            "math" | "math500" | "minival" | "math-500" => Dataset::Math,
            "svamp" => Dataset::Svamp,
            "mathematics" | "deepmind" | "dm-mathematics" | "deepmind-mathematics" => {
                Dataset::Mathematics
            }
            "simuleq" => Dataset::SimulEq,
            "asdiv" => Dataset::Asdiv,
            "gsm-hard" | "gsmhard" => Dataset::GsmHard,
            "mawps" => Dataset::Mawps,
            "generic" | "none" => Dataset::Generic,
            _ => return None,
        })
    }

    /// Guesses the dataset from a file path (`.../simuleq/simuleq_test_result-...jsonl`).
    pub fn from_path(path: &str) -> Option<Dataset> {
        let lower = path.to_ascii_lowercase();
        let file = lower.rsplit('/').next().unwrap_or(&lower);
        let keys: [(&str, Dataset); 10] = [
            ("gsm-hard", Dataset::GsmHard),
            ("gsmhard", Dataset::GsmHard),
            ("gsm8k", Dataset::Gsm8k),
            ("simuleq", Dataset::SimulEq),
            ("svamp", Dataset::Svamp),
            ("mathematics", Dataset::Mathematics),
            ("asdiv", Dataset::Asdiv),
            ("mawps", Dataset::Mawps),
            ("minival", Dataset::Math),
            ("math", Dataset::Math),
        ];
        for part in [file, lower.as_str()] {
            for (k, d) in keys {
                if part.contains(k) {
                    return Some(d);
                }
            }
        }
        None
    }

    /// What a decimal gold answer means in this dataset.
    pub fn gold_decimals(self) -> GoldDecimals {
        match self {
            Dataset::SimulEq | Dataset::GsmHard | Dataset::Mawps => GoldDecimals::Rounded,
            Dataset::Math | Dataset::Generic => GoldDecimals::RoundedTo,
            Dataset::Gsm8k | Dataset::Svamp | Dataset::Mathematics | Dataset::Asdiv => {
                GoldDecimals::Exact
            }
        }
    }

    /// How `d,ddd` is read in answers.
    pub fn thousands(self) -> Thousands {
        Thousands::Join
    }
}

/// What a gold answer written as a decimal (`0.45`) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoldDecimals {
    /// The exact value (DeepMind `-0.5`, SVAMP `2.5`).
    Exact,
    /// The exact value rounded as the question instructs (MATH "to the nearest hundredth"): a
    /// more precise answer that rounds to it matches (`0.0273` for `0.03`).
    RoundedTo,
    /// A value the dataset rounded or truncated loosely, from questions whose data are rounded
    /// too (SimulEq `583.3333`, `0.165`; GSM-Hard float artifacts): one unit in the last place of
    /// the coarser side (two for golds with 3+ places) is accepted.
    Rounded,
}

/// How a decimal answer compares with an exact, non-decimal gold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum ApproxPolicy {
    /// Accept a decimal that is the gold rounded/truncated to its own places (3+ significant
    /// digits).
    #[default]
    Precision,
    /// Never accept an approximation of an exact value (MATH convention).
    Exact,
}

/// How a response that states several values (`20,40`, `x = 3, y = 4`) is graded against a
/// gold that is one value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum MultiAnswer {
    /// SimulEq only: the gold is the first unknown the question asks for, so the first stated
    /// value is compared (`-21,-43` is right for gold `-21`).
    #[default]
    First,
    /// A list never equals a single value: the convention of the authors' evaluation, needed to
    /// reproduce the paper's SimulEq numbers.
    Reject,
}

/// Named option sets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Protocol {
    /// Our rules (see the crate docs).
    #[default]
    Default,
    /// The paper's conventions where they are conventions rather than errors: multi-value
    /// answers are wrong. (The authors' grading errors, such as the 0.01 absolute tolerance, are
    /// not reproduced.)
    Paper,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Default => "default",
            Protocol::Paper => "paper",
        }
    }
    pub fn from_name(s: &str) -> Option<Protocol> {
        match s {
            "default" => Some(Protocol::Default),
            "paper" | "mathcoder" => Some(Protocol::Paper),
            _ => None,
        }
    }
    pub fn options(self) -> GradeOptions {
        match self {
            Protocol::Default => GradeOptions::default(),
            Protocol::Paper => GradeOptions {
                multi_answer: MultiAnswer::Reject,
                ..GradeOptions::default()
            },
        }
    }
}

/// Grading options.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GradeOptions {
    pub approx: ApproxPolicy,
    pub multi_answer: MultiAnswer,
    /// Math-Verify compatibility: compare decimals after rounding both sides to this many places.
    pub float_rounding: Option<u32>,
    /// Variables must have the same names (`f(x)` differs from `f(y)`).
    pub strict_symbols: bool,
    /// A gold interval also matches a predicted inequality (`[-2,7]` vs `-2 <= x <= 7`); the
    /// other direction (gold inequality, predicted interval) always matches.
    pub interval_matches_relation: bool,
    /// Work budget per pair (nodes evaluated; big-number work counts more).
    pub fuel: i64,
}

impl Default for GradeOptions {
    fn default() -> Self {
        GradeOptions {
            approx: ApproxPolicy::Precision,
            multi_answer: MultiAnswer::First,
            float_rounding: None,
            strict_symbols: true,
            interval_matches_relation: false,
            fuel: 200_000,
        }
    }
}

/// The rule that decided a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MatchRule {
    /// Equal after normalising the strings.
    String,
    SameExpression,
    ExactValue,
    DecimalPrecision,
    FloatRounding,
    NumericValue,
    SymbolicIdentity,
    EquationUpToScale,
    AssignmentValue,
    Inequality,
    RelationAsInterval,
    Interval,
    SetElements,
    Elementwise,
    Percent,
    Text,
    BaseDigits,
    /// SimulEq: the first of several stated answers.
    FirstComponent,
    /// A choice letter mapped through the options in the question.
    ChoiceLetter,
    /// A true comparison, read as the value it asserts is greatest/smallest.
    Comparison,
}

impl MatchRule {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchRule::String => "string",
            MatchRule::SameExpression => "same_expression",
            MatchRule::ExactValue => "exact_value",
            MatchRule::DecimalPrecision => "decimal_precision",
            MatchRule::FloatRounding => "float_rounding",
            MatchRule::NumericValue => "numeric_value",
            MatchRule::SymbolicIdentity => "symbolic_identity",
            MatchRule::EquationUpToScale => "equation_up_to_scale",
            MatchRule::AssignmentValue => "assignment_value",
            MatchRule::Inequality => "inequality",
            MatchRule::RelationAsInterval => "relation_as_interval",
            MatchRule::Interval => "interval",
            MatchRule::SetElements => "set_elements",
            MatchRule::Elementwise => "elementwise",
            MatchRule::Percent => "percent",
            MatchRule::Text => "text",
            MatchRule::BaseDigits => "base_digits",
            MatchRule::FirstComponent => "first_component",
            MatchRule::ChoiceLetter => "choice_letter",
            MatchRule::Comparison => "comparison",
        }
    }
}

/// A grading decision and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Verdict {
    pub correct: bool,
    /// The gold answer as compared (after extraction).
    pub gold: String,
    /// The predicted answer as extracted from the response, if one was found.
    pub extracted: Option<String>,
    /// How the prediction was extracted.
    pub extraction: Option<ExtractRule>,
    /// The rule that matched (when correct).
    pub rule: Option<MatchRule>,
    /// One line for people: what was compared and what decided.
    pub reason: String,
}

/// Grades answers. Cheap to create, `Send + Sync`, reusable across threads.
#[derive(Clone, Debug, Default)]
pub struct Grader {
    pub options: GradeOptions,
}

impl Grader {
    pub fn new(options: GradeOptions) -> Grader {
        Grader { options }
    }

    /// Grades a model `response` (a whole solution, or MathCoder's final answer block) against a
    /// `gold` answer (a bare answer or a reference solution). `question` enables the rules that
    /// need it (DeepMind choice letters and comparisons).
    pub fn grade(
        &self,
        dataset: Dataset,
        gold: &str,
        response: &str,
        question: Option<&str>,
    ) -> Verdict {
        let gold_ex = match extract(gold) {
            Ok(e) => e,
            Err(_) => Extracted {
                answer: gold.trim().to_string(),
                rule: ExtractRule::BareAnswer,
                boxes: Vec::new(),
            },
        };
        let pred_ex = match extract(response) {
            Ok(e) => e,
            Err(why) => {
                return Verdict {
                    correct: false,
                    gold: gold_ex.answer,
                    extracted: None,
                    extraction: None,
                    rule: None,
                    reason: format!("no answer: {}", why.as_str()),
                }
            }
        };
        self.compare(dataset, &gold_ex, &pred_ex, question)
    }

    /// Compares two bare answers (no extraction).
    pub fn equivalent(&self, dataset: Dataset, gold: &str, pred: &str) -> Verdict {
        let g = Extracted {
            answer: gold.trim().to_string(),
            rule: ExtractRule::BareAnswer,
            boxes: Vec::new(),
        };
        let p = Extracted {
            answer: pred.trim().to_string(),
            rule: ExtractRule::BareAnswer,
            boxes: Vec::new(),
        };
        self.compare(dataset, &g, &p, None)
    }

    fn compare(
        &self,
        dataset: Dataset,
        gold: &Extracted,
        pred: &Extracted,
        question: Option<&str>,
    ) -> Verdict {
        let outcome = quirks::compare(&self.options, dataset, gold, pred, question);
        let (correct, rule, why) = match outcome {
            Ok(rule) => (true, Some(rule), format!("equal by {}", rule.as_str())),
            Err(why) => (false, None, why),
        };
        Verdict {
            correct,
            gold: gold.answer.clone(),
            extracted: Some(pred.answer.clone()),
            extraction: Some(pred.rule),
            rule,
            reason: format!(
                "{} (extracted {:?} by {}, gold {:?})",
                why,
                truncate(&pred.answer, 80),
                pred.rule.as_str(),
                truncate(&gold.answer, 80)
            ),
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut k = n;
    while !s.is_char_boundary(k) {
        k -= 1;
    }
    format!("{}...", &s[..k])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grader_is_send_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Grader>();
        assert_send_sync::<Verdict>();
    }

    #[test]
    fn dataset_names_and_paths() {
        for d in Dataset::ALL {
            assert_eq!(Dataset::from_name(d.name()), Some(d));
        }
        assert_eq!(
            Dataset::from_path(
                "outs/MathCoder-L-7b/simuleq/simuleq_test_result-20230918-0012-wrong.jsonl"
            ),
            Some(Dataset::SimulEq)
        );
        assert_eq!(
            Dataset::from_path("x/MATH/MATH_test_result.jsonl.gz"),
            Some(Dataset::Math)
        );
        assert_eq!(
            Dataset::from_path("x/GSM8K/GSM8K_test_result.jsonl"),
            Some(Dataset::Gsm8k)
        );
        assert_eq!(
            Dataset::from_path("x/mathematics/mathematics_test.jsonl"),
            Some(Dataset::Mathematics)
        );
    }

    #[test]
    fn verdicts_explain_themselves() {
        let g = Grader::default();
        let v = g.grade(Dataset::Gsm8k, "18", "18", None);
        assert!(v.correct, "{v:?}");
        assert_eq!(v.rule, Some(MatchRule::String));
        let v = g.grade(
            Dataset::Gsm8k,
            "18",
            "NameError: name 'x' is not defined",
            None,
        );
        assert!(!v.correct);
        assert!(v.reason.contains("traceback"), "{}", v.reason);
        let v = g.grade(Dataset::Math, "\\frac{6}{11}", "\\frac{27}{50}", None);
        assert!(!v.correct);
        assert!(v.reason.contains("27"), "{}", v.reason);
    }
}
