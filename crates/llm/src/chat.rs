//! OpenAI-compatible chat completions: `POST /v1/chat/completions` (OpenAI, vLLM, SGLang,
//! llama.cpp's llama-server), for chat teachers with a code interpreter and for plain prompts
//! (problem interpolation, difficulty judging).
//!
//! A code-interpreter conversation is a [`Transcript`] (`mathcoder_lce::chat`); this module only
//! puts it on the wire in its [`ChatStyle`] and reads the reply. `tools`: the request carries
//! the OpenAI `tools` field with one function ([`TOOL_NAME`], one string parameter
//! [`TOOL_PARAMETER`]); assistant turns go back with their `tool_calls` and outputs as `tool`
//! messages with their `tool_call_id`. `fences`: the request carries stop sequences at the end
//! of a ```` ```python ```` fence; assistant turns go back as the fenced message, outputs as user
//! messages (`mathcoder_lce::chat::output_message`).
//!
//! Transport is the shared [`HttpClient`] (timeouts, retries, concurrency limit). A reply that
//! is valid JSON but not a chat completion (no `choices`, no `message`, a `content` or
//! `tool_calls` of the wrong type) is a [`BackendError::Protocol`] and is retried like one; a
//! well-formed reply whose tool call cannot be run is the caller's to judge
//! ([`ToolCall::code`] says why, as a [`BadToolCall`]).

use mathcoder_lce::chat::{
    fenced_message, output_message, ChatStyle, Transcript, Turn, FENCE_STOPS, TOOL_NAME,
    TOOL_PARAMETER,
};
use serde_json::{json, Value};

use crate::http::{openai_url, HttpClient, HttpConfig};
use crate::template::{ChatTemplate, Message, Role};
use crate::tgi::check_url;
use crate::{Backend, BackendError, FinishReason, GenerateRequest};
use async_trait::async_trait;
use std::sync::Arc;

/// One request: an optional system message, the user message, and (for a code interpreter)
/// the conversation so far and its style.
#[derive(Clone, Debug)]
pub struct ChatRequest<'a> {
    pub system: Option<&'a str>,
    pub user: &'a str,
    /// The turns after the user message.
    pub transcript: &'a Transcript,
    /// `None`: a plain prompt (no tools, no stop sequences).
    pub style: Option<ChatStyle>,
    pub max_tokens: u32,
    pub temperature: f32,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
}

/// Why a finished generation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatFinish {
    Stop,
    Length,
    ToolCalls,
    /// Anything else the server said (`content_filter`, ...), or nothing.
    Other(Option<String>),
}

/// One entry of `tool_calls`, as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub id: Option<String>,
    pub name: Option<String>,
    /// `function.arguments`: a JSON string by the protocol (some servers send the object).
    pub arguments: Value,
}

/// Why a tool call cannot be run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadToolCall {
    #[error("tool call without an id")]
    NoId,
    #[error("call of unknown function {0:?} (the only tool is `python`)")]
    UnknownFunction(String),
    #[error("tool call arguments are not a JSON object: {0}")]
    ArgumentsNotJson(String),
    #[error("tool call arguments have no string `code`: {0}")]
    NoCode(String),
}

impl ToolCall {
    /// The id and the code to run.
    pub fn code(&self) -> Result<(String, String), BadToolCall> {
        let id = self.id.clone().ok_or(BadToolCall::NoId)?;
        let name = self.name.as_deref().unwrap_or("");
        if name != TOOL_NAME {
            return Err(BadToolCall::UnknownFunction(name.to_string()));
        }
        let args = match &self.arguments {
            Value::String(s) => serde_json::from_str::<Value>(s)
                .ok()
                .filter(Value::is_object)
                .ok_or_else(|| BadToolCall::ArgumentsNotJson(clip(s)))?,
            v @ Value::Object(_) => v.clone(),
            v => return Err(BadToolCall::ArgumentsNotJson(clip(&v.to_string()))),
        };
        match args.get(TOOL_PARAMETER).and_then(Value::as_str) {
            Some(code) => Ok((id, code.to_string())),
            None => Err(BadToolCall::NoCode(clip(&args.to_string()))),
        }
    }
}

/// A reply.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatReply {
    /// `message.content` (`null` and absent are empty).
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish: ChatFinish,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    /// Retries it took (transport and malformed replies).
    pub retries: u32,
}

/// A client for one chat endpoint and model.
pub struct ChatClient {
    url: String,
    model: String,
    http: HttpClient,
}

impl ChatClient {
    /// `endpoint` is the base URL (`http://localhost:8000`, with or without `/v1`).
    pub fn new(endpoint: &str, model: &str, http: HttpConfig) -> Result<ChatClient, BackendError> {
        check_url(endpoint)?;
        Ok(ChatClient {
            url: openai_url(endpoint, "chat/completions"),
            model: model.to_string(),
            http: HttpClient::new(http)?,
        })
    }

    pub fn describe(&self) -> String {
        format!("chat {} {}", self.url, self.model)
    }

    /// Sends `req`, retrying transient failures and malformed replies (at most the client's
    /// retries in all).
    pub async fn complete(&self, req: &ChatRequest<'_>) -> Result<ChatReply, BackendError> {
        let body = request_body(&self.model, req);
        let mut retries = 0;
        loop {
            let r = self.http.post_json(&self.url, &body).await?;
            retries += r.retries;
            match parse_reply(&self.url, &r.body) {
                Ok(mut reply) => {
                    reply.retries = retries;
                    return Ok(reply);
                }
                Err(_) if retries < self.http.config().retries => retries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}

/// A chat model: answers a [`ChatRequest`] with a [`ChatReply`]. What a code-interpreter
/// conversation needs, whoever serves the model: an OpenAI-compatible chat server
/// ([`ChatClient`]) or a completion backend writing the conversation through the model's chat
/// template ([`TemplateChat`]: the native engine).
#[async_trait]
pub trait ChatModel: Send + Sync {
    async fn complete(&self, req: &ChatRequest<'_>) -> Result<ChatReply, BackendError>;
    /// A short description (`chat http://host/v1/chat/completions model`).
    fn describe(&self) -> String;
}

#[async_trait]
impl ChatModel for ChatClient {
    async fn complete(&self, req: &ChatRequest<'_>) -> Result<ChatReply, BackendError> {
        ChatClient::complete(self, req).await
    }
    fn describe(&self) -> String {
        ChatClient::describe(self)
    }
}

/// A completion [`Backend`] as a chat model: the conversation is rendered through the model's
/// [`ChatTemplate`] with the generation prompt, and generation stops at the template's end of
/// turn or (`fences`) where a code fence closes. Like a chat server, the reply holds neither
/// stop. Tool calling (`tools`) needs a server that parses calls, so only `fences` and plain
/// prompts are served.
pub struct TemplateChat {
    backend: Arc<dyn Backend>,
    template: ChatTemplate,
    /// The text of a beginning-of-sequence token that the backend adds itself, removed from the
    /// front of a rendering that starts with it (Llama-2's template writes `bos_token`).
    bos_added: Option<String>,
}

impl TemplateChat {
    pub fn new(
        backend: Arc<dyn Backend>,
        template: ChatTemplate,
        bos_added: Option<String>,
    ) -> TemplateChat {
        TemplateChat {
            backend,
            template,
            bos_added,
        }
    }

    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The prompt sent for `req`: its messages rendered, then the generation prompt.
    pub fn prompt(&self, req: &ChatRequest<'_>) -> Result<String, BackendError> {
        if req.style == Some(ChatStyle::Tools) {
            return Err(BackendError::Config(
                "a model run through its chat template has no tool calling: use the `fences` \
                 chat style"
                    .into(),
            ));
        }
        let text = self
            .template
            .render(&plain_messages(req), true)
            .map_err(|e| BackendError::Config(e.to_string()))?;
        Ok(match self.bos_added.as_deref() {
            Some(b) if !b.is_empty() => text.strip_prefix(b).map(str::to_string).unwrap_or(text),
            _ => text,
        })
    }

    /// The stop sequences of a request: the end of turn, and in `fences` the ends of a fence.
    pub fn stops(&self, req: &ChatRequest<'_>) -> Vec<String> {
        let mut stop = vec![self.template.end_of_turn().to_string()];
        if req.style == Some(ChatStyle::Fences) {
            stop.extend(FENCE_STOPS.iter().map(|s| s.to_string()));
        }
        stop
    }
}

#[async_trait]
impl ChatModel for TemplateChat {
    async fn complete(&self, req: &ChatRequest<'_>) -> Result<ChatReply, BackendError> {
        let stop = self.stops(req);
        let g = self
            .backend
            .generate(&GenerateRequest {
                prompt: self.prompt(req)?,
                max_new_tokens: req.max_tokens,
                stop: stop.clone(),
                temperature: req.temperature,
                top_p: req.top_p,
                seed: req.seed,
                truncate: None,
            })
            .await?;
        let mut content = g.text.as_str();
        if g.finish == FinishReason::Stop {
            if let Some(s) = stop.iter().find(|s| content.ends_with(s.as_str())) {
                content = &content[..content.len() - s.len()];
            }
        }
        Ok(ChatReply {
            content: content.to_string(),
            tool_calls: Vec::new(),
            finish: match g.finish {
                FinishReason::Stop | FinishReason::EndOfSequence => ChatFinish::Stop,
                FinishReason::Length => ChatFinish::Length,
            },
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.generated_tokens,
            retries: g.retries,
        })
    }

    fn describe(&self) -> String {
        format!(
            "{} (chat template {})",
            self.backend.describe(),
            self.template.family().name()
        )
    }
}

/// The `tools` field: one function running Python.
pub fn tools_field() -> Value {
    json!([{
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Runs Python code in a stateful Jupyter-like session (variables persist between calls; sympy, numpy and scipy are installed) and returns what it prints, the value of the last expression, or the error.",
            "parameters": {
                "type": "object",
                "properties": {
                    TOOL_PARAMETER: {"type": "string", "description": "The Python code to run."}
                },
                "required": [TOOL_PARAMETER]
            }
        }
    }])
}

/// The messages of a request, the transcript rendered in its style.
pub fn messages(req: &ChatRequest<'_>) -> Vec<Value> {
    if req.style != Some(ChatStyle::Tools) {
        return plain_messages(req)
            .into_iter()
            .map(|m| json!({"role": m.role.as_str(), "content": m.content}))
            .collect();
    }
    let mut m = Vec::with_capacity(req.transcript.turns.len() + 2);
    if let Some(s) = req.system {
        m.push(json!({"role": "system", "content": s}));
    }
    m.push(json!({"role": "user", "content": req.user}));
    for t in &req.transcript.turns {
        match t {
            Turn::Assistant { prose, calls } if !calls.is_empty() => {
                let calls: Vec<Value> = calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {
                                "name": TOOL_NAME,
                                "arguments": json!({TOOL_PARAMETER: c.code}).to_string(),
                            }
                        })
                    })
                    .collect();
                let content = if prose.is_empty() {
                    Value::Null
                } else {
                    json!(prose)
                };
                m.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            }
            Turn::Assistant { prose, .. } => {
                m.push(json!({"role": "assistant", "content": prose}));
            }
            Turn::Output { id, text } => {
                m.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
            }
        }
    }
    m
}

/// The messages of a plain or `fences`-style request as role and text (the one rendering of a
/// fenced conversation, for the wire and for chat templates): assistant turns with code as the
/// fenced message, outputs as user messages ([`output_message`]).
pub fn plain_messages(req: &ChatRequest<'_>) -> Vec<Message> {
    let mut m = Vec::with_capacity(req.transcript.turns.len() + 2);
    if let Some(s) = req.system {
        m.push(Message::new(Role::System, s));
    }
    m.push(Message::new(Role::User, req.user));
    for t in &req.transcript.turns {
        m.push(match t {
            Turn::Assistant { prose, calls } if !calls.is_empty() => {
                let code: Vec<&str> = calls.iter().map(|c| c.code.as_str()).collect();
                Message::new(Role::Assistant, fenced_message(prose, &code.join("\n")))
            }
            Turn::Assistant { prose, .. } => Message::new(Role::Assistant, prose.clone()),
            Turn::Output { text, .. } => Message::new(Role::User, output_message(text)),
        });
    }
    m
}

/// The request body.
pub fn request_body(model: &str, req: &ChatRequest<'_>) -> Value {
    let mut b = json!({
        "model": model,
        "messages": messages(req),
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
        "n": 1,
    });
    if let Some(p) = req.top_p {
        b["top_p"] = json!(p);
    }
    if let Some(s) = req.seed {
        b["seed"] = json!(s);
    }
    match req.style {
        Some(ChatStyle::Tools) => {
            b["tools"] = tools_field();
            b["tool_choice"] = json!("auto");
        }
        Some(ChatStyle::Fences) => b["stop"] = json!(FENCE_STOPS),
        None => {}
    }
    b
}

/// Reads a chat completion.
pub fn parse_reply(url: &str, v: &Value) -> Result<ChatReply, BackendError> {
    let bad = |m: &str| BackendError::Protocol {
        url: url.to_string(),
        message: m.to_string(),
    };
    let choice = v["choices"].get(0).ok_or_else(|| bad("no choices"))?;
    let msg = choice
        .get("message")
        .filter(|m| m.is_object())
        .ok_or_else(|| bad("no choices[0].message"))?;
    let content = match msg.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("choices[0].message.content is not a string")),
    };
    let tool_calls = match msg.get("tool_calls") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(calls)) => calls
            .iter()
            .map(|c| ToolCall {
                id: c["id"].as_str().map(str::to_string),
                name: c["function"]["name"].as_str().map(str::to_string),
                arguments: c["function"]["arguments"].clone(),
            })
            .collect(),
        Some(_) => return Err(bad("choices[0].message.tool_calls is not an array")),
    };
    let finish = match choice["finish_reason"].as_str() {
        Some("stop") => ChatFinish::Stop,
        Some("length") => ChatFinish::Length,
        Some("tool_calls") | Some("function_call") => ChatFinish::ToolCalls,
        other => ChatFinish::Other(other.map(str::to_string)),
    };
    Ok(ChatReply {
        content,
        tool_calls,
        finish,
        prompt_tokens: v["usage"]["prompt_tokens"].as_u64().map(|n| n as u32),
        completion_tokens: v["usage"]["completion_tokens"].as_u64().map(|n| n as u32),
        retries: 0,
    })
}

fn clip(s: &str) -> String {
    let mut k = s.len().min(200);
    while !s.is_char_boundary(k) {
        k -= 1;
    }
    s[..k].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mathcoder_lce::chat::CodeCall;

    fn transcript() -> Transcript {
        Transcript {
            turns: vec![
                Turn::Assistant {
                    prose: "Compute.".into(),
                    calls: vec![CodeCall {
                        id: "c1".into(),
                        code: "1+1".into(),
                    }],
                },
                Turn::Output {
                    id: "c1".into(),
                    text: "2".into(),
                },
            ],
        }
    }

    fn req(t: &Transcript, style: Option<ChatStyle>) -> ChatRequest<'_> {
        ChatRequest {
            system: Some("sys"),
            user: "q",
            transcript: t,
            style,
            max_tokens: 100,
            temperature: 0.0,
            top_p: None,
            seed: Some(3),
        }
    }

    #[test]
    fn requests_in_both_styles() {
        let t = transcript();
        let b = request_body("m", &req(&t, Some(ChatStyle::Tools)));
        assert_eq!(b["tools"][0]["function"]["name"], "python");
        assert_eq!(
            b["tools"][0]["function"]["parameters"]["required"][0],
            "code"
        );
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[2]["tool_calls"][0]["id"], "c1");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"code\":\"1+1\"}"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "2"})
        );
        assert!(b.get("stop").is_none());
        let b = request_body("m", &req(&t, Some(ChatStyle::Fences)));
        assert!(b.get("tools").is_none());
        assert_eq!(b["stop"][0], "\n```\n");
        let m = b["messages"].as_array().unwrap();
        assert_eq!(m[2]["content"], "Compute.\n```python\n1+1\n```");
        assert_eq!(
            m[3],
            json!({"role": "user", "content": "```output\n2\n```"})
        );
        let b = request_body("m", &req(&t, None));
        assert!(b.get("tools").is_none() && b.get("stop").is_none());
    }

    #[test]
    fn replies_and_tool_calls() {
        let v = json!({"choices": [{"message": {"content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "python", "arguments": "{\"code\": \"x=1\"}"}},
            {"id": "b", "type": "function", "function": {"name": "python", "arguments": {"code": "x"}}},
            {"id": "c", "type": "function", "function": {"name": "python", "arguments": "x=1"}},
            {"id": "d", "type": "function", "function": {"name": "bash", "arguments": "{}"}},
            {"type": "function", "function": {"name": "python", "arguments": "{\"code\": \"1\"}"}},
            {"id": "e", "type": "function", "function": {"name": "python", "arguments": "{\"src\": \"1\"}"}}
        ]}, "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 5, "completion_tokens": 7}});
        let r = parse_reply("u", &v).unwrap();
        assert_eq!(r.finish, ChatFinish::ToolCalls);
        assert_eq!(r.completion_tokens, Some(7));
        let codes: Vec<_> = r.tool_calls.iter().map(ToolCall::code).collect();
        assert_eq!(codes[0], Ok(("a".into(), "x=1".into())));
        assert_eq!(codes[1], Ok(("b".into(), "x".into())));
        assert!(matches!(codes[2], Err(BadToolCall::ArgumentsNotJson(_))));
        assert!(matches!(codes[3], Err(BadToolCall::UnknownFunction(_))));
        assert_eq!(codes[4], Err(BadToolCall::NoId));
        assert!(matches!(codes[5], Err(BadToolCall::NoCode(_))));
        for bad in [
            json!({}),
            json!({"choices": []}),
            json!({"choices": [{"finish_reason": "stop"}]}),
            json!({"choices": [{"message": {"content": 5}}]}),
            json!({"choices": [{"message": {"content": "a", "tool_calls": {}}}]}),
        ] {
            assert!(
                matches!(parse_reply("u", &bad), Err(BackendError::Protocol { .. })),
                "{bad}"
            );
        }
    }
}
