//! The code-interpreter conversation (`mathcoder_solve::chat`) with a scripted completion model
//! behind a chat template (`TemplateChat`, as the native engine runs) and a real sandbox
//! (provisioned on first use, as `mathcoder setup` does).

use async_trait::async_trait;
use mathcoder_lce::chat::{output_message, system_prompt, user_message, ChatStyle, Turn};
use mathcoder_lce::BlockKind;
use mathcoder_llm::chat::TemplateChat;
use mathcoder_llm::template::{ChatTemplate, Message, Role, TemplateFamily};
use mathcoder_llm::{Backend, BackendError, FinishReason, GenerateRequest, Generation};
use mathcoder_sandbox::{EnvSpec, Sandbox, SandboxConfig};
use mathcoder_solve::chat::{converse, ChatConfig, ChatError};
use mathcoder_solve::StopReason;
use std::sync::{Arc, Mutex, OnceLock};

fn sandbox() -> Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        Sandbox::provision(&EnvSpec::default(), SandboxConfig::default(), &|l| {
            eprintln!("setup: {l}")
        })
        .expect("sandbox")
    })
    .clone()
}

/// Answers each call with the next scripted (text, finish), as the native engine does: the
/// stop string the generation ended at is kept in the text.
struct Script {
    replies: Mutex<Vec<(String, FinishReason)>>,
    prompts: Mutex<Vec<GenerateRequest>>,
}

impl Script {
    fn new(replies: &[(&str, FinishReason)]) -> Arc<Script> {
        Arc::new(Script {
            replies: Mutex::new(
                replies
                    .iter()
                    .rev()
                    .map(|(t, f)| (t.to_string(), *f))
                    .collect(),
            ),
            prompts: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl Backend for Script {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        self.prompts.lock().unwrap().push(req.clone());
        let (text, finish) = self
            .replies
            .lock()
            .unwrap()
            .pop()
            .ok_or_else(|| BackendError::Engine("script ended".into()))?;
        Ok(Generation {
            text,
            finish,
            prompt_tokens: Some(100),
            generated_tokens: Some(10),
            retries: 0,
            cached_prompt_tokens: None,
            recomputed_prompt_tokens: None,
        })
    }
    fn describe(&self) -> String {
        "script".into()
    }
}

const Q: &str = "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips did Natalia sell altogether in April and May?";

fn chatml() -> ChatTemplate {
    ChatTemplate::named(TemplateFamily::Chatml, None, None).unwrap()
}

fn config() -> ChatConfig {
    ChatConfig {
        style: ChatStyle::Fences,
        max_rounds: 4,
        max_tokens: 300,
        ..ChatConfig::default()
    }
}

fn boxed(prose: &str) -> Option<String> {
    let (_, rest) = prose.rsplit_once("\\boxed{")?;
    Some(rest.split_once('}')?.0.to_string())
}

#[tokio::test]
async fn code_runs_output_goes_back_and_the_transcript_becomes_blocks() {
    let script = Script::new(&[
        (
            "In May she sold half of 48.\n```python\nmay = 48 / 2\nprint(48 + may)\n```\n",
            FinishReason::Stop,
        ),
        (
            "She sold 72 clips altogether: \\boxed{72}.<|im_end|>",
            FinishReason::Stop,
        ),
    ]);
    let chat = TemplateChat::new(script.clone(), chatml(), None);
    let c = converse(&chat, &sandbox(), &config(), Q, Some(3), &boxed, &mut ()).await;
    let blocks = c.result.clone().expect("a solution");
    let kinds: Vec<BlockKind> = blocks.iter().map(|b| b.kind).collect();
    use BlockKind::*;
    assert_eq!(kinds, [Text, Code, Execution, Text, Text]);
    assert_eq!(blocks[0].content, "In May she sold half of 48.");
    assert_eq!(blocks[1].content, "may = 48 / 2\nprint(48 + may)");
    assert_eq!(blocks[2].content, "72.0");
    assert_eq!(
        blocks[3].content,
        "She sold 72 clips altogether: \\boxed{72}."
    );
    assert_eq!(blocks[4].content, "72");
    assert_eq!(c.tokens, 20);
    assert_eq!(c.rounds.len(), 2);
    assert_eq!(c.rounds[0].kind, Some(Code));
    // As a run outcome: the same blocks, ended by the model.
    let o = c.outcome();
    assert_eq!(o.stop, StopReason::EndOfMessage);
    assert_eq!(o.completion(), "72");
    assert_eq!(o.blocks, blocks);
    // The prompts are the conversation through the template, with the output as a user message.
    let p = script.prompts.lock().unwrap().clone();
    let sys = system_prompt(ChatStyle::Fences);
    assert_eq!(
        p[0].prompt,
        chatml()
            .render(
                &[
                    Message::new(Role::System, sys),
                    Message::new(Role::User, user_message(ChatStyle::Fences, Q)),
                ],
                true
            )
            .unwrap()
    );
    assert_eq!(
        p[1].prompt,
        chatml()
            .render(
                &[
                    Message::new(Role::System, sys),
                    Message::new(Role::User, user_message(ChatStyle::Fences, Q)),
                    Message::new(
                        Role::Assistant,
                        "In May she sold half of 48.\n```python\nmay = 48 / 2\nprint(48 + may)\n```"
                    ),
                    Message::new(Role::User, output_message("72.0")),
                ],
                true
            )
            .unwrap()
    );
    assert!(p
        .iter()
        .all(|r| r.stop == ["<|im_end|>", "\n```\n", "\n```\r\n"]
            && r.max_new_tokens == 300
            && r.seed == Some(3)));
    assert!(matches!(c.transcript.turns[1], Turn::Output { ref text, .. } if text == "72.0"));
}

#[tokio::test]
async fn failures_keep_what_was_written() {
    // Cut at the token limit.
    let script = Script::new(&[("Let me think about this for a very", FinishReason::Length)]);
    let chat = TemplateChat::new(script, chatml(), None);
    let c = converse(&chat, &sandbox(), &config(), Q, None, &boxed, &mut ()).await;
    assert_eq!(c.result, Err(ChatError::Truncated));
    assert_eq!(c.outcome().stop, StopReason::Length);
    // A final message without an answer.
    let script = Script::new(&[("I do not know.<|im_end|>", FinishReason::Stop)]);
    let chat = TemplateChat::new(script, chatml(), None);
    let c = converse(&chat, &sandbox(), &config(), Q, None, &boxed, &mut ()).await;
    assert_eq!(c.result, Err(ChatError::NoAnswer));
    let o = c.outcome();
    assert_eq!(o.stop, StopReason::EndOfMessage);
    assert_eq!(o.completion(), "I do not know.");
    // Code in every reply (different cells): the round limit, with every cell run.
    let cells = ["a", "b", "c", "d"].map(|v| format!("```python\n{v} = 1\nprint({v})\n```\n"));
    let replies: Vec<(&str, FinishReason)> = cells
        .iter()
        .map(|c| (c.as_str(), FinishReason::Stop))
        .collect();
    let script = Script::new(&replies);
    let chat = TemplateChat::new(script, chatml(), None);
    let c = converse(&chat, &sandbox(), &config(), Q, None, &boxed, &mut ()).await;
    assert_eq!(c.result, Err(ChatError::RoundLimit(4)));
    let o = c.outcome();
    assert_eq!(o.stop, StopReason::BlockLimit);
    assert_eq!(o.blocks.len(), 8);
    assert_eq!(o.blocks[7].content, "1");
    // The backend fails: a fault.
    let chat = TemplateChat::new(Script::new(&[]), chatml(), None);
    let c = converse(&chat, &sandbox(), &config(), Q, None, &boxed, &mut ()).await;
    assert!(matches!(c.result, Err(ref e @ ChatError::Backend(_)) if e.is_fault()));
    assert!(matches!(c.outcome().stop, StopReason::BackendError(_)));
    // Tool calling needs a chat server.
    let chat = TemplateChat::new(Script::new(&[]), chatml(), None);
    let tools = ChatConfig {
        style: ChatStyle::Tools,
        ..config()
    };
    let c = converse(&chat, &sandbox(), &tools, Q, None, &boxed, &mut ()).await;
    assert!(matches!(
        c.result,
        Err(ChatError::Backend(BackendError::Config(_)))
    ));
}

/// A model that rewrites the same failing cell (as Qwen2.5-Coder-0.5B did on GSM8K, fixing a
/// "typo" it never fixed) stops at the third identical round, not at `max_rounds`.
#[tokio::test]
async fn a_model_repeating_a_failing_cell_is_stopped() {
    let cell = "There was a typo; let's run it again.\n```python\nprint(Seattle_sheep * 4)\n```\n";
    let script = Script::new(&[(cell, FinishReason::Stop); 10]);
    let chat = TemplateChat::new(script.clone(), chatml(), None);
    let cfg = ChatConfig {
        max_rounds: 10,
        ..config()
    };
    let c = converse(&chat, &sandbox(), &cfg, Q, None, &boxed, &mut ()).await;
    assert!(
        matches!(c.result, Err(ChatError::Repetition)),
        "{:?}",
        c.result
    );
    assert_eq!(c.rounds.len(), 3);
    assert_eq!(c.outcome().stop, StopReason::Repetition);
    assert!(c.partial.iter().any(|b| b.content.contains("NameError")));
    // Switched off, the same script runs to the round limit.
    let script = Script::new(&[(cell, FinishReason::Stop); 10]);
    let chat = TemplateChat::new(script, chatml(), None);
    let cfg = ChatConfig {
        max_rounds: 5,
        stop_on_repetition: false,
        ..config()
    };
    let c = converse(&chat, &sandbox(), &cfg, Q, None, &boxed, &mut ()).await;
    assert!(
        matches!(c.result, Err(ChatError::RoundLimit(5))),
        "{:?}",
        c.result
    );
    assert_eq!(c.rounds.len(), 5);
}
