//! The code-interpreter conversation: a chat model (any [`ChatModel`]: an OpenAI-compatible chat
//! server, or the native engine through the model's chat template) solves a problem with code
//! running in the problem's sandbox session. The one loop for every chat solver: the chat
//! teacher of `mathcoder-data` and the chat mode of `solve`/`eval`.
//!
//! Each request carries the code-interpreter system prompt
//! (`mathcoder_lce::chat::system_prompt`), the problem (`user_message`: in the `fences` style
//! followed by the request to compute with Python), and the conversation so far. In the
//! `tools` style every entry of a reply's `tool_calls` runs, in order, in the problem's session
//! and its output goes back as the `tool` message with its `tool_call_id`; in the `fences` style
//! generation stops where a ```` ```python ```` fence closes, the fence runs, and its output goes
//! back as a user message. The loop ends at a message without code (the final message) or after
//! `max_rounds` requests. The transcript becomes LCE blocks through
//! `mathcoder_lce::chat::Transcript::blocks` (the one conversion), ending with the answer-only
//! block; the answer is found in the final message by the caller's `answer` function (this crate
//! does not grade: the data teacher takes only a `\boxed{}`, an evaluation whatever the grader
//! extracts).

use mathcoder_lce::chat::{
    split_fenced, system_prompt, user_message, ChatStyle, CodeCall, Transcript, TranscriptError,
    Turn,
};
use mathcoder_lce::{Block, BlockKind};
use mathcoder_llm::chat::{BadToolCall, ChatFinish, ChatModel, ChatRequest};
use mathcoder_llm::{BackendError, FinishReason};
use mathcoder_sandbox::Sandbox;
use std::time::{Duration, Instant};

use crate::{Lazy, Observer, Outcome, Round, StopReason};

/// The conversation's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatConfig {
    pub style: ChatStyle,
    /// Most requests per solution (each may run several cells).
    pub max_rounds: usize,
    /// Most tokens per reply.
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: Option<f32>,
    /// Stop when the model writes the same 1-3 blocks (numbers aside) a third time in a row, as
    /// the LCE loop does ([`crate::repeats_blocks`]): a small model rewriting the same failing
    /// cell would otherwise go on to `max_rounds`, its context growing with every traceback.
    pub stop_on_repetition: bool,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            style: ChatStyle::Tools,
            max_rounds: 16,
            max_tokens: 2048,
            temperature: 0.0,
            top_p: None,
            stop_on_repetition: true,
        }
    }
}

/// Why a conversation gave no solution. Its text in an attempt's detail is `label: message`
/// ([`ChatError::label`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChatError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Sandbox(String),
    #[error("{0}")]
    BadToolCall(#[from] BadToolCall),
    #[error("reply cut at the token limit")]
    Truncated,
    #[error("no answer in the final message")]
    NoAnswer,
    #[error("no final message after {0} rounds")]
    RoundLimit(usize),
    #[error("the same blocks a third time in a row")]
    Repetition,
    #[error("{0}")]
    Transcript(#[from] TranscriptError),
}

impl ChatError {
    /// A short label for counting failures by kind.
    pub fn label(&self) -> &'static str {
        match self {
            ChatError::Backend(_) => "backend",
            ChatError::Sandbox(_) => "sandbox",
            ChatError::BadToolCall(_) => "bad_tool_call",
            ChatError::Truncated => "truncated",
            ChatError::NoAnswer => "no_answer",
            ChatError::RoundLimit(_) => "round_limit",
            ChatError::Repetition => "repetition",
            ChatError::Transcript(_) => "transcript",
        }
    }

    /// Whether the failure lies outside the model (the backend or the sandbox).
    pub fn is_fault(&self) -> bool {
        matches!(self, ChatError::Backend(_) | ChatError::Sandbox(_))
    }

    /// The stop reason a run record gives this failure.
    pub fn stop_reason(&self) -> StopReason {
        match self {
            ChatError::Backend(e) => StopReason::BackendError(e.to_string()),
            ChatError::Sandbox(e) => StopReason::ExecutionFault(e.clone()),
            ChatError::RoundLimit(_) => StopReason::BlockLimit,
            ChatError::Repetition => StopReason::Repetition,
            // The model ended its message, without an answer in it.
            ChatError::NoAnswer => StopReason::EndOfMessage,
            ChatError::Truncated | ChatError::BadToolCall(_) | ChatError::Transcript(_) => {
                StopReason::Length
            }
        }
    }
}

/// A finished (or abandoned) conversation.
#[derive(Clone, Debug)]
pub struct Conversation {
    pub transcript: Transcript,
    /// The solution's blocks (`Transcript::blocks`), or why there is none.
    pub result: Result<Vec<Block>, ChatError>,
    /// The blocks as they were shown while the conversation ran (prose, code, output, the final
    /// message): what an abandoned conversation leaves.
    pub partial: Vec<Block>,
    /// One per request.
    pub rounds: Vec<Round>,
    /// Completion tokens over all replies.
    pub tokens: u64,
    pub total_ms: f64,
    pub generate_ms: f64,
    pub execute_ms: f64,
}

impl Conversation {
    /// As a loop outcome (for run records): the solution's blocks and
    /// [`StopReason::EndOfMessage`], or the partial blocks and the failure's stop reason.
    pub fn outcome(&self) -> Outcome {
        let (blocks, stop) = match &self.result {
            Ok(b) => (b.clone(), StopReason::EndOfMessage),
            Err(e) => (self.partial.clone(), e.stop_reason()),
        };
        Outcome {
            blocks,
            stop,
            rounds: self.rounds.clone(),
            total_ms: self.total_ms,
            generate_ms: self.generate_ms,
            execute_ms: self.execute_ms,
        }
    }
}

/// Runs the conversation for `question`. `answer` finds the answer in the final message (none:
/// [`ChatError::NoAnswer`]). Never fails: failures are the [`Conversation::result`].
pub async fn converse(
    model: &dyn ChatModel,
    sandbox: &Sandbox,
    config: &ChatConfig,
    question: &str,
    seed: Option<u64>,
    answer: &(dyn Fn(&str) -> Option<String> + Sync),
    observer: &mut dyn Observer,
) -> Conversation {
    let start = Instant::now();
    let sb = sandbox.clone();
    // Start the session while the first reply is generated.
    let mut session = Lazy::Pending(tokio::spawn(async move { sb.session().await }));
    let mut c = Conversation {
        transcript: Transcript::default(),
        result: Err(ChatError::RoundLimit(config.max_rounds)),
        partial: Vec::new(),
        rounds: Vec::new(),
        tokens: 0,
        total_ms: 0.0,
        generate_ms: 0.0,
        execute_ms: 0.0,
    };
    let (mut gen_total, mut exec_total) = (Duration::ZERO, Duration::ZERO);
    let mut show = |c: &mut Conversation, b: Block| {
        observer.block(&b);
        c.partial.push(b);
    };
    let user = user_message(config.style, question);
    c.result = 'rounds: {
        for _ in 0..config.max_rounds {
            let t = Instant::now();
            let reply = model
                .complete(&ChatRequest {
                    system: Some(system_prompt(config.style)),
                    user: &user,
                    transcript: &c.transcript,
                    style: Some(config.style),
                    max_tokens: config.max_tokens,
                    temperature: config.temperature,
                    top_p: config.top_p,
                    seed,
                })
                .await;
            let gen_time = t.elapsed();
            gen_total += gen_time;
            let reply = match reply {
                Ok(r) => r,
                Err(e) => break 'rounds Err(e.into()),
            };
            c.tokens += u64::from(reply.completion_tokens.unwrap_or(0));
            let mut round = Round {
                kind: None,
                finish: Some(match reply.finish {
                    ChatFinish::Length => FinishReason::Length,
                    _ => FinishReason::Stop,
                }),
                generated_tokens: reply.completion_tokens,
                prompt_tokens: reply.prompt_tokens,
                generate_ms: gen_time.as_secs_f64() * 1000.0,
                execute_ms: None,
                execution_kind: None,
                retries: reply.retries,
                cached_prompt_tokens: None,
                recomputed_prompt_tokens: None,
            };
            if reply.finish == ChatFinish::Length {
                c.rounds.push(round);
                break 'rounds Err(ChatError::Truncated);
            }
            let (prose, calls) = match config.style {
                ChatStyle::Tools => {
                    let mut calls = Vec::with_capacity(reply.tool_calls.len());
                    for tc in &reply.tool_calls {
                        match tc.code() {
                            Ok((id, code)) => calls.push(CodeCall { id, code }),
                            Err(e) => {
                                c.rounds.push(round);
                                break 'rounds Err(e.into());
                            }
                        }
                    }
                    (reply.content, calls)
                }
                ChatStyle::Fences => {
                    let f = split_fenced(&reply.content);
                    match f.code {
                        Some(code) => (
                            f.prose,
                            vec![CodeCall {
                                id: String::new(),
                                code,
                            }],
                        ),
                        None => (reply.content, Vec::new()),
                    }
                }
            };
            let shown = prose.trim();
            if !shown.is_empty() {
                show(&mut c, Block::text(shown));
            }
            if calls.is_empty() {
                round.kind = Some(BlockKind::Text);
                c.rounds.push(round);
                let found = answer(&prose);
                c.transcript.turns.push(Turn::Assistant {
                    prose,
                    calls: Vec::new(),
                });
                let Some(found) = found else {
                    break 'rounds Err(ChatError::NoAnswer);
                };
                break 'rounds c.transcript.blocks(&found).map_err(ChatError::from);
            }
            round.kind = Some(BlockKind::Code);
            c.transcript.turns.push(Turn::Assistant {
                prose,
                calls: calls.clone(),
            });
            for call in calls {
                show(&mut c, Block::code(call.code.trim_end()));
                let t = Instant::now();
                let s = match session.get().await {
                    Ok(s) => s,
                    Err(e) => {
                        c.rounds.push(round);
                        break 'rounds Err(ChatError::Sandbox(e));
                    }
                };
                let r = s.execute(&call.code).await;
                let exec_time = t.elapsed();
                exec_total += exec_time;
                *round.execute_ms.get_or_insert(0.0) += exec_time.as_secs_f64() * 1000.0;
                round.execution_kind = Some(r.kind);
                show(&mut c, Block::execution(r.text.clone()));
                c.transcript.turns.push(Turn::Output {
                    id: call.id,
                    text: r.text,
                });
            }
            c.rounds.push(round);
            if config.stop_on_repetition && crate::repeats_blocks(&c.partial) {
                break 'rounds Err(ChatError::Repetition);
            }
        }
        Err(ChatError::RoundLimit(config.max_rounds))
    };
    if let Ok(blocks) = &c.result {
        // The answer-only block closes the solution.
        if let Some(last) = blocks.last() {
            observer.block(last);
        }
    }
    drop(session);
    c.total_ms = start.elapsed().as_secs_f64() * 1000.0;
    c.generate_ms = gen_total.as_secs_f64() * 1000.0;
    c.execute_ms = exec_total.as_secs_f64() * 1000.0;
    c
}
