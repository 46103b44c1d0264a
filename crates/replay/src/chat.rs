//! A scripted OpenAI chat-completions server (`POST /v1/chat/completions`) for testing chat
//! teachers, problem interpolation and difficulty judging.
//!
//! A [`ChatScript`] is a list of entries. A request is answered by the first entry whose
//! `needle` occurs in the request's first user message (and whose `seed`, when given, equals
//! the request's); the turn is the number of assistant messages already in the request, so a
//! conversation walks through the entry's turns. A turn may first fail: its `faults` are
//! applied to its first requests in order (a 5xx, a hang, a body that is not JSON, a reply
//! without `choices`), then its `reply` is sent. A reply is a message (content and tool calls,
//! with any `arguments`, ids present or not) or a raw `message` object (for missing or
//! mistyped fields).
//!
//! The server checks the protocol of what it is sent and answers 400 when it is broken: a
//! `tool` message must carry the `tool_call_id` of a call in an earlier assistant message that
//! no earlier `tool` message answered, `tools` (when sent) must be one function with a string
//! parameter, and stop sequences are applied to the reply as a real server does (the reply is
//! cut at the first one, which is dropped, `finish_reason: stop`). Every request body is kept
//! ([`ChatServer::requests`]).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::ReplayError;

/// What a scripted turn does before it answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChatFault {
    /// An HTTP error status.
    Status(u16),
    /// Never answer (the client's timeout fires).
    Hang,
    /// A 200 whose body is not JSON.
    BadJson,
    /// A 200 with valid JSON but no `choices`.
    NoChoices,
}

/// One tool call of a scripted reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptCall {
    #[serde(default)]
    pub id: Option<String>,
    pub name: String,
    /// Sent as `function.arguments` as is (a JSON string by the protocol).
    pub arguments: Value,
}

impl ScriptCall {
    /// A well-formed `python` call.
    pub fn python(id: &str, code: &str) -> ScriptCall {
        ScriptCall {
            id: Some(id.to_string()),
            name: "python".into(),
            arguments: Value::String(json!({ "code": code }).to_string()),
        }
    }
}

/// A scripted reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptReply {
    Message {
        #[serde(default)]
        content: Option<String>,
        #[serde(default)]
        tool_calls: Vec<ScriptCall>,
        /// Default: `tool_calls` when there are calls, else `stop`.
        #[serde(default)]
        finish: Option<String>,
    },
    /// `choices[0].message` as given.
    RawMessage(Value),
}

impl ScriptReply {
    pub fn text(content: &str) -> ScriptReply {
        ScriptReply::Message {
            content: Some(content.to_string()),
            tool_calls: Vec::new(),
            finish: None,
        }
    }
    pub fn calls(content: Option<&str>, calls: Vec<ScriptCall>) -> ScriptReply {
        ScriptReply::Message {
            content: content.map(str::to_string),
            tool_calls: calls,
            finish: None,
        }
    }
}

/// One turn: faults for its first requests, then the reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptTurn {
    #[serde(default)]
    pub faults: Vec<ChatFault>,
    pub reply: ScriptReply,
}

impl From<ScriptReply> for ScriptTurn {
    fn from(reply: ScriptReply) -> ScriptTurn {
        ScriptTurn {
            faults: Vec::new(),
            reply,
        }
    }
}

/// The conversation scripted for requests whose first user message contains `needle`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScriptEntry {
    pub needle: String,
    #[serde(default)]
    pub seed: Option<u64>,
    pub turns: Vec<ScriptTurn>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatScript {
    pub entries: Vec<ScriptEntry>,
}

impl ChatScript {
    /// Adds an entry.
    pub fn on(mut self, needle: &str, seed: Option<u64>, turns: Vec<ScriptTurn>) -> ChatScript {
        self.entries.push(ScriptEntry {
            needle: needle.to_string(),
            seed,
            turns,
        });
        self
    }
}

struct ChatShared {
    script: ChatScript,
    /// (entry, turn) -> requests seen.
    attempts: Mutex<HashMap<(usize, usize), usize>>,
    requests: Mutex<Vec<Value>>,
    hang: Duration,
}

/// A running scripted chat server.
pub struct ChatServer {
    pub addr: SocketAddr,
    shared: Arc<ChatShared>,
    handle: tokio::task::JoinHandle<()>,
}

impl ChatServer {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Every request body received, in order of arrival.
    pub fn requests(&self) -> Vec<Value> {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }
}

impl Drop for ChatServer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

/// Starts a scripted chat server on `addr` (port 0: a free port).
pub async fn serve_chat(script: ChatScript, addr: SocketAddr) -> Result<ChatServer, ReplayError> {
    let listener = crate::bind(addr).await?;
    let addr = listener
        .local_addr()
        .map_err(|source| ReplayError::Bind { addr, source })?;
    let shared = Arc::new(ChatShared {
        script,
        attempts: Mutex::new(HashMap::new()),
        requests: Mutex::new(Vec::new()),
        hang: Duration::from_secs(3600),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/health", get(|| async { "ok" }))
        .with_state(shared.clone());
    let handle = crate::spawn_serve(listener, app);
    Ok(ChatServer {
        addr,
        shared,
        handle,
    })
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": {"message": message, "type": "invalid_request_error"}})),
    )
        .into_response()
}

/// What is wrong with a request's protocol, if anything.
fn violation(body: &Value) -> Option<String> {
    let messages = body["messages"].as_array()?;
    if let Some(tools) = body.get("tools") {
        let ok = tools.as_array().is_some_and(|t| {
            t.len() == 1
                && t[0]["type"] == "function"
                && t[0]["function"]["name"].is_string()
                && t[0]["function"]["parameters"]["properties"]
                    .as_object()
                    .is_some_and(|p| p.len() == 1 && p.values().all(|v| v["type"] == "string"))
        });
        if !ok {
            return Some(format!(
                "`tools` is not one function with one string parameter: {tools}"
            ));
        }
    }
    let mut open: HashSet<String> = HashSet::new();
    for m in messages {
        match m["role"].as_str() {
            Some("assistant") => {
                if let Some(calls) = m["tool_calls"].as_array() {
                    for c in calls {
                        let Some(id) = c["id"].as_str() else {
                            return Some("an assistant tool call has no id".into());
                        };
                        if !c["function"]["arguments"].is_string() {
                            return Some("tool call arguments must be a JSON string".into());
                        }
                        open.insert(id.to_string());
                    }
                }
            }
            Some("tool") => {
                let Some(id) = m["tool_call_id"].as_str() else {
                    return Some("a tool message has no tool_call_id".into());
                };
                if !open.remove(id) {
                    return Some(format!("tool message for unknown or answered call {id:?}"));
                }
                if !m["content"].is_string() {
                    return Some("a tool message's content must be a string".into());
                }
            }
            Some("system") | Some("user") => {}
            other => return Some(format!("unknown role {other:?}")),
        }
    }
    None
}

async fn chat_completions(State(shared): State<Arc<ChatShared>>, body: String) -> Response {
    let Ok(body) = serde_json::from_str::<Value>(&body) else {
        return bad_request("body is not JSON".into());
    };
    if let Ok(mut r) = shared.requests.lock() {
        r.push(body.clone());
    }
    let Some(messages) = body["messages"].as_array() else {
        return bad_request("no messages".into());
    };
    if let Some(v) = violation(&body) {
        return bad_request(v);
    }
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("");
    let seed = body["seed"].as_u64();
    let Some((e, entry)) = shared
        .script
        .entries
        .iter()
        .enumerate()
        .find(|(_, e)| user.contains(&e.needle) && (e.seed.is_none() || e.seed == seed))
    else {
        return bad_request(format!(
            "no scripted conversation for this request (seed {seed:?})"
        ));
    };
    let turn = messages.iter().filter(|m| m["role"] == "assistant").count();
    let Some(t) = entry.turns.get(turn) else {
        return bad_request(format!(
            "the script of {:?} has no turn {turn}",
            entry.needle
        ));
    };
    let attempt = {
        let Ok(mut a) = shared.attempts.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let n = a.entry((e, turn)).or_insert(0);
        *n += 1;
        *n - 1
    };
    if let Some(f) = t.faults.get(attempt) {
        return match f {
            ChatFault::Status(s) => (
                StatusCode::from_u16(*s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                Json(json!({"error": {"message": "scripted failure"}})),
            )
                .into_response(),
            ChatFault::Hang => {
                tokio::time::sleep(shared.hang).await;
                StatusCode::GATEWAY_TIMEOUT.into_response()
            }
            ChatFault::BadJson => (
                StatusCode::OK,
                [("content-type", "application/json")],
                "{\"choices\": [{\"message\": ",
            )
                .into_response(),
            ChatFault::NoChoices => {
                Json(json!({"id": "x", "object": "chat.completion"})).into_response()
            }
        };
    }
    let (message, finish) = match &t.reply {
        ScriptReply::RawMessage(m) => (m.clone(), "stop".to_string()),
        ScriptReply::Message {
            content,
            tool_calls,
            finish,
        } => {
            let mut content = content.clone();
            let mut finish = finish.clone().unwrap_or_else(|| {
                if tool_calls.is_empty() {
                    "stop"
                } else {
                    "tool_calls"
                }
                .to_string()
            });
            // Stop sequences, as a real server applies them.
            if let (Some(text), Some(stops)) = (&content, body["stop"].as_array()) {
                let cut = stops
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .filter_map(|s| text.find(s))
                    .min();
                if let Some(cut) = cut {
                    content = Some(text[..cut].to_string());
                    finish = "stop".into();
                }
            }
            let calls: Vec<Value> = tool_calls
                .iter()
                .map(|c| {
                    let mut v = json!({"type": "function", "function": {"name": c.name, "arguments": c.arguments}});
                    if let Some(id) = &c.id {
                        v["id"] = json!(id);
                    }
                    v
                })
                .collect();
            let mut m = json!({"role": "assistant", "content": content});
            if !calls.is_empty() {
                m["tool_calls"] = json!(calls);
            }
            (m, finish)
        }
    };
    let completion = message["content"]
        .as_str()
        .map(|c| c.len().div_ceil(4))
        .unwrap_or(0)
        + 10 * message["tool_calls"].as_array().map_or(0, Vec::len);
    Json(json!({
        "id": format!("chatcmpl-{e}-{turn}-{attempt}"),
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 100, "completion_tokens": completion, "total_tokens": 100 + completion},
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: Value) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = url.trim_start_matches("http://");
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let b = body.to_string();
        let req = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}", b.len());
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|x| x.1.to_string())
            .unwrap_or_default();
        (status, body)
    }

    #[tokio::test]
    async fn scripted_turns_faults_and_protocol_checks() {
        let script = ChatScript::default().on(
            "apples",
            None,
            vec![
                ScriptTurn {
                    faults: vec![ChatFault::Status(503)],
                    reply: ScriptReply::calls(None, vec![ScriptCall::python("c1", "2+2")]),
                },
                ScriptReply::text("Done.\n```python\nx\n```\nrest").into(),
            ],
        );
        let server = serve_chat(script, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let url = server.url();
        let first = json!({"messages": [{"role": "user", "content": "two apples"}]});
        assert_eq!(post(&url, first.clone()).await.0, 503);
        let (s, b) = post(&url, first).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(v["choices"][0]["message"]["tool_calls"][0]["id"], "c1");
        let call = v["choices"][0]["message"].clone();
        // A tool message answering no call is refused.
        let (s, b) = post(&url, json!({"messages": [{"role": "user", "content": "two apples"}, call, {"role": "tool", "tool_call_id": "zz", "content": "4"}]})).await;
        assert_eq!(s, 400, "{b}");
        let (s, b) = post(&url, json!({"stop": ["\n```\n"], "messages": [{"role": "user", "content": "two apples"}, call, {"role": "tool", "tool_call_id": "c1", "content": "4"}]})).await;
        assert_eq!(s, 200);
        let v: Value = serde_json::from_str(&b).unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], "Done.\n```python\nx");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        let (s, _) = post(
            &url,
            json!({"messages": [{"role": "user", "content": "pears"}]}),
        )
        .await;
        assert_eq!(s, 400);
        assert_eq!(server.requests().len(), 5);
    }
}
