//! JSON over HTTP with timeouts, bounded retries and a concurrency limit.

use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Semaphore;

use crate::BackendError;

/// How the client talks to a server.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Whole-request timeout (a hanging server is a transient failure).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries after the first attempt for transient failures (connection errors, timeouts,
    /// 5xx, 429, malformed responses). A connection refused before the endpoint has ever
    /// answered is not retried (see [`BackendError::Unreachable`]).
    pub retries: u32,
    /// First backoff; doubled after each retry (with jitter), capped at 30 s.
    pub backoff: Duration,
    /// Requests in flight at once.
    pub max_concurrency: usize,
    /// Sent as `Authorization: Bearer ...`.
    pub api_key: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            retries: 4,
            backoff: Duration::from_millis(500),
            max_concurrency: 256,
            api_key: None,
        }
    }
}

/// A pooled HTTP client for one endpoint.
pub struct HttpClient {
    client: reqwest::Client,
    config: HttpConfig,
    permits: Semaphore,
    /// Set once the endpoint has sent any HTTP response (even an error status): from then on a
    /// refused connection is a server that went away, and is retried.
    answered: AtomicBool,
}

/// A successful response and how many retries it took.
pub struct Response {
    pub body: Value,
    pub retries: u32,
}

impl HttpClient {
    pub fn new(config: HttpConfig) -> Result<HttpClient, BackendError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .pool_max_idle_per_host(config.max_concurrency.max(1))
            .build()
            .map_err(|e| BackendError::Config(format!("building the HTTP client: {e}")))?;
        Ok(HttpClient {
            client,
            permits: Semaphore::new(config.max_concurrency.max(1)),
            config,
            answered: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// Whether the endpoint has answered at least once.
    pub fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// POSTs `body` to `url` and parses a JSON reply, retrying transient failures.
    pub async fn post_json(&self, url: &str, body: &Value) -> Result<Response, BackendError> {
        let mut attempt = 0u32;
        loop {
            let result = {
                let _permit = self
                    .permits
                    .acquire()
                    .await
                    .map_err(|_| BackendError::Config("client closed".into()))?;
                self.once(url, body).await
            };
            match result {
                Ok(v) => {
                    return Ok(Response {
                        body: v,
                        retries: attempt,
                    })
                }
                Err(e) if e.is_transient() && attempt < self.config.retries => {
                    let delay = backoff(self.config.backoff, attempt);
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn once(&self, url: &str, body: &Value) -> Result<Value, BackendError> {
        let mut req = self.client.post(url).json(body);
        if let Some(k) = &self.config.api_key {
            req = req.bearer_auth(k);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(classify(url, e, self.config.timeout, !self.has_answered())),
        };
        self.answered.store(true, Ordering::Relaxed);
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| classify(url, e, self.config.timeout, false))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| BackendError::Protocol {
                url: url.to_string(),
                message: format!("invalid JSON ({e}): {}", clip(&text)),
            });
        }
        let code = status.as_u16();
        if status.is_server_error() || code == 429 || code == 408 {
            Err(BackendError::Server {
                url: url.to_string(),
                status: code,
                body: clip(&text),
            })
        } else {
            Err(BackendError::Rejected {
                url: url.to_string(),
                status: code,
                body: clip(&text),
            })
        }
    }
}

/// Turns a transport error into a [`BackendError`]. `first_contact`: the endpoint has never
/// answered, so a refused connection means nothing listens there.
fn classify(url: &str, e: reqwest::Error, timeout: Duration, first_contact: bool) -> BackendError {
    if e.is_timeout() {
        return BackendError::Timeout {
            url: url.to_string(),
            seconds: timeout.as_secs_f64(),
        };
    }
    let e = e.without_url();
    if e.is_decode() || e.is_body() {
        return BackendError::Protocol {
            url: url.to_string(),
            message: chain(&e),
        };
    }
    if first_contact && refused(&e) {
        return BackendError::Unreachable {
            url: url.to_string(),
            message: "connection refused".into(),
            first_contact: true,
        };
    }
    BackendError::Unreachable {
        url: url.to_string(),
        message: chain(&e),
        first_contact: false,
    }
}

/// Whether the connection was refused (somewhere in the error's causes).
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        cur = c.source();
    }
    false
}

/// An error and its causes as one line, each text once (some errors repeat their cause).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let s = c.to_string();
        if !msg.contains(&s) {
            msg = format!("{msg}: {s}");
        }
        cur = c.source();
    }
    msg
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(10));
    let capped = exp.min(Duration::from_secs(30));
    // +-25% jitter, so that many clients do not retry in lockstep.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let jitter = (nanos % 500) as f64 / 1000.0 - 0.25;
    capped.mul_f64(1.0 + jitter)
}

fn clip(s: &str) -> String {
    let s = s.trim();
    if s.len() <= 500 {
        return s.to_string();
    }
    let mut k = 500;
    while !s.is_char_boundary(k) {
        k -= 1;
    }
    format!("{}...", &s[..k])
}

/// Joins a base URL and a path without doubling slashes.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// An OpenAI-compatible route (`completions`, `chat/completions`) under a base URL given with or
/// without its `/v1`.
pub fn openai_url(endpoint: &str, route: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1") {
        join(base, route)
    } else {
        join(base, &format!("v1/{route}"))
    }
}
