//! Finding the answer in a model's response (or in a reference solution).
//!
//! Order: the last `\boxed{}` (adjacent boxes joined; a final-answer phrase after it wins),
//! GSM8K's `####`, an answer phrase ("the final answer is ..."), the whole text when it is a
//! bare answer (MathCoder's final answer block, benchmark golds), and in prose the later of the
//! last math span and the last number, only when the prose is clean (no traceback, no apology).

use serde::Serialize;

/// How the answer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExtractRule {
    /// The last `\boxed{...}` / `\fbox{...}`.
    Boxed,
    /// Several adjacent boxes, joined as a list.
    BoxedJoined,
    /// GSM8K's `#### answer`.
    Hashes,
    /// After "the (final) answer is", "answer:", "the correct ... is".
    AnswerPhrase,
    /// The whole text is the answer (MathCoder's final answer block, a benchmark gold).
    BareAnswer,
    /// The last math span (dollar or bracket delimited) of prose.
    MathSpan,
    /// The last number of clean prose.
    LastNumber,
}

impl ExtractRule {
    pub fn as_str(self) -> &'static str {
        match self {
            ExtractRule::Boxed => "boxed",
            ExtractRule::BoxedJoined => "boxed_joined",
            ExtractRule::Hashes => "hashes",
            ExtractRule::AnswerPhrase => "answer_phrase",
            ExtractRule::BareAnswer => "bare_answer",
            ExtractRule::MathSpan => "math_span",
            ExtractRule::LastNumber => "last_number",
        }
    }
}

/// An extracted answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Extracted {
    pub answer: String,
    pub rule: ExtractRule,
    /// Every boxed answer in order (for datasets whose gold is the first of several).
    pub boxes: Vec<String>,
}

/// Why no answer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoAnswer {
    Empty,
    /// The text is a traceback or error output.
    Traceback,
    /// Prose with no answer phrase, box or clean final value.
    NoAnswerInProse,
}

impl NoAnswer {
    pub fn as_str(self) -> &'static str {
        match self {
            NoAnswer::Empty => "empty response",
            NoAnswer::Traceback => "response is a traceback/error output",
            NoAnswer::NoAnswerInProse => "no answer found in prose",
        }
    }
}

/// Longest text examined (a response is cut to its last this-many bytes).
const MAX_SCAN: usize = 64 * 1024;

/// Extracts the answer from `text`.
pub fn extract(text: &str) -> Result<Extracted, NoAnswer> {
    let mut text = text.trim();
    if text.len() > MAX_SCAN {
        let mut cut = text.len() - MAX_SCAN;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text = &text[cut..];
    }
    if text.is_empty() {
        return Err(NoAnswer::Empty);
    }
    let plain = |answer: String, rule| Extracted {
        answer,
        rule,
        boxes: Vec::new(),
    };
    let phrase = answer_phrase(text);
    let boxes = find_boxes(text);
    if let Some(last) = boxes.last() {
        // A final-answer phrase after the last box restates the answer.
        if let Some((at, a)) = &phrase {
            if *at > last.end {
                return Ok(plain(a.clone(), ExtractRule::AnswerPhrase));
            }
        }
        // Join the run of adjacent boxes that ends with the last one.
        let mut first = boxes.len() - 1;
        while first > 0
            && is_separator_between(
                &text[boxes[first - 1].end.min(boxes[first].start)..boxes[first].start],
            )
        {
            first -= 1;
        }
        let group = &boxes[first..];
        let all: Vec<String> = boxes.iter().map(|b| b.content.trim().to_string()).collect();
        let (answer, rule) = if group.len() > 1 {
            (
                group
                    .iter()
                    .map(|b| b.content.trim())
                    .collect::<Vec<_>>()
                    .join(", "),
                ExtractRule::BoxedJoined,
            )
        } else {
            (last.content.trim().to_string(), ExtractRule::Boxed)
        };
        return Ok(Extracted {
            answer,
            rule,
            boxes: all,
        });
    }
    if let Some(p) = text.rfind("####") {
        let rest = text[p + 4..].trim();
        let line = rest.lines().next().unwrap_or("").trim();
        if !line.is_empty() {
            return Ok(plain(line.to_string(), ExtractRule::Hashes));
        }
    }
    if is_traceback(text) {
        return Err(NoAnswer::Traceback);
    }
    if let Some((_, a)) = phrase {
        return Ok(plain(a, ExtractRule::AnswerPhrase));
    }
    let spans = math_spans(text);
    if spans.len() >= 2 && only_separators_outside(text, &spans) {
        // `$1$ and $2$ and $3$`.
        let joined = spans
            .iter()
            .map(|(s, e)| text[*s..*e].trim())
            .collect::<Vec<_>>()
            .join(", ");
        return Ok(plain(joined, ExtractRule::MathSpan));
    }
    if is_bare_answer(text) && !words_outside_spans(text, &spans) {
        return Ok(plain(
            strip_delimiters(text).to_string(),
            ExtractRule::BareAnswer,
        ));
    }
    if is_unreliable_prose(text) {
        // Only a concluding statement counts: "... the pair that solves it is $(7, 6)$."
        if let Some(a) = concluding_statement(text, &spans) {
            return Ok(plain(a, ExtractRule::MathSpan));
        }
        return Err(NoAnswer::NoAnswerInProse);
    }
    if let Some(a) = last_of_span_or_number(text, &spans) {
        return Ok(a);
    }
    Err(NoAnswer::NoAnswerInProse)
}

/// In prose: the later of the last math span and the last number outside spans.
fn last_of_span_or_number(text: &str, spans: &[(usize, usize)]) -> Option<Extracted> {
    let span = spans
        .iter()
        .rev()
        .find(|(s, e)| text[*s..*e].chars().any(|c| c.is_ascii_alphanumeric()))
        .copied();
    let number = last_number_outside(text, spans);
    let pick_span = match (span, &number) {
        (Some((s, _)), Some((ns, _))) => s > *ns,
        (Some(_), None) => true,
        (None, Some(_)) => false,
        (None, None) => return None,
    };
    Some(match (pick_span, span, number) {
        (true, Some((s, e)), _) => Extracted {
            answer: text[s..e].trim().to_string(),
            rule: ExtractRule::MathSpan,
            boxes: Vec::new(),
        },
        (_, _, Some((_, n))) => Extracted {
            answer: n,
            rule: ExtractRule::LastNumber,
            boxes: Vec::new(),
        },
        _ => return None,
    })
}

/// Is everything outside the spans a separator (`and`, `or`, commas, spaces)?
fn only_separators_outside(text: &str, spans: &[(usize, usize)]) -> bool {
    let mut pos = 0;
    for (s, e) in spans {
        let gap = text[pos.min(*s)..*s]
            .replace('$', " ")
            .replace("\\(", " ")
            .replace("\\)", " ");
        if !is_pure_separator(&gap) {
            return false;
        }
        pos = *e;
    }
    let tail = text[pos.min(text.len())..]
        .replace(['$', '.'], " ")
        .replace("\\)", " ");
    is_pure_separator(&tail)
}

/// The math span of a final sentence "... is $X$." (chat-template junk after it ignored).
fn concluding_statement(text: &str, spans: &[(usize, usize)]) -> Option<String> {
    let &(s, e) = spans.last()?;
    let after = text[e..].trim_start_matches(['$', ')', ']', '\\']);
    let after = after.split("<|").next().unwrap_or("").trim();
    if !(after.is_empty() || after == ".") {
        return None;
    }
    let before = text[..s].trim_end_matches(['$', '(', '[', '\\']).trim_end();
    before
        .ends_with(" is")
        .then(|| text[s..e].trim().to_string())
}

/// Does the text have words outside its math spans (`We find that $x<3$`)?
fn words_outside_spans(text: &str, spans: &[(usize, usize)]) -> bool {
    if spans.is_empty() {
        return false;
    }
    let mut outside = String::new();
    let mut pos = 0;
    for (s, e) in spans {
        if *s >= pos {
            outside.push_str(&text[pos..*s]);
            outside.push(' ');
        }
        pos = (*e).max(pos);
    }
    outside.push_str(&text[pos.min(text.len())..]);
    outside
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|w| w.len() >= 2)
}

/// A boxed span: the byte range of the whole `\boxed{...}` and its content.
#[derive(Debug)]
pub struct BoxSpan<'a> {
    pub start: usize,
    pub end: usize,
    pub content: &'a str,
}

/// Finds every `\boxed{...}` / `\fbox{...}` (brace matched; a missing closing brace runs to
/// the end; `\boxed 5` takes the next word). A text that begins inside a box (`5}\) and ...`,
/// as MathCoder's final answer block sometimes does) yields that leading box too.
pub fn find_boxes(text: &str) -> Vec<BoxSpan<'_>> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    // A leading unmatched `}` before any box: the text starts inside a box.
    if let Some(k) = first_unmatched_close(text) {
        let before = &text[..k];
        if !before.contains("\\boxed") && !before.contains("\\fbox") && !before.trim().is_empty() {
            out.push(BoxSpan {
                start: 0,
                end: k + 1,
                content: before,
            });
        }
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let cmd_len = if rest.starts_with("\\boxed") {
            6
        } else if rest.starts_with("\\fbox") {
            5
        } else {
            i += 1;
            continue;
        };
        let start = i;
        let mut j = i + cmd_len;
        if b.get(j).is_some_and(u8::is_ascii_alphabetic) {
            // `\boxedx` is another command.
            i = j;
            continue;
        }
        while j < b.len() && b[j] == b' ' {
            j += 1;
        }
        if b.get(j) == Some(&b'{') {
            let (content, end) = match_brace(text, j);
            out.push(BoxSpan {
                start,
                end,
                content,
            });
            i = end;
        } else {
            // `\boxed 5`.
            let s = j;
            while j < b.len() && !b[j].is_ascii_whitespace() && b[j] != b'$' {
                j += 1;
            }
            if j > s {
                out.push(BoxSpan {
                    start,
                    end: j,
                    content: &text[s..j],
                });
            }
            i = j.max(i + 1);
        }
    }
    out
}

fn first_unmatched_close(text: &str) -> Option<usize> {
    let b = text.as_bytes();
    let mut depth = 0i32;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth < 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Content of the brace group opening at `open`, and the index after it.
fn match_brace(text: &str, open: usize) -> (&str, usize) {
    let b = text.as_bytes();
    let mut depth = 0i32;
    let mut i = open;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                i += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return (&text[open + 1..i], i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    (&text[(open + 1).min(text.len())..], text.len())
}

/// Is the text between two boxes only a separator (`, `, `and`, `$ $`, `\quad`), or a short
/// phrase with "and" (`papers and`, `for part (a) and`)?
fn is_separator_between(s: &str) -> bool {
    if is_pure_separator(s) {
        return true;
    }
    let words: Vec<&str> = s
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    words.len() <= 5 && words.contains(&"and") && !s.contains('\n')
}

fn is_pure_separator(s: &str) -> bool {
    let mut t = s.to_string();
    for pat in [
        "\\text{ and }",
        "\\text{and}",
        "\\text{ or }",
        "\\text{or}",
        "\\quad",
        "\\qquad",
        "\\(",
        "\\)",
        "\\[",
        "\\]",
        "\\,",
        "\\;",
        "\\ ",
        "$",
        ",",
        ";",
        "and",
        "or",
        "&",
    ] {
        t = t.replace(pat, " ");
    }
    t.trim().is_empty()
}

/// Output of a failed cell, not an answer.
fn is_traceback(text: &str) -> bool {
    text.contains("Traceback (most recent call last)")
        || text.starts_with("Cell In[")
        || text.contains("\nCell In[")
        || (text.len() < 400
            && (text.contains("Error:") || text.contains("Error "))
            && text.lines().count() <= 6
            && looks_like_error_line(text))
}

fn looks_like_error_line(text: &str) -> bool {
    text.lines().any(|l| {
        let l = l.trim_start();
        let head = l.split(':').next().unwrap_or("");
        head.ends_with("Error")
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
    })
}

/// Prose we do not mine for numbers: apologies, retries, code.
fn is_unreliable_prose(text: &str) -> bool {
    let lower = text.to_lowercase();
    [
        "apolog",
        "sorry",
        "mistake",
        "made an error",
        "an error in",
        "let's try",
        "let me try",
        "oversight",
        "```",
        "def ",
        "import ",
    ]
    .iter()
    .any(|m| lower.contains(m))
}

fn strip_delimiters(s: &str) -> &str {
    let mut t = s.trim();
    loop {
        let before = t;
        for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
            if t.len() >= open.len() + close.len() && t.starts_with(open) && t.ends_with(close) {
                t = t[open.len()..t.len() - close.len()].trim();
            }
        }
        t = t.trim_end_matches(['.', ';']).trim();
        if t == before {
            return t;
        }
    }
}

/// A bare answer: short, and at most two words of prose outside braces and `\text{}`.
fn is_bare_answer(text: &str) -> bool {
    if text.len() > 240 || text.lines().filter(|l| !l.trim().is_empty()).count() > 3 {
        return false;
    }
    prose_words(text) <= 2
}

/// Counts words of 3+ letters at brace depth 0, not part of a `\command`.
fn prose_words(text: &str) -> usize {
    let b = text.as_bytes();
    let mut depth = 0i32;
    let mut count = 0;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == b'\\' {
            i += 1;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            continue;
        }
        if c == b'{' {
            depth += 1;
        } else if c == b'}' {
            depth -= 1;
        }
        if c.is_ascii_alphabetic() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_alphabetic() || b[i] == b'\'') {
                i += 1;
            }
            let preceded_by_space = s == 0 || b[s - 1].is_ascii_whitespace();
            let followed_by_space =
                i >= b.len() || b[i].is_ascii_whitespace() || matches!(b[i], b'.' | b',');
            if depth <= 0 && i - s >= 3 && preceded_by_space && followed_by_space {
                count += 1;
            }
            continue;
        }
        i += 1;
    }
    count
}

/// The answer after the last answer phrase, up to the end of its sentence, with the byte
/// position where the phrase ends.
fn answer_phrase(text: &str) -> Option<(usize, String)> {
    let lower = text.to_ascii_lowercase();
    let mut best: Option<usize> = None;
    for pat in [
        "final answer is",
        "final answer:",
        "the answer is",
        "answer is:",
        "answer is",
        "answer:",
        "final answer",
        "answer $",
        "answer \\(",
        "answer \\[",
    ] {
        if let Some(p) = lower.rfind(pat) {
            let end = p + pat.len();
            if best.is_none_or(|b| end > b) {
                best = Some(end);
            }
        }
    }
    // "the correct amount left is $1"
    if best.is_none() {
        let mut from = 0;
        while let Some(p) = lower[from..].find("correct") {
            let at = from + p;
            let sentence_end = lower[at..]
                .find(['.', '\n'])
                .map_or(lower.len(), |k| at + k);
            if let Some(q) = lower[at..sentence_end].find(" is ") {
                let words_between = lower[at..at + q].split_whitespace().count();
                if words_between <= 4 {
                    best = Some(at + q + 4);
                }
            }
            from = at + 7;
        }
    }
    let mut start = best?;
    // `answer $`: the phrase ends before the delimiter.
    while start > 0 && matches!(text.as_bytes()[start - 1], b'$' | b'(' | b'[' | b'\\') {
        start -= 1;
    }
    let span = sentence_after(&text[start..]);
    // "Final Answer: The largest $n$ is 34."
    let span = match span.rfind(" is ") {
        Some(k) if prose_words(&span[..k]) > 0 => span[k + 4..].to_string(),
        _ => span,
    };
    let span = span.trim_start_matches([':', ' ']).trim().to_string();
    // "Final Answer: Jane started growing Sphere 3 hours ago": prose; take its last value.
    let span = if prose_words(&span) >= 3 {
        let spans = math_spans(&span);
        last_of_span_or_number(&span, &spans)?.answer
    } else {
        span
    };
    let cleaned = strip_delimiters(&span).to_string();
    let mut cleaned = cleaned.trim_end_matches(['.', ',']).trim().to_string();
    // A currency sign, not a math delimiter: `$1`.
    if cleaned.starts_with('$') && cleaned.matches('$').count() % 2 == 1 {
        cleaned = cleaned[1..].trim().to_string();
    }
    let has_content = cleaned.chars().any(|c| c.is_ascii_digit())
        || (cleaned.contains('\\') && cleaned.len() > 1)
        || (!cleaned.is_empty() && prose_words(&cleaned) <= 2 && cleaned.len() < 60);
    (has_content && !cleaned.is_empty()).then_some((start, cleaned))
}

/// Text up to the end of the sentence: a newline, a full stop followed by a space, "I hope",
/// or a clause like ", not ...".
fn sentence_after(s: &str) -> String {
    let s = s.trim_start();
    // A delimited math span right after the phrase is the answer.
    for (open, close) in [("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")] {
        if let Some(rest) = s.strip_prefix(open) {
            if let Some(end) = find_unescaped(rest, close) {
                let inner = &rest[..end];
                // `$1, not $-9$`: a currency sign, not math; fall through.
                if !(open == "$" && inner.contains(", not")) {
                    return inner.to_string();
                }
            }
        }
    }
    let b = s.as_bytes();
    let mut end = s.len();
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' {
            end = i;
            break;
        }
        if c == b'.'
            && (i + 1 >= b.len() || b[i + 1].is_ascii_whitespace())
            && !(i > 0 && b[i - 1] == b'.')
        {
            end = i;
            break;
        }
        if c == b',' {
            let rest = &s[i + 1..];
            let word: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphabetic())
                .collect();
            if word.len() >= 2
                && !matches!(word.as_str(), "and" | "or")
                && word.chars().all(|c| c.is_ascii_lowercase())
            {
                end = i;
                break;
            }
        }
    }
    let mut out = s[..end].to_string();
    if let Some(k) = out.to_ascii_lowercase().find("i hope") {
        out.truncate(k);
    }
    out.trim().to_string()
}

/// The first `pat` in `s` not preceded by a backslash (`\$` is a literal dollar).
fn find_unescaped(s: &str, pat: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].find(pat) {
        let at = from + p;
        if at > 0 && s.as_bytes()[at - 1] == b'\\' && pat == "$" {
            from = at + 1;
            continue;
        }
        return Some(at);
    }
    None
}

/// The byte ranges of the contents of `$...$`, `$$...$$`, `\(...\)` and `\[...\]` spans, in
/// order (spans nested in others are dropped).
fn math_spans(text: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    for (open, close) in [("\\(", "\\)"), ("\\[", "\\]"), ("$$", "$$")] {
        let mut from = 0;
        while let Some(p) = text[from..].find(open) {
            let s = from + p + open.len();
            match text[s..].find(close) {
                Some(e) => {
                    out.push((s, s + e));
                    from = s + e + close.len();
                }
                None => break,
            }
        }
    }
    // Single-dollar spans: paired left to right, skipping `$$` and `\$`.
    let b = text.as_bytes();
    let mut i = 0;
    let mut open: Option<usize> = None;
    while i < b.len() {
        if b[i] == b'$' && !(i > 0 && b[i - 1] == b'\\') {
            if b.get(i + 1) == Some(&b'$') {
                i += 2;
                continue;
            }
            match open {
                None => open = Some(i + 1),
                Some(s) => {
                    out.push((s, i));
                    open = None;
                }
            }
        }
        i += 1;
    }
    out.sort_unstable();
    let mut kept: Vec<(usize, usize)> = Vec::new();
    for (s, e) in out {
        if kept.last().is_some_and(|(_, pe)| s < *pe) {
            continue;
        }
        kept.push((s, e));
    }
    kept
}

/// The last number (`-1,234.5`, `2/3`, `45%`) outside math spans, with its position.
fn last_number_outside(text: &str, spans: &[(usize, usize)]) -> Option<(usize, String)> {
    let b = text.as_bytes();
    let mut last: Option<(usize, usize)> = None;
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let mut s = i;
            if s > 0 && b[s - 1] == b'-' {
                s -= 1;
            }
            let mut j = i;
            while j < b.len()
                && (b[j].is_ascii_digit()
                    || ((b[j] == b',' || b[j] == b'.' || b[j] == b'/')
                        && b.get(j + 1).is_some_and(u8::is_ascii_digit)))
            {
                j += 1;
            }
            if j < b.len() && b[j] == b'%' {
                j += 1;
            }
            if !spans.iter().any(|(ss, se)| s >= *ss && s < *se) {
                last = Some((s, j));
            }
            i = j;
            continue;
        }
        i += 1;
    }
    last.map(|(s, e)| (s, text[s..e].to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> Option<(String, ExtractRule)> {
        extract(s).ok().map(|e| (e.answer, e.rule))
    }

    #[test]
    fn boxes() {
        assert_eq!(
            ex("so $x=\\boxed{\\frac{1}{2}}$."),
            Some(("\\frac{1}{2}".into(), ExtractRule::Boxed))
        );
        assert_eq!(
            ex("\\boxed{1} and \\boxed{2}"),
            Some(("1, 2".into(), ExtractRule::BoxedJoined))
        );
        assert_eq!(
            ex("\\boxed{1} no no no \\boxed{2}"),
            Some(("2".into(), ExtractRule::Boxed))
        );
        assert_eq!(ex("\\boxed 5"), Some(("5".into(), ExtractRule::Boxed)));
        assert_eq!(
            ex("answer \\boxed{3"),
            Some(("3".into(), ExtractRule::Boxed))
        );
        let e = extract(
            "\\frac{5}{2}}\\)hoursandthe250gallonsperhourpumpwasusedfor\\(\\boxed{\\frac{7}{2",
        )
        .unwrap();
        assert_eq!(
            e.boxes,
            vec!["\\frac{5}{2}".to_string(), "\\frac{7}{2".to_string()]
        );
        assert_eq!(e.answer, "\\frac{7}{2");
        assert_eq!(
            ex("first \\boxed{255} then. Final Answer: The final answer is $10,455$. I hope it is correct."),
            Some(("10,455".into(), ExtractRule::AnswerPhrase))
        );
    }

    #[test]
    fn phrases_and_bare() {
        assert_eq!(
            ex("#### 1,234"),
            Some(("1,234".into(), ExtractRule::Hashes))
        );
        assert_eq!(
            ex("Final Answer: The final answer is $(0, 1)$. I hope it is correct."),
            Some(("(0, 1)".into(), ExtractRule::AnswerPhrase))
        );
        assert_eq!(
            ex("Final Answer: The largest $n$ is 34."),
            Some(("34".into(), ExtractRule::AnswerPhrase))
        );
        assert_eq!(
            ex("Answer \\[ 9 \\]"),
            Some(("9".into(), ExtractRule::AnswerPhrase))
        );
        assert_eq!(ex("12"), Some(("12".into(), ExtractRule::BareAnswer)));
        assert_eq!(
            ex("128{children,}150{adults}"),
            Some(("128{children,}150{adults}".into(), ExtractRule::BareAnswer))
        );
        assert_eq!(
            ex("$x \\in [-2,7]$"),
            Some(("x \\in [-2,7]".into(), ExtractRule::BareAnswer))
        );
        assert_eq!(
            ex("We find that $x \\lt 3$."),
            Some(("x \\lt 3".into(), ExtractRule::MathSpan))
        );
        assert_eq!(
            ex("This means Dan is $1 short. So, the correct amount left is $1, not $-9$.\n\nLet's calculate it ag"),
            Some(("1".into(), ExtractRule::AnswerPhrase))
        );
    }

    #[test]
    fn refusals() {
        assert_eq!(
            extract("Cell In[16], line 6\n    383 //= i\n    ^\nSyntaxError: 'literal' is an illegal expression"),
            Err(NoAnswer::Traceback)
        );
        assert_eq!(
            extract("NameError: name 'x' is not defined"),
            Err(NoAnswer::Traceback)
        );
        assert_eq!(
            extract("I apologize for the oversight. Let's calculate the amount of alcohol needed from the 50% solution and the total volume of the 18% and 50% solutions needed."),
            Err(NoAnswer::NoAnswerInProse)
        );
        assert_eq!(
            ex("Therefore, the probability that Alice wins the game is 2/3. <|im_start|>user"),
            Some(("2/3".into(), ExtractRule::LastNumber))
        );
        assert_eq!(
            ex("So $d = \\frac{90}{n}$ and there are 12 distinct sequences. I hope it is correct."),
            Some(("12".into(), ExtractRule::LastNumber))
        );
        assert_eq!(extract("   "), Err(NoAnswer::Empty));
    }
}
