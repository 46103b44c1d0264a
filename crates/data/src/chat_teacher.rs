//! The chat teacher: a chat model with a code interpreter (the paper's GPT-4 Code Interpreter;
//! any OpenAI-compatible `/v1/chat/completions` server, or the native engine through the model's
//! chat template), any `mathcoder_llm::chat::ChatModel`.
//!
//! The conversation is `mathcoder_solve::chat::converse`, the one code-interpreter loop (shared
//! with the chat mode of `solve` and `eval`): the code-interpreter system prompt, the problem,
//! code run in the problem's sandbox session, outputs fed back, until a message without code or
//! `max_rounds`; the transcript becomes LCE blocks through
//! `mathcoder_lce::chat::Transcript::blocks`. Here the answer is the final message's last
//! `\boxed{}`, found by the grader's extractor.
//!
//! Failures are [`ChatTeacherError`]s: the backend's and the sandbox's are faults (the problem
//! is not to blame); a reply that cannot become a solution (a tool call that cannot run, a
//! message cut at the token limit, no `\boxed{}` answer, the round limit) is unconvertible.

use mathcoder_datasets::Problem;
use mathcoder_grade::ExtractRule;
use mathcoder_lce::chat::Transcript;
use mathcoder_llm::chat::ChatModel;
use mathcoder_sandbox::Sandbox;
pub use mathcoder_solve::chat::{ChatConfig, ChatError};
use std::sync::Arc;

use crate::{Teacher, TeacherError, TeacherSolution};

/// Why a chat solution failed (the loop's error). Its text in an attempt's detail is
/// `label: message` ([`ChatError::label`]).
pub type ChatTeacherError = ChatError;

impl From<ChatError> for TeacherError {
    fn from(e: ChatError) -> TeacherError {
        let text = format!("{}: {e}", e.label());
        if e.is_fault() {
            TeacherError::Fault(text)
        } else {
            TeacherError::Unconvertible(text)
        }
    }
}

/// A chat model with a code interpreter.
#[derive(Clone)]
pub struct ChatTeacher {
    model: Arc<dyn ChatModel>,
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
    pub fn new(model: Arc<dyn ChatModel>, sandbox: Sandbox, config: ChatConfig) -> ChatTeacher {
        ChatTeacher {
            model,
            sandbox,
            config,
        }
    }

    /// Runs the conversation for `question` (`mathcoder_solve::chat::converse`; the answer is
    /// the final message's `\boxed{}`).
    pub async fn converse(
        &self,
        question: &str,
        seed: Option<u64>,
    ) -> Result<ChatSolution, ChatError> {
        let c = mathcoder_solve::chat::converse(
            self.model.as_ref(),
            &self.sandbox,
            &self.config,
            question,
            seed,
            &boxed_answer,
            &mut (),
        )
        .await;
        Ok(ChatSolution {
            solution: TeacherSolution {
                blocks: c.result?,
                teacher_tokens: c.tokens,
            },
            transcript: c.transcript,
        })
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
            self.model.describe(),
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
