//! Turning a session's reply into the text the model sees.

use regex::Regex;
use std::sync::OnceLock;

use crate::protocol::RawReply;

/// The message in [`timeout_text`] (what tells a timed-out execution apart).
pub const TIMEOUT_MESSAGE: &str = "Timeout waiting for reply";

/// What MathCoder's executor gave the model when a reply took longer than 6 s (not stripped).
pub fn timeout_text() -> String {
    format!(
        "{} {TIMEOUT_MESSAGE}{}Traceback (most recent call last) ",
        "-".repeat(75),
        " ".repeat(32)
    )
}

/// The same shape for a session process that died, with the reason in place of the exception
/// text.
pub fn crash_text(reason: &str) -> String {
    format!(
        "{} {reason}{}Traceback (most recent call last) ",
        "-".repeat(75),
        " ".repeat(32)
    )
}

fn authors_ansi() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    // The authors' pattern: only sequences with at most two numeric parameters.
    R.get_or_init(|| Regex::new(r"\x1B\[([0-9]{1,2}(;[0-9]{1,2})?)?[mGK]").expect("valid regex"))
}

fn all_ansi() -> &'static Regex {
    static R: OnceLock<Regex> = OnceLock::new();
    R.get_or_init(|| Regex::new(r"\x1B\[[0-9;?]*[A-Za-z]").expect("valid regex"))
}

/// Marker appended when output was cut.
pub fn truncation_marker(dropped: u64) -> String {
    format!("\n[... output truncated: {dropped} characters not shown]")
}

/// MathCoder's collection rule: stdout, then stderr, then the displayed value, then the
/// traceback parts joined with single spaces; empty -> `<empty_execution>`; otherwise ANSI codes
/// removed with the authors' (partial) regex and the result stripped.
pub fn mathcoder(r: &RawReply) -> String {
    let mut s = String::with_capacity(r.stdout.len() + r.stderr.len() + 64);
    s.push_str(&r.stdout);
    s.push_str(&r.stderr);
    if let Some(v) = &r.result {
        s.push_str(v);
    }
    if let Some(e) = &r.error {
        s.push_str(&e.traceback.join(" "));
    }
    if s.is_empty() {
        return "<empty_execution>".into();
    }
    let mut out = authors_ansi().replace_all(&s, "").trim().to_string();
    if r.dropped > 0 {
        out.push_str(&truncation_marker(r.dropped));
    }
    out
}

/// A clean rendering for new models: every ANSI sequence removed, traceback lines joined with
/// newlines.
pub fn clean(r: &RawReply) -> String {
    let mut s = String::new();
    s.push_str(&r.stdout);
    s.push_str(&r.stderr);
    if let Some(v) = &r.result {
        s.push_str(v);
    }
    if let Some(e) = &r.error {
        s.push_str(&e.traceback.join("\n"));
    }
    let out = all_ansi().replace_all(&s, "").trim().to_string();
    if out.is_empty() {
        "<empty_execution>".into()
    } else {
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::RawError;

    fn reply() -> RawReply {
        RawReply {
            count: 1,
            stdout: String::new(),
            stderr: String::new(),
            result: None,
            error: None,
            dropped: 0,
            elapsed: 0.0,
            interrupted: false,
            threads: 0,
        }
    }

    #[test]
    fn collection_rule() {
        let mut r = reply();
        assert_eq!(mathcoder(&r), "<empty_execution>");
        r.stdout = "\n".into();
        // The emptiness check comes before stripping (`print()` shows nothing, not the marker).
        assert_eq!(mathcoder(&r), "");
        r.stdout = "a".into();
        r.result = Some("5".into());
        assert_eq!(mathcoder(&r), "a5");
        r.result = None;
        r.error = Some(RawError {
            ename: "ZeroDivisionError".into(),
            evalue: "division by zero".into(),
            traceback: vec![
                "\x1b[0;31m---\x1b[0m".into(),
                "\x1b[38;5;241;43m1\x1b[39;49m/0".into(),
            ],
        });
        // The authors' regex leaves 256-colour codes in place.
        assert_eq!(mathcoder(&r), "a--- \x1b[38;5;241;43m1/0");
        assert_eq!(clean(&r), "a---\n1/0");
        assert!(timeout_text().starts_with(&"-".repeat(75)));
        assert!(timeout_text().ends_with("Traceback (most recent call last) "));
    }
}
