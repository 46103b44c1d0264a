//! OpenAI-compatible completions: `POST /v1/completions` (vLLM, SGLang, the llama.cpp server,
//! OpenAI).
//!
//! vLLM drops special tokens and the matched stop string from `text` unless asked; the request
//! asks (`skip_special_tokens: false`, `include_stop_str_in_output: true`), and when a server
//! ignores that, the stop string is restored from `stop_reason` (or, without one, inferred), and
//! a missing opening block token is inferred from the text.

use async_trait::async_trait;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::http::{join, HttpClient, HttpConfig};
use crate::tgi::check_url;
use crate::{Backend, BackendError, FinishReason, GenerateRequest, Generation};

const BLOCK_TOKENS: [&str; 3] = ["<|text|>", "<|code|>", "<|execution|>"];

pub struct OpenAi {
    url: String,
    model: String,
    http: HttpClient,
    /// Set when the server rejected the vLLM extensions; they are then no longer sent.
    plain: AtomicBool,
}

impl OpenAi {
    /// `endpoint` is the base URL (`http://localhost:8000`, with or without `/v1`).
    pub fn new(endpoint: &str, model: &str, http: HttpConfig) -> Result<OpenAi, BackendError> {
        check_url(endpoint)?;
        let base = endpoint.trim_end_matches('/');
        let url = if base.ends_with("/v1") {
            join(base, "completions")
        } else {
            join(base, "v1/completions")
        };
        Ok(OpenAi {
            url,
            model: model.to_string(),
            http: HttpClient::new(http)?,
            plain: AtomicBool::new(false),
        })
    }

    /// Whether to send the vLLM/SGLang extensions (on by default; they are dropped automatically
    /// when a server rejects them). Without them the server strips special tokens and stop
    /// strings, and the client restores them.
    pub fn with_extensions(self, on: bool) -> OpenAi {
        self.plain.store(!on, Ordering::Relaxed);
        self
    }
}

/// The request body; `extensions` adds vLLM/SGLang's fields for special tokens, stop strings and
/// prompt truncation.
pub fn request_body(model: &str, req: &GenerateRequest, extensions: bool) -> Value {
    let mut b = json!({
        "model": model,
        "prompt": req.prompt,
        "max_tokens": req.max_new_tokens,
        "temperature": req.temperature,
        "stop": req.stop,
        "n": 1,
    });
    if let Some(p) = req.top_p {
        b["top_p"] = json!(p);
    }
    if let Some(s) = req.seed {
        b["seed"] = json!(s);
    }
    if extensions {
        b["skip_special_tokens"] = json!(false);
        b["spaces_between_special_tokens"] = json!(false);
        b["include_stop_str_in_output"] = json!(true);
        if let Some(t) = req.truncate {
            b["truncate_prompt_tokens"] = json!(t);
        }
    }
    b
}

/// Reads a completions response and restores what a server may have dropped.
pub fn parse_response(
    url: &str,
    v: &Value,
    req: &GenerateRequest,
) -> Result<Generation, BackendError> {
    let bad = |m: &str| BackendError::Protocol {
        url: url.to_string(),
        message: m.to_string(),
    };
    let choice = v["choices"].get(0).ok_or_else(|| bad("no choices"))?;
    let mut text = choice["text"]
        .as_str()
        .ok_or_else(|| bad("no choices[0].text"))?
        .to_string();
    let finish = match choice["finish_reason"].as_str() {
        Some("stop") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("eos") | Some("eos_token") => FinishReason::EndOfSequence,
        Some(other) => return Err(bad(&format!("unknown finish_reason {other:?}"))),
        None => return Err(bad("no finish_reason")),
    };
    // The stop string, when the server left it out.
    if finish == FinishReason::Stop && !req.stop.iter().any(|s| text.ends_with(s.as_str())) {
        let named = choice["stop_reason"]
            .as_str()
            .filter(|s| req.stop.iter().any(|x| x == s));
        let restored = match named {
            Some(s) => s.to_string(),
            // Without a reason: an empty round is the end of the message, anything else a block.
            None if text.trim().is_empty() && req.stop.iter().any(|s| s == "<|endofmessage|>") => {
                "<|endofmessage|>".into()
            }
            None => req
                .stop
                .iter()
                .find(|s| *s == "<|endofblock|>")
                .or(req.stop.first())
                .cloned()
                .unwrap_or_default(),
        };
        text.push_str(&restored);
    }
    // The opening block token, when the server dropped special tokens.
    let ends_message = text.trim() == "<|endofmessage|>";
    if !ends_message
        && !text.is_empty()
        && !BLOCK_TOKENS.iter().any(|t| text.starts_with(t))
        && req.stop.iter().any(|s| s == "<|endofblock|>")
    {
        let token = if looks_like_code(&text) {
            "<|code|>"
        } else {
            "<|text|>"
        };
        text.insert_str(0, token);
    }
    Ok(Generation {
        text,
        finish,
        prompt_tokens: v["usage"]["prompt_tokens"].as_u64().map(|n| n as u32),
        generated_tokens: v["usage"]["completion_tokens"].as_u64().map(|n| n as u32),
        retries: 0,
        cached_prompt_tokens: None,
        recomputed_prompt_tokens: None,
    })
}

/// A fallback for servers that strip special tokens: is this block Python rather than prose?
pub fn looks_like_code(text: &str) -> bool {
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    // C preprocessor lines and LaTeX are prose (or degenerate output), not Python.
    if first.starts_with("#include") || first.starts_with("#define") {
        return false;
    }
    let starts = [
        "import ", "from ", "def ", "for ", "while ", "if ", "print(", "return ", "class ", "#",
        "try:", "with ",
    ];
    if starts.iter().any(|s| first.starts_with(s)) {
        return true;
    }
    // `name = expression` (or `a, b = ...`, `x[i] += ...`) as the first line, where the
    // expression has no dollar amounts, LaTeX or Java-style blocks.
    if let Some((lhs, rhs)) = first.split_once('=') {
        if rhs.contains('$') || rhs.contains('\\') || rhs.contains("{{") || rhs.contains("new ") {
            return false;
        }
        let lhs = lhs.trim_end_matches(['+', '-', '*', '/']).trim();
        let identifier = |p: &str| {
            let p = p.trim();
            let name = p.split('[').next().unwrap_or("");
            !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '.')
        };
        return !lhs.is_empty() && lhs.split(',').all(identifier);
    }
    false
}

#[async_trait]
impl Backend for OpenAi {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        let ext = !self.plain.load(Ordering::Relaxed);
        let r = match self
            .http
            .post_json(&self.url, &request_body(&self.model, req, ext))
            .await
        {
            // OpenAI itself rejects unknown parameters: fall back to the plain request once.
            Err(BackendError::Rejected {
                status: 400, body, ..
            }) if ext
                && (body.contains("skip_special_tokens")
                    || body.contains("include_stop_str_in_output")
                    || body.contains("truncate_prompt_tokens")
                    || body.contains("Unrecognized")) =>
            {
                self.plain.store(true, Ordering::Relaxed);
                self.http
                    .post_json(&self.url, &request_body(&self.model, req, false))
                    .await?
            }
            other => other?,
        };
        let mut g = parse_response(&self.url, &r.body, req)?;
        g.retries = r.retries;
        Ok(g)
    }

    fn describe(&self) -> String {
        format!("openai {} (model {})", self.url, self.model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> GenerateRequest {
        GenerateRequest::mathcoder("p")
    }

    #[test]
    fn full_text_is_kept() {
        let v = json!({"choices": [{"text": "<|code|>x = 1\nx<|endofblock|>", "finish_reason": "stop", "stop_reason": "<|endofblock|>"}], "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let g = parse_response("u", &v, &req()).unwrap();
        assert_eq!(g.text, "<|code|>x = 1\nx<|endofblock|>");
        assert_eq!(g.prompt_tokens, Some(10));
    }

    #[test]
    fn dropped_stop_string_and_specials_are_restored() {
        let v = json!({"choices": [{"text": "x = 1\nx", "finish_reason": "stop", "stop_reason": "<|endofblock|>"}]});
        assert_eq!(
            parse_response("u", &v, &req()).unwrap().text,
            "<|code|>x = 1\nx<|endofblock|>"
        );
        let v = json!({"choices": [{"text": "The answer is 5.", "finish_reason": "stop", "stop_reason": null}]});
        assert_eq!(
            parse_response("u", &v, &req()).unwrap().text,
            "<|text|>The answer is 5.<|endofblock|>"
        );
        let v = json!({"choices": [{"text": "", "finish_reason": "stop", "stop_reason": 32003}]});
        assert_eq!(
            parse_response("u", &v, &req()).unwrap().text,
            "<|endofmessage|>"
        );
        let v = json!({"choices": [{"text": "<|text|>a", "finish_reason": "length"}]});
        let g = parse_response("u", &v, &req()).unwrap();
        assert_eq!(
            (g.text.as_str(), g.finish),
            ("<|text|>a", FinishReason::Length)
        );
    }

    #[test]
    fn code_detection() {
        assert!(looks_like_code("from sympy import *\nsolve(x)"));
        assert!(looks_like_code("total = 5 * 3\ntotal"));
        assert!(looks_like_code("# compute\nx"));
        assert!(!looks_like_code("Let's compute the total cost."));
        assert!(!looks_like_code("The value of x = 5 is right."));
        // Degenerate text blocks seen in released outputs.
        assert!(!looks_like_code(
            "peanuts = $2.40\n- Price of cashews = $6.00"
        ));
        assert!(!looks_like_code("y = 60 \\\\\n0.4x + 0.55y = 60"));
        assert!(!looks_like_code("\nx = 105 - \\frac{y}{105}\n\\]"));
        assert!(!looks_like_code("#include \"../common/util.h\"\n"));
        assert!(!looks_like_code("PES = new ArrayList<NumberType>() {{\n"));
        assert!(looks_like_code("price = 2.40\nprice * 3"));
    }

    #[test]
    fn extensions_only_when_wanted() {
        let b = request_body("m", &req(), true);
        assert_eq!(b["skip_special_tokens"], false);
        assert_eq!(b["include_stop_str_in_output"], true);
        assert_eq!(b["truncate_prompt_tokens"], 1536);
        let p = request_body("m", &req(), false);
        assert!(p.get("skip_special_tokens").is_none());
    }
}
