//! Containers: intervals, unions, sets, lists, tuples and matrices (with `±` members expanded
//! and numeric matrix sums and products computed).

use super::relations::assigned_value;
use super::{equal, expand_pm, Cx};
use crate::expr::Expr;
use crate::MatchRule;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    Tuple,
    Bracket,
    Set,
    List,
}

/// Expands `a \pm b` members of a set or list into their two values.
fn expand_members(v: &[Expr]) -> Option<Vec<Expr>> {
    if !v.iter().any(|e| matches!(e, Expr::PlusMinus(..))) {
        return None;
    }
    let mut out = Vec::new();
    for e in v {
        match e {
            Expr::PlusMinus(a, b) => {
                if let Expr::List(two) = expand_pm(a, b) {
                    out.extend(two);
                }
            }
            other => out.push(other.clone()),
        }
    }
    Some(out)
}

fn items(e: &Expr) -> Option<(Shape, &[Expr])> {
    match e {
        Expr::Paren(v) => Some((Shape::Tuple, v)),
        Expr::Bracket(v) => Some((Shape::Bracket, v)),
        Expr::Set(v) => Some((Shape::Set, v)),
        Expr::List(v) => Some((Shape::List, v)),
        _ => None,
    }
}

struct IntervalParts<'a> {
    lo: &'a Expr,
    hi: &'a Expr,
    lc: bool,
    hc: bool,
}

fn as_interval(e: &Expr) -> Option<IntervalParts<'_>> {
    match e {
        Expr::Interval {
            lo,
            hi,
            lo_closed,
            hi_closed,
        } => Some(IntervalParts {
            lo,
            hi,
            lc: *lo_closed,
            hc: *hi_closed,
        }),
        Expr::Paren(v) if v.len() == 2 => Some(IntervalParts {
            lo: &v[0],
            hi: &v[1],
            lc: false,
            hc: false,
        }),
        Expr::Bracket(v) if v.len() == 2 => Some(IntervalParts {
            lo: &v[0],
            hi: &v[1],
            lc: true,
            hc: true,
        }),
        _ => None,
    }
}

/// `[M]` / `(M)` around a matrix is the matrix (`\left[\begin{array}..\end{array}\right]`); sums
/// and products of numeric matrices are computed.
fn matrix_form(e: &Expr) -> Option<Vec<Vec<Expr>>> {
    match e {
        Expr::Matrix(m) => Some(m.clone()),
        Expr::Bracket(v) | Expr::Paren(v) | Expr::List(v) if v.len() == 1 => matrix_form(&v[0]),
        Expr::Add(v) if v.len() >= 2 => {
            let ms: Vec<Vec<Vec<Expr>>> = v.iter().map(matrix_form).collect::<Option<_>>()?;
            let (r, c) = (ms[0].len(), ms[0].first()?.len());
            if ms
                .iter()
                .any(|m| m.len() != r || m.iter().any(|row| row.len() != c))
            {
                return None;
            }
            Some(
                (0..r)
                    .map(|i| {
                        (0..c)
                            .map(|j| Expr::Add(ms.iter().map(|m| m[i][j].clone()).collect()))
                            .collect()
                    })
                    .collect(),
            )
        }
        Expr::Mul(v) if v.len() == 2 => {
            let (a, b) = (matrix_form(&v[0])?, matrix_form(&v[1])?);
            let (n, k, m) = (a.len(), b.len(), b.first()?.len());
            if a.iter().any(|row| row.len() != k) || n * m * k > 400 {
                return None;
            }
            Some(
                (0..n)
                    .map(|i| {
                        (0..m)
                            .map(|j| {
                                Expr::Add(
                                    (0..k)
                                        .map(|t| Expr::Mul(vec![a[i][t].clone(), b[t][j].clone()]))
                                        .collect(),
                                )
                            })
                            .collect()
                    })
                    .collect(),
            )
        }
        _ => None,
    }
}

pub(super) fn has_matrix(e: &Expr) -> bool {
    let mut f = false;
    e.walk(&mut |x| f |= matches!(x, Expr::Matrix(_)));
    f
}

pub(super) fn containers_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
    if (has_matrix(g) || has_matrix(p))
        && !(matches!(g, Expr::Matrix(_)) && matches!(p, Expr::Matrix(_)))
    {
        if let (Some(a), Some(b)) = (matrix_form(g), matrix_form(p)) {
            return equal(&Expr::Matrix(a), &Expr::Matrix(b), cx);
        }
    }
    // `\{1 \pm \sqrt5, -2\}` has three members.
    for (e, is_gold) in [(g, true), (p, false)] {
        let expanded = match e {
            Expr::Set(v) => expand_members(v).map(Expr::Set),
            Expr::List(v) => expand_members(v).map(Expr::List),
            _ => None,
        };
        if let Some(x) = expanded {
            return if is_gold {
                equal(&x, p, cx)
            } else {
                equal(g, &x, cx)
            };
        }
    }
    // Intervals (an `Interval` on either side forces interval semantics).
    if matches!(g, Expr::Interval { .. }) || matches!(p, Expr::Interval { .. }) {
        let (a, b) = (as_interval(g)?, as_interval(p)?);
        if a.lc != b.lc || a.hc != b.hc {
            return None;
        }
        equal(a.lo, b.lo, cx)?;
        equal(a.hi, b.hi, cx)?;
        return Some(MatchRule::Interval);
    }
    match (g, p) {
        (Expr::Union(a), Expr::Union(b)) | (Expr::Intersection(a), Expr::Intersection(b)) => {
            return multiset_equal(a, b, cx).map(|_| MatchRule::SetElements);
        }
        (Expr::Union(_) | Expr::Intersection(_), _)
        | (_, Expr::Union(_) | Expr::Intersection(_)) => return None,
        (Expr::Matrix(a), Expr::Matrix(b)) => {
            if a.len() != b.len() || a.iter().zip(b).any(|(r, s)| r.len() != s.len()) {
                return None;
            }
            for (r, s) in a.iter().zip(b) {
                for (x, y) in r.iter().zip(s) {
                    equal(x, y, cx)?;
                }
            }
            return Some(MatchRule::Elementwise);
        }
        (Expr::Matrix(m), other) | (other, Expr::Matrix(m)) => {
            // A row or column vector against a tuple.
            let flat: Vec<Expr> = if m.len() == 1 || m.iter().all(|r| r.len() == 1) {
                m.iter().flatten().cloned().collect()
            } else {
                return None;
            };
            let (_, xs) = items(other)?;
            let (a, b) = if matches!(g, Expr::Matrix(_)) {
                (flat.as_slice(), xs)
            } else {
                (xs, flat.as_slice())
            };
            return ordered_equal(a, b, cx).map(|_| MatchRule::Elementwise);
        }
        _ => {}
    }
    match (items(g), items(p)) {
        (Some((gs, gv)), Some((ps, pv))) => {
            use Shape::*;
            match (gs, ps) {
                (Set | List, Set | List) => {
                    multiset_equal(gv, pv, cx).map(|_| MatchRule::SetElements)
                }
                (Tuple, Tuple) | (Bracket, Bracket) => {
                    ordered_equal(gv, pv, cx).map(|_| MatchRule::Elementwise)
                }
                (Tuple, Bracket) | (Bracket, Tuple) => {
                    // A tuple is not an interval or a list; only equal when both hold one value.
                    if gv.len() == 1 && pv.len() == 1 {
                        equal(&gv[0], &pv[0], cx)
                    } else {
                        None
                    }
                }
                // A tuple written as a bare list or set keeps its order.
                _ => ordered_equal(gv, pv, cx).map(|_| MatchRule::Elementwise),
            }
        }
        // One value in a container against a scalar: `[103]` vs `103`, `\{5\}` vs `5`.
        (Some((_, v)), None) if v.len() == 1 => equal(&v[0], p, cx),
        (None, Some((_, v))) if v.len() == 1 => equal(g, &v[0], cx),
        // The same value written twice (`\frac34, 0.75`) is one answer.
        (None, Some((Shape::List, v))) if v.len() <= 4 && all_same(v, cx) => equal(g, &v[0], cx),
        _ => None,
    }
}

fn all_same(v: &[Expr], cx: &mut Cx) -> bool {
    v.len() >= 2 && v[1..].iter().all(|x| equal(&v[0], x, cx).is_some())
}

fn ordered_equal(a: &[Expr], b: &[Expr], cx: &mut Cx) -> Option<()> {
    if a.len() != b.len() {
        return None;
    }
    for (x, y) in a.iter().zip(b) {
        equal(x, y, cx)?;
    }
    Some(())
}

/// Set equality: every member of each side equals some member of the other (duplicates do not
/// count). Members that are assignments (`x = 1`) stand for their values.
fn multiset_equal(a: &[Expr], b: &[Expr], cx: &mut Cx) -> Option<()> {
    if a.len() > 200 || b.len() > 200 {
        return None;
    }
    let unwrap = |e: &Expr| -> Expr {
        if matches!(e, Expr::Rel(..)) {
            if let Some(v) = assigned_value(e) {
                return v.clone();
            }
        }
        e.clone()
    };
    let a: Vec<Expr> = a.iter().map(unwrap).collect();
    let b: Vec<Expr> = b.iter().map(unwrap).collect();
    if cx.count_duplicates {
        if a.len() != b.len() {
            return None;
        }
        let mut used = vec![false; b.len()];
        for x in &a {
            let k = (0..b.len()).find(|&k| !used[k] && equal(x, &b[k], cx).is_some())?;
            used[k] = true;
        }
        return Some(());
    }
    let mut b_hit = vec![false; b.len()];
    for x in &a {
        let mut found = false;
        for (k, y) in b.iter().enumerate() {
            if equal(x, y, cx).is_some() {
                b_hit[k] = true;
                found = true;
                break;
            }
        }
        if !found {
            return None;
        }
    }
    for (k, y) in b.iter().enumerate() {
        if !b_hit[k] && !a.iter().any(|x| equal(x, y, cx).is_some()) {
            return None;
        }
    }
    Some(())
}
