//! Numbers without variables: exact rationals, closed forms evaluated numerically, and the
//! decimal-precision rule when one side is a decimal literal.

use super::symbolic::{close, NUMERIC_TOL};
use super::Cx;
use crate::eval::{exact, numeric};
use crate::expr::{Expr, Num};
use crate::number::{self, Rat};
use crate::{ApproxPolicy, GoldDecimals, MatchRule};
use num_traits::Signed;

/// Minimum significant digits for a decimal to count as an approximation of an exact value.
const MIN_APPROX_SIG: u32 = 2;
/// Relative difference treated as floating-point noise (`3.999999` for 4).
const FLOAT_NOISE: f64 = 1e-6;
/// For datasets whose questions give rounded data (SimulEq's `0.3333`): relative difference of
/// a computed 3+-place decimal from an integer gold that is still the intended answer.
const ROUNDED_DATA_REL: f64 = 5e-4;

/// The written decimal places of a decimal literal at the top of `e` (through a sign).
fn decimal_literal(e: &Expr) -> Option<&Num> {
    match e {
        // `45.0` is an integer printed as a float, not a rounded value.
        Expr::Num(n) if n.places.is_some() && !n.value.is_integer() => Some(n),
        Expr::Neg(x) => decimal_literal(x),
        _ => None,
    }
}

pub(super) fn constants_equal(g: &Expr, p: &Expr, cx: &mut Cx) -> Option<MatchRule> {
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
