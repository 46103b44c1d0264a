//! OpenAI-compatible completions: `POST /v1/completions` (vLLM, SGLang, the llama.cpp server,
//! OpenAI).
//!
//! vLLM drops special tokens and the matched stop string from `text` unless asked; the request
//! asks (`skip_special_tokens: false`, `include_stop_str_in_output: true`), and when a server
//! ignores that, the stop string is restored from `stop_reason` (or, without one, inferred), and
//! a missing opening block token is inferred from the text.
//!
//! A server that ignores those fields *and* cannot stop at a special token it does not render
//! (llama.cpp's `llama-server` without `--special`) is reported as
//! [`BackendError::SpecialTokensDropped`] instead of being patched up: see
//! [`drops_special_tokens`].

use async_trait::async_trait;
use mathcoder_lce::SpecialToken;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::http::{openai_url, HttpClient, HttpConfig};
use crate::tgi::check_url;
use crate::{Backend, BackendError, FinishReason, GenerateRequest, Generation};

const BLOCK_TOKENS: [&str; 3] = [
    SpecialToken::Text.as_str(),
    SpecialToken::Code.as_str(),
    SpecialToken::Execution.as_str(),
];
const END_OF_MESSAGE: &str = SpecialToken::EndOfMessage.as_str();
const END_OF_BLOCK: &str = SpecialToken::EndOfBlock.as_str();

pub struct OpenAi {
    url: String,
    model: String,
    http: HttpClient,
    /// Set when the server rejected the vLLM extensions; they are then no longer sent.
    plain: AtomicBool,
    /// Set once a response showed that the server stops at our stop strings (see
    /// [`drops_special_tokens`]).
    stops_seen: AtomicBool,
}

impl OpenAi {
    /// `endpoint` is the base URL (`http://localhost:8000`, with or without `/v1`).
    pub fn new(endpoint: &str, model: &str, http: HttpConfig) -> Result<OpenAi, BackendError> {
        check_url(endpoint)?;
        Ok(OpenAi {
            url: openai_url(endpoint, "completions"),
            model: model.to_string(),
            http: HttpClient::new(http)?,
            plain: AtomicBool::new(false),
            stops_seen: AtomicBool::new(false),
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
            None if text.trim().is_empty() && req.stop.iter().any(|s| s == END_OF_MESSAGE) => {
                END_OF_MESSAGE.into()
            }
            None => req
                .stop
                .iter()
                .find(|s| *s == END_OF_BLOCK)
                .or(req.stop.first())
                .cloned()
                .unwrap_or_default(),
        };
        text.push_str(&restored);
    }
    // The opening block token, when the server dropped special tokens.
    let ends_message = text.trim() == END_OF_MESSAGE;
    if !ends_message
        && !text.is_empty()
        && !BLOCK_TOKENS.iter().any(|t| text.starts_with(t))
        && req.stop.iter().any(|s| s == END_OF_BLOCK)
    {
        let token = if looks_like_code(&text) {
            SpecialToken::Code.as_str()
        } else {
            SpecialToken::Text.as_str()
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

/// Whether a completion shows a server that drops MathCoder's special tokens although the
/// request asked for them, and therefore never stopped at `<|endofblock|>`. Returns where the
/// generation ended instead (`max_tokens` or `the end of the sequence`).
///
/// Only meaningful for a request sent **with** the extensions (`skip_special_tokens: false`,
/// `include_stop_str_in_output: true`) that the server accepted. It is reported when all hold:
///
/// 1. the request is a MathCoder round that starts a block: `<|endofblock|>` is one of its stop
///    strings and the prompt ends with `<|assistant|>` or `<|endofblock|>`. There the model's
///    first token is always a special token (`<|text|>`, `<|code|>` or `<|endofmessage|>`), so
///    a server that honours `skip_special_tokens: false` (vLLM, SGLang, llama-server with
///    `--special`) returns text that starts with one. (A round that continues a block cut off
///    by `max_tokens` starts with plain text and is never judged.)
/// 2. the returned text is not blank and contains none of the eight special tokens: the server
///    renders none, so `<|endofblock|>` cannot appear in its text, and a server that matches
///    stop strings on its text (llama.cpp does) cannot stop there;
/// 3. the generation did not end at a stop string: `finish_reason` is `length` (it ran to
///    `max_tokens`), or `stop` with no `stop_reason` at all (llama.cpp reports none: that is the
///    model's end of sequence after it wrote the rest of the solution as one stream; vLLM names
///    the stop string or token that fired).
///
/// A legitimate length cut-off is therefore never reported on a server that renders special
/// tokens (its text starts with the block's token), nor on one that strips them but says which
/// stop fired. As a last guard the client remembers a server that has once stopped at one of our
/// stop strings ([`stop_fired`]) and no longer reports this afterwards: a token-less `length`
/// round from it is a long block cut off. Without the extensions (a server that rejected them,
/// or [`OpenAi::with_extensions`]`(false)`) nothing is reported: token-less text is expected
/// then, and the tokens are restored.
pub fn drops_special_tokens(v: &Value, req: &GenerateRequest) -> Option<&'static str> {
    let starts_block = req.prompt.ends_with(SpecialToken::Assistant.as_str())
        || req.prompt.ends_with(END_OF_BLOCK);
    if !starts_block || !req.stop.iter().any(|s| s == END_OF_BLOCK) {
        return None;
    }
    let choice = v["choices"].get(0)?;
    let text = choice["text"].as_str()?;
    if text.trim().is_empty() || SpecialToken::ALL.iter().any(|t| text.contains(t.as_str())) {
        return None;
    }
    match choice["finish_reason"].as_str()? {
        "length" => Some("max_tokens"),
        "stop" if choice["stop_reason"].is_null() => Some("the end of the sequence"),
        _ => None,
    }
}

/// Whether a completion stopped at one of the request's stop strings, by the server's own
/// account (`stop_reason` names it) or in its text (the text ends with it).
pub fn stop_fired(v: &Value, req: &GenerateRequest) -> bool {
    let choice = &v["choices"][0];
    if choice["finish_reason"].as_str() != Some("stop") {
        return false;
    }
    let text = choice["text"].as_str().unwrap_or("");
    req.stop
        .iter()
        .filter(|s| !s.is_empty())
        .any(|s| choice["stop_reason"].as_str() == Some(s.as_str()) || text.ends_with(s.as_str()))
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
        let mut ext = !self.plain.load(Ordering::Relaxed);
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
                ext = false;
                self.http
                    .post_json(&self.url, &request_body(&self.model, req, false))
                    .await?
            }
            other => other?,
        };
        if stop_fired(&r.body, req) {
            self.stops_seen.store(true, Ordering::Relaxed);
        } else if ext && !self.stops_seen.load(Ordering::Relaxed) {
            if let Some(until) = drops_special_tokens(&r.body, req) {
                return Err(BackendError::SpecialTokensDropped {
                    url: self.url.clone(),
                    until: until.to_string(),
                });
            }
        }
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
    fn dropped_special_tokens_are_recognised_only_where_a_token_must_appear() {
        let at_block = GenerateRequest::mathcoder("...<|assistant|>");
        let cut = |text: &str, finish: &str| json!({"choices": [{"text": text, "finish_reason": finish}]});
        // llama-server without --special: tokens dropped, the stop never fires.
        assert_eq!(
            drops_special_tokens(
                &cut("Let's compute.\nx = 1\nx\n1\nSo 1.", "length"),
                &at_block
            ),
            Some("max_tokens")
        );
        assert_eq!(
            drops_special_tokens(&cut("Let's compute. So 1.", "stop"), &at_block),
            Some("the end of the sequence")
        );
        // A server that renders special tokens: a length cut-off starts with the block token.
        assert_eq!(
            drops_special_tokens(&cut("<|text|>a long block", "length"), &at_block),
            None
        );
        // A server that strips tokens but names the stop that fired (vLLM).
        let v = json!({"choices": [{"text": "x = 1", "finish_reason": "stop", "stop_reason": "<|endofblock|>"}]});
        assert_eq!(drops_special_tokens(&v, &at_block), None);
        assert!(stop_fired(&v, &at_block));
        let v =
            json!({"choices": [{"text": "x = 1", "finish_reason": "stop", "stop_reason": 32007}]});
        assert_eq!(drops_special_tokens(&v, &at_block), None);
        // An empty round (the end of the message, stripped).
        assert_eq!(drops_special_tokens(&cut("", "stop"), &at_block), None);
        // A round that continues a block cut off by max_tokens starts with plain text.
        let mid_block = GenerateRequest::mathcoder("...<|assistant|><|text|>The answer");
        assert_eq!(
            drops_special_tokens(&cut(" is long", "length"), &mid_block),
            None
        );
        // Not a MathCoder round.
        let mut other = at_block.clone();
        other.stop = vec!["\n\n".into()];
        assert_eq!(drops_special_tokens(&cut("text", "length"), &other), None);
        assert!(!stop_fired(&cut("text", "length"), &at_block));
        assert!(stop_fired(
            &cut("<|code|>x<|endofblock|>", "stop"),
            &at_block
        ));
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
