//! Dataset conventions, applied around the generic equivalence check.
//!
//! * SimulEq: many questions ask for two unknowns but the gold is the first one, so a
//!   multi-answer prediction is compared by its **first** component; `20,160` may be a list
//!   (`20` and `160`) or a number, and either reading may match.
//! * DeepMind Mathematics: `[3, 5]` golds are unordered lists (prime factors, roots);
//!   `7 1 -1` golds are ordered sequences; a choice letter `(b)` is mapped through the options
//!   in the question (evaluating `Let i = 62.0059 - 17.0059.` definitions); a comparison such as
//!   `-990 > -993` is read as the value it asserts is greater (or smaller), and a false
//!   comparison (`-9 > 0`) is wrong.

use crate::equiv::{equal, normalize_text, Cx};
use crate::eval::{exact, Fuel};
use crate::expr::{Const, Expr, RelOp};
use crate::extract::{ExtractRule, Extracted};
use crate::lexer::Thousands;
use crate::number::Rat;
use crate::parser::{num_literal, parse};
use crate::{Dataset, GoldDecimals, GradeOptions, MatchRule, MultiAnswer};

/// Compares an extracted prediction with an extracted gold.
pub(crate) fn compare(
    opts: &GradeOptions,
    dataset: Dataset,
    gold: &Extracted,
    pred: &Extracted,
    question: Option<&str>,
) -> Result<MatchRule, String> {
    let gs = normalize_string(&gold.answer);
    let ps = normalize_string(&pred.answer);
    if !gs.is_empty() && gs == ps {
        return Ok(MatchRule::String);
    }
    let thousands = if dataset == Dataset::Generic {
        Thousands::JoinDecimalComma
    } else {
        Thousands::Join
    };
    let g = parse_answer(&gold.answer, dataset, thousands)
        .map_err(|e| format!("cannot parse gold: {e}"))?;
    let gold_decimals = if has_long_decimal(&g) {
        // `14053029.666666666`: a float artifact.
        GoldDecimals::Rounded
    } else {
        dataset.gold_decimals()
    };
    let mut cx = Cx {
        opts,
        fuel: Fuel(opts.fuel),
        gold_decimals,
        count_duplicates: dataset == Dataset::Mathematics,
    };
    // SimulEq: several boxes are several answers; the first is the one asked for.
    let pred_text = if dataset == Dataset::SimulEq
        && opts.multi_answer == MultiAnswer::First
        && pred.rule == ExtractRule::Boxed
        && pred.boxes.len() > 1
    {
        pred.boxes.join(", ")
    } else {
        pred.answer.clone()
    };
    let p = match parse_answer(&pred_text, dataset, thousands) {
        Ok(p) => p,
        Err(e) => {
            return if normalize_text(&gold.answer) == normalize_text(&pred_text)
                && !normalize_text(&gold.answer).is_empty()
            {
                Ok(MatchRule::Text)
            } else {
                Err(format!("cannot parse answer: {e}"))
            }
        }
    };
    let first = compare_parsed(dataset, &g, p, question, &mut cx);
    if first.is_ok() || dataset != Dataset::SimulEq || opts.multi_answer == MultiAnswer::Reject {
        return first;
    }
    // SimulEq: `20,160` read as two answers.
    if let Ok(p2) = parse_answer(&pred_text, dataset, Thousands::Split) {
        if let Ok(rule) = compare_parsed(dataset, &g, p2, question, &mut cx) {
            return Ok(rule);
        }
    }
    first
}

fn compare_parsed(
    dataset: Dataset,
    g: &Expr,
    p: Expr,
    question: Option<&str>,
    cx: &mut Cx,
) -> Result<MatchRule, String> {
    let mut g = g.clone();
    let mut p = p;
    let mut via: Option<MatchRule> = None;
    match dataset {
        Dataset::Mathematics => {
            g = lists_unordered(g);
            p = lists_unordered(p);
            if let Some(q) = question {
                if let Some(v) = solved_for(&p, q) {
                    p = v;
                }
                if let Some(letter) = choice_letter(&p) {
                    if let Some(v) = choice_value(q, letter) {
                        p = v;
                        via = Some(MatchRule::ChoiceLetter);
                    }
                }
                if let Some(res) = comparison_claim(&p, q, cx) {
                    match res {
                        Ok(v) => {
                            p = v;
                            via = Some(MatchRule::Comparison);
                        }
                        Err(why) => return Err(why),
                    }
                }
            }
        }
        Dataset::SimulEq
            if cx.opts.multi_answer == MultiAnswer::First
                && !g.is_container()
                && !matches!(g, Expr::Rel(..)) =>
        {
            if let Some(first) = first_component(&p) {
                p = first;
                via = Some(MatchRule::FirstComponent);
            }
        }
        _ => {}
    }
    match equal(&g, &p, cx) {
        Some(rule) => Ok(via.unwrap_or(rule)),
        None => {
            if cx.fuel.0 <= 0 {
                Err("undecided: work budget exhausted".into())
            } else {
                Err(format!("not equal (gold {g}, answer {p})"))
            }
        }
    }
}

/// Strips what never changes the meaning, for the fast string comparison.
fn normalize_string(s: &str) -> String {
    let mut t: String = s.split_whitespace().collect();
    for pat in [
        "\\left",
        "\\right",
        "\\!",
        "\\,",
        "\\;",
        "\\:",
        "$",
        "\\displaystyle",
    ] {
        if t.contains(pat) {
            t = t.replace(pat, "");
        }
    }
    if t.contains("dfrac") || t.contains("tfrac") {
        t = t.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac");
    }
    for w in ["\\text{", "\\textbf{", "\\mathrm{", "\\mbox{"] {
        if let Some(inner) = t.strip_prefix(w).and_then(|r| r.strip_suffix('}')) {
            if !inner.contains('{') {
                t = inner.to_string();
            }
        }
    }
    let t = t.trim_end_matches('.').to_string();
    if t.chars()
        .all(|c| c.is_alphabetic() || c == '\'' || c == '-')
    {
        t.to_lowercase()
    } else {
        t
    }
}

/// Parses an answer with the dataset's reading conventions.
pub(crate) fn parse_answer(
    s: &str,
    dataset: Dataset,
    thousands: Thousands,
) -> Result<Expr, String> {
    let s = s.trim();
    if dataset == Dataset::Mathematics {
        if let Some(seq) = space_separated_numbers(s) {
            return Ok(seq);
        }
    }
    parse(s, thousands).map_err(|e| e.0)
}

/// `7 1 -1` (a DeepMind ordering answer) as an ordered tuple.
fn space_separated_numbers(s: &str) -> Option<Expr> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() < 2 {
        return None;
    }
    let mut items = Vec::new();
    for p in parts {
        let (neg, digits) = match p.strip_prefix('-') {
            Some(d) => (true, d),
            None => (false, p),
        };
        if digits.is_empty()
            || !digits
                .chars()
                .all(|c| c.is_ascii_digit() || c == '.' || c == '/')
        {
            return None;
        }
        let e = if let Some((a, b)) = digits.split_once('/') {
            Expr::Div(
                Box::new(num_literal(a).ok()?),
                Box::new(num_literal(b).ok()?),
            )
        } else {
            num_literal(digits).ok()?
        };
        items.push(if neg { Expr::Neg(Box::new(e)) } else { e });
    }
    Some(Expr::Paren(items))
}

fn lists_unordered(e: Expr) -> Expr {
    match e {
        Expr::Bracket(v) => Expr::List(v),
        other => other,
    }
}

fn has_long_decimal(e: &Expr) -> bool {
    let mut found = false;
    e.walk(&mut |x| {
        if let Expr::Num(n) = x {
            found |= n.places.is_some_and(|p| p >= 8);
        }
    });
    found
}

fn first_component(p: &Expr) -> Option<Expr> {
    match p {
        Expr::List(v) | Expr::Paren(v) | Expr::Set(v) | Expr::Bracket(v) if v.len() >= 2 => {
            Some(v[0].clone())
        }
        _ => None,
    }
}

/// `Solve ... for w.` answered with `a = -1, w = -5`: the value given for `w`.
fn solved_for(p: &Expr, question: &str) -> Option<Expr> {
    let Expr::List(items) = p else {
        return None;
    };
    let q = question.trim_end().trim_end_matches(['.', '?']);
    let var = q.rsplit_once(" for ")?.1.trim();
    if var.len() != 1 || !var.chars().all(|c| c.is_ascii_alphabetic()) {
        return None;
    }
    items.iter().find_map(|e| match e {
        Expr::Rel(v, ops)
            if ops == &[RelOp::Eq] && v.len() == 2 && matches!(&v[0], Expr::Sym(s) if s == var) =>
        {
            Some(v[1].clone())
        }
        _ => None,
    })
}

/// A prediction that is just a choice letter: `b`, `(b)`, `{(b)}`, `\text{(b)}`.
fn choice_letter(p: &Expr) -> Option<char> {
    match p {
        Expr::Sym(s) | Expr::Text(s) => {
            let t: String = s.chars().filter(|c| c.is_alphanumeric()).collect();
            let mut cs = t.chars();
            match (cs.next(), cs.next()) {
                (Some(c), None) if ('a'..='h').contains(&c.to_ascii_lowercase()) => {
                    Some(c.to_ascii_lowercase())
                }
                _ => None,
            }
        }
        Expr::Const(Const::E) => Some('e'),
        Expr::Set(v) | Expr::List(v) | Expr::Bracket(v) | Expr::Paren(v) if v.len() == 1 => {
            choice_letter(&v[0])
        }
        _ => None,
    }
}

/// The options `(a) ... (b) ...` of a DeepMind question.
fn options(question: &str) -> Vec<(char, String)> {
    let b = question.as_bytes();
    let mut marks: Vec<(char, usize, usize)> = Vec::new(); // letter, start of mark, start of text
    let mut i = 0;
    while i + 2 < b.len() {
        if b[i] == b'('
            && b[i + 2] == b')'
            && (b'a'..=b'h').contains(&b[i + 1])
            && (i == 0 || b[i - 1].is_ascii_whitespace())
        {
            marks.push((b[i + 1] as char, i, i + 3));
            i += 3;
            continue;
        }
        i += 1;
    }
    let mut out = Vec::new();
    for (k, (letter, _, text_start)) in marks.iter().enumerate() {
        let end = marks.get(k + 1).map_or(question.len(), |m| m.1);
        out.push((
            *letter,
            question[*text_start..end]
                .trim()
                .trim_end_matches(['.', '?'])
                .trim()
                .to_string(),
        ));
    }
    out
}

/// `Let i = 62.0059 - 17.0059.` / `Let n be ((-12)/32)/(-15*(-2)/8).` definitions, evaluated in
/// order (only arithmetic ones).
fn definitions(question: &str) -> Vec<(String, Rat)> {
    let mut env: Vec<(String, Rat)> = Vec::new();
    for sentence in question.split(". ") {
        let s = sentence.trim().trim_end_matches('.');
        let Some(rest) = s.strip_prefix("Let ") else {
            continue;
        };
        let (name, expr) = if let Some((n, e)) = rest.split_once(" = ") {
            (n.trim(), e)
        } else if let Some((n, e)) = rest.split_once(" be ") {
            (n.trim(), e)
        } else {
            continue;
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphabetic()) {
            continue;
        }
        let Ok(e) = parse(expr, Thousands::Split) else {
            continue;
        };
        let e = substitute(&e, &env);
        if let Some(v) = exact(&e, &mut Fuel(10_000)) {
            env.retain(|(n, _)| n != name);
            env.push((name.to_string(), v));
        }
    }
    env
}

fn substitute(e: &Expr, env: &[(String, Rat)]) -> Expr {
    let sub = |x: &Expr| substitute(x, env);
    match e {
        Expr::Sym(s) => env
            .iter()
            .find(|(n, _)| n == s)
            .map(|(_, v)| Expr::num(v.clone()))
            .unwrap_or_else(|| e.clone()),
        Expr::Const(Const::E) | Expr::Const(Const::I) => {
            let name = if *e == Expr::Const(Const::E) {
                "e"
            } else {
                "i"
            };
            env.iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| Expr::num(v.clone()))
                .unwrap_or_else(|| e.clone())
        }
        Expr::Add(v) => Expr::Add(v.iter().map(sub).collect()),
        Expr::Mul(v) => Expr::Mul(v.iter().map(sub).collect()),
        Expr::Neg(a) => Expr::Neg(Box::new(sub(a))),
        Expr::Div(a, b) => Expr::Div(Box::new(sub(a)), Box::new(sub(b))),
        Expr::Pow(a, b) => Expr::Pow(Box::new(sub(a)), Box::new(sub(b))),
        other => other.clone(),
    }
}

fn choice_value(question: &str, letter: char) -> Option<Expr> {
    let opts = options(question);
    let (_, text) = opts.iter().find(|(l, _)| *l == letter)?;
    let e = parse(text, Thousands::Split).ok()?;
    let env = definitions(question);
    let e = substitute(&e, &env);
    exact(&e, &mut Fuel(10_000)).map(Expr::num).or(Some(e))
}

/// A numeric comparison `a > b`: `Some(Ok(value it asserts is the answer))`, or
/// `Some(Err(reason))` when the comparison is false.
fn comparison_claim(p: &Expr, question: &str, cx: &mut Cx) -> Option<Result<Expr, String>> {
    let Expr::Rel(items, ops) = p else {
        return None;
    };
    if items.len() != 2 || !items.iter().all(|e| e.symbols().is_empty()) {
        return None;
    }
    let op = ops[0];
    if !matches!(op, RelOp::Gt | RelOp::Lt | RelOp::Ge | RelOp::Le) {
        return None;
    }
    let a = exact(&items[0], &mut cx.fuel)?;
    let b = exact(&items[1], &mut cx.fuel)?;
    let holds = match op {
        RelOp::Gt => a > b,
        RelOp::Ge => a >= b,
        RelOp::Lt => a < b,
        RelOp::Le => a <= b,
        _ => return None,
    };
    if !holds {
        return Some(Err(format!("the answer asserts a false comparison ({p})")));
    }
    let q = question.to_ascii_lowercase();
    let wants_smaller = ["smaller", "smallest", "less", "least", "lower", "lowest"]
        .iter()
        .any(|w| q.contains(w));
    let first_is_greater = matches!(op, RelOp::Gt | RelOp::Ge);
    let pick_first = first_is_greater != wants_smaller;
    Some(Ok(if pick_first {
        items[0].clone()
    } else {
        items[1].clone()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Grader;

    fn ok(d: Dataset, gold: &str, resp: &str, q: Option<&str>) -> bool {
        Grader::default().grade(d, gold, resp, q).correct
    }

    #[test]
    fn simuleq_first_component() {
        assert!(ok(Dataset::SimulEq, "-21", "-21,-43", None));
        assert!(ok(
            Dataset::SimulEq,
            "128",
            "128{children,}150{adults}",
            None
        ));
        assert!(ok(
            Dataset::SimulEq,
            "2.5",
            "\\frac{5}{2}}\\)hoursandthe250gallonsperhourpumpwasusedfor\\(\\boxed{\\frac{7}{2",
            None
        ));
        assert!(ok(Dataset::SimulEq, "20", "20,160", None));
        assert!(ok(Dataset::SimulEq, "10000", "10,000{dollars}", None));
        assert!(!ok(Dataset::Svamp, "34.0", "(-15, 34)", None));
    }

    #[test]
    fn deepmind() {
        assert!(ok(Dataset::Mathematics, "[3, 5]", "3,5", None));
        assert!(ok(Dataset::Mathematics, "[3, 5]", "[5, 3]", None));
        assert!(!ok(Dataset::Mathematics, "[2, 3]", "2,3,3", None));
        assert!(!ok(Dataset::Mathematics, "[2]", "2^3", None));
        assert!(ok(Dataset::Mathematics, "7 1 -1", "7, 1, -1", None));
        assert!(!ok(Dataset::Mathematics, "7 1 -1", "7, -1, 1", None));
        let q = "Let i = 62.0059 - 17.0059. Let z = 7/6 + -3/2. Which is the biggest value?  (a) z  (b) i  (c) -3";
        assert!(ok(Dataset::Mathematics, "45.0", "{(b)}", Some(q)));
        assert!(!ok(Dataset::Mathematics, "45.0", "(a)", Some(q)));
        assert!(!ok(
            Dataset::Mathematics,
            "0",
            "-9>0",
            Some("Which is greater: -9 or 0?")
        ));
        assert!(!ok(
            Dataset::Mathematics,
            "80",
            "79 > 80",
            Some("Which is greater: 79 or 80?")
        ));
        assert!(ok(
            Dataset::Mathematics,
            "-990",
            "-990 > -993",
            Some("Which is greater: -993 or -990?")
        ));
        assert!(ok(
            Dataset::Mathematics,
            "-8",
            "-8 < 0.6517",
            Some("Which is smaller: -8 or 0.6517?")
        ));
        assert!(ok(Dataset::Mathematics, "-20*x", "-20x", None));
        assert!(ok(Dataset::Mathematics, "True", "true", None));
    }

    #[test]
    fn solved_for_the_asked_variable() {
        let q = "Solve 7486*a - 7481*a + 17 - 2 = -2*w, w + 2*a + 7 = 0 for w.";
        assert!(ok(Dataset::Mathematics, "-5", "-1,w=-5", Some(q)));
        assert!(!ok(Dataset::Mathematics, "-1", "-1,w=-5", Some(q)));
    }

    #[test]
    fn paper_protocol_rejects_lists() {
        let g = Grader::new(crate::Protocol::Paper.options());
        assert!(!g.grade(Dataset::SimulEq, "-21", "-21,-43", None).correct);
        assert!(g.grade(Dataset::SimulEq, "-21", "-21", None).correct);
    }

    #[test]
    fn options_parse() {
        let o = options("Which is the closest to -0.3?  (a) 0.1  (b) 0.4  (c) 54  (d) 4/5");
        assert_eq!(o.len(), 4);
        assert_eq!(o[3], ('d', "4/5".to_string()));
    }
}
