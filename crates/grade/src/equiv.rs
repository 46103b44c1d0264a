//! Mathematical equivalence of two parsed answers.
//!
//! The checker works structure first (relations, intervals, sets, tuples, matrices), then on
//! scalar values: exact rationals where the value is rational, the decimal-precision rule when
//! one side is a decimal literal, numerical evaluation for closed forms (`2\sqrt2` = `\sqrt8`),
//! and evaluation at sample points for expressions with variables. Every answer says which
//! rule decided.

use crate::eval::{exact, numeric, Env, Fuel};
use crate::expr::{Const, Expr, Func, Num, RelOp};
use crate::number::{self, Rat};
use crate::{ApproxPolicy, GoldDecimals, GradeOptions, MatchRule};
use num_complex::Complex64;
use num_traits::{Signed, Zero};

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

/// Minimum significant digits for a decimal to count as an approximation of an exact value.
const MIN_APPROX_SIG: u32 = 2;
/// Relative difference treated as floating-point noise (`3.999999` for 4).
const FLOAT_NOISE: f64 = 1e-6;
/// For datasets whose questions give rounded data (SimulEq's `0.3333`): relative difference of
/// a computed 3+-place decimal from an integer gold that is still the intended answer.
const ROUNDED_DATA_REL: f64 = 5e-4;
/// Relative tolerance for two closed forms or sample-point values being the same number.
const NUMERIC_TOL: f64 = 1e-9;
const SAMPLE_TOL: f64 = 1e-8;

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

fn expand_pm(a: &Expr, b: &Expr) -> Expr {
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
fn assigned_value(e: &Expr) -> Option<&Expr> {
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

fn is_interval_like(e: &Expr) -> bool {
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
fn relation_as_interval(e: &Expr) -> Option<Expr> {
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

fn relations_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
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

/// Values for variables at sample point `trial`: deterministic, positive, irregular.
fn sample_value(var_index: usize, trial: usize) -> f64 {
    const BASE: [f64; 11] = [
        0.7371, 1.4137, 2.2367, 0.5193, 1.8713, 2.7191, 1.2599, 0.9437, 2.4489, 1.6174, 0.3671,
    ];
    let k = (var_index * 7 + trial * 3 + var_index * trial) % BASE.len();
    BASE[k] + 0.01 * (var_index as f64) + 0.001 * trial as f64
}

const TRIALS: usize = 6;

fn env_for(
    vars: &[String],
    trial: usize,
    rename: Option<(&str, &str)>,
) -> Vec<(String, Complex64)> {
    let mut env: Vec<(String, Complex64)> = vars
        .iter()
        .enumerate()
        .map(|(i, v)| (v.clone(), Complex64::new(sample_value(i, trial), 0.0)))
        .collect();
    if let Some((from, to)) = rename {
        if let Some(val) = env.iter().find(|(n, _)| n == to).map(|(_, v)| *v) {
            env.push((from.to_string(), val));
        }
    }
    env
}

fn close(a: Complex64, b: Complex64, tol: f64) -> bool {
    let scale = a.norm().max(b.norm()).max(1.0);
    (a - b).norm() <= tol * scale
}

/// Is `p` = c * `g` for one non-zero constant c (positive if `positive_only`) at every sample
/// point?
fn proportional(g: &Expr, p: &Expr, positive_only: bool, cx: &mut Cx) -> Option<()> {
    let vars = union_symbols(g, p);
    let mut ratio: Option<Complex64> = None;
    let mut both_zero = 0;
    let mut good = 0;
    for t in 0..TRIALS {
        let env = env_for(&vars, t, None);
        let (Some(a), Some(b)) = (
            numeric(g, &env as &dyn Env, &mut cx.fuel),
            numeric(p, &env as &dyn Env, &mut cx.fuel),
        ) else {
            if cx.fuel.0 <= 0 {
                return None;
            }
            continue;
        };
        let az = a.norm() < 1e-12;
        let bz = b.norm() < 1e-12;
        if az && bz {
            both_zero += 1;
            good += 1;
            continue;
        }
        if az != bz {
            return None;
        }
        let r = b / a;
        match ratio {
            None => ratio = Some(r),
            Some(r0) => {
                if !close(r0, r, SAMPLE_TOL) {
                    return None;
                }
            }
        }
        good += 1;
    }
    if good < 3 {
        return None;
    }
    if both_zero == good {
        return Some(());
    }
    let r = ratio?;
    if r.norm() < 1e-12 || r.im.abs() > 1e-9 * r.norm() {
        return None;
    }
    if positive_only && r.re <= 0.0 {
        return None;
    }
    Some(())
}

fn union_symbols(g: &Expr, p: &Expr) -> Vec<String> {
    let mut v = g.symbols();
    v.extend(p.symbols());
    v.sort();
    v.dedup();
    v
}

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

fn has_matrix(e: &Expr) -> bool {
    let mut f = false;
    e.walk(&mut |x| f |= matches!(x, Expr::Matrix(_)));
    f
}

fn containers_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
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

fn scalars_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
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

/// The written decimal places of a decimal literal at the top of `e` (through a sign).
fn decimal_literal(e: &Expr) -> Option<&Num> {
    match e {
        // `45.0` is an integer printed as a float, not a rounded value.
        Expr::Num(n) if n.places.is_some() && !n.value.is_integer() => Some(n),
        Expr::Neg(x) => decimal_literal(x),
        _ => None,
    }
}

fn constants_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
    let gd = decimal_literal(g).map(|n| (n.places.unwrap_or(0), n.sig));
    let pd = decimal_literal(p).map(|n| (n.places.unwrap_or(0), n.sig));
    let ge = exact(g, &mut cx.fuel);
    let pe = exact(p, &mut cx.fuel);
    if let (Some(a), Some(b)) = (&ge, &pe) {
        if a == b {
            return Some(MatchRule::ExactValue);
        }
        if gd.is_none() && pd.is_none() {
            // A float converted to a fraction (`476571389139735/846830699163683` for 130/231).
            let big = |r: &Rat| r.denom().bits() > 30;
            let scaled = (a - b).abs() * Rat::from_integer(1_000_000_000_000i64.into());
            return ((big(a) || big(b)) && scaled <= a.abs()).then_some(MatchRule::NumericValue);
        }
        return decimal_rule_exact(a, b, gd, pd, cx);
    }
    let gv = numeric(g, &(), &mut cx.fuel)?;
    let pv = numeric(p, &(), &mut cx.fuel)?;
    if gd.is_none() && pd.is_none() {
        return close(gv, pv, NUMERIC_TOL).then_some(MatchRule::NumericValue);
    }
    // Decimal against a closed form (`4.1231` vs `\sqrt{17}`): real values only.
    if gv.im.abs() > 1e-12 || pv.im.abs() > 1e-12 {
        return None;
    }
    decimal_rule_float(gv.re, pv.re, gd, pd, cx)
}

fn pow10(places: u32) -> f64 {
    10f64.powi(-(places.min(300) as i32))
}

/// The decimal-precision rule on exact values (see [`crate::ApproxPolicy`]).
fn decimal_rule_exact(
    g: &Rat,
    p: &Rat,
    gd: Option<(u32, u32)>,
    pd: Option<(u32, u32)>,
    cx: &mut Cx,
) -> Option<MatchRule> {
    if let Some(n) = cx.opts.float_rounding {
        return (number::round_to(g, n) == number::round_to(p, n))
            .then_some(MatchRule::FloatRounding);
    }
    let d = (g - p).abs();
    let half = |places: u32| number::ulp(places) / Rat::from_integer(2.into());
    let noise = || number::to_f64(&d) <= FLOAT_NOISE * number::to_f64(&g.abs());
    let rel_ok = |cap: f64| number::to_f64(&d) <= cap * number::to_f64(&g.abs());
    let ok = match (gd, pd) {
        (None, Some((dp, sig))) => {
            if (cx.gold_decimals == GoldDecimals::Rounded) && dp >= 3 && rel_ok(ROUNDED_DATA_REL) {
                // The question's own data are rounded (`0.1667` for 1/6), so its exact answer
                // is off by that much (`30.003` for 30).
                return Some(MatchRule::DecimalPrecision);
            }
            if cx.opts.approx == ApproxPolicy::Exact {
                return None;
            }
            let truncated =
                p.abs() < g.abs() && p.is_negative() == g.is_negative() && d < number::ulp(dp);
            (d <= half(dp) || truncated) && sig >= MIN_APPROX_SIG || noise()
        }
        (Some((dg, _)), pd) => {
            if cx.gold_decimals == GoldDecimals::Rounded {
                let places = pd.map_or(dg, |(dp, _)| dp.min(dg));
                // Golds with 3+ places are often truncated sloppily (`0.165` for 0.16665).
                let ulps = if dg >= 3 { 2 } else { 1 };
                d <= number::ulp(places) * Rat::from_integer(ulps.into()) && rel_ok(0.02)
            } else {
                match pd {
                    // The gold is the instructed rounding (MATH: "to the nearest hundredth"):
                    // an answer at least as precise that rounds to it matches.
                    Some((dp, _))
                        if cx.gold_decimals == GoldDecimals::RoundedTo
                            && dp >= dg
                            && number::round_to(p, dg) == *g =>
                    {
                        true
                    }
                    // The gold is exact: the answer must approximate it at its own precision.
                    Some((dp, sig)) => {
                        dp >= dg
                            && cx.opts.approx != ApproxPolicy::Exact
                            && (d <= half(dp) && sig >= MIN_APPROX_SIG || noise())
                    }
                    None => false,
                }
            }
        }
        (None, None) => false,
    };
    ok.then_some(MatchRule::DecimalPrecision)
}

fn decimal_rule_float(
    g: f64,
    p: f64,
    gd: Option<(u32, u32)>,
    pd: Option<(u32, u32)>,
    cx: &mut Cx,
) -> Option<MatchRule> {
    if let Some(n) = cx.opts.float_rounding {
        let s = 10f64.powi(n as i32);
        return ((g * s).round() == (p * s).round()).then_some(MatchRule::FloatRounding);
    }
    let d = (g - p).abs();
    let slack = 1e-12 * g.abs().max(1.0);
    let ok = match (gd, pd) {
        (None, Some((dp, sig))) => {
            if (cx.gold_decimals == GoldDecimals::Rounded)
                && dp >= 3
                && d <= ROUNDED_DATA_REL * g.abs()
            {
                return Some(MatchRule::DecimalPrecision);
            }
            if cx.opts.approx == ApproxPolicy::Exact {
                return None;
            }
            let truncated = p.abs() < g.abs() && (p < 0.0) == (g < 0.0) && d < pow10(dp) + slack;
            (d <= 0.5 * pow10(dp) + slack || truncated) && sig >= MIN_APPROX_SIG
                || d <= FLOAT_NOISE * g.abs()
        }
        (Some((dg, _)), pd) => {
            if cx.gold_decimals == GoldDecimals::Rounded {
                let places = pd.map_or(dg, |(dp, _)| dp.min(dg));
                let ulps = if dg >= 3 { 2.0 } else { 1.0 };
                d <= ulps * pow10(places) + slack && d <= 0.02 * g.abs()
            } else {
                match pd {
                    Some((dp, _))
                        if cx.gold_decimals == GoldDecimals::RoundedTo
                            && dp >= dg
                            && d <= 0.5 * pow10(dg) + slack =>
                    {
                        true
                    }
                    Some((dp, sig)) => {
                        dp >= dg
                            && cx.opts.approx != ApproxPolicy::Exact
                            && (d <= 0.5 * pow10(dp) + slack && sig >= MIN_APPROX_SIG
                                || d <= FLOAT_NOISE * g.abs())
                    }
                    None => false,
                }
            }
        }
        (None, None) => false,
    };
    ok.then_some(MatchRule::DecimalPrecision)
}

fn symbolic_equal(
    g: &Expr,
    p: &Expr,
    gs: &[String],
    ps: &[String],
    cx: &mut Cx,
) -> Option<MatchRule> {
    let mut rename: Option<(String, String)> = None;
    if gs != ps {
        if !cx.opts.strict_symbols && gs.len() == 1 && ps.len() == 1 {
            rename = Some((ps[0].clone(), gs[0].clone()));
        } else {
            return None;
        }
    }
    let vars = gs.to_vec();
    let mut good = 0;
    for t in 0..TRIALS {
        let env = env_for(
            &vars,
            t,
            rename.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
        );
        let a = numeric(g, &env as &dyn Env, &mut cx.fuel);
        let b = numeric(p, &env as &dyn Env, &mut cx.fuel);
        match (a, b) {
            (Some(a), Some(b)) => {
                if !close(a, b, SAMPLE_TOL) {
                    return None;
                }
                good += 1;
            }
            (None, None) => {
                if cx.fuel.0 <= 0 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    (good >= 3).then_some(MatchRule::SymbolicIdentity)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lexer::Thousands;
    use crate::parser::parse;

    fn eq_with(g: &str, p: &str, opts: &GradeOptions, rounded: bool) -> Option<MatchRule> {
        let g = parse(g, Thousands::Join).unwrap();
        let p = parse(p, Thousands::Join).unwrap();
        let mut cx = Cx {
            opts,
            fuel: Fuel(200_000),
            gold_decimals: if rounded {
                GoldDecimals::Rounded
            } else {
                GoldDecimals::RoundedTo
            },
            count_duplicates: false,
        };
        equal(&g, &p, &mut cx)
    }
    fn eq(g: &str, p: &str) -> bool {
        eq_with(g, p, &GradeOptions::default(), false).is_some()
    }

    #[test]
    fn exact_numbers() {
        assert!(eq("\\frac{1}{2}", "0.5"));
        assert!(eq("10/9", "\\frac{10}{9}"));
        assert!(!eq("\\frac{1}{2004!}", "\\frac{1}{2006!}"));
        assert!(!eq("\\frac{1}{2^{99}}", "\\frac{1}{2^{98}}"));
        assert!(!eq("\\frac{1023}{1024}", "1"));
        assert!(!eq("7", "\\frac{673897}{96283}"));
        assert!(!eq("\\frac{6}{11}", "\\frac{27}{50}"));
        assert!(eq("\\frac{6}{11}", "0.\\overline{54}"));
    }

    #[test]
    fn decimal_precision_rule() {
        assert!(eq("\\frac{10}{11}", "0.9091"));
        assert!(eq("\\sqrt{17}", "4.1231"));
        assert!(eq("4", "3.999999"));
        assert!(!eq("12", "11.9"));
        assert!(!eq("\\frac{6}{11}", "0.5"));
        assert!(!eq("563.51", "563.5"));
        assert!(eq("563.51", "563.5123"));
        assert!(eq("0.03", "0.0273"));
        assert!(!eq("0.6", "0.54"));
        assert!(!eq("0.0", "0.0206"));
        let o = GradeOptions::default();
        assert!(eq_with("583.3333", "583.33", &o, true).is_some());
        assert!(eq_with("15.62", "15.63", &o, true).is_some());
        assert!(eq_with("0.6667", "0.667", &o, true).is_some());
        assert!(eq_with("583.3333", "\\frac{1750}{3}", &o, true).is_some());
        assert!(eq_with("83.33", "83", &o, true).is_none());
        assert!(eq_with("30", "30.003", &o, true).is_some());
        assert!(eq_with("30", "30.03", &o, true).is_none());
        assert!(eq_with("0.165", "\\frac{1}{6}", &o, true).is_some());
        assert!(eq(
            "\\frac{130}{231}",
            "\\frac{476571389139735}{846830699163683}"
        ));
        assert!(eq("\\frac{3125}{46656}", "0.067"));
        assert!(eq("3:1", "3"));
        assert!(eq("\\text{(E)}", "{(e)}"));
        assert!(eq("0.75", "\\frac{3}{4}, 0.75"));
        let strict = GradeOptions {
            approx: ApproxPolicy::Exact,
            ..GradeOptions::default()
        };
        assert!(eq_with("\\frac{10}{11}", "0.9091", &strict, false).is_none());
        let mv = GradeOptions {
            float_rounding: Some(4),
            ..GradeOptions::default()
        };
        assert!(eq_with("1/3", "0.333", &mv, false).is_none());
    }

    #[test]
    fn symbolic() {
        assert!(eq("\\frac{x+2}{7}", "\\frac{x}{7}+\\frac{2}{7}"));
        assert!(eq("\\tan^2(y)+1", "\\sec^2(y)"));
        assert!(eq("2\\sqrt{2}", "\\sqrt{8}"));
        assert!(!eq("x+2n+1", "x+1"));
        assert!(!eq("(a+5)(b+2)", "(+5)(b+2)"));
        assert!(eq("-20*x", "-20x"));
        assert!(!eq("-20*x", "-20"));
        assert!(!eq("2^3", "2"));
        assert!(eq(
            "\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{15+2\\sqrt{33}}",
            "\\frac{\\sqrt{\\sqrt{11}+\\sqrt{194}}}{2\\sqrt{33}+15}"
        ));
    }

    #[test]
    fn relations_and_structures() {
        assert!(eq("34x+45y-20z+100=0", "-34x-45y+20z-100=0"));
        assert!(eq("2x+4y-3=0", "y=-\\frac{1}{2}x+\\frac{3}{4}"));
        assert!(!eq("20x+23y+26z-69=0", "0"));
        assert!(eq("k=1", "1"));
        assert!(eq("1", "k=1"));
        assert!(eq("x \\leq 5", "5 \\geq x"));
        assert!(eq("x < 1", "-x > -1"));
        assert!(!eq("x < 1", "x > -1"));
        assert!(eq("-2 \\le x \\le 7", "x \\in [-2,7]"));
        assert!(eq("[0,1)", "[0,1)"));
        assert!(!eq("(0,9)", "[0,9)"));
        assert!(eq(
            "\\{1\\pm\\sqrt{5},-2\\}",
            "\\{-2, 1+\\sqrt5, 1-\\sqrt5\\}"
        ));
        assert!(eq("1 \\pm \\sqrt{19}", "1+\\sqrt{19}, 1-\\sqrt{19}"));
        assert!(eq("(3,1)", "(3,1)"));
        assert!(!eq("(3,1)", "\\{1,3\\}"));
        assert!(eq("-2,1", "1,-2"));
        assert!(eq(
            "\\begin{pmatrix}1 & 0 \\\\ 0 & 1\\end{pmatrix}",
            "\\begin{bmatrix}1 & 0 \\\\ 0 & 1\\end{bmatrix}"
        ));
        assert!(eq(
            "(-\\infty, -3] \\cup [2, \\infty)",
            "[2, \\infty) \\cup (-\\infty, -3]"
        ));
        assert!(eq("28\\%", "28"));
        assert!(eq("28\\%", "0.28"));
        assert!(!eq("0.28", "28"));
        assert!(!eq("28", "28/100"));
        assert!(eq("90^\\circ", "90"));
        assert!(eq("\\text{Evelyn}", "evelyn"));
        assert!(eq("[103]", "103"));
    }
}
