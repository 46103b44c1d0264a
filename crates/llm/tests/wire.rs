//! Both clients against the replay server, which behaves like real TGI and vLLM (special tokens
//! and stop strings stripped unless asked for), including injected faults.

use mathcoder_lce::{Block, PromptTemplate};
use mathcoder_llm::http::HttpConfig;
use mathcoder_llm::openai::OpenAi;
use mathcoder_llm::tgi::Tgi;
use mathcoder_llm::{Backend, BackendError, FinishReason, GenerateRequest};
use mathcoder_replay::{serve, Fault, Recordings, ReplayConfig, Server};
use std::time::{Duration, Instant};

const QUESTION: &str = "What is $2^{10}$?";

fn solution() -> Vec<Block> {
    vec![
        Block::text("Compute the power with Python."),
        Block::code("print(2**10)\n# a `</s>` in a comment"),
        Block::execution("1024"),
        Block::text("So $2^{10} = \\boxed{1024}$."),
    ]
}

async fn server(config: ReplayConfig) -> Server {
    let mut r = Recordings::default();
    r.insert(QUESTION, &solution());
    serve(r, config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

fn http(timeout_ms: u64) -> HttpConfig {
    HttpConfig {
        timeout: Duration::from_millis(timeout_ms),
        retries: 3,
        backoff: Duration::from_millis(5),
        ..HttpConfig::default()
    }
}

/// Drives a whole conversation, as the loop does (without executing: the recorded output is
/// spliced in), and returns each generation's text.
async fn converse(b: &dyn Backend) -> Vec<(String, FinishReason)> {
    let t = PromptTemplate::mathcoder();
    let recorded = solution();
    let mut so_far: Vec<Block> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..10 {
        let g = b
            .generate(&GenerateRequest::mathcoder(
                t.render_partial(QUESTION, &so_far),
            ))
            .await
            .unwrap();
        out.push((g.text.clone(), g.finish));
        if g.text.contains("<|endofmessage|>") {
            break;
        }
        let (block, _) = mathcoder_lce::parse_round(&g.text);
        let block = block.unwrap();
        let is_code = block.kind == mathcoder_lce::BlockKind::Code;
        so_far.push(block);
        if is_code {
            so_far.push(recorded[so_far.len()].clone());
        }
    }
    out
}

fn expected() -> Vec<(String, FinishReason)> {
    vec![
        (
            "<|text|>Compute the power with Python.<|endofblock|>".into(),
            FinishReason::Stop,
        ),
        (
            "<|code|>print(2**10)\n# a `</s>` in a comment<|endofblock|>".into(),
            FinishReason::Stop,
        ),
        (
            "<|text|>So $2^{10} = \\boxed{1024}$.<|endofblock|>".into(),
            FinishReason::Stop,
        ),
        ("<|endofmessage|>".into(), FinishReason::Stop),
    ]
}

#[tokio::test]
async fn tgi_reattaches_the_special_tokens() {
    let s = server(ReplayConfig::default()).await;
    let b = Tgi::new(&s.url(), http(5000)).unwrap();
    assert_eq!(converse(&b).await, expected());
}

#[tokio::test]
async fn openai_with_vllm_extensions_gets_full_text() {
    let s = server(ReplayConfig::default()).await;
    let b = OpenAi::new(&s.url(), "m", http(5000)).unwrap();
    assert_eq!(converse(&b).await, expected());
}

#[tokio::test]
async fn openai_without_extensions_restores_tokens_and_stop_strings() {
    let s = server(ReplayConfig::default()).await;
    let b = OpenAi::new(&format!("{}/v1", s.url()), "m", http(5000))
        .unwrap()
        .with_extensions(false);
    assert_eq!(converse(&b).await, expected());
}

#[tokio::test]
async fn openai_falls_back_when_a_server_rejects_the_extensions() {
    let s = server(ReplayConfig {
        openai_strict: true,
        ..ReplayConfig::default()
    })
    .await;
    let b = OpenAi::new(&s.url(), "m", http(5000)).unwrap();
    assert_eq!(converse(&b).await, expected());
    // One rejected request, then plain requests only.
    assert_eq!(s.requests(), expected().len() as u64 + 1);
}

#[tokio::test]
async fn token_limit_is_reported_as_length() {
    let s = server(ReplayConfig::default()).await;
    let b = Tgi::new(&s.url(), http(5000)).unwrap();
    let mut req = GenerateRequest::mathcoder(PromptTemplate::mathcoder().render(QUESTION));
    req.max_new_tokens = 3;
    let g = b.generate(&req).await.unwrap();
    assert_eq!(g.finish, FinishReason::Length);
    assert_eq!(g.generated_tokens, Some(3));
    assert!(g.text.starts_with("<|text|>Compute"), "{}", g.text);
    assert!(!g.text.contains("<|endofblock|>"));
}

fn faulty(fault: Fault, limit: u64) -> ReplayConfig {
    ReplayConfig {
        fault: Some(fault),
        fault_every: 1,
        fault_limit: limit,
        ..ReplayConfig::default()
    }
}

#[tokio::test]
async fn transient_faults_are_retried_until_they_pass() {
    for fault in [
        Fault::ServerError,
        Fault::Malformed,
        Fault::Close,
        Fault::Hang,
    ] {
        for openai in [false, true] {
            let s = server(faulty(fault, 2)).await;
            let b: Box<dyn Backend> = if openai {
                Box::new(OpenAi::new(&s.url(), "m", http(300)).unwrap())
            } else {
                Box::new(Tgi::new(&s.url(), http(300)).unwrap())
            };
            let g = b
                .generate(&GenerateRequest::mathcoder(
                    PromptTemplate::mathcoder().render(QUESTION),
                ))
                .await
                .unwrap_or_else(|e| panic!("{fault:?} openai={openai}: {e}"));
            assert_eq!(g.retries, 2, "{fault:?}");
            assert_eq!(g.text, expected()[0].0);
        }
    }
}

#[tokio::test]
async fn persistent_faults_end_in_a_clear_error_after_the_retries() {
    type Check = fn(&BackendError) -> bool;
    let cases: [(Fault, Check); 4] = [
        (
            Fault::ServerError,
            |e| matches!(e, BackendError::Server { status: 500, body, .. } if body.contains("injected")),
        ),
        (
            Fault::Malformed,
            |e| matches!(e, BackendError::Protocol { message, .. } if message.contains("invalid JSON")),
        ),
        (Fault::Close, |e| {
            matches!(
                e,
                BackendError::Protocol { .. } | BackendError::Unreachable { .. }
            )
        }),
        (Fault::Hang, |e| matches!(e, BackendError::Timeout { .. })),
    ];
    for (fault, check) in cases {
        let s = server(faulty(fault, 0)).await;
        let b = Tgi::new(&s.url(), http(200)).unwrap();
        let e = b
            .generate(&GenerateRequest::mathcoder(
                PromptTemplate::mathcoder().render(QUESTION),
            ))
            .await
            .unwrap_err();
        assert!(check(&e), "{fault:?}: {e}");
        assert_eq!(s.requests(), 4, "{fault:?}: one attempt and three retries");
    }
}

#[tokio::test]
async fn rejections_are_not_retried_and_carry_the_body() {
    let s = server(ReplayConfig::default()).await;
    let b = Tgi::new(&s.url(), http(5000)).unwrap();
    let e = b
        .generate(&GenerateRequest::mathcoder(
            PromptTemplate::mathcoder().render("a question nobody recorded"),
        ))
        .await
        .unwrap_err();
    match &e {
        BackendError::Rejected { status, body, .. } => {
            assert_eq!(*status, 422);
            assert!(body.contains("not recorded"), "{body}");
        }
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("HTTP 422"));
    assert_eq!(s.requests(), 1);
}

#[tokio::test]
async fn an_unreachable_server_is_reported_as_such() {
    // A port that was just free.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let b = OpenAi::new(&url, "m", http(2000)).unwrap();
    let t = Instant::now();
    let e = b
        .generate(&GenerateRequest::mathcoder("x"))
        .await
        .unwrap_err();
    assert!(matches!(e, BackendError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("cannot reach"));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(Tgi::new("localhost:8080", http(10)).is_err());
}

#[tokio::test]
async fn the_concurrency_limit_holds() {
    // 8 requests, at most 2 in flight, each ~50 ms: at least 4 waves.
    let s = server(ReplayConfig {
        per_token_latency: Duration::from_millis(5),
        ..ReplayConfig::default()
    })
    .await;
    let b = std::sync::Arc::new(
        Tgi::new(
            &s.url(),
            HttpConfig {
                max_concurrency: 2,
                ..http(5000)
            },
        )
        .unwrap(),
    );
    let req = GenerateRequest::mathcoder(PromptTemplate::mathcoder().render(QUESTION));
    let per = mathcoder_replay::token_count(&expected()[0].0) as u32;
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (b, req) = (b.clone(), req.clone());
        set.spawn(async move { b.generate(&req).await.unwrap() });
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    assert!(t.elapsed() >= Duration::from_millis(5) * per * 4);
}
