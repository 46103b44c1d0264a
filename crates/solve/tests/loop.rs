//! The loop against a scripted backend and a real sandbox (provisioned on first use, as
//! `mathcoder setup` does; needs network access to PyPI the first time).

use async_trait::async_trait;
use mathcoder_lce::{BlockKind, PromptTemplate, SpanKind};
use mathcoder_llm::{Backend, BackendError, FinishReason, GenerateRequest, Generation};
use mathcoder_sandbox::{EnvSpec, ExecutionKind, Limits, Sandbox, SandboxConfig};
use mathcoder_solve::{solve, Outcome, SolveConfig, StopReason};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

fn sandbox() -> Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let config = SandboxConfig {
            limits: Limits {
                cell_timeout: Duration::from_secs(2),
                ..Limits::default()
            },
            ..SandboxConfig::default()
        };
        Sandbox::provision(&EnvSpec::default(), config, &|l| eprintln!("setup: {l}"))
            .expect("sandbox")
    })
    .clone()
}

/// Answers each call with the next scripted reply, and keeps the prompts it was sent.
struct Script {
    replies: Mutex<Vec<Result<(String, FinishReason), BackendError>>>,
    prompts: Mutex<Vec<GenerateRequest>>,
    /// When the script runs out: repeat the last reply.
    repeat_last: bool,
}

impl Script {
    fn new(replies: &[&str]) -> Script {
        Script {
            replies: Mutex::new(
                replies
                    .iter()
                    .rev()
                    .map(|r| Ok((r.to_string(), FinishReason::Stop)))
                    .collect(),
            ),
            prompts: Mutex::new(Vec::new()),
            repeat_last: false,
        }
    }
    fn prompts(&self) -> Vec<GenerateRequest> {
        self.prompts.lock().unwrap().clone()
    }
}

#[async_trait]
impl Backend for Script {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        self.prompts.lock().unwrap().push(req.clone());
        let mut r = self.replies.lock().unwrap();
        let next = if self.repeat_last && r.len() == 1 {
            r[0].clone()
        } else {
            r.pop()
                .unwrap_or(Ok(("<|endofmessage|>".into(), FinishReason::Stop)))
        };
        next.map(|(text, finish)| Generation {
            text,
            finish,
            prompt_tokens: None,
            generated_tokens: Some(7),
            retries: 0,
            cached_prompt_tokens: None,
            recomputed_prompt_tokens: None,
        })
    }
    fn describe(&self) -> String {
        "script".into()
    }
}

const Q: &str = "What is one third of 1?";

#[tokio::test]
async fn a_solution_runs_its_code_and_splices_the_output_back() {
    let b = Script::new(&[
        "<|text|>Divide.<|endofblock|>",
        "<|code|>x = 1/3\nprint(x)<|endofblock|>",
        "<|code|>y = 2<|endofblock|>",
        "<|code|>x + y<|endofblock|>",
        "<|text|>The answer is $\\boxed{0.333333333333}$.<|endofblock|>",
        "<|endofmessage|>",
    ]);
    let cfg = SolveConfig::default();
    let o = solve(Q, &b, &sandbox(), &cfg, &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    let kinds: Vec<BlockKind> = o.blocks.iter().map(|b| b.kind).collect();
    use BlockKind::*;
    assert_eq!(
        kinds,
        [Text, Code, Execution, Code, Execution, Code, Execution, Text]
    );
    // Execution output is not rounded; generated blocks are.
    assert_eq!(o.blocks[2].content, "0.3333333333333333");
    assert_eq!(o.blocks[4].content, "<empty_execution>");
    assert_eq!(o.blocks[6].content, "2.3333333333333335");
    assert_eq!(o.completion(), "The answer is $\\boxed{0.333333}$.");
    assert_eq!(o.model_blocks(), 5);
    assert_eq!(o.rounds.len(), 6);
    assert_eq!(o.rounds[1].execution_kind, Some(ExecutionKind::Ok));
    // Each prompt is the previous one plus the round's text and the execution.
    let p = b.prompts();
    let t = PromptTemplate::mathcoder();
    assert_eq!(p[0].prompt, t.render(Q));
    assert_eq!(
        p[2].prompt,
        format!(
            "{}<|text|>Divide.<|endofblock|><|code|>x = 1/3\nprint(x)<|endofblock|><|execution|>0.3333333333333333<|endofblock|>",
            t.render(Q)
        )
    );
    assert_eq!(p[5].prompt, t.render_partial(Q, &o.blocks));
    assert!(p.iter().all(|r| r.max_new_tokens == 512
        && r.truncate == Some(1536)
        && r.temperature == 0.0
        && r.stop == ["<|endofmessage|>", "<|endofblock|>"]));
}

#[tokio::test]
async fn errors_and_timeouts_are_shown_to_the_model_and_state_persists() {
    let b = Script::new(&[
        "<|code|>import time\nz = 5\n1/0<|endofblock|>",
        "<|code|>while True: pass<|endofblock|>",
        "<|code|>print(z)<|endofblock|>",
        "<|text|>$\\boxed{5}$<|endofblock|><|endofmessage|>",
    ]);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    assert!(o.blocks[1].content.contains("ZeroDivisionError"));
    assert_eq!(o.rounds[0].execution_kind, Some(ExecutionKind::Error));
    assert_eq!(o.rounds[1].execution_kind, Some(ExecutionKind::Timeout));
    assert_eq!(o.blocks[5].content, "5");
    assert_eq!(o.completion(), "$\\boxed{5}$");
    // The message ended in the same round as the block: no extra call.
    assert_eq!(b.prompts().len(), 4);
}

#[tokio::test]
async fn the_block_limit_stops_a_runaway_model() {
    let mut b = Script::new(&["<|code|>print(1)<|endofblock|>"]);
    b.repeat_last = true;
    let cfg = SolveConfig {
        max_blocks: 3,
        stop_on_repetition: false,
        ..SolveConfig::default()
    };
    let o = solve(Q, &b, &sandbox(), &cfg, &mut ()).await;
    assert_eq!(o.stop, StopReason::BlockLimit);
    assert_eq!(o.model_blocks(), 3);
    assert_eq!(o.blocks.len(), 6);
    assert_eq!(b.prompts().len(), 3);
}

#[tokio::test]
async fn a_backend_failure_keeps_the_blocks_so_far() {
    let b = Script::new(&["<|text|>Start.<|endofblock|>"]);
    b.replies.lock().unwrap().insert(
        0,
        Err(BackendError::Server {
            url: "u".into(),
            status: 503,
            body: "overloaded".into(),
        }),
    );
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    match &o.stop {
        StopReason::BackendError(m) => assert!(m.contains("overloaded"), "{m}"),
        s => panic!("{s:?}"),
    }
    assert!(o.stop.is_failure());
    assert_eq!(o.blocks.len(), 1);
}

#[tokio::test]
async fn empty_generations_and_end_of_sequence_stop_with_length() {
    let b = Script::new(&["<|text|>Start.<|endofblock|>", ""]);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::Length);
    assert_eq!(o.blocks.len(), 1);

    let b = Script::new(&[]);
    b.replies.lock().unwrap().push(Ok((
        "<|text|>Half a thought".into(),
        FinishReason::EndOfSequence,
    )));
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::Length);
    assert_eq!(o.completion(), "Half a thought");
}

#[tokio::test]
async fn a_token_limited_block_goes_on_in_the_next_round_as_the_authors_did() {
    let b = Script::new(&[]);
    {
        let mut r = b.replies.lock().unwrap();
        r.push(Ok(("<|endofmessage|>".into(), FinishReason::Stop)));
        r.push(Ok((" is 1/3.<|endofblock|>".into(), FinishReason::Stop)));
        r.push(Ok(("<|text|>The answer".into(), FinishReason::Length)));
    }
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    // The prompt holds the cut text, then its continuation.
    let p = b.prompts();
    assert!(p[2]
        .prompt
        .ends_with("<|assistant|><|text|>The answer is 1/3.<|endofblock|>"));
    assert_eq!(o.rounds[0].finish, Some(FinishReason::Length));
}

#[tokio::test]
async fn a_block_cut_while_repeating_itself_stops_the_loop() {
    let looping = format!(
        "<|text|>Olivia has 49 dollars.\n{}",
        "The atm collected 49 dollars from Olivia.\n".repeat(20)
    );
    let replies = || {
        let b = Script::new(&["<|text|>$\\boxed{49}$<|endofblock|><|endofmessage|>"]);
        b.replies
            .lock()
            .unwrap()
            .push(Ok((looping.clone(), FinishReason::Length)));
        b
    };
    let b = replies();
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::Repetition);
    assert_eq!(o.stop.label(), "repetition");
    assert_eq!(b.prompts().len(), 1);
    assert_eq!(o.blocks.len(), 1, "the cut block is kept");
    assert!(o.completion().ends_with("Olivia.\n"));
    // Off, the loop goes on as the authors' did.
    let b = replies();
    let cfg = SolveConfig {
        stop_on_repetition: false,
        ..SolveConfig::default()
    };
    let o = solve(Q, &b, &sandbox(), &cfg, &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    assert_eq!(b.prompts().len(), 2);
}

#[tokio::test]
async fn the_same_blocks_a_third_time_stop_the_loop() {
    // A text and a code block, again and again: stopped after the third copy.
    let mut b = Script::new(&[
        "<|text|>Start.<|endofblock|>",
        "<|text|>Add them.<|endofblock|>",
        "<|code|>print(2 + 2)<|endofblock|>",
    ]);
    {
        let mut r = b.replies.lock().unwrap();
        for _ in 0..2 {
            r.insert(
                0,
                Ok(("<|text|>Add them.<|endofblock|>".into(), FinishReason::Stop)),
            );
            r.insert(
                0,
                Ok((
                    "<|code|>print(2 + 2)<|endofblock|>".into(),
                    FinishReason::Stop,
                )),
            );
        }
    }
    b.repeat_last = true;
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::Repetition);
    assert_eq!(o.model_blocks(), 7);
    assert_eq!(b.prompts().len(), 7);
    // Two copies are not a loop.
    let b = Script::new(&[
        "<|code|>print(2 + 2)<|endofblock|>",
        "<|code|>print(2 + 2)<|endofblock|>",
        "<|text|>$\\boxed{4}$<|endofblock|><|endofmessage|>",
    ]);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
}

#[tokio::test]
async fn blocks_repeated_with_new_numbers_stop_the_loop_too() {
    // MathCoder-S on svamp-14: the same step again with the next numbers, to the block limit.
    let mut replies = vec!["<|text|>Ron is 13 feet tall.<|endofblock|>".to_string()];
    for i in 1..=5 {
        replies.push(format!(
            "<|text|>The depth of the water is {} - 15 = {} feet.<|endofblock|>",
            200 - 15 * i,
            185 - 15 * i
        ));
        replies.push(format!(
            "<|code|>step_{} = step_{} - 15\nstep_{}<|endofblock|>",
            i + 1,
            i,
            i + 1
        ));
    }
    let replies: Vec<&str> = replies.iter().map(String::as_str).collect();
    let b = Script::new(&replies);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::Repetition);
    assert_eq!(o.model_blocks(), 7, "stopped at the third copy");
    // Steps that differ in their words as well are not a loop.
    let b = Script::new(&[
        "<|text|>Apples: 3 * 4 = 12.<|endofblock|>",
        "<|code|>apples = 3 * 4<|endofblock|>",
        "<|text|>Pears: 2 * 5 = 10.<|endofblock|>",
        "<|code|>pears = 2 * 5<|endofblock|>",
        "<|text|>Plums: 6 * 1 = 6.<|endofblock|>",
        "<|code|>plums = 6 * 1\nprint(apples + pears + plums)<|endofblock|>",
        "<|text|>$\\boxed{28}$<|endofblock|><|endofmessage|>",
    ]);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
}

/// Lays the loop's prompts and the model's replies over the spans of the rendered solution: the
/// first prompt is the prompt span, every later prompt is the text up to the start of a model
/// span, every reply is exactly a run of model spans, and what the loop adds between two rounds
/// is exactly execution spans.
fn assert_spans_are_what_the_loop_sent(prompts: &[GenerateRequest], replies: &[&str], o: &Outcome) {
    let r = PromptTemplate::mathcoder().render_with_spans(Q, &o.blocks, true);
    assert_eq!(prompts.len(), replies.len());
    assert_eq!(r.prompt(), prompts[0].prompt);
    // The whole text is the last prompt plus the last generation.
    assert_eq!(
        r.text,
        format!(
            "{}{}",
            prompts[prompts.len() - 1].prompt,
            replies[replies.len() - 1]
        )
    );
    let mut pos = r.spans[0].range.end;
    for (p, reply) in prompts.iter().zip(replies) {
        assert_eq!(p.prompt, r.text[..pos]);
        let end = pos + reply.len();
        assert_eq!(&r.text[pos..end], *reply);
        let covered: Vec<_> = r
            .spans
            .iter()
            .filter(|s| s.range.start >= pos && s.range.end <= end)
            .collect();
        assert!(!covered.is_empty());
        assert_eq!(covered[0].range.start, pos, "a reply starts a model span");
        assert_eq!(
            covered[covered.len() - 1].range.end,
            end,
            "a reply ends a model span"
        );
        assert!(covered.iter().all(|s| s.kind == SpanKind::Model), "{reply}");
        pos = end;
        while let Some(s) = r
            .spans
            .iter()
            .find(|s| s.range.start == pos && s.kind == SpanKind::Execution)
        {
            pos = s.range.end;
        }
    }
    assert_eq!(pos, r.text.len());
    // The training targets are exactly the generations.
    let targets: String = r.target_ranges().into_iter().map(|g| &r.text[g]).collect();
    assert_eq!(targets, replies.concat());
}

#[tokio::test]
async fn spans_are_byte_for_byte_what_the_loop_sends_and_the_model_writes() {
    let replies = [
        "<|text|>Divide.<|endofblock|>",
        "<|code|>x = 1/3\nprint(round(x, 4))<|endofblock|>",
        "<|code|>y = 2<|endofblock|>",
        "<|text|>The answer is $\\boxed{0.3333}$.<|endofblock|>",
        "<|endofmessage|>",
    ];
    let b = Script::new(&replies);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    assert_eq!(o.blocks[2].content, "0.3333");
    assert_spans_are_what_the_loop_sent(&b.prompts(), &replies, &o);

    // The message ends in the same round as the last block.
    let replies = [
        "<|code|>print(5)<|endofblock|>",
        "<|text|>$\\boxed{5}$<|endofblock|><|endofmessage|>",
    ];
    let b = Script::new(&replies);
    let o = solve(Q, &b, &sandbox(), &SolveConfig::default(), &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    assert_spans_are_what_the_loop_sent(&b.prompts(), &replies, &o);
}

/// `execute: false` (the paper's Table 5, row 1): no code runs; the model's own execution
/// blocks are kept as it wrote them, and the prompt carries them, not real output.
#[tokio::test]
async fn without_execution_the_model_writes_the_outputs() {
    let b = Script::new(&[
        "<|code|>print(347 * 29)<|endofblock|>",
        "<|execution|>10000<|endofblock|>",
        "<|text|>The answer is $\\boxed{10000}$.<|endofblock|>",
        "<|endofmessage|>",
    ]);
    let cfg = SolveConfig {
        execute: false,
        ..SolveConfig::default()
    };
    let o = solve(Q, &b, &sandbox(), &cfg, &mut ()).await;
    assert_eq!(o.stop, StopReason::EndOfMessage);
    use BlockKind::*;
    let kinds: Vec<BlockKind> = o.blocks.iter().map(|b| b.kind).collect();
    assert_eq!(kinds, [Code, Execution, Text]);
    // The model's (wrong) output, not the real 10063.
    assert_eq!(o.blocks[1].content, "10000");
    assert!(o.rounds.iter().all(|r| r.execute_ms.is_none()));
    let p = b.prompts();
    let t = PromptTemplate::mathcoder();
    assert_eq!(
        p[1].prompt,
        format!("{}<|code|>print(347 * 29)<|endofblock|>", t.render(Q))
    );
    assert_eq!(
        p[2].prompt,
        format!(
            "{}<|code|>print(347 * 29)<|endofblock|><|execution|>10000<|endofblock|>",
            t.render(Q)
        )
    );
}
