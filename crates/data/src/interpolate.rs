//! Problem interpolation and its difficulty check (the paper's §2.1, App. A and B).
//!
//! [`interpolate`] asks a chat model, with the paper's prompt verbatim ([`interpolation_prompt`]),
//! for a problem between a GSM8K train problem (easy) and a MATH train problem (hard). Pair `k`
//! of a run is the `k`-th draw of a ChaCha8 generator seeded with the run's seed (distinct
//! pairs), so a run is reproducible and resumable. The new problem is parsed from the reply
//! ([`parse_new_problem`]): one leading label (`New problem:`, `**Problem:**`, `Example 3:`) and
//! surrounding quotes are removed, anything from a `Solution:`/`Answer:` line on is cut, and a
//! reply is rejected when it is empty, echoes a parent (token-LCS similarity >= 0.9 to either,
//! `merge::similarity`), or holds several problems (two or more problem labels); every rejection
//! is counted by reason. `DIR/problems.jsonl` holds the accepted problems in our `Problem`
//! format (what `data distill --problems` reads) with their parents as provenance;
//! `DIR/attempts.jsonl` holds one line per pair; `run.json` is the identity.
//!
//! [`judge`] asks the paper's comparison prompt ([`judge_prompt`]) for each new problem against
//! each parent, in both orders (new problem as "Problem 1", then as "Problem 2") to cancel
//! position bias. A comparison is `harder`/`easier`/`tie` when both orders say the same,
//! `inconsistent` when they differ, `unparsed` when a reply names none of the three answers,
//! `failed` when a request failed; [`JudgeReport`] gives each as a share of the problems
//! judged (the paper: 83.2% harder than the GSM8K parent, 95.6% easier than the MATH parent).

use mathcoder_datasets::{Problem, Split};
use mathcoder_lce::chat::Transcript;
use mathcoder_llm::chat::{ChatFinish, ChatModel, ChatRequest};
use rand::{Rng, SeedableRng};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::merge::{normalise, similarity};
use crate::seed::{check_identity, line, load_keyed, DataError};
use crate::work::run_units;

/// The paper's interpolation prompt (Fig. 6(a)/7(a)), verbatim.
pub fn interpolation_prompt(easy: &str, hard: &str) -> String {
    format!(
        "Please create a new problem, following the given example, \"Example 1\" is an easy problem and \"Example 2\" is much more difficult than \"Example 1\", the new problem should be harder than \"Example 1\" and simpler than \"Example 2\".\n\nExample 1: {easy}\n\nExample 2: {hard}"
    )
}

/// The paper's difficulty-comparison prompt (App. B), verbatim (its typo "You answer" kept).
pub fn judge_prompt(problem1: &str, problem2: &str) -> String {
    format!(
        "Which problem is more difficult?\n\nProblem 1: \"{problem1}\"\n\nProblem 2: \"{problem2}\"\n\nYou answer should be one of \"Problem 1\", \"Problem 2\" and \"Tie\"."
    )
}

/// Similarity to a parent at or above which a new problem is an echo.
pub const ECHO_SIMILARITY: f64 = 0.9;

/// Why a reply gave no new problem.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    Empty,
    EchoedParent,
    MultipleProblems,
    /// The reply was cut at the token limit.
    Truncated,
}

fn label_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(
            r"(?im)^[\s#*_>]*(?:new\s+)?(?:problem|question|example)(?:\s*\d+)?[\s*_]*[:.)][\s*_]*",
        )
        .expect("valid regex")
    })
}

fn intro_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"(?i)^(?:sure[.!,]?\s*)?(?:here(?:'s| is) (?:a|the|my) new problem[^:\n]*:)\s*")
            .expect("valid regex")
    })
}

fn solution_re() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| {
        Regex::new(r"(?im)^[\s#*_]*(?:solution|answer|explanation)[\s*_]*[:.]")
            .expect("valid regex")
    })
}

/// The new problem in a reply to the interpolation prompt, or why there is none.
pub fn parse_new_problem(reply: &str, parents: [&str; 2]) -> Result<String, Rejection> {
    let mut text = reply.trim();
    if let Some(m) = solution_re().find(text) {
        text = text[..m.start()].trim();
    }
    if label_re().find_iter(text).count() >= 2 {
        return Err(Rejection::MultipleProblems);
    }
    if let Some(m) = intro_re().find(text) {
        text = text[m.end()..].trim();
    }
    if let Some(m) = label_re().find(text).filter(|m| m.start() == 0) {
        text = text[m.end()..].trim();
    }
    let text = text
        .trim_matches(|c: char| c == '"' || c == '“' || c == '”' || c.is_whitespace())
        .to_string();
    let tokens = normalise(&text);
    if tokens.is_empty() {
        return Err(Rejection::Empty);
    }
    if parents
        .iter()
        .any(|p| similarity(&tokens, &normalise(p)) >= ECHO_SIMILARITY)
    {
        return Err(Rejection::EchoedParent);
    }
    Ok(text)
}

/// The settings of a chat request for interpolation or judging.
#[derive(Clone, Debug)]
pub struct PromptConfig {
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: Option<f32>,
}

/// An interpolation run's settings.
#[derive(Clone, Debug)]
pub struct InterpolateConfig {
    pub out: PathBuf,
    /// Pairs to try.
    pub count: usize,
    pub seed: u64,
    pub concurrency: usize,
    pub prompt: PromptConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct InterpolateIdentity {
    kind: String,
    generator: String,
    easy: String,
    hard: String,
    seed: u64,
    temperature: f32,
    top_p: Option<f32>,
    max_tokens: u32,
}

/// A new problem: a `Problem` line (what `distill --problems` reads) with its provenance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InterpolatedProblem {
    #[serde(flatten)]
    /// Its `parents` are the GSM8K train and MATH train problems it was made from (their ids).
    pub problem: Problem,
    /// Which pair of the run it came from.
    pub pair: usize,
    pub generator: String,
}

/// How a pair ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PairOutcome {
    Accepted,
    Rejected,
    Failed,
}

/// One line of an interpolation run's `attempts.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PairAttempt {
    pub pair: usize,
    pub parents: Vec<String>,
    pub outcome: PairOutcome,
    #[serde(default)]
    pub rejection: Option<Rejection>,
    #[serde(default)]
    pub detail: String,
    #[serde(default)]
    pub tokens: u64,
}

/// Reads an interpolation run's `problems.jsonl` (or any file of such lines).
pub fn read_interpolated(path: &Path) -> Result<Vec<InterpolatedProblem>, DataError> {
    let text = std::fs::read_to_string(path).map_err(crate::seed::io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                DataError::Invalid(format!(
                    "{}:{}: not an interpolated problem: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

pub fn problems_path(out: &Path) -> PathBuf {
    out.join("problems.jsonl")
}

fn attempts_path(out: &Path) -> PathBuf {
    out.join("attempts.jsonl")
}

/// The first `count` distinct (easy, hard) index pairs drawn with `seed`.
pub fn pairs(seed: u64, count: usize, easy: usize, hard: usize) -> Vec<(usize, usize)> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(count);
    let possible = easy.saturating_mul(hard);
    while out.len() < count.min(possible) {
        let p = (rng.random_range(0..easy), rng.random_range(0..hard));
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

/// Counts of an interpolation run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InterpolateStats {
    pub pairs: usize,
    pub accepted: usize,
    pub failed: usize,
    pub rejected: BTreeMap<Rejection, usize>,
}

/// Reads an interpolation run's attempts (repairing torn lines) and counts them.
pub fn interpolate_stats(out: &Path) -> Result<InterpolateStats, DataError> {
    let attempts: Vec<PairAttempt> = load_keyed(&attempts_path(out), |a: &PairAttempt| a.pair)?;
    let mut s = InterpolateStats {
        pairs: attempts.len(),
        ..Default::default()
    };
    for a in attempts {
        match a.outcome {
            PairOutcome::Accepted => s.accepted += 1,
            PairOutcome::Failed => s.failed += 1,
            PairOutcome::Rejected => {
                if let Some(r) = a.rejection {
                    *s.rejected.entry(r).or_default() += 1;
                }
            }
        }
    }
    Ok(s)
}

/// Tries `config.count` (GSM8K, MATH) pairs; appends accepted problems to
/// `DIR/problems.jsonl` and one line per pair to `DIR/attempts.jsonl`. Resumes a run in `out`
/// (pairs already in `attempts.jsonl` are not asked again; a problem line without its attempt
/// line is dropped). Returns the pairs done by this call.
pub async fn interpolate(
    easy: &[Problem],
    hard: &[Problem],
    client: Arc<dyn ChatModel>,
    config: &InterpolateConfig,
    progress: Arc<dyn Fn(bool) + Send + Sync>,
) -> Result<usize, DataError> {
    if easy.is_empty() || hard.is_empty() {
        return Err(DataError::Invalid("no parent problems".into()));
    }
    check_identity(
        &config.out,
        &InterpolateIdentity {
            kind: "interpolate".into(),
            generator: client.describe(),
            easy: easy[0].dataset.clone(),
            hard: hard[0].dataset.clone(),
            seed: config.seed,
            temperature: config.prompt.temperature,
            top_p: config.prompt.top_p,
            max_tokens: config.prompt.max_tokens,
        },
    )?;
    let done: HashSet<usize> = load_keyed(&attempts_path(&config.out), |a: &PairAttempt| a.pair)?
        .into_iter()
        .map(|a| a.pair)
        .collect();
    drop_uncommitted(&problems_path(&config.out), |p: &InterpolatedProblem| {
        done.contains(&p.pair)
    })?;
    let all = pairs(config.seed, config.count, easy.len(), hard.len());
    let todo: Vec<(usize, (usize, usize))> = all
        .into_iter()
        .enumerate()
        .filter(|(k, _)| !done.contains(k))
        .collect();
    let (easy, hard) = (Arc::new(easy.to_vec()), Arc::new(hard.to_vec()));
    let (generator, prompt, seed) = (
        Arc::<str>::from(client.describe()),
        config.prompt.clone(),
        config.seed,
    );
    run_units(
        Some(problems_path(&config.out)),
        attempts_path(&config.out),
        todo,
        config.concurrency,
        move |(k, (i, j)), sink| {
            let (easy, hard, client, generator, prompt) = (
                easy.clone(),
                hard.clone(),
                client.clone(),
                generator.clone(),
                prompt.clone(),
            );
            async move {
                let (e, h) = (&easy[i], &hard[j]);
                let parents = vec![e.id.clone(), h.id.clone()];
                let mut attempt = PairAttempt {
                    pair: k,
                    parents: parents.clone(),
                    outcome: PairOutcome::Failed,
                    rejection: None,
                    detail: String::new(),
                    tokens: 0,
                };
                let user = interpolation_prompt(&e.question, &h.question);
                let reply = ask(&*client, &user, &prompt, Some(seed.wrapping_add(k as u64))).await;
                let mut data = None;
                match reply {
                    Err(err) => attempt.detail = err.to_string(),
                    Ok(r) => {
                        attempt.tokens = u64::from(r.completion_tokens.unwrap_or(0));
                        let parsed = if r.finish == ChatFinish::Length {
                            Err(Rejection::Truncated)
                        } else {
                            parse_new_problem(&r.content, [&e.question, &h.question])
                        };
                        match parsed {
                            Ok(question) => {
                                attempt.outcome = PairOutcome::Accepted;
                                let p = InterpolatedProblem {
                                    problem: Problem {
                                        id: format!("interp-{seed}-{k}"),
                                        dataset: "interpolated".into(),
                                        split: Split::Train,
                                        question,
                                        answer: None,
                                        subject: None,
                                        level: None,
                                        solution: None,
                                        parents,
                                    },
                                    pair: k,
                                    generator: generator.to_string(),
                                };
                                data = Some(line(&p)?);
                            }
                            Err(why) => {
                                attempt.outcome = PairOutcome::Rejected;
                                attempt.rejection = Some(why);
                                attempt.detail = clip(&r.content);
                            }
                        }
                    }
                }
                let ok = attempt.outcome == PairOutcome::Accepted;
                let _ = sink.send((data, line(&attempt)?)).await;
                Ok(ok)
            }
        },
        progress,
    )
    .await
}

async fn ask(
    client: &dyn ChatModel,
    user: &str,
    prompt: &PromptConfig,
    seed: Option<u64>,
) -> Result<mathcoder_llm::chat::ChatReply, mathcoder_llm::BackendError> {
    let empty = Transcript::default();
    client
        .complete(&ChatRequest {
            system: None,
            user,
            transcript: &empty,
            style: None,
            max_tokens: prompt.max_tokens,
            temperature: prompt.temperature,
            top_p: prompt.top_p,
            seed,
        })
        .await
}

/// Rewrites `path` without the lines `keep` rejects (a data line whose attempt line was never
/// written).
fn drop_uncommitted<T>(path: &Path, keep: impl Fn(&T) -> bool) -> Result<(), DataError>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let rows: Vec<T> = load_keyed(path, |r: &T| serde_json::to_string(r).unwrap_or_default())?;
    if rows.iter().all(&keep) {
        return Ok(());
    }
    let mut text = String::new();
    for r in rows.iter().filter(|r| keep(r)) {
        text.push_str(&line(r)?);
    }
    let tmp = path.with_extension("jsonl.tmp");
    std::fs::write(&tmp, text).map_err(crate::seed::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(crate::seed::io(path))
}

fn clip(s: &str) -> String {
    let mut k = s.len().min(300);
    while !s.is_char_boundary(k) {
        k -= 1;
    }
    s[..k].to_string()
}

/// A judge's answer to one prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pick {
    Problem1,
    Problem2,
    Tie,
}

/// The judge's answer in a reply: the label it starts with, else the only label it names.
pub fn parse_pick(reply: &str) -> Option<Pick> {
    let t = reply
        .trim()
        .trim_start_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    let labels = [
        ("problem 1", Pick::Problem1),
        ("problem 2", Pick::Problem2),
        ("tie", Pick::Tie),
    ];
    if let Some((_, p)) = labels.iter().find(|(l, _)| t.starts_with(l)) {
        return Some(*p);
    }
    let named: Vec<Pick> = labels
        .iter()
        .filter(|(l, _)| {
            if *l == "tie" {
                normalise(&t).iter().any(|w| w == "tie")
            } else {
                t.contains(l)
            }
        })
        .map(|(_, p)| *p)
        .collect();
    match named.as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

/// The new problem against a parent, both orders combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Both orders: the new problem is harder.
    Harder,
    /// Both orders: the new problem is easier.
    Easier,
    /// Both orders: a tie.
    Tie,
    /// The orders disagree (position bias).
    Inconsistent,
    /// A reply named none (or several) of the answers.
    Unparsed,
    /// A request failed.
    Failed,
}

/// Combines the picks of the two orders: `first` with the new problem as Problem 1, `second`
/// with it as Problem 2.
pub fn combine(first: Option<Pick>, second: Option<Pick>) -> Comparison {
    use Comparison::*;
    let as_new = |p: Pick, new_is_1: bool| match (p, new_is_1) {
        (Pick::Tie, _) => Tie,
        (Pick::Problem1, true) | (Pick::Problem2, false) => Harder,
        _ => Easier,
    };
    match (first, second) {
        (Some(a), Some(b)) => {
            let (a, b) = (as_new(a, true), as_new(b, false));
            if a == b {
                a
            } else {
                Inconsistent
            }
        }
        _ => Unparsed,
    }
}

/// One line of a judge run's `judgments.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Judgment {
    pub problem_id: String,
    pub parents: Vec<String>,
    /// Against the GSM8K (easy) parent, then the MATH (hard) parent.
    pub vs_easy: Comparison,
    pub vs_hard: Comparison,
    /// The raw picks, in the order asked: easy new-first, easy new-second, hard new-first,
    /// hard new-second.
    pub picks: Vec<Option<Pick>>,
    #[serde(default)]
    pub detail: String,
}

/// A judge run's settings.
#[derive(Clone, Debug)]
pub struct JudgeConfig {
    pub out: PathBuf,
    pub concurrency: usize,
    pub prompt: PromptConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct JudgeIdentity {
    kind: String,
    judge: String,
    problems: String,
    temperature: f32,
    max_tokens: u32,
}

pub fn judgments_path(out: &Path) -> PathBuf {
    out.join("judgments.jsonl")
}

/// The shares of a judge run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct JudgeReport {
    pub judged: usize,
    pub vs_easy: BTreeMap<Comparison, usize>,
    pub vs_hard: BTreeMap<Comparison, usize>,
}

impl JudgeReport {
    /// `n` of `judged` in percent.
    pub fn share(&self, n: usize) -> f64 {
        100.0 * n as f64 / self.judged.max(1) as f64
    }
    pub fn easy(&self, c: Comparison) -> usize {
        self.vs_easy.get(&c).copied().unwrap_or(0)
    }
    pub fn hard(&self, c: Comparison) -> usize {
        self.vs_hard.get(&c).copied().unwrap_or(0)
    }
}

/// Reads a judge run's judgments and counts them.
pub fn judge_report(out: &Path) -> Result<JudgeReport, DataError> {
    let rows: Vec<Judgment> =
        load_keyed(&judgments_path(out), |j: &Judgment| j.problem_id.clone())?;
    let mut r = JudgeReport {
        judged: rows.len(),
        ..Default::default()
    };
    for j in rows {
        *r.vs_easy.entry(j.vs_easy).or_default() += 1;
        *r.vs_hard.entry(j.vs_hard).or_default() += 1;
    }
    Ok(r)
}

/// Judges every problem of an interpolation output (`problems.jsonl`) against its parents
/// (`parents`: their questions by id, from the sets the run drew from), four prompts per problem. Resumable: a
/// problem already in `DIR/judgments.jsonl` is not asked again. Returns the problems judged by
/// this call.
pub async fn judge(
    problems: &[InterpolatedProblem],
    source: &str,
    parents: &HashMap<String, String>,
    client: Arc<dyn ChatModel>,
    config: &JudgeConfig,
    progress: Arc<dyn Fn(bool) + Send + Sync>,
) -> Result<usize, DataError> {
    check_identity(
        &config.out,
        &JudgeIdentity {
            kind: "judge".into(),
            judge: client.describe(),
            problems: source.to_string(),
            temperature: config.prompt.temperature,
            max_tokens: config.prompt.max_tokens,
        },
    )?;
    let done: HashSet<String> = load_keyed(&judgments_path(&config.out), |j: &Judgment| {
        j.problem_id.clone()
    })?
    .into_iter()
    .map(|j| j.problem_id)
    .collect();
    let mut todo = Vec::new();
    for p in problems {
        if done.contains(&p.problem.id) {
            continue;
        }
        let [easy, hard] = p.problem.parents.as_slice() else {
            return Err(DataError::Invalid(format!(
                "problem {:?} does not have two parents (GSM8K train, MATH train)",
                p.problem.id
            )));
        };
        let find = |id: &str| {
            parents.get(id).cloned().ok_or_else(|| {
                DataError::Invalid(format!(
                    "parent {id:?} of {:?} is in neither parent set (--easy, --hard)",
                    p.problem.id
                ))
            })
        };
        todo.push((p.clone(), find(easy)?, find(hard)?));
    }
    let prompt = config.prompt.clone();
    run_units(
        None,
        judgments_path(&config.out),
        todo,
        config.concurrency,
        move |(p, easy, hard): (InterpolatedProblem, String, String), sink| {
            let (client, prompt) = (client.clone(), prompt.clone());
            async move {
                let new = &p.problem.question;
                let mut picks = Vec::with_capacity(4);
                let mut failed: Vec<(usize, String)> = Vec::new();
                for (a, b) in [(new, &easy), (&easy, new), (new, &hard), (&hard, new)] {
                    match ask(&*client, &judge_prompt(a, b), &prompt, None).await {
                        Ok(r) => picks.push(parse_pick(&r.content)),
                        Err(e) => {
                            failed.push((picks.len(), e.to_string()));
                            picks.push(None);
                        }
                    }
                }
                let cmp = |k: usize| {
                    if failed.iter().any(|(i, _)| *i == k || *i == k + 1) {
                        Comparison::Failed
                    } else {
                        combine(picks[k], picks[k + 1])
                    }
                };
                let j = Judgment {
                    problem_id: p.problem.id.clone(),
                    parents: p.problem.parents.clone(),
                    vs_easy: cmp(0),
                    vs_hard: cmp(2),
                    picks,
                    detail: failed
                        .iter()
                        .map(|(i, e)| format!("prompt {}: {e}", i + 1))
                        .collect::<Vec<_>>()
                        .join("; "),
                };
                let ok = j.vs_easy == Comparison::Harder && j.vs_hard == Comparison::Easier;
                let _ = sink.send((None, line(&j)?)).await;
                Ok(ok)
            }
        },
        progress,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether?";
    const H: &str = "Find the number of ordered pairs of positive integers (a, b) with a + b = 1000 such that neither a nor b has a zero digit.";

    #[test]
    fn prompts_are_the_papers() {
        let p = interpolation_prompt("E", "H");
        assert!(p.starts_with("Please create a new problem, following the given example, \"Example 1\" is an easy problem"));
        assert!(p.ends_with("simpler than \"Example 2\".\n\nExample 1: E\n\nExample 2: H"));
        assert_eq!(
            judge_prompt("A", "B"),
            "Which problem is more difficult?\n\nProblem 1: \"A\"\n\nProblem 2: \"B\"\n\nYou answer should be one of \"Problem 1\", \"Problem 2\" and \"Tie\"."
        );
    }

    #[test]
    fn parsing_new_problems() {
        let new = "A shop sells pens at $3 each and gives 1 free pen for every 4 bought. How many pens does Sam get for $36?";
        for reply in [
            new.to_string(),
            format!("New problem: {new}"),
            format!("**New Problem:**\n\n\"{new}\""),
            format!("Example 3: {new}\n\nSolution: 12 pens bought, 3 free, 15."),
            format!("Here is a new problem that fits:\n{new}"),
        ] {
            assert_eq!(
                parse_new_problem(&reply, [E, H]).as_deref(),
                Ok(new),
                "{reply}"
            );
        }
        assert_eq!(parse_new_problem("  ", [E, H]), Err(Rejection::Empty));
        assert_eq!(
            parse_new_problem("New problem:", [E, H]),
            Err(Rejection::Empty)
        );
        assert_eq!(
            parse_new_problem(&format!("New problem: {E}"), [E, H]),
            Err(Rejection::EchoedParent)
        );
        assert_eq!(
            parse_new_problem(
                &format!("Problem 1: {new}\n\nProblem 2: What is 2+2?"),
                [E, H]
            ),
            Err(Rejection::MultipleProblems)
        );
    }

    #[test]
    fn pairs_are_seeded_and_distinct() {
        let a = pairs(7, 50, 10, 10);
        assert_eq!(a, pairs(7, 50, 10, 10));
        assert_ne!(a, pairs(8, 50, 10, 10));
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 50);
        assert_eq!(pairs(1, 10, 2, 2).len(), 4);
        // A longer run starts with the shorter one's pairs.
        assert_eq!(&pairs(7, 80, 10, 10)[..50], &a[..]);
    }

    #[test]
    fn picks_and_both_orders() {
        assert_eq!(parse_pick("Problem 2"), Some(Pick::Problem2));
        assert_eq!(
            parse_pick("\"Problem 1\" is harder than Problem 2."),
            Some(Pick::Problem1)
        );
        assert_eq!(parse_pick("Tie."), Some(Pick::Tie));
        assert_eq!(parse_pick("I think it is a tie"), Some(Pick::Tie));
        assert_eq!(
            parse_pick("The second is harder: Problem 2"),
            Some(Pick::Problem2)
        );
        assert_eq!(parse_pick("Both Problem 1 and Problem 2 are hard"), None);
        assert_eq!(parse_pick("unclear"), None);
        use Comparison::*;
        assert_eq!(combine(Some(Pick::Problem1), Some(Pick::Problem2)), Harder);
        assert_eq!(combine(Some(Pick::Problem2), Some(Pick::Problem1)), Easier);
        assert_eq!(combine(Some(Pick::Tie), Some(Pick::Tie)), Tie);
        // Always "Problem 1": position bias, not a judgment.
        assert_eq!(
            combine(Some(Pick::Problem1), Some(Pick::Problem1)),
            Inconsistent
        );
        assert_eq!(combine(Some(Pick::Tie), Some(Pick::Problem2)), Inconsistent);
        assert_eq!(combine(None, Some(Pick::Tie)), Unparsed);
    }
}
