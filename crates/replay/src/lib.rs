//! A replay server: answers generation requests with the blocks a real MathCoder model wrote.
//!
//! Given released-output records, a prompt in MathCoder's template is mapped to its question and
//! to the number of model blocks already in it; the reply is the model's next recorded block
//! (after the last one, `<|endofmessage|>`). Both wire protocols behave like the real servers:
//! TGI removes special tokens from `generated_text` and reports them in `details.tokens`; vLLM
//! removes special tokens and the matched stop string from `text` unless asked not to
//! (`skip_special_tokens: false`, `include_stop_str_in_output: true`). Optional per-token
//! latency, a slot limit (concurrent generations) and injected faults make it a test and
//! benchmark target. Several recording sets can be served by one server, the set chosen by the
//! request's seed ([`serve_sets`]: set `seed mod n`), so that samples 0, 1, 2 of a problem
//! (seeds s, s+1, s+2) are three different models' solutions; the server keeps, per (set,
//! question), the tokens it has answered ([`Server::answered_tokens`]), the chains a benchmark
//! compares its wall time with. [`ReplayConfig::drops_special_tokens`] imitates a misconfigured server
//! instead: llama.cpp's `llama-server` without `--special`, which renders no special tokens and
//! so never stops at `<|endofblock|>`.

pub mod chat;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mathcoder_lce::record::{read_jsonl, OutputRecord};
use mathcoder_lce::{parse_conversation, BlockKind, SpecialToken};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Record(#[from] mathcoder_lce::RecordError),
    #[error("cannot serve on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The recorded model blocks of each question.
#[derive(Clone, Debug, Default)]
pub struct Recordings {
    /// question -> the model's blocks as token text (`<|code|>...<|endofblock|>`), executions
    /// excluded.
    blocks: HashMap<String, Vec<String>>,
}

impl Recordings {
    pub fn from_files(files: &[PathBuf]) -> Result<Recordings, ReplayError> {
        let mut r = Recordings::default();
        for f in files {
            for n in read_jsonl::<OutputRecord>(f)? {
                r.add(&n.record);
            }
        }
        Ok(r)
    }

    pub fn add(&mut self, record: &OutputRecord) {
        let blocks: Vec<String> = record
            .blocks()
            .into_iter()
            .filter(|b| b.kind != BlockKind::Execution)
            .map(|b| b.render())
            .collect();
        self.blocks.entry(record.question()).or_insert(blocks);
    }

    /// Records `blocks` (executions are skipped) as the model's solution of `question`.
    pub fn insert(&mut self, question: impl Into<String>, blocks: &[mathcoder_lce::Block]) {
        let blocks = blocks
            .iter()
            .filter(|b| b.kind != BlockKind::Execution)
            .map(|b| b.render())
            .collect();
        self.blocks.insert(question.into(), blocks);
    }

    /// Whether a question has a recorded solution.
    pub fn has(&self, question: &str) -> bool {
        self.blocks.contains_key(question)
            || self.blocks.contains_key(question.trim_end_matches('\n'))
            || self.blocks.keys().any(|q| q.trim() == question.trim())
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// The recorded model blocks of a prompt's question and how many of them the prompt
    /// already holds; `None` when the prompt is not in the template or the question is unknown.
    fn progress(&self, prompt: &str) -> Option<(&[String], usize)> {
        let c = parse_conversation(prompt)?;
        let recorded = self
            .blocks
            .get(&c.user)
            .or_else(|| self.blocks.get(c.user.trim_end_matches('\n')))
            .or_else(|| {
                self.blocks
                    .iter()
                    .find(|(q, _)| q.trim() == c.user.trim())
                    .map(|(_, b)| b)
            })?;
        let done = c
            .assistant
            .blocks
            .iter()
            .filter(|b| b.kind != BlockKind::Execution)
            .count();
        Some((recorded, done))
    }

    /// The next block for a prompt: the recorded block after those the prompt already holds, or
    /// `<|endofmessage|>`; `None` when the question is unknown.
    pub fn next_block(&self, prompt: &str) -> Option<String> {
        let (recorded, done) = self.progress(prompt)?;
        Some(
            recorded
                .get(done)
                .cloned()
                .unwrap_or_else(|| SpecialToken::EndOfMessage.as_str().to_string()),
        )
    }

    /// What a model writes from a prompt on when nothing stops it at `<|endofblock|>`: every
    /// recorded block after those the prompt holds, then `<|endofmessage|>` (executions are not
    /// recorded, so none are made up); `None` when the question is unknown.
    pub fn rest_of_solution(&self, prompt: &str) -> Option<String> {
        let (recorded, done) = self.progress(prompt)?;
        let mut s: String = recorded.iter().skip(done).map(String::as_str).collect();
        s.push_str(SpecialToken::EndOfMessage.as_str());
        Some(s)
    }
}

/// Faults to inject, for testing clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum Fault {
    /// HTTP 500.
    #[cfg_attr(feature = "clap", value(name = "500"))]
    ServerError,
    /// Never answer.
    Hang,
    /// A 200 whose body is not JSON.
    Malformed,
    /// Close the connection in the middle of the response.
    Close,
}

/// How the server behaves.
#[derive(Clone, Debug, Default)]
pub struct ReplayConfig {
    /// Delay per generated token.
    pub per_token_latency: Duration,
    /// At most this many generations at once (others wait).
    pub slots: Option<usize>,
    /// Inject `fault` into requests whose 1-based number is in `fault_requests`... or every
    /// `fault_every`-th request.
    pub fault: Option<Fault>,
    pub fault_every: u64,
    /// Only the first this-many requests get faults (0: all).
    pub fault_limit: u64,
    /// Behave like OpenAI's own API: reject the vLLM extensions (`skip_special_tokens`, ...) with
    /// a 400.
    pub openai_strict: bool,
    /// On `/v1/completions`, behave like llama.cpp's `llama-server` started without `--special`:
    /// accept and ignore `skip_special_tokens` / `include_stop_str_in_output`, render no
    /// special tokens, and (since stop strings are matched on the rendered text) never stop at
    /// `<|endofblock|>` or `<|endofmessage|>`: the reply is the rest of the recorded solution
    /// without its tokens, cut at `max_tokens` (`finish_reason: length`) or ending at the end of
    /// the sequence (`stop`), with no `stop_reason`.
    pub drops_special_tokens: bool,
}

struct Shared {
    sets: Vec<Recordings>,
    answered: std::sync::Mutex<HashMap<(usize, String), u64>>,
    config: ReplayConfig,
    slots: Option<Semaphore>,
    requests: AtomicU64,
    faults: AtomicU64,
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    handle: tokio::task::JoinHandle<()>,
}

impl Server {
    /// The base URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::SeqCst)
    }
    /// Tokens answered so far per (recording set, question): with per-token latency, each
    /// question's generation time in that set.
    pub fn answered_tokens(&self) -> HashMap<(usize, String), u64> {
        self.shared
            .answered
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }
    pub fn stop(self) {
        self.handle.abort();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts a server on `addr` (port 0 picks a free port).
pub async fn serve(
    recordings: Recordings,
    config: ReplayConfig,
    addr: SocketAddr,
) -> Result<Server, ReplayError> {
    serve_sets(vec![recordings], config, addr).await
}

/// A server over several recording sets (e.g. one per model): a request with seed `s` is
/// answered from set `s mod sets.len()`, one without a seed from set 0.
pub async fn serve_sets(
    sets: Vec<Recordings>,
    config: ReplayConfig,
    addr: SocketAddr,
) -> Result<Server, ReplayError> {
    let listener = bind(addr).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ReplayError::Bind { addr, source })?;
    let shared = Arc::new(Shared {
        sets: if sets.is_empty() {
            vec![Recordings::default()]
        } else {
            sets
        },
        answered: Default::default(),
        slots: config.slots.map(Semaphore::new),
        config,
        requests: AtomicU64::new(0),
        faults: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/generate", post(tgi_generate))
        .route("/v1/completions", post(openai_completions))
        .route("/health", get(|| async { "ok" }))
        .with_state(shared.clone());
    let handle = spawn_serve(listener, app);
    Ok(Server {
        addr,
        shared,
        handle,
    })
}

/// Binds a listener on `addr` (port 0: a free port).
pub(crate) async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ReplayError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ReplayError::Bind { addr, source })
}

/// Serves `app` on `listener` in the background.
pub(crate) fn spawn_serve(
    listener: tokio::net::TcpListener,
    app: Router,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}

/// Approximate tokens of a text: special tokens count one, other text one per 4 bytes.
pub fn token_count(text: &str) -> usize {
    let mut n = 0;
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(t) = SpecialToken::ALL
            .iter()
            .find(|t| rest.starts_with(t.as_str()))
        {
            n += 1;
            rest = &rest[t.as_str().len()..];
            continue;
        }
        let next = SpecialToken::ALL
            .iter()
            .filter_map(|t| rest.find(t.as_str()))
            .min()
            .unwrap_or(rest.len());
        n += next.div_ceil(4);
        rest = &rest[next..];
    }
    n
}

fn strip_specials(s: &str) -> String {
    let mut out = s.to_string();
    for t in SpecialToken::ALL {
        out = out.replace(t.as_str(), "");
    }
    out
}

/// Splits a block into (opening special token, content, closing special token).
fn split_block(block: &str) -> (Option<&'static str>, String, Option<&'static str>) {
    let open = [
        SpecialToken::Text,
        SpecialToken::Code,
        SpecialToken::Execution,
    ]
    .into_iter()
    .map(|t| t.as_str())
    .find(|t| block.starts_with(t));
    let close = [SpecialToken::EndOfBlock, SpecialToken::EndOfMessage]
        .into_iter()
        .map(|t| t.as_str())
        .find(|t| block.ends_with(t));
    let start = open.map_or(0, str::len);
    let end = block.len() - close.map_or(0, str::len);
    (open, block[start..end.max(start)].to_string(), close)
}

/// `max_new_tokens` of the recorded runs.
const RECORDED_LIMIT: usize = 512;

struct Answer {
    /// Full text with tokens.
    text: String,
    finish_length: bool,
    tokens: usize,
}

/// The reply to a prompt; `openai`: for `/v1/completions` (where
/// [`ReplayConfig::drops_special_tokens`] applies).
async fn answer(
    shared: &Shared,
    prompt: &str,
    max_new_tokens: usize,
    openai: bool,
    seed: Option<u64>,
) -> Result<Answer, Response> {
    let set = seed.map_or(0, |s| (s % shared.sets.len() as u64) as usize);
    let recordings = &shared.sets[set];
    let a = if openai && shared.config.drops_special_tokens {
        run_on(shared, recordings, prompt, max_new_tokens).await?
    } else {
        next_answer(shared, recordings, prompt, max_new_tokens).await?
    };
    if let (Some(c), Ok(mut m)) = (parse_conversation(prompt), shared.answered.lock()) {
        *m.entry((set, c.user)).or_default() += a.tokens as u64;
    }
    Ok(a)
}

async fn next_answer(
    shared: &Shared,
    recordings: &Recordings,
    prompt: &str,
    max_new_tokens: usize,
) -> Result<Answer, Response> {
    let block = recordings.next_block(prompt).ok_or_else(not_recorded)?;
    let mut tokens = token_count(&block);
    let mut text = block;
    let mut finish_length = false;
    // The recorded blocks were generated under a 512-token limit, which the 4-bytes-per-token
    // estimate overshoots for ~0.1% of them: only a smaller limit cuts a block.
    if tokens > max_new_tokens && max_new_tokens < RECORDED_LIMIT {
        // Cut to roughly max_new_tokens (4 bytes per token), without the closing token.
        let (open, content, _) = split_block(&text);
        let mut cut = (max_new_tokens.saturating_sub(1)) * 4;
        cut = cut.min(content.len());
        while !content.is_char_boundary(cut) {
            cut -= 1;
        }
        text = format!("{}{}", open.unwrap_or(""), &content[..cut]);
        tokens = max_new_tokens;
        finish_length = true;
    }
    Ok(deliver(shared, text, finish_length, tokens).await)
}

/// An answer as a server gives it: after a generation slot is free (`max_concurrency`) and its
/// tokens' latency has passed.
async fn deliver(shared: &Shared, text: String, finish_length: bool, tokens: usize) -> Answer {
    let _permit = match &shared.slots {
        Some(s) => Some(s.acquire().await.expect("semaphore open")),
        None => None,
    };
    if !shared.config.per_token_latency.is_zero() {
        tokio::time::sleep(shared.config.per_token_latency * tokens as u32).await;
    }
    Answer {
        text,
        finish_length,
        tokens,
    }
}

fn not_recorded() -> Response {
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(json!({"error": "prompt not in the MathCoder template, or question not recorded", "error_type": "validation"})),
    )
        .into_response()
}

/// [`ReplayConfig::drops_special_tokens`]: the rest of the solution with no special tokens, cut
/// at `max_new_tokens` (the text is already without tokens: no stop can fire on it).
async fn run_on(
    shared: &Shared,
    recordings: &Recordings,
    prompt: &str,
    max_new_tokens: usize,
) -> Result<Answer, Response> {
    let rest = recordings
        .rest_of_solution(prompt)
        .ok_or_else(not_recorded)?;
    let mut tokens = token_count(&rest);
    let mut text = strip_specials(&rest);
    let mut finish_length = false;
    if tokens > max_new_tokens {
        let mut cut = max_new_tokens.saturating_mul(4).min(text.len());
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        tokens = max_new_tokens;
        finish_length = true;
    }
    Ok(deliver(shared, text, finish_length, tokens).await)
}

/// Applies the configured fault to this request, if it is one of the faulty ones.
async fn maybe_fault(shared: &Shared) -> Option<Response> {
    let n = shared.requests.fetch_add(1, Ordering::SeqCst) + 1;
    let fault = shared.config.fault?;
    let every = shared.config.fault_every.max(1);
    if !n.is_multiple_of(every) {
        return None;
    }
    let k = shared.faults.fetch_add(1, Ordering::SeqCst) + 1;
    if shared.config.fault_limit > 0 && k > shared.config.fault_limit {
        return None;
    }
    Some(match fault {
        Fault::ServerError => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "injected failure", "error_type": "generation"})),
        )
            .into_response(),
        Fault::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
        Fault::Malformed => (
            StatusCode::OK,
            [("content-type", "application/json")],
            "{\"generated_text\": \"<|te",
        )
            .into_response(),
        Fault::Close => {
            let stream = futures_util::stream::iter(vec![
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{\"generated_text\":")),
                Err(std::io::Error::other("injected connection close")),
            ]);
            (
                StatusCode::OK,
                [("content-type", "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
    })
}

async fn tgi_generate(State(shared): State<Arc<Shared>>, Json(req): Json<Value>) -> Response {
    if let Some(r) = maybe_fault(&shared).await {
        return r;
    }
    let Some(prompt) = req["inputs"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": "missing inputs", "error_type": "validation"})),
        )
            .into_response();
    };
    let p = &req["parameters"];
    let max_new = p["max_new_tokens"].as_u64().unwrap_or(20) as usize;
    let a = match answer(&shared, prompt, max_new, false, p["seed"].as_u64()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (open, content, close) = split_block(&a.text);
    // Real TGI: special tokens are not in generated_text, only in details.tokens.
    let mut tokens: Vec<Value> = Vec::new();
    if let Some(o) = open {
        tokens.push(json!({"id": 32000, "text": o, "logprob": 0.0, "special": true}));
    }
    for chunk in content.as_bytes().chunks(4) {
        tokens.push(json!({"id": 1, "text": String::from_utf8_lossy(chunk), "logprob": 0.0, "special": false}));
    }
    if let Some(c) = close {
        tokens.push(json!({"id": 32001, "text": c, "logprob": 0.0, "special": true}));
    }
    let finish = if a.finish_length {
        "length"
    } else {
        "stop_sequence"
    };
    let mut details = json!({"finish_reason": finish, "generated_tokens": a.tokens, "seed": null, "tokens": tokens});
    if p["decoder_input_details"].as_bool() == Some(true) {
        details["prefill"] = json!([]);
    }
    if p["details"].as_bool() != Some(true) {
        return Json(json!({"generated_text": strip_specials(&a.text)})).into_response();
    }
    Json(json!({"generated_text": strip_specials(&a.text), "details": details})).into_response()
}

async fn openai_completions(State(shared): State<Arc<Shared>>, Json(req): Json<Value>) -> Response {
    if let Some(r) = maybe_fault(&shared).await {
        return r;
    }
    let Some(prompt) = req["prompt"].as_str() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "prompt must be a string"}})),
        )
            .into_response();
    };
    if shared.config.openai_strict {
        if let Some(k) = [
            "skip_special_tokens",
            "include_stop_str_in_output",
            "truncate_prompt_tokens",
            "spaces_between_special_tokens",
        ]
        .into_iter()
        .find(|k| req.get(*k).is_some())
        {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": {"message": format!("Unrecognized request argument supplied: {k}"), "type": "invalid_request_error"}})),
            )
                .into_response();
        }
    }
    let max_new = req["max_tokens"].as_u64().unwrap_or(16) as usize;
    let a = match answer(&shared, prompt, max_new, true, req["seed"].as_u64()).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let skip_special = req["skip_special_tokens"].as_bool().unwrap_or(true);
    let include_stop = req["include_stop_str_in_output"].as_bool().unwrap_or(false);
    let stops: Vec<String> = req["stop"]
        .as_array()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let matched = stops.iter().find(|s| a.text.ends_with(s.as_str())).cloned();
    let mut text = a.text.clone();
    if let Some(m) = &matched {
        if !include_stop {
            text.truncate(text.len() - m.len());
        }
    }
    if skip_special {
        text = strip_specials(&text);
    }
    let finish = if a.finish_length { "length" } else { "stop" };
    if shared.config.drops_special_tokens {
        // llama.cpp's OpenAI-compatible reply: no `stop_reason`.
        return Json(json!({
            "id": "cmpl-replay",
            "object": "text_completion",
            "model": req["model"],
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": null}],
            "usage": {"prompt_tokens": token_count(prompt), "completion_tokens": a.tokens, "total_tokens": token_count(prompt) + a.tokens}
        }))
        .into_response();
    }
    Json(json!({
        "id": "cmpl-replay",
        "object": "text_completion",
        "model": req["model"],
        "choices": [{"index": 0, "text": text, "finish_reason": finish, "stop_reason": matched, "logprobs": null}],
        "usage": {"prompt_tokens": token_count(prompt), "completion_tokens": a.tokens, "total_tokens": token_count(prompt) + a.tokens}
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mathcoder_lce::{Block, PromptTemplate};

    fn recordings() -> Recordings {
        let mut r = Recordings::default();
        r.blocks.insert(
            "What is 2+2?".into(),
            vec![
                Block::text("Add.").render(),
                Block::code("2+2").render(),
                Block::text("4").render(),
            ],
        );
        r
    }

    #[test]
    fn next_block_follows_the_prompt() {
        let r = recordings();
        let t = PromptTemplate::mathcoder();
        assert_eq!(
            r.next_block(&t.render("What is 2+2?")).unwrap(),
            "<|text|>Add.<|endofblock|>"
        );
        let p = t.render_partial(
            "What is 2+2?",
            &[
                Block::text("Add."),
                Block::code("2+2"),
                Block::execution("4"),
            ],
        );
        assert_eq!(r.next_block(&p).unwrap(), "<|text|>4<|endofblock|>");
        let p = t.render_partial(
            "What is 2+2?",
            &[
                Block::text("Add."),
                Block::code("2+2"),
                Block::execution("4"),
                Block::text("4"),
            ],
        );
        assert_eq!(r.next_block(&p).unwrap(), "<|endofmessage|>");
        assert!(r.next_block(&t.render("unknown")).is_none());
        assert_eq!(token_count("<|code|>abcdefgh<|endofblock|>"), 4);
    }
}
