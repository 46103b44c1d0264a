//! Scalars: degrees, percent, ratios, choice letters, text, numbers in other bases and
//! infinities; then constants or symbolic expressions.

use super::decimal::constants_equal;
use super::symbolic::symbolic_equal;
use super::Cx;
use crate::expr::{Const, Expr};
use crate::MatchRule;

/// A name for text-like answers: `\text{C}`, `C`, `e`.
fn as_name(e: &Expr) -> Option<String> {
    match e {
        Expr::Text(t) => Some(t.clone()),
        Expr::Sym(s) => Some(s.clone()),
        Expr::Const(Const::E) => Some("e".into()),
        Expr::Const(Const::I) => Some("i".into()),
        Expr::Mul(v) => v
            .iter()
            .map(as_name)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.concat()),
        _ => None,
    }
}

/// A single letter that reads as a multiple-choice option (`A`..`H`, `\text{C}`, `(e)`).
fn is_choice_letter(e: &Expr) -> bool {
    match e {
        Expr::Sym(s) | Expr::Text(s) => {
            s.len() == 1
                && s.chars()
                    .all(|c| ('A'..='H').contains(&c.to_ascii_uppercase()))
        }
        Expr::Const(Const::E) => true,
        _ => false,
    }
}

/// Text answers compare case-insensitively, ignoring spaces and punctuation.
pub(crate) fn normalize_text(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

pub(super) fn scalars_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
    // Degrees are plain numbers here (`90^\circ` = 90).
    if let Expr::Degree(x) = g {
        return scalars_equal(x, p, cx);
    }
    if let Expr::Degree(x) = p {
        return scalars_equal(g, x, cx);
    }
    // Percent: `28\%` matches 28 and 0.28.
    match (g, p) {
        (Expr::Percent(a), Expr::Percent(b)) => return scalars_equal(a, b, cx),
        (Expr::Percent(a), _) => {
            return scalars_equal(a, p, cx)
                .or_else(|| scalars_equal(&percent_value(a), p, cx))
                .map(|_| MatchRule::Percent);
        }
        (_, Expr::Percent(b)) => {
            return scalars_equal(g, b, cx)
                .or_else(|| scalars_equal(g, &percent_value(b), cx))
                .map(|_| MatchRule::Percent);
        }
        _ => {}
    }
    // A ratio `3:1` against a number.
    match (g, p) {
        (Expr::Apply(n, v), other) | (other, Expr::Apply(n, v))
            if n == ":" && v.len() == 2 && !matches!(other, Expr::Apply(..)) =>
        {
            let ratio = Expr::Div(Box::new(v[0].clone()), Box::new(v[1].clone()));
            return if matches!(g, Expr::Apply(..)) {
                scalars_equal(&ratio, p, cx)
            } else {
                scalars_equal(g, &ratio, cx)
            };
        }
        _ => {}
    }
    // Choice letters: `\text{(E)}` vs `(e)`.
    if is_choice_letter(g) && is_choice_letter(p) {
        let (a, b) = (as_name(g)?, as_name(p)?);
        return a.eq_ignore_ascii_case(&b).then_some(MatchRule::Text);
    }
    // Text and names.
    if matches!(g, Expr::Text(_)) || matches!(p, Expr::Text(_)) {
        let (a, b) = (as_name(g)?, as_name(p)?);
        return (normalize_text(&a) == normalize_text(&b) && !a.is_empty())
            .then_some(MatchRule::Text);
    }
    // Numbers in another base.
    match (g, p) {
        (Expr::Based(d1, b1), Expr::Based(d2, b2)) => {
            return (b1 == b2 && d1.trim_start_matches('0') == d2.trim_start_matches('0'))
                .then_some(MatchRule::ExactValue);
        }
        (Expr::Based(d, _), Expr::Num(n)) | (Expr::Num(n), Expr::Based(d, _)) => {
            return (n.places.is_none()
                && n.value.is_integer()
                && n.value.numer().to_string() == *d)
                .then_some(MatchRule::BaseDigits);
        }
        _ => {}
    }
    // Infinities compare structurally.
    if has_infinity(g) || has_infinity(p) {
        return (infinity_sign(g)? == infinity_sign(p)?).then_some(MatchRule::SameExpression);
    }
    let gs = g.symbols();
    let ps = p.symbols();
    if gs.is_empty() && ps.is_empty() {
        return constants_equal(g, p, cx);
    }
    symbolic_equal(g, p, &gs, &ps, cx)
}

fn percent_value(a: &Expr) -> Expr {
    Expr::Div(Box::new(a.clone()), Box::new(Expr::int(100)))
}

fn has_infinity(e: &Expr) -> bool {
    let mut f = false;
    e.walk(&mut |x| f |= matches!(x, Expr::Const(Const::Infinity)));
    f
}

fn infinity_sign(e: &Expr) -> Option<i8> {
    match e {
        Expr::Const(Const::Infinity) => Some(1),
        Expr::Neg(x) => infinity_sign(x).map(|s| -s),
        Expr::Add(v) if v.len() == 1 => infinity_sign(&v[0]),
        _ => None,
    }
}
