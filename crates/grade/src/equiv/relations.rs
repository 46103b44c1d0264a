//! Relations: assignments (`x = 5`), relations read as intervals (`x > 5`), equations up to
//! scale and inequalities as sets of normalised facts.

use super::symbolic::proportional;
use super::{equal, Cx};
use crate::expr::{Const, Expr, Func, RelOp};
use crate::MatchRule;

/// Is `e` a name-like left-hand side (`x`, `f(x)`, `AB`, `|AB|`, `x_1`)?
fn is_name_like(e: &Expr) -> bool {
    match e {
        Expr::Sym(_) | Expr::Apply(..) => true,
        Expr::Paren(v) => v.iter().all(is_name_like),
        Expr::Const(Const::E | Const::I) => true,
        Expr::Mul(v) => v
            .iter()
            .all(|x| matches!(x, Expr::Sym(_) | Expr::Const(Const::E | Const::I))),
        Expr::Func(Func::Abs, a) => a.len() == 1 && is_name_like(&a[0]),
        Expr::Div(a, b) => is_name_like(a) && is_name_like(b),
        _ => false,
    }
}

/// For `x = 5`, `x = 5 + 5 + 1 = 11`, `x \approx 11`: the value assigned (the last one stated
/// with `=`, or the approximation when there is nothing else).
pub(super) fn assigned_value(e: &Expr) -> Option<&Expr> {
    let Expr::Rel(items, ops) = e else {
        return None;
    };
    if !ops.iter().all(|o| matches!(o, RelOp::Eq | RelOp::Approx)) {
        return None;
    }
    let k = ops
        .iter()
        .rposition(|o| *o == RelOp::Eq)
        .unwrap_or(ops.len() - 1);
    let (lhs, value) = (&items[0], &items[k + 1]);
    // `x = ...` (a name on the left), or a numeric identity `\frac12 = 0.5`.
    let constant = |e: &Expr| e.symbols().is_empty() && !e.is_container();
    let link_lhs = &items[k];
    if is_name_like(lhs) || is_name_like(link_lhs) && k > 0 || (constant(lhs) && constant(value)) {
        Some(value)
    } else {
        None
    }
}

pub(super) fn is_interval_like(e: &Expr) -> bool {
    match e {
        Expr::Interval { .. } | Expr::Union(_) => true,
        Expr::Paren(v) | Expr::Bracket(v) => v.len() == 2,
        _ => false,
    }
}

fn neg_inf() -> Expr {
    Expr::Neg(Box::new(Expr::Const(Const::Infinity)))
}

/// `-2 \le x \le 7` as `[-2, 7]`; `x > 5` as `(5, \infty)`.
pub(super) fn relation_as_interval(e: &Expr) -> Option<Expr> {
    let Expr::Rel(items, ops) = e else {
        return None;
    };
    let closed = |o: RelOp| matches!(o, RelOp::Le | RelOp::Ge);
    let iv = |lo: &Expr, hi: &Expr, lc: bool, hc: bool| Expr::Interval {
        lo: Box::new(lo.clone()),
        hi: Box::new(hi.clone()),
        lo_closed: lc,
        hi_closed: hc,
    };
    match (items.as_slice(), ops.as_slice()) {
        ([a, x, b], [o1, o2]) if is_name_like(x) => {
            let up = |o: &RelOp| matches!(o, RelOp::Lt | RelOp::Le);
            let down = |o: &RelOp| matches!(o, RelOp::Gt | RelOp::Ge);
            if up(o1) && up(o2) {
                Some(iv(a, b, closed(*o1), closed(*o2)))
            } else if down(o1) && down(o2) {
                Some(iv(b, a, closed(*o2), closed(*o1)))
            } else {
                None
            }
        }
        ([l, r], [o]) => {
            // Normalise to `x op bound`.
            let (op, bound) = if is_name_like(l) && !is_name_like(r) {
                (*o, r)
            } else if is_name_like(r) && !is_name_like(l) {
                (o.flipped(), l)
            } else {
                return None;
            };
            let inf = Expr::Const(Const::Infinity);
            match op {
                RelOp::Gt | RelOp::Ge => Some(iv(bound, &inf, closed(op), false)),
                RelOp::Lt | RelOp::Le => Some(iv(&neg_inf(), bound, false, closed(op))),
                _ => None,
            }
        }
        _ => None,
    }
}

pub(super) fn relations_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
    let (Expr::Rel(gi, go), Expr::Rel(pi, po)) = (g, p) else {
        return None;
    };
    // Both assignments: compare the values.
    if let (Some(gv), Some(pv)) = (assigned_value(g), assigned_value(p)) {
        return equal(gv, pv, cx).map(|_| MatchRule::AssignmentValue);
    }
    let eqs = |ops: &[RelOp]| ops.iter().all(|o| *o == RelOp::Eq);
    if go.len() == 1 && po.len() == 1 && eqs(go) && eqs(po) {
        let dg = difference(&gi[0], &gi[1]);
        let dp = difference(&pi[0], &pi[1]);
        return proportional(&dg, &dp, false, cx).map(|_| MatchRule::EquationUpToScale);
    }
    // Inequalities, as sets of normalised `expr > 0` / `expr >= 0` / `expr != 0` facts.
    let gn = normalised_inequalities(gi, go)?;
    let pn = normalised_inequalities(pi, po)?;
    if gn.len() != pn.len() {
        return None;
    }
    let mut used = vec![false; pn.len()];
    for (ge, gop) in &gn {
        let mut found = false;
        for (k, (pe, pop)) in pn.iter().enumerate() {
            if used[k] || gop != pop {
                continue;
            }
            let positive_only = !matches!(gop, RelOp::Ne | RelOp::Eq);
            if proportional(ge, pe, positive_only, cx).is_some() {
                used[k] = true;
                found = true;
                break;
            }
        }
        if !found {
            return None;
        }
    }
    Some(MatchRule::Inequality)
}

fn difference(a: &Expr, b: &Expr) -> Expr {
    Expr::Add(vec![a.clone(), Expr::Neg(Box::new(b.clone()))])
}

/// Each link `a op b` of a chain as `(expr, op)` with op in {>, >=, !=, =} and `expr op 0`.
fn normalised_inequalities(items: &[Expr], ops: &[RelOp]) -> Option<Vec<(Expr, RelOp)>> {
    let mut out = Vec::new();
    for (k, op) in ops.iter().enumerate() {
        let (a, b) = (&items[k], &items[k + 1]);
        let n = match op {
            RelOp::Gt | RelOp::Ge => (difference(a, b), *op),
            RelOp::Lt => (difference(b, a), RelOp::Gt),
            RelOp::Le => (difference(b, a), RelOp::Ge),
            RelOp::Ne | RelOp::Eq | RelOp::Approx => (
                difference(a, b),
                if *op == RelOp::Ne {
                    RelOp::Ne
                } else {
                    RelOp::Eq
                },
            ),
        };
        out.push(n);
    }
    Some(out)
}
