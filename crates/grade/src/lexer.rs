//! Tokens of an answer string: LaTeX, plain text and Python syntax all lex to the same tokens.
//!
//! The lexer also does the normalisations that need no tree: it drops spacing commands and
//! `\left`/`\right`, maps unicode symbols, removes thousands separators, and turns units
//! (`48{grams}`, `15\mbox{ cm}^2`, `9 (apples)`, `12 apples`) into nothing or into list
//! separators when another quantity follows (`128{children,}150{adults}`).

use crate::expr::{Func, RelOp};

/// How commas between digit groups (`10,000`) are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Thousands {
    /// `d,ddd` is a thousands separator (GSM8K, SVAMP, MATH).
    Join,
    /// `d,ddd` is a list (`20,160` is "20 and 160" in SimulEq's two-answer questions).
    Split,
    /// Like `Join`, and a comma that cannot be a thousands separator is a decimal comma
    /// (`0,111`, `1000,99`): for answers from other locales, outside the MathCoder datasets
    /// where `3,5` is a list.
    JoinDecimalComma,
}

/// A lexical token.
#[derive(Clone, Debug, PartialEq)]
pub enum Tok {
    /// Digits with at most one decimal point.
    Num(String),
    /// A run of ASCII letters that is not a known name.
    Letters(String),
    /// A single named symbol (`\alpha`, an unknown command).
    Ident(String),
    Func(Func),
    Frac,
    Sqrt,
    Binom,
    Overline,
    /// Words that are not mathematics (`\text{Evelyn}`, `apples`).
    Words(String),
    Plus,
    Minus,
    Star,
    Slash,
    Caret,
    Underscore,
    Bang,
    Prime,
    Percent,
    Degree,
    Pipe,
    Amp,
    Comma,
    Semi,
    Colon,
    And,
    Or,
    Rel(RelOp),
    In,
    Cup,
    Cap,
    Setminus,
    Pm,
    Mp,
    Pi,
    Infty,
    Dots,
    LParen,
    RParen,
    LBrack,
    RBrack,
    LBrace,
    RBrace,
    LSet,
    RSet,
    RowSep,
    BeginEnv(String),
    EndEnv(String),
}

/// A token and whether whitespace preceded it.
#[derive(Clone, Debug, PartialEq)]
pub struct Token {
    pub tok: Tok,
    pub space_before: bool,
}

/// Lexing failed (input too long or too deeply nested).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LexError(pub &'static str);

/// Longest answer the lexer accepts, in bytes.
pub const MAX_INPUT: usize = 4096;
const MAX_TEXT_DEPTH: u32 = 8;

const UNIT_WORDS: &[&str] = &[
    "cm",
    "mm",
    "km",
    "m",
    "kg",
    "mg",
    "g",
    "lb",
    "lbs",
    "oz",
    "ft",
    "feet",
    "foot",
    "in",
    "inch",
    "inches",
    "yd",
    "yard",
    "yards",
    "mi",
    "mile",
    "miles",
    "mph",
    "kmh",
    "hr",
    "hrs",
    "hour",
    "hours",
    "min",
    "mins",
    "minute",
    "minutes",
    "sec",
    "secs",
    "second",
    "seconds",
    "day",
    "days",
    "week",
    "weeks",
    "month",
    "months",
    "year",
    "years",
    "meter",
    "meters",
    "metre",
    "metres",
    "liter",
    "liters",
    "litre",
    "litres",
    "ml",
    "gallon",
    "gallons",
    "dollar",
    "dollars",
    "cent",
    "cents",
    "unit",
    "units",
    "sq",
    "sqft",
    "cu",
    "square",
    "cubic",
    "pound",
    "pounds",
    "ounce",
    "ounces",
    "gram",
    "grams",
    "kilogram",
    "kilograms",
    "degree",
    "degrees",
    "percent",
    "pages",
    "page",
    "people",
    "students",
    "apples",
    "times",
    "ways",
];

fn is_unit_word(w: &str) -> bool {
    let lw = w.to_ascii_lowercase();
    UNIT_WORDS.contains(&lw.as_str())
}

/// Lexes an answer.
pub fn lex(input: &str, thousands: Thousands) -> Result<Vec<Token>, LexError> {
    if input.len() > MAX_INPUT {
        return Err(LexError("answer too long"));
    }
    let input = prenormalize(input);
    let mut out = Vec::with_capacity(input.len() / 2 + 4);
    lex_into(&input, thousands, &mut out, 0)?;
    join_thousands(&mut out, thousands);
    mark_units(&mut out);
    Ok(out)
}

/// Rewrites thousands-separator spellings (`{,}`, `,\!`, `\,` between digit groups) to plain
/// commas, so one rule handles them all.
fn prenormalize(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.contains("{,}") && !s.contains("\\!") && !s.contains("\\,") {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut t = s.replace("{,}", ",");
    // `,\!` and `,\! ` (negative thin space after a thousands comma).
    while let Some(p) = t.find(",\\!") {
        let mut end = p + 3;
        while t.as_bytes().get(end) == Some(&b' ') {
            end += 1;
        }
        t.replace_range(p..end, ",");
    }
    t = t.replace("\\!", "");
    // `10\,000`: a thin space between digit groups.
    let mut out = String::with_capacity(t.len());
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && b.get(i + 1) == Some(&b',')
            && i > 0
            && b[i - 1].is_ascii_digit()
            && b.len() >= i + 5
            && b[i + 2..i + 5].iter().all(u8::is_ascii_digit)
            && !b.get(i + 5).is_some_and(u8::is_ascii_digit)
        {
            out.push(',');
            i += 2;
            continue;
        }
        out.push(b[i] as char);
        i += 1;
    }
    // The loop above copied bytes; rebuild from the original if non-ASCII was present.
    if !t.is_ascii() {
        return std::borrow::Cow::Owned(t);
    }
    std::borrow::Cow::Owned(out)
}

fn push(out: &mut Vec<Token>, tok: Tok, space: &mut bool) {
    out.push(Token {
        tok,
        space_before: *space,
    });
    *space = false;
}

/// Reads a `{...}` argument starting at byte `i` (which must be `{`); returns the inside and
/// the index after the closing brace.
fn brace_arg(s: &str, i: usize) -> Option<(&str, usize)> {
    let b = s.as_bytes();
    if b.get(i) != Some(&b'{') {
        return None;
    }
    let mut depth = 0i32;
    let mut j = i;
    while j < b.len() {
        match b[j] {
            b'\\' => {
                j += 2;
                continue;
            }
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&s[i + 1..j], j + 1));
                }
            }
            _ => {}
        }
        j += 1;
    }
    // Unclosed: take the rest.
    Some((&s[i + 1..], b.len()))
}

fn skip_ws(s: &str, mut i: usize) -> usize {
    let b = s.as_bytes();
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

fn lex_into(s: &str, th: Thousands, out: &mut Vec<Token>, depth: u32) -> Result<(), LexError> {
    if depth > MAX_TEXT_DEPTH {
        return Err(LexError("text nested too deeply"));
    }
    let b = s.as_bytes();
    let mut i = 0usize;
    let mut space = false;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() || c == b'~' {
            space = true;
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let start = i;
            let mut seen_dot = false;
            while i < b.len() {
                if b[i].is_ascii_digit() {
                    i += 1;
                } else if b[i] == b'.' && !seen_dot && b.get(i + 1).is_some_and(u8::is_ascii_digit)
                {
                    seen_dot = true;
                    i += 1;
                } else {
                    break;
                }
            }
            push(out, Tok::Num(s[start..i].to_string()), &mut space);
            continue;
        }
        if c.is_ascii_alphabetic() {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphabetic() {
                i += 1;
            }
            let word = &s[start..i];
            push(out, classify_word(word), &mut space);
            continue;
        }
        if c == b'\\' {
            i = lex_command(s, i, th, out, &mut space, depth)?;
            continue;
        }
        if c >= 0x80 {
            let ch = s[i..].chars().next().expect("char at boundary");
            i += ch.len_utf8();
            let tok = match ch {
                '−' | '–' | '—' => Some(Tok::Minus),
                '×' | '·' | '⋅' | '∗' => Some(Tok::Star),
                '÷' | '∕' => Some(Tok::Slash),
                '≤' | '⩽' => Some(Tok::Rel(RelOp::Le)),
                '≥' | '⩾' => Some(Tok::Rel(RelOp::Ge)),
                '≠' => Some(Tok::Rel(RelOp::Ne)),
                '≈' => Some(Tok::Rel(RelOp::Approx)),
                '±' => Some(Tok::Pm),
                '∓' => Some(Tok::Mp),
                '∞' => Some(Tok::Infty),
                'π' => Some(Tok::Pi),
                '°' => Some(Tok::Degree),
                '∪' => Some(Tok::Cup),
                '∩' => Some(Tok::Cap),
                '∈' => Some(Tok::In),
                '√' => Some(Tok::Sqrt),
                '…' => Some(Tok::Dots),
                '²' => {
                    push(out, Tok::Caret, &mut space);
                    Some(Tok::Num("2".into()))
                }
                '³' => {
                    push(out, Tok::Caret, &mut space);
                    Some(Tok::Num("3".into()))
                }
                '€' | '£' | '¥' | '₹' => None,
                c if c.is_alphabetic() => Some(Tok::Words(c.to_string())),
                _ => None,
            };
            if let Some(t) = tok {
                push(out, t, &mut space);
            } else {
                space = true;
            }
            continue;
        }
        i += 1;
        let next = b.get(i).copied();
        let tok = match c {
            b'+' => Tok::Plus,
            b'-' => Tok::Minus,
            b'*' => {
                if next == Some(b'*') {
                    i += 1;
                    Tok::Caret
                } else {
                    Tok::Star
                }
            }
            b'/' => {
                if next == Some(b'/') {
                    // Python floor division is not an answer operator; read as division.
                    i += 1;
                }
                Tok::Slash
            }
            b'^' => Tok::Caret,
            b'_' => Tok::Underscore,
            b'!' => {
                if next == Some(b'=') {
                    i += 1;
                    Tok::Rel(RelOp::Ne)
                } else {
                    Tok::Bang
                }
            }
            b'\'' => Tok::Prime,
            b'%' => Tok::Percent,
            b'|' => Tok::Pipe,
            b'&' => Tok::Amp,
            b',' => Tok::Comma,
            b';' => Tok::Semi,
            b':' => Tok::Colon,
            b'=' => {
                if next == Some(b'=') {
                    i += 1;
                } else if next == Some(b'<') {
                    i += 1;
                    push(out, Tok::Rel(RelOp::Le), &mut space);
                    continue;
                } else if next == Some(b'>') {
                    i += 1;
                    push(out, Tok::Rel(RelOp::Ge), &mut space);
                    continue;
                }
                Tok::Rel(RelOp::Eq)
            }
            b'<' => {
                if next == Some(b'=') {
                    i += 1;
                    Tok::Rel(RelOp::Le)
                } else {
                    Tok::Rel(RelOp::Lt)
                }
            }
            b'>' => {
                if next == Some(b'=') {
                    i += 1;
                    Tok::Rel(RelOp::Ge)
                } else {
                    Tok::Rel(RelOp::Gt)
                }
            }
            b'(' => Tok::LParen,
            b')' => Tok::RParen,
            b'[' => Tok::LBrack,
            b']' => Tok::RBrack,
            b'{' => Tok::LBrace,
            b'}' => Tok::RBrace,
            b'$' | b'"' | b'`' | b'?' | b'#' | b'@' => {
                space = true;
                continue;
            }
            // `...` is an ellipsis.
            b'.' if s[i..].starts_with("..") => {
                i += 2;
                Tok::Dots
            }
            _ => {
                space = true;
                continue;
            }
        };
        push(out, tok, &mut space);
    }
    Ok(())
}

fn classify_word(word: &str) -> Tok {
    let lw = word.to_ascii_lowercase();
    match lw.as_str() {
        "pi" if word != "PI" => return Tok::Pi,
        "infty" | "infinity" | "oo" | "inf" => return Tok::Infty,
        "and" => return Tok::And,
        "or" => return Tok::Or,
        "percent" | "percentage" | "pct" => return Tok::Percent,
        "degrees" | "degree" | "deg" => return Tok::Degree,
        _ => {}
    }
    if let Some(f) = Func::from_name(word) {
        // Python-style `sqrt(2)`, `log(x)`.
        if word.len() > 1 {
            return Tok::Func(f);
        }
    }
    Tok::Letters(word.to_string())
}

fn lex_command(
    s: &str,
    i: usize,
    th: Thousands,
    out: &mut Vec<Token>,
    space: &mut bool,
    depth: u32,
) -> Result<usize, LexError> {
    let b = s.as_bytes();
    let mut j = i + 1;
    if j >= b.len() {
        return Ok(j);
    }
    if b[j] == b'\\' && b.get(j + 1).is_some_and(u8::is_ascii_alphabetic) {
        // `\\left(`: a command whose backslash was escaped twice.
        return lex_command(s, i + 1, th, out, space, depth);
    }
    if b[j] >= 0x80 {
        // A backslash before a non-ASCII character: drop the backslash.
        return Ok(j);
    }
    if !b[j].is_ascii_alphabetic() {
        // One-character command.
        let c = b[j];
        j += 1;
        let tok = match c {
            b'\\' => Some(Tok::RowSep),
            b'{' => Some(Tok::LSet),
            b'}' => Some(Tok::RSet),
            b'%' => Some(Tok::Percent),
            b'|' => Some(Tok::Pipe),
            b'(' | b')' | b'[' | b']' | b',' | b';' | b':' | b'!' | b' ' | b'$' | b'>' | b'#'
            | b'&' => {
                // Math delimiters, spacing, escaped currency.
                *space = true;
                None
            }
            _ => None,
        };
        if let Some(t) = tok {
            push(out, t, space);
        }
        return Ok(j);
    }
    let start = j;
    while j < b.len() && b[j].is_ascii_alphabetic() {
        j += 1;
    }
    let name = &s[start..j];
    let tok = match name {
        "left" | "right" | "big" | "Big" | "bigg" | "Bigg" | "bigl" | "bigr" | "Bigl" | "Bigr"
        | "biggl" | "biggr" | "middle" => {
            // `\left.` is an invisible delimiter.
            if b.get(j) == Some(&b'.') {
                j += 1;
            }
            None
        }
        "quad" | "qquad" | "displaystyle" | "textstyle" | "limits" | "nolimits" | "boxed"
        | "fbox" | "mathop" | "hline" | "cline" | "rm" | "it" | "bf" | "noindent" | "centering"
        | "small" | "large" | "Large" | "normalsize" | "hfill" | "vec" | "hat" | "bar"
        | "tilde" | "widehat" | "mathbb" | "mathcal" | "mathit" | "mathsf" | "mathtt" | "cdotp"
        | "dollar" | "space" | "nonumber" | "notag" | "label" | "tag" => {
            *space = true;
            if matches!(name, "label" | "tag") {
                if let Some((_, k)) = brace_arg(s, skip_ws(s, j)) {
                    j = k;
                }
            }
            None
        }
        "frac" | "dfrac" | "tfrac" | "cfrac" => Some(Tok::Frac),
        "sqrt" => Some(Tok::Sqrt),
        "binom" | "dbinom" | "tbinom" => Some(Tok::Binom),
        "choose" => Some(Tok::Ident("choose".into())),
        "overline" => Some(Tok::Overline),
        "cdot" | "times" | "ast" | "bullet" => Some(Tok::Star),
        "div" => Some(Tok::Slash),
        "pm" => Some(Tok::Pm),
        "mp" => Some(Tok::Mp),
        "le" | "leq" | "leqslant" | "leqq" => Some(Tok::Rel(RelOp::Le)),
        "ge" | "geq" | "geqslant" | "geqq" => Some(Tok::Rel(RelOp::Ge)),
        "lt" => Some(Tok::Rel(RelOp::Lt)),
        "gt" => Some(Tok::Rel(RelOp::Gt)),
        "ne" | "neq" => Some(Tok::Rel(RelOp::Ne)),
        "approx" | "simeq" | "thickapprox" | "sim" => Some(Tok::Rel(RelOp::Approx)),
        "equiv" | "coloneqq" => Some(Tok::Rel(RelOp::Eq)),
        "infty" | "infin" => Some(Tok::Infty),
        "pi" => Some(Tok::Pi),
        "circ" | "degree" => Some(Tok::Degree),
        "cup" => Some(Tok::Cup),
        "cap" => Some(Tok::Cap),
        "in" => Some(Tok::In),
        "setminus" => Some(Tok::Setminus),
        "dots" | "ldots" | "cdots" | "dotsc" | "dotsb" | "vdots" => Some(Tok::Dots),
        "lbrace" => Some(Tok::LSet),
        "rbrace" => Some(Tok::RSet),
        "lvert" | "rvert" | "vert" | "mid" => Some(Tok::Pipe),
        "langle" => Some(Tok::LParen),
        "rangle" => Some(Tok::RParen),
        "lfloor" | "lceil" | "rfloor" | "rceil" => {
            // Floor/ceiling brackets are read as parentheses around a floor()/ceil() call.
            let t = match name {
                "lfloor" => vec![Tok::Func(Func::Floor), Tok::LParen],
                "lceil" => vec![Tok::Func(Func::Ceil), Tok::LParen],
                _ => vec![Tok::RParen],
            };
            for t in t {
                push(out, t, space);
            }
            None
        }
        "begin" | "end" => {
            let k = skip_ws(s, j);
            if let Some((env, mut k2)) = brace_arg(s, k) {
                let env = env.trim_end_matches('*').to_string();
                if name == "begin" && matches!(env.as_str(), "array" | "tabular") {
                    // Column specification.
                    if let Some((_, k3)) = brace_arg(s, skip_ws(s, k2)) {
                        k2 = k3;
                    }
                }
                j = k2;
                Some(if name == "begin" {
                    Tok::BeginEnv(env)
                } else {
                    Tok::EndEnv(env)
                })
            } else {
                None
            }
        }
        "text" | "textbf" | "textit" | "textrm" | "textnormal" | "mbox" | "mathrm" | "mathbf"
        | "operatorname" | "textsf" | "texttt" | "emph" | "hbox" => {
            let k = skip_ws(s, j);
            if let Some((content, k2)) = brace_arg(s, k) {
                j = k2;
                let math_font = matches!(name, "mathrm" | "mathbf" | "operatorname");
                lex_text(
                    content,
                    th,
                    out,
                    space,
                    depth,
                    name == "operatorname",
                    math_font,
                )?;
            }
            None
        }
        "pmod" | "bmod" | "mod" => Some(Tok::Func(Func::Mod)),
        _ => {
            if let Some(f) = Func::from_name(name) {
                Some(Tok::Func(f))
            } else if GREEK.contains(&name) {
                Some(Tok::Ident(name.to_string()))
            } else {
                // Unknown command: keep it as a named symbol.
                Some(Tok::Ident(name.to_string()))
            }
        }
    };
    if let Some(t) = tok {
        push(out, t, space);
    }
    Ok(j)
}

/// Lexes the argument of `\text{...}` and friends.
fn lex_text(
    content: &str,
    th: Thousands,
    out: &mut Vec<Token>,
    space: &mut bool,
    depth: u32,
    operator: bool,
    math_font: bool,
) -> Result<(), LexError> {
    let t = content.trim();
    if t.is_empty() {
        *space = true;
        return Ok(());
    }
    let lower = t.to_ascii_lowercase();
    let sep = lower.trim_matches(|c: char| c == ',' || c.is_whitespace());
    match sep {
        "and" => {
            push(out, Tok::And, space);
            return Ok(());
        }
        "or" => {
            push(out, Tok::Or, space);
            return Ok(());
        }
        "" => {
            push(out, Tok::Comma, space);
            return Ok(());
        }
        _ => {}
    }
    if operator {
        if let Some(f) = Func::from_name(t) {
            push(out, Tok::Func(f), space);
            return Ok(());
        }
    }
    // Words only (with spaces and light punctuation): not mathematics.
    let wordy = t.chars().all(|c| {
        c.is_alphabetic() || c.is_whitespace() || matches!(c, ',' | '.' | '\'' | '-' | '/')
    }) && t.chars().filter(|c| c.is_alphabetic()).count() >= 1;
    // A single letter in a math font is a symbol (`\\mathrm{e}`); in `\\text{}` it is a word (a
    // choice letter `\\text{C}`, a unit `\\mbox{m}`).
    if t.len() == 1 && t.chars().all(|c| c.is_ascii_alphabetic()) && math_font {
        push(out, Tok::Letters(t.to_string()), space);
        return Ok(());
    }
    if wordy && !(t.len() == 1 && operator) {
        let words = t.trim_end_matches(['.', ',']).to_string();
        push(out, Tok::Words(words), space);
        return Ok(());
    }
    let before = out.len();
    lex_into(t, th, out, depth + 1)?;
    if let Some(first) = out.get_mut(before) {
        first.space_before = first.space_before || *space;
    }
    *space = false;
    Ok(())
}

/// Merges `12,000,023` into `12000023` (and `1 000` when the whole answer is one number).
fn join_thousands(toks: &mut Vec<Token>, th: Thousands) {
    // Whole answer `1 000` / `12 345 678`: space-separated groups.
    if toks.len() >= 2 && toks.iter().all(|t| matches!(&t.tok, Tok::Num(_))) {
        let first_ok = matches!(&toks[0].tok, Tok::Num(n) if n.len() <= 3 && !n.contains('.'));
        let rest_ok = toks[1..]
            .iter()
            .enumerate()
            .all(|(k, t)| matches!(&t.tok, Tok::Num(n) if (n.len() == 3 || (k + 2 == toks.len() && n.len() > 4 && n.as_bytes()[3] == b'.')) && n.as_bytes()[..3].iter().all(u8::is_ascii_digit)));
        if first_ok && rest_ok {
            let joined: String = toks
                .iter()
                .map(|t| match &t.tok {
                    Tok::Num(n) => n.as_str(),
                    _ => "",
                })
                .collect();
            toks.clear();
            toks.push(Token {
                tok: Tok::Num(joined),
                space_before: false,
            });
            return;
        }
    }
    if th == Thousands::Split {
        return;
    }
    if th == Thousands::JoinDecimalComma {
        decimal_commas(toks);
    }
    let mut i = 0;
    while i < toks.len() {
        let is_group_start = matches!(&toks[i].tok, Tok::Num(n) if !n.contains('.') && !n.is_empty() && n.len() <= 3 && !n.starts_with('0'))
            && !(i > 0 && matches!(toks[i - 1].tok, Tok::Num(_)));
        if !is_group_start {
            i += 1;
            continue;
        }
        // Count following `,ddd` groups (no space after the comma).
        let mut j = i + 1;
        let mut groups = 0;
        while j + 1 < toks.len()
            && toks[j].tok == Tok::Comma
            && !toks[j + 1].space_before
            && matches!(&toks[j + 1].tok, Tok::Num(n) if n.len() >= 3 && n.as_bytes()[..3].iter().all(u8::is_ascii_digit) && (n.len() == 3 || n.as_bytes()[3] == b'.'))
        {
            groups += 1;
            let has_dot = matches!(&toks[j + 1].tok, Tok::Num(n) if n.contains('.'));
            j += 2;
            if has_dot {
                break;
            }
        }
        if groups == 0 {
            i += 1;
            continue;
        }
        let mut joined = String::new();
        for t in &toks[i..j] {
            if let Tok::Num(n) = &t.tok {
                joined.push_str(n);
            }
        }
        let space_before = toks[i].space_before;
        toks.splice(
            i..j,
            [Token {
                tok: Tok::Num(joined),
                space_before,
            }],
        );
        i += 1;
    }
}

/// `0,111` and `1000,99` (a comma that cannot separate thousands) as decimal commas.
fn decimal_commas(toks: &mut Vec<Token>) {
    let mut i = 0;
    while i + 2 < toks.len() {
        let (a, b) = match (&toks[i].tok, &toks[i + 1].tok, &toks[i + 2].tok) {
            (Tok::Num(a), Tok::Comma, Tok::Num(b))
                if !toks[i + 2].space_before && !a.contains('.') && !b.contains('.') =>
            {
                (a.clone(), b.clone())
            }
            _ => {
                i += 1;
                continue;
            }
        };
        // Not part of a list, tuple or interval.
        let alone = toks
            .get(i + 3)
            .is_none_or(|t| !matches!(t.tok, Tok::Comma | Tok::RParen | Tok::RBrack | Tok::RSet))
            && (i == 0
                || !matches!(
                    toks[i - 1].tok,
                    Tok::Comma | Tok::LParen | Tok::LBrack | Tok::LSet
                ));
        let decimal = alone && ((a == "0" && b.len() >= 2) || (a.len() >= 4 && b.len() <= 2));
        if decimal {
            let sb = toks[i].space_before;
            toks.splice(
                i..i + 3,
                [Token {
                    tok: Tok::Num(format!("{a}.{b}")),
                    space_before: sb,
                }],
            );
        }
        i += 1;
    }
}

fn ends_quantity(t: &Tok) -> bool {
    matches!(
        t,
        Tok::Num(_)
            | Tok::RParen
            | Tok::RBrace
            | Tok::RBrack
            | Tok::Percent
            | Tok::Degree
            | Tok::Pi
            | Tok::Infty
            | Tok::Letters(_)
            | Tok::Ident(_)
    )
}

fn starts_quantity(t: &Tok) -> bool {
    matches!(
        t,
        Tok::Num(_) | Tok::Minus | Tok::Frac | Tok::Sqrt | Tok::LParen | Tok::Pi
    )
}

/// Finds units after quantities and removes them; a unit followed by another quantity becomes
/// a list separator.
fn mark_units(toks: &mut Vec<Token>) {
    let n = toks.len();
    if n < 2 {
        return;
    }
    // Is the whole answer words (a text answer)? Then nothing is a unit.
    let mut i = 1;
    while i < toks.len() {
        if !ends_quantity(&toks[i - 1].tok)
            || matches!(toks[i - 1].tok, Tok::Letters(_) | Tok::Ident(_))
                && !matches!(toks[i].tok, Tok::Words(_))
        {
            i += 1;
            continue;
        }
        // Span of the unit starting at i, if any.
        let end = match &toks[i].tok {
            Tok::Words(_) => Some(i + 1),
            Tok::Letters(w) => {
                let prev_num = matches!(toks[i - 1].tok, Tok::Num(_) | Tok::Percent | Tok::RBrace);
                let known = is_unit_word(w);
                let long_spaced = toks[i].space_before && w.len() >= 3;
                // `2xy` (glued, not a unit word) stays algebra.
                if prev_num && (known && (toks[i].space_before || w.len() >= 2) || long_spaced) {
                    // Swallow following words too: `square feet`, `miles per hour`.
                    let mut k = i + 1;
                    while k < toks.len()
                        && matches!(&toks[k].tok, Tok::Letters(w2) if w2.len() >= 2 || is_unit_word(w2))
                    {
                        k += 1;
                    }
                    Some(k)
                } else {
                    None
                }
            }
            Tok::LBrace | Tok::LParen => {
                // `{grams}`, `{children,}`, `(apples)`, `{/h}`, `{at}4\%`.
                let close = if toks[i].tok == Tok::LBrace {
                    Tok::RBrace
                } else {
                    Tok::RParen
                };
                let mut k = i + 1;
                let mut has_word = false;
                let mut ok = true;
                while k < toks.len() && toks[k].tok != close {
                    match &toks[k].tok {
                        Tok::Letters(w) if w.len() >= 2 || toks[i].tok == Tok::LBrace => {
                            has_word = true
                        }
                        Tok::Words(_) | Tok::And | Tok::Or | Tok::Percent | Tok::Pi => {
                            has_word = true;
                        }
                        Tok::Comma | Tok::Slash | Tok::Caret | Tok::Star | Tok::Degree => {}
                        Tok::Num(_) if toks[i].tok == Tok::LBrace => {}
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                    k += 1;
                }
                let pi_only = toks[i + 1..k.min(toks.len())]
                    .iter()
                    .all(|t| t.tok == Tok::Pi);
                (ok && has_word
                    && !pi_only
                    && k < toks.len()
                    && matches!(toks[i - 1].tok, Tok::Num(_) | Tok::Percent | Tok::Degree))
                .then_some(k + 1)
            }
            _ => None,
        };
        let Some(mut end) = end else {
            i += 1;
            continue;
        };
        // `cm^2`, `{ft}^2`.
        if end + 1 < toks.len()
            && toks[end].tok == Tok::Caret
            && matches!(toks[end + 1].tok, Tok::Num(_))
        {
            end += 2;
        }
        let followed_by_quantity = toks.get(end).is_some_and(|t| starts_quantity(&t.tok));
        let replacement: Vec<Token> = if followed_by_quantity {
            vec![Token {
                tok: Tok::Comma,
                space_before: true,
            }]
        } else {
            Vec::new()
        };
        let rlen = replacement.len();
        toks.splice(i..end, replacement);
        i += rlen.max(1);
    }
    // A leading currency/label word before a number (`{loss}30,000`, `Rs 50`).
    if toks.len() >= 2 {
        if let Tok::LBrace = toks[0].tok {
            if let Some(close) = toks.iter().position(|t| t.tok == Tok::RBrace) {
                let inner = &toks[1..close];
                if !inner.is_empty()
                    && inner.iter().all(|t| {
                        matches!(&t.tok, Tok::Letters(w) if w.len() >= 2)
                            || matches!(t.tok, Tok::Words(_))
                    })
                    && toks.get(close + 1).is_some_and(|t| starts_quantity(&t.tok))
                {
                    toks.drain(..=close);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(s: &str) -> Vec<Tok> {
        lex(s, Thousands::Join)
            .unwrap()
            .into_iter()
            .map(|t| t.tok)
            .collect()
    }

    #[test]
    fn numbers_and_thousands() {
        assert_eq!(toks("12,000,023"), vec![Tok::Num("12000023".into())]);
        assert_eq!(toks("1,000.99"), vec![Tok::Num("1000.99".into())]);
        assert_eq!(toks("1 000"), vec![Tok::Num("1000".into())]);
        assert_eq!(toks("14{,}916"), vec![Tok::Num("14916".into())]);
        assert_eq!(toks("10,\\!000"), vec![Tok::Num("10000".into())]);
        assert_eq!(
            toks("11,\\! 111,\\! 111,\\! 100"),
            vec![Tok::Num("11111111100".into())]
        );
        assert_eq!(toks("10\\,000"), vec![Tok::Num("10000".into())]);
        assert_eq!(
            toks("3,5"),
            vec![Tok::Num("3".into()), Tok::Comma, Tok::Num("5".into())]
        );
        assert_eq!(toks("-21,-43").len(), 5);
        assert_eq!(
            toks("32, 349"),
            vec![Tok::Num("32".into()), Tok::Comma, Tok::Num("349".into())]
        );
        assert_eq!(lex("20,160", Thousands::Split).unwrap().len(), 3);
        assert_eq!(toks(".5"), vec![Tok::Num(".5".into())]);
    }

    #[test]
    fn units_are_removed() {
        assert_eq!(toks("48{grams}"), vec![Tok::Num("48".into())]);
        assert_eq!(toks("149{sqft}"), vec![Tok::Num("149".into())]);
        assert_eq!(toks("15\\mbox{ cm}^2"), vec![Tok::Num("15".into())]);
        assert_eq!(toks("9 (apples)"), vec![Tok::Num("9".into())]);
        assert_eq!(
            toks("125\\textnormal{ miles}"),
            vec![Tok::Num("125".into())]
        );
        assert_eq!(toks("65.0{/h}"), vec![Tok::Num("65.0".into())]);
        assert_eq!(toks("6840{ft}^2"), vec![Tok::Num("6840".into())]);
        assert_eq!(
            toks("128{children,}150{adults}"),
            vec![Tok::Num("128".into()), Tok::Comma, Tok::Num("150".into())]
        );
        assert_eq!(
            toks("2xy"),
            vec![Tok::Num("2".into()), Tok::Letters("xy".into())]
        );
        assert_eq!(toks("35 cm"), vec![Tok::Num("35".into())]);
    }

    #[test]
    fn latex_commands() {
        assert_eq!(
            toks("\\left( \\dfrac{1}{3} \\right)"),
            vec![
                Tok::LParen,
                Tok::Frac,
                Tok::LBrace,
                Tok::Num("1".into()),
                Tok::RBrace,
                Tok::LBrace,
                Tok::Num("3".into()),
                Tok::RBrace,
                Tok::RParen
            ]
        );
        assert_eq!(
            toks("x \\geq 5"),
            vec![
                Tok::Letters("x".into()),
                Tok::Rel(RelOp::Ge),
                Tok::Num("5".into())
            ]
        );
        assert_eq!(toks("\\text{Evelyn}"), vec![Tok::Words("Evelyn".into())]);
        assert_eq!(toks("\\text{13}"), vec![Tok::Num("13".into())]);
        assert_eq!(
            toks("6 \\text{ and } 8"),
            vec![Tok::Num("6".into()), Tok::And, Tok::Num("8".into())]
        );
        assert_eq!(
            toks("2**3"),
            vec![Tok::Num("2".into()), Tok::Caret, Tok::Num("3".into())]
        );
        assert_eq!(
            toks("28 percent"),
            vec![Tok::Num("28".into()), Tok::Percent]
        );
    }

    #[test]
    fn too_long_is_an_error() {
        assert!(lex(&"1+".repeat(5000), Thousands::Join).is_err());
    }
}
