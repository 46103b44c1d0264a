//! Hugging Face text-generation-inference: `POST /generate`.
//!
//! TGI removes special tokens from `generated_text`; a block's opening token (`<|code|>`) and its
//! stop token (`<|endofblock|>`) come back only in `details.tokens` with `special: true`. As the
//! authors' client did, they are re-attached.

use async_trait::async_trait;
use serde_json::{json, Value};

use crate::http::{join, HttpClient, HttpConfig};
use crate::{Backend, BackendError, FinishReason, GenerateRequest, Generation};

pub struct Tgi {
    url: String,
    http: HttpClient,
}

impl Tgi {
    /// `endpoint` is the server's base URL (`http://localhost:8080`).
    pub fn new(endpoint: &str, http: HttpConfig) -> Result<Tgi, BackendError> {
        check_url(endpoint)?;
        Ok(Tgi {
            url: join(endpoint, "generate"),
            http: HttpClient::new(http)?,
        })
    }
}

pub(crate) fn check_url(endpoint: &str) -> Result<(), BackendError> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        Ok(())
    } else {
        Err(BackendError::Config(format!(
            "endpoint {endpoint:?} must start with http:// or https://"
        )))
    }
}

/// The request body, as the authors' client sent it.
pub fn request_body(req: &GenerateRequest) -> Value {
    let mut params = json!({
        "max_new_tokens": req.max_new_tokens,
        "stop": req.stop,
        "details": true,
        "do_sample": req.temperature > 0.0,
    });
    if let Some(t) = req.truncate {
        params["truncate"] = json!(t);
    }
    if req.temperature > 0.0 {
        params["temperature"] = json!(req.temperature);
    }
    if let Some(p) = req.top_p {
        params["top_p"] = json!(p);
    }
    if let Some(s) = req.seed {
        params["seed"] = json!(s);
    }
    json!({"inputs": req.prompt, "parameters": params})
}

/// Reads a `/generate` response (an object, or a one-element list as some versions send).
pub fn parse_response(url: &str, v: &Value) -> Result<Generation, BackendError> {
    let v = match v {
        Value::Array(a) if a.len() == 1 => &a[0],
        other => other,
    };
    let bad = |m: &str| BackendError::Protocol {
        url: url.to_string(),
        message: m.to_string(),
    };
    let mut text = v["generated_text"]
        .as_str()
        .ok_or_else(|| bad("no generated_text"))?
        .to_string();
    let details = &v["details"];
    let finish = match details["finish_reason"].as_str() {
        Some("stop_sequence") => FinishReason::Stop,
        Some("length") => FinishReason::Length,
        Some("eos_token") => FinishReason::EndOfSequence,
        Some(other) => return Err(bad(&format!("unknown finish_reason {other:?}"))),
        None => return Err(bad("no details.finish_reason (details must be requested)")),
    };
    if let Some(tokens) = details["tokens"].as_array() {
        let special = |t: &Value| t["special"].as_bool().unwrap_or(false);
        if let Some(first) = tokens.first().filter(|t| special(t)) {
            let s = first["text"].as_str().unwrap_or("");
            if !text.starts_with(s) {
                text.insert_str(0, s);
            }
        }
        if tokens.len() > 1 {
            if let Some(last) = tokens.last().filter(|t| special(t)) {
                let s = last["text"].as_str().unwrap_or("");
                if !text.ends_with(s) {
                    text.push_str(s);
                }
            }
        }
    }
    Ok(Generation {
        text,
        finish,
        prompt_tokens: details["prefill"]
            .as_array()
            .map(|p| p.len() as u32)
            .filter(|n| *n > 0),
        generated_tokens: details["generated_tokens"].as_u64().map(|n| n as u32),
        retries: 0,
        cached_prompt_tokens: None,
        recomputed_prompt_tokens: None,
    })
}

#[async_trait]
impl Backend for Tgi {
    async fn generate(&self, req: &GenerateRequest) -> Result<Generation, BackendError> {
        let r = self.http.post_json(&self.url, &request_body(req)).await?;
        let mut g = parse_response(&self.url, &r.body)?;
        g.retries = r.retries;
        Ok(g)
    }

    fn describe(&self) -> String {
        format!("tgi {}", self.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_tokens_are_reattached() {
        let v = json!({
            "generated_text": "print(1)",
            "details": {"finish_reason": "stop_sequence", "generated_tokens": 4, "tokens": [
                {"id": 32005, "text": "<|code|>", "special": true},
                {"id": 1, "text": "print", "special": false},
                {"id": 2, "text": "(1)", "special": false},
                {"id": 32007, "text": "<|endofblock|>", "special": true}
            ]}
        });
        let g = parse_response("u", &v).unwrap();
        assert_eq!(g.text, "<|code|>print(1)<|endofblock|>");
        assert_eq!(g.finish, FinishReason::Stop);
        assert_eq!(g.generated_tokens, Some(4));
        // A lone end-of-message token.
        let v = json!([{"generated_text": "", "details": {"finish_reason": "stop_sequence", "generated_tokens": 1, "tokens": [{"id": 32003, "text": "<|endofmessage|>", "special": true}]}}]);
        assert_eq!(parse_response("u", &v).unwrap().text, "<|endofmessage|>");
        assert!(matches!(
            parse_response("u", &json!({"oops": 1})),
            Err(BackendError::Protocol { .. })
        ));
    }

    #[test]
    fn body_matches_the_authors_client() {
        let b = request_body(&GenerateRequest::mathcoder("P"));
        assert_eq!(b["inputs"], "P");
        assert_eq!(b["parameters"]["truncate"], 1536);
        assert_eq!(b["parameters"]["max_new_tokens"], 512);
        assert_eq!(b["parameters"]["do_sample"], false);
        assert_eq!(b["parameters"]["details"], true);
        assert!(b["parameters"].get("temperature").is_none());
    }
}
