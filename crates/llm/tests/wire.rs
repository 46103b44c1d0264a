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
            // Only a hang needs the timeout to fire; a long one elsewhere keeps a slow but
            // healthy reply on a loaded machine from counting as a fault.
            let ms = if fault == Fault::Hang { 1000 } else { 5000 };
            let b: Box<dyn Backend> = if openai {
                Box::new(OpenAi::new(&s.url(), "m", http(ms)).unwrap())
            } else {
                Box::new(Tgi::new(&s.url(), http(ms)).unwrap())
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
        let ms = if fault == Fault::Hang { 200 } else { 5000 };
        let b = Tgi::new(&s.url(), http(ms)).unwrap();
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

/// A free port on 127.0.0.1 (bound, then released).
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    url
}

#[tokio::test]
async fn a_refused_first_contact_fails_at_once_and_says_what_to_do() {
    // The CLI's defaults: 4 retries from 500 ms, which used to take 7-9 s here.
    let url = closed_port_url();
    for openai in [false, true] {
        let b: Box<dyn Backend> = if openai {
            Box::new(OpenAi::new(&url, "m", HttpConfig::default()).unwrap())
        } else {
            Box::new(Tgi::new(&url, HttpConfig::default()).unwrap())
        };
        let t = Instant::now();
        let e = b
            .generate(&GenerateRequest::mathcoder("x"))
            .await
            .unwrap_err();
        let took = t.elapsed();
        assert!(took < Duration::from_secs(1), "openai={openai}: {took:?}");
        assert!(
            matches!(
                e,
                BackendError::Unreachable {
                    first_contact: true,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(!e.is_transient());
        let m = e.to_string();
        assert!(m.contains("connection refused"), "{m}");
        assert!(m.contains("nothing is listening"), "{m}");
        assert!(m.contains("--backend native --model PATH"), "{m}");
        // Said once: no transport error text repeated after it.
        assert_eq!(m.matches(&url).count(), 1, "{m}");
    }
}

/// Serves exactly one HTTP request on `listener` with a TGI reply, then closes the connection
/// and the listener.
async fn answer_once(listener: tokio::net::TcpListener) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut sock, _) = listener.accept().await.unwrap();
    drop(listener);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = sock.read(&mut chunk).await.unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(h) = text.find("\r\n\r\n") {
            let len = text[..h]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= h + 4 + len {
                break;
            }
        }
        assert!(n > 0, "request cut short");
    }
    let body = r#"{"generated_text": "4", "details": {"finish_reason": "stop_sequence", "generated_tokens": 2, "tokens": [{"id": 32004, "text": "<|text|>", "special": true}, {"id": 1, "text": "4", "special": false}, {"id": 32007, "text": "<|endofblock|>", "special": true}]}}"#;
    let reply = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(reply.as_bytes()).await.unwrap();
    sock.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_server_that_answered_and_went_away_is_retried() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(answer_once(listener));
    let b = Tgi::new(
        &format!("http://{addr}"),
        HttpConfig {
            retries: 4,
            backoff: Duration::from_millis(100),
            ..HttpConfig::default()
        },
    )
    .unwrap();
    let g = b.generate(&GenerateRequest::mathcoder("x")).await.unwrap();
    assert_eq!((g.text.as_str(), g.retries), ("<|text|>4<|endofblock|>", 0));
    // The server is gone: connections are refused until it is back, 250 ms later.
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(250)).await;
        answer_once(tokio::net::TcpListener::bind(addr).await.unwrap()).await;
    });
    let g = b.generate(&GenerateRequest::mathcoder("x")).await.unwrap();
    assert!(g.retries >= 1, "{}", g.retries);
    // Gone for good: the refusals are transient failures, retried, then reported.
    let e = b
        .generate(&GenerateRequest::mathcoder("x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            BackendError::Unreachable {
                first_contact: false,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.is_transient());
    assert!(!e.to_string().contains("nothing is listening"), "{e}");
}

fn llama_server_without_special() -> ReplayConfig {
    ReplayConfig {
        drops_special_tokens: true,
        ..ReplayConfig::default()
    }
}

#[tokio::test]
async fn openai_reports_a_server_that_drops_special_tokens() {
    let s = server(llama_server_without_special()).await;
    let b = OpenAi::new(&s.url(), "m", http(5000)).unwrap();
    // The whole solution fits in 512 tokens: the model's end of sequence ends it.
    let prompt = PromptTemplate::mathcoder().render(QUESTION);
    let e = b
        .generate(&GenerateRequest::mathcoder(prompt.clone()))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::SpecialTokensDropped { until, .. } if until == "the end of the sequence"),
        "{e:?}"
    );
    assert!(!e.is_transient());
    let m = e.to_string();
    assert!(m.contains("llama-server with `--special`"), "{m}");
    assert!(m.contains("skip_special_tokens"), "{m}");
    // A longer solution runs into max_tokens.
    let mut req = GenerateRequest::mathcoder(prompt);
    req.max_new_tokens = 8;
    let e = b.generate(&req).await.unwrap_err();
    assert!(
        matches!(&e, BackendError::SpecialTokensDropped { until, .. } if until == "max_tokens"),
        "{e:?}"
    );
    // Later rounds too (the prompt ends with a block).
    let so_far = &solution()[..3];
    let e = b
        .generate(&GenerateRequest::mathcoder(
            PromptTemplate::mathcoder().render_partial(QUESTION, so_far),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BackendError::SpecialTokensDropped { .. }),
        "{e:?}"
    );
    assert_eq!(s.requests(), 3, "not retried");
}

#[tokio::test]
async fn legitimate_length_cut_offs_are_not_mistaken_for_dropped_tokens() {
    let s = server(ReplayConfig::default()).await;
    let mut req = GenerateRequest::mathcoder(PromptTemplate::mathcoder().render(QUESTION));
    req.max_new_tokens = 3;
    // A server that honours `skip_special_tokens: false`: the cut block keeps its token.
    let b = OpenAi::new(&s.url(), "m", http(5000)).unwrap();
    let g = b.generate(&req).await.unwrap();
    assert_eq!(g.finish, FinishReason::Length);
    assert!(g.text.starts_with("<|text|>Compute"), "{}", g.text);
    // Without the extensions token-less text is expected, and restored.
    let b = OpenAi::new(&s.url(), "m", http(5000))
        .unwrap()
        .with_extensions(false);
    let g = b.generate(&req).await.unwrap();
    assert_eq!(g.finish, FinishReason::Length);
    assert!(g.text.starts_with("<|text|>Compute"), "{}", g.text);
    // The next round continues the cut block in plain text: not judged.
    let s2 = server(llama_server_without_special()).await;
    let b = OpenAi::new(&s2.url(), "m", http(5000)).unwrap();
    let mut cont = req.clone();
    cont.prompt.push_str("<|text|>Compute");
    assert!(b.generate(&cont).await.is_ok());
}
