//! The chat teacher: a chat model with a code interpreter (the paper's GPT-4 Code Interpreter;
//! today any OpenAI-compatible `/v1/chat/completions` server) through `mathcoder_llm::chat`.
//!
//! Each request carries the code-interpreter system prompt
//! (`mathcoder_lce::chat::system_prompt`), the problem, and the conversation so far. In the
//! `tools` style every entry of a reply's `tool_calls` runs, in order, in the problem's sandbox
//! session and its output goes back as the `tool` message with its `tool_call_id`; in the
//! `fences` style generation stops where a ```` ```python ```` fence closes, the fence runs, and
//! its output goes back as a user message. The loop ends at a message without code (the final
//! message) or after `max_rounds` requests. The transcript becomes LCE blocks through
//! `mathcoder_lce::chat::Transcript::blocks` (the one conversion), ending with the answer-only
//! block; the answer is the final message's last `\boxed{}`, found by the grader's extractor.
//!
//! Failures are [`ChatTeacherError`]s: the backend's and the sandbox's are faults (the problem
//! is not to blame); a reply that cannot become a solution (a tool call that cannot run, a
//! message cut at the token limit, no `\boxed{}` answer, the round limit) is unconvertible.

use mathcoder_datasets::Problem;
use mathcoder_grade::ExtractRule;
use mathcoder_lce::chat::{split_fenced, system_prompt, ChatStyle, CodeCall, Transcript, Turn};
use mathcoder_llm::chat::{BadToolCall, ChatClient, ChatFinish, ChatRequest};
use mathcoder_llm::BackendError;
use mathcoder_sandbox::{Sandbox, Session};
use std::sync::Arc;

use crate::{Teacher, TeacherError, TeacherSolution};

/// The chat teacher's settings.
#[derive(Clone, Debug)]
pub struct ChatConfig {
    pub style: ChatStyle,
    /// Most requests per solution (each may run several cells).
    pub max_rounds: usize,
    /// Most tokens per reply.
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: Option<f32>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            style: ChatStyle::Tools,
            max_rounds: 16,
            max_tokens: 2048,
            temperature: 0.0,
            top_p: None,
        }
    }
}

/// Why a chat solution failed. Its text in an attempt's detail is `label: message`
/// ([`ChatTeacherError::label`]).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ChatTeacherError {
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{0}")]
    Sandbox(String),
    #[error("{0}")]
    BadToolCall(#[from] BadToolCall),
    #[error("reply cut at the token limit")]
    Truncated,
    #[error("no \\boxed{{}} answer in the final message")]
    NoAnswer,
    #[error("no final message after {0} rounds")]
    RoundLimit(usize),
    #[error("{0}")]
    Transcript(#[from] mathcoder_lce::chat::TranscriptError),
}

impl ChatTeacherError {
    /// A short label for counting failures by kind.
    pub fn label(&self) -> &'static str {
        match self {
            ChatTeacherError::Backend(_) => "backend",
            ChatTeacherError::Sandbox(_) => "sandbox",
            ChatTeacherError::BadToolCall(_) => "bad_tool_call",
            ChatTeacherError::Truncated => "truncated",
            ChatTeacherError::NoAnswer => "no_answer",
            ChatTeacherError::RoundLimit(_) => "round_limit",
            ChatTeacherError::Transcript(_) => "transcript",
        }
    }
}

impl From<ChatTeacherError> for TeacherError {
    fn from(e: ChatTeacherError) -> TeacherError {
        let text = format!("{}: {e}", e.label());
        match e {
            ChatTeacherError::Backend(_) | ChatTeacherError::Sandbox(_) => {
                TeacherError::Fault(text)
            }
            _ => TeacherError::Unconvertible(text),
        }
    }
}

/// A chat model with a code interpreter.
#[derive(Clone)]
pub struct ChatTeacher {
    client: Arc<ChatClient>,
    sandbox: Sandbox,
    config: ChatConfig,
}

/// A chat solution: the transcript, its blocks and the tokens spent.
#[derive(Clone, Debug)]
pub struct ChatSolution {
    pub transcript: Transcript,
    pub solution: TeacherSolution,
}

impl ChatTeacher {
    pub fn new(client: Arc<ChatClient>, sandbox: Sandbox, config: ChatConfig) -> ChatTeacher {
        ChatTeacher {
            client,
            sandbox,
            config,
        }
    }

    /// Runs the conversation for `question`.
    pub async fn converse(
        &self,
        question: &str,
        seed: Option<u64>,
    ) -> Result<ChatSolution, ChatTeacherError> {
        let style = self.config.style;
        let mut transcript = Transcript::default();
        let mut session: Option<Session> = None;
        let mut tokens = 0u64;
        for _ in 0..self.config.max_rounds {
            let reply = self
                .client
                .complete(&ChatRequest {
                    system: Some(system_prompt(style)),
                    user: question,
                    transcript: &transcript,
                    style: Some(style),
                    max_tokens: self.config.max_tokens,
                    temperature: self.config.temperature,
                    top_p: self.config.top_p,
                    seed,
                })
                .await?;
            tokens += u64::from(reply.completion_tokens.unwrap_or(0));
            if reply.finish == ChatFinish::Length {
                return Err(ChatTeacherError::Truncated);
            }
            let (prose, calls) = match style {
                ChatStyle::Tools => {
                    let mut calls = Vec::with_capacity(reply.tool_calls.len());
                    for c in &reply.tool_calls {
                        let (id, code) = c.code()?;
                        calls.push(CodeCall { id, code });
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
            if calls.is_empty() {
                let answer = boxed_answer(&prose).ok_or(ChatTeacherError::NoAnswer)?;
                transcript.turns.push(Turn::Assistant {
                    prose,
                    calls: Vec::new(),
                });
                let blocks = transcript.blocks(&answer)?;
                return Ok(ChatSolution {
                    transcript,
                    solution: TeacherSolution {
                        blocks,
                        teacher_tokens: tokens,
                    },
                });
            }
            transcript.turns.push(Turn::Assistant {
                prose,
                calls: calls.clone(),
            });
            for c in calls {
                let s = match &mut session {
                    Some(s) => s,
                    None => session.insert(
                        self.sandbox
                            .session()
                            .await
                            .map_err(|e| ChatTeacherError::Sandbox(e.to_string()))?,
                    ),
                };
                let r = s.execute(&c.code).await;
                transcript.turns.push(Turn::Output {
                    id: c.id,
                    text: r.text,
                });
            }
        }
        Err(ChatTeacherError::RoundLimit(self.config.max_rounds))
    }
}

/// The final message's answer: its last `\boxed{}` (adjacent boxes joined), by the grader's
/// extractor.
pub fn boxed_answer(prose: &str) -> Option<String> {
    mathcoder_grade::extract(prose)
        .ok()
        .filter(|e| matches!(e.rule, ExtractRule::Boxed | ExtractRule::BoxedJoined))
        .map(|e| e.answer)
}

impl Teacher for ChatTeacher {
    fn describe(&self) -> String {
        format!(
            "{} ({}, temperature {})",
            self.client.describe(),
            self.config.style.name(),
            self.config.temperature
        )
    }

    async fn solve(
        &self,
        problem: &Problem,
        _sample: usize,
        seed: Option<u64>,
    ) -> Result<TeacherSolution, TeacherError> {
        Ok(self.converse(&problem.question, seed).await?.solution)
    }
}
