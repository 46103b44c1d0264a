//! Mathematical equivalence of two parsed answers.
//!
//! The checker works structure first (relations, intervals, sets, tuples, matrices), then on
//! scalar values: exact rationals where the value is rational, the decimal-precision rule when
//! one side is a decimal literal, numerical evaluation for closed forms (`2\sqrt2` = `\sqrt8`),
//! and evaluation at sample points for expressions with variables. Every answer says which
//! rule decided.
//!
//! Layout: this module dispatches (`±`, membership, relations, containers, scalars);
//! [`relations`] has equations, inequalities and assignments; [`containers`] intervals, sets,
//! tuples and matrices; [`scalars`] degrees, percent, ratios, choice letters, text, other bases
//! and infinities; [`decimal`] numbers without variables (exact, closed forms, the
//! decimal-precision rule); [`symbolic`] sample-point evaluation (identities, proportionality).

mod containers;
mod decimal;
mod relations;
mod scalars;
mod symbolic;
#[cfg(test)]
mod tests;

use crate::eval::Fuel;
use crate::expr::Expr;
use crate::{GoldDecimals, GradeOptions, MatchRule};
use containers::{containers_equal, has_matrix};
use num_traits::Zero;
use relations::{assigned_value, is_interval_like, relation_as_interval, relations_equal};
use scalars::scalars_equal;

pub(crate) use scalars::normalize_text;

/// Comparison context.
pub(crate) struct Cx<'a> {
    pub opts: &'a GradeOptions,
    pub fuel: Fuel,
    /// What a decimal gold means.
    pub gold_decimals: GoldDecimals,
    /// Lists keep multiplicity (`2,3,3` is not the prime-factor list `[2, 3]`); otherwise
    /// duplicates are ignored as in sets.
    pub count_duplicates: bool,
}

/// Decides whether `p` (predicted) is equivalent to `g` (gold). Returns the deciding rule.
pub(crate) fn equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
    cx.fuel.take(1)?;
    if g == p {
        return Some(MatchRule::SameExpression);
    }
    match (g, p) {
        // ±: both values.
        (Expr::PlusMinus(a, b), _) => return equal(&expand_pm(a, b), p, cx),
        (_, Expr::PlusMinus(a, b)) => return equal(g, &expand_pm(a, b), cx),
        // `x \in S` is S.
        (Expr::In(_, s), _) => return equal(s, p, cx),
        (_, Expr::In(_, s)) => return equal(g, s, cx),
        _ => {}
    }
    // Relations.
    match (g, p) {
        (Expr::Rel(..), Expr::Rel(..)) => return relations_equal(g, p, cx),
        (Expr::Rel(..), _) => {
            if let Some(v) = assigned_value(g) {
                return equal(v, p, cx).map(|_| MatchRule::AssignmentValue);
            }
            if let Some(set) = relation_as_interval(g) {
                if is_interval_like(p) {
                    return equal(&set, p, cx).map(|_| MatchRule::RelationAsInterval);
                }
            }
            return None;
        }
        (_, Expr::Rel(..)) => {
            if let Some(v) = assigned_value(p) {
                return equal(g, v, cx).map(|_| MatchRule::AssignmentValue);
            }
            if cx.opts.interval_matches_relation && is_interval_like(g) {
                if let Some(set) = relation_as_interval(p) {
                    return equal(g, &set, cx).map(|_| MatchRule::RelationAsInterval);
                }
            }
            return None;
        }
        _ => {}
    }
    if g.is_container() || p.is_container() || has_matrix(g) || has_matrix(p) {
        return containers_equal(g, p, cx);
    }
    scalars_equal(g, p, cx)
}

pub(super) fn expand_pm(a: &Expr, b: &Expr) -> Expr {
    let zero = matches!(a, Expr::Num(n) if n.value.is_zero());
    let plus = if zero {
        b.clone()
    } else {
        Expr::Add(vec![a.clone(), b.clone()])
    };
    let minus = if zero {
        Expr::Neg(Box::new(b.clone()))
    } else {
        Expr::Add(vec![a.clone(), Expr::Neg(Box::new(b.clone()))])
    };
    Expr::List(vec![plus, minus])
}
