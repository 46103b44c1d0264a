//! MathCoder's inference loop: the model writes a block, code blocks run in the problem's Python
//! session, `<|execution|>...<|endofblock|>` is spliced back, and the model goes on until
//! `<|endofmessage|>`.
//!
//! Defaults are the paper's: the system prompt "Below is a math problem. Please solve it step by
//! step.", greedy decoding, at most 512 new tokens per block, at most 32 model blocks (the public
//! script stopped after 16 calls), prompts truncated to their last 1536 tokens, decimals in
//! generated blocks rounded to 6 places (`truncate_decimals`), a 6 s execution timeout (the
//! sandbox's), `<empty_execution>` for empty output. The loop is backend-agnostic: anything that
//! implements [`Backend`] drives it.

pub mod chat;

use mathcoder_lce::{parse_round, Block, BlockKind, PromptTemplate, SpecialToken};
use mathcoder_llm::{Backend, FinishReason, GenerateRequest};
use mathcoder_sandbox::{ExecutionKind, Sandbox, Session};
use regex::Regex;
use serde::{Deserialize, Serialize};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Loop settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SolveConfig {
    #[serde(skip, default = "PromptTemplate::mathcoder")]
    pub template: PromptTemplate,
    /// Most model blocks (text + code) per solution.
    pub max_blocks: usize,
    pub max_new_tokens: u32,
    /// Keep only the prompt's last this-many tokens (server-side).
    pub truncate: Option<u32>,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    /// Round decimals of more than 6 places in generated blocks, as the authors did.
    pub truncate_decimals: bool,
    /// Run each code block in the sandbox and append its real output (the default). Off, the
    /// model writes the execution blocks itself (the paper's Table 5, row 1: "the model predicts
    /// the outputs"); they are recorded as the model wrote them.
    #[serde(default = "yes")]
    pub execute: bool,
    /// Stop when a round is cut at `max_new_tokens` while repeating itself ([`is_runaway`]), or
    /// when the model writes the same blocks, numbers aside, a third time in a row ([`repeats_blocks`]): with
    /// greedy decoding it would only go on repeating them until `max_blocks`. The authors' loop
    /// went on (off: their behaviour).
    #[serde(default = "yes")]
    pub stop_on_repetition: bool,
}

fn yes() -> bool {
    true
}

impl Default for SolveConfig {
    fn default() -> Self {
        SolveConfig {
            template: PromptTemplate::mathcoder(),
            max_blocks: 32,
            max_new_tokens: 512,
            truncate: Some(1536),
            temperature: 0.0,
            top_p: None,
            seed: None,
            truncate_decimals: true,
            execute: true,
            stop_on_repetition: true,
        }
    }
}

pub use mathcoder_lce::StopReason;

/// One generation round.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Round {
    pub kind: Option<BlockKind>,
    pub finish: Option<FinishReason>,
    pub generated_tokens: Option<u32>,
    /// Prompt tokens, as the backend counted them (when it reports them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    pub generate_ms: f64,
    pub execute_ms: Option<f64>,
    pub execution_kind: Option<ExecutionKind>,
    pub retries: u32,
    /// Prompt tokens the backend served from its KV cache (native engine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_prompt_tokens: Option<u32>,
    /// Prompt tokens the backend computed again (native engine; 0 when nothing is re-prefilled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recomputed_prompt_tokens: Option<u32>,
}

/// A solved (or abandoned) problem.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Outcome {
    /// The assistant's blocks, executions included, in order.
    pub blocks: Vec<Block>,
    pub stop: StopReason,
    pub rounds: Vec<Round>,
    pub total_ms: f64,
    pub generate_ms: f64,
    pub execute_ms: f64,
}

impl Outcome {
    /// The last block's content, which the authors graded.
    pub fn completion(&self) -> &str {
        self.blocks.last().map(|b| b.content.as_str()).unwrap_or("")
    }
    pub fn model_blocks(&self) -> usize {
        written_by_model(&self.blocks).count()
    }
}

/// Receives blocks as they are produced (for streaming to a terminal).
pub trait Observer: Send {
    fn block(&mut self, _block: &Block) {}
}

impl Observer for () {}

/// MathCoder's `truncate_decimals`: every `\d+\.\d+` with more than six decimals is rewritten as
/// `'{:.6f}'.format(float(literal))`.
pub fn truncate_decimals(s: &str) -> String {
    static R: OnceLock<Regex> = OnceLock::new();
    let re = R.get_or_init(|| Regex::new(r"\d+\.\d+").expect("valid regex"));
    re.replace_all(s, |c: &regex::Captures| {
        let lit = &c[0];
        let decimals = lit.split_once('.').map_or(0, |(_, f)| f.len());
        if decimals > 6 {
            match lit.parse::<f64>() {
                Ok(v) => format!("{v:.6}"),
                Err(_) => lit.to_string(),
            }
        } else {
            lit.to_string()
        }
    })
    .into_owned()
}

/// Whether a generation that was cut at the token limit is a runaway: the text, with every run
/// of digits read as one digit (so that "step 7: 14 + 14 = 28." and "step 8: 15 + 15 = 30." are
/// the same line), ends in at least three copies of one unit, and the repetition covers at
/// least half of it.
pub fn is_runaway(text: &str) -> bool {
    let t = fold_digits(text);
    let n = t.len();
    (1..=n / 3).any(|p| {
        // Length of the suffix in which every char equals the one `p` before it, plus `p`.
        let same = (p..n).rev().take_while(|&i| t[i] == t[i - p]).count();
        let periodic = same + p;
        periodic >= 3 * p && 2 * periodic >= n
    })
}

/// The text with every run of digits read as the one digit `0`: a counter or a running total
/// does not make a repeated line new (`step_3 = step_2` and `step_4 = step_3` are one line).
fn fold_digits(text: &str) -> Vec<char> {
    let mut t: Vec<char> = Vec::with_capacity(text.len());
    for c in text.chars() {
        if !(c.is_ascii_digit() && t.last().is_some_and(|l| l.is_ascii_digit())) {
            t.push(if c.is_ascii_digit() { '0' } else { c });
        }
    }
    t
}

/// Whether the model's last blocks are one run of 1-3 blocks written three times over, word for
/// word but for their numbers (executions aside): a loop that greedy decoding does not leave
/// (`The depth is 180 - 15 = 165 feet.` / `step_3 = step_2 - 15`, then the same with the next
/// numbers, until the block limit).
pub fn repeats_blocks(blocks: &[Block]) -> bool {
    let model: Vec<(BlockKind, Vec<char>)> = written_by_model(blocks)
        .map(|b| (b.kind, fold_digits(&b.content)))
        .collect();
    let n = model.len();
    (1..=3).any(|u| {
        n >= 3 * u && (n - u..n).all(|i| model[i] == model[i - u] && model[i] == model[i - 2 * u])
    })
}

/// The blocks the model wrote (text and code; executions are the sandbox's).
fn written_by_model(blocks: &[Block]) -> impl Iterator<Item = &Block> {
    blocks.iter().filter(|b| b.kind != BlockKind::Execution)
}

/// A session started in the background when the loop begins, awaited at the first code block.
enum Lazy {
    Pending(tokio::task::JoinHandle<Result<Session, mathcoder_sandbox::SandboxError>>),
    Ready(Box<Session>),
    Failed(String),
}

impl Lazy {
    async fn get(&mut self) -> Result<&mut Session, String> {
        if let Lazy::Pending(h) = self {
            *self = match h.await {
                Ok(Ok(s)) => Lazy::Ready(Box::new(s)),
                Ok(Err(e)) => Lazy::Failed(e.to_string()),
                Err(e) => Lazy::Failed(format!("session task: {e}")),
            };
        }
        match self {
            Lazy::Ready(s) => Ok(s),
            Lazy::Failed(e) => Err(e.clone()),
            Lazy::Pending(_) => unreachable!("resolved above"),
        }
    }
}

impl Drop for Lazy {
    fn drop(&mut self) {
        if let Lazy::Pending(h) = self {
            h.abort();
        }
    }
}

/// Solves one problem.
pub async fn solve(
    question: &str,
    backend: &dyn Backend,
    sandbox: &Sandbox,
    config: &SolveConfig,
    observer: &mut dyn Observer,
) -> Outcome {
    let start = Instant::now();
    let sb = sandbox.clone();
    // Start the session while the first block is generated.
    let mut session = Lazy::Pending(tokio::spawn(async move { sb.session().await }));
    let mut prompt = config.template.render(question);
    let mut blocks: Vec<Block> = Vec::new();
    let mut rounds: Vec<Round> = Vec::new();
    let (mut gen_total, mut exec_total) = (Duration::ZERO, Duration::ZERO);
    let stop = loop {
        if written_by_model(&blocks).count() >= config.max_blocks {
            break StopReason::BlockLimit;
        }
        let req = GenerateRequest {
            prompt: prompt.clone(),
            max_new_tokens: config.max_new_tokens,
            stop: vec![
                SpecialToken::EndOfMessage.as_str().into(),
                SpecialToken::EndOfBlock.as_str().into(),
            ],
            temperature: config.temperature,
            top_p: config.top_p,
            seed: config.seed,
            truncate: config.truncate,
        };
        let t = Instant::now();
        let gen = match backend.generate(&req).await {
            Ok(g) => g,
            Err(e) => break StopReason::BackendError(e.to_string()),
        };
        let gen_time = t.elapsed();
        gen_total += gen_time;
        let text = if config.truncate_decimals {
            truncate_decimals(&gen.text)
        } else {
            gen.text.clone()
        };
        prompt.push_str(&text);
        let (block, ended) = parse_round(&text);
        let mut round = Round {
            kind: block.as_ref().map(|b| b.kind),
            finish: Some(gen.finish),
            generated_tokens: gen.generated_tokens,
            prompt_tokens: gen.prompt_tokens,
            generate_ms: gen_time.as_secs_f64() * 1000.0,
            execute_ms: None,
            execution_kind: None,
            retries: gen.retries,
            cached_prompt_tokens: gen.cached_prompt_tokens,
            recomputed_prompt_tokens: gen.recomputed_prompt_tokens,
        };
        let runaway =
            config.stop_on_repetition && gen.finish == FinishReason::Length && is_runaway(&text);
        let Some(block) = block else {
            rounds.push(round);
            break if ended {
                StopReason::EndOfMessage
            } else if runaway {
                StopReason::Repetition
            } else {
                StopReason::Length
            };
        };
        observer.block(&block);
        if runaway {
            // The cut block is kept as written; a code block in it is not run.
            blocks.push(block);
            rounds.push(round);
            break StopReason::Repetition;
        }
        let is_code = block.kind == BlockKind::Code;
        let code = block.content.clone();
        blocks.push(block);
        if is_code && config.execute {
            // The authors appended the execution right after the code block's `<|endofblock|>`.
            if !text.ends_with(SpecialToken::EndOfBlock.as_str()) && !ended {
                prompt.push_str(SpecialToken::EndOfBlock.as_str());
            }
            let t = Instant::now();
            let s = match session.get().await {
                Ok(s) => s,
                Err(e) => {
                    rounds.push(round);
                    break StopReason::ExecutionFault(e);
                }
            };
            let r = s.execute(&code).await;
            let exec_time = t.elapsed();
            exec_total += exec_time;
            round.execute_ms = Some(exec_time.as_secs_f64() * 1000.0);
            round.execution_kind = Some(r.kind);
            let exec = Block::execution(r.text);
            observer.block(&exec);
            prompt.push_str(&exec.render());
            blocks.push(exec);
        }
        rounds.push(round);
        if ended {
            break StopReason::EndOfMessage;
        }
        if config.stop_on_repetition && repeats_blocks(&blocks) {
            break StopReason::Repetition;
        }
        if gen.finish == FinishReason::EndOfSequence {
            break StopReason::Length;
        }
    };
    // Ends the session (or aborts its start) before the outcome is handed back.
    drop(session);
    Outcome {
        blocks,
        stop,
        rounds,
        total_ms: start.elapsed().as_secs_f64() * 1000.0,
        generate_ms: gen_total.as_secs_f64() * 1000.0,
        execute_ms: exec_total.as_secs_f64() * 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_are_truncated_like_the_authors() {
        assert_eq!(
            truncate_decimals("x = 0.333333333333 and 1.5"),
            "x = 0.333333 and 1.5"
        );
        assert_eq!(truncate_decimals("2.66666666667"), "2.666667");
        assert_eq!(truncate_decimals("12.0000001"), "12.000000");
        assert_eq!(truncate_decimals("v1.1234567"), "v1.123457");
        assert_eq!(
            truncate_decimals("no decimals 1234567"),
            "no decimals 1234567"
        );
        // Python rounds the binary value: 0.1234565 is 0.12345649999..., so "0.123456".
        assert_eq!(truncate_decimals("0.1234565"), "0.123456");
    }

    #[test]
    fn runaways_are_told_from_long_blocks() {
        // svamp-6 with MathCoder-S: one line for the whole block.
        let line = "The atm collected 49 dollars from Olivia.\n";
        assert!(is_runaway(&format!(
            "<|text|>Olivia has money.\n{}",
            line.repeat(30)
        )));
        // A counter in the line does not hide the loop, nor does a unit cut in the middle.
        let steps: String = (1..40)
            .map(|i| format!("step {i}: {} + {} = {}.\n", i * 7, i, i * 8))
            .collect();
        assert!(is_runaway(&format!("<|text|>{steps}step 40: 2")));
        // Ordinary text and code, however long, are not runaways.
        let prose =
            "<|text|>First we find how many apples each of the 3 friends gets, then we add \
                     the 12 pears and subtract what was eaten on Monday; the rest is split again.";
        assert!(!is_runaway(prose));
        let code = "<|code|>import math\nprice = 3.5\nqty = 12\ntotal = price * qty\n\
                    tax = total * 0.08\nprint(round(total + tax, 2))\n";
        assert!(!is_runaway(code));
        // A repetition in less than half of the text is not enough.
        assert!(!is_runaway(&format!("{prose}{prose}{}", "ab".repeat(20))));
        assert!(!is_runaway(""));
    }
}
