//! Evaluation at sample points: symbolic identities and proportionality, with the numeric
//! tolerances shared by closed-form comparison.

use super::Cx;
use crate::eval::{numeric, Env};
use crate::expr::Expr;
use crate::MatchRule;
use num_complex::Complex64;

/// Relative tolerance for two closed forms or sample-point values being the same number.
pub(super) const NUMERIC_TOL: f64 = 1e-9;
const SAMPLE_TOL: f64 = 1e-8;

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

pub(super) fn close(a: Complex64, b: Complex64, tol: f64) -> bool {
    let scale = a.norm().max(b.norm()).max(1.0);
    (a - b).norm() <= tol * scale
}

/// Is `p` = c * `g` for one non-zero constant c (positive if `positive_only`) at every sample
/// point?
pub(super) fn proportional(g: &Expr, p: &Expr, positive_only: bool, cx: &mut Cx) -> Option<()> {
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

pub(super) fn symbolic_equal(
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
